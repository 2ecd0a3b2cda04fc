/* Communicator setup and host-buffer collectives over MPI (mpi/comm.h).
 * Counts passed to MPI are int, so every collective here is cut into pieces of at most
 * hq_comm_chunk elements (INT_MAX unless a test lowers it with hq_comm_set_chunk_for_test). */
#include "comm.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "error.h"

/* Largest element count handed to one MPI call. Tests lower it to exercise the chunking. */
static int64_t hq_comm_chunk = INT_MAX;

/* Not collective. Test hook: cut collectives into pieces of `elems` elements (<= 0 restores
 * INT_MAX). Must be set to the same value on every rank before the next collective. */
void hq_comm_set_chunk_for_test(int64_t elems) {
  hq_comm_chunk = (elems <= 0 || elems > INT_MAX) ? INT_MAX : elems;
}

static void comm_setup(struct hq_comm *c);

/* Collective. */
int hq_comm_init(struct hq_comm *c, int *argc, char ***argv) {
  memset(c, 0, sizeof *c);
  int init = 0;
  MPI_Initialized(&init);
  if (!init) {
    int provided = 0;
    /* Started without a launcher (singleton), Open MPI's own PMIx server keeps its data in
     * shared-memory files: under `ulimit -f` it dies writing them (SIGXFSZ) and MPI_Init
     * aborts or hangs before hpcq can say anything. Its in-memory store needs no file. */
    if (!getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMIX_RANK")) setenv("PMIX_MCA_gds", "hash", 0);
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
      return hq_fail(HQ_ERR_IO, "MPI_Init_thread failed; check the MPI installation/launcher");
    c->owns_mpi = 1;
    if (provided < MPI_THREAD_FUNNELED) {
      /* Every rank of one MPI library sees the same level, so all return this together. */
      return hq_fail(HQ_ERR_UNSUPPORTED,
                     "the MPI library provides thread level %d, hpcq needs MPI_THREAD_FUNNELED "
                     "(OpenMP threads inside each rank); use an MPI built with thread support",
                     provided);
    }
  }
  MPI_Comm_dup(MPI_COMM_WORLD, &c->comm);
  comm_setup(c);
  hq_error_set_rank(c->rank);
  return HQ_OK;
}

/* Collective over c->comm (set): rank, size, the node and leaders' communicators, the node
 * count, host. */
static void comm_setup(struct hq_comm *c) {
  MPI_Comm_rank(c->comm, &c->rank);
  MPI_Comm_size(c->comm, &c->size);
  MPI_Comm_rank(MPI_COMM_WORLD, &c->world_rank);
  MPI_Comm_split_type(c->comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &c->node);
  MPI_Comm_rank(c->node, &c->local_rank);
  const char *k = getenv("HQ_TEST_RANKS_PER_NODE"); /* test hook: several "nodes" per host */
  if (k && atoi(k) > 0) {
    MPI_Comm sub;
    MPI_Comm_split(c->node, c->local_rank / atoi(k), c->local_rank, &sub);
    MPI_Comm_free(&c->node);
    c->node = sub;
    MPI_Comm_rank(c->node, &c->local_rank);
  }
  MPI_Comm_size(c->node, &c->local_size);
  MPI_Comm_split(c->comm, c->local_rank == 0 ? 0 : MPI_UNDEFINED, c->rank, &c->leaders);
  const int leader = c->local_rank == 0;
  MPI_Allreduce(&leader, &c->nodes, 1, MPI_INT, MPI_SUM, c->comm);
  if (gethostname(c->host, sizeof c->host - 1) != 0) strcpy(c->host, "?");
  c->host[sizeof c->host - 1] = 0;
}

/* Collective over parent. */
void hq_comm_split(const struct hq_comm *parent, int color, struct hq_comm *out) {
  memset(out, 0, sizeof *out);
  MPI_Comm_split(parent->comm, color, parent->rank, &out->comm);
  comm_setup(out);
}

/* Collective. */
void hq_comm_finalize(struct hq_comm *c) {
  int fin = 0;
  MPI_Finalized(&fin);
  if (fin) return;
  hq_comm_free(c);
  if (c->owns_mpi) MPI_Finalize();
  c->owns_mpi = 0;
}

/* Collective. */
void hq_comm_free(struct hq_comm *c) {
  if (c->leaders != MPI_COMM_NULL && c->leaders != 0) MPI_Comm_free(&c->leaders);
  if (c->node != MPI_COMM_NULL && c->node != 0) MPI_Comm_free(&c->node);
  if (c->comm != MPI_COMM_NULL && c->comm != 0) MPI_Comm_free(&c->comm);
  c->comm = c->node = c->leaders = MPI_COMM_NULL;
}

/* Collective. One MINLOC all-reduce when everybody passed; a broadcast of the lowest failing
 * rank's status and message otherwise. */
int hq_comm_agree(const struct hq_comm *c, int status) {
  struct { int failed_not; int rank; } in, out;
  in.failed_not = status == HQ_OK ? 1 : 0; /* MINLOC: value 0 (failed) wins, lowest rank */
  in.rank = c->rank;
  MPI_Allreduce(&in, &out, 1, MPI_2INT, MPI_MINLOC, c->comm);
  if (out.failed_not == 1) return HQ_OK;
  struct { int status, world_rank; char msg[1800]; } m;
  memset(&m, 0, sizeof m);
  int root = out.rank;
  if (c->rank == root) {
    m.status = status;
    m.world_rank = c->world_rank;
    snprintf(m.msg, sizeof m.msg, "%s", hq_last_error());
  }
  MPI_Bcast(&m, (int)sizeof m, MPI_BYTE, root, c->comm);
  m.msg[sizeof m.msg - 1] = 0;
  /* Do not stack "rank R: " prefixes when an agreed error is agreed on again (every rank
   * then passes the failure and the message already names the rank it came from). */
  int r_in_msg = -1, consumed = 0;
  if (sscanf(m.msg, "rank %d: %n", &r_in_msg, &consumed) == 1 && consumed > 0)
    hq_fail(m.status, "%s", m.msg);
  else
    hq_fail(m.status, "rank %d: %s", m.world_rank, m.msg);
  return m.status;
}

static void allreduce_on(MPI_Comm comm, void *buf, int64_t count, size_t esize,
                         MPI_Datatype type, MPI_Op op) {
  HQ_ASSERT(count >= 0);
  char *p = (char *)buf;
  for (int64_t off = 0; off < count; off += hq_comm_chunk) {
    int64_t n = count - off < hq_comm_chunk ? count - off : hq_comm_chunk;
    MPI_Allreduce(MPI_IN_PLACE, p + (size_t)off * esize, (int)n, type, op, comm);
  }
}
static void allreduce_chunked(const struct hq_comm *c, void *buf, int64_t count, size_t esize,
                              MPI_Datatype type, MPI_Op op) {
  allreduce_on(c->comm, buf, count, esize, type, op);
}

/* Collective over the node leaders. */
void hq_comm_leaders_allreduce_i64(const struct hq_comm *c, int64_t *buf, int64_t count) {
  HQ_ASSERT(c->local_rank == 0);
  allreduce_on(c->leaders, buf, count, sizeof(int64_t), MPI_INT64_T, MPI_SUM);
}

/* Collective. */
void hq_comm_allreduce_f32(const struct hq_comm *c, float *buf, int64_t count) {
  allreduce_chunked(c, buf, count, sizeof(float), MPI_FLOAT, MPI_SUM);
}
/* Collective. */
void hq_comm_allreduce_f64(const struct hq_comm *c, double *buf, int64_t count) {
  allreduce_chunked(c, buf, count, sizeof(double), MPI_DOUBLE, MPI_SUM);
}
/* Collective. */
void hq_comm_allreduce_i64(const struct hq_comm *c, int64_t *buf, int64_t count) {
  allreduce_chunked(c, buf, count, sizeof(int64_t), MPI_INT64_T, MPI_SUM);
}
/* Collective. */
void hq_comm_reduce_i64(const struct hq_comm *c, int64_t *buf, int64_t count, int root) {
  HQ_ASSERT(count >= 0);
  for (int64_t off = 0; off < count; off += hq_comm_chunk) {
    const int64_t n = count - off < hq_comm_chunk ? count - off : hq_comm_chunk;
    if (c->rank == root)
      MPI_Reduce(MPI_IN_PLACE, buf + off, (int)n, MPI_INT64_T, MPI_SUM, root, c->comm);
    else
      MPI_Reduce(buf + off, NULL, (int)n, MPI_INT64_T, MPI_SUM, root, c->comm);
  }
}
/* Collective. */
void hq_comm_allreduce_max_f64(const struct hq_comm *c, double *buf, int64_t count) {
  allreduce_chunked(c, buf, count, sizeof(double), MPI_DOUBLE, MPI_MAX);
}

static void bcast_on(MPI_Comm comm, void *buf, size_t bytes, int root) {
  char *p = (char *)buf;
  size_t chunk = (size_t)hq_comm_chunk;
  for (size_t off = 0; off < bytes; off += chunk) {
    size_t n = bytes - off < chunk ? bytes - off : chunk;
    MPI_Bcast(p + off, (int)n, MPI_BYTE, root, comm);
  }
}

/* Collective. */
void hq_comm_bcast(const struct hq_comm *c, void *buf, size_t bytes, int root) {
  bcast_on(c->comm, buf, bytes, root);
}

/* The n pieces of out (bytes[r] each, in order) broadcast over comm, piece r from root[r] (NULL:
 * from r), in chunks, with non-blocking broadcasts issued in the same order everywhere. */
static void bcast_pieces(MPI_Comm comm, char *out, const size_t *bytes, int n, const int *root) {
  const size_t chunk = (size_t)hq_comm_chunk;
  size_t nreq = 0;
  for (int r = 0; r < n; r++) nreq += (bytes[r] + chunk - 1) / chunk;
  MPI_Request *req = hq_xmalloc(sizeof(MPI_Request) * (nreq ? nreq : 1));
  size_t k = 0, off = 0;
  for (int r = 0; r < n; r++) {
    for (size_t o = 0; o < bytes[r]; o += chunk) {
      const size_t len = bytes[r] - o < chunk ? bytes[r] - o : chunk;
      MPI_Ibcast(out + off + o, (int)len, MPI_BYTE, root ? root[r] : r, comm, &req[k++]);
    }
    off += bytes[r];
  }
  MPI_Waitall((int)k, req, MPI_STATUSES_IGNORE);
  free(req);
}

/* Collective. Small case (total and every displacement fit one MPI call): one
 * MPI_Allgatherv. Large case: every rank's piece is broadcast from its owner in chunks with
 * non-blocking broadcasts, all issued in the same order on every rank, then waited for. */
void hq_comm_allgatherv(const struct hq_comm *c, const void *mine, void *all,
                        const size_t *bytes) {
  size_t total = 0;
  for (int r = 0; r < c->size; r++) total += bytes[r];
  char *out = (char *)all;
  size_t myoff = 0;
  for (int r = 0; r < c->rank; r++) myoff += bytes[r];
  if (total <= (size_t)hq_comm_chunk) {
    int *counts = hq_xmalloc(sizeof(int) * (size_t)c->size);
    int *displs = hq_xmalloc(sizeof(int) * (size_t)c->size);
    size_t off = 0;
    for (int r = 0; r < c->size; r++) {
      counts[r] = (int)bytes[r];
      displs[r] = (int)off;
      off += bytes[r];
    }
    /* MPI_IN_PLACE when the caller already put its piece in place (a common pattern). */
    const void *send = (mine == (const void *)(out + myoff)) ? MPI_IN_PLACE : mine;
    MPI_Allgatherv(send, counts[c->rank], MPI_BYTE, out, counts, displs, MPI_BYTE, c->comm);
    free(counts);
    free(displs);
    return;
  }
  if (bytes[c->rank] && mine != (const void *)(out + myoff))
    memmove(out + myoff, mine, bytes[c->rank]);
  bcast_pieces(c->comm, out, bytes, c->size, NULL);
}

/* Collective. */
void hq_comm_barrier(const struct hq_comm *c) { MPI_Barrier(c->comm); }

/* ---- node-level sharing ---- */

/* Not collective: /dev/shm (where Open MPI puts shared windows) can take bytes plus 64 MiB;
 * true where there is no /dev/shm to ask. */
static int shm_has_room(size_t bytes) {
  struct statvfs st;
  if (statvfs("/dev/shm", &st) != 0) return 1;
  return (double)st.f_bavail * (double)st.f_frsize >= (double)bytes + 67108864.0;
}

/* Collective over the node. */
int hq_comm_node_alloc(const struct hq_comm *c, size_t bytes, struct hq_node_buf *b) {
  memset(b, 0, sizeof *b);
  b->win = MPI_WIN_NULL;
  MPI_Comm_set_errhandler(c->node, MPI_ERRORS_RETURN);
  /* Open MPI backs the window with a file in /dev/shm, sized but not filled: a tmpfs that
   * cannot hold it would fault (SIGBUS) when it is touched, so refuse up front */
  int bad = c->local_rank == 0 && !shm_has_room(bytes);
  MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_MAX, c->node);
  if (!bad) {
    const MPI_Aint mine = c->local_rank == 0 ? (MPI_Aint)(bytes ? bytes : 1) : 0;
    void *base = NULL;
    const int err = MPI_Win_allocate_shared(mine, 1, MPI_INFO_NULL, c->node, &base, &b->win);
    /* past the room check this is the MPI library failing: the ranks that got the window
     * could not free it without the others (MPI_Win_free is collective), so stop here */
    if (err != MPI_SUCCESS)
      HQ_DIE("MPI_Win_allocate_shared of %.1f MB failed on %s (error %d) although /dev/shm had "
             "room; rerun with HQ_NODE_SHARE=0 (one copy per rank)", (double)bytes / 1e6,
             c->host, err);
  }
  MPI_Comm_set_errhandler(c->node, MPI_ERRORS_ARE_FATAL);
  if (bad) {
    b->win = MPI_WIN_NULL;
    return hq_fail(HQ_ERR_NOMEM, "no room for %.1f MB of node-shared memory (MPI-3 window) in "
                   "/dev/shm on %s", (double)bytes / 1e6, c->host);
  }
  MPI_Aint size = 0;
  int disp = 0;
  MPI_Win_shared_query(b->win, 0, &size, &disp, &b->ptr);
  MPI_Win_lock_all(MPI_MODE_NOCHECK, b->win); /* passive target: plain loads and stores */
  b->bytes = bytes;
  return HQ_OK;
}

/* Collective over the node. Polls for the first 0.2 ms (a team's step barriers, hundreds per
 * Cholesky, mostly wait microseconds; sleeping at once cost each ~0.1 ms), then sleeps 0.1 ms
 * between polls so that a rank waiting long for a leader leaves its core to the others. */
void hq_comm_node_barrier(const struct hq_comm *c) {
  MPI_Request req;
  MPI_Ibarrier(c->node, &req);
  int done = 0;
  MPI_Test(&req, &done, MPI_STATUS_IGNORE);
  const double t0 = MPI_Wtime();
  while (!done) {
    if (MPI_Wtime() - t0 > 2e-4) {
      const struct timespec ts = {0, 100000}; /* 0.1 ms */
      nanosleep(&ts, NULL);
    }
    MPI_Test(&req, &done, MPI_STATUS_IGNORE);
  }
}

/* Collective over the node. */
void hq_comm_node_publish(const struct hq_comm *c, struct hq_node_buf *b) {
  MPI_Win_sync(b->win);
  hq_comm_node_barrier(c);
  MPI_Win_sync(b->win);
}

/* Collective. */
void hq_comm_node_allgatherv(const struct hq_comm *c, struct hq_node_buf *b, const size_t *bytes) {
  int node = -1, nodes = 1; /* this node's index among the leaders, their count */
  if (c->local_rank == 0) {
    MPI_Comm_rank(c->leaders, &node);
    MPI_Comm_size(c->leaders, &nodes);
  }
  MPI_Bcast(&node, 1, MPI_INT, 0, c->node);
  MPI_Bcast(&nodes, 1, MPI_INT, 0, c->node);
  hq_comm_node_publish(c, b); /* the node's own pieces written */
  if (nodes == 1) return;
  int *node_of = hq_xmalloc(sizeof(int) * (size_t)c->size);
  MPI_Allgather(&node, 1, MPI_INT, node_of, 1, MPI_INT, c->comm);
  if (c->local_rank == 0) bcast_pieces(c->leaders, b->ptr, bytes, c->size, node_of);
  free(node_of);
  hq_comm_node_publish(c, b); /* the other nodes' pieces written by the leader */
}

/* Collective over the node. */
void hq_comm_node_free(struct hq_node_buf *b) {
  if (b->win == MPI_WIN_NULL || b->win == 0) return;
  MPI_Win_unlock_all(b->win);
  MPI_Win_free(&b->win);
  memset(b, 0, sizeof *b);
  b->win = MPI_WIN_NULL;
}

/* Collective over the node. */
void hq_comm_node_bcast(const struct hq_comm *c, void *buf, size_t bytes) {
  bcast_on(c->node, buf, bytes, 0);
}

/* Not collective. */
size_t hq_peak_rss_bytes(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return (size_t)ru.ru_maxrss * 1024u; /* Linux reports KiB */
}
