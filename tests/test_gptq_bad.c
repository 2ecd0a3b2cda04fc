/* GPTQ on bad or awkward input: a Hessian with negative eigenvalues (damping raised
 * automatically, the percdamp used recorded; with no retries a clear HQ_ERR_NUMERIC), dead
 * (all-zero) columns and an all-zero Hessian, NaN/Inf in W or H (HQ_ERR_INPUT naming the
 * first bad index), bad options, a 4097-wide layer with g128, and weights whose grid needs a
 * scale beyond fp16 (every method refuses them, naming row, columns and numbers). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "gptq.h"
#include "hqq.h"
#include "testutil.h"

static const struct hq_backend *be;

/* H = 2/n XᵀX of n Gaussian tokens (columns listed in `dead` zeroed) */
static void gram(int64_t cols, int64_t n, uint64_t seed, float *H, int ndead, const int64_t *dead) {
  float *X = malloc(sizeof(float) * (size_t)(n * cols));
  hq_t_randn(X, n * cols, seed, 1.0f);
  for (int d = 0; d < ndead; d++)
    for (int64_t t = 0; t < n; t++) X[t * cols + dead[d]] = 0.0f;
  be->syrk(cols, n, 2.0f / (float)n, X, cols, 0.0f, H, cols);
  be->symmetrize(cols, H, cols);
  free(X);
}

static int all_finite(const float *a, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (!isfinite(a[i])) return 0;
  return 1;
}

/* codes/scales/zeros/g_idx reproduce W bit for bit */
static int64_t deq_mismatch(const struct hq_gptq_result *r, const float *W) {
  int64_t bad = 0;
  for (int64_t i = 0; i < r->rows; i++)
    for (int64_t c = 0; c < r->cols; c++) {
      int64_t k = i * r->ngroups + r->g_idx[c];
      bad += hq_dequant(r->codes[i * r->cols + c], r->scales[k], r->zeros[k]) != W[i * r->cols + c];
    }
  return bad;
}

static void test_not_pd(void) {
  const int64_t rows = 16, cols = 96;
  float *H = malloc(sizeof(float) * cols * cols), *W = malloc(sizeof(float) * rows * cols);
  float *W0 = malloc(sizeof(float) * rows * cols);
  gram(cols, cols / 2, 5, H, 0, NULL); /* rank cols/2: half the eigenvalues are 0 */
  double mean = 0.0;
  for (int64_t i = 0; i < cols; i++) mean += H[i * cols + i];
  mean /= cols;
  /* shift: eigenvalues of the null space become -0.05 mean (diagonal stays positive) */
  for (int64_t i = 0; i < cols; i++) H[i * cols + i] -= (float)(0.05 * mean);
  mean *= 0.95; /* mean diagonal of the shifted H, which damping is relative to */
  hq_t_randn(W0, rows * cols, 6, 0.1f);
  memcpy(W, W0, sizeof(float) * rows * cols);
  struct hq_gptq_opts o = hq_gptq_opts_default();
  o.group_size = 32;
  o.act_order = 1;
  struct hq_gptq_result r;
  int rc = hq_gptq_quantize(be, &o, rows, cols, W, H, 1, &r);
  CHECK(rc == HQ_OK, "not-PD H must be rescued by damping: %s", hq_last_error());
  if (rc == HQ_OK) {
    /* 0.01 -> fails (about -0.04 mean), 0.1 -> about +0.045 mean: positive definite */
    CHECK(fabs(r.damp_used - 0.1) < 1e-6, "damp_used %g, expected 0.1", r.damp_used);
    CHECK(fabs(r.damp_abs - 0.1 * mean) < 1e-4 * mean, "damp_abs %g vs %g", r.damp_abs, 0.1 * mean);
    CHECK(all_finite(W, rows * cols), "result not finite");
    CHECK(isfinite(r.loss_proxy) && isfinite(r.loss_ref) && isfinite(r.loss_proxy_rtn), "stats");
    CHECK(deq_mismatch(&r, W) == 0, "dequantization mismatch");
    printf("not-PD H: damping raised to %g (abs %g), proxy GPTQ %.4g RTN %.4g\n", r.damp_used,
           r.damp_abs, r.loss_proxy, r.loss_proxy_rtn);
    hq_gptq_result_free(&r);
  }
  /* no retries: clear numeric error */
  o.damp_retries = 0;
  memcpy(W, W0, sizeof(float) * rows * cols);
  hq_error_clear();
  rc = hq_gptq_quantize(be, &o, rows, cols, W, H, 1, &r);
  CHECK(rc == HQ_ERR_NUMERIC, "expected HQ_ERR_NUMERIC, got %d", rc);
  CHECK(strstr(hq_last_error(), "not positive definite") != NULL, "message: %s", hq_last_error());
  printf("no retries: %s\n", hq_last_error());
  free(H);
  free(W);
  free(W0);
}

static void test_dead(void) {
  const int64_t rows = 12, cols = 80;
  const int64_t dead[3] = {0, 17, 79};
  float *H = malloc(sizeof(float) * cols * cols), *W = malloc(sizeof(float) * rows * cols);
  gram(cols, 4 * cols, 9, H, 3, dead);
  hq_t_randn(W, rows * cols, 10, 0.1f);
  struct hq_gptq_opts o = hq_gptq_opts_default();
  o.group_size = 16;
  o.act_order = 1;
  struct hq_gptq_result r;
  int rc = hq_gptq_quantize(be, &o, rows, cols, W, H, 1, &r);
  CHECK(rc == HQ_OK, "dead columns: %s", hq_last_error());
  if (rc == HQ_OK) {
    CHECK(r.dead_cols == 3, "dead_cols %lld", (long long)r.dead_cols);
    int nz = 0;
    for (int64_t i = 0; i < rows; i++)
      for (int d = 0; d < 3; d++) nz += W[i * cols + dead[d]] != 0.0f;
    CHECK(nz == 0, "dead columns must quantize to exactly 0 (%d non-zero)", nz);
    CHECK(deq_mismatch(&r, W) == 0, "dequantization mismatch");
    CHECK(r.damp_used == (double)o.percdamp, "no raise needed");
    /* dead columns go last in act-order (diag set to 1 < the others ~2) */
    CHECK(r.perm[cols - 1] == 79 && r.perm[cols - 2] == 17 && r.perm[cols - 3] == 0,
          "dead columns last: %d %d %d", r.perm[cols - 3], r.perm[cols - 2], r.perm[cols - 1]);
    hq_gptq_result_free(&r);
  }
  /* all-zero Hessian (count == 0): every column dead, weights all zero, no failure */
  memset(H, 0, sizeof(float) * cols * cols);
  hq_t_randn(W, rows * cols, 11, 0.1f);
  rc = hq_gptq_quantize(be, &o, rows, cols, W, H, 1, &r);
  CHECK(rc == HQ_OK, "all-zero H: %s", hq_last_error());
  if (rc == HQ_OK) {
    CHECK(r.dead_cols == cols, "all dead");
    int nz = 0;
    for (int64_t k = 0; k < rows * cols; k++) nz += W[k] != 0.0f;
    CHECK(nz == 0, "all-dead layer must be all zero");
    CHECK(r.loss_proxy == 0.0, "proxy loss with H = 0 is 0, got %g", r.loss_proxy);
    hq_gptq_result_free(&r);
  }
  /* an all-zero weight row and a constant row */
  gram(cols, 4 * cols, 12, H, 0, NULL);
  hq_t_randn(W, rows * cols, 13, 0.1f);
  for (int64_t c = 0; c < cols; c++) {
    W[2 * cols + c] = 0.0f;
    W[3 * cols + c] = 0.25f;
  }
  o.group_size = -1;
  o.act_order = 0;
  rc = hq_gptq_quantize(be, &o, rows, cols, W, H, 1, &r);
  CHECK(rc == HQ_OK, "zero row: %s", hq_last_error());
  if (rc == HQ_OK) {
    int nz = 0;
    for (int64_t c = 0; c < cols; c++) nz += W[2 * cols + c] != 0.0f;
    CHECK(nz == 0, "zero row stays zero");
    CHECK(all_finite(W, rows * cols) && deq_mismatch(&r, W) == 0, "finite and consistent");
    hq_gptq_result_free(&r);
  }
  free(H);
  free(W);
}

/* A rows x cols layer: H from 4*cols Gaussian tokens (seed), W ~ N(0, 0.1) (seed + 1). */
static void small_layer(int64_t rows, int64_t cols, uint64_t seed, float **H, float **W) {
  *H = malloc(sizeof(float) * cols * cols);
  *W = malloc(sizeof(float) * rows * cols);
  gram(cols, 4 * cols, seed, *H, 0, NULL);
  hq_t_randn(*W, rows * cols, seed + 1, 0.1f);
}

static void test_nonfinite(void) {
  const int64_t rows = 8, cols = 40;
  float *H, *W;
  small_layer(rows, cols, 14, &H, &W);
  struct hq_gptq_opts o = hq_gptq_opts_default();
  struct hq_gptq_result r;
  W[3 * cols + 7] = NAN;
  W[5 * cols + 1] = INFINITY;
  int rc = hq_gptq_quantize(be, &o, rows, cols, W, H, 1, &r);
  CHECK(rc == HQ_ERR_INPUT, "NaN in W: rc %d", rc);
  CHECK(strstr(hq_last_error(), "W[3, 7] is NaN") != NULL, "message: %s", hq_last_error());
  printf("NaN in W: %s\n", hq_last_error());
  W[3 * cols + 7] = 0.0f;
  W[5 * cols + 1] = 0.0f;
  H[5 * cols + 2] = -INFINITY;
  rc = hq_gptq_quantize(be, &o, rows, cols, W, H, 1, &r);
  CHECK(rc == HQ_ERR_INPUT, "Inf in H: rc %d", rc);
  CHECK(strstr(hq_last_error(), "H[5, 2] is Inf") != NULL, "message: %s", hq_last_error());
  printf("Inf in H: %s\n", hq_last_error());
  H[5 * cols + 2] = H[2 * cols + 5];
  /* RTN checks W too */
  W[1] = NAN;
  rc = hq_rtn_quantize(be, &o, rows, cols, W, H, &r);
  CHECK(rc == HQ_ERR_INPUT && strstr(hq_last_error(), "W[0, 1]"), "RTN NaN: %s", hq_last_error());
  W[1] = 0.0f;
  /* options */
  o.bits = 5;
  CHECK(hq_gptq_quantize(be, &o, rows, cols, W, H, 1, &r) == HQ_ERR_INPUT, "bits 5");
  o.bits = 4;
  o.block_size = 0;
  CHECK(hq_gptq_quantize(be, &o, rows, cols, W, H, 1, &r) == HQ_ERR_INPUT, "block 0");
  o.block_size = 128;
  o.percdamp = 0.0f;
  CHECK(hq_gptq_quantize(be, &o, rows, cols, W, H, 1, &r) == HQ_ERR_INPUT, "percdamp 0");
  o.percdamp = 0.01f;
  /* group larger than the layer = one group; group 1 = every column its own group */
  const int64_t gsz[2] = {1000, 1};
  for (int i = 0; i < 2; i++) {
    o.group_size = gsz[i];
    o.act_order = 1;
    float *W2 = malloc(sizeof(float) * rows * cols);
    memcpy(W2, W, sizeof(float) * rows * cols);
    rc = hq_gptq_quantize(be, &o, rows, cols, W2, H, 1, &r);
    CHECK(rc == HQ_OK, "g%lld: %s", (long long)gsz[i], hq_last_error());
    if (rc == HQ_OK) {
      CHECK(r.ngroups == (gsz[i] == 1 ? cols : 1), "ngroups %lld", (long long)r.ngroups);
      CHECK(deq_mismatch(&r, W2) == 0, "g%lld consistent", (long long)gsz[i]);
      hq_gptq_result_free(&r);
    }
    free(W2);
  }
  /* degenerate shapes: no rows; one column */
  {
    float h1 = 2.0f, w1[3] = {0.3f, -0.2f, 0.0f};
    o.group_size = -1;
    rc = hq_gptq_quantize(be, &o, 0, cols, W, H, 1, &r);
    CHECK(rc == HQ_OK && r.rows == 0, "rows = 0: %s", hq_last_error());
    if (rc == HQ_OK) hq_gptq_result_free(&r);
    rc = hq_gptq_quantize(be, &o, 3, 1, w1, &h1, 1, &r);
    CHECK(rc == HQ_OK && deq_mismatch(&r, w1) == 0, "cols = 1: %s", hq_last_error());
    if (rc == HQ_OK) hq_gptq_result_free(&r);
  }
  free(H);
  free(W);
}

static void test_wide(void) {
  const int64_t rows = 4, cols = 4097;
  float *H = malloc(sizeof(float) * cols * cols), *W = malloc(sizeof(float) * rows * cols);
  /* low-rank correlated part + a diagonal: positive definite, cheap to build */
  gram(cols, 32, 16, H, 0, NULL);
  for (int64_t i = 0; i < cols; i++) H[i * cols + i] += 0.05f + 0.001f * (float)(i % 97);
  hq_t_randn(W, rows * cols, 17, 0.05f);
  struct hq_gptq_opts o = hq_gptq_opts_default();
  o.group_size = 128;
  o.act_order = 1;
  struct hq_gptq_result r;
  int rc = hq_gptq_quantize(be, &o, rows, cols, W, H, 1, &r);
  CHECK(rc == HQ_OK, "4097 wide: %s", hq_last_error());
  if (rc == HQ_OK) {
    CHECK(r.ngroups == 33, "ngroups %lld", (long long)r.ngroups);
    CHECK(all_finite(W, rows * cols) && deq_mismatch(&r, W) == 0, "finite and consistent");
    CHECK(r.loss_proxy < r.loss_proxy_rtn, "GPTQ %g vs RTN %g", r.loss_proxy, r.loss_proxy_rtn);
    int gmax = 0;
    for (int64_t c = 0; c < cols; c++) gmax = r.g_idx[c] > gmax ? r.g_idx[c] : gmax;
    CHECK(gmax == 32, "last group %d", gmax);
    printf("cols 4097 g128 act-order: proxy GPTQ/RTN %.3f, chol %.2f s, quant %.2f s\n",
           r.loss_proxy / r.loss_proxy_rtn, r.t_chol, r.t_quant);
    hq_gptq_result_free(&r);
  }
  free(H);
  free(W);
}

/* Status of RTN, GPTQ and HQQ (in that order) on a copy of W; message checked against `want`. */
static void fp16_case(const struct hq_gptq_opts *o, const float *W, const float *H, int64_t rows,
                      int64_t cols, int expect_ok, const char *want) {
  const char *names[3] = {"rtn", "gptq", "hqq"};
  float *W2 = malloc(sizeof(float) * rows * cols);
  for (int m = 0; m < 3; m++) {
    memcpy(W2, W, sizeof(float) * rows * cols);
    struct hq_gptq_result r;
    struct hq_hqq_opts ho = hq_hqq_opts_default();
    hq_error_clear();
    int rc = m == 0 ? hq_rtn_quantize(be, o, rows, cols, W2, H, &r)
             : m == 1 ? hq_gptq_quantize(be, o, rows, cols, W2, H, 1, &r)
                      : hq_hqq_quantize(o, &ho, rows, cols, W2, &r, NULL);
    if (expect_ok) {
      CHECK(rc == HQ_OK, "%s, %d bits: %s", names[m], o->bits, hq_last_error());
    } else {
      CHECK(rc == HQ_ERR_NUMERIC && strstr(hq_last_error(), want) &&
                strstr(hq_last_error(), "65504"), "%s: rc %d: %s", names[m], rc, hq_last_error());
      if (m == 0) printf("scale beyond fp16: %s\n", hq_last_error());
    }
    if (rc == HQ_OK) hq_gptq_result_free(&r);
  }
  free(W2);
}

static void test_fp16_range(void) {
  const int64_t rows = 8, cols = 64;
  float *H, *W;
  small_layer(rows, cols, 18, &H, &W);
  struct hq_gptq_opts o = hq_gptq_opts_default();
  o.group_size = 32;
  W[5 * cols + 35] = -1.0e6f; /* 4 bits: scale 66667 > 65504; 8 bits: 3922 */
  fp16_case(&o, W, H, rows, cols, 0, "row 5, columns 32..63: the weights span [-1e+06");
  o.sym = 1; /* symmetric: the span is twice the largest magnitude */
  W[5 * cols + 35] = -5.0e5f;
  fp16_case(&o, W, H, rows, cols, 0, "4-bit symmetric grid needs a scale of 66666");
  o.bits = 8;
  fp16_case(&o, W, H, rows, cols, 1, NULL);
  o.bits = 4;
  o.sym = 0;
  W[5 * cols + 35] = -9.0e5f; /* asymmetric 4 bits: scale 60000 fits */
  fp16_case(&o, W, H, rows, cols, 1, NULL);
  free(H);
  free(W);
}

int main(void) {
  be = hq_backend_cpu();
  test_fp16_range();
  test_not_pd();
  test_dead();
  test_nonfinite();
  test_wide();
  return hq_t_done("test_gptq_bad");
}
