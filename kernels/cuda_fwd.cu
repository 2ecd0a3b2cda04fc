/* CUDA backend: forward ops (RMSNorm, RoPE, causal GQA attention, SwiGLU, residual add), fp32,
 * row-major, same semantics as src/backend/backend_cpu_fwd.c. Attention is two batched cuBLAS GEMMs per
 * chunk of (sequence, head) pairs around a causal softmax kernel; the score chunk is bounded
 * (HQ_ATT_SCORE_BYTES, 256 MiB) so memory does not grow with nseq * nh. */
#include <stdlib.h>

#include "cuda_internal.cuh"

#define HQ_ATT_SCORE_BYTES ((size_t)256 << 20)

/* Bytes for one chunk of attention scores; HQ_CUDA_ATT_SCORE_BYTES overrides it (a test hook
 * that forces several chunks on small inputs). */
static size_t att_score_budget(void) {
  const char *e = getenv("HQ_CUDA_ATT_SCORE_BYTES");
  if (e && *e) {
    char *end = NULL;
    unsigned long long v = strtoull(e, &end, 10);
    if (end && *end == 0 && v > 0) return (size_t)v;
  }
  return HQ_ATT_SCORE_BYTES;
}

/* Block-wide sum/max over blockDim.x threads (a multiple of 32, at most 1024). Every thread
 * gets the result. */
template <typename T, typename Op>
__device__ static T block_reduce(T v, Op op) {
  __shared__ T part[32];
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int off = 16; off; off >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  __syncthreads(); /* part[] may still be read by a previous call */
  if (lane == 0) part[wid] = v;
  __syncthreads();
  v = part[0];
  for (int i = 1; i < nw; i++) v = op(v, part[i]);
  return v;
}
struct hq_op_add {
  template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
};
struct hq_op_max {
  __device__ float operator()(float a, float b) const { return a > b ? a : b; }
};

/* ---- RMSNorm: one block per token, fp64 sum of squares as the CPU ---------------------- */
__global__ void rmsnorm_kernel(int64_t ntok, int64_t dim, const float *x, const float *w,
                               float eps, float *y) {
  for (int64_t t = blockIdx.x; t < ntok; t += gridDim.x) {
    const float *xt = x + t * dim;
    float *yt = y + t * dim;
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += (double)xt[i] * xt[i];
    ss = block_reduce(ss, hq_op_add());
    const float r = (float)(1.0 / sqrt(ss / (double)dim + (double)eps));
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) yt[i] = w[i] * (xt[i] * r);
  }
}

void hq_cuda_rmsnorm(int64_t ntok, int64_t dim, const float *x, const float *w, float eps,
                     float *y) {
  if (ntok <= 0) return;
  const unsigned g = (unsigned)(ntok < 65535 ? ntok : 65535);
  rmsnorm_kernel<<<g, 256, 0, hq_cuda.stream>>>(ntok, dim, x, w, eps, y);
  HQ_LAUNCH_CHECK("rmsnorm");
}

/* ---- RoPE, rotate-half (HF): x' = [x1 cos - x2 sin, x2 cos + x1 sin] per head ------------ */
__global__ void rope_kernel(int64_t ntok, int64_t nheads, int64_t head_dim, const int32_t *pos,
                            const float *cos_t, const float *sin_t, float *x) {
  const int64_t half = head_dim / 2, per_tok = nheads * half, n = ntok * per_tok;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = e / per_tok, rem = e % per_tok, h = rem / half, i = rem % half;
    const float c = cos_t[(int64_t)pos[t] * half + i], s = sin_t[(int64_t)pos[t] * half + i];
    float *x1 = x + (t * nheads + h) * head_dim;
    const float a = x1[i], b = x1[i + half];
    x1[i] = a * c - b * s;
    x1[i + half] = b * c + a * s;
  }
}

void hq_cuda_rope(int64_t ntok, int64_t nheads, int64_t head_dim, const int32_t *pos,
                  const float *cos_t, const float *sin_t, float *x) {
  const int64_t n = ntok * nheads * (head_dim / 2);
  if (n <= 0) return;
  rope_kernel<<<hq_cuda_grid(n, 256), 256, 0, hq_cuda.stream>>>(ntok, nheads, head_dim, pos,
                                                                cos_t, sin_t, x);
  HQ_LAUNCH_CHECK("rope");
}

/* ---- attention ---------------------------------------------------------------------------
 * Pair p = s * nh + h (sequence s, query head h, kv head h / (nh / nkv)). For a chunk of np
 * pairs: S_p = Q_h K_khᵀ / sqrt(hd) (seqlen x seqlen), causal softmax row by row (masked
 * entries set to 0), O_h = S_p V_kh. The pointer arrays of the batched GEMMs are built on the
 * device (no host synchronisation). */
__global__ void att_ptrs_kernel(int64_t p0, int64_t cnt, int64_t np, int64_t nh, int64_t group,
                                int64_t seqlen, int64_t hd, const float *q, const float *k,
                                const float *v, float *out, float *S, const float **P) {
  const int64_t ldq = nh * hd, ldk = (nh / group) * hd;
  for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < cnt;
       p += (int64_t)gridDim.x * blockDim.x) {
    const int64_t pair = p0 + p, s = pair / nh, h = pair % nh, kh = h / group;
    float *Sp = S + p * seqlen * seqlen;
    P[0 * np + p] = q + s * seqlen * ldq + h * hd;           /* Q_h  [seqlen x hd], ldq */
    P[1 * np + p] = k + s * seqlen * ldk + kh * hd;          /* K_kh [seqlen x hd], ldk */
    P[2 * np + p] = Sp;                                      /* S_p  [seqlen x seqlen] */
    P[3 * np + p] = v + s * seqlen * ldk + kh * hd;          /* V_kh [seqlen x hd], ldk */
    P[4 * np + p] = out + s * seqlen * ldq + h * hd;         /* O_h  [seqlen x hd], ldq */
  }
}

__global__ void causal_softmax_kernel(int64_t nrows, int64_t seqlen, float *S) {
  for (int64_t row = blockIdx.x; row < nrows; row += gridDim.x) {
    float *x = S + row * seqlen;
    const int64_t live = row % seqlen + 1; /* query i sees keys 0..i */
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < live; j += blockDim.x) m = x[j] > m ? x[j] : m;
    m = block_reduce(m, hq_op_max());
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < live; j += blockDim.x) {
      const float e = expf(x[j] - m);
      x[j] = e;
      sum += e;
    }
    sum = block_reduce(sum, hq_op_add());
    const float inv = 1.0f / sum;
    for (int64_t j = threadIdx.x; j < seqlen; j += blockDim.x) x[j] = j < live ? x[j] * inv : 0.0f;
  }
}

void hq_cuda_attention(int64_t nseq, int64_t seqlen, int64_t nh, int64_t nkv, int64_t hd,
                       const float *q, const float *k, const float *v, float *out) {
  HQ_ASSERT(nkv > 0 && nh % nkv == 0);
  const int64_t npairs = nseq * nh;
  if (npairs <= 0 || seqlen <= 0) return;
  const int64_t group = nh / nkv, ldq = nh * hd, ldk = nkv * hd;
  const size_t per_pair = (size_t)seqlen * (size_t)seqlen * sizeof(float);
  int64_t np = (int64_t)(att_score_budget() / per_pair);
  np = np < 1 ? 1 : (np > npairs ? npairs : np);
  float *S = (float *)hq_cuda_scratch(HQ_SCRATCH_ATTN, per_pair * (size_t)np);
  const float **P = (const float **)hq_cuda_scratch(HQ_SCRATCH_PTRS, 5 * (size_t)np * sizeof(float *));
  const float scale = (float)(1.0 / sqrt((double)hd)), one = 1.0f, zero = 0.0f;
  for (int64_t p0 = 0; p0 < npairs; p0 += np) {
    const int64_t cnt = npairs - p0 < np ? npairs - p0 : np;
    /* the arrays are laid out for np entries; a short last chunk uses the first cnt of each */
    att_ptrs_kernel<<<hq_cuda_grid(cnt, 128), 128, 0, hq_cuda.stream>>>(
        p0, cnt, np, nh, group, seqlen, hd, q, k, v, out, S, P);
    HQ_LAUNCH_CHECK("att_ptrs");
    /* row-major S = scale · Q Kᵀ  <=>  column-major Sᵀ = scale · K Qᵀ (operands swapped) */
    HQ_CUBLAS_CHECK(cublasSgemmBatched_64(hq_cuda.blas, CUBLAS_OP_T, CUBLAS_OP_N, seqlen, seqlen,
                                          hd, &scale, P + 1 * np, ldk, P + 0 * np, ldq, &zero,
                                          (float *const *)(P + 2 * np), seqlen, cnt));
    const int64_t rows = cnt * seqlen;
    causal_softmax_kernel<<<(unsigned)(rows < 65535 ? rows : 65535), 128, 0, hq_cuda.stream>>>(
        rows, seqlen, S);
    HQ_LAUNCH_CHECK("causal_softmax");
    /* row-major O = S V  <=>  column-major Oᵀ = Vᵀ Sᵀ */
    HQ_CUBLAS_CHECK(cublasSgemmBatched_64(hq_cuda.blas, CUBLAS_OP_N, CUBLAS_OP_N, hd, seqlen,
                                          seqlen, &one, P + 3 * np, ldk, P + 2 * np, seqlen,
                                          &zero, (float *const *)(P + 4 * np), ldq, cnt));
  }
}

/* ---- elementwise ---------------------------------------------------------------------- */
__global__ void swiglu_kernel(int64_t n, const float *gate, const float *up, float *out) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

void hq_cuda_swiglu(int64_t n, const float *gate, const float *up, float *out) {
  if (n <= 0) return;
  swiglu_kernel<<<hq_cuda_grid(n, 256), 256, 0, hq_cuda.stream>>>(n, gate, up, out);
  HQ_LAUNCH_CHECK("swiglu");
}

__global__ void add_kernel(int64_t n, float *y, const float *x) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    y[i] += x[i];
}

void hq_cuda_add(int64_t n, float *y, const float *x) {
  if (n <= 0) return;
  add_kernel<<<hq_cuda_grid(n, 256), 256, 0, hq_cuda.stream>>>(n, y, x);
  HQ_LAUNCH_CHECK("add");
}
