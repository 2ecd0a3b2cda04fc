/* --scale-from-hessian (see hscale.h). Not collective. */
#include "hscale.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

void hq_hscale_params_ref(struct hq_grid g, const float *w, const float *d, int64_t n,
                          int64_t stride, float *scale, float *zero) {
  float xmin = 0.0f, xmax = 0.0f;
  double dsum = 0.0;
  for (int64_t k = 0; k < n; k++) {
    const float v = w[k * stride];
    xmin = v < xmin ? v : xmin;
    xmax = v > xmax ? v : xmax;
    dsum += d[k];
  }
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

/* ---- the wrapped backend ---- */
struct hs_ctx {
  const struct hq_backend *base;
  const float *diag;  /* [cols] H_jj, original column order */
  const int32_t *perm; /* [cols] processing order of the calls' columns (identity, or act-order) */
  int64_t cols, gs;   /* gs 0: one call over all columns */
  int64_t calls;
  int bad;            /* a call did not match the expected columns */
  float *wbuf, *dbuf; /* host staging */
};
static _Thread_local struct hs_ctx *hs_cur;

static void hs_quant_params(struct hq_grid g, int64_t rows, int64_t ncols, const float *W,
                            int64_t ldw, float *scale, float *zero) {
  struct hs_ctx *c = hs_cur;
  HQ_ASSERT(c);
  const int64_t k = c->calls++;
  const int64_t c0 = c->gs > 0 ? k * c->gs : 0;
  const int64_t expect = c->gs > 0 ? (c->cols - c0 < c->gs ? c->cols - c0 : c->gs) : c->cols;
  if (c0 >= c->cols || ncols != expect) {
    c->bad = 1;
    c->base->quant_params(g, rows, ncols, W, ldw, scale, zero);
    return;
  }
  for (int64_t j = 0; j < ncols; j++) c->dbuf[j] = c->diag[c->perm[c0 + j]];
  const struct hq_backend *be = c->base;
  const float *Wh = W;
  float *sh = scale, *zh = zero;
  if (be->on_device) {
    /* rows x ncols slice with leading dimension ldw: download whole rows' span */
    float *tmp = malloc((size_t)(rows * ldw) * sizeof(float) + 1);
    sh = malloc((size_t)rows * sizeof(float) + 1);
    zh = malloc((size_t)rows * sizeof(float) + 1);
    if (!tmp || !sh || !zh) HQ_DIE("out of host memory staging a %lld x %lld slice", (long long)rows, (long long)ldw);
    be->sync();
    be->download(tmp, W, (size_t)((rows - 1) * ldw + ncols) * sizeof(float));
    Wh = tmp;
  }
#pragma omp parallel for schedule(static) if (rows * ncols > 65536)
  for (int64_t r = 0; r < rows; r++)
    hq_hscale_params_ref(g, Wh + r * ldw, c->dbuf, ncols, 1, &sh[r], &zh[r]);
  if (be->on_device) {
    be->upload(scale, sh, (size_t)rows * sizeof(float));
    be->upload(zero, zh, (size_t)rows * sizeof(float));
    free((void *)Wh);
    free(sh);
    free(zh);
  }
}

static int hs_run(int gptq, const struct hq_backend *be, const struct hq_gptq_opts *o,
                  int64_t rows, int64_t cols, float *W, const float *H, int want_stats,
                  struct hq_gptq_result *res) {
  memset(res, 0, sizeof *res);
  if (!H) return hq_fail(HQ_ERR_INPUT, "--scale-from-hessian needs the Hessian (calibration data)");
  HQ_TRY(hq_gptq_opts_check(o, cols));
  struct hs_ctx c;
  memset(&c, 0, sizeof c);
  c.base = be;
  c.cols = cols;
  c.gs = o->group_size > 0 ? o->group_size : 0;
  float *diag = malloc((size_t)cols * sizeof(float));
  int32_t *perm = malloc((size_t)cols * sizeof(int32_t));
  c.dbuf = malloc((size_t)cols * sizeof(float));
  int rc = HQ_OK;
  if (!diag || !perm || !c.dbuf) {
    rc = hq_fail(HQ_ERR_NOMEM, "out of memory for --scale-from-hessian");
    goto done;
  }
  for (int64_t j = 0; j < cols; j++) {
    diag[j] = H[j * cols + j];
    perm[j] = (int32_t)j;
  }
  /* GPTQ with act-order and dynamic groups computes group k over the permuted columns
   * perm[k*gs ...]; per-channel and static groups use the original order */
  const int permuted = gptq && o->act_order && c.gs > 0 && !o->static_groups;
  if (permuted && (rc = hq_act_order_perm(H, cols, perm)) != HQ_OK) goto done;
  c.diag = diag;
  c.perm = perm;
  struct hq_backend wrapped = *be;
  wrapped.quant_params = hs_quant_params;
  struct hs_ctx *saved = hs_cur;
  hs_cur = &c;
  float *W0 = NULL;
  if (want_stats) {
    W0 = malloc((size_t)(rows * cols) * sizeof(float) + 1);
    if (!W0) {
      hs_cur = saved;
      rc = hq_fail(HQ_ERR_NOMEM, "out of memory for --scale-from-hessian statistics");
      goto done;
    }
    memcpy(W0, W, (size_t)(rows * cols) * sizeof(float));
  }
  /* statistics are computed below with the plain backend (GPTQ's own would call the wrapper) */
  rc = gptq ? hq_gptq_quantize(&wrapped, o, rows, cols, W, H, 0, res)
            : hq_rtn_quantize(&wrapped, o, rows, cols, W, NULL, res);
  hs_cur = saved;
  if (!rc && want_stats) {
    struct hq_gptq_result rr;
    float *Wr = malloc((size_t)(rows * cols) * sizeof(float) + 1);
    if (!Wr) rc = hq_fail(HQ_ERR_NOMEM, "out of memory for --scale-from-hessian statistics");
    if (!rc) {
      memcpy(Wr, W0, (size_t)(rows * cols) * sizeof(float));
      rc = hq_rtn_quantize(be, o, rows, cols, Wr, H, &rr);
    }
    if (!rc) {
      res->loss_proxy_rtn = rr.loss_proxy;
      hq_gptq_result_free(&rr);
      for (int64_t k = 0; k < rows * cols; k++) W0[k] -= W[k];
      res->loss_proxy = hq_proxy_loss(be, rows, cols, W0, H);
    }
    free(Wr);
  }
  free(W0);
  if (rc) goto done;
  const int64_t ng = c.gs > 0 ? (cols + c.gs - 1) / c.gs : 1;
  int ok = !c.bad && (rows == 0 || c.calls == ng);
  if (ok && permuted)
    for (int64_t j = 0; j < cols && ok; j++) ok = res->perm[j] == perm[j];
  if (!ok) {
    hq_gptq_result_free(res);
    rc = hq_fail(HQ_ERR_UNSUPPORTED, "--scale-from-hessian: the GPTQ/RTN code called the grid "
                 "parameters in an unexpected order (%lld calls for %lld groups); this build "
                 "cannot use it, run without --scale-from-hessian", (long long)c.calls, (long long)ng);
  }
done:
  free(diag);
  free(perm);
  free(c.dbuf);
  return rc;
}

int hq_gptq_quantize_hscale(const struct hq_backend *be, const struct hq_gptq_opts *o,
                            int64_t rows, int64_t cols, float *W, const float *H,
                            int want_stats, struct hq_gptq_result *res) {
  return hs_run(1, be, o, rows, cols, W, H, want_stats, res);
}

int hq_rtn_quantize_hscale(const struct hq_backend *be, const struct hq_gptq_opts *o,
                           int64_t rows, int64_t cols, float *W, const float *H,
                           struct hq_gptq_result *res) {
  return hs_run(0, be, o, rows, cols, W, H, 1, res);
}
