/* NCCL all-reduce of a device buffer, ordered against backend ops by events (issue 5).
 * x_r[i] = (r + 1) * (i % 97) / 2 on rank r; the backend doubles it (add) BEFORE the
 * all-reduce and again AFTER it, with no host synchronisation in between, so the result is
 * exactly 4 * Σ_r (r + 1) * (i % 97) / 2 only if both event orderings hold (values are small
 * integers / 2: exact in fp32). Runs at 1 rank from ctest and at 2 ranks via gpu_nccl.cmake.
 * Exits 77 (every rank) without a GPU, without NCCL, or when ranks would share one GPU. */
#include <stdio.h>
#include <stdlib.h>

#include "backend.h"
#include "comm.h"
#include "error.h"
#include "testutil.h"

int main(int argc, char **argv) {
  struct hq_comm c;
  if (hq_comm_init(&c, &argc, &argv) != HQ_OK) {
    fprintf(stderr, "%s\n", hq_last_error());
    return 1;
  }
  int skip = 1;
#ifdef HQ_HAVE_NCCL
  const struct hq_backend *be = hq_backend_cuda();
  skip = be == NULL;
  MPI_Allreduce(MPI_IN_PLACE, &skip, 1, MPI_INT, MPI_MAX, c.comm);
  struct hq_nccl *nc = NULL;
  if (!skip) {
    int rc = hq_nccl_init(&c, &nc);
    if (rc == HQ_ERR_UNSUPPORTED) skip = 1;
    else CHECK(rc == HQ_OK, "hq_nccl_init: %s", hq_last_error());
  }
  if (!skip && nc) {
    const int64_t n = (1 << 20) + 3;
    float *h = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) h[i] = (float)(c.rank + 1) * (float)(i % 97) * 0.5f;
    float *d = be->alloc((size_t)n * sizeof(float));
    HQ_ASSERT(d);
    be->upload(d, h, (size_t)n * sizeof(float));
    be->add(n, d, d);                    /* queued before the all-reduce */
    hq_nccl_allreduce_f32(nc, d, n);
    be->add(n, d, d);                    /* queued after it */
    be->download(h, d, (size_t)n * sizeof(float));
    const float rs = (float)c.size * (float)(c.size + 1) / 2.0f; /* Σ (r + 1) */
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += h[i] != 4.0f * rs * (float)(i % 97) * 0.5f;
    CHECK(bad == 0, "rank %d: %lld of %lld elements wrong", c.rank, (long long)bad, (long long)n);
    be->free(d);
    free(h);
    hq_nccl_free(nc);
  }
#endif
  if (skip) {
    if (c.rank == 0) printf("SKIP: no CUDA/NCCL build, no GPU, or fewer GPUs than ranks: %s\n", hq_last_error());
    hq_comm_finalize(&c);
    return 77;
  }
  int failed = hq_t_fail;
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, c.comm);
  int rc = hq_t_done("gpu_nccl");
  hq_comm_finalize(&c);
  return rc ? rc : (failed ? 1 : 0);
}
