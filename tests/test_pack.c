/* GPTQ checkpoint packing (src/io/pack.h) against the published layout
 * (docs/readme/pack.md, the published GPTQ checkpoint layout):
 *  1. hand-computed 4-bit and 3-bit examples, expected int32 words written as literals;
 *  2. an independent, plainly written packer that follows the published recipe step by step
 *     (for 3 bits: 10 values, the straddling value, 10 values, ...) on random data;
 *  3. round trips pack -> unpack for bits 2/3/4/8, both zero conventions, odd group sizes,
 *     non-monotonic g_idx, and dequantization against the plain formula;
 *  4. row-range slabs equal the matching column blocks of the whole-layer tensors;
 *  5. error cases. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "pack.h"
#include "quant.h"
#include "testutil.h"
#include "util.h"

#define U32(x) ((uint32_t)(x))

/* ---------------------------------------------------------------------------------------- */
/* 1a. 4-bit, out = 8, in = 16, group size 8 (ngroups = 2).
 * codes q[o][j] = (o + j) mod 16.  qweight is [16*4/32 = 2, 8]; qweight[r][o] holds
 * q[o][8r .. 8r+7] in nibbles 0..7 (nibble j = bits 4j..4j+3), so reading the hex word from
 * the right: r = 0, o = 0: nibbles 0,1,...,7            -> 0x76543210
 *            r = 0, o = 1: nibbles 1,2,...,8            -> 0x87654321
 *            ...    o = 7: nibbles 7,8,...,E            -> 0xEDCBA987
 *            r = 1, o = 0: nibbles 8,9,...,F            -> 0xFEDCBA98
 *            r = 1, o = 1: nibbles 9,...,F,0            -> 0x0FEDCBA9
 *            r = 1, o = 2: nibbles A,...,F,0,1          -> 0x10FEDCBA
 *            ...    o = 7: nibbles F,0,1,...,6          -> 0x6543210F
 * zeros z[o][0] = o + 1, z[o][1] = 15 - o. qzeros is [2, 8*4/32 = 1]; nibble o = zero of row o:
 *   v2 (stored = zero):    g0 nibbles 1..8 -> 0x87654321;  g1 nibbles F,E,...,8 -> 0x89ABCDEF
 *   v1 (stored = zero-1):  g0 nibbles 0..7 -> 0x76543210;  g1 nibbles E,D,...,7 -> 0x789ABCDE
 * scales s[o][0] = o + 1, s[o][1] = (o + 1) / 2; fp16 bits (sign 0, exponent bias 15):
 *   1 0x3C00, 2 0x4000, 3 0x4200, 4 0x4400, 5 0x4500, 6 0x4600, 7 0x4700, 8 0x4800,
 *   0.5 0x3800, 1.5 0x3E00, 2.5 0x4100, 3.5 0x4300; scales tensor is [2, 8] (group-major). */
static void test_hand_4bit(void) {
  const int64_t out = 8, in = 16, ng = 2;
  uint8_t codes[8 * 16];
  float zeros[8 * 2], scales[8 * 2];
  int32_t g_idx[16];
  for (int o = 0; o < out; o++) {
    for (int j = 0; j < in; j++) codes[o * in + j] = (uint8_t)((o + j) % 16);
    zeros[o * ng + 0] = (float)(o + 1);
    zeros[o * ng + 1] = (float)(15 - o);
    scales[o * ng + 0] = (float)(o + 1);
    scales[o * ng + 1] = (float)(o + 1) / 2.0f;
  }
  for (int j = 0; j < in; j++) g_idx[j] = j / 8;
  static const uint32_t qweight_expect[2 * 8] = {
      0x76543210, 0x87654321, 0x98765432, 0xA9876543, 0xBA987654, 0xCBA98765, 0xDCBA9876,
      0xEDCBA987, /* r = 0 */
      0xFEDCBA98, 0x0FEDCBA9, 0x10FEDCBA, 0x210FEDCB, 0x3210FEDC, 0x43210FED, 0x543210FE,
      0x6543210F /* r = 1 */};
  static const uint16_t scales_expect[2 * 8] = {0x3C00, 0x4000, 0x4200, 0x4400, 0x4500, 0x4600,
                                                0x4700, 0x4800, 0x3800, 0x3C00, 0x3E00, 0x4000,
                                                0x4100, 0x4200, 0x4300, 0x4400};
  for (int f = HQ_PACK_GPTQ; f <= HQ_PACK_GPTQ_V2; f++) {
    struct hq_packed p;
    CHECK(hq_pack_init(&p, 4, (enum hq_pack_format)f, in, out, ng, 0, out) == HQ_OK, "%s",
          hq_last_error());
    CHECK(hq_pack_encode(&p, codes, zeros, scales, g_idx) == HQ_OK, "%s", hq_last_error());
    int bad = 0;
    for (int k = 0; k < 16; k++) bad += U32(p.qweight[k]) != qweight_expect[k];
    CHECK(bad == 0, "4-bit qweight: %d words differ (word 0 = 0x%08x)", bad, U32(p.qweight[0]));
    bad = 0;
    for (int k = 0; k < 16; k++) bad += p.scales[k] != scales_expect[k];
    CHECK(bad == 0, "4-bit scales: %d differ", bad);
    if (f == HQ_PACK_GPTQ_V2)
      CHECK(U32(p.qzeros[0]) == 0x87654321u && U32(p.qzeros[1]) == 0x89ABCDEFu,
            "v2 qzeros 0x%08x 0x%08x", U32(p.qzeros[0]), U32(p.qzeros[1]));
    else
      CHECK(U32(p.qzeros[0]) == 0x76543210u && U32(p.qzeros[1]) == 0x789ABCDEu,
            "v1 qzeros 0x%08x 0x%08x", U32(p.qzeros[0]), U32(p.qzeros[1]));
    /* dequantized W[o][j] = s[o][g] * (q - z[o][g]); e.g. o = 2, j = 9 (g = 1):
     * q = 11, z = 13, s = 1.5 -> -3 */
    float W[8 * 16];
    CHECK(hq_pack_dequantize(&p, W) == HQ_OK, "%s", hq_last_error());
    CHECK(W[2 * 16 + 9] == -3.0f, "W[2][9] = %g, expected -3", W[2 * 16 + 9]);
    /* o = 7, j = 0 (g = 0): q = 7, z = 8, s = 8 -> -8 */
    CHECK(W[7 * 16 + 0] == -8.0f, "W[7][0] = %g, expected -8", W[7 * 16 + 0]);
    hq_pack_free(&p);
  }
}

/* 1b. Symmetric 4-bit: zero = (15 + 1) / 2 = 8 everywhere; v1 stores 7 in every nibble
 * -> 0x77777777; v2 stores 8 -> 0x88888888 (negative as int32). */
static void test_sym_4bit(void) {
  const int64_t out = 32, in = 24, ng = 3;
  uint8_t *codes = calloc((size_t)(out * in), 1);
  float zeros[32 * 3], scales[32 * 3];
  int32_t g_idx[24];
  for (int k = 0; k < out * ng; k++) {
    zeros[k] = 8.0f;
    scales[k] = 0.0078125f;
  }
  for (int j = 0; j < in; j++) g_idx[j] = j / 8;
  struct hq_packed p;
  CHECK(hq_pack_init(&p, 4, HQ_PACK_GPTQ, in, out, ng, 0, out) == HQ_OK, "%s", hq_last_error());
  CHECK(hq_pack_encode(&p, codes, zeros, scales, g_idx) == HQ_OK, "%s", hq_last_error());
  int bad = 0;
  for (int k = 0; k < ng * out * 4 / 32; k++) bad += U32(p.qzeros[k]) != 0x77777777u;
  CHECK(bad == 0, "sym 4-bit v1 qzeros not all 0x77777777 (%d words differ)", bad);
  hq_pack_free(&p);
  CHECK(hq_pack_init(&p, 4, HQ_PACK_GPTQ_V2, in, out, ng, 0, out) == HQ_OK, "%s",
        hq_last_error());
  CHECK(hq_pack_encode(&p, codes, zeros, scales, g_idx) == HQ_OK, "%s", hq_last_error());
  bad = 0;
  for (int k = 0; k < ng * out * 4 / 32; k++) bad += p.qzeros[k] != (int32_t)0x88888888u;
  CHECK(bad == 0, "sym 4-bit v2 qzeros not all 0x88888888 (%d words differ)", bad);
  hq_pack_free(&p);
  free(codes);
}

/* 1c. 3-bit, out = 32, in = 32, one group. qweight is [32*3/32 = 3, 32]: 32 values of one
 * output row fill 3 words; value k occupies stream bits 3k..3k+2 (word = bit/32).
 *  row 0: all codes 0 except q[10] = 5 (binary 101) and q[21] = 3 (binary 011).
 *    value 10 -> stream bits 30, 31, 32: bit30 = 1, bit31 = 0 (word 0), bit32 = 1 (word 1 bit 0)
 *    value 21 -> stream bits 63, 64, 65: bit63 = 1 (word 1 bit 31), bit64 = 1 (word 2 bit 0),
 *                bit65 = 0
 *    words: 0x40000000, 0x80000001, 0x00000001
 *  row 1: all codes 7 -> every bit set: 0xFFFFFFFF x 3
 *  row 2: all codes 1 (001) -> set stream bits 0, 3, 6, ..., 93:
 *    word 0 bits 0,3,...,30          -> nibbles (low first) 9,4,2,9,4,2,9,4 -> 0x49249249
 *    word 1 stream 33,...,63 = bits 1,4,...,31 -> nibbles 2,9,4,2,9,4,2,9 -> 0x92492492
 *    word 2 stream 66,...,93 = bits 2,5,...,29 -> nibbles 4,2,9,4,2,9,4,2 -> 0x24924924
 *  rows 3..31: all codes 0 -> 0.
 * qzeros is [1, 32*3/32 = 3], 32 output rows' zeros as one stream:
 *  sym 3-bit zero = 4 (100) everywhere:
 *    v2 stores 4: set bits 3k+2 -> words 0x24924924, 0x49249249, 0x92492492
 *    v1 stores 3 (011): set bits 3k and 3k+1 -> word 0 = 0x49249249|0x92492492 = 0xDB6DB6DB;
 *       word 1 = bits {1,4,..,31} u {2,5,..,29} (value 10's bit 2 is 0) = 0xB6DB6DB6;
 *       word 2 = bit 0 (value 21's bit 1) u {2,5,..,29} u {3,6,..,30} = 0x6DB6DB6D */
static void test_hand_3bit(void) {
  const int64_t out = 32, in = 32, ng = 1;
  uint8_t codes[32 * 32];
  float zeros[32], scales[32];
  int32_t g_idx[32];
  memset(codes, 0, sizeof codes);
  codes[0 * in + 10] = 5;
  codes[0 * in + 21] = 3;
  for (int j = 0; j < in; j++) {
    codes[1 * in + j] = 7;
    codes[2 * in + j] = 1;
    g_idx[j] = 0;
  }
  for (int o = 0; o < out; o++) {
    zeros[o] = 4.0f;
    scales[o] = 0.25f;
  }
  uint32_t expect[3][32];
  memset(expect, 0, sizeof expect);
  expect[0][0] = 0x40000000u, expect[1][0] = 0x80000001u, expect[2][0] = 0x00000001u;
  expect[0][1] = expect[1][1] = expect[2][1] = 0xFFFFFFFFu;
  expect[0][2] = 0x49249249u, expect[1][2] = 0x92492492u, expect[2][2] = 0x24924924u;
  static const uint32_t qz_v2[3] = {0x24924924u, 0x49249249u, 0x92492492u};
  static const uint32_t qz_v1[3] = {0xDB6DB6DBu, 0xB6DB6DB6u, 0x6DB6DB6Du};
  for (int f = HQ_PACK_GPTQ; f <= HQ_PACK_GPTQ_V2; f++) {
    struct hq_packed p;
    CHECK(hq_pack_init(&p, 3, (enum hq_pack_format)f, in, out, ng, 0, out) == HQ_OK, "%s",
          hq_last_error());
    CHECK(hq_pack_encode(&p, codes, zeros, scales, g_idx) == HQ_OK, "%s", hq_last_error());
    int bad = 0;
    for (int r = 0; r < 3; r++)
      for (int o = 0; o < 32; o++)
        if (U32(p.qweight[r * 32 + o]) != expect[r][o]) {
          bad++;
          if (bad < 4)
            fprintf(stderr, "  qweight[%d][%d] = 0x%08x, expected 0x%08x\n", r, o,
                    U32(p.qweight[r * 32 + o]), expect[r][o]);
        }
    CHECK(bad == 0, "3-bit qweight: %d words differ", bad);
    const uint32_t *qz = f == HQ_PACK_GPTQ ? qz_v1 : qz_v2;
    for (int w = 0; w < 3; w++)
      CHECK(U32(p.qzeros[w]) == qz[w], "3-bit %s qzeros[%d] = 0x%08x, expected 0x%08x",
            hq_pack_format_name(p.format), w, U32(p.qzeros[w]), qz[w]);
    uint8_t back[32 * 32];
    CHECK(hq_pack_decode(&p, back, NULL, NULL, NULL) == HQ_OK, "%s", hq_last_error());
    CHECK(back[10] == 5 && back[21] == 3 && back[20] == 0 && back[22] == 0,
          "straddling values decode to %d %d", back[10], back[21]);
    hq_pack_free(&p);
  }
}

/* ---------------------------------------------------------------------------------------- */
/* 2. Independent packers, written from the published description, not from pack.c. */

/* bits 2, 4, 8: qweight[r][o] = sum_{j < 32/b} q[o][r*pf + j] << (b*j). */
static uint32_t ref_word(const uint8_t *v, int bits) {
  uint32_t w = 0;
  for (int j = 0; j < 32 / bits; j++) w |= (uint32_t)v[j] << (bits * j);
  return w;
}

/* bits 3: 32 values -> 3 words, step by step as the published recipe describes it:
 * word0 = v0..v9 at 3j, v10 low 2 bits at 30; word1 = v10 bit 2 at 0, v11..v20 at 3j+1,
 * v21 low bit at 31; word2 = v21 bits 1-2 at 0, v22..v31 at 3j+2. */
static void ref_pack3(const uint8_t *v, uint32_t w[3]) {
  w[0] = w[1] = w[2] = 0;
  for (int j = 0; j < 10; j++) w[0] |= (uint32_t)v[j] << (3 * j);
  w[0] |= (uint32_t)v[10] << 30;
  w[1] |= ((uint32_t)v[10] >> 2) & 1u;
  for (int j = 0; j < 10; j++) w[1] |= (uint32_t)v[11 + j] << (3 * j + 1);
  w[1] |= (uint32_t)v[21] << 31;
  w[2] |= ((uint32_t)v[21] >> 1) & 3u;
  for (int j = 0; j < 10; j++) w[2] |= (uint32_t)v[22 + j] << (3 * j + 2);
}

/* Pack a whole layer with the reference packers into qweight [in*b/32 x out] and
 * qzeros [ng x out*b/32] (v2 zeros; v1 subtracts 1 first). */
static void ref_pack_layer(int bits, int v1, int64_t out, int64_t in, int64_t ng,
                           const uint8_t *codes, const float *zeros, uint32_t *qw,
                           uint32_t *qz) {
  int64_t pf = bits == 3 ? 32 : 32 / bits, wpu = bits == 3 ? 3 : 1;
  uint8_t tmp[32];
  for (int64_t o = 0; o < out; o++)
    for (int64_t c = 0; c < in / pf; c++) {
      memcpy(tmp, codes + o * in + c * pf, (size_t)pf);
      if (bits == 3) {
        uint32_t w[3];
        ref_pack3(tmp, w);
        for (int k = 0; k < 3; k++) qw[(c * 3 + k) * out + o] = w[k];
      } else {
        qw[c * out + o] = ref_word(tmp, bits);
      }
    }
  int64_t zw = out * wpu / pf;
  for (int64_t g = 0; g < ng; g++)
    for (int64_t c = 0; c < out / pf; c++) {
      for (int64_t j = 0; j < pf; j++) tmp[j] = (uint8_t)(zeros[(c * pf + j) * ng + g] - v1);
      if (bits == 3)
        ref_pack3(tmp, qz + g * zw + c * 3);
      else
        qz[g * zw + c] = ref_word(tmp, bits);
    }
}

/* Random layer: codes 0..maxq, zeros 1..maxq (so both conventions can store them) or 0..maxq,
 * fp16 scales, and a non-monotonic g_idx like act-order produces (a random permutation of
 * the column -> group map i / gs). */
struct layer {
  int64_t out, in, ng;
  uint8_t *codes;
  float *zeros, *scales;
  int32_t *g_idx;
};

static void layer_make(struct layer *L, int bits, int64_t out, int64_t in, int64_t gs,
                       int allow_zero0, uint64_t seed) {
  struct hq_rng r;
  hq_rng_seed(&r, seed);
  int maxq = (1 << bits) - 1;
  L->out = out;
  L->in = in;
  L->ng = (in + gs - 1) / gs;
  L->codes = malloc((size_t)(out * in));
  L->zeros = malloc((size_t)(out * L->ng) * sizeof(float));
  L->scales = malloc((size_t)(out * L->ng) * sizeof(float));
  L->g_idx = malloc((size_t)in * sizeof(int32_t));
  for (int64_t k = 0; k < out * in; k++) L->codes[k] = (uint8_t)hq_rng_below(&r, (uint64_t)maxq + 1);
  for (int64_t k = 0; k < out * L->ng; k++) {
    L->zeros[k] = allow_zero0 ? (float)hq_rng_below(&r, (uint64_t)maxq + 1)
                              : (float)(1 + hq_rng_below(&r, (uint64_t)maxq));
    L->scales[k] = hq_scale_fp16((float)(0.001 + 0.05 * hq_rng_uniform(&r)));
  }
  for (int64_t i = 0; i < in; i++) L->g_idx[i] = (int32_t)(i / gs);
  for (int64_t i = in - 1; i > 0; i--) { /* Fisher-Yates */
    int64_t j = (int64_t)hq_rng_below(&r, (uint64_t)i + 1);
    int32_t t = L->g_idx[i];
    L->g_idx[i] = L->g_idx[j];
    L->g_idx[j] = t;
  }
}

static void layer_free(struct layer *L) {
  free(L->codes);
  free(L->zeros);
  free(L->scales);
  free(L->g_idx);
}

static void test_against_reference(void) {
  static const int bitsv[4] = {2, 3, 4, 8};
  for (int bi = 0; bi < 4; bi++)
    for (int v1 = 0; v1 <= 1; v1++) {
      int bits = bitsv[bi];
      struct layer L;
      layer_make(&L, bits, 64, 96, 7, !v1, 100 + (uint64_t)(bits * 2 + v1));
      int64_t qwn = L.in * bits / 32 * L.out, qzn = L.ng * L.out * bits / 32;
      uint32_t *qw = calloc((size_t)qwn, 4), *qz = calloc((size_t)qzn, 4);
      ref_pack_layer(bits, v1, L.out, L.in, L.ng, L.codes, L.zeros, qw, qz);
      struct hq_packed p;
      CHECK(hq_pack_init(&p, bits, v1 ? HQ_PACK_GPTQ : HQ_PACK_GPTQ_V2, L.in, L.out, L.ng, 0,
                         L.out) == HQ_OK, "%s", hq_last_error());
      CHECK(hq_pack_encode(&p, L.codes, L.zeros, L.scales, L.g_idx) == HQ_OK, "%s",
            hq_last_error());
      CHECK(memcmp(p.qweight, qw, (size_t)qwn * 4) == 0, "%d-bit v%d qweight != reference",
            bits, 2 - v1);
      CHECK(memcmp(p.qzeros, qz, (size_t)qzn * 4) == 0, "%d-bit v%d qzeros != reference", bits,
            2 - v1);
      hq_pack_free(&p);
      free(qw);
      free(qz);
      layer_free(&L);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* 3 + 4. Round trips, dequantization, row-range slabs. */
static void test_round_trips(void) {
  static const int bitsv[4] = {2, 3, 4, 8};
  static const int64_t gsv[4] = {5, 7, 37, 96}; /* 96 = per channel */
  const int64_t out = 96, in = 96;
  int n = 0;
  for (int bi = 0; bi < 4; bi++)
    for (int f = HQ_PACK_GPTQ; f <= HQ_PACK_GPTQ_V2; f++)
      for (int gi = 0; gi < 4; gi++) {
        int bits = bitsv[bi];
        struct layer L;
        layer_make(&L, bits, out, in, gsv[gi], f == HQ_PACK_GPTQ_V2, 7 + (uint64_t)n++);
        struct hq_packed p;
        CHECK(hq_pack_init(&p, bits, (enum hq_pack_format)f, in, out, L.ng, 0, out) == HQ_OK,
              "%s", hq_last_error());
        CHECK(hq_pack_encode(&p, L.codes, L.zeros, L.scales, L.g_idx) == HQ_OK, "%s",
              hq_last_error());
        uint8_t *c2 = malloc((size_t)(out * in));
        float *z2 = malloc((size_t)(out * L.ng) * sizeof(float));
        float *s2 = malloc((size_t)(out * L.ng) * sizeof(float));
        int32_t *g2 = malloc((size_t)in * sizeof(int32_t));
        CHECK(hq_pack_decode(&p, c2, z2, s2, g2) == HQ_OK, "%s", hq_last_error());
        CHECK(memcmp(c2, L.codes, (size_t)(out * in)) == 0, "%d-bit %s gs %lld: codes differ",
              bits, hq_pack_format_name(p.format), (long long)gsv[gi]);
        CHECK(memcmp(z2, L.zeros, (size_t)(out * L.ng) * 4) == 0, "%d-bit %s gs %lld: zeros",
              bits, hq_pack_format_name(p.format), (long long)gsv[gi]);
        CHECK(memcmp(s2, L.scales, (size_t)(out * L.ng) * 4) == 0, "%d-bit scales", bits);
        CHECK(memcmp(g2, L.g_idx, (size_t)in * 4) == 0, "%d-bit g_idx", bits);
        /* dequantize against the plain formula on the unpacked inputs */
        float *W = malloc((size_t)(out * in) * sizeof(float));
        CHECK(hq_pack_dequantize(&p, W) == HQ_OK, "%s", hq_last_error());
        int bad = 0;
        for (int64_t o = 0; o < out; o++)
          for (int64_t i = 0; i < in; i++) {
            int64_t g = L.g_idx[i];
            float e = L.scales[o * L.ng + g] * ((float)L.codes[o * in + i] - L.zeros[o * L.ng + g]);
            bad += W[o * in + i] != e;
          }
        CHECK(bad == 0, "%d-bit %s dequant: %d values differ", bits,
              hq_pack_format_name(p.format), bad);
        /* slabs [0,32), [32,64), [64,96) and [32,96) equal the column blocks of the whole */
        static const int64_t ranges[4][2] = {{0, 32}, {32, 32}, {64, 32}, {32, 64}};
        for (int k = 0; k < 4; k++) {
          int64_t r0 = ranges[k][0], nr = ranges[k][1];
          struct hq_packed s;
          CHECK(hq_pack_init(&s, bits, (enum hq_pack_format)f, in, out, L.ng, r0, nr) == HQ_OK,
                "%s", hq_last_error());
          CHECK(hq_pack_encode(&s, L.codes + r0 * in, L.zeros + r0 * L.ng,
                               L.scales + r0 * L.ng, L.g_idx) == HQ_OK, "%s", hq_last_error());
          int sb = 0;
          for (int64_t r = 0; r < in * bits / 32; r++)
            sb += memcmp(s.qweight + r * nr, p.qweight + r * out + r0, (size_t)nr * 4) != 0;
          int64_t zw = nr * bits / 32, zwo = out * bits / 32;
          for (int64_t g = 0; g < L.ng; g++) {
            sb += memcmp(s.qzeros + g * zw, p.qzeros + g * zwo + r0 * bits / 32,
                         (size_t)zw * 4) != 0;
            sb += memcmp(s.scales + g * nr, p.scales + g * out + r0, (size_t)nr * 2) != 0;
          }
          CHECK(sb == 0, "%d-bit slab [%lld, %lld): %d blocks differ from the whole layer",
                bits, (long long)r0, (long long)(r0 + nr), sb);
          float *Ws = malloc((size_t)(nr * in) * sizeof(float));
          CHECK(hq_pack_dequantize(&s, Ws) == HQ_OK, "%s", hq_last_error());
          CHECK(memcmp(Ws, W + r0 * in, (size_t)(nr * in) * 4) == 0, "slab dequant");
          free(Ws);
          hq_pack_free(&s);
        }
        free(W);
        free(c2);
        free(z2);
        free(s2);
        free(g2);
        hq_pack_free(&p);
        layer_free(&L);
      }
}

/* hq_pack_encode_result with a result-shaped struct. */
static void test_encode_result(void) {
  struct layer L;
  layer_make(&L, 4, 32, 64, 16, 0, 99);
  struct hq_gptq_result res;
  memset(&res, 0, sizeof res);
  res.rows = 32, res.cols = 64, res.ngroups = L.ng;
  res.codes = L.codes, res.zeros = L.zeros, res.scales = L.scales, res.g_idx = L.g_idx;
  struct hq_packed p, q;
  CHECK(hq_pack_init(&p, 4, HQ_PACK_GPTQ, 64, 32, L.ng, 0, 32) == HQ_OK, "%s", hq_last_error());
  CHECK(hq_pack_init(&q, 4, HQ_PACK_GPTQ, 64, 32, L.ng, 0, 32) == HQ_OK, "%s", hq_last_error());
  CHECK(hq_pack_encode_result(&p, &res) == HQ_OK, "%s", hq_last_error());
  CHECK(hq_pack_encode(&q, L.codes, L.zeros, L.scales, L.g_idx) == HQ_OK, "%s", hq_last_error());
  CHECK(memcmp(p.qweight, q.qweight, 64 * 4 / 32 * 32 * 4) == 0, "encode_result qweight");
  res.rows = 64;
  CHECK(hq_pack_encode_result(&p, &res) == HQ_ERR_INPUT, "shape mismatch accepted");
  hq_pack_free(&p);
  hq_pack_free(&q);
  layer_free(&L);
}

/* ---------------------------------------------------------------------------------------- */
/* 5. Errors: each must fail with the right status and a message, and write nothing. */
static int msg_has(const char *s) { return strstr(hq_last_error(), s) != NULL; }

static void test_errors(void) {
  struct hq_packed p;
  /* in = 172 at 3 bits: 172 % 32 != 0; of the other widths only 8 (unit 4) divides 172 */
  CHECK(hq_pack_init(&p, 3, HQ_PACK_GPTQ, 172, 64, 2, 0, 64) == HQ_ERR_UNSUPPORTED, "in=172 3-bit");
  CHECK(msg_has("input dimension 172") && msg_has("multiple of 32") && msg_has("use --bits 8"),
        "message: %s", hq_last_error());
  /* the way to leave one linear unquantized is a skip rule (quantize --rule NAME:skip=1) */
  CHECK(msg_has("--rule 'NAME:skip=1'"), "message: %s", hq_last_error());
  CHECK(p.qweight == NULL, "nothing allocated on error");
  /* in = 172 at 4 bits: 172 % 8 = 4 */
  CHECK(hq_pack_check(4, HQ_PACK_GPTQ, 172, 64, 2, 0, 64) == HQ_ERR_UNSUPPORTED, "in=172 4-bit");
  CHECK(hq_pack_check(8, HQ_PACK_GPTQ, 172, 64, 2, 0, 64) == HQ_OK, "in=172 8-bit is fine");
  /* out not a multiple of the unit (qzeros) */
  CHECK(hq_pack_check(4, HQ_PACK_GPTQ, 64, 12, 1, 0, 12) == HQ_ERR_UNSUPPORTED, "out=12 4-bit");
  CHECK(msg_has("output dimension 12") && msg_has("multiple of 8") && msg_has("use --bits 8"),
        "message: %s", hq_last_error());
  CHECK(hq_pack_check(3, HQ_PACK_GPTQ, 64, 48, 1, 0, 48) == HQ_ERR_UNSUPPORTED, "out=48 3-bit");
  /* misaligned row ranges */
  CHECK(hq_pack_check(4, HQ_PACK_GPTQ, 64, 64, 1, 4, 32) == HQ_ERR_UNSUPPORTED, "row0=4");
  CHECK(msg_has("not aligned") && msg_has("multiples of 32"), "message: %s", hq_last_error());
  CHECK(hq_pack_check(3, HQ_PACK_GPTQ, 64, 64, 1, 16, 16) == HQ_ERR_UNSUPPORTED, "3-bit row0=16");
  CHECK(hq_pack_check(4, HQ_PACK_GPTQ, 64, 64, 1, 8, 16) == HQ_OK, "4-bit row0=8 is aligned");
  CHECK(hq_pack_check(4, HQ_PACK_GPTQ, 64, 64, 1, 32, 64) == HQ_ERR_INPUT, "range past out");
  /* bad widths, formats, group counts */
  CHECK(hq_pack_check(5, HQ_PACK_GPTQ, 64, 64, 1, 0, 64) == HQ_ERR_UNSUPPORTED, "5 bits");
  CHECK(hq_pack_check(4, (enum hq_pack_format)7, 64, 64, 1, 0, 64) == HQ_ERR_INPUT, "format 7");
  CHECK(hq_pack_check(4, HQ_PACK_GPTQ, 64, 64, 0, 0, 64) == HQ_ERR_INPUT, "0 groups");
  CHECK(hq_pack_format_parse("gptq_v2") == HQ_PACK_GPTQ_V2 && hq_pack_format_parse("gptq") ==
        HQ_PACK_GPTQ && hq_pack_format_parse("awq") == 0, "format parse");

  /* bad values: v1 with zero 0, code > maxq, non-integer zero, non-fp16 scale, bad g_idx */
  struct layer L;
  layer_make(&L, 4, 32, 32, 8, 0, 5);
  CHECK(hq_pack_init(&p, 4, HQ_PACK_GPTQ, 32, 32, L.ng, 0, 32) == HQ_OK, "%s", hq_last_error());
  L.zeros[5 * L.ng + 2] = 0.0f;
  CHECK(hq_pack_encode(&p, L.codes, L.zeros, L.scales, L.g_idx) == HQ_ERR_UNSUPPORTED,
        "v1 zero 0 accepted");
  CHECK(msg_has("gptq_v2") && msg_has("--sym") && msg_has("row 5, group 2"), "message: %s",
        hq_last_error());
  int untouched = 1;
  for (int64_t k = 0; k < 32 * 32 * 4 / 32; k++) untouched &= p.qweight[k] == 0;
  CHECK(untouched, "a failed encode wrote qweight");
  L.zeros[5 * L.ng + 2] = 2.5f;
  CHECK(hq_pack_encode(&p, L.codes, L.zeros, L.scales, L.g_idx) == HQ_ERR_INPUT, "zero 2.5");
  L.zeros[5 * L.ng + 2] = 16.0f;
  CHECK(hq_pack_encode(&p, L.codes, L.zeros, L.scales, L.g_idx) == HQ_ERR_INPUT, "zero 16");
  L.zeros[5 * L.ng + 2] = 3.0f;
  L.codes[7 * 32 + 9] = 16;
  CHECK(hq_pack_encode(&p, L.codes, L.zeros, L.scales, L.g_idx) == HQ_ERR_INPUT, "code 16");
  CHECK(msg_has("row 7, column 9"), "message: %s", hq_last_error());
  L.codes[7 * 32 + 9] = 15;
  float s_old = L.scales[3];
  L.scales[3] = 0.1f; /* not an fp16 value */
  CHECK(hq_pack_encode(&p, L.codes, L.zeros, L.scales, L.g_idx) == HQ_ERR_INPUT, "scale 0.1");
  L.scales[3] = NAN;
  CHECK(hq_pack_encode(&p, L.codes, L.zeros, L.scales, L.g_idx) == HQ_ERR_INPUT, "scale NaN");
  L.scales[3] = s_old;
  L.g_idx[4] = (int32_t)L.ng;
  CHECK(hq_pack_encode(&p, L.codes, L.zeros, L.scales, L.g_idx) == HQ_ERR_INPUT, "g_idx");
  L.g_idx[4] = 0;
  CHECK(hq_pack_encode(&p, L.codes, L.zeros, L.scales, L.g_idx) == HQ_OK, "%s", hq_last_error());
  /* the same zero 0 is fine in gptq_v2 */
  struct hq_packed p2;
  L.zeros[0] = 0.0f;
  CHECK(hq_pack_init(&p2, 4, HQ_PACK_GPTQ_V2, 32, 32, L.ng, 0, 32) == HQ_OK, "%s",
        hq_last_error());
  CHECK(hq_pack_encode(&p2, L.codes, L.zeros, L.scales, L.g_idx) == HQ_OK, "%s",
        hq_last_error());
  /* corrupted packed data is reported, not dequantized into garbage */
  p2.g_idx[3] = -1;
  float W[32 * 32];
  CHECK(hq_pack_dequantize(&p2, W) == HQ_ERR_INPUT, "bad packed g_idx");
  p2.g_idx[3] = 0;
  p2.scales[1] = 0x7c00; /* +Inf */
  CHECK(hq_pack_decode(&p2, NULL, NULL, NULL, NULL) == HQ_ERR_INPUT, "Inf packed scale");
  hq_pack_free(&p);
  hq_pack_free(&p2);
  layer_free(&L);
}

int main(void) {
  test_hand_4bit();
  test_sym_4bit();
  test_hand_3bit();
  test_against_reference();
  test_round_trips();
  test_encode_result();
  test_errors();
  return hq_t_done("test_pack");
}
