/* Scales are stored as fp16 (largest finite value 65504): a group whose grid needs a larger
 * scale cannot be represented. Every method refuses such a layer (src/quant/gptq.h) instead of
 * clamping the scale, which would silently clip the group's weights. Not collective. */
#include <math.h>

#include "error.h"
#include "gptq.h"
#include "quant.h"

#define HQ_F16_MAX 65504.0

/* The grid's scale for one group before fp16 rounding (the range always includes 0). */
static double group_scale(const float *w, int64_t n, int sym, int maxq, float *lo, float *hi) {
  float mn = 0.0f, mx = 0.0f;
  for (int64_t j = 0; j < n; j++) {
    mn = w[j] < mn ? w[j] : mn;
    mx = w[j] > mx ? w[j] : mx;
  }
  *lo = mn;
  *hi = mx;
  const double a = fabs((double)mn) > (double)mx ? fabs((double)mn) : (double)mx;
  return (sym ? 2.0 * a : (double)mx - (double)mn) / (double)maxq;
}

static int too_wide(const struct hq_gptq_opts *o, int64_t r, int64_t c0, int64_t n, float lo,
                    float hi, double s) {
  const int maxq = (1 << o->bits) - 1;
  return hq_fail(HQ_ERR_NUMERIC, "row %lld, columns %lld..%lld: the weights span [%g, %g], so the "
                 "%d-bit %s grid needs a scale of %g, beyond the largest fp16 scale %g (scales are "
                 "stored as fp16): at %d bits a group may span at most %g (8 bits: %g). Weights "
                 "this large usually mean a corrupt or wrongly converted checkpoint (check it); "
                 "with --equalize smooth try a smaller --smooth-alpha, else use more bits",
                 (long long)r, (long long)c0, (long long)(c0 + n - 1), (double)lo, (double)hi,
                 o->bits, o->sym ? "symmetric" : "asymmetric", s, HQ_F16_MAX, o->bits,
                 HQ_F16_MAX * maxq, HQ_F16_MAX * 255.0);
}

int hq_grid_check_fp16(const struct hq_gptq_opts *o, const float *W, int64_t rows, int64_t cols) {
  const int64_t gs = o->group_size > 0 && o->group_size < cols ? o->group_size : cols;
  const int maxq = (1 << o->bits) - 1;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c0 = 0; c0 < cols; c0 += gs) {
      const int64_t n = cols - c0 < gs ? cols - c0 : gs;
      float lo, hi;
      const double s = group_scale(W + r * cols + c0, n, o->sym, maxq, &lo, &hi);
      if (!isfinite(hq_fp16_round((float)s))) return too_wide(o, r, c0, n, lo, hi, s);
    }
  return HQ_OK;
}

int hq_result_check_fp16(const struct hq_gptq_result *res, int bits) {
  for (int64_t k = 0; k < res->rows * res->ngroups; k++)
    if (!(res->scales[k] < (float)HQ_F16_MAX))
      return hq_fail(HQ_ERR_NUMERIC, "row %lld, group %lld: the scale reached the largest fp16 "
                     "value %g (scales are stored as fp16): the group's weights after the "
                     "method's updates span more than %g x %d, beyond what %d-bit fp16 scales "
                     "hold. Check the checkpoint (weights this large are usually corrupt), or use "
                     "more bits", (long long)(k / res->ngroups), (long long)(k % res->ngroups),
                     HQ_F16_MAX, HQ_F16_MAX, (1 << bits) - 1, bits);
  return HQ_OK;
}
