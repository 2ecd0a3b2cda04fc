/* hq64 checksum of dataset contents (src/io/h5sum.h). */
#include "h5sum.h"

#include <string.h>

static inline uint64_t fmix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

static inline uint64_t load_le(const unsigned char *p, size_t esize) {
  uint64_t v = 0;
  for (size_t b = 0; b < esize; b++) v |= (uint64_t)p[b] << (8 * b);
  return v;
}

/* Terms of n consecutive elements starting at global index i0. */
static uint64_t row_sum(const unsigned char *p, size_t esize, int64_t n, uint64_t i0) {
  const uint64_t k = 0x9E3779B97F4A7C15ULL;
  uint64_t s = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if (esize == 4) { /* the common case (packed words), without the byte loop */
    for (int64_t c = 0; c < n; c++) {
      uint32_t v;
      memcpy(&v, p + 4 * (size_t)c, 4);
      s += fmix64((uint64_t)v ^ ((i0 + (uint64_t)c) * k));
    }
    return s;
  }
#endif
  for (int64_t c = 0; c < n; c++)
    s += fmix64(load_le(p + esize * (size_t)c, esize) ^ ((i0 + (uint64_t)c) * k));
  return s;
}

/* Not collective. */
uint64_t hq_sum64_block(const void *buf, size_t esize, int64_t nrows, int64_t ncols,
                        int64_t ld_buf, int64_t ld_global, uint64_t offset) {
  const unsigned char *p = (const unsigned char *)buf;
  uint64_t s = 0;
  for (int64_t r = 0; r < nrows; r++)
    s += row_sum(p + esize * (size_t)r * (size_t)ld_buf, esize, ncols,
                 offset + (uint64_t)r * (uint64_t)ld_global);
  return s;
}

/* Not collective. */
uint64_t hq_sum64(const void *buf, size_t esize, int64_t n) {
  return hq_sum64_block(buf, esize, 1, n, n, n, 0);
}
