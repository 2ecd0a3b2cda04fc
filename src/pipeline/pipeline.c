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
  o->keep_act_mib = 4096;
  o->hqq = hq_hqq_opts_default();
  o->act_bits = 0;
  o->equalize = HQ_EQ_NONE;
  o->smooth_alpha = 0.5f;
  o->scale_from_hessian = 0;
  o->block_groups = 1;
  o->moe_min_tokens = -1;
  o->moe_fallback = HQ_MOE_FALLBACK_BLOCK;
}

const char *hq_moe_fallback_name(int f) {
  return f == HQ_MOE_FALLBACK_BLOCK ? "block" : f == HQ_MOE_FALLBACK_RTN ? "rtn" : "none";
}

int64_t hq_pipeline_ws_floats_per_token(const struct hq_model_config *c) {
  return 2 * (c->hidden + c->intermediate + (c->n_heads + c->n_kv_heads) * c->head_dim);
}

int64_t hq_pipeline_default_batch(const struct hq_model_config *c, int64_t nloc, int64_t seqlen) {
  const int64_t win = 4 * seqlen * hq_pipeline_ws_floats_per_token(c); /* bytes per window */
  int64_t b = ((int64_t)1 << 30) / (win > 0 ? win : 1);
  if (b > 8) b = 8;
  if (b > nloc) b = nloc;
  return b > 0 ? b : 1;
}

int hq_pipeline_need_hessian(const struct hq_quant_opts *o) {
  return o->method == HQ_METHOD_GPTQ || o->scale_from_hessian;
}
int hq_pipeline_need_calib(const struct hq_quant_opts *o) {
  return hq_pipeline_need_hessian(o) || (o->equalize & HQ_EQ_SMOOTH);
}

const char *hq_method_name(enum hq_method m) {
  return m == HQ_METHOD_RTN ? "rtn" : m == HQ_METHOD_HQQ ? "hqq" : "gptq";
}

struct hq_lin_q hq_quant_lin_q(const struct hq_quant_opts *o, const char *name) {
  return hq_rules_resolve(o->rules, name, o->g.bits, o->g.group_size);
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

/* the carry of the nb windows from window w */
static struct hq_fwd_carry carry_at(const struct run *R, int64_t w) {
  const struct hq_model_config *c = &R->model.cfg;
  const int64_t t0 = w * R->seqlen, qd = c->n_heads * c->head_dim, I = c->intermediate;
  return (struct hq_fwd_carry){R->x + t0 * c->hidden, R->carry_mid + t0 * qd,
                               R->carry_h + t0 * c->hidden, R->carry_mid + t0 * I};
}

void hq_pipeline_forward_group(struct run *R, const struct hq_block_dev *dev, enum hq_group g,
                               hq_capture_fn cap, void *ctx) {
  if (!R->carry_h || R->carry_stage < (int)g) {
    hq_pipeline_forward_local(R, dev, cap, ctx);
    return;
  }
  for (int64_t w = 0; w < R->nloc; w += R->batch) {
    const int64_t nb = R->nloc - w < R->batch ? R->nloc - w : R->batch;
    const struct hq_fwd_carry cr = carry_at(R, w);
    hq_forward_group_input(R->be, &R->model.cfg, dev, &R->rope, R->ws, nb, R->seqlen, g, &cr, cap,
                           ctx);
  }
  R->be->sync();
  R->carry_stage = (int)g + 1;
}

int hq_pipeline_carried_input(struct run *R, enum hq_group g, hq_capture_fn cap, void *ctx) {
  if (!R->carry_h || R->carry_stage != (int)g + 1 || (g != HQ_GROUP_O && g != HQ_GROUP_DOWN)) return 0;
  const struct hq_model_config *c = &R->model.cfg;
  const int64_t cols = g == HQ_GROUP_O ? c->n_heads * c->head_dim : c->intermediate;
  for (int64_t w = 0; w < R->nloc; w += R->batch) {
    const int64_t nb = R->nloc - w < R->batch ? R->nloc - w : R->batch;
    const struct hq_fwd_carry cr = carry_at(R, w);
    cap(ctx, g, g == HQ_GROUP_O ? cr.att : cr.act, nb * R->seqlen, cols);
  }
  return 1;
}

/* Not collective: the block output from the carry after DOWN, or the whole block forward */
static void forward_output(struct run *R, const struct hq_block_dev *dev) {
  if (R->carry_stage == HQ_CARRY_OUTPUT) return;
  if (R->carry_stage != HQ_GROUP_COUNT) {
    hq_pipeline_forward_local(R, dev, NULL, NULL);
    return;
  }
  for (int64_t w = 0; w < R->nloc; w += R->batch) {
    const int64_t nb = R->nloc - w < R->batch ? R->nloc - w : R->batch;
    const struct hq_fwd_carry cr = carry_at(R, w);
    hq_forward_group_output(R->be, &R->model.cfg, dev, &R->rope, R->ws, nb, R->seqlen, &cr);
  }
  R->be->sync();
}

/* rank 0 writes it; phases_max: the largest time of each phase over the ranks (imbalance);
 * idle[G]: each block group's longest wait for its full-precision inputs */
static void write_summary(struct run *R, double total, size_t rss_max, const double *phase_max,
                          const double *idle) {
  if (!R->o->json_summary || R->world->rank != 0) return;
  FILE *f = fopen(R->o->json_summary, "w");
  if (!f) {
    fprintf(stderr, "hpcq quantize: warning: cannot write %s\n", R->o->json_summary);
    return;
  }
  fprintf(f, "{\"ranks\": %d, \"nodes\": %d, \"method\": \"%s\", \"bits\": %d, \"group_size\": %lld, "
             "\"nsamples\": %lld, \"seqlen\": %lld, \"seconds\": %.6f, \"peak_rss_bytes_max\": %zu, "
             "\"node_share\": %s, \"shared_linears\": %lld, \"keep_activations\": %s, \"block_groups\": %d, "
             "\"fp_chain_seconds\": %.6f, \"fp_chain_idle_seconds\": [",
          R->world->size, R->world->nodes, hq_method_name(R->o->method), R->o->g.bits,
          (long long)R->o->g.group_size, (long long)R->o->nsamples, (long long)R->seqlen, total, rss_max,
          R->node_share ? "true" : "false", (long long)R->lins_shared_n,
          R->carry_h ? "true" : "false", R->bg.G, R->chain_s);
  for (int k = 0; k < R->bg.G; k++) fprintf(f, "%s%.6f", k ? ", " : "", idle[k]);
  fprintf(f, "], \"phases\": {");
  for (int p = 0; p < PH_COUNT; p++)
    fprintf(f, "%s\"%s\": %.6f", p ? ", " : "", hq_phase_names[p], R->total_phase[p]);
  fprintf(f, "}, \"phases_max\": {");
  for (int p = 0; p < PH_COUNT; p++)
    fprintf(f, "%s\"%s\": %.6f", p ? ", " : "", hq_phase_names[p], phase_max[p]);
  fprintf(f, "}}\n");
  fclose(f);
}

/* Not collective: the options that do not depend on the inputs */
static int check_options(const struct run *R) {
  const struct hq_quant_opts *o = R->o;
  if (o->g.bits != 2 && o->g.bits != 3 && o->g.bits != 4 && o->g.bits != 8)
    return hq_fail(HQ_ERR_INPUT, "--bits must be 2, 3, 4 or 8 (got %d)", o->g.bits);
  if (o->method == HQ_METHOD_HQQ) HQ_TRY(hq_hqq_opts_check(&o->hqq));
  if (o->method == HQ_METHOD_HQQ && o->scale_from_hessian)
    return hq_fail(HQ_ERR_INPUT, "--scale-from-hessian works with gptq and rtn, not hqq (HQQ is "
                   "calibration-free)");
  if (o->act_bits && (o->act_bits < 2 || o->act_bits > 16))
    return hq_fail(HQ_ERR_INPUT, "--act-bits must be in 2..16 (8 or 4 usually), got %d", o->act_bits);
  if (o->act_bits && !hq_pipeline_need_hessian(o))
    return hq_fail(HQ_ERR_INPUT, "--act-bits changes quantization only through the Hessians "
                   "(gptq or --scale-from-hessian); with --method %s measure activation "
                   "quantization with hpcq eval --act-bits instead", hq_method_name(o->method));
  if ((o->equalize & HQ_EQ_SMOOTH) && !(o->smooth_alpha >= 0.0f && o->smooth_alpha <= 1.0f))
    return hq_fail(HQ_ERR_INPUT, "--smooth-alpha must be in [0, 1], got %g", (double)o->smooth_alpha);
  if (hq_pipeline_need_calib(o) && !o->calib_path)
    return hq_fail(HQ_ERR_INPUT, "%s needs calibration tokens: --calib FILE (raw int32 token ids "
                   "made with the model's tokenizer, e.g. by tools/hpcq_tokenize.py --model DIR --out "
                   "FILE.i32 TEXT...)", o->method == HQ_METHOD_GPTQ ? "GPTQ"
                   : o->scale_from_hessian ? "--scale-from-hessian" : "--equalize smooth");
  if (o->block_groups < 1)
    return hq_fail(HQ_ERR_INPUT, "--block-groups must be 1 or more (got %d)", o->block_groups);
  const int per = (R->comm->size + o->block_groups - 1) / o->block_groups; /* largest group */
  if (hq_pipeline_need_calib(o) && o->nsamples < per)
    return hq_fail(HQ_ERR_INPUT, "--nsamples %lld is smaller than the %d ranks%s: every rank needs "
                   "at least one calibration window", (long long)o->nsamples, per,
                   o->block_groups > 1 ? " of a block group" : "");
  return HQ_OK;
}

/* Not collective: the calibration tokens (one window at least) and their fingerprint */
static int load_calibration(struct run *R, struct hq_tokens *tok) {
  const struct hq_quant_opts *o = R->o;
  HQ_TRY(hq_tokens_load(o->calib_path, R->model.cfg.vocab, tok));
  if (tok->n < R->seqlen)
    return hq_fail(HQ_ERR_INPUT, "%s has %lld tokens, fewer than one window of --seqlen %lld; use "
                   "more calibration text or a smaller --seqlen", o->calib_path, (long long)tok->n,
                   (long long)R->seqlen);
  R->calib_id = hq_fnv1a64(HQ_FNV_INIT, tok->ids, (size_t)tok->n * sizeof(int32_t));
  R->calib_tokens = tok->n;
  return HQ_OK;
}

/* Not collective: every linear of the model can be stored at these settings; the work plan */
static int plan_work(struct run *R) {
  const struct hq_model_config *c = &R->model.cfg;
  const struct hq_gptq_opts *g = &R->o->g;
  const int rules = R->o->rules && R->o->rules->n; /* then hq_rules_check_model checks each */
  for (int l = 0; l < HQ_LIN_COUNT && !rules; l++) {
    int64_t rows, cols;
    hq_linear_shape(c, (enum hq_linear)l, &rows, &cols);
    const int64_t ng = g->group_size > 0 ? (cols + g->group_size - 1) / g->group_size : 1;
    const int rc = hq_pack_check(g->bits, HQ_PACK_GPTQ_V2, cols, rows, ng, 0, rows);
    if (rc) return hq_fail_ctx(rc, "%s (%lld x %lld) cannot be stored in the GPTQ layout: ",
                               hq_linear_name((enum hq_linear)l), (long long)rows, (long long)cols);
  }
  if (R->o->rules && R->o->rules->n && c->n_experts)
    return hq_fail(HQ_ERR_UNSUPPORTED, "--rule / --rules are not supported for mixtures of "
                   "experts yet; leave them out");
  HQ_TRY(hq_rules_check_model(R->o->rules, c, g->bits, g->group_size));
  return hq_plan_make(c, R->comm->size, &R->plan);
}

/* Collective: node sharing where it helps (some node with several ranks, host backend), the
 * same decision on every rank (a node of one rank then shares with itself: the nodes' sums
 * are added by the leaders); HQ_NODE_SHARE=0 turns it off (one copy per rank, as before). */
static int node_share_wanted(const struct run *R) {
  const char *e = getenv("HQ_NODE_SHARE");
  double v[2] = {(e && !strcmp(e, "0")) || R->be->on_device ? 1.0 : 0.0, (double)R->comm->local_size};
  hq_comm_allreduce_max_f64(R->comm, v, 2);
  return v[0] == 0.0 && v[1] >= 2.0;
}

/* Collective: the model, the options against it, the calibration tokens, the work plan */
static int open_inputs(struct run *R, struct hq_tokens *tok) {
  const struct hq_quant_opts *o = R->o;
  R->be = hq_backend_by_name(o->backend);
  int rc = R->be ? check_options(R) : HQ_ERR_INPUT;
  if (!rc) rc = hq_model_open(o->model_dir, &R->model);
  if (!rc && R->model.gptq_format)
    rc = hq_fail(HQ_ERR_INPUT, "model %s is already a GPTQ checkpoint (its config.json has a "
                 "quantization_config); quantize the full-precision model it came from, or "
                 "evaluate this one with hpcq eval", o->model_dir);
  HQ_TRY(hq_comm_agree(R->comm, rc));
  const struct hq_model_config *c = &R->model.cfg;
  rc = hq_gptq_opts_check(&o->g, c->hidden);
  R->seqlen = o->seqlen > c->max_pos ? c->max_pos : o->seqlen;
  if (!rc && R->world->rank == 0 && !o->quiet && R->seqlen < o->seqlen)
    fprintf(stderr, "hpcq quantize: --seqlen %lld capped to the model's max_position_embeddings %lld\n",
            (long long)o->seqlen, (long long)R->seqlen);
  if (!rc && hq_pipeline_need_calib(o)) rc = load_calibration(R, tok);
  if (!rc) R->model_id = hq_model_fingerprint(&R->model, o->model_dir);
  return hq_comm_agree(R->comm, rc);
}

/* Collective: the block groups (R->comm becomes this rank's group), the work plan for the
 * group's size, node sharing inside the group; the step loop's bounds. */
static int open_groups(struct run *R) {
  int rc = hq_block_groups_make(&R->model.cfg, R->world->size, R->o->block_groups, &R->bg);
  HQ_TRY(hq_comm_agree(R->world, rc));
  R->group = hq_block_group_of(&R->bg, R->world->rank);
  R->b0 = R->bg.block0[R->group];
  R->b1 = R->bg.block0[R->group + 1];
  for (int k = 0; k < R->bg.G; k++)
    if (R->bg.block0[k + 1] - R->bg.block0[k] > R->nsteps) R->nsteps = R->bg.block0[k + 1] - R->bg.block0[k];
  R->step_blocks = hq_xmalloc((size_t)R->bg.G * sizeof(int64_t));
  if (R->bg.G > 1) {
    hq_comm_split(R->world, R->group, &R->gcomm);
    R->comm = &R->gcomm;
  }
  HQ_TRY(hq_comm_agree(R->world, plan_work(R)));
  R->node_share = node_share_wanted(R);
  return HQ_OK;
}

/* Collective: every rank read the same model and calibration as rank 0 (a stale node-local
 * copy must not mix into the result). hq_comm_agree prefixes the failing rank. */
/* FNV-1a 64 of the rules' canonical text (0 without rules) */
static uint64_t rules_id(const struct hq_quant_opts *o) {
  char *t = o->rules && o->rules->n ? hq_rules_text(o->rules) : NULL;
  const uint64_t h = t ? hq_fnv1a64(HQ_FNV_INIT, t, strlen(t)) : 0;
  free(t);
  return h;
}

static int inputs_agree(struct run *R) {
  const uint64_t rid = rules_id(R->o);
  uint64_t root[3] = {R->model_id, R->calib_id, rid};
  hq_comm_bcast(R->world, root, sizeof root, 0);
  int rc = HQ_OK;
  if (root[2] != rid) /* --rules FILE is read by every rank */
    rc = hq_fail(HQ_ERR_INPUT, "host %s has other per-module rules than rank 0: a "
                 "node-local --rules file that differs? Put it on a file system all ranks "
                 "share, or make every copy identical", R->world->host);
  else if (root[0] != R->model_id || root[1] != R->calib_id)
    rc = hq_fail(HQ_ERR_INPUT, "host %s reads another %s than rank 0 (fingerprint %016llx, "
                 "rank 0: %016llx): a node-local copy that differs? Put the inputs on a file system "
                 "all ranks share, or make every copy identical", R->world->host,
                 root[0] != R->model_id ? "model" : "calibration file",
                 (unsigned long long)(root[0] != R->model_id ? R->model_id : R->calib_id),
                 (unsigned long long)(root[0] != R->model_id ? root[0] : root[1]));
  return hq_comm_agree(R->world, rc);
}

/* The activations kept between a block's groups when they fit o->keep_act_mib (and memory);
 * else each group's input is recomputed from the block input (same results), said once. */
static void carry_alloc(struct run *R) {
  const struct hq_model_config *c = &R->model.cfg;
  const int64_t ntok = R->nloc * R->seqlen, qd = c->n_heads * c->head_dim;
  const int64_t mid = qd > c->intermediate ? qd : c->intermediate;
  const double mib = (double)(ntok * (c->hidden + mid)) * 4.0 / 1048576.0;
  const char *why = NULL;
  int say = R->world->rank == 0; /* over budget: the same on every rank */
  if (ntok == 0) return;
  if (mib > (double)R->o->keep_act_mib) why = "over --keep-activations-mib";
  else if (!(R->carry_h = R->be->alloc((size_t)(ntok * c->hidden) * sizeof(float))) ||
           !(R->carry_mid = R->be->alloc((size_t)(ntok * mid) * sizeof(float)))) {
    if (R->carry_h) R->be->free(R->carry_h);
    R->carry_h = NULL;
    why = "out of memory";
    say = 1;
  }
  if (why && say && !R->o->quiet && R->o->keep_act_mib > 0)
    fprintf(stderr, "hpcq quantize: note (rank %d): the activations between a block's groups "
            "(%.0f MiB) are not kept (%s), so each group's input is recomputed from the block "
            "input (same results, more forward time)\n", R->world->rank, mib, why);
}

/* Collective: this rank's share of its block group's calibration windows (same sample on
 * every rank), embedded in the first group (the others receive their inputs from the group
 * before: hq_pipeline_fp_chain); the rope table and the forward workspace. */
static int setup_calibration(struct run *R, const struct hq_tokens *tok) {
  const struct hq_quant_opts *o = R->o;
  const struct hq_model_config *c = &R->model.cfg;
  int32_t *all = malloc((size_t)o->nsamples * (size_t)R->seqlen * sizeof(int32_t));
  int rc = all ? hq_tokens_sample(tok, o->nsamples, R->seqlen, o->seed, all)
               : hq_fail(HQ_ERR_NOMEM, "calibration windows");
  const struct hq_row_range wr = hq_plan_windows(o->nsamples, R->comm->size, R->comm->rank);
  R->nloc = wr.end - wr.begin;
  R->batch = o->batch > 0 ? o->batch : hq_pipeline_default_batch(c, R->nloc, R->seqlen);
  const int64_t ntok = R->nloc * R->seqlen;
  if (!rc && !(R->ids = malloc((size_t)(ntok ? ntok : 1) * sizeof(int32_t))))
    rc = hq_fail(HQ_ERR_NOMEM, "cannot allocate %lld calibration windows", (long long)R->nloc);
  if (!rc) memcpy(R->ids, all + wr.begin * R->seqlen, (size_t)ntok * sizeof(int32_t));
  free(all);
  if (!rc && !(R->x = R->be->alloc((size_t)(ntok ? ntok : 1) * (size_t)c->hidden * sizeof(float))))
    rc = hq_fail(HQ_ERR_NOMEM, "cannot allocate activations of %lld tokens x %lld; use more ranks "
                 "or fewer --nsamples", (long long)ntok, (long long)c->hidden);
  if (!rc && R->group == 0) rc = hq_forward_embed_rows(R->be, &R->model, R->ids, ntok, R->x);
  if (!rc) rc = hq_rope_table_init(&R->rope, R->be, c, R->seqlen);
  if (!rc && !(R->ws = hq_fwd_ws_new(R->be, c, R->batch * R->seqlen)))
    rc = hq_fail(HQ_ERR_NOMEM, "cannot allocate the forward workspace; try --batch 1");
  if (!rc) rc = hq_fwd_ws_set_act_bits(R->ws, o->act_bits);
  if (!rc && hq_pipeline_need_hessian(o)) carry_alloc(R);
  return hq_comm_agree(R->world, rc);
}

/* Collective: the windows through block b (its quantized weights) to the next block's input */
static int forward_block(struct run *R, const struct hq_block_weights *bw) {
  struct hq_block_dev dev;
  const int urc = hq_block_dev_borrow(R->be, &R->model.cfg, bw, &dev);
  const int rc = hq_comm_agree(R->comm, urc);
  if (rc) {
    if (!urc) hq_block_dev_free(R->be, &dev); /* another rank failed */
    return rc;
  }
  const double t = hq_now();
  forward_output(R, &dev);
  R->carry_stage = 0;
  R->phase[PH_FORWARD] += hq_now() - t;
  hq_block_dev_free(R->be, &dev);
  return HQ_OK;
}

/* Share of a block's GPTQ-side work done after group g: by rows x cols² of its linears */
static double block_fraction(const struct hq_model_config *c, enum hq_group g) {
  double w[HQ_GROUP_COUNT] = {0}, done = 0, all = 0;
  for (int l = 0; l < HQ_LIN_COUNT; l++) {
    int64_t rows, cols;
    hq_linear_shape(c, (enum hq_linear)l, &rows, &cols);
    w[hq_linear_group((enum hq_linear)l)] += (double)rows * (double)cols * (double)cols;
  }
  for (int k = 0; k < HQ_GROUP_COUNT; k++) {
    all += w[k];
    if (k <= (int)g) done += w[k];
  }
  return done / all;
}

/* Rank 0: a line per input group while blocks take longer than 30 s (the first block's
 * groups from the moment it passes 30 s), with the time so far and an updated ETA */
static void group_line(struct run *R, int64_t b, enum hq_group g) {
  if (R->world->rank != 0 || R->o->quiet) return;
  static const char *const gn[HQ_GROUP_COUNT] = {"qkv", "o", "gate-up", "down"};
  const double now = hq_now(), in_block = now - R->t_block;
  if (in_block < 30.0 && R->last_block_s < 30.0) return;
  const int64_t L = R->model.cfg.n_layers, s = b - R->b0;
  const double done = (double)(s - R->first_step) + block_fraction(&R->model.cfg, g);
  char eta[32], els[32];
  hq_format_duration((now - R->t_blocks) / done * ((double)(R->nsteps - R->first_step) - done), eta, sizeof eta);
  hq_format_duration(in_block, els, sizeof els);
  const double *p = R->phase;
  fprintf(stderr, "block %lld/%lld %-7s done, %s into the block | hess %.1f allred %.1f chol %.1f "
          "gptq %.1f stats %.1f | ETA %s\n", (long long)(b + 1), (long long)L, gn[g], els,
          p[PH_HESSIAN], p[PH_ALLREDUCE], p[PH_CHOL], p[PH_GPTQ], p[PH_STATS], eta);
}

/* Collective over R->world; agrees a status of R->comm's ranks over all block groups (the
 * same thing when G = 1) */
static int world_agree(const struct run *R, int rc) {
  return R->bg.G > 1 ? hq_comm_agree(R->world, rc) : rc;
}

/* Collective over R->world: every block of this step that its group quantizes is marked done
 * (and flushed): the next run resumes after it. */
static int steps_done(struct run *R) {
  const double t = hq_now();
  int rc = HQ_OK;
  for (int k = 0; k < R->bg.G && !rc; k++)
    if (R->step_blocks[k] >= 0) rc = hq_h5_block_done(R->h5, R->step_blocks[k]);
  R->phase[PH_WRITE] += hq_now() - t;
  return rc;
}

/* Collective over R->world: block b of this rank's group quantized (or, when already done,
 * replayed from the file), its output forwarded when the next block needs calibration inputs;
 * b = -1: nothing for this group at this step, it writes the other groups' blocks with them. */
static int run_block(struct run *R, int64_t b, struct hq_block_weights *bw) {
  const struct hq_quant_opts *o = R->o;
  const int done = b >= 0 && b < R->start_block, quant = b >= 0 && !done;
  R->carry_stage = 0;
  memset(bw, 0, sizeof *bw);
  int rc = HQ_OK;
  if (b >= 0) {
    /* a block to quantize on the host: each group's linears converted when the group starts
     * (hq_pipeline_group), unless cross-layer equalization needs them all first */
    const int lazy = !done && !R->be->on_device && !(o->equalize & HQ_EQ_CLE);
    /* ... and with several ranks on a node one copy of each for the node, unless equalization
     * rescales the linears in place */
    R->lins_shared = lazy && R->node_share && !o->equalize && !R->model.h5;
    rc = hq_model_load_block_part(&R->model, b, !lazy, bw);
    if (!rc && done) rc = hq_pipeline_load_done_block(R, b, bw);
    rc = hq_comm_agree(R->comm, rc);
  }
  HQ_TRY(world_agree(R, rc));
  if (quant && (o->equalize & HQ_EQ_CLE)) hq_equalize_cle(&R->model.cfg, bw); /* data-free */
  /* a MoE block: its attention groups here, its experts in pipeline_moe.c (one block group) */
  const int moe = b >= 0 && hq_config_moe_block(&R->model.cfg, b);
  for (int g = 0; g < (moe ? HQ_GROUP_GATEUP : HQ_GROUP_COUNT); g++) {
    HQ_TRY(hq_pipeline_group(R, quant ? b : -1, (enum hq_group)g, bw));
    if (quant) group_line(R, b, (enum hq_group)g);
  }
  if (moe && quant) HQ_TRY(hq_pipeline_moe(R, b, bw));
  if (o->equalize) HQ_TRY(hq_pipeline_write_equalized(R, bw));
  if (b >= 0 && hq_pipeline_need_calib(o)) rc = forward_block(R, bw);
  HQ_TRY(world_agree(R, rc));
  hq_pipeline_block_free(R, bw);
  return steps_done(R);
}

/* Collective over R->world: which block each group quantizes at this step (step_blocks),
 * whether any group works at all (returns 1), and, for the progress lines, each group's block
 * (b: this group's, quantized or replayed) */
static int step_begin(struct run *R, int64_t b) {
  const int G = R->bg.G;
  const int quant = b >= 0 && b >= R->start_block;
  if (G == 1) {
    R->step_blocks[0] = quant ? b : -1;
    return b >= 0;
  }
  double *v = hq_xmalloc((size_t)(2 * G) * sizeof(double));
  for (int k = 0; k < 2 * G; k++) v[k] = -1.0;
  v[R->group] = quant ? (double)b : -1.0;
  v[G + R->group] = (double)b;
  hq_comm_allreduce_max_f64(R->world, v, 2 * G);
  int any = 0;
  for (int k = 0; k < G; k++) {
    R->step_blocks[k] = (int64_t)v[k];
    any |= v[G + k] >= 0.0;
  }
  free(v);
  return any;
}

enum { REP_BLOCK, REP_SECONDS, REP_REPLAYED, REP_PHASES, REP_N = REP_PHASES + PH_COUNT };

/* Rank 0: one line per block of step s with its phase times and an ETA; rep[k]: group k's
 * block (+1; 0: none), seconds, replayed, phases */
static void progress_lines(const struct run *R, int64_t s, const double *rep, double t_start) {
  const int64_t L = R->model.cfg.n_layers;
  const double per = (hq_now() - R->t_blocks) / (double)(s + 1 - R->first_step);
  char eta[32], els[32];
  hq_format_duration(per * (double)(R->nsteps - s - 1), eta, sizeof eta);
  hq_format_duration(hq_now() - t_start, els, sizeof els);
  for (int k = 0; k < R->bg.G; k++) {
    const double *q = rep + k * REP_N, *p = q + REP_PHASES;
    if (q[REP_BLOCK] < 1.0) continue;
    char grp[32] = "";
    if (R->bg.G > 1) snprintf(grp, sizeof grp, " [group %d]", k);
    fprintf(stderr, "block %lld/%lld%s %s %5.2f s | fwd %.2f hess %.2f allred %.3f chol %.2f "
            "gptq %.2f stats %.2f gather %.3f write %.3f | elapsed %s, ETA %s\n",
            (long long)q[REP_BLOCK], (long long)L, grp, q[REP_REPLAYED] > 0 ? "(replayed)" : "",
            q[REP_SECONDS], p[PH_FORWARD], p[PH_HESSIAN], p[PH_ALLREDUCE], p[PH_CHOL], p[PH_GPTQ],
            p[PH_STATS], p[PH_GATHER], p[PH_WRITE], els, eta);
  }
}

/* Collective over R->world when G > 1: the progress lines of step s (b: this group's block,
 * started at tb), from each group's root */
static void step_report(struct run *R, int64_t s, int64_t b, double tb, double t_start) {
  const int G = R->bg.G;
  double *rep = hq_xmalloc((size_t)(G * REP_N) * sizeof(double));
  memset(rep, 0, (size_t)(G * REP_N) * sizeof(double));
  double *q = rep + R->group * REP_N;
  if (R->comm->rank == 0 && b >= 0) {
    q[REP_BLOCK] = (double)(b + 1);
    q[REP_SECONDS] = hq_now() - tb;
    q[REP_REPLAYED] = b < R->start_block;
    memcpy(q + REP_PHASES, R->phase, sizeof R->phase);
  }
  if (G > 1) hq_comm_allreduce_f64(R->world, rep, G * REP_N);
  if (R->world->rank == 0 && !R->o->quiet) progress_lines(R, s, rep, t_start);
  free(rep);
}

/* Collective: a stop request (SIGTERM from Slurm, Ctrl-C) is honoured at a step boundary */
static int stop_requested(const struct run *R, int64_t s) {
  double stop = hq_stop_requested ? 1.0 : 0.0;
  hq_comm_allreduce_max_f64(R->world, &stop, 1);
  const int64_t L = R->model.cfg.n_layers;
  if (stop > 0 && s + 1 < R->nsteps)
    return hq_fail(HQ_ERR_INTERRUPTED, "stopped by a signal after %s %lld of %lld; %s is "
                   "resumable: rerun the same command with --resume",
                   R->bg.G > 1 ? "step" : "block", (long long)(s + 1),
                   (long long)(R->bg.G > 1 ? R->nsteps : L), R->o->out_path);
  return HQ_OK;
}

/* Collective: totals and peak memory into the file, the complete flag, the JSON summary */
static int finish(struct run *R, double t_start) {
  const double total = hq_now() - t_start;
  int rc = hq_h5_attr_set_f64(R->h5, "/", "seconds_total", total);
  if (!rc) rc = hq_h5_attr_set_f64_array(R->h5, "/", "seconds_per_phase", R->total_phase, PH_COUNT);
  double rss = (double)hq_peak_rss_bytes();
  hq_comm_allreduce_max_f64(R->world, &rss, 1);
  double phase_max[PH_COUNT];
  memcpy(phase_max, R->total_phase, sizeof phase_max);
  hq_comm_allreduce_max_f64(R->world, phase_max, PH_COUNT);
  double *idle = hq_xmalloc((size_t)R->bg.G * sizeof(double));
  memset(idle, 0, (size_t)R->bg.G * sizeof(double));
  idle[R->group] = R->chain_idle_s;
  hq_comm_allreduce_max_f64(R->world, idle, R->bg.G);
  if (!rc && R->bg.G > 1) rc = hq_h5_attr_set_f64_array(R->h5, "/", "block_group_idle_seconds", idle, R->bg.G);
  if (!rc) rc = hq_h5_attr_set_f64(R->h5, "/", "peak_rss_bytes_max", rss);
  if (!rc) rc = hq_h5_complete(R->h5);
  if (!rc) write_summary(R, total, (size_t)rss, phase_max, idle);
  free(idle);
  if (rc) return rc;
  if (R->world->rank == 0 && !R->o->quiet) {
    char els[32];
    hq_format_duration(total, els, sizeof els);
    fprintf(stderr, "hpcq quantize: wrote %s in %s (peak RSS per rank %.1f MB)\n", R->o->out_path,
            els, rss / 1e6);
  }
  return HQ_OK;
}

static void run_free(struct run *R, struct hq_tokens *tok) {
  free(R->ids);
  if (R->x) R->be->free(R->x);
  if (R->carry_h) R->be->free(R->carry_h);
  if (R->carry_mid) R->be->free(R->carry_mid);
  if (R->ws) hq_fwd_ws_free(R->ws);
  if (R->rope.cos_t) hq_rope_table_free(&R->rope, R->be);
  hq_plan_free(&R->plan);
  hq_tokens_free(tok);
  if (R->model.dir || R->model.h5) hq_model_close(&R->model);
  if (R->comm == &R->gcomm) hq_comm_free(&R->gcomm);
  hq_block_groups_free(&R->bg);
  free(R->step_blocks);
}

/* Rank 0: what this run does, before the first block */
static void announce(const struct run *R) {
  const struct hq_quant_opts *o = R->o;
  const struct hq_model_config *c = &R->model.cfg;
  if (R->world->rank != 0 || o->quiet) return;
  char nr[32] = "", nn[32] = "";
  if (R->world->nodes > 1) snprintf(nn, sizeof nn, " on %d nodes", R->world->nodes);
  if (o->rules && o->rules->n) snprintf(nr, sizeof nr, " (%d rule%s)", o->rules->n, o->rules->n > 1 ? "s" : "");
  fprintf(stderr, "hpcq quantize: %s %d-bit%s%s%s, %lld blocks, %d rank%s%s, %lld x %lld calibration "
          "tokens%s\n", hq_method_name(o->method), o->g.bits,
          o->g.group_size > 0 ? " grouped" : " per-channel", o->g.act_order ? " act-order" : "", nr,
          (long long)c->n_layers, R->world->size, R->world->size > 1 ? "s" : "",
          nn, (long long)(hq_pipeline_need_calib(o) ? o->nsamples : 0), (long long)R->seqlen,
          R->node_share && hq_pipeline_need_hessian(o) ? ", one Hessian and factor per node" : "");
  if (R->bg.G < 2) return;
  fprintf(stderr, "hpcq quantize: %d block groups quantize at the same time:", R->bg.G);
  for (int k = 0; k < R->bg.G; k++)
    fprintf(stderr, "%s blocks %lld-%lld on rank%s %d-%d", k ? ";" : "", (long long)R->bg.block0[k] + 1,
            (long long)R->bg.block0[k + 1], R->bg.rank0[k + 1] - R->bg.rank0[k] > 1 ? "s" : "",
            R->bg.rank0[k], R->bg.rank0[k + 1] - 1);
  fprintf(stderr, "\n");
  if (hq_pipeline_need_calib(o))
    fprintf(stderr, "hpcq quantize: full-precision inputs of the groups' first blocks in %.2f s "
            "(group %d waited %.2f s for its first inputs, this rank)\n", R->chain_s, R->group,
            R->chain_idle_s);
}

/* Not collective: where the done blocks of this rank's group end (a resumed run): its
 * blocks from b0 on as long as the file marks them done */
static void group_start(struct run *R) {
  int64_t b = R->b0;
  while (b < R->b1 && hq_h5_block_is_done(R->h5, b)) b++;
  R->start_block = b;
}

/* Collective over R->world: step after step, every group its block of the step; the done ones
 * of a resumed run are replayed (their stored result forwarded) only when the next block needs
 * calibration inputs */
static int run_blocks(struct run *R, double t_start) {
  R->t_blocks = hq_now();
  R->first_step = -1;
  for (int64_t s = 0; s < R->nsteps; s++) {
    int64_t b = R->b0 + s < R->b1 ? R->b0 + s : -1;
    if (b >= 0 && b < R->start_block && !hq_pipeline_need_calib(R->o)) b = -1; /* not replayed */
    if (!step_begin(R, b)) continue;
    memset(R->phase, 0, sizeof R->phase);
    const double tb = R->t_block = hq_now();
    if (R->first_step < 0) R->first_step = s;
    struct hq_block_weights bw;
    const int rc = run_block(R, b, &bw);
    R->last_block_s = hq_now() - tb;
    hq_pipeline_block_free(R, &bw);
    HQ_TRY(rc);
    for (int p = 0; p < PH_COUNT; p++) R->total_phase[p] += R->phase[p];
    step_report(R, s, b, tb, t_start);
    HQ_TRY(stop_requested(R, s));
  }
  return HQ_OK;
}

/* Collective: the pipeline, top-down: inputs -> block groups -> output file (new or resumed)
 * -> calibration windows (and the groups' full-precision inputs) -> the blocks -> totals and
 * the complete flag -> close */
int hq_quantize_run(const struct hq_comm *comm, const struct hq_quant_opts *o) {
  struct run R;
  memset(&R, 0, sizeof R);
  R.comm = R.world = comm;
  R.o = o;
  R.g = o->g;
  R.g.hscale = o->scale_from_hessian;
  const double t_start = hq_now();
  struct hq_tokens tok = {0};
  int rc = open_inputs(&R, &tok);
  if (!rc) rc = open_groups(&R);
  if (!rc) rc = inputs_agree(&R);
  if (!rc) rc = hq_pipeline_file_open(&R);
  if (!rc) group_start(&R);
  if (!rc && hq_pipeline_need_calib(o)) rc = setup_calibration(&R, &tok);
  if (!rc) rc = hq_pipeline_fp_chain(&R);
  if (!rc) announce(&R);
  if (!rc) rc = run_blocks(&R, t_start);
  if (!rc) rc = finish(&R, t_start);
  const int crc = hq_pipeline_file_close(&R);
  if (!rc) rc = crc;
  run_free(&R, &tok);
  return rc;
}
