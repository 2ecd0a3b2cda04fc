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
/* The rank of `nranks` that owns window w under hq_plan_windows. */
int hq_plan_window_owner(int64_t nwindows, int nranks, int64_t w);

/* Block groups (--block-groups G, DESIGN.md "Parallel decomposition"): group k is the ranks
 * [rank0[k], rank0[k+1]) (contiguous, sizes differ by <= 1) and owns the blocks
 * [block0[k], block0[k+1]) (contiguous, at least one each), cut where the cumulative cost of
 * the blocks is nearest k/G of the whole. The blocks' cut depends on the config and G only,
 * not on the rank count: the result is a function of G alone (a group with a rank less than
 * another then simply takes longer). */
struct hq_block_groups {
  int G;
  int *rank0;      /* [G+1] */
  int64_t *block0; /* [G+1] */
};
/* HQ_ERR_INPUT with a hint when G < 1, G > nranks or G > the number of blocks. */
int hq_block_groups_make(const struct hq_model_config *c, int nranks, int G,
                         struct hq_block_groups *bg);
void hq_block_groups_free(struct hq_block_groups *bg);
/* the group of rank r */
int hq_block_group_of(const struct hq_block_groups *bg, int rank);

#endif
