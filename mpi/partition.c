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
