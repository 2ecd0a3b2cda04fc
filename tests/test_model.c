/* hq_model_*: both bundled models open and every block loads as fp32 row-major [out x in] with
 * the values the python safetensors library reads (tests/model_fixtures.h); the linear table
 * matches the HF Llama layout; checkpoints that do not fit their config (built at run time from
 * stories260K) are refused naming the tensor, the expected and the actual shape. */
#include <math.h>
#include <string.h>

#include "backend.h"
#include "forward.h"
#include "model.h"
#include "model_fixtures.h"
#include "st_testlib.h"
#include "testutil.h"

#define NFX(a) ((int)(sizeof(a) / sizeof((a)[0])))

static const struct fx_tensor *fx_find(const struct fx_model *m, const char *name) {
  for (int64_t i = 0; i < m->ntensors; i++)
    if (strcmp(m->t[i].name, name) == 0) return &m->t[i];
  return NULL;
}

/* values of a loaded fp32 array against the python reading */
static int same_as_fx(const struct fx_model *m, const char *name, const float *v, int64_t n) {
  const struct fx_tensor *f = fx_find(m, name);
  if (!f || !v) return 0;
  int64_t fn = f->shape[0] * (f->ndim > 1 ? f->shape[1] : 1);
  if (fn != n) return 0;
  double s = 0, sa = 0;
  for (int64_t i = 0; i < n; i++) s += v[i], sa += fabs(v[i]);
  if (fabs(s - f->sum) > 1e-9 * f->sumabs + 1e-12 || fabs(sa - f->sumabs) > 1e-9 * f->sumabs)
    return 0;
  for (int k = 0; k < 3; k++)
    if (v[f->idx[k]] != f->val[k]) return 0;
  return 1;
}

static void test_linear_table(void) {
  static const char *names[HQ_LIN_COUNT] = {"self_attn.q_proj", "self_attn.k_proj",
                                            "self_attn.v_proj", "self_attn.o_proj",
                                            "mlp.gate_proj",    "mlp.up_proj",
                                            "mlp.down_proj"};
  static const enum hq_group groups[HQ_LIN_COUNT] = {HQ_GROUP_QKV, HQ_GROUP_QKV, HQ_GROUP_QKV,
                                                     HQ_GROUP_O, HQ_GROUP_GATEUP,
                                                     HQ_GROUP_GATEUP, HQ_GROUP_DOWN};
  /* a GQA config where every dimension differs: hidden 96, 6 heads x 20, 2 kv heads, inter 200 */
  struct hq_model_config c;
  memset(&c, 0, sizeof c);
  c.hidden = 96, c.n_heads = 6, c.n_kv_heads = 2, c.head_dim = 20, c.intermediate = 200;
  static const int64_t shp[HQ_LIN_COUNT][2] = {{120, 96}, {40, 96}, {40, 96}, {96, 120},
                                               {200, 96}, {200, 96}, {96, 200}};
  for (int l = 0; l < HQ_LIN_COUNT; l++) {
    CHECK(strcmp(hq_linear_name((enum hq_linear)l), names[l]) == 0, "name %d", l);
    CHECK(hq_linear_group((enum hq_linear)l) == groups[l], "group %d", l);
    int64_t r, k;
    hq_linear_shape(&c, (enum hq_linear)l, &r, &k);
    CHECK(r == shp[l][0] && k == shp[l][1], "shape of %s: [%lld, %lld]", names[l], (long long)r,
          (long long)k);
  }
}

/* hq_model_embed_rows = the rows of the whole table (BF16 and F32 checkpoints) */
static void check_embed_rows(const char *dir) {
  struct hq_model m;
  if (hq_model_open(dir, &m) != HQ_OK) {
    CHECK(0, "open %s: %s", dir, hq_last_error());
    return;
  }
  const int64_t H = m.cfg.hidden, V = m.cfg.vocab;
  const int32_t ids[5] = {0, (int32_t)(V - 1), 7, 7, (int32_t)(V / 2)};
  float *all = NULL, *rows = malloc(sizeof(float) * (size_t)(5 * H));
  int64_t n = 0;
  CHECK(hq_model_load_f32(&m, "model.embed_tokens.weight", &all, &n) == HQ_OK && n == V * H, "table");
  CHECK(hq_model_embed_rows(&m, ids, 5, rows) == HQ_OK, "rows: %s", hq_last_error());
  int bad = 0;
  for (int t = 0; t < 5 && all; t++)
    bad += memcmp(rows + t * H, all + (int64_t)ids[t] * H, sizeof(float) * (size_t)H) != 0;
  CHECK(bad == 0, "%s: %d embedding rows differ from the table's", dir, bad);
  free(all), free(rows);
  hq_model_close(&m);
}

/* an untied model whose lm_head holds the embedding's values evaluates exactly as the tied one
 * (eval looks up the untied model's embedding rows instead of holding the table) */
static void check_untied_eval(const char *untied, const char *tied) {
  struct hq_model a, b;
  if (hq_model_open(untied, &a) != HQ_OK || hq_model_open(tied, &b) != HQ_OK) {
    CHECK(0, "open: %s", hq_last_error());
    return;
  }
  int32_t ids[2 * 24];
  for (int i = 0; i < 48; i++) ids[i] = (int32_t)((i * 37 + 5) % a.cfg.vocab);
  double na = 0, nb = 0;
  const struct hq_eval_opts o = {.batch_windows = 1};
  CHECK(hq_forward_model_nll(hq_backend_cpu(), &a, ids, 2, 24, &o, &na, NULL) == HQ_OK, "untied: %s", hq_last_error());
  CHECK(hq_forward_model_nll(hq_backend_cpu(), &b, ids, 2, 24, &o, &nb, NULL) == HQ_OK, "tied: %s", hq_last_error());
  CHECK(na == nb && na > 0, "untied NLL %.17g != tied %.17g", na, nb);
  hq_model_close(&a);
  hq_model_close(&b);
}

static void test_bundled(void) {
  for (int mi = 0; mi < NFX(fx_models); mi++) {
    const struct fx_model *f = &fx_models[mi];
    struct hq_model m;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", hq_t_data(f->dir));
    int rc = hq_model_open(dir, &m);
    CHECK(rc == HQ_OK, "open %s: %s", dir, hq_last_error());
    if (rc != HQ_OK) continue;
    CHECK(m.cfg.n_layers == f->layers && m.cfg.hidden == f->hidden && m.st.ntensors == f->ntensors,
          "%s config", f->dir);
    int bad = 0;
    for (int64_t b = 0; b < m.cfg.n_layers; b++) {
      struct hq_block_weights w;
      rc = hq_model_load_block(&m, b, &w);
      CHECK(rc == HQ_OK, "block %lld: %s", (long long)b, hq_last_error());
      if (rc != HQ_OK) continue;
      char name[256];
      for (int l = 0; l < HQ_LIN_COUNT; l++) {
        int64_t r, k;
        hq_linear_shape(&m.cfg, (enum hq_linear)l, &r, &k);
        snprintf(name, sizeof name, "model.layers.%lld.%s.weight", (long long)b,
                 hq_linear_name((enum hq_linear)l));
        const struct fx_tensor *ft = fx_find(f, name);
        /* python's [out, in] shape is the config's [rows, cols] */
        if (!ft || ft->shape[0] != r || ft->shape[1] != k) bad++;
        if (!same_as_fx(f, name, w.lin[l], r * k)) bad++, fprintf(stderr, "differs: %s\n", name);
        if (w.bias[l]) bad++;
      }
      snprintf(name, sizeof name, "model.layers.%lld.input_layernorm.weight", (long long)b);
      if (!same_as_fx(f, name, w.ln_attn, m.cfg.hidden)) bad++;
      snprintf(name, sizeof name, "model.layers.%lld.post_attention_layernorm.weight",
               (long long)b);
      if (!same_as_fx(f, name, w.ln_mlp, m.cfg.hidden)) bad++;
      hq_block_weights_free(&w);
      CHECK(w.lin[0] == NULL && w.ln_attn == NULL, "freed");
    }
    CHECK(bad == 0, "%s: %d block tensors differ from the python reading", f->dir, bad);
    float *e = NULL;
    int64_t n = 0;
    rc = hq_model_load_f32(&m, "model.embed_tokens.weight", &e, &n);
    CHECK(rc == HQ_OK && n == f->vocab * f->hidden &&
              same_as_fx(f, "model.embed_tokens.weight", e, n),
          "embeddings");
    free(e);
    rc = hq_model_load_f32(&m, "model.norm.weight", &e, &n);
    CHECK(rc == HQ_OK && same_as_fx(f, "model.norm.weight", e, n), "final norm");
    free(e);
    rc = hq_model_load_f32(&m, "lm_head.weight", &e, &n);
    CHECK(rc == HQ_OK && same_as_fx(f, "model.embed_tokens.weight", e, n),
          "tied lm_head is the embedding: %s", hq_last_error());
    free(e);
    hq_error_clear();
    rc = hq_model_load_f32(&m, "model.layers.0.mlp.nope.weight", &e, &n);
    CHECK(rc == HQ_ERR_INPUT && e == NULL && tl_contains(hq_last_error(), "mlp.nope"),
          "unknown tensor: %s", hq_last_error());
    struct hq_block_weights w;
    hq_error_clear();
    rc = hq_model_load_block(&m, m.cfg.n_layers, &w);
    CHECK(rc == HQ_ERR_INPUT && tl_contains(hq_last_error(), "layers"), "block out of range");
    CHECK(hq_model_load_block(&m, -1, &w) == HQ_ERR_INPUT, "negative block");
    hq_model_close(&m);
    CHECK(m.dir == NULL && m.st.ntensors == 0 && m.cfg.json == NULL, "closed");
  }
}

/* ---- mismatched checkpoints ---- */
static char g_tmp[512];

/* tmp/<name>/ with config.json (edited: key=value JSON literal, or NULL) and a safetensors */
static void make_model(const char *name, const char *key, const char *value, const char *st_src,
                       char *dir, size_t n) {
  snprintf(dir, n, "%s/%s", g_tmp, name);
  mkdir(dir, 0755);
  size_t len;
  char *txt = tl_read(hq_t_data("stories260K-hf/config.json"), &len);
  cJSON *cfg = cJSON_Parse(txt);
  free(txt);
  if (key) cJSON_ReplaceItemInObjectCaseSensitive(cfg, key, cJSON_Parse(value));
  char *out = cJSON_Print(cfg);
  char p[1024];
  tl_path(p, sizeof p, dir, "config.json");
  tl_write(p, out, strlen(out));
  cJSON_free(out);
  cJSON_Delete(cfg);
  if (st_src) {
    tl_path(p, sizeof p, dir, "model.safetensors");
    tl_copy(st_src, p, -1);
  }
}

static void expect_fail(const char *dir, int status, const char *n1, const char *n2,
                        const char *n3) {
  struct hq_model m;
  hq_error_clear();
  int rc = hq_model_open(dir, &m);
  const char *msg = hq_last_error();
  CHECK(rc == status, "%s: status %d (%s), want %d", dir, rc, msg, status);
  CHECK(!n1 || tl_contains(msg, n1), "message '%s' lacks '%s'", msg, n1 ? n1 : "");
  CHECK(!n2 || tl_contains(msg, n2), "message '%s' lacks '%s'", msg, n2 ? n2 : "");
  CHECK(!n3 || tl_contains(msg, n3), "message '%s' lacks '%s'", msg, n3 ? n3 : "");
  CHECK(m.dir == NULL && m.st.nfiles == 0 && m.cfg.json == NULL, "failed open leaves m empty");
  if (rc == HQ_OK) hq_model_close(&m);
}

static void drop_tensor(cJSON *h, void *ctx) {
  cJSON_DeleteItemFromObjectCaseSensitive(h, (const char *)ctx);
}

static void test_mismatch(void) {
  tl_tmpdir(g_tmp, sizeof g_tmp, "model");
  char src[4096], dir[1024], p[1200];
  snprintf(src, sizeof src, "%s", hq_t_data("stories260K-hf/model.safetensors"));

  /* the unmodified copy opens (so the failures below are caused by the edits) */
  make_model("same", NULL, NULL, src, dir, sizeof dir);
  struct hq_model m;
  CHECK(hq_model_open(dir, &m) == HQ_OK, "copy opens: %s", hq_last_error());
  hq_model_close(&m);

  make_model("missing", NULL, NULL, NULL, dir, sizeof dir);
  tl_path(p, sizeof p, dir, "model.safetensors");
  tl_st_patch(src, p, drop_tensor, "model.layers.2.mlp.up_proj.weight");
  expect_fail(dir, HQ_ERR_INPUT, "'model.layers.2.mlp.up_proj.weight'", "missing", "[172, 64]");

  make_model("inter", "intermediate_size", "171", src, dir, sizeof dir);
  expect_fail(dir, HQ_ERR_INPUT, "'model.layers.0.mlp.gate_proj.weight' has shape [172, 64]",
              "implies [171, 64]", "intermediate_size=171");
  make_model("kv", "num_key_value_heads", "8", src, dir, sizeof dir);
  expect_fail(dir, HQ_ERR_INPUT, "'model.layers.0.self_attn.k_proj.weight' has shape [32, 64]",
              "implies [64, 64]", "kv_heads=8");
  make_model("vocab", "vocab_size", "500", src, dir, sizeof dir);
  expect_fail(dir, HQ_ERR_INPUT, "'model.embed_tokens.weight' has shape [512, 64]",
              "implies [500, 64]", NULL);
  make_model("layers", "num_hidden_layers", "6", src, dir, sizeof dir);
  expect_fail(dir, HQ_ERR_INPUT, "'model.layers.5.input_layernorm.weight'", "missing", NULL);
  make_model("untied", "tie_word_embeddings", "false", src, dir, sizeof dir);
  expect_fail(dir, HQ_ERR_INPUT, "'lm_head.weight'", "missing", "[512, 64]");
  make_model("bias", "attention_bias", "true", src, dir, sizeof dir);
  expect_fail(dir, HQ_ERR_INPUT, "'model.layers.0.self_attn.q_proj.bias'", "missing", "[64]");
  make_model("arch", "architectures", "[\"PhiForCausalLM\"]", src, dir, sizeof dir);
  expect_fail(dir, HQ_ERR_UNSUPPORTED, "PhiForCausalLM", "LlamaForCausalLM", "config.json");
  make_model("noweights", NULL, NULL, NULL, dir, sizeof dir);
  expect_fail(dir, HQ_ERR_IO, "neither", NULL, NULL);
  expect_fail(g_tmp, HQ_ERR_IO, "config.json", NULL, NULL);

  /* a Qwen2 checkpoint (q/k/v bias) and an untied one, written from stories260K's tensors */
  struct hq_safetensors st;
  CHECK(hq_st_open(src, &st) == HQ_OK, "open src");
  int nt = (int)st.ntensors;
  int nextra = 5 * 3 + 1;
  struct tl_tensor *l = tl_from_st(&st, nextra);
  static float biases[5][3][64];
  static char bnames[5][3][80];
  const char *bl[3] = {"q_proj", "k_proj", "v_proj"};
  const int bn[3] = {64, 32, 32};
  int k = nt;
  for (int b = 0; b < 5; b++)
    for (int j = 0; j < 3; j++) {
      for (int i = 0; i < bn[j]; i++) biases[b][j][i] = (float)(1000 * b + 100 * j + i);
      snprintf(bnames[b][j], sizeof bnames[b][j], "model.layers.%d.self_attn.%s.bias", b, bl[j]);
      l[k].name = bnames[b][j];
      l[k].dtype = "F32";
      l[k].ndim = 1;
      l[k].shape[0] = bn[j];
      l[k].bytes = biases[b][j];
      l[k].nbytes = (size_t)bn[j] * 4;
      k++;
    }
  /* lm_head = embeddings as BF16-truncated copies are not needed: reuse the F32 bytes */
  const struct hq_st_tensor *emb = hq_st_find(&st, "model.embed_tokens.weight");
  l[k] = (struct tl_tensor){"lm_head.weight", "F32", 2, {512, 64}, emb->data, emb->nbytes};
  k++;
  make_model("qwen2", "architectures", "[\"Qwen2ForCausalLM\"]", NULL, dir, sizeof dir);
  tl_path(p, sizeof p, dir, "model.safetensors");
  tl_st_write(p, l, k - 1);
  int rc = hq_model_open(dir, &m);
  CHECK(rc == HQ_OK && m.cfg.qkv_bias, "qwen2 opens: %s", hq_last_error());
  if (rc == HQ_OK) {
    struct hq_block_weights w;
    int bad = 0;
    for (int b = 0; b < 5; b++) {
      if (hq_model_load_block(&m, b, &w) != HQ_OK) {
        bad++;
        continue;
      }
      for (int j = 0; j < 3; j++)
        for (int i = 0; i < bn[j]; i++)
          if (!w.bias[j] || w.bias[j][i] != (float)(1000 * b + 100 * j + i)) bad++;
      if (w.bias[HQ_LIN_O] || w.bias[HQ_LIN_GATE] || w.bias[HQ_LIN_DOWN]) bad++;
      hq_block_weights_free(&w);
    }
    CHECK(bad == 0, "qwen2 biases: %d wrong", bad);
    hq_model_close(&m);
  }
  /* the same without one bias: refused */
  tl_st_write(p, l, k - 2);
  expect_fail(dir, HQ_ERR_INPUT, "'model.layers.4.self_attn.v_proj.bias'", "missing", "Qwen2");
  /* untied with lm_head present */
  make_model("untied-ok", "tie_word_embeddings", "false", NULL, dir, sizeof dir);
  tl_path(p, sizeof p, dir, "model.safetensors");
  struct tl_tensor keep = l[nt];
  l[nt] = l[k - 1]; /* lm_head after the base tensors */
  tl_st_write(p, l, nt + 1);
  rc = hq_model_open(dir, &m);
  CHECK(rc == HQ_OK && !m.cfg.tie_embeddings && hq_st_find(&m.st, "lm_head.weight"),
        "untied model opens: %s", hq_last_error());
  if (rc == HQ_OK) hq_model_close(&m);
  check_untied_eval(dir, hq_t_data("stories260K-hf"));
  /* lm_head with the wrong shape */
  l[nt].shape[0] = 256, l[nt].shape[1] = 128;
  tl_st_write(p, l, nt + 1);
  expect_fail(dir, HQ_ERR_INPUT, "'lm_head.weight' has shape [256, 128]", "implies [512, 64]",
              NULL);
  l[nt] = keep;
  free(l);
  hq_st_close(&st);
  tl_rmtree(g_tmp);
}

int main(void) {
  check_embed_rows(hq_t_data("llama-sotu-5m"));
  check_embed_rows(hq_t_data("stories260K-hf"));
  test_linear_table();
  test_bundled();
  test_mismatch();
  return hq_t_done("test_model");
}
