/* The sparse MLP of a mixture-of-experts block through the pipeline (docs/readme/moe.md):
 *   the router's input of every local window (after the block's quantized attention) →
 *   routing (transformers' top-k, forward_moe.c) and the tokens routed to each expert, over
 *   all ranks → the owner of each expert (a plan identical on every rank) → in rounds, each
 *   rank one expert per round: every rank adds its windows' routed rows to the expert's
 *   Hessian, the sums are reduced to the owner only, the owner quantizes the expert's gate
 *   and up (one Hessian) and broadcasts them → the same for every expert's down, whose input
 *   is computed with the quantized gate/up → the block output.
 * An expert routed fewer than --moe-min-tokens tokens takes --moe-fallback (the Hessian of all
 * the block's tokens, or RTN); its token count and fallback are recorded on its linears.
 * A result is the same for any rank count and batch: Hessian sums are exact integers, each
 * window is routed and computed on its own, and an expert's rows are solved in one piece on
 * whichever rank owns it. Collective over R->comm (one block group: R->comm is R->world). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "forward_moe.h"
#include "hessian.h"
#include "pipeline_internal.h"
#include "util.h"

int64_t hq_pipeline_moe_min_tokens(const struct run *R) {
  return R->o->moe_min_tokens >= 0 ? R->o->moe_min_tokens : R->model.cfg.hidden;
}

struct moe {
  struct run *R;
  const struct hq_model_config *c;
  int64_t b, S, ntok;   /* block, window length, local tokens (nloc x S) */
  int calib;            /* calibration windows were forwarded (routing known) */
  float *xn;            /* [ntok x hidden] the router's input of the local windows */
  int32_t *sel;         /* [ntok x top_k] chosen experts */
  float *wt;            /* [ntok x top_k] their weights */
  int64_t *count;       /* [n_experts] tokens routed to each, over all ranks (-1: no calib) */
  int *owner;           /* [n_experts] the rank that quantizes it */
  int *fallback;        /* [n_experts] enum hq_moe_fallback */
  int64_t nrounds;
  int64_t *round;       /* [nrounds x ranks]: rank r's expert in round j, -1: none */
};

static void moe_free(struct moe *M) {
  free(M->xn), free(M->sel), free(M->wt), free(M->count), free(M->owner), free(M->fallback);
  free(M->round);
}

/* ---- the router's input and the routing ------------------------------------------------- */

struct cap_xn {
  float *xn;
  int64_t off; /* tokens copied so far */
};

static int cap_router_in(void *ctx, enum hq_group g, const float *X, int64_t ntok, int64_t cols) {
  struct cap_xn *c = ctx;
  if (g != HQ_GROUP_GATEUP) return 0;
  memcpy(c->xn + c->off * cols, X, (size_t)(ntok * cols) * sizeof(float));
  c->off += ntok;
  return 1;
}

/* Collective: M->xn of every local window, the routing, the tokens per expert over all ranks */
static int moe_route(struct moe *M, const struct hq_block_weights *bw) {
  struct run *R = M->R;
  const struct hq_model_config *c = M->c;
  const int64_t H = c->hidden, E = c->n_experts, K = c->top_k;
  struct hq_block_dev dev;
  HQ_TRY(hq_comm_agree(R->comm, hq_block_dev_borrow(R->be, c, bw, &dev)));
  M->xn = hq_xmalloc((size_t)(M->ntok * H) * sizeof(float) + 1);
  M->sel = hq_xmalloc((size_t)(M->ntok * K) * sizeof(int32_t) + 1);
  M->wt = hq_xmalloc((size_t)(M->ntok * K) * sizeof(float) + 1);
  float *L = hq_xmalloc((size_t)(M->ntok * E) * sizeof(float) + 1);
  const double t = hq_now();
  struct cap_xn cx = {M->xn, 0};
  hq_pipeline_forward_group(R, &dev, HQ_GROUP_GATEUP, cap_router_in, &cx);
  HQ_ASSERT(cx.off == M->ntok);
  if (M->ntok)
    R->be->gemm_rows(0, M->S, 0, 1, M->ntok, E, H, 1.0f, M->xn, H, bw->router, H, 0.0f, L, E);
  hq_moe_route(c, L, M->ntok, M->sel, M->wt);
  R->phase[PH_FORWARD] += hq_now() - t;
  free(L);
  hq_block_dev_free(R->be, &dev);
  for (int64_t i = 0; i < M->ntok * K; i++) M->count[M->sel[i]]++;
  hq_comm_allreduce_i64(R->comm, M->count, E);
  return HQ_OK;
}

/* ---- the plan --------------------------------------------------------------------------- */

/* The owner's work for expert e: GPTQ's factor and solve of its three linears (~rows x cols²
 * each; the routed tokens' Hessian sums are spread over all ranks by their windows), or ~rows
 * x cols for round-to-nearest. */
static double expert_cost(const struct moe *M, int64_t e) {
  const double H = (double)M->c->hidden, I = (double)M->c->moe_intermediate;
  const int gptq = M->R->o->method == HQ_METHOD_GPTQ && M->fallback[e] != HQ_MOE_FALLBACK_RTN;
  return gptq ? 2.0 * I * H * H + H * I * I + H * H * H / 3.0 + I * I * I / 3.0 : 3.0 * H * I;
}

/* Not collective (the same on every rank): the fallbacks, the owners (longest work first to
 * the least loaded rank; ties to the lower expert and rank), the rounds. */
static void moe_plan(struct moe *M) {
  const int64_t E = M->c->n_experts, P = M->R->comm->size;
  const int64_t min = hq_pipeline_moe_min_tokens(M->R);
  for (int64_t e = 0; e < E; e++)
    M->fallback[e] = M->calib && hq_pipeline_need_hessian(M->R->o) && M->count[e] < min
                         ? M->R->o->moe_fallback : HQ_MOE_FALLBACK_NONE;
  HQ_ASSERT(E > 0 && P > 0);
  double *load = hq_xcalloc((size_t)P, sizeof(double));
  char *taken = hq_xcalloc((size_t)E, 1);
  int64_t *per = hq_xcalloc((size_t)P, sizeof(int64_t));
  for (int64_t n = 0; n < E; n++) {
    int64_t e = -1;
    for (int64_t k = 0; k < E; k++)
      if (!taken[k] && (e < 0 || expert_cost(M, k) > expert_cost(M, e))) e = k;
    int64_t r = 0;
    for (int64_t q = 1; q < P; q++) r = load[q] < load[r] ? q : r;
    taken[e] = 1;
    M->owner[e] = (int)r;
    load[r] += expert_cost(M, e);
    per[r]++;
  }
  for (int64_t r = 0; r < P; r++) M->nrounds = per[r] > M->nrounds ? per[r] : M->nrounds;
  M->round = hq_xmalloc((size_t)(M->nrounds * P + 1) * sizeof(int64_t));
  for (int64_t i = 0; i < M->nrounds * P; i++) M->round[i] = -1;
  memset(per, 0, (size_t)P * sizeof(int64_t));
  for (int64_t e = 0; e < E; e++) { /* each rank's experts in index order */
    const int r = M->owner[e];
    M->round[per[r]++ * P + r] = e;
  }
  free(load), free(taken), free(per);
}

/* ---- an expert's Hessian ------------------------------------------------------------------ */

/* Expert e's input rows of local window w into X (cols wide): the tokens routed to it (all
 * tokens with the block fallback); its gate/up input is the router's input, its down input
 * silu(gate(x)) * up(x) with bw's (already quantized) gate and up. Returns the row count.
 * xg [S x hidden], u [S x moe_intermediate], tok, slot [S]: scratch. */
static int64_t expert_rows(const struct moe *M, const struct hq_block_weights *bw, int64_t e,
                           int down, int64_t w, float *X, float *xg, float *u, int64_t *tok,
                           int64_t *slot) {
  const struct hq_model_config *c = M->c;
  const int64_t S = M->S, H = c->hidden;
  const float *xw = M->xn + w * S * H;
  int64_t n = S;
  if (M->fallback[e] == HQ_MOE_FALLBACK_BLOCK) {
    for (int64_t i = 0; i < S; i++) tok[i] = i;
  } else {
    n = hq_moe_gather(c, M->sel + w * S * c->top_k, S, e, tok, slot);
  }
  float *dst = down ? xg : X;
  for (int64_t i = 0; i < n; i++) memcpy(dst + i * H, xw + tok[i] * H, (size_t)H * sizeof(float));
  if (down && n > 0)
    hq_moe_expert_act(M->R->be, c, bw->experts + 3 * e, hq_fwd_ws_act_bits(M->R->ws), n, xg, X, u);
  return n;
}

/* Every local window's rows of expert e (expert_rows) into *X [Σ n_w x cols] with offsets
 * off[w] (nloc + 1); returns the largest window bound (hq_hessian_window_bound). */
static double expert_inputs(const struct moe *M, const struct hq_block_weights *bw, int64_t e,
                            int down, float **X, int64_t *off) {
  const struct hq_model_config *c = M->c;
  const int64_t S = M->S, H = c->hidden, I = c->moe_intermediate, cols = down ? I : H;
  const int64_t nloc = M->R->nloc;
  float *xg = hq_xmalloc((size_t)(S * H) * sizeof(float));
  float *u = hq_xmalloc((size_t)(S * I) * sizeof(float));
  int64_t *tok = hq_xmalloc((size_t)S * sizeof(int64_t)), *slot = hq_xmalloc((size_t)S * sizeof(int64_t));
  *X = hq_xmalloc((size_t)(M->ntok * cols) * sizeof(float) + 1);
  double bound = 0.0;
  off[0] = 0;
  for (int64_t w = 0; w < nloc; w++) {
    float *Xw = *X + off[w] * cols;
    const int64_t n = expert_rows(M, bw, e, down, w, Xw, xg, u, tok, slot);
    off[w + 1] = off[w] + n;
    if (n) bound = fmax(bound, hq_hessian_window_bound(M->R->be, Xw, n, cols, cols));
  }
  free(xg), free(u), free(tok), free(slot);
  return bound;
}

/* Collective: the Hessian of expert e's gate/up (down 0) or down input over all ranks'
 * windows, its sums reduced to rank `owner` only: hb->H there (host [cols x cols]), nothing
 * elsewhere. F from the largest window bound of all windows, so no window exceeds it. */
static int expert_hessian(struct moe *M, const struct hq_block_weights *bw, int64_t e, int down,
                          int owner, struct hbuf *hb) {
  struct run *R = M->R;
  const int64_t cols = down ? M->c->moe_intermediate : M->c->hidden;
  const int mine = R->comm->rank == owner;
  double t = hq_now();
  int64_t *off = hq_xmalloc((size_t)(R->nloc + 1) * sizeof(int64_t));
  float *X = NULL;
  double bound = expert_inputs(M, bw, e, down, &X, off);
  hq_comm_allreduce_max_f64(R->comm, &bound, 1);
  struct hq_hessian h;
  memset(&h, 0, sizeof h);
  int rc = hq_comm_agree(R->comm, hq_hessian_init(&h, R->be, cols, R->o->nsamples));
  if (!rc) {
    hq_hessian_set_scale(&h, hq_hessian_scale_for(&h, bound, 1));
    for (int64_t w = 0; w < R->nloc; w++)
      hq_hessian_accumulate(&h, X + off[w] * cols, off[w + 1] - off[w], cols);
    R->phase[PH_HESSIAN] += hq_now() - t;
    t = hq_now();
    hq_comm_reduce_i64(R->comm, hq_hessian_sums(&h), h.ntri, owner);
    hq_comm_allreduce_i64(R->comm, &h.count, 1);
    double mx[2] = {isnan(h.vmax) ? 0.0 : h.vmax, isnan(h.vmax) ? 1.0 : 0.0};
    hq_comm_allreduce_max_f64(R->comm, mx, 2);
    h.vmax = mx[1] > 0 ? NAN : mx[0];
    R->phase[PH_ALLREDUCE] += hq_now() - t;
    int F = 0;
    rc = hq_hessian_check(&h, &F); /* the same on every rank: count and vmax are global */
    if (rc == 1) rc = hq_fail(HQ_ERR_NUMERIC, "expert %lld: a Hessian entry beyond the range "
                              "of its global bound", (long long)e);
  }
  if (!rc && mine) {
    hb->H = hq_hessian_finalize_in_place(&h, NULL);
    hb->be = R->be;
  }
  hq_hessian_free(&h);
  free(X), free(off);
  return hq_comm_agree(R->comm, rc);
}

/* ---- quantize, share and write ------------------------------------------------------------ */

/* Expert e's gate/up (down 0) or down as a unit: all rows this rank's when mine; e < 0: an
 * empty unit (a rank without an expert in a round). */
static void expert_unit(const struct moe *M, int64_t e, int down, int mine, struct unit *u) {
  memset(u, 0, sizeof *u);
  u->expert = e;
  u->g = down ? HQ_GROUP_DOWN : HQ_GROUP_GATEUP;
  if (e < 0) return;
  u->nl = down ? 1 : 2;
  u->parts[0] = down ? HQ_EXP_DOWN : HQ_EXP_GATE;
  u->parts[1] = HQ_EXP_UP;
  u->rtn = M->fallback[e] == HQ_MOE_FALLBACK_RTN;
  for (int i = 0; i < u->nl; i++) {
    hq_expert_shape(M->c, u->parts[i], &u->rows[i], &u->cols);
    u->myn[i] = mine ? u->rows[i] : 0;
  }
}

/* Collective over all ranks: the statistics of expert e's unit from its owner, per linear the
 * sums over its rows (RTN fallback: no proxy losses, NaN) and the owner's damping and phases. */
static void expert_record(const struct moe *M, const struct unit *u, int owner,
                          const struct part *parts, const struct hq_gptq_prep *prep,
                          struct group_rec *gr) {
  const struct run *R = M->R;
  memset(gr, 0, sizeof *gr);
  if (parts) {
    for (int i = 0; i < u->nl; i++)
      for (int64_t r = 0; r < u->rows[i]; r++)
        for (int k = 0; k < NSTAT; k++) gr->sums[i][k] += parts[i].st[r * NSTAT + k];
    gr->gm.damp = prep->perm ? prep->damp_abs : 0.0;
    gr->gm.dead = prep->perm ? (double)prep->dead_cols : 0.0;
    memcpy(gr->gm.ph, R->phase, sizeof gr->gm.ph);
  }
  hq_comm_bcast(R->comm, gr->sums, sizeof gr->sums, owner);
  hq_comm_bcast(R->comm, &gr->gm, sizeof gr->gm, owner);
  for (int i = 0; i < u->nl && u->rtn; i++)
    for (int k = 0; k < NSTAT; k++) gr->sums[i][k] = NAN;
  gr->nowner = R->comm->size;
  for (int i = 0; i < u->nl; i++) {
    gr->owner[i] = hq_xmalloc((size_t)gr->nowner * sizeof(int64_t));
    for (int r = 0; r < gr->nowner; r++) gr->owner[i][r] = r == owner ? u->rows[i] : 0;
  }
}

/* Collective over all ranks: expert e's quantized linears of this unit from its owner into bw
 * on every rank, then written with its statistics, token count and fallback. */
static int expert_share(struct moe *M, struct hq_block_weights *bw, int64_t e, int down,
                        int owner, const struct part *parts, const struct hq_gptq_prep *prep) {
  struct run *R = M->R;
  struct unit u;
  expert_unit(M, e, down, R->comm->rank == owner, &u);
  double t = hq_now();
  for (int i = 0; i < u.nl; i++) {
    float *W = bw->experts[3 * e + u.parts[i]];
    const size_t bytes = (size_t)(u.rows[i] * u.cols) * sizeof(float);
    if (parts) memcpy(W, parts[i].W, bytes);
    hq_comm_bcast(R->comm, W, bytes, owner);
  }
  struct group_rec gr;
  expert_record(M, &u, owner, parts, prep, &gr);
  R->phase[PH_GATHER] += hq_now() - t;
  t = hq_now();
  int rc = hq_pipeline_unit_write(R, M->b, &u, parts, &gr);
  for (int i = 0; i < u.nl && !rc; i++) {
    char obj[300], name[256];
    hq_expert_name(M->c, M->b, e, u.parts[i], name, sizeof name);
    snprintf(obj, sizeof obj, "/linears/%s", name);
    rc = hq_h5_attr_set_i64(R->h5, obj, "moe_tokens", M->count[e]);
    if (!rc) rc = hq_h5_attr_set_str(R->h5, obj, "moe_fallback", hq_moe_fallback_name(M->fallback[e]));
  }
  R->phase[PH_WRITE] += hq_now() - t;
  for (int i = 0; i < 4; i++) free(gr.owner[i]);
  return rc;
}

/* Collective: round j of the gate/up (down 0) or down part: the Hessians of the round's
 * experts (each to its owner), every rank its expert, then each expert shared and written. */
static int moe_round(struct moe *M, struct hq_block_weights *bw, int64_t j, int down) {
  struct run *R = M->R;
  const int P = R->comm->size, me = R->comm->rank;
  const int64_t *rd = M->round + j * P;
  struct hbuf hb;
  memset(&hb, 0, sizeof hb);
  int rc = HQ_OK;
  for (int r = 0; r < P && !rc && M->calib && hq_pipeline_need_hessian(R->o); r++)
    if (rd[r] >= 0 && M->fallback[rd[r]] != HQ_MOE_FALLBACK_RTN)
      rc = expert_hessian(M, bw, rd[r], down, r, &hb);
  struct unit u;
  expert_unit(M, rd[me], down, 1, &u);
  struct part parts[4];
  memset(parts, 0, sizeof parts);
  struct hq_gptq_prep prep;
  memset(&prep, 0, sizeof prep);
  if (!rc) rc = hq_pipeline_unit_quantize(R, M->b, &u, bw, &hb, parts, &prep);
  hq_pipeline_hbuf_free(&hb);
  for (int r = 0; r < P && !rc; r++)
    if (rd[r] >= 0) rc = expert_share(M, bw, rd[r], down, r, r == me ? parts : NULL, &prep);
  hq_gptq_prep_free(R->be, &prep);
  for (int i = 0; i < 4; i++) hq_pipeline_part_free(&parts[i]);
  return rc;
}

/* Rank 0: a line per round while the block takes longer than 30 s (as the dense groups'
 * lines), with the share of the block's expert rounds done and an estimate of the rest */
static void round_line(const struct moe *M, int64_t j, int down) {
  const struct run *R = M->R;
  const double in_block = hq_now() - R->t_block;
  if (R->world->rank != 0 || R->o->quiet || (in_block < 30.0 && R->last_block_s < 30.0)) return;
  const double done = (double)(down * M->nrounds + j + 1) / (double)(2 * M->nrounds);
  char els[32], rest[32];
  hq_format_duration(in_block, els, sizeof els);
  hq_format_duration(in_block / done * (1.0 - done), rest, sizeof rest);
  fprintf(stderr, "block %lld/%lld experts %s round %lld/%lld done (%lld experts, %d ranks), %s "
          "into the block, about %s to the block's end | hess %.1f allred %.1f chol %.1f gptq %.1f\n",
          (long long)M->b + 1, (long long)M->c->n_layers, down ? "down" : "gate-up",
          (long long)j + 1, (long long)M->nrounds, (long long)M->c->n_experts, R->comm->size, els,
          rest, R->phase[PH_HESSIAN], R->phase[PH_ALLREDUCE], R->phase[PH_CHOL], R->phase[PH_GPTQ]);
}

/* Not collective: the block output R->x = h + MoE(xn) with the quantized experts, from the
 * carry (h) when it holds the residual after the attention; else the pipeline forwards the
 * whole block afterwards. */
static void moe_output(struct moe *M, const struct hq_block_weights *bw) {
  struct run *R = M->R;
  if (!R->carry_h || R->carry_stage != (int)HQ_GROUP_GATEUP + 1) return;
  const double t = hq_now();
  hq_forward_moe(R->be, M->c, bw->router, bw->experts, hq_fwd_ws_act_bits(R->ws), R->nloc, M->S,
                 M->xn, R->carry_h);
  memcpy(R->x, R->carry_h, (size_t)(M->ntok * M->c->hidden) * sizeof(float));
  R->carry_stage = HQ_CARRY_OUTPUT;
  R->phase[PH_FORWARD] += hq_now() - t;
}

int hq_pipeline_moe(struct run *R, int64_t b, struct hq_block_weights *bw) {
  const struct hq_model_config *c = &R->model.cfg;
  struct moe M = {.R = R, .c = c, .b = b, .S = R->seqlen, .ntok = R->nloc * R->seqlen,
                  .calib = hq_pipeline_need_calib(R->o)};
  M.count = calloc((size_t)c->n_experts, sizeof(int64_t));
  M.owner = calloc((size_t)c->n_experts, sizeof(int));
  M.fallback = calloc((size_t)c->n_experts, sizeof(int));
  HQ_ASSERT(M.count && M.owner && M.fallback);
  int rc = R->be->on_device
               ? hq_fail(HQ_ERR_UNSUPPORTED, "block %lld is a mixture of experts, which runs on the "
                         "cpu backend only; use --backend cpu", (long long)b)
               : hq_model_load_experts(&R->model, b, bw);
  rc = hq_comm_agree(R->comm, rc);
  if (!rc && M.calib) rc = moe_route(&M, bw);
  if (!M.calib)
    for (int64_t e = 0; e < c->n_experts; e++) M.count[e] = -1;
  if (!rc) moe_plan(&M);
  for (int down = 0; down < 2 && !rc; down++)
    for (int64_t j = 0; j < M.nrounds && !rc; j++) {
      rc = moe_round(&M, bw, j, down);
      round_line(&M, j, down);
    }
  if (!rc && M.calib) moe_output(&M, bw);
  moe_free(&M);
  return rc;
}
