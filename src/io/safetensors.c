/* safetensors reader: single files and sharded folders (model.safetensors.index.json), mmap'ed.
 * Format: u64 little-endian header length N, N bytes of JSON header, then the data section.
 * Every entry of the header is validated before any pointer into the data is formed. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "fileio.h"
#include "model.h"
#include "quant.h"

/* A header larger than this is not a real checkpoint (the largest HF headers are ~1 MB). */
#define HQ_ST_MAX_HEADER ((size_t)100 << 20)
/* Offsets and dimensions must be exact integers in a double (cJSON stores numbers as double). */
#define HQ_ST_MAX_INT 9007199254740992.0 /* 2^53 */

const char *hq_dtype_name(enum hq_dtype d) {
  switch (d) {
  case HQ_DTYPE_F32: return "F32";
  case HQ_DTYPE_F16: return "F16";
  case HQ_DTYPE_BF16: return "BF16";
  case HQ_DTYPE_I32: return "I32";
  }
  return "?";
}

size_t hq_dtype_size(enum hq_dtype d) {
  switch (d) {
  case HQ_DTYPE_F32: return 4;
  case HQ_DTYPE_F16: return 2;
  case HQ_DTYPE_BF16: return 2;
  case HQ_DTYPE_I32: return 4;
  }
  return 0;
}

/* A JSON number that is an exact non-negative integer below 2^53. */
static int json_uint(const cJSON *j, int64_t *out) {
  if (!cJSON_IsNumber(j)) return 0;
  double v = j->valuedouble;
  if (!(v >= 0.0) || v > HQ_ST_MAX_INT || v != (double)(int64_t)v) return 0;
  *out = (int64_t)v;
  return 1;
}

static int cmp_tensor_name(const void *a, const void *b) {
  return strcmp(((const struct hq_st_tensor *)a)->name, ((const struct hq_st_tensor *)b)->name);
}

struct span { int64_t begin, end, idx; };
static int cmp_span(const void *a, const void *b) {
  const struct span *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return 0;
}

static void free_tensors(struct hq_st_tensor *t, int64_t n) {
  for (int64_t i = 0; i < n; i++) free(t[i].name);
  free(t);
}

/* dtype, shape and data_offsets of a header entry: present and of the right JSON type, the
 * dtype one hpcq reads (into t->dtype). */
static int entry_fields(const cJSON *e, const char *what, struct hq_st_tensor *t,
                        const cJSON **js, const cJSON **jo) {
  const char *name = e->string;
  if (!cJSON_IsObject(e))
    return hq_fail(HQ_ERR_INPUT, "%s: header entry for tensor '%s' is not a JSON object; "
                   "the file is not a valid safetensors file", what, name);
  const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
  *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
  *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
  if (!cJSON_IsString(jd))
    return hq_fail(HQ_ERR_INPUT, "%s: tensor '%s' has no \"dtype\" string in the header; "
                   "the file is not a valid safetensors file", what, name);
  if (!cJSON_IsArray(*js))
    return hq_fail(HQ_ERR_INPUT, "%s: tensor '%s' has no \"shape\" array in the header; "
                   "the file is not a valid safetensors file", what, name);
  if (!cJSON_IsArray(*jo))
    return hq_fail(HQ_ERR_INPUT, "%s: tensor '%s' has no \"data_offsets\" array in the header; "
                   "the file is not a valid safetensors file", what, name);
  const char *ds = jd->valuestring;
  if (strcmp(ds, "F32") == 0) t->dtype = HQ_DTYPE_F32;
  else if (strcmp(ds, "F16") == 0) t->dtype = HQ_DTYPE_F16;
  else if (strcmp(ds, "BF16") == 0) t->dtype = HQ_DTYPE_BF16;
  else if (strcmp(ds, "I32") == 0) t->dtype = HQ_DTYPE_I32; /* GPTQ packed tensors (model.c) */
  else
    return hq_fail(HQ_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype '%.40s', which hpcq does not "
                   "read; supported dtypes are BF16, F16 and F32 (and I32 for the packed tensors "
                   "of a GPTQ checkpoint); convert the checkpoint, e.g. with transformers' "
                   "dtype=torch.bfloat16", what, name, ds);
  return HQ_OK;
}

/* The shape array into t->ndim, t->shape (unused dimensions 0) and t->numel, whose byte size
 * must fit int64. */
static int entry_shape(const cJSON *js, const char *what, const char *name,
                       struct hq_st_tensor *t) {
  int nd = cJSON_GetArraySize(js);
  if (nd > HQ_ST_MAXDIM)
    return hq_fail(HQ_ERR_UNSUPPORTED, "%s: tensor '%s' has %d dimensions; at most %d are "
                   "supported", what, name, nd, HQ_ST_MAXDIM);
  t->ndim = nd;
  int64_t numel = 1;
  int k = 0;
  int overflow = 0;
  for (const cJSON *d = js->child; d; d = d->next, k++) {
    int64_t v;
    if (!json_uint(d, &v))
      return hq_fail(HQ_ERR_INPUT, "%s: tensor '%s': shape entry %d is not a non-negative "
                     "integer; the header is corrupt", what, name, k);
    t->shape[k] = v;
    if (v == 0) numel = 0;
    else if (!overflow && numel > INT64_MAX / v) overflow = 1;
    else if (!overflow) numel *= v;
  }
  for (int i = nd; i < HQ_ST_MAXDIM; i++) t->shape[i] = 0;
  size_t esz = hq_dtype_size(t->dtype);
  if (numel != 0 && (overflow || numel > (int64_t)(INT64_MAX / (int64_t)esz)))
    return hq_fail(HQ_ERR_INPUT, "%s: tensor '%s': shape is too large (element count overflows "
                   "64 bits); the header is corrupt", what, name);
  t->numel = numel;
  return HQ_OK;
}

/* data_offsets [begin, end) into *begin, *end: inside the data section and exactly the bytes
 * of t's dtype and shape (t->nbytes). */
static int entry_offsets(const cJSON *jo, const char *what, const char *name, size_t data_len,
                         struct hq_st_tensor *t, int64_t *begin, int64_t *end) {
  if (cJSON_GetArraySize(jo) != 2 || !json_uint(jo->child, begin) ||
      !json_uint(jo->child->next, end))
    return hq_fail(HQ_ERR_INPUT, "%s: tensor '%s': \"data_offsets\" must be two non-negative "
                   "integers [begin, end]; the header is corrupt", what, name);
  if (*begin > *end)
    return hq_fail(HQ_ERR_INPUT, "%s: tensor '%s': data_offsets [%lld, %lld] has begin > end; "
                   "the header is corrupt", what, name, (long long)*begin, (long long)*end);
  if ((uint64_t)*end > (uint64_t)data_len)
    return hq_fail(HQ_ERR_INPUT, "%s: tensor '%s': data_offsets [%lld, %lld] extend past the end "
                   "of the data section (%zu bytes); the file is truncated or its header is "
                   "corrupt (re-download it)", what, name, (long long)*begin, (long long)*end,
                   data_len);
  int64_t want = t->numel * (int64_t)hq_dtype_size(t->dtype);
  if (*end - *begin != want)
    return hq_fail(HQ_ERR_INPUT, "%s: tensor '%s': data_offsets [%lld, %lld] hold %lld bytes but "
                   "%s shape with %lld elements needs %lld; the header is corrupt", what, name,
                   (long long)*begin, (long long)*end, (long long)(*end - *begin),
                   hq_dtype_name(t->dtype), (long long)t->numel, (long long)want);
  t->nbytes = (size_t)want;
  return HQ_OK;
}

/* Validate one header entry into *t. Returns a status; messages name file and tensor. */
static int parse_entry(const cJSON *e, const char *what, size_t data_len, struct hq_st_tensor *t,
                       int64_t *begin, int64_t *end) {
  const cJSON *js = NULL, *jo = NULL;
  HQ_TRY(entry_fields(e, what, t, &js, &jo));
  HQ_TRY(entry_shape(js, what, e->string, t));
  return entry_offsets(jo, what, e->string, data_len, t, begin, end);
}

/* The header text as a cJSON object (*root, the caller deletes it): valid JSON, followed by
 * padding only. */
static int header_root(const char *json, size_t len, const char *what, cJSON **root) {
  const char *endp = NULL;
  *root = cJSON_ParseWithLengthOpts(json, len, &endp, 0);
  if (!*root)
    return hq_fail(HQ_ERR_INPUT, "%s: the header is not valid JSON (error near byte %lld); the "
                   "file is not a safetensors file or is corrupt", what,
                   (long long)(cJSON_GetErrorPtr() && cJSON_GetErrorPtr() >= json &&
                                       cJSON_GetErrorPtr() <= json + len
                                   ? cJSON_GetErrorPtr() - json
                                   : -1));
  int rc = HQ_OK;
  /* The header may be padded with spaces (the format pads to 8 bytes); nothing else. */
  for (const char *p = endp ? endp : json + len; p < json + len && rc == HQ_OK; p++)
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != '\0')
      rc = hq_fail(HQ_ERR_INPUT, "%s: unexpected bytes after the JSON header (at byte %lld); "
                   "the file is corrupt", what, (long long)(p - json));
  if (rc == HQ_OK && !cJSON_IsObject(*root))
    rc = hq_fail(HQ_ERR_INPUT, "%s: the header is not a JSON object; the file is not a "
                 "safetensors file", what);
  if (rc != HQ_OK) {
    cJSON_Delete(*root);
    *root = NULL;
  }
  return rc;
}

/* No two tensors may share bytes (empty tensors own no bytes); sorts sp[n]. */
static int check_overlap(struct span *sp, int64_t n, const struct hq_st_tensor *tt,
                         const char *what) {
  if (n <= 1) return HQ_OK;
  qsort(sp, (size_t)n, sizeof *sp, cmp_span);
  int64_t prev = -1;
  for (int64_t k = 0; k < n; k++) {
    if (sp[k].begin == sp[k].end) continue;
    if (prev >= 0 && sp[k].begin < sp[prev].end)
      return hq_fail(HQ_ERR_INPUT, "%s: tensors '%s' [%lld, %lld) and '%s' [%lld, %lld) overlap "
                     "in the data section; the header is corrupt", what, tt[sp[prev].idx].name,
                     (long long)sp[prev].begin, (long long)sp[prev].end, tt[sp[k].idx].name,
                     (long long)sp[k].begin, (long long)sp[k].end);
    if (prev < 0 || sp[k].end > sp[prev].end) prev = k;
  }
  return HQ_OK;
}

/* The n tensor entries of root (all but __metadata__) into tt[n], validated, with their byte
 * ranges in sp[n]; *done: how many tt[] hold a name (to free on failure). */
static int parse_entries(const cJSON *root, const void *data, size_t data_len, int file_index,
                         const char *what, struct hq_st_tensor *tt, struct span *sp,
                         int64_t *done) {
  int64_t i = 0;
  int rc = HQ_OK;
  for (const cJSON *e = root->child; e && rc == HQ_OK; e = e->next) {
    if (strcmp(e->string, "__metadata__") == 0) continue;
    struct hq_st_tensor *t = &tt[i];
    int64_t b = 0, en = 0;
    rc = parse_entry(e, what, data_len, t, &b, &en);
    if (rc != HQ_OK) break;
    t->name = strdup(e->string);
    if (!t->name) {
      rc = hq_fail(HQ_ERR_NOMEM, "%s: out of memory", what);
      break;
    }
    t->file = file_index;
    t->data = data ? (const char *)data + b : NULL;
    sp[i] = (struct span){b, en, i};
    i++;
  }
  *done = i;
  return rc;
}

/* The header's tensors as a new array (*out, n entries; NULL when n == 0). */
static int header_tensors(const char *json, size_t len, const void *data, size_t data_len,
                          int file_index, const char *what, struct hq_st_tensor **out,
                          int64_t *nout) {
  cJSON *root = NULL;
  HQ_TRY(header_root(json, len, what, &root));
  int64_t n = 0;
  for (const cJSON *e = root->child; e; e = e->next)
    if (strcmp(e->string, "__metadata__") != 0) n++;
  struct hq_st_tensor *tt = n ? calloc((size_t)n, sizeof *tt) : NULL;
  struct span *sp = n ? calloc((size_t)n, sizeof *sp) : NULL;
  if (n && (!tt || !sp)) {
    free(tt);
    free(sp);
    cJSON_Delete(root);
    return hq_fail(HQ_ERR_NOMEM, "%s: out of memory for %lld header entries", what, (long long)n);
  }
  int64_t i = 0;
  int rc = parse_entries(root, data, data_len, file_index, what, tt, sp, &i);
  cJSON_Delete(root);
  if (rc == HQ_OK) rc = check_overlap(sp, n, tt, what);
  free(sp);
  if (rc != HQ_OK) {
    free_tensors(tt, i);
    return rc;
  }
  *out = tt;
  *nout = n;
  return HQ_OK;
}

/* Names must be unique, within tt[n] and across the files already in st; sorts tt by name. */
static int check_names(struct hq_st_tensor *tt, int64_t n, const struct hq_safetensors *st,
                       const char *what) {
  if (n > 1) qsort(tt, (size_t)n, sizeof *tt, cmp_tensor_name);
  for (int64_t k = 0; k < n; k++) {
    if (k > 0 && strcmp(tt[k - 1].name, tt[k].name) == 0)
      return hq_fail(HQ_ERR_INPUT, "%s: tensor '%s' appears twice in the header; the checkpoint "
                     "is corrupt", what, tt[k].name);
    const struct hq_st_tensor *o = hq_st_find(st, tt[k].name);
    if (o)
      return hq_fail(HQ_ERR_INPUT, "%s: tensor '%s' is also in %s; a tensor may be stored only "
                     "once in a checkpoint", what, tt[k].name,
                     o->file >= 0 && o->file < st->nfiles ? st->files[o->file].path
                                                          : "another header");
  }
  return HQ_OK;
}

/* Move tt[n] (n >= 1; freed in every case) into st's name-sorted tensor list. */
static int append_tensors(struct hq_safetensors *st, struct hq_st_tensor *tt, int64_t n,
                          const char *what) {
  if (st->ntensors > INT64_MAX / 2 - n) {
    free_tensors(tt, n);
    return hq_fail(HQ_ERR_INPUT, "%s: too many tensors", what);
  }
  struct hq_st_tensor *all = realloc(st->tensors, (size_t)(st->ntensors + n) * sizeof *all);
  if (!all) {
    free_tensors(tt, n);
    return hq_fail(HQ_ERR_NOMEM, "%s: out of memory", what);
  }
  memcpy(all + st->ntensors, tt, (size_t)n * sizeof *tt);
  free(tt);
  st->tensors = all;
  st->ntensors += n;
  qsort(all, (size_t)st->ntensors, sizeof *all, cmp_tensor_name);
  return HQ_OK;
}

int hq_st_parse_header(const char *json, size_t len, const void *data, size_t data_len,
                       int file_index, const char *what, struct hq_safetensors *st) {
  if (!what) what = "safetensors header";
  struct hq_st_tensor *tt = NULL;
  int64_t n = 0;
  HQ_TRY(header_tensors(json, len, data, data_len, file_index, what, &tt, &n));
  int rc = check_names(tt, n, st, what);
  if (rc != HQ_OK || n == 0) {
    free_tensors(tt, n);
    return rc;
  }
  return append_tensors(st, tt, n, what);
}

/* ---------------- files ---------------- */

static int map_file(const char *path, struct hq_st_file *f) {
  memset(f, 0, sizeof *f);
  int fd;
  HQ_TRY(hq_open_regular(path, "safetensors file", &fd));
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    int e = errno;
    close(fd);
    return hq_fail(HQ_ERR_IO, "cannot stat %s: %s", path, strerror(e));
  }
  size_t size = (size_t)sb.st_size;
  if (size < 10) {
    close(fd);
    return hq_fail(HQ_ERR_INPUT, "%s: only %zu bytes, too short for a safetensors file (8-byte "
                   "length + header); the file is truncated", path, size);
  }
  void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  close(fd);
  if (map == MAP_FAILED) return hq_fail(HQ_ERR_IO, "cannot mmap %s: %s", path, strerror(e));
  f->path = strdup(path);
  if (!f->path) {
    munmap(map, size);
    return hq_fail(HQ_ERR_NOMEM, "out of memory");
  }
  f->map = map;
  f->size = size;
  return HQ_OK;
}

/* Map `path` as file number st->nfiles and parse its header. */
static int add_file(struct hq_safetensors *st, const char *path) {
  struct hq_st_file *fs = realloc(st->files, (size_t)(st->nfiles + 1) * sizeof *fs);
  if (!fs) return hq_fail(HQ_ERR_NOMEM, "out of memory");
  st->files = fs;
  struct hq_st_file *f = &fs[st->nfiles];
  HQ_TRY(map_file(path, f));
  st->nfiles++;
  const unsigned char *b = f->map;
  uint64_t hl = 0;
  for (int i = 7; i >= 0; i--) hl = (hl << 8) | b[i];
  if (hl < 2 || hl > f->size - 8)
    return hq_fail(HQ_ERR_INPUT, "%s: header length %llu is impossible for a file of %zu bytes; "
                   "the file is truncated or not a safetensors file", path,
                   (unsigned long long)hl, f->size);
  if (hl > HQ_ST_MAX_HEADER)
    return hq_fail(HQ_ERR_INPUT, "%s: header length %llu exceeds the %zu MB limit; the file is "
                   "corrupt or not a safetensors file", path, (unsigned long long)hl,
                   HQ_ST_MAX_HEADER >> 20);
  return hq_st_parse_header((const char *)b + 8, (size_t)hl, b + 8 + hl, f->size - 8 - hl,
                            st->nfiles - 1, path, st);
}

static int read_text(const char *path, char **out, size_t *len) {
  FILE *fp;
  HQ_TRY(hq_fopen_regular(path, "safetensors index", &fp));
  if (fseek(fp, 0, SEEK_END) != 0) {
    fclose(fp);
    return hq_fail(HQ_ERR_IO, "cannot seek in %s", path);
  }
  long sz = ftell(fp);
  if (sz < 0 || (size_t)sz > HQ_ST_MAX_HEADER) {
    fclose(fp);
    return hq_fail(HQ_ERR_INPUT, "%s: unreadable or larger than %zu MB", path,
                   HQ_ST_MAX_HEADER >> 20);
  }
  rewind(fp);
  char *buf = malloc((size_t)sz + 1);
  if (!buf) {
    fclose(fp);
    return hq_fail(HQ_ERR_NOMEM, "out of memory reading %s", path);
  }
  size_t got = fread(buf, 1, (size_t)sz, fp);
  fclose(fp);
  if (got != (size_t)sz) {
    free(buf);
    return hq_fail(HQ_ERR_IO, "short read of %s", path);
  }
  buf[sz] = 0;
  *out = buf;
  *len = (size_t)sz;
  return HQ_OK;
}

/* Any kind of file: the open that follows refuses what is not a regular file, by name. */
static int file_exists(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0;
}

/* The index's weight_map (tensor name -> shard file name): a non-empty object in *root (the
 * caller deletes it). */
static int index_weight_map(const char *index_path, cJSON **root, const cJSON **wm) {
  char *text = NULL;
  size_t len = 0;
  HQ_TRY(read_text(index_path, &text, &len));
  long long at = -1;
  *root = hq_json_parse_whole(text, len, &at);
  free(text);
  if (!*root)
    return hq_fail(HQ_ERR_INPUT, "%s: not valid JSON (at byte %lld: a syntax error, or something "
                   "after the closing brace); the sharded checkpoint index is corrupt: download "
                   "it again", index_path, at);
  *wm = cJSON_GetObjectItemCaseSensitive(*root, "weight_map");
  if (!cJSON_IsObject(*wm) || !(*wm)->child) {
    cJSON_Delete(*root);
    *root = NULL;
    return hq_fail(HQ_ERR_INPUT, "%s: no \"weight_map\" object (tensor name -> shard file); the "
                   "sharded checkpoint index is corrupt", index_path);
  }
  return HQ_OK;
}

/* The distinct shard names of the weight map, in order of first appearance (*shards, pointing
 * into wm; the caller frees the array): plain file names in the model folder. */
static int index_shards(const cJSON *wm, const char *index_path, const char ***shards,
                        int *nshards) {
  for (const cJSON *e = wm->child; e; e = e->next) {
    if (!cJSON_IsString(e))
      return hq_fail(HQ_ERR_INPUT, "%s: weight_map entry for '%s' is not a file name string",
                     index_path, e->string);
    const char *s = e->valuestring;
    if (!s[0] || s[0] == '/' || strstr(s, ".."))
      return hq_fail(HQ_ERR_INPUT, "%s: weight_map entry for '%s' names shard '%s'; shard names "
                     "must be plain file names in the model folder", index_path, e->string, s);
    int found = 0;
    for (int k = 0; k < *nshards && !found; k++) found = strcmp((*shards)[k], s) == 0;
    if (found) continue;
    const char **ns = realloc(*shards, (size_t)(*nshards + 1) * sizeof *ns);
    if (!ns) return hq_fail(HQ_ERR_NOMEM, "out of memory");
    *shards = ns;
    ns[(*nshards)++] = s;
  }
  return HQ_OK;
}

/* Map each shard, named relative to the folder of the index, as the next file of st. */
static int index_open_shards(const char *index_path, const char **shards, int nshards,
                             struct hq_safetensors *st) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", index_path);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = 0;
  else snprintf(dir, sizeof dir, ".");
  for (int k = 0; k < nshards; k++) {
    char p[8192];
    snprintf(p, sizeof p, "%s/%s", dir, shards[k]);
    if (!file_exists(p))
      return hq_fail(HQ_ERR_IO, "%s names shard '%s', but %s does not exist; the checkpoint "
                     "download is incomplete (fetch every *.safetensors file)", index_path,
                     shards[k], p);
    HQ_TRY(add_file(st, p));
  }
  return HQ_OK;
}

/* Every tensor of the map must be in the shard the map names. */
static int index_check_map(const cJSON *wm, const char *index_path, const char **shards,
                           int nshards, const struct hq_safetensors *st) {
  for (const cJSON *e = wm->child; e; e = e->next) {
    const struct hq_st_tensor *t = hq_st_find(st, e->string);
    int want = -1;
    for (int k = 0; k < nshards; k++)
      if (strcmp(shards[k], e->valuestring) == 0) want = k;
    if (!t || t->file != want)
      return hq_fail(HQ_ERR_INPUT, "%s maps tensor '%s' to shard '%s', but that shard does not "
                     "contain it; the index and the shards do not belong together", index_path,
                     e->string, e->valuestring);
  }
  return HQ_OK;
}

/* index.json: {"metadata": ..., "weight_map": {"tensor": "shard file", ...}} */
static int open_index(const char *index_path, struct hq_safetensors *st) {
  cJSON *root = NULL;
  const cJSON *wm = NULL;
  HQ_TRY(index_weight_map(index_path, &root, &wm));
  int nshards = 0;
  const char **shards = NULL;
  int rc = index_shards(wm, index_path, &shards, &nshards);
  if (rc == HQ_OK) rc = index_open_shards(index_path, shards, nshards, st);
  if (rc == HQ_OK) rc = index_check_map(wm, index_path, shards, nshards, st);
  free(shards);
  cJSON_Delete(root);
  return rc;
}

int hq_st_open(const char *path, struct hq_safetensors *st) {
  memset(st, 0, sizeof *st);
  struct stat sb;
  if (stat(path, &sb) != 0)
    return hq_fail(HQ_ERR_IO, "cannot open %s: %s", path, strerror(errno));
  int rc;
  if (S_ISDIR(sb.st_mode)) {
    char p[8192];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", path);
    if (file_exists(p)) {
      rc = open_index(p, st);
    } else {
      snprintf(p, sizeof p, "%s/model.safetensors", path);
      if (!file_exists(p)) {
        return hq_fail(HQ_ERR_IO, "%s holds neither model.safetensors nor "
                       "model.safetensors.index.json; point hpcq at a Hugging Face model folder",
                       path);
      }
      rc = add_file(st, p);
    }
  } else {
    size_t n = strlen(path);
    if (n >= 5 && strcmp(path + n - 5, ".json") == 0) rc = open_index(path, st);
    else rc = add_file(st, path);
  }
  if (rc != HQ_OK) hq_st_close(st);
  return rc;
}

const struct hq_st_tensor *hq_st_find(const struct hq_safetensors *st, const char *name) {
  if (!st->ntensors) return NULL;
  struct hq_st_tensor key;
  memset(&key, 0, sizeof key);
  key.name = (char *)name;
  return bsearch(&key, st->tensors, (size_t)st->ntensors, sizeof key, cmp_tensor_name);
}

/* fp16 -> fp32 through a 64K-entry table made from hq_f16_to_f32 (exact; ~4x the scalar rate) */
static float f16_table[65536];
static pthread_once_t f16_once = PTHREAD_ONCE_INIT;
static void f16_table_init(void) {
  for (uint32_t h = 0; h < 65536; h++) f16_table[h] = hq_f16_to_f32((uint16_t)h);
}

void hq_st_to_f32(const struct hq_st_tensor *t, float *out) { hq_st_to_f32_range(t, 0, t->numel, out); }

void hq_st_to_f32_range(const struct hq_st_tensor *t, int64_t e0, int64_t e1, float *out) {
  HQ_ASSERT(t->data || t->numel == 0);
  HQ_ASSERT(0 <= e0 && e0 <= e1 && e1 <= t->numel);
  const int64_t n = e1 - e0;
  HQ_ASSERT(t->dtype != HQ_DTYPE_I32); /* model.c lets only GPTQ's packed tensors be I32 */
  const unsigned char *p = (const unsigned char *)t->data + (size_t)e0 * hq_dtype_size(t->dtype);
  switch (t->dtype) {
  case HQ_DTYPE_I32: break;
  case HQ_DTYPE_F32:
    if (n) memcpy(out, p, (size_t)n * 4); /* little-endian host (x86-64, aarch64) */
    break;
  case HQ_DTYPE_BF16:
    for (int64_t i = 0; i < n; i++) {
      uint16_t h = (uint16_t)(p[2 * i] | (p[2 * i + 1] << 8));
      out[i] = hq_bf16_to_f32(h);
    }
    break;
  case HQ_DTYPE_F16:
    pthread_once(&f16_once, f16_table_init);
    for (int64_t i = 0; i < n; i++) out[i] = f16_table[p[2 * i] | (p[2 * i + 1] << 8)];
    break;
  }
}

void hq_st_close(struct hq_safetensors *st) {
  if (!st) return;
  free_tensors(st->tensors, st->ntensors);
  for (int i = 0; i < st->nfiles; i++) {
    if (st->files[i].map) munmap(st->files[i].map, st->files[i].size);
    free(st->files[i].path);
  }
  free(st->files);
  memset(st, 0, sizeof *st);
}

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "hpcq reads safetensors (little-endian) with memcpy; add byte swapping for big-endian hosts"
#endif

void hq_st_release(const struct hq_st_tensor *t) {
  if (!t || !t->data || !t->nbytes) return;
  long pg = sysconf(_SC_PAGESIZE);
  uintptr_t a = (uintptr_t)t->data, e = a + t->nbytes;
  uintptr_t a0 = (a + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1); /* whole pages inside only */
  uintptr_t e0 = e & ~((uintptr_t)pg - 1);
  if (e0 > a0) madvise((void *)a0, e0 - a0, MADV_DONTNEED);
}
