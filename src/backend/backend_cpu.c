/* CPU backend: memory and the op table. The reproducible dense linear algebra (OpenBLAS,
 * LAPACKE) is in backend_cpu_blas.c, quantization ops in backend_cpu_quant.c, forward ops in
 * backend_cpu_fwd.c. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "backend_cpu.h"
#include "error.h"

static void *cpu_alloc(size_t bytes) {
  void *p = NULL;
  if (posix_memalign(&p, 64, bytes ? bytes : 64)) return NULL;
  return p;
}
static void cpu_free(void *p) { free(p); }
static void cpu_copy(void *dst, const void *src, size_t bytes) {
  if (bytes) memmove(dst, src, bytes);
}
static void cpu_zero(void *p, size_t bytes) {
  if (bytes) memset(p, 0, bytes);
}
static void cpu_sync(void) {}

/* "OpenBLAS <config> core <kernels>", e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH ... core Haswell" */
static const char *cpu_kernels(void) {
  static char buf[256];
  if (!buf[0]) snprintf(buf, sizeof buf, "%s core %s", openblas_get_config(), openblas_get_corename());
  return buf;
}

static const struct hq_backend hq_cpu_backend = {
    .name = "cpu",
    .on_device = 0,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .kernels = cpu_kernels,
    .gemm = hq_cpu_gemm,
    .gemm_rows = hq_cpu_gemm_rows,
    .syrk = hq_cpu_syrk,
    .symmetrize = hq_cpu_symmetrize,
    .chol_inverse_upper = hq_cpu_chol_inverse_upper,
    .chol_inverse_upper_team = hq_cpu_chol_inverse_upper_team,
    .hess_fixed_acc = hq_cpu_hess_fixed_acc,
    .quant_params = hq_cpu_quant_params,
    .gptq_block = hq_cpu_gptq_block,
    .rtn_cols = hq_cpu_rtn_cols,
    .rmsnorm = hq_cpu_rmsnorm,
    .rope = hq_cpu_rope,
    .attention = hq_cpu_attention,
    .swiglu = hq_cpu_swiglu,
    .add = hq_cpu_add,
};

const struct hq_backend *hq_backend_cpu(void) {
  hq_cpu_blas_init(); /* OpenBLAS on one thread: threads are hpcq's own (backend_cpu_blas.c) */
  return &hq_cpu_backend;
}

const struct hq_backend *hq_backend_by_name(const char *name) {
  if (!name || !strcasecmp(name, "cpu")) return hq_backend_cpu();
  if (!strcasecmp(name, "cuda")) return hq_backend_cuda();
  if (!strcasecmp(name, "auto")) {
    const struct hq_backend *b = hq_backend_cuda();
    return b ? b : hq_backend_cpu();
  }
  hq_fail(HQ_ERR_INPUT, "unknown backend '%s' (use cpu, cuda or auto)", name);
  return NULL;
}
