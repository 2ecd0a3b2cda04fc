/* The Llama forward (src/model/forward.c + the CPU backend's forward ops) against independent
 * references:
 *  1. Hugging Face transformers logits of both bundled models (fixtures written by
 *     tools/make_hf_fixtures.py: LlamaForCausalLM, fp32, eager attention), 2 windows x 64
 *     tokens: full rows at 6 positions per window, vocab ids 0..31 at every position, the
 *     logsumexp of every row and the next-token NLL. Relative difference of a logit is
 *     |a - b| / max(max_j |b_j| of that HF row, 1e-30); it must be <= 1e-4.
 *  2. The llama3 rope_scaling inverse frequencies of transformers (fixture), recovered from
 *     our cos/sin table at position 1.
 *  3. Each forward op against a plain double-precision reference on random inputs with odd
 *     sizes (attention: GQA, seqlen 150 > the 128-row block, several sequences).
 *  4. The capture hook: groups in order with the right shapes, the QKV input equals a plain
 *     RMSNorm of x, early stop at each group returns 1 and leaves x unchanged. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "forward.h"
#include "model.h"
#include "testutil.h"

#define REL_TOL 1e-4

/* ---------------- a minimal safetensors reader for the fixtures ---------------- */
struct fx {
  char *buf;       /* whole file */
  size_t size;
  cJSON *hdr;
  const char *data;
  size_t data_len;
};

static int fx_open(struct fx *f, const char *path) {
  memset(f, 0, sizeof *f);
  FILE *fp = fopen(path, "rb");
  if (!fp) return -1;
  fseek(fp, 0, SEEK_END);
  long sz = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  f->buf = malloc((size_t)sz);
  f->size = fread(f->buf, 1, (size_t)sz, fp);
  fclose(fp);
  uint64_t hl = 0;
  if (f->size < 8) return -1;
  memcpy(&hl, f->buf, 8);
  if (8 + hl > f->size) return -1;
  f->hdr = cJSON_ParseWithLength(f->buf + 8, (size_t)hl);
  f->data = f->buf + 8 + hl;
  f->data_len = f->size - 8 - hl;
  return f->hdr ? 0 : -1;
}

static void fx_close(struct fx *f) {
  cJSON_Delete(f->hdr);
  free(f->buf);
}

/* pointer to tensor `name` of dtype `dt` ("F32"/"I32"); shape out (up to 2 dims, missing = 1) */
static const void *fx_get(const struct fx *f, const char *name, const char *dt, int64_t *d0,
                          int64_t *d1) {
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(f->hdr, name);
  const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(t, "dtype");
  const cJSON *shape = cJSON_GetObjectItemCaseSensitive(t, "shape");
  const cJSON *offs = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
  if (!t || !cJSON_IsString(dtype) || strcmp(dtype->valuestring, dt) || !cJSON_IsArray(shape) ||
      !cJSON_IsArray(offs))
    return NULL;
  int n = cJSON_GetArraySize(shape);
  *d0 = n > 0 ? (int64_t)cJSON_GetArrayItem(shape, 0)->valuedouble : 1;
  if (d1) *d1 = n > 1 ? (int64_t)cJSON_GetArrayItem(shape, 1)->valuedouble : 1;
  size_t b0 = (size_t)cJSON_GetArrayItem(offs, 0)->valuedouble;
  size_t b1 = (size_t)cJSON_GetArrayItem(offs, 1)->valuedouble;
  if (b1 > f->data_len || b0 > b1 || b1 - b0 != (size_t)(*d0 * (d1 ? *d1 : 1)) * 4) return NULL;
  return f->data + b0;
}

/* ---------------- 1. logits vs transformers ---------------- */
static void check_model_vs_hf(const char *model_dir, const char *fixture,
                              const struct hq_eval_opts *opts, const char *label) {
  const struct hq_backend *be = hq_backend_cpu();
  struct hq_model m;
  int rc = hq_model_open(hq_t_data(model_dir), &m);
  CHECK(rc == HQ_OK, "%s: open: %s", label, hq_last_error());
  if (rc) return;
  struct fx f;
  rc = fx_open(&f, hq_t_data(fixture));
  CHECK(rc == 0, "%s: cannot read fixture %s", label, fixture);
  if (rc) {
    hq_model_close(&m);
    return;
  }
  int64_t nseq, seqlen, nrows, two, V, ncols, r0, r1, a0, a1;
  const int32_t *tok = fx_get(&f, "tokens", "I32", &nseq, &seqlen);
  const int32_t *row_pos = fx_get(&f, "row_pos", "I32", &nrows, &two);
  const float *rows = fx_get(&f, "rows", "F32", &r0, &V);
  const int32_t *cols = fx_get(&f, "cols", "I32", &ncols, NULL);
  const float *col_logits = fx_get(&f, "col_logits", "F32", &r1, &a1);
  const float *absmax = fx_get(&f, "row_absmax", "F32", &a0, &a1);
  const float *lse = fx_get(&f, "lse", "F32", &a0, &a1);
  const float *nll = fx_get(&f, "nll", "F32", &a0, &a1);
  CHECK(tok && row_pos && rows && cols && col_logits && absmax && lse && nll && two == 2 &&
            V == m.cfg.vocab && r0 == nrows && r1 == nseq * seqlen,
        "%s: fixture layout", label);
  if (!(tok && row_pos && rows && cols && col_logits && absmax && lse && nll && V == m.cfg.vocab)) {
    fx_close(&f);
    hq_model_close(&m);
    return;
  }
  const int64_t ntok = nseq * seqlen;
  float *logits = malloc((size_t)(ntok * V) * sizeof(float));
  double nll_sum = -1;
  rc = hq_forward_model_nll(be, &m, tok, nseq, seqlen, opts, &nll_sum, logits);
  CHECK(rc == HQ_OK, "%s: forward: %s", label, hq_last_error());

  /* full rows */
  double worst_row = 0;
  for (int64_t r = 0; r < nrows; r++) {
    const int64_t t = row_pos[2 * r] * seqlen + row_pos[2 * r + 1];
    const double scale = fmax(absmax[t], 1e-30);
    for (int64_t j = 0; j < V; j++)
      worst_row = fmax(worst_row, fabs((double)logits[t * V + j] - rows[r * V + j]) / scale);
  }
  /* vocab columns 0..ncols-1 at every position, and logsumexp of every row */
  double worst_col = 0, worst_lse = 0;
  for (int64_t t = 0; t < ntok; t++) {
    const double scale = fmax(absmax[t], 1e-30);
    for (int64_t j = 0; j < ncols; j++)
      worst_col = fmax(worst_col,
                       fabs((double)logits[t * V + cols[j]] - col_logits[t * ncols + j]) / scale);
    double mx = -INFINITY, s = 0;
    for (int64_t j = 0; j < V; j++) mx = fmax(mx, logits[t * V + j]);
    for (int64_t j = 0; j < V; j++) s += exp((double)logits[t * V + j] - mx);
    worst_lse = fmax(worst_lse, fabs(mx + log(s) - lse[t]) / scale);
  }
  /* the NLL the forward sums vs the sum of HF's per-position NLL */
  double hf_nll = 0;
  for (int64_t i = 0; i < nseq * (seqlen - 1); i++) hf_nll += nll[i];
  const double nll_rel = fabs(nll_sum - hf_nll) / fabs(hf_nll);
  printf("%-28s max rel diff: rows %.2e, cols %.2e, logsumexp %.2e; NLL %.6f vs HF %.6f "
         "(rel %.1e)\n", label, worst_row, worst_col, worst_lse, nll_sum, hf_nll, nll_rel);
  CHECK(worst_row <= REL_TOL, "%s: full logits rows differ from HF by %.3e (rel)", label, worst_row);
  CHECK(worst_col <= REL_TOL, "%s: logits columns differ from HF by %.3e (rel)", label, worst_col);
  CHECK(worst_lse <= REL_TOL, "%s: logsumexp differs from HF by %.3e (rel)", label, worst_lse);
  CHECK(nll_rel <= 1e-5, "%s: NLL %.8f vs HF %.8f", label, nll_sum, hf_nll);
  free(logits);
  fx_close(&f);
  hq_model_close(&m);
}

/* ---------------- 2. llama3 rope vs transformers ---------------- */
static void check_rope_llama3(void) {
  struct fx f;
  int rc = fx_open(&f, hq_t_data("fixtures/rope-llama3.safetensors"));
  CHECK(rc == 0, "cannot read rope-llama3 fixture");
  if (rc) return;
  int64_t n3, n0;
  const float *inv3 = fx_get(&f, "inv_freq_llama3", "F32", &n3, NULL);
  const float *inv0 = fx_get(&f, "inv_freq_default", "F32", &n0, NULL);
  CHECK(inv3 && inv0 && n3 == 64 && n0 == 64, "rope fixture layout");
  if (!inv3 || !inv0 || n3 != 64 || n0 != 64) {
    fx_close(&f);
    return;
  }
  const struct hq_backend *be = hq_backend_cpu();
  for (int type = 0; type < 2; type++) {
    struct hq_model_config c;
    memset(&c, 0, sizeof c);
    c.hidden = 4096;
    c.n_heads = 32;
    c.head_dim = 128;
    c.rope_theta = 500000.0;
    c.rope_type = type ? HQ_ROPE_LLAMA3 : HQ_ROPE_DEFAULT;
    c.rope_factor = 8.0;
    c.rope_low_freq_factor = 1.0;
    c.rope_high_freq_factor = 4.0;
    c.rope_original_max_pos = 8192;
    struct hq_rope_table r;
    rc = hq_rope_table_init(&r, be, &c, 3);
    CHECK(rc == HQ_OK && r.half == 64 && r.max_pos == 3, "rope init: %s", hq_last_error());
    if (rc) continue;
    const float *ref = type ? inv3 : inv0;
    double worst = 0, worst0 = 0;
    for (int i = 0; i < 64; i++) {
      /* position 1: the angle is inv_freq itself; position 0: cos 1, sin 0 */
      const double ang = atan2((double)r.sin_t[64 + i], (double)r.cos_t[64 + i]);
      worst = fmax(worst, fabs(ang - ref[i]) / ref[i]);
      worst0 = fmax(worst0, fabs(r.cos_t[i] - 1.0) + fabs(r.sin_t[i]));
    }
    /* position 2: angle 2 * inv_freq (rounded once in fp32, like HF) */
    double worst2 = 0;
    for (int i = 0; i < 64; i++) {
      const float ang = 2.0f * ref[i];
      worst2 = fmax(worst2, fabs(r.cos_t[128 + i] - cos(ang)) + fabs(r.sin_t[128 + i] - sin(ang)));
    }
    printf("rope %-8s inv_freq max rel diff vs transformers %.2e, pos 2 abs %.2e\n",
           type ? "llama3" : "default", worst, worst2);
    CHECK(worst <= 2e-6, "rope %s inv_freq differs from HF by %.3e", type ? "llama3" : "default",
          worst);
    CHECK(worst0 == 0, "rope position 0 is not the identity");
    CHECK(worst2 <= 1e-6, "rope %s position 2 differs by %.3e", type ? "llama3" : "default", worst2);
    hq_rope_table_free(&r, be);
  }
  /* a broken llama3 config is an error, not garbage */
  struct hq_model_config c;
  memset(&c, 0, sizeof c);
  c.head_dim = 128;
  c.rope_theta = 500000.0;
  c.rope_type = HQ_ROPE_LLAMA3;
  c.rope_factor = 8.0;
  c.rope_low_freq_factor = 4.0;
  c.rope_high_freq_factor = 1.0;
  c.rope_original_max_pos = 8192;
  struct hq_rope_table r;
  rc = hq_rope_table_init(&r, be, &c, 3);
  CHECK(rc == HQ_ERR_INPUT && strstr(hq_last_error(), "high_freq_factor"),
        "bad llama3 params: rc %d %s", rc, hq_last_error());
  fx_close(&f);
}

/* ---------------- 3. ops vs plain references ---------------- */
static double rel_err(const float *a, const double *ref, int64_t n) {
  double mx = 0, ref_mx = 1e-30;
  for (int64_t i = 0; i < n; i++) {
    mx = fmax(mx, fabs(a[i] - ref[i]));
    ref_mx = fmax(ref_mx, fabs(ref[i]));
  }
  return mx / ref_mx;
}

static void check_ops(void) {
  const struct hq_backend *be = hq_backend_cpu();
  /* attention: 3 sequences x 150 tokens, 6 heads sharing 2 KV heads (group 3), head_dim 24 */
  {
    const int64_t ns = 3, S = 150, nh = 6, nkv = 2, hd = 24, g = nh / nkv;
    const int64_t nq = ns * S * nh * hd, nk = ns * S * nkv * hd;
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4), *o = malloc(nq * 4);
    double *ref = malloc(nq * 8), *p = malloc(S * 8);
    hq_t_randn(q, nq, 1, 1.5f);
    hq_t_randn(k, nk, 2, 1.5f);
    hq_t_randn(v, nk, 3, 1.0f);
    be->attention(ns, S, nh, nkv, hd, q, k, v, o);
    for (int64_t s = 0; s < ns; s++)
      for (int64_t h = 0; h < nh; h++)
        for (int64_t i = 0; i < S; i++) {
          const float *qi = q + ((s * S + i) * nh + h) * hd;
          double mx = -INFINITY, sum = 0;
          for (int64_t j = 0; j <= i; j++) {
            const float *kj = k + ((s * S + j) * nkv + h / g) * hd;
            double d = 0;
            for (int64_t e = 0; e < hd; e++) d += (double)qi[e] * kj[e];
            p[j] = d / sqrt((double)hd);
            mx = fmax(mx, p[j]);
          }
          for (int64_t j = 0; j <= i; j++) sum += (p[j] = exp(p[j] - mx));
          for (int64_t e = 0; e < hd; e++) {
            double acc = 0;
            for (int64_t j = 0; j <= i; j++) acc += p[j] * v[((s * S + j) * nkv + h / g) * hd + e];
            ref[((s * S + i) * nh + h) * hd + e] = acc / sum;
          }
        }
    const double e = rel_err(o, ref, nq);
    printf("attention (3 x 150, GQA 6/2, hd 24) rel err vs double reference %.2e\n", e);
    CHECK(e < 1e-5, "attention rel err %.3e", e);
    free(q), free(k), free(v), free(o), free(ref), free(p);
  }
  /* rmsnorm, rope, swiglu, add */
  {
    const int64_t T = 37, D = 96, nh = 3, hd = 32, half = 16, maxp = 40;
    float *x = malloc(T * D * 4), *w = malloc(D * 4), *y = malloc(T * D * 4);
    double *ref = malloc(T * D * 8);
    hq_t_randn(x, T * D, 4, 2.0f);
    hq_t_randn(w, D, 5, 1.0f);
    be->rmsnorm(T, D, x, w, 1e-5f, y);
    for (int64_t t = 0; t < T; t++) {
      double ss = 0;
      for (int64_t i = 0; i < D; i++) ss += (double)x[t * D + i] * x[t * D + i];
      for (int64_t i = 0; i < D; i++) ref[t * D + i] = w[i] * x[t * D + i] / sqrt(ss / D + 1e-5);
    }
    double e = rel_err(y, ref, T * D);
    CHECK(e < 1e-6, "rmsnorm rel err %.3e", e);

    float *ct = malloc(maxp * half * 4), *st = malloc(maxp * half * 4);
    int32_t *pos = malloc(T * 4);
    for (int64_t p = 0; p < maxp; p++)
      for (int64_t i = 0; i < half; i++) {
        ct[p * half + i] = (float)cos(p * pow(10000.0, -2.0 * i / hd));
        st[p * half + i] = (float)sin(p * pow(10000.0, -2.0 * i / hd));
      }
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)((t * 7) % maxp);
    memcpy(y, x, T * D * 4);
    be->rope(T, nh, hd, pos, ct, st, y);
    /* reference: q * cos + rotate_half(q) * sin with the HF full-width tables */
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < nh; h++)
        for (int64_t i = 0; i < hd; i++) {
          const float *xh = x + (t * nh + h) * hd;
          const int64_t f = i % half;
          const double rot = i < half ? -(double)xh[i + half] : (double)xh[i - half];
          ref[(t * nh + h) * hd + i] =
              xh[i] * (double)ct[pos[t] * half + f] + rot * st[pos[t] * half + f];
        }
    e = rel_err(y, ref, T * D);
    CHECK(e < 1e-6, "rope rel err %.3e", e);

    float *u = malloc(T * D * 4);
    hq_t_randn(u, T * D, 6, 1.0f);
    for (int64_t i = 0; i < 5; i++) x[i] = (float)(-90.0 + 45.0 * i); /* tails: -90 .. 90 */
    be->swiglu(T * D, x, u, y);
    for (int64_t i = 0; i < T * D; i++) ref[i] = (double)x[i] / (1.0 + exp(-(double)x[i])) * u[i];
    double worst = 0;
    for (int64_t i = 0; i < T * D; i++)
      worst = fmax(worst, fabs(y[i] - ref[i]) / fmax(fabs(ref[i]), 1e-30));
    CHECK(worst < 1e-6, "swiglu elementwise rel err %.3e", worst);

    memcpy(y, x, T * D * 4);
    be->add(T * D, y, u);
    worst = 0;
    for (int64_t i = 0; i < T * D; i++) worst = fmax(worst, fabs(y[i] - (x[i] + u[i])));
    CHECK(worst == 0, "add");
    free(x), free(w), free(y), free(ref), free(ct), free(st), free(pos), free(u);
  }
}

/* ---------------- 4. capture hook ---------------- */
struct cap_log {
  int n, stop_at;
  int group[8];
  int64_t ntok[8], cols[8];
  float *qkv_in; /* copy of the QKV input */
};

static int cap_fn(void *ctx, enum hq_group g, const float *X, int64_t ntok, int64_t cols) {
  struct cap_log *l = ctx;
  if (l->n < 8) {
    l->group[l->n] = (int)g;
    l->ntok[l->n] = ntok;
    l->cols[l->n] = cols;
  }
  l->n++;
  if (g == HQ_GROUP_QKV && l->qkv_in) memcpy(l->qkv_in, X, (size_t)(ntok * cols) * sizeof(float));
  return (int)g == l->stop_at;
}

static void check_capture(void) {
  const struct hq_backend *be = hq_backend_cpu();
  struct hq_model m;
  int rc = hq_model_open(hq_t_data("stories260K-hf"), &m);
  CHECK(rc == HQ_OK, "open: %s", hq_last_error());
  if (rc) return;
  const struct hq_model_config *c = &m.cfg;
  const int64_t nseq = 2, S = 16, T = nseq * S, H = c->hidden;
  struct hq_block_weights hw;
  struct hq_block_dev dw;
  struct hq_rope_table rope;
  CHECK(hq_model_load_block(&m, 1, &hw) == HQ_OK, "load block: %s", hq_last_error());
  CHECK(hq_block_dev_upload(be, c, &hw, &dw) == HQ_OK, "upload: %s", hq_last_error());
  CHECK(hq_rope_table_init(&rope, be, c, S) == HQ_OK, "rope: %s", hq_last_error());
  struct hq_fwd_ws *ws = hq_fwd_ws_new(be, c, T);
  CHECK(ws != NULL, "ws: %s", hq_last_error());
  float *x0 = malloc(T * H * 4), *x = malloc(T * H * 4);
  hq_t_randn(x0, T * H, 7, 1.0f);

  const int64_t exp_cols[4] = {H, c->n_heads * c->head_dim, H, c->intermediate};
  /* full run: 4 calls in order, returns 0, x changes */
  struct cap_log log = {.stop_at = -1, .qkv_in = malloc(T * H * 4)};
  memcpy(x, x0, T * H * 4);
  rc = hq_forward_block(be, c, &dw, &rope, ws, nseq, S, x, cap_fn, &log);
  CHECK(rc == 0 && log.n == 4, "full block: rc %d, %d captures", rc, log.n);
  for (int i = 0; i < 4 && i < log.n; i++)
    CHECK(log.group[i] == i && log.ntok[i] == T && log.cols[i] == exp_cols[i],
          "capture %d: group %d, %lld x %lld", i, log.group[i], (long long)log.ntok[i],
          (long long)log.cols[i]);
  CHECK(memcmp(x, x0, T * H * 4) != 0, "the block did not change x");
  /* the QKV input is RMSNorm(x) * input_layernorm.weight */
  double worst = 0;
  for (int64_t t = 0; t < T; t++) {
    double ss = 0;
    for (int64_t i = 0; i < H; i++) ss += (double)x0[t * H + i] * x0[t * H + i];
    for (int64_t i = 0; i < H; i++)
      worst = fmax(worst, fabs(log.qkv_in[t * H + i] -
                               hw.ln_attn[i] * x0[t * H + i] / sqrt(ss / H + c->rms_eps)));
  }
  CHECK(worst < 1e-5, "QKV capture is not rmsnorm(x): %.3e", worst);
  /* the same block without a hook gives the same output */
  float *x2 = malloc(T * H * 4);
  memcpy(x2, x0, T * H * 4);
  CHECK(hq_forward_block(be, c, &dw, &rope, ws, nseq, S, x2, NULL, NULL) == 0, "no hook");
  CHECK(memcmp(x, x2, T * H * 4) == 0, "hook changed the result");
  /* early stop at each group: g+1 calls, returns 1, x unchanged */
  for (int g = 0; g < HQ_GROUP_COUNT; g++) {
    struct cap_log l2 = {.stop_at = g};
    memcpy(x, x0, T * H * 4);
    rc = hq_forward_block(be, c, &dw, &rope, ws, nseq, S, x, cap_fn, &l2);
    CHECK(rc == 1 && l2.n == g + 1, "stop at %d: rc %d, %d calls", g, rc, l2.n);
    CHECK(memcmp(x, x0, T * H * 4) == 0, "stop at %d changed x", g);
  }
  free(x0), free(x), free(x2), free(log.qkv_in);
  hq_fwd_ws_free(ws);
  hq_rope_table_free(&rope, be);
  hq_block_dev_free(be, &dw);
  hq_block_weights_free(&hw);

  /* errors instead of garbage */
  double nll;
  int32_t ids[4] = {1, 2, 3, 4};
  rc = hq_forward_model_nll(be, &m, ids, 1, c->max_pos + 1, NULL, &nll, NULL);
  CHECK(rc == HQ_ERR_INPUT && strstr(hq_last_error(), "max_position_embeddings"),
        "seqlen > max_pos: rc %d %s", rc, hq_last_error());
  hq_model_close(&m);
}

/* keeps a copy of every group's input */
struct cap_keep {
  float *in[HQ_GROUP_COUNT];
  int64_t n[HQ_GROUP_COUNT];
};

static int cap_keep_fn(void *ctx, enum hq_group g, const float *X, int64_t ntok, int64_t cols) {
  struct cap_keep *k = ctx;
  free(k->in[g]);
  k->n[g] = ntok * cols;
  k->in[g] = malloc((size_t)k->n[g] * sizeof(float));
  memcpy(k->in[g], X, (size_t)k->n[g] * sizeof(float));
  return 0;
}

/* The block one group at a time through hq_fwd_carry (att and act sharing memory, as the
 * pipeline has them, O run twice) gives bit-identical group inputs and output to
 * hq_forward_block, with and without activation quantization. */
static void check_group_forward(int act_bits) {
  const struct hq_backend *be = hq_backend_cpu();
  struct hq_model m;
  CHECK(hq_model_open(hq_t_data("llama-sotu-5m"), &m) == HQ_OK, "open: %s", hq_last_error());
  const struct hq_model_config *c = &m.cfg;
  const int64_t nseq = 3, S = 16, T = nseq * S, H = c->hidden, qd = c->n_heads * c->head_dim;
  const int64_t mid = qd > c->intermediate ? qd : c->intermediate;
  struct hq_block_weights hw;
  struct hq_block_dev dw;
  struct hq_rope_table rope;
  CHECK(hq_model_load_block(&m, 2, &hw) == HQ_OK, "load block: %s", hq_last_error());
  CHECK(hq_block_dev_upload(be, c, &hw, &dw) == HQ_OK, "upload: %s", hq_last_error());
  CHECK(hq_rope_table_init(&rope, be, c, S) == HQ_OK, "rope: %s", hq_last_error());
  struct hq_fwd_ws *ws = hq_fwd_ws_new(be, c, 2 * S); /* chunks of 2 windows, then 1 */
  CHECK(ws && hq_fwd_ws_set_act_bits(ws, act_bits) == HQ_OK, "ws: %s", hq_last_error());
  float *x0 = malloc(T * H * 4), *x = malloc(T * H * 4), *h = malloc(T * H * 4);
  float *md = malloc(T * mid * 4);
  hq_t_randn(x0, T * H, 11, 1.0f);
  struct cap_keep ref = {0}, got = {0};
  memcpy(x, x0, T * H * 4);
  for (int64_t w = 0; w < nseq; w += 2) {
    struct cap_keep part = {0};
    const int64_t nb = nseq - w < 2 ? nseq - w : 2;
    hq_forward_block(be, c, &dw, &rope, ws, nb, S, x + w * S * H, cap_keep_fn, &part);
    for (int g = 0; g < HQ_GROUP_COUNT; g++) {
      const int64_t cols = part.n[g] / (nb * S);
      ref.in[g] = realloc(ref.in[g], (size_t)(T * cols) * sizeof(float));
      memcpy(ref.in[g] + w * S * cols, part.in[g], (size_t)part.n[g] * sizeof(float));
      ref.n[g] = T * cols;
      free(part.in[g]);
    }
  }
  float *xg = malloc(T * H * 4);
  memcpy(xg, x0, T * H * 4);
  const int order[] = {HQ_GROUP_QKV, HQ_GROUP_O, HQ_GROUP_O, HQ_GROUP_GATEUP, HQ_GROUP_DOWN};
  for (size_t k = 0; k < sizeof order / sizeof order[0]; k++) {
    const int g = order[k];
    const int64_t cols = ref.n[g] / T;
    float *all = malloc((size_t)ref.n[g] * sizeof(float));
    for (int64_t w = 0; w < nseq; w += 2) {
      const int64_t nb = nseq - w < 2 ? nseq - w : 2, t0 = w * S;
      const struct hq_fwd_carry cr = {xg + t0 * H, md + t0 * qd, h + t0 * H,
                                      md + t0 * c->intermediate};
      hq_forward_group_input(be, c, &dw, &rope, ws, nb, S, (enum hq_group)g, &cr, cap_keep_fn, &got);
      memcpy(all + t0 * cols, got.in[g], (size_t)got.n[g] * sizeof(float));
    }
    CHECK(memcmp(all, ref.in[g], (size_t)ref.n[g] * sizeof(float)) == 0,
          "act bits %d: group %d input differs from the block forward's", act_bits, g);
    free(all);
  }
  for (int64_t w = 0; w < nseq; w += 2) {
    const int64_t nb = nseq - w < 2 ? nseq - w : 2, t0 = w * S;
    const struct hq_fwd_carry cr = {xg + t0 * H, md + t0 * qd, h + t0 * H,
                                    md + t0 * c->intermediate};
    hq_forward_group_output(be, c, &dw, &rope, ws, nb, S, &cr);
  }
  CHECK(memcmp(xg, x, T * H * 4) == 0, "act bits %d: group-at-a-time output differs", act_bits);
  CHECK(memcmp(xg, x0, T * H * 4) != 0, "the block did not change x");
  for (int g = 0; g < HQ_GROUP_COUNT; g++) free(ref.in[g]), free(got.in[g]);
  free(x0), free(x), free(h), free(md), free(xg);
  hq_fwd_ws_free(ws);
  hq_rope_table_free(&rope, be);
  hq_block_dev_free(be, &dw);
  hq_block_weights_free(&hw);
  hq_model_close(&m);
}

int main(void) {
  const struct hq_eval_opts small = {.chunk_tokens = 1, .batch_windows = 1};
  check_ops();
  check_rope_llama3();
  check_capture();
  check_group_forward(0);
  check_group_forward(8);
  check_model_vs_hf("stories260K-hf", "fixtures/stories260K-hf-logits.safetensors", NULL,
                    "stories260K-hf");
  check_model_vs_hf("llama-sotu-5m", "fixtures/llama-sotu-5m-logits.safetensors", NULL,
                    "llama-sotu-5m");
  /* Qwen3 (q_norm / k_norm, head_dim 32 != hidden / heads, rope_parameters of transformers 5) */
  check_model_vs_hf("tiny-qwen3", "fixtures/tiny-qwen3-logits.safetensors", NULL, "tiny-qwen3");
  /* mixtures of experts: Mixtral (top-2 of 4, renormalised) and Qwen3-MoE (top-2 of 8, not
   * renormalised, a dense layer between sparse ones), also one window per chunk and batch */
  check_model_vs_hf("tiny-mixtral", "fixtures/tiny-mixtral-logits.safetensors", NULL,
                    "tiny-mixtral");
  check_model_vs_hf("tiny-qwen3-moe", "fixtures/tiny-qwen3-moe-logits.safetensors", NULL,
                    "tiny-qwen3-moe");
  check_model_vs_hf("tiny-qwen3-moe", "fixtures/tiny-qwen3-moe-logits.safetensors", &small,
                    "tiny-qwen3-moe (batch 1)");
  /* batching: one window per chunk and per batch, the blocks of the first batch kept for the
   * second (the default), or loaded again for each batch */
  check_model_vs_hf("llama-sotu-5m", "fixtures/llama-sotu-5m-logits.safetensors", &small,
                    "llama-sotu-5m (batch 1)");
  const struct hq_eval_opts streamed = {.chunk_tokens = 1, .batch_windows = 1, .keep_bytes = -1};
  check_model_vs_hf("llama-sotu-5m", "fixtures/llama-sotu-5m-logits.safetensors", &streamed,
                    "llama-sotu-5m (batch 1, streamed)");
  return hq_t_done("test_forward");
}
