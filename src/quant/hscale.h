/* --scale-from-hessian (EXPERIMENTAL): each group's grid parameters chosen by the Hessian
 * diagonal's sensitivity instead of min/max. For every row and group, the range [xmin, xmax]
 * is shrunk by p = 1, 0.99, ..., 0.21 (the grid of the MSE search) and the p minimising
 *     Σ_j H_jj (w_j - q_j)²          (the diagonal part of the proxy loss tr(ΔW H ΔWᵀ))
 * is kept (ties: the larger p). Columns with H_jj = 0 weigh nothing; a group whose weights are
 * all zero falls back to weight 1 per column. This replaces --mse when both are given.
 *
 * GPTQ and RTN (gptq.c) pass the Hessian diagonal of each group's columns (in the order GPTQ
 * processes them) to the backend's quant_params, which runs this search per row
 * (hq_gptq_opts.hscale). Not collective. */
#ifndef HQ_HSCALE_H
#define HQ_HSCALE_H

#include <stdint.h>

#include "backend.h"
#include "gptq.h"

/* Reference search on one group: n values w[k*stride] with weights d[k] (>= 0). */
void hq_hscale_params_ref(struct hq_grid g, const float *w, const float *d, int64_t n,
                          int64_t stride, float *scale, float *zero);

/* hq_gptq_quantize / hq_rtn_quantize with o->hscale set. Same arguments and results (H
 * required; HQ_ERR_INPUT when H is NULL); loss_proxy_rtn is plain min/max RTN's. */
int hq_gptq_quantize_hscale(const struct hq_backend *be, const struct hq_gptq_opts *o,
                            int64_t rows, int64_t cols, float *W, const float *H,
                            int want_stats, struct hq_gptq_result *res);
int hq_rtn_quantize_hscale(const struct hq_backend *be, const struct hq_gptq_opts *o,
                           int64_t rows, int64_t cols, float *W, const float *H,
                           struct hq_gptq_result *res);

#endif
