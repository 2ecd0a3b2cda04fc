/* bench_gptq: single-layer GPTQ speed on the CPU backend against this machine's sgemm peak.
 *
 *   bench_gptq [--quick] [--json] [--reps N] [--tokens N] [--layer RxC]... [--dump DIR]
 *
 * One run: (1) OpenBLAS sgemm peak (n^3, best and median of several), then per layer
 * rows x cols (out x in; default 4096x4096, 11008x4096, 4096x11008; --quick 1024x1024 and
 * 2048x2048): (2) Hessian accumulation of `tokens` rows (hq_hessian_accumulate),
 * (3) the damped Cholesky inverse (be->chol_inverse_upper), (4) hq_gptq_quantize (4-bit asym,
 * act-order, group 128, block 128, want_stats = 0) with its phases measured by wrapping the
 * backend's op table (lazy-update GEMMs, fused inner block, grid parameters). Each timing is
 * the median of `reps` runs after a warm-up; then an untimed correctness check per phase.
 *
 * Flop counts (stated in the output):
 *   sgemm           2 n^3
 *   Hessian (syrk)  n^2 k  (the useful upper half: n(n+1)/2 dot products of length k, x2)
 *   Cholesky inv.   2/3 n^3 (potrf n^3/3 + trtri n^3/3 on the reversed matrix, see backend_cpu.c)
 *   lazy update     2 m n k of each GEMM the loop issues (sum ~ rows*cols^2)
 *   inner block     2 rows (count - i - 1) per column i (sum ~ rows*cols*B)
 * Target for the whole layer: t_gptq <= 1.5 x (t_chol + t_gemm(rows x cols x cols)), the
 * GEMM's time taken at the measured sgemm peak (2 rows cols^2 flops).
 *
 * --dump DIR writes, per layer, W (fp32 [rows x cols]), H (fp32 [cols x cols], finalized),
 * hpcq's codes (uint8 [rows x cols], original column order) and dequantized weights
 * (fp32 [rows x cols]) plus a JSON description, for bench/gptq_torch.py.
 *
 * Threads: OPENBLAS_NUM_THREADS and OMP_NUM_THREADS (the counts used are printed). With the
 * pthread OpenBLAS, set OMP_WAIT_POLICY=passive: spinning OpenMP workers otherwise steal the
 * cores from OpenBLAS's threads between the ops (see docs/readme/bench-gptq.md). */
#include <cblas.h>
#include <errno.h>
#include <lapacke.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend.h"
#include "error.h"
#include "gptq.h"
#include "hessian.h"
#include "quant.h"
#include "util.h"

#define MAXREPS 32
#define MAXLAYERS 8

/* ---------------------------------------------------------------- timing wrappers */
static const struct hq_backend *base_be;
static struct {
  double t_gemm, f_gemm;   /* lazy-update GEMMs */
  double t_block, f_block; /* fused inner block */
  double t_params;         /* grid parameters */
  double t_chol;           /* chol_inverse_upper inside gptq */
} acc;

static void w_gemm(int64_t row0, int64_t seg, int ta, int tb, int64_t m, int64_t n, int64_t k,
                   float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                   float beta, float *C, int64_t ldc) {
  double t0 = hq_now();
  base_be->gemm_rows(row0, seg, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  acc.t_gemm += hq_now() - t0;
  acc.f_gemm += 2.0 * (double)m * (double)n * (double)k;
}
static void w_block(struct hq_grid g, int64_t rows, int64_t count, int64_t c0, int64_t c1,
                    float *W1, int64_t ldw, const float *Hinv1, int64_t ldh, const float *scale,
                    const float *zero, const int32_t *cg, float *Err1, int64_t lde, uint8_t *codes, int64_t ldc,
                    double *loss_acc) {
  double t0 = hq_now();
  base_be->gptq_block(g, rows, count, c0, c1, W1, ldw, Hinv1, ldh, scale, zero, cg, Err1, lde, codes,
                      ldc, loss_acc);
  acc.t_block += hq_now() - t0;
  for (int64_t i = c0; i < c1; i++) acc.f_block += 2.0 * (double)rows * (double)(count - i - 1);
}
static void w_params(struct hq_grid g, int64_t rows, int64_t ncols, const float *W, int64_t ldw,
                     const float *colw, float *scale, float *zero) {
  double t0 = hq_now();
  base_be->quant_params(g, rows, ncols, W, ldw, colw, scale, zero);
  acc.t_params += hq_now() - t0;
}
static int w_chol(int64_t n, float *H, int64_t ldh) {
  double t0 = hq_now();
  int rc = base_be->chol_inverse_upper(n, H, ldh);
  acc.t_chol += hq_now() - t0;
  return rc;
}

/* ---------------------------------------------------------------- helpers */
static double vmin(const double *v, int n) {
  double m = v[0];
  for (int i = 1; i < n; i++) m = v[i] < m ? v[i] : m;
  return m;
}
static void *xalloc(size_t bytes) {
  void *p = NULL;
  if (posix_memalign(&p, 64, bytes ? bytes : 64)) HQ_DIE("out of memory (%zu bytes)", bytes);
  return p;
}

static int g_static = 0; /* --static-groups: GPTQ with static groups (and act-order) */

/* ---------------------------------------------------------------- sgemm peak */
struct peak { int64_t n; double best, med; int reps; };

static struct peak measure_peak(int64_t n, int reps) {
  float *A = xalloc((size_t)(n * n) * 4), *B = xalloc((size_t)(n * n) * 4),
        *C = xalloc((size_t)(n * n) * 4);
  struct hq_rng r;
  hq_rng_seed(&r, 1);
  for (int64_t i = 0; i < n * n; i++) {
    A[i] = (float)hq_rng_uniform(&r) - 0.5f;
    B[i] = (float)hq_rng_uniform(&r) - 0.5f;
  }
  double t[MAXREPS];
  /* the machine's peak: OpenBLAS's own threads (the CPU backend runs it on one thread and
   * threads its fixed-shape tiles itself, docs/readme/reproducibility.md) */
  openblas_set_num_threads(omp_get_max_threads());
  for (int k = -1; k < reps; k++) {
    double t0 = hq_now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)n, (blasint)n, (blasint)n,
                1.0f, A, (blasint)n, B, (blasint)n, 0.0f, C, (blasint)n);
    if (k >= 0) t[k] = hq_now() - t0;
  }
  openblas_set_num_threads(1);
  /* untimed check: one element against a double dot product */
  double ref = 0.0;
  for (int64_t k = 0; k < n; k++) ref += (double)A[5 * n + k] * (double)B[k * n + 7];
  if (fabs(ref - C[5 * n + 7]) > 1e-3 * (1.0 + fabs(ref)))
    HQ_DIE("sgemm check failed: %g vs %g", (double)C[5 * n + 7], ref);
  free(A);
  free(B);
  free(C);
  double f = 2.0 * (double)n * (double)n * (double)n;
  struct peak p = {n, f / vmin(t, reps) / 1e9, f / hq_median(t, reps) / 1e9, reps};
  return p;
}

/* ---------------------------------------------------------------- plain reference GPTQ */
struct perm_key { float d; int32_t i; };
/* The unblocked GPTQ of one (permuted) row w[cols] with the upper factor U [cols x cols]
 * (row-major) and groups of gs columns: dynamic (in processing order, params from the updated
 * row when a group starts) or, with `orig` (the unpermuted row) and `perm` (processing order
 * -> original column), static (params of the original column groups, taken up front). Codes
 * in processing order. Written independently of gptq.c. */
static void ref_gptq_row(struct hq_grid g, int64_t cols, int64_t gs, float *w, const float *U,
                         const float *orig, const struct perm_key *perm, uint8_t *codes) {
  float s = 1.0f, z = 0.0f;
  for (int64_t j = 0; j < cols; j++) {
    if (orig) {
      const int64_t c0 = (int64_t)perm[j].i / gs * gs, n = cols - c0 < gs ? cols - c0 : gs;
      hq_grid_params_ref(g, orig + c0, n, 1, &s, &z);
    } else if (j % gs == 0) {
      int64_t n = cols - j < gs ? cols - j : gs;
      hq_grid_params_ref(g, w + j, n, 1, &s, &z);
    }
    int c = hq_quant_code(w[j], s, z, g.maxq);
    float q = hq_dequant(c, s, z);
    float err = (w[j] - q) / U[j * cols + j];
    codes[j] = (uint8_t)c;
    w[j] = q;
    const float *u = U + j * cols;
    for (int64_t k = j + 1; k < cols; k++) w[k] -= err * u[k];
  }
}

static int perm_key_cmp(const void *a, const void *b) {
  const struct perm_key *x = a, *y = b;
  if (x->d != y->d) return x->d > y->d ? -1 : 1; /* descending diag */
  return x->i < y->i ? -1 : x->i > y->i;          /* stable */
}

/* ---------------------------------------------------------------- one layer */
struct layer_result {
  int64_t rows, cols, tokens;
  double t_hess, gf_hess;
  double t_chol, gf_chol;
  double t_gptq, t_gptq_chol, t_gptq_loop, t_gemm, gf_gemm, t_block, gf_block, t_params;
  double t_other; /* gptq wall - chol - gemm - block - params */
  double t_bound, ratio_bound;
  double hess_relerr, chol_resid, agree, loss_rel;
  int64_t check_rows;
  double damp_used;
};

static int write_file(const char *dir, const char *name, const void *p, size_t bytes) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f) return hq_fail(HQ_ERR_IO, "cannot write %s: %s", path, strerror(errno));
  size_t n = fwrite(p, 1, bytes, f);
  int bad = fclose(f) != 0 || n != bytes;
  return bad ? hq_fail(HQ_ERR_IO, "short write to %s", path) : HQ_OK;
}

static int bench_layer(int64_t rows, int64_t cols, int64_t ntok, int reps, const struct peak *pk,
                       const char *dump, int quiet, struct layer_result *L) {
  const struct hq_backend *be = hq_backend_cpu();
  memset(L, 0, sizeof *L);
  L->rows = rows, L->cols = cols, L->tokens = ntok;
  struct hq_rng r;
  hq_rng_seed(&r, 1234 + (uint64_t)rows * 7 + (uint64_t)cols);

  /* activations with uneven feature scales (so act-order matters), weights ~ N(0, 0.02^2) */
  float *X = xalloc((size_t)(ntok * cols) * 4);
  float *cs = xalloc((size_t)cols * 4);
  for (int64_t j = 0; j < cols; j++) cs[j] = (float)exp(0.7 * hq_rng_normal(&r));
  for (int64_t t = 0; t < ntok; t++)
    for (int64_t j = 0; j < cols; j++) X[t * cols + j] = cs[j] * (float)hq_rng_normal(&r);
  float *W0 = xalloc((size_t)(rows * cols) * 4);
  for (int64_t k = 0; k < rows * cols; k++) W0[k] = 0.02f * (float)hq_rng_normal(&r);

  /* (2) Hessian accumulation */
  struct hq_hessian hs;
  HQ_TRY(hq_hessian_init(&hs, be, cols, 1));
  double t[MAXREPS];
  for (int k = -1; k < reps; k++) {
    hq_hessian_reset(&hs);
    double t0 = hq_now();
    hq_hessian_accumulate(&hs, X, ntok, cols);
    be->sync();
    if (k >= 0) t[k] = hq_now() - t0;
  }
  L->t_hess = hq_median(t, reps);
  L->gf_hess = (double)cols * (double)cols * (double)ntok / L->t_hess / 1e9;
  float *H = NULL;
  HQ_TRY(hq_hessian_finalize(&hs, &H));
  /* check: 64 entries against double dot products, H = 2/N sum x x^T */
  double herr = 0.0;
  for (int q = 0; q < 64; q++) {
    int64_t i = (int64_t)hq_rng_below(&r, (uint64_t)cols), j = (int64_t)hq_rng_below(&r, (uint64_t)cols);
    if (q == 0) j = i;
    double s = 0.0, n2 = 0.0;
    for (int64_t tt = 0; tt < ntok; tt++) {
      s += (double)X[tt * cols + i] * (double)X[tt * cols + j];
      n2 += fabs((double)X[tt * cols + i] * (double)X[tt * cols + j]);
    }
    s *= 2.0 / (double)ntok;
    n2 *= 2.0 / (double)ntok;
    double e = fabs((double)H[i * cols + j] - s) / n2;
    herr = e > herr ? e : herr;
  }
  L->hess_relerr = herr;
  free(X);

  /* (3) damped Cholesky inverse (standalone) */
  const float percdamp = 0.01f;
  double mean = 0.0;
  for (int64_t i = 0; i < cols; i++) mean += H[i * cols + i];
  mean /= (double)cols;
  float *Hd = xalloc((size_t)(cols * cols) * 4), *U = xalloc((size_t)(cols * cols) * 4);
  memcpy(Hd, H, (size_t)(cols * cols) * 4);
  for (int64_t i = 0; i < cols; i++) Hd[i * cols + i] += (float)(percdamp * mean);
  for (int k = -1; k < reps; k++) {
    memcpy(U, Hd, (size_t)(cols * cols) * 4);
    double t0 = hq_now();
    int info = be->chol_inverse_upper(cols, U, cols);
    be->sync();
    if (k >= 0) t[k] = hq_now() - t0;
    if (info) return hq_fail(HQ_ERR_NUMERIC, "benchmark Hessian not positive definite (%d)", info);
  }
  L->t_chol = hq_median(t, reps);
  L->gf_chol = 2.0 / 3.0 * (double)cols * (double)cols * (double)cols / L->t_chol / 1e9;
  /* check: U^T U Hd e_j = e_j for 4 columns */
  {
    double res = 0.0;
    double *v = xalloc((size_t)cols * 8), *y = xalloc((size_t)cols * 8);
    for (int q = 0; q < 4; q++) {
      int64_t j = (int64_t)hq_rng_below(&r, (uint64_t)cols);
      for (int64_t i = 0; i < cols; i++) v[i] = Hd[i * cols + j];
      for (int64_t i = 0; i < cols; i++) { /* y = U v */
        double s = 0.0;
        for (int64_t k = i; k < cols; k++) s += (double)U[i * cols + k] * v[k];
        y[i] = s;
      }
      for (int64_t k = 0; k < cols; k++) v[k] = 0.0; /* v = U^T y */
      for (int64_t i = 0; i < cols; i++)
        for (int64_t k = i; k < cols; k++) v[k] += (double)U[i * cols + k] * y[i];
      for (int64_t i = 0; i < cols; i++) {
        double e = fabs(v[i] - (i == j ? 1.0 : 0.0));
        res = e > res ? e : res;
      }
    }
    L->chol_resid = res;
    free(v);
    free(y);
  }
  free(Hd);
  free(U);

  /* (4) GPTQ: 4-bit asym, act-order, g128, block 128, no stats */
  struct hq_backend tb = *be;
  base_be = be;
  tb.gemm_rows = w_gemm;
  tb.gptq_block = w_block;
  tb.quant_params = w_params;
  tb.chol_inverse_upper = w_chol;
  struct hq_gptq_opts o = hq_gptq_opts_default();
  o.bits = 4;
  o.group_size = 128;
  o.act_order = 1;
  o.static_groups = g_static;
  o.percdamp = percdamp;
  float *W = xalloc((size_t)(rows * cols) * 4);
  struct hq_gptq_result res;
  memset(&res, 0, sizeof res);
  double tw[MAXREPS], tc[MAXREPS], tl[MAXREPS], tg[MAXREPS], tbk[MAXREPS], tp[MAXREPS],
      fg = 0, fb = 0;
  for (int k = -1; k < reps; k++) {
    memcpy(W, W0, (size_t)(rows * cols) * 4);
    memset(&acc, 0, sizeof acc);
    if (k >= 0) hq_gptq_result_free(&res);
    double t0 = hq_now();
    int rc = hq_gptq_quantize(&tb, &o, rows, cols, W, H, 0, &res);
    double tt = hq_now() - t0;
    if (rc != HQ_OK) return rc;
    if (k < 0) {
      hq_gptq_result_free(&res);
      continue;
    }
    tw[k] = tt;
    tc[k] = res.t_chol;
    tl[k] = res.t_quant;
    tg[k] = acc.t_gemm;
    tbk[k] = acc.t_block;
    tp[k] = acc.t_params;
    fg = acc.f_gemm;
    fb = acc.f_block;
  }
  L->t_gptq = hq_median(tw, reps);
  L->t_gptq_chol = hq_median(tc, reps);
  L->t_gptq_loop = hq_median(tl, reps);
  L->t_gemm = hq_median(tg, reps);
  L->gf_gemm = fg / L->t_gemm / 1e9;
  L->t_block = hq_median(tbk, reps);
  L->gf_block = fb / L->t_block / 1e9;
  L->t_params = hq_median(tp, reps);
  L->t_other = L->t_gptq - L->t_gptq_chol - L->t_gemm - L->t_block - L->t_params;
  L->damp_used = res.damp_used;
  L->t_bound = L->t_chol + 2.0 * (double)rows * (double)cols * (double)cols / (pk->best * 1e9);
  L->ratio_bound = L->t_gptq / L->t_bound;

  /* untimed check: the plain unblocked GPTQ on a sample of rows must give the same codes.
   * Same damping, act-order permutation (descending diag, stable), Hinv from LAPACK. */
  {
    int64_t nchk = cols > 8192 ? 16 : 32;
    nchk = rows < nchk ? rows : nchk;
    L->check_rows = nchk;
    struct perm_key *keys = xalloc((size_t)cols * sizeof *keys);
    for (int64_t j = 0; j < cols; j++) keys[j].d = H[j * cols + j], keys[j].i = (int32_t)j;
    qsort(keys, (size_t)cols, sizeof *keys, perm_key_cmp);
    float *Up = xalloc((size_t)(cols * cols) * 4);
    for (int64_t i = 0; i < cols; i++)
      for (int64_t j = 0; j < cols; j++)
        Up[i * cols + j] = H[(int64_t)keys[i].i * cols + keys[j].i];
    float damp = (float)(res.damp_used * mean);
    for (int64_t i = 0; i < cols; i++) Up[i * cols + i] += damp;
    /* row-major upper of H^-1's factor == column-major lower */
    lapack_int info = LAPACKE_spotrf(LAPACK_COL_MAJOR, 'L', (lapack_int)cols, Up, (lapack_int)cols);
    if (!info) info = LAPACKE_spotri(LAPACK_COL_MAJOR, 'L', (lapack_int)cols, Up, (lapack_int)cols);
    if (!info) info = LAPACKE_spotrf(LAPACK_COL_MAJOR, 'L', (lapack_int)cols, Up, (lapack_int)cols);
    if (info) return hq_fail(HQ_ERR_NUMERIC, "reference Cholesky failed (%d)", (int)info);
    float *w = xalloc((size_t)cols * 4);
    uint8_t *c = xalloc((size_t)cols);
    int64_t same = 0;
    struct hq_grid g = hq_grid_make(o.bits, o.sym, o.mse);
    double lref = 0, lhq = 0; /* proxy loss of the sample rows, tr(D H D^T) */
    float *dq = xalloc((size_t)cols * 4);
    for (int64_t q = 0; q < nchk; q++) {
      int64_t row = q * (rows / nchk);
      for (int64_t j = 0; j < cols; j++) w[j] = W0[row * cols + keys[j].i];
      ref_gptq_row(g, cols, o.group_size, w, Up, o.static_groups ? W0 + row * cols : NULL, keys, c);
      for (int64_t j = 0; j < cols; j++) same += c[j] == res.codes[row * cols + keys[j].i];
      for (int pass = 0; pass < 2; pass++) {
        for (int64_t j = 0; j < cols; j++)
          dq[keys[j].i] = W0[row * cols + keys[j].i] - (pass ? W[row * cols + keys[j].i] : w[j]);
        double s = 0.0;
        for (int64_t i = 0; i < cols; i++) {
          double hi = 0.0;
          for (int64_t j = 0; j < cols; j++) hi += (double)H[i * cols + j] * dq[j];
          s += hi * dq[i];
        }
        if (pass) lhq += s; else lref += s;
      }
    }
    L->agree = (double)same / (double)(nchk * cols);
    L->loss_rel = lhq / lref;
    free(keys);
    free(Up);
    free(w);
    free(c);
    free(dq);
  }

  if (dump) {
    char name[256], base[64];
    snprintf(base, sizeof base, "gptq_%lldx%lld", (long long)rows, (long long)cols);
    snprintf(name, sizeof name, "%s_W.f32", base);
    HQ_TRY(write_file(dump, name, W0, (size_t)(rows * cols) * 4));
    snprintf(name, sizeof name, "%s_H.f32", base);
    HQ_TRY(write_file(dump, name, H, (size_t)(cols * cols) * 4));
    snprintf(name, sizeof name, "%s_codes.u8", base);
    HQ_TRY(write_file(dump, name, res.codes, (size_t)(rows * cols)));
    snprintf(name, sizeof name, "%s_Wq.f32", base);
    HQ_TRY(write_file(dump, name, W, (size_t)(rows * cols) * 4));
    char js[2048];
    int n = snprintf(js, sizeof js,
                     "{\"rows\": %lld, \"cols\": %lld, \"bits\": %d, \"group_size\": %lld, "
                     "\"act_order\": %d, \"sym\": %d, \"percdamp\": %g, \"block_size\": %d, "
                     "\"static_groups\": %d, \"tokens\": %lld, \"threads\": %d, "
                     "\"hpcq_t_gptq_s\": %.6f, \"hpcq_t_chol_s\": %.6f, \"hpcq_t_loop_s\": %.6f, "
                     "\"reps\": %d}\n",
                     (long long)rows, (long long)cols, o.bits, (long long)o.group_size,
                     o.act_order, o.sym, (double)o.percdamp, o.block_size, o.static_groups, (long long)ntok,
                     omp_get_max_threads(), L->t_gptq, L->t_gptq_chol, L->t_gptq_loop, reps);
    snprintf(name, sizeof name, "%s.json", base);
    HQ_TRY(write_file(dump, name, js, (size_t)n));
    if (!quiet) fprintf(stderr, "dumped %s/%s_*\n", dump, base);
  }
  hq_gptq_result_free(&res);
  free(W);
  free(W0);
  free(H);
  free(cs);
  return HQ_OK;
}

/* ---------------------------------------------------------------- main */
static void usage(void) {
  fprintf(stderr,
          "usage: bench_gptq [--quick] [--json] [--reps N] [--tokens N] [--peak-n N]\n"
          "                  [--layer ROWSxCOLS]... [--dump DIR] [--static-groups]\n"
          "  default layers 4096x4096 11008x4096 4096x11008 (rows x cols = out x in);\n"
          "  --quick: 1024x1024 2048x2048, sgemm peak at n=2048.\n"
          "  threads: OPENBLAS_NUM_THREADS / OMP_NUM_THREADS (and OMP_WAIT_POLICY=passive).\n");
}

int main(int argc, char **argv) {
  int quick = 0, json = 0, reps = 0, nl = 0;
  int64_t ntok = 4096, peak_n = 0, lr[MAXLAYERS], lc[MAXLAYERS];
  const char *dump = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--quick")) quick = 1;
    else if (!strcmp(a, "--json")) json = 1;
    else if (!strcmp(a, "--static-groups")) g_static = 1;
    else if (!strcmp(a, "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(a, "--tokens") && i + 1 < argc) ntok = atoll(argv[++i]);
    else if (!strcmp(a, "--peak-n") && i + 1 < argc) peak_n = atoll(argv[++i]);
    else if (!strcmp(a, "--dump") && i + 1 < argc) dump = argv[++i];
    else if (!strcmp(a, "--layer") && i + 1 < argc && nl < MAXLAYERS) {
      long long rr, cc;
      if (sscanf(argv[++i], "%lldx%lld", &rr, &cc) != 2 || rr < 1 || cc < 1) {
        usage();
        return 2;
      }
      lr[nl] = rr, lc[nl] = cc, nl++;
    } else {
      usage();
      return strcmp(a, "--help") && strcmp(a, "-h") ? 2 : 0;
    }
  }
  if (reps <= 0) reps = quick ? 5 : 3;
  if (reps > MAXREPS) reps = MAXREPS;
  if (ntok < 1) ntok = 4096;
  if (nl == 0) {
    if (quick) {
      lr[0] = 1024, lc[0] = 1024, lr[1] = 2048, lc[1] = 2048, nl = 2;
    } else {
      lr[0] = 4096, lc[0] = 4096, lr[1] = 11008, lc[1] = 4096, lr[2] = 4096, lc[2] = 11008;
      nl = 3;
    }
  }
  if (peak_n <= 0) peak_n = quick ? 2048 : 4096;
  if (dump && mkdir(dump, 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "bench_gptq: cannot create %s: %s\n", dump, strerror(errno));
    return 1;
  }

  int omp = omp_get_max_threads(), blas = openblas_get_num_threads();
  const char *wp = getenv("OMP_WAIT_POLICY");
  if (!json)
    printf("bench_gptq: OpenMP threads %d (OMP_WAIT_POLICY=%s), OpenBLAS threads %d (%s); "
           "median of %d runs after a warm-up\n",
           omp, wp ? wp : "unset", blas, openblas_get_config(), reps);
  struct peak pk = measure_peak(peak_n, reps < 3 ? 3 : reps);
  if (!json)
    printf("sgemm peak (n=%lld, 2n^3 flops): best %.1f GFLOP/s, median %.1f GFLOP/s; ratios "
           "below are to the best\n\n", (long long)pk.n, pk.best, pk.med);

  struct layer_result R[MAXLAYERS];
  for (int l = 0; l < nl; l++) {
    int rc = bench_layer(lr[l], lc[l], ntok, reps, &pk, dump, json, &R[l]);
    if (rc != HQ_OK) {
      fprintf(stderr, "bench_gptq: layer %lldx%lld: %s: %s\n", (long long)lr[l],
              (long long)lc[l], hq_status_name(rc), hq_last_error());
      return 1;
    }
    if (!json) {
      struct layer_result *L = &R[l];
      printf("layer %lld x %lld (rows x cols), 4-bit asym, act-order, g128, block 128, "
             "%lld tokens\n", (long long)L->rows, (long long)L->cols, (long long)L->tokens);
      printf("  %-28s %10s %10s %8s\n", "phase", "seconds", "GFLOP/s", "of peak");
      printf("  %-28s %10.4f %10.1f %7.1f%%   (target >= 80%%)\n", "Hessian syrk (n^2 k)",
             L->t_hess, L->gf_hess, 100 * L->gf_hess / pk.best);
      printf("  %-28s %10.4f %10.1f %7.1f%%\n", "Cholesky inverse (2/3 n^3)", L->t_chol,
             L->gf_chol, 100 * L->gf_chol / pk.best);
      printf("  %-28s %10.4f\n", "GPTQ total (want_stats=0)", L->t_gptq);
      printf("  %-28s %10.4f\n", "  of which Cholesky", L->t_gptq_chol);
      printf("  %-28s %10.4f %10.1f %7.1f%%   (target >= 60%%)\n", "  lazy-update GEMMs",
             L->t_gemm, L->gf_gemm, 100 * L->gf_gemm / pk.best);
      printf("  %-28s %10.4f %10.1f %7.1f%%\n", "  inner blocks", L->t_block, L->gf_block,
             100 * L->gf_block / pk.best);
      printf("  %-28s %10.4f\n", "  grid parameters", L->t_params);
      printf("  %-28s %10.4f\n", "  other (permute, copies)", L->t_other);
      printf("  bound chol + 2*rows*cols^2 @ peak = %.4f s; GPTQ / bound = %.2f (target <= 1.5)\n",
             L->t_bound, L->ratio_bound);
      printf("  check: Hessian max rel err %.2e; |U'U H e_j - e_j| %.2e; codes vs plain GPTQ "
             "on %lld rows: %.4f%% agree, proxy-loss ratio %.4f\n\n",
             L->hess_relerr, L->chol_resid, (long long)L->check_rows, 100 * L->agree,
             L->loss_rel);
    }
  }
  if (json) {
    printf("{\"bench\": \"gptq\", \"omp_threads\": %d, \"omp_wait_policy\": \"%s\", "
           "\"openblas_threads\": %d, \"reps\": %d,\n"
           " \"sgemm\": {\"n\": %lld, \"best_gflops\": %.2f, \"median_gflops\": %.2f},\n"
           " \"layers\": [\n",
           omp, wp ? wp : "unset", blas, reps, (long long)pk.n, pk.best, pk.med);
    for (int l = 0; l < nl; l++) {
      struct layer_result *L = &R[l];
      printf("  {\"rows\": %lld, \"cols\": %lld, \"tokens\": %lld, \"bits\": 4, \"group_size\": 128, "
             "\"act_order\": 1,\n"
             "   \"hessian_s\": %.6f, \"hessian_gflops\": %.2f, \"hessian_frac_peak\": %.4f,\n"
             "   \"chol_s\": %.6f, \"chol_gflops\": %.2f, \"chol_frac_peak\": %.4f,\n"
             "   \"gptq_s\": %.6f, \"gptq_chol_s\": %.6f, \"gptq_loop_s\": %.6f,\n"
             "   \"lazy_gemm_s\": %.6f, \"lazy_gemm_gflops\": %.2f, \"lazy_gemm_frac_peak\": %.4f,\n"
             "   \"inner_block_s\": %.6f, \"inner_block_gflops\": %.2f, \"params_s\": %.6f, "
             "\"other_s\": %.6f,\n"
             "   \"bound_s\": %.6f, \"gptq_over_bound\": %.4f,\n"
             "   \"check\": {\"hessian_max_rel_err\": %.3e, \"chol_residual\": %.3e, "
             "\"rows\": %lld, \"code_agreement\": %.6f, \"proxy_loss_ratio\": %.6f}}%s\n",
             (long long)L->rows, (long long)L->cols, (long long)L->tokens, L->t_hess, L->gf_hess,
             L->gf_hess / pk.best, L->t_chol, L->gf_chol, L->gf_chol / pk.best, L->t_gptq,
             L->t_gptq_chol, L->t_gptq_loop, L->t_gemm, L->gf_gemm, L->gf_gemm / pk.best,
             L->t_block, L->gf_block, L->t_params, L->t_other, L->t_bound, L->ratio_bound,
             L->hess_relerr, L->chol_resid, (long long)L->check_rows, L->agree, L->loss_rel,
             l + 1 < nl ? "," : "");
    }
    printf(" ]}\n");
  }
  return 0;
}
