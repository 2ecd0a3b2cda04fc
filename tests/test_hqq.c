/* HQQ (src/quant/hqq.c) against a plain reference of the same update rule written here, on real
 * layers of the bundled llama-sotu-5m (block 0 q_proj 256x256 and down_proj 256x768) and on a
 * heavy-tailed synthetic matrix, at W4 g64, W3 g128, W2 g64, zero-only and zero+scale:
 *  - identical zero points and scales for every group, codes = clamp(round(w/s) + z), and the
 *    returned W equals s (q - z);
 *  - the L1 error of every group is <= RTN's (HQQ keeps the RTN start when nothing beats it),
 *    and with --hqq-scale the total is strictly lower and many groups move off RTN's
 *    parameters (the test would notice an HQQ that silently does nothing);
 *  - options are checked (p outside (0,1), kappa < 1 fail with a message). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "hqq.h"
#include "model.h"
#include "quant.h"
#include "testutil.h"

/* ---- the plain reference: one group, contiguous, arrays for q and the shrunk residual ---- */
static float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

static float shrink_lp(float x, float beta, float p) {
  float a = fabsf(x);
  if (a == 0.0f) return 0.0f;
  float t = a - powf(a, p - 1.0f) / beta;
  if (t <= 0.0f) return 0.0f;
  return x < 0.0f ? -t : t;
}

static double l1_int(const float *w, int n, float s, float z, int maxq) {
  double e = 0;
  for (int k = 0; k < n; k++) {
    float q = clampf(rintf(w[k] / s) + z, 0.0f, (float)maxq);
    e += fabsf(w[k] - s * (q - z));
  }
  return e;
}

static void ref_hqq(const float *w, int n, int bits, float p, float beta, float kappa, int iters,
                    int opt_scale, float *s_out, float *z_out) {
  const int maxq = (1 << bits) - 1;
  const float fq = (float)maxq;
  float lo = 0.0f, hi = 0.0f;
  for (int k = 0; k < n; k++) {
    if (w[k] < lo) lo = w[k];
    if (w[k] > hi) hi = w[k];
  }
  float s = hq_scale_fp16((hi - lo) / fq);
  float zint = clampf(rintf(-lo / s), 0.0f, fq);
  float z = clampf(-lo / s, 0.0f, fq);
  float bs = s, bz = zint;
  double best = l1_int(w, n, s, zint, maxq);
  float *q = malloc((size_t)n * sizeof(float)), *e = malloc((size_t)n * sizeof(float));
  double prev = INFINITY;
  for (int it = 0; it < iters; it++) {
    double err = 0;
    for (int k = 0; k < n; k++) {
      q[k] = clampf(rintf(w[k] / s + z), 0.0f, fq);
      float d = w[k] - s * (q[k] - z);
      err += fabsf(d);
      e[k] = shrink_lp(d, beta, p);
    }
    if (err >= prev) break;
    prev = err;
    double acc = 0;
    for (int k = 0; k < n; k++) acc += (double)(q[k] - (w[k] - e[k]) / s);
    z = (float)(acc / n);
    if (opt_scale) {
      for (int k = 0; k < n; k++) {
        q[k] = clampf(rintf(w[k] / s + z), 0.0f, fq);
        e[k] = shrink_lp(w[k] - s * (q[k] - z), beta, p);
      }
      double num = 0, den = 0;
      for (int k = 0; k < n; k++) {
        num += (double)(w[k] - e[k]) * (double)(q[k] - z);
        den += (double)(q[k] - z) * (double)(q[k] - z);
      }
      if (den > 0 && num > 0) s = hq_scale_fp16((float)(num / den));
    }
    beta *= kappa;
    float zc = clampf(rintf(z), 0.0f, fq);
    double ec = l1_int(w, n, s, zc, maxq);
    if (ec < best) {
      best = ec;
      bs = s;
      bz = zc;
    }
  }
  free(q);
  free(e);
  *s_out = bs;
  *z_out = bz;
}

static void check_layer(const char *what, const float *W0, int64_t rows, int64_t cols, int bits,
                        int64_t gs, int opt_scale) {
  struct hq_gptq_opts o = hq_gptq_opts_default();
  o.bits = bits;
  o.group_size = gs;
  struct hq_hqq_opts h = hq_hqq_opts_default();
  h.opt_scale = opt_scale;
  float *W = malloc((size_t)(rows * cols) * sizeof(float));
  memcpy(W, W0, (size_t)(rows * cols) * sizeof(float));
  struct hq_gptq_result res;
  double l1[2];
  int rc = hq_hqq_quantize(&o, &h, rows, cols, W, &res, l1);
  CHECK(rc == HQ_OK, "%s: %s", what, hq_last_error());
  if (rc) {
    free(W);
    return;
  }
  const int64_t ng = (cols + gs - 1) / gs;
  const int maxq = (1 << bits) - 1;
  int64_t zbad = 0, sbad = 0, cbad = 0, wbad = 0, worse = 0, moved = 0;
  double e_ref = 0, e_rtn = 0;
  float *g = malloc((size_t)gs * sizeof(float));
  for (int64_t r = 0; r < rows; r++)
    for (int64_t k = 0; k < ng; k++) {
      const int64_t c0 = k * gs, n = cols - c0 < gs ? cols - c0 : gs;
      memcpy(g, W0 + r * cols + c0, (size_t)n * sizeof(float));
      float s, z;
      ref_hqq(g, (int)n, bits, 0.7f, 10.0f, 1.01f, 20, opt_scale, &s, &z);
      zbad += res.zeros[r * ng + k] != z;
      sbad += res.scales[r * ng + k] != s;
      for (int64_t j = 0; j < n; j++) {
        const float qf = clampf(rintf(g[j] / s) + z, 0.0f, (float)maxq);
        cbad += res.codes[r * cols + c0 + j] != (uint8_t)qf;
        wbad += W[r * cols + c0 + j] != s * (qf - z);
      }
      /* RTN on the same grid: min/max parameters */
      float s0, z0;
      hq_grid_params_ref(hq_grid_make(bits, 0, 0), g, n, 1, &s0, &z0);
      const double eh = l1_int(g, (int)n, s, z, maxq), er = l1_int(g, (int)n, s0, z0, maxq);
      worse += eh > er;
      moved += (s != s0 || z != z0);
      e_ref += eh;
      e_rtn += er;
    }
  const int64_t ngt = rows * ng;
  printf("%-28s W%d g%-4lld %-10s L1 HQQ %.5g RTN %.5g (%.2f%%), %lld/%lld groups moved off RTN\n",
         what, bits, (long long)gs, opt_scale ? "zero+scale" : "zero", e_ref, e_rtn,
         100.0 * (e_ref - e_rtn) / e_rtn, (long long)moved, (long long)ngt);
  CHECK(zbad == 0, "%s W%d g%lld: %lld of %lld zero points differ from the reference", what, bits, (long long)gs, (long long)zbad, (long long)ngt);
  CHECK(sbad == 0, "%s W%d g%lld: %lld of %lld scales differ from the reference", what, bits, (long long)gs, (long long)sbad, (long long)ngt);
  CHECK(cbad == 0 && wbad == 0, "%s: %lld codes, %lld dequantized weights differ", what, (long long)cbad, (long long)wbad);
  CHECK(worse == 0, "%s: %lld groups have a larger L1 error than RTN", what, (long long)worse);
  CHECK(fabs(l1[0] - e_ref) <= 1e-6 * e_ref && fabs(l1[1] - e_rtn) <= 1e-6 * e_rtn,
        "%s: reported L1 %g / %g vs %g / %g", what, l1[0], l1[1], e_ref, e_rtn);
  if (opt_scale) {
    CHECK(e_ref < 0.995 * e_rtn, "%s: HQQ with scale did not lower the L1 error (%g vs RTN %g)", what, e_ref, e_rtn);
    CHECK(moved * 4 >= ngt, "%s: only %lld of %lld groups moved off RTN's parameters", what, (long long)moved, (long long)ngt);
  }
  free(g);
  free(W);
  hq_gptq_result_free(&res);
}

int main(void) {
  struct hq_model m;
  int rc = hq_model_open(hq_t_data("llama-sotu-5m"), &m);
  CHECK(rc == HQ_OK, "open llama-sotu-5m: %s", hq_last_error());
  if (!rc) {
    struct hq_block_weights w;
    rc = hq_model_load_block(&m, 0, &w);
    CHECK(rc == HQ_OK, "load block 0");
    if (!rc) {
      const int cfg[3][2] = {{4, 64}, {3, 128}, {2, 64}};
      for (int c = 0; c < 3; c++)
        for (int os = 0; os < 2; os++) {
          check_layer("layers.0.self_attn.q_proj", w.lin[HQ_LIN_Q], 256, 256, cfg[c][0], cfg[c][1], os);
          check_layer("layers.0.mlp.down_proj", w.lin[HQ_LIN_DOWN], 256, 768, cfg[c][0], cfg[c][1], os);
        }
      hq_block_weights_free(&w);
    }
    hq_model_close(&m);
  }
  /* heavy tails: a Gaussian matrix with 1 % outliers of 10x, odd sizes (last group short) */
  {
    const int64_t rows = 37, cols = 200;
    float *W = malloc((size_t)(rows * cols) * sizeof(float));
    hq_t_randn(W, rows * cols, 7, 0.02f);
    for (int64_t k = 0; k < rows * cols; k += 97) W[k] *= 10.0f;
    for (int os = 0; os < 2; os++) check_layer("synthetic 37x200 outliers", W, rows, cols, 3, 64, os);
    free(W);
  }
  /* option checks */
  {
    struct hq_hqq_opts h = hq_hqq_opts_default();
    h.lp = 1.5f;
    CHECK(hq_hqq_opts_check(&h) == HQ_ERR_INPUT && strstr(hq_last_error(), "(0, 1)"), "p = 1.5 accepted");
    h = hq_hqq_opts_default();
    h.kappa = 0.5f;
    CHECK(hq_hqq_opts_check(&h) == HQ_ERR_INPUT, "kappa 0.5 accepted");
    float W[4] = {1, NAN, 0, 1};
    struct hq_gptq_opts o = hq_gptq_opts_default();
    struct hq_gptq_result res;
    h = hq_hqq_opts_default();
    CHECK(hq_hqq_quantize(&o, &h, 1, 4, W, &res, NULL) == HQ_ERR_INPUT, "NaN weight accepted");
  }
  return hq_t_done("test_hqq");
}
