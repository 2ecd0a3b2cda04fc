/* hpcq quantize: the distributed sequential pipeline (DESIGN.md "The job, end to end").
 * Collective over the communicator: every rank calls hq_quantize_run with identical options. */
#ifndef HQ_PIPELINE_H
#define HQ_PIPELINE_H

#include <stdint.h>

#include "comm.h"
#include "gptq.h"
#include "hqq.h"
#include "model.h"
#include "rules.h"

enum hq_method { HQ_METHOD_GPTQ = 0, HQ_METHOD_RTN = 1, HQ_METHOD_HQQ = 2 };

struct hq_quant_opts {
  const char *model_dir;   /* HF folder: config.json + *.safetensors */
  const char *calib_path;  /* raw int32 tokens */
  const char *out_path;    /* .h5 */
  const char *backend;     /* "cpu" | "cuda" | "auto" */
  enum hq_method method;
  struct hq_gptq_opts g;   /* bits, group size, sym, act-order, static groups, damp, block */
  int64_t nsamples;        /* calibration windows (default 128) */
  int64_t seqlen;          /* window length (default 2048, capped by max_position_embeddings) */
  uint64_t seed;           /* window sampling seed (default 0) */
  int64_t batch;           /* windows per forward call (bounds activation workspace); 0: 8,
                              or fewer to keep the workspace under 1 GiB */
  int64_t keep_act_mib;    /* budget (MiB per rank) for the activations kept between a block's
                              input groups, so each group's input is computed once (default
                              4096); over it, or 0, each group's input is recomputed from the
                              block input. Results are the same either way. */
  int resume, overwrite;
  const char *json_summary; /* optional: write a JSON summary (phase times, memory) here */
  int quiet;
  /* other methods (docs/readme/methods.md) */
  struct hq_hqq_opts hqq;  /* --method hqq: lp, beta, kappa, iterations, scale update */
  int act_bits;            /* 0, or per-token activation fake quantization in the calibration
                              forward (Hessians and the next block's inputs see it) */
  int equalize;            /* enum hq_equalize flags: smoothing and/or CLE before quantizing */
  float smooth_alpha;      /* SmoothQuant migration strength (default 0.5) */
  int scale_from_hessian;  /* experimental: Hessian-diagonal-weighted group scales (gptq, rtn) */
  int block_groups;        /* --block-groups G (default 1): the ranks in G groups that quantize
                              their own contiguous ranges of blocks at the same time, each
                              group's first block from full-precision inputs */
  /* mixtures of experts (docs/readme/moe.md): an expert routed fewer than moe_min_tokens
   * calibration tokens (-1, the default: the model's hidden_size) gets moe_fallback */
  int64_t moe_min_tokens;
  int moe_fallback;        /* enum hq_moe_fallback */
  /* --rule / --rules (src/quant/rules.h): other bits / group size per linear, or skip; NULL
   * or empty: every linear at bits / group size of g */
  const struct hq_rules *rules;
};

/* What an expert with too few routed tokens gets: GPTQ with the Hessian of all the block's
 * tokens (its gate/up: every token's router input; its down: its activations on every
 * token), or round-to-nearest. */
enum hq_moe_fallback { HQ_MOE_FALLBACK_NONE = 0, HQ_MOE_FALLBACK_BLOCK = 1, HQ_MOE_FALLBACK_RTN = 2 };
const char *hq_moe_fallback_name(int f);

void hq_quant_opts_default(struct hq_quant_opts *o);
/* The forward workspace's floats per token (src/model/forward.c) */
int64_t hq_pipeline_ws_floats_per_token(const struct hq_model_config *c);
/* Windows per forward call without --batch: 8, fewer when 8 would make the forward workspace
 * larger than 1 GiB (at least 1, at most nloc). Results do not depend on it. */
int64_t hq_pipeline_default_batch(const struct hq_model_config *c, int64_t nloc, int64_t seqlen);
const char *hq_method_name(enum hq_method m);
/* What linear `name` ("model.layers.5.mlp.down_proj") gets: o->g's bits and group size unless
 * a rule says otherwise */
struct hq_lin_q hq_quant_lin_q(const struct hq_quant_opts *o, const char *name);

/* Collective. Returns HQ_OK, or an error status agreed by all ranks (message in
 * hq_last_error() on every rank); HQ_ERR_INTERRUPTED when stopped by SIGTERM/SIGINT after
 * writing a resumable file. */
int hq_quantize_run(const struct hq_comm *comm, const struct hq_quant_opts *o);

/* Not collective. Install SIGTERM/SIGINT handlers that request a stop at the next block end. */
void hq_pipeline_install_signals(void);

#endif
