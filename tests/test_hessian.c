/* hq_hessian_* against a naive double Σ x xᵀ: several chunks (one empty) with a row stride
 * wider than the feature count, finalize = symmetric 2/count scaling, count == 0 -> zeros,
 * reset, bad sizes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "hessian.h"
#include "testutil.h"

int main(void) {
  const struct hq_backend *be = hq_backend_cpu();
  const int64_t n = 37, ldx = 41;
  const int64_t chunks[4] = {5, 0, 13, 50};
  int64_t total = 0;
  for (int i = 0; i < 4; i++) total += chunks[i];
  float *X = malloc(sizeof(float) * (size_t)(total * ldx));
  hq_t_randn(X, total * ldx, 42, 1.0f);
  /* a few features with an offset and larger scale, one feature all zero */
  for (int64_t t = 0; t < total; t++) {
    X[t * ldx + 3] = 3.0f + 2.0f * X[t * ldx + 3];
    X[t * ldx + 11] = 0.0f;
  }

  struct hq_hessian h;
  CHECK(hq_hessian_init(&h, be, n) == HQ_OK, "init: %s", hq_last_error());
  float *out = malloc(sizeof(float) * (size_t)(n * n));
  /* count == 0: all zeros */
  memset(out, 0x7f, sizeof(float) * (size_t)(n * n));
  hq_hessian_finalize(&h, out);
  int nz = 0;
  for (int64_t k = 0; k < n * n; k++) nz += out[k] != 0.0f;
  CHECK(nz == 0 && h.count == 0, "empty Hessian must finalize to zeros (%d non-zero)", nz);

  int64_t off = 0;
  for (int i = 0; i < 4; i++) {
    hq_hessian_accumulate(&h, X + off * ldx, chunks[i], ldx);
    off += chunks[i];
  }
  CHECK(h.count == total, "count %lld vs %lld", (long long)h.count, (long long)total);
  hq_hessian_finalize(&h, out);
  double maxrel = 0.0;
  int asym = 0;
  for (int64_t a = 0; a < n; a++)
    for (int64_t b = 0; b < n; b++) {
      double ref = 0.0, mag = 0.0;
      for (int64_t t = 0; t < total; t++) {
        ref += (double)X[t * ldx + a] * (double)X[t * ldx + b];
        mag += fabs((double)X[t * ldx + a] * (double)X[t * ldx + b]);
      }
      ref *= 2.0 / (double)total;
      mag *= 2.0 / (double)total;
      double e = fabs((double)out[a * n + b] - ref) / (mag > 0 ? mag : 1.0);
      if (e > maxrel) maxrel = e;
      asym += out[a * n + b] != out[b * n + a];
    }
  CHECK(maxrel < 1e-5, "H vs naive double: max relative error %.3g", maxrel);
  CHECK(asym == 0, "finalized H not exactly symmetric (%d entries)", asym);
  CHECK(out[11 * n + 11] == 0.0f && out[11 * n + 4] == 0.0f, "zero feature must give a zero row");
  /* finalize twice gives the same (raw sums kept) */
  float *out2 = malloc(sizeof(float) * (size_t)(n * n));
  hq_hessian_finalize(&h, out2);
  CHECK(memcmp(out, out2, sizeof(float) * (size_t)(n * n)) == 0, "finalize is not repeatable");
  /* the raw sums stay raw: upper triangle is Σ x xᵀ unscaled */
  {
    double ref = 0.0;
    for (int64_t t = 0; t < total; t++) ref += (double)X[t * ldx + 3] * X[t * ldx + 5];
    CHECK(fabs(h.sum[3 * n + 5] - ref) <= 1e-5 * fabs(ref) + 1e-4, "raw sum %g vs %g",
          h.sum[3 * n + 5], ref);
  }
  /* reset */
  hq_hessian_reset(&h);
  CHECK(h.count == 0, "reset count");
  hq_hessian_finalize(&h, out);
  nz = 0;
  for (int64_t k = 0; k < n * n; k++) nz += out[k] != 0.0f;
  CHECK(nz == 0, "reset must clear the sums");
  hq_hessian_accumulate(&h, X, 5, ldx);
  hq_hessian_finalize(&h, out);
  {
    double ref = 0.0;
    for (int64_t t = 0; t < 5; t++) ref += (double)X[t * ldx] * X[t * ldx + 1];
    ref *= 2.0 / 5.0;
    CHECK(fabs(out[1] - ref) <= 1e-5 * fabs(ref) + 1e-6, "after reset %g vs %g", out[1], ref);
  }
  hq_hessian_free(&h);
  CHECK(h.sum == NULL, "free clears");
  /* bad size */
  CHECK(hq_hessian_init(&h, be, 0) == HQ_ERR_INPUT, "n = 0 must be rejected");
  free(X);
  free(out);
  free(out2);
  return hq_t_done("test_hessian");
}
