/* One input group of one block through the pipeline (DESIGN.md "The job, end to end"): the
 * linears that share one input (q|k|v, o, gate|up, down) and the rows of each that this rank
 * owns (mpi/partition) form the unit of work:
 *   smooth (optional) → Hessian (forward the local windows to the group's input, exact
 *   fixed-point XᵀX per window, one all-reduce) → prepare (one Cholesky) → solve each owned
 *   row block + per-row statistics → gather the dequantized rows and the per-row statistics →
 *   write the packed rows and the statistics, summed in row order.
 * Every value written is a function of the model, the calibration tokens and the settings
 * alone, whatever the rank count, batch or thread count (docs/readme/reproducibility.md).
 * Collective over R->comm throughout; local failures are agreed before the next collective. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "equalize.h"
#include "error.h"
#include "hessian.h"
#include "pack.h"
#include "pipeline_internal.h"
#include "util.h"

/* ---- the unit of work ---------------------------------------------------------------- */

static void unit_make(const struct run *R, enum hq_group g, struct unit *u) {
  memset(u, 0, sizeof *u);
  u->g = g;
  u->expert = -1;
  for (int l = 0; l < HQ_LIN_COUNT; l++) {
    if (hq_linear_group((enum hq_linear)l) != g) continue;
    const int i = u->nl++;
    u->lins[i] = (enum hq_linear)l;
    hq_linear_shape(&R->model.cfg, (enum hq_linear)l, &u->rows[i], &u->cols);
    const struct hq_row_range rr = R->plan.rows[l][R->comm->rank];
    u->my0[i] = rr.begin;
    u->myn[i] = rr.end - rr.begin;
  }
}

/* linear i of u: its weights in bw, its name in the file */
static float *unit_w(const struct unit *u, int i, const struct hq_block_weights *bw) {
  return u->expert >= 0 ? bw->experts[3 * u->expert + u->parts[i]] : bw->lin[u->lins[i]];
}
static void unit_name(const struct run *R, const struct unit *u, int i, int64_t b, char *buf,
                      size_t n) {
  if (u->expert >= 0) hq_expert_name(&R->model.cfg, b, u->expert, u->parts[i], buf, n);
  else hq_pipeline_lin_name(buf, n, b, u->lins[i]);
}

/* what linear i of u in block b gets (--rule: src/quant/rules.h), and the method's options
 * with its bits and group size */
static struct hq_lin_q unit_q(const struct run *R, const struct unit *u, int i, int64_t b) {
  char name[256];
  unit_name(R, u, i, b, name, sizeof name);
  return hq_quant_lin_q(R->o, name);
}
static struct hq_gptq_opts q_opts(const struct run *R, const struct hq_lin_q *q) {
  struct hq_gptq_opts g = R->g;
  g.bits = q->bits;
  g.group_size = q->group_size;
  return g;
}

static int unit_owns_rows(const struct unit *u) {
  for (int i = 0; i < u->nl; i++)
    if (u->myn[i]) return 1;
  return 0;
}

void hq_pipeline_part_free(struct part *p) {
  hq_gptq_result_free(&p->res);
  free(p->W);
  free(p->st);
  memset(p, 0, sizeof *p);
}

/* ---- smoothing: per-channel max |X_j| of a group's input (activation quantization off) ---- */

struct amax_ctx {
  const struct hq_backend *be;
  enum hq_group want;
  double *amax; /* [cols] */
};

static int cap_amax(void *ctx, enum hq_group g, const float *X, int64_t ntok, int64_t cols) {
  struct amax_ctx *c = ctx;
  if (g != c->want) return 0;
  const float *x = X;
  float *host = NULL;
  if (c->be->on_device) {
    host = hq_xmalloc((size_t)(ntok * cols) * sizeof(float));
    c->be->sync();
    c->be->download(host, X, (size_t)(ntok * cols) * sizeof(float));
    x = host;
  }
  for (int64_t t = 0; t < ntok; t++)
    for (int64_t j = 0; j < cols; j++) {
      const double a = fabs((double)x[t * cols + j]);
      if (a > c->amax[j]) c->amax[j] = a;
    }
  free(host);
  return 1;
}

/* Smooth the norm feeding group g (QKV or GATEUP) of block b with the maxima of its input over
 * all ranks' calibration windows (all-reduce MAX: exact), in bw. Collective. */
static int smooth_group(struct run *R, enum hq_group g, struct hq_block_weights *bw) {
  const struct hq_model_config *c = &R->model.cfg;
  const int64_t H = c->hidden;
  struct amax_ctx ac = {R->be, g, calloc((size_t)H, sizeof(double))};
  float *am = malloc((size_t)H * sizeof(float));
  struct hq_block_dev dev;
  memset(&dev, 0, sizeof dev);
  int rc = ac.amax && am ? HQ_OK : hq_fail(HQ_ERR_NOMEM, "smoothing: out of memory");
  if (!rc) rc = hq_block_dev_borrow(R->be, c, bw, &dev);
  rc = hq_comm_agree(R->comm, rc);
  if (!rc) {
    const double t = hq_now();
    const int ab = hq_fwd_ws_act_bits(R->ws);
    hq_fwd_ws_set_act_bits(R->ws, 0); /* maxima of the unquantized activations */
    hq_pipeline_forward_local(R, &dev, cap_amax, &ac);
    hq_fwd_ws_set_act_bits(R->ws, ab);
    hq_comm_allreduce_max_f64(R->comm, ac.amax, H);
    for (int64_t j = 0; j < H; j++) am[j] = (float)ac.amax[j];
    hq_equalize_smooth(c, bw, g, am, R->o->smooth_alpha, NULL);
    R->phase[PH_HESSIAN] += hq_now() - t;
  }
  hq_block_dev_free(R->be, &dev);
  free(ac.amax);
  free(am);
  return rc;
}

/* ---- stage: the Hessian of the group's input ------------------------------------------ */

struct cap_hess {
  const struct run *R;
  enum hq_group want;
  struct hq_hessian *h;
  int need_F; /* the first call of a pass takes F from window 0 (rank 0's first window) */
};

static int cap_hessian(void *ctx, enum hq_group g, const float *X, int64_t ntok, int64_t cols) {
  struct cap_hess *c = ctx;
  if (g != c->want) return 0;
  const int64_t seqlen = c->R->seqlen;
  HQ_ASSERT(cols == c->h->n && ntok % seqlen == 0);
  if (c->need_F) { /* every rank has a window, so every rank gets here once per pass */
    int F = 0;
    if (c->R->comm->rank == 0)
      F = hq_hessian_scale_for(c->h, hq_hessian_window_bound(c->R->be, X, seqlen, cols, cols), 16);
    hq_comm_bcast(c->R->comm, &F, sizeof F, 0);
    hq_hessian_set_scale(c->h, F);
    c->need_F = 0;
  }
  for (int64_t w = 0; w < ntok / seqlen; w++)
    hq_hessian_accumulate(c->h, X + w * seqlen * cols, seqlen, cols);
  return 1;
}

/* Collective over the node when shared (every rank frees at the same point). */
void hq_pipeline_hbuf_free(struct hbuf *hb) {
  if (hb->shm.ptr) hq_comm_node_free(&hb->shm);
  else if (hb->be) hb->be->free(hb->H);
  else free(hb->H);
  memset(hb, 0, sizeof *hb);
}

/* Collective over the node: a node-shared buffer of `bytes`, or HQ_ERR_NOMEM on the whole node
 * (then the caller keeps a copy per rank; the node leader says so once per run). */
static int node_buf(struct run *R, size_t bytes, struct hq_node_buf *b) {
  const int rc = hq_comm_node_alloc(R->comm, bytes, b);
  if (rc && R->comm->local_rank == 0 && !R->shm_warned && !R->o->quiet)
    fprintf(stderr, "hpcq quantize: warning (rank %d): %s; one copy per rank instead (enlarge "
            "/dev/shm to share)\n", R->comm->rank, hq_last_error());
  R->shm_warned |= rc != HQ_OK;
  return rc;
}

/* Collective over the node when shared: each of the node's ranks zeroes its share of the
 * sums (first touching the pages costs more than the stores: shared, so not one rank alone). */
static void shared_zero(struct run *R, struct hbuf *hb) {
  const size_t B = hb->shm.bytes, k = (size_t)R->comm->local_rank, m = (size_t)R->comm->local_size;
  const size_t lo = B / m * k, hi = k + 1 == m ? B : B / m * (k + 1);
  memset((char *)hb->shm.ptr + lo, 0, hi - lo);
  hq_comm_node_publish(R->comm, &hb->shm);
}

/* The group's accumulator: one per node (R->node_share; all its ranks add into it), else this
 * rank's own — on every node alike (a node without room makes all keep their own: the sums
 * are reduced one way). Collective. */
static int hessian_init(struct run *R, int64_t n, struct hq_hessian *h, struct hbuf *hb) {
  double miss = R->node_share && node_buf(R, hq_hessian_shared_bytes(n), &hb->shm) ? 1.0 : 0.0;
  if (R->node_share) hq_comm_allreduce_max_f64(R->comm, &miss, 1);
  if (miss > 0.0 && hb->shm.ptr) hq_comm_node_free(&hb->shm); /* room here, not elsewhere */
  if (!hb->shm.ptr) return hq_hessian_init(h, R->be, n, R->o->nsamples);
  shared_zero(R, hb);
  return hq_hessian_init_at(h, R->be, n, R->o->nsamples, hb->shm.ptr, R->comm->local_rank,
                            R->comm->local_size);
}

/* The node's ranks as a team over one node-shared buffer (hq_team) */
struct node_team {
  const struct hq_comm *comm;
  struct hq_node_buf *buf;
};
static void node_team_sync(void *ctx) {
  const struct node_team *t = ctx;
  hq_comm_node_publish(t->comm, t->buf);
}
static int node_team_bcast_int(void *ctx, int v) {
  const struct node_team *t = ctx;
  hq_comm_node_bcast(t->comm, &v, sizeof v);
  return v;
}
static struct hq_team node_team(const struct run *R, struct node_team *nt, struct hq_node_buf *buf) {
  *nt = (struct node_team){R->comm, buf};
  return (struct hq_team){R->comm->local_rank, R->comm->local_size, node_team_sync,
                          node_team_bcast_int, nt};
}

/* H from the reduced sums, in their own memory (host), read by every rank of the node when
 * shared. Frees h. Collective over the node when shared. */
static int hessian_finalize(struct run *R, struct hq_hessian *h, struct hbuf *hb) {
  if (hb->shm.ptr) {
    struct node_team nt;
    const struct hq_team team = node_team(R, &nt, &hb->shm);
    hb->H = hq_hessian_finalize_in_place(h, &team);
    return HQ_OK;
  }
  if (R->be->on_device) return hq_hessian_finalize(h, &hb->H);
  hb->H = hq_hessian_finalize_in_place(h, NULL);
  hb->be = R->be;
  return HQ_OK;
}

/* Sum the sums over the ranks (exact: integers; a shared copy holds its node's already, the
 * leaders add the nodes'), then check the range. Collective. */
static int hessian_reduce(struct run *R, struct hq_hessian *h, struct hbuf *hb, int *F_retry) {
  const double t = hq_now();
  if (hb->shm.ptr) {
    hq_comm_node_publish(R->comm, &hb->shm); /* every rank's panels added */
    if (R->comm->local_rank == 0) hq_comm_leaders_allreduce_i64(R->comm, h->acc, h->ntri);
  } else {
    hq_comm_allreduce_i64(R->comm, hq_hessian_sums(h), h->ntri);
  }
  hq_comm_allreduce_i64(R->comm, &h->count, 1);
  double mx[2] = {isnan(h->vmax) ? 0.0 : h->vmax, isnan(h->vmax) ? 1.0 : 0.0};
  hq_comm_allreduce_max_f64(R->comm, mx, 2);
  h->vmax = mx[1] > 0 ? NAN : mx[0];
  R->phase[PH_ALLREDUCE] += hq_now() - t;
  return hq_hessian_check(h, F_retry);
}

static int cap_none(void *ctx, enum hq_group g, const float *X, int64_t ntok, int64_t cols) {
  (void)ctx, (void)g, (void)X, (void)ntok, (void)cols;
  return 1;
}

static void release_done_groups(struct run *R, enum hq_group g, struct hq_block_weights *bw);

/* H [cols x cols] (host; hbuf_free) of group u.g: fp32 2/N Σ x xᵀ over all ranks' windows.
 * When the carry will hold the group's input (O, DOWN), it is computed first and the earlier
 * groups' linears freed before the accumulator exists; the passes then read the carry. */
static int group_hessian(struct run *R, const struct unit *u, struct hq_block_weights *bw,
                         struct hbuf *hb) {
  struct hq_block_dev dev;
  int rc = hq_comm_agree(R->comm, hq_block_dev_borrow(R->be, &R->model.cfg, bw, &dev));
  if (rc) return rc;
  int carried = R->carry_h && (u->g == HQ_GROUP_O || u->g == HQ_GROUP_DOWN);
  if (carried) {
    const double t = hq_now();
    hq_pipeline_forward_group(R, &dev, u->g, cap_none, NULL);
    R->phase[PH_HESSIAN] += hq_now() - t;
    carried = R->carry_stage == (int)u->g + 1; /* the carry holds it now */
  }
  if (carried) hq_block_dev_free(R->be, &dev);
  release_done_groups(R, u->g, bw); /* every rank: collective when shared */
  struct hq_hessian h;
  memset(&h, 0, sizeof h);
  rc = hq_comm_agree(R->comm, hessian_init(R, u->cols, &h, hb));
  struct cap_hess cc = {R, u->g, &h, 1};
  for (int pass = 0; !rc; pass++) {
    const double t = hq_now();
    if (!carried || !hq_pipeline_carried_input(R, u->g, cap_hessian, &cc))
      hq_pipeline_forward_group(R, &dev, u->g, cap_hessian, &cc);
    R->phase[PH_HESSIAN] += hq_now() - t; /* the group's input + XᵀX */
    int F = 0;
    rc = hessian_reduce(R, &h, hb, &F);
    if (rc != 1) break;
    /* an entry beyond F's range: again with F from the largest entry of all windows */
    HQ_ASSERT(pass == 0);
    hq_hessian_reset(&h);
    if (hb->shm.ptr) shared_zero(R, hb);
    hq_hessian_set_scale(&h, F);
    rc = HQ_OK;
  }
  if (!rc) rc = hessian_finalize(R, &h, hb);
  hq_block_dev_free(R->be, &dev);
  hq_hessian_free(&h);
  return hq_comm_agree(R->comm, rc);
}

/* Collective: linear l in a node-shared buffer (R->lins_shared), each of the node's ranks
 * converting its share of the rows; *shared 0 when some node had no room in /dev/shm (then
 * every rank loads its own copy). HQ_OK or an agreed error. */
static int load_linear_shared(struct run *R, int64_t b, enum hq_linear l,
                              struct hq_block_weights *bw, int *shared) {
  int64_t rows, cols;
  hq_linear_shape(&R->model.cfg, l, &rows, &cols);
  struct hq_node_buf *nb = &R->lin_shm[l];
  double miss = node_buf(R, (size_t)(rows * cols) * sizeof(float), nb) ? 1.0 : 0.0;
  hq_comm_allreduce_max_f64(R->comm, &miss, 1);
  *shared = miss == 0.0;
  if (!*shared) {
    hq_comm_node_free(nb); /* room here, not elsewhere (a no-op where none was made) */
    return HQ_OK;
  }
  const int64_t k = R->comm->local_rank, m = R->comm->local_size;
  const int rc = hq_comm_agree(R->comm, hq_model_load_linear_rows(&R->model, b, l, rows * k / m,
                                                                  rows * (k + 1) / m, nb->ptr));
  hq_comm_node_publish(R->comm, nb);
  if (!rc) bw->lin[l] = nb->ptr; /* hq_pipeline_block_free releases it (also after rc) */
  R->lins_shared_n += !rc;
  return rc;
}

/* Collective: the linears of group g of block b that bw lacks (a lazily loaded block). */
static int load_group(struct run *R, int64_t b, enum hq_group g, struct hq_block_weights *bw) {
  int rc = HQ_OK;
  for (int l = 0; l < HQ_LIN_COUNT && !rc; l++) {
    if (hq_linear_group((enum hq_linear)l) != g || bw->lin[l]) continue;
    int shared = 0;
    if (R->lins_shared) rc = load_linear_shared(R, b, (enum hq_linear)l, bw, &shared);
    if (!rc && !shared)
      rc = hq_comm_agree(R->comm, hq_model_load_linear(&R->model, b, (enum hq_linear)l, bw));
  }
  return rc;
}

void hq_pipeline_block_free(struct run *R, struct hq_block_weights *bw) {
  for (int l = 0; l < HQ_LIN_COUNT; l++)
    if (R->lin_shm[l].ptr) {
      hq_comm_node_free(&R->lin_shm[l]);
      bw->lin[l] = NULL;
    }
  hq_block_weights_free(bw);
}

/* With the activations carried (host backend), once group g's input is computed neither the
 * later groups' inputs nor the block's output need the linears of the groups before g: free
 * them (at real shapes the block's fp32 copy is one of the largest buffers). Smoothing the
 * gate-up norm runs the whole block forward, so QKV and O stay until then. Collective when
 * the linears are node-shared (their release is agreed: every rank's carry must hold g's
 * input); every rank calls it at the same points. */
static void release_done_groups(struct run *R, enum hq_group g, struct hq_block_weights *bw) {
  const int can = R->carry_h && !R->be->on_device && R->carry_stage == (int)g + 1 &&
                  !((R->o->equalize & HQ_EQ_SMOOTH) && g < HQ_GROUP_GATEUP);
  double no = can ? 0.0 : 1.0;
  if (R->lins_shared) hq_comm_allreduce_max_f64(R->comm, &no, 1);
  for (int l = 0; l < HQ_LIN_COUNT; l++) {
    if (hq_linear_group((enum hq_linear)l) >= g) continue;
    if (R->lin_shm[l].ptr && no == 0.0) hq_comm_node_free(&R->lin_shm[l]);
    else if (R->lin_shm[l].ptr || !can) continue;
    else free(bw->lin[l]);
    bw->lin[l] = NULL;
  }
}

/* ---- stage: the method on this rank's rows, with per-row statistics ---------------------- */

/* Large layers compare with RTN on every HQ_STATS_STRIDE-th row of the layer (the same rows
 * for any rank split: row ranges start at multiples of 32) and scale the sum up; small ones on
 * all rows. A function of the layer's shape alone. */
#define HQ_STATS_STRIDE 16
static int64_t stats_stride(int64_t rows, int64_t cols) {
  return rows * cols >= ((int64_t)1 << 20) ? HQ_STATS_STRIDE : 1;
}

/* proxy losses d H dᵀ of the rows 0, k, 2k, ... < n of D = W0 - Q into st[r][slot]; Q holds
 * those rows every qk-th row (qk = k: all rows; 1: the sampled rows only) */
static int sampled_proxy(struct run *R, const struct unit *u, int i, const float *W0,
                         const float *Q, int64_t qk, const float *H, int64_t k, int slot,
                         struct part *p) {
  const int64_t n = u->myn[i], cols = u->cols, ns = (n + k - 1) / k;
  float *D = calloc((size_t)(ns * cols) + 1, sizeof(float));
  double *row = malloc((size_t)ns * sizeof(double) + 1);
  if (!D || !row) {
    free(D), free(row);
    return hq_fail(HQ_ERR_NOMEM, "cannot allocate statistics buffers");
  }
  for (int64_t s = 0; s < ns; s++)
    for (int64_t j = 0; j < cols; j++) D[s * cols + j] = W0[s * k * cols + j] - Q[s * qk * cols + j];
  hq_proxy_loss_rows(R->be, u->my0[i] / k, ns, cols, D, H, row);
  for (int64_t s = 0; s < ns; s++) p->st[s * k * NSTAT + slot] = row[s] * (double)k;
  free(D), free(row);
  return HQ_OK;
}

/* st[r][ST_METHOD]: the method's proxy loss (GPTQ: exact, from its error terms, H not
 * needed; otherwise by GEMM with H), on sampled rows when large. */
static int part_method_stats(struct run *R, const struct unit *u, int i, const float *W0,
                             const float *H, const struct hq_gptq_prep *prep, struct part *p) {
  const int64_t n = u->myn[i], k = stats_stride(u->rows[i], u->cols);
  if (R->o->method != HQ_METHOD_GPTQ) return sampled_proxy(R, u, i, W0, p->W, k, H, k, ST_METHOD, p);
  double *row = malloc((size_t)n * sizeof(double) + 1);
  if (!row) return hq_fail(HQ_ERR_NOMEM, "cannot allocate statistics buffers");
  hq_gptq_proxy_rows(prep, p->res.row_loss_ref, n, W0, p->W, row);
  for (int64_t r = 0; r < n; r++) p->st[r * NSTAT + ST_METHOD] = row[r];
  free(row);
  return HQ_OK;
}

/* st[r][ST_RTN]: plain RTN's proxy loss on the same grid, of the sampled rows only (RTN treats
 * every row on its own). Before the method: GPTQ's factor is made in H's memory. */
static int part_rtn_stats(struct run *R, const struct unit *u, int i, const float *W0,
                          const float *H, const struct hq_gptq_opts *go, struct part *p) {
  const int64_t n = u->myn[i], cols = u->cols, k = stats_stride(u->rows[i], cols);
  const int64_t ns = (n + k - 1) / k;
  float *Wr = malloc((size_t)(ns * cols) * sizeof(float) + 1);
  if (!Wr) return hq_fail(HQ_ERR_NOMEM, "cannot allocate statistics buffers");
  for (int64_t s = 0; s < ns; s++)
    memcpy(Wr + s * cols, W0 + s * k * cols, (size_t)cols * sizeof(float));
  struct hq_gptq_result rr;
  struct hq_gptq_opts ro = *go;
  ro.hscale = 0;
  int rc = ns ? hq_rtn_quantize(R->be, &ro, ns, cols, Wr, NULL, &rr) : HQ_OK;
  if (ns) hq_gptq_result_free(&rr);
  if (!rc) rc = sampled_proxy(R, u, i, W0, Wr, 1, H, k, ST_RTN, p);
  free(Wr);
  return rc;
}

/* HQQ: Σ|w - q| per row of HQQ's result and of RTN (no MSE search) on the same grid */
static int part_l1_stats(struct run *R, const struct unit *u, int i, const float *W0,
                         const struct hq_gptq_opts *go, struct part *p) {
  const int64_t n = u->myn[i], cols = u->cols;
  float *Wr = malloc((size_t)(n * cols) * sizeof(float));
  if (!Wr) return hq_fail(HQ_ERR_NOMEM, "cannot allocate statistics buffers");
  memcpy(Wr, W0, (size_t)(n * cols) * sizeof(float));
  struct hq_gptq_result rr;
  struct hq_gptq_opts ro = *go;
  ro.mse = 0;
  ro.hscale = 0;
  int rc = hq_rtn_quantize(R->be, &ro, n, cols, Wr, NULL, &rr);
  hq_gptq_result_free(&rr);
  for (int64_t r = 0; r < n && !rc; r++) {
    double a = 0, b = 0;
    for (int64_t k = r * cols; k < (r + 1) * cols; k++) {
      a += fabs((double)W0[k] - (double)p->W[k]);
      b += fabs((double)W0[k] - (double)Wr[k]);
    }
    p->st[r * NSTAT + ST_METHOD] = a;
    p->st[r * NSTAT + ST_RTN] = b;
  }
  free(Wr);
  return rc;
}

/* This rank's rows of linear i: the copy the method works on (the original rows stay in bw
 * until the gather replaces them), and the statistics that need H while it is whole. */
static int part_begin(struct run *R, const struct unit *u, int i, const struct hq_block_weights *bw,
                      const float *H, const struct hq_gptq_opts *go, struct part *p) {
  const int64_t n = u->myn[i], cols = u->cols;
  const size_t bytes = (size_t)(n * cols) * sizeof(float);
  const float *W0 = unit_w(u, i, bw) + u->my0[i] * cols;
  p->W = malloc(bytes + 1);
  p->st = calloc((size_t)(n * NSTAT) + 1, sizeof(double));
  if (!p->W || !p->st)
    return hq_fail(HQ_ERR_NOMEM, "cannot allocate %lld x %lld weights", (long long)n, (long long)cols);
  memcpy(p->W, W0, bytes);
  if (!H) return HQ_OK;
  const double t = hq_now();
  const int rc = part_rtn_stats(R, u, i, W0, H, go, p);
  R->phase[PH_STATS] += hq_now() - t;
  return rc;
}

/* The method on rows [my0, my0 + myn) of linear i (GPTQ: with the group's prepared factor,
 * H consumed; otherwise H as made). */
static int part_quantize(struct run *R, const struct unit *u, int i,
                         const struct hq_block_weights *bw, const float *H,
                         const struct hq_gptq_prep *prep, const struct hq_gptq_opts *g,
                         struct part *p) {
  const int64_t n = u->myn[i], cols = u->cols;
  const float *W0 = unit_w(u, i, bw) + u->my0[i] * cols;
  double t = hq_now();
  const enum hq_method m = u->rtn ? HQ_METHOD_RTN : R->o->method;
  int rc;
  if (m == HQ_METHOD_GPTQ) rc = hq_gptq_solve(R->be, g, prep, u->my0[i], n, p->W, &p->res);
  else if (m == HQ_METHOD_HQQ) rc = hq_hqq_quantize(g, &R->o->hqq, n, cols, p->W, &p->res, NULL);
  else {
    struct hq_gptq_opts go = *g;
    go.hscale = go.hscale && !u->rtn; /* an expert's RTN fallback has no Hessian */
    rc = hq_rtn_quantize(R->be, &go, n, cols, p->W, go.hscale ? H : NULL, &p->res);
  }
  R->phase[PH_GPTQ] += hq_now() - t;
  t = hq_now();
  if (!rc && m == HQ_METHOD_GPTQ)
    for (int64_t r = 0; r < n; r++) p->st[r * NSTAT + ST_REF] = p->res.row_loss_ref[r];
  if (!rc && H && !u->rtn) rc = part_method_stats(R, u, i, W0, H, prep, p);
  if (!rc && m == HQ_METHOD_HQQ) rc = part_l1_stats(R, u, i, W0, g, p);
  R->phase[PH_STATS] += hq_now() - t;
  return rc;
}

/* The group's factor for GPTQ, made in H's memory on a host backend: one per node when H is
 * node-shared (all its ranks factorise together, each its share of the tiles; collective over
 * the node), else one per rank that owns rows. Every rank of a node gets the same prep. */
static int group_prepare(struct run *R, const struct unit *u, struct hbuf *hb,
                         struct hq_gptq_prep *prep) {
  if (R->o->method != HQ_METHOD_GPTQ || u->rtn) return HQ_OK;
  const int64_t n = u->cols;
  int rc = HQ_OK;
  if (hb->shm.ptr) {
    struct node_team nt;
    const struct hq_team team = node_team(R, &nt, &hb->shm);
    rc = hq_gptq_prepare_in_place(R->be, &R->g, n, hb->H, &team, prep);
  } else if (unit_owns_rows(u)) {
    rc = R->be->on_device ? hq_gptq_prepare(R->be, &R->g, n, hb->H, prep)
                          : hq_gptq_prepare_in_place(R->be, &R->g, n, hb->H, NULL, prep);
  }
  R->phase[PH_CHOL] += prep->t_chol;
  return rc;
}

/* Collective: every owned block of the group with its statistics; the ranks agree first that
 * all have their rows (a node's ranks then factorise H together). */
int hq_pipeline_unit_quantize(struct run *R, int64_t b, const struct unit *u,
                              const struct hq_block_weights *bw, struct hbuf *hb,
                              struct part *parts, struct hq_gptq_prep *prep) {
  int rc = HQ_OK;
  char name[256];
  unit_name(R, u, 0, b, name, sizeof name);
  struct hq_lin_q q[4];
  struct hq_gptq_opts go[4];
  for (int i = 0; i < u->nl; i++) {
    q[i] = unit_q(R, u, i, b);
    go[i] = q_opts(R, &q[i]);
  }
  for (int i = 0; i < u->nl && !rc; i++)
    if (u->myn[i] && !q[i].skip) rc = part_begin(R, u, i, bw, hb->H, &go[i], &parts[i]);
  if (rc) hq_fail_ctx(rc, "%s: ", name);
  HQ_TRY(hq_comm_agree(R->comm, rc));
  rc = group_prepare(R, u, hb, prep);
  for (int i = 0; i < u->nl && !rc; i++)
    if (u->myn[i] && !q[i].skip) rc = part_quantize(R, u, i, bw, hb->H, prep, &go[i], &parts[i]);
  if (rc) hq_fail_ctx(rc, "%s: ", name);
  return hq_comm_agree(R->comm, rc);
}

/* ---- stage: gather ----------------------------------------------------------------------- */

/* Every rank: the dequantized rows of linear i into bw, and sums[NSTAT] of the per-row
 * statistics over all rows in row order (ranks own increasing row ranges). Collective. */
static void part_gather(struct run *R, const struct unit *u, int i, const struct part *p,
                        struct hq_block_weights *bw, double *sums) {
  const struct hq_comm *cm = R->comm;
  const enum hq_linear l = u->lins[i];
  size_t *wb = hq_xmalloc((size_t)cm->size * sizeof(size_t));
  size_t *sb = hq_xmalloc((size_t)cm->size * sizeof(size_t));
  for (int r = 0; r < cm->size; r++) {
    const int64_t nr = R->plan.rows[l][r].end - R->plan.rows[l][r].begin;
    wb[r] = (size_t)(nr * u->cols) * sizeof(float);
    sb[r] = (size_t)(nr * NSTAT) * sizeof(double);
  }
  if (R->lin_shm[l].ptr) { /* each rank its rows in place, the leaders the other nodes' */
    if (wb[cm->rank]) memcpy(bw->lin[l] + u->my0[i] * u->cols, p->W, wb[cm->rank]);
    hq_comm_node_allgatherv(cm, &R->lin_shm[l], wb);
  } else {
    hq_comm_allgatherv(cm, p->W, bw->lin[l], wb);
  }
  double *all = hq_xmalloc((size_t)(u->rows[i] * NSTAT) * sizeof(double) + 1);
  hq_comm_allgatherv(cm, p->st, all, sb);
  for (int k = 0; k < NSTAT; k++) sums[k] = 0.0;
  for (int64_t r = 0; r < u->rows[i]; r++)
    for (int k = 0; k < NSTAT; k++) sums[k] += all[r * NSTAT + k];
  free(all);
  free(wb);
  free(sb);
}

/* ---- stage: write ------------------------------------------------------------------------ */

/* Collective: damping and dead columns from the ranks that prepared, slowest phase times. */
static void group_meta(struct run *R, const struct hq_gptq_prep *prep, struct group_meta *gm) {
  gm->damp = prep->perm ? prep->damp_abs : 0.0; /* perm: this rank prepared */
  gm->dead = prep->perm ? (double)prep->dead_cols : 0.0;
  hq_comm_allreduce_max_f64(R->comm, &gm->damp, 1);
  hq_comm_allreduce_max_f64(R->comm, &gm->dead, 1);
  memcpy(gm->ph, R->phase, sizeof gm->ph);
  hq_comm_allreduce_max_f64(R->comm, gm->ph, PH_COUNT);
}

/* Collective over all ranks (R->world): create linear i's datasets `name` and write its
 * packed rows (gptq_v2 layout, pack.h), each rank its own slab (p NULL: none, another block
 * group's block). */
static int part_write_packed(struct run *R, const char *name, const struct unit *u, int i,
                             const struct part *p, const struct hq_lin_q *q) {
  const int64_t gs = q->group_size > 0 ? q->group_size : -1;
  const int64_t ng = gs > 0 ? (u->cols + gs - 1) / gs : 1;
  struct hq_h5_linear_desc d = {u->rows[i], u->cols, q->bits, gs, ng, HQ_PACK_GPTQ_V2};
  HQ_TRY(hq_h5_linear_create(R->h5, name, &d));
  struct hq_packed pk;
  memset(&pk, 0, sizeof pk);
  const int have = p && u->myn[i] > 0;
  int rc = HQ_OK;
  if (have) {
    rc = hq_pack_init(&pk, q->bits, HQ_PACK_GPTQ_V2, u->cols, u->rows[i], ng, u->my0[i], u->myn[i]);
    if (!rc) rc = hq_pack_encode(&pk, p->res.codes, p->res.zeros, p->res.scales, p->res.g_idx);
    if (rc) hq_fail_ctx(rc, "packing %s: ", name);
  }
  rc = hq_comm_agree(R->world, rc);
  if (!rc) rc = hq_h5_linear_write(R->h5, name, have ? &pk : NULL);
  hq_pack_free(&pk);
  return rc;
}

/* Collective over all ranks: linear i's statistics (sums over all rows, meta, owners). */
static int part_write_stats(struct run *R, const char *name, int i, const struct group_rec *gr) {
  const struct hq_quant_opts *o = R->o;
  const int hess = hq_pipeline_need_hessian(o);
  struct hq_h5_linear_stats st = {
      .loss_proxy_gptq = hess ? gr->sums[i][ST_METHOD] : NAN, /* of the method used */
      .loss_proxy_rtn = hess ? gr->sums[i][ST_RTN] : NAN,
      .loss_ref = o->method == HQ_METHOD_GPTQ ? gr->sums[i][ST_REF] : NAN,
      .damp_used = gr->gm.damp,
      .dead_cols = (int64_t)gr->gm.dead,
      .nphases = PH_COUNT,
      .phase_names = hq_phase_names,
      .phase_seconds = gr->gm.ph,
      .owner_rows = gr->owner[i],
      .nranks = gr->nowner};
  return hq_h5_linear_stats(R->h5, name, &st);
}

/* Collective over all ranks: the method's attributes of linear i: the per-row statistics' row
 * count (with a Hessian), the mean absolute errors of HQQ and RTN (HQQ). */
static int part_write_attrs(struct run *R, const char *name, const struct unit *u, int i,
                            const double *sums) {
  const struct hq_quant_opts *o = R->o;
  char obj[300];
  snprintf(obj, sizeof obj, "/linears/%s", name);
  int rc = HQ_OK;
  if (hq_pipeline_need_hessian(o)) {
    const int64_t k = stats_stride(u->rows[i], u->cols);
    rc = hq_h5_attr_set_i64(R->h5, obj, "stats_rows", (u->rows[i] + k - 1) / k);
  }
  if (!rc && o->method == HQ_METHOD_HQQ) {
    const double numel = (double)u->rows[i] * (double)u->cols;
    rc = hq_h5_attr_set_f64(R->h5, obj, "hqq_mean_abs_error", sums[ST_METHOD] / numel);
    if (!rc) rc = hq_h5_attr_set_f64(R->h5, obj, "rtn_mean_abs_error", sums[ST_RTN] / numel);
  }
  return rc;
}

/* Collective over all ranks: the unit's linears of block b, packed rows (parts: this rank's,
 * NULL when the block is another group's), statistics and attributes. */
int hq_pipeline_unit_write(struct run *R, int64_t b, const struct unit *u,
                           const struct part *parts, const struct group_rec *gr) {
  int rc = HQ_OK;
  for (int i = 0; i < u->nl && !rc; i++) {
    char name[256];
    unit_name(R, u, i, b, name, sizeof name);
    const struct hq_lin_q q = hq_quant_lin_q(R->o, name);
    if (q.skip) continue; /* stored unquantized with the model's tensors (pipeline_file.c) */
    rc = part_write_packed(R, name, u, i, parts ? &parts[i] : NULL, &q);
    if (!rc) rc = part_write_stats(R, name, i, gr);
    if (!rc) rc = part_write_attrs(R, name, u, i, gr->sums[i]);
  }
  return rc;
}

/* ---- the group ----------------------------------------------------------------------------- */

/* One input group of block b computed by this rank's block group (collective over R->comm):
 * parts, sums and meta for the write. */
struct group_out {
  struct unit u;
  struct part parts[4];
  double sums[4][NSTAT];
  struct group_meta gm;
};

static int group_compute(struct run *R, int64_t b, enum hq_group g, struct hq_block_weights *bw,
                         struct group_out *out) {
  struct unit *u = &out->u;
  unit_make(R, g, u);
  int rc = HQ_OK;
  HQ_TRY(load_group(R, b, g, bw));
  if ((R->o->equalize & HQ_EQ_SMOOTH) && (g == HQ_GROUP_QKV || g == HQ_GROUP_GATEUP))
    HQ_TRY(smooth_group(R, g, bw));
  struct hbuf hb = {0};
  if (hq_pipeline_need_hessian(R->o)) rc = group_hessian(R, u, bw, &hb);
  if (rc) {
    hq_pipeline_hbuf_free(&hb); /* agreed failure: every rank of a node holds the same kind of buffer */
    return rc;
  }
  release_done_groups(R, g, bw);
  struct hq_gptq_prep prep;
  memset(&prep, 0, sizeof prep);
  rc = hq_pipeline_unit_quantize(R, b, u, bw, &hb, out->parts, &prep);
  hq_pipeline_hbuf_free(&hb); /* with U, when made in place */
  if (!rc) {
    const double t = hq_now();
    for (int i = 0; i < u->nl; i++)
      if (!unit_q(R, u, i, b).skip) part_gather(R, u, i, &out->parts[i], bw, out->sums[i]);
    R->phase[PH_GATHER] += hq_now() - t;
    group_meta(R, &prep, &out->gm);
  }
  hq_gptq_prep_free(R->be, &prep);
  return rc;
}

/* rows of linear l each rank of an nranks-rank group owns (the plan of that group size) */
static int64_t *owner_rows(const struct run *R, const struct hq_plan *plan, enum hq_linear l) {
  int64_t *o = hq_xmalloc((size_t)plan->nranks * sizeof(int64_t));
  for (int r = 0; r < plan->nranks; r++) o[r] = plan->rows[l][r].end - plan->rows[l][r].begin;
  (void)R;
  return o;
}

/* Collective over all ranks: group k's record of its block's input group, sent by its root. */
static int group_rec_from(struct run *R, int k, const struct unit *u, const struct group_out *out,
                          struct group_rec *gr) {
  const struct hq_block_groups *bg = &R->bg;
  memset(gr, 0, sizeof *gr);
  if (out) {
    memcpy(gr->sums, out->sums, sizeof gr->sums);
    gr->gm = out->gm;
  }
  hq_comm_bcast(R->world, gr->sums, sizeof gr->sums, bg->rank0[k]);
  hq_comm_bcast(R->world, &gr->gm, sizeof gr->gm, bg->rank0[k]);
  struct hq_plan plan; /* the owners follow from the group's size (mpi/partition) */
  HQ_TRY(hq_comm_agree(R->world, hq_plan_make(&R->model.cfg, bg->rank0[k + 1] - bg->rank0[k], &plan)));
  gr->nowner = plan.nranks;
  for (int i = 0; i < u->nl; i++) gr->owner[i] = owner_rows(R, &plan, u->lins[i]);
  hq_plan_free(&plan);
  return HQ_OK;
}

static void group_rec_free(struct group_rec *gr) {
  for (int i = 0; i < 4; i++) free(gr->owner[i]);
}

/* Collective over all ranks: input group g of every block group's block of this step
 * (blocks[k], -1 where group k quantizes none), written group after group. */
static int step_write(struct run *R, enum hq_group g, const int64_t *blocks, const struct group_out *out) {
  int rc = HQ_OK;
  for (int k = 0; k < R->bg.G && !rc; k++) {
    if (blocks[k] < 0) continue;
    const int mine = k == R->group;
    struct unit u;
    unit_make(R, g, &u); /* the shapes (every block's are the same) */
    struct group_rec gr;
    rc = group_rec_from(R, k, &u, mine ? out : NULL, &gr);
    const double t = hq_now();
    if (!rc) rc = hq_pipeline_unit_write(R, blocks[k], mine ? &out->u : &u, mine ? out->parts : NULL, &gr);
    R->phase[PH_WRITE] += hq_now() - t;
    group_rec_free(&gr);
  }
  return rc;
}

int hq_pipeline_group(struct run *R, int64_t b, enum hq_group g, struct hq_block_weights *bw) {
  struct group_out out;
  memset(&out, 0, sizeof out);
  int rc = b >= 0 ? group_compute(R, b, g, bw, &out) : HQ_OK;
  if (R->bg.G > 1) {
    rc = hq_comm_agree(R->world, rc);
    if (!rc) rc = step_write(R, g, R->step_blocks, &out);
  } else if (!rc && b >= 0) {
    struct group_rec gr = {.nowner = R->comm->size};
    memcpy(gr.sums, out.sums, sizeof gr.sums);
    gr.gm = out.gm;
    for (int i = 0; i < out.u.nl; i++) gr.owner[i] = owner_rows(R, &R->plan, out.u.lins[i]);
    const double t = hq_now();
    rc = hq_pipeline_unit_write(R, b, &out.u, out.parts, &gr);
    R->phase[PH_WRITE] += hq_now() - t;
    group_rec_free(&gr);
  }
  for (int i = 0; i < 4; i++) hq_pipeline_part_free(&out.parts[i]);
  return rc;
}
