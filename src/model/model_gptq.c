/* A GPTQ checkpoint opened as a model: a Hugging Face folder whose config.json has a
 * quantization_config with quant_method "gptq" (written by hpcq export, GPTQModel, AutoGPTQ or
 * optimum). Each quantized linear X is stored as X.qweight, X.qzeros, X.scales and X.g_idx
 * (layout of src/io/pack.h) and reads as X.weight = scale * (q - zero), the weights the
 * checkpoint's kernels compute with. The bits and group size of each linear come from its
 * shapes (a checkpoint with per-module "dynamic" settings has several), the zero-point
 * convention from checkpoint_format ("gptq": zero - 1 stored, "gptq_v2": the zero).
 * Used by hpcq eval and hpcq compare through the ordinary model API (model.c dispatches here
 * when hq_model.gptq_format is set). Not collective. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "model.h"
#include "pack.h"

/* quantization_config.checkpoint_format (GPTQModel also writes "format"): v1 by default, as
 * transformers assumes */
static int ckpt_format(const cJSON *q, const char *dir, int *fmt) {
  const cJSON *f = cJSON_GetObjectItemCaseSensitive(q, "checkpoint_format");
  if (!cJSON_IsString(f)) f = cJSON_GetObjectItemCaseSensitive(q, "format");
  const char *s = cJSON_IsString(f) ? f->valuestring : "gptq";
  if (!strcmp(s, "gptq") || !strcmp(s, "gptq_v1")) *fmt = HQ_PACK_GPTQ;
  else if (!strcmp(s, "gptq_v2")) *fmt = HQ_PACK_GPTQ_V2;
  else
    return hq_fail(HQ_ERR_UNSUPPORTED, "model %s: quantization_config.checkpoint_format '%.40s' "
                   "is not one hpcq reads (\"gptq\" or \"gptq_v2\"); re-save the model in one of "
                   "them with the tool that wrote it", dir, s);
  return HQ_OK;
}

int hq_model_gptq_init(struct hq_model *m) {
  cJSON *j = cJSON_Parse(m->cfg.json ? m->cfg.json : "{}");
  const cJSON *q = cJSON_GetObjectItemCaseSensitive(j, "quantization_config");
  int rc = HQ_OK;
  if (cJSON_IsObject(q)) {
    const cJSON *meth = cJSON_GetObjectItemCaseSensitive(q, "quant_method");
    const char *s = cJSON_IsString(meth) ? meth->valuestring : "(none)";
    if (strcmp(s, "gptq"))
      rc = hq_fail(HQ_ERR_UNSUPPORTED, "model %s is quantized with quant_method '%.40s'; hpcq "
                   "reads full-precision checkpoints and GPTQ ones (quant_method \"gptq\")",
                   m->dir, s);
    if (!rc) rc = ckpt_format(q, m->dir, &m->gptq_format);
    const cJSON *gs = cJSON_GetObjectItemCaseSensitive(q, "group_size");
    const cJSON *bits = cJSON_GetObjectItemCaseSensitive(q, "bits");
    const double gv = cJSON_IsNumber(gs) ? gs->valuedouble : 128;
    const double bv = cJSON_IsNumber(bits) ? bits->valuedouble : 4;
    if (!rc && (!(bv == 2 || bv == 3 || bv == 4 || bv == 8) || !(gv == -1 || (gv >= 1 && gv <= 1e9)) ||
                gv != (double)(int64_t)gv))
      rc = hq_fail(HQ_ERR_INPUT, "model %s: quantization_config has bits %g and group_size %g; "
                   "GPTQ takes bits 2, 3, 4 or 8 and group_size -1 or a positive integer",
                   m->dir, bv, gv);
    m->gptq_group_size = rc ? 0 : (int64_t)gv;
    m->gptq_bits = rc ? 0 : (int)bv;
  }
  cJSON_Delete(j);
  return rc;
}

/* A quantized linear X is the prefix of a tensor "X.qweight" */
static const char QW[] = ".qweight";

int hq_model_gptq_has(const struct hq_model *m, const char *x) {
  const size_t len = strlen(x);
  char *t = hq_xmalloc(len + sizeof QW);
  memcpy(t, x, len);
  memcpy(t + len, QW, sizeof QW);
  const int yes = m->gptq_format && hq_st_find(&m->st, t) != NULL;
  free(t);
  return yes;
}

int hq_model_gptq_linear(const struct hq_model *m, const char *name, char *prefix, size_t n) {
  const size_t len = strlen(name);
  if (!m->gptq_format || len <= 7 || strcmp(name + len - 7, ".weight") || len - 6 > n) return 0;
  memcpy(prefix, name, len - 7);
  prefix[len - 7] = 0;
  return hq_model_gptq_has(m, prefix);
}

int64_t hq_model_gptq_list(const struct hq_model *m, char ***names) {
  const size_t q = sizeof QW - 1;
  int64_t n = 0;
  *names = hq_xmalloc((size_t)(m->st.ntensors + 1) * sizeof **names);
  for (int64_t i = 0; i < m->st.ntensors; i++) {
    const char *t = m->st.tensors[i].name;
    const size_t l = strlen(t);
    if (l <= q || strcmp(t + l - q, QW)) continue;
    char *x = hq_xmalloc(l - q + 1);
    memcpy(x, t, l - q);
    x[l - q] = 0;
    (*names)[n++] = x;
  }
  return n;
}

/* Tensor X.<part> of dtype dt and 1 or 2 dimensions (d1 < 0: any); NULL after a message. */
static const struct hq_st_tensor *part(const struct hq_model *m, const char *x, const char *what,
                                       enum hq_dtype dt, int nd, int64_t d0, int64_t d1) {
  char name[512];
  snprintf(name, sizeof name, "%s.%s", x, what);
  const struct hq_st_tensor *t = hq_st_find(&m->st, name);
  if (!t) {
    hq_fail(HQ_ERR_INPUT, "model %s: GPTQ linear %s has a qweight but no %s; the checkpoint is "
            "incomplete", m->dir, x, what);
    return NULL;
  }
  const int ok = t->dtype == dt && t->ndim == nd && (d0 < 0 || t->shape[0] == d0) &&
                 (nd < 2 || d1 < 0 || t->shape[1] == d1);
  if (ok) return t;
  char have[96];
  hq_shape_str(t->shape, t->ndim, have, sizeof have);
  char want[96] = "";
  if (d0 >= 0 || d1 >= 0) {
    char a[32] = "*", b[32] = "*";
    if (d0 >= 0) snprintf(a, sizeof a, "%lld", (long long)d0);
    if (d1 >= 0) snprintf(b, sizeof b, "%lld", (long long)d1);
    snprintf(want, sizeof want, " of shape [%s%s%s]", a, nd > 1 ? ", " : "", nd > 1 ? b : "");
  }
  hq_fail(HQ_ERR_INPUT, "model %s: %s is %s %s, but a GPTQ linear of this shape needs %s with "
          "%d dimension(s)%s (what its qweight, g_idx and scales imply); the checkpoint is "
          "damaged or not in the GPTQ layout", m->dir, name, hq_dtype_name(t->dtype), have,
          hq_dtype_name(dt), nd, want);
  return NULL;
}

/* The four tensors of linear x with their shapes checked: *in, *out, *bits, *ngroups. */
struct gptq_parts {
  const struct hq_st_tensor *qw, *qz, *sc, *gi; /* gi NULL: no g_idx (groups in order) */
  int64_t in, out, ngroups;
  int bits;
};

/* bits = 32 * qweight rows / in, one of 2, 3, 4, 8 (checked before any narrowing) */
static int infer_bits(const struct hq_model *m, const char *x, struct gptq_parts *g) {
  const int64_t rows = g->qw->shape[0];
  const int64_t r = rows <= INT64_MAX / 32 ? rows * 32 : -1;
  g->bits = r > 0 && g->in > 0 && r % g->in == 0 && r / g->in <= 8 ? (int)(r / g->in) : 0;
  if (hq_pack_unit(g->bits) > 0) return HQ_OK;
  return hq_fail(HQ_ERR_INPUT, "model %s: %s.qweight has %lld rows for %lld input features, "
                 "which is no GPTQ width (2, 3, 4 or 8 bits); the checkpoint is damaged", m->dir,
                 x, (long long)g->qw->shape[0], (long long)g->in);
}

static int gptq_parts(const struct hq_model *m, const char *x, struct gptq_parts *g) {
  memset(g, 0, sizeof *g);
  if (!(g->qw = part(m, x, "qweight", HQ_DTYPE_I32, 2, -1, -1))) return HQ_ERR_INPUT;
  g->out = g->qw->shape[1];
  char name[512];
  snprintf(name, sizeof name, "%s.g_idx", x);
  if (hq_st_find(&m->st, name) && !(g->gi = part(m, x, "g_idx", HQ_DTYPE_I32, 1, -1, 0)))
    return HQ_ERR_INPUT;
  /* without g_idx (older AutoGPTQ files, no act-order) the config's bits give in */
  if (!g->gi && g->qw->shape[0] > INT64_MAX / 32)
    return hq_fail(HQ_ERR_INPUT, "model %s: %s.qweight has %lld rows; the checkpoint is "
                   "damaged", m->dir, x, (long long)g->qw->shape[0]);
  g->in = g->gi ? g->gi->shape[0] : g->qw->shape[0] * 32 / m->gptq_bits;
  HQ_TRY(infer_bits(m, x, g));
  if (!(g->sc = part(m, x, "scales", HQ_DTYPE_F16, 2, -1, g->out))) return HQ_ERR_INPUT;
  g->ngroups = g->sc->shape[0];
  if (!(g->qz = part(m, x, "qzeros", HQ_DTYPE_I32, 2, g->ngroups, g->out * g->bits / 32)))
    return HQ_ERR_INPUT;
  const int64_t u = hq_pack_unit(g->bits);
  if (g->in % u || g->out % u || g->ngroups > g->in)
    return hq_fail(HQ_ERR_INPUT, "model %s: %s is %lld x %lld (out x in) at %d bits with %lld "
                   "groups, which no GPTQ writer produces (dimensions multiples of %lld, at most "
                   "one group per column); the checkpoint is damaged", m->dir, x,
                   (long long)g->out, (long long)g->in, g->bits, (long long)g->ngroups,
                   (long long)u);
  return hq_pack_check(g->bits, (enum hq_pack_format)m->gptq_format, g->in, g->out, g->ngroups,
                       0, g->out) ? hq_fail_ctx(HQ_ERR_INPUT, "model %s: %s: ", m->dir, x)
                                  : HQ_OK;
}

int hq_model_gptq_shape(const struct hq_model *m, const char *x, int64_t *rows, int64_t *in) {
  struct gptq_parts g;
  HQ_TRY(gptq_parts(m, x, &g));
  *rows = g.out;
  *in = g.in;
  return HQ_OK;
}

/* g_idx absent: groups of the config's group_size in column order */
static int default_g_idx(const struct hq_model *m, const char *x, struct hq_packed *p) {
  const int64_t gs = m->gptq_group_size > 0 ? m->gptq_group_size : p->in;
  if ((p->in + gs - 1) / gs != p->ngroups)
    return hq_fail(HQ_ERR_INPUT, "model %s: %s has no g_idx and %lld groups, which its "
                   "group_size %lld does not give for %lld input features", m->dir, x,
                   (long long)p->ngroups, (long long)gs, (long long)p->in);
  for (int64_t i = 0; i < p->in; i++) p->g_idx[i] = (int32_t)(i / gs);
  return HQ_OK;
}

int hq_model_gptq_read(const struct hq_model *m, const char *x, struct hq_packed *p) {
  struct gptq_parts g;
  memset(p, 0, sizeof *p);
  HQ_TRY(gptq_parts(m, x, &g));
  HQ_TRY(hq_pack_init(p, g.bits, (enum hq_pack_format)m->gptq_format, g.in, g.out, g.ngroups,
                      0, g.out));
  const size_t wq = (size_t)(g.in * g.bits / 32 * g.out) * 4, wz = (size_t)(g.ngroups * g.out * g.bits / 32) * 4;
  HQ_ASSERT(g.qw->nbytes == wq && g.qz->nbytes == wz && g.sc->nbytes == (size_t)(g.ngroups * g.out) * 2 &&
            (!g.gi || g.gi->nbytes == (size_t)g.in * 4)); /* the shapes were checked above */
  memcpy(p->qweight, g.qw->data, g.qw->nbytes);
  memcpy(p->qzeros, g.qz->data, g.qz->nbytes);
  memcpy(p->scales, g.sc->data, g.sc->nbytes);
  int rc = HQ_OK;
  if (g.gi) memcpy(p->g_idx, g.gi->data, g.gi->nbytes);
  else rc = default_g_idx(m, x, p);
  hq_st_release(g.qw);
  hq_st_release(g.qz);
  hq_st_release(g.sc);
  if (g.gi) hq_st_release(g.gi);
  if (rc) hq_pack_free(p);
  return rc;
}

int hq_model_gptq_load_f32(const struct hq_model *m, const char *x, float **out, int64_t *numel) {
  struct hq_packed p;
  HQ_TRY(hq_model_gptq_read(m, x, &p));
  float *w = malloc((size_t)(p.out * p.in) * sizeof(float));
  int rc = w ? hq_pack_dequantize(&p, w) : hq_fail(HQ_ERR_NOMEM, "out of memory (%s)", x);
  if (rc) hq_fail_ctx(rc, "model %s: %s: ", m->dir, x);
  else *out = w;
  if (!rc && numel) *numel = p.out * p.in;
  if (rc) free(w);
  hq_pack_free(&p);
  return rc;
}
