/* Validation of an hpcq result against its model config: the one check shared by `hpcq eval`
 * (.h5 models), `hpcq export` and `hpcq quantize --resume` (the blocks already done), so that
 * nothing converts, evaluates or builds on a damaged or doctored file. Not collective: each
 * caller reads the file serially through the reader API of src/io/h5io.h (also on a handle from
 * hq_h5_open_rw); an MPI caller agrees on the status afterwards.
 *
 * Every failure is HQ_ERR_INPUT with a message naming the tensor and what is wrong, and what to
 * do ("the file is damaged or was changed after hpcq wrote it: quantize again"). */
#ifndef HQ_H5CHECK_H
#define HQ_H5CHECK_H

#include <stdint.h>

#include "h5io.h"
#include "model.h"

/* Block b: its 7 quantized linears are present, with the rows/cols the config implies and the
 * bits / group size of the file's root attributes (bits, group_size), a valid zero convention
 * and dataset shapes that match; g_idx in [0, ngroups) with every group holding exactly its
 * group_size columns (the last one the rest); every scale a finite positive fp16 value; every
 * zero point within [0, maxq]; the packed data readable (every bit pattern of qweight decodes
 * to a code in [0, maxq]). Its unquantized tensors (hq_block_tensors: the norms, and the q/k/v
 * biases and q/k norms when the config has them) present with the right shapes and finite. */
int hq_h5_check_block(struct hq_h5 *h, const struct hq_model_config *c, int64_t b);

/* Every block (hq_h5_check_block), the root attribute n_blocks equal to num_hidden_layers,
 * model.embed_tokens.weight [vocab, hidden], model.norm.weight [hidden] and lm_head.weight
 * [vocab, hidden] (absent when tie_word_embeddings) present and finite, and no linear or
 * tensor that the config does not have (another model's block, a stray lm_head). */
int hq_h5_check_model(struct hq_h5 *h, const struct hq_model_config *c);

#endif
