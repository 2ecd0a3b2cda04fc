/* CPU backend: forward ops (RMSNorm, RoPE, attention, SwiGLU, residual add). */
#include "backend_cpu.h"
#include "error.h"

void hq_cpu_rmsnorm(int64_t ntok, int64_t dim, const float *x, const float *w, float eps,
                    float *y) {
  HQ_DIE("rmsnorm: not implemented yet");
}
void hq_cpu_rope(int64_t ntok, int64_t nheads, int64_t head_dim, const int32_t *pos,
                 const float *cos_t, const float *sin_t, float *x) {
  HQ_DIE("rope: not implemented yet");
}
void hq_cpu_attention(int64_t nseq, int64_t seqlen, int64_t nh, int64_t nkv, int64_t hd,
                      const float *q, const float *k, const float *v, float *out) {
  HQ_DIE("attention: not implemented yet");
}
void hq_cpu_swiglu(int64_t n, const float *gate, const float *up, float *out) {
  HQ_DIE("swiglu: not implemented yet");
}
void hq_cpu_add(int64_t n, float *y, const float *x) {
  for (int64_t i = 0; i < n; i++) y[i] += x[i];
}
