/* Scalar quantization math of quant.h against independent facts: fp16/bf16 conversions of
 * known values, the published grid rules. */
#include <math.h>
#include <string.h>

#include "quant.h"
#include "testutil.h"

int main(void) {
  /* fp16 bit patterns (IEEE 754 binary16) */
  CHECK(hq_f32_to_f16(1.0f) == 0x3c00, "1.0");
  CHECK(hq_f32_to_f16(-2.0f) == 0xc000, "-2.0");
  CHECK(hq_f32_to_f16(65504.0f) == 0x7bff, "max");
  CHECK(hq_f32_to_f16(65520.0f) == 0x7c00, "overflow to inf");
  CHECK(hq_f32_to_f16(6.103515625e-05f) == 0x0400, "min normal");
  CHECK(hq_f32_to_f16(5.9604644775390625e-08f) == 0x0001, "min subnormal");
  CHECK(hq_f32_to_f16(2.98023223876953125e-08f) == 0x0000, "half of min subnormal ties to even 0");
  CHECK(hq_f32_to_f16(1.0f + 1.0f / 2048.0f) == 0x3c00, "tie to even (down)");
  CHECK(hq_f32_to_f16(1.0f + 3.0f / 2048.0f) == 0x3c02, "tie to even (up)");
  CHECK(hq_f32_to_f16(0.1f) == 0x2e66, "0.1");
  /* every fp16 value round-trips */
  int bad = 0;
  for (uint32_t h = 0; h < 0x7c00; h++) {
    if (hq_f32_to_f16(hq_f16_to_f32((uint16_t)h)) != h) bad++;
    if (hq_f32_to_f16(-hq_f16_to_f32((uint16_t)h)) != (h | 0x8000)) bad++;
  }
  CHECK(bad == 0, "%d fp16 values do not round-trip", bad);
  CHECK(hq_bf16_to_f32(0x3f80) == 1.0f, "bf16 1.0");
  CHECK(hq_f32_to_bf16(1.0f) == 0x3f80, "bf16 from 1.0");
  CHECK(hq_f32_to_bf16(hq_bits_f32(0x3f808000u)) == 0x3f80, "bf16 tie to even");

  /* grid: 4-bit asym on [-1, 2]: scale = 3/15 = 0.2 (fp16 0.19995117), zero = round(1/scale) = 5 */
  struct hq_grid g = hq_grid_make(4, 0, 0);
  float w[3] = {-1.0f, 0.5f, 2.0f}, s, z;
  hq_grid_params_ref(g, w, 3, 1, &s, &z);
  CHECK(s == hq_fp16_round(0.2f), "scale %g", s);
  CHECK(z == 5.0f, "zero %g", z);
  CHECK(hq_quant_code(2.0f, s, z, 15) == 15, "top code");
  CHECK(hq_quant_code(-1.0f, s, z, 15) == 0, "bottom code");
  /* sym: zero = 8, range max(|xmin|, xmax) */
  g = hq_grid_make(4, 1, 0);
  hq_grid_params_ref(g, w, 3, 1, &s, &z);
  CHECK(z == 8.0f && s == hq_fp16_round(4.0f / 15.0f), "sym scale %g zero %g", s, z);
  /* all-zero row -> range [-1, 1] */
  float zr[4] = {0};
  g = hq_grid_make(3, 0, 0);
  hq_grid_params_ref(g, zr, 4, 1, &s, &z);
  CHECK(s == hq_fp16_round(2.0f / 7.0f) && z == 4.0f, "zero row scale %g zero %g", s, z);
  /* round half to even: 2.5 -> 2 */
  CHECK(hq_quant_code(2.5f, 1.0f, 0.0f, 15) == 2, "half-even");
  CHECK(hq_quant_code(3.5f, 1.0f, 0.0f, 15) == 4, "half-even up");
  /* MSE search never does worse (in the 2.4-norm) than plain min/max */
  float row[64];
  for (int i = 0; i < 64; i++) row[i] = sinf((float)i * 0.7f) * (i == 5 ? 8.0f : 1.0f);
  float s0, z0, s1, z1;
  hq_grid_params_ref(hq_grid_make(3, 0, 0), row, 64, 1, &s0, &z0);
  hq_grid_params_ref(hq_grid_make(3, 0, 1), row, 64, 1, &s1, &z1);
  double e0 = 0, e1 = 0;
  for (int i = 0; i < 64; i++) {
    e0 += pow(fabs(hq_quant_dequant(row[i], s0, z0, 7) - row[i]), 2.4);
    e1 += pow(fabs(hq_quant_dequant(row[i], s1, z1, 7) - row[i]), 2.4);
  }
  CHECK(e1 <= e0 * 1.0001, "mse %g > minmax %g", e1, e0);
  return hq_t_done("test_quant_math");
}
