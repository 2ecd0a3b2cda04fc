/* Private to the pipeline (pipeline.c: the run and its blocks; pipeline_group.c: the stages of
 * one input group). */
#ifndef HQ_PIPELINE_INTERNAL_H
#define HQ_PIPELINE_INTERNAL_H

#include "forward.h"
#include "gptq.h"
#include "h5io.h"
#include "model.h"
#include "outpath.h"
#include "partition.h"
#include "pipeline.h"

enum { PH_FORWARD, PH_HESSIAN, PH_ALLREDUCE, PH_CHOL, PH_GPTQ, PH_STATS, PH_GATHER, PH_WRITE, PH_COUNT };
extern const char *const hq_phase_names[PH_COUNT];

struct run {
  const struct hq_comm *comm; /* this rank's block group (all ranks when G = 1): the windows,
                                 Hessians, factors, row split and gathers */
  const struct hq_comm *world; /* all ranks: the output file, agreement, stop requests, the
                                  block groups' exchanges (the same as comm when G = 1) */
  struct hq_comm gcomm;     /* comm's communicators when G > 1 */
  struct hq_block_groups bg; /* --block-groups (mpi/partition.h) */
  int group;                /* this rank's block group */
  int64_t b0, b1;           /* its blocks [b0, b1) */
  int64_t nsteps;           /* steps of the block loop: the most blocks a group owns; at step s
                               group k works on its block block0[k] + s */
  int64_t *step_blocks;     /* [G] the block each group quantizes at this step, -1: none
                               (identical on every rank) */
  double chain_s, chain_idle_s; /* the full-precision chain: seconds, of them waiting for inputs */
  const struct hq_quant_opts *o;
  struct hq_gptq_opts g;    /* o->g with hscale = o->scale_from_hessian */
  const struct hq_backend *be;
  struct hq_model model;
  struct hq_plan plan;
  struct hq_h5 *h5;
  int64_t seqlen, nloc;     /* local windows */
  int32_t *ids;             /* [nloc x seqlen] local calibration windows */
  float *x;                 /* [nloc*seqlen x hidden] backend memory: current block input */
  struct hq_rope_table rope;
  struct hq_fwd_ws *ws;
  int64_t batch;            /* windows per forward call */
  /* the activations kept between a block's input groups (hq_fwd_carry), backend memory, or
   * NULL when over o->keep_act_mib: carry_h [nloc*seqlen x hidden], carry_mid [nloc*seqlen x
   * max(q dim, intermediate)] (attention output, then silu(gate)*up) */
  float *carry_h, *carry_mid;
  int carry_stage;          /* the group whose input the carry holds the inputs of: 0 at a
                               block's start, g+1 once group g's input was computed from it;
                               HQ_CARRY_OUTPUT: R->x holds the block's output already */
  int node_share;           /* one Hessian and one Cholesky factor per node (host backend, more
                               than one rank on a node, HQ_NODE_SHARE not 0): pipeline_group.c */
  int shm_warned;           /* the node leader said that /dev/shm had no room */
  int lins_shared;          /* this block's linears one copy per node (node_share, a lazily
                               loaded host block, no equalization): pipeline_group.c */
  struct hq_node_buf lin_shm[HQ_LIN_COUNT]; /* their node-shared buffers (ptr NULL: none) */
  int64_t lins_shared_n;    /* linears loaded node-shared so far (the JSON summary) */
  double phase[PH_COUNT];   /* this block's seconds per phase (this rank) */
  double total_phase[PH_COUNT];
  /* what the result is a function of, agreed over the ranks */
  uint64_t model_id, calib_id; /* hq_model_fingerprint, FNV-1a 64 of the calibration tokens */
  int64_t calib_tokens;
  /* the result file */
  struct hq_out_lock lock;
  int64_t start_block;      /* the group's blocks [b0, start_block) are done (a resumed run) */
  /* progress */
  double t_blocks, t_block; /* start of the block loop, of the current block */
  double last_block_s;      /* seconds of the previous block */
  int64_t first_step;       /* the first step in which a block is quantized in this run */
};

#define HQ_CARRY_OUTPUT (HQ_GROUP_COUNT + 1) /* a MoE block's output made by pipeline_moe.c */

/* Collective over the node: the block's weights freed (node-shared linears too). */
void hq_pipeline_block_free(struct run *R, struct hq_block_weights *bw);
/* the Hessian is collected for GPTQ and for --scale-from-hessian; calibration windows are
 * forwarded for those and for smoothing (activation maxima) */
int hq_pipeline_need_hessian(const struct hq_quant_opts *o);
int hq_pipeline_need_calib(const struct hq_quant_opts *o);
void hq_pipeline_lin_name(char *buf, size_t n, int64_t b, enum hq_linear l);
/* Not collective. Forward all local windows through the block; stop at `cap` if given. */
void hq_pipeline_forward_local(struct run *R, const struct hq_block_dev *dev, hq_capture_fn cap,
                               void *ctx);
/* Not collective. Group g's input for all local windows, passed to cap: from the carried
 * activations of group g-1 when R has them (each group's input computed once per pass), else
 * by the block forward from its input. */
void hq_pipeline_forward_group(struct run *R, const struct hq_block_dev *dev, enum hq_group g,
                               hq_capture_fn cap, void *ctx);
/* Not collective. When R's carry holds group g's input for all local windows (O: the attention
 * output, DOWN: the SwiGLU activations, once hq_pipeline_forward_group computed them), pass it
 * to cap batch by batch as the forward would and return 1; else 0. */
int hq_pipeline_carried_input(struct run *R, enum hq_group g, hq_capture_fn cap, void *ctx);
/* Collective over R->world. Quantize input group g of block b (weights bw, replaced by the
 * quantized ones on every rank of the group; the group's linears converted first when bw lacks
 * them): smoothing, Hessian, the method on the rows this rank owns, gather (collective over
 * R->comm); then write, with the other block groups' blocks of this step (R->step_blocks).
 * b = -1: this rank's group quantizes nothing at this step (it writes the others' only). */
int hq_pipeline_group(struct run *R, int64_t b, enum hq_group g, struct hq_block_weights *bw);

/* ---- pipeline_group.c's unit of work, shared with pipeline_moe.c ---- */
/* Linears that share one input (one Hessian) and the rows of each that this rank owns: a dense
 * input group (expert -1; lins) or the gate/up or down of one expert (parts). */
struct unit {
  enum hq_group g;
  int nl;
  enum hq_linear lins[4];
  int64_t expert;               /* -1: a dense group; else this expert of a MoE block */
  enum hq_expert_part parts[4]; /* expert >= 0: the expert's linears */
  int rtn;                      /* round-to-nearest whatever the method (an expert's fallback) */
  int64_t rows[4], cols;   /* rows of each linear, their common input width */
  int64_t my0[4], myn[4];  /* the rows this rank owns of each */
};

/* per row, in row order: the method's proxy loss (HQQ: Σ|w - q|), RTN's on the same grid
 * (HQQ: its Σ|w - q|), and GPTQ's reference loss */
enum { ST_METHOD, ST_RTN, ST_REF, NSTAT };

/* this rank's block of one linear */
struct part {
  struct hq_gptq_result res;
  float *W;   /* [myn x cols] dequantized */
  double *st; /* [myn x NSTAT] */
};
void hq_pipeline_part_free(struct part *p);

/* A group's Hessian, made where its sums were: the node's one copy in a node-shared buffer
 * (R->node_share), this rank's own backend memory (host backends), or malloc'ed (device). */
struct hbuf {
  float *H; /* [cols x cols] */
  struct hq_node_buf shm;
  const struct hq_backend *be; /* H is this backend's memory */
};
/* Collective over the node when shared (every rank frees at the same point). */
void hq_pipeline_hbuf_free(struct hbuf *hb);

struct group_meta { /* identical on every rank */
  double damp, dead;
  double ph[PH_COUNT];
};

/* What the write of one input group of one block needs beyond the rows: identical on every
 * rank once exchanged (a block group's root sends it to all ranks). */
struct group_rec {
  double sums[4][NSTAT];
  struct group_meta gm;
  int64_t *owner[4]; /* [nowner] rows each rank of the block's group quantized */
  int nowner;
};

/* Collective over R->comm: the method on the rows of u this rank owns (parts[i] for each
 * linear i with myn[i] > 0; H in hb, NULL without a Hessian, consumed by GPTQ's factor in
 * prep), with per-row statistics; the ranks agree first that all have their rows. */
int hq_pipeline_unit_quantize(struct run *R, int64_t b, const struct unit *u,
                              const struct hq_block_weights *bw, struct hbuf *hb,
                              struct part *parts, struct hq_gptq_prep *prep);
/* Collective over all ranks (R->world): u's linears of block b: packed rows (parts: this
 * rank's, NULL when it has none), statistics and attributes. */
int hq_pipeline_unit_write(struct run *R, int64_t b, const struct unit *u,
                           const struct part *parts, const struct group_rec *gr);

/* pipeline_moe.c */
/* Collective over R->comm (= R->world: MoE runs have one block group). The sparse MLP of MoE
 * block b (after its attention groups): the router's inputs, the routing, each expert's
 * gate/up and then down quantized by the rank that owns it from the tokens routed to it (or
 * its fallback), the quantized experts in bw on every rank, written with their token counts. */
int hq_pipeline_moe(struct run *R, int64_t b, struct hq_block_weights *bw);
/* --moe-min-tokens, or its default (hidden_size) */
int64_t hq_pipeline_moe_min_tokens(const struct run *R);

/* pipeline_chain.c */
/* Collective over R->world. With G > 1 block groups and calibration windows: R->x of every
 * group after the first becomes the full-precision input of its first block (the groups
 * before it forward their windows through their blocks unquantized and send them on). */
int hq_pipeline_fp_chain(struct run *R);

/* pipeline_file.c */
/* Collective. Refuse an --out that is one of the inputs, lock it, then create it (root
 * attributes, unquantized tensors, progress record) or reopen it for --resume when the
 * settings (with the model and calibration fingerprints) match; R->start_block is set. */
int hq_pipeline_file_open(struct run *R);
/* Collective. Close the file and release its lock. */
int hq_pipeline_file_close(struct run *R);
/* Collective over R->world. The equalized unquantized tensors of the blocks each group
 * quantized at this step (R->step_blocks; bw: this rank's group's block). */
int hq_pipeline_write_equalized(struct run *R, const struct hq_block_weights *bw);
/* Not collective. A block already done: the linears of bw replaced by the stored quantized
 * weights (shapes checked first), equalized norms / v bias as stored. */
int hq_pipeline_load_done_block(struct run *R, int64_t b, struct hq_block_weights *bw);

#endif
