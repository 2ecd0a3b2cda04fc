/* The result file of a run (pipeline_internal.h): its settings and root attributes, the
 * unquantized tensors, the blocks already done of a resumed run; and its path: one run at a
 * time (lock), the same file on every rank, never one of the run's inputs (outpath.h). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "equalize.h"
#include "error.h"
#include "h5check.h"
#include "pack.h"
#include "outpath.h"
#include "pipeline_internal.h"

/* One numeric or boolean setting of the settings JSON; a list of them ends with key NULL. */
struct setting {
  const char *key;
  double v;
  int is_bool;
};

static void add_settings(cJSON *j, const struct setting *s) {
  for (; s->key; s++) {
    if (s->is_bool) cJSON_AddBoolToObject(j, s->key, s->v != 0.0);
    else cJSON_AddNumberToObject(j, s->key, s->v);
  }
}

/* A 64-bit fingerprint as 16 hex digits */
static void add_hex64(cJSON *j, const char *key, uint64_t v) {
  char hx[32];
  snprintf(hx, sizeof hx, "%016llx", (unsigned long long)v);
  cJSON_AddStringToObject(j, key, hx);
}

/* The calibration data: how much, how drawn, which (FNV-1a 64 of the token file) */
static void settings_calib(cJSON *j, const struct run *R) {
  const struct hq_quant_opts *o = R->o;
  cJSON_AddNumberToObject(j, "nsamples", (double)o->nsamples);
  cJSON_AddNumberToObject(j, "seqlen", (double)R->seqlen);
  cJSON_AddNumberToObject(j, "seed", (double)o->seed);
  add_hex64(j, "calib_fnv1a64", R->calib_id);
  cJSON_AddNumberToObject(j, "calib_tokens", (double)R->calib_tokens);
}

/* The model's sizes and contents, the arithmetic (backend and its kernel family,
 * docs/readme/reproducibility.md) and the hpcq version */
static void settings_model(cJSON *j, const struct run *R) {
  const struct hq_model_config *c = &R->model.cfg;
  cJSON_AddNumberToObject(j, "hidden_size", (double)c->hidden);
  cJSON_AddNumberToObject(j, "num_hidden_layers", (double)c->n_layers);
  cJSON_AddNumberToObject(j, "intermediate_size", (double)c->intermediate);
  cJSON_AddNumberToObject(j, "vocab_size", (double)c->vocab);
  add_hex64(j, "model_fnv1a64", R->model_id);
  cJSON_AddStringToObject(j, "kernels", R->be->kernels());
  cJSON_AddStringToObject(j, "hpcq_version", HQ_VERSION);
}

/* --rule / --rules: their canonical lines, in order (only when given: files without rules keep
 * their settings) */
static void settings_rules(cJSON *j, const struct hq_rules *rs) {
  char *txt = hq_rules_text(rs);
  cJSON *a = cJSON_AddArrayToObject(j, "rules");
  for (char *s = txt, *next; s; s = next) {
    next = strchr(s, '\n');
    if (next) *next++ = 0;
    cJSON_AddItemToArray(a, cJSON_CreateString(s));
  }
  free(txt);
}

/* The settings that determine the result; a resume must match them exactly (it compares
 * the strings as a whole, so the keys keep this order). */
static char *settings_json(const struct run *R) {
  const struct hq_quant_opts *o = R->o;
  const struct hq_gptq_opts *g = &o->g;
  const struct hq_hqq_opts *h = &o->hqq;
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "method", hq_method_name(o->method));
  cJSON_AddNumberToObject(j, "bits", g->bits);
  cJSON_AddNumberToObject(j, "group_size", (double)(g->group_size > 0 ? g->group_size : -1));
  cJSON_AddBoolToObject(j, "sym", g->sym);
  cJSON_AddBoolToObject(j, "mse", g->mse);
  if (o->method == HQ_METHOD_GPTQ)
    add_settings(j, (const struct setting[]){
        {"act_order", g->act_order, 1}, {"static_groups", g->static_groups, 1},
        {"percdamp", g->percdamp, 0}, {"block_size", g->block_size, 0},
        {"damp_retries", g->damp_retries, 0}, {NULL, 0, 0}});
  if (hq_pipeline_need_calib(o)) settings_calib(j, R);
  /* the other methods' settings, only when used (so GPTQ/RTN settings stay as they were) */
  if (o->method == HQ_METHOD_HQQ)
    add_settings(j, (const struct setting[]){
        {"hqq_lp", h->lp, 0}, {"hqq_beta", h->beta, 0}, {"hqq_kappa", h->kappa, 0},
        {"hqq_iters", h->iters, 0}, {"hqq_scale", h->opt_scale, 1}, {NULL, 0, 0}});
  if (o->act_bits) cJSON_AddNumberToObject(j, "act_bits", o->act_bits);
  if (o->equalize) {
    cJSON_AddStringToObject(j, "equalize", hq_equalize_name(o->equalize));
    if (o->equalize & HQ_EQ_SMOOTH) cJSON_AddNumberToObject(j, "smooth_alpha", o->smooth_alpha);
  }
  if (o->scale_from_hessian) cJSON_AddBoolToObject(j, "scale_from_hessian", 1);
  if (o->block_groups > 1) cJSON_AddNumberToObject(j, "block_groups", o->block_groups);
  if (R->model.cfg.n_experts > 0 && hq_pipeline_need_hessian(o)) {
    cJSON_AddNumberToObject(j, "moe_min_tokens", (double)hq_pipeline_moe_min_tokens(R));
    cJSON_AddStringToObject(j, "moe_fallback", hq_moe_fallback_name(o->moe_fallback));
  }
  if (o->rules && o->rules->n) settings_rules(j, o->rules);
  cJSON_AddStringToObject(j, "zero_convention", "gptq_v2");
  settings_model(j, R);
  char *s = cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  return s;
}

/* "key: file A, now B" for every setting that differs, is new or is gone (or the whole strings
 * when unparsable) */
static void settings_diff(const char *file, const char *now, char *buf, size_t n) {
  cJSON *a = cJSON_Parse(file ? file : ""), *b = cJSON_Parse(now);
  size_t used = 0;
  buf[0] = 0;
  for (cJSON *x = b ? b->child : NULL; x && a; x = x->next) {
    cJSON *y = cJSON_GetObjectItemCaseSensitive(a, x->string);
    char *vx = cJSON_PrintUnformatted(x), *vy = y ? cJSON_PrintUnformatted(y) : NULL;
    if (!vy || strcmp(vx, vy))
      used += (size_t)snprintf(buf + used, used < n ? n - used : 0, "\n  %s: file %s, now %s",
                               x->string, vy ? vy : "(absent)", vx);
    cJSON_free(vx);
    cJSON_free(vy);
    if (used >= n) break;
  }
  for (cJSON *y = a && b ? a->child : NULL; y && used < n; y = y->next) /* in the file only */
    if (!cJSON_GetObjectItemCaseSensitive(b, y->string)) {
      char *vy = cJSON_PrintUnformatted(y);
      used += (size_t)snprintf(buf + used, n - used, "\n  %s: file %s, now (absent)", y->string, vy);
      cJSON_free(vy);
    }
  if (!a || !b) snprintf(buf, n, "\n  file: %s\n  now:  %s", file ? file : "(none)", now);
  cJSON_Delete(a);
  cJSON_Delete(b);
}

/* Unquantized tensors that equalization rescales: the norms (smoothing) and v_proj's bias
 * (CLE). They are stored as float32: rounding the rescaled values to the checkpoint's bf16
 * would break the exact equivalence of the transformed model. */
static int equalized_tensor(const struct hq_quant_opts *o, const char *name) {
  if ((o->equalize & HQ_EQ_SMOOTH) && (strstr(name, "input_layernorm.weight") ||
                                       strstr(name, "post_attention_layernorm.weight")))
    return 1;
  return (o->equalize & HQ_EQ_CLE) && strstr(name, "v_proj.bias") != NULL;
}

/* Collective over R->world: block b's equalized unquantized tensors, taken from world rank 0
 * (src[k] NULL: the block has no such tensor) */
static int write_equalized_block(struct run *R, int64_t b, float *const src[3]) {
  const struct hq_model_config *c = &R->model.cfg;
  const char *sfx[3] = {"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.v_proj.bias"};
  const int64_t n[3] = {c->hidden, c->hidden, c->n_kv_heads * c->head_dim};
  for (int k = 0; k < 3; k++) {
    char name[256];
    snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)b, sfx[k]);
    if (!src[k] || !equalized_tensor(R->o, name)) continue;
    int rc = hq_h5_write_tensor(R->h5, name, HQ_DTYPE_F32, 1, &n[k], src[k]);
    if (rc) return rc;
  }
  return HQ_OK;
}

int hq_pipeline_write_equalized(struct run *R, const struct hq_block_weights *bw) {
  const struct hq_model_config *c = &R->model.cfg;
  const int64_t n[3] = {c->hidden, c->hidden, c->n_kv_heads * c->head_dim};
  int rc = HQ_OK;
  for (int k = 0; k < R->bg.G && !rc; k++) {
    if (R->step_blocks[k] < 0) continue;
    float *const own[3] = {bw->ln_attn, bw->ln_mlp, bw->bias[HQ_LIN_V]};
    if (R->bg.G == 1) {
      rc = write_equalized_block(R, R->step_blocks[k], own);
      continue;
    }
    float *src[3] = {NULL, NULL, NULL}; /* group k's, sent by its root to rank 0 (every rank) */
    for (int t = 0; t < 3; t++) {
      if (t == 2 && !c->qkv_bias) continue;
      src[t] = hq_xmalloc((size_t)n[t] * sizeof(float));
      if (k == R->group) memcpy(src[t], own[t], (size_t)n[t] * sizeof(float));
      hq_comm_bcast(R->world, src[t], (size_t)n[t] * sizeof(float), R->bg.rank0[k]);
    }
    rc = write_equalized_block(R, R->step_blocks[k], src);
    for (int t = 0; t < 3; t++) free(src[t]);
  }
  return rc;
}

/* Name k of the unquantized tensors a run stores: embedding, final norm, an untied lm_head,
 * every block's tensors (hq_block_tensors), the MoE blocks' routers; 0 past the end. */
static int unquantized_name(const struct hq_model_config *c, int64_t k, char *name, size_t n) {
  const char *fixed[3] = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"};
  const int nfixed = c->tie_embeddings ? 2 : 3;
  struct hq_block_tensor bt[HQ_BT_COUNT];
  const int nbt = hq_block_tensors(c, bt);
  if (k < nfixed) {
    snprintf(name, n, "%s", fixed[k]);
    return 1;
  }
  k -= nfixed;
  if (k < nbt * c->n_layers) {
    snprintf(name, n, "model.layers.%lld.%s", (long long)(k / nbt), bt[k % nbt].suffix);
    return 1;
  }
  k -= nbt * c->n_layers; /* then the routers of the MoE blocks */
  for (int64_t b = 0; b < c->n_layers; b++)
    if (hq_config_moe_block(c, b) && k-- == 0) {
      hq_router_name(c, b, name, n);
      return 1;
    }
  return 0;
}

/* Collective over R->world: the model's tensor `name` into /tensors */
static int write_unquantized_one(struct run *R, const char *name) {
  const struct hq_st_tensor *t = hq_st_find(&R->model.st, name);
  int lrc = t ? HQ_OK : hq_fail(HQ_ERR_INPUT, "tensor %s missing from the model", name);
  int rc = hq_comm_agree(R->world, lrc);
  if (rc) return rc;
  if (t->dtype != HQ_DTYPE_F32 && equalized_tensor(R->o, name)) {
    /* rescaled by equalization at its block: stored as float32 (written again then) */
    float *f = malloc((size_t)t->numel * sizeof(float) + 1);
    if (f) hq_st_to_f32(t, f);
    hq_st_release(t);
    rc = hq_comm_agree(R->world, f ? HQ_OK : hq_fail(HQ_ERR_NOMEM, "tensor %s", name));
    if (!rc) rc = hq_h5_write_tensor(R->h5, name, HQ_DTYPE_F32, t->ndim, t->shape, f);
    free(f);
    return rc;
  }
  rc = hq_h5_write_tensor(R->h5, name, t->dtype, t->ndim, t->shape, t->data);
  hq_st_release(t); /* the written pages leave the resident set (4.2 GB for a 70B-sized
                       embedding and lm_head, which would stay mapped for the whole run) */
  return rc;
}

/* Collective: the unquantized tensors, then the weights of the linears a rule skips (as the
 * model has them: `hpcq eval` and `hpcq export` read them like any unquantized tensor) */
static int write_unquantized(struct run *R) {
  const struct hq_model_config *c = &R->model.cfg;
  char name[256];
  for (int64_t k = 0; unquantized_name(c, k, name, sizeof name); k++)
    HQ_TRY(write_unquantized_one(R, name));
  for (int64_t b = 0; R->o->rules && R->o->rules->n && b < c->n_layers; b++)
    for (int64_t k = 0; k < hq_block_nlinears(c, b); k++) {
      int64_t rows, cols;
      hq_block_linear(c, b, k, NULL, name, sizeof name - 8, &rows, &cols);
      if (!hq_quant_lin_q(R->o, name).skip) continue;
      strcat(name, ".weight");
      HQ_TRY(write_unquantized_one(R, name));
    }
  return HQ_OK;
}

/* the stored linear must have the shape this model and these settings give (a file of
 * another model must not be dequantized into this one's buffers) */
static int check_stored_linear(struct run *R, const char *name, int64_t rows, int64_t cols) {
  struct hq_h5_linear_desc d;
  HQ_TRY(hq_h5_linear_info(R->h5, name, &d));
  const struct hq_lin_q q = hq_quant_lin_q(R->o, name);
  const int64_t gs = q.group_size;
  if (d.rows != rows || d.cols != cols || d.bits != q.bits || (d.group_size > 0 ? d.group_size : -1) != gs)
    return hq_fail(HQ_ERR_INPUT, "resume: %s is %lld x %lld at %d bits, group %lld in the file; this "
                   "model and these settings give %lld x %lld at %d bits, group %lld; use "
                   "--overwrite to start again", name, (long long)d.rows, (long long)d.cols, d.bits,
                   (long long)d.group_size, (long long)rows, (long long)cols, q.bits,
                   (long long)gs);
  return HQ_OK;
}

int hq_pipeline_load_done_block(struct run *R, int64_t b, struct hq_block_weights *bw) {
  /* the block as stored must be whole and valid (the check eval and export apply) before
   * anything of it is decoded; then replace the linears of block b by its dequantized weights */
  int rc0 = hq_h5_check_block(R->h5, &R->model.cfg, b);
  if (rc0) return hq_fail_ctx(rc0, "resume: block %lld: ", (long long)b);
  for (int64_t k = 0; k < hq_block_nlinears(&R->model.cfg, b); k++) {
    char name[256];
    int64_t rows, cols;
    float **dst = hq_block_linear(&R->model.cfg, b, k, bw, name, sizeof name, &rows, &cols);
    HQ_ASSERT(dst && *dst); /* a done block is loaded whole */
    if (hq_quant_lin_q(R->o, name).skip) continue; /* the model's weights, as stored */
    struct hq_packed p;
    int rc = check_stored_linear(R, name, rows, cols);
    if (rc) return rc;
    rc = hq_h5_linear_read(R->h5, name, &p);
    if (rc) return hq_fail_ctx(rc, "resume: reading %s: ", name);
    rc = hq_pack_dequantize(&p, *dst);
    hq_pack_free(&p);
    if (rc) return hq_fail_ctx(rc, "resume: %s: ", name);
  }
  /* equalized norms / v bias as stored */
  const struct hq_model_config *c = &R->model.cfg;
  const char *sfx[3] = {"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.v_proj.bias"};
  float *dst[3] = {bw->ln_attn, bw->ln_mlp, bw->bias[HQ_LIN_V]};
  const int64_t want[3] = {c->hidden, c->hidden, c->n_kv_heads * c->head_dim};
  for (int k = 0; k < 3; k++) {
    char name[256];
    snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)b, sfx[k]);
    if (!dst[k] || !equalized_tensor(R->o, name)) continue;
    float *f = NULL;
    int64_t n = 0;
    int rc = hq_h5_read_tensor_f32(R->h5, name, &f, &n);
    if (!rc && n != want[k]) rc = hq_fail(HQ_ERR_INPUT, "resume: %s has %lld values, expected %lld", name, (long long)n, (long long)want[k]);
    if (!rc) memcpy(dst[k], f, (size_t)n * sizeof(float));
    free(f);
    if (rc) return hq_fail_ctx(rc, "resume: reading %s: ", name);
  }
  return HQ_OK;
}


/* Collective: --block-groups and each group's first block and first rank (inspect) */
static int block_groups_attrs(struct run *R) {
  const struct hq_block_groups *bg = &R->bg;
  int64_t *r0 = hq_xmalloc((size_t)(bg->G + 1) * sizeof(int64_t));
  for (int k = 0; k <= bg->G; k++) r0[k] = bg->rank0[k];
  int rc = hq_h5_attr_set_i64(R->h5, "/", "block_groups", bg->G);
  if (!rc) rc = hq_h5_attr_set_i64_array(R->h5, "/", "block_group_first_block", bg->block0, bg->G + 1);
  if (!rc) rc = hq_h5_attr_set_i64_array(R->h5, "/", "block_group_first_rank", r0, bg->G + 1);
  free(r0);
  return rc;
}

/* Collective: the root attributes of a new file, its unquantized tensors and progress record */
static int write_root(struct run *R, const char *settings) {
  const struct hq_quant_opts *o = R->o;
  const struct hq_model_config *c = &R->model.cfg;
  char hash[17];
  snprintf(hash, sizeof hash, "%016llx", (unsigned long long)R->calib_id);
  cJSON *cj = cJSON_CreateObject(); /* cJSON escapes the path */
  cJSON_AddStringToObject(cj, "path", o->calib_path ? o->calib_path : "");
  cJSON_AddNumberToObject(cj, "tokens", (double)R->calib_tokens);
  cJSON_AddStringToObject(cj, "fnv1a64", hash);
  cJSON_AddNumberToObject(cj, "nsamples", (double)o->nsamples);
  cJSON_AddNumberToObject(cj, "seqlen", (double)R->seqlen);
  cJSON_AddNumberToObject(cj, "seed", (double)o->seed);
  char *calib = cJSON_PrintUnformatted(cj);
  cJSON_Delete(cj);
  if (!calib) return hq_comm_agree(R->world, hq_fail(HQ_ERR_NOMEM, "calibration_json"));
  struct hq_h5 *h = R->h5;
  int rc = hq_h5_attr_set_str(h, "/", "settings_json", settings);
  if (!rc) rc = hq_h5_attr_set_str(h, "/", "method", hq_method_name(o->method));
  if (!rc) rc = hq_h5_attr_set_i64(h, "/", "bits", o->g.bits);
  if (!rc) rc = hq_h5_attr_set_i64(h, "/", "group_size", o->g.group_size > 0 ? o->g.group_size : -1);
  if (!rc) rc = hq_h5_attr_set_i64(h, "/", "sym", o->g.sym);
  if (!rc) rc = hq_h5_attr_set_i64(h, "/", "act_order", o->g.act_order);
  if (!rc) rc = hq_h5_attr_set_i64(h, "/", "static_groups", o->g.static_groups);
  if (!rc) rc = hq_h5_attr_set_f64(h, "/", "percdamp", o->g.percdamp);
  if (!rc) rc = hq_h5_attr_set_i64(h, "/", "block_size", o->g.block_size);
  if (!rc) rc = hq_h5_attr_set_i64(h, "/", "nsamples", o->nsamples);
  if (!rc) rc = hq_h5_attr_set_i64(h, "/", "seqlen", R->seqlen);
  if (!rc) rc = hq_h5_attr_set_i64(h, "/", "seed", (int64_t)o->seed);
  if (!rc) rc = hq_h5_attr_set_str(h, "/", "model_config_json", c->json ? c->json : "{}");
  if (!rc) rc = hq_h5_attr_set_str(h, "/", "model_dir", o->model_dir);
  if (!rc) rc = hq_h5_attr_set_str(h, "/", "calibration_json", calib);
  cJSON_free(calib);
  if (!rc) rc = hq_h5_attr_set_str(h, "/", "zero_convention", "gptq_v2");
  if (!rc) rc = hq_h5_attr_set_i64(h, "/", "act_bits", o->act_bits);
  if (!rc) rc = hq_h5_attr_set_str(h, "/", "equalize", hq_equalize_name(o->equalize));
  if (!rc && o->rules && o->rules->n) {
    char *rules = hq_rules_text(o->rules);
    rc = hq_h5_attr_set_str(h, "/", "rules", rules);
    free(rules);
  }
  if (!rc && o->block_groups > 1) rc = block_groups_attrs(R);
  if (!rc) rc = write_unquantized(R);
  if (!rc) rc = hq_h5_progress_init(h, c->n_layers);
  return rc;
}

/* Collective: reopen the file of an interrupted run with the same settings */
static int resume_file(struct run *R, const char *settings) {
  struct hq_h5_state st;
  memset(&st, 0, sizeof st);
  HQ_TRY(hq_h5_open_rw(R->world, R->o->out_path, &R->h5, &st));
  int lrc = HQ_OK;
  if (st.complete) {
    lrc = hq_fail(HQ_ERR_INPUT, "%s is already complete: nothing to resume (use --overwrite to "
                  "redo it)", R->o->out_path);
  } else if (!st.settings_json || strcmp(st.settings_json, settings)) {
    char diff[4096];
    settings_diff(st.settings_json, settings, diff, sizeof diff);
    lrc = hq_fail(HQ_ERR_INPUT, "cannot resume %s: it was written with other settings, another "
                  "model, calibration, backend or hpcq version:%s\nRerun with the same options "
                  "and inputs, or use --overwrite to start again", R->o->out_path, diff);
  }
  const int64_t st_done = st.flags_set;
  hq_h5_state_free(&st);
  HQ_TRY(hq_comm_agree(R->world, lrc));
  if (R->world->rank == 0 && !R->o->quiet)
    fprintf(stderr, "hpcq quantize: resuming %s after %lld of %lld blocks\n", R->o->out_path,
            (long long)st_done, (long long)R->model.cfg.n_layers);
  return HQ_OK;
}

/* Not collective (rank 0): --out must not be any file this run reads */
static int out_not_input(const struct run *R) {
  const struct hq_quant_opts *o = R->o;
  const struct hq_safetensors *st = &R->model.st;
  const int n = st->nfiles + 4;
  const char **in = calloc((size_t)n, sizeof *in), **what = calloc((size_t)n, sizeof *what);
  char cfg[4096], idx[4096];
  snprintf(cfg, sizeof cfg, "%s/config.json", o->model_dir);
  snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", o->model_dir);
  int k = 0;
  in[k] = o->model_dir, what[k++] = "the model";
  in[k] = cfg, what[k++] = "the model's config.json";
  in[k] = idx, what[k++] = "the model's safetensors index";
  in[k] = o->calib_path, what[k++] = "the calibration file";
  for (int i = 0; i < st->nfiles; i++) in[k] = st->files[i].path, what[k++] = "a weights file of the model";
  int rc = hq_out_check_inputs(o->out_path, k, in, what);
  free(in);
  free(what);
  return rc;
}

int hq_pipeline_file_open(struct run *R) {
  const struct hq_quant_opts *o = R->o;
  const struct hq_comm *cm = R->world;
  HQ_TRY(hq_comm_agree(cm, cm->rank == 0 ? out_not_input(R) : HQ_OK));
  HQ_TRY(hq_out_lock_take(cm, o->out_path, &R->lock));
  char *settings = settings_json(R);
  if (!settings) return hq_comm_agree(cm, hq_fail(HQ_ERR_NOMEM, "settings_json"));
  struct stat sb;
  int exists = cm->rank == 0 ? stat(o->out_path, &sb) == 0 : 0; /* rank 0 decides */
  hq_comm_bcast(cm, &exists, sizeof exists, 0);
  int rc;
  if (o->resume && exists) {
    rc = resume_file(R, settings);
  } else if (exists && !o->overwrite) {
    rc = hq_comm_agree(cm, hq_fail(HQ_ERR_INPUT, "%s exists; pass --overwrite to replace it or "
                                   "--resume to continue an interrupted run", o->out_path));
  } else {
    rc = hq_h5_create(cm, o->out_path, o->overwrite, &R->h5);
    if (!rc) rc = write_root(R, settings);
  }
  free(settings);
  return rc;
}

int hq_pipeline_file_close(struct run *R) {
  const int rc = hq_h5_close(R->h5);
  R->h5 = NULL;
  if (R->lock.path) hq_out_lock_release(R->world, &R->lock);
  return rc;
}
