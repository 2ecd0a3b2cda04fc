/* The Llama-family model description over a Hugging Face folder: tensor names, the shapes the
 * config implies, and per-block fp32 loading. Not collective. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "model.h"

static const char *const lin_names[HQ_LIN_COUNT] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

const char *hq_linear_name(enum hq_linear l) {
  HQ_ASSERT((int)l >= 0 && l < HQ_LIN_COUNT);
  return lin_names[l];
}

enum hq_group hq_linear_group(enum hq_linear l) {
  switch (l) {
  case HQ_LIN_Q:
  case HQ_LIN_K:
  case HQ_LIN_V: return HQ_GROUP_QKV;
  case HQ_LIN_O: return HQ_GROUP_O;
  case HQ_LIN_GATE:
  case HQ_LIN_UP: return HQ_GROUP_GATEUP;
  case HQ_LIN_DOWN: return HQ_GROUP_DOWN;
  default: HQ_DIE("bad linear %d", (int)l);
  }
}

void hq_linear_shape(const struct hq_model_config *c, enum hq_linear l, int64_t *rows,
                     int64_t *cols) {
  int64_t q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
  switch (l) {
  case HQ_LIN_Q: *rows = q; *cols = c->hidden; break;
  case HQ_LIN_K:
  case HQ_LIN_V: *rows = kv; *cols = c->hidden; break;
  case HQ_LIN_O: *rows = c->hidden; *cols = q; break;
  case HQ_LIN_GATE:
  case HQ_LIN_UP: *rows = c->intermediate; *cols = c->hidden; break;
  case HQ_LIN_DOWN: *rows = c->hidden; *cols = c->intermediate; break;
  default: HQ_DIE("bad linear %d", (int)l);
  }
}

static const char *const exp_parts[2][3] = {{"w1", "w3", "w2"},
                                              {"gate_proj", "up_proj", "down_proj"}};

void hq_expert_name(const struct hq_model_config *c, int64_t b, int64_t e,
                    enum hq_expert_part part, char *buf, size_t n) {
  const int mix = c->arch == HQ_ARCH_MIXTRAL;
  snprintf(buf, n, "model.layers.%lld.%s.experts.%lld.%s", (long long)b,
           mix ? "block_sparse_moe" : "mlp", (long long)e, exp_parts[mix ? 0 : 1][part]);
}

void hq_router_name(const struct hq_model_config *c, int64_t b, char *buf, size_t n) {
  snprintf(buf, n, "model.layers.%lld.%s.gate.weight", (long long)b,
           c->arch == HQ_ARCH_MIXTRAL ? "block_sparse_moe" : "mlp");
}

void hq_expert_shape(const struct hq_model_config *c, enum hq_expert_part part, int64_t *rows,
                     int64_t *cols) {
  *rows = part == HQ_EXP_DOWN ? c->hidden : c->moe_intermediate;
  *cols = part == HQ_EXP_DOWN ? c->moe_intermediate : c->hidden;
}

int64_t hq_block_nlinears(const struct hq_model_config *c, int64_t b) {
  return hq_config_moe_block(c, b) ? HQ_LIN_GATE + 3 * c->n_experts : HQ_LIN_COUNT;
}

float **hq_block_linear(const struct hq_model_config *c, int64_t b, int64_t k,
                        struct hq_block_weights *w, char *name, size_t n, int64_t *rows,
                        int64_t *cols) {
  HQ_ASSERT(k >= 0 && k < hq_block_nlinears(c, b));
  if (!hq_config_moe_block(c, b) || k < HQ_LIN_GATE) {
    snprintf(name, n, "model.layers.%lld.%s", (long long)b, lin_names[k]);
    hq_linear_shape(c, (enum hq_linear)k, rows, cols);
    return w ? &w->lin[k] : NULL;
  }
  const int64_t e = (k - HQ_LIN_GATE) / 3;
  const enum hq_expert_part part = (enum hq_expert_part)((k - HQ_LIN_GATE) % 3);
  hq_expert_name(c, b, e, part, name, n);
  hq_expert_shape(c, part, rows, cols);
  return w && w->experts ? &w->experts[3 * e + part] : NULL;
}

void hq_shape_str(const int64_t *s, int nd, char *buf, size_t n) {
  size_t o = 0;
  o += (size_t)snprintf(buf + o, n - o, "[");
  for (int i = 0; i < nd && o < n; i++)
    o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)s[i]);
  if (o < n) snprintf(buf + o, n - o, "]");
}

/* The tensor must exist with exactly this shape (nd 1 or 2). */
static int expect(const struct hq_model *m, const char *name, int nd, int64_t d0, int64_t d1,
                  const char *why) {
  int tnd = 0, found;
  int64_t tshape[HQ_ST_MAXDIM] = {0};
  char pre[256];
  if (m->h5) {
    found = hq_model_h5_shape(m, name, &tnd, tshape);
  } else if (hq_model_gptq_linear(m, name, pre, sizeof pre)) {
    HQ_TRY(hq_model_gptq_shape(m, pre, &tshape[0], &tshape[1]));
    found = 1;
    tnd = 2;
  } else {
    const struct hq_st_tensor *t = hq_st_find(&m->st, name);
    found = t != NULL;
    if (t && t->dtype == HQ_DTYPE_I32)
      return hq_fail(HQ_ERR_INPUT, "model %s: tensor '%s' is I32, not a floating-point tensor; "
                     "hpcq reads I32 only as the packed parts of a GPTQ linear", m->dir, name);
    if (t) {
      tnd = t->ndim;
      memcpy(tshape, t->shape, sizeof tshape);
    }
  }
  const char *src = m->h5 ? "the .h5 result" : "the safetensors";
  const char *cfg = m->h5 ? "its model_config_json" : "config.json";
  int64_t want[2] = {d0, d1};
  char ws[96], hs[192];
  hq_shape_str(want, nd, ws, sizeof ws);
  if (!found)
    return hq_fail(HQ_ERR_INPUT, "model %s: tensor '%s' %s is missing from %s; the "
                   "checkpoint is incomplete or not a %s", m->dir, name, ws, src, m->cfg.arch_name);
  int ok = tnd == nd && tshape[0] == d0 && (nd < 2 || tshape[1] == d1);
  if (!ok) {
    hq_shape_str(tshape, tnd, hs, sizeof hs);
    return hq_fail(HQ_ERR_INPUT, "model %s: tensor '%s' has shape %s but %s implies %s "
                   "(%s); the config and the weights do not belong together", m->dir, name, hs,
                   cfg, ws, why);
  }
  return HQ_OK;
}

int hq_block_tensors(const struct hq_model_config *c, struct hq_block_tensor t[HQ_BT_COUNT]) {
  const int64_t qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
  const char *bias_why = c->arch == HQ_ARCH_QWEN2 ? "Qwen2 has q/k/v bias" : "attention_bias=true";
  int n = 0;
  t[n++] = (struct hq_block_tensor){HQ_BT_LN_ATTN, "input_layernorm.weight", c->hidden, "hidden_size"};
  t[n++] = (struct hq_block_tensor){HQ_BT_LN_MLP, "post_attention_layernorm.weight", c->hidden,
                                    "hidden_size"};
  if (c->qkv_bias) {
    t[n++] = (struct hq_block_tensor){HQ_BT_BIAS_Q, "self_attn.q_proj.bias", qd, bias_why};
    t[n++] = (struct hq_block_tensor){HQ_BT_BIAS_K, "self_attn.k_proj.bias", kvd, bias_why};
    t[n++] = (struct hq_block_tensor){HQ_BT_BIAS_V, "self_attn.v_proj.bias", kvd, bias_why};
  }
  if (c->qk_norm) {
    t[n++] = (struct hq_block_tensor){HQ_BT_Q_NORM, "self_attn.q_norm.weight", c->head_dim,
                                      "Qwen3's per-head q norm, head_dim"};
    t[n++] = (struct hq_block_tensor){HQ_BT_K_NORM, "self_attn.k_norm.weight", c->head_dim,
                                      "Qwen3's per-head k norm, head_dim"};
  }
  return n;
}

float **hq_block_tensor_slot(struct hq_block_weights *w, enum hq_btensor k) {
  HQ_BT_RETURN_MEMBER(w, k)
  HQ_DIE("bad block tensor %d", (int)k);
}

/* the router and every expert's linears of MoE block b */
static int check_block_experts(const struct hq_model *m, int64_t b) {
  const struct hq_model_config *c = &m->cfg;
  char name[256], why[160];
  snprintf(why, sizeof why, "num_experts=%lld, hidden_size=%lld", (long long)c->n_experts,
           (long long)c->hidden);
  hq_router_name(c, b, name, sizeof name);
  HQ_TRY(expect(m, name, 2, c->n_experts, c->hidden, why));
  snprintf(why, sizeof why, "hidden_size=%lld, expert intermediate size %lld",
           (long long)c->hidden, (long long)c->moe_intermediate);
  for (int64_t e = 0; e < c->n_experts; e++)
    for (int p = 0; p < 3; p++) {
      int64_t r, k;
      hq_expert_shape(c, (enum hq_expert_part)p, &r, &k);
      hq_expert_name(c, b, e, (enum hq_expert_part)p, name, sizeof name - 8);
      strcat(name, ".weight");
      HQ_TRY(expect(m, name, 2, r, k, why));
    }
  return HQ_OK;
}

static int check_block_linears(const struct hq_model *m, int64_t b) {
  const struct hq_model_config *c = &m->cfg;
  char name[256], why[160];
  snprintf(why, sizeof why, "hidden_size=%lld, intermediate_size=%lld, heads=%lld, "
           "kv_heads=%lld, head_dim=%lld", (long long)c->hidden, (long long)c->intermediate,
           (long long)c->n_heads, (long long)c->n_kv_heads, (long long)c->head_dim);
  const int moe = hq_config_moe_block(c, b);
  if (moe) HQ_TRY(check_block_experts(m, b));
  for (int l = 0; l < (moe ? HQ_LIN_GATE : HQ_LIN_COUNT); l++) {
    int64_t r, k;
    hq_linear_shape(c, (enum hq_linear)l, &r, &k);
    snprintf(name, sizeof name, "model.layers.%lld.%s.weight", (long long)b, lin_names[l]);
    HQ_TRY(expect(m, name, 2, r, k, why));
  }
  return HQ_OK;
}

static int check_tensors(const struct hq_model *m) {
  const struct hq_model_config *c = &m->cfg;
  char name[256], why[160];
  snprintf(why, sizeof why, "vocab_size=%lld, hidden_size=%lld", (long long)c->vocab,
           (long long)c->hidden);
  HQ_TRY(expect(m, "model.embed_tokens.weight", 2, c->vocab, c->hidden, why));
  if (!c->tie_embeddings) HQ_TRY(expect(m, "lm_head.weight", 2, c->vocab, c->hidden, why));
  snprintf(why, sizeof why, "hidden_size=%lld", (long long)c->hidden);
  HQ_TRY(expect(m, "model.norm.weight", 1, c->hidden, 0, why));
  struct hq_block_tensor bt[HQ_BT_COUNT];
  const int nbt = hq_block_tensors(c, bt);
  for (int64_t b = 0; b < c->n_layers; b++) {
    for (int k = 0; k < nbt; k++) {
      snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)b, bt[k].suffix);
      HQ_TRY(expect(m, name, 1, bt[k].len, 0, bt[k].why));
    }
    HQ_TRY(check_block_linears(m, b));
  }
  return HQ_OK;
}

int hq_model_open(const char *dir, struct hq_model *m) {
  memset(m, 0, sizeof *m);
  size_t dl = strlen(dir);
  if (dl > 3 && strcmp(dir + dl - 3, ".h5") == 0) {
    int rc = hq_model_h5_open(dir, m);
    if (rc == HQ_OK && (rc = check_tensors(m)) != HQ_OK) hq_model_close(m);
    return rc;
  }
  m->dir = strdup(dir);
  if (!m->dir) return hq_fail(HQ_ERR_NOMEM, "out of memory");
  int rc = hq_config_load(dir, &m->cfg);
  if (rc == HQ_OK) rc = hq_st_open(dir, &m->st);
  if (rc == HQ_OK) rc = hq_model_gptq_init(m);
  if (rc == HQ_OK) rc = check_tensors(m);
  if (rc != HQ_OK) hq_model_close(m);
  return rc;
}

void hq_model_close(struct hq_model *m) {
  if (!m) return;
  if (m->h5) hq_model_h5_close(m);
  hq_st_close(&m->st);
  hq_config_free(&m->cfg);
  free(m->dir);
  memset(m, 0, sizeof *m);
}

int hq_model_load_f32(const struct hq_model *m, const char *name, float **out, int64_t *numel) {
  *out = NULL;
  if (numel) *numel = 0;
  if (m->h5) return hq_model_h5_load_f32(m, name, out, numel);
  char pre[256];
  if (hq_model_gptq_linear(m, name, pre, sizeof pre)) return hq_model_gptq_load_f32(m, pre, out, numel);
  const struct hq_st_tensor *t = hq_st_find(&m->st, name);
  /* a tied head is the embedding (HF checkpoints usually do not store it twice) */
  if (!t && m->cfg.tie_embeddings && strcmp(name, "lm_head.weight") == 0)
    t = hq_st_find(&m->st, "model.embed_tokens.weight");
  if (!t)
    return hq_fail(HQ_ERR_INPUT, "model %s: no tensor named '%s'", m->dir ? m->dir : "?", name);
  float *p = malloc(t->numel ? (size_t)t->numel * sizeof(float) : 1);
  if (!p)
    return hq_fail(HQ_ERR_NOMEM, "out of memory loading '%s' (%lld floats)", name,
                   (long long)t->numel);
  hq_st_to_f32(t, p);
  hq_st_release(t);
  *out = p;
  if (numel) *numel = t->numel;
  return HQ_OK;
}

int hq_model_embed_rows(const struct hq_model *m, const int32_t *ids, int64_t ntok, float *out) {
  const char *name = "model.embed_tokens.weight";
  const int64_t H = m->cfg.hidden, V = m->cfg.vocab;
  const struct hq_st_tensor *t = m->h5 ? NULL : hq_st_find(&m->st, name);
  float *all = NULL;
  if (!t) { /* an .h5 result: the whole table */
    int64_t n = 0;
    HQ_TRY(hq_model_load_f32(m, name, &all, &n));
    HQ_ASSERT(n == V * H);
  }
  const size_t es = t && t->dtype != HQ_DTYPE_F32 ? 2 : 4;
  for (int64_t i = 0; i < ntok; i++) {
    HQ_ASSERT(ids[i] >= 0 && ids[i] < V); /* token files are checked on load */
    if (all) {
      memcpy(out + i * H, all + (int64_t)ids[i] * H, (size_t)H * sizeof(float));
      continue;
    }
    struct hq_st_tensor row = *t;
    row.data = (const unsigned char *)t->data + (size_t)ids[i] * (size_t)H * es;
    row.numel = H;
    row.nbytes = (size_t)H * es;
    hq_st_to_f32(&row, out + i * H);
  }
  free(all);
  return HQ_OK;
}

int hq_model_load_block(const struct hq_model *m, int64_t b, struct hq_block_weights *w) {
  return hq_model_load_block_part(m, b, 1, w);
}

int hq_model_load_linear(const struct hq_model *m, int64_t b, enum hq_linear l,
                         struct hq_block_weights *w) {
  char name[256];
  snprintf(name, sizeof name, "model.layers.%lld.%s.weight", (long long)b, lin_names[l]);
  return w->lin[l] ? HQ_OK : hq_model_load_f32(m, name, &w->lin[l], NULL);
}

int hq_model_load_linear_rows(const struct hq_model *m, int64_t b, enum hq_linear l, int64_t r0,
                              int64_t r1, float *W) {
  char name[256];
  snprintf(name, sizeof name, "model.layers.%lld.%s.weight", (long long)b, lin_names[l]);
  if (m->h5 || m->gptq_format)
    return hq_fail(HQ_ERR_UNSUPPORTED, "%s: row ranges of a quantized model", name);
  const struct hq_st_tensor *t = hq_st_find(&m->st, name);
  int64_t rows, cols;
  hq_linear_shape(&m->cfg, l, &rows, &cols);
  if (!t)
    return hq_fail(HQ_ERR_INPUT, "model %s: no tensor named '%s'", m->dir ? m->dir : "?", name);
  if (t->numel != rows * cols || r0 < 0 || r0 > r1 || r1 > rows)
    return hq_fail(HQ_ERR_INPUT, "%s: %lld elements, rows %lld..%lld of %lld x %lld asked",
                   name, (long long)t->numel, (long long)r0, (long long)r1, (long long)rows,
                   (long long)cols);
  hq_st_to_f32_range(t, r0 * cols, r1 * cols, W + r0 * cols);
  hq_st_release(t);
  return HQ_OK;
}

int hq_model_load_experts(const struct hq_model *m, int64_t b, struct hq_block_weights *w) {
  const struct hq_model_config *c = &m->cfg;
  char name[256];
  if (w->experts) return HQ_OK;
  hq_router_name(c, b, name, sizeof name);
  HQ_TRY(hq_model_load_f32(m, name, &w->router, NULL));
  if (!(w->experts = calloc((size_t)(3 * c->n_experts), sizeof *w->experts)))
    return hq_fail(HQ_ERR_NOMEM, "out of memory (block %lld's experts)", (long long)b);
  w->n_expert_slots = 3 * c->n_experts;
  for (int64_t i = 0; i < 3 * c->n_experts; i++) {
    hq_expert_name(c, b, i / 3, (enum hq_expert_part)(i % 3), name, sizeof name - 8);
    strcat(name, ".weight");
    HQ_TRY(hq_model_load_f32(m, name, &w->experts[i], NULL));
  }
  return HQ_OK;
}

int hq_model_load_block_part(const struct hq_model *m, int64_t b, int linears,
                             struct hq_block_weights *w) {
  memset(w, 0, sizeof *w);
  if (b < 0 || b >= m->cfg.n_layers)
    return hq_fail(HQ_ERR_INPUT, "block %lld does not exist; the model has %lld layers",
                   (long long)b, (long long)m->cfg.n_layers);
  const int moe = hq_config_moe_block(&m->cfg, b);
  int rc = HQ_OK;
  for (int l = 0; l < (moe ? HQ_LIN_GATE : HQ_LIN_COUNT) && rc == HQ_OK && linears; l++)
    rc = hq_model_load_linear(m, b, (enum hq_linear)l, w);
  if (rc == HQ_OK && linears && moe) rc = hq_model_load_experts(m, b, w);
  struct hq_block_tensor bt[HQ_BT_COUNT];
  const int nbt = hq_block_tensors(&m->cfg, bt);
  for (int k = 0; k < nbt && rc == HQ_OK; k++) {
    char name[256];
    snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)b, bt[k].suffix);
    rc = hq_model_load_f32(m, name, hq_block_tensor_slot(w, bt[k].kind), NULL);
  }
  if (rc != HQ_OK) hq_block_weights_free(w);
  return rc;
}

void hq_block_weights_free(struct hq_block_weights *w) {
  if (!w) return;
  for (int l = 0; l < HQ_LIN_COUNT; l++) {
    free(w->lin[l]);
    free(w->bias[l]);
  }
  free(w->ln_attn);
  free(w->ln_mlp);
  free(w->q_norm);
  free(w->k_norm);
  free(w->router);
  for (int64_t i = 0; w->experts && i < w->n_expert_slots; i++) free(w->experts[i]);
  free(w->experts);
  memset(w, 0, sizeof *w);
}
