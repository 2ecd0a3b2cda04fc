/* The Llama-family forward through the backend interface (see forward.h): rope tables,
 * block upload, workspace, one block forward with the capture hook, embedding, final norm +
 * lm_head + next-token NLL, and the whole-model helper that streams blocks. Not collective. */
#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "actquant.h"
#include "error.h"
#include "fastmath.h"
#include "forward_moe.h"

/* ---------------- rope ---------------- */

/* inv_freq[i], i < half, in double: theta^(-2i/head_dim), then HF's "llama3" rope_scaling
 * (transformers _compute_llama3_parameters): wavelengths longer than
 * original_max_pos / low_freq_factor are divided by factor, shorter than
 * original_max_pos / high_freq_factor kept, and the band in between interpolated smoothly. */
static int rope_inv_freq(const struct hq_model_config *c, double *inv) {
  const int64_t hd = c->head_dim, half = hd / 2;
  if (!(c->rope_theta > 0))
    return hq_fail(HQ_ERR_INPUT, "rope_theta is %g; it must be positive (check config.json)",
                   c->rope_theta);
  for (int64_t i = 0; i < half; i++) inv[i] = 1.0 / pow(c->rope_theta, (double)(2 * i) / (double)hd);
  if (c->rope_type == HQ_ROPE_DEFAULT) return HQ_OK;
  if (c->rope_type != HQ_ROPE_LLAMA3)
    return hq_fail(HQ_ERR_UNSUPPORTED, "rope_scaling type %d is not supported (default and "
                   "llama3 are)", (int)c->rope_type);
  const double factor = c->rope_factor, lo = c->rope_low_freq_factor,
               hi = c->rope_high_freq_factor, old = (double)c->rope_original_max_pos;
  if (!(factor > 0) || !(lo > 0) || !(hi > lo) || !(old > 0))
    return hq_fail(HQ_ERR_INPUT,
                   "llama3 rope_scaling needs factor > 0, 0 < low_freq_factor < "
                   "high_freq_factor and original_max_position_embeddings > 0; got factor %g, "
                   "low %g, high %g, original %g (check config.json)", factor, lo, hi, old);
  const double lo_wl = old / lo, hi_wl = old / hi;
  for (int64_t i = 0; i < half; i++) {
    const double wl = 2.0 * M_PI / inv[i];
    if (wl < hi_wl) continue;                 /* high frequency: unchanged */
    if (wl > lo_wl) {                         /* low frequency: scaled */
      inv[i] /= factor;
      continue;
    }
    const double smooth = (old / wl - lo) / (hi - lo);
    inv[i] = (1.0 - smooth) * inv[i] / factor + smooth * inv[i];
  }
  return HQ_OK;
}

int hq_rope_table_init(struct hq_rope_table *r, const struct hq_backend *be,
                       const struct hq_model_config *c, int64_t max_pos) {
  memset(r, 0, sizeof *r);
  if (c->head_dim <= 0 || c->head_dim % 2)
    return hq_fail(HQ_ERR_UNSUPPORTED, "head_dim %lld: rotary embeddings need an even head_dim",
                   (long long)c->head_dim);
  if (max_pos <= 0) return hq_fail(HQ_ERR_INPUT, "rope table for %lld positions", (long long)max_pos);
  const int64_t half = c->head_dim / 2;
  double *inv = malloc((size_t)half * sizeof(double));
  float *ct = malloc((size_t)(max_pos * half) * sizeof(float));
  float *st = malloc((size_t)(max_pos * half) * sizeof(float));
  int rc = HQ_OK;
  if (!inv || !ct || !st) {
    rc = hq_fail(HQ_ERR_NOMEM, "rope table of %lld x %lld: out of host memory",
                 (long long)max_pos, (long long)half);
    goto done;
  }
  rc = rope_inv_freq(c, inv);
  if (rc) goto done;
  /* Like HF: inv_freq and the angle pos * inv_freq are fp32 (one rounding of the product),
   * cos/sin of that fp32 angle. */
  for (int64_t p = 0; p < max_pos; p++)
    for (int64_t i = 0; i < half; i++) {
      const float ang = (float)p * (float)inv[i];
      ct[p * half + i] = (float)cos((double)ang);
      st[p * half + i] = (float)sin((double)ang);
    }
  const size_t bytes = (size_t)(max_pos * half) * sizeof(float);
  r->cos_t = be->alloc(bytes);
  r->sin_t = be->alloc(bytes);
  if (!r->cos_t || !r->sin_t) {
    hq_rope_table_free(r, be);
    rc = hq_fail(HQ_ERR_NOMEM, "rope table: out of %s memory", be->name);
    goto done;
  }
  be->upload(r->cos_t, ct, bytes);
  be->upload(r->sin_t, st, bytes);
  r->max_pos = max_pos;
  r->half = half;
done:
  free(inv);
  free(ct);
  free(st);
  return rc;
}

void hq_rope_table_free(struct hq_rope_table *r, const struct hq_backend *be) {
  if (r->cos_t) be->free(r->cos_t);
  if (r->sin_t) be->free(r->sin_t);
  memset(r, 0, sizeof *r);
}

/* ---------------- block weights ---------------- */

/* d's member for block tensor kind k (as hq_block_tensor_slot for host weights) */
static float **dev_slot(struct hq_block_dev *d, enum hq_btensor k) {
  HQ_BT_RETURN_MEMBER(d, k)
  HQ_DIE("bad block tensor %d", (int)k);
}

/* a copy of the router and experts of w into d (host backends); non-zero when out of memory */
static int upload_experts(const struct hq_backend *be, const struct hq_model_config *c,
                          const struct hq_block_weights *w, struct hq_block_dev *d) {
  const size_t rb = (size_t)(c->n_experts * c->hidden) * sizeof(float);
  if (!(d->router = be->alloc(rb))) return 1;
  be->upload(d->router, w->router, rb);
  if (!(d->experts = calloc((size_t)w->n_expert_slots, sizeof *d->experts))) return 1;
  d->n_expert_slots = w->n_expert_slots;
  for (int64_t i = 0; i < w->n_expert_slots; i++) {
    int64_t rows, cols;
    hq_expert_shape(c, (enum hq_expert_part)(i % 3), &rows, &cols);
    const size_t bytes = (size_t)(rows * cols) * sizeof(float);
    if (!(d->experts[i] = be->alloc(bytes))) return 1;
    be->upload(d->experts[i], w->experts[i], bytes);
  }
  return 0;
}

int hq_block_dev_upload(const struct hq_backend *be, const struct hq_model_config *c,
                        const struct hq_block_weights *w, struct hq_block_dev *d) {
  memset(d, 0, sizeof *d);
  if (w->experts && be->on_device)
    return hq_fail(HQ_ERR_UNSUPPORTED, "a mixture-of-experts block runs on the cpu backend only "
                   "(the %s backend has no expert routing yet); use --backend cpu", be->name);
  if (w->experts && upload_experts(be, c, w, d)) goto oom;
  for (int l = 0; l < HQ_LIN_COUNT; l++) {
    if (!w->lin[l]) continue; /* gate/up/down of a MoE block */
    int64_t rows, cols;
    hq_linear_shape(c, (enum hq_linear)l, &rows, &cols);
    const size_t bytes = (size_t)(rows * cols) * sizeof(float);
    if (!(d->lin[l] = be->alloc(bytes))) goto oom;
    be->upload(d->lin[l], w->lin[l], bytes);
  }
  struct hq_block_tensor bt[HQ_BT_COUNT];
  const int nbt = hq_block_tensors(c, bt);
  for (int k = 0; k < nbt; k++) {
    const size_t bytes = (size_t)bt[k].len * sizeof(float);
    float **dst = dev_slot(d, bt[k].kind);
    if (!(*dst = be->alloc(bytes))) goto oom;
    be->upload(*dst, *hq_block_tensor_slot((struct hq_block_weights *)w, bt[k].kind), bytes);
  }
  return HQ_OK;
oom:
  hq_block_dev_free(be, d);
  return hq_fail(HQ_ERR_NOMEM, "uploading a block's weights: out of %s memory", be->name);
}

int hq_block_dev_borrow(const struct hq_backend *be, const struct hq_model_config *c,
                        const struct hq_block_weights *w, struct hq_block_dev *d) {
  if (be->on_device) return hq_block_dev_upload(be, c, w, d);
  memset(d, 0, sizeof *d);
  memcpy(d->lin, w->lin, sizeof d->lin);
  d->router = w->router;
  d->experts = w->experts;
  d->n_expert_slots = w->n_expert_slots;
  for (int k = 0; k < HQ_BT_COUNT; k++)
    *dev_slot(d, (enum hq_btensor)k) = *hq_block_tensor_slot((struct hq_block_weights *)w,
                                                             (enum hq_btensor)k);
  d->borrowed = 1;
  return HQ_OK;
}

void hq_block_dev_free(const struct hq_backend *be, struct hq_block_dev *d) {
  if (d->borrowed) {
    memset(d, 0, sizeof *d);
    return;
  }
  for (int l = 0; l < HQ_LIN_COUNT; l++)
    if (d->lin[l]) be->free(d->lin[l]);
  if (d->router) be->free(d->router);
  for (int64_t i = 0; d->experts && i < d->n_expert_slots; i++)
    if (d->experts[i]) be->free(d->experts[i]);
  free(d->experts);
  for (int k = 0; k < HQ_BT_COUNT; k++) {
    float **p = dev_slot(d, (enum hq_btensor)k);
    if (*p) be->free(*p);
  }
  memset(d, 0, sizeof *d);
}

/* ---------------- workspace ---------------- */

/* Target size of one logits chunk (floats): 16 M floats = 64 MiB. */
#define HQ_LOGITS_CHUNK_FLOATS (16LL << 20)

struct hq_fwd_ws {
  const struct hq_backend *be;
  int64_t cap;            /* tokens */
  int64_t hidden, qdim, kvdim, inter, vocab;
  float *xn;              /* [cap x hidden] normed input of QKV / GATEUP */
  float *h;               /* [cap x hidden] residual stream */
  float *q, *att;         /* [cap x nh*hd] */
  float *k, *v;           /* [cap x nkv*hd] */
  float *g, *u;           /* [cap x inter]; g holds silu(g)*u after swiglu */
  float *ones;            /* [cap] of 1.0f (bias broadcast through gemm), NULL without bias */
  int32_t *pos;           /* [cap] positions t % pos_seqlen, backend memory */
  int64_t pos_seqlen;     /* the seqlen pos was filled for (0: not yet) */
  int64_t lchunk;         /* rows of a logits chunk */
  float *logits;          /* [lchunk x vocab] backend memory */
  float *logits_host;     /* [lchunk x vocab] host (== logits on a host backend) */
  double *row_nll;        /* [lchunk] host */
  int act_bits;           /* 0 or per-token activation fake-quantization bits */
  float *act_host;        /* [cap x max(hidden, qdim, inter)] host staging (device backends) */
};

void hq_fwd_ws_free(struct hq_fwd_ws *ws) {
  if (!ws) return;
  const struct hq_backend *be = ws->be;
  float *dev[] = {ws->xn, ws->h, ws->q, ws->att, ws->k, ws->v, ws->g, ws->u, ws->ones, ws->logits};
  for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
    if (dev[i]) be->free(dev[i]);
  if (ws->pos) be->free(ws->pos);
  if (ws->logits_host && ws->logits_host != ws->logits) free(ws->logits_host);
  free(ws->row_nll);
  free(ws->act_host);
  free(ws);
}

int hq_fwd_ws_set_act_bits(struct hq_fwd_ws *ws, int bits) {
  if (bits != 0 && (bits < 2 || bits > 16))
    return hq_fail(HQ_ERR_INPUT, "activation bits must be 0 (off) or 2..16, got %d", bits);
  if (bits && ws->be->on_device && !ws->act_host) {
    int64_t w = ws->hidden > ws->qdim ? ws->hidden : ws->qdim;
    w = w > ws->inter ? w : ws->inter;
    ws->act_host = malloc((size_t)(ws->cap * w) * sizeof(float));
    if (!ws->act_host)
      return hq_fail(HQ_ERR_NOMEM, "activation quantization staging buffer of %lld x %lld floats: "
                     "out of host memory", (long long)ws->cap, (long long)w);
  }
  ws->act_bits = bits;
  return HQ_OK;
}

int hq_fwd_ws_act_bits(const struct hq_fwd_ws *ws) { return ws->act_bits; }

/* the input of a linear group, fake-quantized per token when act_bits is set */
static void act_quant(const struct hq_backend *be, struct hq_fwd_ws *ws, float *X, int64_t ntok,
                      int64_t cols) {
  if (ws->act_bits) hq_act_quant_apply(be, X, ntok, cols, ws->act_bits, ws->act_host);
}

/* sizes of a workspace of ntok tokens; a logits chunk holds about HQ_LOGITS_CHUNK_FLOATS */
static void ws_dims(struct hq_fwd_ws *ws, const struct hq_model_config *c, int64_t ntok) {
  ws->cap = ntok;
  ws->hidden = c->hidden;
  ws->qdim = c->n_heads * c->head_dim;
  ws->kvdim = c->n_kv_heads * c->head_dim;
  ws->inter = c->intermediate;
  ws->vocab = c->vocab;
  ws->lchunk = HQ_LOGITS_CHUNK_FLOATS / c->vocab;
  if (ws->lchunk < 1) ws->lchunk = 1;
  if (ws->lchunk > ntok) ws->lchunk = ntok;
}

/* every buffer but ones (see struct hq_fwd_ws); 0 when one does not fit */
static int ws_alloc(struct hq_fwd_ws *ws) {
  const struct hq_backend *be = ws->be;
  const int64_t n = ws->cap;
  const size_t f = sizeof(float);
  int ok = (ws->xn = be->alloc((size_t)(n * ws->hidden) * f)) &&
           (ws->h = be->alloc((size_t)(n * ws->hidden) * f)) &&
           (ws->q = be->alloc((size_t)(n * ws->qdim) * f)) &&
           (ws->att = be->alloc((size_t)(n * ws->qdim) * f)) &&
           (ws->k = be->alloc((size_t)(n * ws->kvdim) * f)) &&
           (ws->v = be->alloc((size_t)(n * ws->kvdim) * f)) &&
           (ws->g = be->alloc((size_t)(n * ws->inter) * f)) &&
           (ws->u = be->alloc((size_t)(n * ws->inter) * f)) &&
           (ws->pos = be->alloc((size_t)n * sizeof(int32_t))) &&
           (ws->logits = be->alloc((size_t)(ws->lchunk * ws->vocab) * f)) &&
           (ws->row_nll = malloc((size_t)ws->lchunk * sizeof(double)));
  if (ok) {
    ws->logits_host = be->on_device ? malloc((size_t)(ws->lchunk * ws->vocab) * f) : ws->logits;
    ok = ws->logits_host != NULL;
  }
  return ok;
}

/* ones [cap] of 1.0f in backend memory (the bias broadcast); 0 when out of memory */
static int ws_alloc_ones(struct hq_fwd_ws *ws) {
  const size_t bytes = (size_t)ws->cap * sizeof(float);
  float *one = malloc(bytes);
  int ok = one && (ws->ones = ws->be->alloc(bytes));
  if (ok) {
    for (int64_t i = 0; i < ws->cap; i++) one[i] = 1.0f;
    ws->be->upload(ws->ones, one, bytes);
  }
  free(one);
  return ok;
}

struct hq_fwd_ws *hq_fwd_ws_new(const struct hq_backend *be, const struct hq_model_config *c,
                                int64_t ntok) {
  HQ_ASSERT(ntok > 0);
  struct hq_fwd_ws *ws = calloc(1, sizeof *ws);
  if (!ws) {
    hq_fail(HQ_ERR_NOMEM, "forward workspace: out of host memory");
    return NULL;
  }
  ws->be = be;
  ws_dims(ws, c, ntok);
  if (ws_alloc(ws) && (!c->qkv_bias || ws_alloc_ones(ws))) return ws;
  hq_fwd_ws_free(ws);
  const double mb = (double)ntok * (double)(2 * c->hidden + 2 * (c->n_heads + c->n_kv_heads) *
                                                c->head_dim + 2 * c->intermediate) * 4.0 / 1048576.0;
  hq_fail(HQ_ERR_NOMEM,
          "forward workspace for %lld tokens (~%.0f MiB of %s memory): out of memory; "
          "use fewer tokens per chunk", (long long)ntok, mb, be->name);
  return NULL;
}

/* positions t % seqlen for the first cap tokens (refilled only when seqlen changes) */
static void ws_positions(struct hq_fwd_ws *ws, int64_t seqlen) {
  if (ws->pos_seqlen == seqlen) return;
  int32_t *p = hq_xmalloc((size_t)ws->cap * sizeof(int32_t));
  for (int64_t t = 0; t < ws->cap; t++) p[t] = (int32_t)(t % seqlen);
  ws->be->upload(ws->pos, p, (size_t)ws->cap * sizeof(int32_t));
  free(p);
  ws->pos_seqlen = seqlen;
}

/* Y[ntok x rows] = X[ntok x cols] · Wᵀ (+ bias broadcast over tokens) (+ Y when accumulate).
 * Tokens are rows of windows of seqlen: gemm_rows makes each token's output a function of its
 * own input and position alone, however many windows one call holds. */
static void linear(const struct hq_backend *be, const struct hq_fwd_ws *ws, int64_t ntok,
                   int64_t seqlen, int64_t rows, int64_t cols, const float *X, const float *W,
                   const float *bias, float *Y, int accumulate) {
  float beta = accumulate ? 1.0f : 0.0f;
  if (bias) {
    /* Y (+)= ones[ntok x 1] · bias[1 x rows]: the broadcast through one rank-1 gemm */
    be->gemm_rows(0, seqlen, 0, 0, ntok, rows, 1, 1.0f, ws->ones, 1, bias, rows, beta, Y, rows);
    beta = 1.0f;
  }
  be->gemm_rows(0, seqlen, 0, 1, ntok, rows, cols, 1.0f, X, cols, W, cols, beta, Y, rows);
}

/* ---- the block's stages: each computes one linear group's input from the previous stage's
 * activations (struct hq_fwd_carry). hq_forward_block runs them in a row; the pipeline runs
 * them one group at a time over all its windows, keeping the activations in between. */

struct fwd_call {
  const struct hq_backend *be;
  const struct hq_model_config *c;
  const struct hq_block_dev *w;
  const struct hq_rope_table *rope;
  struct hq_fwd_ws *ws;
  int64_t ntok, seqlen;
};

static struct fwd_call fwd_call(const struct hq_backend *be, const struct hq_model_config *c,
                                const struct hq_block_dev *w, const struct hq_rope_table *rope,
                                struct hq_fwd_ws *ws, int64_t nseq, int64_t seqlen) {
  const int64_t ntok = nseq * seqlen, qd = c->n_heads * c->head_dim;
  HQ_ASSERT(ntok > 0 && ntok <= ws->cap && ws->hidden == c->hidden && ws->qdim == qd &&
            ws->kvdim == c->n_kv_heads * c->head_dim && ws->inter == c->intermediate);
  HQ_ASSERT(seqlen <= rope->max_pos && rope->half == c->head_dim / 2);
  HQ_ASSERT(!(w->bias[HQ_LIN_Q] || w->bias[HQ_LIN_K] || w->bias[HQ_LIN_V]) || ws->ones);
  HQ_ASSERT(!c->qk_norm || (w->q_norm && w->k_norm));
  return (struct fwd_call){be, c, w, rope, ws, ntok, seqlen};
}

static void fwd_linear(const struct fwd_call *f, enum hq_linear l, const float *X, float *Y,
                       int accumulate) {
  int64_t rows, cols;
  hq_linear_shape(f->c, l, &rows, &cols);
  linear(f->be, f->ws, f->ntok, f->seqlen, rows, cols, X, f->w->lin[l], f->w->bias[l], Y,
         accumulate);
}

/* QKV input: ws->xn = rmsnorm(x) (activation-quantized when set) */
static void st_attn_in(const struct fwd_call *f, const float *x) {
  f->be->rmsnorm(f->ntok, f->c->hidden, x, f->w->ln_attn, f->c->rms_eps, f->ws->xn);
  act_quant(f->be, f->ws, f->ws->xn, f->ntok, f->c->hidden);
}

/* O input: att = attention(rope(q), rope(k), v) of ws->xn */
static void st_attn(const struct fwd_call *f, float *att) {
  const struct hq_model_config *c = f->c;
  struct hq_fwd_ws *ws = f->ws;
  ws_positions(ws, f->seqlen);
  fwd_linear(f, HQ_LIN_Q, ws->xn, ws->q, 0);
  fwd_linear(f, HQ_LIN_K, ws->xn, ws->k, 0);
  fwd_linear(f, HQ_LIN_V, ws->xn, ws->v, 0);
  if (c->qk_norm) { /* Qwen3: RMSNorm over each head's head_dim values, in place */
    f->be->rmsnorm(f->ntok * c->n_heads, c->head_dim, ws->q, f->w->q_norm, c->rms_eps, ws->q);
    f->be->rmsnorm(f->ntok * c->n_kv_heads, c->head_dim, ws->k, f->w->k_norm, c->rms_eps, ws->k);
  }
  f->be->rope(f->ntok, c->n_heads, c->head_dim, ws->pos, f->rope->cos_t, f->rope->sin_t, ws->q);
  f->be->rope(f->ntok, c->n_kv_heads, c->head_dim, ws->pos, f->rope->cos_t, f->rope->sin_t, ws->k);
  f->be->attention(f->ntok / f->seqlen, f->seqlen, c->n_heads, c->n_kv_heads, c->head_dim, ws->q,
                   ws->k, ws->v, att);
  act_quant(f->be, ws, att, f->ntok, c->n_heads * c->head_dim);
}

/* GATE/UP input from the residual h: ws->xn = rmsnorm(h) */
static void st_mlp_norm(const struct fwd_call *f, const float *h) {
  f->be->rmsnorm(f->ntok, f->c->hidden, h, f->w->ln_mlp, f->c->rms_eps, f->ws->xn);
  act_quant(f->be, f->ws, f->ws->xn, f->ntok, f->c->hidden);
}

/* h = x + o_proj(att), then the GATE/UP input */
static void st_mlp_in(const struct fwd_call *f, const float *x, const float *att, float *h) {
  f->be->copy(h, x, (size_t)(f->ntok * f->c->hidden) * sizeof(float));
  fwd_linear(f, HQ_LIN_O, att, h, 1);
  st_mlp_norm(f, h);
}

/* DOWN input: act = silu(gate(ws->xn)) * up(ws->xn) */
static void st_mlp(const struct fwd_call *f, float *act) {
  fwd_linear(f, HQ_LIN_GATE, f->ws->xn, act, 0);
  fwd_linear(f, HQ_LIN_UP, f->ws->xn, f->ws->u, 0);
  f->be->swiglu(f->ntok * f->c->intermediate, act, f->ws->u, act);
  act_quant(f->be, f->ws, act, f->ntok, f->c->intermediate);
}

/* the block output: x = h + down(act) (h updated in place) */
static void st_out(const struct fwd_call *f, const float *act, float *h, float *x) {
  fwd_linear(f, HQ_LIN_DOWN, act, h, 1);
  f->be->copy(x, h, (size_t)(f->ntok * f->c->hidden) * sizeof(float));
}

int hq_forward_block(const struct hq_backend *be, const struct hq_model_config *c,
                     const struct hq_block_dev *w, const struct hq_rope_table *rope,
                     struct hq_fwd_ws *ws, int64_t nseq, int64_t seqlen, float *x,
                     hq_capture_fn capture, void *ctx) {
  const struct fwd_call f = fwd_call(be, c, w, rope, ws, nseq, seqlen);
  const int64_t ntok = f.ntok, H = c->hidden, qd = c->n_heads * c->head_dim;
  st_attn_in(&f, x);
  if (capture && capture(ctx, HQ_GROUP_QKV, ws->xn, ntok, H)) return 1;
  st_attn(&f, ws->att);
  if (capture && capture(ctx, HQ_GROUP_O, ws->att, ntok, qd)) return 1;
  st_mlp_in(&f, x, ws->att, ws->h);
  if (capture && capture(ctx, HQ_GROUP_GATEUP, ws->xn, ntok, H)) return 1;
  if (w->experts) { /* sparse MLP: the experts' inputs are not captured here */
    hq_forward_moe(be, c, w->router, w->experts, ws->act_bits, nseq, seqlen, ws->xn, ws->h);
    be->copy(x, ws->h, (size_t)(ntok * H) * sizeof(float));
    return 0;
  }
  st_mlp(&f, ws->g);
  if (capture && capture(ctx, HQ_GROUP_DOWN, ws->g, ntok, c->intermediate)) return 1;
  st_out(&f, ws->g, ws->h, x);
  return 0;
}

int hq_forward_group_input(const struct hq_backend *be, const struct hq_model_config *c,
                           const struct hq_block_dev *w, const struct hq_rope_table *rope,
                           struct hq_fwd_ws *ws, int64_t nseq, int64_t seqlen, enum hq_group g,
                           const struct hq_fwd_carry *cr, hq_capture_fn capture, void *ctx) {
  const struct fwd_call f = fwd_call(be, c, w, rope, ws, nseq, seqlen);
  const int64_t ntok = f.ntok, H = c->hidden;
  switch (g) {
  case HQ_GROUP_QKV:
    st_attn_in(&f, cr->x);
    return capture(ctx, g, ws->xn, ntok, H);
  case HQ_GROUP_O:
    st_attn_in(&f, cr->x);
    st_attn(&f, cr->att);
    return capture(ctx, g, cr->att, ntok, c->n_heads * c->head_dim);
  case HQ_GROUP_GATEUP:
    st_mlp_in(&f, cr->x, cr->att, cr->h);
    return capture(ctx, g, ws->xn, ntok, H);
  default:
    HQ_ASSERT(g == HQ_GROUP_DOWN && !w->experts);
    st_mlp_norm(&f, cr->h);
    st_mlp(&f, cr->act);
    return capture(ctx, g, cr->act, ntok, c->intermediate);
  }
}

void hq_forward_group_output(const struct hq_backend *be, const struct hq_model_config *c,
                             const struct hq_block_dev *w, const struct hq_rope_table *rope,
                             struct hq_fwd_ws *ws, int64_t nseq, int64_t seqlen,
                             const struct hq_fwd_carry *cr) {
  const struct fwd_call f = fwd_call(be, c, w, rope, ws, nseq, seqlen);
  st_out(&f, cr->act, cr->h, cr->x);
}

/* ---------------- embedding, head ---------------- */

void hq_forward_embed(const struct hq_backend *be, const struct hq_model_config *c,
                      const float *embed_host, const int32_t *ids, int64_t ntok, float *x) {
  const int64_t H = c->hidden;
  float *dst = be->on_device ? hq_xmalloc((size_t)(ntok * H) * sizeof(float)) : x;
  for (int64_t t = 0; t < ntok; t++) {
    HQ_ASSERT(ids[t] >= 0 && ids[t] < c->vocab); /* token files are checked on load */
    memcpy(dst + t * H, embed_host + (int64_t)ids[t] * H, (size_t)H * sizeof(float));
  }
  if (be->on_device) {
    be->upload(x, dst, (size_t)(ntok * H) * sizeof(float));
    free(dst);
  }
}

int hq_forward_embed_rows(const struct hq_backend *be, const struct hq_model *m,
                          const int32_t *ids, int64_t ntok, float *x) {
  const size_t bytes = (size_t)(ntok * m->cfg.hidden) * sizeof(float);
  float *rows = be->on_device ? malloc(bytes + 1) : x;
  if (!rows) return hq_fail(HQ_ERR_NOMEM, "out of host memory staging %lld embeddings", (long long)ntok);
  const int rc = hq_model_embed_rows(m, ids, ntok, rows);
  if (be->on_device) {
    if (!rc) be->upload(x, rows, bytes);
    free(rows);
  }
  return rc;
}

double hq_forward_nll(const struct hq_backend *be, const struct hq_model_config *c,
                      const float *norm_w, const float *lm_head, struct hq_fwd_ws *ws,
                      int64_t nseq, int64_t seqlen, const float *x, const int32_t *ids,
                      float *logits_out) {
  const int64_t ntok = nseq * seqlen, H = c->hidden, V = c->vocab;
  HQ_ASSERT(ntok > 0 && ntok <= ws->cap && ws->vocab == V && ws->hidden == H);
  be->rmsnorm(ntok, H, x, norm_w, c->rms_eps, ws->xn);
  double total = 0;
  /* chunks of whole windows, or of one window's tokens (gemm_rows: per-token results) */
  const int64_t per = ws->lchunk >= seqlen ? ws->lchunk / seqlen * seqlen : ws->lchunk;
  for (int64_t r0 = 0; r0 < ntok;) {
    int64_t nr = ntok - r0 < per ? ntok - r0 : per;
    if (per < seqlen && r0 % seqlen + nr > seqlen) nr = seqlen - r0 % seqlen;
    be->gemm_rows(r0 % seqlen, seqlen, 0, 1, nr, V, H, 1.0f, ws->xn + r0 * H, H, lm_head, H, 0.0f,
                  ws->logits, V);
    if (be->on_device) be->download(ws->logits_host, ws->logits, (size_t)(nr * V) * sizeof(float));
    const float *L = ws->logits_host;
    if (logits_out) memcpy(logits_out + r0 * V, L, (size_t)(nr * V) * sizeof(float));
    /* -log softmax(row)[next token]: vectorized float exps, double accumulation, one thread
     * (no OpenMP region next to OpenBLAS's threads, see backend_cpu_fwd.c); deterministic */
    for (int64_t i = 0; i < nr; i++) {
      const int64_t t = r0 + i;
      if (t % seqlen == seqlen - 1) {
        ws->row_nll[i] = 0;
        continue;
      }
      const float *row = L + i * V;
      const float m = hq_maxf(row, V);
      const double lse = (double)m + log(hq_sum_exp_shift(row, V, m));
      ws->row_nll[i] = lse - (double)row[ids[t + 1]];
    }
    for (int64_t i = 0; i < nr; i++) total += ws->row_nll[i];
    r0 += nr;
  }
  return total;
}

/* ---------------- whole model ---------------- */

#define HQ_EVAL_ACT_BUDGET (1LL << 30)  /* bytes of resident activations by default */
#define HQ_EVAL_KEEP_BUDGET (4LL << 30) /* bytes of f32 weights kept across batches by default */

/* f32 floats of block b's weights: its linears [rows x cols] (a MoE block: attention, router
 * and experts) and its unquantized vectors (hq_block_tensors) */
static int64_t block_weight_floats(const struct hq_model_config *c, int64_t b) {
  const int moe = hq_config_moe_block(c, b);
  int64_t n = 0;
  for (int l = 0; l < (moe ? HQ_LIN_GATE : HQ_LIN_COUNT); l++) {
    int64_t rows, cols;
    hq_linear_shape(c, (enum hq_linear)l, &rows, &cols);
    n += rows * cols;
  }
  if (moe) n += c->n_experts * (c->hidden + 3 * c->hidden * c->moe_intermediate);
  struct hq_block_tensor bt[HQ_BT_COUNT];
  const int nbt = hq_block_tensors(c, bt);
  for (int k = 0; k < nbt; k++) n += bt[k].len;
  return n;
}

/* f32 bytes of what every batch would stream: each block and an untied lm_head
 * [vocab x hidden] */
static int64_t model_weight_bytes(const struct hq_model_config *c) {
  int64_t n = c->tie_embeddings ? 0 : c->vocab * c->hidden;
  for (int64_t b = 0; b < c->n_layers; b++) n += block_weight_floats(c, b);
  return n * (int64_t)sizeof(float);
}

int hq_forward_model_plan(const struct hq_model_config *c, int64_t nwin, int64_t seqlen,
                          const struct hq_eval_opts *o, struct hq_eval_plan *p) {
  const struct hq_eval_opts defaults = {0};
  if (!o) o = &defaults;
  memset(p, 0, sizeof *p);
  if (nwin < 1 || seqlen < 2)
    return hq_fail(HQ_ERR_INPUT, "need at least one window of at least 2 tokens (got %lld x %lld)",
                   (long long)nwin, (long long)seqlen);
  if (seqlen > c->max_pos)
    return hq_fail(HQ_ERR_INPUT,
                   "seqlen %lld is longer than the model's max_position_embeddings %lld; use "
                   "a seqlen <= %lld", (long long)seqlen, (long long)c->max_pos,
                   (long long)c->max_pos);
  int64_t cw = (o->chunk_tokens > 0 ? o->chunk_tokens : 4096) / seqlen; /* windows per chunk */
  if (cw < 1) cw = 1;
  if (cw > nwin) cw = nwin;
  int64_t bw = o->batch_windows; /* windows per batch */
  if (bw <= 0) bw = HQ_EVAL_ACT_BUDGET / (seqlen * c->hidden * (int64_t)sizeof(float));
  if (bw < cw) bw = cw;
  if (bw > nwin) bw = nwin;
  p->chunk_windows = cw;
  p->batch_windows = bw;
  p->batches = (nwin + bw - 1) / bw;
  /* progress steps: one per chunk forward (block or head) */
  const int64_t nchunks = (nwin / bw) * ((bw + cw - 1) / cw) + (nwin % bw + cw - 1) / cw;
  p->steps = nchunks * (c->n_layers + 1);
  p->weight_bytes = model_weight_bytes(c);
  p->keep_budget = o->keep_bytes ? o->keep_bytes : HQ_EVAL_KEEP_BUDGET;
  p->keep = p->batches > 1 && p->weight_bytes <= p->keep_budget;
  return HQ_OK;
}

/* A block's weights for the forward: hw the host arrays (a host backend reads them in place
 * through dw), dw what hq_forward_block reads (backend memory). */
struct eval_block {
  struct hq_block_weights hw;
  struct hq_block_dev dw;
  int loaded;
};

/* One hq_forward_model_nll run: its plan, the model-wide tensors and the loaded blocks. */
struct eval_run {
  const struct hq_backend *be;
  const struct hq_model *m;
  const struct hq_eval_opts *o;
  int64_t seqlen;
  struct hq_eval_stats st;  /* st.plan: the plan */
  struct hq_rope_table rope;
  struct hq_fwd_ws *ws;     /* one chunk: chunk_windows x seqlen tokens */
  float *embed;             /* host [vocab x hidden] */
  float *norm;              /* backend [hidden]: model.norm.weight */
  float *x;                 /* backend [batch_windows * seqlen x hidden]: the batch's activations */
  float *head;              /* backend [vocab x hidden] lm_head while loaded; == embed when tied
                               on a host backend (not owned) */
  struct eval_block *blk;   /* [n_layers] when plan.keep, else [1] reused by every block */
  int64_t step;             /* progress steps done */
};

/* model.embed_tokens.weight (host) when it is also the head of a host backend (else the batches
 * look up their rows: hq_model_embed_rows), and model.norm.weight (uploaded) */
static int eval_load_embed_norm(struct eval_run *R) {
  const struct hq_model_config *c = &R->m->cfg;
  float *norm_h = NULL;
  int64_t n = 0;
  if (c->tie_embeddings && !R->be->on_device) {
    HQ_TRY(hq_model_load_f32(R->m, "model.embed_tokens.weight", &R->embed, &n));
    HQ_ASSERT(n == c->vocab * c->hidden); /* hq_model_open checked the shapes */
  }
  HQ_TRY(hq_model_load_f32(R->m, "model.norm.weight", &norm_h, &n));
  HQ_ASSERT(n == c->hidden);
  const size_t hb = (size_t)c->hidden * sizeof(float);
  if ((R->norm = R->be->alloc(hb))) R->be->upload(R->norm, norm_h, hb);
  free(norm_h);
  if (!R->norm)
    return hq_fail(HQ_ERR_NOMEM, "model.norm.weight [%lld]: out of %s memory",
                   (long long)c->hidden, R->be->name);
  return HQ_OK;
}

/* Everything but the blocks and lm_head: rope table, workspace, embedding, norm, activations. */
static int eval_run_init(struct eval_run *R) {
  const struct hq_model_config *c = &R->m->cfg;
  const struct hq_eval_plan *p = &R->st.plan;
  const int64_t bw = p->batch_windows, S = R->seqlen, H = c->hidden;
  HQ_TRY(hq_rope_table_init(&R->rope, R->be, c, S));
  if (!(R->ws = hq_fwd_ws_new(R->be, c, p->chunk_windows * S))) return HQ_ERR_NOMEM;
  HQ_TRY(hq_fwd_ws_set_act_bits(R->ws, R->o->act_bits));
  HQ_TRY(eval_load_embed_norm(R));
  if (!(R->x = R->be->alloc((size_t)(bw * S * H) * sizeof(float))))
    return hq_fail(HQ_ERR_NOMEM,
                   "activations of %lld windows x %lld tokens x %lld (%.0f MiB): out of %s "
                   "memory; use fewer windows per batch", (long long)bw, (long long)S,
                   (long long)H, (double)(bw * S * H) * 4.0 / 1048576.0, R->be->name);
  R->blk = hq_xcalloc((size_t)(p->keep ? c->n_layers : 1), sizeof *R->blk);
  return HQ_OK;
}

/* e->hw just loaded for block b: make e->dw, the copy the forward reads (a device backend
 * uploads it and frees the host arrays; a host backend points into them). */
static int eval_block_place(struct eval_run *R, struct eval_block *e, int64_t b) {
  if (!R->be->on_device) return hq_block_dev_borrow(R->be, &R->m->cfg, &e->hw, &e->dw);
  const int rc = hq_block_dev_upload(R->be, &R->m->cfg, &e->hw, &e->dw);
  hq_block_weights_free(&e->hw);
  if (rc && R->st.plan.keep)
    return hq_fail_ctx(rc, "block %lld, kept for the later batches (a smaller keep budget, "
                       "e.g. hpcq eval --keep-weights-mib 0, streams the blocks): ", (long long)b);
  return rc;
}

/* Block b's weights for the forward (*dw): loaded (and uploaded) unless kept from an earlier
 * batch. */
static int eval_block_get(struct eval_run *R, int64_t b, const struct hq_block_dev **dw) {
  struct eval_block *e = &R->blk[R->st.plan.keep ? b : 0];
  if (!e->loaded) {
    const int rc = hq_model_load_block(R->m, b, &e->hw);
    if (rc) return hq_fail_ctx(rc, "block %lld: ", (long long)b); /* hw freed on failure */
    R->st.block_loads++;
    HQ_TRY(eval_block_place(R, e, b));
    e->loaded = 1;
  }
  *dw = &e->dw;
  return HQ_OK;
}

static void eval_block_free(const struct hq_backend *be, struct eval_block *e) {
  if (!e->loaded) return;
  if (be->on_device) hq_block_dev_free(be, &e->dw);
  else hq_block_weights_free(&e->hw); /* dw pointed into hw */
  memset(e, 0, sizeof *e);
}

static void eval_step(struct eval_run *R) {
  R->step++;
  if (R->o->progress) R->o->progress(R->o->progress_ctx, R->step, R->st.plan.steps);
}

/* The batch's nb windows (R->x) through every block, chunk by chunk, in place. */
static int eval_batch_blocks(struct eval_run *R, int64_t nb) {
  const struct hq_model_config *c = &R->m->cfg;
  const int64_t cw = R->st.plan.chunk_windows, S = R->seqlen;
  for (int64_t b = 0; b < c->n_layers; b++) {
    const struct hq_block_dev *dw = NULL;
    HQ_TRY(eval_block_get(R, b, &dw));
    for (int64_t s0 = 0; s0 < nb; s0 += cw) {
      const int64_t ns = nb - s0 < cw ? nb - s0 : cw;
      hq_forward_block(R->be, c, dw, &R->rope, R->ws, ns, S, R->x + s0 * S * c->hidden, NULL,
                       NULL);
      eval_step(R);
    }
    if (!R->st.plan.keep) eval_block_free(R->be, &R->blk[0]);
  }
  return HQ_OK;
}

/* lm_head [vocab x hidden] into R->head: the embedding when tied, else lm_head.weight;
 * a device backend uploads it (and frees a loaded host copy). */
static int eval_head_load(struct eval_run *R) {
  const struct hq_model_config *c = &R->m->cfg;
  const size_t bytes = (size_t)(c->vocab * c->hidden) * sizeof(float);
  float *h = R->embed;
  if (!h) { /* untied (lm_head.weight), or tied on a device backend (the embedding) */
    int64_t n = 0;
    HQ_TRY(hq_model_load_f32(R->m, c->tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight", &h, &n));
    HQ_ASSERT(n == c->vocab * c->hidden);
    R->st.head_loads += !c->tie_embeddings;
  }
  if (!R->be->on_device) {
    R->head = h;
    return HQ_OK;
  }
  if ((R->head = R->be->alloc(bytes))) R->be->upload(R->head, h, bytes);
  if (h != R->embed) free(h);
  if (!R->head)
    return hq_fail(HQ_ERR_NOMEM, "lm_head [%lld x %lld]: out of %s memory",
                   (long long)c->vocab, (long long)c->hidden, R->be->name);
  return HQ_OK;
}

static void eval_head_free(struct eval_run *R) {
  if (R->head && R->head != R->embed) {
    if (R->be->on_device) R->be->free(R->head);
    else free(R->head);
  }
  R->head = NULL;
}

/* Final norm + lm_head + next-token NLL of the batch's nb windows (the first is window w0 of
 * ids [nwin x seqlen]), chunk by chunk, added to *total in window order. */
static int eval_batch_head(struct eval_run *R, const int32_t *ids, int64_t w0, int64_t nb,
                           float *logits_out, double *total) {
  const struct hq_model_config *c = &R->m->cfg;
  const int64_t cw = R->st.plan.chunk_windows, S = R->seqlen;
  if (!R->head) HQ_TRY(eval_head_load(R));
  for (int64_t s0 = 0; s0 < nb; s0 += cw) {
    const int64_t ns = nb - s0 < cw ? nb - s0 : cw, t0 = (w0 + s0) * S;
    *total += hq_forward_nll(R->be, c, R->norm, R->head, R->ws, ns, S, R->x + s0 * S * c->hidden,
                             ids + t0, logits_out ? logits_out + t0 * c->vocab : NULL);
    eval_step(R);
  }
  if (!R->st.plan.keep) eval_head_free(R); /* streaming: lm_head for this step only */
  return HQ_OK;
}

/* x = the embedding of the batch's ntok tokens */
static int eval_embed(struct eval_run *R, const int32_t *ids, int64_t ntok) {
  const struct hq_model_config *c = &R->m->cfg;
  if (R->embed) {
    hq_forward_embed(R->be, c, R->embed, ids, ntok, R->x);
    return HQ_OK;
  }
  return hq_forward_embed_rows(R->be, R->m, ids, ntok, R->x);
}

static void eval_run_free(struct eval_run *R) {
  if (R->blk)
    for (int64_t b = 0; b < (R->st.plan.keep ? R->m->cfg.n_layers : 1); b++)
      eval_block_free(R->be, &R->blk[b]);
  free(R->blk);
  eval_head_free(R);
  if (R->x) R->be->free(R->x);
  if (R->norm) R->be->free(R->norm);
  free(R->embed);
  hq_fwd_ws_free(R->ws);
  hq_rope_table_free(&R->rope, R->be);
}

int hq_forward_model_nll(const struct hq_backend *be, const struct hq_model *m,
                         const int32_t *ids, int64_t nwin, int64_t seqlen,
                         const struct hq_eval_opts *o, double *nll_sum, float *logits_out) {
  const struct hq_eval_opts defaults = {0};
  if (!o) o = &defaults;
  *nll_sum = 0;
  struct eval_run R = {.be = be, .m = m, .o = o, .seqlen = seqlen};
  int rc = hq_forward_model_plan(&m->cfg, nwin, seqlen, o, &R.st.plan);
  if (!rc) rc = eval_run_init(&R);
  double total = 0;
  for (int64_t w0 = 0; !rc && w0 < nwin; w0 += R.st.plan.batch_windows) {
    const int64_t nb = nwin - w0 < R.st.plan.batch_windows ? nwin - w0 : R.st.plan.batch_windows;
    rc = eval_embed(&R, ids + w0 * seqlen, nb * seqlen);
    if (!rc) rc = eval_batch_blocks(&R, nb);
    if (!rc) rc = eval_batch_head(&R, ids, w0, nb, logits_out, &total);
  }
  if (!rc && !isfinite(total))
    rc = hq_fail(HQ_ERR_NUMERIC,
                 "the next-token NLL is not finite (%g): the model produced NaN/Inf logits; "
                 "check the checkpoint's weights (e.g. fp16 overflow)", total);
  if (!rc) {
    HQ_ASSERT(R.step == R.st.plan.steps);
    *nll_sum = total;
  }
  if (o->stats) *o->stats = R.st;
  eval_run_free(&R);
  return rc;
}
