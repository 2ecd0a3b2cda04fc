/* The work partition plan (mpi/partition.h): exhaustive invariant checks over many rank
 * counts and shapes, plus hand-computed plans for a small model. */
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "partition.h"
#include "testutil.h"

static struct hq_model_config cfg(int64_t hidden, int64_t inter, int64_t heads, int64_t kv,
                                  int64_t head_dim) {
  struct hq_model_config c;
  memset(&c, 0, sizeof c);
  c.hidden = hidden;
  c.intermediate = inter;
  c.n_heads = heads;
  c.n_kv_heads = kv;
  c.head_dim = head_dim;
  c.n_layers = 2;
  c.vocab = 32000;
  return c;
}

static int same_plan(const struct hq_plan *a, const struct hq_plan *b) {
  if (a->nranks != b->nranks) return 0;
  for (int l = 0; l < HQ_LIN_COUNT; l++)
    if (memcmp(a->rows[l], b->rows[l], sizeof(struct hq_row_range) * (size_t)a->nranks)) return 0;
  for (int g = 0; g < HQ_GROUP_COUNT; g++)
    if (memcmp(a->cost[g], b->cost[g], sizeof(double) * (size_t)a->nranks)) return 0;
  return 1;
}

/* All invariants of one plan; returns the number of failed checks. */
static int check_plan(const struct hq_model_config *c, int n) {
  int before = hq_t_fail;
  struct hq_plan p;
  CHECK(hq_plan_make(c, n, &p) == HQ_OK, "plan for %d ranks: %s", n, hq_last_error());
  if (before != hq_t_fail) return 1;
  int64_t units_of[HQ_GROUP_COUNT][256];
  memset(units_of, 0, sizeof units_of);
  double cost_total[HQ_GROUP_COUNT] = {0};
  for (int l = 0; l < HQ_LIN_COUNT; l++) {
    int64_t rows, cols;
    hq_linear_shape(c, (enum hq_linear)l, &rows, &cols);
    int g = (int)hq_linear_group((enum hq_linear)l);
    cost_total[g] += 2.0 * (double)rows * (double)cols * (double)cols;
    int *hit = calloc((size_t)rows, sizeof(int));
    int64_t prev_end = 0;
    for (int r = 0; r < n; r++) {
      struct hq_row_range rr = p.rows[l][r];
      CHECK(rr.begin >= 0 && rr.end <= rows && rr.begin <= rr.end, "range [%lld,%lld) of %lld",
            (long long)rr.begin, (long long)rr.end, (long long)rows);
      if (rr.begin == rr.end) continue;
      CHECK(rr.begin % HQ_ROW_ALIGN == 0, "begin %lld not aligned", (long long)rr.begin);
      CHECK(rr.end % HQ_ROW_ALIGN == 0 || rr.end == rows, "end %lld not aligned (rows %lld)",
            (long long)rr.end, (long long)rows);
      /* ranks own consecutive pieces in rank order */
      CHECK(rr.begin == prev_end, "linear %d rank %d begins at %lld, previous ended %lld", l, r,
            (long long)rr.begin, (long long)prev_end);
      prev_end = rr.end;
      for (int64_t i = rr.begin; i < rr.end && i < rows && i >= 0; i++) hit[i]++;
      if (r < 256) units_of[g][r] += (rr.end - rr.begin + HQ_ROW_ALIGN - 1) / HQ_ROW_ALIGN;
    }
    int64_t bad = 0;
    for (int64_t i = 0; i < rows; i++) bad += hit[i] != 1;
    CHECK(bad == 0, "linear %d with %d ranks: %lld rows not covered exactly once", l, n,
          (long long)bad);
    free(hit);
  }
  for (int g = 0; g < HQ_GROUP_COUNT; g++) {
    int64_t mn = INT64_MAX, mx = 0;
    double cs = 0;
    for (int r = 0; r < n && r < 256; r++) {
      mn = units_of[g][r] < mn ? units_of[g][r] : mn;
      mx = units_of[g][r] > mx ? units_of[g][r] : mx;
      cs += p.cost[g][r];
    }
    CHECK(mx - mn <= 1, "group %d with %d ranks: units per rank %lld..%lld", g, n, (long long)mn,
          (long long)mx);
    CHECK(cs == cost_total[g], "group %d cost %g != %g", g, cs, cost_total[g]);
  }
  /* the same plan whatever was computed before (pure function) */
  struct hq_plan q1, q2;
  CHECK(hq_plan_make(c, n + 1, &q1) == HQ_OK, "plan n+1");
  CHECK(hq_plan_make(c, n, &q2) == HQ_OK, "plan again");
  CHECK(same_plan(&p, &q2), "plan for %d ranks differs when computed again", n);
  hq_plan_free(&q1);
  hq_plan_free(&q2);
  hq_plan_free(&p);
  return hq_t_fail - before;
}

static void expect_range(const struct hq_plan *p, enum hq_linear l, int r, int64_t b, int64_t e) {
  CHECK(p->rows[l][r].begin == b && p->rows[l][r].end == e, "%s rank %d: [%lld,%lld) want [%lld,%lld)",
        hq_linear_name(l), r, (long long)p->rows[l][r].begin, (long long)p->rows[l][r].end,
        (long long)b, (long long)e);
}

int main(void) {
  /* Shapes: Llama-2-7B, Llama-3-8B (GQA), Llama-2-70B (GQA), stories260K (172 not /32),
   * the bundled 5M model, and odd sizes. */
  struct hq_model_config cs[] = {
      cfg(4096, 11008, 32, 32, 128), cfg(4096, 14336, 32, 8, 128), cfg(8192, 28672, 64, 8, 128),
      cfg(64, 172, 8, 4, 8),         cfg(288, 768, 6, 6, 48),      cfg(40, 100, 5, 1, 8),
  };
  int nc = (int)(sizeof cs / sizeof cs[0]);
  for (int i = 0; i < nc; i++)
    for (int n = 1; n <= 70; n++)
      if (check_plan(&cs[i], n)) {
        fprintf(stderr, "  (config %d, %d ranks)\n", i, n);
        break;
      }
  check_plan(&cs[0], 250);

  /* Hand-computed: hidden 64, intermediate 172, 8 heads of 8, 4 kv heads -> q 64 rows (2
   * units), k and v 32 rows (1 unit each), o 64 (2), gate/up 172 (6 units each, the last 12
   * rows), down 64 (2). */
  struct hq_plan p;
  CHECK(hq_plan_make(&cs[3], 3, &p) == HQ_OK, "plan");
  expect_range(&p, HQ_LIN_Q, 0, 0, 64);   /* QKV: 4 units -> 2, 1, 1 */
  expect_range(&p, HQ_LIN_K, 0, 0, 0);
  expect_range(&p, HQ_LIN_Q, 1, 0, 0);
  expect_range(&p, HQ_LIN_K, 1, 0, 32);
  expect_range(&p, HQ_LIN_V, 1, 0, 0);
  expect_range(&p, HQ_LIN_V, 2, 0, 32);
  expect_range(&p, HQ_LIN_O, 0, 0, 32);   /* O: 2 units -> 1, 1, 0 */
  expect_range(&p, HQ_LIN_O, 1, 32, 64);
  expect_range(&p, HQ_LIN_O, 2, 0, 0);
  expect_range(&p, HQ_LIN_GATE, 0, 0, 128); /* gate|up: 12 units -> 4, 4, 4 */
  expect_range(&p, HQ_LIN_UP, 0, 0, 0);
  expect_range(&p, HQ_LIN_GATE, 1, 128, 172);
  expect_range(&p, HQ_LIN_UP, 1, 0, 64);
  expect_range(&p, HQ_LIN_GATE, 2, 0, 0);
  expect_range(&p, HQ_LIN_UP, 2, 64, 172);
  CHECK(p.cost[HQ_GROUP_O][2] == 0.0, "idle rank has cost %g", p.cost[HQ_GROUP_O][2]);
  CHECK(p.cost[HQ_GROUP_O][0] == 2.0 * 32 * 64 * 64, "cost %g", p.cost[HQ_GROUP_O][0]);
  hq_plan_free(&p);

  /* More ranks than units: empty ranges, no error. */
  CHECK(hq_plan_make(&cs[3], 64, &p) == HQ_OK, "64 ranks: %s", hq_last_error());
  expect_range(&p, HQ_LIN_DOWN, 0, 0, 32);
  expect_range(&p, HQ_LIN_DOWN, 1, 32, 64);
  for (int r = 2; r < 64; r++) expect_range(&p, HQ_LIN_DOWN, r, 0, 0);
  hq_plan_free(&p);

  /* Bad input. */
  CHECK(hq_plan_make(&cs[0], 0, &p) == HQ_ERR_INPUT, "0 ranks accepted");
  struct hq_model_config bad = cfg(0, 100, 4, 4, 0);
  CHECK(hq_plan_make(&bad, 2, &p) == HQ_ERR_INPUT, "empty linear accepted");

  /* Windows: contiguous, cover everything once, sizes differ by <= 1. */
  for (int64_t nw = 0; nw <= 40; nw++)
    for (int n = 1; n <= 12; n++) {
      int64_t next = 0, mn = INT64_MAX, mx = 0;
      for (int r = 0; r < n; r++) {
        struct hq_row_range w = hq_plan_windows(nw, n, r);
        CHECK(w.begin == next && w.end >= w.begin, "windows %lld/%d rank %d", (long long)nw, n, r);
        next = w.end;
        int64_t s = w.end - w.begin;
        mn = s < mn ? s : mn;
        mx = s > mx ? s : mx;
      }
      CHECK(next == nw && mx - mn <= 1, "windows %lld over %d ranks", (long long)nw, n);
    }
  struct hq_row_range w = hq_plan_windows(128, 3, 2);
  CHECK(w.begin == 86 && w.end == 128, "128 windows, rank 2 of 3: [%lld,%lld)", (long long)w.begin,
        (long long)w.end);
  w = hq_plan_windows(10, 3, 5);
  CHECK(w.begin == 0 && w.end == 0, "rank outside the communicator gets nothing");
  return hq_t_done("test_partition");
}
