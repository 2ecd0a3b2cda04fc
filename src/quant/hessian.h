/* Hessian accumulation H = 2/N Σ x xᵀ for one input group (DESIGN.md data flow), EXACT in
 * fixed point so that its value cannot depend on the order of the windows, on how they are
 * split over ranks or on the all-reduce algorithm (docs/readme/reproducibility.md).
 *
 * Each calibration window's XᵀX is formed on its own (gemm_rows panels of HQ_HESS_P features:
 * a shape fixed by the window length and the feature count), every fp32 entry v is turned
 * into the integer round(v 2^F) and added into an int64, so sums are integer additions:
 * exact, associative, and the same for an MPI or an NCCL all-reduce of int64. A window's
 * entries are kept below 2^lim_bits, lim_bits = 62 - ceil(log2(windows)), so the sum of all
 * windows cannot overflow. F is chosen once per group from window 0, leaving 2^16 of
 * headroom for windows with larger entries; a window beyond that is detected (the largest
 * |entry| is tracked) and the group is accumulated again with an F from the largest entry of
 * all windows. N counts TOKENS (not sequences). Memory: 8 bytes per entry of the upper
 * triangle (4 bytes x n²) plus a panel of HQ_HESS_P x n floats per thread; finalize turns it
 * into the fp32 H (4 bytes x n²), 8 bytes x n² at its peak, or in place (4 bytes x n² in all).
 * Not collective. */
#ifndef HQ_HESSIAN_H
#define HQ_HESSIAN_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"

#define HQ_HESS_P 256 /* features per panel */

struct hq_hessian {
  const struct hq_backend *be;
  int64_t n, ntri;   /* features (input columns); n (n + 1) / 2 */
  int64_t *acc;      /* [ntri] backend memory: entry (i, j), i <= j, at j (j + 1) / 2 + i
                        (column-packed upper triangle) */
  int64_t *host;     /* the sums on the host (== acc on a host backend) */
  float *panels;     /* [nslots x HQ_HESS_P x n] backend memory */
  int nslots;
  int lim_bits;      /* a window's entries stay below 2^lim_bits (in units of 2^-F) */
  int F;             /* entries are stored as round(v 2^F) */
  int have_F;
  double vmax;       /* largest |entry| of any accumulated window, NaN once one was not finite */
  int64_t count;     /* tokens accumulated */
  int borrowed;      /* acc is the caller's (hq_hessian_init_at): not zeroed, not freed */
  atomic_int *locks; /* shared acc: a lock per panel (64 bytes apart), else NULL */
  int rot;           /* shared acc: the panel this sharer starts from */
};

/* n features, at most `windows` windows accumulated in all (over all ranks). */
int hq_hessian_init(struct hq_hessian *h, const struct hq_backend *be, int64_t n, int64_t windows);
/* One accumulator for several processes (the ranks of a node): `shared` is caller memory of
 * hq_hessian_shared_bytes(n) bytes (host backend), zeroed by the caller, that every sharer
 * passes to its own h; sharers add their windows' panels under a per-panel lock (integer sums:
 * the result is the same in any order), sharer `who` of `sharers` starting from its own share
 * of the panels so that they rarely wait. hq_hessian_reset then leaves the sums for the caller
 * to zero; hq_hessian_free leaves the memory. shared NULL: hq_hessian_init. */
int hq_hessian_init_at(struct hq_hessian *h, const struct hq_backend *be, int64_t n,
                       int64_t windows, void *shared, int who, int sharers);
size_t hq_hessian_shared_bytes(int64_t n);
/* max_i Σ_t x_ti² over one window X [ntok x n] (ldx, backend memory): a bound on every entry
 * of its XᵀX, the value window 0 sets F from. */
double hq_hessian_window_bound(const struct hq_backend *be, const float *X, int64_t ntok,
                               int64_t ldx, int64_t n);
/* F for windows whose entries are at most `bound`, with `headroom` bits to spare below h's
 * limit. */
int hq_hessian_scale_for(const struct hq_hessian *h, double bound, int headroom);
void hq_hessian_set_scale(struct hq_hessian *h, int F);
/* sums += XᵀX of ONE window X [ntok x n] (row-major, ldx, backend memory); count += ntok. If
 * no F was set, it is taken from this window (hq_hessian_scale_for(h, bound, 16)). */
void hq_hessian_accumulate(struct hq_hessian *h, const float *X, int64_t ntok, int64_t ldx);
/* The ntri int64 sums on the host, to be all-reduced (MPI_SUM) in place by the caller, with
 * count (sum) and vmax (max). */
int64_t *hq_hessian_sums(struct hq_hessian *h);
/* After all windows (and the all-reduce): HQ_OK; 1 when an entry exceeded the range of F —
 * then *F_retry is the F to accumulate the group again with (hq_hessian_reset, set_scale);
 * HQ_ERR_NUMERIC (message set) when an activation was not finite. */
int hq_hessian_check(const struct hq_hessian *h, int *F_retry);
/* H = 2/count Σ x xᵀ, fp32 [n x n] full symmetric, host memory (free() it); h (its sums) is
 * freed. count == 0 gives all zeros (every column dead). */
int hq_hessian_finalize(struct hq_hessian *h, float **H);
/* The same in the sums' own memory (host backend; n(n+1)/2 int64 hold the n² floats): returns
 * H there, no second buffer. The memory passes to the caller (be->free it), or stays the
 * caller's when shared; h's other buffers are freed. team (NULL: alone): the sharers of one
 * shared accumulator (hq_hessian_init_at), all calling with their h, each converting its
 * share of the rows; H is complete on every member when it returns. The floats are the
 * same whoever converts them. */
float *hq_hessian_finalize_in_place(struct hq_hessian *h, const struct hq_team *team);
/* H[i][j] = H[j][i] for j > i (the strict upper triangle from the strict lower one), in 64 x 64
 * tiles (a column walk of a 28672-wide H misses the cache on every element); only the tile
 * rows t with t % parts == part (a team member's share; 0, 1: all). */
void hq_mirror_lower(float *H, int64_t n, int part, int parts);
void hq_hessian_reset(struct hq_hessian *h);
void hq_hessian_free(struct hq_hessian *h);

#endif
