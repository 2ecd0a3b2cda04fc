/* HQQ (see hqq.h). Not collective. */
#include "hqq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "util.h"

struct hq_hqq_opts hq_hqq_opts_default(void) {
  return (struct hq_hqq_opts){.lp = 0.7f, .beta = 10.0f, .kappa = 1.01f, .iters = 20, .opt_scale = 0};
}

int hq_hqq_opts_check(const struct hq_hqq_opts *h) {
  if (!(h->lp > 0.0f && h->lp < 1.0f))
    return hq_fail(HQ_ERR_INPUT, "HQQ lp norm p must be in (0, 1), got %g (default 0.7)", (double)h->lp);
  if (!(h->beta > 0.0f) || !isfinite(h->beta))
    return hq_fail(HQ_ERR_INPUT, "HQQ beta must be positive, got %g (default 10)", (double)h->beta);
  if (!(h->kappa >= 1.0f) || !isfinite(h->kappa))
    return hq_fail(HQ_ERR_INPUT, "HQQ kappa must be >= 1, got %g (default 1.01)", (double)h->kappa);
  if (h->iters < 0 || h->iters > 10000)
    return hq_fail(HQ_ERR_INPUT, "HQQ iterations must be in [0, 10000], got %d (default 20)", h->iters);
  return HQ_OK;
}

/* L1 error of the storable quantizer (s, integer z) on the group */
static double l1_storable(const float *w, int64_t n, int64_t stride, float s, float z, int maxq) {
  double e = 0.0;
  for (int64_t k = 0; k < n; k++) {
    const float v = w[k * stride];
    e += fabsf(v - hq_quant_dequant(v, s, z, maxq));
  }
  return e;
}

/* x clamped to [0, fmaxq] (NaN passes through, as in the inline clamps it replaces) */
static float clamp_q(float x, float fmaxq) { return x < 0.0f ? 0.0f : (x > fmaxq ? fmaxq : x); }

/* One group's values and the constants of its iterations. */
struct hqq_in {
  const float *w; /* n values w[0], w[stride], ... */
  int64_t n, stride;
  float fmaxq;    /* maxq as float */
  float pm1;      /* p - 1 of the lp shrinkage */
};

/* v's code q = clamp(round(v/s + z), 0, maxq) at the real zero z (as float), and its residual
 * d = v - s (q - z) (returned). */
static float hqq_residual(const struct hqq_in *in, float v, float s, float z, float *q) {
  *q = clamp_q(rintf(v / s + z), in->fmaxq);
  return v - s * (*q - z);
}

/* W_e of one residual d: shrink_lp(d, beta) = sign(d) max(|d| - |d|^(p-1) / beta, 0). */
static float hqq_shrink(const struct hqq_in *in, float d, float beta) {
  const float a = fabsf(d);
  float e = 0.0f;
  if (a > 0.0f) {
    const float t = a - powf(a, in->pm1) / beta;
    e = t > 0.0f ? copysignf(t, d) : 0.0f;
  }
  return e;
}

/* The RTN (min/max, range forced to include 0) start: scale *s, integer zero *zi, and the real
 * zero *z HQQ optimises (-xmin/s clamped; *zi for symmetric grids and all-zero groups). */
static void hqq_start(struct hq_grid g, const struct hqq_in *in, float *s, float *zi, float *z) {
  float xmin, xmax;
  hq_range0(in->w, in->n, in->stride, &xmin, &xmax);
  struct hq_grid g0 = g;
  g0.mse = 0;
  hq_grid_params_from_range(g0, xmin, xmax, s, zi);
  *z = *zi;
  if (!g.sym && !(xmin == 0.0f && xmax == 0.0f)) *z = clamp_q(-xmin / *s, in->fmaxq);
}

/* One pass at (s, z, beta): returns Σ|w - r|; *zsum = Σ (q - (w - W_e) / s), the zero update. */
static double hqq_zero_pass(const struct hqq_in *in, float s, float z, float beta, double *zsum) {
  double err = 0.0, zs = 0.0;
  for (int64_t k = 0; k < in->n; k++) {
    const float v = in->w[k * in->stride];
    float q;
    const float d = hqq_residual(in, v, s, z, &q);
    err += fabsf(d);
    const float e = hqq_shrink(in, d, beta);
    zs += (double)(q - (v - e) / s);
  }
  *zsum = zs;
  return err;
}

/* The least-squares scale at (s, z, beta): fp16(Σ (w - W_e)(q - z) / Σ (q - z)²), or s when
 * either sum is not positive. */
static float hqq_scale_pass(const struct hqq_in *in, float s, float z, float beta) {
  double num = 0.0, den = 0.0;
  for (int64_t k = 0; k < in->n; k++) {
    const float v = in->w[k * in->stride];
    float q;
    const float d = hqq_residual(in, v, s, z, &q);
    const float e = hqq_shrink(in, d, beta);
    const double qz = (double)(q - z);
    num += (double)(v - e) * qz;
    den += qz * qz;
  }
  return den > 0.0 && num > 0.0 ? hq_scale_fp16((float)(num / den)) : s;
}

void hq_hqq_group(struct hq_grid g, const struct hq_hqq_opts *h, const float *w, int64_t n,
                  int64_t stride, float *scale, float *zero, int *iters_run) {
  const struct hqq_in in = {w, n, stride, (float)g.maxq, h->lp - 1.0f};
  float s, zi, z;
  hqq_start(g, &in, &s, &zi, &z);
  float best_s = s, best_z = zi;
  double best = l1_storable(w, n, stride, s, zi, g.maxq);
  float beta = h->beta;
  double prev = INFINITY;
  int it = 0;
  for (; it < h->iters; it++) {
    double zsum;
    const double err = hqq_zero_pass(&in, s, z, beta, &zsum);
    if (err >= prev) break;
    prev = err;
    if (!g.sym) z = (float)(zsum / (double)n);
    if (h->opt_scale) s = hqq_scale_pass(&in, s, z, beta);
    beta *= h->kappa;
    const float zc = clamp_q(g.sym ? zi : rintf(z), in.fmaxq);
    const double ec = l1_storable(w, n, stride, s, zc, g.maxq);
    if (ec < best) {
      best = ec;
      best_s = s;
      best_z = zc;
    }
  }
  *scale = best_s;
  *zero = best_z;
  if (iters_run) *iters_run = it;
}

/* HQQ of row r (w = W + r * cols, in place -> dequantized) into res, group by group; adds the
 * row's L1 errors to *e_hqq (HQQ) and *e_rtn (RTN's min/max parameters), in column order. */
static void hqq_row(const struct hq_gptq_opts *o, const struct hq_hqq_opts *h, int64_t r,
                    int64_t cols, float *w, struct hq_gptq_result *res, double *e_hqq,
                    double *e_rtn) {
  const int64_t gs = o->group_size > 0 ? o->group_size : cols;
  const int64_t ng = (cols + gs - 1) / gs;
  const struct hq_grid g = hq_grid_make(o->bits, o->sym, 0);
  for (int64_t k = 0; k < ng; k++) {
    const int64_t c0 = k * gs, n = cols - c0 < gs ? cols - c0 : gs;
    float s, z, s0, z0;
    hq_hqq_group(g, h, w + c0, n, 1, &s, &z, NULL);
    hq_grid_params_ref(hq_grid_make(o->bits, o->sym, 0), w + c0, n, 1, &s0, &z0);
    *e_rtn += l1_storable(w + c0, n, 1, s0, z0, g.maxq);
    res->scales[r * ng + k] = s;
    res->zeros[r * ng + k] = z;
    for (int64_t j = c0; j < c0 + n; j++) {
      const int q = hq_quant_code(w[j], s, z, g.maxq);
      res->codes[r * cols + j] = (uint8_t)q;
      const float dq = hq_dequant(q, s, z);
      *e_hqq += fabsf(w[j] - dq);
      w[j] = dq;
    }
  }
}

/* l1 = {Σ_r row_e[2r], Σ_r row_e[2r + 1]}, summed in row order (independent of threads). */
static void hqq_l1_total(const double *row_e, int64_t rows, double l1[2]) {
  l1[0] = l1[1] = 0.0;
  for (int64_t r = 0; r < rows; r++) {
    l1[0] += row_e[2 * r];
    l1[1] += row_e[2 * r + 1];
  }
}

int hq_hqq_quantize(const struct hq_gptq_opts *o, const struct hq_hqq_opts *h, int64_t rows,
                    int64_t cols, float *W, struct hq_gptq_result *res, double l1[2]) {
  memset(res, 0, sizeof *res);
  HQ_TRY(hq_gptq_opts_check(o, cols));
  HQ_TRY(hq_hqq_opts_check(h));
  if (rows < 0) return hq_fail(HQ_ERR_INPUT, "negative row count %lld", (long long)rows);
  HQ_TRY(hq_check_finite("W", W, rows, cols, "the layer's weights are corrupt (check the checkpoint)"));
  HQ_TRY(hq_grid_check_fp16(o, W, rows, cols));
  const int64_t gs = o->group_size > 0 ? o->group_size : cols;
  HQ_TRY(hq_gptq_result_alloc(res, rows, cols, (cols + gs - 1) / gs));
  const double t0 = hq_now();
  /* per row [HQQ, RTN]: no thread-dependent reduction */
  double *row_e = l1 ? calloc((size_t)(2 * rows) + 1, sizeof(double)) : NULL;
  if (l1 && !row_e) {
    hq_gptq_result_free(res);
    return hq_fail(HQ_ERR_NOMEM, "out of memory for HQQ statistics");
  }
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t r = 0; r < rows; r++) {
    double e_hqq = 0.0, e_rtn = 0.0;
    hqq_row(o, h, r, cols, W + r * cols, res, &e_hqq, &e_rtn);
    if (row_e) {
      row_e[2 * r] = e_hqq;
      row_e[2 * r + 1] = e_rtn;
    }
  }
  hq_gptq_result_plain_groups(res, o->group_size);
  res->t_quant = hq_now() - t0;
  res->loss_proxy = res->loss_proxy_rtn = res->loss_ref = NAN;
  if (l1) hqq_l1_total(row_e, rows, l1);
  free(row_e);
  const int rc = hq_result_check_fp16(res, o->bits);
  if (rc) hq_gptq_result_free(res);
  return rc;
}
