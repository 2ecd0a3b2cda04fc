/* The backend interface (DESIGN.md "Backends"): the algorithm (gptq.c, hessian.c, forward.c,
 * the pipeline) is written once against this table of function pointers. backend_cpu.c
 * implements it with OpenBLAS/LAPACKE and plain C (+OpenMP); kernels/ implements it with
 * cuBLAS/cuSOLVER/custom kernels.
 *
 * Conventions for every op:
 *  - All matrices are ROW-MAJOR fp32 unless stated: element (i, j) of an m x n matrix A with
 *    leading dimension lda is A[i * lda + j]. (The CUDA backend maps this onto column-major
 *    cuBLAS by swapping operands.)
 *  - Pointers passed to ops are "backend memory": host memory for the CPU backend, device
 *    memory for CUDA. Move data with alloc/upload/download.
 *  - Ops are asynchronous with respect to the host on devices; `sync` waits.
 *  - Element counts are int64_t, byte counts size_t. */
#ifndef HQ_BACKEND_H
#define HQ_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "quant.h"

/* Processes that share a matrix in memory and split work on it (the ranks of a node, through
 * an MPI-3 shared window): sync = barrier + visibility of everyone's writes to the shared
 * memory; bcast_int = member 0's value on every member (called by all). */
struct hq_team {
  int rank, size;
  void (*sync)(void *ctx);
  int (*bcast_int)(void *ctx, int v);
  void *ctx;
};
/* The team's barrier (nothing for NULL or a team of one). */
static inline void hq_team_sync(const struct hq_team *t) {
  if (t && t->size > 1) t->sync(t->ctx);
}

struct hq_backend {
  const char *name;   /* "cpu" or "cuda" */
  int on_device;      /* 1: pointers are device memory */

  /* ---- memory ---- */
  void *(*alloc)(size_t bytes);                 /* NULL on failure (caller reports) */
  void (*free)(void *p);
  void (*upload)(void *dst, const void *host_src, size_t bytes);
  void (*download)(void *host_dst, const void *src, size_t bytes);
  void (*copy)(void *dst, const void *src, size_t bytes);
  void (*zero)(void *p, size_t bytes);
  void (*sync)(void);
  /* The library and kernel family whose rounding the results depend on
   * (docs/readme/reproducibility.md): recorded with a result, a resume must match it. */
  const char *(*kernels)(void);

  /* ---- dense linear algebra (fp32, row-major) ---- */
  /* C[m x n] = alpha * op(A) * op(B) + beta * C; op(A) is m x k, op(B) is k x n. */
  void (*gemm)(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
               const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
               int64_t ldc);
  /* gemm with reproducible rows (docs/readme/reproducibility.md). The m rows form segments of
   * `seg` rows (seg <= 0: one segment of m rows; seg < 0 also asks for row tiles of about
   * -seg rows instead of 256, for callers with few rows); row r of a segment has the index row0 + r
   * in the caller's numbering (a token's position in its window, a weight row's index in its
   * layer). On the CPU every element C[i, j] is then a function of row i of op(A), column j
   * of op(B), C[i, j], k, n and (row0 + r) alone: the same whatever m, the batching, the
   * thread count or how a layer's rows are split over ranks. Device backends give no such
   * guarantee (they may equal gemm). */
  void (*gemm_rows)(int64_t row0, int64_t seg, int trans_a, int trans_b, int64_t m, int64_t n,
                    int64_t k, float alpha, const float *A, int64_t lda, const float *B,
                    int64_t ldb, float beta, float *C, int64_t ldc);
  /* Upper triangle of C[n x n] = alpha * Xᵀ X + beta * C, X is k x n (k tokens of n features).
   * The strict lower triangle of C is not touched. */
  void (*syrk)(int64_t n, int64_t k, float alpha, const float *X, int64_t ldx, float beta,
               float *C, int64_t ldc);
  /* Copy the upper triangle of A[n x n] into its lower triangle. */
  void (*symmetrize)(int64_t n, float *A, int64_t lda);
  /* In: symmetric positive definite H[n x n] (full). Out: the upper Cholesky factor U of H⁻¹
   * (H⁻¹ = Uᵀ U) in the upper triangle, zeros below. Returns 0, or the LAPACK/cuSOLVER info
   * (> 0: not positive definite) — then H is garbage and the caller retries from a copy. */
  int (*chol_inverse_upper)(int64_t n, float *H, int64_t ldh);
  /* Host backends only (NULL elsewhere): the same factor in the upper triangle (diagonal
   * included), computed by a team of processes that all map H (a node-shared buffer) and all
   * call it with the same n, H, ldh: the fixed tiles are split over the members, so U is
   * bit-identical to chol_inverse_upper's for any team size. Only the upper triangle is read;
   * the strict lower triangle is left as it was, also when the factor fails (so a caller that
   * keeps H's lower half there can restage it: H factorised in place). Every member returns
   * the same info. t NULL: alone. */
  int (*chol_inverse_upper_team)(int64_t n, float *H, int64_t ldh, const struct hq_team *t);
  /* Exact fixed-point accumulation of a Hessian panel (src/quant/hessian.c). C holds np rows
   * (ldc) of one window's XᵀX: row p is feature j = j0 + p, its entries i = 0..j are added,
   * each as V = round(v * 2^F) (round half to even; an integer when |v| 2^F < 2^lim_bits,
   * lim_bits <= 62), into acc[j (j + 1) / 2 + i] (int64, column-packed upper triangle; backend
   * memory). Entries with |v| 2^F >= 2^lim_bits are skipped. Returns the largest |v| of the
   * panel (the caller detects a skip from it), NaN if any v is not finite. Integer sums: the
   * result does not depend on the order of the windows. */
  double (*hess_fixed_acc)(int64_t j0, int64_t np, const float *C, int64_t ldc, int F,
                           int lim_bits, int64_t *acc);

  /* ---- quantization ---- */
  /* Grid parameters of each row of the rows x ncols slice W (row-major, ldw), with the shared
   * scalar math of quant.h: scale[r], zero[r]. colw: NULL (min/max, or the MSE search with
   * g.mse), or ncols per-column weights for the Hessian-weighted search of
   * hq_hscale_params_ref (--scale-from-hessian; backend memory). */
  void (*quant_params)(struct hq_grid g, int64_t rows, int64_t ncols, const float *W,
                       int64_t ldw, const float *colw, float *scale, float *zero);
  /* The fused GPTQ inner block. W1 is the rows x count block of the (permuted) weights
   * (row-major, ldw), Hinv1 its count x count upper block of the inverse-Hessian factor (ldh).
   * Process columns [c0, c1) (0 <= c0 < c1 <= count). Parameters: with col_group NULL, the
   * per-row scale[r], zero[r] for every column; else column i uses group col_group[i]'s
   * scale[col_group[i] * rows + r], zero[...] (group-major arrays; col_group: count entries,
   * backend memory). For each column i: code = quant(W1[r,i]); W1[r,i] <- dequant (so W1
   * ends as the dequantized weights); err = (w - q) / Hinv1[i,i]; W1[r, i+1:count] -=
   * err * Hinv1[i, i+1:count]; Err1[r, i] = err (row-major, lde); codes[r * ldc + i] = code.
   * row_loss[r] (backend memory, rows doubles) += Σ_i (w - q)² / Hinv1[i,i]² / 2, summed
   * over i in column order (a per-row value: no reduction across rows or threads). */
  void (*gptq_block)(struct hq_grid g, int64_t rows, int64_t count, int64_t c0, int64_t c1,
                     float *W1, int64_t ldw, const float *Hinv1, int64_t ldh,
                     const float *scale, const float *zero, const int32_t *col_group,
                     float *Err1, int64_t lde, uint8_t *codes, int64_t ldc, double *row_loss);
  /* Round-to-nearest of a rows x ncols slice in place with per-row params; codes out. */
  void (*rtn_cols)(struct hq_grid g, int64_t rows, int64_t ncols, float *W, int64_t ldw,
                   const float *scale, const float *zero, uint8_t *codes, int64_t ldc);

  /* ---- forward ops (issue 3; fp32, row-major, x is ntok x dim) ---- */
  /* y[t, :] = x[t, :] / sqrt(mean(x[t, :]²) + eps) * w[:]; y may be x (in place) */
  void (*rmsnorm)(int64_t ntok, int64_t dim, const float *x, const float *w, float eps,
                  float *y);
  /* Rotate-half RoPE in place on x[ntok x (nheads*head_dim)]; pos[t] is the position of
   * token t; cos/sin tables are [max_pos x head_dim/2] (inv_freq already scaled). */
  void (*rope)(int64_t ntok, int64_t nheads, int64_t head_dim, const int32_t *pos,
               const float *cos_t, const float *sin_t, float *x);
  /* Causal grouped-query attention over nseq independent sequences of seqlen tokens each.
   * q: [nseq*seqlen x nh*hd], k, v: [nseq*seqlen x nkv*hd], out: [nseq*seqlen x nh*hd]. */
  void (*attention)(int64_t nseq, int64_t seqlen, int64_t nh, int64_t nkv, int64_t hd,
                    const float *q, const float *k, const float *v, float *out);
  /* out[i] = silu(gate[i]) * up[i] */
  void (*swiglu)(int64_t n, const float *gate, const float *up, float *out);
  /* y[i] += x[i] */
  void (*add)(int64_t n, float *y, const float *x);
};

/* gptq_block's preconditions, shared by every backend's implementation: 0 <= c0 <= c1 <= count
 * (a tier-2 failure otherwise). Returns 1 when there is nothing to do (no rows, no columns). */
static inline int hq_gptq_block_empty(int64_t rows, int64_t count, int64_t c0, int64_t c1) {
  HQ_ASSERT(0 <= c0 && c0 <= c1 && c1 <= count);
  return rows <= 0 || c0 == c1;
}

/* The CPU backend (always available). */
const struct hq_backend *hq_backend_cpu(void);
/* The CUDA backend for the calling rank's GPU, or NULL when hpcq was built without CUDA or no
 * GPU is visible (hq_last_error() says which). */
const struct hq_backend *hq_backend_cuda(void);
/* "cpu", "cuda", or "auto" (cuda when available, else cpu). NULL + message on failure. */
const struct hq_backend *hq_backend_by_name(const char *name);

/* The quantization and forward ops as functions of one backend, declared for its prefix P
 * (HQ_BACKEND_OP_DECLS(hq_cpu) in backend_cpu.h, (hq_cuda) in kernels/cuda_internal.cuh), so
 * both implementations are declared from this one list; the signatures are the table's. */
#define HQ_BACKEND_OP_DECLS(P)                                                                 \
  void P##_quant_params(struct hq_grid g, int64_t rows, int64_t ncols, const float *W,          \
                        int64_t ldw, const float *colw, float *scale, float *zero);             \
  void P##_gptq_block(struct hq_grid g, int64_t rows, int64_t count, int64_t c0, int64_t c1,    \
                      float *W1, int64_t ldw, const float *Hinv1, int64_t ldh,                  \
                      const float *scale, const float *zero, const int32_t *col_group,          \
                      float *Err1, int64_t lde, uint8_t *codes, int64_t ldc, double *row_loss); \
  void P##_rtn_cols(struct hq_grid g, int64_t rows, int64_t ncols, float *W, int64_t ldw,       \
                    const float *scale, const float *zero, uint8_t *codes, int64_t ldc);        \
  void P##_rmsnorm(int64_t ntok, int64_t dim, const float *x, const float *w, float eps,        \
                   float *y);                                                                    \
  void P##_rope(int64_t ntok, int64_t nheads, int64_t head_dim, const int32_t *pos,             \
                const float *cos_t, const float *sin_t, float *x);                              \
  void P##_attention(int64_t nseq, int64_t seqlen, int64_t nh, int64_t nkv, int64_t hd,         \
                     const float *q, const float *k, const float *v, float *out);               \
  void P##_swiglu(int64_t n, const float *gate, const float *up, float *out);                   \
  void P##_add(int64_t n, float *y, const float *x)

#endif
