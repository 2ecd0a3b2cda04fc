/* The streaming safetensors writer of hpcq export (src/io/export.h): the header for a list of
 * tensors first, then their data appended piece by piece, so that no more than one tensor (or
 * one piece of one) is in memory. Not collective. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "export.h"
#include "export_util.h"
#include "util.h"

struct hq_stw {
  FILE *f;
  char *path;
  size_t total;   /* data bytes announced by the header */
  size_t written; /* data bytes written so far */
};

/* Bytes per element of a safetensors dtype string; 0 for one the writer does not support. */
static size_t dtype_size(const char *d) {
  if (!strcmp(d, "F32") || !strcmp(d, "I32")) return 4;
  if (!strcmp(d, "F16") || !strcmp(d, "BF16")) return 2;
  return 0;
}

/* An entry the header can describe: supported dtype and rank, nbytes = numel * dtype size, and
 * a name not yet in `root`. */
static int entry_check(const struct hq_stw_entry *e, const cJSON *root) {
  size_t es = dtype_size(e->dtype);
  int64_t numel = 1;
  if (!es || e->ndim < 0 || e->ndim > HQ_ST_MAXDIM)
    return hq_fail(HQ_ERR_INPUT, "safetensors writer: tensor %s has dtype '%s' / %d dims "
                   "(supported: I32 F32 F16 BF16, at most %d dims)", e->name, e->dtype, e->ndim,
                   HQ_ST_MAXDIM);
  for (int d = 0; d < e->ndim; d++) numel *= e->shape[d];
  if (numel < 0 || (size_t)numel * es != e->nbytes)
    return hq_fail(HQ_ERR_INPUT, "safetensors writer: tensor %s: %zu bytes for %lld %s "
                   "elements", e->name, e->nbytes, (long long)numel, e->dtype);
  if (cJSON_GetObjectItemCaseSensitive(root, e->name))
    return hq_fail(HQ_ERR_INPUT, "safetensors writer: tensor %s appears twice", e->name);
  return HQ_OK;
}

/* The header JSON of e[0..n) (unformatted, malloc'ed) with consecutive data offsets from 0;
 * *total: the data bytes it announces. */
static int header_json(const struct hq_stw_entry *e, int64_t n, char **js, size_t *total) {
  cJSON *root = cJSON_CreateObject();
  cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
  cJSON_AddStringToObject(meta, "format", "pt");
  size_t off = 0;
  for (int64_t i = 0; i < n; i++) {
    int rc = entry_check(&e[i], root);
    if (rc) {
      cJSON_Delete(root);
      return rc;
    }
    cJSON *t = cJSON_AddObjectToObject(root, e[i].name);
    cJSON_AddStringToObject(t, "dtype", e[i].dtype);
    cJSON *sh = cJSON_AddArrayToObject(t, "shape");
    for (int d = 0; d < e[i].ndim; d++) cJSON_AddItemToArray(sh, hq_json_raw_int(e[i].shape[d]));
    cJSON *of = cJSON_AddArrayToObject(t, "data_offsets");
    cJSON_AddItemToArray(of, hq_json_raw_int((int64_t)off));
    cJSON_AddItemToArray(of, hq_json_raw_int((int64_t)(off + e[i].nbytes)));
    off += e[i].nbytes;
  }
  *js = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  if (!*js) return hq_fail(HQ_ERR_NOMEM, "safetensors writer: out of memory building the header");
  *total = off;
  return HQ_OK;
}

/* Write the 8-byte little-endian header length and the header, padded with spaces to a
 * multiple of 8 so that the data starts 8-byte aligned. */
static int header_write(FILE *f, const char *path, const char *js) {
  size_t len = strlen(js), padded = (len + 7) / 8 * 8;
  unsigned char hl[8];
  for (int k = 0; k < 8; k++) hl[k] = (unsigned char)((uint64_t)padded >> (8 * k));
  int ok = fwrite(hl, 1, 8, f) == 8 && fwrite(js, 1, len, f) == len;
  for (size_t k = len; ok && k < padded; k++) ok = fputc(' ', f) != EOF;
  return ok ? HQ_OK : hq_fail(HQ_ERR_IO, "cannot write %s: %s", path, strerror(errno));
}

int hq_stw_open(const char *path, const struct hq_stw_entry *e, int64_t n, struct hq_stw **out) {
  *out = NULL;
  char *js = NULL;
  size_t total = 0;
  HQ_TRY(header_json(e, n, &js, &total));
  FILE *f = fopen(path, "wb");
  if (!f) {
    free(js);
    return hq_fail(HQ_ERR_IO, "cannot create %s: %s", path, strerror(errno));
  }
  int rc = header_write(f, path, js);
  free(js);
  if (rc) {
    fclose(f);
    return rc;
  }
  struct hq_stw *w = hq_xcalloc(1, sizeof *w);
  w->f = f;
  w->path = strdup(path);
  w->total = total;
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
