/* CPU backend: reproducible dense linear algebra on OpenBLAS/LAPACKE
 * (docs/readme/reproducibility.md).
 *
 * OpenBLAS rounds an element of C differently depending on the call's shape (its kernels
 * treat a row by its position in the call's blocking and use other code for tails) and on its
 * thread count (threads split the problem at shape-dependent places). So OpenBLAS runs on ONE
 * thread here (hq_cpu_blas_init) and every call it sees has a shape fixed by the problem:
 *  - gemm_rows cuts C into tiles of tm rows x HQ_TN columns, tm = HQ_TM or, for segments
 *    (windows) shorter than that, the power of two that holds one. Row tiles are aligned to
 *    the caller's row numbering (row0 + r, per segment); a tile that the call only partly
 *    covers is computed through zero-padded copies at the full tm rows. Column chunks start at
 *    column 0 of the call (n is a property of the problem, not of the batching). Each tile is
 *    one single-threaded sgemm of shape tm x (HQ_TN or the tail) x k, and OpenMP threads
 *    take tiles; no sum is split across tiles, so threads reorder nothing.
 *  - the Cholesky inverse is a tiled potrf + trtri whose tiles (HQ_NB) are cut from the
 *    matrix size alone; each tile op is one single-threaded LAPACK/BLAS call.
 * A result is then a function of the inputs, the build and OpenBLAS's kernel family (the
 * CPU type it picked, or OPENBLAS_CORETYPE), never of m, batching, rank or thread count. */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cpu.h"
#include "error.h"

#define HQ_TM 256  /* rows of a gemm tile (segments shorter than this: see tile_rows) */
#define HQ_TN 1024 /* columns of a gemm tile */
#define HQ_NB 256  /* Cholesky / triangular-inverse tile */

void hq_cpu_blas_init(void) {
  static int done = 0;
  if (done) return;
  openblas_set_num_threads(1);
  done = 1;
}

/* ---- gemm_rows -------------------------------------------------------------------------- */

struct gemm_call {
  int ta, tb;
  int64_t m, n, k, seg, tm, phase; /* tile rows; phase = row0 mod tm */
  float alpha, beta;
  const float *A, *B;
  float *C;
  int64_t lda, ldb, ldc;
};

/* one tm x cn tile: rows [lo, hi) of the call are its rows off .. off + (hi - lo) */
static void gemm_tile(const struct gemm_call *g, int64_t lo, int64_t hi, int64_t off,
                      int64_t c0, int64_t cn, float **pa, float **pc) {
  const CBLAS_TRANSPOSE ta = g->ta ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = g->tb ? CblasTrans : CblasNoTrans;
  const float *B = g->tb ? g->B + c0 * g->ldb : g->B + c0;
  const int64_t nr = hi - lo, k = g->k;
  if (nr == g->tm) { /* a whole tile: straight from the operands */
    const float *A = g->ta ? g->A + lo : g->A + lo * g->lda;
    cblas_sgemm(CblasRowMajor, ta, tb, (blasint)g->tm, (blasint)cn, (blasint)k, g->alpha, A,
                (blasint)g->lda, B, (blasint)g->ldb, g->beta, g->C + lo * g->ldc + c0,
                (blasint)g->ldc);
    return;
  }
  if (!*pa) *pa = hq_xcalloc((size_t)HQ_TM * (size_t)(k ? k : 1), sizeof(float));
  if (!*pc) *pc = hq_xcalloc((size_t)HQ_TM * HQ_TN, sizeof(float));
  float *a = *pa, *c = *pc;
  /* the padded operand: op(A) rows off.. hold the call's rows, the others zero */
  memset(a, 0, (size_t)g->tm * (size_t)k * sizeof(float));
  if (g->ta) { /* A is k x m: copy columns lo..hi into columns off.. of a [k x tm] */
    for (int64_t p = 0; p < k; p++)
      memcpy(a + p * g->tm + off, g->A + p * g->lda + lo, (size_t)nr * sizeof(float));
  } else {
    for (int64_t r = 0; r < nr; r++)
      memcpy(a + (off + r) * k, g->A + (lo + r) * g->lda, (size_t)k * sizeof(float));
  }
  memset(c, 0, (size_t)g->tm * (size_t)cn * sizeof(float));
  if (g->beta != 0.0f)
    for (int64_t r = 0; r < nr; r++)
      memcpy(c + (off + r) * cn, g->C + (lo + r) * g->ldc + c0, (size_t)cn * sizeof(float));
  cblas_sgemm(CblasRowMajor, ta, tb, (blasint)g->tm, (blasint)cn, (blasint)k, g->alpha, a,
              (blasint)(g->ta ? g->tm : (k ? k : 1)), B, (blasint)g->ldb, g->beta, c,
              (blasint)cn);
  for (int64_t r = 0; r < nr; r++)
    memcpy(g->C + (lo + r) * g->ldc + c0, c + (off + r) * cn, (size_t)cn * sizeof(float));
}

/* Row tiles of one segment of `len` rows: tile t covers segment rows
 * [t*tm - phase, (t+1)*tm - phase) clipped to [0, len). */
static int64_t seg_tiles(int64_t len, int64_t tm, int64_t phase) { return (len + phase + tm - 1) / tm; }

/* tile rows for segments of seg rows (0: unbounded; < 0: unbounded, tiles of about -seg
 * rows): a function of seg alone */
static int64_t tile_rows(int64_t seg) {
  int64_t t = 16;
  const int64_t want = seg < 0 ? -seg : seg;
  while (seg != 0 && t < want && t < HQ_TM) t *= 2;
  return seg != 0 ? t : HQ_TM;
}

void hq_cpu_gemm_rows(int64_t row0, int64_t seg, int ta, int tb, int64_t m, int64_t n, int64_t k,
                      float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                      float beta, float *C, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  hq_cpu_blas_init();
  struct gemm_call g = {ta, tb, m, n, k, seg > 0 && seg < m ? seg : m, tile_rows(seg), 0, alpha,
                        beta, A, B, C, lda, ldb, ldc};
  g.phase = ((row0 % g.tm) + g.tm) % g.tm;
  const int64_t nseg = (m + g.seg - 1) / g.seg;
  const int64_t per_seg = seg_tiles(g.seg, g.tm, g.phase); /* the last segment may have fewer */
  const int64_t nchunk = (n + HQ_TN - 1) / HQ_TN;
  const int64_t ntask = nseg * per_seg * nchunk;
#pragma omp parallel if (ntask > 1 && !omp_in_parallel())
  {
    float *pa = NULL, *pc = NULL;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < ntask; t++) {
      /* column chunk slowest: consecutive tiles reuse the same columns of op(B) from cache */
      const int64_t ch = t / (nseg * per_seg), s = (t / per_seg) % nseg, rt = t % per_seg;
      const int64_t s0 = s * g.seg, len = m - s0 < g.seg ? m - s0 : g.seg;
      int64_t lo = rt * g.tm - g.phase, hi = lo + g.tm;
      const int64_t off = lo < 0 ? -lo : 0;
      lo = lo < 0 ? 0 : lo;
      hi = hi > len ? len : hi;
      if (lo >= hi) continue;
      const int64_t c0 = ch * HQ_TN, cn = n - c0 < HQ_TN ? n - c0 : HQ_TN;
      gemm_tile(&g, s0 + lo, s0 + hi, off, c0, cn, &pa, &pc);
    }
    free(pa);
    free(pc);
  }
}

void hq_cpu_gemm(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, const float *A,
                 int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  hq_cpu_gemm_rows(0, 0, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* Upper triangle of C = alpha XᵀX + beta C: the HQ_NB tiles on and above the diagonal, each
 * one single-threaded call of a shape fixed by n. */
void hq_cpu_syrk(int64_t n, int64_t k, float alpha, const float *X, int64_t ldx, float beta,
                 float *C, int64_t ldc) {
  if (n <= 0) return;
  hq_cpu_blas_init();
  const int64_t nt = (n + HQ_NB - 1) / HQ_NB;
#pragma omp parallel for schedule(dynamic, 1) if (nt > 1)
  for (int64_t t = 0; t < nt * nt; t++) {
    const int64_t TI = t / nt, TJ = t % nt;
    if (TJ < TI) continue;
    const int64_t i0 = TI * HQ_NB, j0 = TJ * HQ_NB;
    const int64_t mi = n - i0 < HQ_NB ? n - i0 : HQ_NB, nj = n - j0 < HQ_NB ? n - j0 : HQ_NB;
    if (TI == TJ)
      cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (blasint)mi, (blasint)k, alpha, X + i0,
                  (blasint)ldx, beta, C + i0 * ldc + i0, (blasint)ldc);
    else
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)mi, (blasint)nj, (blasint)k,
                  alpha, X + i0, (blasint)ldx, X + j0, (blasint)ldx, beta, C + i0 * ldc + j0,
                  (blasint)ldc);
  }
}

/* ---- tiled Cholesky and triangular inverse (row-major LOWER triangles) -------------------
 * LAPACK sees a row-major buffer as column-major, where the row-major lower triangle is the
 * upper one: hence 'U' in the LAPACKE calls below. Only the lower triangle is read or written;
 * the strict upper triangle keeps whatever it held. */

static int64_t nb_of(int64_t n, int64_t t) { return n - t * HQ_NB < HQ_NB ? n - t * HQ_NB : HQ_NB; }

/* The team's share of a loop: task t of a step belongs to member t % size, or as tri_owners
 * says (a function of the matrix size and the team size only); within a member OpenMP threads
 * take its tasks. Every task is one fixed-shape single-threaded LAPACK/BLAS call, so who runs
 * it changes nothing. */
static const struct hq_team solo = {0, 1, NULL, NULL, NULL};
static int mine(const struct hq_team *tm, int64_t t) { return t % tm->size == tm->rank; }
static int team_info(const struct hq_team *tm, int info) { /* member 0's, after a sync */
  hq_team_sync(tm);
  return tm->size > 1 ? tm->bcast_int(tm->ctx, info) : info;
}

/* A = L Lᵀ in place (L lower). 0, or the LAPACK-style info (> 0: minor not positive). */
static int chol_lower(int64_t n, float *A, int64_t lda, const struct hq_team *tm) {
  const int64_t nt = (n + HQ_NB - 1) / HQ_NB;
  for (int64_t TK = 0; TK < nt; TK++) {
    const int64_t k0 = TK * HQ_NB, kb = nb_of(n, TK);
    float *Akk = A + k0 * lda + k0;
    lapack_int info = 0;
    if (tm->rank == 0) info = LAPACKE_spotrf(LAPACK_COL_MAJOR, 'U', (lapack_int)kb, Akk, (lapack_int)lda);
    info = team_info(tm, (int)info);
    if (info != 0) return (int)(info > 0 ? k0 + info : 1);
    const int64_t rest = nt - TK - 1;
    if (rest == 0) break;
    /* panel: L_IK = A_IK L_KK⁻ᵀ, one tile row each */
#pragma omp parallel for schedule(dynamic, 1) if (rest > 1)
    for (int64_t TI = TK + 1; TI < nt; TI++)
      if (mine(tm, TI))
        cblas_strsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit,
                    (blasint)nb_of(n, TI), (blasint)kb, 1.0f, Akk, (blasint)lda,
                    A + TI * HQ_NB * lda + k0, (blasint)lda);
    hq_team_sync(tm);
    /* trailing update of the lower tiles: A_IJ -= L_IK L_JKᵀ */
#pragma omp parallel for schedule(dynamic, 1) if (rest > 1)
    for (int64_t t = 0; t < rest * rest; t++) {
      const int64_t ri = t / rest, rj = t % rest, TI = TK + 1 + ri, TJ = TK + 1 + rj;
      if (rj > ri || !mine(tm, ri * (ri + 1) / 2 + rj)) continue; /* round robin, lower tiles */
      const float *LI = A + TI * HQ_NB * lda + k0, *LJ = A + TJ * HQ_NB * lda + k0;
      float *Aij = A + TI * HQ_NB * lda + TJ * HQ_NB;
      if (TI == TJ)
        cblas_ssyrk(CblasRowMajor, CblasLower, CblasNoTrans, (blasint)nb_of(n, TI), (blasint)kb,
                    -1.0f, LI, (blasint)lda, 1.0f, Aij, (blasint)lda);
      else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)nb_of(n, TI),
                    (blasint)nb_of(n, TJ), (blasint)kb, -1.0f, LI, (blasint)lda, LJ, (blasint)lda,
                    1.0f, Aij, (blasint)lda);
    }
    hq_team_sync(tm);
  }
  return 0;
}

/* P_I = -(X_II L_IK + Σ_{TK < TJ < TI} X_IJ L_JK) L_KK⁻¹ for tile row TI (Pi: ni x kb, ld HQ_NB) */
static void tri_panel_row(int64_t n, const float *A, int64_t lda, int64_t TK, int64_t TI,
                          float *Pi) {
  const int64_t k0 = TK * HQ_NB, kb = nb_of(n, TK), i0 = TI * HQ_NB, ni = nb_of(n, TI);
  for (int64_t r = 0; r < ni; r++)
    memcpy(Pi + r * HQ_NB, A + (i0 + r) * lda + k0, (size_t)kb * sizeof(float));
  cblas_strmm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit,
              (blasint)ni, (blasint)kb, 1.0f, A + i0 * lda + i0, (blasint)lda, Pi, HQ_NB);
  for (int64_t TJ = TK + 1; TJ < TI; TJ++)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)ni, (blasint)kb,
                (blasint)nb_of(n, TJ), 1.0f, A + i0 * lda + TJ * HQ_NB, (blasint)lda,
                A + TJ * HQ_NB * lda + k0, (blasint)lda, 1.0f, Pi, HQ_NB);
  cblas_strsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit,
              (blasint)ni, (blasint)kb, -1.0f, A + k0 * lda + k0, (blasint)lda, Pi, HQ_NB);
}

/* The members of tile rows TK+1 .. nt-1 in step TK of the inverse: row TI costs about TI - TK
 * tile products, so the largest first, each to the least loaded member (ties: the lowest). */
static void tri_owners(int64_t nt, int64_t TK, const struct hq_team *tm, int *own) {
  int64_t *load = hq_xcalloc((size_t)tm->size, sizeof(int64_t));
  for (int64_t TI = nt - 1; TI > TK; TI--) {
    int m = 0;
    for (int r = 1; r < tm->size; r++)
      if (load[r] < load[m]) m = r;
    own[TI] = m;
    load[m] += TI - TK;
  }
  free(load);
}

/* L (lower, non-unit) -> L⁻¹ in place, right to left by tile columns (LAPACK strtri's order):
 * with the trailing part already inverted (X_TT), the panel becomes
 * L_TK <- -X_TT L_TK L_KK⁻¹, then L_KK <- L_KK⁻¹. */
static int tri_inverse_lower(int64_t n, float *A, int64_t lda, const struct hq_team *tm) {
  const int64_t nt = (n + HQ_NB - 1) / HQ_NB;
  float *P = malloc((size_t)n * HQ_NB * sizeof(float) + 1); /* the panel's new values */
  int *own = malloc((size_t)nt * sizeof(int));
  if (!P || !own) {
    free(P), free(own);
    return -1;
  }
  for (int64_t TK = nt - 1; TK >= 0; TK--) {
    const int64_t k0 = TK * HQ_NB, kb = nb_of(n, TK), rest = nt - TK - 1, t0 = k0 + kb;
    if (rest > 0) {
      tri_owners(nt, TK, tm, own);
#pragma omp parallel for schedule(dynamic, 1) if (rest > 1)
      for (int64_t TI = nt - 1; TI > TK; TI--) /* the largest first */
        if (own[TI] == tm->rank) tri_panel_row(n, A, lda, TK, TI, P + (TI * HQ_NB - t0) * HQ_NB);
      hq_team_sync(tm); /* every member has read the panel and L_KK */
      for (int64_t TI = TK + 1; TI < nt; TI++)
        if (own[TI] == tm->rank)
          for (int64_t r = TI * HQ_NB; r < TI * HQ_NB + nb_of(n, TI); r++)
            memcpy(A + r * lda + k0, P + (r - t0) * HQ_NB, (size_t)kb * sizeof(float));
    }
    lapack_int info = 0;
    if (tm->rank == 0)
      info = LAPACKE_strtri(LAPACK_COL_MAJOR, 'U', 'N', (lapack_int)kb, A + k0 * lda + k0, (lapack_int)lda);
    info = team_info(tm, (int)info);
    if (info != 0) {
      free(P), free(own);
      return (int)(info > 0 ? k0 + info : 1);
    }
  }
  free(P), free(own);
  return 0;
}

/* Reverse a row-major n x n matrix in both indices: A[i][j] <-> A[n-1-i][n-1-j] (J A J). */
static void reverse_both(int64_t n, float *A, int64_t lda, const struct hq_team *tm) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < (n + 1) / 2; i++) {
    if (!mine(tm, i)) continue;
    float *r = A + i * lda, *q = A + (n - 1 - i) * lda;
    int64_t jend = (i == n - 1 - i) ? n / 2 : n; /* middle row: swap within itself once */
    for (int64_t j = 0; j < jend; j++) {
      float t = r[j];
      r[j] = q[n - 1 - j];
      q[n - 1 - j] = t;
    }
  }
  hq_team_sync(tm);
}

/* Upper Cholesky factor of H⁻¹ in 2/3 n³ flops instead of the 4/3 n³ of potrf+potri+potrf:
 * with J the reversal, J H J = L Lᵀ (L lower) gives H = U Uᵀ with U = J L J upper, hence
 * H⁻¹ = (U⁻¹)ᵀ U⁻¹ and the wanted factor (unique with a positive diagonal) is
 * V = U⁻¹ = J L⁻¹ J. */
int hq_cpu_chol_inverse_upper_team(int64_t n, float *H, int64_t ldh, const struct hq_team *tm) {
  if (n == 0) return 0;
  if (!tm) tm = &solo;
  hq_cpu_blas_init();
  hq_team_sync(tm); /* H complete on every member */
  reverse_both(n, H, ldh, tm);
  int info = chol_lower(n, H, ldh, tm);
  if (info == 0) info = tri_inverse_lower(n, H, ldh, tm);
  if (info < 0) HQ_DIE("out of memory for the %lld x %d Cholesky panel", (long long)n, HQ_NB);
  reverse_both(n, H, ldh, tm); /* also after a failure: the strict lower triangle back in place */
  return info;
}

int hq_cpu_chol_inverse_upper(int64_t n, float *H, int64_t ldh) {
  const int info = hq_cpu_chol_inverse_upper_team(n, H, ldh, NULL);
  if (info) return info;
  /* zero the row-major strict lower triangle (it held the untouched upper one) */
#pragma omp parallel for schedule(static)
  for (int64_t i = 1; i < n; i++) memset(H + i * ldh, 0, (size_t)i * sizeof(float));
  return 0;
}

/* ---- exact Hessian accumulation ------------------------------------------------------- */

/* round(d) half to even for an fp32 value scaled by a power of two: with |d| >= 2^23 it is an
 * integer already; below, adding and removing 1.5 * 2^52 rounds in the default mode */
static inline int64_t round_scaled(double d) {
  const double M = 6755399441055744.0; /* 1.5 * 2^52 */
  return (int64_t)(fabs(d) < 8388608.0 ? (d + M) - M : d);
}

double hq_cpu_hess_fixed_acc(int64_t j0, int64_t np, const float *C, int64_t ldc, int F,
                             int lim_bits, int64_t *acc) {
  const double s = ldexp(1.0, F), lim = ldexp(1.0, lim_bits);
  float vmax = 0.0f;
  int nonfinite = 0;
  for (int64_t p = 0; p < np; p++) {
    const int64_t j = j0 + p;
    const float *row = C + p * ldc;
    int64_t *a = acc + j * (j + 1) / 2;
    for (int64_t i = 0; i <= j; i++) {
      const float m = fabsf(row[i]);
      nonfinite |= !(m <= 3.4028234663852886e38f);
      vmax = m > vmax ? m : vmax;
      const double d = (double)row[i] * s;
      a[i] += fabs(d) < lim ? round_scaled(d) : 0;
    }
  }
  return nonfinite ? NAN : (double)vmax;
}

void hq_cpu_symmetrize(int64_t n, float *A, int64_t lda) {
  /* blocked transpose copy upper -> lower for cache friendliness */
  const int64_t B = 64;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t ib = 0; ib < n; ib += B)
    for (int64_t jb = 0; jb <= ib; jb += B)
      for (int64_t i = ib; i < ib + B && i < n; i++)
        for (int64_t j = jb; j < jb + B && j < i; j++) A[i * lda + j] = A[j * lda + i];
}
