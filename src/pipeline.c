/* hpcq quantize: the distributed sequential pipeline.
 *
 * Per rank: open the model (mmap), sample the calibration windows (same seed everywhere) and
 * keep this rank's share, embed them. Then block after block, in true-sequential order
 * {q,k,v} -> {o} -> {gate,up} -> {down}, one input group at a time (pipeline_group.c):
 * Hessian of the group's input over all ranks' windows (exact), the method on the rows this
 * rank owns, gather, collective write; then forward the windows through the quantized block
 * to produce the next block's input, mark the block done and flush (resumable), print a
 * progress line with an ETA. This file: options, settings, the output file (create / resume),
 * the calibration windows, the block loop, the summary.
 * Collective over comm->comm throughout; every local failure is agreed (hq_comm_agree) before
 * the next collective so that no rank hangs. */
#include "pipeline.h"
#include "pipeline_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "equalize.h"
#include "error.h"
#include "forward.h"
#include "h5io.h"
#include "model.h"
#include "pack.h"
#include "partition.h"
#include "util.h"

static volatile sig_atomic_t hq_stop_requested = 0;
static volatile sig_atomic_t hq_stop_signal = 0;

static void hq_on_signal(int sig) {
  hq_stop_requested = 1;
  hq_stop_signal = sig;
}

void hq_pipeline_install_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = hq_on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
}

void hq_quant_opts_default(struct hq_quant_opts *o) {
  memset(o, 0, sizeof *o);
  o->backend = "cpu";
  o->method = HQ_METHOD_GPTQ;
  o->g = hq_gptq_opts_default();
  o->nsamples = 128;
  o->seqlen = 2048;
  o->seed = 0;
  o->batch = 0;
  o->hqq = hq_hqq_opts_default();
  o->act_bits = 0;
  o->equalize = HQ_EQ_NONE;
  o->smooth_alpha = 0.5f;
  o->scale_from_hessian = 0;
}

int hq_pipeline_need_hessian(const struct hq_quant_opts *o) {
  return o->method == HQ_METHOD_GPTQ || o->scale_from_hessian;
}
static int need_calib(const struct hq_quant_opts *o) {
  return hq_pipeline_need_hessian(o) || (o->equalize & HQ_EQ_SMOOTH);
}

const char *hq_method_name(enum hq_method m) {
  return m == HQ_METHOD_RTN ? "rtn" : m == HQ_METHOD_HQQ ? "hqq" : "gptq";
}

/* FNV-1a 64 of a byte range: identifies the calibration data in the metadata (not crypto). */
static uint64_t fnv1a64(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
  return h;
}

/* The settings that determine the result; a resume must match them exactly. */
static char *settings_json(const struct hq_quant_opts *o, const struct hq_model_config *c,
                           uint64_t calib_hash, int64_t calib_tokens, int64_t seqlen) {
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "method", hq_method_name(o->method));
  cJSON_AddNumberToObject(j, "bits", o->g.bits);
  cJSON_AddNumberToObject(j, "group_size", (double)(o->g.group_size > 0 ? o->g.group_size : -1));
  cJSON_AddBoolToObject(j, "sym", o->g.sym);
  cJSON_AddBoolToObject(j, "mse", o->g.mse);
  if (o->method == HQ_METHOD_GPTQ) {
    cJSON_AddBoolToObject(j, "act_order", o->g.act_order);
    cJSON_AddBoolToObject(j, "static_groups", o->g.static_groups);
    cJSON_AddNumberToObject(j, "percdamp", o->g.percdamp);
    cJSON_AddNumberToObject(j, "block_size", o->g.block_size);
  }
  if (need_calib(o)) {
    cJSON_AddNumberToObject(j, "nsamples", (double)o->nsamples);
    cJSON_AddNumberToObject(j, "seqlen", (double)seqlen);
    cJSON_AddNumberToObject(j, "seed", (double)o->seed);
    char hx[32];
    snprintf(hx, sizeof hx, "%016llx", (unsigned long long)calib_hash);
    cJSON_AddStringToObject(j, "calib_fnv1a64", hx);
    cJSON_AddNumberToObject(j, "calib_tokens", (double)calib_tokens);
  }
  /* the other methods' settings, only when used (so GPTQ/RTN settings stay as they were) */
  if (o->method == HQ_METHOD_HQQ) {
    cJSON_AddNumberToObject(j, "hqq_lp", o->hqq.lp);
    cJSON_AddNumberToObject(j, "hqq_beta", o->hqq.beta);
    cJSON_AddNumberToObject(j, "hqq_kappa", o->hqq.kappa);
    cJSON_AddNumberToObject(j, "hqq_iters", o->hqq.iters);
    cJSON_AddBoolToObject(j, "hqq_scale", o->hqq.opt_scale);
  }
  if (o->act_bits) cJSON_AddNumberToObject(j, "act_bits", o->act_bits);
  if (o->equalize) {
    cJSON_AddStringToObject(j, "equalize", hq_equalize_name(o->equalize));
    if (o->equalize & HQ_EQ_SMOOTH) cJSON_AddNumberToObject(j, "smooth_alpha", o->smooth_alpha);
  }
  if (o->scale_from_hessian) cJSON_AddBoolToObject(j, "scale_from_hessian", 1);
  cJSON_AddStringToObject(j, "zero_convention", "gptq_v2");
  cJSON_AddNumberToObject(j, "hidden_size", (double)c->hidden);
  cJSON_AddNumberToObject(j, "num_hidden_layers", (double)c->n_layers);
  cJSON_AddNumberToObject(j, "intermediate_size", (double)c->intermediate);
  cJSON_AddNumberToObject(j, "vocab_size", (double)c->vocab);
  char *s = cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  return s;
}

const char *const hq_phase_names[PH_COUNT] = {"forward", "hessian", "allreduce", "cholesky",
                                              "gptq",    "stats",   "gather",    "write"};

void hq_pipeline_lin_name(char *buf, size_t n, int64_t b, enum hq_linear l) {
  snprintf(buf, n, "model.layers.%lld.%s", (long long)b, hq_linear_name(l));
}

void hq_pipeline_forward_local(struct run *R, const struct hq_block_dev *dev, hq_capture_fn cap,
                               void *ctx) {
  const struct hq_model_config *c = &R->model.cfg;
  for (int64_t w = 0; w < R->nloc; w += R->batch) {
    int64_t nb = R->nloc - w < R->batch ? R->nloc - w : R->batch;
    hq_forward_block(R->be, c, dev, &R->rope, R->ws, nb, R->seqlen,
                     R->x + w * R->seqlen * c->hidden, cap, ctx);
  }
  R->be->sync();
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

/* Collective: write block b's equalized unquantized tensors (identical on every rank). */
static int write_equalized(struct run *R, int64_t b, const struct hq_block_weights *bw) {
  const struct hq_model_config *c = &R->model.cfg;
  const char *sfx[3] = {"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.v_proj.bias"};
  const float *src[3] = {bw->ln_attn, bw->ln_mlp, bw->bias[HQ_LIN_V]};
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

static int write_unquantized(struct run *R) {
  const struct hq_model_config *c = &R->model.cfg;
  int rc = HQ_OK;
  char name[256];
  const char *fixed[3] = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"};
  int nfixed = c->tie_embeddings ? 2 : 3;
  for (int64_t k = 0; k < nfixed + 2 * c->n_layers + (c->qkv_bias ? 3 * c->n_layers : 0); k++) {
    if (k < nfixed) {
      snprintf(name, sizeof name, "%s", fixed[k]);
    } else if (k < nfixed + 2 * c->n_layers) {
      int64_t j = k - nfixed;
      snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)(j / 2),
               j % 2 ? "post_attention_layernorm.weight" : "input_layernorm.weight");
    } else {
      int64_t j = k - nfixed - 2 * c->n_layers;
      static const char *bn[3] = {"q_proj", "k_proj", "v_proj"};
      snprintf(name, sizeof name, "model.layers.%lld.self_attn.%s.bias", (long long)(j / 3), bn[j % 3]);
    }
    const struct hq_st_tensor *t = hq_st_find(&R->model.st, name);
    int lrc = t ? HQ_OK : hq_fail(HQ_ERR_INPUT, "tensor %s missing from the model", name);
    rc = hq_comm_agree(R->comm, lrc);
    if (rc) return rc;
    if (t->dtype != HQ_DTYPE_F32 && equalized_tensor(R->o, name)) {
      /* rescaled by equalization at its block: stored as float32 (written again then) */
      float *f = malloc((size_t)t->numel * sizeof(float) + 1);
      if (f) hq_st_to_f32(t, f);
      rc = hq_comm_agree(R->comm, f ? HQ_OK : hq_fail(HQ_ERR_NOMEM, "tensor %s", name));
      if (!rc) rc = hq_h5_write_tensor(R->h5, name, HQ_DTYPE_F32, t->ndim, t->shape, f);
      free(f);
      if (rc) return rc;
      continue;
    }
    rc = hq_h5_write_tensor(R->h5, name, t->dtype, t->ndim, t->shape, t->data);
    if (rc) return rc;
  }
  return HQ_OK;
}

static int load_block_from_file(struct run *R, int64_t b, struct hq_block_weights *bw) {
  /* replace the linears of block b by the dequantized weights stored in the file */
  for (int l = 0; l < HQ_LIN_COUNT; l++) {
    char name[256];
    hq_pipeline_lin_name(name, sizeof name, b, (enum hq_linear)l);
    struct hq_packed p;
    int rc = hq_h5_linear_read(R->h5, name, &p);
    if (rc) return hq_fail_ctx(rc, "resume: reading %s: ", name);
    rc = hq_pack_dequantize(&p, bw->lin[l]);
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

static int file_exists(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0;
}

/* rank 0 writes it; phases_max: the largest time of each phase over the ranks (imbalance) */
static void write_summary(struct run *R, double total, size_t rss_max, const double *phase_max) {
  if (!R->o->json_summary || R->comm->rank != 0) return;
  FILE *f = fopen(R->o->json_summary, "w");
  if (!f) {
    fprintf(stderr, "hpcq quantize: warning: cannot write %s\n", R->o->json_summary);
    return;
  }
  fprintf(f, "{\"ranks\": %d, \"method\": \"%s\", \"bits\": %d, \"group_size\": %lld, \"nsamples\": %lld, "
             "\"seqlen\": %lld, \"seconds\": %.6f, \"peak_rss_bytes_max\": %zu, \"phases\": {",
          R->comm->size, hq_method_name(R->o->method), R->o->g.bits, (long long)R->o->g.group_size,
          (long long)R->o->nsamples, (long long)R->seqlen, total, rss_max);
  for (int p = 0; p < PH_COUNT; p++)
    fprintf(f, "%s\"%s\": %.6f", p ? ", " : "", hq_phase_names[p], R->total_phase[p]);
  fprintf(f, "}, \"phases_max\": {");
  for (int p = 0; p < PH_COUNT; p++)
    fprintf(f, "%s\"%s\": %.6f", p ? ", " : "", hq_phase_names[p], phase_max[p]);
  fprintf(f, "}}\n");
  fclose(f);
}

int hq_quantize_run(const struct hq_comm *comm, const struct hq_quant_opts *o) {
  struct run R;
  memset(&R, 0, sizeof R);
  R.comm = comm;
  R.o = o;
  R.g = o->g;
  R.g.hscale = o->scale_from_hessian;
  double t_start = hq_now();
  int rc = HQ_OK;
  struct hq_tokens tok = {0};
  char *settings = NULL;
  float *embed = NULL;
  struct hq_block_weights bw;
  memset(&bw, 0, sizeof bw);
  const int root = comm->rank == 0 && !o->quiet;

  /* ---- validate and open everything; agree before the first collective write ---- */
  R.be = hq_backend_by_name(o->backend);
  rc = R.be ? HQ_OK : HQ_ERR_INPUT;
  if (!rc && o->g.bits != 2 && o->g.bits != 3 && o->g.bits != 4 && o->g.bits != 8)
    rc = hq_fail(HQ_ERR_INPUT, "--bits must be 2, 3, 4 or 8 (got %d)", o->g.bits);
  if (!rc) rc = hq_model_open(o->model_dir, &R.model);
  rc = hq_comm_agree(comm, rc);
  if (rc) goto done;
  const struct hq_model_config *c = &R.model.cfg;
  rc = hq_gptq_opts_check(&o->g, c->hidden);
  R.seqlen = o->seqlen > c->max_pos ? c->max_pos : o->seqlen;
  if (!rc && root && R.seqlen < o->seqlen)
    fprintf(stderr, "hpcq quantize: --seqlen %lld capped to the model's max_position_embeddings %lld\n",
            (long long)o->seqlen, (long long)R.seqlen);
  uint64_t calib_hash = 0;
  if (!rc && o->method == HQ_METHOD_HQQ) rc = hq_hqq_opts_check(&o->hqq);
  if (!rc && o->method == HQ_METHOD_HQQ && o->scale_from_hessian)
    rc = hq_fail(HQ_ERR_INPUT, "--scale-from-hessian works with gptq and rtn, not hqq (HQQ is "
                 "calibration-free)");
  if (!rc && o->act_bits && (o->act_bits < 2 || o->act_bits > 16))
    rc = hq_fail(HQ_ERR_INPUT, "--act-bits must be in 2..16 (8 or 4 usually), got %d", o->act_bits);
  if (!rc && o->act_bits && !hq_pipeline_need_hessian(o))
    rc = hq_fail(HQ_ERR_INPUT, "--act-bits changes quantization only through the Hessians "
                 "(gptq or --scale-from-hessian); with --method %s measure activation "
                 "quantization with hpcq eval --act-bits instead", hq_method_name(o->method));
  if (!rc && (o->equalize & HQ_EQ_SMOOTH) && !(o->smooth_alpha >= 0.0f && o->smooth_alpha <= 1.0f))
    rc = hq_fail(HQ_ERR_INPUT, "--smooth-alpha must be in [0, 1], got %g", (double)o->smooth_alpha);
  if (!rc && need_calib(o)) {
    if (!o->calib_path)
      rc = hq_fail(HQ_ERR_INPUT, "%s needs calibration tokens: --calib FILE (raw int32 token ids "
                   "made with the model's tokenizer)", o->method == HQ_METHOD_GPTQ ? "GPTQ"
                   : o->scale_from_hessian ? "--scale-from-hessian" : "--equalize smooth");
    if (!rc) rc = hq_tokens_load(o->calib_path, c->vocab, &tok);
    if (!rc && tok.n < R.seqlen)
      rc = hq_fail(HQ_ERR_INPUT, "%s has %lld tokens, fewer than one window of --seqlen %lld; use "
                   "more calibration text or a smaller --seqlen", o->calib_path, (long long)tok.n,
                   (long long)R.seqlen);
    if (!rc && o->nsamples < comm->size)
      rc = hq_fail(HQ_ERR_INPUT, "--nsamples %lld is smaller than the %d ranks: every rank needs at "
                   "least one calibration window", (long long)o->nsamples, comm->size);
    if (!rc) calib_hash = fnv1a64(tok.ids, (size_t)tok.n * sizeof(int32_t));
  }
  if (!rc) rc = hq_plan_make(c, comm->size, &R.plan);
  if (!rc) {
    for (int l = 0; l < HQ_LIN_COUNT && !rc; l++) {
      int64_t rows, cols;
      hq_linear_shape(c, (enum hq_linear)l, &rows, &cols);
      int64_t ng = o->g.group_size > 0 ? (cols + o->g.group_size - 1) / o->g.group_size : 1;
      rc = hq_pack_check(o->g.bits, HQ_PACK_GPTQ_V2, cols, rows, ng, 0, rows);
      if (rc) hq_fail_ctx(rc, "%s (%lld x %lld) cannot be stored in the GPTQ layout: ", hq_linear_name((enum hq_linear)l),
                          (long long)rows, (long long)cols);
    }
  }
  rc = hq_comm_agree(comm, rc);
  if (rc) goto done;
  settings = settings_json(o, c, calib_hash, tok.n, R.seqlen);

  /* ---- output file: create, or reopen for --resume ---- */
  int64_t start_block = 0;
  /* rank 0 decides (another rank could otherwise see the file rank 0 is creating) */
  int exists = comm->rank == 0 ? file_exists(o->out_path) : 0;
  hq_comm_bcast(comm, &exists, sizeof exists, 0);
  if (o->resume && exists) {
    struct hq_h5_state st;
    memset(&st, 0, sizeof st);
    rc = hq_h5_open_rw(comm, o->out_path, &R.h5, &st);
    if (rc) goto done;
    int lrc = HQ_OK;
    if (st.complete)
      lrc = hq_fail(HQ_ERR_INPUT, "%s is already complete: nothing to resume (use --overwrite to redo it)", o->out_path);
    else if (!st.settings_json || strcmp(st.settings_json, settings))
      lrc = hq_fail(HQ_ERR_INPUT, "cannot resume %s: it was written with other settings or another model/calibration "
                    "file.\n  file: %s\n  now:  %s\nRerun with the same options, or use --overwrite to start again",
                    o->out_path, st.settings_json ? st.settings_json : "(none)", settings);
    start_block = st.blocks_done;
    hq_h5_state_free(&st);
    rc = hq_comm_agree(comm, lrc);
    if (rc) goto done;
    if (root) fprintf(stderr, "hpcq quantize: resuming %s after %lld of %lld blocks\n", o->out_path,
                      (long long)start_block, (long long)c->n_layers);
  } else {
    if (exists && !o->overwrite) {
      rc = hq_comm_agree(comm, hq_fail(HQ_ERR_INPUT, "%s exists; pass --overwrite to replace it or "
                                       "--resume to continue an interrupted run", o->out_path));
      goto done;
    }
    rc = hq_h5_create(comm, o->out_path, o->overwrite, &R.h5);
    if (rc) goto done;
    char hash[17];
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)calib_hash);
    cJSON *cj = cJSON_CreateObject(); /* cJSON escapes the path */
    cJSON_AddStringToObject(cj, "path", o->calib_path ? o->calib_path : "");
    cJSON_AddNumberToObject(cj, "tokens", (double)tok.n);
    cJSON_AddStringToObject(cj, "fnv1a64", hash);
    cJSON_AddNumberToObject(cj, "nsamples", (double)o->nsamples);
    cJSON_AddNumberToObject(cj, "seqlen", (double)R.seqlen);
    cJSON_AddNumberToObject(cj, "seed", (double)o->seed);
    char *calib = cJSON_PrintUnformatted(cj);
    cJSON_Delete(cj);
    if (!calib) {
      rc = hq_fail(HQ_ERR_NOMEM, "calibration_json");
      goto done;
    }
    rc = hq_h5_attr_set_str(R.h5, "/", "settings_json", settings);
    if (!rc) rc = hq_h5_attr_set_str(R.h5, "/", "method", hq_method_name(o->method));
    if (!rc) rc = hq_h5_attr_set_i64(R.h5, "/", "bits", o->g.bits);
    if (!rc) rc = hq_h5_attr_set_i64(R.h5, "/", "group_size", o->g.group_size > 0 ? o->g.group_size : -1);
    if (!rc) rc = hq_h5_attr_set_i64(R.h5, "/", "sym", o->g.sym);
    if (!rc) rc = hq_h5_attr_set_i64(R.h5, "/", "act_order", o->g.act_order);
    if (!rc) rc = hq_h5_attr_set_i64(R.h5, "/", "static_groups", o->g.static_groups);
    if (!rc) rc = hq_h5_attr_set_f64(R.h5, "/", "percdamp", o->g.percdamp);
    if (!rc) rc = hq_h5_attr_set_i64(R.h5, "/", "block_size", o->g.block_size);
    if (!rc) rc = hq_h5_attr_set_i64(R.h5, "/", "nsamples", o->nsamples);
    if (!rc) rc = hq_h5_attr_set_i64(R.h5, "/", "seqlen", R.seqlen);
    if (!rc) rc = hq_h5_attr_set_i64(R.h5, "/", "seed", (int64_t)o->seed);
    if (!rc) rc = hq_h5_attr_set_str(R.h5, "/", "model_config_json", c->json ? c->json : "{}");
    if (!rc) rc = hq_h5_attr_set_str(R.h5, "/", "model_dir", o->model_dir);
    if (!rc) rc = hq_h5_attr_set_str(R.h5, "/", "calibration_json", calib);
    cJSON_free(calib);
    if (!rc) rc = hq_h5_attr_set_str(R.h5, "/", "zero_convention", "gptq_v2");
    if (!rc) rc = hq_h5_attr_set_i64(R.h5, "/", "act_bits", o->act_bits);
    if (!rc) rc = hq_h5_attr_set_str(R.h5, "/", "equalize", hq_equalize_name(o->equalize));
    if (!rc) rc = write_unquantized(&R);
    if (!rc) rc = hq_h5_progress_init(R.h5, c->n_layers);
    if (rc) goto done;
  }

  /* ---- calibration windows: same sample on every rank, each keeps its share ---- */
  if (need_calib(o)) {
    int32_t *all = malloc((size_t)o->nsamples * (size_t)R.seqlen * sizeof(int32_t));
    rc = all ? hq_tokens_sample(&tok, o->nsamples, R.seqlen, o->seed, all) : hq_fail(HQ_ERR_NOMEM, "calibration windows");
    struct hq_row_range wr = hq_plan_windows(o->nsamples, comm->size, comm->rank);
    R.nloc = wr.end - wr.begin;
    R.batch = o->batch > 0 ? o->batch : (R.nloc < 8 ? (R.nloc > 0 ? R.nloc : 1) : 8);
    if (!rc) {
      R.ids = malloc((size_t)(R.nloc ? R.nloc : 1) * (size_t)R.seqlen * sizeof(int32_t));
      if (!R.ids) rc = hq_fail(HQ_ERR_NOMEM, "cannot allocate %lld calibration windows", (long long)R.nloc);
      else memcpy(R.ids, all + wr.begin * R.seqlen, (size_t)R.nloc * (size_t)R.seqlen * sizeof(int32_t));
    }
    free(all);
    int64_t ntok = R.nloc * R.seqlen;
    if (!rc) {
      R.x = R.be->alloc((size_t)(ntok ? ntok : 1) * (size_t)c->hidden * sizeof(float));
      if (!R.x) rc = hq_fail(HQ_ERR_NOMEM, "cannot allocate activations of %lld tokens x %lld; use more ranks or fewer --nsamples",
                             (long long)ntok, (long long)c->hidden);
    }
    int64_t nemb = 0;
    if (!rc) rc = hq_model_load_f32(&R.model, "model.embed_tokens.weight", &embed, &nemb);
    if (!rc) {
      hq_forward_embed(R.be, c, embed, R.ids, ntok, R.x);
      free(embed);
      embed = NULL;
      rc = hq_rope_table_init(&R.rope, R.be, c, R.seqlen);
    }
    if (!rc) {
      R.ws = hq_fwd_ws_new(R.be, c, R.batch * R.seqlen);
      if (!R.ws) rc = hq_fail(HQ_ERR_NOMEM, "cannot allocate the forward workspace; try --batch 1");
    }
    if (!rc) rc = hq_fwd_ws_set_act_bits(R.ws, o->act_bits);
    rc = hq_comm_agree(comm, rc);
    if (rc) goto done;
  }

  if (root)
    fprintf(stderr, "hpcq quantize: %s %d-bit%s%s, %lld blocks, %d rank%s, %lld x %lld calibration tokens\n",
            hq_method_name(o->method), o->g.bits, o->g.group_size > 0 ? " grouped" : " per-channel",
            o->g.act_order ? " act-order" : "", (long long)c->n_layers, comm->size, comm->size > 1 ? "s" : "",
            (long long)(need_calib(o) ? o->nsamples : 0), (long long)R.seqlen);

  /* ---- the blocks ---- */
  double t_blocks = hq_now();
  for (int64_t b = 0; b < c->n_layers; b++) {
    /* a finished block is replayed only to feed the next block's calibration inputs */
    if (b < start_block && !need_calib(o)) continue;
    memset(R.phase, 0, sizeof R.phase);
    double tb = hq_now();
    rc = hq_model_load_block(&R.model, b, &bw);
    if (!rc && b < start_block) rc = load_block_from_file(&R, b, &bw);
    rc = hq_comm_agree(comm, rc);
    if (rc) goto done;
    if (b >= start_block) {
      if (o->equalize & HQ_EQ_CLE) hq_equalize_cle(c, &bw); /* data-free, on the FP weights */
      for (int g = 0; g < HQ_GROUP_COUNT; g++) {
        rc = hq_pipeline_group(&R, b, (enum hq_group)g, &bw);
        if (rc) goto done;
      }
      if (o->equalize) {
        rc = write_equalized(&R, b, &bw);
        if (rc) goto done;
      }
    }
    if (need_calib(o)) {
      struct hq_block_dev dev;
      const int urc = hq_block_dev_upload(R.be, c, &bw, &dev);
      rc = hq_comm_agree(comm, urc);
      if (rc) {
        if (!urc) hq_block_dev_free(R.be, &dev); /* another rank failed */
        goto done;
      }
      double t = hq_now();
      hq_pipeline_forward_local(&R, &dev, NULL, NULL);
      R.phase[PH_FORWARD] += hq_now() - t;
      hq_block_dev_free(R.be, &dev);
    }
    hq_block_weights_free(&bw);
    if (b >= start_block) {
      double t = hq_now();
      rc = hq_h5_block_done(R.h5, b);
      R.phase[PH_WRITE] += hq_now() - t;
      if (rc) goto done;
    }
    for (int p = 0; p < PH_COUNT; p++) R.total_phase[p] += R.phase[p];
    if (root) {
      const int64_t skipped = need_calib(o) ? 0 : start_block; /* not replayed: no time */
      double per = (hq_now() - t_blocks) / (double)(b + 1 - skipped);
      char eta[32], els[32];
      hq_format_duration(per * (double)(c->n_layers - b - 1), eta, sizeof eta);
      hq_format_duration(hq_now() - t_start, els, sizeof els);
      fprintf(stderr, "block %lld/%lld %s %5.2f s | fwd %.2f hess %.2f allred %.3f chol %.2f gptq %.2f stats %.2f gather %.3f write %.3f | elapsed %s, ETA %s\n",
              (long long)(b + 1), (long long)c->n_layers, b < start_block ? "(replayed)" : "", hq_now() - tb,
              R.phase[PH_FORWARD], R.phase[PH_HESSIAN], R.phase[PH_ALLREDUCE], R.phase[PH_CHOL], R.phase[PH_GPTQ],
              R.phase[PH_STATS], R.phase[PH_GATHER], R.phase[PH_WRITE], els, eta);
    }
    /* a stop request (SIGTERM from Slurm, Ctrl-C) is honoured at a block boundary, agreed */
    double stop = hq_stop_requested ? 1.0 : 0.0;
    hq_comm_allreduce_max_f64(comm, &stop, 1);
    if (stop > 0 && b + 1 < c->n_layers) {
      rc = hq_fail(HQ_ERR_INTERRUPTED, "stopped by a signal after block %lld of %lld; %s is resumable: "
                   "rerun the same command with --resume", (long long)(b + 1), (long long)c->n_layers, o->out_path);
      goto done;
    }
  }
  {
    double total = hq_now() - t_start;
    rc = hq_h5_attr_set_f64(R.h5, "/", "seconds_total", total);
    if (!rc) rc = hq_h5_attr_set_f64_array(R.h5, "/", "seconds_per_phase", R.total_phase, PH_COUNT);
    double rss = (double)hq_peak_rss_bytes();
    hq_comm_allreduce_max_f64(comm, &rss, 1);
    double phase_max[PH_COUNT];
    memcpy(phase_max, R.total_phase, sizeof phase_max);
    hq_comm_allreduce_max_f64(comm, phase_max, PH_COUNT);
    if (!rc) rc = hq_h5_attr_set_f64(R.h5, "/", "peak_rss_bytes_max", rss);
    if (!rc) rc = hq_h5_complete(R.h5);
    if (!rc) {
      write_summary(&R, total, (size_t)rss, phase_max);
      if (root) {
        char els[32];
        hq_format_duration(total, els, sizeof els);
        fprintf(stderr, "hpcq quantize: wrote %s in %s (peak RSS per rank %.1f MB)\n", o->out_path, els, rss / 1e6);
      }
    }
  }

done:
  {
    int crc = hq_h5_close(R.h5);
    if (!rc) rc = crc;
  }
  hq_block_weights_free(&bw);
  free(embed);
  free(settings);
  free(R.ids);
  if (R.x) R.be->free(R.x);
  if (R.ws) hq_fwd_ws_free(R.ws);
  if (R.rope.cos_t) hq_rope_table_free(&R.rope, R.be);
  hq_plan_free(&R.plan);
  hq_tokens_free(&tok);
  if (R.model.dir) hq_model_close(&R.model);
  return rc;
}
