/* Forward throughput of the CPU backend: tokens/s and GFLOP/s against the sgemm peak measured
 * in the same run.
 *
 *   bench_forward [--seqlen S] [--nseq N] [--reps R] [--wide-only] [--no-wide] [--json]
 *
 * Rows:
 *   sgemm peak        cblas_sgemm 2048 x 2048 x 2048 (best of R at the start, best of 3 again
 *                     right before every row, which is reported against that nearby figure)
 *   attn <model>      be->attention alone on random q/k/v of the model's shape, causal
 *                     useful FLOPs (2 * 2 * hd per (query, key <= query) pair)
 *   block <model>     hq_forward_block on N x S tokens (all 7 linears + norms, rope,
 *                     attention, swiglu, residuals), FLOPs of linears + causal attention
 *   model <model>     hq_forward_model_nll over N windows of S (embed, every block loaded
 *                     from the checkpoint, final norm, lm_head, NLL) — what `hpcq eval` runs
 * Models: the bundled llama-sotu-5m and stories260K-hf (HQ_TESTDATA or tests/data), and a
 * synthetic Llama-2-7B-shaped block (hidden 4096, intermediate 11008, 32 heads, random
 * weights N(0, 0.02)) — "wide4096".
 * Timings: one warm-up, then R timed runs; the median is reported (min in JSON too). After
 * timing, an untimed check: outputs finite, and the bundled models' perplexity in range.
 * Threads: OMP_NUM_THREADS / OPENBLAS_NUM_THREADS as usual. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "forward.h"
#include "model.h"
#include "util.h"

static int g_json = 0;


static void randn(float *x, int64_t n, uint64_t seed, float sigma) {
  struct hq_rng r;
  hq_rng_seed(&r, seed);
  for (int64_t i = 0; i < n; i++) x[i] = sigma * (float)hq_rng_normal(&r);
}

static double g_peak = 0;

static void report(const char *what, const char *name, int64_t tokens, double flops,
                   double *t, int reps) {
  double tmin = t[0];
  for (int i = 1; i < reps; i++) tmin = fmin(tmin, t[i]);
  const double tm = hq_median(t, reps), gf = flops / tm * 1e-9;
  if (g_json)
    printf("{\"bench\":\"forward\",\"row\":\"%s\",\"model\":\"%s\",\"tokens\":%lld,"
           "\"seconds_median\":%.6f,\"seconds_min\":%.6f,\"tokens_per_s\":%.1f,"
           "\"gflops\":%.2f,\"peak_gflops\":%.2f,\"fraction_of_peak\":%.3f}\n",
           what, name, (long long)tokens, tm, tmin, tokens / tm, gf, g_peak, gf / g_peak);
  else
    printf("%-6s %-15s %8lld %10.4f %12.0f %9.1f %7.0f%% %8.1f\n", what, name, (long long)tokens,
           tm, tokens / tm, gf, 100.0 * gf / g_peak, g_peak);
  fflush(stdout);
}

/* sgemm peak: cblas_sgemm 2048^3, best of `reps`. Measured once at the start and again right
 * before every row (the row is reported against the peak measured next to it: a shared machine's
 * speed drifts). */
static void sgemm_peak(int reps, int print) {
  const int n = 2048;
  float *A = malloc((size_t)n * n * 4), *B = malloc((size_t)n * n * 4), *C = malloc((size_t)n * n * 4);
  randn(A, (int64_t)n * n, 1, 1.0f);
  randn(B, (int64_t)n * n, 2, 1.0f);
  double best = 1e30;
  /* the machine's peak: OpenBLAS's own threads (the CPU backend runs it on one thread and
   * threads its fixed-shape tiles itself, docs/readme/reproducibility.md) */
  openblas_set_num_threads(omp_get_max_threads());
  for (int r = 0; r <= reps; r++) {
    double t0 = hq_now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n);
    double dt = hq_now() - t0;
    if (r) best = fmin(best, dt);
  }
  openblas_set_num_threads(1);
  g_peak = 2.0 * n * n * n / best * 1e-9;
  if (!print) {
    free(A), free(B), free(C);
    return;
  }
  if (g_json)
    printf("{\"bench\":\"forward\",\"row\":\"sgemm_peak\",\"n\":%d,\"gflops\":%.2f}\n", n, g_peak);
  else
    printf("sgemm peak (%d^3, best of %d): %.1f GFLOP/s at the start; each row is compared with "
           "the peak measured just before it (last column)\n\n%-6s %-15s %8s %10s %12s %9s %8s %8s\n",
           n, reps, g_peak, "row", "model", "tokens", "median s", "tokens/s", "GFLOP/s", "of peak",
           "peak");
  free(A), free(B), free(C);
}

static double block_flops(const struct hq_model_config *c, int64_t nseq, int64_t S) {
  const double T = (double)(nseq * S), H = (double)c->hidden, qd = (double)(c->n_heads * c->head_dim),
               kvd = (double)(c->n_kv_heads * c->head_dim), In = (double)c->intermediate;
  const double lin = 2.0 * T * (H * qd + 2 * H * kvd + qd * H + 3 * H * In);
  return lin + 4.0 * nseq * c->n_heads * c->head_dim * (S * (S + 1) / 2.0);
}

static int bench_attention(const struct hq_backend *be, const struct hq_model_config *c,
                           const char *name, int64_t nseq, int64_t S, int reps) {
  const int64_t T = nseq * S, qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
  float *q = malloc((size_t)(T * qd) * 4), *k = malloc((size_t)(T * kvd) * 4),
        *v = malloc((size_t)(T * kvd) * 4), *o = malloc((size_t)(T * qd) * 4);
  randn(q, T * qd, 3, 1.0f);
  randn(k, T * kvd, 4, 1.0f);
  randn(v, T * kvd, 5, 1.0f);
  double *t = malloc(sizeof(double) * (size_t)reps);
  sgemm_peak(3, 0);
  for (int r = -1; r < reps; r++) {
    double t0 = hq_now();
    be->attention(nseq, S, c->n_heads, c->n_kv_heads, c->head_dim, q, k, v, o);
    if (r >= 0) t[r] = hq_now() - t0;
  }
  report("attn", name, T, 4.0 * nseq * c->n_heads * c->head_dim * (S * (S + 1) / 2.0), t, reps);
  int ok = 1;
  for (int64_t i = 0; i < T * qd; i++) ok &= isfinite(o[i]);
  free(q), free(k), free(v), free(o), free(t);
  return ok;
}

static int bench_block(const struct hq_backend *be, const struct hq_model_config *c,
                       const struct hq_block_weights *hw, const char *name, int64_t nseq,
                       int64_t S, int reps) {
  struct hq_block_dev dw;
  struct hq_rope_table rope;
  if (hq_block_dev_upload(be, c, hw, &dw) || hq_rope_table_init(&rope, be, c, S)) {
    fprintf(stderr, "bench_forward: %s\n", hq_last_error());
    return 0;
  }
  const int64_t T = nseq * S, H = c->hidden;
  struct hq_fwd_ws *ws = hq_fwd_ws_new(be, c, T);
  if (!ws) {
    fprintf(stderr, "bench_forward: %s\n", hq_last_error());
    return 0;
  }
  float *x0 = malloc((size_t)(T * H) * 4), *x = malloc((size_t)(T * H) * 4);
  randn(x0, T * H, 6, 1.0f);
  double *t = malloc(sizeof(double) * (size_t)reps);
  sgemm_peak(3, 0);
  for (int r = -1; r < reps; r++) {
    memcpy(x, x0, (size_t)(T * H) * 4);
    double t0 = hq_now();
    hq_forward_block(be, c, &dw, &rope, ws, nseq, S, x, NULL, NULL);
    if (r >= 0) t[r] = hq_now() - t0;
  }
  report("block", name, T, block_flops(c, nseq, S), t, reps);
  int ok = 1;
  for (int64_t i = 0; i < T * H; i++) ok &= isfinite(x[i]);
  free(x0), free(x), free(t);
  hq_fwd_ws_free(ws);
  hq_rope_table_free(&rope, be);
  hq_block_dev_free(be, &dw);
  return ok;
}

static int bench_model(const struct hq_backend *be, const char *dir, const char *tokfile,
                       const char *name, int64_t nseq, int64_t S, int reps) {
  struct hq_model m;
  if (hq_model_open(dir, &m)) {
    fprintf(stderr, "bench_forward: %s (skipped)\n", hq_last_error());
    return 1;
  }
  const struct hq_model_config *c = &m.cfg;
  if (S > c->max_pos) S = c->max_pos;
  struct hq_block_weights hw;
  int ok = hq_model_load_block(&m, 0, &hw) == HQ_OK;
  ok = ok && bench_attention(be, c, name, nseq, S, reps);
  ok = ok && bench_block(be, c, &hw, name, nseq, S, reps);
  hq_block_weights_free(&hw);
  struct hq_tokens tok;
  if (ok && hq_tokens_load(tokfile, c->vocab, &tok) == HQ_OK && tok.n >= nseq * S) {
    double *t = malloc(sizeof(double) * (size_t)reps), nll = 0;
    const double flops = c->n_layers * block_flops(c, nseq, S) +
                         2.0 * (double)(nseq * S) * (double)(c->hidden * c->vocab);
    sgemm_peak(3, 0);
    for (int r = -1; r < reps; r++) {
      double t0 = hq_now();
      ok = ok && hq_forward_model_nll(be, &m, tok.ids, nseq, S, NULL, &nll, NULL) == HQ_OK;
      if (r >= 0) t[r] = hq_now() - t0;
    }
    report("model", name, nseq * S, flops, t, reps);
    const double ppl = exp(nll / (double)(nseq * (S - 1)));
    if (!g_json) printf("       (perplexity of these %lld windows: %.3f)\n", (long long)nseq, ppl);
    ok = ok && isfinite(ppl) && ppl > 1 && ppl < c->vocab;
    free(t);
    hq_tokens_free(&tok);
  }
  hq_model_close(&m);
  return ok;
}

static int bench_wide(const struct hq_backend *be, int64_t nseq, int64_t S, int reps) {
  struct hq_model_config c;
  memset(&c, 0, sizeof c);
  c.hidden = 4096;
  c.intermediate = 11008;
  c.n_layers = 1;
  c.n_heads = 32;
  c.n_kv_heads = 32;
  c.head_dim = 128;
  c.vocab = 32000;
  c.max_pos = 4096;
  c.rms_eps = 1e-5f;
  c.rope_theta = 10000.0;
  struct hq_block_weights hw;
  memset(&hw, 0, sizeof hw);
  for (int l = 0; l < HQ_LIN_COUNT; l++) {
    int64_t rows, cols;
    hq_linear_shape(&c, (enum hq_linear)l, &rows, &cols);
    hw.lin[l] = malloc((size_t)(rows * cols) * 4);
    randn(hw.lin[l], rows * cols, 100 + (uint64_t)l, 0.02f);
  }
  hw.ln_attn = malloc(4096 * 4);
  hw.ln_mlp = malloc(4096 * 4);
  for (int i = 0; i < 4096; i++) hw.ln_attn[i] = hw.ln_mlp[i] = 1.0f;
  int ok = bench_attention(be, &c, "wide4096", nseq, S, reps);
  ok = ok && bench_block(be, &c, &hw, "wide4096", nseq, S, reps);
  hq_block_weights_free(&hw);
  return ok;
}

int main(int argc, char **argv) {
  int64_t S = 512, nseq = 1, reps = 5, snseq = 32, sS = 256;
  int wide = 1, small = 1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--seqlen") && i + 1 < argc) S = atoll(argv[++i]);
    else if (!strcmp(argv[i], "--nseq") && i + 1 < argc) nseq = atoll(argv[++i]);
    else if (!strcmp(argv[i], "--small-nseq") && i + 1 < argc) snseq = atoll(argv[++i]);
    else if (!strcmp(argv[i], "--small-seqlen") && i + 1 < argc) sS = atoll(argv[++i]);
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoll(argv[++i]);
    else if (!strcmp(argv[i], "--wide-only")) small = 0;
    else if (!strcmp(argv[i], "--no-wide")) wide = 0;
    else if (!strcmp(argv[i], "--json")) g_json = 1;
    else {
      fprintf(stderr,
              "usage: bench_forward [--seqlen S (wide block, 512)] [--nseq N (1)] "
              "[--small-seqlen S (256)] [--small-nseq N (32)] [--reps R (5)] [--wide-only] "
              "[--no-wide] [--json]\n");
      return 2;
    }
  }
  if (S < 2 || nseq < 1 || reps < 1 || sS < 2 || snseq < 1) {
    fprintf(stderr, "bench_forward: sizes and --reps must be positive (seqlen >= 2)\n");
    return 2;
  }
  const struct hq_backend *be = hq_backend_cpu();
  sgemm_peak((int)reps, 1);
  int ok = 1;
  const char *d = getenv("HQ_TESTDATA");
  char dir[2048], tok[2200];
  if (small) {
    snprintf(dir, sizeof dir, "%s/llama-sotu-5m", d ? d : "tests/data");
    snprintf(tok, sizeof tok, "%s/wikitext2-test.i32", dir);
    ok &= bench_model(be, dir, tok, "llama-sotu-5m", snseq, sS, (int)reps);
    snprintf(dir, sizeof dir, "%s/stories260K-hf", d ? d : "tests/data");
    snprintf(tok, sizeof tok, "%s/wikitext2-test.tok512.i32", dir);
    ok &= bench_model(be, dir, tok, "stories260K-hf", snseq, sS, (int)reps);
  }
  if (wide) ok &= bench_wide(be, nseq, S, (int)reps);
  if (!ok) {
    fprintf(stderr, "bench_forward: correctness check FAILED (non-finite output or perplexity)\n");
    return 1;
  }
  return 0;
}
