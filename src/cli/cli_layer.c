/* hpcq layer: quantize one real linear of a model with RTN and GPTQ and print the proxy loss
 * tr(ΔW H ΔWᵀ) of each (H = 2/N Σ x xᵀ over the layer's real inputs, N tokens).
 *
 * The layer's inputs come from the full-precision forward: nsamples calibration windows of
 * seqlen tokens (seeded) are embedded and run through blocks 0..B-1 unquantized; block B runs
 * up to the linear's input group, whose inputs are accumulated into the Hessian. Not
 * collective (one process). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cli.h"
#include "error.h"
#include "forward.h"
#include "gptq.h"
#include "hessian.h"
#include "model.h"
#include "util.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: hpcq layer --model DIR --calib TOKENS --linear NAME [options]\n"
          "\n"
          "Quantize one linear of one block with round-to-nearest and GPTQ on the layer's real\n"
          "inputs, and print the proxy loss tr(dW H dW^T) of each. Without --bits/--group-size\n"
          "it compares W4 per-channel, W4 g128 and W3 g128 (GPTQ with and without act-order).\n"
          "\n"
          "  --model DIR          model folder (config.json + *.safetensors)\n"
          "  --calib FILE         calibration tokens (raw little-endian int32)\n"
          "  --block B            transformer block (default 0)\n"
          "  --linear NAME        self_attn.{q,k,v,o}_proj or mlp.{gate,up,down}_proj (the\n"
          "                       part after the dot is enough: down_proj)\n"
          "  --bits N             2, 3, 4 or 8 (default: the three standard configurations)\n"
          "  --group-size G       columns per group, -1 = per channel (default as --bits)\n"
          "  --sym                symmetric grid\n"
          "  --act-order          GPTQ with act-order only\n"
          "  --static-groups      group parameters from the unpermuted weights\n"
          "  --damp P             percdamp (default 0.01)\n"
          "  --gptq-block N       GPTQ lazy-batch block (default 128)\n"
          "  --nsamples N         calibration windows (default 32)\n"
          "  --seqlen N           tokens per window (default 256)\n"
          "  --seed S             window sampling seed (default 0)\n"
          "  --backend NAME       cpu (default), cuda or auto\n");
}

struct capture_ctx {
  enum hq_group want;
  struct hq_hessian *h;
  int64_t seqlen;
  int got;
};

/* hq_capture_fn: the inputs of the wanted group, one window at a time, into the Hessian. */
static int capture(void *ctx, enum hq_group g, const float *X, int64_t ntok, int64_t cols) {
  struct capture_ctx *c = ctx;
  if (g != c->want) return 0;
  HQ_ASSERT(cols == c->h->n && ntok % c->seqlen == 0);
  for (int64_t t = 0; t < ntok; t += c->seqlen) /* one window at a time (hessian.h) */
    hq_hessian_accumulate(c->h, X + t * cols, c->seqlen, cols);
  c->got = 1;
  return 1; /* nothing after this group is needed */
}

/* --linear NAME (the full name or the part after the dot) into *out. */
static int parse_linear(const char *s, enum hq_linear *out) {
  for (int l = 0; l < HQ_LIN_COUNT; l++) {
    const char *n = hq_linear_name((enum hq_linear)l);
    const char *dot = strchr(n, '.');
    if (!strcmp(s, n) || (dot && !strcmp(s, dot + 1))) {
      *out = (enum hq_linear)l;
      return HQ_OK;
    }
  }
  return hq_fail(HQ_ERR_INPUT, "unknown --linear '%s' (use self_attn.q_proj, k_proj, v_proj, "
                 "o_proj, mlp.gate_proj, up_proj or down_proj)", s);
}

struct layer_opts {
  const char *model, *calib, *linear, *backend;
  int64_t block, group, nsamples, seqlen, seed;
  int bits, gptq_block, sym, act_order, static_groups, bits_set, group_set;
  double damp;
};

/* The options into o (defaults first); HQ_CLI_HELP for --help, HQ_ERR_INPUT for a usage error. */
static int parse(int argc, char **argv, struct layer_opts *o) {
  memset(o, 0, sizeof *o);
  o->backend = "cpu";
  o->bits = 4;
  o->group = -1;
  o->nsamples = 32;
  o->seqlen = 256;
  o->gptq_block = 128;
  o->damp = 0.01;
  const struct hq_opt t[] = {
      HQ_ARG_FLAG("--sym", &o->sym),
      HQ_ARG_FLAG("--act-order", &o->act_order),
      HQ_ARG_FLAG("--static-groups", &o->static_groups),
      HQ_ARG_STR("--model", &o->model),
      HQ_ARG_STR("--calib", &o->calib),
      HQ_ARG_STR("--linear", &o->linear),
      HQ_ARG_STR("--backend", &o->backend),
      HQ_ARG_I64("--block", &o->block, 0, 1000000),
      {.name = "--bits", .kind = HQ_OPT_INT, .dst = &o->bits, .lo = 2, .hi = 8,
       .given = &o->bits_set},
      {.name = "--group-size", .kind = HQ_OPT_I64, .dst = &o->group, .lo = -1, .hi = 1LL << 30,
       .given = &o->group_set},
      HQ_ARG_I64("--nsamples", &o->nsamples, 1, 1000000),
      HQ_ARG_I64("--seqlen", &o->seqlen, 1, 1 << 20),
      HQ_ARG_I64("--seed", &o->seed, 0, INT64_MAX),
      HQ_ARG_INT("--gptq-block", &o->gptq_block, 1, 1 << 20),
      HQ_ARG_F64("--damp", &o->damp, 1e-9, 1e3),
      HQ_ARG_END};
  return hq_cli_parse(argc, argv, t, "layer", NULL, 0, NULL);
}

/* The checks of the options among themselves (the model's are in check_model). */
static int check_opts(const struct layer_opts *o) {
  if (!o->model || !o->calib || !o->linear)
    return hq_fail(HQ_ERR_INPUT, "--model, --calib and --linear are required (see hpcq layer --help)");
  if (o->group == 0)
    return hq_fail(HQ_ERR_INPUT, "--group-size 0: give the columns per group (>= 1, e.g. 128), or "
                   "-1 for one group per output channel");
  if (o->bits != 2 && o->bits != 3 && o->bits != 4 && o->bits != 8)
    return hq_fail(HQ_ERR_INPUT, "--bits must be 2, 3, 4 or 8, got %d", o->bits);
  return HQ_OK;
}

/* The full-precision forward that feeds the Hessian: the sampled windows' activations x, run
 * cw windows at a time through one workspace. */
struct layer_fwd {
  const struct hq_backend *be;
  const struct hq_model_config *c;
  int64_t nwin, seqlen, cw;
  struct hq_tokens tok;
  int32_t *ids;
  float *embed, *x;
  struct hq_fwd_ws *ws;
  struct hq_rope_table rope;
  int rope_ok;
};

/* Frees what fwd_init allocated (also after a partial fwd_init). */
static void fwd_free(struct layer_fwd *f) {
  if (f->x) f->be->free(f->x);
  free(f->embed);
  if (f->ws) hq_fwd_ws_free(f->ws);
  if (f->rope_ok) hq_rope_table_free(&f->rope, f->be);
  free(f->ids);
  hq_tokens_free(&f->tok);
}

/* nwin windows of seqlen calibration tokens, sampled with the seed, into f->ids. */
static int fwd_sample(struct layer_fwd *f, const struct layer_opts *o) {
  const int64_t ntok = f->nwin * f->seqlen;
  HQ_TRY(hq_tokens_load(o->calib, f->c->vocab, &f->tok));
  f->ids = malloc(sizeof(int32_t) * (size_t)ntok);
  if (!f->ids)
    return hq_fail(HQ_ERR_NOMEM, "out of memory for %lld calibration tokens", (long long)ntok);
  return hq_tokens_sample(&f->tok, f->nwin, f->seqlen, (uint64_t)o->seed, f->ids);
}

/* Everything the forward needs, up to the embedded windows in f->x. */
static int fwd_init(struct layer_fwd *f, const struct hq_backend *be, const struct hq_model *m,
                    const struct layer_opts *o) {
  memset(f, 0, sizeof *f);
  f->be = be;
  f->c = &m->cfg;
  f->nwin = o->nsamples;
  f->seqlen = o->seqlen;
  /* windows per forward call: ~4096 tokens of workspace */
  f->cw = 4096 / f->seqlen > 0 ? 4096 / f->seqlen : 1;
  if (f->cw > f->nwin) f->cw = f->nwin;
  const int64_t ntok = f->nwin * f->seqlen, hidden = f->c->hidden;
  HQ_TRY(fwd_sample(f, o));
  HQ_TRY(hq_rope_table_init(&f->rope, be, f->c, f->seqlen));
  f->rope_ok = 1;
  if (!(f->ws = hq_fwd_ws_new(be, f->c, f->cw * f->seqlen)))
    return hq_fail_ctx(HQ_ERR_NOMEM, "forward workspace for %lld tokens: ",
                       (long long)(f->cw * f->seqlen));
  int64_t n_embed = 0;
  HQ_TRY(hq_model_load_f32(m, "model.embed_tokens.weight", &f->embed, &n_embed));
  f->x = be->alloc(sizeof(float) * (size_t)(ntok * hidden));
  if (!f->x)
    return hq_fail(HQ_ERR_NOMEM, "out of memory for the activations of %lld tokens x %lld "
                   "(use fewer --nsamples)", (long long)ntok, (long long)hidden);
  hq_forward_embed(be, f->c, f->embed, f->ids, ntok, f->x);
  return HQ_OK;
}

/* Every window through block d, cw at a time; cap (or NULL) captures the linear's inputs. */
static void fwd_windows(const struct layer_fwd *f, const struct hq_block_dev *d,
                        struct capture_ctx *cap) {
  for (int64_t w0 = 0; w0 < f->nwin; w0 += f->cw) {
    const int64_t nw = f->nwin - w0 < f->cw ? f->nwin - w0 : f->cw;
    hq_forward_block(f->be, f->c, d, &f->rope, f->ws, nw, f->seqlen,
                     f->x + w0 * f->seqlen * f->c->hidden, cap ? capture : NULL, cap);
  }
}

/* The forward of the linear's block up to its input group, accumulated into cap->h; it runs
 * again, once, only if an entry left F's range (hessian.h). */
static int fwd_capture(const struct layer_fwd *f, const struct hq_block_dev *d,
                       struct capture_ctx *cap) {
  for (int pass = 0; pass < 2; pass++) {
    fwd_windows(f, d, cap);
    int F = 0;
    const int rc = hq_hessian_check(cap->h, &F);
    if (rc != 1) return rc;
    hq_hessian_reset(cap->h);
    hq_hessian_set_scale(cap->h, F);
  }
  return HQ_OK;
}

/* Block b on the device and through the forward: blocks before `last` run in full, block
 * `last` feeds the Hessian. */
static int fwd_block(const struct layer_fwd *f, const struct hq_model *m, int64_t b, int64_t last,
                     struct capture_ctx *cap) {
  struct hq_block_weights w;
  struct hq_block_dev d;
  HQ_TRY(hq_model_load_block(m, b, &w));
  int rc = hq_block_dev_upload(f->be, f->c, &w, &d);
  hq_block_weights_free(&w);
  if (rc != HQ_OK) return rc;
  if (b < last) fwd_windows(f, &d, NULL);
  else rc = fwd_capture(f, &d, cap);
  hq_block_dev_free(f->be, &d);
  return rc;
}

/* Hessian of the linear's inputs over the calibration windows (full-precision forward). */
static int layer_hessian(const struct hq_backend *be, const struct hq_model *m,
                         const struct layer_opts *o, enum hq_linear lin, int64_t cols, float **H,
                         int64_t *ntok_out) {
  struct layer_fwd f;
  struct hq_hessian h;
  memset(&h, 0, sizeof h);
  int rc = fwd_init(&f, be, m, o);
  if (!rc) rc = hq_hessian_init(&h, be, cols, f.nwin);
  struct capture_ctx cap = {hq_linear_group(lin), &h, f.seqlen, 0};
  for (int64_t b = 0; b <= o->block && !rc; b++) rc = fwd_block(&f, m, b, o->block, &cap);
  if (!rc) {
    HQ_ASSERT(cap.got);
    *ntok_out = h.count;
    rc = hq_hessian_finalize(&h, H);
  }
  hq_hessian_free(&h);
  fwd_free(&f);
  return rc;
}

/* One row of the table (act -1: not applicable; damp NaN: "-"). */
static void print_row(const char *method, const struct hq_gptq_opts *go, int act, double loss,
                      double rtn, double damp, double secs) {
  char grp[32];
  if (go->group_size > 0) snprintf(grp, sizeof grp, "g%lld", (long long)go->group_size);
  else snprintf(grp, sizeof grp, "channel");
  char dbuf[32];
  if (isnan(damp)) snprintf(dbuf, sizeof dbuf, "-");
  else snprintf(dbuf, sizeof dbuf, "%g", damp);
  printf("%-9s %4d  %-8s %-4s %-4s %13.6g %8.3f %8s %9.4f\n", method, go->bits, grp,
         go->sym ? "yes" : "no", act < 0 ? "-" : act ? "yes" : "no", loss, loss / rtn, dbuf, secs);
}

/* The linear's weights, fp32 [rows x cols], and a copy to quantize. */
struct layer_w {
  enum hq_linear lin;
  int64_t rows, cols, ntok;
  float *H, *W0, *W;
};

/* The options against the model: the block exists, --seqlen fits. */
static int check_model(const struct hq_model *m, const struct layer_opts *o) {
  if (o->block >= m->cfg.n_layers)
    return hq_fail(HQ_ERR_INPUT, "--block %lld: the model has %lld blocks (0..%lld)",
                   (long long)o->block, (long long)m->cfg.n_layers,
                   (long long)m->cfg.n_layers - 1);
  if (o->seqlen > m->cfg.max_pos)
    return hq_fail(HQ_ERR_INPUT, "--seqlen %lld exceeds max_position_embeddings %lld",
                   (long long)o->seqlen, (long long)m->cfg.max_pos);
  return hq_config_check_seqlen(&m->cfg, o->seqlen, "--seqlen");
}

/* The one linear's weights from the model file, as fp32, into w->W0. */
static int load_weight(const struct hq_model *m, const struct layer_opts *o, struct layer_w *w) {
  char wname[160];
  snprintf(wname, sizeof wname, "model.layers.%lld.%s.weight", (long long)o->block,
           hq_linear_name(w->lin));
  int64_t wnumel = 0;
  HQ_TRY(hq_model_load_f32(m, wname, &w->W0, &wnumel));
  if (wnumel != w->rows * w->cols)
    return hq_fail(HQ_ERR_INPUT, "%s has %lld values, the config implies %lld x %lld", wname,
                   (long long)wnumel, (long long)w->rows, (long long)w->cols);
  return HQ_OK;
}

/* The title lines and the column header of the table. */
static void print_header(const struct layer_opts *o, const struct layer_w *w, double t_h,
                         const char *backend) {
  printf("hpcq layer: %s, block %lld %s [%lld x %lld], Hessian of %lld tokens (%lld windows x "
         "%lld, seed %lld) in %.2f s, backend %s\n", o->model, (long long)o->block,
         hq_linear_name(w->lin), (long long)w->rows, (long long)w->cols, (long long)w->ntok,
         (long long)o->nsamples, (long long)o->seqlen, (long long)o->seed, t_h, backend);
  printf("proxy loss = tr(dW H dW^T), H = 2/N sum x x^T; ratio = proxy / proxy of RTN on the same grid\n\n");
  printf("%-9s %4s  %-8s %-4s %-4s %13s %8s %8s %9s\n", "method", "bits", "group", "sym", "act",
         "proxy loss", "vs RTN", "damp", "time [s]");
}

/* The Hessian of the linear's inputs, its weights and the table's header. */
static int layer_prepare(const struct hq_backend *be, const struct hq_model *m,
                         const struct layer_opts *o, struct layer_w *w) {
  HQ_TRY(check_model(m, o));
  if (w->lin >= HQ_LIN_GATE && hq_config_moe_block(&m->cfg, o->block))
    return hq_fail(HQ_ERR_UNSUPPORTED, "--block %lld of this %s is a mixture of experts: it has "
                   "no %s; hpcq layer takes its attention linears (self_attn.q_proj, k_proj, "
                   "v_proj, o_proj)", (long long)o->block, m->cfg.arch_name,
                   hq_linear_name(w->lin));
  hq_linear_shape(&m->cfg, w->lin, &w->rows, &w->cols);
  w->W = malloc(sizeof(float) * (size_t)(w->rows * w->cols));
  if (!w->W)
    return hq_fail(HQ_ERR_NOMEM, "out of memory for a %lld x %lld layer", (long long)w->rows,
                   (long long)w->cols);
  const double t0 = hq_now();
  HQ_TRY(layer_hessian(be, m, o, w->lin, w->cols, &w->H, &w->ntok));
  const double t_h = hq_now() - t0;
  HQ_TRY(load_weight(m, o, w));
  print_header(o, w, t_h, be->name);
  return HQ_OK;
}

/* One GPTQ row (act-order on or off) on a fresh copy of the weights. */
static int gptq_row(const struct hq_backend *be, struct hq_gptq_opts *go, int act,
                    const struct layer_w *w, double rtn) {
  struct hq_gptq_result r;
  go->act_order = act;
  memcpy(w->W, w->W0, sizeof(float) * (size_t)(w->rows * w->cols));
  HQ_TRY(hq_gptq_quantize(be, go, w->rows, w->cols, w->W, w->H, 1, &r));
  print_row("gptq", go, act, r.loss_proxy, rtn, r.damp_used, r.t_chol + r.t_quant);
  if (r.dead_cols)
    printf("          (%lld dead input columns: H[i,i] == 0)\n", (long long)r.dead_cols);
  hq_gptq_result_free(&r);
  return HQ_OK;
}

/* The rows of one configuration: RTN, then GPTQ without and with act-order (--act-order: with
 * only; one configuration given by --bits/--group-size: without only). */
static int config_rows(const struct hq_backend *be, struct hq_gptq_opts *go,
                       const struct layer_opts *o, int single, const struct layer_w *w) {
  struct hq_gptq_result r;
  memcpy(w->W, w->W0, sizeof(float) * (size_t)(w->rows * w->cols));
  HQ_TRY(hq_rtn_quantize(be, go, w->rows, w->cols, w->W, w->H, &r));
  const double rtn = r.loss_proxy;
  print_row("rtn", go, -1, rtn, rtn, NAN, r.t_quant);
  hq_gptq_result_free(&r);
  for (int act = 0; act < 2; act++) {
    if (o->act_order && !act) continue;
    if (!o->act_order && single && act) continue;
    HQ_TRY(gptq_row(be, go, act, w, rtn));
  }
  return HQ_OK;
}

/* The table: the configuration of --bits/--group-size, or W4 per channel, W4 g128, W3 g128. */
static int layer_table(const struct hq_backend *be, const struct layer_opts *o,
                       const struct layer_w *w) {
  const int single = o->bits_set || o->group_set, nconf = single ? 1 : 3;
  const int dbits[3] = {4, 4, 3};
  const int64_t dgroup[3] = {-1, 128, 128};
  for (int ci = 0; ci < nconf; ci++) {
    struct hq_gptq_opts go = hq_gptq_opts_default();
    go.bits = single ? o->bits : dbits[ci];
    go.group_size = single ? o->group : dgroup[ci];
    go.sym = o->sym;
    go.static_groups = o->static_groups;
    go.percdamp = (float)o->damp;
    go.block_size = o->gptq_block;
    HQ_TRY(config_rows(be, &go, o, single, w));
  }
  return HQ_OK;
}

/* The options, the backend and the linear: HQ_OK, HQ_CLI_HELP (usage printed) or a usage error. */
static int layer_args(int argc, char **argv, struct layer_opts *o,
                      const struct hq_backend **be, enum hq_linear *lin) {
  int rc = parse(argc, argv, o);
  if (rc == HQ_CLI_HELP) {
    usage(stdout);
    return rc;
  }
  if (!rc) rc = check_opts(o);
  if (!rc && !(*be = hq_backend_by_name(o->backend))) rc = HQ_ERR_INPUT;
  if (!rc) rc = parse_linear(o->linear, lin);
  return rc;
}

int hq_cli_layer(int argc, char **argv) {
  struct layer_opts o;
  const struct hq_backend *be = NULL;
  struct layer_w w = {.lin = HQ_LIN_DOWN};
  int rc = layer_args(argc, argv, &o, &be, &w.lin);
  if (rc) return hq_cli_args_exit(rc, "layer");
  struct hq_model m;
  if (hq_model_open(o.model, &m) != HQ_OK) {
    fprintf(stderr, "hpcq layer: %s\n", hq_last_error());
    return 1;
  }
  if (m.gptq_format) {
    fprintf(stderr, "hpcq layer: %s is a GPTQ checkpoint; give the full-precision model\n",
            o.model);
    hq_model_close(&m);
    return 1;
  }
  rc = layer_prepare(be, &m, &o, &w);
  if (!rc) rc = layer_table(be, &o, &w);
  if (rc != HQ_OK) fprintf(stderr, "hpcq layer: %s\n", hq_last_error());
  free(w.H);
  free(w.W0);
  free(w.W);
  hq_model_close(&m);
  return rc == HQ_OK ? 0 : 1;
}
