/* Small host utilities: wall clock, seeded RNG, progress lines. Not collective. */
#ifndef HQ_UTIL_H
#define HQ_UTIL_H

#include <stddef.h>
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

/* FNV-1a 64 of n bytes, continuing from h (start with HQ_FNV_INIT): identifies inputs in
 * metadata and across ranks (not cryptographic). */
#define HQ_FNV_INIT 0xcbf29ce484222325ULL
uint64_t hq_fnv1a64(uint64_t h, const void *p, size_t n);

/* "12.3 s", "4 min 05 s", "1 h 02 min" */
void hq_format_duration(double seconds, char *buf, int len);

#endif
