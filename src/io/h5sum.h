/* hq64: the checksum hpcq stores with every dataset of its HDF5 output (format version 2,
 * docs/readme/output-format.md "Checksums").
 *
 * For a dataset of N elements of e bytes (e = 1, 2, 4 or 8), element i in row-major order
 * with little-endian unsigned value v_i:
 *
 *   hq64 = sum_i fmix64(v_i XOR (i * 0x9E3779B97F4A7C15))   (mod 2^64)
 *
 * fmix64 is MurmurHash3's 64-bit finalizer. Every term depends on its element's position and
 * value alone and the sum is order-free, so ranks add up the terms of their own slabs in any
 * order and any partition gives the same value. A changed element changes its term (fmix64 is
 * a bijection), so the sum changes except with probability about 2^-64. */
#ifndef HQ_H5SUM_H
#define HQ_H5SUM_H

#include <stddef.h>
#include <stdint.h>

/* Not collective. Sum of the terms of a [nrows x ncols] block of e-byte elements read from
 * `buf` (rows `ld_buf` elements apart) that sits at element `offset` of a row-major dataset
 * whose rows are `ld_global` elements long. */
uint64_t hq_sum64_block(const void *buf, size_t esize, int64_t nrows, int64_t ncols,
                        int64_t ld_buf, int64_t ld_global, uint64_t offset);

/* Not collective. hq64 of n contiguous elements (a whole dataset). */
uint64_t hq_sum64(const void *buf, size_t esize, int64_t n);

#endif
