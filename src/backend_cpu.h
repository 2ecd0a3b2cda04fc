/* Private: the CPU backend's ops, split over backend_cpu*.c. */
#ifndef HQ_BACKEND_CPU_H
#define HQ_BACKEND_CPU_H

#include "backend.h"

/* backend_cpu_quant.c */
void hq_cpu_quant_params(struct hq_grid g, int64_t rows, int64_t ncols, const float *W,
                         int64_t ldw, float *scale, float *zero);
void hq_cpu_gptq_block(struct hq_grid g, int64_t rows, int64_t count, int64_t c0, int64_t c1,
                       float *W1, int64_t ldw, const float *Hinv1, int64_t ldh,
                       const float *scale, const float *zero, float *Err1, int64_t lde,
                       uint8_t *codes, int64_t ldc, double *loss_acc);
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
