#include "testutil.h"

#include <omp.h>
#include <stdlib.h>

#include "util.h"

int hq_t_fail = 0, hq_t_pass = 0;

int hq_t_done(const char *name) {
  printf("%s: %d passed, %d failed\n", name, hq_t_pass, hq_t_fail);
  return hq_t_fail ? 1 : 0;
}

const char *hq_t_data(const char *rel) {
  static char buf[4096];
  const char *d = getenv("HQ_TESTDATA");
  snprintf(buf, sizeof buf, "%s/%s", d ? d : "tests/data", rel);
  return buf;
}

void hq_t_randn(float *x, int64_t n, uint64_t seed, float sigma) {
  struct hq_rng r;
  hq_rng_seed(&r, seed);
  for (int64_t i = 0; i < n; i++) x[i] = sigma * (float)hq_rng_normal(&r);
}

static int team_v;
static void omp_sync(void *ctx) {
  (void)ctx;
#pragma omp barrier
}
static int omp_bcast(void *ctx, int v) {
  (void)ctx;
  if (omp_get_thread_num() == 0) team_v = v;
#pragma omp barrier
  const int r = team_v;
#pragma omp barrier
  return r;
}
struct hq_team hq_t_omp_team(void) {
  return (struct hq_team){omp_get_thread_num(), omp_get_num_threads(), omp_sync, omp_bcast, NULL};
}
