/* The work partition plan (mpi/partition.h). Pure functions of (config, nranks): no MPI, no
 * global state, so every rank computes the same plan in any order. Not collective.
 *
 * Rows of the linears of one input group (q|k|v, o, gate|up, down) are cut into alignment
 * units of HQ_ROW_ALIGN rows (the last unit of a linear may be shorter). The units of the
 * group's linears are concatenated and split into nranks contiguous runs whose unit counts
 * differ by at most one (the first U % nranks ranks get one more). A run is then mapped back
 * to at most one contiguous row range per linear. Ranges therefore start on a multiple of 32
 * and end on a multiple of 32 or at the linear's last row; ranks beyond the number of units
 * get empty ranges. All linears of a group share the input dimension, so rows are the cost
 * measure: GPTQ on one row costs ~2*cols^2 flops (the column sweep and lazy batch updates);
 * the Cholesky of H is done by every rank and is not counted in cost[][]. */
#include "partition.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* Start of piece `i` when `n` items are split into `parts` near-equal contiguous pieces. */
static int64_t split_begin(int64_t n, int64_t parts, int64_t i) {
  int64_t base = n / parts, rem = n % parts;
  return i * base + (i < rem ? i : rem);
}

/* Not collective. */
struct hq_row_range hq_plan_windows(int64_t nwindows, int nranks, int rank) {
  struct hq_row_range r = {0, 0};
  if (nwindows <= 0 || nranks <= 0 || rank < 0 || rank >= nranks) return r;
  r.begin = split_begin(nwindows, nranks, rank);
  r.end = split_begin(nwindows, nranks, rank + 1);
  return r;
}

/* Not collective. */
int hq_plan_make(const struct hq_model_config *c, int nranks, struct hq_plan *p) {
  memset(p, 0, sizeof *p);
  if (nranks < 1) return hq_fail(HQ_ERR_INPUT, "cannot plan work for %d ranks", nranks);
  int64_t rows[HQ_LIN_COUNT], cols[HQ_LIN_COUNT];
  for (int l = 0; l < HQ_LIN_COUNT; l++) {
    hq_linear_shape(c, (enum hq_linear)l, &rows[l], &cols[l]);
    if (rows[l] < 1 || cols[l] < 1)
      return hq_fail(HQ_ERR_INPUT, "linear %s has shape %lld x %lld; check config.json",
                     hq_linear_name((enum hq_linear)l), (long long)rows[l], (long long)cols[l]);
  }
  p->nranks = nranks;
  for (int l = 0; l < HQ_LIN_COUNT; l++)
    p->rows[l] = hq_xcalloc((size_t)nranks, sizeof(struct hq_row_range));
  for (int g = 0; g < HQ_GROUP_COUNT; g++)
    p->cost[g] = hq_xcalloc((size_t)nranks, sizeof(double));

  for (int g = 0; g < HQ_GROUP_COUNT; g++) {
    /* The group's linears in enum (true-sequential) order and their unit offsets. */
    int64_t total_units = 0, unit_off[HQ_LIN_COUNT] = {0};
    for (int l = 0; l < HQ_LIN_COUNT; l++) {
      if ((int)hq_linear_group((enum hq_linear)l) != g) continue;
      unit_off[l] = total_units;
      total_units += (rows[l] + HQ_ROW_ALIGN - 1) / HQ_ROW_ALIGN;
    }
    for (int r = 0; r < nranks; r++) {
      int64_t ua = split_begin(total_units, nranks, r), ub = split_begin(total_units, nranks, r + 1);
      for (int l = 0; l < HQ_LIN_COUNT; l++) {
        if ((int)hq_linear_group((enum hq_linear)l) != g) continue;
        int64_t nu = (rows[l] + HQ_ROW_ALIGN - 1) / HQ_ROW_ALIGN;
        int64_t a = ua > unit_off[l] ? ua - unit_off[l] : 0;
        int64_t b = ub - unit_off[l] < nu ? ub - unit_off[l] : nu;
        struct hq_row_range rr = {0, 0};
        if (b > a) {
          rr.begin = a * HQ_ROW_ALIGN;
          rr.end = b * HQ_ROW_ALIGN < rows[l] ? b * HQ_ROW_ALIGN : rows[l];
        }
        p->rows[l][r] = rr;
        p->cost[g][r] += 2.0 * (double)(rr.end - rr.begin) * (double)cols[l] * (double)cols[l];
      }
    }
  }
  return HQ_OK;
}

/* Not collective. */
void hq_plan_free(struct hq_plan *p) {
  for (int l = 0; l < HQ_LIN_COUNT; l++) free(p->rows[l]);
  for (int g = 0; g < HQ_GROUP_COUNT; g++) free(p->cost[g]);
  memset(p, 0, sizeof *p);
}

/* Not collective. */
int hq_plan_window_owner(int64_t nwindows, int nranks, int64_t w) {
  int r = (int)(w * nranks / (nwindows > 0 ? nwindows : 1)); /* near it; then step */
  if (r >= nranks) r = nranks - 1;
  while (r > 0 && split_begin(nwindows, nranks, r) > w) r--;
  while (r + 1 < nranks && split_begin(nwindows, nranks, r + 1) <= w) r++;
  return r;
}

/* A block's cost for the block-group cut: GPTQ's rows x cols² of its linears (the forward
 * and the Hessian scale with the same shapes). Every block of a dense model costs the same. */
static double block_cost(const struct hq_model_config *c, int64_t b) {
  (void)b;
  double w = 0.0;
  for (int l = 0; l < HQ_LIN_COUNT; l++) {
    int64_t rows, cols;
    hq_linear_shape(c, (enum hq_linear)l, &rows, &cols);
    w += (double)rows * (double)cols * (double)cols;
  }
  return w;
}

/* Not collective. */
int hq_block_groups_make(const struct hq_model_config *c, int nranks, int G,
                         struct hq_block_groups *bg) {
  memset(bg, 0, sizeof *bg);
  const int64_t L = c->n_layers;
  if (G < 1 || G > nranks || G > L)
    return hq_fail(HQ_ERR_INPUT, "--block-groups %d must be between 1 and the number of ranks "
                   "(%d) and of blocks (%lld); 1 (the default) quantizes the blocks one after "
                   "another with all ranks", G, nranks, (long long)L);
  bg->G = G;
  bg->rank0 = hq_xmalloc((size_t)(G + 1) * sizeof(int));
  bg->block0 = hq_xmalloc((size_t)(G + 1) * sizeof(int64_t));
  double *cum = hq_xmalloc((size_t)(L + 1) * sizeof(double));
  cum[0] = 0.0;
  for (int64_t b = 0; b < L; b++) cum[b + 1] = cum[b] + block_cost(c, b);
  for (int k = 0; k <= G; k++) bg->rank0[k] = (int)split_begin(nranks, G, k);
  bg->block0[0] = 0;
  for (int k = 1; k < G; k++) {
    const double want = cum[L] * (double)k / (double)G;
    int64_t b = bg->block0[k - 1] + 1; /* the cut nearest `want`, one block at least each */
    while (b < L - (G - k) && fabs(cum[b + 1] - want) < fabs(cum[b] - want)) b++;
    bg->block0[k] = b;
  }
  bg->block0[G] = L;
  free(cum);
  return HQ_OK;
}

/* Not collective. */
void hq_block_groups_free(struct hq_block_groups *bg) {
  free(bg->rank0);
  free(bg->block0);
  memset(bg, 0, sizeof *bg);
}

/* Not collective. */
int hq_block_group_of(const struct hq_block_groups *bg, int rank) {
  int k = 0;
  while (k + 1 < bg->G && bg->rank0[k + 1] <= rank) k++;
  return k;
}
