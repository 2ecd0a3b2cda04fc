/* Every op of the CUDA backend against the CPU backend (issue 5) on random data.
 *  - dense ops and forward ops: normalised MSE  Σ(gpu - cpu)² / Σ cpu²  below a named threshold
 *    per op (fp32 with a different summation order: ~1e-14 expected);
 *  - quantization ops (quant_params, rtn_cols, gptq_block): bit-identical outputs (shared
 *    scalar math of quant.h, no FMA contraction on either side); MSE clip search: nearly all
 *    rows identical (device powf differs from glibc's by an ulp or two);
 *  - every device output lies between guard bytes that must be unchanged afterwards, and
 *    padding inside leading dimensions / triangles the op must not touch is compared exactly.
 * Exits 77 (skipped) when the CUDA backend is unavailable (no CUDA build or no GPU).
 * `gpu_backend --probe` only reports availability (exit 0 or 77); tests/gpu_pipeline.sh uses it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "gptq.h"
#include "testutil.h"

/* named thresholds (normalised MSE) */
#define T_GEMM 1e-11
#define T_SYRK 1e-11
#define T_CHOL 1e-8  /* inverse + two Cholesky factorisations, condition number ~1e2 */
#define T_RMSNORM 1e-12
#define T_ROPE 1e-12
#define T_ATTENTION 1e-11
#define T_SWIGLU 1e-12
#define T_MSE_SCALES 1e-4     /* MSE grid search: scales of rows that tie differently */
#define MIN_MSE_ROWS_EQUAL 0.95
#define T_GPTQ_LOSS 0.02 /* whole layer: cuBLAS vs OpenBLAS lazy updates round differently and
                             GPTQ propagates every changed code: compare losses, not codes */

static const struct hq_backend *gb, *cb;

/* ---- device buffers between guard bytes ---- */
#define GUARD 256
#define GBYTE 0xA5

static void *dput(const void *h, size_t bytes) {
  unsigned char *tmp = malloc(bytes + 2 * GUARD);
  memset(tmp, GBYTE, bytes + 2 * GUARD);
  if (bytes) memcpy(tmp + GUARD, h, bytes);
  unsigned char *base = gb->alloc(bytes + 2 * GUARD);
  if (!base) HQ_DIE("gpu_backend: device allocation of %zu bytes failed", bytes);
  gb->upload(base, tmp, bytes + 2 * GUARD);
  free(tmp);
  return base + GUARD;
}
/* download; returns 1 when both guards are intact */
static int dget(void *h, const void *d, size_t bytes) {
  unsigned char *tmp = malloc(bytes + 2 * GUARD);
  gb->sync();
  gb->download(tmp, (const unsigned char *)d - GUARD, bytes + 2 * GUARD);
  int ok = 1;
  for (size_t i = 0; i < GUARD; i++)
    ok &= tmp[i] == GBYTE && tmp[GUARD + bytes + i] == GBYTE;
  if (bytes) memcpy(h, tmp + GUARD, bytes);
  free(tmp);
  return ok;
}
static void dfree(void *d) { gb->free((unsigned char *)d - GUARD); }

static float *randv(int64_t n, uint64_t seed, float sigma) {
  float *x = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
  hq_t_randn(x, n, seed, sigma);
  return x;
}
static double nmse(const float *a, const float *ref, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = (double)a[i] - ref[i];
    num += d * d;
    den += (double)ref[i] * ref[i];
  }
  return num / (den > 1e-300 ? den : 1e-300);
}

/* ---- dense linear algebra ---- */
static void test_gemm(int64_t m, int64_t n, int64_t k) {
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 5, ldc = n + 7;
      const int64_t na = (ta ? k : m) * lda, nb = (tb ? n : k) * ldb, nc = m * ldc;
      float *A = randv(na, 11, 1), *B = randv(nb, 12, 1), *C = randv(nc, 13, 1);
      float *C0 = malloc((size_t)nc * 4), *Cg = malloc((size_t)nc * 4);
      memcpy(C0, C, (size_t)nc * 4);
      float *dA = dput(A, (size_t)na * 4), *dB = dput(B, (size_t)nb * 4), *dC = dput(C, (size_t)nc * 4);
      cb->gemm(ta, tb, m, n, k, 0.7f, A, lda, B, ldb, -0.3f, C, ldc);
      gb->gemm(ta, tb, m, n, k, 0.7f, dA, lda, dB, ldb, -0.3f, dC, ldc);
      CHECK(dget(Cg, dC, (size_t)nc * 4), "gemm %d%d: guard overwritten", ta, tb);
      double e = nmse(Cg, C, nc);
      CHECK(e < T_GEMM, "gemm ta=%d tb=%d %lldx%lldx%lld: nmse %.3g", ta, tb, (long long)m,
            (long long)n, (long long)k, e);
      int pad_ok = 1;
      for (int64_t i = 0; i < m; i++)
        for (int64_t j = n; j < ldc; j++) pad_ok &= Cg[i * ldc + j] == C0[i * ldc + j];
      CHECK(pad_ok, "gemm %d%d wrote into C's padding columns", ta, tb);
      dfree(dA), dfree(dB), dfree(dC);
      free(A), free(B), free(C), free(C0), free(Cg);
    }
}

static void test_syrk(int64_t n, int64_t k) {
  const int64_t ldx = n + 3, ldc = n + 2;
  float *X = randv(k * ldx, 21, 1), *C = randv(n * ldc, 22, 1);
  float *C0 = malloc((size_t)(n * ldc) * 4), *Cg = malloc((size_t)(n * ldc) * 4);
  memcpy(C0, C, (size_t)(n * ldc) * 4);
  float *dX = dput(X, (size_t)(k * ldx) * 4), *dC = dput(C, (size_t)(n * ldc) * 4);
  cb->syrk(n, k, 0.5f, X, ldx, 0.25f, C, ldc);
  gb->syrk(n, k, 0.5f, dX, ldx, 0.25f, dC, ldc);
  CHECK(dget(Cg, dC, (size_t)(n * ldc) * 4), "syrk: guard overwritten");
  double num = 0, den = 0;
  int low_ok = 1;
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < ldc; j++) {
      if (j >= i && j < n) {
        double d = (double)Cg[i * ldc + j] - C[i * ldc + j];
        num += d * d;
        den += (double)C[i * ldc + j] * C[i * ldc + j];
      } else {
        low_ok &= Cg[i * ldc + j] == C0[i * ldc + j];
      }
    }
  CHECK(num / den < T_SYRK, "syrk %lld x %lld: nmse %.3g", (long long)n, (long long)k, num / den);
  CHECK(low_ok, "syrk touched the strict lower triangle or the padding");
  dfree(dX), dfree(dC);
  free(X), free(C), free(C0), free(Cg);
}

static void test_symmetrize(int64_t n) {
  const int64_t lda = n + 3;
  float *A = randv(n * lda, 31, 1), *Ag = malloc((size_t)(n * lda) * 4);
  float *dA = dput(A, (size_t)(n * lda) * 4);
  cb->symmetrize(n, A, lda);
  gb->symmetrize(n, dA, lda);
  CHECK(dget(Ag, dA, (size_t)(n * lda) * 4), "symmetrize: guard overwritten");
  CHECK(!memcmp(Ag, A, (size_t)(n * lda) * 4), "symmetrize %lld differs from the CPU", (long long)n);
  dfree(dA);
  free(A), free(Ag);
}

/* SPD H = XᵀX / k + 0.05 I (full, ldh) */
static float *make_spd(int64_t n, int64_t ldh, uint64_t seed) {
  const int64_t k = 2 * n + 16;
  float *X = randv(k * n, seed, 1), *H = calloc((size_t)(n * ldh), 4);
  cb->gemm(1, 0, n, n, k, 1.0f / (float)k, X, n, X, n, 0.0f, H, ldh);
  for (int64_t i = 0; i < n; i++) H[i * ldh + i] += 0.05f;
  free(X);
  return H;
}

static void test_chol(int64_t n) {
  const int64_t ldh = n + 4, nn = n * ldh;
  float *H = make_spd(n, ldh, 41), *Hg = malloc((size_t)nn * 4), *H0 = malloc((size_t)nn * 4);
  memcpy(H0, H, (size_t)nn * 4);
  float *dH = dput(H, (size_t)nn * 4);
  int ic = cb->chol_inverse_upper(n, H, ldh);
  int ig = gb->chol_inverse_upper(n, dH, ldh);
  CHECK(ic == 0 && ig == 0, "chol n=%lld: info cpu %d gpu %d", (long long)n, ic, ig);
  CHECK(dget(Hg, dH, (size_t)nn * 4), "chol: guard overwritten");
  double num = 0, den = 0;
  int low_ok = 1, pad_ok = 1;
  for (int64_t i = 0; i < n; i++) {
    for (int64_t j = 0; j < i; j++) low_ok &= Hg[i * ldh + j] == 0.0f;
    for (int64_t j = i; j < n; j++) {
      double d = (double)Hg[i * ldh + j] - H[i * ldh + j];
      num += d * d;
      den += (double)H[i * ldh + j] * H[i * ldh + j];
    }
    for (int64_t j = n; j < ldh; j++) pad_ok &= Hg[i * ldh + j] == H0[i * ldh + j];
  }
  CHECK(num / den < T_CHOL, "chol_inverse_upper n=%lld: nmse %.3g", (long long)n, num / den);
  CHECK(low_ok, "chol_inverse_upper: strict lower triangle not zero");
  CHECK(pad_ok, "chol_inverse_upper touched the padding columns");
  dfree(dH);
  /* not positive definite: the same info as the CPU (1-based order of the failing minor) */
  for (int64_t i = 0; i < nn; i++) H[i] = 0.0f;
  for (int64_t i = 0; i < n; i++) H[i * ldh + i] = 1.0f;
  H[5 * ldh + 5] = -1.0f;
  dH = dput(H, (size_t)nn * 4);
  ic = cb->chol_inverse_upper(n, H, ldh);
  ig = gb->chol_inverse_upper(n, dH, ldh);
  CHECK(ic == 6 && ig == ic, "chol of an indefinite matrix: info cpu %d gpu %d (want 6)", ic, ig);
  dfree(dH);
  free(H), free(Hg), free(H0);
}

/* ---- quantization ---- */
/* rows with special content: all zero, all positive, tiny (fp16 subnormal scale), -0.0 */
static float *quant_matrix(int64_t rows, int64_t ld, uint64_t seed) {
  float *W = randv(rows * ld, seed, 0.02f);
  for (int64_t j = 0; j < ld; j++) {
    W[0 * ld + j] = 0.0f;
    W[1 * ld + j] = fabsf(W[1 * ld + j]);
    W[2 * ld + j] *= 1e-6f;
    if (j % 3 == 0) W[3 * ld + j] = -0.0f;
  }
  return W;
}

static void test_quant_params(int bits, int sym, int mse) {
  const int64_t rows = 70, ncols = 200, ldw = 203;
  struct hq_grid g = hq_grid_make(bits, sym, mse);
  float *W = quant_matrix(rows, ldw, 51 + (uint64_t)bits);
  float *s = malloc(rows * 4), *z = malloc(rows * 4), *sg = malloc(rows * 4), *zg = malloc(rows * 4);
  float *dW = dput(W, (size_t)(rows * ldw) * 4), *ds = dput(s, rows * 4), *dz = dput(z, rows * 4);
  cb->quant_params(g, rows, ncols, W, ldw, NULL, s, z);
  gb->quant_params(g, rows, ncols, dW, ldw, NULL, ds, dz);
  CHECK(dget(sg, ds, rows * 4) && dget(zg, dz, rows * 4), "quant_params: guard overwritten");
  if (!mse) {
    CHECK(!memcmp(s, sg, rows * 4) && !memcmp(z, zg, rows * 4),
          "quant_params bits %d sym %d: scales/zeros not bit-identical", bits, sym);
  } else {
    int same = 0;
    for (int64_t r = 0; r < rows; r++) same += s[r] == sg[r] && z[r] == zg[r];
    CHECK(same >= MIN_MSE_ROWS_EQUAL * rows && nmse(sg, s, rows) < T_MSE_SCALES,
          "quant_params mse bits %d sym %d: %d/%lld rows identical, scale nmse %.3g", bits, sym,
          same, (long long)rows, nmse(sg, s, rows));
  }
  dfree(dW), dfree(ds), dfree(dz);
  free(W), free(s), free(z), free(sg), free(zg);
}

static void test_rtn(int bits, int sym) {
  const int64_t rows = 70, ncols = 200, ldw = 203, ldc = 205;
  struct hq_grid g = hq_grid_make(bits, sym, 0);
  float *W = quant_matrix(rows, ldw, 61), *Wg = malloc((size_t)(rows * ldw) * 4);
  float *s = malloc(rows * 4), *z = malloc(rows * 4);
  uint8_t *c = malloc((size_t)(rows * ldc)), *cg = malloc((size_t)(rows * ldc));
  memset(c, 0xEE, (size_t)(rows * ldc));
  cb->quant_params(g, rows, ncols, W, ldw, NULL, s, z);
  float *dW = dput(W, (size_t)(rows * ldw) * 4), *ds = dput(s, rows * 4), *dz = dput(z, rows * 4);
  uint8_t *dc = dput(c, (size_t)(rows * ldc));
  cb->rtn_cols(g, rows, ncols, W, ldw, s, z, c, ldc);
  gb->rtn_cols(g, rows, ncols, dW, ldw, ds, dz, dc, ldc);
  CHECK(dget(Wg, dW, (size_t)(rows * ldw) * 4) && dget(cg, dc, (size_t)(rows * ldc)),
        "rtn_cols: guard overwritten");
  CHECK(!memcmp(W, Wg, (size_t)(rows * ldw) * 4), "rtn_cols bits %d sym %d: weights differ", bits, sym);
  CHECK(!memcmp(c, cg, (size_t)(rows * ldc)), "rtn_cols bits %d sym %d: codes differ", bits, sym);
  dfree(dW), dfree(ds), dfree(dz), dfree(dc);
  free(W), free(Wg), free(s), free(z), free(c), free(cg);
}

/* The fused inner block on identical inputs: W1, Err1, codes and per-row losses bit-identical. Sizes pick the kernel path: count 128 (Hinv1 in
 * shared memory), 512 (row tiles only), 1024 (global-memory fallback on every GPU). */
static void test_gptq_block(int64_t rows, int64_t count, int64_t c0, int64_t c1, int bits, int sym) {
  const int64_t ldw = count + 11, ldh = count + 8, lde = count + 2, ldc = count + 5;
  struct hq_grid g = hq_grid_make(bits, sym, 0);
  float *U = make_spd(count, ldh, 71 + (uint64_t)count);
  HQ_ASSERT(cb->chol_inverse_upper(count, U, ldh) == 0);
  float *W = randv(rows * ldw, 72, 0.02f), *E = randv(rows * lde, 73, 1);
  uint8_t *C = malloc((size_t)(rows * ldc));
  memset(C, 0xEE, (size_t)(rows * ldc));
  float *s = malloc(rows * 4), *z = malloc(rows * 4);
  cb->quant_params(g, rows, count, W, ldw, NULL, s, z);
  float *dW = dput(W, (size_t)(rows * ldw) * 4), *dU = dput(U, (size_t)(count * ldh) * 4);
  float *dE = dput(E, (size_t)(rows * lde) * 4), *ds = dput(s, rows * 4), *dz = dput(z, rows * 4);
  uint8_t *dC = dput(C, (size_t)(rows * ldc));
  double *loss = malloc((size_t)rows * sizeof(double)), *lossg = malloc((size_t)rows * sizeof(double));
  for (int64_t r = 0; r < rows; r++) loss[r] = lossg[r] = 0.25;
  double *dL = dput(lossg, (size_t)rows * sizeof(double));
  cb->gptq_block(g, rows, count, c0, c1, W, ldw, U, ldh, s, z, NULL, E, lde, C, ldc, loss);
  gb->gptq_block(g, rows, count, c0, c1, dW, ldw, dU, ldh, ds, dz, NULL, dE, lde, dC, ldc, dL);
  float *Wg = malloc((size_t)(rows * ldw) * 4), *Eg = malloc((size_t)(rows * lde) * 4);
  uint8_t *Cg = malloc((size_t)(rows * ldc));
  int guards = dget(Wg, dW, (size_t)(rows * ldw) * 4) & dget(Eg, dE, (size_t)(rows * lde) * 4) &
               dget(Cg, dC, (size_t)(rows * ldc)) & dget(lossg, dL, (size_t)rows * sizeof(double));
  CHECK(guards, "gptq_block: guard overwritten");
  char cfg[128];
  snprintf(cfg, sizeof cfg, "rows %lld count %lld cols [%lld,%lld) bits %d sym %d", (long long)rows,
           (long long)count, (long long)c0, (long long)c1, bits, sym);
  CHECK(!memcmp(C, Cg, (size_t)(rows * ldc)), "gptq_block codes differ: %s", cfg);
  CHECK(!memcmp(W, Wg, (size_t)(rows * ldw) * 4), "gptq_block weights differ: %s", cfg);
  CHECK(!memcmp(E, Eg, (size_t)(rows * lde) * 4), "gptq_block errors differ: %s", cfg);
  CHECK(!memcmp(loss, lossg, (size_t)rows * sizeof(double)) && loss[0] > 0.25,
        "gptq_block per-row losses differ (row 0: %.17g vs %.17g): %s", lossg[0], loss[0], cfg);
  free(loss), free(lossg);
  dfree(dW), dfree(dU), dfree(dE), dfree(ds), dfree(dz), dfree(dC), dfree(dL);
  free(U), free(W), free(E), free(C), free(s), free(z), free(Wg), free(Eg), free(Cg);
}

/* The whole GPTQ of one layer through hq_gptq_quantize on both backends. */
static void test_gptq_layer(int act_order, int64_t group) {
  const int64_t rows = 96, cols = 384;
  float *H = make_spd(cols, cols, 81);
  float *W = randv(rows * cols, 82, 0.02f), *W2 = malloc((size_t)(rows * cols) * 4);
  memcpy(W2, W, (size_t)(rows * cols) * 4);
  struct hq_gptq_opts o = hq_gptq_opts_default();
  o.act_order = act_order;
  o.group_size = group;
  struct hq_gptq_result rc, rg;
  int ec = hq_gptq_quantize(cb, &o, rows, cols, W, H, 0, &rc);
  int eg = hq_gptq_quantize(gb, &o, rows, cols, W2, H, 0, &rg);
  CHECK(ec == HQ_OK && eg == HQ_OK, "gptq layer: cpu %d gpu %d (%s)", ec, eg, hq_last_error());
  if (ec == HQ_OK && eg == HQ_OK) {
    int64_t same = 0;
    for (int64_t i = 0; i < rows * cols; i++) same += rc.codes[i] == rg.codes[i];
    double frac = (double)same / (double)(rows * cols);
    CHECK(fabs(rg.loss_ref - rc.loss_ref) <= T_GPTQ_LOSS * rc.loss_ref, "gptq layer act_order %d "
          "g %lld: loss %g vs %g (%.5f of codes equal)", act_order, (long long)group, rg.loss_ref,
          rc.loss_ref, frac);
    printf("gptq layer %lldx%lld act_order %d g%lld: %.5f of codes equal, loss %.6g vs %.6g\n",
           (long long)rows, (long long)cols, act_order, (long long)group, frac, rg.loss_ref,
           rc.loss_ref);
    hq_gptq_result_free(&rc);
    hq_gptq_result_free(&rg);
  }
  free(H), free(W), free(W2);
}

/* ---- forward ops ---- */
static void test_rmsnorm(int64_t ntok, int64_t dim) {
  float *x = randv(ntok * dim, 91, 3), *w = randv(dim, 92, 1), *y = malloc((size_t)(ntok * dim) * 4);
  float *yg = malloc((size_t)(ntok * dim) * 4);
  float *dx = dput(x, (size_t)(ntok * dim) * 4), *dw = dput(w, (size_t)dim * 4);
  float *dy = dput(y, (size_t)(ntok * dim) * 4);
  cb->rmsnorm(ntok, dim, x, w, 1e-5f, y);
  gb->rmsnorm(ntok, dim, dx, dw, 1e-5f, dy);
  CHECK(dget(yg, dy, (size_t)(ntok * dim) * 4), "rmsnorm: guard overwritten");
  double e = nmse(yg, y, ntok * dim);
  CHECK(e < T_RMSNORM, "rmsnorm: nmse %.3g", e);
  dfree(dx), dfree(dw), dfree(dy);
  free(x), free(w), free(y), free(yg);
}

static void test_rope(int64_t ntok, int64_t nheads, int64_t hd) {
  const int64_t maxpos = 64, half = hd / 2, n = ntok * nheads * hd;
  float *ct = malloc((size_t)(maxpos * half) * 4), *st = malloc((size_t)(maxpos * half) * 4);
  for (int64_t p = 0; p < maxpos; p++)
    for (int64_t i = 0; i < half; i++) {
      double a = (double)p * pow(10000.0, -2.0 * (double)i / (double)hd);
      ct[p * half + i] = (float)cos(a);
      st[p * half + i] = (float)sin(a);
    }
  int32_t *pos = malloc((size_t)ntok * 4);
  for (int64_t t = 0; t < ntok; t++) pos[t] = (int32_t)((t * 37 + 5) % maxpos);
  float *x = randv(n, 93, 1), *xg = malloc((size_t)n * 4);
  float *dx = dput(x, (size_t)n * 4), *dc = dput(ct, (size_t)(maxpos * half) * 4);
  float *ds = dput(st, (size_t)(maxpos * half) * 4);
  int32_t *dp = dput(pos, (size_t)ntok * 4);
  cb->rope(ntok, nheads, hd, pos, ct, st, x);
  gb->rope(ntok, nheads, hd, dp, dc, ds, dx);
  CHECK(dget(xg, dx, (size_t)n * 4), "rope: guard overwritten");
  double e = nmse(xg, x, n);
  CHECK(e < T_ROPE, "rope: nmse %.3g", e);
  dfree(dx), dfree(dc), dfree(ds), dfree(dp);
  free(ct), free(st), free(pos), free(x), free(xg);
}

static void test_attention(int64_t nseq, int64_t seqlen, int64_t nh, int64_t nkv, int64_t hd,
                           size_t chunk_bytes) {
  const int64_t nq = nseq * seqlen * nh * hd, nk = nseq * seqlen * nkv * hd;
  char env[64];
  snprintf(env, sizeof env, "%zu", chunk_bytes);
  if (chunk_bytes) setenv("HQ_CUDA_ATT_SCORE_BYTES", env, 1);
  float *q = randv(nq, 94, 1), *k = randv(nk, 95, 1), *v = randv(nk, 96, 1);
  float *o = malloc((size_t)nq * 4), *og = malloc((size_t)nq * 4);
  float *dq = dput(q, (size_t)nq * 4), *dk = dput(k, (size_t)nk * 4), *dv = dput(v, (size_t)nk * 4);
  float *dout = dput(o, (size_t)nq * 4);
  cb->attention(nseq, seqlen, nh, nkv, hd, q, k, v, o);
  gb->attention(nseq, seqlen, nh, nkv, hd, dq, dk, dv, dout);
  CHECK(dget(og, dout, (size_t)nq * 4), "attention: guard overwritten");
  double e = nmse(og, o, nq);
  CHECK(e < T_ATTENTION, "attention nseq %lld seqlen %lld nh %lld nkv %lld hd %lld chunk %zu: nmse %.3g",
        (long long)nseq, (long long)seqlen, (long long)nh, (long long)nkv, (long long)hd,
        chunk_bytes, e);
  unsetenv("HQ_CUDA_ATT_SCORE_BYTES");
  dfree(dq), dfree(dk), dfree(dv), dfree(dout);
  free(q), free(k), free(v), free(o), free(og);
}

static void test_elementwise(int64_t n) {
  float *g = randv(n, 97, 3), *u = randv(n, 98, 1), *o = malloc((size_t)n * 4), *og = malloc((size_t)n * 4);
  float *dg = dput(g, (size_t)n * 4), *du = dput(u, (size_t)n * 4), *dout = dput(o, (size_t)n * 4);
  cb->swiglu(n, g, u, o);
  gb->swiglu(n, dg, du, dout);
  CHECK(dget(og, dout, (size_t)n * 4), "swiglu: guard overwritten");
  double e = nmse(og, o, n);
  CHECK(e < T_SWIGLU, "swiglu: nmse %.3g", e);
  cb->add(n, u, g);
  gb->add(n, du, dg);
  CHECK(dget(og, du, (size_t)n * 4), "add: guard overwritten");
  CHECK(!memcmp(og, u, (size_t)n * 4), "add differs from the CPU");
  dfree(dg), dfree(du), dfree(dout);
  free(g), free(u), free(o), free(og);
}

int main(int argc, char **argv) {
  unsetenv("HQ_ALLOW_TF32"); /* the thresholds are for full fp32 */
  gb = hq_backend_cuda();
  if (argc > 1 && !strcmp(argv[1], "--probe")) return gb ? 0 : 77;
  if (!gb) {
    printf("SKIP: CUDA backend unavailable: %s\n", hq_last_error());
    return 77;
  }
  cb = hq_backend_cpu();

  test_gemm(37, 53, 29);
  test_gemm(300, 260, 280);
  test_syrk(70, 45);
  test_syrk(300, 513);
  test_symmetrize(77);
  test_symmetrize(200);
  test_chol(96);
  test_chol(520);
  for (int bits = 2; bits <= 8; bits = bits == 4 ? 8 : bits + 1)
    for (int sym = 0; sym < 2; sym++) {
      test_quant_params(bits, sym, 0);
      test_rtn(bits, sym);
    }
  test_quant_params(4, 0, 1);
  test_quant_params(3, 1, 1);
  test_gptq_block(70, 128, 0, 128, 4, 0);
  test_gptq_block(70, 128, 32, 96, 3, 1);
  test_gptq_block(33, 17, 0, 17, 2, 0);
  test_gptq_block(100, 128, 100, 101, 8, 1);
  test_gptq_block(64, 512, 0, 512, 4, 1);
  test_gptq_block(40, 1024, 0, 1024, 4, 0);
  test_gptq_layer(0, 0);
  test_gptq_layer(1, 128);
  test_rmsnorm(37, 96);
  test_rope(37, 4, 16);
  test_attention(3, 37, 4, 2, 16, 0);
  test_attention(3, 37, 4, 2, 16, (size_t)37 * 37 * 4 * 5); /* chunks of 5 pairs: 5, 5, 2 */
  test_attention(2, 20, 4, 4, 8, 0);                        /* MHA */
  test_attention(2, 20, 4, 1, 8, 0);                        /* MQA */
  test_elementwise(1000);
  return hq_t_done("gpu_backend");
}
