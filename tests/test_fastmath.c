/* The vectorizable exp of the CPU forward (src/base/fastmath.h) against libm, and at its edges: NaN
 * propagates (a NaN logit must reach the NLL check, not become a number), infinities clamp.
 * Under -fsanitize=undefined a NaN once reached an undefined conversion and shift. */
#include <math.h>

#include "fastmath.h"
#include "testutil.h"

int main(void) {
  double worst = 0.0;
  for (float x = -87.0f; x <= 88.0f; x += 0.01171875f) {
    const double want = exp((double)x), rel = fabs((double)hq_expf(x) - want) / want;
    worst = rel > worst ? rel : worst;
  }
  CHECK(worst < 4e-7, "relative error %g over [-87, 88]", worst);
  CHECK(isnan(hq_expf(NAN)) && isnan(hq_expf(-NAN)), "NaN gives NaN");
  CHECK(hq_expf(-INFINITY) > 0.0f && hq_expf(-INFINITY) < 1e-37f, "-inf clamps to ~1e-38");
  CHECK(hq_expf(-1e30f) == hq_expf(-87.3f), "below the range clamps");
  CHECK(!(hq_expf(INFINITY) < 1e38f) && hq_expf(INFINITY) == hq_expf(88.7f), "+inf clamps");
  CHECK(hq_expf(0.0f) == 1.0f, "exp(0) = %g", (double)hq_expf(0.0f));
  /* the softmax block sum keeps a NaN */
  float v[20];
  for (int i = 0; i < 20; i++) v[i] = (float)i * 0.1f;
  v[13] = NAN;
  CHECK(isnan(hq_exp_block(v, 0, 20, 1.0f, 0)), "a NaN in a softmax block gives a NaN sum");
  printf("hq_expf: worst relative error %.3g on [-87, 88]\n", worst);
  return hq_t_done("test_fastmath");
}
