/* Token files and windows: the bundled token files against numpy's reading
 * (tests/model_fixtures.h); bad files give their specific error; the sampler is deterministic,
 * returns contiguous windows whose starts cover [0, n - seqlen] uniformly. */
#include <string.h>

#include "model.h"
#include "model_fixtures.h"
#include "st_testlib.h"
#include "testutil.h"

#define NFX(a) ((int)(sizeof(a) / sizeof((a)[0])))

static char g_tmp[512];

static void write_ids(const char *name, const int32_t *ids, size_t n, char *path, size_t pn) {
  tl_path(path, pn, g_tmp, name);
  tl_write(path, ids, n * sizeof *ids);
}

static void expect_load_fail(const char *path, int64_t vocab, int status, const char *n1,
                             const char *n2) {
  struct hq_tokens t;
  hq_error_clear();
  int rc = hq_tokens_load(path, vocab, &t);
  const char *msg = hq_last_error();
  CHECK(rc == status, "%s: status %d (%s), want %d", path, rc, msg, status);
  CHECK(tl_contains(msg, path), "message names the file: %s", msg);
  CHECK(!n1 || tl_contains(msg, n1), "message '%s' lacks '%s'", msg, n1 ? n1 : "");
  CHECK(!n2 || tl_contains(msg, n2), "message '%s' lacks '%s'", msg, n2 ? n2 : "");
  CHECK(t.ids == NULL && t.n == 0, "failed load leaves t empty");
}

static void test_files(void) {
  for (int i = 0; i < NFX(fx_tokens); i++) {
    const struct fx_tokens *f = &fx_tokens[i];
    int64_t vocab = strstr(f->path, "stories") ? 512 : 4096;
    struct hq_tokens t;
    int rc = hq_tokens_load(hq_t_data(f->path), vocab, &t);
    CHECK(rc == HQ_OK, "%s: %s", f->path, hq_last_error());
    if (rc != HQ_OK) continue;
    int64_t sum = 0;
    int32_t mx = 0;
    for (int64_t k = 0; k < t.n; k++) {
      sum += t.ids[k];
      if (t.ids[k] > mx) mx = t.ids[k];
    }
    CHECK(t.n == f->n && memcmp(t.ids, f->first, sizeof f->first) == 0 &&
              t.ids[t.n - 1] == f->last && sum == f->sum && mx == f->max,
          "%s matches numpy", f->path);
    /* a vocabulary one smaller than the largest id: refused at the first such id */
    int64_t first = 0;
    while (t.ids[first] != f->max) first++;
    char off[128];
    snprintf(off, sizeof off, "token %lld (byte offset %lld) has id %d", (long long)first,
             (long long)(4 * first), f->max);
    expect_load_fail(hq_t_data(f->path), f->max, HQ_ERR_INPUT, off, "another tokenizer");
    hq_tokens_free(&t);
    CHECK(t.ids == NULL && t.n == 0, "freed");
  }

  char p[1024];
  const int32_t ids[6] = {1, 2, 3, 700, 5, 900};
  write_ids("big.i32", ids, 6, p, sizeof p);
  expect_load_fail(p, 512, HQ_ERR_INPUT, "token 3 (byte offset 12) has id 700", "[0, 512)");
  const int32_t neg[3] = {1, -5, 3};
  write_ids("neg.i32", neg, 3, p, sizeof p);
  expect_load_fail(p, 512, HQ_ERR_INPUT, "byte offset 4", "-5");
  expect_load_fail(p, 0, HQ_ERR_INPUT, "negative id -5", NULL);
  tl_path(p, sizeof p, g_tmp, "odd.i32");
  tl_write(p, "abcdefg", 7);
  expect_load_fail(p, 512, HQ_ERR_INPUT, "7 bytes", "multiple of 4");
  tl_path(p, sizeof p, g_tmp, "empty.i32");
  tl_write(p, "", 0);
  expect_load_fail(p, 512, HQ_ERR_INPUT, "empty", NULL);
  tl_path(p, sizeof p, g_tmp, "nope.i32");
  expect_load_fail(p, 512, HQ_ERR_IO, "cannot open", NULL);
  /* vocab <= 0: no upper bound check */
  write_ids("big2.i32", ids, 6, p, sizeof p);
  struct hq_tokens t;
  CHECK(hq_tokens_load(p, 0, &t) == HQ_OK && t.n == 6 && t.ids[5] == 900, "unchecked vocab");
  hq_tokens_free(&t);
}

static void test_sampler(void) {
  /* ids[i] = i, so a window's first id is its start */
  struct hq_tokens t;
  t.n = 1000;
  t.ids = malloc((size_t)t.n * sizeof *t.ids);
  for (int64_t i = 0; i < t.n; i++) t.ids[i] = (int32_t)i;
  const int64_t ns = 400, L = 64;
  int32_t *a = malloc((size_t)(ns * L) * sizeof *a), *b = malloc((size_t)(ns * L) * sizeof *b);
  CHECK(hq_tokens_sample(&t, ns, L, 42, a) == HQ_OK, "sample");
  CHECK(hq_tokens_sample(&t, ns, L, 42, b) == HQ_OK, "sample again");
  CHECK(memcmp(a, b, (size_t)(ns * L) * sizeof *a) == 0, "same seed, same windows");
  int contiguous = 1, inrange = 1;
  int32_t lo = INT32_MAX, hi = -1;
  for (int64_t s = 0; s < ns; s++) {
    int32_t st = a[s * L];
    if (st < 0 || st > t.n - L) inrange = 0;
    if (st < lo) lo = st;
    if (st > hi) hi = st;
    for (int64_t j = 0; j < L; j++)
      if (a[s * L + j] != st + j) contiguous = 0;
  }
  CHECK(contiguous && inrange, "windows are contiguous slices starting in [0, n - seqlen]");
  CHECK(lo < 20 && hi > 916, "starts cover the range (min %d, max %d of 0..936)", lo, hi);
  CHECK(hq_tokens_sample(&t, ns, L, 43, b) == HQ_OK &&
            memcmp(a, b, (size_t)(ns * L) * sizeof *a) != 0,
        "another seed, other windows");
  /* the prefix of a longer draw is the shorter draw */
  CHECK(hq_tokens_sample(&t, 10, L, 42, b) == HQ_OK &&
            memcmp(a, b, (size_t)(10 * L) * sizeof *a) == 0,
        "nsamples does not change the first windows");

  /* n = seqlen + 2: the three possible starts, uniformly (chi-square, 2 dof, 3000 draws) */
  struct hq_tokens s3 = {t.ids, L + 2};
  int32_t *c = malloc((size_t)(3000 * L) * sizeof *c);
  CHECK(hq_tokens_sample(&s3, 3000, L, 7, c) == HQ_OK, "small");
  int cnt[3] = {0, 0, 0}, other = 0;
  for (int s = 0; s < 3000; s++) {
    int32_t st = c[(int64_t)s * L];
    if (st >= 0 && st <= 2) cnt[st]++;
    else other++;
  }
  double chi = 0;
  for (int k = 0; k < 3; k++) chi += (cnt[k] - 1000.0) * (cnt[k] - 1000.0) / 1000.0;
  CHECK(other == 0 && chi < 13.8, "starts 0,1,2 uniform: %d %d %d (chi2 %.2f, p=0.001 at 13.8)",
        cnt[0], cnt[1], cnt[2], chi);
  /* n == seqlen: the single window */
  struct hq_tokens s1 = {t.ids, L};
  CHECK(hq_tokens_sample(&s1, 3, L, 9, c) == HQ_OK && c[0] == 0 && c[L] == 0 && c[2 * L] == 0 &&
            c[3 * L - 1] == L - 1,
        "n == seqlen");
  /* n < seqlen: refused, saying how many are needed */
  struct hq_tokens s0 = {t.ids, L - 1};
  hq_error_clear();
  CHECK(hq_tokens_sample(&s0, 1, L, 9, c) == HQ_ERR_INPUT &&
            tl_contains(hq_last_error(), "has 63 tokens") &&
            tl_contains(hq_last_error(), "at least 64"),
        "too few tokens: %s", hq_last_error());
  CHECK(hq_tokens_sample(&t, 1, 0, 9, c) == HQ_ERR_INPUT, "seqlen 0");
  CHECK(hq_tokens_sample(&t, 0, L, 9, c) == HQ_OK, "zero samples");

  CHECK(hq_tokens_nwindows(&t, 64) == 15, "1000/64");
  CHECK(hq_tokens_nwindows(&t, 1000) == 1, "1000/1000");
  CHECK(hq_tokens_nwindows(&t, 1001) == 0, "1000/1001");
  CHECK(hq_tokens_nwindows(&t, 0) == 0, "seqlen 0");
  free(a);
  free(b);
  free(c);
  free(t.ids);

  /* on a real calibration file: deterministic, every id within the vocabulary */
  struct hq_tokens r;
  if (hq_tokens_load(hq_t_data("stories260K-hf/sotu-calib.tok512.i32"), 512, &r) == HQ_OK) {
    int32_t *x = malloc(128 * 256 * sizeof *x), *y = malloc(128 * 256 * sizeof *y);
    CHECK(hq_tokens_sample(&r, 128, 256, 1234, x) == HQ_OK &&
              hq_tokens_sample(&r, 128, 256, 1234, y) == HQ_OK &&
              memcmp(x, y, 128 * 256 * sizeof *x) == 0,
          "real file deterministic");
    int ok = 1;
    for (int i = 0; i < 128 * 256; i++)
      if (x[i] < 0 || x[i] >= 512) ok = 0;
    CHECK(ok, "ids in vocab");
    CHECK(hq_tokens_nwindows(&r, 2048) == 169490 / 2048, "nwindows real");
    free(x);
    free(y);
    hq_tokens_free(&r);
  } else {
    CHECK(0, "load calib: %s", hq_last_error());
  }
}

int main(void) {
  tl_tmpdir(g_tmp, sizeof g_tmp, "tok");
  test_files();
  test_sampler();
  tl_rmtree(g_tmp);
  return hq_t_done("test_tokens");
}
