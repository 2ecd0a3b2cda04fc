/* Communicator setup and collectives (DESIGN.md "Communication has its own seam").
 * Host buffers go through MPI; device buffers (CUDA backend) through NCCL, bootstrapped over
 * MPI. Counts are ELEMENTS; buffers over INT_MAX elements are chunked internally.
 * Every function says whether it is collective over the world communicator. */
#ifndef HQ_COMM_H
#define HQ_COMM_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

struct hq_comm {
  MPI_Comm comm;      /* duplicate of MPI_COMM_WORLD */
  int rank, size;
  int world_rank;     /* rank in MPI_COMM_WORLD (error messages name it) */
  MPI_Comm node;      /* the ranks of this node (MPI_Comm_split_type SHARED), in rank order */
  int local_rank;     /* rank among the ranks of this node (-> GPU index); 0: the node leader */
  int local_size;
  int nodes;          /* how many nodes (node communicators) c->comm spans */
  MPI_Comm leaders;   /* the node leaders (local_rank 0), in rank order; MPI_COMM_NULL elsewhere */
  char host[256];
  int owns_mpi;       /* hq_comm_init called MPI_Init */
};

/* Collective. MPI_Init_thread (FUNNELED) if needed, node-local rank via
 * MPI_Comm_split_type(SHARED) (test hook: HQ_TEST_RANKS_PER_NODE=k cuts each host's ranks into
 * "nodes" of k, to exercise the inter-node paths on one machine), the leaders' communicator;
 * sets the rank used in error messages. */
int hq_comm_init(struct hq_comm *c, int *argc, char ***argv);
/* Collective. Frees the communicator; MPI_Finalize if hq_comm_init initialised MPI. */
void hq_comm_finalize(struct hq_comm *c);
/* Collective over parent. The ranks of parent that pass the same color, in parent's rank
 * order, as a communicator of their own with its node and leaders' communicators (the
 * HQ_TEST_RANKS_PER_NODE hook applies). Free with hq_comm_free. */
void hq_comm_split(const struct hq_comm *parent, int color, struct hq_comm *out);
/* Collective. Frees the communicators of c (not MPI itself). */
void hq_comm_free(struct hq_comm *c);

/* Collective. Agree on failure before the next collective so that nobody hangs: returns HQ_OK
 * if every rank passed HQ_OK; otherwise every rank returns the status of the lowest failing
 * rank, and hq_last_error() on every rank holds "rank R: <its message>" (R: its rank in
 * MPI_COMM_WORLD). */
int hq_comm_agree(const struct hq_comm *c, int status);

/* Collective. In-place sum over ranks of host buffers. */
void hq_comm_allreduce_f32(const struct hq_comm *c, float *buf, int64_t count);
void hq_comm_allreduce_f64(const struct hq_comm *c, double *buf, int64_t count);
void hq_comm_allreduce_i64(const struct hq_comm *c, int64_t *buf, int64_t count);
/* Collective. Sum over ranks into root's buf (in place there; the others' buf is left as it
 * was or garbage). */
void hq_comm_reduce_i64(const struct hq_comm *c, int64_t *buf, int64_t count, int root);
/* Collective. In-place max over ranks. */
void hq_comm_allreduce_max_f64(const struct hq_comm *c, double *buf, int64_t count);
/* Collective. Broadcast bytes from root. */
void hq_comm_bcast(const struct hq_comm *c, void *buf, size_t bytes, int root);
/* Collective. Gather variable-sized byte pieces: rank r contributes `mine` (bytes[r] bytes);
 * `all` receives the concatenation in rank order (size Σ bytes). bytes[] must be identical
 * on all ranks. */
void hq_comm_allgatherv(const struct hq_comm *c, const void *mine, void *all,
                        const size_t *bytes);
/* Collective. Barrier. */
void hq_comm_barrier(const struct hq_comm *c);

/* ---- node-level sharing (MPI-3 shared-memory windows on c->node) ----
 * One copy per node of a large read-mostly buffer: the node leader (local_rank 0) owns the
 * memory, every rank of the node maps it. The leader fills it, hq_comm_node_publish makes it
 * visible; after that the ranks only read it until hq_comm_node_free. */
struct hq_node_buf {
  MPI_Win win;
  void *ptr;    /* the leader's buffer, mapped in this process */
  size_t bytes;
};
/* Collective over the node. Returns HQ_OK, or HQ_ERR_NOMEM on every rank of the node when the
 * leader cannot allocate `bytes` of shared memory (/dev/shm too small or full): callers then
 * keep a copy per rank. Aborts (HQ_DIE) if MPI fails to make a window /dev/shm has room for. */
int hq_comm_node_alloc(const struct hq_comm *c, size_t bytes, struct hq_node_buf *b);
/* Collective over the node: what the leader wrote is visible to every rank of the node (memory
 * sync, then a barrier that waits without spinning so the leader's threads keep the cores). */
void hq_comm_node_publish(const struct hq_comm *c, struct hq_node_buf *b);
/* Collective over the node. Frees the window (no-op on a buffer never allocated). */
void hq_comm_node_free(struct hq_node_buf *b);
/* Collective over the node. Broadcast bytes from the node leader. */
void hq_comm_node_bcast(const struct hq_comm *c, void *buf, size_t bytes);
/* Collective over the node. A barrier whose waiting ranks sleep instead of spinning. */
void hq_comm_node_barrier(const struct hq_comm *c);
/* Collective. hq_comm_allgatherv into a node-shared buffer: every rank has written its own
 * piece (bytes[r] bytes, in rank order; bytes[] identical everywhere) at its place in b; on
 * return every rank of every node sees all pieces there. A node's own ranks' pieces are in
 * place already; the node leaders broadcast the others (their nodes' ranks' pieces). */
void hq_comm_node_allgatherv(const struct hq_comm *c, struct hq_node_buf *b, const size_t *bytes);
/* Collective over the node leaders (called by them only): in-place sum of a buffer, e.g. a
 * node-shared one that holds the node's share. */
void hq_comm_leaders_allreduce_i64(const struct hq_comm *c, int64_t *buf, int64_t count);

/* Not collective. Test hook: cut every collective above into MPI calls of at most `elems`
 * elements (default and <= 0: INT_MAX). Set the same value on every rank. */
void hq_comm_set_chunk_for_test(int64_t elems);

/* Not collective. Peak resident set size of this process in bytes (getrusage). */
size_t hq_peak_rss_bytes(void);

#ifdef HQ_HAVE_NCCL
/* ---- NCCL: collectives on device buffers of the CUDA backend (mpi/comm_nccl.c) ----
 * Only in builds with NCCL (HQ_HAVE_NCCL). One GPU per rank: the CUDA backend's device
 * (hq_backend_cuda() must have succeeded first). Communication runs on its own stream, ordered
 * against the backend's stream by events, so the host never waits for it. */
struct hq_nccl; /* opaque */
/* Collective. Rank 0 creates the NCCL unique id, MPI_Bcast over c, ncclCommInitRank. Returns
 * HQ_ERR_UNSUPPORTED (every rank) when the CUDA backend is not initialised somewhere. */
int hq_nccl_init(const struct hq_comm *c, struct hq_nccl **out);
/* Collective. In-place sum over ranks of `count` floats of device memory. Runs after every op
 * already queued on the backend stream; ops queued afterwards run after it. Not a host sync. */
void hq_nccl_allreduce_f32(struct hq_nccl *n, float *dbuf, int64_t count);
/* Collective. Waits for outstanding communication and destroys the communicator. */
void hq_nccl_free(struct hq_nccl *n);
#endif

#endif
