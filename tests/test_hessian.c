/* The exact fixed-point Hessian (src/quant/hessian.c) against a plain double Σ x xᵀ and against its
 * own claims:
 *  - H = 2/N Σ x xᵀ to fp32 accuracy (double reference), exactly symmetric, a zero feature gives
 *    a zero row, count == 0 gives zeros; feature counts below, at and above a panel (256);
 *  - the windows in another order, and split over two accumulators whose integer sums are added
 *    (what the all-reduce does), give bit-identical H — also with 2 OpenMP threads;
 *  - a window 2^20 times larger than window 0 is detected (check returns 1 and an F), and
 *    accumulating again with that F gives the right H; a NaN gives HQ_ERR_NUMERIC;
 *  - reset; bad sizes;
 *  - finalized in the sums' own memory = finalized into a new buffer, bit for bit;
 *  - sharers adding into one accumulator at once (panel locks) = one accumulator. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "hessian.h"
#include "testutil.h"

static const struct hq_backend *be;

#define NW 5

/* H of the windows in `order`, split at `split` into two accumulators (0: one). */
static float *build(int64_t n, int64_t seqlen, int64_t ldx, float *const *win, const int *order,
                    int split, int F) {
  struct hq_hessian a, b;
  HQ_ASSERT(hq_hessian_init(&a, be, n, NW) == HQ_OK && hq_hessian_init(&b, be, n, NW) == HQ_OK);
  hq_hessian_set_scale(&a, F);
  hq_hessian_set_scale(&b, F);
  for (int k = 0; k < NW; k++)
    hq_hessian_accumulate(split && k >= split ? &b : &a, win[order[k]], seqlen, ldx);
  int64_t *sa = hq_hessian_sums(&a), *sb = hq_hessian_sums(&b);
  for (int64_t i = 0; i < a.ntri; i++) sa[i] += sb[i];
  a.count += b.count;
  a.vmax = a.vmax > b.vmax ? a.vmax : b.vmax;
  int Fr = 0;
  CHECK(hq_hessian_check(&a, &Fr) == HQ_OK, "check: unexpected range error (F %d)", Fr);
  float *H = NULL;
  CHECK(hq_hessian_finalize(&a, &H) == HQ_OK, "finalize");
  hq_hessian_free(&b);
  return H;
}

static void test_exact(int64_t n) {
  const int64_t seqlen = 48, ldx = n + 3;
  float *win[NW];
  for (int w = 0; w < NW; w++) {
    win[w] = malloc(sizeof(float) * (size_t)(seqlen * ldx));
    hq_t_randn(win[w], seqlen * ldx, 100 + (uint64_t)w, 1.0f);
    for (int64_t t = 0; t < seqlen; t++) {
      win[w][t * ldx + 1] = 3.0f + 2.0f * win[w][t * ldx + 1]; /* offset, larger scale */
      win[w][t * ldx + n - 1] = 0.0f;                          /* a dead feature */
    }
  }
  const int fwd[NW] = {0, 1, 2, 3, 4}, rev[NW] = {4, 2, 0, 3, 1};
  struct hq_hessian tmp;
  HQ_ASSERT(hq_hessian_init(&tmp, be, n, NW) == HQ_OK);
  const int F = hq_hessian_scale_for(&tmp, hq_hessian_window_bound(be, win[0], seqlen, ldx, n), 16);
  hq_hessian_free(&tmp);
  omp_set_num_threads(1);
  float *H1 = build(n, seqlen, ldx, win, fwd, 0, F);
  omp_set_num_threads(2);
  float *H2 = build(n, seqlen, ldx, win, rev, 2, F);
  float *H3 = build(n, seqlen, ldx, win, fwd, 3, F);
  const size_t bytes = sizeof(float) * (size_t)(n * n);
  CHECK(!memcmp(H1, H2, bytes) && !memcmp(H1, H3, bytes), "n %lld: another order or split of the "
        "windows changed H", (long long)n);
  double maxrel = 0.0;
  int asym = 0;
  const double N = (double)(NW * seqlen);
  for (int64_t i = 0; i < n; i += (n > 300 ? 7 : 1))
    for (int64_t j = 0; j < n; j++) {
      double ref = 0.0, mag = 0.0;
      for (int w = 0; w < NW; w++)
        for (int64_t t = 0; t < seqlen; t++) {
          const double p = (double)win[w][t * ldx + i] * (double)win[w][t * ldx + j];
          ref += p;
          mag += fabs(p);
        }
      const double e = fabs((double)H1[i * n + j] - 2.0 * ref / N) / (2.0 * mag / N + 1e-30);
      maxrel = e > maxrel ? e : maxrel;
      asym += H1[i * n + j] != H1[j * n + i];
    }
  CHECK(maxrel < 1e-5, "n %lld: H vs double reference %.3g", (long long)n, maxrel);
  CHECK(asym == 0, "n %lld: H not exactly symmetric (%d)", (long long)n, asym);
  CHECK(H1[(n - 1) * n + n - 1] == 0.0f && H1[(n - 1) * n + 1] == 0.0f, "dead feature not zero");
  free(H1), free(H2), free(H3);
  for (int w = 0; w < NW; w++) free(win[w]);
}

static void test_range_and_errors(void) {
  const int64_t n = 20, seqlen = 16;
  float *x0 = malloc(sizeof(float) * (size_t)(seqlen * n)), *x1 = malloc(sizeof(float) * (size_t)(seqlen * n));
  hq_t_randn(x0, seqlen * n, 7, 1e-3f);
  hq_t_randn(x1, seqlen * n, 8, 1e3f * 1.5f); /* entries ~2^21 x window 0's (> 2^16 headroom) */
  struct hq_hessian h;
  HQ_ASSERT(hq_hessian_init(&h, be, n, 2) == HQ_OK);
  /* count == 0: zeros */
  float *H = NULL;
  CHECK(hq_hessian_finalize(&h, &H) == HQ_OK && H, "finalize of nothing");
  int nz = 0;
  for (int64_t k = 0; k < n * n; k++) nz += H[k] != 0.0f;
  CHECK(nz == 0, "empty Hessian must be zeros (%d non-zero)", nz);
  free(H);
  HQ_ASSERT(hq_hessian_init(&h, be, n, 2) == HQ_OK);
  hq_hessian_accumulate(&h, x0, seqlen, n); /* F from window 0 */
  hq_hessian_accumulate(&h, x1, seqlen, n);
  int F = 0;
  CHECK(hq_hessian_check(&h, &F) == 1, "a window beyond the range was not detected");
  hq_hessian_reset(&h);
  hq_hessian_set_scale(&h, F);
  hq_hessian_accumulate(&h, x0, seqlen, n);
  hq_hessian_accumulate(&h, x1, seqlen, n);
  int F2 = 0;
  CHECK(hq_hessian_check(&h, &F2) == HQ_OK, "still out of range after the retry");
  CHECK(hq_hessian_finalize(&h, &H) == HQ_OK, "finalize");
  double ref = 0.0;
  for (int64_t t = 0; t < seqlen; t++) ref += (double)x1[t * n + 3] * x1[t * n + 3] + (double)x0[t * n + 3] * x0[t * n + 3];
  ref *= 2.0 / (double)(2 * seqlen);
  CHECK(fabs(H[3 * n + 3] - ref) <= 1e-6 * ref, "retry H %g vs %g", H[3 * n + 3], ref);
  free(H);
  /* NaN */
  HQ_ASSERT(hq_hessian_init(&h, be, n, 2) == HQ_OK);
  x0[5] = NAN;
  hq_hessian_accumulate(&h, x0, seqlen, n);
  CHECK(hq_hessian_check(&h, &F) == HQ_ERR_NUMERIC, "NaN not reported");
  hq_hessian_free(&h);
  CHECK(hq_hessian_init(&h, be, 0, 1) == HQ_ERR_INPUT, "n = 0 accepted");
  CHECK(hq_hessian_init(&h, be, 4, 0) == HQ_ERR_INPUT, "0 windows accepted");
  free(x0), free(x1);
}

/* The windows' H through hq_hessian_finalize_in_place (the floats written over the sums) is
 * bit for bit hq_hessian_finalize's; n = 3000 needs three chunks (4.5 M entries, 4 M a chunk). */
static void test_in_place(int64_t n) {
  const int64_t seqlen = 9;
  float *x = malloc(sizeof(float) * (size_t)(seqlen * n));
  hq_t_randn(x, seqlen * n, 31 + (uint64_t)n, 1.0f);
  for (int64_t t = 0; t < seqlen; t++) x[t * n + n / 2] = 0.0f; /* a dead feature */
  struct hq_hessian a, b;
  HQ_ASSERT(hq_hessian_init(&a, be, n, 2) == HQ_OK && hq_hessian_init(&b, be, n, 2) == HQ_OK);
  hq_hessian_accumulate(&a, x, seqlen, n);
  hq_hessian_set_scale(&b, a.F);
  hq_hessian_accumulate(&b, x, seqlen, n);
  float *H = NULL;
  CHECK(hq_hessian_finalize(&a, &H) == HQ_OK, "finalize %lld", (long long)n);
  float *Hi = hq_hessian_finalize_in_place(&b, NULL);
  CHECK(!memcmp(H, Hi, sizeof(float) * (size_t)(n * n)), "in place %lld: H unlike finalize's", (long long)n);
  CHECK(b.acc == NULL && b.panels == NULL, "in place %lld: h still holds buffers", (long long)n);
  free(H);
  be->free(Hi);
  free(x);
}

/* The sharers of one accumulator finalising it together (a team of OpenMP threads standing
 * for a node's ranks, each converting its rows): H bit for bit hq_hessian_finalize's. n =
 * 3000: three chunks, each read by all before any is written. */
static void test_in_place_team(int64_t n, int members) {
  const int64_t seqlen = 7;
  float *x = malloc(sizeof(float) * (size_t)(seqlen * n));
  hq_t_randn(x, seqlen * n, 77 + (uint64_t)n, 1.0f);
  struct hq_hessian a;
  HQ_ASSERT(hq_hessian_init(&a, be, n, 2) == HQ_OK);
  hq_hessian_accumulate(&a, x, seqlen, n);
  const int F = a.F;
  const int64_t count = a.count;
  void *mem = calloc(1, hq_hessian_shared_bytes(n));
  memcpy(mem, a.acc, (size_t)a.ntri * sizeof(int64_t));
  float *H = NULL;
  CHECK(hq_hessian_finalize(&a, &H) == HQ_OK, "finalize %lld", (long long)n);
  float *got[8] = {0};
#pragma omp parallel num_threads(members)
  {
    const struct hq_team tm = hq_t_omp_team();
    struct hq_hessian h;
    HQ_ASSERT(hq_hessian_init_at(&h, be, n, 2, mem, tm.rank, tm.size) == HQ_OK);
    hq_hessian_set_scale(&h, F);
    h.count = count; /* as the all-reduce leaves it on every sharer */
    got[tm.rank] = hq_hessian_finalize_in_place(&h, &tm);
  }
  int same = 1;
  for (int r = 0; r < members; r++) same &= got[r] == (float *)mem;
  CHECK(same, "team in place %lld/%d: a member got another buffer", (long long)n, members);
  CHECK(!memcmp(H, mem, sizeof(float) * (size_t)(n * n)), "team in place %lld/%d: H unlike "
        "finalize's", (long long)n, members);
  free(H), free(mem), free(x);
}

/* Three sharers (OpenMP threads standing for a node's ranks) add their own windows into one
 * shared accumulator under the panel locks, all at once: the sums are those of one
 * accumulator of all windows; reset leaves shared sums alone; free leaves the memory. */
static void test_shared(int64_t n) {
  const int64_t seqlen = 16;
  float *win[6];
  for (int w = 0; w < 6; w++) {
    win[w] = malloc(sizeof(float) * (size_t)(seqlen * n));
    hq_t_randn(win[w], seqlen * n, 60 + (uint64_t)w, 1.0f + (float)w);
  }
  struct hq_hessian one;
  HQ_ASSERT(hq_hessian_init(&one, be, n, 6) == HQ_OK);
  hq_hessian_accumulate(&one, win[0], seqlen, n);
  for (int w = 1; w < 6; w++) hq_hessian_accumulate(&one, win[w], seqlen, n);
  const size_t bytes = hq_hessian_shared_bytes(n);
  CHECK(bytes >= (size_t)(n * n) * sizeof(float), "shared bytes %zu cannot hold H", bytes);
  void *mem = calloc(1, bytes);
  int64_t count = 0;
#pragma omp parallel num_threads(3) reduction(+ : count)
  {
    struct hq_hessian h;
    const int me = omp_get_thread_num(), k = omp_get_num_threads();
    HQ_ASSERT(hq_hessian_init_at(&h, be, n, 6, mem, me, k) == HQ_OK);
    hq_hessian_set_scale(&h, one.F);
    for (int w = me; w < 6; w += k) hq_hessian_accumulate(&h, win[w], seqlen, n);
    count += h.count;
    if (me == 0) hq_hessian_reset(&h); /* counters only */
    hq_hessian_free(&h);
  }
  CHECK(count == one.count, "shared: %lld tokens, not %lld", (long long)count, (long long)one.count);
  CHECK(!memcmp(mem, one.acc, (size_t)one.ntri * sizeof(int64_t)),
        "shared %lld: sums unlike one accumulator's", (long long)n);
  hq_hessian_free(&one);
  free(mem);
  for (int w = 0; w < 6; w++) free(win[w]);
}

int main(void) {
  be = hq_backend_cpu();
  test_in_place(1);
  test_in_place(2);
  test_in_place(300);
  test_in_place(3000);
  test_in_place_team(300, 2);
  test_in_place_team(3000, 2);
  test_in_place_team(3000, 3);
  test_shared(37);
  test_shared(1100); /* 5 panels */
  test_exact(37);
  test_exact(256);
  test_exact(700); /* 3 panels, the last partial */
  test_range_and_errors();
  return hq_t_done("test_hessian");
}
