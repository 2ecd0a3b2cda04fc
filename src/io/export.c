/* hpcq export: an .h5 result as a GPTQ safetensors checkpoint (src/io/export.h). Not collective.
 *
 * Flow: open the result (h5io: refuses incomplete/foreign files), plan every tensor of the
 * checkpoint (4 per quantized linear in plan order, then the unquantized tensors), split the
 * plan into shards, pre-check the zero points when writing the v1 convention, then stream:
 * one linear (or one piece of an unquantized tensor) in memory at a time, each shard into a
 * hidden temporary file. Config, quantize_config, the index and the tokenizer files go to
 * temporary files too; only when everything is written are they renamed, config.json last. */
#include "export.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "fileio.h"
#include "h5check.h"
#include "h5io.h"
#include "util.h"

/* ======================= streaming safetensors writer ======================= */

struct hq_stw {
  FILE *f;
  char *path;
  size_t total;   /* data bytes announced by the header */
  size_t written; /* data bytes written so far */
};

static size_t dtype_size(const char *d) {
  if (!strcmp(d, "F32") || !strcmp(d, "I32")) return 4;
  if (!strcmp(d, "F16") || !strcmp(d, "BF16")) return 2;
  return 0;
}

static cJSON *raw_int(int64_t v) {
  char b[32];
  snprintf(b, sizeof b, "%lld", (long long)v);
  return cJSON_CreateRaw(b); /* exact integers at any size (cJSON numbers are doubles) */
}

int hq_stw_open(const char *path, const struct hq_stw_entry *e, int64_t n, struct hq_stw **out) {
  *out = NULL;
  cJSON *root = cJSON_CreateObject();
  cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
  cJSON_AddStringToObject(meta, "format", "pt");
  size_t off = 0;
  for (int64_t i = 0; i < n; i++) {
    size_t es = dtype_size(e[i].dtype);
    int64_t numel = 1;
    if (!es || e[i].ndim < 0 || e[i].ndim > HQ_ST_MAXDIM) {
      cJSON_Delete(root);
      return hq_fail(HQ_ERR_INPUT, "safetensors writer: tensor %s has dtype '%s' / %d dims "
                     "(supported: I32 F32 F16 BF16, at most %d dims)", e[i].name, e[i].dtype,
                     e[i].ndim, HQ_ST_MAXDIM);
    }
    for (int d = 0; d < e[i].ndim; d++) numel *= e[i].shape[d];
    if (numel < 0 || (size_t)numel * es != e[i].nbytes) {
      cJSON_Delete(root);
      return hq_fail(HQ_ERR_INPUT, "safetensors writer: tensor %s: %zu bytes for %lld %s "
                     "elements", e[i].name, e[i].nbytes, (long long)numel, e[i].dtype);
    }
    if (cJSON_GetObjectItemCaseSensitive(root, e[i].name)) {
      cJSON_Delete(root);
      return hq_fail(HQ_ERR_INPUT, "safetensors writer: tensor %s appears twice", e[i].name);
    }
    cJSON *t = cJSON_AddObjectToObject(root, e[i].name);
    cJSON_AddStringToObject(t, "dtype", e[i].dtype);
    cJSON *sh = cJSON_AddArrayToObject(t, "shape");
    for (int d = 0; d < e[i].ndim; d++) cJSON_AddItemToArray(sh, raw_int(e[i].shape[d]));
    cJSON *of = cJSON_AddArrayToObject(t, "data_offsets");
    cJSON_AddItemToArray(of, raw_int((int64_t)off));
    cJSON_AddItemToArray(of, raw_int((int64_t)(off + e[i].nbytes)));
    off += e[i].nbytes;
  }
  char *js = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  if (!js) return hq_fail(HQ_ERR_NOMEM, "safetensors writer: out of memory building the header");
  size_t len = strlen(js), padded = (len + 7) / 8 * 8; /* 8 + padded: data 8-byte aligned */
  FILE *f = fopen(path, "wb");
  if (!f) {
    free(js);
    return hq_fail(HQ_ERR_IO, "cannot create %s: %s", path, strerror(errno));
  }
  unsigned char hl[8];
  for (int k = 0; k < 8; k++) hl[k] = (unsigned char)((uint64_t)padded >> (8 * k));
  int ok = fwrite(hl, 1, 8, f) == 8 && fwrite(js, 1, len, f) == len;
  for (size_t k = len; ok && k < padded; k++) ok = fputc(' ', f) != EOF;
  free(js);
  if (!ok) {
    int er = errno;
    fclose(f);
    return hq_fail(HQ_ERR_IO, "cannot write %s: %s", path, strerror(er));
  }
  struct hq_stw *w = hq_xcalloc(1, sizeof *w);
  w->f = f;
  w->path = strdup(path);
  w->total = off;
  *out = w;
  return HQ_OK;
}

int hq_stw_write(struct hq_stw *w, const void *data, size_t nbytes) {
  if (nbytes > w->total - w->written)
    return hq_fail(HQ_ERR_INPUT, "safetensors writer: %s: %zu bytes more than the header "
                   "announced", w->path, w->written + nbytes - w->total);
  if (nbytes && fwrite(data, 1, nbytes, w->f) != nbytes)
    return hq_fail(HQ_ERR_IO, "cannot write %s: %s (disk full?)", w->path, strerror(errno));
  w->written += nbytes;
  return HQ_OK;
}

int hq_stw_close(struct hq_stw *w) {
  int rc = HQ_OK;
  if (w->written != w->total)
    rc = hq_fail(HQ_ERR_INPUT, "safetensors writer: %s: %zu of %zu data bytes written", w->path,
                 w->written, w->total);
  if (fflush(w->f) != 0 || fsync(fileno(w->f)) != 0) {
    if (!rc) rc = hq_fail(HQ_ERR_IO, "cannot write %s: %s (disk full?)", w->path, strerror(errno));
  }
  if (fclose(w->f) != 0 && !rc)
    rc = hq_fail(HQ_ERR_IO, "cannot close %s: %s", w->path, strerror(errno));
  free(w->path);
  free(w);
  return rc;
}

void hq_stw_abort(struct hq_stw *w) {
  if (!w) return;
  fclose(w->f);
  free(w->path);
  free(w);
}

/* ======================= helpers ======================= */

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

static char *path_join(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = hq_xmalloc(n);
  snprintf(p, n, "%s/%s", dir, name);
  return p;
}

static int mkdir_p(const char *dir) {
  char *p = strdup(dir);
  int rc = HQ_OK;
  for (char *s = p + 1;; s++) {
    if (*s == '/' || *s == 0) {
      char c = *s;
      *s = 0;
      if (mkdir(p, 0777) != 0 && errno != EEXIST) {
        rc = hq_fail(HQ_ERR_IO, "cannot create directory %s: %s", p, strerror(errno));
        break;
      }
      *s = c;
      if (!c) break;
    }
  }
  free(p);
  if (rc) return rc;
  struct stat sb;
  if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
    return hq_fail(HQ_ERR_IO, "--out %s exists and is not a directory", dir);
  return HQ_OK;
}

/* 1 when the directory holds anything but . and .. (or cannot be listed), 0 when empty. */
static int dir_nonempty(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 1;
  struct dirent *de;
  int any = 0;
  while ((de = readdir(d)))
    if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
      any = 1;
      break;
    }
  closedir(d);
  return any;
}

static int ends_with(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && !strcmp(s + a - b, suf);
}

static int copy_file(const char *src, const char *dst) {
  FILE *in;
  HQ_TRY(hq_fopen_regular(src, "tokenizer file", &in));
  FILE *out = fopen(dst, "wb");
  if (!out) {
    fclose(in);
    return hq_fail(HQ_ERR_IO, "cannot create %s: %s", dst, strerror(errno));
  }
  char buf[1 << 16];
  size_t n;
  int rc = HQ_OK;
  while ((n = fread(buf, 1, sizeof buf, in)) > 0)
    if (fwrite(buf, 1, n, out) != n) {
      rc = hq_fail(HQ_ERR_IO, "cannot write %s: %s", dst, strerror(errno));
      break;
    }
  if (!rc && ferror(in)) rc = hq_fail(HQ_ERR_IO, "cannot read %s", src);
  if ((fflush(out) != 0 || fsync(fileno(out)) != 0) && !rc)
    rc = hq_fail(HQ_ERR_IO, "cannot write %s: %s", dst, strerror(errno));
  fclose(in);
  if (fclose(out) != 0 && !rc) rc = hq_fail(HQ_ERR_IO, "cannot close %s", dst);
  return rc;
}

static int write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  if (!f) return hq_fail(HQ_ERR_IO, "cannot create %s: %s", path, strerror(errno));
  size_t n = strlen(text);
  int ok = fwrite(text, 1, n, f) == n && fputc('\n', f) != EOF && fflush(f) == 0 &&
           fsync(fileno(f)) == 0;
  int er = errno;
  if (fclose(f) != 0) ok = 0;
  return ok ? HQ_OK : hq_fail(HQ_ERR_IO, "cannot write %s: %s", path, strerror(er));
}

/* ======================= the export ======================= */

/* Temporary files created in the output folder: removed on failure, renamed at the end. */
struct pending {
  char **tmp, **final;
  int n, cap;
};

static char *pending_add(struct pending *p, const char *dir, const char *name) {
  if (p->n == p->cap) {
    p->cap = p->cap ? 2 * p->cap : 16;
    p->tmp = realloc(p->tmp, (size_t)p->cap * sizeof *p->tmp);
    p->final = realloc(p->final, (size_t)p->cap * sizeof *p->final);
    HQ_ASSERT(p->tmp && p->final);
  }
  size_t n = strlen(name) + 8;
  char *t = hq_xmalloc(n);
  snprintf(t, n, ".%s.tmp", name);
  p->tmp[p->n] = path_join(dir, t);
  free(t);
  p->final[p->n] = path_join(dir, name);
  return p->tmp[p->n++];
}

static void pending_free(struct pending *p, int remove_tmp) {
  for (int i = 0; i < p->n; i++) {
    if (remove_tmp) unlink(p->tmp[i]);
    free(p->tmp[i]);
    free(p->final[i]);
  }
  free(p->tmp);
  free(p->final);
  memset(p, 0, sizeof *p);
}

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

static int cmp_item_tensor(const void *a, const void *b) {
  const struct item *x = a, *y = b;
  if (dtype_size(x->e.dtype) != dtype_size(y->e.dtype))
    return dtype_size(x->e.dtype) > dtype_size(y->e.dtype) ? -1 : 1; /* 4-byte types first */
  return strcmp(x->name, y->name);
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

/* Pre-check before writing anything: every stored zero point is representable in v1.
 * Reads only the qzeros datasets (small). */
static int precheck_v1(hid_t f, char **lin, const struct hq_h5_linear_desc *d, int64_t nlin) {
  int rc = HQ_OK;
  for (int64_t i = 0; i < nlin && !rc; i++) {
    if (d[i].format == HQ_PACK_GPTQ) continue; /* already v1: every zero was representable */
    struct hq_packed p;
    memset(&p, 0, sizeof p);
    p.bits = d[i].bits;
    p.format = d[i].format;
    p.out = d[i].rows;
    p.ngroups = d[i].ngroups;
    size_t words = (size_t)d[i].ngroups * (size_t)(d[i].rows * d[i].bits / 32);
    p.qzeros = malloc(words * sizeof(int32_t));
    if (!p.qzeros) return hq_fail(HQ_ERR_NOMEM, "out of memory reading %s qzeros", lin[i]);
    char path[1100];
    snprintf(path, sizeof path, "/linears/%s/qzeros", lin[i]);
    hid_t ds = H5Dopen2(f, path, H5P_DEFAULT);
    herr_t e = ds >= 0 ? H5Dread(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, p.qzeros) : -1;
    if (ds >= 0) H5Dclose(ds);
    if (e < 0) rc = hq_fail(HQ_ERR_IO, "cannot read %s", path);
    else rc = convert_zeros(&p, HQ_PACK_GPTQ, lin[i]);
    free(p.qzeros);
  }
  return rc;
}

static const char *tokenizer_files[] = {"tokenizer.model", "tokenizer.json",
                                        "tokenizer_config.json", "special_tokens_map.json",
                                        "generation_config.json", "added_tokens.json"};

static int attr_i64_or(struct hq_h5 *h, const char *name, int64_t def, int64_t *v) {
  if (!hq_h5_attr_exists(h, "/", name)) {
    *v = def;
    return HQ_OK;
  }
  return hq_h5_attr_get_i64(h, "/", name, v);
}

/* The quantization_config object (also the content of quantize_config.json). */
static cJSON *quant_config(struct hq_h5 *h, int bits, int64_t group_size,
                           enum hq_pack_format fmt) {
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
  cJSON_AddNullToObject(q, "model_name_or_path");
  cJSON_AddNullToObject(q, "model_file_base_name");
  cJSON *meta = cJSON_AddObjectToObject(q, "meta");
  cJSON *qz = cJSON_AddArrayToObject(meta, "quantizer");
  cJSON_AddItemToArray(qz, cJSON_CreateString("hpcq:" HQ_VERSION));
  cJSON_AddStringToObject(meta, "hpcq_method", method ? method : "gptq");
  free(method);
  return q;
}

/* The whole result against its own config (src/io/h5check.h) before anything is written. */
static int check_result(struct hq_h5 *h, const char *h5_path, const char *cfg_text) {
  struct hq_model_config c;
  int rc = hq_config_parse(cfg_text, strlen(cfg_text), "model_config_json", &c);
  if (!rc) rc = hq_h5_check_model(h, &c);
  hq_config_free(&c);
  return rc ? hq_fail_ctx(rc, "%s: ", h5_path) : HQ_OK;
}

int hq_export_gptq(const char *h5_path, const char *out_dir, const struct hq_export_opts *o,
                   struct hq_export_stats *st) {
  const double t0 = hq_now();
  struct hq_export_stats S;
  memset(&S, 0, sizeof S);
  const enum hq_pack_format fmt = o->format ? o->format : HQ_PACK_GPTQ;
  const int64_t shard_max = o->max_shard_bytes > 0 ? o->max_shard_bytes : 2000000000LL;
  if (!hq_pack_format_name(fmt)) return hq_fail(HQ_ERR_INPUT, "invalid checkpoint format");

  struct stat sb;
  if (stat(out_dir, &sb) == 0) {
    if (!S_ISDIR(sb.st_mode))
      return hq_fail(HQ_ERR_INPUT, "--out %s exists and is not a directory", out_dir);
    if (dir_nonempty(out_dir) && !o->overwrite)
      return hq_fail(HQ_ERR_INPUT, "--out %s exists and is not empty; add --overwrite to "
                     "replace the checkpoint in it, or choose a new folder", out_dir);
  }

  struct hq_h5 *h = NULL;
  hid_t raw = -1;
  int rc = hq_h5_open_read(h5_path, 0, &h);
  if (rc) return rc;
  char **lin = NULL, **ten = NULL, *cfg_text = NULL, *model_dir = NULL;
  int64_t nlin = 0, nten = 0, nitems = 0;
  struct hq_h5_linear_desc *desc = NULL;
  struct item *items = NULL;
  struct pending pend = {0};
  struct hq_stw *w = NULL;
  void *buf = NULL;
  cJSON *cfg = NULL;
  struct hq_packed cur;
  int cur_lin = -1;
  memset(&cur, 0, sizeof cur);
  int64_t bits = 0, group_size = 0;

  if ((rc = hq_h5_attr_get_str(h, "/", "model_config_json", &cfg_text))) goto out;
  if ((rc = check_result(h, h5_path, cfg_text))) goto out;
  cfg = hq_json_parse_whole(cfg_text, strlen(cfg_text), NULL);
  if (!cfg || !cJSON_IsObject(cfg)) {
    rc = hq_fail(HQ_ERR_INPUT, "%s: the model_config_json attribute is not a JSON object "
                 "(damaged file?)", h5_path);
    goto out;
  }
  if (hq_h5_attr_exists(h, "/", "model_dir")) hq_h5_attr_get_str(h, "/", "model_dir", &model_dir);
  if ((rc = hq_h5_attr_get_i64(h, "/", "bits", &bits))) goto out;
  if ((rc = hq_h5_attr_get_i64(h, "/", "group_size", &group_size))) goto out;
  if ((rc = hq_h5_list_linears(h, &lin, &nlin))) goto out;
  if ((rc = hq_h5_list_tensors(h, &ten, &nten))) goto out;
  if (nlin == 0) {
    rc = hq_fail(HQ_ERR_INPUT, "%s holds no quantized linear; nothing to export", h5_path);
    goto out;
  }

  {
    int64_t act_bits = 0;
    attr_i64_or(h, "act_bits", 0, &act_bits);
    if (act_bits > 0 && !o->quiet)
      fprintf(stderr, "hpcq export: warning: %s was quantized with --act-bits %lld; a GPTQ "
              "checkpoint holds the quantized weights only, and loaders run them with "
              "unquantized activations\n", h5_path, (long long)act_bits);
  }

  /* ---- plan: 4 tensors per linear (plan order), then the unquantized tensors ---- */
  desc = hq_xcalloc((size_t)nlin, sizeof *desc);
  items = hq_xcalloc((size_t)(4 * nlin + nten), sizeof *items);
  for (int64_t i = 0; i < nlin; i++) {
    struct hq_h5_linear_desc *d = &desc[i];
    if ((rc = hq_h5_linear_info(h, lin[i], d))) goto out;
    const int64_t gs_file = d->group_size > 0 ? d->group_size : -1;
    const int64_t gs_root = group_size > 0 ? group_size : -1;
    if (d->bits != bits || gs_file != gs_root) {
      rc = hq_fail(HQ_ERR_UNSUPPORTED, "%s: linear %s has %d bits / group size %lld but the file "
                   "says %lld / %lld; a GPTQ config has one setting for all layers", h5_path,
                   lin[i], d->bits, (long long)d->group_size, (long long)bits,
                   (long long)group_size);
      goto out;
    }
    const int64_t b = d->bits;
    for (int k = 0; k < 4; k++) {
      struct item *it = &items[nitems++];
      snprintf(it->name, sizeof it->name, "%s.%s", lin[i], lin_parts[k]);
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
      it->e.nbytes = (size_t)(k == 0 ? s[0] : s[0] * s[1]) * dtype_size(it->e.dtype);
    }
  }
  const int64_t first_tensor = nitems;
  for (int64_t i = 0; i < nten; i++) {
    struct item *it = &items[nitems++];
    snprintf(it->name, sizeof it->name, "%s", ten[i]);
    it->linear = -1;
    if ((rc = hq_h5_tensor_info(h, ten[i], &it->dtype, &it->e.ndim, it->e.shape))) goto out;
    it->e.name = it->name;
    it->e.dtype = hq_dtype_name(it->dtype);
    int64_t numel = 1;
    for (int k = 0; k < it->e.ndim; k++) numel *= it->e.shape[k];
    it->e.nbytes = (size_t)numel * hq_dtype_size(it->dtype);
  }
  /* 4-byte dtypes before 2-byte ones: with every linear tensor a multiple of 4 bytes long,
   * every tensor then starts aligned to its element size */
  qsort(items + first_tensor, (size_t)(nitems - first_tensor), sizeof *items, cmp_item_tensor);
  for (int64_t i = first_tensor; i < nitems; i++) items[i].e.name = items[i].name;

  /* shards: consecutive runs of at most shard_max data bytes (a bigger tensor alone) */
  {
    int shard = 0;
    int64_t acc = 0;
    for (int64_t i = 0; i < nitems; i++) {
      if (acc > 0 && acc + (int64_t)items[i].e.nbytes > shard_max) shard++, acc = 0;
      items[i].shard = shard;
      acc += (int64_t)items[i].e.nbytes;
      S.bytes += (int64_t)items[i].e.nbytes;
    }
    S.nshards = shard + 1;
  }

  /* the tokenizer files of the source model, and the output folder must not be that folder */
  struct stat md;
  int have_src = model_dir && stat(model_dir, &md) == 0 && S_ISDIR(md.st_mode);
  if (have_src && stat(out_dir, &sb) == 0 && sb.st_dev == md.st_dev && sb.st_ino == md.st_ino) {
    rc = hq_fail(HQ_ERR_INPUT, "--out %s is the source model folder; choose another folder",
                 out_dir);
    goto out;
  }

  /* ---- v1 cannot store a zero of 0: check every linear before writing anything ---- */
  {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
#if H5_VERSION_GE(1, 10, 7)
    H5Pset_file_locking(fapl, 0, 1);
#endif
    raw = H5Fopen(h5_path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (raw < 0) {
      rc = hq_fail(HQ_ERR_IO, "cannot open %s", h5_path);
      goto out;
    }
  }
  if (fmt == HQ_PACK_GPTQ && (rc = precheck_v1(raw, lin, desc, nlin))) goto out;

  if ((rc = mkdir_p(out_dir))) goto out;
  /* leftovers of an interrupted export (only reachable with --overwrite: the folder was not
   * empty otherwise) */
  {
    DIR *dd = opendir(out_dir);
    struct dirent *de;
    while (dd && (de = readdir(dd)))
      if (de->d_name[0] == '.' && ends_with(de->d_name, ".tmp")) {
        char *p = path_join(out_dir, de->d_name);
        unlink(p);
        free(p);
      }
    if (dd) closedir(dd);
  }

  /* ---- stream the shards ---- */
  const size_t piece = (size_t)64 << 20; /* unquantized tensors move in pieces of <= 64 MiB */
  buf = hq_xmalloc(piece);
  for (int s = 0; s < S.nshards; s++) {
    char fname[64];
    if (S.nshards == 1) snprintf(fname, sizeof fname, "model.safetensors");
    else snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, S.nshards);
    const char *tmp = pending_add(&pend, out_dir, fname);
    int64_t a = 0, b = 0;
    while (a < nitems && items[a].shard != s) a++;
    for (b = a; b < nitems && items[b].shard == s; b++) continue;
    struct hq_stw_entry *ents = hq_xmalloc((size_t)(b - a) * sizeof *ents);
    for (int64_t i = a; i < b; i++) ents[i - a] = items[i].e;
    rc = hq_stw_open(tmp, ents, b - a, &w);
    free(ents);
    if (rc) goto out;
    for (int64_t i = a; i < b; i++) {
      struct item *it = &items[i];
      if (it->linear >= 0) {
        if (cur_lin != it->linear) { /* each linear is read once: its 4 items are adjacent */
          hq_pack_free(&cur);
          cur_lin = -1;
          if ((rc = hq_h5_linear_read(h, lin[it->linear], &cur))) goto out;
          if ((rc = convert_zeros(&cur, fmt, lin[it->linear]))) goto out;
          cur_lin = it->linear;
          S.nlinears++;
        }
        const void *src = it->part == 0 ? (const void *)cur.g_idx
                          : it->part == 1 ? (const void *)cur.qweight
                          : it->part == 2 ? (const void *)cur.qzeros : (const void *)cur.scales;
        if ((rc = hq_stw_write(w, src, it->e.nbytes))) goto out;
      } else {
        const size_t es = hq_dtype_size(it->dtype);
        int64_t rows = it->e.ndim ? it->e.shape[0] : 1, rowb = (int64_t)es;
        for (int k = 1; k < it->e.ndim; k++) rowb *= it->e.shape[k];
        int64_t step = rowb > 0 ? (int64_t)(piece / (size_t)rowb) : rows;
        if (step < 1) { /* one row larger than a piece: read the tensor whole */
          free(buf);
          buf = hq_xmalloc(it->e.nbytes ? it->e.nbytes : 1);
          step = rows;
        }
        uint64_t sum = 0; /* its checksum, verified before the shard is renamed into place */
        for (int64_t r = 0; r < rows && rowb > 0; r += step) {
          int64_t nr = rows - r < step ? rows - r : step;
          if ((rc = hq_h5_read_tensor_rows(h, it->name, r, nr, buf, &sum))) goto out;
          if ((rc = hq_stw_write(w, buf, (size_t)(nr * rowb)))) goto out;
        }
        if ((rc = hq_h5_tensor_check_sum(h, it->name, sum))) goto out;
      }
      S.ntensors++;
    }
    rc = hq_stw_close(w);
    w = NULL;
    if (rc) goto out;
    if (!o->quiet && S.nshards > 1)
      fprintf(stderr, "[export] shard %d/%d written (%lld tensors)\n", s + 1, S.nshards,
              (long long)(b - a));
  }
  hq_pack_free(&cur);
  cur_lin = -1;

  /* ---- index, quantize_config.json, tokenizer files, config.json (renamed last) ---- */
  if (S.nshards > 1) {
    cJSON *idx = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(idx, "metadata");
    cJSON_AddItemToObject(meta, "total_size", raw_int(S.bytes));
    cJSON *wm = cJSON_AddObjectToObject(idx, "weight_map");
    /* sorted by name, as Hugging Face writes it */
    int64_t *ord = hq_xmalloc((size_t)nitems * sizeof *ord);
    for (int64_t i = 0; i < nitems; i++) ord[i] = i;
    for (int64_t i = 1; i < nitems; i++) /* insertion sort on names (a few thousand) */
      for (int64_t j = i; j > 0 && strcmp(items[ord[j - 1]].name, items[ord[j]].name) > 0; j--) {
        int64_t t = ord[j];
        ord[j] = ord[j - 1];
        ord[j - 1] = t;
      }
    for (int64_t i = 0; i < nitems; i++) {
      char fname[64];
      snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", items[ord[i]].shard + 1,
               S.nshards);
      cJSON_AddStringToObject(wm, items[ord[i]].name, fname);
    }
    free(ord);
    char *txt = cJSON_Print(idx);
    cJSON_Delete(idx);
    rc = write_text(pending_add(&pend, out_dir, "model.safetensors.index.json"), txt);
    free(txt);
    if (rc) goto out;
  }
  {
    cJSON *q = quant_config(h, (int)bits, group_size, fmt);
    char *txt = cJSON_Print(q);
    rc = write_text(pending_add(&pend, out_dir, "quantize_config.json"), txt);
    free(txt);
    cJSON_DeleteItemFromObjectCaseSensitive(cfg, "quantization_config");
    cJSON_AddItemToObject(cfg, "quantization_config", q);
    if (rc) goto out;
  }
  if (have_src) {
    for (size_t k = 0; k < sizeof tokenizer_files / sizeof *tokenizer_files; k++) {
      char *src = path_join(model_dir, tokenizer_files[k]);
      if (access(src, R_OK) == 0) {
        rc = copy_file(src, pending_add(&pend, out_dir, tokenizer_files[k]));
        S.ntokenizer_files++;
      }
      free(src);
      if (rc) goto out;
    }
  } else if (!o->quiet) {
    fprintf(stderr, "hpcq export: warning: the source model folder %s%s%s is not available; "
            "the checkpoint has no tokenizer files (copy them from the original model)\n",
            model_dir ? "'" : "", model_dir ? model_dir : "(not recorded in the file)",
            model_dir ? "'" : "");
  }
  {
    char *txt = cJSON_Print(cfg);
    rc = write_text(pending_add(&pend, out_dir, "config.json"), txt);
    free(txt);
    if (rc) goto out;
  }

  /* ---- commit: the old config.json goes first, the new one comes last ---- */
  {
    char *oldcfg = path_join(out_dir, "config.json");
    unlink(oldcfg);
    free(oldcfg);
    DIR *dd = opendir(out_dir);
    struct dirent *de;
    while (dd && (de = readdir(dd))) /* stale shards/index of an earlier export */
      if (de->d_name[0] != '.' && (ends_with(de->d_name, ".safetensors") ||
                                   ends_with(de->d_name, ".safetensors.index.json"))) {
        char *p = path_join(out_dir, de->d_name);
        unlink(p);
        free(p);
      }
    if (dd) closedir(dd);
    for (int i = 0; i < pend.n; i++)
      if (rename(pend.tmp[i], pend.final[i]) != 0) {
        rc = hq_fail(HQ_ERR_IO, "cannot rename %s to %s: %s", pend.tmp[i], pend.final[i],
                     strerror(errno));
        goto out;
      }
    int dfd = open(out_dir, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
      fsync(dfd);
      close(dfd);
    }
  }

out:
  hq_stw_abort(w);
  hq_pack_free(&cur);
  free(buf);
  pending_free(&pend, rc != HQ_OK);
  if (raw >= 0) H5Fclose(raw);
  hq_h5_names_free(lin, nlin);
  hq_h5_names_free(ten, nten);
  free(desc);
  free(items);
  free(cfg_text);
  free(model_dir);
  cJSON_Delete(cfg);
  hq_h5_close(h);
  S.seconds = hq_now() - t0;
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) == 0) S.peak_rss_kb = (int64_t)ru.ru_maxrss;
  if (st) *st = S;
  return rc;
}
