/* GPTQ and round-to-nearest for one linear layer (docs/readme/gptq.md).
 * Not collective: the pipeline calls this on the rows a rank owns. */
#ifndef HQ_GPTQ_H
#define HQ_GPTQ_H

#include <stdint.h>

#include "backend.h"

struct hq_gptq_opts {
  int bits;           /* 2, 3, 4, 8 */
  int64_t group_size; /* -1 or 0: per output channel; else columns per group (any g >= 1) */
  int sym;            /* symmetric grid */
  int mse;            /* MSE clip search for the grid parameters */
  int act_order;      /* desc_act: columns by descending diag(H) */
  int static_groups;  /* group params from the unpermuted, unupdated W */
  float percdamp;     /* damping = percdamp * mean(diag H); default 0.01 */
  int block_size;     /* lazy-batch block, default 128 */
  int damp_retries;   /* how many times damping is raised (x10 each) when Cholesky fails; default 6 */
  int hscale;         /* EXPERIMENTAL --scale-from-hessian: grid parameters from the Hessian-
                         weighted search of hq_hscale_params_ref (needs H) */
};

/* Defaults of the reference: 4 bits, per channel, asym, no act-order, 0.01, block 128. */
struct hq_gptq_opts hq_gptq_opts_default(void);
/* Check options (bits in {2,3,4,8}, group size, damping > 0, block size >= 1). */
int hq_gptq_opts_check(const struct hq_gptq_opts *o, int64_t cols);
/* act-order: perm[k] = the k-th column by descending diag(H), dead columns (H[j,j] == 0)
 * counted as 1 the way GPTQ fixes them; stable (ties keep the original order). */
int hq_act_order_perm(const float *H, int64_t cols, int32_t *perm);

/* Result of quantizing a rows x cols weight matrix. All host memory, owned by the result. */
struct hq_gptq_result {
  int64_t rows, cols, ngroups;
  uint8_t *codes;  /* [rows x cols] row-major, in ORIGINAL column order, values 0..maxq */
  float *scales;   /* [rows x ngroups] row-major, fp16-representable values */
  float *zeros;    /* [rows x ngroups] row-major, integer values 0..maxq */
  int32_t *g_idx;  /* [cols]: group of each ORIGINAL input column */
  int32_t *perm;   /* [cols]: processing order (perm[j] = original column), identity without act-order */
  double *row_loss_ref; /* [rows] GPTQ only: Σ_j (w-q)² / Hinv[j,j]² / 2 of each row, else NULL */
  /* statistics */
  double loss_proxy;     /* tr(ΔW H ΔWᵀ) of the GPTQ result, H undamped (as given) */
  double loss_proxy_rtn; /* the same for RTN on the same grid and groups */
  double loss_ref;       /* reference-style Σ (w-q)² / Hinv[j,j]² / 2 */
  double damp_used;      /* percdamp finally used (after automatic raises) */
  double damp_abs;       /* absolute damping added to the diagonal */
  int64_t dead_cols;     /* columns with H[i,i] == 0 */
  double t_chol, t_quant, t_stats; /* seconds: damping+Cholesky inverse, GPTQ loop, stats */
};

/* What every row block of one layer (or of the linears sharing one input) needs from H:
 * the inverse-Hessian factor of ONE Cholesky. Identical on every rank given the same H. */
struct hq_gptq_prep {
  int64_t cols;
  float *U;        /* [cols x cols] backend memory: upper Cholesky factor of
                      ((H + damp I)[perm][:, perm])⁻¹, dead columns fixed */
  int32_t *perm;   /* [cols] host: processing order (perm[j] = original column) */
  uint8_t *dead;   /* [cols] host: 1 where H[i,i] == 0 */
  float *colw;     /* hscale: [cols] backend memory, diag(H) in original column order */
  float *colw_p;   /* hscale: [cols] backend memory, the same in processing order */
  int64_t dead_cols;
  double damp_used, damp_abs, t_chol;
  int U_borrowed;  /* U is caller memory (a node-shared buffer): hq_gptq_prep_free leaves it */
};

/* Dead columns, act-order permutation, damping (raised x10 up to damp_retries times when the
 * Cholesky fails) and the Cholesky inverse of H [cols x cols] (host, full symmetric, not
 * modified). Errors: HQ_ERR_INPUT (NaN/Inf in H, bad options), HQ_ERR_NUMERIC (not positive
 * definite even after all damping raises). */
int hq_gptq_prepare(const struct hq_backend *be, const struct hq_gptq_opts *o, int64_t cols,
                    const float *H, struct hq_gptq_prep *p);
void hq_gptq_prep_free(const struct hq_backend *be, struct hq_gptq_prep *p);

/* The same in H's own memory (host backends): H [cols x cols], full symmetric, is consumed:
 * on success its upper triangle (diagonal included) is U in processing order, and p->U
 * points at H (not freed by hq_gptq_prep_free; the caller frees H after the last solve). The
 * factor reads only the upper triangle and keeps H's (permuted) strict lower one, from which
 * a failed try is restaged with more damping. H is read first (diagonal, order, hscale), so
 * statistics that need H must come before. With a team (the node's ranks, all calling with
 * the same H, a node-shared buffer they all map), each member permutes its share of the rows
 * and takes its share of the Cholesky tiles (chol_inverse_upper_team); every member gets the
 * same permutation, damping and U, bit-identical to hq_gptq_prepare's. team NULL: alone. */
int hq_gptq_prepare_in_place(const struct hq_backend *be, const struct hq_gptq_opts *o,
                             int64_t cols, float *H, const struct hq_team *team,
                             struct hq_gptq_prep *p);

/* GPTQ of the rows x cols block W (row-major host memory; on return the dequantized weights in
 * original column order) with the prepared factor. row0 is the index of W's first row in its
 * layer: rows are independent given p, and row0 makes each row's arithmetic (gemm_rows tiles)
 * the same however a layer's rows are split into blocks (docs/readme/reproducibility.md).
 * res gets codes, scales, zeros, g_idx, perm, row_loss_ref, loss_ref (their sum, row order)
 * and p's damping; no proxy losses. Errors: HQ_ERR_INPUT (NaN/Inf in W, bad options). */
int hq_gptq_solve(const struct hq_backend *be, const struct hq_gptq_opts *o,
                  const struct hq_gptq_prep *p, int64_t row0, int64_t rows, float *W,
                  struct hq_gptq_result *res);

/* Prepare + solve of a whole layer (row0 = 0). If `want_stats` is 0 the two proxy losses are
 * not computed (saves two GEMMs). */
int hq_gptq_quantize(const struct hq_backend *be, const struct hq_gptq_opts *o, int64_t rows,
                     int64_t cols, float *W, const float *H, int want_stats,
                     struct hq_gptq_result *res);

/* Round-to-nearest on the same grid/groups (group params from W itself). H may be NULL (then
 * loss_proxy is not computed; o->hscale needs it). W is replaced by its dequantized values. */
int hq_rtn_quantize(const struct hq_backend *be, const struct hq_gptq_opts *o, int64_t rows,
                    int64_t cols, float *W, const float *H, struct hq_gptq_result *res);

/* codes, scales, zeros, g_idx, perm of a rows x cols result with ngroups groups (statistics NaN). */
int hq_gptq_result_alloc(struct hq_gptq_result *res, int64_t rows, int64_t cols, int64_t ngroups);
void hq_gptq_result_free(struct hq_gptq_result *res);
/* The groups of a method without act-order: g_idx[c] = c / group_size (group_size <= 0: one
 * group, all 0) and the identity perm, for the res->cols columns. */
void hq_gptq_result_plain_groups(struct hq_gptq_result *res, int64_t group_size);
/* HQ_ERR_INPUT naming the first non-finite element of A [rows x cols] ("W[3, 7] is NaN ...; advice"). */
int hq_check_finite(const char *what, const float *A, int64_t rows, int64_t cols, const char *advice);

/* fp16 scales (src/quant/fp16range.c). hq_grid_check_fp16: every group of W [rows x cols] (static
 * groups of o->group_size columns) has a grid whose scale fits fp16 (below 65520, which rounds
 * to infinity); hq_result_check_fp16: no scale of a result reached 65504, the largest fp16
 * value (the methods that move weights or scales: GPTQ, HQQ). HQ_ERR_NUMERIC naming the row,
 * the group and the numbers otherwise. Every method runs them: a scale is never clamped. */
int hq_grid_check_fp16(const struct hq_gptq_opts *o, const float *W, int64_t rows, int64_t cols);
int hq_result_check_fp16(const struct hq_gptq_result *res, int bits);

/* out[r] = d_r H d_rᵀ for the rows of D [rows x cols] (host), H [cols x cols] (host); row0 as in
 * hq_gptq_solve, so each row's value does not depend on the block it is computed in. */
void hq_proxy_loss_rows(const struct hq_backend *be, int64_t row0, int64_t rows, int64_t cols,
                        const float *D, const float *H, double *out);
/* GPTQ's per-row proxy losses d_r H d_rᵀ (H undamped, d = W0 - Q) from the solver's own error
 * terms, without a GEMM: sequential GPTQ (OBS) quantizes the damped, dead-fixed H' exactly, so
 * Σ_i err_i² = d' H' d'ᵀ with d' the row with its dead columns zeroed, and
 * out[r] = 2 row_loss_ref[r] - damp_abs Σ_{live j} (W0[r,j] - Q[r,j])². W0, Q [rows x cols]. */
void hq_gptq_proxy_rows(const struct hq_gptq_prep *p, const double *row_loss_ref, int64_t rows,
                        const float *W0, const float *Q, double *out);
/* tr(D H Dᵀ) = Σ_r out[r] in row order. */
double hq_proxy_loss(const struct hq_backend *be, int64_t rows, int64_t cols, const float *D,
                     const float *H);

#endif
