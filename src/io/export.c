/* hpcq export: an .h5 result as a GPTQ safetensors checkpoint (src/io/export.h). Not collective.
 *
 * Flow: open the result (h5io: refuses incomplete/foreign files), plan every tensor of the
 * checkpoint (4 per quantized linear in plan order, then the unquantized tensors), split the
 * plan into shards, pre-check the zero points when writing the v1 convention, then stream:
 * one linear (or one piece of an unquantized tensor) in memory at a time, each shard into a
 * hidden temporary file. Config, quantize_config, the index and the tokenizer files go to
 * temporary files too; only when everything is written are they renamed, config.json last.
 * hq_export_gptq runs these stages in this order; the streaming safetensors writer is
 * src/io/st_writer.c, the temporaries and folder handling src/io/export_util.c. */
#include "export.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

#include "error.h"
#include "export_util.h"
#include "fileio.h"
#include "h5check.h"
#include "h5io.h"
#include "rules.h"
#include "util.h"

/* ======================= --max-shard-size ======================= */

int hq_export_parse_size(const char *s, int64_t *bytes) {
  char *end = NULL;
  errno = 0;
  double v = s ? strtod(s, &end) : 0;
  if (!s || end == s || errno || !(v > 0)) goto bad;
  while (*end == ' ') end++;
  double mul = 1;
  static const struct { const char *u; double m; } units[] = {
      {"", 1},      {"B", 1},          {"KB", 1e3},  {"MB", 1e6},  {"GB", 1e9},  {"TB", 1e12},
      {"KIB", 1024.0}, {"MIB", 1048576.0}, {"GIB", 1073741824.0}, {"TIB", 1099511627776.0},
      {"K", 1e3},   {"M", 1e6},        {"G", 1e9}};
  size_t k;
  for (k = 0; k < sizeof units / sizeof units[0]; k++)
    if (!strcasecmp(end, units[k].u)) break;
  if (k == sizeof units / sizeof units[0]) goto bad;
  mul = units[k].m;
  v *= mul;
  if (v < 1 || v > 9.0e18) goto bad;
  *bytes = (int64_t)v;
  return HQ_OK;
bad:
  return hq_fail(HQ_ERR_INPUT, "--max-shard-size expects a size such as 2GB, 500MB, 4GiB or "
                 "a byte count, got '%s'", s ? s : "(nothing)");
}

/* ======================= the export's state ======================= */

/* One tensor of the checkpoint. */
struct item {
  char name[320];
  int linear;          /* index into the linear list, or -1 */
  int part;            /* linear: 0 g_idx, 1 qweight, 2 qzeros, 3 scales */
  enum hq_dtype dtype; /* unquantized tensor: its dtype */
  struct hq_stw_entry e;
  int shard;
};

static const char *lin_parts[4] = {"g_idx", "qweight", "qzeros", "scales"};

/* What the stages of one export share. */
struct export {
  const char *h5_path, *out_dir;
  const struct hq_export_opts *o;
  enum hq_pack_format fmt;        /* checkpoint_format written */
  int64_t shard_max;              /* data bytes per shard (a bigger tensor alone) */
  struct hq_h5 *h;                /* the result, open for reading */
  char *cfg_text, *model_dir;     /* root attributes model_config_json, model_dir (or NULL) */
  cJSON *cfg;                     /* cfg_text parsed: becomes config.json */
  int64_t bits, group_size;       /* the file's settings (root attributes) */
  struct hq_rules rules;          /* root attribute rules (--rule; empty without) */
  char **lin, **ten;              /* quantized linears (plan order), unquantized tensors */
  int64_t nlin, nten;
  struct hq_h5_linear_desc *desc; /* [nlin] */
  struct item *items;             /* [nitems]: 4 per linear (plan order), then the tensors */
  int64_t nitems;
  int have_src;                   /* model_dir is a folder: its tokenizer files are copied */
  struct hq_pending pend;         /* every file written, as a temporary until the commit */
  struct hq_export_stats S;
};

static void export_free(struct export *x, int rc) {
  hq_pending_free(&x->pend, rc != HQ_OK); /* failed: the temporaries go */
  hq_h5_close(x->h);
  cJSON_Delete(x->cfg);
  hq_h5_names_free(x->lin, x->nlin);
  hq_h5_names_free(x->ten, x->nten);
  free(x->desc);
  free(x->items);
  free(x->cfg_text);
  free(x->model_dir);
  hq_rules_free(&x->rules);
}

/* ======================= open the result ======================= */

static int attr_i64_or(struct hq_h5 *h, const char *name, int64_t def, int64_t *v) {
  if (!hq_h5_attr_exists(h, "/", name)) {
    *v = def;
    return HQ_OK;
  }
  return hq_h5_attr_get_i64(h, "/", name, v);
}

/* The whole result against its own config (src/io/h5check.h) before anything is written. */
static int check_result(struct hq_h5 *h, const char *h5_path, const char *cfg_text) {
  struct hq_model_config c;
  int rc = hq_config_parse(cfg_text, strlen(cfg_text), "model_config_json", &c);
  if (!rc) rc = hq_h5_check_model(h, &c);
  hq_config_free(&c);
  return rc ? hq_fail_ctx(rc, "%s: ", h5_path) : HQ_OK;
}

static void warn_act_bits(const struct export *x) {
  int64_t act_bits = 0;
  attr_i64_or(x->h, "act_bits", 0, &act_bits);
  if (act_bits > 0 && !x->o->quiet)
    fprintf(stderr, "hpcq export: warning: %s was quantized with --act-bits %lld; a GPTQ "
            "checkpoint holds the quantized weights only, and loaders run them with "
            "unquantized activations\n", x->h5_path, (long long)act_bits);
}

/* Where the chosen form will not load as users usually serve it (README "Interoperability",
 * measured by tools/interop-check.sh; vLLM from its sources): one warning line each. */
static void warn_serving(const struct export *x) {
  int64_t sym = 0, odd = -1, nodd = 0; /* odd: the first of nodd linears at other than 4/8 bits */
  attr_i64_or(x->h, "sym", 0, &sym);
  for (int64_t i = 0; i < x->nlin; i++) { /* each linear's bits: the root's or its rule's */
    const int b = hq_rules_resolve(&x->rules, x->lin[i], (int)x->bits, x->group_size).bits;
    if (b != 4 && b != 8) nodd++, odd = odd < 0 ? i : odd;
  }
  const int marlin = sym && !nodd; /* vLLM's fast GPTQ path */
  if (x->o->quiet) return;
  char more[48] = "";
  if (nodd > 1) snprintf(more, sizeof more, " (and %lld more linears)", (long long)(nodd - 1));
  if (!sym)
    fprintf(stderr, "hpcq export: warning: asymmetric GPTQ does not run in vLLM's Marlin "
            "kernels (symmetric 4 and 8 bits only); vLLM serves it with its slower gptq "
            "kernel. Quantize with --sym (and 4 or 8 bits) for Marlin\n");
  else if (nodd)
    fprintf(stderr, "hpcq export: warning: %d-bit %s%s does not run in vLLM's Marlin kernels "
            "(symmetric 4 and 8 bits only); vLLM serves it with its slower gptq kernel. "
            "Quantize with --bits 4 (or 8) and rules with bits=4 or 8 for Marlin\n",
            hq_rules_resolve(&x->rules, x->lin[odd], (int)x->bits, x->group_size).bits,
            x->lin[odd], more);
  if (x->fmt == HQ_PACK_GPTQ_V2 && !marlin)
    fprintf(stderr, "hpcq export: warning: vLLM reads gptq_v2 as gptq (v1): outside Marlin its "
            "zero points are then off by one (wrong outputs); export with --checkpoint-format "
            "gptq for vLLM\n");
  if (!sym && x->fmt == HQ_PACK_GPTQ)
    fprintf(stderr, "hpcq export: warning: GPTQModel.load refuses asymmetric gptq (v1) "
            "checkpoints (transformers loads them); quantize with --sym for GPTQModel\n");
  if (x->rules.n)
    fprintf(stderr, "hpcq export: warning: per-module rules are written as "
            "quantization_config.dynamic, which GPTQModel.load honours and transformers 5.24 "
            "ignores (it refuses the checkpoint: size mismatch / missing qweight)\n");
  if (!sym && x->fmt == HQ_PACK_GPTQ_V2)
    fprintf(stderr, "hpcq export: warning: GPTQModel.load in float32 (its TorchFusedLinear CPU "
            "kernel) drops asymmetric zero points (wrong outputs; float16 and transformers "
            "load it correctly); quantize with --sym for GPTQModel in float32\n");
}

/* The rules the file records (already checked against its linears by check_result) */
static int read_rules(struct export *x) {
  if (!hq_h5_attr_exists(x->h, "/", "rules")) return HQ_OK;
  char *txt = NULL;
  HQ_TRY(hq_h5_attr_get_str(x->h, "/", "rules", &txt));
  const int rc = hq_rules_add_lines(&x->rules, txt, "root attribute rules");
  free(txt);
  return rc ? hq_fail_ctx(rc, "%s: ", x->h5_path) : HQ_OK;
}

/* The open result's config (after the whole file passed check_result), model folder,
 * settings, and its linears and tensors. */
static int read_result(struct export *x) {
  struct hq_h5 *h = x->h;
  HQ_TRY(hq_h5_attr_get_str(h, "/", "model_config_json", &x->cfg_text));
  HQ_TRY(check_result(h, x->h5_path, x->cfg_text));
  x->cfg = hq_json_parse_whole(x->cfg_text, strlen(x->cfg_text), NULL);
  if (!x->cfg || !cJSON_IsObject(x->cfg))
    return hq_fail(HQ_ERR_INPUT, "%s: the model_config_json attribute is not a JSON object "
                   "(damaged file?)", x->h5_path);
  if (hq_h5_attr_exists(h, "/", "model_dir"))
    hq_h5_attr_get_str(h, "/", "model_dir", &x->model_dir);
  HQ_TRY(hq_h5_attr_get_i64(h, "/", "bits", &x->bits));
  HQ_TRY(hq_h5_attr_get_i64(h, "/", "group_size", &x->group_size));
  HQ_TRY(read_rules(x));
  HQ_TRY(hq_h5_list_linears(h, &x->lin, &x->nlin));
  HQ_TRY(hq_h5_list_tensors(h, &x->ten, &x->nten));
  if (x->nlin == 0)
    return hq_fail(HQ_ERR_INPUT, "%s holds no quantized linear; nothing to export", x->h5_path);
  warn_act_bits(x);
  warn_serving(x);
  return HQ_OK;
}

/* ======================= plan every tensor ======================= */

/* Linear i (its description into desc[i]) as the next 4 items, layout of src/io/pack.h:
 * g_idx I32 [in], qweight I32 [in*b/32, out], qzeros I32 [ngroups, out*b/32], scales F16
 * [ngroups, out]. Its bits and group size must be the file's, or its rule's (the config's
 * "dynamic" overrides). */
static int plan_linear(struct export *x, int64_t i) {
  struct hq_h5_linear_desc *d = &x->desc[i];
  HQ_TRY(hq_h5_linear_info(x->h, x->lin[i], d));
  const int64_t gs_file = d->group_size > 0 ? d->group_size : -1;
  const struct hq_lin_q q = hq_rules_resolve(&x->rules, x->lin[i], (int)x->bits, x->group_size);
  if (q.skip || d->bits != q.bits || gs_file != q.group_size)
    return hq_fail(HQ_ERR_UNSUPPORTED, "%s: linear %s has %d bits / group size %lld but the "
                   "file says %d / %lld%s; the checkpoint's config could not describe it (the "
                   "file is damaged?)", x->h5_path, x->lin[i], d->bits, (long long)d->group_size,
                   q.skip ? 0 : q.bits, (long long)q.group_size,
                   q.rule >= 0 ? (q.skip ? " (its rule skips it)" : " (its rule)") : "");
  const int64_t b = d->bits;
  for (int k = 0; k < 4; k++) {
    struct item *it = &x->items[x->nitems++];
    snprintf(it->name, sizeof it->name, "%s.%s", x->lin[i], lin_parts[k]);
    it->linear = (int)i;
    it->part = k;
    it->e.name = it->name;
    it->e.ndim = k == 0 ? 1 : 2;
    it->e.dtype = k == 3 ? "F16" : "I32";
    int64_t *s = it->e.shape;
    if (k == 0) s[0] = d->cols;
    if (k == 1) s[0] = d->cols * b / 32, s[1] = d->rows;
    if (k == 2) s[0] = d->ngroups, s[1] = d->rows * b / 32;
    if (k == 3) s[0] = d->ngroups, s[1] = d->rows;
    it->e.nbytes = (size_t)(k == 0 ? s[0] : s[0] * s[1]) * (k == 3 ? 2 : 4);
  }
  return HQ_OK;
}

/* Unquantized tensor i as the next item, in its stored dtype and shape. */
static int plan_tensor(struct export *x, int64_t i) {
  struct item *it = &x->items[x->nitems++];
  snprintf(it->name, sizeof it->name, "%s", x->ten[i]);
  it->linear = -1;
  HQ_TRY(hq_h5_tensor_info(x->h, x->ten[i], &it->dtype, &it->e.ndim, it->e.shape));
  it->e.name = it->name;
  it->e.dtype = hq_dtype_name(it->dtype);
  int64_t numel = 1;
  for (int k = 0; k < it->e.ndim; k++) numel *= it->e.shape[k];
  it->e.nbytes = (size_t)numel * hq_dtype_size(it->dtype);
  return HQ_OK;
}

static int cmp_item_tensor(const void *a, const void *b) {
  const struct item *x = a, *y = b;
  if (hq_dtype_size(x->dtype) != hq_dtype_size(y->dtype))
    return hq_dtype_size(x->dtype) > hq_dtype_size(y->dtype) ? -1 : 1; /* 4-byte types first */
  return strcmp(x->name, y->name);
}

/* items: 4 per linear (plan order), then the unquantized tensors. */
static int plan_tensors(struct export *x) {
  x->desc = hq_xcalloc((size_t)x->nlin, sizeof *x->desc);
  x->items = hq_xcalloc((size_t)(4 * x->nlin + x->nten), sizeof *x->items);
  for (int64_t i = 0; i < x->nlin; i++) HQ_TRY(plan_linear(x, i));
  const int64_t first_tensor = x->nitems;
  for (int64_t i = 0; i < x->nten; i++) HQ_TRY(plan_tensor(x, i));
  /* 4-byte dtypes before 2-byte ones: with every linear tensor a multiple of 4 bytes long,
   * every tensor then starts aligned to its element size */
  struct item *t = x->items + first_tensor;
  const int64_t nt = x->nitems - first_tensor;
  qsort(t, (size_t)nt, sizeof *t, cmp_item_tensor);
  for (int64_t i = 0; i < nt; i++) t[i].e.name = t[i].name;
  return HQ_OK;
}

/* ======================= split the plan into shards ======================= */

/* Consecutive runs of at most shard_max data bytes (a bigger tensor alone). */
static void plan_shards(struct export *x) {
  int shard = 0;
  int64_t acc = 0;
  for (int64_t i = 0; i < x->nitems; i++) {
    const int64_t nb = (int64_t)x->items[i].e.nbytes;
    if (acc > 0 && acc + nb > x->shard_max) shard++, acc = 0;
    x->items[i].shard = shard;
    acc += nb;
    x->S.bytes += nb;
  }
  x->S.nshards = shard + 1;
}

/* ============ pre-checks: the source folder, the zero points for v1 ============ */

/* The tokenizer files come from the source model folder, and the output folder must not be
 * that folder. */
static int check_source(struct export *x) {
  x->have_src = hq_dir_is(x->model_dir);
  if (x->have_src && hq_dir_same(x->model_dir, x->out_dir))
    return hq_fail(HQ_ERR_INPUT, "--out %s is the source model folder; choose another folder",
                   x->out_dir);
  return HQ_OK;
}

/* Convert the qzeros of a packed linear to the `to` convention in place. For v1 a zero of 0
 * cannot be stored: HQ_ERR_UNSUPPORTED naming the linear, group and row. */
static int convert_zeros(struct hq_packed *p, enum hq_pack_format to, const char *name) {
  if (p->format == to) return HQ_OK;
  const int64_t wpr = p->out * p->bits / 32; /* words per qzeros row */
  const int maxq = (1 << p->bits) - 1;
  uint8_t *v = hq_xmalloc((size_t)p->out);
  int rc = HQ_OK;
  for (int64_t g = 0; g < p->ngroups && !rc; g++) {
    uint32_t *w = (uint32_t *)p->qzeros + g * wpr;
    hq_pack_stream_decode(p->bits, p->out, w, 1, v, 1);
    for (int64_t o = 0; o < p->out; o++) {
      if (to == HQ_PACK_GPTQ) { /* v2 (true zero) -> v1 (zero - 1) */
        if (v[o] == 0) {
          rc = hq_fail(HQ_ERR_UNSUPPORTED,
                       "%s: group %lld, output row %lld has an asymmetric zero point of 0, which "
                       "checkpoint format \"gptq\" (v1, stores zero - 1) cannot represent; "
                       "export with --checkpoint-format gptq_v2, or quantize with --sym",
                       name, (long long)g, (long long)o);
          break;
        }
        v[o]--;
      } else { /* v1 -> v2 */
        if (v[o] == maxq) {
          rc = hq_fail(HQ_ERR_INPUT, "%s: group %lld, output row %lld: stored v1 zero %d + 1 "
                       "exceeds %d bits (damaged file?)", name, (long long)g, (long long)o,
                       v[o], p->bits);
          break;
        }
        v[o]++;
      }
    }
    if (!rc) hq_pack_stream_encode(p->bits, p->out, v, 1, w, 1);
  }
  free(v);
  if (!rc) p->format = to;
  return rc;
}

/* Before writing anything: every stored zero point is representable in v1. Reads only the
 * qzeros datasets (small). */
static int precheck_v1(const struct export *x) {
  int rc = HQ_OK;
  for (int64_t i = 0; i < x->nlin && !rc; i++) {
    if (x->desc[i].format == HQ_PACK_GPTQ) continue; /* already v1: every zero was representable */
    struct hq_packed p;
    rc = hq_h5_linear_read_qzeros(x->h, x->lin[i], &p);
    if (!rc) rc = convert_zeros(&p, HQ_PACK_GPTQ, x->lin[i]);
    hq_pack_free(&p);
  }
  return rc;
}

/* ======================= stream each shard ======================= */

#define PIECE ((size_t)64 << 20) /* unquantized tensors move in pieces of <= 64 MiB */

/* The streaming state: the shard's writer, the linear in memory (each is read once: its 4
 * items are adjacent), the buffer the unquantized tensors move through. */
struct stream {
  struct hq_stw *w;
  struct hq_packed cur;
  int cur_lin; /* index of the linear in cur, or -1 */
  void *buf;   /* PIECE bytes, or a whole tensor whose rows are larger than that */
};

static void shard_name(char *buf, size_t n, int s, int nshards) {
  if (nshards == 1) snprintf(buf, n, "model.safetensors");
  else snprintf(buf, n, "model-%05d-of-%05d.safetensors", s + 1, nshards);
}

/* Item it of linear it->linear: its packed array (the linear read when not yet in memory,
 * its zero points converted to the checkpoint's convention). */
static int write_linear_part(struct export *x, struct stream *st, const struct item *it) {
  if (st->cur_lin != it->linear) {
    const char *name = x->lin[it->linear];
    hq_pack_free(&st->cur);
    st->cur_lin = -1;
    HQ_TRY(hq_h5_linear_read(x->h, name, &st->cur));
    HQ_TRY(convert_zeros(&st->cur, x->fmt, name));
    st->cur_lin = it->linear;
    x->S.nlinears++;
  }
  const struct hq_packed *p = &st->cur;
  const void *src = it->part == 0 ? (const void *)p->g_idx
                    : it->part == 1 ? (const void *)p->qweight
                    : it->part == 2 ? (const void *)p->qzeros : (const void *)p->scales;
  return hq_stw_write(st->w, src, it->e.nbytes);
}

/* Unquantized tensor it, whole rows of its first dimension at a time (at most PIECE bytes; a
 * row larger than that: the tensor whole); its checksum is verified before the shard is
 * renamed into place. */
static int write_tensor(struct export *x, struct stream *st, const struct item *it) {
  const size_t es = hq_dtype_size(it->dtype);
  int64_t rows = it->e.ndim ? it->e.shape[0] : 1, rowb = (int64_t)es;
  for (int k = 1; k < it->e.ndim; k++) rowb *= it->e.shape[k];
  int64_t step = rowb > 0 ? (int64_t)(PIECE / (size_t)rowb) : rows;
  if (step < 1) {
    free(st->buf);
    st->buf = hq_xmalloc(it->e.nbytes ? it->e.nbytes : 1);
    step = rows;
  }
  uint64_t sum = 0;
  for (int64_t r = 0; r < rows && rowb > 0; r += step) {
    int64_t nr = rows - r < step ? rows - r : step;
    HQ_TRY(hq_h5_read_tensor_rows(x->h, it->name, r, nr, st->buf, &sum));
    HQ_TRY(hq_stw_write(st->w, st->buf, (size_t)(nr * rowb)));
  }
  return hq_h5_tensor_check_sum(x->h, it->name, sum);
}

/* Shard s: the items [a, b) it holds, its header written to its temporary file. */
static int shard_open(struct export *x, struct stream *st, int s, int64_t *a, int64_t *b) {
  char fname[64];
  shard_name(fname, sizeof fname, s, x->S.nshards);
  const char *tmp = hq_pending_add(&x->pend, x->out_dir, fname);
  *a = 0;
  while (*a < x->nitems && x->items[*a].shard != s) ++*a;
  for (*b = *a; *b < x->nitems && x->items[*b].shard == s; ++*b) continue;
  struct hq_stw_entry *ents = hq_xmalloc((size_t)(*b - *a) * sizeof *ents);
  for (int64_t i = *a; i < *b; i++) ents[i - *a] = x->items[i].e;
  int rc = hq_stw_open(tmp, ents, *b - *a, &st->w);
  free(ents);
  return rc;
}

static int write_shard(struct export *x, struct stream *st, int s) {
  int64_t a, b;
  HQ_TRY(shard_open(x, st, s, &a, &b));
  for (int64_t i = a; i < b; i++) {
    const struct item *it = &x->items[i];
    HQ_TRY(it->linear >= 0 ? write_linear_part(x, st, it) : write_tensor(x, st, it));
    x->S.ntensors++;
  }
  int rc = hq_stw_close(st->w);
  st->w = NULL;
  if (rc) return rc;
  if (!x->o->quiet && x->S.nshards > 1)
    fprintf(stderr, "[export] shard %d/%d written (%lld tensors)\n", s + 1, x->S.nshards,
            (long long)(b - a));
  return HQ_OK;
}

static int write_shards(struct export *x) {
  struct stream st = {.cur_lin = -1, .buf = hq_xmalloc(PIECE)};
  int rc = HQ_OK;
  for (int s = 0; s < x->S.nshards && !rc; s++) rc = write_shard(x, &st, s);
  hq_stw_abort(st.w);
  hq_pack_free(&st.cur);
  free(st.buf);
  return rc;
}

/* ================ config, quantize_config, index, tokenizer files ================ */

/* j, indented, to the temporary file of DIR/name. */
static int write_json(struct export *x, const char *name, const cJSON *j) {
  char *txt = cJSON_Print(j);
  int rc = hq_file_write_text(hq_pending_add(&x->pend, x->out_dir, name), txt);
  free(txt);
  return rc;
}

/* The order of the items by name (insertion sort: a few thousand), malloc'ed [n]. */
static int64_t *items_by_name(const struct item *items, int64_t n) {
  int64_t *ord = hq_xmalloc((size_t)n * sizeof *ord);
  for (int64_t i = 0; i < n; i++) ord[i] = i;
  for (int64_t i = 1; i < n; i++)
    for (int64_t j = i; j > 0 && strcmp(items[ord[j - 1]].name, items[ord[j]].name) > 0; j--) {
      int64_t t = ord[j];
      ord[j] = ord[j - 1];
      ord[j - 1] = t;
    }
  return ord;
}

/* model.safetensors.index.json when there is more than one shard: total_size and the shard
 * of every tensor, sorted by name as Hugging Face writes it. */
static int write_index(struct export *x) {
  if (x->S.nshards <= 1) return HQ_OK;
  cJSON *idx = cJSON_CreateObject();
  cJSON *meta = cJSON_AddObjectToObject(idx, "metadata");
  cJSON_AddItemToObject(meta, "total_size", hq_json_raw_int(x->S.bytes));
  cJSON *wm = cJSON_AddObjectToObject(idx, "weight_map");
  int64_t *ord = items_by_name(x->items, x->nitems);
  for (int64_t i = 0; i < x->nitems; i++) {
    char fname[64];
    shard_name(fname, sizeof fname, x->items[ord[i]].shard, x->S.nshards);
    cJSON_AddStringToObject(wm, x->items[ord[i]].name, fname);
  }
  free(ord);
  int rc = write_json(x, "model.safetensors.index.json", idx);
  cJSON_Delete(idx);
  return rc;
}

static const char *tokenizer_files[] = {"tokenizer.model", "tokenizer.json",
                                        "tokenizer_config.json", "special_tokens_map.json",
                                        "generation_config.json", "added_tokens.json"};


/* GPTQModel's / transformers' per-module overrides, one key per rule in order (the first
 * matching key decides there too): "-:PATTERN": {} skips, "+:PATTERN": {bits, group_size}. */
static void quant_dynamic(cJSON *q, const struct hq_rules *rs, int bits, int64_t group_size) {
  if (!rs || !rs->n) return;
  cJSON *dyn = cJSON_AddObjectToObject(q, "dynamic");
  for (int i = 0; i < rs->n; i++) {
    const struct hq_rule *r = &rs->r[i];
    const size_t n = strlen(r->pattern) + 3;
    char *key = hq_xmalloc(n);
    snprintf(key, n, "%s%s", r->skip ? "-:" : "+:", r->pattern);
    cJSON *o = cJSON_AddObjectToObject(dyn, key);
    free(key);
    if (r->skip) continue;
    const int64_t gs = r->group_size ? r->group_size : group_size;
    cJSON_AddNumberToObject(o, "bits", r->bits ? r->bits : bits);
    cJSON_AddNumberToObject(o, "group_size", (double)(gs > 0 ? gs : -1));
  }
}

/* The quantization_config object (also the content of quantize_config.json). */
static cJSON *quant_config(struct hq_h5 *h, int bits, int64_t group_size,
                           enum hq_pack_format fmt, const struct hq_rules *rules) {
  int64_t sym = 0, ao = 0, sg = 0;
  double damp = 0.01;
  attr_i64_or(h, "sym", 0, &sym);
  attr_i64_or(h, "act_order", 0, &ao);
  attr_i64_or(h, "static_groups", 0, &sg);
  if (hq_h5_attr_exists(h, "/", "percdamp")) hq_h5_attr_get_f64(h, "/", "percdamp", &damp);
  char *method = NULL;
  if (hq_h5_attr_exists(h, "/", "method")) hq_h5_attr_get_str(h, "/", "method", &method);
  cJSON *q = cJSON_CreateObject();
  cJSON_AddStringToObject(q, "quant_method", "gptq");
  cJSON_AddNumberToObject(q, "bits", bits);
  cJSON_AddNumberToObject(q, "group_size", (double)(group_size > 0 ? group_size : -1));
  /* act-order is a GPTQ ordering; older RTN/HQQ files may record it without effect */
  cJSON_AddBoolToObject(q, "desc_act", ao != 0 && (!method || !strcmp(method, "gptq")));
  cJSON_AddBoolToObject(q, "sym", sym != 0);
  char dbuf[32]; /* percdamp is stored from a float: 0.00999999977 -> 0.01 */
  snprintf(dbuf, sizeof dbuf, "%.6g", damp);
  cJSON_AddNumberToObject(q, "damp_percent", strtod(dbuf, NULL));
  cJSON_AddBoolToObject(q, "true_sequential", 1);
  cJSON_AddBoolToObject(q, "static_groups", sg != 0);
  cJSON_AddStringToObject(q, "checkpoint_format", hq_pack_format_name(fmt));
  cJSON_AddBoolToObject(q, "lm_head", 0);
  quant_dynamic(q, rules, bits, group_size);
  cJSON_AddNullToObject(q, "model_name_or_path");
  cJSON_AddNullToObject(q, "model_file_base_name");
  cJSON *meta = cJSON_AddObjectToObject(q, "meta");
  cJSON *qz = cJSON_AddArrayToObject(meta, "quantizer");
  cJSON_AddItemToArray(qz, cJSON_CreateString("hpcq:" HQ_VERSION));
  cJSON_AddStringToObject(meta, "hpcq_method", method ? method : "gptq");
  free(method);
  return q;
}


/* quantize_config.json, and the same object as "quantization_config" of config.json. */
static int write_quant_config(struct export *x) {
  cJSON *q = quant_config(x->h, (int)x->bits, x->group_size, x->fmt, &x->rules);
  int rc = write_json(x, "quantize_config.json", q);
  cJSON_DeleteItemFromObjectCaseSensitive(x->cfg, "quantization_config");
  cJSON_AddItemToObject(x->cfg, "quantization_config", q);
  return rc;
}

/* The tokenizer / generation files of the source model folder that exist there. */
static int copy_tokenizer(struct export *x) {
  if (!x->have_src) {
    if (!x->o->quiet)
      fprintf(stderr, "hpcq export: warning: the source model folder %s%s%s is not available; "
              "the checkpoint has no tokenizer files (copy them from the original model)\n",
              x->model_dir ? "'" : "", x->model_dir ? x->model_dir : "(not recorded in the file)",
              x->model_dir ? "'" : "");
    return HQ_OK;
  }
  int rc = HQ_OK;
  for (size_t k = 0; k < sizeof tokenizer_files / sizeof *tokenizer_files && !rc; k++) {
    char *src = hq_path_join(x->model_dir, tokenizer_files[k]);
    if (access(src, R_OK) == 0) {
      rc = hq_file_copy(src, hq_pending_add(&x->pend, x->out_dir, tokenizer_files[k]));
      x->S.ntokenizer_files++;
    }
    free(src);
  }
  return rc;
}

/* ======================= the stages ======================= */

/* Everything after the open, in the order of the data flow; config.json is written last and
 * renamed last (hq_pending_commit keeps the order of the temporaries). */
static int export_run(struct export *x) {
  HQ_TRY(read_result(x));
  HQ_TRY(plan_tensors(x));
  plan_shards(x);
  HQ_TRY(check_source(x));
  /* v1 cannot store a zero of 0: check every linear before writing anything */
  if (x->fmt == HQ_PACK_GPTQ) HQ_TRY(precheck_v1(x));
  HQ_TRY(hq_outdir_prepare(x->out_dir));
  HQ_TRY(write_shards(x));
  HQ_TRY(write_index(x));
  HQ_TRY(write_quant_config(x));
  HQ_TRY(copy_tokenizer(x));
  HQ_TRY(write_json(x, "config.json", x->cfg));
  return hq_pending_commit(&x->pend, x->out_dir);
}

int hq_export_gptq(const char *h5_path, const char *out_dir, const struct hq_export_opts *o,
                   struct hq_export_stats *st) {
  const double t0 = hq_now();
  struct export x = {.h5_path = h5_path, .out_dir = out_dir, .o = o,
                     .fmt = o->format ? o->format : HQ_PACK_GPTQ,
                     .shard_max = o->max_shard_bytes > 0 ? o->max_shard_bytes : 2000000000LL};
  if (!hq_pack_format_name(x.fmt)) return hq_fail(HQ_ERR_INPUT, "invalid checkpoint format");
  HQ_TRY(hq_outdir_check(out_dir, o->overwrite));
  HQ_TRY(hq_h5_open_read(h5_path, 0, &x.h));
  int rc = export_run(&x);
  export_free(&x, rc);
  x.S.seconds = hq_now() - t0;
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) == 0) x.S.peak_rss_kb = (int64_t)ru.ru_maxrss;
  if (st) *st = x.S;
  return rc;
}
