/* CPU backend: memory, dense linear algebra (OpenBLAS cblas, LAPACKE) and the op table.
 * Quantization ops are in backend_cpu_quant.c, forward ops in backend_cpu_fwd.c. */
#include <cblas.h>
#include <lapacke.h>
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

static void cpu_gemm(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                     const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                     float *C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              (blasint)m, (blasint)n, (blasint)k, alpha, A, (blasint)lda, B, (blasint)ldb, beta,
              C, (blasint)ldc);
}

static void cpu_syrk(int64_t n, int64_t k, float alpha, const float *X, int64_t ldx,
                     float beta, float *C, int64_t ldc) {
  if (n == 0) return;
  cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (blasint)n, (blasint)k, alpha, X,
              (blasint)ldx, beta, C, (blasint)ldc);
}

static void cpu_symmetrize(int64_t n, float *A, int64_t lda) {
  /* blocked transpose copy upper -> lower for cache friendliness */
  const int64_t B = 64;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t ib = 0; ib < n; ib += B)
    for (int64_t jb = 0; jb <= ib; jb += B)
      for (int64_t i = ib; i < ib + B && i < n; i++)
        for (int64_t j = jb; j < jb + B && j < i; j++) A[i * lda + j] = A[j * lda + i];
}

/* Reverse a row-major n x n matrix in both indices: A[i][j] <-> A[n-1-i][n-1-j] (J A J). */
static void reverse_both(int64_t n, float *A, int64_t lda) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < (n + 1) / 2; i++) {
    float *r = A + i * lda, *q = A + (n - 1 - i) * lda;
    int64_t jend = (i == n - 1 - i) ? n / 2 : n; /* middle row: swap within itself once */
    for (int64_t j = 0; j < jend; j++) {
      float t = r[j];
      r[j] = q[n - 1 - j];
      q[n - 1 - j] = t;
    }
  }
}

/* Upper Cholesky factor of H⁻¹ in 2/3 n³ flops instead of the 4/3 n³ of potrf+potri+potrf:
 * with J the reversal, J H J = L Lᵀ (L lower) gives H = U Uᵀ with U = J L J upper, hence
 * H⁻¹ = (U⁻¹)ᵀ U⁻¹ and the wanted factor (unique with a positive diagonal) is
 * V = U⁻¹ = J L⁻¹ J. LAPACK sees the row-major buffer as column-major, so uplo 'U' there is
 * the row-major lower triangle: potrf('U') factors J H J = L Lᵀ with L row-major lower, and
 * trtri('U') inverts it in place. */
static int cpu_chol_inverse_upper(int64_t n, float *H, int64_t ldh) {
  if (n == 0) return 0;
  reverse_both(n, H, ldh);
  lapack_int info = LAPACKE_spotrf(LAPACK_COL_MAJOR, 'U', (lapack_int)n, H, (lapack_int)ldh);
  if (info != 0) return (int)(info > 0 ? info : 1);
  info = LAPACKE_strtri(LAPACK_COL_MAJOR, 'U', 'N', (lapack_int)n, H, (lapack_int)ldh);
  if (info != 0) return (int)(info > 0 ? info : 1);
  reverse_both(n, H, ldh);
  /* zero the row-major strict lower triangle */
#pragma omp parallel for schedule(static)
  for (int64_t i = 1; i < n; i++) memset(H + i * ldh, 0, (size_t)i * sizeof(float));
  return 0;
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
    .gemm = cpu_gemm,
    .syrk = cpu_syrk,
    .symmetrize = cpu_symmetrize,
    .chol_inverse_upper = cpu_chol_inverse_upper,
    .quant_params = hq_cpu_quant_params,
    .gptq_block = hq_cpu_gptq_block,
    .rtn_cols = hq_cpu_rtn_cols,
    .rmsnorm = hq_cpu_rmsnorm,
    .rope = hq_cpu_rope,
    .attention = hq_cpu_attention,
    .swiglu = hq_cpu_swiglu,
    .add = hq_cpu_add,
};

const struct hq_backend *hq_backend_cpu(void) { return &hq_cpu_backend; }

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
