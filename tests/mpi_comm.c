/* mpi/comm at 1, 2 and 3 ranks: setup, error agreement, and every collective with the
 * default chunk size and with tiny chunks (so the INT_MAX chunking loops run several times). */
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "error.h"
#include "testutil.h"

static void test_agree(const struct hq_comm *c) {
  hq_error_clear();
  CHECK(hq_comm_agree(c, HQ_OK) == HQ_OK, "all ok");
  /* the last rank fails */
  int last = c->size - 1;
  int st = c->rank == last ? hq_fail(HQ_ERR_IO, "disk full at offset %d", 42) : HQ_OK;
  int got = hq_comm_agree(c, st);
  char want[128];
  snprintf(want, sizeof want, "rank %d: disk full at offset 42", last);
  CHECK(got == HQ_ERR_IO, "rank %d got %d", c->rank, got);
  CHECK(strcmp(hq_last_error(), want) == 0, "rank %d message '%s'", c->rank, hq_last_error());
  /* agreeing again on an agreed error does not stack prefixes */
  got = hq_comm_agree(c, got);
  CHECK(got == HQ_ERR_IO && strcmp(hq_last_error(), want) == 0, "re-agree: '%s'", hq_last_error());
  /* several ranks fail: the lowest failing rank's status and message win */
  if (c->size >= 2) {
    st = HQ_OK;
    if (c->rank >= 1) st = hq_fail(c->rank == 1 ? HQ_ERR_INPUT : HQ_ERR_NUMERIC, "bad thing on %d", c->rank);
    got = hq_comm_agree(c, st);
    CHECK(got == HQ_ERR_INPUT, "rank %d got %d", c->rank, got);
    CHECK(strcmp(hq_last_error(), "rank 1: bad thing on 1") == 0, "'%s'", hq_last_error());
  }
  hq_error_clear();
  CHECK(hq_comm_agree(c, HQ_OK) == HQ_OK, "ok again after a failure");
}

static void test_reduce(const struct hq_comm *c, const char *what) {
  int n = c->size;
  int64_t cnt = 10;
  float f[10];
  double d[10], m[10];
  int64_t k[10];
  for (int i = 0; i < cnt; i++) {
    f[i] = (float)(c->rank * 1000 + i);
    d[i] = c->rank * 1e6 + i;
    k[i] = (int64_t)c->rank * 10000000000LL + i;
    m[i] = (c->rank == (i % n)) ? 100.0 + i : -(double)c->rank;
  }
  hq_comm_allreduce_f32(c, f, cnt);
  hq_comm_allreduce_f64(c, d, cnt);
  hq_comm_allreduce_i64(c, k, cnt);
  hq_comm_allreduce_max_f64(c, m, cnt);
  int64_t rs = (int64_t)n * (n - 1) / 2;
  int bad = 0;
  for (int i = 0; i < cnt; i++) {
    bad += f[i] != (float)(1000 * rs + n * i);
    bad += d[i] != 1e6 * (double)rs + (double)(n * i);
    bad += k[i] != 10000000000LL * rs + (int64_t)n * i;
    bad += m[i] != 100.0 + i;
  }
  CHECK(bad == 0, "%s: %d wrong reduced elements", what, bad);
  hq_comm_allreduce_f32(c, f, 0); /* empty is fine */
}

static void test_bcast(const struct hq_comm *c, const char *what) {
  unsigned char b[17];
  int root = c->size - 1;
  for (int i = 0; i < 17; i++) b[i] = c->rank == root ? (unsigned char)(7 * i + 1) : 0xEE;
  hq_comm_bcast(c, b, sizeof b, root);
  int bad = 0;
  for (int i = 0; i < 17; i++) bad += b[i] != (unsigned char)(7 * i + 1);
  CHECK(bad == 0, "%s: bcast %d wrong bytes", what, bad);
}

static void test_gather(const struct hq_comm *c, const char *what, int in_place) {
  size_t *bytes = calloc((size_t)c->size, sizeof(size_t));
  size_t total = 0, off = 0;
  for (int r = 0; r < c->size; r++) {
    bytes[r] = r == 1 ? 0 : (size_t)(5 * r + 3); /* rank 1 contributes nothing */
    if (r < c->rank) off += bytes[r];
    total += bytes[r];
  }
  unsigned char *all = malloc(total + 1), *mine = malloc(bytes[c->rank] + 1);
  memset(all, 0xCD, total + 1);
  for (size_t i = 0; i < bytes[c->rank]; i++) mine[i] = (unsigned char)(c->rank * 31 + i);
  if (in_place) memcpy(all + off, mine, bytes[c->rank]);
  hq_comm_allgatherv(c, in_place ? all + off : mine, all, bytes);
  int bad = 0;
  size_t o = 0;
  for (int r = 0; r < c->size; r++)
    for (size_t i = 0; i < bytes[r]; i++) bad += all[o++] != (unsigned char)(r * 31 + i);
  bad += all[total] != 0xCD; /* nothing written past the end */
  CHECK(bad == 0, "%s%s: allgatherv %d wrong bytes", what, in_place ? " in place" : "", bad);
  free(all);
  free(mine);
  free(bytes);
}

/* One buffer per node: the leader's writes are seen by every rank of the node after publish,
 * a node bcast reaches every rank, and two buffers at once are distinct. */
static void test_node_buf(const struct hq_comm *c) {
  struct hq_node_buf a, b;
  const size_t n = 3 << 20; /* 3 MiB: more than one page, and more than the test chunk */
  CHECK(hq_comm_node_alloc(c, n, &a) == HQ_OK && a.ptr && a.bytes == n, "node alloc: %s", hq_last_error());
  CHECK(hq_comm_node_alloc(c, 64, &b) == HQ_OK && b.ptr && b.ptr != a.ptr, "second node buffer");
  if (c->local_rank == 0) {
    for (size_t i = 0; i < n; i++) ((unsigned char *)a.ptr)[i] = (unsigned char)(i * 7 + 1);
    memset(b.ptr, 0x5a, 64);
  }
  hq_comm_node_publish(c, &a);
  hq_comm_node_publish(c, &b);
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) bad += ((unsigned char *)a.ptr)[i] != (unsigned char)(i * 7 + 1);
  for (size_t i = 0; i < 64; i++) bad += ((unsigned char *)b.ptr)[i] != 0x5a;
  CHECK(bad == 0, "rank %d sees %zu wrong node-shared bytes", c->rank, bad);
  int64_t v[2] = {c->local_rank == 0 ? 42 : -1, c->local_rank == 0 ? c->rank : -1};
  hq_comm_node_bcast(c, v, sizeof v);
  CHECK(v[0] == 42 && v[1] == c->rank - c->local_rank, "node bcast: %lld %lld", (long long)v[0], (long long)v[1]);
  hq_comm_node_barrier(c);
  hq_comm_node_free(&b);
  hq_comm_node_free(&a);
  hq_comm_node_free(&a); /* freeing twice is a no-op */
  struct hq_node_buf z = {0};
  hq_comm_node_free(&z); /* so is freeing one never allocated */
}

/* hq_comm_node_allgatherv: each rank writes its piece (sizes differ, one is empty) into a
 * node-shared buffer; afterwards every rank sees every rank's piece, on one node and with each
 * rank its own "node" (then the leaders exchange everything). */
static void test_node_gather(const struct hq_comm *c, const char *what) {
  size_t *bytes = malloc(sizeof(size_t) * (size_t)c->size), total = 0, off = 0;
  for (int r = 0; r < c->size; r++) total += bytes[r] = r == 1 ? 0 : (size_t)(1000 * (r + 1) + 7 * r);
  for (int r = 0; r < c->rank; r++) off += bytes[r];
  struct hq_node_buf b;
  CHECK(hq_comm_node_alloc(c, total, &b) == HQ_OK, "node gather alloc: %s", hq_last_error());
  for (size_t i = 0; i < bytes[c->rank]; i++) ((unsigned char *)b.ptr)[off + i] = (unsigned char)(c->rank * 31 + i);
  hq_comm_node_allgatherv(c, &b, bytes);
  size_t bad = 0;
  off = 0;
  for (int r = 0; r < c->size; r++) {
    for (size_t i = 0; i < bytes[r]; i++) bad += ((unsigned char *)b.ptr)[off + i] != (unsigned char)(r * 31 + i);
    off += bytes[r];
  }
  CHECK(bad == 0, "node gather (%s, %d node(s) of %d): rank %d sees %zu wrong bytes", what,
        c->size / c->local_size, c->local_size, c->rank, bad);
  hq_comm_node_free(&b);
  free(bytes);
}

int main(int argc, char **argv) {
  struct hq_comm c;
  CHECK(hq_comm_init(&c, &argc, &argv) == HQ_OK, "init: %s", hq_last_error());
  int wr, ws;
  MPI_Comm_rank(MPI_COMM_WORLD, &wr);
  MPI_Comm_size(MPI_COMM_WORLD, &ws);
  CHECK(c.rank == wr && c.size == ws, "rank/size");
  CHECK(c.owns_mpi == 1, "hq_comm_init initialised MPI");
  CHECK(c.local_size == ws && c.local_rank == wr, "one node: local %d/%d", c.local_rank, c.local_size);
  CHECK(hq_error_rank() == wr, "error rank");
  CHECK(c.host[0] != 0, "host name");
  int level = 0;
  MPI_Query_thread(&level);
  CHECK(level >= MPI_THREAD_FUNNELED, "thread level %d", level);

  /* a second communicator over the already initialised MPI does not own it */
  struct hq_comm c2;
  CHECK(hq_comm_init(&c2, &argc, &argv) == HQ_OK && c2.owns_mpi == 0, "second init");
  hq_comm_finalize(&c2);
  int fin = 0;
  MPI_Finalized(&fin);
  CHECK(!fin, "finalize of a non-owning comm must not finalize MPI");

  test_agree(&c);
  test_reduce(&c, "default chunk");
  test_bcast(&c, "default chunk");
  test_gather(&c, "default chunk", 0);
  test_gather(&c, "default chunk", 1);
  int64_t chunks[] = {1, 3, 4};
  for (int i = 0; i < 3; i++) {
    char what[32];
    snprintf(what, sizeof what, "chunk %lld", (long long)chunks[i]);
    hq_comm_set_chunk_for_test(chunks[i]);
    test_reduce(&c, what);
    test_bcast(&c, what);
    test_gather(&c, what, 0);
    test_gather(&c, what, 1);
  }
  hq_comm_set_chunk_for_test(0);
  test_node_buf(&c);
  test_node_gather(&c, "default chunk");
  /* every rank its own node (the test hook), the leaders' exchange in small chunks too */
  setenv("HQ_TEST_RANKS_PER_NODE", "1", 1);
  struct hq_comm c3;
  CHECK(hq_comm_init(&c3, &argc, &argv) == HQ_OK && c3.local_size == 1, "nodes of one rank");
  unsetenv("HQ_TEST_RANKS_PER_NODE");
  test_node_gather(&c3, "default chunk");
  hq_comm_set_chunk_for_test(3);
  test_node_gather(&c3, "chunk 3");
  hq_comm_set_chunk_for_test(0);
  hq_comm_finalize(&c3);

  size_t rss0 = hq_peak_rss_bytes();
  size_t big = (size_t)48 << 20;
  char *p = malloc(big);
  memset(p, 1, big);
  size_t rss1 = hq_peak_rss_bytes();
  CHECK(rss0 > 0 && rss1 > rss0 && rss1 >= big, "peak rss %zu -> %zu", rss0, rss1);
  free(p);

  hq_comm_barrier(&c);
  int fails = hq_t_fail;
  MPI_Allreduce(MPI_IN_PLACE, &fails, 1, MPI_INT, MPI_SUM, c.comm);
  hq_comm_finalize(&c);
  MPI_Finalized(&fin);
  CHECK(fin, "owner finalizes MPI");
  char name[32];
  snprintf(name, sizeof name, "mpi_comm rank %d", wr);
  int rc = hq_t_done(name);
  return rc || fails ? 1 : 0;
}
