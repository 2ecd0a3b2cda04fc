/* --scale-from-hessian (see hscale.h). Not collective. */
#include "hscale.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

void hq_hscale_params_ref(struct hq_grid g, const float *w, const float *d, int64_t n,
                          int64_t stride, float *scale, float *zero) {
  float xmin, xmax;
  hq_range0(w, n, stride, &xmin, &xmax);
  double dsum = 0.0;
  for (int64_t k = 0; k < n; k++) dsum += d[k];
  struct hq_grid g0 = g;
  g0.mse = 0;
  double best = INFINITY;
  float bs = 1.0f, bz = 0.0f;
  for (int i = 0; i < 80; i++) {
    const float p = 1.0f - (float)i / 100.0f;
    float s, z;
    hq_grid_params_from_range(g0, p * xmin, p * xmax, &s, &z);
    double err = 0.0;
    for (int64_t k = 0; k < n; k++) {
      const float v = w[k * stride];
      const double e = (double)(hq_quant_dequant(v, s, z, g.maxq) - v);
      err += (dsum > 0.0 ? (double)d[k] : 1.0) * e * e;
    }
    if (err < best) {
      best = err;
      bs = s;
      bz = z;
    }
  }
  *scale = bs;
  *zero = bz;
}

/* GPTQ and RTN take the per-column weights themselves (hq_gptq_opts.hscale); these keep the
 * option's entry points. */
int hq_gptq_quantize_hscale(const struct hq_backend *be, const struct hq_gptq_opts *o,
                            int64_t rows, int64_t cols, float *W, const float *H,
                            int want_stats, struct hq_gptq_result *res) {
  struct hq_gptq_opts h = *o;
  h.hscale = 1;
  return hq_gptq_quantize(be, &h, rows, cols, W, H, want_stats, res);
}

int hq_rtn_quantize_hscale(const struct hq_backend *be, const struct hq_gptq_opts *o,
                           int64_t rows, int64_t cols, float *W, const float *H,
                           struct hq_gptq_result *res) {
  struct hq_gptq_opts h = *o;
  h.hscale = 1;
  memset(res, 0, sizeof *res);
  const size_t bytes = (size_t)rows * (size_t)cols * sizeof(float);
  float *W0 = H ? malloc(bytes + 1) : NULL;
  if (H && !W0) return hq_fail(HQ_ERR_NOMEM, "out of memory for --scale-from-hessian statistics");
  if (W0) memcpy(W0, W, bytes);
  int rc = hq_rtn_quantize(be, &h, rows, cols, W, H, res);
  if (!rc) { /* the statistics' RTN baseline is plain min/max RTN on the same grid */
    struct hq_gptq_result rr;
    struct hq_gptq_opts plain = *o;
    plain.hscale = 0;
    rc = hq_rtn_quantize(be, &plain, rows, cols, W0, H, &rr);
    if (!rc) res->loss_proxy_rtn = rr.loss_proxy;
    hq_gptq_result_free(&rr);
    if (rc) hq_gptq_result_free(res);
  }
  free(W0);
  return rc;
}
