/* Built instead of kernels/ (.cu) when hpcq is configured without CUDA (-DHQ_CUDA=OFF or no
 * nvcc): the CUDA backend reports itself unavailable. */
#include "backend.h"
#include "error.h"

const struct hq_backend *hq_backend_cuda(void) {
  hq_fail(HQ_ERR_UNSUPPORTED, "hpcq was built without CUDA (configure with nvcc on PATH or "
                              "-DHQ_CUDA=ON to build the GPU backend)");
  return NULL;
}
