/* Activation fake quantization (see actquant.h). Not collective. */
#include "actquant.h"

#include <math.h>

#include "error.h"

void hq_act_quant_rows(float *X, int64_t ntok, int64_t cols, int bits) {
  HQ_ASSERT(bits >= 2 && bits <= 16);
  for (int64_t t = 0; t < ntok; t++) {
    float *x = X + t * cols;
    float amax = 0.0f;
    for (int64_t j = 0; j < cols; j++) {
      const float a = fabsf(x[j]);
      amax = a > amax ? a : amax;
    }
    if (!(amax > 0.0f) || !isfinite(amax)) continue;
    const float s = hq_act_scale(amax, bits);
    if (!(s > 0.0f)) continue; /* amax below qmax * FLT_TRUE_MIN: nothing to quantize */
    for (int64_t j = 0; j < cols; j++) x[j] = hq_act_fake_quant(x[j], s, bits);
  }
}

void hq_act_quant_apply(const struct hq_backend *be, float *X, int64_t ntok, int64_t cols,
                        int bits, float *host) {
  if (!be->on_device) {
    hq_act_quant_rows(X, ntok, cols, bits);
    return;
  }
  HQ_ASSERT(host);
  const size_t bytes = (size_t)(ntok * cols) * sizeof(float);
  be->sync();
  be->download(host, X, bytes);
  hq_act_quant_rows(host, ntok, cols, bits);
  be->upload(X, host, bytes);
}
