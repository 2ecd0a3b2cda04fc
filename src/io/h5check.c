/* Validation of an hpcq result against its model config (src/io/h5check.h). Not collective. */
#include "h5check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "pack.h"
#include "rules.h"

#define DAMAGED "the file is damaged or was changed after hpcq wrote it: quantize the model again"

struct root_q {
  int64_t bits, group_size; /* group_size -1: per channel */
  struct hq_rules rules;    /* root attribute rules (--rule), empty without */
};

/* The rules recorded by hpcq quantize --rule (none in files without the attribute) */
static int root_rules(struct hq_h5 *h, struct root_q *r) {
  if (!hq_h5_attr_exists(h, "/", "rules")) return HQ_OK;
  char *txt = NULL;
  HQ_TRY(hq_h5_attr_get_str(h, "/", "rules", &txt));
  const int rc = hq_rules_add_lines(&r->rules, txt, "root attribute rules");
  free(txt);
  return rc ? hq_fail_ctx(rc, DAMAGED ": ") : HQ_OK;
}

/* The root attributes every linear must agree with (r->rules freed with hq_rules_free). */
static int root_settings(struct hq_h5 *h, struct root_q *r) {
  memset(r, 0, sizeof *r);
  HQ_TRY(root_rules(h, r));
  HQ_TRY(hq_h5_attr_get_i64(h, "/", "bits", &r->bits));
  HQ_TRY(hq_h5_attr_get_i64(h, "/", "group_size", &r->group_size));
  if (!hq_pack_unit((int)r->bits) || r->bits != (int)r->bits)
    return hq_fail(HQ_ERR_INPUT, "root attribute bits = %lld is not 2, 3, 4 or 8; " DAMAGED,
                   (long long)r->bits);
  if (r->group_size == 0 || r->group_size < -1)
    return hq_fail(HQ_ERR_INPUT, "root attribute group_size = %lld is neither -1 (per channel) "
                   "nor a positive group size; " DAMAGED, (long long)r->group_size);
  return HQ_OK;
}

/* Every column in range, and group g holding exactly its columns: min(gs, cols - g*gs). */
static int check_gidx(const struct hq_packed *p, int64_t gs, const char *name) {
  int64_t *count = hq_xcalloc((size_t)p->ngroups, sizeof *count);
  int rc = HQ_OK;
  for (int64_t i = 0; i < p->in && !rc; i++) {
    if (p->g_idx[i] < 0 || p->g_idx[i] >= p->ngroups)
      rc = hq_fail(HQ_ERR_INPUT, "%s: g_idx[%lld] = %d is outside the %lld groups [0, %lld); "
                   DAMAGED, name, (long long)i, (int)p->g_idx[i], (long long)p->ngroups,
                   (long long)p->ngroups);
    else count[p->g_idx[i]]++;
  }
  for (int64_t g = 0; g < p->ngroups && !rc; g++) {
    const int64_t want = gs > 0 ? (p->in - g * gs < gs ? p->in - g * gs : gs) : p->in;
    if (count[g] != want)
      rc = hq_fail(HQ_ERR_INPUT, "%s: g_idx puts %lld columns in group %lld, which holds %lld "
                   "(group size %lld, %lld columns); " DAMAGED, name, (long long)count[g],
                   (long long)g, (long long)want, (long long)gs, (long long)p->in);
  }
  free(count);
  return rc;
}

static int check_scales(const struct hq_packed *p, const char *name) {
  for (int64_t k = 0; k < p->ngroups * p->nrows; k++) {
    const uint16_t s = p->scales[k];
    const char *why = (s & 0x7c00u) == 0x7c00u ? ((s & 0x3ffu) ? "NaN" : "infinite")
                      : (s & 0x8000u)          ? "negative"
                      : s == 0                 ? "zero"
                                               : NULL;
    if (why)
      return hq_fail(HQ_ERR_INPUT, "%s: the scale of group %lld, output row %lld is %s (fp16 "
                     "0x%04x); scales must be finite and positive; " DAMAGED, name,
                     (long long)(k / p->nrows), (long long)(k % p->nrows), why, (unsigned)s);
  }
  return HQ_OK;
}

/* The actual zero point (stored + 1 for v1) of every group and row in [0, maxq]. */
static int check_zeros(const struct hq_packed *p, const char *name) {
  const int64_t zw = p->nrows * p->bits / 32, maxq = (1 << p->bits) - 1;
  const int add = p->format == HQ_PACK_GPTQ ? 1 : 0;
  uint8_t *v = hq_xmalloc((size_t)p->nrows);
  int rc = HQ_OK;
  for (int64_t g = 0; g < p->ngroups && !rc; g++) {
    hq_pack_stream_decode(p->bits, p->nrows, (const uint32_t *)p->qzeros + g * zw, 1, v, 1);
    for (int64_t r = 0; r < p->nrows && !rc; r++)
      if (v[r] + add > maxq)
        rc = hq_fail(HQ_ERR_INPUT, "%s: the zero point of group %lld, output row %lld is %d "
                     "(stored %d, convention %s), outside [0, %lld]; " DAMAGED, name,
                     (long long)g, (long long)r, v[r] + add, v[r],
                     hq_pack_format_name(p->format), (long long)maxq);
  }
  free(v);
  return rc;
}

/* Shape and settings of a linear against the config (rows x cols) and the root attributes. */
static int check_linear_desc(struct hq_h5 *h, const struct hq_model_config *c,
                             const struct root_q *r, const char *name, int64_t rows,
                             int64_t cols) {
  struct hq_h5_linear_desc d;
  int rc = hq_h5_linear_info(h, name, &d);
  if (rc) return hq_fail_ctx(rc, "linear %s is missing or unreadable: ", name);
  if (d.rows != rows || d.cols != cols)
    return hq_fail(HQ_ERR_INPUT, "linear %s is %lld x %lld (out x in) but the file's "
                   "model_config_json implies %lld x %lld (hidden_size %lld, intermediate_size "
                   "%lld, %lld heads, %lld kv heads, head_dim %lld, expert intermediate %lld); "
                   DAMAGED, name, (long long)d.rows, (long long)d.cols, (long long)rows,
                   (long long)cols, (long long)c->hidden, (long long)c->intermediate,
                   (long long)c->n_heads, (long long)c->n_kv_heads, (long long)c->head_dim,
                   (long long)c->moe_intermediate);
  const int64_t gs = d.group_size > 0 ? d.group_size : -1;
  const struct hq_lin_q q = hq_rules_resolve(&r->rules, name, (int)r->bits, r->group_size);
  if (d.bits != q.bits || gs != q.group_size)
    return hq_fail(HQ_ERR_INPUT, "linear %s has %d bits, group size %lld, but the file's root "
                   "attributes (bits, group_size%s) say %d bits, group size %lld; " DAMAGED, name,
                   d.bits, (long long)gs, r->rules.n ? ", rules" : "", q.bits,
                   (long long)q.group_size);
  return HQ_OK;
}

static int check_tensor(struct hq_h5 *h, const char *name, int nd, int64_t d0, int64_t d1,
                        const char *why);

/* A linear a rule skips: its weight [rows, cols] as an unquantized tensor, and no quantized one */
static int check_skipped(struct hq_h5 *h, const char *name, int64_t rows, int64_t cols) {
  char obj[300], wname[300];
  snprintf(obj, sizeof obj, "/linears/%s", name);
  if (hq_h5_attr_exists(h, obj, "bits"))
    return hq_fail(HQ_ERR_INPUT, "linear %s is quantized in the file, but its rules skip it; "
                   DAMAGED, name);
  snprintf(wname, sizeof wname, "%s.weight", name);
  return check_tensor(h, wname, 2, rows, cols, "a linear the rules skip: out x in");
}

/* Linear k of block b (hq_block_linear) */
static int check_linear(struct hq_h5 *h, const struct hq_model_config *c,
                        const struct root_q *r, int64_t b, int64_t k) {
  char name[256];
  int64_t rows, cols;
  hq_block_linear(c, b, k, NULL, name, sizeof name, &rows, &cols);
  const struct hq_lin_q q = hq_rules_resolve(&r->rules, name, (int)r->bits, r->group_size);
  if (q.skip) return check_skipped(h, name, rows, cols);
  HQ_TRY(check_linear_desc(h, c, r, name, rows, cols));
  struct hq_packed p;
  int rc = hq_h5_linear_read(h, name, &p);
  if (rc) return hq_fail_ctx(rc, "linear %s: ", name);
  rc = check_gidx(&p, q.group_size, name);
  if (!rc) rc = check_scales(&p, name);
  if (!rc) rc = check_zeros(&p, name);
  hq_pack_free(&p);
  return rc;
}

/* /tensors/<name> present, [d0] (nd 1) or [d0, d1] (nd 2), every value finite. */
static int check_tensor(struct hq_h5 *h, const char *name, int nd, int64_t d0, int64_t d1,
                        const char *why) {
  enum hq_dtype dt;
  int tnd = 0;
  int64_t s[HQ_ST_MAXDIM] = {0};
  int rc = hq_h5_tensor_info(h, name, &dt, &tnd, s);
  if (rc) return hq_fail_ctx(rc, "tensor %s is missing or unreadable: ", name);
  if (tnd != nd || s[0] != d0 || (nd == 2 && s[1] != d1)) {
    const int64_t want[2] = {d0, d1};
    char hs[192], ws[64];
    hq_shape_str(s, tnd, hs, sizeof hs);
    hq_shape_str(want, nd, ws, sizeof ws);
    return hq_fail(HQ_ERR_INPUT, "tensor %s has shape %s but the file's model_config_json "
                   "implies %s (%s); " DAMAGED, name, hs, ws, why);
  }
  float *v = NULL;
  int64_t n = 0;
  HQ_TRY(hq_h5_read_tensor_f32(h, name, &v, &n));
  for (int64_t i = 0; i < n && !rc; i++)
    if (!isfinite(v[i]))
      rc = hq_fail(HQ_ERR_INPUT, "tensor %s: element %lld is %s; " DAMAGED, name,
                   (long long)i, isnan(v[i]) ? "NaN" : "infinite");
  free(v);
  return rc;
}

static int check_block_tensors(struct hq_h5 *h, const struct hq_model_config *c, int64_t b) {
  char name[256];
  struct hq_block_tensor bt[HQ_BT_COUNT];
  const int nbt = hq_block_tensors(c, bt);
  for (int k = 0; k < nbt; k++) {
    snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)b, bt[k].suffix);
    HQ_TRY(check_tensor(h, name, 1, bt[k].len, 0, bt[k].why));
  }
  if (!hq_config_moe_block(c, b)) return HQ_OK;
  hq_router_name(c, b, name, sizeof name);
  return check_tensor(h, name, 2, c->n_experts, c->hidden, "the router: num_experts x hidden_size");
}

static int check_block(struct hq_h5 *h, const struct hq_model_config *c, const struct root_q *r,
                       int64_t b) {
  if (b < 0 || b >= c->n_layers)
    return hq_fail(HQ_ERR_INPUT, "block %lld does not exist: the config has %lld layers",
                   (long long)b, (long long)c->n_layers);
  for (int64_t k = 0; k < hq_block_nlinears(c, b); k++) HQ_TRY(check_linear(h, c, r, b, k));
  return check_block_tensors(h, c, b);
}

int hq_h5_check_block(struct hq_h5 *h, const struct hq_model_config *c, int64_t b) {
  struct root_q r;
  int rc = root_settings(h, &r);
  if (!rc) rc = check_block(h, c, &r, b);
  hq_rules_free(&r.rules);
  return rc;
}

/* "model.layers.<b>.<suffix>" with b < n_layers: the suffix, else NULL. */
static const char *block_suffix(const struct hq_model_config *c, const char *name) {
  long long b = -1;
  int end = 0;
  if (sscanf(name, "model.layers.%lld.%n", &b, &end) != 1 || end == 0) return NULL;
  return b >= 0 && b < c->n_layers ? name + end : NULL;
}

/* the block number of a name "model.layers.<b>...." (b < n_layers), else -1 */
static int64_t block_of(const struct hq_model_config *c, const char *name) {
  long long b = -1;
  if (!block_suffix(c, name)) return -1;
  sscanf(name, "model.layers.%lld.", &b);
  return b;
}

/* name is a linear of the model (without ".weight") that the rules quantize (skipped: 0) or
 * skip (skipped: 1) */
static int expected_linear(const struct hq_model_config *c, const struct root_q *r,
                           const char *name, int skipped) {
  const int64_t b = block_of(c, name);
  char want[256];
  int64_t rows, cols;
  for (int64_t k = 0; b >= 0 && k < hq_block_nlinears(c, b); k++) {
    hq_block_linear(c, b, k, NULL, want, sizeof want, &rows, &cols);
    if (!strcmp(name, want))
      return hq_rules_resolve(&r->rules, name, (int)r->bits, r->group_size).skip == skipped;
  }
  return 0;
}

/* "<linear>.weight" of a linear the rules skip */
static int skipped_weight(const struct hq_model_config *c, const struct root_q *r,
                          const char *name) {
  const size_t n = strlen(name);
  char pre[256];
  if (!r->rules.n || n <= 7 || n - 7 >= sizeof pre || strcmp(name + n - 7, ".weight")) return 0;
  memcpy(pre, name, n - 7);
  pre[n - 7] = 0;
  return expected_linear(c, r, pre, 1);
}

static int expected_tensor(const struct hq_model_config *c, const struct root_q *r,
                           const char *name) {
  if (skipped_weight(c, r, name)) return 1;
  if (!strcmp(name, "model.embed_tokens.weight") || !strcmp(name, "model.norm.weight"))
    return 1;
  if (!strcmp(name, "lm_head.weight")) return !c->tie_embeddings;
  const char *s = block_suffix(c, name);
  if (!s) return 0;
  struct hq_block_tensor bt[HQ_BT_COUNT];
  const int nbt = hq_block_tensors(c, bt);
  for (int k = 0; k < nbt; k++)
    if (!strcmp(s, bt[k].suffix)) return 1;
  char router[256];
  const int64_t b = block_of(c, name);
  if (!hq_config_moe_block(c, b)) return 0;
  hq_router_name(c, b, router, sizeof router);
  return !strcmp(name, router);
}

/* No linear or tensor that the config does not describe. */
static int check_no_strays(struct hq_h5 *h, const struct hq_model_config *c,
                           const struct root_q *r) {
  char **names = NULL;
  int64_t n = 0;
  int rc = hq_h5_list_linears(h, &names, &n);
  for (int64_t i = 0; i < n && !rc; i++)
    if (!expected_linear(c, r, names[i], 0))
      rc = hq_fail(HQ_ERR_INPUT, "quantized linear %s is not part of the model its "
                   "model_config_json describes (%lld layers)%s; " DAMAGED, names[i],
                   (long long)c->n_layers, r->rules.n ? " or one its rules skip" : "");
  hq_h5_names_free(names, n);
  if (rc) return rc;
  rc = hq_h5_list_tensors(h, &names, &n);
  for (int64_t i = 0; i < n && !rc; i++)
    if (!expected_tensor(c, r, names[i]))
      rc = hq_fail(HQ_ERR_INPUT, "tensor %s is not part of the model its model_config_json "
                   "describes (%lld layers%s); " DAMAGED, names[i], (long long)c->n_layers,
                   c->tie_embeddings ? ", lm_head tied to the embedding" : "");
  hq_h5_names_free(names, n);
  return rc;
}

static int check_model(struct hq_h5 *h, const struct hq_model_config *c, const struct root_q *r) {
  int64_t nb = 0;
  HQ_TRY(hq_h5_attr_get_i64(h, "/", "n_blocks", &nb));
  if (nb != c->n_layers)
    return hq_fail(HQ_ERR_INPUT, "the file records %lld blocks but its model_config_json has "
                   "num_hidden_layers %lld; " DAMAGED, (long long)nb, (long long)c->n_layers);
  HQ_TRY(check_no_strays(h, c, r));
  for (int64_t b = 0; b < c->n_layers; b++) HQ_TRY(check_block(h, c, r, b));
  char why[96];
  snprintf(why, sizeof why, "vocab_size %lld, hidden_size %lld", (long long)c->vocab,
           (long long)c->hidden);
  HQ_TRY(check_tensor(h, "model.embed_tokens.weight", 2, c->vocab, c->hidden, why));
  if (!c->tie_embeddings) HQ_TRY(check_tensor(h, "lm_head.weight", 2, c->vocab, c->hidden, why));
  snprintf(why, sizeof why, "hidden_size %lld", (long long)c->hidden);
  return check_tensor(h, "model.norm.weight", 1, c->hidden, 0, why);
}

int hq_h5_check_model(struct hq_h5 *h, const struct hq_model_config *c) {
  struct root_q r;
  int rc = root_settings(h, &r);
  if (!rc) rc = check_model(h, c, &r);
  hq_rules_free(&r.rules);
  return rc;
}
