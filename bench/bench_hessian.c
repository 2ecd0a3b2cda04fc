/* Memory and time of the exact Hessian accumulator (src/quant/hessian.c) at one width: windows of
 * `tokens` tokens accumulated, then finalized into the fp32 H. Prints the resident set after
 * each phase and the peak (VmHWM), against the 8 bytes x cols^2 aim of issue 12 and the
 * 13.2 GB (n = 28672) of the former fp64 sum + fp32 per-window product + fp32 H.
 * usage: bench_hessian [cols=28672] [windows=2] [tokens=256]
 * (OPENBLAS_CORETYPE=Haswell OMP_NUM_THREADS=1 for the README's figures) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "hessian.h"
#include "util.h"

static long status_mb(const char *key) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = 0;
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, key, strlen(key))) kb = atol(line + strlen(key));
  if (f) fclose(f);
  return kb / 1024;
}

int main(int argc, char **argv) {
  const int64_t n = argc > 1 ? atoll(argv[1]) : 28672, w = argc > 2 ? atoll(argv[2]) : 2;
  const int64_t t = argc > 3 ? atoll(argv[3]) : 256;
  if (n < 1 || w < 1 || t < 1) {
    fprintf(stderr, "usage: bench_hessian [cols >= 1] [windows >= 1] [tokens >= 1]\n");
    return 2;
  }
  const struct hq_backend *be = hq_backend_cpu();
  float *X = malloc(sizeof(float) * (size_t)(n * t));
  if (!X) return fprintf(stderr, "bench_hessian: out of memory\n"), 1;
  for (int64_t i = 0; i < n * t; i++) X[i] = (float)((uint32_t)(i * 2654435761u) % 1000u) / 1000.0f - 0.5f;
  struct hq_hessian h;
  if (hq_hessian_init(&h, be, n, w)) return fprintf(stderr, "bench_hessian: %s\n", hq_last_error()), 1;
  const double t0 = hq_now();
  for (int64_t k = 0; k < w; k++) hq_hessian_accumulate(&h, X, t, n);
  const double t1 = hq_now();
  printf("cols %lld, %lld windows x %lld tokens: accumulate %.2f s (%.1f GFLOP/s), RSS %ld MB "
         "(accumulator %.0f MB)\n", (long long)n, (long long)w, (long long)t, t1 - t0,
         (double)w * (double)t * (double)n * (double)(n + 1) / (t1 - t0) / 1e9,
         status_mb("VmRSS:"), 8.0 * (double)h.ntri / 1048576.0);
  float *H = NULL;
  if (hq_hessian_finalize(&h, &H)) return fprintf(stderr, "bench_hessian: %s\n", hq_last_error()), 1;
  const double t2 = hq_now();
  printf("finalize %.2f s, RSS %ld MB (H %.0f MB); peak RSS %ld MB = %.2f bytes x cols^2 "
         "(H[1] = %g)\n", t2 - t1, status_mb("VmRSS:"), 4.0 * (double)n * (double)n / 1048576.0,
         status_mb("VmHWM:"), (double)status_mb("VmHWM:") * 1048576.0 / ((double)n * (double)n),
         (double)H[n > 1 ? 1 : 0]);
  free(H);
  free(X);
  return 0;
}
