/* CUDA backend: quantization kernels (grid parameters, the fused GPTQ inner block, RTN).
 *
 * All rounding goes through the scalar math of quant.h (HQ_HD = __host__ __device__), so codes
 * match the CPU backend (src/backend/backend_cpu_quant.c) bit for bit given the same inputs. Two things
 * make that true: the CUDA sources are compiled with --fmad=false (CMakeLists.txt; the CPU
 * side is ISO C, which does not contract a*b+c either), and every per-row walk below performs
 * the same float operations in the same order as the CPU code (the downdate w -= err * h uses
 * explicit __fmul_rn/__fsub_rn). Division and rintf are IEEE-exact on the device. The MSE
 * clip search sums powf(d, 2.4) per row in the CPU's order, but the device powf is not glibc's
 * (both within a few ulp), so on a near-tie the search may keep a different shrink factor. */
#include "cuda_internal.cuh"

extern "C" {
#include "hscale.h"
}

/* ---- grid parameters ------------------------------------------------------------------ */
/* One warp per row: min/max over the row (range forced to include 0). Min and max are exact,
 * so any reduction order gives the CPU's result; the comparisons are the CPU's (NaN is
 * skipped, -0 never replaces the initial +0). */
__global__ void quant_minmax_kernel(struct hq_grid g, int64_t rows, int64_t ncols,
                                    const float *W, int64_t ldw, float *scale, float *zero) {
  const int lane = threadIdx.x & 31, wpb = blockDim.x >> 5;
  for (int64_t r = (int64_t)blockIdx.x * wpb + (threadIdx.x >> 5); r < rows;
       r += (int64_t)gridDim.x * wpb) {
    const float *w = W + r * ldw;
    float mn = 0.0f, mx = 0.0f;
    for (int64_t i = lane; i < ncols; i += 32) {
      const float v = w[i];
      mn = v < mn ? v : mn;
      mx = v > mx ? v : mx;
    }
    for (int off = 16; off; off >>= 1) {
      const float a = __shfl_xor_sync(0xffffffffu, mn, off);
      const float b = __shfl_xor_sync(0xffffffffu, mx, off);
      mn = a < mn ? a : mn;
      mx = b > mx ? b : mx;
    }
    if (lane == 0) hq_grid_params_from_range(g, mn, mx, scale + r, zero + r);
  }
}

/* MSE clip search: one thread per row running the reference itself (its error sum is a serial
 * float sum, so the order must be the CPU's). */
__global__ void quant_mse_kernel(struct hq_grid g, int64_t rows, int64_t ncols, const float *W,
                                 int64_t ldw, float *scale, float *zero) {
  for (int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; r < rows;
       r += (int64_t)gridDim.x * blockDim.x)
    hq_grid_params_ref(g, W + r * ldw, ncols, 1, scale + r, zero + r);
}

/* --scale-from-hessian: the weighted search of hscale.c on the host (a rare, experimental
 * path; the slice and its column weights are staged through host memory). */
static void quant_params_colw(struct hq_grid g, int64_t rows, int64_t ncols, const float *W,
                              int64_t ldw, const float *colw, float *scale, float *zero) {
  float *w = (float *)hq_xmalloc((size_t)(rows * ldw) * sizeof(float));
  float *d = (float *)hq_xmalloc((size_t)ncols * sizeof(float));
  float *s = (float *)hq_xmalloc((size_t)rows * sizeof(float));
  float *z = (float *)hq_xmalloc((size_t)rows * sizeof(float));
  HQ_CUDA_CHECK(cudaStreamSynchronize(hq_cuda.stream));
  HQ_CUDA_CHECK(cudaMemcpy(w, W, (size_t)((rows - 1) * ldw + ncols) * sizeof(float), cudaMemcpyDeviceToHost));
  HQ_CUDA_CHECK(cudaMemcpy(d, colw, (size_t)ncols * sizeof(float), cudaMemcpyDeviceToHost));
  for (int64_t r = 0; r < rows; r++) hq_hscale_params_ref(g, w + r * ldw, d, ncols, 1, s + r, z + r);
  HQ_CUDA_CHECK(cudaMemcpy(scale, s, (size_t)rows * sizeof(float), cudaMemcpyHostToDevice));
  HQ_CUDA_CHECK(cudaMemcpy(zero, z, (size_t)rows * sizeof(float), cudaMemcpyHostToDevice));
  free(w), free(d), free(s), free(z);
}

void hq_cuda_quant_params(struct hq_grid g, int64_t rows, int64_t ncols, const float *W,
                          int64_t ldw, const float *colw, float *scale, float *zero) {
  if (rows <= 0) return;
  if (colw) {
    quant_params_colw(g, rows, ncols, W, ldw, colw, scale, zero);
  } else if (g.mse) {
    quant_mse_kernel<<<hq_cuda_grid(rows, 64), 64, 0, hq_cuda.stream>>>(g, rows, ncols, W, ldw,
                                                                         scale, zero);
    HQ_LAUNCH_CHECK("quant_mse");
  } else {
    quant_minmax_kernel<<<hq_cuda_grid(rows, 8), 256, 0, hq_cuda.stream>>>(g, rows, ncols, W,
                                                                            ldw, scale, zero);
    HQ_LAUNCH_CHECK("quant_minmax");
  }
}

/* ---- the fused GPTQ inner block ---------------------------------------------------------
 * A row's walk over the block's columns is a serial chain (quantize column i, downdate the
 * rest of the row, quantize i+1, ...), while rows are independent: one thread per row, one
 * warp (HQ_GPTQ_R rows) per thread block. The warp's rows live transposed in shared memory,
 * T[j][lane] (stride HQ_GPTQ_RP = 33: conflict-free both for the per-thread walk and for the
 * coalesced row-wise load/store), with this column segment's errors E and codes C staged the
 * same way, and, when it fits, the needed rows of Hinv1 (read by all lanes at the same address:
 * a broadcast). Global memory is touched only by coalesced row-contiguous loads and stores. */
#define HQ_GPTQ_R 32
#define HQ_GPTQ_RP 33

static size_t gptq_smem_bytes(int64_t w, int64_t n, int h_in_smem) {
  return (size_t)(w * HQ_GPTQ_RP + n * HQ_GPTQ_RP + (h_in_smem ? n * w : 0)) * sizeof(float) +
         (size_t)(n * HQ_GPTQ_RP);
}

/* Wb = W1 + c0, Hb = Hinv1 + c0*ldh + c0, Eb = Err1 + c0, Cb = codes + c0: columns are
 * relative to c0; w = count - c0 columns are downdated, n = c1 - c0 are quantized. */
__global__ void __launch_bounds__(HQ_GPTQ_R)
gptq_block_smem_kernel(int maxq, int64_t rows, int64_t w, int64_t n, float *Wb, int64_t ldw,
                       const float *Hb, int64_t ldh, const float *scale, const float *zero,
                       const int32_t *cg, float *Eb, int64_t lde, uint8_t *Cb, int64_t ldc,
                       double *row_loss, int h_in_smem) {
  extern __shared__ float sm[];
  float *T = sm;                                   /* [w][RP]: T[j*RP + r] = W1[r0+r, c0+j] */
  float *E = T + w * HQ_GPTQ_RP;                   /* [n][RP]: errors */
  float *Hs = E + n * HQ_GPTQ_RP;                  /* [n][w]: Hinv1 rows (upper part only) */
  uint8_t *Cs = (uint8_t *)(Hs + (h_in_smem ? n * w : 0)); /* [n][RP]: codes */
  const int lane = threadIdx.x;
  const int64_t r0 = (int64_t)blockIdx.x * HQ_GPTQ_R;
  const int nr = rows - r0 < HQ_GPTQ_R ? (int)(rows - r0) : HQ_GPTQ_R;

  for (int rr = 0; rr < HQ_GPTQ_R; rr++)
    for (int64_t j = lane; j < w; j += HQ_GPTQ_R)
      T[j * HQ_GPTQ_RP + rr] = rr < nr ? Wb[(r0 + rr) * ldw + j] : 0.0f;
  if (h_in_smem)
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = i + lane; j < w; j += HQ_GPTQ_R) Hs[i * w + j] = Hb[i * ldh + j];
  __syncthreads();

  float s = lane < nr ? scale[r0 + lane] : 1.0f;
  float z = lane < nr ? zero[r0 + lane] : 0.0f;
  float *t = T + lane;
  double loss = 0.0;
  for (int64_t i = 0; i < n; i++) {
    const float *h = h_in_smem ? Hs + i * w : Hb + i * ldh;
    if (cg && lane < nr) { /* the column's group (cg is relative to c0, like the block) */
      s = scale[(int64_t)cg[i] * rows + r0 + lane];
      z = zero[(int64_t)cg[i] * rows + r0 + lane];
    }
    const float wi = t[i * HQ_GPTQ_RP];
    const int code = hq_quant_code(wi, s, z, maxq);
    const float q = hq_dequant(code, s, z);
    const float err = (wi - q) / h[i];
    t[i * HQ_GPTQ_RP] = q;
    E[i * HQ_GPTQ_RP + lane] = err;
    Cs[i * HQ_GPTQ_RP + lane] = (uint8_t)code;
    if (lane < nr) loss += 0.5 * (double)err * (double)err;
    for (int64_t j = i + 1; j < w; j++)
      t[j * HQ_GPTQ_RP] = __fsub_rn(t[j * HQ_GPTQ_RP], __fmul_rn(err, h[j]));
  }
  __syncthreads();

  for (int rr = 0; rr < nr; rr++) {
    for (int64_t j = lane; j < w; j += HQ_GPTQ_R) Wb[(r0 + rr) * ldw + j] = T[j * HQ_GPTQ_RP + rr];
    for (int64_t i = lane; i < n; i += HQ_GPTQ_R) {
      Eb[(r0 + rr) * lde + i] = E[i * HQ_GPTQ_RP + rr];
      Cb[(r0 + rr) * ldc + i] = Cs[i * HQ_GPTQ_RP + rr];
    }
  }
  if (lane < nr) row_loss[r0 + lane] += loss; /* one thread per row: no reduction */
}

/* Fallback when even the row tiles do not fit in shared memory (very large --block-size):
 * the same walk, one thread per row, directly in global memory. */
__global__ void gptq_block_global_kernel(int maxq, int64_t rows, int64_t w, int64_t n, float *Wb,
                                         int64_t ldw, const float *Hb, int64_t ldh,
                                         const float *scale, const float *zero, const int32_t *cg,
                                         float *Eb, int64_t lde, uint8_t *Cb, int64_t ldc,
                                         double *row_loss) {
  const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  double loss = 0.0;
  if (r < rows) {
    float *wr = Wb + r * ldw;
    float s = scale[r], z = zero[r];
    for (int64_t i = 0; i < n; i++) {
      const float *h = Hb + i * ldh;
      if (cg) s = scale[(int64_t)cg[i] * rows + r], z = zero[(int64_t)cg[i] * rows + r];
      const float wi = wr[i];
      const int code = hq_quant_code(wi, s, z, maxq);
      const float q = hq_dequant(code, s, z);
      const float err = (wi - q) / h[i];
      wr[i] = q;
      Eb[r * lde + i] = err;
      Cb[r * ldc + i] = (uint8_t)code;
      loss += 0.5 * (double)err * (double)err;
      for (int64_t j = i + 1; j < w; j++) wr[j] = __fsub_rn(wr[j], __fmul_rn(err, h[j]));
    }
  }
  if (r < rows) row_loss[r] += loss;
}

void hq_cuda_gptq_block(struct hq_grid g, int64_t rows, int64_t count, int64_t c0, int64_t c1,
                        float *W1, int64_t ldw, const float *Hinv1, int64_t ldh,
                        const float *scale, const float *zero, const int32_t *col_group,
                        float *Err1, int64_t lde, uint8_t *codes, int64_t ldc, double *row_loss) {
  if (hq_gptq_block_empty(rows, count, c0, c1)) return;
  const int64_t w = count - c0, n = c1 - c0;
  float *Wb = W1 + c0;
  const float *Hb = Hinv1 + c0 * ldh + c0;
  float *Eb = Err1 + c0;
  uint8_t *Cb = codes + c0;
  const int32_t *cg = col_group ? col_group + c0 : NULL;
  const int64_t nblk = (rows + HQ_GPTQ_R - 1) / HQ_GPTQ_R;
  HQ_ASSERT(nblk <= INT32_MAX);
  const size_t with_h = gptq_smem_bytes(w, n, 1), no_h = gptq_smem_bytes(w, n, 0);
  if (no_h <= (size_t)hq_cuda.smem_optin) {
    const int h_in = with_h <= (size_t)hq_cuda.smem_optin;
    gptq_block_smem_kernel<<<(unsigned)nblk, HQ_GPTQ_R, h_in ? with_h : no_h, hq_cuda.stream>>>(
        g.maxq, rows, w, n, Wb, ldw, Hb, ldh, scale, zero, cg, Eb, lde, Cb, ldc, row_loss, h_in);
    HQ_LAUNCH_CHECK("gptq_block_smem");
  } else {
    const unsigned nb = (unsigned)((rows + 63) / 64);
    gptq_block_global_kernel<<<nb, 64, 0, hq_cuda.stream>>>(g.maxq, rows, w, n, Wb, ldw, Hb, ldh,
                                                             scale, zero, cg, Eb, lde, Cb, ldc,
                                                             row_loss);
    HQ_LAUNCH_CHECK("gptq_block_global");
  }
}

/* ---- round to nearest ------------------------------------------------------------------ */
__global__ void rtn_kernel(int maxq, int64_t rows, int64_t ncols, float *W, int64_t ldw,
                           const float *scale, const float *zero, uint8_t *codes, int64_t ldc) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float s = scale[r], z = zero[r];
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < ncols;
         i += (int64_t)gridDim.x * blockDim.x) {
      const int code = hq_quant_code(W[r * ldw + i], s, z, maxq);
      W[r * ldw + i] = hq_dequant(code, s, z);
      codes[r * ldc + i] = (uint8_t)code;
    }
  }
}

void hq_cuda_rtn_cols(struct hq_grid g, int64_t rows, int64_t ncols, float *W, int64_t ldw,
                      const float *scale, const float *zero, uint8_t *codes, int64_t ldc) {
  if (rows <= 0 || ncols <= 0) return;
  int64_t gx = (ncols + 255) / 256;
  gx = gx < 64 ? gx : 64;
  const int64_t gy = rows < 65535 ? rows : 65535;
  rtn_kernel<<<dim3((unsigned)gx, (unsigned)gy), 256, 0, hq_cuda.stream>>>(
      g.maxq, rows, ncols, W, ldw, scale, zero, codes, ldc);
  HQ_LAUNCH_CHECK("rtn");
}

void hq_cuda_quant_init(void) {
  HQ_CUDA_CHECK(cudaFuncSetAttribute(gptq_block_smem_kernel,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     hq_cuda.smem_optin));
}
