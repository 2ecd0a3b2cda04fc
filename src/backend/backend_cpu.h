/* Private: the CPU backend's ops, split over backend_cpu*.c. */
#ifndef HQ_BACKEND_CPU_H
#define HQ_BACKEND_CPU_H

#include "backend.h"

/* backend_cpu_blas.c */
void hq_cpu_blas_init(void); /* OpenBLAS on one thread (idempotent) */
void hq_cpu_gemm(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, const float *A,
                 int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
void hq_cpu_gemm_rows(int64_t row0, int64_t seg, int ta, int tb, int64_t m, int64_t n, int64_t k,
                      float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                      float beta, float *C, int64_t ldc);
void hq_cpu_syrk(int64_t n, int64_t k, float alpha, const float *X, int64_t ldx, float beta,
                 float *C, int64_t ldc);
void hq_cpu_symmetrize(int64_t n, float *A, int64_t lda);
int hq_cpu_chol_inverse_upper(int64_t n, float *H, int64_t ldh);
int hq_cpu_chol_inverse_upper_team(int64_t n, float *H, int64_t ldh, const struct hq_team *t);
double hq_cpu_hess_fixed_acc(int64_t j0, int64_t np, const float *C, int64_t ldc, int F,
                             int lim_bits, int64_t *acc);

/* backend_cpu_quant.c (quant_params, gptq_block, rtn_cols) and backend_cpu_fwd.c (rmsnorm,
 * rope, attention, swiglu, add) */
HQ_BACKEND_OP_DECLS(hq_cpu);

#endif
