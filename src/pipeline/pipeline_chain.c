/* Block groups (--block-groups G > 1, pipeline_internal.h): the full-precision inputs of each
 * group's first block. Group 0 embeds the calibration windows; group k forwards its windows
 * through its own blocks with their unquantized weights and sends the result, window by window,
 * to the rank of group k+1 that owns the window (point-to-point, tag = the window's index).
 * The windows go in chunks (at least one forward batch, at most HQ_CHAIN_CHUNKS per rank), so
 * group k+1 starts forwarding its first chunk while group k is at its second: the chain costs
 * about one group's full-precision forward plus a chunk per group, not the sum of all.
 * A window's forward is the same whatever the batch (docs/readme/reproducibility.md), so the
 * inputs a group receives do not depend on the rank count of any group.
 * Collective over R->world: every rank takes part (the last group only receives). */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "pipeline_internal.h"
#include "util.h"

#define HQ_CHAIN_CHUNKS 4

struct chain {
  struct run *R;
  int64_t w0;           /* this rank's first window (index in the sample) */
  int64_t wfl;          /* floats per window */
  float *host_in;       /* received windows (R->x itself on a host backend) */
  float *y;             /* [nloc x wfl] backend memory: the windows forwarded through the group */
  float *host_out;      /* what is sent (y itself on a host backend) */
  MPI_Request *rreq, *sreq;
  int nsend;
  double idle;          /* seconds waiting for windows */
};

/* this rank's requests to receive its windows from their owners in the group before */
static void post_receives(struct chain *ch) {
  struct run *R = ch->R;
  const struct hq_block_groups *bg = &R->bg;
  const int k = R->group, np = bg->rank0[k] - bg->rank0[k - 1];
  for (int64_t w = 0; w < R->nloc; w++) {
    const int64_t gw = ch->w0 + w;
    const int src = bg->rank0[k - 1] + hq_plan_window_owner(R->o->nsamples, np, gw);
    MPI_Irecv(ch->host_in + w * ch->wfl, (int)ch->wfl, MPI_FLOAT, src, (int)gw, R->world->comm,
              &ch->rreq[w]);
  }
}

/* windows [w, w+n) forwarded through one block of the group (its unquantized weights) */
static int forward_fp(struct chain *ch, int64_t b, int64_t w, int64_t n) {
  struct run *R = ch->R;
  const struct hq_model_config *c = &R->model.cfg;
  struct hq_block_weights bw;
  struct hq_block_dev dev;
  int rc = hq_model_load_block(&R->model, b, &bw);
  if (!rc) rc = hq_block_dev_borrow(R->be, c, &bw, &dev);
  if (rc) {
    hq_block_weights_free(&bw);
    return hq_fail_ctx(rc, "block %lld (full-precision forward for the next block group): ",
                       (long long)b);
  }
  for (int64_t v = w; v < w + n; v += R->batch) {
    const int64_t nb = w + n - v < R->batch ? w + n - v : R->batch;
    hq_forward_block(R->be, c, &dev, &R->rope, R->ws, nb, R->seqlen, ch->y + v * ch->wfl, NULL, NULL);
  }
  R->be->sync();
  hq_block_dev_free(R->be, &dev);
  hq_block_weights_free(&bw);
  return HQ_OK;
}

/* windows [w, w+n): wait for them (groups after the first), forward them through the group's
 * blocks and send them on (groups before the last). A failure still sends, so that nobody
 * waits for ever; the run then stops at the agreement after the chain. */
static int chain_chunk(struct chain *ch, int64_t w, int64_t n, int rc) {
  struct run *R = ch->R;
  const struct hq_block_groups *bg = &R->bg;
  const int k = R->group;
  const size_t bytes = (size_t)(n * ch->wfl) * sizeof(float);
  if (k > 0) {
    const double t = hq_now();
    MPI_Waitall((int)n, ch->rreq + w, MPI_STATUSES_IGNORE);
    ch->idle += hq_now() - t;
    if (ch->host_in != R->x) R->be->upload(R->x + w * ch->wfl, ch->host_in + w * ch->wfl, bytes);
  }
  if (k + 1 == bg->G) return rc;
  R->be->copy(ch->y + w * ch->wfl, R->x + w * ch->wfl, bytes);
  for (int64_t b = R->b0; b < R->b1 && !rc; b++) {
    rc = forward_fp(ch, b, w, n);
    if (ch->nsend) MPI_Testall(ch->nsend, ch->sreq, &(int){0}, MPI_STATUSES_IGNORE); /* progress */
  }
  if (ch->host_out != ch->y) R->be->download(ch->host_out + w * ch->wfl, ch->y + w * ch->wfl, bytes);
  const int np = bg->rank0[k + 2] - bg->rank0[k + 1];
  for (int64_t v = w; v < w + n; v++) {
    const int64_t gw = ch->w0 + v;
    const int dst = bg->rank0[k + 1] + hq_plan_window_owner(R->o->nsamples, np, gw);
    MPI_Isend(ch->host_out + v * ch->wfl, (int)ch->wfl, MPI_FLOAT, dst, (int)gw, R->world->comm,
              &ch->sreq[ch->nsend++]);
  }
  return rc;
}

/* Not collective: the chain's buffers (NULL where not needed) */
static int chain_alloc(struct chain *ch) {
  struct run *R = ch->R;
  const int k = R->group, last = k + 1 == R->bg.G;
  const size_t bytes = (size_t)(R->nloc * ch->wfl) * sizeof(float);
  ch->rreq = hq_xmalloc((size_t)R->nloc * sizeof(MPI_Request));
  ch->sreq = hq_xmalloc((size_t)R->nloc * sizeof(MPI_Request));
  ch->host_in = R->x;
  if (k > 0 && R->be->on_device && !(ch->host_in = malloc(bytes))) goto nomem;
  if (!last) {
    if (!(ch->y = R->be->alloc(bytes))) goto nomem;
    ch->host_out = ch->y;
    if (R->be->on_device && !(ch->host_out = malloc(bytes))) goto nomem;
  }
  return HQ_OK;
nomem:
  return hq_fail(HQ_ERR_NOMEM, "cannot allocate %zu bytes for the full-precision inputs of the "
                 "next block group; use more ranks or fewer --nsamples", bytes);
}

static void chain_free(struct chain *ch) {
  struct run *R = ch->R;
  if (ch->host_in && ch->host_in != R->x) free(ch->host_in);
  if (ch->host_out && ch->host_out != ch->y) free(ch->host_out);
  if (ch->y) R->be->free(ch->y);
  free(ch->rreq);
  free(ch->sreq);
}

int hq_pipeline_fp_chain(struct run *R) {
  if (R->bg.G < 2 || !hq_pipeline_need_calib(R->o)) return HQ_OK;
  const double t0 = hq_now();
  struct chain ch;
  memset(&ch, 0, sizeof ch);
  ch.R = R;
  ch.wfl = R->seqlen * R->model.cfg.hidden;
  ch.w0 = hq_plan_windows(R->o->nsamples, R->comm->size, R->comm->rank).begin;
  int rc = ch.wfl > 0x7fffffff ? hq_fail(HQ_ERR_INPUT, "--seqlen %lld x hidden %lld is too large "
                                         "a window for the block groups' exchange",
                                         (long long)R->seqlen, (long long)R->model.cfg.hidden)
                               : HQ_OK;
  if (!rc) rc = chain_alloc(&ch);
  HQ_TRY(hq_comm_agree(R->world, rc));
  if (R->group > 0) post_receives(&ch);
  int64_t cw = (R->nloc + HQ_CHAIN_CHUNKS - 1) / HQ_CHAIN_CHUNKS;
  if (cw < R->batch) cw = R->batch;
  for (int64_t w = 0; w < R->nloc; w += cw) rc = chain_chunk(&ch, w, R->nloc - w < cw ? R->nloc - w : cw, rc);
  MPI_Waitall(ch.nsend, ch.sreq, MPI_STATUSES_IGNORE);
  chain_free(&ch);
  R->chain_idle_s = ch.idle;
  rc = hq_comm_agree(R->world, rc);
  R->chain_s = hq_now() - t0; /* until the last rank is done: the time the chain costs the run */
  return rc;
}
