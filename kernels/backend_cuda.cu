/* CUDA backend (issue 5): device selection, memory, cuBLAS/cuSOLVER linear algebra and the op
 * table. Quantization kernels are in cuda_quant.cu, forward kernels in cuda_fwd.cu.
 *
 * Layout: every matrix in backend.h is ROW-MAJOR. A row-major m x n matrix with leading
 * dimension ld is, on the same memory, the column-major n x m matrix (its transpose) with the
 * same ld. So row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: cuBLAS gets the
 * operands swapped and no copies are made. Row-major upper triangle == column-major lower.
 *
 * Precision: fp32 everywhere. cuBLAS runs with CUBLAS_DEFAULT_MATH (no TF32) unless the
 * environment sets HQ_ALLOW_TF32=1 (then CUBLAS_TF32_TENSOR_OP_MATH for gemm/syrk).
 * Streams: one stream per process; every op is asynchronous on it except upload/download
 * (which return when the host buffer may be reused / read) and chol_inverse_upper (which
 * must return cuSOLVER's info to the host). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.cuh"

struct hq_cuda_state hq_cuda;

/* ---- error strings ------------------------------------------------------------------ */
const char *hq_cublas_str(cublasStatus_t s) { return cublasGetStatusString(s); }

const char *hq_cusolver_str(cusolverStatus_t s) {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return "success";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "allocation failed (out of device memory)";
    case CUSOLVER_STATUS_INVALID_VALUE: return "invalid value";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "architecture mismatch";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "internal error";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "unknown cuSOLVER status";
  }
}

static void need_ready(const char *what) {
  if (!hq_cuda.ready) HQ_DIE("%s called before hq_backend_cuda() succeeded", what);
}

/* ---- memory ---------------------------------------------------------------------------
 * Plain cudaMalloc (never managed memory). A small table of live allocations gives the
 * current and peak bytes that the benchmarks report as GPU memory per rank. */
struct hq_cuda_blk { void *p; size_t bytes; };
static struct hq_cuda_blk *g_blk;
static size_t g_nblk, g_capblk, g_cur, g_peak;

static void *cu_alloc(size_t bytes) {
  void *p = NULL;
  if (bytes == 0) bytes = 256;
  if (cudaMalloc(&p, bytes) != cudaSuccess) {
    (void)cudaGetLastError(); /* out of memory is not sticky: clear it, the caller reports */
    return NULL;
  }
  if (g_nblk == g_capblk) {
    size_t cap = g_capblk ? 2 * g_capblk : 64;
    struct hq_cuda_blk *nb = (struct hq_cuda_blk *)realloc(g_blk, cap * sizeof *nb);
    if (!nb) HQ_DIE("out of host memory for the device allocation table");
    g_blk = nb;
    g_capblk = cap;
  }
  g_blk[g_nblk].p = p;
  g_blk[g_nblk].bytes = bytes;
  g_nblk++;
  g_cur += bytes;
  if (g_cur > g_peak) g_peak = g_cur;
  return p;
}

static void cu_free(void *p) {
  if (!p) return;
  for (size_t i = g_nblk; i-- > 0;)
    if (g_blk[i].p == p) {
      g_cur -= g_blk[i].bytes;
      g_blk[i] = g_blk[--g_nblk];
      HQ_CUDA_CHECK(cudaStreamSynchronize(hq_cuda.stream)); /* no queued op still uses p */
      HQ_CUDA_CHECK(cudaFree(p));
      return;
    }
  HQ_DIE("cuda free of %p, which the CUDA backend did not allocate", p);
}

static void cu_upload(void *dst, const void *host_src, size_t bytes) {
  if (!bytes) return;
  HQ_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, hq_cuda.stream));
  HQ_CUDA_CHECK(cudaStreamSynchronize(hq_cuda.stream));
}
static void cu_download(void *host_dst, const void *src, size_t bytes) {
  if (!bytes) return;
  HQ_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, hq_cuda.stream));
  HQ_CUDA_CHECK(cudaStreamSynchronize(hq_cuda.stream));
}
static void cu_copy(void *dst, const void *src, size_t bytes) {
  if (bytes) HQ_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, hq_cuda.stream));
}
static void cu_zero(void *p, size_t bytes) {
  if (bytes) HQ_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, hq_cuda.stream));
}
static void cu_sync(void) { HQ_CUDA_CHECK(cudaStreamSynchronize(hq_cuda.stream)); }

static void *g_scratch[HQ_SCRATCH_COUNT];
static size_t g_scratch_bytes[HQ_SCRATCH_COUNT];

void *hq_cuda_scratch(int slot, size_t bytes) {
  HQ_ASSERT(slot >= 0 && slot < HQ_SCRATCH_COUNT);
  if (bytes <= g_scratch_bytes[slot]) return g_scratch[slot];
  if (g_scratch[slot]) cu_free(g_scratch[slot]);
  g_scratch[slot] = cu_alloc(bytes);
  if (!g_scratch[slot])
    HQ_DIE("out of device memory for a %.1f MiB CUDA backend workspace; use more ranks or "
           "fewer tokens per rank", (double)bytes / 1048576.0);
  g_scratch_bytes[slot] = bytes;
  return g_scratch[slot];
}

/* ---- dense linear algebra ------------------------------------------------------------ */
void hq_cuda_gemm(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, const float *A,
                  int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  /* row-major C[m x n] = op(A) op(B)  <=>  column-major Cᵀ[n x m] = op(B)ᵀ op(A)ᵀ */
  HQ_CUBLAS_CHECK(cublasSgemm_64(hq_cuda.blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                 ta ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, B,
                                 ldb > 0 ? ldb : 1, A, lda > 0 ? lda : 1, &beta, C, ldc));
}

static void cu_syrk(int64_t n, int64_t k, float alpha, const float *X, int64_t ldx, float beta,
                    float *C, int64_t ldc) {
  if (n == 0) return;
  /* X row-major [k x n] is Y = Xᵀ column-major [n x k]; XᵀX = Y Yᵀ; row-major upper of C is
   * column-major lower. */
  HQ_CUBLAS_CHECK(cublasSsyrk_64(hq_cuda.blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, n, k, &alpha,
                                 X, ldx, &beta, C, ldc));
}

/* Row-major: A[i][j] = A[j][i] for i > j, through a 32 x 32 shared tile so that reads and
 * writes are both coalesced. Only tiles on or below the diagonal are launched with work. */
__global__ void symmetrize_kernel(int64_t n, float *A, int64_t lda) {
  __shared__ float tile[32][33];
  const int64_t bi = blockIdx.y, bj = blockIdx.x; /* destination tile (rows bi, cols bj) */
  if (bj > bi) return;
  const int tx = threadIdx.x, ty = threadIdx.y;   /* 32 x 8 threads */
  /* source: rows bj*32.., cols bi*32.. (upper side) */
  for (int r = ty; r < 32; r += 8) {
    int64_t si = bj * 32 + r, sj = bi * 32 + tx;
    if (si < n && sj < n) tile[r][tx] = A[si * lda + sj];
  }
  __syncthreads();
  for (int r = ty; r < 32; r += 8) {
    int64_t i = bi * 32 + r, j = bj * 32 + tx;
    if (i < n && j < n && j < i) A[i * lda + j] = tile[tx][r];
  }
}

static void cu_symmetrize(int64_t n, float *A, int64_t lda) {
  if (n <= 1) return;
  const int64_t nt = (n + 31) / 32;
  HQ_ASSERT(nt <= 65535);
  symmetrize_kernel<<<dim3((unsigned)nt, (unsigned)nt), dim3(32, 8), 0, hq_cuda.stream>>>(n, A, lda);
  HQ_LAUNCH_CHECK("symmetrize");
}

/* zero the row-major strict lower triangle (i > j) */
__global__ void zero_lower_kernel(int64_t n, float *A, int64_t lda) {
  const int64_t i = (int64_t)blockIdx.y * 8 + threadIdx.y;
  if (i >= n) return;
  for (int64_t j = (int64_t)blockIdx.x * 32 + threadIdx.x; j < i; j += (int64_t)gridDim.x * 32)
    A[i * lda + j] = 0.0f;
}

/* Same steps as the CPU backend: on the column-major view (where the row-major upper triangle
 * is the lower one) potrf('L') -> L, potri('L') -> H⁻¹ (lower), potrf('L') -> L' with
 * H⁻¹ = L' L'ᵀ; L' column-major lower is U = L'ᵀ row-major upper, H⁻¹ = Uᵀ U. All three run
 * back to back on the stream; one synchronisation then reads the three devInfo values and the
 * first non-zero one is returned, exactly as LAPACK's info (> 0: leading minor not positive
 * definite; the caller damps more and retries). */
static int cu_chol_inverse_upper(int64_t n, float *H, int64_t ldh) {
  if (n == 0) return 0;
  if (n > INT32_MAX || ldh > INT32_MAX)
    HQ_DIE("chol_inverse_upper: n = %lld exceeds cuSOLVER's 32-bit interface", (long long)n);
  const int ni = (int)n, ld = (int)ldh;
  const cublasFillMode_t lo = CUBLAS_FILL_MODE_LOWER;
  int lw1 = 0, lw2 = 0;
  HQ_CUSOLVER_CHECK(cusolverDnSpotrf_bufferSize(hq_cuda.solver, lo, ni, H, ld, &lw1));
  HQ_CUSOLVER_CHECK(cusolverDnSpotri_bufferSize(hq_cuda.solver, lo, ni, H, ld, &lw2));
  const int lw = lw1 > lw2 ? lw1 : lw2;
  float *work = (float *)hq_cuda_scratch(HQ_SCRATCH_SOLVER, (size_t)(lw > 0 ? lw : 1) * sizeof(float));
  HQ_CUDA_CHECK(cudaMemsetAsync(hq_cuda.info, 0, 3 * sizeof(int), hq_cuda.stream));
  HQ_CUSOLVER_CHECK(cusolverDnSpotrf(hq_cuda.solver, lo, ni, H, ld, work, lw, hq_cuda.info));
  HQ_CUSOLVER_CHECK(cusolverDnSpotri(hq_cuda.solver, lo, ni, H, ld, work, lw, hq_cuda.info + 1));
  HQ_CUSOLVER_CHECK(cusolverDnSpotrf(hq_cuda.solver, lo, ni, H, ld, work, lw, hq_cuda.info + 2));
  int info[3] = {0, 0, 0};
  HQ_CUDA_CHECK(cudaMemcpyAsync(info, hq_cuda.info, sizeof info, cudaMemcpyDeviceToHost, hq_cuda.stream));
  HQ_CUDA_CHECK(cudaStreamSynchronize(hq_cuda.stream));
  for (int s = 0; s < 3; s++)
    if (info[s] != 0) return info[s] > 0 ? info[s] : 1; /* < 0 (bad argument): as the CPU */
  const int64_t rows8 = (n + 7) / 8; /* 8 rows per block, 32 threads per row */
  if (rows8 > 65535) HQ_DIE("chol_inverse_upper: n = %lld too large for the grid", (long long)n);
  const unsigned gx = hq_cuda_grid(n, 32) < 16 ? hq_cuda_grid(n, 32) : 16;
  zero_lower_kernel<<<dim3(gx, (unsigned)rows8), dim3(32, 8), 0, hq_cuda.stream>>>(n, H, ldh);
  HQ_LAUNCH_CHECK("zero_lower");
  return 0;
}

/* ---- exact Hessian accumulation (backend.h hess_fixed_acc) ------------------------------ */
/* One thread per entry (p, i) of the panel: each sum has exactly one writer. The largest |v|
 * goes to *vmax_bits as the int bits of a non-negative float (ordered like the floats); a
 * non-finite v sets it to a NaN pattern. Rounding as the CPU's: rint (half to even). */
__global__ void hess_fixed_acc_kernel(int64_t j0, int64_t np, const float *C, int64_t ldc, double s,
                                      double lim, long long *acc, unsigned int *vmax_bits) {
  const int64_t p = blockIdx.y, j = j0 + p;
  if (p >= np) return;
  unsigned int local = 0;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i <= j;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float v = C[p * ldc + i];
    const float a = fabsf(v);
    const unsigned int b = a <= 3.4028234663852886e38f ? __float_as_uint(a) : 0x7f800001u;
    local = b > local ? b : local;
    const double d = (double)v * s;
    if (fabs(d) < lim) acc[j * (j + 1) / 2 + i] += (long long)(fabs(d) < 8388608.0 ? rint(d) : d);
  }
  atomicMax(vmax_bits, local);
}

static double cu_hess_fixed_acc(int64_t j0, int64_t np, const float *C, int64_t ldc, int F,
                                int lim_bits, int64_t *acc) {
  if (np <= 0) return 0.0;
  unsigned int *d = (unsigned int *)hq_cuda_scratch(HQ_SCRATCH_HESS, sizeof(unsigned int));
  HQ_CUDA_CHECK(cudaMemsetAsync(d, 0, sizeof(unsigned int), hq_cuda.stream));
  const int64_t width = j0 + np;
  unsigned gx = (unsigned)((width + 255) / 256);
  gx = gx < 64 ? gx : 64;
  HQ_ASSERT(np <= 65535);
  hess_fixed_acc_kernel<<<dim3(gx, (unsigned)np), 256, 0, hq_cuda.stream>>>(
      j0, np, C, ldc, ldexp(1.0, F), ldexp(1.0, lim_bits), (long long *)acc, d);
  HQ_LAUNCH_CHECK("hess_fixed_acc");
  unsigned int bits = 0;
  HQ_CUDA_CHECK(cudaMemcpyAsync(&bits, d, sizeof bits, cudaMemcpyDeviceToHost, hq_cuda.stream));
  HQ_CUDA_CHECK(cudaStreamSynchronize(hq_cuda.stream));
  if (bits > 0x7f800000u) return NAN;
  float f;
  memcpy(&f, &bits, sizeof f);
  return (double)f;
}

/* ---- the op table and device selection ------------------------------------------------ */
static void cu_gemm(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, const float *A,
                    int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  hq_cuda_gemm(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
/* cuBLAS picks its algorithm by shape: no per-row guarantee (backend.h), one call */
static void cu_gemm_rows(int64_t row0, int64_t seg, int ta, int tb, int64_t m, int64_t n,
                         int64_t k, float alpha, const float *A, int64_t lda, const float *B,
                         int64_t ldb, float beta, float *C, int64_t ldc) {
  hq_cuda_gemm(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* "CUDA <runtime> cuBLAS <version> <device name> sm_XY" */
static const char *cu_kernels(void) {
  static char buf[384];
  if (!buf[0]) {
    cudaDeviceProp p;
    int rt = 0, bl = 0;
    HQ_CUDA_CHECK(cudaGetDeviceProperties(&p, hq_cuda.device));
    HQ_CUDA_CHECK(cudaRuntimeGetVersion(&rt));
    HQ_CUBLAS_CHECK(cublasGetVersion(hq_cuda.blas, &bl));
    snprintf(buf, sizeof buf, "CUDA %d cuBLAS %d %s sm_%d%d", rt, bl, p.name, p.major, p.minor);
  }
  return buf;
}

static const struct hq_backend hq_cuda_backend = {
    "cuda", 1,
    cu_alloc, cu_free, cu_upload, cu_download, cu_copy, cu_zero, cu_sync, cu_kernels,
    cu_gemm, cu_gemm_rows, cu_syrk, cu_symmetrize, cu_chol_inverse_upper, NULL /* no team */, cu_hess_fixed_acc,
    hq_cuda_quant_params, hq_cuda_gptq_block, hq_cuda_rtn_cols,
    hq_cuda_rmsnorm, hq_cuda_rope, hq_cuda_attention, hq_cuda_swiglu, hq_cuda_add,
};

/* Node-local rank from the launcher's environment (Open MPI, Slurm, MPICH/Hydra, PMI). */
static int local_rank_from_env(void) {
  static const char *const names[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID",
                                      "MPI_LOCALRANKID", "PMI_LOCAL_RANK"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    const char *v = getenv(names[i]);
    if (v && *v) {
      char *end = NULL;
      long r = strtol(v, &end, 10);
      if (end && *end == 0 && r >= 0 && r < (1L << 20)) return (int)r;
    }
  }
  return 0;
}

extern "C" const struct hq_backend *hq_backend_cuda(void) {
  if (hq_cuda.ready) return &hq_cuda_backend;
  int ndev = 0;
  cudaError_t e = cudaGetDeviceCount(&ndev);
  if (e != cudaSuccess || ndev == 0) {
    hq_fail(HQ_ERR_UNSUPPORTED, "no CUDA device is visible (%s); check CUDA_VISIBLE_DEVICES "
            "and the NVIDIA driver, or use --backend cpu",
            e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    (void)cudaGetLastError();
    return NULL;
  }
  const int local = local_rank_from_env();
  const int dev = local % ndev; /* one GPU per node-local rank; wraps if ranks > GPUs */
  e = cudaSetDevice(dev);
  if (e == cudaSuccess) e = cudaFree(0); /* create the context now: fail here, not later */
  if (e != cudaSuccess) {
    hq_fail(HQ_ERR_UNSUPPORTED, "cannot use CUDA device %d (node-local rank %d of %d visible "
            "devices): %s; check the GPU's compute mode and CUDA_VISIBLE_DEVICES, or use "
            "--backend cpu", dev, local, ndev, cudaGetErrorString(e));
    (void)cudaGetLastError();
    return NULL;
  }
  hq_cuda.device = dev;
  HQ_CUDA_CHECK(cudaStreamCreateWithFlags(&hq_cuda.stream, cudaStreamNonBlocking));
  HQ_CUBLAS_CHECK(cublasCreate(&hq_cuda.blas));
  HQ_CUBLAS_CHECK(cublasSetStream(hq_cuda.blas, hq_cuda.stream));
  const char *tf32 = getenv("HQ_ALLOW_TF32");
  const int allow_tf32 = tf32 && !strcmp(tf32, "1");
  HQ_CUBLAS_CHECK(cublasSetMathMode(hq_cuda.blas, allow_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                             : CUBLAS_DEFAULT_MATH));
  HQ_CUSOLVER_CHECK(cusolverDnCreate(&hq_cuda.solver));
  HQ_CUSOLVER_CHECK(cusolverDnSetStream(hq_cuda.solver, hq_cuda.stream));
  HQ_CUDA_CHECK(cudaDeviceGetAttribute(&hq_cuda.nsm, cudaDevAttrMultiProcessorCount, dev));
  HQ_CUDA_CHECK(cudaDeviceGetAttribute(&hq_cuda.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  HQ_CUDA_CHECK(cudaMalloc((void **)&hq_cuda.info, 3 * sizeof(int)));
  hq_cuda.ready = 1;
  hq_cuda_quant_init();
  return &hq_cuda_backend;
}

/* ---- extras (backend_cuda.h) ----------------------------------------------------------- */
extern "C" int hq_cuda_device(void) {
  need_ready("hq_cuda_device");
  return hq_cuda.device;
}
extern "C" void *hq_cuda_stream(void) {
  need_ready("hq_cuda_stream");
  return (void *)hq_cuda.stream;
}
extern "C" size_t hq_cuda_mem_current(void) { return g_cur; }
extern "C" size_t hq_cuda_mem_peak(void) { return g_peak; }
extern "C" void hq_cuda_mem_peak_reset(void) { g_peak = g_cur; }
extern "C" void hq_cuda_mem_info(size_t *free_bytes, size_t *total_bytes) {
  need_ready("hq_cuda_mem_info");
  HQ_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
}
extern "C" const char *hq_cuda_device_desc(void) {
  static char buf[320];
  need_ready("hq_cuda_device_desc");
  cudaDeviceProp p;
  HQ_CUDA_CHECK(cudaGetDeviceProperties(&p, hq_cuda.device));
  snprintf(buf, sizeof buf, "%s, sm_%d%d, %d SMs, %.1f GiB", p.name, p.major, p.minor,
           p.multiProcessorCount, (double)p.totalGlobalMem / 1073741824.0);
  return buf;
}

static cudaEvent_t g_tic, g_toc;
extern "C" void hq_cuda_tic(void) {
  need_ready("hq_cuda_tic");
  if (!g_tic) {
    HQ_CUDA_CHECK(cudaEventCreate(&g_tic));
    HQ_CUDA_CHECK(cudaEventCreate(&g_toc));
  }
  HQ_CUDA_CHECK(cudaEventRecord(g_tic, hq_cuda.stream));
}
extern "C" double hq_cuda_toc(void) {
  HQ_ASSERT(g_tic);
  float ms = 0.0f;
  HQ_CUDA_CHECK(cudaEventRecord(g_toc, hq_cuda.stream));
  HQ_CUDA_CHECK(cudaEventSynchronize(g_toc));
  HQ_CUDA_CHECK(cudaEventElapsedTime(&ms, g_tic, g_toc));
  return (double)ms * 1e-3;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

extern "C" double hq_cuda_bench_gemm_bf16(int64_t m, int64_t n, int64_t k, int reps) {
  need_ready("hq_cuda_bench_gemm_bf16");
  void *A = cu_alloc((size_t)(m * k) * 2), *B = cu_alloc((size_t)(k * n) * 2);
  void *C = cu_alloc((size_t)(m * n) * 4);
  if (!A || !B || !C) {
    cu_free(A);
    cu_free(B);
    cu_free(C);
    return -1.0;
  }
  /* 0x3c3c as bf16 is ~0.0115: finite, non-trivial operands */
  HQ_CUDA_CHECK(cudaMemsetAsync(A, 0x3c, (size_t)(m * k) * 2, hq_cuda.stream));
  HQ_CUDA_CHECK(cudaMemsetAsync(B, 0x3c, (size_t)(k * n) * 2, hq_cuda.stream));
  const float one = 1.0f, zero = 0.0f;
  double *t = (double *)malloc((size_t)(reps > 0 ? reps : 1) * sizeof(double));
  if (!t) HQ_DIE("out of host memory");
  for (int r = -1; r < reps; r++) {
    hq_cuda_tic();
    /* column-major C[m x n] = A[m x k] B[k x n]; layout does not matter for the peak */
    HQ_CUBLAS_CHECK(cublasGemmEx(hq_cuda.blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)m, (int)n, (int)k,
                                 &one, A, CUDA_R_16BF, (int)m, B, CUDA_R_16BF, (int)k, &zero, C,
                                 CUDA_R_32F, (int)m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    double s = hq_cuda_toc();
    if (r >= 0) t[r] = s;
  }
  qsort(t, (size_t)reps, sizeof(double), cmp_double);
  const double med = reps > 0 ? t[reps / 2] : 1.0;
  free(t);
  cu_free(A);
  cu_free(B);
  cu_free(C);
  return 2.0 * (double)m * (double)n * (double)k / med * 1e-12;
}
