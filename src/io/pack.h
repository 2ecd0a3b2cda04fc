/* Packing quantized layers into the GPTQ checkpoint layout (docs/readme/pack.md,
 * "GPTQ checkpoint layout"), unpacking, and dequantizing from the packed form.
 * Not collective: each rank packs the output rows it owns (a "slab").
 *
 * Layout of one quantized Linear (in = cols, out = rows of W, b = bits):
 *   qweight int32  [in*b/32, out]       packed along the INPUT dimension
 *   qzeros  int32  [ngroups, out*b/32]  packed along the OUTPUT dimension
 *   scales  fp16   [ngroups, out]
 *   g_idx   int32  [in]                 group of each input column
 * Packing rule (all widths): the values of one packed run form a little-endian bit stream,
 * value k occupying stream bits [b*k, b*k + b), stream bit t living in word t/32, bit t%32.
 * For b = 2, 4, 8 that is "element j of a word in bit field j"; for b = 3 it is the published
 * scheme where 32 values fill 3 words and values 10 and 21 straddle word boundaries
 * (value 10: bits 30-31 of word 0 + bit 0 of word 1; value 21: bit 31 of word 1 + bits 0-1
 * of word 2).
 *
 * Zero-point conventions (enum hq_pack_format):
 *   HQ_PACK_GPTQ    ("gptq", v1): stores zero - 1; dequant = s * (q - (stored + 1)).
 *                   A zero of 0 (possible with asymmetric grids) cannot be stored: error.
 *   HQ_PACK_GPTQ_V2 ("gptq_v2"): stores the zero itself; dequant = s * (q - stored).
 *
 * Shapes. A packed run must end on a word boundary, so with the packing unit
 *   u(b) = 32 for b = 3, else 32/b   (values per whole number of words: 16, 32, 8, 4 for b=2,3,4,8)
 * hpcq requires  in % u(b) == 0  (qweight rows)  and  out % u(b) == 0  (qzeros columns), and
 * returns HQ_ERR_UNSUPPORTED naming the dimension and the multiple otherwise. It never pads:
 * a padded checkpoint would have shapes that no longer match the model config, and the
 * engines that load GPTQ checkpoints (transformers, vLLM) size qweight as in/pack_factor and
 * qzeros as out/pack_factor and reject (vLLM: input_size % pack_factor and
 * output_size_per_partition % pack_factor must be 0) or mis-read anything else. All Llama
 * dimensions (4096, 11008, 14336, 28672, 8192, 1024, ...) are multiples of 32.
 *
 * Row ranges (slabs). A slab holds output rows [row0, row0 + nrows) of a layer with `out`
 * rows: its qweight is the [in*b/32 x nrows] column block starting at column row0 of the
 * layer's qweight, its qzeros the [ngroups x nrows*b/32] block starting at column
 * row0*b/32, its scales the [ngroups x nrows] block starting at column row0; g_idx is the
 * whole [in] vector. So a rank writes its slab as a hyperslab and the file holds the layer's
 * tensors exactly. Requirement: row0 % u(b) == 0 and nrows % u(b) == 0 (HQ_ERR_UNSUPPORTED
 * otherwise). The work partition aligns row ranges to multiples of 32, which satisfies every
 * width.
 *
 * Integers are stored as int32 as the checkpoints do; bit patterns are what matter
 * (e.g. symmetric 4-bit v1 qzeros are 0x77777777). */
#ifndef HQ_PACK_H
#define HQ_PACK_H

#include <stdint.h>

#include "gptq.h"

enum hq_pack_format {
  HQ_PACK_GPTQ = 1,    /* checkpoint_format "gptq" (v1): stored zero = zero - 1 */
  HQ_PACK_GPTQ_V2 = 2  /* checkpoint_format "gptq_v2": stored zero = zero */
};

/* One packed slab: output rows [row0, row0 + nrows) of a layer with `out` rows, `in` cols. */
struct hq_packed {
  int bits;                   /* 2, 3, 4 or 8 */
  enum hq_pack_format format; /* zero-point convention */
  int64_t in;                 /* input features (cols of W) */
  int64_t out;                /* output features of the WHOLE layer (rows of W) */
  int64_t row0, nrows;        /* the slab's output rows */
  int64_t ngroups;            /* groups along the input dimension (ceil(in / group_size)) */
  int32_t *qweight;           /* [in*bits/32 x nrows] row-major */
  int32_t *qzeros;            /* [ngroups x nrows*bits/32] row-major */
  uint16_t *scales;           /* [ngroups x nrows] row-major, IEEE fp16 bit patterns */
  int32_t *g_idx;             /* [in] group of each input column, 0..ngroups-1 */
};

/* Values per whole number of packed words: 32 for 3 bits, 32/bits otherwise; 0 for an
 * unsupported width. */
int64_t hq_pack_unit(int bits);
/* "gptq" / "gptq_v2" (the checkpoint_format strings); NULL for an invalid value. */
const char *hq_pack_format_name(enum hq_pack_format f);
/* Parse "gptq", "v1", "gptq_v2", "v2". Returns 0 on an unknown name (with hq_fail message). */
enum hq_pack_format hq_pack_format_parse(const char *s);

/* Check that a slab can be packed: bits in {2,3,4,8}, valid format, in >= 1, ngroups in
 * [1, in], in and out multiples of hq_pack_unit(bits), 0 <= row0, nrows >= 1,
 * row0 + nrows <= out, row0 and nrows multiples of the unit. HQ_ERR_UNSUPPORTED for shapes
 * that do not pack, HQ_ERR_INPUT for nonsense; the message says what to change. */
int hq_pack_check(int bits, enum hq_pack_format format, int64_t in, int64_t out,
                  int64_t ngroups, int64_t row0, int64_t nrows);

/* Check the shape (hq_pack_check) and allocate the slab's tensors (zeroed). */
int hq_pack_init(struct hq_packed *p, int bits, enum hq_pack_format format, int64_t in,
                 int64_t out, int64_t ngroups, int64_t row0, int64_t nrows);
void hq_pack_free(struct hq_packed *p);

/* Pack the slab from unpacked data of ITS rows (local row r = layer row row0 + r):
 *   codes  [nrows x in] row-major, original column order, values 0..maxq
 *   zeros  [nrows x ngroups] integer values 0..maxq (1..maxq for HQ_PACK_GPTQ)
 *   scales [nrows x ngroups] fp16-representable values (stored as their fp16 bits)
 *   g_idx  [in] values 0..ngroups-1
 * (exactly the fields of struct hq_gptq_result). Everything is validated before anything is
 * written: HQ_ERR_INPUT for a code > maxq, a non-integer or out-of-range zero, a scale that is
 * not exactly a positive fp16 value, a g_idx out of range; HQ_ERR_UNSUPPORTED for a zero of 0
 * with HQ_PACK_GPTQ (the message suggests --format gptq_v2 or --sym). */
int hq_pack_encode(struct hq_packed *p, const uint8_t *codes, const float *zeros,
                   const float *scales, const int32_t *g_idx);
/* hq_pack_encode of a GPTQ/RTN result holding the slab's rows (res->rows == p->nrows,
 * res->cols == p->in, res->ngroups == p->ngroups). */
int hq_pack_encode_result(struct hq_packed *p, const struct hq_gptq_result *res);

/* Inverse of hq_pack_encode: codes [nrows x in], zeros [nrows x ngroups] (the actual zero,
 * i.e. stored + 1 for v1), scales [nrows x ngroups] (fp32 of the stored fp16), g_idx [in]
 * (any output may be NULL). HQ_ERR_INPUT when the packed data is out of range (a g_idx not in
 * [0, ngroups), an fp16 scale that is NaN/Inf). */
int hq_pack_decode(const struct hq_packed *p, uint8_t *codes, float *zeros, float *scales,
                   int32_t *g_idx);

/* Dequantize the slab: W [nrows x in] row-major fp32,
 *   W[r, i] = scale[g, r] * (q[r, i] - zero[g, r]),  g = g_idx[i]
 * with zero per the slab's convention. HQ_ERR_INPUT as hq_pack_decode. */
int hq_pack_dequantize(const struct hq_packed *p, float *W);

/* Low level: pack n values vals[k * vstride] (0 <= v < 2^bits, n a multiple of
 * hq_pack_unit(bits)) into n*bits/32 words; word k goes to words[k * stride]. */
void hq_pack_stream_encode(int bits, int64_t n, const uint8_t *vals, int64_t vstride,
                           uint32_t *words, int64_t stride);
/* Inverse: n values of the stream whose word k is words[k * stride] into vals[k * vstride]. */
void hq_pack_stream_decode(int bits, int64_t n, const uint32_t *words, int64_t stride,
                           uint8_t *vals, int64_t vstride);

#endif
