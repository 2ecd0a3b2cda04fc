/* Exact fixed-point Hessian accumulation (hessian.h). */
#include "hessian.h"

#include <math.h>
#include <omp.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

static size_t acc_bytes(const struct hq_hessian *h) { return (size_t)h->ntri * sizeof(int64_t); }

int hq_hessian_init(struct hq_hessian *h, const struct hq_backend *be, int64_t n, int64_t windows) {
  return hq_hessian_init_at(h, be, n, windows, NULL, 0, 1);
}

size_t hq_hessian_shared_bytes(int64_t n) {
  const int64_t P = n < HQ_HESS_P ? n : HQ_HESS_P, np = n > 0 ? (n + P - 1) / P : 0;
  return (size_t)(n * (n + 1) / 2) * sizeof(int64_t) + (size_t)np * 64;
}

int hq_hessian_init_at(struct hq_hessian *h, const struct hq_backend *be, int64_t n,
                       int64_t windows, void *shared, int who, int sharers) {
  memset(h, 0, sizeof *h);
  if (n <= 0) return hq_fail(HQ_ERR_INPUT, "Hessian of %lld features: need at least one", (long long)n);
  if (windows < 1 || windows > (1LL << 30))
    return hq_fail(HQ_ERR_INPUT, "Hessian of %lld windows: need 1 .. 2^30", (long long)windows);
  h->be = be;
  h->n = n;
  h->ntri = n * (n + 1) / 2;
  h->lim_bits = 62;
  for (int64_t w = 1; w < windows; w *= 2) h->lim_bits--; /* windows x 2^lim_bits <= 2^62 */
  h->nslots = be->on_device ? 1 : omp_get_max_threads();
  const int64_t p = n < HQ_HESS_P ? n : HQ_HESS_P;
  HQ_ASSERT(!shared || !be->on_device);
  h->borrowed = shared != NULL;
  h->acc = shared ? shared : be->alloc(acc_bytes(h));
  if (shared) { /* one lock word per panel, a cache line each, after the sums */
    h->locks = (atomic_int *)(void *)((char *)shared + acc_bytes(h));
    h->rot = (int)((int64_t)who * ((n + p - 1) / p) / (sharers > 0 ? sharers : 1));
  }
  h->panels = be->alloc((size_t)h->nslots * (size_t)(p * n) * sizeof(float));
  if (!h->acc || !h->panels) {
    hq_hessian_free(h);
    return hq_fail(HQ_ERR_NOMEM, "cannot allocate the %lld x %lld Hessian accumulator (%.1f GB: 8 "
                   "bytes per upper-triangle entry); use a machine with more memory per rank",
                   (long long)n, (long long)n, (double)(n * (n + 1) / 2) * 8.0 / 1e9);
  }
  h->host = be->on_device ? NULL : h->acc;
  hq_hessian_reset(h);
  return HQ_OK;
}

void hq_hessian_reset(struct hq_hessian *h) {
  if (h->acc && !h->borrowed) h->be->zero(h->acc, acc_bytes(h));
  h->count = 0;
  h->vmax = 0.0;
}

void hq_hessian_free(struct hq_hessian *h) {
  if (h->acc && !h->borrowed) h->be->free(h->acc);
  if (h->panels) h->be->free(h->panels);
  if (h->host && h->host != h->acc) free(h->host);
  memset(h, 0, sizeof *h);
}

/* a shared accumulator's panel: one process at a time adds into it */
static void panel_lock(atomic_int *l) {
  while (atomic_exchange_explicit(l, 1, memory_order_acquire)) sched_yield();
}
static void panel_unlock(atomic_int *l) { atomic_store_explicit(l, 0, memory_order_release); }

double hq_hessian_window_bound(const struct hq_backend *be, const float *X, int64_t ntok,
                               int64_t ldx, int64_t n) {
  const float *x = X;
  float *tmp = NULL;
  if (be->on_device) {
    tmp = hq_xmalloc((size_t)(ntok * ldx) * sizeof(float));
    be->sync();
    be->download(tmp, X, (size_t)((ntok - 1) * ldx + n) * sizeof(float));
    x = tmp;
  }
  double *d = hq_xcalloc((size_t)n, sizeof(double));
  for (int64_t t = 0; t < ntok; t++)
    for (int64_t i = 0; i < n; i++) d[i] += (double)x[t * ldx + i] * (double)x[t * ldx + i];
  double m = 0.0;
  for (int64_t i = 0; i < n; i++) m = d[i] > m || isnan(d[i]) ? d[i] : m;
  free(d);
  free(tmp);
  return m;
}

int hq_hessian_scale_for(const struct hq_hessian *h, double bound, int headroom) {
  if (!(bound > 1e-300) || !isfinite(bound)) bound = 1.0; /* all zero (or not finite: caught later) */
  int e;
  frexp(bound, &e); /* bound < 2^e */
  int F = h->lim_bits - headroom - e;
  return F < -900 ? -900 : F > 900 ? 900 : F;
}

void hq_hessian_set_scale(struct hq_hessian *h, int F) {
  h->F = F;
  h->have_F = 1;
}

void hq_hessian_accumulate(struct hq_hessian *h, const float *X, int64_t ntok, int64_t ldx) {
  HQ_ASSERT(h->acc && ntok >= 0 && ldx >= h->n);
  if (ntok == 0) return;
  const struct hq_backend *be = h->be;
  const int64_t n = h->n, P = n < HQ_HESS_P ? n : HQ_HESS_P, np = (n + P - 1) / P;
  if (!h->have_F)
    hq_hessian_set_scale(h, hq_hessian_scale_for(h, hq_hessian_window_bound(be, X, ntok, ldx, n), 16));
  double vmax = h->vmax;
  int bad = isnan(vmax);
  /* panel p: rows j = j0 .. j0+pn-1 of XᵀX, columns 0 .. j; the largest panels first */
#pragma omp parallel for schedule(dynamic, 1) reduction(max : vmax) reduction(| : bad) if (np > 1 && !be->on_device)
  for (int64_t t = 0; t < np; t++) {
    const int64_t tp = (t + h->rot) % np; /* sharers start at different panels */
    const int64_t j0 = (np - 1 - tp) * P, pn = n - j0 < P ? n - j0 : P;
    float *C = h->panels + (size_t)(be->on_device ? 0 : omp_get_thread_num()) * (size_t)(P * n);
    be->gemm_rows(j0, 0, 1, 0, pn, j0 + pn, ntok, 1.0f, X + j0, ldx, X, ldx, 0.0f, C, n);
    atomic_int *lk = h->locks ? (atomic_int *)(void *)((char *)h->locks + 64 * (np - 1 - tp)) : NULL;
    if (lk) panel_lock(lk);
    const double m = be->hess_fixed_acc(j0, pn, C, n, h->F, h->lim_bits, h->acc);
    if (lk) panel_unlock(lk);
    bad |= isnan(m);
    vmax = m > vmax ? m : vmax;
  }
  h->vmax = bad ? NAN : vmax;
  h->count += ntok;
}

int64_t *hq_hessian_sums(struct hq_hessian *h) {
  if (!h->be->on_device) return h->acc;
  if (!h->host) h->host = hq_xmalloc(acc_bytes(h));
  h->be->sync();
  h->be->download(h->host, h->acc, acc_bytes(h));
  return h->host;
}

int hq_hessian_check(const struct hq_hessian *h, int *F_retry) {
  if (!isfinite(h->vmax))
    return hq_fail(HQ_ERR_NUMERIC, "the calibration activations feeding this layer are not finite "
                   "(NaN/Inf in XᵀX): check the checkpoint's weights and the calibration tokens");
  if (ldexp(h->vmax, h->F) < ldexp(1.0, h->lim_bits)) return HQ_OK;
  *F_retry = hq_hessian_scale_for(h, h->vmax, 0);
  return 1;
}

void hq_mirror_lower(float *H, int64_t n, int part, int parts) {
  enum { TB = 64 };
#pragma omp parallel for schedule(dynamic, 1) if (n > 256)
  for (int64_t i0 = 0; i0 < n; i0 += TB) {
    if ((i0 / TB) % parts != part) continue;
    const int64_t i1 = i0 + TB < n ? i0 + TB : n;
    for (int64_t j0 = i0; j0 < n; j0 += TB) {
      const int64_t j1 = j0 + TB < n ? j0 + TB : n;
      for (int64_t i = i0; i < i1; i++)
        for (int64_t j = (j0 > i + 1 ? j0 : i + 1); j < j1; j++) H[i * n + j] = H[j * n + i];
    }
  }
}

/* H into caller memory [n x n]; frees h */
static void finalize_into(struct hq_hessian *h, float *H) {
  const int64_t n = h->n;
  const int64_t *acc = hq_hessian_sums(h);
  const double f = h->count ? ldexp(2.0 / (double)h->count, -h->F) : 0.0;
  /* row i, entries 0..i: column i of the packed triangle, contiguous */
#pragma omp parallel for schedule(dynamic, 16) if (n > 256)
  for (int64_t i = 0; i < n; i++) {
    float *row = H + i * n;
    const int64_t *col = acc + i * (i + 1) / 2;
    for (int64_t j = 0; j <= i; j++) row[j] = (float)((double)col[j] * f);
  }
  hq_mirror_lower(H, n, 0, 1);
  hq_hessian_free(h);
}


/* The rows of H's lower triangle from the sums in the same memory. Row i's sums (i + 1
 * int64) lie at bytes [4 i (i + 1), 4 (i + 1) (i + 2)), its floats go to [4 i n, 4 i n +
 * 4 (i + 1)); the sums of the rows below i end at 4 i (i + 1) <= 4 i n. So rows taken from
 * the last one down, a chunk read whole (by every member: its rows i % size == rank) into
 * tmp before any of it is written, never overwrite a sum not yet read. */
static void lower_in_place(int64_t *acc, int64_t n, double f, const struct hq_team *tm) {
  const int64_t cap = n > ((int64_t)1 << 22) ? n : ((int64_t)1 << 22); /* floats */
  float *tmp = hq_xmalloc((size_t)cap * sizeof(float));
  char *H = (char *)acc;
  for (int64_t i1 = n; i1 > 0;) {
    int64_t i0 = i1, tot = 0;
    while (i0 > 0 && tot + i0 <= cap) tot += i0--; /* row i0 - 1 has i0 entries */
    const int64_t base = i0 * (i0 + 1) / 2;       /* tmp offset of row i: i(i+1)/2 - base */
#pragma omp parallel for schedule(dynamic, 8) if (tot > 65536)
    for (int64_t i = i0; i < i1; i++) {
      if (i % tm->size != tm->rank) continue;
      const int64_t *col = acc + i * (i + 1) / 2;
      float *t = tmp + i * (i + 1) / 2 - base;
      for (int64_t j = 0; j <= i; j++) t[j] = (float)((double)col[j] * f);
    }
    hq_team_sync(tm); /* the chunk's sums read by all */
#pragma omp parallel for schedule(dynamic, 8) if (tot > 65536)
    for (int64_t i = i0; i < i1; i++)
      if (i % tm->size == tm->rank)
        memcpy(H + (size_t)(i * n) * sizeof(float), tmp + i * (i + 1) / 2 - base,
               (size_t)(i + 1) * sizeof(float));
    i1 = i0; /* the next chunk's sums lie below every row written so far */
  }
  free(tmp);
}

float *hq_hessian_finalize_in_place(struct hq_hessian *h, const struct hq_team *team) {
  static const struct hq_team solo = {0, 1, NULL, NULL, NULL};
  const struct hq_team *tm = team ? team : &solo;
  HQ_ASSERT(!h->be->on_device && h->acc && (tm->size == 1 || h->borrowed));
  const int64_t n = h->n;
  const double f = h->count ? ldexp(2.0 / (double)h->count, -h->F) : 0.0;
  hq_team_sync(tm); /* every member sees the sums as reduced (the leader added other nodes) */
  lower_in_place(h->acc, n, f, tm);
  float *H = (float *)(void *)h->acc;
  hq_team_sync(tm); /* every row's lower part written */
  hq_mirror_lower(H, n, tm->rank, tm->size);
  hq_team_sync(tm);
  h->acc = h->host = NULL; /* the memory is the caller's now (or stays the sharer's) */
  hq_hessian_free(h);
  return H;
}

int hq_hessian_finalize(struct hq_hessian *h, float **Hout) {
  const int64_t n = h->n;
  float *H = malloc((size_t)(n * n) * sizeof(float) + 1);
  if (!H) {
    hq_hessian_free(h);
    return hq_fail(HQ_ERR_NOMEM, "cannot allocate the %lld x %lld Hessian (%.1f GB)", (long long)n,
                   (long long)n, (double)(n * n) * 4.0 / 1e9);
  }
  finalize_into(h, H);
  *Hout = H;
  return HQ_OK;
}
