/* Equalization (see equalize.h). Not collective. */
#include "equalize.h"

#include <math.h>
#include <string.h>

#include "error.h"

int hq_equalize_parse(const char *s) {
  if (!s) return -1;
  if (!strcmp(s, "none")) return HQ_EQ_NONE;
  if (!strcmp(s, "smooth")) return HQ_EQ_SMOOTH;
  if (!strcmp(s, "cle")) return HQ_EQ_CLE;
  if (!strcmp(s, "smooth,cle") || !strcmp(s, "cle,smooth") || !strcmp(s, "both"))
    return HQ_EQ_SMOOTH | HQ_EQ_CLE;
  return -1;
}

const char *hq_equalize_name(int f) {
  switch (f) {
  case HQ_EQ_NONE: return "none";
  case HQ_EQ_SMOOTH: return "smooth";
  case HQ_EQ_CLE: return "cle";
  default: return "smooth,cle";
  }
}

static double clampd(double v, double lo, double hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* range (max - min) of n values x[k*stride] */
static void range_acc(const float *x, int64_t n, int64_t stride, float *mn, float *mx) {
  for (int64_t k = 0; k < n; k++) {
    const float v = x[k * stride];
    *mn = v < *mn ? v : *mn;
    *mx = v > *mx ? v : *mx;
  }
}

void hq_equalize_cle(const struct hq_model_config *c, struct hq_block_weights *w) {
  const int64_t H = c->hidden, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads,
                qd = nh * hd, I = c->intermediate, rep = nh / nkv;
  /* v -> o: channel j = kvh * hd + d of v's rows; o columns h * hd + d for h in the group */
  float *V = w->lin[HQ_LIN_V], *O = w->lin[HQ_LIN_O], *vb = w->bias[HQ_LIN_V];
  for (int64_t kvh = 0; kvh < nkv; kvh++)
    for (int64_t d = 0; d < hd; d++) {
      const int64_t j = kvh * hd + d;
      float mn1 = INFINITY, mx1 = -INFINITY, mn2 = INFINITY, mx2 = -INFINITY;
      range_acc(V + j * H, H, 1, &mn1, &mx1);
      if (vb) range_acc(vb + j, 1, 1, &mn1, &mx1);
      for (int64_t h = kvh * rep; h < (kvh + 1) * rep; h++) range_acc(O + h * hd + d, H, qd, &mn2, &mx2);
      const double r1 = (double)mx1 - (double)mn1, r2 = (double)mx2 - (double)mn2;
      if (!(r1 > 0.0) || !(r2 > 0.0) || !isfinite(r1) || !isfinite(r2)) continue;
      const float s = (float)clampd(sqrt(r2 / r1), 1e-4, 1e4);
      for (int64_t k = 0; k < H; k++) V[j * H + k] *= s;
      if (vb) vb[j] *= s;
      for (int64_t h = kvh * rep; h < (kvh + 1) * rep; h++)
        for (int64_t r = 0; r < H; r++) O[r * qd + h * hd + d] /= s;
    }
  /* up -> down: channel j = row j of up, column j of down */
  float *U = w->lin[HQ_LIN_UP], *D = w->lin[HQ_LIN_DOWN], *ub = w->bias[HQ_LIN_UP];
  for (int64_t j = 0; j < I; j++) {
    float mn1 = INFINITY, mx1 = -INFINITY, mn2 = INFINITY, mx2 = -INFINITY;
    range_acc(U + j * H, H, 1, &mn1, &mx1);
    if (ub) range_acc(ub + j, 1, 1, &mn1, &mx1);
    range_acc(D + j, H, I, &mn2, &mx2);
    const double r1 = (double)mx1 - (double)mn1, r2 = (double)mx2 - (double)mn2;
    if (!(r1 > 0.0) || !(r2 > 0.0) || !isfinite(r1) || !isfinite(r2)) continue;
    const float s = (float)clampd(sqrt(r2 / r1), 1e-4, 1e4);
    for (int64_t k = 0; k < H; k++) U[j * H + k] *= s;
    if (ub) ub[j] *= s;
    for (int64_t r = 0; r < H; r++) D[r * I + j] /= s;
  }
}

void hq_equalize_smooth(const struct hq_model_config *c, struct hq_block_weights *w,
                        enum hq_group g, const float *amax, float alpha, float *s_out) {
  HQ_ASSERT(g == HQ_GROUP_QKV || g == HQ_GROUP_GATEUP);
  const int64_t H = c->hidden;
  enum hq_linear lins[3];
  int nl = 0;
  if (g == HQ_GROUP_QKV) {
    lins[nl++] = HQ_LIN_Q;
    lins[nl++] = HQ_LIN_K;
    lins[nl++] = HQ_LIN_V;
  } else {
    lins[nl++] = HQ_LIN_GATE;
    lins[nl++] = HQ_LIN_UP;
  }
  float *ln = g == HQ_GROUP_QKV ? w->ln_attn : w->ln_mlp;
  for (int64_t j = 0; j < H; j++) {
    float wm = 0.0f;
    for (int i = 0; i < nl; i++) {
      int64_t rows, cols;
      hq_linear_shape(c, lins[i], &rows, &cols);
      const float *W = w->lin[lins[i]];
      for (int64_t r = 0; r < rows; r++) {
        const float a = fabsf(W[r * H + j]);
        wm = a > wm ? a : wm;
      }
    }
    double s = 1.0;
    if (amax[j] > 0.0f && wm > 0.0f && isfinite(amax[j]))
      s = clampd(pow((double)amax[j], (double)alpha) / pow((double)wm, 1.0 - (double)alpha), 1e-5, 1e5);
    const float sf = (float)s;
    if (s_out) s_out[j] = sf;
    if (sf == 1.0f) continue;
    ln[j] /= sf;
    for (int i = 0; i < nl; i++) {
      int64_t rows, cols;
      hq_linear_shape(c, lins[i], &rows, &cols);
      float *W = w->lin[lins[i]];
      for (int64_t r = 0; r < rows; r++) W[r * H + j] *= sf;
    }
  }
}
