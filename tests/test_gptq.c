/* Blocked GPTQ (src/quant/gptq.c + the CPU backend's fused inner block) against a PLAINLY written
 * unblocked reference: the textbook GPTQ/OBQ column loop in doubles, with the inverse
 * Hessian inv(H + damp I) computed by Gauss-Jordan and downdated by the Schur complement
 * after every column — no Cholesky, no blocking, no lazy updates, no LAPACK.
 *
 * Every combination of act-order x {per-channel, g32, g48 (last group partial)} x static
 * groups x sym x block size {128, 20 (groups straddle block ends), 16} must give the same
 * codes, scales and zeros. A row may differ only where its FIRST difference (in processing
 * order) is explained by a near tie in the reference: a weight within EPS of a rounding
 * boundary (w/scale at k + 1/2), or a group's raw scale within EPS of an fp16 rounding
 * midpoint / its asymmetric zero within EPS of k + 1/2. Anything else fails.
 *
 * Also checked: the stored codes/scales/zeros/g_idx dequantize bit-exactly to the returned
 * W; loss_ref matches the reference's Σ (w-q)²/Hinv_jj/2; loss_proxy and loss_proxy_rtn match
 * a plain double tr(ΔW H ΔWᵀ) (RTN written plainly here too); RTN codes match. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "gptq.h"
#include "quant.h"
#include "testutil.h"
#include "util.h"

#define CODE_EPS 2e-3  /* |frac(w/s) - 1/2| below this: a rounding tie at fp32 vs fp64 noise */
#define PARAM_EPS 5e-3 /* distance of a raw scale to an fp16 rounding midpoint, in fp16 ulps;
                          also |frac(-xmin/scale) - 1/2| of an asymmetric zero */

/* ---------------------------------------------------------------- plain reference */

struct ref_out {
  uint8_t *codes;   /* [rows x cols], original column order */
  float *W;         /* [rows x cols] dequantized, original order */
  float *scales;    /* [rows x ngroups] */
  float *zeros;     /* [rows x ngroups] */
  int32_t *g_idx;   /* [cols] */
  int32_t *perm;    /* [cols] processing order */
  double *cdist;    /* [rows x cols] by PROCESSING index: |frac(w/s) - 1/2| */
  double *ptie;     /* [rows x ngroups]: tie closeness of the group's params (small = tie) */
  double loss_ref;
};

/* Grid parameters of n values (the published GPTQ grid, written out), plus how close the raw
 * values were to a rounding tie (fp16 midpoint of the scale, half-integer of the zero). */
static void ref_params(struct hq_grid g, const double *w, int64_t n, int64_t stride, float *s,
                       float *z, double *tie) {
  float xmin = 0.0f, xmax = 0.0f;
  for (int64_t i = 0; i < n; i++) {
    float v = (float)w[i * stride];
    if (v < xmin) xmin = v;
    if (v > xmax) xmax = v;
  }
  if (g.sym) {
    float a = fabsf(xmin) > xmax ? fabsf(xmin) : xmax;
    xmin = -a;
    xmax = a;
  }
  if (xmin == 0.0f && xmax == 0.0f) {
    xmin = -1.0f;
    xmax = 1.0f;
  }
  double raw = ((double)xmax - (double)xmin) / g.maxq;
  float sc = hq_scale_fp16((xmax - xmin) / (float)g.maxq);
  /* distance of raw to the nearest fp16 midpoint, relative */
  double t = INFINITY;
  {
    uint16_t h = hq_f32_to_f16((float)raw);
    double lo = hq_f16_to_f32((uint16_t)(h - 1)), mid = hq_f16_to_f32(h),
           hi = hq_f16_to_f32((uint16_t)(h + 1));
    double m1 = 0.5 * (lo + mid), m2 = 0.5 * (mid + hi);
    double d1 = fabs(raw - m1) / (mid - lo), d2 = fabs(raw - m2) / (hi - mid);
    t = d1 < d2 ? d1 : d2;
  }
  float zz;
  if (g.sym) {
    zz = (float)((g.maxq + 1) / 2);
  } else {
    double v = -(double)xmin / sc;
    double dz = fabs(v - floor(v) - 0.5);
    if (dz < t) t = dz;
    zz = rintf(-xmin / sc);
    if (zz < 0) zz = 0;
    if (zz > g.maxq) zz = (float)g.maxq;
  }
  *s = sc;
  *z = zz;
  *tie = t;
}

/* In-place Gauss-Jordan inverse with partial pivoting (doubles). Returns 0 on success. */
static int ref_inverse(double *A, int64_t n) {
  double *I = calloc((size_t)(n * n), sizeof(double));
  for (int64_t i = 0; i < n; i++) I[i * n + i] = 1.0;
  for (int64_t c = 0; c < n; c++) {
    int64_t p = c;
    for (int64_t r = c + 1; r < n; r++)
      if (fabs(A[r * n + c]) > fabs(A[p * n + c])) p = r;
    if (A[p * n + c] == 0.0) {
      free(I);
      return 1;
    }
    if (p != c)
      for (int64_t k = 0; k < n; k++) {
        double t = A[c * n + k];
        A[c * n + k] = A[p * n + k];
        A[p * n + k] = t;
        t = I[c * n + k];
        I[c * n + k] = I[p * n + k];
        I[p * n + k] = t;
      }
    double d = A[c * n + c];
    for (int64_t k = 0; k < n; k++) {
      A[c * n + k] /= d;
      I[c * n + k] /= d;
    }
    for (int64_t r = 0; r < n; r++) {
      if (r == c) continue;
      double f = A[r * n + c];
      if (f == 0.0) continue;
      for (int64_t k = 0; k < n; k++) {
        A[r * n + k] -= f * A[c * n + k];
        I[r * n + k] -= f * I[c * n + k];
      }
    }
  }
  memcpy(A, I, sizeof(double) * (size_t)(n * n));
  free(I);
  return 0;
}

static void ref_gptq(const struct hq_gptq_opts *o, int64_t rows, int64_t cols, const float *W_in,
                     const float *H_in, struct ref_out *out) {
  const struct hq_grid g = hq_grid_make(o->bits, o->sym, o->mse);
  const int64_t gs = o->group_size > 0 ? o->group_size : 0;
  const int64_t ng = gs ? (cols + gs - 1) / gs : 1;
  double *W = malloc(sizeof(double) * (size_t)(rows * cols));
  double *H = malloc(sizeof(double) * (size_t)(cols * cols));
  for (int64_t k = 0; k < rows * cols; k++) W[k] = W_in[k];
  for (int64_t k = 0; k < cols * cols; k++) H[k] = H_in[k];
  out->codes = calloc((size_t)(rows * cols), 1);
  out->W = calloc((size_t)(rows * cols), sizeof(float));
  out->scales = calloc((size_t)(rows * ng), sizeof(float));
  out->zeros = calloc((size_t)(rows * ng), sizeof(float));
  out->g_idx = calloc((size_t)cols, sizeof(int32_t));
  out->perm = calloc((size_t)cols, sizeof(int32_t));
  out->cdist = calloc((size_t)(rows * cols), sizeof(double));
  out->ptie = calloc((size_t)(rows * ng), sizeof(double));
  float *cs = calloc((size_t)rows, sizeof(float)), *cz = calloc((size_t)rows, sizeof(float));

  /* per-channel params from W as given */
  if (!gs)
    for (int64_t r = 0; r < rows; r++)
      ref_params(g, W + r * cols, cols, 1, &out->scales[r], &out->zeros[r], &out->ptie[r]);
  /* dead columns */
  for (int64_t i = 0; i < cols; i++)
    if (H[i * cols + i] == 0.0) {
      H[i * cols + i] = 1.0;
      for (int64_t r = 0; r < rows; r++) W[r * cols + i] = 0.0;
    }
  /* static groups */
  if (gs && o->static_groups)
    for (int64_t r = 0; r < rows; r++)
      for (int64_t k = 0; k < ng; k++) {
        int64_t n = cols - k * gs < gs ? cols - k * gs : gs;
        ref_params(g, W + r * cols + k * gs, n, 1, &out->scales[r * ng + k],
                   &out->zeros[r * ng + k], &out->ptie[r * ng + k]);
      }
  /* processing order: selection of the largest remaining diagonal, ties by lower index */
  int32_t *perm = out->perm;
  char *used = calloc((size_t)cols, 1);
  for (int64_t j = 0; j < cols; j++) {
    int64_t best = -1;
    for (int64_t i = 0; i < cols; i++) {
      if (used[i]) continue;
      if (!o->act_order) {
        best = i;
        break;
      }
      if (best < 0 || H[i * cols + i] > H[best * cols + best]) best = i;
    }
    used[best] = 1;
    perm[j] = (int32_t)best;
  }
  free(used);
  /* Hinv = inv(H_perm + damp I) */
  double mean = 0.0;
  for (int64_t i = 0; i < cols; i++) mean += H[i * cols + i];
  mean /= (double)cols;
  double damp = (double)(float)((double)o->percdamp * mean);
  double *Hi = malloc(sizeof(double) * (size_t)(cols * cols));
  for (int64_t a = 0; a < cols; a++)
    for (int64_t b = 0; b < cols; b++)
      Hi[a * cols + b] = H[(int64_t)perm[a] * cols + perm[b]] + (a == b ? damp : 0.0);
  if (ref_inverse(Hi, cols)) HQ_DIE("reference: singular H");
  /* the column loop, in processing order, on permuted copies */
  double *Wp = malloc(sizeof(double) * (size_t)(rows * cols));
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < cols; j++) Wp[r * cols + j] = W[r * cols + perm[j]];
  double loss = 0.0;
  for (int64_t j = 0; j < cols; j++) {
    const int64_t c = perm[j];
    for (int64_t r = 0; r < rows; r++) {
      float s, z;
      if (!gs) {
        s = out->scales[r];
        z = out->zeros[r];
      } else if (o->static_groups) {
        s = out->scales[r * ng + c / gs];
        z = out->zeros[r * ng + c / gs];
      } else {
        int64_t k = j / gs;
        if (j % gs == 0) {
          int64_t n = cols - j < gs ? cols - j : gs;
          ref_params(g, Wp + r * cols + j, n, 1, &out->scales[r * ng + k], &out->zeros[r * ng + k],
                     &out->ptie[r * ng + k]);
        }
        s = out->scales[r * ng + k];
        z = out->zeros[r * ng + k];
      }
      float x = (float)Wp[r * cols + j];
      int code = hq_quant_code(x, s, z, g.maxq);
      float q = hq_dequant(code, s, z);
      double v = (double)x / (double)s;
      out->cdist[r * cols + j] = fabs(v - floor(v) - 0.5);
      double hjj = Hi[j * cols + j];
      double dq = (double)x - (double)q;
      double err = dq / hjj;
      loss += dq * dq / hjj / 2.0;
      for (int64_t k = j + 1; k < cols; k++) Wp[r * cols + k] -= err * Hi[j * cols + k];
      Wp[r * cols + j] = q;
      out->codes[r * cols + c] = (uint8_t)code;
      out->W[r * cols + c] = q;
    }
    /* remove j from the inverse: Schur complement downdate of the remaining block */
    double hjj = Hi[j * cols + j];
    for (int64_t a = j + 1; a < cols; a++) {
      double f = Hi[a * cols + j] / hjj;
      if (f == 0.0) continue;
      for (int64_t b = j + 1; b < cols; b++) Hi[a * cols + b] -= f * Hi[j * cols + b];
    }
  }
  for (int64_t jj = 0; jj < cols; jj++)
    out->g_idx[perm[jj]] = (int32_t)(!gs ? 0 : o->static_groups ? perm[jj] / gs : jj / gs);
  out->loss_ref = loss;
  free(W);
  free(H);
  free(Hi);
  free(Wp);
  free(cs);
  free(cz);
}

static void ref_free(struct ref_out *r) {
  free(r->codes);
  free(r->W);
  free(r->scales);
  free(r->zeros);
  free(r->g_idx);
  free(r->perm);
  free(r->cdist);
  free(r->ptie);
}

/* plain RTN with contiguous groups of the original columns */
static void ref_rtn(const struct hq_gptq_opts *o, int64_t rows, int64_t cols, const float *W_in,
                    float *Wq, uint8_t *codes) {
  const struct hq_grid g = hq_grid_make(o->bits, o->sym, o->mse);
  const int64_t gs = o->group_size > 0 ? o->group_size : cols;
  double *row = malloc(sizeof(double) * (size_t)cols);
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t c = 0; c < cols; c++) row[c] = W_in[r * cols + c];
    for (int64_t c0 = 0; c0 < cols; c0 += gs) {
      int64_t n = cols - c0 < gs ? cols - c0 : gs;
      float s, z;
      double t;
      ref_params(g, row + c0, n, 1, &s, &z, &t);
      for (int64_t c = c0; c < c0 + n; c++) {
        int code = hq_quant_code((float)row[c], s, z, g.maxq);
        codes[r * cols + c] = (uint8_t)code;
        Wq[r * cols + c] = hq_dequant(code, s, z);
      }
    }
  }
  free(row);
}

static double ref_proxy(int64_t rows, int64_t cols, const float *W0, const float *Wq,
                        const float *H) {
  double tot = 0.0;
  double *d = malloc(sizeof(double) * (size_t)cols);
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t c = 0; c < cols; c++) d[c] = (double)W0[r * cols + c] - (double)Wq[r * cols + c];
    for (int64_t a = 0; a < cols; a++) {
      double acc = 0.0;
      for (int64_t b = 0; b < cols; b++) acc += (double)H[a * cols + b] * d[b];
      tot += d[a] * acc;
    }
  }
  free(d);
  return tot;
}

/* ---------------------------------------------------------------- problems */

/* Well-conditioned H = 2/n XᵀX with Gaussian X (n = 4 cols tokens), columns scaled by
 * 0.5..2 so act-order has a non-trivial order; `dead` columns zeroed in X. */
static void make_problem(int64_t rows, int64_t cols, uint64_t seed, int ndead, float *W, float *H) {
  int64_t n = 4 * cols;
  float *X = malloc(sizeof(float) * (size_t)(n * cols));
  hq_t_randn(X, n * cols, seed, 1.0f);
  struct hq_rng rng;
  hq_rng_seed(&rng, seed + 7);
  for (int64_t c = 0; c < cols; c++) {
    float f = 0.5f + 1.5f * (float)hq_rng_uniform(&rng);
    int dead = c % 37 == 5 && c / 37 < ndead;
    for (int64_t t = 0; t < n; t++) X[t * cols + c] = dead ? 0.0f : X[t * cols + c] * f;
  }
  for (int64_t a = 0; a < cols; a++)
    for (int64_t b = a; b < cols; b++) {
      double acc = 0.0;
      for (int64_t t = 0; t < n; t++) acc += (double)X[t * cols + a] * X[t * cols + b];
      H[a * cols + b] = H[b * cols + a] = (float)(2.0 * acc / (double)n);
    }
  hq_t_randn(W, rows * cols, seed + 99, 0.05f);
  free(X);
}

struct cmp_stats {
  int64_t rows_diff, unexplained, rows_total;
};

/* Compare one run with the reference; returns the number of rows that differ. */
static void compare(const char *tag, const struct hq_gptq_opts *o, int64_t rows, int64_t cols,
                    const struct hq_gptq_result *res, const float *Wout, const struct ref_out *ref,
                    struct cmp_stats *st) {
  const int64_t gs = o->group_size > 0 ? o->group_size : 0;
  const int64_t ng = gs ? (cols + gs - 1) / gs : 1;
  int perm_ok = 1, gidx_ok = 1;
  for (int64_t j = 0; j < cols; j++) {
    perm_ok &= res->perm[j] == ref->perm[j];
    gidx_ok &= res->g_idx[j] == ref->g_idx[j];
  }
  CHECK(perm_ok, "%s: permutation differs", tag);
  CHECK(gidx_ok, "%s: g_idx differs", tag);
  CHECK(res->ngroups == ng, "%s: ngroups %lld", tag, (long long)res->ngroups);
  /* stored codes/scales/zeros dequantize bit-exactly to the returned W; scales fp16 */
  int64_t bad_deq = 0, bad_f16 = 0;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) {
      int64_t k = r * ng + res->g_idx[c];
      float v = hq_dequant(res->codes[r * cols + c], res->scales[k], res->zeros[k]);
      bad_deq += hq_f32_bits(v) != hq_f32_bits(Wout[r * cols + c]);
      bad_f16 += hq_fp16_round(res->scales[k]) != res->scales[k];
    }
  CHECK(bad_deq == 0, "%s: %lld weights do not dequantize to the returned W", tag, (long long)bad_deq);
  CHECK(bad_f16 == 0, "%s: %lld scales are not fp16 values", tag, (long long)bad_f16);

  for (int64_t r = 0; r < rows; r++) {
    int64_t first = -1;
    int explained = 0;
    for (int64_t j = 0; j < cols && first < 0; j++) {
      int64_t c = ref->perm[j];
      int64_t k = gs ? (o->static_groups ? c / gs : j / gs) : 0;
      int group_start = !gs ? j == 0 : o->static_groups ? j == 0 : j % gs == 0;
      if (group_start || (o->static_groups && gs)) {
        /* parameters in force at column j */
        if (res->scales[r * ng + k] != ref->scales[r * ng + k] ||
            res->zeros[r * ng + k] != ref->zeros[r * ng + k]) {
          first = j;
          explained = ref->ptie[r * ng + k] < PARAM_EPS;
          if (!explained)
            fprintf(stderr, "%s: row %lld group %lld params %.9g/%g vs ref %.9g/%g (tie %.3g)\n",
                    tag, (long long)r, (long long)k, res->scales[r * ng + k],
                    res->zeros[r * ng + k], ref->scales[r * ng + k], ref->zeros[r * ng + k],
                    ref->ptie[r * ng + k]);
          break;
        }
      }
      if (res->codes[r * cols + c] != ref->codes[r * cols + c]) {
        first = j;
        explained = ref->cdist[r * cols + j] < CODE_EPS;
        if (!explained)
          fprintf(stderr, "%s: row %lld col %lld (step %lld) code %d vs ref %d, ref boundary "
                  "distance %.3g\n", tag, (long long)r, (long long)c, (long long)j,
                  res->codes[r * cols + c], ref->codes[r * cols + c], ref->cdist[r * cols + j]);
      }
    }
    if (first >= 0) {
      st->rows_diff++;
      st->unexplained += !explained;
    } else {
      /* identical codes and params: identical dequantized weights */
      int64_t bad = 0;
      for (int64_t c = 0; c < cols; c++)
        bad += hq_f32_bits(Wout[r * cols + c]) != hq_f32_bits(ref->W[r * cols + c]);
      if (bad) st->unexplained++;
    }
  }
}

static void run_combo(int64_t rows, int64_t cols, const float *W0, const float *H,
                      struct hq_gptq_opts o, const struct ref_out *ref, const char *tag,
                      struct cmp_stats *st, int check_losses) {
  const struct hq_backend *be = hq_backend_cpu();
  float *W = malloc(sizeof(float) * (size_t)(rows * cols));
  memcpy(W, W0, sizeof(float) * (size_t)(rows * cols));
  struct hq_gptq_result res;
  int rc = hq_gptq_quantize(be, &o, rows, cols, W, H, check_losses, &res);
  CHECK(rc == HQ_OK, "%s: rc %d %s", tag, rc, hq_last_error());
  if (rc != HQ_OK) {
    free(W);
    return;
  }
  struct cmp_stats s1 = {0, 0, 0};
  compare(tag, &o, rows, cols, &res, W, ref, &s1);
  CHECK(s1.unexplained == 0, "%s: %lld rows differ from the reference without a tie", tag,
        (long long)s1.unexplained);
  CHECK(s1.rows_diff * 10 <= rows, "%s: too many rows with ties (%lld of %lld)", tag,
        (long long)s1.rows_diff, (long long)rows);
  CHECK(res.damp_used == (double)o.percdamp, "%s: damp %g", tag, res.damp_used);
  if (s1.rows_diff == 0) {
    double rel = fabs(res.loss_ref - ref->loss_ref) / ref->loss_ref;
    CHECK(rel < 1e-3, "%s: loss_ref %.9g vs reference %.9g", tag, res.loss_ref, ref->loss_ref);
  }
  if (check_losses) {
    double lp = ref_proxy(rows, cols, W0, W, H);
    CHECK(fabs(res.loss_proxy - lp) <= 1e-4 * lp, "%s: loss_proxy %.9g vs plain %.9g", tag,
          res.loss_proxy, lp);
    float *Wr = malloc(sizeof(float) * (size_t)(rows * cols));
    uint8_t *cr = malloc((size_t)(rows * cols));
    ref_rtn(&o, rows, cols, W0, Wr, cr);
    double lr = ref_proxy(rows, cols, W0, Wr, H);
    CHECK(fabs(res.loss_proxy_rtn - lr) <= 1e-4 * lr, "%s: loss_proxy_rtn %.9g vs plain %.9g",
          tag, res.loss_proxy_rtn, lr);
    CHECK(res.loss_proxy < lr, "%s: GPTQ proxy %.6g not below RTN %.6g", tag, res.loss_proxy, lr);
    /* hq_rtn_quantize itself */
    struct hq_gptq_result rr;
    float *W2 = malloc(sizeof(float) * (size_t)(rows * cols));
    memcpy(W2, W0, sizeof(float) * (size_t)(rows * cols));
    struct hq_gptq_opts ro = o;
    ro.act_order = ro.static_groups = 0;
    CHECK(hq_rtn_quantize(be, &ro, rows, cols, W2, H, &rr) == HQ_OK, "rtn rc");
    CHECK(memcmp(rr.codes, cr, (size_t)(rows * cols)) == 0, "%s: RTN codes differ from plain RTN", tag);
    CHECK(memcmp(W2, Wr, sizeof(float) * (size_t)(rows * cols)) == 0, "%s: RTN weights differ", tag);
    hq_gptq_result_free(&rr);
    free(W2);
    free(Wr);
    free(cr);
  }
  st->rows_diff += s1.rows_diff;
  st->rows_total += rows;
  st->unexplained += s1.unexplained;
  hq_gptq_result_free(&res);
  free(W);
}

/* hq_gptq_prepare_in_place (H's memory becomes U), alone and as teams of 2 and 3 members on one
 * shared H, gives hq_gptq_prepare's order, damping, dead columns, hscale diagonals and U (upper
 * triangle) bit for bit, and GPTQ with it the same codes; `indef` makes H need two damping
 * raises (a 2 x 2 minor 1.1 x past singular), which restage H from its kept lower half. */
static void test_in_place(int64_t rows, int64_t cols, int act_order, int hscale, int indef) {
  const struct hq_backend *be = hq_backend_cpu();
  float *W0 = malloc(sizeof(float) * (size_t)(rows * cols)), *H = malloc(sizeof(float) * (size_t)(cols * cols));
  make_problem(rows, cols, 555 + (uint64_t)cols, 1, W0, H);
  if (indef) H[2 * cols + 3] = H[3 * cols + 2] = 1.1f * sqrtf(H[2 * cols + 2] * H[3 * cols + 3]);
  struct hq_gptq_opts o = hq_gptq_opts_default();
  o.act_order = act_order;
  o.hscale = hscale;
  o.group_size = 32;
  struct hq_gptq_prep ref;
  CHECK(hq_gptq_prepare(be, &o, cols, H, &ref) == HQ_OK, "prepare: %s", hq_last_error());
  CHECK(!indef || ref.damp_used > 10.0 * o.percdamp, "indefinite H took no raise (damp %g)", ref.damp_used);
  struct hq_gptq_result rres;
  float *Wr = malloc(sizeof(float) * (size_t)(rows * cols)), *Hs = malloc(sizeof(float) * (size_t)(cols * cols));
  memcpy(Wr, W0, sizeof(float) * (size_t)(rows * cols));
  HQ_ASSERT(hq_gptq_solve(be, &o, &ref, 0, rows, Wr, &rres) == HQ_OK);
  for (int size = 0; size <= 3; size++) { /* 0: alone (team NULL) */
    memcpy(Hs, H, sizeof(float) * (size_t)(cols * cols));
    struct hq_gptq_prep p[3];
    int rc[3] = {-1, -1, -1};
#pragma omp parallel num_threads(size ? size : 1)
    {
      const struct hq_team tm = hq_t_omp_team();
      const int me = omp_get_thread_num();
      rc[me] = hq_gptq_prepare_in_place(be, &o, cols, Hs, size ? &tm : NULL, &p[me]);
    }
    for (int m = 0; m < (size ? size : 1); m++) {
      const char *what = "";
      if (rc[m]) what = hq_last_error();
      else if (p[m].U != Hs || memcmp(p[m].perm, ref.perm, sizeof(int32_t) * (size_t)cols)) what = "U or order";
      else if (memcmp(p[m].dead, ref.dead, (size_t)cols) || p[m].dead_cols != ref.dead_cols) what = "dead columns";
      else if (p[m].damp_used != ref.damp_used || p[m].damp_abs != ref.damp_abs) what = "damping";
      else if (hscale && (memcmp(p[m].colw, ref.colw, sizeof(float) * (size_t)cols) ||
                          memcmp(p[m].colw_p, ref.colw_p, sizeof(float) * (size_t)cols))) what = "hscale diagonal";
      for (int64_t i = 0; !*what && i < cols; i++)
        if (memcmp(Hs + i * cols + i, ref.U + i * cols + i, sizeof(float) * (size_t)(cols - i))) what = "U";
      CHECK(!*what, "in place %lld act%d hscale%d indef%d team %d member %d: %s", (long long)cols,
            act_order, hscale, indef, size, m, what);
    }
    if (!rc[0]) {
      struct hq_gptq_result res;
      float *W = malloc(sizeof(float) * (size_t)(rows * cols));
      memcpy(W, W0, sizeof(float) * (size_t)(rows * cols));
      CHECK(hq_gptq_solve(be, &o, &p[0], 0, rows, W, &res) == HQ_OK &&
                !memcmp(res.codes, rres.codes, (size_t)(rows * cols)) && !memcmp(W, Wr, sizeof(float) * (size_t)(rows * cols)),
            "in place %lld team %d: GPTQ with it differs", (long long)cols, size);
      hq_gptq_result_free(&res);
      free(W);
    }
    for (int m = 0; m < (size ? size : 1); m++)
      if (!rc[m]) hq_gptq_prep_free(be, &p[m]);
  }
  hq_gptq_result_free(&rres);
  hq_gptq_prep_free(be, &ref);
  free(W0), free(H), free(Wr), free(Hs);
}

int main(void) {
  for (int ao = 0; ao < 2; ao++)
    for (int hs = 0; hs < 2; hs++) test_in_place(16, 300, ao, hs, 0);
  test_in_place(8, 1100, 1, 0, 0); /* 5 Cholesky tiles of 256, the last partial */
  test_in_place(8, 300, 1, 0, 1);
  test_in_place(8, 300, 0, 0, 1);
  const int64_t rows = 64, cols = 200;
  float *W0 = malloc(sizeof(float) * rows * cols), *H = malloc(sizeof(float) * cols * cols);
  make_problem(rows, cols, 1234, 2, W0, H);
  const int64_t gsz[3] = {-1, 32, 48};
  const int bsz[3] = {128, 20, 16};
  struct cmp_stats tot = {0, 0, 0};
  int ncombo = 0;
  for (int ao = 0; ao < 2; ao++)
    for (int gi = 0; gi < 3; gi++)
      for (int st = 0; st < 2; st++)
        for (int sym = 0; sym < 2; sym++) {
          if (gsz[gi] < 0 && st) continue; /* static groups mean nothing per channel */
          struct hq_gptq_opts o = hq_gptq_opts_default();
          o.act_order = ao;
          o.group_size = gsz[gi];
          o.static_groups = st;
          o.sym = sym;
          struct ref_out ref;
          ref_gptq(&o, rows, cols, W0, H, &ref);
          for (int bi = 0; bi < 3; bi++) {
            o.block_size = bsz[bi];
            char tag[128];
            snprintf(tag, sizeof tag, "act%d g%lld static%d sym%d B%d", ao, (long long)gsz[gi],
                     st, sym, bsz[bi]);
            run_combo(rows, cols, W0, H, o, &ref, tag, &tot, bi == 0);
            ncombo++;
          }
          ref_free(&ref);
        }
  /* other bit widths on the hardest configuration */
  const int bits[3] = {2, 3, 8};
  for (int bi = 0; bi < 3; bi++) {
    struct hq_gptq_opts o = hq_gptq_opts_default();
    o.bits = bits[bi];
    o.act_order = 1;
    o.group_size = 48;
    o.block_size = 20;
    struct ref_out ref;
    ref_gptq(&o, rows, cols, W0, H, &ref);
    char tag[128];
    snprintf(tag, sizeof tag, "bits%d act1 g48 B20", o.bits);
    run_combo(rows, cols, W0, H, o, &ref, tag, &tot, 1);
    ncombo++;
    ref_free(&ref);
  }
  /* widths that are not multiples of the group or block: 172 (g128: one full + one partial
   * group straddling nothing) and 768 (act-order g128, block 128 and 100) */
  const int64_t wcols[2] = {172, 768}, wrows[2] = {24, 8};
  for (int wi = 0; wi < 2; wi++) {
    int64_t r2 = wrows[wi], c2 = wcols[wi];
    float *W2 = malloc(sizeof(float) * r2 * c2), *H2 = malloc(sizeof(float) * c2 * c2);
    make_problem(r2, c2, 77 + wi, 1, W2, H2);
    struct hq_gptq_opts o = hq_gptq_opts_default();
    o.act_order = 1;
    o.group_size = 128;
    struct ref_out ref;
    ref_gptq(&o, r2, c2, W2, H2, &ref);
    const int bl[2] = {128, 100};
    for (int bi = 0; bi < 2; bi++) {
      o.block_size = bl[bi];
      char tag[128];
      snprintf(tag, sizeof tag, "cols%lld act1 g128 B%d", (long long)c2, bl[bi]);
      run_combo(r2, c2, W2, H2, o, &ref, tag, &tot, bi == 0);
      ncombo++;
    }
    ref_free(&ref);
    free(W2);
    free(H2);
  }
  printf("%d configurations, %lld rows (of %lld) with a first difference at a tie, %lld unexplained\n",
         ncombo, (long long)tot.rows_diff, (long long)tot.rows_total, (long long)tot.unexplained);
  CHECK(tot.unexplained == 0, "unexplained differences");
  free(W0);
  free(H);
  return hq_t_done("test_gptq");
}
