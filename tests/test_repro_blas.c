/* The CPU backend's reproducible linear algebra (src/backend/backend_cpu_blas.c), checked against its
 * contract rather than against itself:
 *  - gemm_rows: every row of C equals the same row computed ALONE (m = 1, same row index), for
 *    other m, row offsets, segment lengths, transposes, beta != 0 and 1 vs 2 OpenMP threads;
 *    and it is a correct product (vs a double reference).
 *  - chol_inverse_upper: bit-identical for 1 and 2 threads; Uᵀ U H = I to fp32 accuracy; the
 *    "not positive definite" info.
 * ctest runs it with OPENBLAS_CORETYPE=Haswell and with it unset (two OpenBLAS kernel
 * families, whose plain sgemm results depend on m and on the thread count). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "testutil.h"

static const struct hq_backend *be;

/* op(A) row i, op(B) column j of a row-major buffer */
static float opa(const float *A, int64_t lda, int ta, int64_t i, int64_t p) {
  return ta ? A[p * lda + i] : A[i * lda + p];
}
static float opb(const float *B, int64_t ldb, int tb, int64_t p, int64_t j) {
  return tb ? B[j * ldb + p] : B[p * ldb + j];
}

/* C = 0.75 op(A) op(B) - 0.5 C over m rows starting at row index row0 of a segment of seg. */
static void run(int64_t row0, int64_t seg, int ta, int tb, int64_t m, int64_t n, int64_t k,
                const float *A, int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc) {
  be->gemm_rows(row0, seg, ta, tb, m, n, k, 0.75f, A, lda, B, ldb, -0.5f, C, ldc);
}

static void test_gemm_rows(int ta, int tb, int64_t m, int64_t n, int64_t k, int64_t row0,
                           int64_t seg) {
  const int64_t lda = ta ? m + 3 : k + 5, ldb = tb ? k + 2 : n + 7, ldc = n + 1;
  const int64_t arows = ta ? k : m, brows = tb ? n : k;
  float *A = malloc(sizeof(float) * (size_t)(arows * lda));
  float *B = malloc(sizeof(float) * (size_t)(brows * ldb));
  float *C0 = malloc(sizeof(float) * (size_t)(m * ldc));
  hq_t_randn(A, arows * lda, 11 + (uint64_t)m, 1.0f);
  hq_t_randn(B, brows * ldb, 12 + (uint64_t)n, 1.0f);
  hq_t_randn(C0, m * ldc, 13, 1.0f);
  float *C1 = malloc(sizeof(float) * (size_t)(m * ldc)), *C2 = malloc(sizeof(float) * (size_t)(m * ldc));
  memcpy(C1, C0, sizeof(float) * (size_t)(m * ldc));
  memcpy(C2, C0, sizeof(float) * (size_t)(m * ldc));
  omp_set_num_threads(1);
  run(row0, seg, ta, tb, m, n, k, A, lda, B, ldb, C1, ldc);
  omp_set_num_threads(2);
  run(row0, seg, ta, tb, m, n, k, A, lda, B, ldb, C2, ldc);
  CHECK(!memcmp(C1, C2, sizeof(float) * (size_t)(m * ldc)), "gemm_rows ta %d tb %d m %lld: 1 and 2 "
        "threads differ", ta, tb, (long long)m);
  /* each row alone: its own call of m = 1 at its index in the segment */
  int64_t bad = 0;
  double maxrel = 0.0;
  float *row = malloc(sizeof(float) * (size_t)ldc);
  for (int64_t i = 0; i < m; i++) {
    const int64_t s = seg > 0 ? seg : m, idx = row0 + i % s;
    memcpy(row, C0 + i * ldc, sizeof(float) * (size_t)ldc);
    const float *Ai = ta ? A + i : A + i * lda;
    run(idx, seg, ta, tb, 1, n, k, Ai, lda, B, ldb, row, ldc);
    bad += memcmp(row, C1 + i * ldc, sizeof(float) * (size_t)n) != 0;
    for (int64_t j = 0; j < n; j += 7) {
      double ref = 0.0, mag = 0.0;
      for (int64_t p = 0; p < k; p++) {
        const double t = (double)opa(A, lda, ta, i, p) * (double)opb(B, ldb, tb, p, j);
        ref += t;
        mag += fabs(t);
      }
      ref = 0.75 * ref - 0.5 * (double)C0[i * ldc + j];
      const double e = fabs((double)C1[i * ldc + j] - ref) / (mag + fabs((double)C0[i * ldc + j]) + 1e-30);
      maxrel = e > maxrel ? e : maxrel;
    }
  }
  CHECK(bad == 0, "gemm_rows ta %d tb %d m %lld n %lld k %lld row0 %lld seg %lld: %lld rows differ "
        "from the row computed alone", ta, tb, (long long)m, (long long)n, (long long)k,
        (long long)row0, (long long)seg, (long long)bad);
  CHECK(maxrel < 1e-5, "gemm_rows product error %.3g", maxrel);
  free(A), free(B), free(C0), free(C1), free(C2), free(row);
}

/* H = XᵀX / t + I-ish, SPD */
static float *spd(int64_t n, uint64_t seed) {
  const int64_t t = n + 16;
  float *X = malloc(sizeof(float) * (size_t)(t * n)), *H = malloc(sizeof(float) * (size_t)(n * n));
  hq_t_randn(X, t * n, seed, 1.0f);
  be->gemm(1, 0, n, n, t, 1.0f / (float)t, X, n, X, n, 0.0f, H, n);
  for (int64_t i = 0; i < n; i++) H[i * n + i] += 0.05f;
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < i; j++) H[i * n + j] = H[j * n + i];
  free(X);
  return H;
}

static void test_chol(int64_t n) {
  float *H = spd(n, 21 + (uint64_t)n);
  float *U1 = malloc(sizeof(float) * (size_t)(n * n)), *U2 = malloc(sizeof(float) * (size_t)(n * n));
  memcpy(U1, H, sizeof(float) * (size_t)(n * n));
  memcpy(U2, H, sizeof(float) * (size_t)(n * n));
  omp_set_num_threads(1);
  CHECK(be->chol_inverse_upper(n, U1, n) == 0, "chol %lld failed", (long long)n);
  omp_set_num_threads(2);
  CHECK(be->chol_inverse_upper(n, U2, n) == 0, "chol %lld failed (2 threads)", (long long)n);
  CHECK(!memcmp(U1, U2, sizeof(float) * (size_t)(n * n)), "chol %lld: 1 and 2 threads differ", (long long)n);
  /* Uᵀ U H = I (double), U upper with a positive diagonal */
  double err = 0.0;
  int shape = 1;
  for (int64_t i = 0; i < n && shape; i++) {
    shape = U1[i * n + i] > 0;
    for (int64_t j = 0; j < i; j++) shape &= U1[i * n + j] == 0.0f;
  }
  double *M = calloc((size_t)(n * n), sizeof(double)); /* Uᵀ U */
  for (int64_t p = 0; p < n; p++) /* (Uᵀ U)[i][j] = Σ_p U[p][i] U[p][j], U[p][i] = 0 for i < p */
    for (int64_t i = p; i < n; i++)
      for (int64_t j = p; j < n; j++) M[i * n + j] += (double)U1[p * n + i] * (double)U1[p * n + j];
  for (int64_t i = 0; i < n; i += 3)
    for (int64_t j = 0; j < n; j++) {
      double s = 0.0;
      for (int64_t p = 0; p < n; p++) s += M[i * n + p] * (double)H[p * n + j];
      const double e = fabs(s - (i == j ? 1.0 : 0.0));
      err = e > err ? e : err;
    }
  CHECK(shape, "chol %lld: not upper with a positive diagonal", (long long)n);
  CHECK(err < 2e-3, "chol %lld: |Uᵀ U H - I| = %.3g", (long long)n, err);
  /* not positive definite: info > 0 */
  memcpy(U1, H, sizeof(float) * (size_t)(n * n));
  U1[(n / 2) * n + n / 2] = -1.0f;
  CHECK(be->chol_inverse_upper(n, U1, n) > 0, "chol %lld of an indefinite matrix succeeded", (long long)n);
  free(H), free(U1), free(U2), free(M);
}

/* chol_inverse_upper_team with 1, 2 and 3 members equals chol_inverse_upper bit for bit in the
 * upper triangle (tiles split over the members), leaves the strict lower triangle as it was
 * (also when it fails), and every member gets the same info for an indefinite matrix. */
static void test_chol_team(int64_t n) {
  float *H = spd(n, 5 + (uint64_t)n), *U = malloc(sizeof(float) * (size_t)(n * n));
  float *T = malloc(sizeof(float) * (size_t)(n * n));
  memcpy(U, H, sizeof(float) * (size_t)(n * n));
  omp_set_num_threads(2);
  CHECK(be->chol_inverse_upper(n, U, n) == 0, "chol %lld failed", (long long)n);
  for (int size = 1; size <= 3; size++)
    for (int bad = 0; bad <= 1; bad++) {
      memcpy(T, H, sizeof(float) * (size_t)(n * n));
      if (bad) T[(n - 3) * n + n - 3] = -1.0f;
      int info[3] = {-7, -7, -7};
#pragma omp parallel num_threads(size)
      {
        const struct hq_team tm = hq_t_omp_team();
        info[tm.rank] = be->chol_inverse_upper_team(n, T, n, &tm);
      }
      int same = 1;
      for (int r = 1; r < size; r++) same &= info[r] == info[0];
      CHECK(same, "chol team %lld/%d: members got different info", (long long)n, size);
      if (bad) CHECK(info[0] > 0, "chol team %lld/%d: indefinite matrix gave info %d", (long long)n, size, info[0]);
      int upper = 1, lower = 1; /* U above (and on) the diagonal; H's strict lower half kept */
      for (int64_t i = 0; i < n; i++) {
        upper &= bad || !memcmp(T + i * n + i, U + i * n + i, sizeof(float) * (size_t)(n - i));
        lower &= !memcmp(T + i * n, H + i * n, sizeof(float) * (size_t)i);
      }
      CHECK(bad || (info[0] == 0 && upper), "chol team %lld/%d: info %d or a factor unlike "
            "chol_inverse_upper's", (long long)n, size, info[0]);
      CHECK(lower, "chol team %lld/%d (%s): the strict lower triangle changed", (long long)n, size,
            bad ? "failed" : "succeeded");
    }
  free(H), free(U), free(T);
}

int main(void) {
  be = hq_backend_cpu();
  test_chol_team(1000); /* 4 tiles, the last 232 wide */
  test_chol_team(200);  /* one tile */
  test_chol_team(2100); /* 9 tiles: the inverse's rows dealt by cost */
  /* forward-like: tokens of windows; GPTQ-like: weight rows from a 32-aligned offset */
  test_gemm_rows(0, 1, 700, 300, 96, 0, 0);
  test_gemm_rows(0, 1, 3 * 100, 1100, 64, 0, 100);  /* 3 windows of 100 tokens, 2 column chunks */
  test_gemm_rows(0, 1, 2 * 300, 64, 32, 0, 300);    /* windows longer than a tile */
  test_gemm_rows(0, 0, 333, 200, 128, 96, 0);       /* rows 96.. of a layer */
  test_gemm_rows(1, 0, 300, 257, 80, 512, 0);       /* the Hessian panel shape (op(A) = Aᵀ) */
  test_gemm_rows(1, 1, 50, 40, 30, 7, 0);
  test_gemm_rows(0, 0, 260, 50, 0, 0, 0);           /* k = 0: C = beta C */
  test_gemm_rows(0, 0, 150, 300, 200, 38, -64);     /* 64-row tiles, partial at both ends */
  test_gemm_rows(0, 0, 20, 100, 50, 5, -64);        /* fewer rows than a tile */
  test_chol(100);
  test_chol(600);  /* 3 tiles, the last partial */
  test_chol(1024); /* 4 whole tiles */
  return hq_t_done("test_repro_blas");
}
