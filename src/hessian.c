/* Hessian accumulation H = 2/N Σ x xᵀ (raw fp32 sums + token count, scaled once). */
#include "hessian.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"

int hq_hessian_init(struct hq_hessian *h, const struct hq_backend *be, int64_t n) {
  memset(h, 0, sizeof *h);
  if (n <= 0) return hq_fail(HQ_ERR_INPUT, "Hessian of %lld features: need at least one", (long long)n);
  size_t bytes = (size_t)n * (size_t)n * sizeof(float);
  h->sum = be->alloc(bytes);
  if (!h->sum)
    return hq_fail(HQ_ERR_NOMEM, "cannot allocate the %lld x %lld Hessian (%.1f MB); use more "
                   "ranks or a machine with more memory", (long long)n, (long long)n, bytes / 1e6);
  be->zero(h->sum, bytes);
  h->be = be;
  h->n = n;
  h->count = 0;
  return HQ_OK;
}

void hq_hessian_accumulate(struct hq_hessian *h, const float *X, int64_t ntok, int64_t ldx) {
  HQ_ASSERT(h->sum && ntok >= 0 && ldx >= h->n);
  if (ntok == 0) return;
  h->be->syrk(h->n, ntok, 1.0f, X, ldx, 1.0f, h->sum, h->n);
  h->count += ntok;
}

void hq_hessian_finalize(struct hq_hessian *h, float *out) {
  HQ_ASSERT(h->sum);
  const int64_t n = h->n;
  if (h->count == 0) {
    memset(out, 0, (size_t)n * (size_t)n * sizeof(float));
    return;
  }
  h->be->download(out, h->sum, (size_t)n * (size_t)n * sizeof(float));
  const double f = 2.0 / (double)h->count;
#pragma omp parallel for schedule(dynamic, 16) if (n > 256)
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = i; j < n; j++) {
      float v = (float)((double)out[i * n + j] * f);
      out[i * n + j] = v;
    }
  /* lower triangle from the (scaled) upper one, so the result is exactly symmetric */
#pragma omp parallel for schedule(dynamic, 16) if (n > 256)
  for (int64_t i = 1; i < n; i++)
    for (int64_t j = 0; j < i; j++) out[i * n + j] = out[j * n + i];
}

void hq_hessian_reset(struct hq_hessian *h) {
  if (h->sum) h->be->zero(h->sum, (size_t)h->n * (size_t)h->n * sizeof(float));
  h->count = 0;
}

void hq_hessian_free(struct hq_hessian *h) {
  if (h->sum) h->be->free(h->sum);
  memset(h, 0, sizeof *h);
}
