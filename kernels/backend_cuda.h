/* CUDA backend extras beyond struct hq_backend (issue 5), callable from C. Only meaningful in
 * builds with HQ_HAVE_CUDA; every function here requires hq_backend_cuda() to have returned
 * non-NULL first (programmer error otherwise: HQ_DIE). Handles are opaque (no CUDA headers
 * leak into C code): a "stream" is a cudaStream_t, an "event" a cudaEvent_t. Not collective. */
#ifndef HQ_BACKEND_CUDA_H
#define HQ_BACKEND_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The device index this process uses and the one stream every backend op runs on. */
int hq_cuda_device(void);
void *hq_cuda_stream(void);

/* Bytes currently allocated through backend->alloc, and the high-water mark since the last
 * reset (the GPU memory per rank the benchmarks report). */
size_t hq_cuda_mem_current(void);
size_t hq_cuda_mem_peak(void);
void hq_cuda_mem_peak_reset(void);
/* Free and total device memory as the driver sees it (cudaMemGetInfo). */
void hq_cuda_mem_info(size_t *free_bytes, size_t *total_bytes);
/* "NVIDIA H100 80GB HBM3, sm_90, 132 SMs" (static buffer). */
const char *hq_cuda_device_desc(void);

/* Benchmark helper: median TFLOP/s of a plain cuBLAS GEMM C[m x n] = A[m x k] B[k x n] with
 * bf16 inputs and fp32 accumulation/output (cublasGemmEx, CUBLAS_COMPUTE_32F), `reps` timed
 * runs after one warm-up. Returns a negative number when memory runs out. */
double hq_cuda_bench_gemm_bf16(int64_t m, int64_t n, int64_t k, int reps);
/* Seconds between two calls, measured with events on the backend stream (tic records,
 * toc records + waits and returns elapsed seconds since the last tic). */
void hq_cuda_tic(void);
double hq_cuda_toc(void);

#ifdef __cplusplus
}
#endif

#endif
