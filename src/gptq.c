/* GPTQ and round-to-nearest for one linear layer (docs/readme/gptq.md), written
 * once against the backend interface (backend.h).
 *
 * Data flow of hq_gptq_quantize:
 *   host: check finite → per-channel params (from W as given, as the reference) → dead
 *         columns (H[i,i] = 0 → 1, W[:, i] = 0) → static group params (unpermuted W) →
 *         act-order permutation of W and H → damping (+ automatic raises) on a host copy
 *   backend: upper Cholesky factor U of H⁻¹, blocked GPTQ (fused inner block per segment of
 *         columns with fixed parameters, one GEMM per block for the lazy update)
 *   host: download, undo the permutation, groups/g_idx, statistics (proxy losses by GEMM).
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
#include "util.h"

struct hq_gptq_opts hq_gptq_opts_default(void) {
  struct hq_gptq_opts o;
  memset(&o, 0, sizeof o);
  o.bits = 4;
  o.group_size = -1;
  o.sym = 0;
  o.mse = 0;
  o.act_order = 0;
  o.static_groups = 0;
  o.percdamp = 0.01f;
  o.block_size = 128;
  o.damp_retries = 6;
  return o;
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
  memset(res, 0, sizeof *res);
}

/* ------------------------------------------------------------------ helpers */

static int64_t ngroups_of(int64_t cols, int64_t gs) { return gs > 0 ? (cols + gs - 1) / gs : 1; }

static int check_finite(const char *what, const float *A, int64_t rows, int64_t cols,
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
  struct perm_key *keys = malloc((size_t)cols * sizeof *keys);
  if (!keys) return hq_fail(HQ_ERR_NOMEM, "out of memory for the act-order permutation");
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

double hq_proxy_loss(const struct hq_backend *be, int64_t rows, int64_t cols, const float *D,
                     const float *H) {
  if (rows <= 0 || cols <= 0) return 0.0;
  /* T = D_chunk · H (rows_chunk x cols), loss += Σ T ⊙ D_chunk; chunks bound the workspace. */
  int64_t chunk = rows;
  const int64_t max_ws = (int64_t)1 << 24; /* floats (64 MB) */
  if (chunk * cols > max_ws) chunk = max_ws / cols > 0 ? max_ws / cols : 1;
  if (chunk > 8 && chunk < rows) chunk -= chunk % 8;
  size_t tbytes = (size_t)chunk * (size_t)cols * sizeof(float);
  float *T = malloc(tbytes);
  float *dT = NULL, *dD = NULL, *dH = NULL;
  if (!T) HQ_DIE("out of memory for the proxy-loss workspace (%zu bytes)", tbytes);
  if (be->on_device) {
    dT = be->alloc(tbytes);
    dD = be->alloc(tbytes);
    dH = be->alloc((size_t)cols * (size_t)cols * sizeof(float));
    if (!dT || !dD || !dH) HQ_DIE("out of device memory for the proxy-loss workspace");
    be->upload(dH, H, (size_t)cols * (size_t)cols * sizeof(float));
  }
  double loss = 0.0;
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    int64_t nr = rows - r0 < chunk ? rows - r0 : chunk;
    const float *Dc = D + r0 * cols;
    if (be->on_device) {
      be->upload(dD, Dc, (size_t)nr * (size_t)cols * sizeof(float));
      be->gemm(0, 0, nr, cols, cols, 1.0f, dD, cols, dH, cols, 0.0f, dT, cols);
      be->download(T, dT, (size_t)nr * (size_t)cols * sizeof(float));
    } else {
      be->gemm(0, 0, nr, cols, cols, 1.0f, Dc, cols, H, cols, 0.0f, T, cols);
    }
    double acc = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : acc) if (nr * cols > 65536)
    for (int64_t k = 0; k < nr * cols; k++) acc += (double)T[k] * (double)Dc[k];
    loss += acc;
  }
  free(T);
  if (be->on_device) {
    be->free(dT);
    be->free(dD);
    be->free(dH);
  }
  return loss;
}

static int alloc_result(struct hq_gptq_result *res, int64_t rows, int64_t cols, int64_t ngroups) {
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

/* ------------------------------------------------------------------ RTN */

int hq_rtn_quantize(const struct hq_backend *be, const struct hq_gptq_opts *o, int64_t rows,
                    int64_t cols, float *W, const float *H, struct hq_gptq_result *res) {
  HQ_TRY(hq_gptq_opts_check(o, cols));
  HQ_TRY(check_finite("W", W, rows, cols, "the layer's weights are corrupt (check the checkpoint)"));
  const int64_t gs = o->group_size > 0 ? o->group_size : cols;
  const int64_t ngroups = ngroups_of(cols, o->group_size);
  HQ_TRY(alloc_result(res, rows, cols, ngroups));
  const struct hq_grid g = hq_grid_make(o->bits, o->sym, o->mse);
  double t0 = hq_now();
  float *W0 = NULL;
  if (H) {
    W0 = malloc((size_t)rows * (size_t)cols * sizeof(float) + 1);
    if (!W0) {
      hq_gptq_result_free(res);
      return hq_fail(HQ_ERR_NOMEM, "out of memory for RTN statistics");
    }
    memcpy(W0, W, (size_t)rows * (size_t)cols * sizeof(float));
  }
  size_t wbytes = (size_t)rows * (size_t)cols * sizeof(float);
  float *dW = be->alloc(wbytes);
  uint8_t *dC = be->alloc((size_t)rows * (size_t)cols);
  float *dS = be->alloc((size_t)rows * (size_t)ngroups * sizeof(float));
  float *dZ = be->alloc((size_t)rows * (size_t)ngroups * sizeof(float));
  int rc = HQ_OK;
  if (!dW || !dC || !dS || !dZ) {
    rc = hq_fail(HQ_ERR_NOMEM, "out of %s memory for RTN of a %lld x %lld layer", be->name,
                 (long long)rows, (long long)cols);
    goto done;
  }
  be->upload(dW, W, wbytes);
  for (int64_t k = 0; k < ngroups; k++) {
    int64_t c0 = k * gs, n = cols - c0 < gs ? cols - c0 : gs;
    be->quant_params(g, rows, n, dW + c0, cols, dS + k * rows, dZ + k * rows);
    be->rtn_cols(g, rows, n, dW + c0, cols, dS + k * rows, dZ + k * rows, dC + c0, cols);
  }
  be->sync();
  be->download(W, dW, wbytes);
  be->download(res->codes, dC, (size_t)rows * (size_t)cols);
  {
    float *tmp = malloc((size_t)rows * (size_t)ngroups * sizeof(float) + 1);
    if (!tmp) HQ_DIE("out of memory");
    be->download(tmp, dS, (size_t)rows * (size_t)ngroups * sizeof(float));
    transpose_params(tmp, ngroups, rows, res->scales);
    be->download(tmp, dZ, (size_t)rows * (size_t)ngroups * sizeof(float));
    transpose_params(tmp, ngroups, rows, res->zeros);
    free(tmp);
  }
  for (int64_t c = 0; c < cols; c++) {
    res->g_idx[c] = (int32_t)(o->group_size > 0 ? c / gs : 0);
    res->perm[c] = (int32_t)c;
  }
  res->t_quant = hq_now() - t0;
  if (H) {
    double t1 = hq_now();
    for (int64_t k = 0; k < rows * cols; k++) W0[k] -= W[k];
    res->loss_proxy = res->loss_proxy_rtn = hq_proxy_loss(be, rows, cols, W0, H);
    res->t_stats = hq_now() - t1;
  }
done:
  if (dW) be->free(dW);
  if (dC) be->free(dC);
  if (dS) be->free(dS);
  if (dZ) be->free(dZ);
  free(W0);
  if (rc != HQ_OK) hq_gptq_result_free(res);
  return rc;
}

/* ------------------------------------------------------------------ GPTQ */

int hq_gptq_quantize(const struct hq_backend *be, const struct hq_gptq_opts *o, int64_t rows,
                     int64_t cols, float *W, const float *H, int want_stats,
                     struct hq_gptq_result *res) {
  HQ_TRY(hq_gptq_opts_check(o, cols));
  if (rows < 0) return hq_fail(HQ_ERR_INPUT, "negative row count %lld", (long long)rows);
  HQ_TRY(check_finite("W", W, rows, cols,
                      "the layer's weights are corrupt (check the checkpoint or the previous block)"));
  HQ_TRY(check_finite("H", H, cols, cols,
                      "the calibration activations overflowed or are corrupt (check the "
                      "calibration tokens and the forward of the previous blocks)"));

  const int64_t gs = o->group_size > 0 ? o->group_size : 0; /* 0: per channel */
  const int64_t ngroups = ngroups_of(cols, gs);
  const int64_t B = o->block_size;
  const struct hq_grid g = hq_grid_make(o->bits, o->sym, o->mse);
  const size_t wbytes = (size_t)rows * (size_t)cols * sizeof(float);
  const size_t hbytes = (size_t)cols * (size_t)cols * sizeof(float);
  const size_t pbytes = (size_t)rows * (size_t)ngroups * sizeof(float);

  HQ_TRY(alloc_result(res, rows, cols, ngroups));
  int rc = HQ_OK;
  /* On a host backend, W itself and the Hessian staging buffer serve as backend memory (no
   * copies); on a device they are uploaded. */
  const int host = !be->on_device;
  float *W0 = NULL, *Hs = NULL, *diag0 = NULL, *tmp = NULL;
  float *dW = NULL, *dH = NULL, *dE = NULL, *dS = NULL, *dZ = NULL;
  uint8_t *dC = NULL, *dead = NULL;
  double *dL = NULL;
  int32_t *perm = res->perm;

  diag0 = malloc((size_t)cols * sizeof(float));
  dead = calloc((size_t)cols, 1);
  tmp = malloc(pbytes + 1);
  if (want_stats) W0 = malloc(wbytes + 1);
  dW = host ? W : be->alloc(wbytes);
  dH = be->alloc(hbytes);
  Hs = host ? dH : malloc(hbytes);
  dE = be->alloc((size_t)rows * (size_t)B * sizeof(float));
  dS = be->alloc(pbytes);
  dZ = be->alloc(pbytes);
  dC = be->alloc((size_t)rows * (size_t)cols);
  dL = be->alloc(sizeof(double));
  if (!diag0 || !dead || !tmp || (want_stats && !W0) || !dW || !dH || !Hs || !dE || !dS ||
      !dZ || !dC || !dL) {
    rc = hq_fail(HQ_ERR_NOMEM, "out of memory for GPTQ of a %lld x %lld layer (%s backend); "
                 "use more ranks", (long long)rows, (long long)cols, be->name);
    goto done;
  }
  if (want_stats) memcpy(W0, W, wbytes);

  /* per-channel parameters: from W as given (before dead columns are zeroed), as the
   * reference computes them */
  if (gs == 0) {
    if (!host) be->upload(dW, W, wbytes);
    be->quant_params(g, rows, cols, dW, cols, dS, dZ);
  }

  /* dead columns: H[i,i] == 0 -> H[i,i] = 1 (below), W[:, i] = 0 */
  int64_t ndead = 0;
  for (int64_t i = 0; i < cols; i++)
    if (H[i * cols + i] == 0.0f) {
      dead[i] = 1;
      ndead++;
      for (int64_t r = 0; r < rows; r++) W[r * cols + i] = 0.0f;
    }
  res->dead_cols = ndead;

  /* static groups: parameters of the unpermuted (dead-zeroed) W, original column groups */
  if (gs > 0 && o->static_groups) {
    if (!host) be->upload(dW, W, wbytes);
    for (int64_t k = 0; k < ngroups; k++) {
      int64_t c0 = k * gs, n = cols - c0 < gs ? cols - c0 : gs;
      be->quant_params(g, rows, n, dW + c0, cols, dS + k * rows, dZ + k * rows);
    }
  }

  /* act-order: descending diag(H) after the dead fix (stable: ties keep the original order) */
  for (int64_t j = 0; j < cols; j++) perm[j] = (int32_t)j;
  if (o->act_order) {
    if ((rc = hq_act_order_perm(H, cols, perm)) != HQ_OK) goto done;
    if ((rc = permute_rows_f32(W, rows, cols, perm, 0)) != HQ_OK) goto done;
  }
  if (!host) be->upload(dW, W, wbytes);

  /* diagonal of the permuted, dead-fixed H and its mean */
  double mean = 0.0;
  for (int64_t i = 0; i < cols; i++) {
    int64_t c = perm[i];
    diag0[i] = dead[c] ? 1.0f : H[c * cols + c];
    mean += diag0[i];
  }
  mean /= (double)cols;
  double t_chol0 = hq_now();
  if (!(mean > 0.0)) {
    rc = hq_fail(HQ_ERR_NUMERIC, "the Hessian's mean diagonal is %g (not positive): it is not "
                 "a sum of x xᵀ; check the calibration activations", mean);
    goto done;
  }
  /* damping with automatic raises; each try stages H[perm][:, perm] + damp I afresh (the
   * Cholesky inverse overwrites its input) */
  {
    double pd = o->percdamp;
    int info = 1;
    for (int t = 0; t <= o->damp_retries; t++, pd *= 10.0) {
      float damp = (float)(pd * mean);
#pragma omp parallel for schedule(static) if (cols > 256)
      for (int64_t i = 0; i < cols; i++) {
        const float *src = H + (int64_t)perm[i] * cols;
        float *dst = Hs + i * cols;
        if (o->act_order)
          for (int64_t j = 0; j < cols; j++) dst[j] = src[perm[j]];
        else
          memcpy(dst, src, (size_t)cols * sizeof(float));
        dst[i] = diag0[i] + damp;
      }
      if (!host) be->upload(dH, Hs, hbytes);
      info = be->chol_inverse_upper(cols, dH, cols);
      res->damp_used = pd;
      res->damp_abs = damp;
      if (info == 0) break;
    }
    if (info != 0) {
      rc = hq_fail(HQ_ERR_NUMERIC, "the Hessian is not positive definite even with damping "
                   "%g (raised %d times x10 from %g; LAPACK info %d); check the calibration "
                   "data or raise --damp / --damp-retries", res->damp_used, o->damp_retries,
                   (double)o->percdamp, info);
      goto done;
    }
  }
  be->sync();
  res->t_chol = hq_now() - t_chol0;

  /* the blocked GPTQ loop */
  double t_q0 = hq_now();
  be->zero(dL, sizeof(double));
  for (int64_t i1 = 0; i1 < cols; i1 += B) {
    const int64_t i2 = i1 + B < cols ? i1 + B : cols, count = i2 - i1;
    float *W1 = dW + i1;
    const float *U1 = dH + i1 * cols + i1;
    int64_t pend_done = 0, pend_e = i2; /* [i2, pend_e) already got errors [0, pend_done) */
    int64_t j = i1;
    while (j < i2) {
      int64_t seg_end;
      const float *s, *z;
      if (gs == 0) {
        seg_end = i2;
        s = dS;
        z = dZ;
      } else if (o->static_groups) {
        int64_t grp = perm[j] / gs;
        seg_end = j + 1;
        while (seg_end < i2 && perm[seg_end] / gs == grp) seg_end++;
        s = dS + grp * rows;
        z = dZ + grp * rows;
      } else {
        int64_t grp = j / gs, ge = (grp + 1) * gs < cols ? (grp + 1) * gs : cols;
        s = dS + grp * rows;
        z = dZ + grp * rows;
        if (j == grp * gs) {
          if (ge > i2 && j > i1) {
            /* the group reaches past this block: give its later columns the pending update
             * of the block's processed columns [i1, j) first */
            be->gemm(0, 0, rows, ge - i2, j - i1, -1.0f, dE, B, dH + i1 * cols + i2, cols, 1.0f,
                     dW + i2, cols);
            pend_done = j - i1;
            pend_e = ge;
          }
          be->quant_params(g, rows, ge - j, dW + j, cols, dS + grp * rows, dZ + grp * rows);
        }
        seg_end = ge < i2 ? ge : i2;
      }
      be->gptq_block(g, rows, count, j - i1, seg_end - i1, W1, cols, U1, cols, s, z, dE, B,
                     dC + i1, cols, dL);
      j = seg_end;
    }
    /* lazy batch update: W[:, i2:] -= Err1 · U[i1:i2, i2:] */
    if (i2 < cols) {
      if (pend_e > i2) {
        be->gemm(0, 0, rows, pend_e - i2, count - pend_done, -1.0f, dE + pend_done, B,
                 dH + (i1 + pend_done) * cols + i2, cols, 1.0f, dW + i2, cols);
        if (pend_e < cols)
          be->gemm(0, 0, rows, cols - pend_e, count, -1.0f, dE, B, dH + i1 * cols + pend_e, cols,
                   1.0f, dW + pend_e, cols);
      } else {
        be->gemm(0, 0, rows, cols - i2, count, -1.0f, dE, B, dH + i1 * cols + i2, cols, 1.0f,
                 dW + i2, cols);
      }
    }
  }
  be->sync();
  if (!host) be->download(W, dW, wbytes);
  {
    double loss_ref = 0.0;
    be->download(&loss_ref, dL, sizeof(double));
    res->loss_ref = loss_ref;
  }
  /* codes: permuted order -> original order, via the result buffer */
  {
    uint8_t *cp = malloc((size_t)rows * (size_t)cols + 1);
    if (!cp) {
      rc = hq_fail(HQ_ERR_NOMEM, "out of memory for the codes");
      goto done;
    }
    be->download(cp, dC, (size_t)rows * (size_t)cols);
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (int64_t r = 0; r < rows; r++)
      for (int64_t jj = 0; jj < cols; jj++)
        res->codes[r * cols + perm[jj]] = cp[r * cols + jj];
    free(cp);
  }
  if (o->act_order && (rc = permute_rows_f32(W, rows, cols, perm, 1)) != HQ_OK) goto done;
  be->download(tmp, dS, pbytes);
  transpose_params(tmp, ngroups, rows, res->scales);
  be->download(tmp, dZ, pbytes);
  transpose_params(tmp, ngroups, rows, res->zeros);
  for (int64_t jj = 0; jj < cols; jj++) {
    int64_t c = perm[jj];
    if (gs == 0)
      res->g_idx[c] = 0;
    else if (o->static_groups)
      res->g_idx[c] = (int32_t)(c / gs);
    else
      res->g_idx[c] = (int32_t)(jj / gs);
  }
  res->t_quant = hq_now() - t_q0;

  /* statistics (outside the timed quantization) */
  if (want_stats) {
    double t_s0 = hq_now();
    /* GPTQ: ΔW = W0 - Q, both in original order */
    float *D = malloc(wbytes + 1);
    if (!D) {
      rc = hq_fail(HQ_ERR_NOMEM, "out of memory for the GPTQ statistics");
      goto done;
    }
    for (int64_t k = 0; k < rows * cols; k++) D[k] = W0[k] - W[k];
    res->loss_proxy = hq_proxy_loss(be, rows, cols, D, H);
    free(D);
    struct hq_gptq_result rr;
    struct hq_gptq_opts ro = *o;
    ro.act_order = 0;
    ro.static_groups = 0;
    rc = hq_rtn_quantize(be, &ro, rows, cols, W0, H, &rr);
    if (rc != HQ_OK) goto done;
    res->loss_proxy_rtn = rr.loss_proxy;
    hq_gptq_result_free(&rr);
    res->t_stats = hq_now() - t_s0;
  }

done:
  free(W0);
  if (!host) free(Hs);
  free(diag0);
  free(dead);
  free(tmp);
  if (dW && !host) be->free(dW);
  if (dH) be->free(dH);
  if (dE) be->free(dE);
  if (dS) be->free(dS);
  if (dZ) be->free(dZ);
  if (dC) be->free(dC);
  if (dL) be->free(dL);
  if (rc != HQ_OK) hq_gptq_result_free(res);
  return rc;
}
