/* Private: vectorizable float helpers for the CPU forward (softmax, SiLU, log-softmax).
 * Plain C, no intrinsics: written so GCC/Clang auto-vectorize the loops that call them. */
#ifndef HQ_FASTMATH_H
#define HQ_FASTMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) in float, relative error ~2 ulp for x in [-87, 88] (Cody-Waite range reduction +
 * Cephes degree-6 polynomial); inputs below -87.3 give ~1e-38 (not 0), above 88.7 clamp.
 * Unlike expf() from libm this inlines into a loop that the compiler vectorizes. */
static inline float hq_expf(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.7f ? 88.7f : x;
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
  return p * s;
}

/* max of x[0..n) (n >= 1), 16 independent lanes so it vectorizes without -ffast-math. */
static inline float hq_maxf(const float *x, int64_t n) {
  float acc[16];
  for (int k = 0; k < 16; k++) acc[k] = x[0];
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int k = 0; k < 16; k++) acc[k] = x[j + k] > acc[k] ? x[j + k] : acc[k];
  float m = acc[0];
  for (int k = 1; k < 16; k++) m = acc[k] > m ? acc[k] : m;
  for (; j < n; j++) m = x[j] > m ? x[j] : m;
  return m;
}

/* x[j] <- exp(x[j] - m) for j < n; returns the sum (16 float lanes, combined in double). */
static inline double hq_exp_shift_sum(float *x, int64_t n, float m) {
  float acc[16] = {0};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int k = 0; k < 16; k++) {
      float e = hq_expf(x[j + k] - m);
      x[j + k] = e;
      acc[k] += e;
    }
  double s = 0;
  for (int k = 0; k < 16; k++) s += acc[k];
  for (; j < n; j++) {
    x[j] = hq_expf(x[j] - m);
    s += x[j];
  }
  return s;
}

/* Σ exp(x[j] - m) for j < n without writing x: 8 double lanes of float exps. */
static inline double hq_sum_exp_shift(const float *x, int64_t n, float m) {
  double acc[8] = {0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; k++) acc[k] += (double)hq_expf(x[j + k] - m);
  double s = 0;
  for (int k = 0; k < 8; k++) s += acc[k];
  for (; j < n; j++) s += (double)hq_expf(x[j] - m);
  return s;
}

#endif
