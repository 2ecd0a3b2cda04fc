/* The Llama-family forward through the backend interface, with a capture hook for the input
 * of every linear input group (what Hessians are built from). Not collective. */
#ifndef HQ_FORWARD_H
#define HQ_FORWARD_H

#include <stdint.h>

#include "backend.h"
#include "model.h"

/* Called with the input X [ntok x cols] (backend memory, row-major) of input group `g` of the
 * current block. Returning non-zero stops the block forward right after the call (used by
 * the true-sequential pipeline, which only needs the inputs up to one group). */
typedef int (*hq_capture_fn)(void *ctx, enum hq_group g, const float *X, int64_t ntok,
                             int64_t cols);

struct hq_rope_table {
  int64_t max_pos, half;   /* rows, columns */
  float *cos_t, *sin_t;    /* [max_pos x half], backend memory */
};
int hq_rope_table_init(struct hq_rope_table *r, const struct hq_backend *be,
                       const struct hq_model_config *c, int64_t max_pos);
void hq_rope_table_free(struct hq_rope_table *r, const struct hq_backend *be);

/* A block's weights in backend memory (uploaded from hq_block_weights). */
struct hq_block_dev {
  float *lin[HQ_LIN_COUNT];
  float *bias[HQ_LIN_COUNT];
  float *ln_attn, *ln_mlp;
  float *q_norm, *k_norm; /* [head_dim] when cfg.qk_norm, else NULL */
  float *router;          /* MoE block (host backends only): as in hq_block_weights */
  float **experts;        /* [n_expert_slots] */
  int64_t n_expert_slots;
  int borrowed; /* the host weights themselves (hq_block_dev_borrow): free leaves them */
};
int hq_block_dev_upload(const struct hq_backend *be, const struct hq_model_config *c,
                        const struct hq_block_weights *w, struct hq_block_dev *d);
/* The same for a caller that keeps w alive and unchanged while d is used: on a host backend d
 * points at w's arrays (no copy; a linear w no longer holds stays NULL), on a device it is an
 * upload. */
int hq_block_dev_borrow(const struct hq_backend *be, const struct hq_model_config *c,
                        const struct hq_block_weights *w, struct hq_block_dev *d);
void hq_block_dev_free(const struct hq_backend *be, struct hq_block_dev *d);

/* Workspace for nseq x seqlen tokens (backend memory). */
struct hq_fwd_ws;
struct hq_fwd_ws *hq_fwd_ws_new(const struct hq_backend *be, const struct hq_model_config *c,
                                int64_t ntok);
void hq_fwd_ws_free(struct hq_fwd_ws *ws);
/* Activation quantization (src/quant/actquant.h): with bits > 0, hq_forward_block fake-quantizes the
 * input of every linear input group per token (dynamic, symmetric, `bits` bits) BEFORE the
 * capture hook and the linears, so captured inputs (Hessians) and the block output both see
 * the quantized activations. 0 (the default) turns it off. bits must be 0 or in [2, 16].
 * Returns HQ_OK, or HQ_ERR_INPUT / HQ_ERR_NOMEM (device backends need a host staging buffer). */
int hq_fwd_ws_set_act_bits(struct hq_fwd_ws *ws, int bits);
int hq_fwd_ws_act_bits(const struct hq_fwd_ws *ws);

/* x [nseq*seqlen x hidden] (backend memory) -> block output in place. capture may be NULL.
 * Returns 1 if the capture stopped it early (x then unchanged), else 0. */
int hq_forward_block(const struct hq_backend *be, const struct hq_model_config *c,
                     const struct hq_block_dev *w, const struct hq_rope_table *rope,
                     struct hq_fwd_ws *ws, int64_t nseq, int64_t seqlen, float *x,
                     hq_capture_fn capture, void *ctx);

/* The activations hq_forward_group_input carries from one linear input group of a block to
 * the next, for nseq x seqlen tokens (backend memory, row-major): */
struct hq_fwd_carry {
  float *x;   /* [ntok x hidden] the block input; the block output after
                 hq_forward_group_output */
  float *att; /* [ntok x n_heads*head_dim] attention output: written for O, read for GATEUP */
  float *h;   /* [ntok x hidden] residual after attention: written for GATEUP, read after */
  float *act; /* [ntok x intermediate] silu(gate) * up: written for DOWN, read by the output.
                 May be att's memory (att is dead once GATEUP has run). */
};
/* The block forward one group at a time, each group's input computed once from what the
 * previous group left in the carry (the true-sequential pipeline re-quantizes the weights of
 * group g before group g+1's input is taken): group g's input (from the carry written by
 * group g-1 over these tokens; QKV and O from x), then capture(ctx, g, input, ntok, cols),
 * whose return value is returned. Running QKV, O, GATEUP, DOWN then hq_forward_group_output
 * does exactly the arithmetic of hq_forward_block, so x ends bit-identical to it. A group may
 * be run again (same inputs, same result) before the next one. */
int hq_forward_group_input(const struct hq_backend *be, const struct hq_model_config *c,
                           const struct hq_block_dev *w, const struct hq_rope_table *rope,
                           struct hq_fwd_ws *ws, int64_t nseq, int64_t seqlen, enum hq_group g,
                           const struct hq_fwd_carry *cr, hq_capture_fn capture, void *ctx);
/* After DOWN: x = h + down(act), the block output. */
void hq_forward_group_output(const struct hq_backend *be, const struct hq_model_config *c,
                             const struct hq_block_dev *w, const struct hq_rope_table *rope,
                             struct hq_fwd_ws *ws, int64_t nseq, int64_t seqlen,
                             const struct hq_fwd_carry *cr);

/* Embedding lookup: x[t, :] = embed[ids[t], :] (embed is host fp32 [vocab x hidden]). */
void hq_forward_embed(const struct hq_backend *be, const struct hq_model_config *c,
                      const float *embed_host, const int32_t *ids, int64_t ntok, float *x);

/* The same from the checkpoint's rows (hq_model_embed_rows), without the whole table in
 * memory. Returns HQ_OK, or HQ_ERR_NOMEM (device backends stage the rows on the host). */
int hq_forward_embed_rows(const struct hq_backend *be, const struct hq_model *m,
                          const int32_t *ids, int64_t ntok, float *x);

/* Final norm + lm_head, and the summed next-token NLL of every window (tokens 1..seqlen-1
 * predicted from their prefixes). norm/lm_head in backend memory, lm_head [vocab x hidden]. */
double hq_forward_nll(const struct hq_backend *be, const struct hq_model_config *c,
                      const float *norm_w, const float *lm_head, struct hq_fwd_ws *ws,
                      int64_t nseq, int64_t seqlen, const float *x, const int32_t *ids,
                      float *logits_out /* optional host [ntok x vocab] */);

/* ---------------- whole-model helper (streams the blocks) ---------------- */
struct hq_eval_stats;
/* Options of hq_forward_model_nll; zero-initialize for the defaults. */
struct hq_eval_opts {
  int64_t chunk_tokens;  /* tokens per hq_forward_block call (sizes the workspace), rounded
                            down to whole windows, at least one; 0: 4096 */
  int64_t batch_windows; /* windows whose activations stay resident while the blocks stream;
                            0: as many as fit in 1 GiB of activations (at least one chunk) */
  int64_t keep_bytes;    /* with several batches, the blocks (and an untied lm_head) loaded
                            for the first batch are kept for the others when their f32
                            weights take at most this many bytes (backend memory);
                            0: 4 GiB; negative: never (every batch streams them again) */
  /* Called after each step (one chunk through a block, or through the final norm + lm_head);
   * done/total count steps (total = chunks x (n_layers + 1)). May be NULL. */
  void (*progress)(void *ctx, int64_t done, int64_t total);
  void *progress_ctx;
  int act_bits;          /* 0: off; else per-token activation fake quantization (W?A<bits>) */
  struct hq_eval_stats *stats; /* optional out: the plan and the loads done */
};

/* How hq_forward_model_nll runs nwin windows of seqlen (hq_forward_model_plan). */
struct hq_eval_plan {
  int64_t chunk_windows; /* windows per hq_forward_block / hq_forward_nll call */
  int64_t batch_windows; /* windows resident per batch (the last batch: the remainder) */
  int64_t batches;       /* ceil(nwin / batch_windows) */
  int64_t steps;         /* progress steps: chunks x (n_layers + 1) */
  int64_t weight_bytes;  /* f32 bytes of every block and an untied lm_head */
  int64_t keep_budget;   /* bytes (opts.keep_bytes or its default; negative: never) */
  int keep;              /* 1: batches > 1 and weight_bytes <= keep_budget, so each block is
                            loaded once and kept; 0: each batch streams the blocks */
};
struct hq_eval_stats {
  struct hq_eval_plan plan;
  int64_t block_loads;   /* hq_model_load_block calls: n_layers when kept or one batch, else
                            batches x n_layers */
  int64_t head_loads;    /* lm_head.weight loads (0 when tied to the embedding) */
};

/* The plan for nwin windows of seqlen under o (NULL: defaults). Returns HQ_OK, or
 * HQ_ERR_INPUT (no window, seqlen < 2 or > max_position_embeddings). */
int hq_forward_model_plan(const struct hq_model_config *c, int64_t nwin, int64_t seqlen,
                          const struct hq_eval_opts *o, struct hq_eval_plan *p);

/* Summed next-token NLL of nwin windows ids [nwin x seqlen] (host; each window starts at
 * position 0, tokens 1..seqlen-1 predicted from their prefixes, so nwin * (seqlen - 1)
 * predictions) through the whole model, block by block: for each batch of windows, embed;
 * for each block b: load b (hq_model_load_block) and upload it unless kept from an earlier
 * batch, forward every chunk of the batch, free it unless kept; then final norm + lm_head
 * (the embedding when tied) + NLL. Each window's arithmetic, and the order the chunk sums
 * are added in, is the same whatever the batches and whether blocks are kept.
 * Memory: the batch's activations [batch x seqlen x hidden] + one chunk's workspace + the
 * fp32 embedding when it is also the head on a host backend (else each batch converts only its
 * tokens' rows, hq_model_embed_rows) + one block's weights (and lm_head during the last step) when streaming, or
 * plan.weight_bytes when kept (see hq_eval_opts.keep_bytes).
 * logits_out: optional host [nwin*seqlen x vocab]. Returns HQ_OK or a status + message
 * (seqlen > the rope table / max_position_embeddings, a missing tensor, out of memory,
 * non-finite NLL). Not collective. */
int hq_forward_model_nll(const struct hq_backend *be, const struct hq_model *m,
                         const int32_t *ids, int64_t nwin, int64_t seqlen,
                         const struct hq_eval_opts *o, double *nll_sum, float *logits_out);

#endif
