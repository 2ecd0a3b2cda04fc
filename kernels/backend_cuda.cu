/* CUDA backend (issue 5). Until the kernels land this file only proves that the CUDA toolchain,
 * cuBLAS and cuSOLVER compile and link; hq_backend_cuda() reports the backend unavailable. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

extern "C" {
#include "backend.h"
#include "error.h"
}

extern "C" const struct hq_backend *hq_backend_cuda(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    hq_fail(HQ_ERR_UNSUPPORTED, "no CUDA device is visible (CUDA_VISIBLE_DEVICES, driver)");
    return NULL;
  }
  hq_fail(HQ_ERR_UNSUPPORTED, "the CUDA backend is not implemented yet; use --backend cpu");
  return NULL;
}
