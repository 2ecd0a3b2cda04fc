/* NCCL communicator and device-buffer collectives (mpi/comm.h, NCCL section; issue 5).
 * Bootstrapped over MPI: rank 0 gets the unique id, MPI_Bcast, ncclCommInitRank on every rank,
 * one GPU per rank (the CUDA backend's device, picked from the node-local rank).
 * Ordering without host synchronisation: the all-reduce runs on a communication stream that
 * first waits for an event recorded on the backend stream; the backend stream then waits for
 * an event recorded after the all-reduce. NCCL/CUDA errors go through the tier-2 funnel.
 * Compiled only with NCCL (HQ_HAVE_NCCL); the CPU-only build sees an empty file. */
#ifdef HQ_HAVE_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_cuda.h"
#include "comm.h"
#include "error.h"
#include "util.h"

struct hq_nccl {
  ncclComm_t comm;
  cudaStream_t stream;      /* communication stream */
  cudaEvent_t ready, done;  /* backend stream -> comm stream, comm stream -> backend stream */
};

#define HQ_NCCL_CHECK(expr)                                                                 \
  do {                                                                                      \
    ncclResult_t hq_r_ = (expr);                                                            \
    if (hq_r_ != ncclSuccess) HQ_DIE("NCCL error in %s: %s", #expr, ncclGetErrorString(hq_r_)); \
  } while (0)
#define HQ_CUDART_CHECK(expr)                                                               \
  do {                                                                                      \
    cudaError_t hq_e_ = (expr);                                                             \
    if (hq_e_ != cudaSuccess) HQ_DIE("CUDA error in %s: %s", #expr, cudaGetErrorString(hq_e_)); \
  } while (0)

/* Collective. */
int hq_nccl_init(const struct hq_comm *c, struct hq_nccl **out) {
  *out = NULL;
  int rc = hq_backend_cuda() ? HQ_OK : HQ_ERR_UNSUPPORTED;
  if ((rc = hq_comm_agree(c, rc)) != HQ_OK)
    return hq_fail_ctx(rc, "NCCL needs the CUDA backend on every rank: ");
  /* two ranks on one GPU: NCCL refuses that; say so before it does */
  const int dev = hq_cuda_device();
  uint64_t mine[2] = {hq_fnv1a64(HQ_FNV_INIT, c->host, strlen(c->host)), (uint64_t)dev};
  uint64_t *all = hq_xmalloc((size_t)c->size * sizeof mine);
  MPI_Allgather(mine, 2, MPI_UINT64_T, all, 2, MPI_UINT64_T, c->comm);
  int dup = -1;
  for (int r = 0; r < c->size && dup < 0; r++)
    if (r != c->rank && all[2 * r] == mine[0] && all[2 * r + 1] == mine[1]) dup = r;
  free(all);
  rc = dup < 0 ? HQ_OK
               : hq_fail(HQ_ERR_UNSUPPORTED, "ranks %d and %d share GPU %d on %s; NCCL needs one GPU "
                         "per rank (launch at most as many ranks per node as GPUs)",
                         c->rank < dup ? c->rank : dup, c->rank < dup ? dup : c->rank, dev, c->host);
  if ((rc = hq_comm_agree(c, rc)) != HQ_OK) return rc;

  ncclUniqueId id;
  if (c->rank == 0) HQ_NCCL_CHECK(ncclGetUniqueId(&id));
  MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, c->comm);
  struct hq_nccl *n = hq_xcalloc(1, sizeof *n);
  HQ_CUDART_CHECK(cudaSetDevice(dev));
  HQ_NCCL_CHECK(ncclCommInitRank(&n->comm, c->size, id, c->rank));
  HQ_CUDART_CHECK(cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking));
  HQ_CUDART_CHECK(cudaEventCreateWithFlags(&n->ready, cudaEventDisableTiming));
  HQ_CUDART_CHECK(cudaEventCreateWithFlags(&n->done, cudaEventDisableTiming));
  *out = n;
  return HQ_OK;
}

/* Collective. NCCL counts are size_t, so no chunking is needed for large Hessians. */
void hq_nccl_allreduce_f32(struct hq_nccl *n, float *dbuf, int64_t count) {
  HQ_ASSERT(n && count >= 0);
  if (count == 0) return;
  cudaStream_t be = (cudaStream_t)hq_cuda_stream();
  HQ_CUDART_CHECK(cudaEventRecord(n->ready, be));
  HQ_CUDART_CHECK(cudaStreamWaitEvent(n->stream, n->ready, 0));
  HQ_NCCL_CHECK(ncclAllReduce(dbuf, dbuf, (size_t)count, ncclFloat, ncclSum, n->comm, n->stream));
  HQ_CUDART_CHECK(cudaEventRecord(n->done, n->stream));
  HQ_CUDART_CHECK(cudaStreamWaitEvent(be, n->done, 0));
}

/* Collective. */
void hq_nccl_free(struct hq_nccl *n) {
  if (!n) return;
  HQ_CUDART_CHECK(cudaStreamSynchronize(n->stream));
  HQ_NCCL_CHECK(ncclCommDestroy(n->comm));
  HQ_CUDART_CHECK(cudaEventDestroy(n->ready));
  HQ_CUDART_CHECK(cudaEventDestroy(n->done));
  HQ_CUDART_CHECK(cudaStreamDestroy(n->stream));
  free(n);
}
#endif
