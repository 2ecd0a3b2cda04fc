/* Equalization (src/quant/equalize.c) preserves the full-precision model: on both bundled models
 * (stories260K fp32, llama-sotu-5m bf16), 2 windows x 64 tokens of their WikiText-2 token
 * files, the logits of the transformed model equal the original's within 1e-5 relative
 * (|a - b| / max_j |b_j| of the row), for CLE, for SmoothQuant smoothing (alpha 0.5 and 0.8,
 * activation maxima from the same forward, as the pipeline takes them) and for both.
 * The tests can fail: each transform must actually change the weights (scales far from 1),
 * CLE must equalize the ranges (range(W1 row j) == range of W2's columns fed by j, checked
 * with a plain loop over the GQA head mapping), and two broken transforms (the norm divided
 * without scaling the linears; the smoothed norm rounded to bf16, which is why the pipeline
 * stores smoothed norms as float32) must move the logits by far more than the tolerance. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "equalize.h"
#include "error.h"
#include "forward.h"
#include "model.h"
#include "quant.h"
#include "testutil.h"

#define NWIN 2
#define SEQ 64
#define TOL 1e-5

enum variant { V_NONE, V_CLE, V_SMOOTH5, V_SMOOTH8, V_BOTH, V_BROKEN_LN, V_BF16_LN, V_COUNT };
static const char *vname[V_COUNT] = {"none", "cle", "smooth a=0.5", "smooth a=0.8", "smooth+cle",
                                     "broken: norm only", "smooth, norm rounded to bf16"};

struct amax_cap {
  enum hq_group want;
  float *amax;
};
static int cap_amax(void *ctx, enum hq_group g, const float *X, int64_t ntok, int64_t cols) {
  struct amax_cap *a = ctx;
  if (g != a->want) return 0;
  for (int64_t j = 0; j < cols; j++) a->amax[j] = 0.0f;
  for (int64_t t = 0; t < ntok; t++)
    for (int64_t j = 0; j < cols; j++) {
      const float v = fabsf(X[t * cols + j]);
      if (v > a->amax[j]) a->amax[j] = v;
    }
  return 1;
}

static double max_abs_log(const float *s, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(log((double)s[i])));
  return m;
}

/* plain check that CLE equalized the ranges of v rows / o columns and up rows / down columns */
static double cle_range_mismatch(const struct hq_model_config *c, const struct hq_block_weights *w) {
  const int64_t H = c->hidden, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads, I = c->intermediate;
  double worst = 0;
  for (int64_t j = 0; j < nkv * hd; j++) {
    float a0 = INFINITY, a1 = -INFINITY, b0 = INFINITY, b1 = -INFINITY;
    for (int64_t k = 0; k < H; k++) {
      a0 = fminf(a0, w->lin[HQ_LIN_V][j * H + k]);
      a1 = fmaxf(a1, w->lin[HQ_LIN_V][j * H + k]);
    }
    for (int64_t h = 0; h < nh; h++) {
      if (h / (nh / nkv) != j / hd) continue; /* q head h reads kv head h / (nh / nkv) */
      for (int64_t r = 0; r < H; r++) {
        const float v = w->lin[HQ_LIN_O][r * nh * hd + h * hd + j % hd];
        b0 = fminf(b0, v);
        b1 = fmaxf(b1, v);
      }
    }
    worst = fmax(worst, fabs((double)(a1 - a0) - (double)(b1 - b0)) / (double)(b1 - b0));
  }
  for (int64_t j = 0; j < I; j++) {
    float a0 = INFINITY, a1 = -INFINITY, b0 = INFINITY, b1 = -INFINITY;
    for (int64_t k = 0; k < H; k++) {
      a0 = fminf(a0, w->lin[HQ_LIN_UP][j * H + k]);
      a1 = fmaxf(a1, w->lin[HQ_LIN_UP][j * H + k]);
    }
    for (int64_t r = 0; r < H; r++) {
      b0 = fminf(b0, w->lin[HQ_LIN_DOWN][r * I + j]);
      b1 = fmaxf(b1, w->lin[HQ_LIN_DOWN][r * I + j]);
    }
    worst = fmax(worst, fabs((double)(a1 - a0) - (double)(b1 - b0)) / (double)(b1 - b0));
  }
  return worst;
}

/* host backend: the block's arrays serve as backend memory */
static struct hq_block_dev dev_of(const struct hq_block_weights *w) {
  struct hq_block_dev d;
  memset(&d, 0, sizeof d);
  memcpy(d.lin, w->lin, sizeof d.lin);
  memcpy(d.bias, w->bias, sizeof d.bias);
  d.ln_attn = w->ln_attn;
  d.ln_mlp = w->ln_mlp;
  return d;
}

/* logits [NWIN*SEQ x vocab] of the model with variant v applied to every block */
static int run_model(const struct hq_model *m, const int32_t *ids, enum variant v, float *logits,
                     double *scale_log) {
  const struct hq_backend *be = hq_backend_cpu();
  const struct hq_model_config *c = &m->cfg;
  const int64_t H = c->hidden, ntok = NWIN * SEQ;
  struct hq_rope_table rope;
  HQ_ASSERT(hq_rope_table_init(&rope, be, c, SEQ) == HQ_OK);
  struct hq_fwd_ws *ws = hq_fwd_ws_new(be, c, ntok);
  float *embed = NULL, *norm = NULL, *x = malloc((size_t)(ntok * H) * sizeof(float));
  float *amax = malloc((size_t)H * sizeof(float)), *s = malloc((size_t)H * sizeof(float));
  int64_t n;
  HQ_ASSERT(hq_model_load_f32(m, "model.embed_tokens.weight", &embed, &n) == HQ_OK);
  HQ_ASSERT(hq_model_load_f32(m, "model.norm.weight", &norm, &n) == HQ_OK);
  hq_forward_embed(be, c, embed, ids, ntok, x);
  *scale_log = 0;
  for (int64_t b = 0; b < c->n_layers; b++) {
    struct hq_block_weights w;
    HQ_ASSERT(hq_model_load_block(m, b, &w) == HQ_OK);
    if (v == V_CLE || v == V_BOTH) {
      float v0 = w.lin[HQ_LIN_V][0], u0 = w.lin[HQ_LIN_UP][0];
      hq_equalize_cle(c, &w);
      *scale_log = fmax(*scale_log, fabs(log(fabs((double)w.lin[HQ_LIN_V][0] / v0))));
      *scale_log = fmax(*scale_log, fabs(log(fabs((double)w.lin[HQ_LIN_UP][0] / u0))));
      double mis = cle_range_mismatch(c, &w);
      CHECK(mis < 1e-5, "block %lld: CLE ranges differ by %.3g relative", (long long)b, mis);
    }
    if (v == V_SMOOTH5 || v == V_SMOOTH8 || v == V_BOTH || v == V_BROKEN_LN || v == V_BF16_LN) {
      const float alpha = v == V_SMOOTH8 ? 0.8f : 0.5f;
      for (int gi = 0; gi < 2; gi++) {
        const enum hq_group g = gi ? HQ_GROUP_GATEUP : HQ_GROUP_QKV;
        struct amax_cap ac = {g, amax};
        struct hq_block_dev dw = dev_of(&w);
        int stopped = hq_forward_block(be, c, &dw, &rope, ws, NWIN, SEQ, x, cap_amax, &ac);
        HQ_ASSERT(stopped == 1);
        float *ln = gi ? w.ln_mlp : w.ln_attn;
        if (v == V_BROKEN_LN) { /* the norm divided, the linears left alone */
          struct hq_block_weights tmp = w;
          float *lncopy = malloc((size_t)H * sizeof(float));
          memcpy(lncopy, ln, (size_t)H * sizeof(float));
          for (int l = 0; l < HQ_LIN_COUNT; l++) {
            int64_t r, cc;
            hq_linear_shape(c, (enum hq_linear)l, &r, &cc);
            tmp.lin[l] = malloc((size_t)(r * cc) * sizeof(float));
            memcpy(tmp.lin[l], w.lin[l], (size_t)(r * cc) * sizeof(float));
          }
          hq_equalize_smooth(c, &tmp, g, amax, alpha, s);
          memcpy(ln, gi ? tmp.ln_mlp : tmp.ln_attn, (size_t)H * sizeof(float));
          for (int l = 0; l < HQ_LIN_COUNT; l++) free(tmp.lin[l]);
          free(lncopy);
        } else {
          hq_equalize_smooth(c, &w, g, amax, alpha, s);
        }
        if (v == V_BF16_LN)
          for (int64_t j = 0; j < H; j++) ln[j] = hq_bf16_to_f32(hq_f32_to_bf16(ln[j]));
        *scale_log = fmax(*scale_log, max_abs_log(s, H));
      }
    }
    struct hq_block_dev dw = dev_of(&w);
    hq_forward_block(be, c, &dw, &rope, ws, NWIN, SEQ, x, NULL, NULL);
    hq_block_weights_free(&w);
  }
  hq_forward_nll(be, c, norm, embed /* tied in both models */, ws, NWIN, SEQ, x, ids, logits);
  HQ_ASSERT(c->tie_embeddings);
  free(embed);
  free(norm);
  free(x);
  free(amax);
  free(s);
  hq_fwd_ws_free(ws);
  hq_rope_table_free(&rope, be);
  return 0;
}

static double max_rel(const float *a, const float *b, int64_t rows, int64_t V) {
  double worst = 0;
  for (int64_t r = 0; r < rows; r++) {
    double mb = 0, md = 0;
    for (int64_t j = 0; j < V; j++) {
      mb = fmax(mb, fabs((double)b[r * V + j]));
      md = fmax(md, fabs((double)a[r * V + j] - (double)b[r * V + j]));
    }
    worst = fmax(worst, md / fmax(mb, 1e-30));
  }
  return worst;
}

static void model_case(const char *dir, const char *tokens) {
  struct hq_model m;
  int rc = hq_model_open(hq_t_data(dir), &m);
  CHECK(rc == HQ_OK, "open %s: %s", dir, hq_last_error());
  if (rc) return;
  struct hq_tokens tok;
  rc = hq_tokens_load(hq_t_data(tokens), m.cfg.vocab, &tok);
  CHECK(rc == HQ_OK && tok.n >= NWIN * SEQ, "tokens %s", tokens);
  if (rc) {
    hq_model_close(&m);
    return;
  }
  const int64_t V = m.cfg.vocab, rows = NWIN * SEQ;
  float *ref = malloc((size_t)(rows * V) * sizeof(float)), *got = malloc((size_t)(rows * V) * sizeof(float));
  double sl;
  run_model(&m, tok.ids, V_NONE, ref, &sl);
  for (int v = V_CLE; v < V_COUNT; v++) {
    run_model(&m, tok.ids, (enum variant)v, got, &sl);
    const double d = max_rel(got, ref, rows, V);
    printf("%s %-30s max |log s| %.3f, logits max rel diff %.3g\n", dir, vname[v], sl, d);
    CHECK(sl > 0.1, "%s %s: scales too close to 1 (max |log s| %.3g): the test would prove nothing",
          dir, vname[v], sl);
    if (v == V_BROKEN_LN || v == V_BF16_LN)
      CHECK(d > 100 * TOL, "%s %s: a broken transform moved the logits only %.3g", dir, vname[v], d);
    else
      CHECK(d <= TOL, "%s %s: logits changed by %.3g relative (tolerance %g)", dir, vname[v], d, TOL);
  }
  free(ref);
  free(got);
  hq_tokens_free(&tok);
  hq_model_close(&m);
}

int main(void) {
  model_case("stories260K-hf", "stories260K-hf/wikitext2-test.tok512.i32");
  model_case("llama-sotu-5m", "llama-sotu-5m/wikitext2-test.i32");
  return hq_t_done("test_equalize");
}
