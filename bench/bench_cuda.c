/* CUDA backend benchmark (issue 5), one GPU, one process. Rows, in one run:
 *   gemm_bf16      plain cuBLAS GEMM 8192^3, bf16 inputs, fp32 accumulate: the peak
 *   gemm_fp32      backend gemm 8192^3 (fp32; TF32 only with HQ_ALLOW_TF32=1)
 *   hessian_<n>    backend syrk of a 2048-token window into an n x n Hessian (what the
 *                  pipeline does per window), n = 8192 and 28672; % of the bf16 peak
 *   gptq_8192      hq_gptq_quantize of an 8192 x 8192 layer, act-order, g128, 4-bit
 *   gptq_down      the same for a 8192 x 28672 down_proj
 *   block_fwd      hq_forward_block of a synthetic 70B-class block (hidden 8192, inter 28672,
 *                  64 heads, 8 KV heads, head_dim 128) on --nseq x --seqlen tokens
 *   memory         GPU bytes: peak of the block forward (weights + workspace for the rank's
 *                  tokens), the four Hessian sums of a block, the peak of the down_proj GPTQ
 * Timings: one warm-up, then --reps timed runs (CUDA events for single ops, wall clock with a
 * final sync for the multi-op rows), median reported. After timing, untimed checks: a sample of
 * Hessian entries against double-precision dot products on the host, GPTQ proxy loss below
 * RTN's, finite forward outputs.
 *   bench_cuda [--reps R] [--nseq N] [--seqlen S] [--no-down] [--no-forward] [--json]
 * Without a CUDA build or a visible GPU it prints why and exits 77 (skipped). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"

#ifndef HQ_HAVE_CUDA
int main(void) {
  printf("bench_cuda: skipped: hpcq was built without CUDA\n");
  return 77;
}
#else
#include "backend_cuda.h"
#include "forward.h"
#include "gptq.h"
#include "model.h"
#include "util.h"

static int g_json = 0;
static const struct hq_backend *be;

/* uniform in [-a, a] from a 64-bit LCG: fast fill for large synthetic tensors */
static void fill(float *x, int64_t n, uint64_t seed, float a) {
  uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (int64_t i = 0; i < n; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x[i] = a * ((float)(s >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }
}
static void row(const char *name, const char *text) {
  if (g_json) printf("{\"bench\":\"cuda\",\"row\":\"%s\",%s}\n", name, text);
  else printf("%-12s %s\n", name, text);
  fflush(stdout);
}
static float *dalloc(size_t bytes) {
  float *p = be->alloc(bytes);
  if (!p) HQ_DIE("bench_cuda: out of device memory for %.2f GiB", (double)bytes / 1073741824.0);
  return p;
}

static double g_bf16 = 0;

static void bench_gemm(int reps) {
  char b[256];
  g_bf16 = hq_cuda_bench_gemm_bf16(8192, 8192, 8192, reps);
  snprintf(b, sizeof b, g_json ? "\"tflops\":%.1f" : "%.1f TFLOP/s (cuBLAS bf16 in, fp32 acc, 8192^3)", g_bf16);
  row("gemm_bf16", b);
  const int64_t n = 8192;
  float *A = dalloc((size_t)(n * n) * 4), *B = dalloc((size_t)(n * n) * 4), *C = dalloc((size_t)(n * n) * 4);
  float *h = malloc((size_t)(n * n) * 4);
  fill(h, n * n, 1, 1.0f);
  be->upload(A, h, (size_t)(n * n) * 4);
  be->upload(B, h, (size_t)(n * n) * 4);
  double *t = malloc(sizeof(double) * (size_t)reps);
  for (int r = -1; r < reps; r++) {
    hq_cuda_tic();
    be->gemm(0, 1, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n);
    double s = hq_cuda_toc();
    if (r >= 0) t[r] = s;
  }
  const double tf = 2.0 * n * n * n / hq_median(t, reps) * 1e-12;
  const int tf32 = getenv("HQ_ALLOW_TF32") && !strcmp(getenv("HQ_ALLOW_TF32"), "1");
  snprintf(b, sizeof b, g_json ? "\"tflops\":%.1f,\"tf32\":%d"
                               : "%.1f TFLOP/s (backend gemm fp32 8192^3, TF32 allowed: %d)", tf, tf32);
  row("gemm_fp32", b);
  be->free(A), be->free(B), be->free(C);
  free(h), free(t);
}

/* Synthetic Hessian sum of 4 windows of 2048 tokens (rank <= 8192), timed per window; returns
 * the full symmetric H on the host (caller frees). Checks 64 entries of one window's sum. */
static float *bench_hessian(int64_t n, int reps, int *ok) {
  const int64_t k = 2048;
  char b[256], name[32];
  float *X = dalloc((size_t)(k * n) * 4), *H = dalloc((size_t)(n * n) * 4);
  float *xh = malloc((size_t)(k * n) * 4);
  be->zero(H, (size_t)(n * n) * 4);
  double *t = malloc(sizeof(double) * (size_t)(reps > 4 ? reps : 4));
  for (int w = 0; w < 4; w++) {
    fill(xh, k * n, 10 + (uint64_t)w, 1.0f);
    be->upload(X, xh, (size_t)(k * n) * 4);
    hq_cuda_tic();
    be->syrk(n, k, 1.0f, X, n, 1.0f, H, n);
    t[w] = hq_cuda_toc();
  }
  /* untimed check: one window alone vs double dot products on the host */
  float *H1 = dalloc((size_t)(n * n) * 4);
  be->syrk(n, k, 1.0f, X, n, 0.0f, H1, n);
  int bad = 0;
  for (int s = 0; s < 64; s++) {
    int64_t i = (s * 7919) % n, j = (s * 104729 + 13) % n;
    if (i > j) { int64_t tmp = i; i = j; j = tmp; }
    double ref = 0;
    for (int64_t r = 0; r < k; r++) ref += (double)xh[r * n + i] * xh[r * n + j];
    float got;
    be->download(&got, H1 + i * n + j, 4);
    bad += fabs(got - ref) > 1e-4 * (fabs(ref) + sqrt((double)k));
  }
  *ok &= bad == 0;
  be->free(H1);
  const double tf = (double)n * (double)(n + 1) * (double)k / hq_median(t, 4) * 1e-12;
  snprintf(name, sizeof name, "hessian_%lld", (long long)n);
  snprintf(b, sizeof b, g_json ? "\"tflops\":%.1f,\"fraction_of_bf16_peak\":%.3f,\"check_bad\":%d"
                               : "%.1f TFLOP/s = %.0f%% of the bf16 peak (fp32 syrk, 2048 tokens; check: %d bad)",
           tf, g_json ? tf / g_bf16 : 100.0 * tf / g_bf16, bad);
  row(name, b);
  be->symmetrize(n, H, n);
  float *Hh = malloc((size_t)(n * n) * 4);
  be->download(Hh, H, (size_t)(n * n) * 4);
  be->free(X), be->free(H);
  free(xh), free(t);
  return Hh;
}

static void bench_gptq(const char *name, int64_t rows, int64_t cols, const float *H, int reps,
                       int *ok, size_t *peak) {
  char b[320];
  float *W0 = malloc((size_t)(rows * cols) * 4), *W = malloc((size_t)(rows * cols) * 4);
  fill(W0, rows * cols, 20, 0.05f);
  struct hq_gptq_opts o = hq_gptq_opts_default();
  o.act_order = 1;
  o.group_size = 128;
  double *t = malloc(sizeof(double) * (size_t)reps), *tc = malloc(sizeof(double) * (size_t)reps),
         *tq = malloc(sizeof(double) * (size_t)reps);
  hq_cuda_mem_peak_reset();
  for (int r = -1; r < reps; r++) {
    memcpy(W, W0, (size_t)(rows * cols) * 4);
    struct hq_gptq_result res;
    double t0 = hq_now();
    int rc = hq_gptq_quantize(be, &o, rows, cols, W, H, 0, &res);
    double dt = hq_now() - t0;
    if (rc != HQ_OK) HQ_DIE("bench_cuda: gptq failed: %s", hq_last_error());
    if (r >= 0) t[r] = dt, tc[r] = res.t_chol, tq[r] = res.t_quant;
    hq_gptq_result_free(&res);
  }
  *peak = hq_cuda_mem_peak();
  /* untimed check: GPTQ's proxy loss below RTN's on the same grid */
  memcpy(W, W0, (size_t)(rows * cols) * 4);
  struct hq_gptq_result res;
  int rc = hq_gptq_quantize(be, &o, rows, cols, W, H, 1, &res);
  int good = rc == HQ_OK && isfinite(res.loss_proxy) && res.loss_proxy < res.loss_proxy_rtn;
  *ok &= good;
  snprintf(b, sizeof b,
           g_json ? "\"rows\":%lld,\"cols\":%lld,\"seconds\":%.4f,\"seconds_chol\":%.4f,"
                    "\"seconds_quant\":%.4f,\"peak_gib\":%.3f,\"loss_vs_rtn\":%.4f"
                  : "%lld x %lld act-order g128: %.1f ms total (damp+chol+inverse %.1f ms, "
                    "GPTQ loop %.1f ms), %.2f GiB peak, loss/RTN %.3f",
           (long long)rows, (long long)cols, g_json ? hq_median(t, reps) : 1e3 * hq_median(t, reps),
           g_json ? hq_median(tc, reps) : 1e3 * hq_median(tc, reps),
           g_json ? hq_median(tq, reps) : 1e3 * hq_median(tq, reps), (double)*peak / 1073741824.0,
           rc == HQ_OK ? res.loss_proxy / res.loss_proxy_rtn : NAN);
  row(name, b);
  if (rc == HQ_OK) hq_gptq_result_free(&res);
  free(W0), free(W), free(t), free(tc), free(tq);
}

static void bench_block(int64_t nseq, int64_t S, int reps, int *ok, size_t *peak) {
  struct hq_model_config c;
  memset(&c, 0, sizeof c);
  c.hidden = 8192;
  c.intermediate = 28672;
  c.n_layers = 1;
  c.n_heads = 64;
  c.n_kv_heads = 8;
  c.head_dim = 128;
  c.vocab = 128256;
  c.max_pos = S;
  c.rms_eps = 1e-5f;
  c.rope_theta = 500000.0;
  struct hq_block_weights hw;
  memset(&hw, 0, sizeof hw);
  double params = 0;
  for (int l = 0; l < HQ_LIN_COUNT; l++) {
    int64_t rows, cols;
    hq_linear_shape(&c, (enum hq_linear)l, &rows, &cols);
    hw.lin[l] = malloc((size_t)(rows * cols) * 4);
    fill(hw.lin[l], rows * cols, 100 + (uint64_t)l, 0.02f);
    params += (double)rows * (double)cols;
  }
  hw.ln_attn = malloc((size_t)c.hidden * 4);
  hw.ln_mlp = malloc((size_t)c.hidden * 4);
  for (int64_t i = 0; i < c.hidden; i++) hw.ln_attn[i] = hw.ln_mlp[i] = 1.0f;
  hq_cuda_mem_peak_reset();
  const size_t base = hq_cuda_mem_current();
  struct hq_block_dev dw;
  struct hq_rope_table rope;
  const int64_t T = nseq * S;
  if (hq_block_dev_upload(be, &c, &hw, &dw) || hq_rope_table_init(&rope, be, &c, S))
    HQ_DIE("bench_cuda: %s", hq_last_error());
  struct hq_fwd_ws *ws = hq_fwd_ws_new(be, &c, T);
  if (!ws) HQ_DIE("bench_cuda: %s", hq_last_error());
  float *x = dalloc((size_t)(T * c.hidden) * 4), *xh = malloc((size_t)(T * c.hidden) * 4);
  fill(xh, T * c.hidden, 7, 1.0f);
  double *t = malloc(sizeof(double) * (size_t)reps);
  for (int r = -1; r < reps; r++) {
    be->upload(x, xh, (size_t)(T * c.hidden) * 4);
    double t0 = hq_now();
    hq_forward_block(be, &c, &dw, &rope, ws, nseq, S, x, NULL, NULL);
    be->sync();
    if (r >= 0) t[r] = hq_now() - t0;
  }
  *peak = hq_cuda_mem_peak() - base;
  be->download(xh, x, (size_t)(T * c.hidden) * 4);
  int fin = 1;
  for (int64_t i = 0; i < T * c.hidden; i++) fin &= isfinite(xh[i]);
  *ok &= fin;
  const double flops = 2.0 * (double)T * params +
                       4.0 * nseq * c.n_heads * c.head_dim * (S * (S + 1) / 2.0);
  const double tm = hq_median(t, reps);
  char b[256];
  snprintf(b, sizeof b, g_json ? "\"tokens\":%lld,\"seconds\":%.4f,\"tokens_per_s\":%.0f,\"tflops\":%.1f"
                               : "%lld tokens: %.3f s, %.0f tokens/s, %.1f TFLOP/s (fp32)",
           (long long)T, tm, (double)T / tm, flops / tm * 1e-12);
  row("block_fwd", b);
  be->free(x);
  free(xh), free(t);
  hq_fwd_ws_free(ws);
  hq_rope_table_free(&rope, be);
  hq_block_dev_free(be, &dw);
  hq_block_weights_free(&hw);
}

int main(int argc, char **argv) {
  int reps = 5, down = 1, fwd = 1;
  int64_t nseq = 16, S = 2048; /* 128 windows x 2048 tokens over 8 ranks */
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--nseq") && i + 1 < argc) nseq = atoll(argv[++i]);
    else if (!strcmp(argv[i], "--seqlen") && i + 1 < argc) S = atoll(argv[++i]);
    else if (!strcmp(argv[i], "--no-down")) down = 0;
    else if (!strcmp(argv[i], "--no-forward")) fwd = 0;
    else if (!strcmp(argv[i], "--json")) g_json = 1;
    else {
      fprintf(stderr, "usage: bench_cuda [--reps R] [--nseq N] [--seqlen S] [--no-down] "
                      "[--no-forward] [--json]\n");
      return 2;
    }
  }
  if (reps < 1) reps = 1;
  be = hq_backend_cuda();
  if (!be) {
    printf("bench_cuda: skipped: %s\n", hq_last_error());
    return 77;
  }
  if (!g_json) printf("bench_cuda on %s\n", hq_cuda_device_desc());
  int ok = 1;
  size_t peak_gptq = 0, peak_down = 0, peak_fwd = 0;
  bench_gemm(reps);
  float *H = bench_hessian(8192, reps, &ok);
  bench_gptq("gptq_8192", 8192, 8192, H, reps, &ok, &peak_gptq);
  free(H);
  if (down) {
    H = bench_hessian(28672, reps, &ok);
    bench_gptq("gptq_down", 8192, 28672, H, reps < 3 ? reps : 3, &ok, &peak_down);
    free(H);
  }
  if (fwd) bench_block(nseq, S, reps < 3 ? reps : 3, &ok, &peak_fwd);
  const double gib = 1073741824.0;
  const double hess = (3.0 * 8192 * 8192 + 28672.0 * 28672) * 4.0 / gib;
  const double gq = (double)(peak_down > peak_gptq ? peak_down : peak_gptq) / gib;
  char b[320];
  snprintf(b, sizeof b,
           g_json ? "\"forward_gib\":%.2f,\"hessians_gib\":%.2f,\"gptq_gib\":%.2f,\"sum_gib\":%.2f,\"tokens\":%lld"
                  : "forward %.2f GiB + Hessians %.2f GiB + GPTQ %.2f GiB = %.2f GiB upper bound "
                    "per rank (%lld tokens)",
           (double)peak_fwd / gib, hess, gq, (double)peak_fwd / gib + hess + gq, (long long)(nseq * S));
  row("memory", b);
  printf("%s\n", ok ? "bench_cuda: checks passed" : "bench_cuda: CHECK FAILED");
  return ok ? 0 : 1;
}
#endif
