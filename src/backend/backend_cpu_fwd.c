/* CPU backend: forward ops (RMSNorm, RoPE, attention, SwiGLU, residual add). fp32, row-major.
 * Attention runs OpenMP threads over (sequence, head) pairs, its matrix work (QKᵀ and PV) is
 * cblas_sgemm per (sequence, head, row block). The elementwise ops are vectorized but run on
 * one thread: they are memory-bound and cost ~1% of a block. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cpu.h"
#include "error.h"
#include "fastmath.h"

void hq_cpu_rmsnorm(int64_t ntok, int64_t dim, const float *x, const float *w, float eps,
                    float *y) {
  for (int64_t t = 0; t < ntok; t++) {
    const float *xt = x + t * dim;
    float *yt = y + t * dim;
    const double ss = hq_sumsq(xt, dim);
    /* HF LlamaRMSNorm: x * rsqrt(mean(x²) + eps) in fp32, then weight * that */
    const float r = (float)(1.0 / sqrt(ss / (double)dim + (double)eps));
    for (int64_t i = 0; i < dim; i++) yt[i] = w[i] * (xt[i] * r);
  }
}

/* HF rotate-half convention: with x1 = x[:half], x2 = x[half:] of each head,
 * x' = [x1 cos - x2 sin, x2 cos + x1 sin] (cos/sin of angle pos * inv_freq[i], i < half). */
void hq_cpu_rope(int64_t ntok, int64_t nheads, int64_t head_dim, const int32_t *pos,
                 const float *cos_t, const float *sin_t, float *x) {
  const int64_t half = head_dim / 2;
  for (int64_t t = 0; t < ntok; t++) {
    const float *c = cos_t + (int64_t)pos[t] * half;
    const float *s = sin_t + (int64_t)pos[t] * half;
    for (int64_t h = 0; h < nheads; h++) {
      float *x1 = x + (t * nheads + h) * head_dim;
      float *x2 = x1 + half;
      for (int64_t i = 0; i < half; i++) {
        const float a = x1[i], b = x2[i];
        x1[i] = a * c[i] - b * s[i];
        x2[i] = b * c[i] + a * s[i];
      }
    }
  }
}

/* Causal softmax of one score row in place: entries [0, n) are live, [n, ncol) are zeroed so
 * the following PV gemm can run over the whole row block. */
static void causal_softmax_row(float *row, int64_t n, int64_t ncol) {
  const float m = hq_maxf(row, n);
  const double s = hq_exp_shift_sum(row, n, m);
  const float inv = (float)(1.0 / s);
  for (int64_t j = 0; j < n; j++) row[j] *= inv;
  if (ncol > n) memset(row + n, 0, (size_t)(ncol - n) * sizeof(float));
}

/* Row block of the score matrix: rows [r0, r0+rb) of one (sequence, head) need key columns
 * [0, r0+rb) only (causal), so the masked work per block is one rb x rb triangle. */
#define HQ_ATT_ROWBLOCK 128

void hq_cpu_attention(int64_t nseq, int64_t seqlen, int64_t nh, int64_t nkv, int64_t hd,
                      const float *q, const float *k, const float *v, float *out) {
  HQ_ASSERT(nkv > 0 && nh % nkv == 0);
  const int64_t group = nh / nkv;
  const int64_t ldq = nh * hd, ldk = nkv * hd;
  const float scale = (float)(1.0 / sqrt((double)hd));
  const int64_t B = seqlen < HQ_ATT_ROWBLOCK ? seqlen : HQ_ATT_ROWBLOCK;
  const int64_t npairs = nseq * nh;
  /* OpenMP threads over the (sequence, head) pairs; OpenBLAS runs on one thread (see
   * backend_cpu_blas.c), so every pair's products have shapes fixed by seqlen and head_dim */
  const int par = omp_get_max_threads() > 1 && npairs > 1;
  int oom = 0;
#pragma omp parallel if (par)
  {
    float *sc = malloc((size_t)(B * seqlen) * sizeof(float)); /* [B x seqlen] scores */
    if (!sc) {
#pragma omp atomic write
      oom = 1;
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < npairs; w++) {
      if (!sc) continue;
      const int64_t s = w / nh, h = w % nh, kh = h / group;
      const float *Q = q + s * seqlen * ldq + h * hd;
      const float *K = k + s * seqlen * ldk + kh * hd;
      const float *V = v + s * seqlen * ldk + kh * hd;
      float *O = out + s * seqlen * ldq + h * hd;
      for (int64_t r0 = 0; r0 < seqlen; r0 += B) {
        const int64_t rb = seqlen - r0 < B ? seqlen - r0 : B, ncol = r0 + rb;
        /* scores[rb x ncol] = scale * Q[r0:r0+rb] K[0:ncol]ᵀ */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)rb, (blasint)ncol,
                    (blasint)hd, scale, Q + r0 * ldq, (blasint)ldq, K, (blasint)ldk, 0.0f, sc,
                    (blasint)ncol);
        for (int64_t i = 0; i < rb; i++) causal_softmax_row(sc + i * ncol, r0 + i + 1, ncol);
        /* O[r0:r0+rb] = P[rb x ncol] V[0:ncol] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)rb, (blasint)hd,
                    (blasint)ncol, 1.0f, sc, (blasint)ncol, V, (blasint)ldk, 0.0f,
                    O + r0 * ldq, (blasint)ldq);
      }
    }
    free(sc);
  }
  if (oom) HQ_DIE("attention: out of memory for the %lld x %lld score buffer", (long long)B,
                  (long long)seqlen);
}

void hq_cpu_swiglu(int64_t n, const float *gate, const float *up, float *out) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    const float g = gate[i];
    out[i] = g / (1.0f + hq_expf(-g)) * up[i];
  }
}

void hq_cpu_add(int64_t n, float *y, const float *x) {
  for (int64_t i = 0; i < n; i++) y[i] += x[i];
}
