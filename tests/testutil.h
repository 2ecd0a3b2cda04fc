/* Minimal test helpers: CHECK macros that count failures, a summary line, data paths. */
#ifndef HQ_TESTUTIL_H
#define HQ_TESTUTIL_H

#include <stdint.h>
#include <stdio.h>

#include "backend.h"

extern int hq_t_fail, hq_t_pass;

#define CHECK(cond, ...)                                                                   \
  do {                                                                                     \
    if (cond) {                                                                            \
      hq_t_pass++;                                                                         \
    } else {                                                                               \
      hq_t_fail++;                                                                         \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                      \
      fprintf(stderr, __VA_ARGS__);                                                        \
      fprintf(stderr, "\n");                                                               \
    }                                                                                      \
  } while (0)

/* Prints "N passed, M failed" and returns the process exit code. */
int hq_t_done(const char *name);
/* $HQ_TESTDATA/<rel> (or tests/data/<rel> relative to the source dir). Static buffer. */
const char *hq_t_data(const char *rel);
/* Fill with N(0, sigma) from a seeded generator. */
void hq_t_randn(float *x, int64_t n, uint64_t seed, float sigma);
/* Inside an OpenMP parallel region: the region's threads as a team (backend.h struct hq_team,
 * standing for a node's ranks; their inner OpenMP loops then run serially), sync = barrier. */
struct hq_team hq_t_omp_team(void);

#endif
