/* HQQ: calibration-free half-quadratic quantization (Badri & Shaji 2023), adapted to hpcq's
 * GPTQ storage layout (integer zero points in [0, maxq], fp16 scales). Not collective: the
 * pipeline calls it on the rows a rank owns, like RTN.
 *
 * Per row and group of columns w[0..n) on the grid q = clamp(round(w/s + z), 0, maxq),
 * dequant r = s (q - z), starting from the RTN (min/max) parameters with the zero kept REAL
 * (z = -xmin/s):
 *   repeat `iters` times:
 *     q   = clamp(round(w/s + z), 0, maxq);  r = s (q - z)
 *     err = Σ |w - r|;  stop early when err >= the previous iteration's err
 *     W_e = shrink_lp(w - r, beta)   with  shrink_lp(x) = sign(x) max(|x| - |x|^(p-1) / beta, 0)
 *     z   = mean(q - (w - W_e) / s)                     (asymmetric grids only)
 *     s   = fp16( Σ (w - W_e')(q' - z) / Σ (q' - z)² )  (only with opt_scale; q', W_e'
 *           recomputed at the new z and the current s, beta: least squares for s)
 *     beta *= kappa
 *     storable candidate (s, round(z) clamped to [0, maxq]): keep it if its L1 error
 *       Σ |w - s (clamp(round(w/s) + zi, 0, maxq) - zi)| is below the best so far
 * The stored parameters are the best STORABLE candidate (the RTN parameters when no
 * candidate beats them), so HQQ's L1 reconstruction error never exceeds RTN's per group.
 * Sums are accumulated in double, per-element math is fp32. */
#ifndef HQ_HQQ_H
#define HQ_HQQ_H

#include <stdint.h>

#include "gptq.h"
#include "quant.h"

struct hq_hqq_opts {
  float lp;      /* p of the lp shrinkage, 0 < p < 1 (default 0.7) */
  float beta;    /* initial beta (default 10) */
  float kappa;   /* beta multiplier per iteration, >= 1 (default 1.01) */
  int iters;     /* maximum iterations (default 20) */
  int opt_scale; /* 1: also update the scale (least squares), default 0 (zero point only) */
};

struct hq_hqq_opts hq_hqq_opts_default(void);
int hq_hqq_opts_check(const struct hq_hqq_opts *h);

/* One group: n values w[0], w[stride], ...; grid g (mse ignored: the start is min/max).
 * Out: fp16-representable scale, integer zero; *iters_run (may be NULL) the iterations done. */
void hq_hqq_group(struct hq_grid g, const struct hq_hqq_opts *h, const float *w, int64_t n,
                  int64_t stride, float *scale, float *zero, int *iters_run);

/* HQQ of W [rows x cols] (row-major host memory) with the grid and groups of `o` (bits,
 * group_size, sym; act_order/static_groups ignored). W is replaced by its dequantized values;
 * res is filled like hq_rtn_quantize's (codes, scales, zeros, g_idx, identity perm; no proxy
 * losses). l1 (may be NULL) receives {Σ|W - HQQ|, Σ|W - RTN|} over the whole matrix.
 * Errors: HQ_ERR_INPUT (bad options, NaN/Inf in W), HQ_ERR_NOMEM. */
int hq_hqq_quantize(const struct hq_gptq_opts *o, const struct hq_hqq_opts *h, int64_t rows,
                    int64_t cols, float *W, struct hq_gptq_result *res, double l1[2]);

#endif
