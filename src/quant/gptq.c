/* GPTQ and round-to-nearest for one linear layer (docs/readme/gptq.md), written
 * once against the backend interface (backend.h).
 *
 * Data flow:
 *   hq_gptq_prepare (once per Hessian): check finite → dead columns (H[i,i] = 0 → 1) →
 *         act-order permutation → damping (+ automatic raises) on a host copy → backend:
 *         upper Cholesky factor U of H⁻¹
 *   hq_gptq_solve (per block of rows): per-channel params (from W as given, as the
 *         reference) → W[:, dead] = 0 → static group params (unpermuted W) → permute W →
 *         backend: blocked GPTQ (fused inner block per segment of columns with fixed
 *         parameters, one GEMM per block for the lazy update) → host: undo the permutation,
 *         groups/g_idx.
 *   statistics: proxy losses by GEMM, per row (hq_proxy_loss_rows).
 *
 * Dynamic groups are computed when the loop reaches the group's first (permuted) column on
 * the fully updated weights: when that group reaches past the end of the current block, the
 * pending lazy update of the block's already-processed columns is applied to the group's
 * columns first (and excluded from the block's final GEMM), so the result is the unblocked
 * algorithm's for any block size / group size combination. */
#include "gptq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "hessian.h"
#include "util.h"

struct hq_gptq_opts hq_gptq_opts_default(void) {
  return (struct hq_gptq_opts){
      .bits = 4, .group_size = -1, .sym = 0, .mse = 0, .act_order = 0, .static_groups = 0,
      .percdamp = 0.01f, .block_size = 128, .damp_retries = 6, .hscale = 0};
}

int hq_gptq_opts_check(const struct hq_gptq_opts *o, int64_t cols) {
  if (!(o->bits == 2 || o->bits == 3 || o->bits == 4 || o->bits == 8))
    return hq_fail(HQ_ERR_INPUT, "bits must be 2, 3, 4 or 8, got %d", o->bits);
  if (cols < 1) return hq_fail(HQ_ERR_INPUT, "a layer needs at least one input column, got %lld", (long long)cols);
  if (o->group_size > INT32_MAX)
    return hq_fail(HQ_ERR_INPUT, "group size %lld is too large (use -1 for per-channel)", (long long)o->group_size);
  if (!(o->percdamp > 0.0f) || !isfinite(o->percdamp))
    return hq_fail(HQ_ERR_INPUT, "damping (percdamp) must be a positive number, got %g", (double)o->percdamp);
  if (o->block_size < 1)
    return hq_fail(HQ_ERR_INPUT, "GPTQ block size must be >= 1, got %d (default 128)", o->block_size);
  if (o->damp_retries < 0 || o->damp_retries > 30)
    return hq_fail(HQ_ERR_INPUT, "damping retries must be in [0, 30], got %d", o->damp_retries);
  return HQ_OK;
}

void hq_gptq_result_free(struct hq_gptq_result *res) {
  if (!res) return;
  free(res->codes);
  free(res->scales);
  free(res->zeros);
  free(res->g_idx);
  free(res->perm);
  free(res->row_loss_ref);
  memset(res, 0, sizeof *res);
}

/* ------------------------------------------------------------------ helpers */

static int64_t ngroups_of(int64_t cols, int64_t gs) { return gs > 0 ? (cols + gs - 1) / gs : 1; }

int hq_check_finite(const char *what, const float *A, int64_t rows, int64_t cols,
                    const char *advice) {
  int64_t nbad = 0;
#pragma omp parallel for schedule(static) reduction(+ : nbad) if (rows * cols > 65536)
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) nbad += !isfinite(A[r * cols + c]);
  if (nbad == 0) return HQ_OK;
  int64_t first = 0;
  while (isfinite(A[first])) first++;
  return hq_fail(HQ_ERR_INPUT, "%s[%lld, %lld] is %s (%lld non-finite values in all); %s", what,
                 (long long)(first / cols), (long long)(first % cols),
                 isnan(A[first]) ? "NaN" : "Inf", (long long)nbad, advice);
}

struct perm_key {
  float d;
  int32_t i;
};
static int perm_cmp(const void *a, const void *b) {
  const struct perm_key *x = a, *y = b;
  if (x->d > y->d) return -1;
  if (x->d < y->d) return 1;
  return x->i < y->i ? -1 : (x->i > y->i);
}

int hq_act_order_perm(const float *H, int64_t cols, int32_t *perm) {
  /* small; a team member must not fail here alone (the others would wait for it) */
  struct perm_key *keys = hq_xmalloc((size_t)cols * sizeof *keys);
  for (int64_t j = 0; j < cols; j++) {
    const float d = H[j * cols + j];
    keys[j].d = d == 0.0f ? 1.0f : d; /* dead columns as GPTQ fixes them */
    keys[j].i = (int32_t)j;
  }
  qsort(keys, (size_t)cols, sizeof *keys, perm_cmp);
  for (int64_t j = 0; j < cols; j++) perm[j] = keys[j].i;
  free(keys);
  return HQ_OK;
}

/* In place, per row: W[r, j] <- W[r, idx[j]] (gather) or W[r, idx[j]] <- W[r, j] (scatter). */
static int permute_rows_f32(float *W, int64_t rows, int64_t cols, const int32_t *idx, int scatter) {
  int fail = 0;
#pragma omp parallel reduction(| : fail)
  {
    float *tmp = malloc((size_t)cols * sizeof(float));
    if (!tmp) fail = 1;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
      if (!tmp) continue;
      float *w = W + r * cols;
      memcpy(tmp, w, (size_t)cols * sizeof(float));
      if (scatter)
        for (int64_t j = 0; j < cols; j++) w[idx[j]] = tmp[j];
      else
        for (int64_t j = 0; j < cols; j++) w[j] = tmp[idx[j]];
    }
    free(tmp);
  }
  return fail ? hq_fail(HQ_ERR_NOMEM, "out of memory permuting a %lld-column weight matrix",
                        (long long)cols)
              : HQ_OK;
}

/* Rows of T = D_chunk · H, per-row Σ_k T ⊙ D in column order; chunks bound the workspace.
 * The rows are few (a rank's share of a layer's sampled rows): tiles of HQ_PROXY_TM rows, not
 * gemm_rows' 256, which would compute mostly zero padding. */
#ifndef HQ_PROXY_TM
#define HQ_PROXY_TM 64
#endif
void hq_proxy_loss_rows(const struct hq_backend *be, int64_t row0, int64_t rows, int64_t cols,
                        const float *D, const float *H, double *out) {
  if (rows <= 0 || cols <= 0) return;
  int64_t chunk = rows;
  const int64_t max_ws = (int64_t)1 << 24; /* floats (64 MB) */
  if (chunk * cols > max_ws) chunk = max_ws / cols > 0 ? max_ws / cols : 1;
  const size_t tbytes = (size_t)chunk * (size_t)cols * sizeof(float);
  float *T = hq_xmalloc(tbytes);
  float *dT = NULL, *dD = NULL, *dH = NULL;
  if (be->on_device) {
    dT = be->alloc(tbytes);
    dD = be->alloc(tbytes);
    dH = be->alloc((size_t)cols * (size_t)cols * sizeof(float));
    if (!dT || !dD || !dH) HQ_DIE("out of device memory for the proxy-loss workspace");
    be->upload(dH, H, (size_t)cols * (size_t)cols * sizeof(float));
  }
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t nr = rows - r0 < chunk ? rows - r0 : chunk;
    const float *Dc = D + r0 * cols;
    if (be->on_device) {
      be->upload(dD, Dc, (size_t)nr * (size_t)cols * sizeof(float));
      be->gemm_rows(row0 + r0, 0, 0, 0, nr, cols, cols, 1.0f, dD, cols, dH, cols, 0.0f, dT, cols);
      be->download(T, dT, (size_t)nr * (size_t)cols * sizeof(float));
    } else {
      be->gemm_rows(row0 + r0, -HQ_PROXY_TM, 0, 0, nr, cols, cols, 1.0f, Dc, cols, H, cols, 0.0f,
                    T, cols);
    }
#pragma omp parallel for schedule(static) if (nr * cols > 65536)
    for (int64_t r = 0; r < nr; r++) {
      double acc = 0.0;
      for (int64_t k = 0; k < cols; k++) acc += (double)T[r * cols + k] * (double)Dc[r * cols + k];
      out[r0 + r] = acc;
    }
  }
  free(T);
  if (be->on_device) {
    be->free(dT);
    be->free(dD);
    be->free(dH);
  }
}

void hq_gptq_proxy_rows(const struct hq_gptq_prep *p, const double *row_loss_ref, int64_t rows,
                        const float *W0, const float *Q, double *out) {
  const int64_t cols = p->cols;
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t r = 0; r < rows; r++) {
    double d2 = 0.0;
    for (int64_t j = 0; j < cols; j++) {
      const double d = p->dead[j] ? 0.0 : (double)W0[r * cols + j] - (double)Q[r * cols + j];
      d2 += d * d;
    }
    out[r] = 2.0 * row_loss_ref[r] - p->damp_abs * d2;
  }
}

double hq_proxy_loss(const struct hq_backend *be, int64_t rows, int64_t cols, const float *D,
                     const float *H) {
  if (rows <= 0 || cols <= 0) return 0.0;
  double *r = hq_xmalloc((size_t)rows * sizeof(double));
  hq_proxy_loss_rows(be, 0, rows, cols, D, H, r);
  double s = 0.0;
  for (int64_t i = 0; i < rows; i++) s += r[i];
  free(r);
  return s;
}

int hq_gptq_result_alloc(struct hq_gptq_result *res, int64_t rows, int64_t cols, int64_t ngroups) {
  memset(res, 0, sizeof *res);
  res->rows = rows;
  res->cols = cols;
  res->ngroups = ngroups;
  res->codes = malloc((size_t)rows * (size_t)cols + 1);
  res->scales = malloc((size_t)rows * (size_t)ngroups * sizeof(float) + 1);
  res->zeros = malloc((size_t)rows * (size_t)ngroups * sizeof(float) + 1);
  res->g_idx = malloc((size_t)cols * sizeof(int32_t));
  res->perm = malloc((size_t)cols * sizeof(int32_t));
  if (!res->codes || !res->scales || !res->zeros || !res->g_idx || !res->perm) {
    hq_gptq_result_free(res);
    return hq_fail(HQ_ERR_NOMEM, "out of memory for the result of a %lld x %lld layer",
                   (long long)rows, (long long)cols);
  }
  res->loss_proxy = res->loss_proxy_rtn = res->loss_ref = NAN;
  res->damp_used = res->damp_abs = NAN;
  return HQ_OK;
}

/* [ngroups x rows] (group-major, as computed) -> [rows x ngroups] */
static void transpose_params(const float *gm, int64_t ngroups, int64_t rows, float *out) {
  for (int64_t g = 0; g < ngroups; g++)
    for (int64_t r = 0; r < rows; r++) out[r * ngroups + g] = gm[g * rows + r];
}

/* The backend's parameter arrays [ngroups x rows] into res (rows x ngroups). */
static void download_params(const struct hq_backend *be, const float *dS, const float *dZ,
                            struct hq_gptq_result *res) {
  const int64_t rows = res->rows, ng = res->ngroups;
  float *tmp = hq_xmalloc((size_t)rows * (size_t)ng * sizeof(float) + 1);
  be->download(tmp, dS, (size_t)rows * (size_t)ng * sizeof(float));
  transpose_params(tmp, ng, rows, res->scales);
  be->download(tmp, dZ, (size_t)rows * (size_t)ng * sizeof(float));
  transpose_params(tmp, ng, rows, res->zeros);
  free(tmp);
}

/* diag(H) as per-column weights of --scale-from-hessian, in backend memory (NULL on failure) */
static float *upload_diag(const struct hq_backend *be, const float *H, int64_t cols,
                          const int32_t *perm) {
  float *d = hq_xmalloc((size_t)cols * sizeof(float));
  for (int64_t j = 0; j < cols; j++) {
    const int64_t c = perm ? perm[j] : j;
    d[j] = H[c * cols + c];
  }
  float *dd = be->alloc((size_t)cols * sizeof(float));
  if (dd) be->upload(dd, d, (size_t)cols * sizeof(float));
  free(d);
  return dd;
}

/* ------------------------------------------------------------------ RTN */

void hq_gptq_result_plain_groups(struct hq_gptq_result *res, int64_t group_size) {
  for (int64_t c = 0; c < res->cols; c++) {
    res->g_idx[c] = (int32_t)(group_size > 0 ? c / group_size : 0);
    res->perm[c] = (int32_t)c;
  }
}

/* RTN's buffers: the host copy W0 of W (only with H, for the proxy loss) and backend memory for
 * W [rows x cols], the codes, the group-major parameters [ngroups x rows] and, with hscale, the
 * per-column weights diag(H) [cols]. */
struct rtn_ws {
  float *W0, *dW, *dS, *dZ, *colw;
  uint8_t *dC;
};

static int rtn_ws_alloc(const struct hq_backend *be, const struct hq_gptq_opts *o, int64_t rows,
                        int64_t cols, int64_t ngroups, const float *H, struct rtn_ws *w) {
  const size_t wbytes = (size_t)rows * (size_t)cols * sizeof(float);
  w->W0 = H ? malloc(wbytes + 1) : NULL;
  w->dW = be->alloc(wbytes);
  w->dC = be->alloc((size_t)rows * (size_t)cols);
  w->dS = be->alloc((size_t)rows * (size_t)ngroups * sizeof(float));
  w->dZ = be->alloc((size_t)rows * (size_t)ngroups * sizeof(float));
  w->colw = o->hscale ? upload_diag(be, H, cols, NULL) : NULL;
  if ((H && !w->W0) || !w->dW || !w->dC || !w->dS || !w->dZ || (o->hscale && !w->colw))
    return hq_fail(HQ_ERR_NOMEM, "out of %s memory for RTN of a %lld x %lld layer", be->name,
                   (long long)rows, (long long)cols);
  return HQ_OK;
}

static void rtn_ws_free(const struct hq_backend *be, struct rtn_ws *w) {
  if (w->dW) be->free(w->dW);
  if (w->dC) be->free(w->dC);
  if (w->dS) be->free(w->dS);
  if (w->dZ) be->free(w->dZ);
  if (w->colw) be->free(w->colw);
  free(w->W0);
}

/* Keep W in W0 (when kept), quantize W group by group on the backend; W becomes the
 * dequantized weights, res gets codes, scales and zeros. */
static void rtn_run(const struct hq_backend *be, const struct hq_gptq_opts *o, int64_t rows,
                    int64_t cols, float *W, const struct rtn_ws *w, struct hq_gptq_result *res) {
  const int64_t gs = o->group_size > 0 ? o->group_size : cols, ngroups = res->ngroups;
  const struct hq_grid g = hq_grid_make(o->bits, o->sym, o->mse);
  const size_t wbytes = (size_t)rows * (size_t)cols * sizeof(float);
  if (w->W0) memcpy(w->W0, W, wbytes);
  be->upload(w->dW, W, wbytes);
  for (int64_t k = 0; k < ngroups; k++) {
    int64_t c0 = k * gs, n = cols - c0 < gs ? cols - c0 : gs;
    be->quant_params(g, rows, n, w->dW + c0, cols, w->colw ? w->colw + c0 : NULL,
                     w->dS + k * rows, w->dZ + k * rows);
    be->rtn_cols(g, rows, n, w->dW + c0, cols, w->dS + k * rows, w->dZ + k * rows, w->dC + c0,
                 cols);
  }
  be->sync();
  be->download(W, w->dW, wbytes);
  be->download(res->codes, w->dC, (size_t)rows * (size_t)cols);
  download_params(be, w->dS, w->dZ, res);
}

int hq_rtn_quantize(const struct hq_backend *be, const struct hq_gptq_opts *o, int64_t rows,
                    int64_t cols, float *W, const float *H, struct hq_gptq_result *res) {
  HQ_TRY(hq_gptq_opts_check(o, cols));
  HQ_TRY(hq_check_finite("W", W, rows, cols, "the layer's weights are corrupt (check the checkpoint)"));
  HQ_TRY(hq_grid_check_fp16(o, W, rows, cols));
  if (o->hscale && !H) return hq_fail(HQ_ERR_INPUT, "--scale-from-hessian needs the Hessian (calibration data)");
  HQ_TRY(hq_gptq_result_alloc(res, rows, cols, ngroups_of(cols, o->group_size)));
  double t0 = hq_now();
  struct rtn_ws w = {0};
  int rc = rtn_ws_alloc(be, o, rows, cols, res->ngroups, H, &w);
  if (rc == HQ_OK) {
    rtn_run(be, o, rows, cols, W, &w, res);
    hq_gptq_result_plain_groups(res, o->group_size);
    res->t_quant = hq_now() - t0;
  }
  if (rc == HQ_OK && H) {
    double t1 = hq_now();
    for (int64_t k = 0; k < rows * cols; k++) w.W0[k] -= W[k];
    res->loss_proxy = res->loss_proxy_rtn = hq_proxy_loss(be, rows, cols, w.W0, H);
    res->t_stats = hq_now() - t1;
  }
  rtn_ws_free(be, &w);
  if (rc != HQ_OK) hq_gptq_result_free(res);
  return rc;
}

/* ------------------------------------------------------------------ GPTQ: prepare */

#define H_ADVICE "the calibration activations overflowed or are corrupt (check the calibration " \
                 "tokens and the forward of the previous blocks)"

void hq_gptq_prep_free(const struct hq_backend *be, struct hq_gptq_prep *p) {
  if (p->U && !p->U_borrowed) be->free(p->U);
  if (p->colw) be->free(p->colw);
  if (p->colw_p) be->free(p->colw_p);
  free(p->perm);
  free(p->dead);
  memset(p, 0, sizeof *p);
}

static int not_pd(const struct hq_gptq_opts *o, const struct hq_gptq_prep *p, int info) {
  return hq_fail(HQ_ERR_NUMERIC, "the Hessian is not positive definite even with damping %g (raised "
                 "%d times x10 from %g; LAPACK info %d); check the calibration data or raise --damp "
                 "/ --damp-retries", p->damp_used, o->damp_retries, (double)o->percdamp, info);
}

/* U = factor of (H[perm][:, perm] + damp I)⁻¹ with damping raised x10 until the Cholesky
 * succeeds; each try stages the permuted, dead-fixed H afresh (the inverse overwrites it). */
static int damped_factor(const struct hq_backend *be, const struct hq_gptq_opts *o,
                         const float *H, const float *diag0, double mean,
                         struct hq_gptq_prep *p) {
  const int64_t cols = p->cols;
  const size_t hbytes = (size_t)cols * (size_t)cols * sizeof(float);
  float *Hs = be->on_device ? malloc(hbytes) : p->U;
  if (!Hs) return hq_fail(HQ_ERR_NOMEM, "out of host memory staging a %lld-wide Hessian", (long long)cols);
  double pd = o->percdamp;
  int info = 1;
  for (int t = 0; t <= o->damp_retries; t++, pd *= 10.0) {
    const float damp = (float)(pd * mean);
#pragma omp parallel for schedule(static) if (cols > 256)
    for (int64_t i = 0; i < cols; i++) {
      const float *src = H + (int64_t)p->perm[i] * cols;
      float *dst = Hs + i * cols;
      if (o->act_order)
        for (int64_t j = 0; j < cols; j++) dst[j] = src[p->perm[j]];
      else
        memcpy(dst, src, (size_t)cols * sizeof(float));
      dst[i] = diag0[i] + damp;
    }
    if (be->on_device) be->upload(p->U, Hs, hbytes);
    info = be->chol_inverse_upper(cols, p->U, cols);
    p->damp_used = pd;
    p->damp_abs = damp;
    if (info == 0) break;
  }
  if (be->on_device) free(Hs);
  return info == 0 ? HQ_OK : not_pd(o, p, info);
}

/* hscale: diag(H) in original and in processing order, in backend memory (p->colw, colw_p) */
static int prep_diag(const struct hq_backend *be, const float *H, struct hq_gptq_prep *p) {
  p->colw = upload_diag(be, H, p->cols, NULL);
  p->colw_p = upload_diag(be, H, p->cols, p->perm);
  if (!p->colw || !p->colw_p)
    return hq_fail(HQ_ERR_NOMEM, "out of %s memory for the Hessian diagonal", be->name);
  return HQ_OK;
}

/* Dead columns (H[i,i] == 0), the processing order (act-order: descending diag), the diagonal
 * in that order (dead ones 1) as diag0 and its mean. */
static int order_columns(const struct hq_gptq_opts *o, int64_t cols, const float *H,
                         struct hq_gptq_prep *p, float *diag0, double *mean) {
  for (int64_t i = 0; i < cols; i++) {
    p->perm[i] = (int32_t)i;
    p->dead[i] = H[i * cols + i] == 0.0f;
    p->dead_cols += p->dead[i];
  }
  if (o->act_order) HQ_TRY(hq_act_order_perm(H, cols, p->perm));
  double m = 0.0;
  for (int64_t i = 0; i < cols; i++) {
    const int64_t c = p->perm[i];
    diag0[i] = p->dead[c] ? 1.0f : H[c * cols + c];
    m += diag0[i];
  }
  *mean = m / (double)cols;
  if (!(*mean > 0.0))
    return hq_fail(HQ_ERR_NUMERIC, "the Hessian's mean diagonal is %g (not positive): it is not "
                   "a sum of x xᵀ; check the calibration activations", *mean);
  return HQ_OK;
}

int hq_gptq_prepare(const struct hq_backend *be, const struct hq_gptq_opts *o, int64_t cols,
                    const float *H, struct hq_gptq_prep *p) {
  memset(p, 0, sizeof *p);
  HQ_TRY(hq_gptq_opts_check(o, cols));
  HQ_TRY(hq_check_finite("H", H, cols, cols, H_ADVICE));
  const double t0 = hq_now();
  p->cols = cols;
  p->perm = hq_xmalloc((size_t)cols * sizeof(int32_t));
  p->dead = hq_xcalloc((size_t)cols, 1);
  p->U = be->alloc((size_t)cols * (size_t)cols * sizeof(float));
  float *diag0 = hq_xmalloc((size_t)cols * sizeof(float));
  int rc = p->U
               ? HQ_OK
               : hq_fail(HQ_ERR_NOMEM, "out of memory for the %lld x %lld inverse Hessian (%s "
                         "backend); use more ranks", (long long)cols, (long long)cols, be->name);
  double mean = 0.0;
  if (!rc) rc = order_columns(o, cols, H, p, diag0, &mean);
  if (!rc) rc = damped_factor(be, o, H, diag0, mean, p);
  if (!rc && o->hscale) rc = prep_diag(be, H, p);
  free(diag0);
  be->sync();
  p->t_chol = hq_now() - t0;
  if (rc) hq_gptq_prep_free(be, p);
  return rc;
}

/* ---- in place: H's own memory becomes U ---- */


/* A <- A[perm][:, perm] in place (n x n): every member gathers the columns of its share of the
 * rows, then each cycle of perm moves its rows (row k <- row perm[k]) by one member. */
static void permute_sym_in_place(float *A, int64_t n, const int32_t *perm, const struct hq_team *t) {
  const int size = t ? t->size : 1, me = t ? t->rank : 0;
  const int64_t r0 = n * me / size, r1 = n * (me + 1) / size;
  if (permute_rows_f32(A + r0 * n, r1 - r0, n, perm, 0)) HQ_DIE("%s", hq_last_error());
  hq_team_sync(t);
  uint8_t *seen = hq_xcalloc((size_t)n, 1);
  float *tmp = hq_xmalloc((size_t)n * sizeof(float));
  const size_t rb = (size_t)n * sizeof(float);
  int64_t cycles = 0;
  for (int64_t s = 0; s < n; s++) {
    if (seen[s] || perm[s] == s) continue;
    const int mine = cycles++ % size == me;
    if (mine) memcpy(tmp, A + s * n, rb);
    for (int64_t k = s;; k = perm[k]) {
      seen[k] = 1;
      const float *from = perm[k] == s ? tmp : A + (int64_t)perm[k] * n;
      if (mine) memcpy(A + k * n, from, rb);
      if (perm[k] == s) break;
    }
  }
  free(seen);
  free(tmp);
  hq_team_sync(t);
}

/* The factor's input in A's upper triangle (a member's share): the strict upper from the
 * strict lower (which the factor leaves alone) when `restage`, the diagonal diag0 + damp. */
static void stage_upper(float *A, int64_t n, const float *diag0, float damp, int restage,
                        const struct hq_team *t) {
  const int part = t ? t->rank : 0, parts = t ? t->size : 1;
  if (restage) hq_mirror_lower(A, n, part, parts);
  for (int64_t i = part; i < n; i += parts) A[i * n + i] = diag0[i] + damp;
  hq_team_sync(t);
}

int hq_gptq_prepare_in_place(const struct hq_backend *be, const struct hq_gptq_opts *o,
                             int64_t cols, float *H, const struct hq_team *team,
                             struct hq_gptq_prep *p) {
  memset(p, 0, sizeof *p);
  HQ_ASSERT(!be->on_device && be->chol_inverse_upper_team);
  HQ_TRY(hq_gptq_opts_check(o, cols)); /* the same verdicts on every member: the same H */
  HQ_TRY(hq_check_finite("H", H, cols, cols, H_ADVICE));
  const double t0 = hq_now();
  p->cols = cols;
  p->perm = hq_xmalloc((size_t)cols * sizeof(int32_t));
  p->dead = hq_xcalloc((size_t)cols, 1);
  float *diag0 = hq_xmalloc((size_t)cols * sizeof(float));
  double mean = 0.0;
  int rc = order_columns(o, cols, H, p, diag0, &mean);
  if (!rc && o->hscale && prep_diag(be, H, p)) HQ_DIE("%s", hq_last_error()); /* tiny */
  hq_team_sync(team); /* every member has read H's diagonal */
  if (!rc && o->act_order) permute_sym_in_place(H, cols, p->perm, team);
  p->U = H;
  p->U_borrowed = 1;
  double pd = o->percdamp;
  int info = 1;
  for (int t = 0; !rc && t <= o->damp_retries; t++, pd *= 10.0) {
    const float damp = (float)(pd * mean);
    stage_upper(H, cols, diag0, damp, t > 0, team);
    info = be->chol_inverse_upper_team(cols, H, cols, team);
    p->damp_used = pd;
    p->damp_abs = damp;
    if (info == 0) break;
  }
  if (!rc && info) rc = not_pd(o, p, info);
  free(diag0);
  p->t_chol = hq_now() - t0;
  if (rc) hq_gptq_prep_free(be, p);
  return rc;
}

/* ------------------------------------------------------------------ GPTQ: solve */

/* backend buffers of one solve */
struct solve_ws {
  float *W, *E, *S, *Z; /* [rows x cols], [rows x B], [ngroups x rows] x 2 */
  uint8_t *C;           /* [rows x cols] codes in processing order */
  double *L;            /* [rows] reference loss */
  int32_t *G;           /* static groups: [cols] group of each processing-order column */
};

static void solve_ws_free(const struct hq_backend *be, struct solve_ws *w, const float *W_host) {
  if (w->W && w->W != W_host) be->free(w->W);
  if (w->E) be->free(w->E);
  if (w->S) be->free(w->S);
  if (w->Z) be->free(w->Z);
  if (w->C) be->free(w->C);
  if (w->L) be->free(w->L);
  if (w->G) be->free(w->G);
}

/* Grid parameters of a rows x n slice: colw (backend, n) weights the hscale search. */
static void params(const struct hq_backend *be, const struct hq_gptq_opts *o, struct hq_grid g,
                   int64_t rows, int64_t n, const float *Wsl, int64_t ldw, const float *colw,
                   float *s, float *z) {
  be->quant_params(g, rows, n, Wsl, ldw, o->hscale ? colw : NULL, s, z);
}

/* One block [i1, i2) of the blocked loop: column segments with fixed parameters through the
 * fused inner block, dynamic groups computed when reached, then the lazy update GEMM(s). */
static void solve_block(const struct hq_backend *be, const struct hq_gptq_opts *o,
                        const struct hq_gptq_prep *p, struct hq_grid g, int64_t row0,
                        int64_t rows, const struct solve_ws *w, int64_t i1, int64_t i2) {
  const int64_t cols = p->cols, B = o->block_size, count = i2 - i1;
  const int64_t gs = o->group_size > 0 ? o->group_size : 0;
  const float *U = p->U;
  int64_t pend_done = 0, pend_e = i2; /* [i2, pend_e) already got errors [0, pend_done) */
  if (gs > 0 && o->static_groups) /* the block at once: each column looks up its group */
    be->gptq_block(g, rows, count, 0, count, w->W + i1, cols, U + i1 * cols + i1, cols, w->S,
                   w->Z, w->G + i1, w->E, B, w->C + i1, cols, w->L);
  for (int64_t j = i1; j < i2 && !(gs > 0 && o->static_groups);) {
    int64_t seg_end = i2, grp = 0;
    if (gs > 0) {
      grp = j / gs;
      const int64_t ge = (grp + 1) * gs < cols ? (grp + 1) * gs : cols;
      if (j == grp * gs) {
        if (ge > i2 && j > i1) {
          /* the group reaches past this block: give its later columns the pending update of
           * the block's processed columns [i1, j) first */
          be->gemm_rows(row0, 0, 0, 0, rows, ge - i2, j - i1, -1.0f, w->E, B, U + i1 * cols + i2,
                        cols, 1.0f, w->W + i2, cols);
          pend_done = j - i1;
          pend_e = ge;
        }
        params(be, o, g, rows, ge - j, w->W + j, cols, p->colw_p ? p->colw_p + j : NULL,
               w->S + grp * rows, w->Z + grp * rows);
      }
      seg_end = ge < i2 ? ge : i2;
    }
    be->gptq_block(g, rows, count, j - i1, seg_end - i1, w->W + i1, cols, U + i1 * cols + i1,
                   cols, w->S + grp * rows, w->Z + grp * rows, NULL, w->E, B, w->C + i1, cols, w->L);
    j = seg_end;
  }
  if (i2 >= cols) return;
  /* lazy batch update: W[:, i2:] -= Err1 · U[i1:i2, i2:] */
  if (pend_e > i2) {
    be->gemm_rows(row0, 0, 0, 0, rows, pend_e - i2, count - pend_done, -1.0f, w->E + pend_done, B,
                  U + (i1 + pend_done) * cols + i2, cols, 1.0f, w->W + i2, cols);
    if (pend_e < cols)
      be->gemm_rows(row0, 0, 0, 0, rows, cols - pend_e, count, -1.0f, w->E, B,
                    U + i1 * cols + pend_e, cols, 1.0f, w->W + pend_e, cols);
  } else {
    be->gemm_rows(row0, 0, 0, 0, rows, cols - i2, count, -1.0f, w->E, B, U + i1 * cols + i2, cols,
                  1.0f, w->W + i2, cols);
  }
}

/* Parameters fixed before the loop (per channel: W as given; static groups: the unpermuted,
 * dead-zeroed W), dead columns zeroed, columns permuted; W ends in backend memory. */
static int solve_setup(const struct hq_backend *be, const struct hq_gptq_opts *o,
                       const struct hq_gptq_prep *p, struct hq_grid g, int64_t rows, float *W,
                       const struct solve_ws *w) {
  const int64_t cols = p->cols, gs = o->group_size > 0 ? o->group_size : 0;
  const size_t wbytes = (size_t)rows * (size_t)cols * sizeof(float);
  if (gs == 0) {
    if (be->on_device) be->upload(w->W, W, wbytes);
    params(be, o, g, rows, cols, w->W, cols, p->colw, w->S, w->Z);
  }
  if (p->dead_cols)
    for (int64_t r = 0; r < rows; r++)
      for (int64_t i = 0; i < cols; i++)
        if (p->dead[i]) W[r * cols + i] = 0.0f;
  if (gs > 0 && o->static_groups) {
    int32_t *grp = hq_xmalloc((size_t)cols * sizeof(int32_t));
    for (int64_t j = 0; j < cols; j++) grp[j] = (int32_t)(p->perm[j] / gs);
    be->upload(w->G, grp, (size_t)cols * sizeof(int32_t));
    free(grp);
    if (be->on_device) be->upload(w->W, W, wbytes);
    for (int64_t k = 0; k < ngroups_of(cols, gs); k++) {
      int64_t c0 = k * gs, n = cols - c0 < gs ? cols - c0 : gs;
      params(be, o, g, rows, n, w->W + c0, cols, p->colw ? p->colw + c0 : NULL, w->S + k * rows,
             w->Z + k * rows);
    }
  }
  if (o->act_order) HQ_TRY(permute_rows_f32(W, rows, cols, p->perm, 0));
  if (be->on_device) be->upload(w->W, W, wbytes);
  return HQ_OK;
}

/* Backend results into res: W and codes back to the original column order, g_idx. */
static int solve_collect(const struct hq_backend *be, const struct hq_gptq_opts *o,
                         const struct hq_gptq_prep *p, int64_t rows, float *W,
                         const struct solve_ws *w, struct hq_gptq_result *res) {
  const int64_t cols = p->cols, gs = o->group_size > 0 ? o->group_size : 0;
  be->sync();
  if (be->on_device) be->download(W, w->W, (size_t)rows * (size_t)cols * sizeof(float));
  be->download(res->row_loss_ref, w->L, (size_t)(rows ? rows : 1) * sizeof(double));
  res->loss_ref = 0.0;
  for (int64_t r = 0; r < rows; r++) res->loss_ref += res->row_loss_ref[r];
  uint8_t *cp = malloc((size_t)rows * (size_t)cols + 1);
  if (!cp) return hq_fail(HQ_ERR_NOMEM, "out of memory for the codes");
  be->download(cp, w->C, (size_t)rows * (size_t)cols);
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t r = 0; r < rows; r++)
    for (int64_t jj = 0; jj < cols; jj++) res->codes[r * cols + p->perm[jj]] = cp[r * cols + jj];
  free(cp);
  if (o->act_order) HQ_TRY(permute_rows_f32(W, rows, cols, p->perm, 1));
  download_params(be, w->S, w->Z, res);
  for (int64_t jj = 0; jj < cols; jj++) {
    const int64_t c = p->perm[jj];
    res->perm[jj] = p->perm[jj];
    res->g_idx[c] = gs == 0 ? 0 : (int32_t)(o->static_groups ? c / gs : jj / gs);
  }
  return HQ_OK;
}

int hq_gptq_solve(const struct hq_backend *be, const struct hq_gptq_opts *o,
                  const struct hq_gptq_prep *p, int64_t row0, int64_t rows, float *W,
                  struct hq_gptq_result *res) {
  const int64_t cols = p->cols, B = o->block_size;
  HQ_TRY(hq_gptq_opts_check(o, cols));
  if (rows < 0) return hq_fail(HQ_ERR_INPUT, "negative row count %lld", (long long)rows);
  if (o->hscale && !p->colw) return hq_fail(HQ_ERR_INPUT, "--scale-from-hessian: prepare without hscale");
  HQ_TRY(hq_check_finite("W", W, rows, cols,
                      "the layer's weights are corrupt (check the checkpoint or the previous block)"));
  HQ_TRY(hq_grid_check_fp16(o, W, rows, cols));
  const int64_t ngroups = ngroups_of(cols, o->group_size > 0 ? o->group_size : 0);
  HQ_TRY(hq_gptq_result_alloc(res, rows, cols, ngroups));
  res->row_loss_ref = malloc((size_t)(rows ? rows : 1) * sizeof(double));
  const double t0 = hq_now();
  const struct hq_grid g = hq_grid_make(o->bits, o->sym, o->mse);
  const size_t pbytes = (size_t)rows * (size_t)ngroups * sizeof(float) + 1;
  struct solve_ws w = {be->on_device ? be->alloc((size_t)rows * (size_t)cols * sizeof(float) + 1) : W,
                       be->alloc((size_t)rows * (size_t)B * sizeof(float) + 1), be->alloc(pbytes),
                       be->alloc(pbytes), be->alloc((size_t)rows * (size_t)cols + 1),
                       be->alloc((size_t)(rows ? rows : 1) * sizeof(double)),
                       o->static_groups ? be->alloc((size_t)cols * sizeof(int32_t)) : NULL};
  int rc = HQ_OK;
  if (!res->row_loss_ref || !w.W || !w.E || !w.S || !w.Z || !w.C || !w.L || (o->static_groups && !w.G))
    rc = hq_fail(HQ_ERR_NOMEM, "out of memory for GPTQ of a %lld x %lld layer (%s backend); use "
                 "more ranks", (long long)rows, (long long)cols, be->name);
  if (!rc) {
    be->zero(w.L, (size_t)(rows ? rows : 1) * sizeof(double));
    rc = solve_setup(be, o, p, g, rows, W, &w);
  }
  for (int64_t i1 = 0; !rc && rows > 0 && i1 < cols; i1 += B)
    solve_block(be, o, p, g, row0, rows, &w, i1, i1 + B < cols ? i1 + B : cols);
  if (!rc) rc = solve_collect(be, o, p, rows, W, &w, res);
  if (!rc) rc = hq_result_check_fp16(res, o->bits);
  solve_ws_free(be, &w, W);
  res->t_quant = hq_now() - t0;
  res->damp_used = p->damp_used;
  res->damp_abs = p->damp_abs;
  res->dead_cols = p->dead_cols;
  res->t_chol = p->t_chol;
  if (rc) hq_gptq_result_free(res);
  return rc;
}

/* ------------------------------------------------------------------ GPTQ: one layer */

/* GPTQ's and RTN's proxy losses of the layer whose original weights are W0 (RTN: same grid and
 * groups, no act-order or static groups, as the reference compares them). */
static int layer_stats(const struct hq_backend *be, const struct hq_gptq_opts *o, int64_t rows,
                       int64_t cols, float *W0, const float *W, const float *H,
                       struct hq_gptq_result *res) {
  const double t0 = hq_now();
  float *D = malloc((size_t)rows * (size_t)cols * sizeof(float) + 1);
  if (!D) return hq_fail(HQ_ERR_NOMEM, "out of memory for the GPTQ statistics");
  for (int64_t k = 0; k < rows * cols; k++) D[k] = W0[k] - W[k];
  res->loss_proxy = hq_proxy_loss(be, rows, cols, D, H);
  free(D);
  struct hq_gptq_result rr;
  struct hq_gptq_opts ro = *o;
  ro.act_order = 0;
  ro.static_groups = 0;
  ro.hscale = 0;
  HQ_TRY(hq_rtn_quantize(be, &ro, rows, cols, W0, H, &rr));
  res->loss_proxy_rtn = rr.loss_proxy;
  hq_gptq_result_free(&rr);
  res->t_stats = hq_now() - t0;
  return HQ_OK;
}

int hq_gptq_quantize(const struct hq_backend *be, const struct hq_gptq_opts *o, int64_t rows,
                     int64_t cols, float *W, const float *H, int want_stats,
                     struct hq_gptq_result *res) {
  memset(res, 0, sizeof *res);
  HQ_TRY(hq_gptq_opts_check(o, cols));
  if (rows < 0) return hq_fail(HQ_ERR_INPUT, "negative row count %lld", (long long)rows);
  HQ_TRY(hq_check_finite("W", W, rows, cols,
                      "the layer's weights are corrupt (check the checkpoint or the previous block)"));
  struct hq_gptq_prep p;
  HQ_TRY(hq_gptq_prepare(be, o, cols, H, &p));
  float *W0 = want_stats ? malloc((size_t)rows * (size_t)cols * sizeof(float) + 1) : NULL;
  int rc = want_stats && !W0 ? hq_fail(HQ_ERR_NOMEM, "out of memory for the GPTQ statistics") : HQ_OK;
  if (W0) memcpy(W0, W, (size_t)rows * (size_t)cols * sizeof(float));
  if (!rc) rc = hq_gptq_solve(be, o, &p, 0, rows, W, res);
  if (!rc && want_stats) rc = layer_stats(be, o, rows, cols, W0, W, H, res);
  if (rc) hq_gptq_result_free(res);
  free(W0);
  hq_gptq_prep_free(be, &p);
  return rc;
}
