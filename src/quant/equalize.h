/* Equalization before quantization: function-preserving rescalings of a Llama block's FP
 * weights (all exact in real arithmetic; fp32 rounding only). Not collective.
 *
 * SmoothQuant-style smoothing (Xiao et al. 2023) of an RMSNorm and the linears it feeds
 * (input_layernorm -> q, k, v; post_attention_layernorm -> gate, up): with a_j = max_t |X_tj|
 * of the normed input over the calibration tokens and w_j = max over the fed linears' rows
 * |W[:, j]|,
 *     s_j = a_j^alpha / w_j^(1-alpha)    (1 where a_j or w_j is 0; clamped to [1e-5, 1e5])
 *     ln_w[j] /= s_j,   W[:, j] *= s_j   for every fed linear
 * so X W^T is unchanged while the activation outliers move into the weights.
 *
 * Cross-layer equalization (Nagel et al. 2019) of two linears joined by a function that is
 * linear in the scaled channel: v -> o (attention output is linear in v; with GQA a v channel
 * (kv head h, dim d) feeds the o columns (q head h', d) of every q head h' of its group) and
 * up -> down (silu(gate) * up is linear in up):
 *     r1_j = range(W1[j, :]) (max - min of the row incl. its bias), r2_j = range of W2's columns
 *     fed by channel j,  s_j = sqrt(r2_j / r1_j)  (1 where either is 0; clamped to [1e-4, 1e4])
 *     W1[j, :] *= s_j (and its bias),  W2[:, j] /= s_j
 * which makes both ranges sqrt(r1_j r2_j). */
#ifndef HQ_EQUALIZE_H
#define HQ_EQUALIZE_H

#include <stdint.h>

#include "model.h"

enum hq_equalize { HQ_EQ_NONE = 0, HQ_EQ_SMOOTH = 1, HQ_EQ_CLE = 2 }; /* bit flags */

/* "none", "smooth", "cle", "smooth,cle" / "cle,smooth" / "both" -> flags; -1 when invalid. */
int hq_equalize_parse(const char *s);
const char *hq_equalize_name(int flags); /* "none", "smooth", "cle", "smooth,cle" */

/* CLE of v->o and up->down on the block's FP weights, in place. */
void hq_equalize_cle(const struct hq_model_config *c, struct hq_block_weights *w);

/* Smoothing of group HQ_GROUP_QKV (ln_attn -> q, k, v) or HQ_GROUP_GATEUP (ln_mlp -> gate, up)
 * with the activation maxima amax [hidden] (>= 0, of the normed input with the CURRENT norm
 * weights). s_out [hidden] (may be NULL) receives the scales. */
void hq_equalize_smooth(const struct hq_model_config *c, struct hq_block_weights *w,
                        enum hq_group g, const float *amax, float alpha, float *s_out);

#endif
