/* The sparse mixture-of-experts MLP of a block (Mixtral, Qwen3-MoE; see forward_moe.h), on a
 * host backend. Not collective. */
#include "forward_moe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "actquant.h"
#include "error.h"

void hq_moe_route(const struct hq_model_config *c, const float *logits, int64_t ntok,
                  int32_t *sel, float *wt) {
  const int64_t E = c->n_experts, K = c->top_k;
  double *p = hq_xmalloc((size_t)E * sizeof(double));
  for (int64_t t = 0; t < ntok; t++) {
    const float *l = logits + t * E;
    float mx = l[0];
    for (int64_t e = 1; e < E; e++) mx = l[e] > mx ? l[e] : mx;
    double sum = 0;
    for (int64_t e = 0; e < E; e++) sum += (p[e] = exp((double)l[e] - (double)mx));
    /* top-k by probability, the lower expert index first among equals */
    double kept = 0;
    for (int64_t k = 0; k < K; k++) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; e++)
        if (p[e] >= 0 && (best < 0 || p[e] > p[best])) best = e;
      sel[t * K + k] = (int32_t)best;
      wt[t * K + k] = (float)(p[best] / sum);
      kept += (double)wt[t * K + k];
      p[best] = -1.0; /* taken */
    }
    if (c->norm_topk)
      for (int64_t k = 0; k < K; k++) wt[t * K + k] = (float)((double)wt[t * K + k] / kept);
  }
  free(p);
}

int64_t hq_moe_gather(const struct hq_model_config *c, const int32_t *sel, int64_t ntok,
                      int64_t e, int64_t *tok, int64_t *slot) {
  int64_t n = 0;
  for (int64_t t = 0; t < ntok; t++)
    for (int64_t k = 0; k < c->top_k; k++)
      if (sel[t * c->top_k + k] == e) {
        tok[n] = t;
        slot[n++] = t * c->top_k + k;
      }
  return n;
}

/* Buffers of one window's MoE (host). */
struct moe_buf {
  float *logits;          /* [S x E] router logits */
  int32_t *sel;           /* [S x K] chosen experts */
  float *wt;              /* [S x K] their weights */
  int64_t *tok, *slot;    /* [S] the tokens routed to one expert, their (t, k) slot */
  float *X, *G, *U, *D;   /* [S x H], [S x I], [S x I], [S x H] one expert's rows */
  float *acc;             /* [S x H] sum over experts of weight * expert output */
};

static void moe_buf_new(const struct hq_model_config *c, int64_t S, struct moe_buf *b) {
  const size_t f = sizeof(float), H = (size_t)c->hidden, I = (size_t)c->moe_intermediate;
  const size_t n = (size_t)S;
  b->logits = hq_xmalloc(n * (size_t)c->n_experts * f);
  b->sel = hq_xmalloc(n * (size_t)c->top_k * sizeof(int32_t));
  b->wt = hq_xmalloc(n * (size_t)c->top_k * f);
  b->tok = hq_xmalloc(n * sizeof(int64_t));
  b->slot = hq_xmalloc(n * sizeof(int64_t));
  b->X = hq_xmalloc(n * H * f);
  b->G = hq_xmalloc(n * I * f);
  b->U = hq_xmalloc(n * I * f);
  b->D = hq_xmalloc(n * H * f);
  b->acc = hq_xmalloc(n * H * f);
}

static void moe_buf_free(struct moe_buf *b) {
  free(b->logits), free(b->sel), free(b->wt), free(b->tok), free(b->slot);
  free(b->X), free(b->G), free(b->U), free(b->D), free(b->acc);
}

void hq_moe_expert_act(const struct hq_backend *be, const struct hq_model_config *c,
                       float *const *w, int act_bits, int64_t n, const float *X, float *G,
                       float *U) {
  const int64_t H = c->hidden, I = c->moe_intermediate;
  be->gemm_rows(0, n, 0, 1, n, I, H, 1.0f, X, H, w[HQ_EXP_GATE], H, 0.0f, G, I);
  be->gemm_rows(0, n, 0, 1, n, I, H, 1.0f, X, H, w[HQ_EXP_UP], H, 0.0f, U, I);
  be->swiglu(n * I, G, U, G);
  if (act_bits) hq_act_quant_apply(be, G, n, I, act_bits, NULL);
}

/* Expert e on its ne gathered rows b->X: b->D = down(silu(gate(X)) * up(X)). */
static void expert_mlp(const struct hq_backend *be, const struct hq_model_config *c,
                       float *const *w, int act_bits, int64_t ne, struct moe_buf *b) {
  const int64_t H = c->hidden, I = c->moe_intermediate;
  hq_moe_expert_act(be, c, w, act_bits, ne, b->X, b->G, b->U);
  be->gemm_rows(0, ne, 0, 1, ne, H, I, 1.0f, b->G, I, w[HQ_EXP_DOWN], I, 0.0f, b->D, H);
}

/* One window (S tokens of xn, the residual h updated in place). */
static void moe_window(const struct hq_backend *be, const struct hq_model_config *c,
                       const float *router, float *const *experts, int act_bits, int64_t S,
                       const float *xn, float *h, struct moe_buf *b) {
  const int64_t H = c->hidden, E = c->n_experts;
  be->gemm_rows(0, S, 0, 1, S, E, H, 1.0f, xn, H, router, H, 0.0f, b->logits, E);
  hq_moe_route(c, b->logits, S, b->sel, b->wt);
  memset(b->acc, 0, (size_t)(S * H) * sizeof(float));
  for (int64_t e = 0; e < E; e++) {
    const int64_t ne = hq_moe_gather(c, b->sel, S, e, b->tok, b->slot);
    if (ne == 0) continue;
    for (int64_t i = 0; i < ne; i++)
      memcpy(b->X + i * H, xn + b->tok[i] * H, (size_t)H * sizeof(float));
    expert_mlp(be, c, experts + 3 * e, act_bits, ne, b);
    for (int64_t i = 0; i < ne; i++) {
      const float wgt = b->wt[b->slot[i]];
      float *a = b->acc + b->tok[i] * H;
      const float *d = b->D + i * H;
      for (int64_t j = 0; j < H; j++) a[j] += d[j] * wgt;
    }
  }
  for (int64_t i = 0; i < S * H; i++) h[i] += b->acc[i];
}

void hq_forward_moe(const struct hq_backend *be, const struct hq_model_config *c,
                    const float *router, float *const *experts, int act_bits, int64_t nseq,
                    int64_t seqlen, const float *xn, float *h) {
  HQ_ASSERT(!be->on_device && router && experts);
  struct moe_buf b;
  moe_buf_new(c, seqlen, &b);
  for (int64_t s = 0; s < nseq; s++)
    moe_window(be, c, router, experts, act_bits, seqlen, xn + s * seqlen * c->hidden,
               h + s * seqlen * c->hidden, &b);
  moe_buf_free(&b);
}
