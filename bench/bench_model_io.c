/* Model I/O throughput: hq_model_open (mmap + header validation + shape checks) and
 * hq_model_load_block (BF16/F16/F32 -> fp32 conversion) on a model folder, plus raw
 * hq_st_to_f32 conversion rate on a synthetic in-memory tensor. Median of `reps` runs.
 *   bench_model_io [model_dir] [reps]     (default: tests/data/llama-sotu-5m, 7) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "model.h"
#include "util.h"


int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "tests/data/llama-sotu-5m";
  int reps = argc > 2 ? atoi(argv[2]) : 7;
  if (reps < 1 || reps > 1000) reps = 7;
  double *t_open = calloc((size_t)reps, sizeof(double)), *t_load = calloc((size_t)reps, sizeof(double));
  size_t bytes = 0;
  for (int r = 0; r < reps; r++) {
    struct hq_model m;
    double t0 = hq_now();
    if (hq_model_open(dir, &m) != HQ_OK) {
      fprintf(stderr, "%s\n", hq_last_error());
      return 1;
    }
    double t1 = hq_now();
    bytes = 0;
    for (int64_t b = 0; b < m.cfg.n_layers; b++) {
      struct hq_block_weights w;
      if (hq_model_load_block(&m, b, &w) != HQ_OK) {
        fprintf(stderr, "%s\n", hq_last_error());
        return 1;
      }
      hq_block_weights_free(&w);
    }
    for (int64_t i = 0; i < m.st.ntensors; i++)
      if (strncmp(m.st.tensors[i].name, "model.layers.", 13) == 0) bytes += m.st.tensors[i].nbytes;
    double t2 = hq_now();
    t_open[r] = t1 - t0;
    t_load[r] = t2 - t1;
    hq_model_close(&m);
  }
  double mo = hq_median(t_open, reps), ml = hq_median(t_load, reps);
  printf("model %s: open %.2f ms, load all blocks %.2f ms (%.1f MB of weights, %.0f MB/s), "
         "median of %d\n", dir, 1e3 * mo, 1e3 * ml, bytes / 1e6, bytes / 1e6 / ml, reps);

  /* conversion rate: 64 Mi elements per dtype */
  const int64_t n = (int64_t)1 << 26;
  void *src = malloc((size_t)n * 4);
  float *dst = malloc((size_t)n * 4);
  memset(src, 0x3c, (size_t)n * 4);
  memset(dst, 0, (size_t)n * 4);
  const enum hq_dtype dts[3] = {HQ_DTYPE_BF16, HQ_DTYPE_F16, HQ_DTYPE_F32};
  for (int d = 0; d < 3; d++) {
    struct hq_st_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dts[d];
    t.numel = n;
    t.data = src;
    t.nbytes = (size_t)n * hq_dtype_size(dts[d]);
    double *tt = calloc((size_t)reps, sizeof(double));
    for (int r = 0; r < reps; r++) {
      double t0 = hq_now();
      hq_st_to_f32(&t, dst);
      tt[r] = hq_now() - t0;
    }
    double med = hq_median(tt, reps);
    printf("hq_st_to_f32 %-4s: %.1f Melem/s (%.0f MB/s read), median of %d, %lld elements\n",
           hq_dtype_name(dts[d]), n / med / 1e6, t.nbytes / med / 1e6, reps, (long long)n);
    free(tt);
  }
  free(src);
  free(dst);
  free(t_open);
  free(t_load);
  return 0;
}
