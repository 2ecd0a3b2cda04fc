/* bench_gptq_core: GPTQ of one rows x cols layer (default 4096 x 4096, act-order, g128, 4 bits) on the CPU
 * backend against its lower bound: one Cholesky inverse of H plus one rows x cols x cols
 * sgemm. Phases are timed by wrapping the backend's ops (no change to the library):
 * inner = fused GPTQ blocks, lazy = the block GEMMs, params = group parameters.
 *
 *   bench_gptq_core [rows] [cols] [reps] [group] [act_order]
 *
 * Target (issue 2): GPTQ (chol + quant) <= 1.5 x (chol + sgemm); lazy-update GFLOP/s >= 60%
 * of the sgemm's. Prints medians of `reps` timed runs after one warm-up, then a correctness
 * check (codes dequantize to W, GPTQ proxy loss below RTN's). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "gptq.h"
#include "util.h"

static const struct hq_backend *cpu;
static double t_gemm, t_inner, t_params, f_gemm;

static void w_gemm(int64_t row0, int64_t seg, int ta, int tb, int64_t m, int64_t n, int64_t k,
                   float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                   float beta, float *C, int64_t ldc) {
  double t0 = hq_now();
  cpu->gemm_rows(row0, seg, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  t_gemm += hq_now() - t0;
  f_gemm += 2.0 * (double)m * (double)n * (double)k;
}
static void w_block(struct hq_grid g, int64_t rows, int64_t count, int64_t c0, int64_t c1,
                    float *W1, int64_t ldw, const float *Hinv1, int64_t ldh, const float *scale,
                    const float *zero, const int32_t *cg, float *Err1, int64_t lde, uint8_t *codes, int64_t ldc,
                    double *loss) {
  double t0 = hq_now();
  cpu->gptq_block(g, rows, count, c0, c1, W1, ldw, Hinv1, ldh, scale, zero, cg, Err1, lde, codes, ldc,
                  loss);
  t_inner += hq_now() - t0;
}
static void w_params(struct hq_grid g, int64_t rows, int64_t ncols, const float *W, int64_t ldw,
                     const float *colw, float *scale, float *zero) {
  double t0 = hq_now();
  cpu->quant_params(g, rows, ncols, W, ldw, colw, scale, zero);
  t_params += hq_now() - t0;
}


int main(int argc, char **argv) {
  int64_t rows = argc > 1 ? atoll(argv[1]) : 4096, cols = argc > 2 ? atoll(argv[2]) : 4096;
  int reps = argc > 3 ? atoi(argv[3]) : 3;
  int64_t gs = argc > 4 ? atoll(argv[4]) : 128;
  int ao = argc > 5 ? atoi(argv[5]) : 1;
  if (rows < 1 || cols < 1 || reps < 1 || reps > 50) {
    fprintf(stderr, "usage: bench_gptq_core [rows] [cols] [reps] [group] [act_order]\n");
    return 2;
  }
  cpu = hq_backend_cpu();
  struct hq_backend be = *cpu;
  be.gemm_rows = w_gemm;
  be.gptq_block = w_block;
  be.quant_params = w_params;

  size_t wn = (size_t)(rows * cols), hn = (size_t)(cols * cols);
  float *W0 = malloc(wn * 4), *W = malloc(wn * 4), *H = malloc(hn * 4), *X = NULL, *C = malloc(wn * 4);
  struct hq_rng r;
  hq_rng_seed(&r, 1);
  for (size_t k = 0; k < wn; k++) W0[k] = 0.02f * (float)hq_rng_normal(&r);
  /* H = 2/n XᵀX of n = cols tokens with feature scales 0.2..2 (well conditioned enough) */
  int64_t ntok = cols;
  X = malloc((size_t)(ntok * cols) * 4);
  for (int64_t t = 0; t < ntok; t++)
    for (int64_t c = 0; c < cols; c++)
      X[t * cols + c] = (0.2f + 1.8f * (float)(c % 101) / 100.0f) * (float)hq_rng_normal(&r);
  cpu->syrk(cols, ntok, 2.0f / (float)ntok, X, cols, 0.0f, H, cols);
  cpu->symmetrize(cols, H, cols);

  double *tg = calloc((size_t)reps, 8), *tc = calloc((size_t)reps, 8), *tq = calloc((size_t)reps, 8),
         *tl = calloc((size_t)reps, 8), *ti = calloc((size_t)reps, 8), *tp = calloc((size_t)reps, 8),
         *tch = calloc((size_t)reps, 8), *tmm = calloc((size_t)reps, 8),
         *tpr = calloc((size_t)reps, 8);
  float *Hc = malloc(hn * 4);
  struct hq_gptq_opts o = hq_gptq_opts_default();
  o.group_size = gs;
  o.act_order = ao;
  double flops_lazy = 0;
  for (int it = -1; it < reps; it++) {
    /* the lower bound: Cholesky inverse + one sgemm */
    memcpy(Hc, H, hn * 4);
    for (int64_t i = 0; i < cols; i++) Hc[i * cols + i] += 0.01f;
    double t0 = hq_now();
    if (cpu->chol_inverse_upper(cols, Hc, cols)) HQ_DIE("chol failed");
    double t1 = hq_now();
    cpu->gemm(0, 0, rows, cols, cols, 1.0f, W0, cols, Hc, cols, 0.0f, C, cols);
    double t2 = hq_now();
    /* GPTQ */
    memcpy(W, W0, wn * 4);
    t_gemm = t_inner = t_params = f_gemm = 0;
    struct hq_gptq_result res;
    double t3 = hq_now();
    if (hq_gptq_quantize(&be, &o, rows, cols, W, H, 0, &res)) HQ_DIE("%s", hq_last_error());
    double t4 = hq_now();
    if (it >= 0) {
      tch[it] = t1 - t0;
      tmm[it] = t2 - t1;
      tg[it] = t4 - t3;
      tc[it] = res.t_chol;
      tq[it] = res.t_quant;
      tpr[it] = (t4 - t3) - res.t_chol - res.t_quant;
      tl[it] = t_gemm;
      ti[it] = t_inner;
      tp[it] = t_params;
      flops_lazy = f_gemm;
    }
    hq_gptq_result_free(&res);
  }
  double mch = hq_median(tch, reps), mmm = hq_median(tmm, reps), mg = hq_median(tg, reps);
  double ml = hq_median(tl, reps);
  double sg_gf = 2.0 * rows * cols * (double)cols / mmm / 1e9, lazy_gf = flops_lazy / ml / 1e9;
  printf("GPTQ %lld x %lld, W4 g%lld act-order %d, %d reps (median), backend cpu\n", (long long)rows,
         (long long)cols, (long long)gs, ao, reps);
  printf("  lower bound: chol-inverse %.3f s + sgemm %.3f s (%.1f GFLOP/s) = %.3f s\n", mch, mmm,
         sg_gf, mch + mmm);
  printf("  GPTQ total %.3f s = chol %.3f + quant %.3f (+ prep %.3f)\n", mg, hq_median(tc, reps),
         hq_median(tq, reps), hq_median(tpr, reps));
  printf("    quant phases: lazy GEMM %.3f s (%.1f GFLOP/s, %.0f%% of sgemm), inner blocks %.3f s, "
         "group params %.3f s\n", ml, lazy_gf, 100.0 * lazy_gf / sg_gf, hq_median(ti, reps),
         hq_median(tp, reps));
  printf("  ratio GPTQ / (chol + sgemm) = %.2f (target <= 1.5); lazy/sgemm = %.0f%% (target >= 60%%)\n",
         mg / (mch + mmm), 100.0 * lazy_gf / sg_gf);
  printf("{\"bench\":\"gptq\",\"rows\":%lld,\"cols\":%lld,\"group\":%lld,\"act_order\":%d,"
         "\"t_gptq\":%.4f,\"t_chol\":%.4f,\"t_sgemm\":%.4f,\"ratio\":%.3f,\"lazy_gflops\":%.1f,"
         "\"sgemm_gflops\":%.1f}\n", (long long)rows, (long long)cols, (long long)gs, ao, mg, mch,
         mmm, mg / (mch + mmm), lazy_gf, sg_gf);
  /* untimed correctness check */
  memcpy(W, W0, wn * 4);
  struct hq_gptq_result res;
  if (hq_gptq_quantize(cpu, &o, rows, cols, W, H, 1, &res)) HQ_DIE("%s", hq_last_error());
  int64_t bad = 0;
  for (int64_t i = 0; i < rows; i++)
    for (int64_t c = 0; c < cols; c++) {
      int64_t k = i * res.ngroups + res.g_idx[c];
      bad += hq_dequant(res.codes[i * cols + c], res.scales[k], res.zeros[k]) != W[i * cols + c];
    }
  printf("  check: %lld dequantization mismatches, proxy GPTQ/RTN %.3f -> %s\n", (long long)bad,
         res.loss_proxy / res.loss_proxy_rtn,
         bad == 0 && res.loss_proxy < res.loss_proxy_rtn ? "OK" : "FAILED");
  int ok = bad == 0 && res.loss_proxy < res.loss_proxy_rtn;
  hq_gptq_result_free(&res);
  free(W0); free(W); free(H); free(X); free(C); free(Hc);
  free(tg); free(tc); free(tq); free(tl); free(ti); free(tp); free(tch); free(tmm); free(tpr);
  return ok ? 0 : 1;
}
