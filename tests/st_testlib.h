/* Helpers for the model-io tests: temp dirs, file copies, and building (bad) safetensors
 * checkpoints at run time from the bundled ones, so nothing big is committed.
 * Header-only (static functions); include from one test file each. */
#ifndef HQ_ST_TESTLIB_H
#define HQ_ST_TESTLIB_H

#include <cjson/cJSON.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "model.h"

#define TL_FN __attribute__((unused)) static

TL_FN char *tl_read(const char *path, size_t *len) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return NULL;
  fseek(fp, 0, SEEK_END);
  long n = ftell(fp);
  rewind(fp);
  char *b = malloc((size_t)n + 1);
  if (fread(b, 1, (size_t)n, fp) != (size_t)n) n = 0;
  fclose(fp);
  b[n] = 0;
  if (len) *len = (size_t)n;
  return b;
}

TL_FN int tl_write(const char *path, const void *buf, size_t len) {
  FILE *fp = fopen(path, "wb");
  if (!fp) return -1;
  size_t w = fwrite(buf, 1, len, fp);
  fclose(fp);
  return w == len ? 0 : -1;
}

TL_FN int tl_copy(const char *src, const char *dst, long truncate_to) {
  size_t n;
  char *b = tl_read(src, &n);
  if (!b) return -1;
  if (truncate_to >= 0 && (size_t)truncate_to < n) n = (size_t)truncate_to;
  int rc = tl_write(dst, b, n);
  free(b);
  return rc;
}

TL_FN int tl_rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *f) {
  (void)sb; (void)flag; (void)f;
  return remove(p);
}

/* mkdtemp under $TMPDIR (or /tmp); removed by tl_rmtree */
TL_FN void tl_tmpdir(char *buf, size_t n, const char *tag) {
  const char *base = getenv("TMPDIR");
  snprintf(buf, n, "%s/hq_%s_XXXXXX", base && base[0] ? base : "/tmp", tag);
  if (!mkdtemp(buf)) {
    perror("mkdtemp");
    exit(1);
  }
}
TL_FN void tl_rmtree(const char *dir) { nftw(dir, tl_rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

TL_FN void tl_path(char *buf, size_t n, const char *dir, const char *name) {
  snprintf(buf, n, "%s/%s", dir, name);
}

/* Split a safetensors file into its header (cJSON) and its data section (malloc'ed). */
TL_FN cJSON *tl_st_load(const char *path, char **data, size_t *data_len) {
  size_t n;
  char *b = tl_read(path, &n);
  if (!b || n < 8) { free(b); return NULL; }
  uint64_t hl = 0;
  for (int i = 7; i >= 0; i--) hl = (hl << 8) | (unsigned char)b[i];
  cJSON *h = cJSON_ParseWithLength(b + 8, (size_t)hl);
  *data_len = n - 8 - (size_t)hl;
  *data = malloc(*data_len + 1);
  memcpy(*data, b + 8 + hl, *data_len);
  free(b);
  return h;
}

/* Write header (padded with spaces to 8 bytes) + data. */
TL_FN int tl_st_save(const char *path, const cJSON *hdr, const char *data, size_t data_len) {
  char *txt = cJSON_PrintUnformatted(hdr);
  size_t hl = strlen(txt), pad = (8 - hl % 8) % 8;
  size_t total = 8 + hl + pad + data_len;
  unsigned char *b = malloc(total);
  uint64_t L = hl + pad;
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)(L >> (8 * i));
  memcpy(b + 8, txt, hl);
  memset(b + 8 + hl, ' ', pad);
  if (data_len) memcpy(b + 8 + hl + pad, data, data_len);
  int rc = tl_write(path, b, total);
  free(b);
  cJSON_free(txt);
  return rc;
}

/* Copy `src` to `dst`, letting `edit` change the header; the data section is kept as is. */
TL_FN int tl_st_patch(const char *src, const char *dst, void (*edit)(cJSON *hdr, void *ctx),
                       void *ctx) {
  char *data;
  size_t dl;
  cJSON *h = tl_st_load(src, &data, &dl);
  if (!h) return -1;
  if (edit) edit(h, ctx);
  int rc = tl_st_save(dst, h, data, dl);
  cJSON_Delete(h);
  free(data);
  return rc;
}

/* A tensor to write: raw little-endian bytes. */
struct tl_tensor {
  const char *name;
  const char *dtype;
  int ndim;
  int64_t shape[HQ_ST_MAXDIM];
  const void *bytes;
  size_t nbytes;
};

/* Write a fresh safetensors file from a list of tensors (data packed in list order). */
TL_FN int tl_st_write(const char *path, const struct tl_tensor *t, int n) {
  cJSON *h = cJSON_CreateObject();
  cJSON *meta = cJSON_AddObjectToObject(h, "__metadata__");
  cJSON_AddStringToObject(meta, "format", "pt");
  size_t total = 0;
  for (int i = 0; i < n; i++) total += t[i].nbytes;
  char *data = malloc(total + 1);
  size_t off = 0;
  for (int i = 0; i < n; i++) {
    cJSON *e = cJSON_AddObjectToObject(h, t[i].name);
    cJSON_AddStringToObject(e, "dtype", t[i].dtype);
    cJSON *s = cJSON_AddArrayToObject(e, "shape");
    for (int d = 0; d < t[i].ndim; d++) cJSON_AddItemToArray(s, cJSON_CreateNumber((double)t[i].shape[d]));
    cJSON *o = cJSON_AddArrayToObject(e, "data_offsets");
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)(off + t[i].nbytes)));
    if (t[i].nbytes) memcpy(data + off, t[i].bytes, t[i].nbytes);
    off += t[i].nbytes;
  }
  int rc = tl_st_save(path, h, data, total);
  cJSON_Delete(h);
  free(data);
  return rc;
}

/* The tensors of an opened checkpoint as a tl_tensor list (pointers into the mapping). */
TL_FN struct tl_tensor *tl_from_st(const struct hq_safetensors *st, int extra) {
  struct tl_tensor *l = calloc((size_t)(st->ntensors + extra), sizeof *l);
  for (int64_t i = 0; i < st->ntensors; i++) {
    const struct hq_st_tensor *t = &st->tensors[i];
    l[i].name = t->name;
    l[i].dtype = hq_dtype_name(t->dtype);
    l[i].ndim = t->ndim;
    memcpy(l[i].shape, t->shape, sizeof t->shape);
    l[i].bytes = t->data;
    l[i].nbytes = t->nbytes;
  }
  return l;
}

TL_FN int tl_contains(const char *hay, const char *needle) {
  return strstr(hay, needle) != NULL;
}

#endif
