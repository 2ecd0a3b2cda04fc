/* Token files (raw little-endian int32, no header) and calibration/evaluation windows.
 * Not collective: every rank that samples with the same seed gets the same windows. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"
#include "fileio.h"
#include "model.h"
#include "util.h"

/* The whole file as int32 ids (*ids, *n; the caller frees *ids): a non-empty multiple of
 * 4 bytes. */
static int read_ids(const char *path, int32_t **ids, int64_t *n) {
  FILE *fp;
  HQ_TRY(hq_fopen_regular(path, "token file", &fp));
  struct stat sb;
  if (fstat(fileno(fp), &sb) != 0) {
    fclose(fp);
    return hq_fail(HQ_ERR_IO, "cannot stat token file %s: %s", path, strerror(errno));
  }
  size_t size = (size_t)sb.st_size;
  if (size == 0 || size % 4 != 0) {
    fclose(fp);
    return hq_fail(HQ_ERR_INPUT, "token file %s has %zu bytes, %s; hpcq reads raw little-endian "
                   "int32 token ids without a header (e.g. numpy.array(ids, dtype='<i4')"
                   ".tofile(path))", path, size,
                   size == 0 ? "it is empty" : "not a multiple of 4");
  }
  *n = (int64_t)(size / 4);
  *ids = malloc(size);
  if (!*ids) {
    fclose(fp);
    return hq_fail(HQ_ERR_NOMEM, "out of memory for %lld tokens of %s", (long long)*n, path);
  }
  size_t got = fread(*ids, 1, size, fp);
  fclose(fp);
  if (got != size) {
    free(*ids);
    *ids = NULL;
    return hq_fail(HQ_ERR_IO, "short read of %s (%zu of %zu bytes)", path, got, size);
  }
  return HQ_OK;
}

/* Every id must be >= 0 and, with vocab > 0, below vocab. */
static int check_ids(const char *path, const int32_t *ids, int64_t n, int64_t vocab) {
  for (int64_t i = 0; i < n; i++) {
    if (ids[i] >= 0 && (vocab <= 0 || ids[i] < vocab)) continue;
    if (vocab > 0)
      return hq_fail(HQ_ERR_INPUT, "token file %s: token %lld (byte offset %lld) has id %d, "
                     "outside the model's vocabulary [0, %lld); the tokens were probably made "
                     "with another tokenizer than this model's", path, (long long)i,
                     (long long)(4 * i), ids[i], (long long)vocab);
    return hq_fail(HQ_ERR_INPUT, "token file %s: token %lld (byte offset %lld) has negative id "
                   "%d; the file is not raw little-endian int32 token ids", path, (long long)i,
                   (long long)(4 * i), ids[i]);
  }
  return HQ_OK;
}

int hq_tokens_load(const char *path, int64_t vocab, struct hq_tokens *t) {
  memset(t, 0, sizeof *t);
  int32_t *ids = NULL;
  int64_t n = 0;
  HQ_TRY(read_ids(path, &ids, &n));
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
  for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)__builtin_bswap32((uint32_t)ids[i]);
#endif
  const int rc = check_ids(path, ids, n, vocab);
  if (rc) {
    free(ids);
    return rc;
  }
  t->ids = ids;
  t->n = n;
  return HQ_OK;
}

void hq_tokens_free(struct hq_tokens *t) {
  if (!t) return;
  free(t->ids);
  t->ids = NULL;
  t->n = 0;
}

static int cmp_i64(const void *a, const void *b) {
  const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* Too little calibration text: the windows repeat or overlap. Says so once per process, on
 * rank 0 only (every rank samples the same windows), with the numbers. */
static void warn_overlap(const struct hq_tokens *t, int64_t *starts, int64_t n, int64_t seqlen) {
  static int warned = 0;
  if (warned || hq_error_rank() > 0 || n < 2) return;
  qsort(starts, (size_t)n, sizeof *starts, cmp_i64);
  int64_t repeats = 0, overlapping = 0, covered = seqlen;
  for (int64_t i = 0; i < n; i++) {
    const int64_t prev = i > 0 ? starts[i] - starts[i - 1] : seqlen;
    const int64_t next = i + 1 < n ? starts[i + 1] - starts[i] : seqlen;
    repeats += prev == 0;
    overlapping += prev < seqlen || next < seqlen;
    if (i > 0) covered += prev < seqlen ? prev : seqlen;
  }
  const int64_t want = n * seqlen;
  if (repeats == 0 && want <= t->n) return;
  warned = 1;
  fprintf(stderr, "hpcq: warning: too little calibration text: %lld tokens for %lld windows x %lld "
          "tokens = %lld requested; %lld of the windows overlap another (%lld repeat one "
          "exactly) and together they cover %lld distinct tokens (%.0f%% of the requested), so "
          "the Hessians weigh the repeated text several times. Use more calibration text, or "
          "fewer --nsamples or a smaller --seqlen\n", (long long)t->n, (long long)n,
          (long long)seqlen, (long long)want, (long long)overlapping, (long long)repeats,
          (long long)covered, 100.0 * (double)covered / (double)want);
}

int hq_tokens_sample(const struct hq_tokens *t, int64_t nsamples, int64_t seqlen, uint64_t seed,
                     int32_t *out) {
  if (seqlen <= 0 || nsamples < 0)
    return hq_fail(HQ_ERR_INPUT, "calibration needs seqlen > 0 and nsamples >= 0 (got seqlen "
                   "%lld, nsamples %lld)", (long long)seqlen, (long long)nsamples);
  if (t->n < seqlen)
    return hq_fail(HQ_ERR_INPUT, "the calibration file has %lld tokens, fewer than one window of "
                   "seqlen %lld; it needs at least %lld tokens (use a longer file or a smaller "
                   "seqlen)", (long long)t->n, (long long)seqlen, (long long)seqlen);
  struct hq_rng r;
  hq_rng_seed(&r, seed);
  uint64_t nstarts = (uint64_t)(t->n - seqlen) + 1;
  int64_t *starts = malloc((size_t)(nsamples ? nsamples : 1) * sizeof *starts);
  for (int64_t s = 0; s < nsamples; s++) {
    int64_t start = (int64_t)hq_rng_below(&r, nstarts);
    memcpy(out + s * seqlen, t->ids + start, (size_t)seqlen * sizeof(int32_t));
    if (starts) starts[s] = start;
  }
  if (starts) warn_overlap(t, starts, nsamples, seqlen);
  free(starts);
  return HQ_OK;
}

int64_t hq_tokens_nwindows(const struct hq_tokens *t, int64_t seqlen) {
  if (seqlen <= 0 || t->n < seqlen) return 0;
  return t->n / seqlen;
}
