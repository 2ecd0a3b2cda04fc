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

static int capture(void *ctx, enum hq_group g, const float *X, int64_t ntok, int64_t cols) {
  struct capture_ctx *c = ctx;
  if (g != c->want) return 0;
  HQ_ASSERT(cols == c->h->n && ntok % c->seqlen == 0);
  for (int64_t t = 0; t < ntok; t += c->seqlen) /* one window at a time (hessian.h) */
    hq_hessian_accumulate(c->h, X + t * cols, c->seqlen, cols);
  c->got = 1;
  return 1; /* nothing after this group is needed */
}

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
  long long block, bits, group, nsamples, seqlen, seed, gptq_block;
  int sym, act_order, static_groups, bits_set, group_set;
  double damp;
};

static int parse(int argc, char **argv, struct layer_opts *o) {
  memset(o, 0, sizeof *o);
  o->backend = "cpu";
  o->bits = 4;
  o->group = -1;
  o->nsamples = 32;
  o->seqlen = 256;
  o->gptq_block = 128;
  o->damp = 0.01;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      exit(0);
    } else if (!strcmp(a, "--sym")) {
      o->sym = 1;
    } else if (!strcmp(a, "--act-order")) {
      o->act_order = 1;
    } else if (!strcmp(a, "--static-groups")) {
      o->static_groups = 1;
    } else if (!strcmp(a, "--model") || !strcmp(a, "--calib") || !strcmp(a, "--linear") ||
               !strcmp(a, "--backend")) {
      const char **dst = !strcmp(a, "--model")   ? &o->model
                         : !strcmp(a, "--calib") ? &o->calib
                         : !strcmp(a, "--linear") ? &o->linear
                                                  : &o->backend;
      HQ_TRY(hq_cli_str(a, v, dst));
      i++;
    } else if (!strcmp(a, "--block")) {
      HQ_TRY(hq_cli_int(a, v, 0, 1000000, &o->block));
      i++;
    } else if (!strcmp(a, "--bits")) {
      HQ_TRY(hq_cli_int(a, v, 2, 8, &o->bits));
      o->bits_set = 1;
      i++;
    } else if (!strcmp(a, "--group-size")) {
      HQ_TRY(hq_cli_int(a, v, -1, 1LL << 30, &o->group));
      o->group_set = 1;
      i++;
    } else if (!strcmp(a, "--nsamples")) {
      HQ_TRY(hq_cli_int(a, v, 1, 1000000, &o->nsamples));
      i++;
    } else if (!strcmp(a, "--seqlen")) {
      HQ_TRY(hq_cli_int(a, v, 1, 1 << 20, &o->seqlen));
      i++;
    } else if (!strcmp(a, "--seed")) {
      HQ_TRY(hq_cli_int(a, v, 0, INT64_MAX, &o->seed));
      i++;
    } else if (!strcmp(a, "--gptq-block")) {
      HQ_TRY(hq_cli_int(a, v, 1, 1 << 20, &o->gptq_block));
      i++;
    } else if (!strcmp(a, "--damp")) {
      HQ_TRY(hq_cli_float(a, v, 1e-9, 1e3, &o->damp));
      i++;
    } else {
      return hq_fail(HQ_ERR_INPUT, "unknown option '%s' (see hpcq layer --help)", a);
    }
  }
  if (!o->model || !o->calib || !o->linear)
    return hq_fail(HQ_ERR_INPUT, "--model, --calib and --linear are required (see hpcq layer --help)");
  if (o->group == 0)
    return hq_fail(HQ_ERR_INPUT, "--group-size 0: give the columns per group (>= 1, e.g. 128), or "
                   "-1 for one group per output channel");
  if (o->bits != 2 && o->bits != 3 && o->bits != 4 && o->bits != 8)
    return hq_fail(HQ_ERR_INPUT, "--bits must be 2, 3, 4 or 8, got %lld", o->bits);
  return HQ_OK;
}

/* Hessian of the linear's inputs over the calibration windows (full-precision forward). */
static int layer_hessian(const struct hq_backend *be, const struct hq_model *m,
                         const struct layer_opts *o, enum hq_linear lin, int64_t cols, float **H,
                         int64_t *ntok_out) {
  const struct hq_model_config *c = &m->cfg;
  const int64_t nwin = o->nsamples, seqlen = o->seqlen, ntok = nwin * seqlen;
  struct hq_tokens tok = {0};
  int32_t *ids = NULL;
  float *embed = NULL, *x = NULL;
  struct hq_fwd_ws *ws = NULL;
  struct hq_rope_table rope;
  int rope_ok = 0, rc;
  struct hq_hessian h;
  memset(&h, 0, sizeof h);
  memset(&rope, 0, sizeof rope);
  /* windows per forward call: ~4096 tokens of workspace */
  int64_t cw = 4096 / seqlen > 0 ? 4096 / seqlen : 1;
  if (cw > nwin) cw = nwin;

  if ((rc = hq_tokens_load(o->calib, c->vocab, &tok)) != HQ_OK) goto done;
  ids = malloc(sizeof(int32_t) * (size_t)ntok);
  if (!ids) {
    rc = hq_fail(HQ_ERR_NOMEM, "out of memory for %lld calibration tokens", (long long)ntok);
    goto done;
  }
  if ((rc = hq_tokens_sample(&tok, nwin, seqlen, (uint64_t)o->seed, ids)) != HQ_OK) goto done;
  if ((rc = hq_rope_table_init(&rope, be, c, seqlen)) != HQ_OK) goto done;
  rope_ok = 1;
  if (!(ws = hq_fwd_ws_new(be, c, cw * seqlen))) {
    rc = hq_fail_ctx(HQ_ERR_NOMEM, "forward workspace for %lld tokens: ", (long long)(cw * seqlen));
    goto done;
  }
  int64_t n_embed = 0;
  if ((rc = hq_model_load_f32(m, "model.embed_tokens.weight", &embed, &n_embed)) != HQ_OK) goto done;
  x = be->alloc(sizeof(float) * (size_t)(ntok * c->hidden));
  if (!x) {
    rc = hq_fail(HQ_ERR_NOMEM, "out of memory for the activations of %lld tokens x %lld "
                 "(use fewer --nsamples)", (long long)ntok, (long long)c->hidden);
    goto done;
  }
  hq_forward_embed(be, c, embed, ids, ntok, x);
  if ((rc = hq_hessian_init(&h, be, cols, nwin)) != HQ_OK) goto done;
  struct capture_ctx cap = {hq_linear_group(lin), &h, seqlen, 0};
  for (int64_t b = 0; b <= o->block; b++) {
    struct hq_block_weights w;
    struct hq_block_dev d;
    if ((rc = hq_model_load_block(m, b, &w)) != HQ_OK) goto done;
    rc = hq_block_dev_upload(be, c, &w, &d);
    hq_block_weights_free(&w);
    if (rc != HQ_OK) goto done;
    /* the last block's forward runs again only if an entry left F's range (hessian.h) */
    for (int pass = 0; pass < (b == o->block ? 2 : 1); pass++) {
      const int64_t save = b == o->block ? 0 : -1;
      for (int64_t w0 = 0; w0 < nwin; w0 += cw) {
        int64_t nw = nwin - w0 < cw ? nwin - w0 : cw;
        hq_forward_block(be, c, &d, &rope, ws, nw, seqlen, x + w0 * seqlen * c->hidden,
                         save == 0 ? capture : NULL, &cap);
      }
      int F = 0;
      if (b < o->block || (rc = hq_hessian_check(&h, &F)) != 1) break;
      hq_hessian_reset(&h);
      hq_hessian_set_scale(&h, F);
      rc = HQ_OK;
    }
    hq_block_dev_free(be, &d);
    if (rc != HQ_OK) goto done;
  }
  HQ_ASSERT(cap.got);
  *ntok_out = h.count;
  rc = hq_hessian_finalize(&h, H);
done:
  hq_hessian_free(&h);
  if (x) be->free(x);
  free(embed);
  if (ws) hq_fwd_ws_free(ws);
  if (rope_ok) hq_rope_table_free(&rope, be);
  free(ids);
  hq_tokens_free(&tok);
  return rc;
}

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

int hq_cli_layer(int argc, char **argv) {
  struct layer_opts o;
  if (parse(argc, argv, &o) != HQ_OK) {
    fprintf(stderr, "hpcq layer: %s\n", hq_last_error());
    return 2;
  }
  const struct hq_backend *be = hq_backend_by_name(o.backend);
  if (!be) {
    fprintf(stderr, "hpcq layer: %s\n", hq_last_error());
    return 2;
  }
  enum hq_linear lin = HQ_LIN_DOWN;
  if (parse_linear(o.linear, &lin) != HQ_OK) {
    fprintf(stderr, "hpcq layer: %s\n", hq_last_error());
    return 2;
  }
  struct hq_model m;
  int rc = hq_model_open(o.model, &m);
  if (rc != HQ_OK) {
    fprintf(stderr, "hpcq layer: %s\n", hq_last_error());
    return 1;
  }
  float *H = NULL, *W0 = NULL, *W = NULL;
  int64_t rows = 0, cols = 0, ntok = 0;
  if (o.block >= m.cfg.n_layers) {
    rc = hq_fail(HQ_ERR_INPUT, "--block %lld: the model has %lld blocks (0..%lld)", o.block,
                 (long long)m.cfg.n_layers, (long long)m.cfg.n_layers - 1);
    goto done;
  }
  if (o.seqlen > m.cfg.max_pos) {
    rc = hq_fail(HQ_ERR_INPUT, "--seqlen %lld exceeds max_position_embeddings %lld", o.seqlen,
                 (long long)m.cfg.max_pos);
    goto done;
  }
  if ((rc = hq_config_check_seqlen(&m.cfg, o.seqlen, "--seqlen")) != HQ_OK) goto done;
  hq_linear_shape(&m.cfg, lin, &rows, &cols);
  W = malloc(sizeof(float) * (size_t)(rows * cols));
  if (!W) {
    rc = hq_fail(HQ_ERR_NOMEM, "out of memory for a %lld x %lld layer", (long long)rows, (long long)cols);
    goto done;
  }
  double t0 = hq_now();
  if ((rc = layer_hessian(be, &m, &o, lin, cols, &H, &ntok)) != HQ_OK) goto done;
  double t_h = hq_now() - t0;
  char wname[160]; /* only the one linear, as fp32 */
  snprintf(wname, sizeof wname, "model.layers.%lld.%s.weight", o.block, hq_linear_name(lin));
  int64_t wnumel = 0;
  if ((rc = hq_model_load_f32(&m, wname, &W0, &wnumel)) != HQ_OK) goto done;
  if (wnumel != rows * cols) {
    rc = hq_fail(HQ_ERR_INPUT, "%s has %lld values, the config implies %lld x %lld", wname,
                 (long long)wnumel, (long long)rows, (long long)cols);
    goto done;
  }

  printf("hpcq layer: %s, block %lld %s [%lld x %lld], Hessian of %lld tokens (%lld windows x "
         "%lld, seed %lld) in %.2f s, backend %s\n", o.model, o.block, hq_linear_name(lin),
         (long long)rows, (long long)cols, (long long)ntok, o.nsamples, o.seqlen, o.seed, t_h,
         be->name);
  printf("proxy loss = tr(dW H dW^T), H = 2/N sum x x^T; ratio = proxy / proxy of RTN on the same grid\n\n");
  printf("%-9s %4s  %-8s %-4s %-4s %13s %8s %8s %9s\n", "method", "bits", "group", "sym", "act",
         "proxy loss", "vs RTN", "damp", "time [s]");

  int nconf = (o.bits_set || o.group_set) ? 1 : 3;
  const int dbits[3] = {4, 4, 3};
  const int64_t dgroup[3] = {-1, 128, 128};
  for (int ci = 0; ci < nconf && rc == HQ_OK; ci++) {
    struct hq_gptq_opts go = hq_gptq_opts_default();
    go.bits = nconf == 1 ? (int)o.bits : dbits[ci];
    go.group_size = nconf == 1 ? o.group : dgroup[ci];
    go.sym = o.sym;
    go.static_groups = o.static_groups;
    go.percdamp = (float)o.damp;
    go.block_size = (int)o.gptq_block;
    struct hq_gptq_result r;
    memcpy(W, W0, sizeof(float) * (size_t)(rows * cols));
    if ((rc = hq_rtn_quantize(be, &go, rows, cols, W, H, &r)) != HQ_OK) break;
    double rtn = r.loss_proxy;
    print_row("rtn", &go, -1, rtn, rtn, NAN, r.t_quant);
    hq_gptq_result_free(&r);
    for (int act = 0; act < 2; act++) {
      if (o.act_order && !act) continue;
      if (!o.act_order && nconf == 1 && act) continue;
      go.act_order = act;
      memcpy(W, W0, sizeof(float) * (size_t)(rows * cols));
      if ((rc = hq_gptq_quantize(be, &go, rows, cols, W, H, 1, &r)) != HQ_OK) break;
      print_row("gptq", &go, act, r.loss_proxy, rtn, r.damp_used, r.t_chol + r.t_quant);
      if (r.dead_cols) printf("          (%lld dead input columns: H[i,i] == 0)\n", (long long)r.dead_cols);
      hq_gptq_result_free(&r);
    }
  }
done:
  if (rc != HQ_OK) fprintf(stderr, "hpcq layer: %s\n", hq_last_error());
  free(H);
  free(W0);
  free(W);
  hq_model_close(&m);
  return rc == HQ_OK ? 0 : 1;
}
