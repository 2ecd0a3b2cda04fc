/* HQQ (see hqq.h). Not collective. */
#include "hqq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "util.h"

struct hq_hqq_opts hq_hqq_opts_default(void) {
  struct hq_hqq_opts h;
  h.lp = 0.7f;
  h.beta = 10.0f;
  h.kappa = 1.01f;
  h.iters = 20;
  h.opt_scale = 0;
  return h;
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

void hq_hqq_group(struct hq_grid g, const struct hq_hqq_opts *h, const float *w, int64_t n,
                  int64_t stride, float *scale, float *zero, int *iters_run) {
  const float fmaxq = (float)g.maxq;
  /* start: RTN's min/max parameters (range forced to include 0) */
  float xmin, xmax;
  hq_range0(w, n, stride, &xmin, &xmax);
  struct hq_grid g0 = g;
  g0.mse = 0;
  float s, zi;
  hq_grid_params_from_range(g0, xmin, xmax, &s, &zi);
  float best_s = s, best_z = zi;
  double best = l1_storable(w, n, stride, s, zi, g.maxq);
  /* the real zero HQQ optimises */
  float z = zi;
  if (!g.sym && !(xmin == 0.0f && xmax == 0.0f)) {
    z = -xmin / s;
    z = z < 0.0f ? 0.0f : (z > fmaxq ? fmaxq : z);
  }
  float beta = h->beta;
  const float pm1 = h->lp - 1.0f;
  double prev = INFINITY;
  int it = 0;
  for (; it < h->iters; it++) {
    double err = 0.0, zsum = 0.0;
    for (int64_t k = 0; k < n; k++) {
      const float v = w[k * stride];
      float q = rintf(v / s + z);
      q = q < 0.0f ? 0.0f : (q > fmaxq ? fmaxq : q);
      const float d = v - s * (q - z);
      err += fabsf(d);
      const float a = fabsf(d);
      float e = 0.0f;
      if (a > 0.0f) {
        const float t = a - powf(a, pm1) / beta;
        e = t > 0.0f ? copysignf(t, d) : 0.0f;
      }
      zsum += (double)(q - (v - e) / s);
    }
    if (err >= prev) break;
    prev = err;
    if (!g.sym) z = (float)(zsum / (double)n);
    if (h->opt_scale) {
      double num = 0.0, den = 0.0;
      for (int64_t k = 0; k < n; k++) {
        const float v = w[k * stride];
        float q = rintf(v / s + z);
        q = q < 0.0f ? 0.0f : (q > fmaxq ? fmaxq : q);
        const float d = v - s * (q - z);
        const float a = fabsf(d);
        float e = 0.0f;
        if (a > 0.0f) {
          const float t = a - powf(a, pm1) / beta;
          e = t > 0.0f ? copysignf(t, d) : 0.0f;
        }
        const double qz = (double)(q - z);
        num += (double)(v - e) * qz;
        den += qz * qz;
      }
      if (den > 0.0 && num > 0.0) s = hq_scale_fp16((float)(num / den));
    }
    beta *= h->kappa;
    float zc = g.sym ? zi : rintf(z);
    zc = zc < 0.0f ? 0.0f : (zc > fmaxq ? fmaxq : zc);
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

int hq_hqq_quantize(const struct hq_gptq_opts *o, const struct hq_hqq_opts *h, int64_t rows,
                    int64_t cols, float *W, struct hq_gptq_result *res, double l1[2]) {
  memset(res, 0, sizeof *res);
  HQ_TRY(hq_gptq_opts_check(o, cols));
  HQ_TRY(hq_hqq_opts_check(h));
  if (rows < 0) return hq_fail(HQ_ERR_INPUT, "negative row count %lld", (long long)rows);
  HQ_TRY(hq_check_finite("W", W, rows, cols, "the layer's weights are corrupt (check the checkpoint)"));
  HQ_TRY(hq_grid_check_fp16(o, W, rows, cols));
  const int64_t gs = o->group_size > 0 ? o->group_size : cols;
  const int64_t ng = (cols + gs - 1) / gs;
  const struct hq_grid g = hq_grid_make(o->bits, o->sym, 0);
  HQ_TRY(hq_gptq_result_alloc(res, rows, cols, ng));
  const double t0 = hq_now();
  double *row_e = l1 ? calloc((size_t)(2 * rows) + 1, sizeof(double)) : NULL; /* per row: no
                                                                   thread-dependent reduction */
  if (l1 && !row_e) {
    hq_gptq_result_free(res);
    return hq_fail(HQ_ERR_NOMEM, "out of memory for HQQ statistics");
  }
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t r = 0; r < rows; r++) {
    float *w = W + r * cols;
    double e_hqq = 0.0, e_rtn = 0.0;
    for (int64_t k = 0; k < ng; k++) {
      const int64_t c0 = k * gs, n = cols - c0 < gs ? cols - c0 : gs;
      float s, z, s0, z0;
      hq_hqq_group(g, h, w + c0, n, 1, &s, &z, NULL);
      hq_grid_params_ref(hq_grid_make(o->bits, o->sym, 0), w + c0, n, 1, &s0, &z0);
      e_rtn += l1_storable(w + c0, n, 1, s0, z0, g.maxq);
      res->scales[r * ng + k] = s;
      res->zeros[r * ng + k] = z;
      for (int64_t j = c0; j < c0 + n; j++) {
        const int q = hq_quant_code(w[j], s, z, g.maxq);
        res->codes[r * cols + j] = (uint8_t)q;
        const float dq = hq_dequant(q, s, z);
        e_hqq += fabsf(w[j] - dq);
        w[j] = dq;
      }
    }
    if (row_e) {
      row_e[2 * r] = e_hqq;
      row_e[2 * r + 1] = e_rtn;
    }
  }
  for (int64_t c = 0; c < cols; c++) {
    res->g_idx[c] = (int32_t)(o->group_size > 0 ? c / gs : 0);
    res->perm[c] = (int32_t)c;
  }
  res->t_quant = hq_now() - t0;
  res->loss_proxy = res->loss_proxy_rtn = res->loss_ref = NAN;
  if (l1) {
    l1[0] = l1[1] = 0.0;
    for (int64_t r = 0; r < rows; r++) {
      l1[0] += row_e[2 * r];
      l1[1] += row_e[2 * r + 1];
    }
    free(row_e);
  }
  const int rc = hq_result_check_fp16(res, o->bits);
  if (rc) hq_gptq_result_free(res);
  return rc;
}
