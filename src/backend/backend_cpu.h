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
double hq_cpu_hess_fixed_acc(int64_t j0, int64_t np, const float *C, int64_t ldc, int F,
                             int lim_bits, int64_t *acc);

/* backend_cpu_quant.c */
void hq_cpu_quant_params(struct hq_grid g, int64_t rows, int64_t ncols, const float *W,
                         int64_t ldw, const float *colw, float *scale, float *zero);
void hq_cpu_gptq_block(struct hq_grid g, int64_t rows, int64_t count, int64_t c0, int64_t c1,
                       float *W1, int64_t ldw, const float *Hinv1, int64_t ldh,
                       const float *scale, const float *zero, const int32_t *col_group,
                       float *Err1, int64_t lde, uint8_t *codes, int64_t ldc, double *row_loss);
void hq_cpu_rtn_cols(struct hq_grid g, int64_t rows, int64_t ncols, float *W, int64_t ldw,
                     const float *scale, const float *zero, uint8_t *codes, int64_t ldc);

/* backend_cpu_fwd.c */
void hq_cpu_rmsnorm(int64_t ntok, int64_t dim, const float *x, const float *w, float eps,
                    float *y);
void hq_cpu_rope(int64_t ntok, int64_t nheads, int64_t head_dim, const int32_t *pos,
                 const float *cos_t, const float *sin_t, float *x);
void hq_cpu_attention(int64_t nseq, int64_t seqlen, int64_t nh, int64_t nkv, int64_t hd,
                      const float *q, const float *k, const float *v, float *out);
void hq_cpu_swiglu(int64_t n, const float *gate, const float *up, float *out);
void hq_cpu_add(int64_t n, float *y, const float *x);

#endif
