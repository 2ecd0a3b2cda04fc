/* A fingerprint of a model (model.h: hq_model_fingerprint): what a resumed run and every rank
 * must agree on. Not collective. */
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model.h"
#include "util.h"

#define HQ_ID_SLICES 16
#define HQ_ID_SLICE 4096

/* name, dtype, shape and HQ_ID_SLICES evenly spread slices of the bytes (all of a small one) */
static uint64_t tensor_id(uint64_t h, const struct hq_st_tensor *t) {
  h = hq_fnv1a64(h, t->name, strlen(t->name) + 1);
  const int64_t head[2] = {(int64_t)t->dtype, (int64_t)t->ndim};
  h = hq_fnv1a64(h, head, sizeof head);
  h = hq_fnv1a64(h, t->shape, (size_t)t->ndim * sizeof(int64_t));
  const unsigned char *d = t->data;
  if (t->nbytes <= (size_t)HQ_ID_SLICES * HQ_ID_SLICE) return hq_fnv1a64(h, d, t->nbytes);
  for (int k = 0; k < HQ_ID_SLICES; k++) {
    const size_t off = (t->nbytes - HQ_ID_SLICE) / (HQ_ID_SLICES - 1) * (size_t)k;
    h = hq_fnv1a64(h, d + off, HQ_ID_SLICE);
  }
  hq_st_release(t); /* the sampled pages leave the resident set again */
  return h;
}

/* an hpcq .h5 used as a model: its size and its first and last 64 KiB */
static uint64_t file_id(uint64_t h, const char *path) {
  int fd = open(path, O_RDONLY | O_NONBLOCK);
  struct stat sb;
  if (fd < 0 || fstat(fd, &sb) != 0) {
    if (fd >= 0) close(fd);
    return hq_fnv1a64(h, path, strlen(path));
  }
  static unsigned char buf[65536];
  h = hq_fnv1a64(h, &sb.st_size, sizeof sb.st_size);
  const off_t offs[2] = {0, sb.st_size > (off_t)sizeof buf ? sb.st_size - (off_t)sizeof buf : 0};
  for (int k = 0; k < 2; k++) {
    const ssize_t n = pread(fd, buf, sizeof buf, offs[k]);
    if (n > 0) h = hq_fnv1a64(h, buf, (size_t)n);
  }
  close(fd);
  return h;
}

uint64_t hq_model_fingerprint(const struct hq_model *m, const char *path) {
  uint64_t h = HQ_FNV_INIT;
  if (m->cfg.json) h = hq_fnv1a64(h, m->cfg.json, strlen(m->cfg.json));
  if (m->h5) return file_id(h, path);
  for (int64_t i = 0; i < m->st.ntensors; i++) h = tensor_id(h, &m->st.tensors[i]);
  return h;
}
