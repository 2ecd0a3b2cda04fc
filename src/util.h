/* Small host utilities: wall clock, seeded RNG, progress lines. Not collective. */
#ifndef HQ_UTIL_H
#define HQ_UTIL_H

#include <stdint.h>

double hq_now(void); /* monotonic seconds */
/* Median of n > 0 values (mean of the middle two for even n); v is left unchanged. */
double hq_median(const double *v, int n);

/* splitmix64-seeded xoshiro256** generator: deterministic across platforms. */
struct hq_rng { uint64_t s[4]; };
void hq_rng_seed(struct hq_rng *r, uint64_t seed);
uint64_t hq_rng_u64(struct hq_rng *r);
double hq_rng_uniform(struct hq_rng *r);  /* [0, 1) */
double hq_rng_normal(struct hq_rng *r);   /* N(0, 1), Box-Muller */
uint64_t hq_rng_below(struct hq_rng *r, uint64_t n); /* uniform in [0, n), unbiased */

/* "12.3 s", "4 min 05 s", "1 h 02 min" */
void hq_format_duration(double seconds, char *buf, int len);

#endif
