/* Scalar quantization math shared by the CPU backend (C) and the CUDA backend (kernels/ (.cu)),
 * so both round exactly the same way. Header-only; no libc beyond <math.h>/<stdint.h>.
 *
 * The grid (docs/readme/gptq.md):
 *   maxq = 2^bits - 1; range forced to include 0;
 *   sym:  xmax = max(|xmin|, xmax), xmin = -xmax, zero = (maxq + 1) / 2
 *   asym: zero = round(-xmin / scale)
 *   all-zero range -> [-1, 1]; scale = (xmax - xmin) / maxq, rounded to fp16 BEFORE use
 *   q = clamp(round(w / scale) + zero, 0, maxq); dequant = scale * (q - zero)
 * round() is round-half-to-even (rintf in the default rounding mode), as torch.round.
 * A scale that rounds to 0 in fp16 (range below ~1e-7) is raised to the smallest positive
 * fp16 subnormal. One above 65504 cannot be stored: every method refuses such a layer before
 * (hq_grid_check_fp16) and after (hq_result_check_fp16) quantizing it, with the numbers
 * (docs/readme/gptq.md); the clamp to 65504 below only keeps inf out of the arithmetic. */
#ifndef HQ_QUANT_H
#define HQ_QUANT_H

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define HQ_HD __host__ __device__ static inline
#else
#define HQ_HD static inline
#endif

/* One quantization grid. */
struct hq_grid {
  int bits;  /* 2, 3, 4 or 8 */
  int maxq;  /* 2^bits - 1 */
  int sym;   /* 1: symmetric */
  int mse;   /* 1: MSE clip search (p = 1, 0.99, ..., 0.21; norm 2.4) */
};

HQ_HD struct hq_grid hq_grid_make(int bits, int sym, int mse) {
  struct hq_grid g;
  g.bits = bits;
  g.maxq = (1 << bits) - 1;
  g.sym = sym;
  g.mse = mse;
  return g;
}

HQ_HD uint32_t hq_f32_bits(float f) {
  union { float f; uint32_t u; } v;
  v.f = f;
  return v.u;
}
HQ_HD float hq_bits_f32(uint32_t u) {
  union { float f; uint32_t u; } v;
  v.u = u;
  return v.f;
}

/* IEEE binary32 -> binary16, round to nearest even; overflow -> inf, NaN kept. */
HQ_HD uint16_t hq_f32_to_f16(float f) {
  uint32_t x = hq_f32_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520: rounds to inf */
  if (ax < 0x38800000u) {                                     /* below fp16 min normal 2^-14 */
    if (ax < 0x33000000u) return (uint16_t)sign;             /* < 2^-25: rounds to 0 */
    uint32_t e = ax >> 23;                                   /* 102..112 */
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;                               /* 14..24 */
    uint32_t h = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (h & 1u))) h++;
    return (uint16_t)(sign | h);
  }
  uint32_t h = ((ax - 0x38000000u) >> 13); /* rebias exponent 127 -> 15 */
  uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}

HQ_HD float hq_f16_to_f32(uint16_t h) {
  uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
  uint32_t e = ((uint32_t)h >> 10) & 0x1fu;
  uint32_t m = (uint32_t)h & 0x3ffu;
  if (e == 0) {
    float v = (float)m * 5.9604644775390625e-08f; /* m * 2^-24 */
    return sign ? -v : v;
  }
  if (e == 31) return hq_bits_f32(sign | 0x7f800000u | (m << 13));
  return hq_bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

HQ_HD float hq_fp16_round(float f) { return hq_f16_to_f32(hq_f32_to_f16(f)); }

/* bf16 -> f32 is exact (upper half of the word). */
HQ_HD float hq_bf16_to_f32(uint16_t b) { return hq_bits_f32((uint32_t)b << 16); }
/* f32 -> bf16 round to nearest even (NaN kept quiet). */
HQ_HD uint16_t hq_f32_to_bf16(float f) {
  uint32_t x = hq_f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}

/* Scale as stored (fp16) and as used: fp16-rounded, never 0, never inf. */
HQ_HD float hq_scale_fp16(float s) {
  float r = hq_fp16_round(s);
  if (!(r > 0.0f)) r = 5.9604644775390625e-08f;   /* smallest positive fp16 subnormal */
  if (r > 65504.0f) r = 65504.0f;
  return r;
}

HQ_HD int hq_quant_code(float w, float scale, float zero, int maxq) {
  float q = rintf(w / scale) + zero;
  q = q < 0.0f ? 0.0f : q;
  q = q > (float)maxq ? (float)maxq : q;
  return (int)q;
}

HQ_HD float hq_dequant(int code, float scale, float zero) { return scale * ((float)code - zero); }

HQ_HD float hq_quant_dequant(float w, float scale, float zero, int maxq) {
  return hq_dequant(hq_quant_code(w, scale, zero, maxq), scale, zero);
}

/* Scale and zero from a range [xmin, xmax] (already including 0). */
HQ_HD void hq_grid_params_from_range(struct hq_grid g, float xmin, float xmax, float *scale,
                                     float *zero) {
  if (g.sym) {
    float a = fabsf(xmin) > xmax ? fabsf(xmin) : xmax;
    xmax = a;
    xmin = -a;
  }
  if (xmin == 0.0f && xmax == 0.0f) {
    xmin = -1.0f;
    xmax = 1.0f;
  }
  float s = hq_scale_fp16((xmax - xmin) / (float)g.maxq);
  float z;
  if (g.sym) {
    z = (float)((g.maxq + 1) / 2);
  } else {
    z = rintf(-xmin / s);
    z = z < 0.0f ? 0.0f : (z > (float)g.maxq ? (float)g.maxq : z);
  }
  *scale = s;
  *zero = z;
}

/* The range of n values w[0], w[stride], ... forced to include 0, in 16 lanes so that the
 * compiler vectorises it (min and max are exact: every order gives the same range; NaN is
 * skipped, -0 never replaces the initial +0). The one min/max scan of the quantizers. */
HQ_HD void hq_range0(const float *w, int64_t n, int64_t stride, float *xmin, float *xmax) {
  float mn[16] = {0}, mx[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; l++) {
      const float v = w[(i + l) * stride];
      mn[l] = v < mn[l] ? v : mn[l];
      mx[l] = v > mx[l] ? v : mx[l];
    }
  for (; i < n; i++) {
    const float v = w[i * stride];
    mn[0] = v < mn[0] ? v : mn[0];
    mx[0] = v > mx[0] ? v : mx[0];
  }
  float a = 0.0f, b = 0.0f;
  for (int l = 0; l < 16; l++) {
    a = mn[l] < a ? mn[l] : a;
    b = mx[l] > b ? mx[l] : b;
  }
  *xmin = a;
  *xmax = b;
}

/* Reference (plain scalar) parameters of one row segment w[0], w[stride], ... (n values). */
HQ_HD void hq_grid_params_ref(struct hq_grid g, const float *w, int64_t n, int64_t stride,
                              float *scale, float *zero) {
  float xmin, xmax;
  hq_range0(w, n, stride, &xmin, &xmax);
  hq_grid_params_from_range(g, xmin, xmax, scale, zero);
  if (!g.mse) return;
  float best = INFINITY;
  float bs = *scale, bz = *zero;
  for (int i = 0; i < 80; i++) {
    float p = 1.0f - (float)i / 100.0f;
    float s, z;
    hq_grid_params_from_range(g, p * xmin, p * xmax, &s, &z);
    float err = 0.0f;
    for (int64_t k = 0; k < n; k++) {
      float v = w[k * stride];
      float d = fabsf(hq_quant_dequant(v, s, z, g.maxq) - v);
      err += powf(d, 2.4f);
    }
    if (err < best) {
      best = err;
      bs = s;
      bz = z;
    }
  }
  *scale = bs;
  *zero = bz;
}

#endif
