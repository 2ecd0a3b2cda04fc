/* Private to the kernels/ .cu files: the CUDA backend's process-wide state and its error funnel.
 * Every CUDA, cuBLAS and cuSOLVER error is a tier-2 failure (error.h): HQ_DIE with the
 * library's own error string, which prints "[rank R host H] file:line" and aborts the job. */
#ifndef HQ_CUDA_INTERNAL_CUH
#define HQ_CUDA_INTERNAL_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

extern "C" {
#include "backend.h"
#include "error.h"
}
#include "backend_cuda.h"

/* One GPU per process (the node-local rank's), one stream for every op. */
struct hq_cuda_state {
  int ready;                 /* 1 once hq_backend_cuda() succeeded */
  int device;
  cudaStream_t stream;
  cublasHandle_t blas;
  cusolverDnHandle_t solver;
  int nsm;                   /* multiprocessors */
  int smem_optin;            /* max dynamic shared memory per block (opt-in), bytes */
  int *info;                 /* device int[3]: cuSOLVER devInfo of potrf, potri, potrf */
};
extern struct hq_cuda_state hq_cuda;

const char *hq_cublas_str(cublasStatus_t s);
const char *hq_cusolver_str(cusolverStatus_t s);

#define HQ_CUDA_CHECK(expr)                                                                 \
  do {                                                                                      \
    cudaError_t hq_e_ = (expr);                                                             \
    if (hq_e_ != cudaSuccess)                                                               \
      HQ_DIE("CUDA error in %s: %s (%s)", #expr, cudaGetErrorString(hq_e_),                 \
             cudaGetErrorName(hq_e_));                                                      \
  } while (0)
/* A library call returning a status of type `type` that must be `ok`; `str` names a status.
 * `text` is the call as written (#expr of the macros below, before its macros expand). */
#define HQ_STATUS_CHECK_(type, ok, lib, str, text, expr)                                    \
  do {                                                                                      \
    type hq_s_ = (expr);                                                                    \
    if (hq_s_ != ok) HQ_DIE(lib " error in %s: %s", text, str(hq_s_));                      \
  } while (0)
#define HQ_CUBLAS_CHECK(expr)                                                               \
  HQ_STATUS_CHECK_(cublasStatus_t, CUBLAS_STATUS_SUCCESS, "cuBLAS", hq_cublas_str, #expr, expr)
#define HQ_CUSOLVER_CHECK(expr)                                                             \
  HQ_STATUS_CHECK_(cusolverStatus_t, CUSOLVER_STATUS_SUCCESS, "cuSOLVER", hq_cusolver_str,   \
                   #expr, expr)
/* After every kernel launch (catches bad launch configurations at once; execution errors
 * surface at the next synchronising call, which is checked too). */
#define HQ_LAUNCH_CHECK(name)                                                               \
  do {                                                                                      \
    cudaError_t hq_e_ = cudaGetLastError();                                                 \
    if (hq_e_ != cudaSuccess) HQ_DIE("CUDA kernel %s: %s", name, cudaGetErrorString(hq_e_)); \
  } while (0)

/* Scratch device buffers owned by the backend, grown on demand (growing synchronises the
 * stream first, so a buffer is never freed under a running kernel). */
enum hq_cuda_scratch { HQ_SCRATCH_SOLVER = 0, HQ_SCRATCH_ATTN = 1, HQ_SCRATCH_PTRS = 2,
                       HQ_SCRATCH_HESS = 3, HQ_SCRATCH_COUNT = 4 };
void *hq_cuda_scratch(int slot, size_t bytes);

/* Grid size for grid-stride loops over n items with `threads` per block. */
static inline unsigned hq_cuda_grid(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  int64_t cap = (int64_t)hq_cuda.nsm * 32;
  if (b > cap) b = cap;
  return (unsigned)(b < 1 ? 1 : b);
}

/* Row-major gemm on the backend stream (backend.h semantics, int64 sizes). */
void hq_cuda_gemm(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, const float *A,
                  int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* Ops implemented in cuda_quant.cu and cuda_fwd.cu (backend.h semantics). */
HQ_BACKEND_OP_DECLS(hq_cuda);
void hq_cuda_quant_init(void); /* kernel attributes (dynamic shared memory opt-in) */

#endif
