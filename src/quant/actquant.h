/* Activation quantization (W4A8 / W4A4 studies): dynamic, symmetric, per-token fake
 * quantization of the input of every linear.
 *
 * For one token (a row x[0..cols) of the linear's input):
 *   qmax  = 2^(bits-1) - 1
 *   scale = max_j |x_j| / qmax                       (fp32, not rounded to fp16)
 *   x_j  <- scale * clamp(round(x_j / scale), -2^(bits-1), qmax)
 * round() is round-half-to-even (rintf), as everywhere in hpcq (quant.h). A row that is all
 * zero (or has a non-finite max) is left unchanged. The scalar math is header-only so a
 * device kernel can use the same lines. Not collective. */
#ifndef HQ_ACTQUANT_H
#define HQ_ACTQUANT_H

#include <stdint.h>

#include "backend.h"
#include "quant.h"

/* Per-token scale of a row whose largest magnitude is amax (0 when the row is all zero). */
HQ_HD float hq_act_scale(float amax, int bits) {
  return amax / (float)((1 << (bits - 1)) - 1);
}

/* Fake-quantize one value with a positive scale. */
HQ_HD float hq_act_fake_quant(float x, float scale, int bits) {
  const float qmax = (float)((1 << (bits - 1)) - 1), qmin = -(float)(1 << (bits - 1));
  float q = rintf(x / scale);
  q = q < qmin ? qmin : (q > qmax ? qmax : q);
  return q * scale;
}

/* Host: fake-quantize every row of X [ntok x cols] (row-major, ld = cols) in place.
 * bits in [2, 16]. */
void hq_act_quant_rows(float *X, int64_t ntok, int64_t cols, int bits);

/* Backend memory: the same on X [ntok x cols]. A device backend goes through the host buffer
 * `host` [ntok x cols] (download, quantize, upload); a host backend works in place (host may
 * be NULL). */
void hq_act_quant_apply(const struct hq_backend *be, float *X, int64_t ntok, int64_t cols,
                        int bits, float *host);

#endif
