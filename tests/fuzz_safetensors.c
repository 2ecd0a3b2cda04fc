/* libFuzzer target: hq_st_parse_header on arbitrary bytes must never crash, leak or touch
 * memory outside the data section, and whatever it accepts must satisfy the invariants the rest
 * of hpcq relies on. Built with clang -fsanitize=fuzzer,address,undefined by tests/fuzz.cmake
 * and run for a bounded time by tests/fuzz_safetensors.sh (ctest fuzz_safetensors). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "model.h"


static void check_accepted(const struct hq_safetensors *st, const unsigned char *data,
                           size_t data_len) {
  for (int64_t i = 0; i < st->ntensors; i++) {
    const struct hq_st_tensor *t = &st->tensors[i];
    if (i > 0 && strcmp(st->tensors[i - 1].name, t->name) >= 0) __builtin_trap(); /* sorted */
    if (hq_st_find(st, t->name) != t) __builtin_trap();
    if (t->ndim < 0 || t->ndim > HQ_ST_MAXDIM) __builtin_trap();
    if (t->nbytes != (size_t)t->numel * hq_dtype_size(t->dtype)) __builtin_trap();
    if (t->nbytes > data_len) __builtin_trap();
    if (data) {
      const unsigned char *p = t->data;
      if (t->nbytes && (p < data || p + t->nbytes > data + data_len)) __builtin_trap();
      /* reads exactly the tensor's bytes: ASan reports any overrun of the heap buffer */
      float *out = malloc((size_t)t->numel * sizeof(float) + 1);
      hq_st_to_f32(t, out);
      free(out);
    } else if (t->data) {
      __builtin_trap();
    }
  }
  /* pairwise disjoint */
  for (int64_t i = 0; i < st->ntensors && data; i++)
    for (int64_t j = i + 1; j < st->ntensors; j++) {
      const struct hq_st_tensor *a = &st->tensors[i], *b = &st->tensors[j];
      if (!a->nbytes || !b->nbytes) continue;
      const char *a0 = a->data, *b0 = b->data;
      if (a0 < b0 + b->nbytes && b0 < a0 + a->nbytes) __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t n) {
  /* 1: a real, exactly sized heap data section (128..256 bytes, following the input length so
   * that inserting or deleting a byte moves the boundary), so accepted tensors are converted
   * and ASan sees any read past it */
  const size_t DATA_LEN = 128 + n % 129;
  unsigned char *data = malloc(DATA_LEN);
  for (size_t i = 0; i < DATA_LEN; i++) data[i] = (unsigned char)(i * 37 + 11);
  struct hq_safetensors st;
  memset(&st, 0, sizeof st);
  if (hq_st_parse_header((const char *)in, n, data, DATA_LEN, 0, "fuzz", &st) == HQ_OK) {
    check_accepted(&st, data, DATA_LEN);
    /* the same header again as a second shard: every name is now a duplicate */
    int64_t before = st.ntensors;
    int rc = hq_st_parse_header((const char *)in, n, data, DATA_LEN, 1, "fuzz2", &st);
    if ((before > 0 && rc == HQ_OK) || st.ntensors != before) __builtin_trap();
  }
  hq_st_close(&st);
  free(data);
  /* 2: no data (large virtual data section), so real checkpoint headers are accepted too */
  memset(&st, 0, sizeof st);
  if (hq_st_parse_header((const char *)in, n, NULL, (size_t)1 << 36, 0, "fuzz", &st) == HQ_OK)
    check_accepted(&st, NULL, (size_t)1 << 36);
  hq_st_close(&st);
  return 0;
}
