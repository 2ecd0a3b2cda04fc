/* Hessian accumulation H = 2/N Σ x xᵀ for one input group (DESIGN.md data flow).
 * Raw sums + token count are kept so partial Hessians from ranks can be all-reduced and
 * scaled once. N counts TOKENS (not sequences). Not collective. */
#ifndef HQ_HESSIAN_H
#define HQ_HESSIAN_H

#include <stdint.h>

#include "backend.h"

struct hq_hessian {
  const struct hq_backend *be;
  int64_t n;      /* features (input columns) */
  float *sum;     /* [n x n] backend memory; upper triangle accumulated by syrk */
  int64_t count;  /* tokens accumulated */
};

int hq_hessian_init(struct hq_hessian *h, const struct hq_backend *be, int64_t n);
/* sum += Xᵀ X for X [ntok x n] (row-major, ldx, backend memory); count += ntok. */
void hq_hessian_accumulate(struct hq_hessian *h, const float *X, int64_t ntok, int64_t ldx);
/* After the all-reduce: symmetrize and scale by 2/count into `out` (host, [n x n], full).
 * count == 0 gives all zeros (every column dead). */
void hq_hessian_finalize(struct hq_hessian *h, float *out);
void hq_hessian_reset(struct hq_hessian *h);
void hq_hessian_free(struct hq_hessian *h);

#endif
