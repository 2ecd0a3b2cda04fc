/* Private: vectorizable float helpers for the CPU forward (softmax, SiLU, log-softmax).
 * Plain C, no intrinsics: written so GCC/Clang auto-vectorize the loops that call them. */
#ifndef HQ_FASTMATH_H
#define HQ_FASTMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) in float, relative error ~2 ulp for x in [-87, 88] (Cody-Waite range reduction +
 * Cephes degree-6 polynomial); inputs below -87.3 give ~1e-38 (not 0), above 88.7 clamp;
 * NaN gives NaN. Unlike expf() from libm this inlines into a loop that the compiler
 * vectorizes. */
static inline float hq_expf(float x0) {
  /* the clamps send a NaN to the lower bound, so the exponent below stays in [1, 255] (no
   * undefined conversion or shift); the NaN itself is returned at the end */
  float x = x0 > -87.3f ? x0 : -87.3f;
  x = x < 88.7f ? x : 88.7f;
  /* n = round(x / ln 2) by the 1.5 * 2^23 shifter (exact in round-to-nearest; floorf would
   * be a libm call here, which stops vectorization) */
  const float shifter = 12582912.0f;
  float n = (x * 1.44269504088896341f + shifter) - shifter;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t e = ((int32_t)n + 127) << 23;
  float s;
  memcpy(&s, &e, sizeof s);
  return x0 == x0 ? p * s : x0;
}

/* The sums below keep HQ_LANES partial sums in a fixed array and combine them in a fixed
 * order: the compiler vectorizes them (no -ffast-math needed) and the result is the same for
 * any vector width, so -march=native builds on different CPUs round alike
 * (docs/readme/reproducibility.md). Max is exact in any order. */
#define HQ_LANES 16

/* pairwise sum of the lanes, the same tree for every build */
static inline float hq_lanes_sum(float *a) {
  for (int w = HQ_LANES / 2; w > 0; w /= 2)
    for (int l = 0; l < w; l++) a[l] += a[l + w];
  return a[0];
}

/* max of x[0..n), n >= 1 */
static inline float hq_maxf(const float *x, int64_t n) {
  float m = x[0];
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; j++) m = x[j] > m ? x[j] : m;
  return m;
}

/* Σ exp(x[j] - m) over j in [j0, j1), j1 - j0 <= 1024, lanes by j mod HQ_LANES; the
 * exponentials are written back to x when `store`. */
static inline float hq_exp_block(float *x, int64_t j0, int64_t j1, float m, int store) {
  float acc[HQ_LANES] = {0};
  int64_t j = j0;
  for (; j + HQ_LANES <= j1; j += HQ_LANES)
    for (int l = 0; l < HQ_LANES; l++) {
      const float e = hq_expf(x[j + l] - m);
      if (store) x[j + l] = e;
      acc[l] += e;
    }
  for (int l = 0; j < j1; j++, l++) {
    const float e = hq_expf(x[j] - m);
    if (store) x[j] = e;
    acc[l] += e;
  }
  return hq_lanes_sum(acc);
}

/* x[j] <- exp(x[j] - m) for j < n; returns Σ x[j]: float partial sums over runs of 1024,
 * accumulated in double. */
static inline double hq_exp_shift_sum(float *x, int64_t n, float m) {
  double total = 0;
  for (int64_t j0 = 0; j0 < n; j0 += 1024) total += hq_exp_block(x, j0, n - j0 < 1024 ? n : j0 + 1024, m, 1);
  return total;
}

/* Σ exp(x[j] - m) for j < n without writing x; same accumulation as hq_exp_shift_sum. */
static inline double hq_sum_exp_shift(const float *x, int64_t n, float m) {
  double total = 0;
  for (int64_t j0 = 0; j0 < n; j0 += 1024)
    total += hq_exp_block((float *)x, j0, n - j0 < 1024 ? n : j0 + 1024, m, 0);
  return total;
}

/* Σ x[i]² in double with HQ_LANES fixed partial sums */
static inline double hq_sumsq(const float *x, int64_t n) {
  double acc[HQ_LANES] = {0};
  int64_t i = 0;
  for (; i + HQ_LANES <= n; i += HQ_LANES)
    for (int l = 0; l < HQ_LANES; l++) acc[l] += (double)x[i + l] * x[i + l];
  for (int l = 0; i < n; i++, l++) acc[l] += (double)x[i] * x[i];
  for (int w = HQ_LANES / 2; w > 0; w /= 2)
    for (int l = 0; l < w; l++) acc[l] += acc[l + w];
  return acc[0];
}

#endif
