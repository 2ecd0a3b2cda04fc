/* The work partition plan (DESIGN.md "Parallel decomposition"): which rank owns which output
 * rows of which linear of a block, and which calibration windows. A pure function of the model
 * config and the rank count, identical on every rank. Not collective. */
#ifndef HQ_PARTITION_H
#define HQ_PARTITION_H

#include <stdint.h>

#include "model.h"

#define HQ_ROW_ALIGN 32 /* row ranges are multiples of 32 so packed qzeros columns split cleanly */

struct hq_row_range {
  int64_t begin, end; /* [begin, end) output rows; empty when begin == end */
};

struct hq_plan {
  int nranks;
  /* rows[l][r]: rows of linear l owned by rank r (any block: all blocks share shapes) */
  struct hq_row_range *rows[HQ_LIN_COUNT];
  /* estimated cost (flops) per rank and group, for the balance report */
  double *cost[HQ_GROUP_COUNT];
};

/* Split the rows of the linears of each input group over the ranks: the linears of a group
 * are concatenated (q|k|v, gate|up) and cut into nranks contiguous pieces of near-equal size
 * aligned to HQ_ROW_ALIGN. */
int hq_plan_make(const struct hq_model_config *c, int nranks, struct hq_plan *p);
void hq_plan_free(struct hq_plan *p);
/* Windows [begin, end) of `nwindows` owned by `rank` (contiguous, sizes differ by <= 1). */
struct hq_row_range hq_plan_windows(int64_t nwindows, int nranks, int rank);

#endif
