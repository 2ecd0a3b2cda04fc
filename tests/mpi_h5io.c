/* The collective HDF5 writer and the serial reader (src/io/h5io.h) at 1, 2 and 3 ranks.
 *
 * Every rank generates the same full packed arrays from a shared seed; each rank writes only
 * the rows a partition-like split gives it (ranges aligned to 32, some ranks empty), then rank
 * 0 reads the file back serially and compares against the full arrays exactly. Also: tensors
 * of each dtype (with fixed bit patterns), attributes, statistics, progress and resume (also
 * from a byte copy of the file taken mid-run, i.e. what SIGKILL leaves), and every error path
 * failing on all ranks with a message instead of hanging.
 * Set HQ_H5IO_KEEP=<path> to keep a copy of the finished file (tools/h5_read_check.py). */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "comm.h"
#include "error.h"
#include "h5io.h"
#include "testutil.h"
#include "util.h"

struct fake_linear {
  const char *name;
  struct hq_h5_linear_desc d;
  int32_t *qweight; /* [cols*bits/32, rows] */
  int32_t *qzeros;  /* [ngroups, rows*bits/32] */
  uint16_t *scales; /* [ngroups, rows] */
  int32_t *g_idx;   /* [cols] */
};

static void fake_make(struct fake_linear *f, const char *name, int64_t rows, int64_t cols,
                      int bits, int64_t gs, uint64_t seed) {
  memset(f, 0, sizeof *f);
  f->name = name;
  f->d.rows = rows;
  f->d.cols = cols;
  f->d.bits = bits;
  f->d.group_size = gs;
  f->d.ngroups = gs > 0 ? (cols + gs - 1) / gs : 1;
  f->d.format = HQ_PACK_GPTQ_V2;
  struct hq_rng r;
  hq_rng_seed(&r, seed);
  int64_t nqw = cols * bits / 32 * rows, nqz = f->d.ngroups * (rows * bits / 32),
          ns = f->d.ngroups * rows;
  f->qweight = malloc(sizeof(int32_t) * (size_t)nqw);
  f->qzeros = malloc(sizeof(int32_t) * (size_t)nqz);
  f->scales = malloc(sizeof(uint16_t) * (size_t)ns);
  f->g_idx = malloc(sizeof(int32_t) * (size_t)cols);
  for (int64_t i = 0; i < nqw; i++) f->qweight[i] = (int32_t)(uint32_t)hq_rng_u64(&r);
  for (int64_t i = 0; i < nqz; i++) f->qzeros[i] = (int32_t)(uint32_t)hq_rng_u64(&r);
  for (int64_t i = 0; i < ns; i++) f->scales[i] = (uint16_t)(0x0400 + hq_rng_below(&r, 0x7800)); /* finite */
  for (int64_t i = 0; i < cols; i++) f->g_idx[i] = (int32_t)hq_rng_below(&r, (uint64_t)f->d.ngroups);
}

static void fake_free(struct fake_linear *f) {
  free(f->qweight);
  free(f->qzeros);
  free(f->scales);
  free(f->g_idx);
}

/* Rows [r0, r1) of this rank: 32-row units split like mpi/partition (first ranks get more). */
static void my_rows(int64_t rows, int rank, int size, int64_t *r0, int64_t *r1) {
  int64_t u = (rows + 31) / 32, base = u / size, rem = u % size;
  int64_t a = rank * base + (rank < rem ? rank : rem), b = a + base + (rank < rem ? 1 : 0);
  *r0 = a * 32 < rows ? a * 32 : rows;
  *r1 = b * 32 < rows ? b * 32 : rows;
}

/* The slab of rows [r0, r1), cut from the full arrays (column blocks). */
static int fake_slab(const struct fake_linear *f, int64_t r0, int64_t r1, struct hq_packed *p) {
  const struct hq_h5_linear_desc *d = &f->d;
  int rc = hq_pack_init(p, d->bits, d->format, d->cols, d->rows, d->ngroups, r0, r1 - r0);
  if (rc) return rc;
  int64_t n = r1 - r0, qr = d->cols * d->bits / 32, zc = d->rows * d->bits / 32, nz = n * d->bits / 32;
  for (int64_t i = 0; i < qr; i++)
    for (int64_t j = 0; j < n; j++) p->qweight[i * n + j] = f->qweight[i * d->rows + r0 + j];
  for (int64_t g = 0; g < d->ngroups; g++) {
    for (int64_t j = 0; j < nz; j++) p->qzeros[g * nz + j] = f->qzeros[g * zc + r0 * d->bits / 32 + j];
    for (int64_t j = 0; j < n; j++) p->scales[g * n + j] = f->scales[g * d->rows + r0 + j];
  }
  memcpy(p->g_idx, f->g_idx, sizeof(int32_t) * (size_t)d->cols);
  return HQ_OK;
}

/* Collective: create and write one linear with this rank's rows. Returns the write status. */
static int write_linear(const struct hq_comm *c, struct hq_h5 *h, const struct fake_linear *f,
                        int *collective) {
  int rc = hq_h5_linear_create(h, f->name, &f->d);
  CHECK(rc == HQ_OK, "create %s: %s", f->name, hq_last_error());
  if (rc) return rc;
  int64_t r0, r1;
  my_rows(f->d.rows, c->rank, c->size, &r0, &r1);
  struct hq_packed p;
  int have = r1 > r0;
  if (have) CHECK(fake_slab(f, r0, r1, &p) == HQ_OK, "slab: %s", hq_last_error());
  rc = hq_h5_linear_write(h, f->name, have ? &p : NULL);
  CHECK(rc == HQ_OK, "write %s: %s", f->name, hq_last_error());
  if (collective) *collective = hq_h5_last_write_collective(h);
  if (have) hq_pack_free(&p);
  return rc;
}

static void compare_linear(struct hq_h5 *h, const struct fake_linear *f) {
  struct hq_h5_linear_desc d;
  CHECK(hq_h5_linear_info(h, f->name, &d) == HQ_OK, "info %s: %s", f->name, hq_last_error());
  CHECK(d.rows == f->d.rows && d.cols == f->d.cols && d.bits == f->d.bits &&
            d.ngroups == f->d.ngroups && d.format == HQ_PACK_GPTQ_V2 &&
            d.group_size == (f->d.group_size > 0 ? f->d.group_size : -1),
        "desc of %s", f->name);
  struct hq_packed p;
  int rc = hq_h5_linear_read(h, f->name, &p);
  CHECK(rc == HQ_OK, "read %s: %s", f->name, hq_last_error());
  if (rc) return;
  int64_t nqw = d.cols * d.bits / 32 * d.rows, nqz = d.ngroups * d.rows * d.bits / 32, ns = d.ngroups * d.rows;
  CHECK(p.row0 == 0 && p.nrows == d.rows, "whole-layer slab");
  CHECK(memcmp(p.qweight, f->qweight, sizeof(int32_t) * (size_t)nqw) == 0, "%s qweight differs", f->name);
  CHECK(memcmp(p.qzeros, f->qzeros, sizeof(int32_t) * (size_t)nqz) == 0, "%s qzeros differs", f->name);
  CHECK(memcmp(p.scales, f->scales, sizeof(uint16_t) * (size_t)ns) == 0, "%s scales differ", f->name);
  CHECK(memcmp(p.g_idx, f->g_idx, sizeof(int32_t) * (size_t)d.cols) == 0, "%s g_idx differs", f->name);
  hq_pack_free(&p);
}

/* The same status on every rank, and a message naming a rank that contains `needle`. */
static void expect_agreed_fail(const struct hq_comm *c, int rc, int want, const char *needle,
                               const char *what) {
  CHECK(rc == want, "%s: status %d (%s), want %d", what, rc, hq_last_error(), want);
  CHECK(strstr(hq_last_error(), needle) != NULL && strncmp(hq_last_error(), "rank ", 5) == 0,
        "%s: message '%s' lacks '%s'", what, hq_last_error(), needle);
  int mn = rc, mx = rc;
  MPI_Allreduce(MPI_IN_PLACE, &mn, 1, MPI_INT, MPI_MIN, c->comm);
  MPI_Allreduce(MPI_IN_PLACE, &mx, 1, MPI_INT, MPI_MAX, c->comm);
  CHECK(mn == mx, "%s: ranks disagree (%d vs %d)", what, mn, mx);
  hq_error_clear();
}

/* Real packed data (src/io/pack.h) from every rank's rows, for each width: the file read back and
 * dequantized equals W computed directly from the unpacked inputs, scale * (code - zero). */
static void test_pack_roundtrip(const struct hq_comm *c, const char *dir) {
  char path[600];
  snprintf(path, sizeof path, "%s/pack.h5", dir);
  struct hq_h5 *h;
  int rc = hq_h5_create(c, path, 0, &h);
  CHECK(rc == HQ_OK, "create: %s", hq_last_error());
  if (rc) return;
  const int widths[4] = {2, 3, 4, 8};
  const int64_t out = 160, in = 64, gs = 16, ng = in / gs;
  uint8_t *codes = malloc((size_t)(out * in));
  float *zeros = malloc(sizeof(float) * (size_t)(out * ng)), *scales = malloc(sizeof(float) * (size_t)(out * ng));
  int32_t *gi = malloc(sizeof(int32_t) * (size_t)in);
  for (int w = 0; w < 4; w++) {
    int bits = widths[w];
    struct hq_rng r;
    hq_rng_seed(&r, 100 + (uint64_t)bits);
    for (int64_t i = 0; i < out * in; i++) codes[i] = (uint8_t)hq_rng_below(&r, 1u << bits);
    for (int64_t i = 0; i < out * ng; i++) {
      zeros[i] = (float)hq_rng_below(&r, 1u << bits);
      scales[i] = (float)(1 + hq_rng_below(&r, 1000)) / 1024.0f; /* exact in fp16 */
    }
    for (int64_t i = 0; i < in; i++) gi[i] = (int32_t)hq_rng_below(&r, (uint64_t)ng);
    char name[32];
    snprintf(name, sizeof name, "pack.b%d", bits);
    struct hq_h5_linear_desc d = {out, in, bits, gs, ng, HQ_PACK_GPTQ_V2};
    CHECK(hq_h5_linear_create(h, name, &d) == HQ_OK, "create %s: %s", name, hq_last_error());
    int64_t r0, r1;
    my_rows(out, c->rank, c->size, &r0, &r1);
    struct hq_packed p;
    int have = r1 > r0;
    if (have) {
      CHECK(hq_pack_init(&p, bits, HQ_PACK_GPTQ_V2, in, out, ng, r0, r1 - r0) == HQ_OK, "pack init");
      CHECK(hq_pack_encode(&p, codes + r0 * in, zeros + r0 * ng, scales + r0 * ng, gi) == HQ_OK,
            "encode: %s", hq_last_error());
    }
    CHECK(hq_h5_linear_write(h, name, have ? &p : NULL) == HQ_OK, "write %s: %s", name, hq_last_error());
    if (have) hq_pack_free(&p);
  }
  CHECK(hq_h5_progress_init(h, 1) == HQ_OK && hq_h5_block_done(h, 0) == HQ_OK && hq_h5_complete(h) == HQ_OK,
        "finish: %s", hq_last_error());
  CHECK(hq_h5_close(h) == HQ_OK, "close");
  if (c->rank == 0) {
    struct hq_h5 *rd = NULL;
    CHECK(hq_h5_open_read(path, 0, &rd) == HQ_OK, "open: %s", hq_last_error());
    for (int w = 0; w < 4 && rd; w++) {
      int bits = widths[w];
      struct hq_rng r;
      hq_rng_seed(&r, 100 + (uint64_t)bits);
      for (int64_t i = 0; i < out * in; i++) codes[i] = (uint8_t)hq_rng_below(&r, 1u << bits);
      for (int64_t i = 0; i < out * ng; i++) {
        zeros[i] = (float)hq_rng_below(&r, 1u << bits);
        scales[i] = (float)(1 + hq_rng_below(&r, 1000)) / 1024.0f;
      }
      for (int64_t i = 0; i < in; i++) gi[i] = (int32_t)hq_rng_below(&r, (uint64_t)ng);
      char name[32];
      snprintf(name, sizeof name, "pack.b%d", bits);
      struct hq_packed q;
      int rc2 = hq_h5_linear_read(rd, name, &q);
      CHECK(rc2 == HQ_OK, "read %s: %s", name, hq_last_error());
      if (rc2) continue;
      float *W = malloc(sizeof(float) * (size_t)(out * in));
      CHECK(hq_pack_dequantize(&q, W) == HQ_OK, "dequantize: %s", hq_last_error());
      int64_t bad = 0;
      for (int64_t o = 0; o < out; o++)
        for (int64_t i = 0; i < in; i++) {
          int64_t g = gi[i];
          float ref = scales[o * ng + g] * ((float)codes[o * in + i] - zeros[o * ng + g]);
          bad += W[o * in + i] != ref;
        }
      CHECK(bad == 0, "%d bits: %lld dequantized weights differ", bits, (long long)bad);
      free(W);
      hq_pack_free(&q);
    }
    hq_h5_close(rd);
    unlink(path);
  }
  free(codes);
  free(zeros);
  free(scales);
  free(gi);
}

static void copy_file(const char *from, const char *to) {
  FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
  char buf[65536];
  size_t n;
  while (a && b && (n = fread(buf, 1, sizeof buf, a)) > 0) fwrite(buf, 1, n, b);
  if (a) fclose(a);
  if (b) fclose(b);
}

static const uint16_t f16_bits[12] = {0x3C00, 0xC000, 0x0001, 0x7BFF, 0x8000, 0x3555,
                                      0x0400, 0x03FF, 0x7C00, 0xFC00, 0x4248, 0x1234};
static const float f16_vals[12] = {1.0f, -2.0f, 5.9604644775390625e-08f, 65504.0f, -0.0f,
                                   0.333251953125f, 6.103515625e-05f, 6.097555160522461e-05f,
                                   1.0f / 0.0f, -1.0f / 0.0f, 3.140625f, 1588.0f / 2097152.0f};

int main(int argc, char **argv) {
  struct hq_comm c;
  if (hq_comm_init(&c, &argc, &argv) != HQ_OK) return 1;
  /* a fresh directory shared by the ranks */
  char dir[512] = "";
  if (c.rank == 0) {
    const char *t = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/hq_h5io_XXXXXX", t && t[0] ? t : "/tmp");
    if (!mkdtemp(dir)) dir[0] = 0;
  }
  MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, c.comm);
  if (!dir[0]) {
    fprintf(stderr, "cannot make a temporary directory\n");
    MPI_Abort(c.comm, 1);
  }
  char path[600], crash[600], notes[600];
  snprintf(path, sizeof path, "%s/out.h5", dir);
  snprintf(crash, sizeof crash, "%s/killed.h5", dir);
  snprintf(notes, sizeof notes, "%s/notes.txt", dir);

  struct fake_linear L[4];
  fake_make(&L[0], "model.layers.0.self_attn.q_proj", 96, 64, 4, 32, 11);   /* 3 units */
  fake_make(&L[1], "model.layers.0.mlp.down_proj", 160, 96, 3, -1, 12);     /* 3-bit, per channel */
  fake_make(&L[2], "model.layers.1.self_attn.k_proj", 32, 64, 8, 16, 13);   /* 1 unit: ranks idle */
  fake_make(&L[3], "model.layers.1.mlp.up_proj", 64, 128, 2, 100, 14);      /* 2 bits, partial group */

  /* tensors: bit patterns known independently of the code under test */
  float t32[5 * 7];
  hq_t_randn(t32, 35, 99, 1.0f);
  t32[3] = -0.0f;
  t32[4] = 3.4028234663852886e38f;
  uint16_t tbf[2 * 3 * 4];
  struct hq_rng r;
  hq_rng_seed(&r, 5);
  for (int i = 0; i < 24; i++) tbf[i] = (uint16_t)hq_rng_u64(&r) & 0x7F7F; /* finite */
  tbf[0] = 0x3F80; /* 1.0 */
  tbf[1] = 0xC2F7; /* -123.5 */
  int64_t s32[2] = {5, 7}, s16[2] = {3, 4}, sbf[3] = {2, 3, 4};
  const char *settings = "{\"method\":\"gptq\",\"bits\":4,\"group_size\":128,\"damp\":0.01}";

  /* ---- error paths, each must fail on every rank with one status ---- */
  struct hq_h5 *h = NULL;
  int rc;
  rc = hq_h5_create(&c, "/proc/hq_h5io_test.h5", 0, &h);
  expect_agreed_fail(&c, rc, HQ_ERR_IO, "/proc/hq_h5io_test.h5", "create under /proc");
  CHECK(h == NULL, "no handle on failure");
  rc = hq_h5_create(&c, "/nonexistent-dir-hq/x/out.h5", 1, &h);
  expect_agreed_fail(&c, rc, HQ_ERR_IO, "directory does not exist", "create in a missing directory");
  rc = hq_h5_create(&c, dir, 1, &h);
  expect_agreed_fail(&c, rc, HQ_ERR_IO, "is a directory", "create over a directory");

  /* ---- first run: blocks 0 (L0, L1) done, block 1 half written, then "killed" ---- */
  hq_h5_set_piece_bytes_for_test(40); /* tensors go in several row pieces */
  rc = hq_h5_create(&c, path, 0, &h);
  CHECK(rc == HQ_OK, "create: %s", hq_last_error());
  if (rc) MPI_Abort(c.comm, 1);
  CHECK(hq_h5_attr_set_str(h, "/", "settings_json", settings) == HQ_OK, "settings");
  CHECK(hq_h5_attr_set_str(h, "/", "method", c.rank == 0 ? "gptq" : "ignored: rank 0 wins") == HQ_OK, "method");
  CHECK(hq_h5_attr_set_i64(h, "/", "bits", 4) == HQ_OK, "bits");
  CHECK(hq_h5_attr_set_f64(h, "/", "percdamp", 0.01) == HQ_OK, "percdamp");
  CHECK(hq_h5_attr_set_str(h, "/", "model_config_json", "{\"hidden_size\": 64, \"name\": \"caf\xc3\xa9\"}") == HQ_OK, "config");
  CHECK(hq_h5_write_tensor(h, "model.norm.weight", HQ_DTYPE_F32, 2, s32, c.rank == 0 ? t32 : NULL) == HQ_OK,
        "f32 tensor: %s", hq_last_error());
  CHECK(hq_h5_write_tensor(h, "model.embed_tokens.weight", HQ_DTYPE_F16, 2, s16, c.rank == 0 ? f16_bits : NULL) == HQ_OK,
        "f16 tensor: %s", hq_last_error());
  CHECK(hq_h5_write_tensor(h, "lm_head.weight", HQ_DTYPE_BF16, 3, sbf, c.rank == 0 ? tbf : NULL) == HQ_OK,
        "bf16 tensor: %s", hq_last_error());
  hq_h5_set_piece_bytes_for_test(0);
  CHECK(hq_h5_progress_init(h, 2) == HQ_OK, "progress: %s", hq_last_error());
  rc = hq_h5_complete(h);
  expect_agreed_fail(&c, rc, HQ_ERR_INPUT, "0 of 2 blocks", "complete too early");

  int coll = 0;
  write_linear(&c, h, &L[0], &coll);
  CHECK(coll == 1, "rank %d: hyperslab write was not collective MPI-IO", c.rank);
  write_linear(&c, h, &L[1], NULL);
  int64_t owners[3] = {0, 0, 0};
  for (int q = 0; q < c.size && q < 3; q++) {
    int64_t a, b;
    my_rows(L[0].d.rows, q, c.size, &a, &b);
    owners[q] = b - a;
  }
  const char *phases[2] = {"hessian", "gptq"};
  double secs[2] = {0.25, 1.5};
  struct hq_h5_linear_stats st = {.loss_proxy_gptq = 1.25, .loss_proxy_rtn = 2.5, .loss_ref = 0.625,
                                  .damp_used = 0.0123, .dead_cols = 3, .nphases = 2,
                                  .phase_names = phases, .phase_seconds = secs,
                                  .owner_rows = owners, .nranks = c.size < 3 ? c.size : 3};
  CHECK(hq_h5_linear_stats(h, L[0].name, &st) == HQ_OK, "stats: %s", hq_last_error());

  /* a bad slab on the last rank only: everybody fails, nobody hangs */
  {
    int64_t r0, r1;
    my_rows(L[0].d.rows, c.rank, c.size, &r0, &r1);
    struct hq_packed p;
    int have = r1 > r0 || c.rank == c.size - 1;
    if (have) fake_slab(&L[0], r1 > r0 ? r0 : 0, r1 > r0 ? r1 : 32, &p);
    if (c.rank == c.size - 1) p.bits = 8;
    rc = hq_h5_linear_write(h, L[0].name, have ? &p : NULL);
    if (have) { p.bits = L[0].d.bits; hq_pack_free(&p); }
    char needle[64];
    snprintf(needle, sizeof needle, "rank %d: linear %s", c.size - 1, L[0].name);
    expect_agreed_fail(&c, rc, HQ_ERR_INPUT, needle, "mismatched slab");
    /* a linear whose shape does not pack (in = 100 with 4 bits) */
    struct hq_h5_linear_desc bad = {.rows = 32, .cols = 100, .bits = 4, .group_size = -1, .ngroups = 1,
                                    .format = HQ_PACK_GPTQ_V2};
    rc = hq_h5_linear_create(h, "model.layers.9.bad", &bad);
    expect_agreed_fail(&c, rc, HQ_ERR_UNSUPPORTED, "not a multiple", "unpackable linear");
  }
  CHECK(hq_h5_block_done(h, 0) == HQ_OK, "block 0 done: %s", hq_last_error());
  rc = hq_h5_block_done(h, 2);
  expect_agreed_fail(&c, rc, HQ_ERR_INPUT, "out of range", "block index");
  write_linear(&c, h, &L[2], &coll);
  /* copy the bytes on disk now: what a SIGKILL here would leave behind */
  hq_comm_barrier(&c);
  if (c.rank == 0) copy_file(path, crash);
  hq_comm_barrier(&c);
  CHECK(hq_h5_close(h) == HQ_OK, "close: %s", hq_last_error());

  /* ---- the incomplete file is never taken for a result ---- */
  if (c.rank == 0) {
    struct hq_h5 *rd = NULL;
    rc = hq_h5_open_read(path, 0, &rd);
    CHECK(rc == HQ_ERR_INPUT && strstr(hq_last_error(), "incomplete: 1 of 2 blocks"), "incomplete: %d '%s'",
          rc, hq_last_error());
    CHECK(rd == NULL, "no handle");
    rc = hq_h5_open_read(path, 1, &rd);
    CHECK(rc == HQ_OK, "open incomplete on purpose: %s", hq_last_error());
    struct hq_h5_state s;
    CHECK(rd && hq_h5_status(rd, &s) == HQ_OK && s.n_blocks == 2 && s.blocks_done == 1 && !s.complete,
          "status of the incomplete file");
    if (rd) hq_h5_state_free(&s);
    hq_h5_close(rd);
    FILE *fp = fopen(notes, "w");
    if (fp) { fputs("not hdf5\n", fp); fclose(fp); }
    rc = hq_h5_open_read(notes, 0, &rd);
    CHECK(rc == HQ_ERR_INPUT && strstr(hq_last_error(), "not an HDF5 file"), "text file: '%s'", hq_last_error());
    rc = hq_h5_open_read("/nonexistent-dir-hq/none.h5", 0, &rd);
    CHECK(rc == HQ_ERR_IO && strstr(hq_last_error(), "No such file"), "missing: '%s'", hq_last_error());
  }
  hq_comm_barrier(&c);

  /* an existing file without overwrite */
  rc = hq_h5_create(&c, path, 0, &h);
  expect_agreed_fail(&c, rc, HQ_ERR_INPUT, "already exists; pass --overwrite", "existing file");
  rc = hq_h5_open_rw(&c, notes, &h, NULL);
  expect_agreed_fail(&c, rc, HQ_ERR_INPUT, "not an HDF5 file", "resume from a text file");

  /* ---- the copy taken mid-run is resumable: block 0 done, the right settings ---- */
  struct hq_h5_state s;
  rc = hq_h5_open_rw(&c, crash, &h, &s);
  CHECK(rc == HQ_OK, "resume the killed copy: %s", hq_last_error());
  if (rc == HQ_OK) {
    CHECK(s.n_blocks == 2 && s.blocks_done == 1 && s.flags_set == 1 && !s.complete, "killed copy state %lld/%lld",
          (long long)s.blocks_done, (long long)s.n_blocks);
    CHECK(s.settings_json && strcmp(s.settings_json, settings) == 0, "settings after kill");
    hq_h5_state_free(&s);
    hq_h5_close(h);
  }

  /* ---- resume the run: finish block 1 and complete ---- */
  rc = hq_h5_open_rw(&c, path, &h, &s);
  CHECK(rc == HQ_OK, "open_rw: %s", hq_last_error());
  if (rc) MPI_Abort(c.comm, 1);
  CHECK(s.n_blocks == 2 && s.blocks_done == 1 && !s.complete, "resume state");
  CHECK(s.settings_json && strcmp(s.settings_json, settings) == 0, "settings_json on rank %d", c.rank);
  hq_h5_state_free(&s);
  rc = hq_h5_progress_init(h, 3);
  expect_agreed_fail(&c, rc, HQ_ERR_INPUT, "records 2 blocks, this run has 3", "resume with other n_blocks");
  CHECK(hq_h5_progress_init(h, 2) == HQ_OK, "progress again keeps flags");
  struct hq_h5_linear_desc other = L[2].d;
  other.bits = 4;
  rc = hq_h5_linear_create(h, L[2].name, &other);
  expect_agreed_fail(&c, rc, HQ_ERR_INPUT, "different shape or settings", "resume with other bits");
  write_linear(&c, h, &L[2], NULL); /* the interrupted block is written again */
  write_linear(&c, h, &L[3], NULL);
  CHECK(hq_h5_block_done(h, 1) == HQ_OK, "block 1 done");
  CHECK(hq_h5_complete(h) == HQ_OK, "complete: %s", hq_last_error());
  CHECK(hq_h5_close(h) == HQ_OK, "close");

  /* ---- read everything back on rank 0 ---- */
  if (c.rank == 0) {
    struct hq_h5 *rd = NULL;
    rc = hq_h5_open_read(path, 0, &rd);
    CHECK(rc == HQ_OK, "open_read: %s", hq_last_error());
    if (rc) MPI_Abort(c.comm, 1);
    char **names;
    int64_t n;
    CHECK(hq_h5_list_linears(rd, &names, &n) == HQ_OK && n == 4, "list %lld", (long long)n);
    for (int i = 0; i < 4 && i < n; i++)
      CHECK(strcmp(names[i], L[i].name) == 0, "linear %d is %s (creation order)", i, names[i]);
    hq_h5_names_free(names, n);
    for (int i = 0; i < 4; i++) compare_linear(rd, &L[i]);
    CHECK(hq_h5_list_tensors(rd, &names, &n) == HQ_OK && n == 3, "tensors %lld", (long long)n);
    hq_h5_names_free(names, n);

    enum hq_dtype dt;
    int nd;
    int64_t shp[HQ_ST_MAXDIM];
    float *f;
    int64_t numel;
    CHECK(hq_h5_tensor_info(rd, "model.norm.weight", &dt, &nd, shp) == HQ_OK && dt == HQ_DTYPE_F32 &&
              nd == 2 && shp[0] == 5 && shp[1] == 7, "f32 info");
    CHECK(hq_h5_read_tensor_f32(rd, "model.norm.weight", &f, &numel) == HQ_OK && numel == 35 &&
              memcmp(f, t32, sizeof t32) == 0, "f32 values");
    free(f);
    CHECK(hq_h5_tensor_info(rd, "model.embed_tokens.weight", &dt, &nd, shp) == HQ_OK && dt == HQ_DTYPE_F16 &&
              nd == 2 && shp[0] == 3 && shp[1] == 4, "f16 info");
    CHECK(hq_h5_read_tensor_f32(rd, "model.embed_tokens.weight", &f, &numel) == HQ_OK && numel == 12, "f16 read");
    for (int i = 0; i < 12; i++)
      CHECK(memcmp(&f[i], &f16_vals[i], 4) == 0, "f16 %04x read as %.9g, want %.9g", f16_bits[i], f[i], f16_vals[i]);
    free(f);
    CHECK(hq_h5_tensor_info(rd, "lm_head.weight", &dt, &nd, shp) == HQ_OK && dt == HQ_DTYPE_BF16 && nd == 3 &&
              shp[0] == 2 && shp[1] == 3 && shp[2] == 4, "bf16 info");
    CHECK(hq_h5_read_tensor_f32(rd, "lm_head.weight", &f, &numel) == HQ_OK && numel == 24, "bf16 read");
    CHECK(f[0] == 1.0f && f[1] == -123.5f, "bf16 values %g %g", f[0], f[1]);
    int bad = 0;
    for (int i = 0; i < 24; i++) {
      uint32_t u;
      memcpy(&u, &f[i], 4);
      bad += u != (uint32_t)tbf[i] << 16;
    }
    CHECK(bad == 0, "bf16: %d values differ", bad);
    free(f);
    CHECK(hq_h5_read_tensor_f32(rd, "model.nope", &f, &numel) == HQ_ERR_INPUT, "missing tensor");

    char *sv = NULL;
    CHECK(hq_h5_attr_get_str(rd, "/", "method", &sv) == HQ_OK && sv && !strcmp(sv, "gptq"), "method");
    free(sv);
    CHECK(hq_h5_attr_get_str(rd, "/", "hpcq_version", &sv) == HQ_OK && sv && !strcmp(sv, HQ_VERSION), "version");
    free(sv);
    CHECK(hq_h5_attr_get_str(rd, "/", "created", &sv) == HQ_OK && sv && strlen(sv) == 20 && sv[10] == 'T', "created");
    free(sv);
    CHECK(hq_h5_attr_get_str(rd, "/", "model_config_json", &sv) == HQ_OK && sv && strstr(sv, "caf\xc3\xa9"), "utf-8");
    free(sv);
    CHECK(hq_h5_attr_get_str(rd, "/linears/model.layers.0.mlp.down_proj", "zero_convention", &sv) == HQ_OK &&
              sv && !strcmp(sv, "gptq_v2"), "zero convention");
    free(sv);
    int64_t iv = 0;
    CHECK(hq_h5_attr_get_i64(rd, "/", "hpcq_format_version", &iv) == HQ_OK && iv == HQ_H5_FORMAT_VERSION, "format version");
    CHECK(hq_h5_attr_get_i64(rd, "/", "nranks", &iv) == HQ_OK && iv == c.size, "nranks");
    CHECK(hq_h5_attr_get_i64(rd, "/", "complete", &iv) == HQ_OK && iv == 1, "complete");
    CHECK(hq_h5_attr_get_i64(rd, "/", "bits", &iv) == HQ_OK && iv == 4, "bits");
    double dv = 0;
    CHECK(hq_h5_attr_get_f64(rd, "/", "percdamp", &dv) == HQ_OK && dv == 0.01, "percdamp");
    const char *g0 = "/linears/model.layers.0.self_attn.q_proj";
    CHECK(hq_h5_attr_get_f64(rd, g0, "loss_proxy_gptq", &dv) == HQ_OK && dv == 1.25, "loss gptq");
    CHECK(hq_h5_attr_get_f64(rd, g0, "loss_proxy_rtn", &dv) == HQ_OK && dv == 2.5, "loss rtn");
    CHECK(hq_h5_attr_get_f64(rd, g0, "damp_used", &dv) == HQ_OK && dv == 0.0123, "damp");
    CHECK(hq_h5_attr_get_f64(rd, g0, "seconds_gptq", &dv) == HQ_OK && dv == 1.5, "seconds");
    CHECK(hq_h5_attr_get_i64(rd, g0, "dead_cols", &iv) == HQ_OK && iv == 3, "dead cols");
    int64_t *arr = NULL;
    CHECK(hq_h5_attr_get_i64_array(rd, g0, "owner_rows", &arr, &n) == HQ_OK && n == st.nranks, "owners n");
    for (int q = 0; q < n && arr; q++) CHECK(arr[q] == owners[q], "owner %d: %lld", q, (long long)arr[q]);
    free(arr);
    CHECK(!hq_h5_attr_exists(rd, "/", "nope") && hq_h5_attr_exists(rd, "/", "settings_json"), "exists");
    CHECK(hq_h5_attr_get_i64(rd, "/", "nope", &iv) == HQ_ERR_INPUT, "missing attribute");
    CHECK(hq_h5_linear_read(rd, "model.layers.7.none", &(struct hq_packed){0}) == HQ_ERR_INPUT, "missing linear");
    hq_h5_close(rd);
    const char *keep = getenv("HQ_H5IO_KEEP");
    if (keep && keep[0]) copy_file(path, keep);
  }
  hq_comm_barrier(&c);

  /* overwrite replaces the finished file (and the new one is incomplete again) */
  rc = hq_h5_create(&c, path, 1, &h);
  CHECK(rc == HQ_OK, "overwrite: %s", hq_last_error());
  if (rc == HQ_OK) hq_h5_close(h);
  if (c.rank == 0) {
    struct hq_h5 *rd = NULL;
    rc = hq_h5_open_read(path, 0, &rd);
    CHECK(rc == HQ_ERR_INPUT && strstr(hq_last_error(), "incomplete"), "overwritten file is not complete");
    unlink(path);
    unlink(crash);
    unlink(notes);
  }
  test_pack_roundtrip(&c, dir);
  hq_comm_barrier(&c);
  if (c.rank == 0) rmdir(dir);
  for (int i = 0; i < 4; i++) fake_free(&L[i]);
  int fails = hq_t_fail;
  MPI_Allreduce(MPI_IN_PLACE, &fails, 1, MPI_INT, MPI_SUM, c.comm);
  char name[48];
  snprintf(name, sizeof name, "mpi_h5io rank %d", c.rank);
  hq_comm_finalize(&c);
  int ret = hq_t_done(name);
  return ret || fails ? 1 : 0;
}
