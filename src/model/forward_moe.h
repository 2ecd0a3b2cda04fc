/* The sparse mixture-of-experts MLP (Mixtral, Qwen3-MoE) as transformers computes it: router
 * logits = xn · routerᵀ, softmax over the experts in fp32, the top_k most probable experts
 * (renormalised to sum 1 when cfg.norm_topk), and per chosen expert e
 * weight · down_e(silu(gate_e(xn)) * up_e(xn)), summed over experts in index order and added to
 * the residual. Host backends only (the routing gathers rows on the host). Not collective. */
#ifndef HQ_FORWARD_MOE_H
#define HQ_FORWARD_MOE_H

#include <stdint.h>

#include "backend.h"
#include "model.h"

/* Router probabilities of ntok tokens' logits [ntok x n_experts] (host): the chosen experts
 * sel [ntok x top_k] (most probable first; the lower index first among equals) and their
 * weights wt [ntok x top_k]. */
void hq_moe_route(const struct hq_model_config *c, const float *logits, int64_t ntok,
                  int32_t *sel, float *wt);
/* The tokens routed to expert e, in token order: tok[i] (index into the ntok tokens) and
 * slot[i] (its index into sel / wt); returns their count. tok and slot hold ntok entries. */
int64_t hq_moe_gather(const struct hq_model_config *c, const int32_t *sel, int64_t ntok,
                      int64_t e, int64_t *tok, int64_t *slot);
/* The down_proj input of expert w (its three linears, as experts + 3e) for n rows X
 * [n x hidden]: G = silu(X gateᵀ) * (X upᵀ) [n x moe_intermediate], fake-quantized per token
 * when act_bits > 0; U [n x moe_intermediate] is scratch. Each GEMM is one segment of n rows, so
 * a row's result depends on its index among the n and its own values alone. */
void hq_moe_expert_act(const struct hq_backend *be, const struct hq_model_config *c,
                       float *const *w, int act_bits, int64_t n, const float *X, float *G,
                       float *U);
/* h += MoE(xn) for nseq windows of seqlen tokens (host memory, row-major [ntok x hidden]); the
 * router [n_experts x hidden] and experts[3e + part] as in struct hq_block_weights. Each window
 * is routed and computed on its own, so its result does not depend on the batching. act_bits
 * > 0 fake-quantizes each expert's down_proj input per token (the other inputs are the block's
 * xn, quantized by the caller). */
void hq_forward_moe(const struct hq_backend *be, const struct hq_model_config *c,
                    const float *router, float *const *experts, int act_bits, int64_t nseq,
                    int64_t seqlen, const float *xn, float *h);

#endif
