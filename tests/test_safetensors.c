/* safetensors reader against an independent reading (tests/model_fixtures.h, made with the
 * python safetensors library by tools/make_model_fixtures.py), known fp16/bf16 bit patterns,
 * and a catalogue of corrupt headers and checkpoints built at run time, each of which must give
 * its specific error naming the file and the tensor. */
#include <math.h>
#include <string.h>

#include "model.h"
#include "model_fixtures.h"
#include "quant.h"
#include "st_testlib.h"
#include "testutil.h"

#define NFX(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ---- the bundled checkpoints match the python reading ---- */
static void check_against_fixture(const struct hq_safetensors *st, const struct fx_model *fm) {
  CHECK(st->ntensors == fm->ntensors, "%s: %lld tensors, python says %lld", fm->dir,
        (long long)st->ntensors, (long long)fm->ntensors);
  for (int64_t i = 1; i < st->ntensors; i++)
    CHECK(strcmp(st->tensors[i - 1].name, st->tensors[i].name) < 0, "not sorted at %lld",
          (long long)i);
  int bad = 0;
  for (int64_t i = 0; i < fm->ntensors; i++) {
    const struct fx_tensor *ft = &fm->t[i];
    const struct hq_st_tensor *t = hq_st_find(st, ft->name);
    CHECK(t != NULL, "%s: tensor %s not found", fm->dir, ft->name);
    if (!t) continue;
    CHECK(strcmp(hq_dtype_name(t->dtype), ft->dtype) == 0, "%s dtype %s vs %s", ft->name,
          hq_dtype_name(t->dtype), ft->dtype);
    CHECK(t->ndim == ft->ndim && t->shape[0] == ft->shape[0] &&
              (ft->ndim < 2 || t->shape[1] == ft->shape[1]),
          "%s shape", ft->name);
    CHECK(t->nbytes == (size_t)t->numel * hq_dtype_size(t->dtype), "%s nbytes", ft->name);
    float *v = malloc((size_t)t->numel * sizeof *v);
    hq_st_to_f32(t, v);
    double s = 0, sa = 0;
    for (int64_t k = 0; k < t->numel; k++) {
      s += v[k];
      sa += fabs(v[k]);
    }
    if (fabs(s - ft->sum) > 1e-9 * ft->sumabs + 1e-12 || fabs(sa - ft->sumabs) > 1e-9 * ft->sumabs)
      bad++, fprintf(stderr, "%s: sum %.17g vs %.17g, sumabs %.17g vs %.17g\n", ft->name, s,
                     ft->sum, sa, ft->sumabs);
    for (int k = 0; k < 3; k++)
      if (v[ft->idx[k]] != ft->val[k])
        bad++, fprintf(stderr, "%s[%lld] = %a, python says %a\n", ft->name,
                       (long long)ft->idx[k], v[ft->idx[k]], ft->val[k]);
    free(v);
  }
  CHECK(bad == 0, "%s: %d value mismatches against the python reading", fm->dir, bad);
}

static void test_bundled(void) {
  for (int m = 0; m < NFX(fx_models); m++) {
    struct hq_safetensors st;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", hq_t_data(fx_models[m].dir));
    int rc = hq_st_open(dir, &st);
    CHECK(rc == HQ_OK, "open %s: %s", dir, hq_last_error());
    if (rc != HQ_OK) continue;
    CHECK(st.nfiles == 1, "one file");
    check_against_fixture(&st, &fx_models[m]);
    CHECK(hq_st_find(&st, "model.layers.99.nope") == NULL, "absent name");
    CHECK(hq_st_find(&st, "") == NULL, "empty name");
    hq_st_close(&st);
    /* the file path directly */
    char file[4200];
    snprintf(file, sizeof file, "%s/model.safetensors", dir);
    rc = hq_st_open(file, &st);
    CHECK(rc == HQ_OK && st.ntensors == fx_models[m].ntensors, "open file %s", file);
    hq_st_close(&st);
  }
}

/* ---- parse_header on synthetic headers ---- */
static unsigned char g_data[64];

static int parse(const char *json, size_t data_len, struct hq_safetensors *st) {
  memset(st, 0, sizeof *st);
  hq_error_clear();
  return hq_st_parse_header(json, strlen(json), g_data, data_len, 0, "x.safetensors", st);
}

/* must fail with `status` and a message holding every needle */
static void bad_header(const char *json, size_t data_len, int status, const char *n1,
                       const char *n2) {
  struct hq_safetensors st;
  int rc = parse(json, data_len, &st);
  const char *msg = hq_last_error();
  CHECK(rc == status, "header %s: got status %d (%s), want %d", json, rc, msg, status);
  CHECK(tl_contains(msg, "x.safetensors"), "message names the file: %s", msg);
  CHECK(!n1 || tl_contains(msg, n1), "message '%s' lacks '%s'", msg, n1 ? n1 : "");
  CHECK(!n2 || tl_contains(msg, n2), "message '%s' lacks '%s'", msg, n2 ? n2 : "");
  CHECK(st.ntensors == 0 && st.tensors == NULL, "failed parse leaves st empty");
  hq_st_close(&st);
}

static void test_headers(void) {
  struct hq_safetensors st;
  /* valid, with metadata, padding, an empty tensor */
  const char *ok = "{\"__metadata__\":{\"format\":\"pt\"},"
                   "\"b\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,8]},"
                   "\"a\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[8,16]},"
                   "\"c\":{\"dtype\":\"F32\",\"shape\":[1,0],\"data_offsets\":[16,16]},"
                   "\"d\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[16,20]}}   ";
  /* F16 1, -2, 65504, min subnormal; BF16 1, -pi (0xc049), 1e-40-ish subnormal, -inf; F32 0.5 */
  const uint16_t f16[4] = {0x3c00, 0xc000, 0x7bff, 0x0001};
  const uint16_t bf16[4] = {0x3f80, 0xc049, 0x0001, 0xff80};
  const float f32 = 0.5f;
  memcpy(g_data, f16, 8);
  memcpy(g_data + 8, bf16, 8);
  memcpy(g_data + 16, &f32, 4);
  int rc = parse(ok, 20, &st);
  CHECK(rc == HQ_OK, "valid header: %s", hq_last_error());
  CHECK(st.ntensors == 4, "4 tensors, metadata skipped (%lld)", (long long)st.ntensors);
  if (rc == HQ_OK && st.ntensors == 4) {
    CHECK(strcmp(st.tensors[0].name, "a") == 0 && strcmp(st.tensors[3].name, "d") == 0, "sorted");
    const struct hq_st_tensor *a = hq_st_find(&st, "a"), *b = hq_st_find(&st, "b"),
                              *c = hq_st_find(&st, "c"), *d = hq_st_find(&st, "d");
    CHECK(a && b && c && d, "find");
    float v[4];
    hq_st_to_f32(b, v);
    CHECK(v[0] == 1.0f && v[1] == -2.0f && v[2] == 65504.0f && v[3] == 0x1p-24f, "f16 values");
    hq_st_to_f32(a, v);
    CHECK(v[0] == 1.0f && v[1] == -3.140625f && v[2] == 0x1p-133f && isinf(v[3]) && v[3] < 0,
          "bf16 values %a %a %a %a", v[0], v[1], v[2], v[3]);
    CHECK(c->numel == 0 && c->ndim == 2, "empty tensor");
    CHECK(d->ndim == 0 && d->numel == 1, "scalar");
    hq_st_to_f32(d, v);
    CHECK(v[0] == 0.5f, "f32 scalar");
    CHECK(b->data == g_data && a->data == g_data + 8, "data pointers");
    /* a second header with a name already present (another shard) */
    const char *again = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    rc = hq_st_parse_header(again, strlen(again), g_data, 4, 1, "y.safetensors", &st);
    CHECK(rc == HQ_ERR_INPUT && tl_contains(hq_last_error(), "'a'") &&
              tl_contains(hq_last_error(), "y.safetensors"),
          "cross-file duplicate: %s", hq_last_error());
    CHECK(st.ntensors == 4, "failed append leaves st as it was");
  }
  hq_st_close(&st);
  /* every fp16 and bf16 bit pattern converts like quant.h's scalar conversions (which
   * test_quant_math checks against IEEE facts); compared bitwise so NaNs count too */
  {
    static uint16_t all[65536];
    static float got[65536];
    for (uint32_t h = 0; h < 65536; h++) all[h] = (uint16_t)h;
    struct hq_st_tensor t = {0};
    t.numel = 65536;
    t.data = all;
    int nbad = 0;
    for (int d = 0; d < 2; d++) {
      t.dtype = d ? HQ_DTYPE_BF16 : HQ_DTYPE_F16;
      hq_st_to_f32(&t, got);
      for (uint32_t h = 0; h < 65536; h++) {
        float want = d ? hq_bf16_to_f32((uint16_t)h) : hq_f16_to_f32((uint16_t)h);
        if (memcmp(&want, &got[h], 4) != 0) nbad++;
      }
    }
    CHECK(nbad == 0, "%d of 131072 fp16/bf16 patterns convert differently", nbad);
  }
  /* NULL data (fuzzing mode) */
  memset(&st, 0, sizeof st);
  rc = hq_st_parse_header(ok, strlen(ok), NULL, 20, 0, "x", &st);
  CHECK(rc == HQ_OK && st.tensors[0].data == NULL, "NULL data");
  hq_st_close(&st);

  bad_header("{", 8, HQ_ERR_INPUT, "not valid JSON", NULL);
  bad_header("", 8, HQ_ERR_INPUT, "not valid JSON", NULL);
  bad_header("[1,2]", 8, HQ_ERR_INPUT, "not a JSON object", NULL);
  bad_header("{} x", 8, HQ_ERR_INPUT, "unexpected bytes", NULL);
  bad_header("{\"t\":1}", 8, HQ_ERR_INPUT, "'t'", "not a JSON object");
  bad_header("{\"t\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, HQ_ERR_INPUT, "'t'", "dtype");
  bad_header("{\"t\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, HQ_ERR_INPUT, "'t'",
             "dtype");
  bad_header("{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, HQ_ERR_INPUT, "'t'", "shape");
  bad_header("{\"t\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}", 8, HQ_ERR_INPUT,
             "'t'", "shape");
  bad_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, HQ_ERR_INPUT, "'t'", "data_offsets");
  bad_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":{}}}", 8, HQ_ERR_INPUT,
             "'t'", "data_offsets");
  bad_header("{\"t\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
             HQ_ERR_UNSUPPORTED, "'t'", "'I64'");
  bad_header("{\"t\":{\"dtype\":\"F8_E4M3\",\"shape\":[8],\"data_offsets\":[0,8]}}", 8,
             HQ_ERR_UNSUPPORTED, "F8_E4M3", "BF16, F16 and F32");
  bad_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
             8, HQ_ERR_UNSUPPORTED, "'t'", "9 dimensions");
  bad_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, HQ_ERR_INPUT,
             "'t'", "shape entry 0");
  bad_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", 8, HQ_ERR_INPUT,
             "'t'", "shape entry 0");
  bad_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, HQ_ERR_INPUT,
             "'t'", "data_offsets");
  bad_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,16]}}", 8,
             HQ_ERR_INPUT, "'t'", "data_offsets");
  bad_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8, HQ_ERR_INPUT,
             "'t'", "begin > end");
  bad_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, HQ_ERR_INPUT,
             "'t'", "past the end");
  bad_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e300]}}", 8,
             HQ_ERR_INPUT, "'t'", "data_offsets");
  bad_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, HQ_ERR_INPUT,
             "'t'", "needs 12");
  bad_header("{\"t\":{\"dtype\":\"BF16\",\"shape\":[4294967296,4294967296,4294967296],"
             "\"data_offsets\":[0,8]}}", 8, HQ_ERR_INPUT, "'t'", "overflow");
  bad_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[2147483648,2147483648],"
             "\"data_offsets\":[0,8]}}", 8, HQ_ERR_INPUT, "'t'", "overflow");
  bad_header("{\"p\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"q\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 16, HQ_ERR_INPUT,
             "'p'", "'q'");
  bad_header("{\"p\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
             "\"q\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 16, HQ_ERR_INPUT,
             "overlap", "'q'");
  bad_header("{\"p\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"p\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, HQ_ERR_INPUT,
             "'p'", "twice");
  /* a bad entry after good ones frees the good ones and leaves st empty */
  bad_header("{\"p\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"q\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[8,16]}}", 16,
             HQ_ERR_UNSUPPORTED, "'q'", "F64");
}

/* ---- corrupt files and sharded checkpoints built from stories260K ---- */
struct edit { const char *name; const char *key; cJSON *value; };
static void edit_entry(cJSON *h, void *ctx) {
  struct edit *e = ctx;
  cJSON *t = cJSON_GetObjectItemCaseSensitive(h, e->name);
  if (!t) return;
  if (e->value) cJSON_ReplaceItemInObjectCaseSensitive(t, e->key, e->value);
  else cJSON_DeleteItemFromObjectCaseSensitive(h, e->name);
}
static cJSON *offs(double a, double b) {
  cJSON *o = cJSON_CreateArray();
  cJSON_AddItemToArray(o, cJSON_CreateNumber(a));
  cJSON_AddItemToArray(o, cJSON_CreateNumber(b));
  return o;
}

static void expect_open_fail(const char *path, int status, const char *n1, const char *n2,
                             const char *what) {
  struct hq_safetensors st;
  hq_error_clear();
  int rc = hq_st_open(path, &st);
  const char *msg = hq_last_error();
  CHECK(rc == status, "%s: status %d (%s), want %d", what, rc, msg, status);
  CHECK(!n1 || tl_contains(msg, n1), "%s: message '%s' lacks '%s'", what, msg, n1 ? n1 : "");
  CHECK(!n2 || tl_contains(msg, n2), "%s: message '%s' lacks '%s'", what, msg, n2 ? n2 : "");
  CHECK(st.ntensors == 0 && st.nfiles == 0, "%s: failed open leaves st empty", what);
  if (rc == HQ_OK) hq_st_close(&st);
}

static void test_files(void) {
  char tmp[512], src[4096], p[1024], q[1024];
  tl_tmpdir(tmp, sizeof tmp, "st");
  snprintf(src, sizeof src, "%s", hq_t_data("stories260K-hf/model.safetensors"));
  size_t srclen;
  free(tl_read(src, &srclen));

  /* truncated data: the last tensor in the data section no longer fits */
  tl_path(p, sizeof p, tmp, "trunc.safetensors");
  tl_copy(src, p, (long)srclen - 100);
  expect_open_fail(p, HQ_ERR_INPUT, "trunc.safetensors", "truncated", "truncated data");
  {
    struct hq_safetensors full;
    hq_st_open(src, &full);
    /* the tensor stored last is the one named in the message */
    const struct hq_st_tensor *last = &full.tensors[0];
    for (int64_t i = 0; i < full.ntensors; i++)
      if ((const char *)full.tensors[i].data > (const char *)last->data) last = &full.tensors[i];
    char nm[300];
    snprintf(nm, sizeof nm, "'%s'", last->name);
    expect_open_fail(p, HQ_ERR_INPUT, nm, "past the end", "truncated data names the tensor");
    hq_st_close(&full);
  }
  /* truncated inside the header */
  tl_copy(src, p, 200);
  expect_open_fail(p, HQ_ERR_INPUT, "trunc.safetensors", "header length", "truncated header");
  tl_copy(src, p, 5);
  expect_open_fail(p, HQ_ERR_INPUT, "trunc.safetensors", "too short", "5-byte file");
  /* header length claiming 1 TB */
  {
    unsigned char b[64] = {0};
    b[5] = 1; /* 2^40 */
    tl_write(p, b, sizeof b);
    expect_open_fail(p, HQ_ERR_INPUT, "trunc.safetensors", "header length", "huge header len");
  }
  /* offsets out of range */
  tl_path(p, sizeof p, tmp, "range.safetensors");
  struct edit e1 = {"model.norm.weight", "data_offsets", offs(0, 1e9)};
  tl_st_patch(src, p, edit_entry, &e1);
  expect_open_fail(p, HQ_ERR_INPUT, "'model.norm.weight'", "past the end", "offsets out of range");
  /* overlapping: norm moved onto the bytes of layer 0's input_layernorm (same size) */
  {
    struct hq_safetensors full;
    hq_st_open(src, &full);
    const struct hq_st_tensor *ln = hq_st_find(&full, "model.layers.0.input_layernorm.weight");
    size_t beg = (size_t)((const char *)ln->data - (const char *)full.files[0].map);
    /* data offset = file offset - 8 - header length */
    const unsigned char *m = full.files[0].map;
    uint64_t L = 0;
    for (int i = 7; i >= 0; i--) L = (L << 8) | m[i];
    double b0 = (double)(beg - 8 - L);
    struct edit e2 = {"model.norm.weight", "data_offsets", offs(b0, b0 + (double)ln->nbytes)};
    tl_path(p, sizeof p, tmp, "overlap.safetensors");
    tl_st_patch(src, p, edit_entry, &e2);
    expect_open_fail(p, HQ_ERR_INPUT, "'model.norm.weight'", "overlap", "overlapping tensors");
    expect_open_fail(p, HQ_ERR_INPUT, "model.layers.0.input_layernorm.weight", "overlap.safetensors",
                     "overlap names both tensors and the file");
    hq_st_close(&full);
  }
  /* unknown dtype (I32 is read: the packed tensors of GPTQ checkpoints; the model refuses it
   * anywhere else, tests/test_gptq_read.sh) */
  tl_path(p, sizeof p, tmp, "dtype.safetensors");
  struct edit e3 = {"model.layers.1.mlp.up_proj.weight", "dtype", cJSON_CreateString("I64")};
  tl_st_patch(src, p, edit_entry, &e3);
  expect_open_fail(p, HQ_ERR_UNSUPPORTED, "'model.layers.1.mlp.up_proj.weight'", "'I64'",
                   "unknown dtype");
  expect_open_fail(p, HQ_ERR_UNSUPPORTED, "dtype.safetensors", NULL, "dtype names the file");
  /* not a safetensors file at all */
  tl_path(p, sizeof p, tmp, "config.safetensors");
  tl_copy(hq_t_data("stories260K-hf/config.json"), p, -1);
  expect_open_fail(p, HQ_ERR_INPUT, "config.safetensors", NULL, "json file as safetensors");
  /* folder without a checkpoint */
  expect_open_fail(tmp, HQ_ERR_IO, "neither", NULL, "empty folder");
  tl_path(p, sizeof p, tmp, "does-not-exist.safetensors");
  expect_open_fail(p, HQ_ERR_IO, "does-not-exist", NULL, "missing file");

  /* ---- sharded: 3 shards + index, values identical to the single file ---- */
  struct hq_safetensors one;
  CHECK(hq_st_open(src, &one) == HQ_OK, "open single");
  char sh[600];
  snprintf(sh, sizeof sh, "%s/sharded", tmp);
  mkdir(sh, 0755);
  struct tl_tensor *all = tl_from_st(&one, 0);
  int nt = (int)one.ntensors;
  cJSON *idx = cJSON_CreateObject();
  cJSON *meta = cJSON_AddObjectToObject(idx, "metadata");
  cJSON_AddNumberToObject(meta, "total_size", 1.0);
  cJSON *wm = cJSON_AddObjectToObject(idx, "weight_map");
  const char *shard_names[3] = {"model-00001-of-00003.safetensors",
                                "model-00002-of-00003.safetensors",
                                "model-00003-of-00003.safetensors"};
  for (int s = 0; s < 3; s++) {
    struct tl_tensor *part = calloc((size_t)nt, sizeof *part);
    int k = 0;
    for (int i = 0; i < nt; i++)
      if (i * 3 / nt == s) {
        part[k++] = all[i];
        cJSON_AddStringToObject(wm, all[i].name, shard_names[s]);
      }
    tl_path(p, sizeof p, sh, shard_names[s]);
    tl_st_write(p, part, k);
    free(part);
  }
  char *itxt = cJSON_Print(idx);
  tl_path(p, sizeof p, sh, "model.safetensors.index.json");
  tl_write(p, itxt, strlen(itxt));
  struct hq_safetensors three;
  int rc = hq_st_open(sh, &three);
  CHECK(rc == HQ_OK, "open sharded: %s", hq_last_error());
  if (rc == HQ_OK) {
    CHECK(three.nfiles == 3 && three.ntensors == one.ntensors, "3 files, same tensors");
    check_against_fixture(&three, &fx_models[1]);
    int diff = 0, files_seen[3] = {0};
    for (int64_t i = 0; i < one.ntensors; i++) {
      const struct hq_st_tensor *a = &one.tensors[i], *b = hq_st_find(&three, a->name);
      if (!b || b->nbytes != a->nbytes || memcmp(a->data, b->data, a->nbytes)) diff++;
      else files_seen[b->file]++;
    }
    CHECK(diff == 0 && files_seen[0] && files_seen[1] && files_seen[2],
          "sharded bytes equal the single file (%d differ)", diff);
    hq_st_close(&three);
  }
  rc = hq_st_open(p, &three); /* the index path itself */
  CHECK(rc == HQ_OK && three.nfiles == 3, "open via index path: %s", hq_last_error());
  hq_st_close(&three);

  /* index naming a tensor the shard lacks */
  cJSON_AddStringToObject(wm, "model.extra.weight", shard_names[1]);
  free(itxt);
  itxt = cJSON_Print(idx);
  tl_write(p, itxt, strlen(itxt));
  expect_open_fail(sh, HQ_ERR_INPUT, "'model.extra.weight'", shard_names[1], "index names absent tensor");
  cJSON_DeleteItemFromObjectCaseSensitive(wm, "model.extra.weight");
  /* index pointing to the wrong shard for an existing tensor */
  cJSON_ReplaceItemInObjectCaseSensitive(wm, all[0].name, cJSON_CreateString(shard_names[2]));
  free(itxt);
  itxt = cJSON_Print(idx);
  tl_write(p, itxt, strlen(itxt));
  expect_open_fail(sh, HQ_ERR_INPUT, all[0].name, "does not contain", "index maps to wrong shard");
  cJSON_ReplaceItemInObjectCaseSensitive(wm, all[0].name, cJSON_CreateString(shard_names[0]));
  free(itxt);
  itxt = cJSON_Print(idx);
  tl_write(p, itxt, strlen(itxt));
  /* a missing shard */
  tl_path(q, sizeof q, sh, shard_names[1]);
  char qq[1100];
  snprintf(qq, sizeof qq, "%s.moved", q);
  rename(q, qq);
  expect_open_fail(sh, HQ_ERR_IO, shard_names[1], "does not exist", "missing shard");
  rename(qq, q);
  /* a truncated shard */
  size_t l2;
  free(tl_read(q, &l2));
  tl_copy(q, qq, -1);
  tl_copy(qq, q, (long)l2 - 4);
  expect_open_fail(sh, HQ_ERR_INPUT, shard_names[1], "truncated", "truncated shard");
  tl_copy(qq, q, -1);
  CHECK(hq_st_open(sh, &three) == HQ_OK, "restored shards open again: %s", hq_last_error());
  hq_st_close(&three);
  /* shard name escaping the folder, and an index without weight_map */
  cJSON_ReplaceItemInObjectCaseSensitive(wm, all[0].name, cJSON_CreateString("../x.safetensors"));
  free(itxt);
  itxt = cJSON_Print(idx);
  tl_write(p, itxt, strlen(itxt));
  expect_open_fail(sh, HQ_ERR_INPUT, "../x.safetensors", "plain file names", "shard path escape");
  tl_write(p, "{\"metadata\":{}}", 15);
  expect_open_fail(sh, HQ_ERR_INPUT, "weight_map", NULL, "index without weight_map");
  tl_write(p, "{not json", 9);
  expect_open_fail(sh, HQ_ERR_INPUT, "not valid JSON", NULL, "index not json");

  free(itxt);
  cJSON_Delete(idx);
  free(all);
  hq_st_close(&one);
  tl_rmtree(tmp);
}

int main(void) {
  test_bundled();
  test_headers();
  test_files();
  return hq_t_done("test_safetensors");
}
