/* hpcq quantize: the distributed sequential pipeline.
 *
 * Per rank: open the model (mmap), sample the calibration windows (same seed everywhere) and
 * keep this rank's share, embed them. Then block after block, in true-sequential order
 * {q,k,v} -> {o} -> {gate,up} -> {down}:
 *   forward the local windows through the block (weights of the groups before this one
 *   already quantized) up to the group's input, accumulate the raw XᵀX sum and token count,
 *   all-reduce them (one all-reduce per group), scale once (2/N, N = tokens);
 *   quantize the rows this rank owns (mpi/partition plan: the group's linears concatenated
 *   and cut into aligned row ranges) with ONE GPTQ call for the stacked rows of the group
 *   (they share H, hence one Cholesky); all-gather the dequantized rows so every rank holds
 *   the quantized block; pack and write the rows collectively with statistics;
 * then forward the windows through the quantized block to produce the next block's input,
 * mark the block done and flush (resumable), print a progress line with an ETA.
 * Collective over comm->comm throughout; every local failure is agreed (hq_comm_agree) before
 * the next collective so that no rank hangs. */
#include "pipeline.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "actquant.h"
#include "equalize.h"
#include "error.h"
#include "forward.h"
#include "hscale.h"
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

/* the Hessian is collected for GPTQ and for --scale-from-hessian; calibration windows are
 * forwarded for those and for smoothing (activation maxima) */
static int need_hessian(const struct hq_quant_opts *o) {
  return o->method == HQ_METHOD_GPTQ || o->scale_from_hessian;
}
static int need_calib(const struct hq_quant_opts *o) {
  return need_hessian(o) || (o->equalize & HQ_EQ_SMOOTH);
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

/* ---- capture hook: accumulate the Hessian of one input group, then stop the forward ----
 * Each calibration window's XᵀX is formed on its own (fp32 syrk over seqlen tokens) and added
 * into an fp64 sum; the all-reduce is in fp64 too. So H no longer depends (beyond fp64
 * rounding) on how windows are split over ranks or batched, and runs at different rank counts
 * quantize to the same codes. */
struct cap_ctx {
  const struct hq_backend *be;
  enum hq_group want;
  int64_t n, seqlen;
  float *tmp;     /* [n x n] backend memory: one window's XᵀX (upper triangle) */
  float *tmp_h;   /* host copy when the backend is a device */
  double *acc;    /* [n x n] host: upper triangle of Σ XᵀX */
  int64_t count;  /* tokens */
};
static int cap_hessian(void *ctx, enum hq_group g, const float *X, int64_t ntok, int64_t cols) {
  struct cap_ctx *c = ctx;
  if (g != c->want) return 0;
  HQ_ASSERT(cols == c->n && ntok % c->seqlen == 0);
  const int64_t n = c->n;
  for (int64_t w = 0; w < ntok / c->seqlen; w++) {
    c->be->syrk(n, c->seqlen, 1.0f, X + w * c->seqlen * cols, cols, 0.0f, c->tmp, n);
    const float *t = c->tmp;
    if (c->be->on_device) {
      c->be->download(c->tmp_h, c->tmp, (size_t)n * (size_t)n * sizeof(float));
      t = c->tmp_h;
    }
    double *acc = c->acc;
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = i; j < n; j++) acc[i * n + j] += (double)t[i * n + j];
  }
  c->count += ntok;
  return 1;
}

/* Linears of a group, in order. */
static int group_linears(enum hq_group g, enum hq_linear *out) {
  int n = 0;
  for (int l = 0; l < HQ_LIN_COUNT; l++)
    if (hq_linear_group((enum hq_linear)l) == g) out[n++] = (enum hq_linear)l;
  return n;
}

enum { PH_FORWARD, PH_HESSIAN, PH_ALLREDUCE, PH_CHOL, PH_GPTQ, PH_STATS, PH_GATHER, PH_WRITE, PH_COUNT };
static const char *const phase_names[PH_COUNT] = {"forward", "hessian", "allreduce", "cholesky",
                                                  "gptq",    "stats",   "gather",    "write"};

struct run {
  const struct hq_comm *comm;
  const struct hq_quant_opts *o;
  const struct hq_backend *be;
  struct hq_model model;
  struct hq_plan plan;
  struct hq_h5 *h5;
  int64_t seqlen, nloc;     /* local windows */
  int32_t *ids;             /* [nloc x seqlen] local calibration windows */
  float *x;                 /* [nloc*seqlen x hidden] backend memory: current block input */
  struct hq_rope_table rope;
  struct hq_fwd_ws *ws;
  int64_t batch;            /* windows per forward call */
  double phase[PH_COUNT];   /* this block's seconds per phase (this rank) */
  double total_phase[PH_COUNT];
};

static void lin_fullname(char *buf, size_t n, int64_t b, enum hq_linear l) {
  snprintf(buf, n, "model.layers.%lld.%s", (long long)b, hq_linear_name(l));
}

/* Forward all local windows through the block; stop at `capture` if given. */
static void forward_local(struct run *R, const struct hq_block_dev *dev, hq_capture_fn cap,
                          void *ctx) {
  const struct hq_model_config *c = &R->model.cfg;
  for (int64_t w = 0; w < R->nloc; w += R->batch) {
    int64_t nb = R->nloc - w < R->batch ? R->nloc - w : R->batch;
    hq_forward_block(R->be, c, dev, &R->rope, R->ws, nb, R->seqlen,
                     R->x + w * R->seqlen * c->hidden, cap, ctx);
  }
  R->be->sync();
}

/* ---- SmoothQuant: per-channel max |X_j| of a group's input (activation quantization off) ---- */
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
 * all ranks' calibration windows (all-reduce MAX), in bw. Collective. */
static int smooth_group(struct run *R, enum hq_group g, struct hq_block_weights *bw) {
  const struct hq_model_config *c = &R->model.cfg;
  const int64_t H = c->hidden;
  struct amax_ctx ac = {R->be, g, calloc((size_t)H, sizeof(double))};
  float *am = malloc((size_t)H * sizeof(float));
  struct hq_block_dev dev;
  memset(&dev, 0, sizeof dev);
  int rc = ac.amax && am ? HQ_OK : hq_fail(HQ_ERR_NOMEM, "smoothing: out of memory");
  if (!rc) rc = hq_block_dev_upload(R->be, c, bw, &dev);
  rc = hq_comm_agree(R->comm, rc);
  if (!rc) {
    const double t = hq_now();
    const int ab = hq_fwd_ws_act_bits(R->ws);
    hq_fwd_ws_set_act_bits(R->ws, 0); /* maxima of the unquantized activations */
    forward_local(R, &dev, cap_amax, &ac);
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

/* Quantize one input group of block b: Hessian, GPTQ/RTN/HQQ of the owned rows, gather, write. */
static int do_group(struct run *R, int64_t b, enum hq_group g, struct hq_block_weights *bw) {
  const struct hq_model_config *c = &R->model.cfg;
  const struct hq_comm *cm = R->comm;
  const struct hq_quant_opts *o = R->o;
  enum hq_linear lins[4];
  int nl = group_linears(g, lins);
  int64_t rows_l[4], cols = 0;
  for (int i = 0; i < nl; i++) hq_linear_shape(c, lins[i], &rows_l[i], &cols);
  int rc = HQ_OK;
  double t;

  /* 0. smoothing of the norm feeding this group (before its Hessian and quantization) */
  if ((o->equalize & HQ_EQ_SMOOTH) && (g == HQ_GROUP_QKV || g == HQ_GROUP_GATEUP)) {
    rc = smooth_group(R, g, bw);
    if (rc) return rc;
  }

  /* 1. Hessian of the group's input (GPTQ, --scale-from-hessian) */
  float *H = NULL;
  if (need_hessian(o)) {
    size_t nn = (size_t)cols * (size_t)cols;
    struct cap_ctx cc = {R->be, g, cols, R->seqlen, R->be->alloc(nn * sizeof(float)),
                         R->be->on_device ? malloc(nn * sizeof(float)) : NULL,
                         calloc(nn, sizeof(double)), 0};
    H = malloc(nn * sizeof(float));
    rc = (cc.tmp && cc.acc && H && (cc.tmp_h || !R->be->on_device))
             ? HQ_OK
             : hq_fail(HQ_ERR_NOMEM, "cannot allocate the %lld x %lld Hessian (fp64 sum); use a "
                       "machine with more memory per rank", (long long)cols, (long long)cols);
    struct hq_block_dev dev;
    memset(&dev, 0, sizeof dev);
    if (!rc) rc = hq_block_dev_upload(R->be, c, bw, &dev);
    rc = hq_comm_agree(cm, rc);
    if (!rc) {
      t = hq_now();
      forward_local(R, &dev, cap_hessian, &cc);
      R->phase[PH_HESSIAN] += hq_now() - t; /* forward up to the group + XᵀX */
      /* only the upper triangle is summed: pack it row by row to the front of acc (in place:
       * the packed index never exceeds the full one) and all-reduce half the bytes */
      int64_t k = 0;
      for (int64_t i = 0; i < cols; i++)
        for (int64_t j = i; j < cols; j++) cc.acc[k++] = cc.acc[i * cols + j];
      t = hq_now();
      hq_comm_allreduce_f64(cm, cc.acc, k);
      hq_comm_allreduce_i64(cm, &cc.count, 1);
      R->phase[PH_ALLREDUCE] += hq_now() - t;
      /* H = 2/N Σ x xᵀ (N = tokens), symmetric, rounded to fp32 once */
      const double f = cc.count ? 2.0 / (double)cc.count : 0.0;
      k = 0;
      for (int64_t i = 0; i < cols; i++)
        for (int64_t j = i; j < cols; j++, k++)
          H[i * cols + j] = H[j * cols + i] = (float)(cc.acc[k] * f);
    }
    hq_block_dev_free(R->be, &dev);
    if (cc.tmp) R->be->free(cc.tmp);
    free(cc.tmp_h);
    free(cc.acc);
    if (rc) {
      free(H);
      return rc;
    }
  }

  /* 2. Stack the rows this rank owns of the group's linears and quantize them at once */
  int64_t my0[4], myn[4], nrows = 0;
  for (int i = 0; i < nl; i++) {
    struct hq_row_range rr = R->plan.rows[lins[i]][cm->rank];
    my0[i] = rr.begin;
    myn[i] = rr.end - rr.begin;
    nrows += myn[i];
  }
  float *W = malloc((size_t)(nrows ? nrows : 1) * (size_t)cols * sizeof(float));
  float *W0 = malloc((size_t)(nrows ? nrows : 1) * (size_t)cols * sizeof(float));
  struct hq_gptq_result res;
  memset(&res, 0, sizeof res);
  rc = (W && W0) ? HQ_OK : hq_fail(HQ_ERR_NOMEM, "cannot allocate %lld x %lld weights", (long long)nrows, (long long)cols);
  if (!rc) {
    int64_t off = 0;
    for (int i = 0; i < nl; i++) {
      memcpy(W + off * cols, bw->lin[lins[i]] + my0[i] * cols, (size_t)myn[i] * (size_t)cols * sizeof(float));
      off += myn[i];
    }
    memcpy(W0, W, (size_t)nrows * (size_t)cols * sizeof(float));
  }
  double loss[4][3];
  memset(loss, 0, sizeof loss);
  double damp_abs = 0, loss_ref = 0;
  int64_t dead = 0;
  if (!rc && nrows > 0) {
    t = hq_now();
    if (o->method == HQ_METHOD_GPTQ) {
      rc = o->scale_from_hessian ? hq_gptq_quantize_hscale(R->be, &o->g, nrows, cols, W, H, 0, &res)
                                 : hq_gptq_quantize(R->be, &o->g, nrows, cols, W, H, 0, &res);
      if (!rc) {
        R->phase[PH_CHOL] += res.t_chol;
        R->phase[PH_GPTQ] += res.t_quant;
        damp_abs = res.damp_abs;
        loss_ref = res.loss_ref;
        dead = res.dead_cols;
      }
    } else if (o->method == HQ_METHOD_HQQ) {
      rc = hq_hqq_quantize(&o->g, &o->hqq, nrows, cols, W, &res, NULL);
      R->phase[PH_GPTQ] += hq_now() - t;
    } else {
      rc = o->scale_from_hessian ? hq_rtn_quantize_hscale(R->be, &o->g, nrows, cols, W, H, &res)
                                 : hq_rtn_quantize(R->be, &o->g, nrows, cols, W, NULL, &res);
      R->phase[PH_GPTQ] += hq_now() - t;
    }
    if (rc) hq_fail_ctx(rc, "block %lld %s: ", (long long)b, hq_linear_name(lins[0]));
  }
  /* per-linear proxy losses of GPTQ and of RTN on the same grid (statistics phase) */
  if (!rc && nrows > 0 && H) {
    t = hq_now();
    float *D = malloc((size_t)nrows * (size_t)cols * sizeof(float));
    float *Wr = malloc((size_t)nrows * (size_t)cols * sizeof(float));
    if (!D || !Wr) rc = hq_fail(HQ_ERR_NOMEM, "cannot allocate statistics buffers");
    int64_t off = 0;
    for (int i = 0; i < nl && !rc; i++) {
      int64_t n = myn[i];
      if (n == 0) continue;
      const float *a = W0 + off * cols, *q = W + off * cols;
      for (int64_t k = 0; k < n * cols; k++) D[k] = a[k] - q[k];
      loss[i][0] = hq_proxy_loss(R->be, n, cols, D, H);
      memcpy(Wr, a, (size_t)(n * cols) * sizeof(float));
      struct hq_gptq_result rr;
      memset(&rr, 0, sizeof rr);
      rc = hq_rtn_quantize(R->be, &o->g, n, cols, Wr, H, &rr);
      loss[i][1] = rr.loss_proxy;
      hq_gptq_result_free(&rr);
      off += n;
    }
    free(D);
    free(Wr);
    R->phase[PH_STATS] += hq_now() - t;
  }
  /* HQQ: mean absolute reconstruction error of HQQ and of RTN on the same grid, per linear */
  double l1[4][2];
  memset(l1, 0, sizeof l1);
  if (!rc && nrows > 0 && o->method == HQ_METHOD_HQQ) {
    t = hq_now();
    float *Wr = malloc((size_t)nrows * (size_t)cols * sizeof(float));
    if (!Wr) rc = hq_fail(HQ_ERR_NOMEM, "cannot allocate statistics buffers");
    int64_t off = 0;
    for (int i = 0; i < nl && !rc; i++) {
      const int64_t n = myn[i];
      if (n == 0) continue;
      const float *a = W0 + off * cols, *q = W + off * cols;
      memcpy(Wr, a, (size_t)(n * cols) * sizeof(float));
      struct hq_gptq_result rr;
      memset(&rr, 0, sizeof rr);
      struct hq_gptq_opts ro = o->g;
      ro.mse = 0;
      rc = hq_rtn_quantize(R->be, &ro, n, cols, Wr, NULL, &rr);
      hq_gptq_result_free(&rr);
      for (int64_t k = 0; k < n * cols && !rc; k++) {
        l1[i][0] += fabs((double)a[k] - (double)q[k]);
        l1[i][1] += fabs((double)a[k] - (double)Wr[k]);
      }
      off += n;
    }
    free(Wr);
    R->phase[PH_STATS] += hq_now() - t;
  }
  free(H);
  rc = hq_comm_agree(cm, rc);
  if (rc) goto out;

  /* 3. All-gather the dequantized rows: every rank holds the quantized block */
  t = hq_now();
  {
    int64_t off = 0;
    for (int i = 0; i < nl; i++) {
      size_t *bytes = malloc((size_t)cm->size * sizeof(size_t));
      for (int r = 0; r < cm->size; r++) {
        struct hq_row_range rr = R->plan.rows[lins[i]][r];
        bytes[r] = (size_t)(rr.end - rr.begin) * (size_t)cols * sizeof(float);
      }
      hq_comm_allgatherv(cm, W + off * cols, bw->lin[lins[i]], bytes);
      free(bytes);
      off += myn[i];
    }
  }
  R->phase[PH_GATHER] += hq_now() - t;

  /* 4. Pack and write this rank's rows of every linear, and the statistics */
  t = hq_now();
  {
    int64_t ngroups = res.ngroups > 0 ? res.ngroups
                      : (o->g.group_size > 0 ? (cols + o->g.group_size - 1) / o->g.group_size : 1);
    int64_t off = 0;
    double sums[4 * 3 + 2];
    for (int i = 0; i < nl; i++) {
      sums[3 * i] = loss[i][0];
      sums[3 * i + 1] = loss[i][1];
      sums[3 * i + 2] = 0;
    }
    sums[3 * nl] = loss_ref;
    sums[3 * nl + 1] = (double)nrows;
    hq_comm_allreduce_f64(cm, sums, 3 * nl + 2);
    if (o->method == HQ_METHOD_HQQ) hq_comm_allreduce_f64(cm, &l1[0][0], 8);
    double dmax = damp_abs, ddead = (double)dead;
    hq_comm_allreduce_max_f64(cm, &dmax, 1);
    hq_comm_allreduce_max_f64(cm, &ddead, 1);
    double ph[PH_COUNT];
    memcpy(ph, R->phase, sizeof ph);
    hq_comm_allreduce_max_f64(cm, ph, PH_COUNT);
    for (int i = 0; i < nl; i++) {
      char name[256];
      lin_fullname(name, sizeof name, b, lins[i]);
      struct hq_h5_linear_desc d = {rows_l[i], cols, o->g.bits, o->g.group_size > 0 ? o->g.group_size : -1,
                                    ngroups, HQ_PACK_GPTQ_V2};
      rc = hq_h5_linear_create(R->h5, name, &d);
      if (rc) goto out;
      struct hq_packed p;
      memset(&p, 0, sizeof p);
      int lrc = HQ_OK;
      int have = myn[i] > 0;
      if (have) {
        lrc = hq_pack_init(&p, o->g.bits, HQ_PACK_GPTQ_V2, cols, rows_l[i], ngroups, my0[i], myn[i]);
        if (!lrc)
          lrc = hq_pack_encode(&p, res.codes + off * cols, res.zeros + off * ngroups,
                               res.scales + off * ngroups, res.g_idx);
        if (lrc) hq_fail_ctx(lrc, "packing %s: ", name);
      }
      rc = hq_comm_agree(cm, lrc);
      if (rc) {
        hq_pack_free(&p);
        goto out;
      }
      rc = hq_h5_linear_write(R->h5, name, have ? &p : NULL);
      hq_pack_free(&p);
      if (rc) goto out;
      int64_t *owner = malloc((size_t)cm->size * sizeof(int64_t));
      for (int r = 0; r < cm->size; r++)
        owner[r] = R->plan.rows[lins[i]][r].end - R->plan.rows[lins[i]][r].begin;
      struct hq_h5_linear_stats st = {
          .loss_proxy_gptq = need_hessian(o) ? sums[3 * i] : NAN, /* of the method used */
          .loss_proxy_rtn = need_hessian(o) ? sums[3 * i + 1] : NAN,
          .loss_ref = o->method == HQ_METHOD_GPTQ ? sums[3 * nl] : NAN, /* of the whole group */
          .damp_used = dmax,
          .dead_cols = (int64_t)ddead,
          .nphases = PH_COUNT,
          .phase_names = phase_names,
          .phase_seconds = ph,
          .owner_rows = owner,
          .nranks = cm->size};
      rc = hq_h5_linear_stats(R->h5, name, &st);
      free(owner);
      if (rc) goto out;
      if (o->method == HQ_METHOD_HQQ) {
        char obj[300];
        snprintf(obj, sizeof obj, "/linears/%s", name);
        const double numel = (double)rows_l[i] * (double)cols;
        rc = hq_h5_attr_set_f64(R->h5, obj, "hqq_mean_abs_error", l1[i][0] / numel);
        if (!rc) rc = hq_h5_attr_set_f64(R->h5, obj, "rtn_mean_abs_error", l1[i][1] / numel);
        if (rc) goto out;
      }
      off += myn[i];
    }
  }
  R->phase[PH_WRITE] += hq_now() - t;

out:
  hq_gptq_result_free(&res);
  free(W);
  free(W0);
  return rc;
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
    lin_fullname(name, sizeof name, b, (enum hq_linear)l);
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
    fprintf(f, "%s\"%s\": %.6f", p ? ", " : "", phase_names[p], R->total_phase[p]);
  fprintf(f, "}, \"phases_max\": {");
  for (int p = 0; p < PH_COUNT; p++)
    fprintf(f, "%s\"%s\": %.6f", p ? ", " : "", phase_names[p], phase_max[p]);
  fprintf(f, "}}\n");
  fclose(f);
}

int hq_quantize_run(const struct hq_comm *comm, const struct hq_quant_opts *o) {
  struct run R;
  memset(&R, 0, sizeof R);
  R.comm = comm;
  R.o = o;
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
  if (!rc && o->act_bits && !need_hessian(o))
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
        rc = do_group(&R, b, (enum hq_group)g, &bw);
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
      forward_local(&R, &dev, NULL, NULL);
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
