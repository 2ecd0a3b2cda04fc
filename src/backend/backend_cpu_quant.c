/* CPU backend: quantization ops (grid parameters, the fused GPTQ inner block, RTN).
 *
 * All rounding goes through the scalar math of quant.h, so the CUDA backend (which includes
 * the same header) produces the same codes. Rows are independent in every op here, so each
 * op parallelises over rows with OpenMP and walks each row with contiguous access. */
#include <stdlib.h>
#include <string.h>

#include "backend_cpu.h"
#include "error.h"
#include "hscale.h"

#define HQ_TILE 16 /* rows per tile of the inner block */

void hq_cpu_quant_params(struct hq_grid g, int64_t rows, int64_t ncols, const float *W,
                         int64_t ldw, const float *colw, float *scale, float *zero) {
#pragma omp parallel for schedule(static) if (rows * ncols * (g.mse || colw ? 80 : 1) > 65536)
  for (int64_t r = 0; r < rows; r++) {
    const float *restrict w = W + r * ldw;
    if (colw) hq_hscale_params_ref(g, w, colw, ncols, 1, scale + r, zero + r);
    else hq_grid_params_ref(g, w, ncols, 1, scale + r, zero + r); /* min/max (+ MSE search) */
  }
}

/* The inner block, HQ_TILE rows at a time. A row's column walk is a serial dependency chain
 * (quantize column i, downdate the rest of the row, quantize column i+1, ...), so one row at a
 * time is latency-bound. The tile holds HQ_TILE rows transposed (column-major, T[j][lane]):
 * column i of all lanes is contiguous, so quantizing it and the rank-1 downdate
 * T[j][:] -= h[j] * err[:] (j > i) run across lanes in SIMD registers, and Hinv1 row i is read
 * contiguously once per tile. Every element sees exactly the float operations of the plain
 * column loop (w -= err * h, no contraction: ISO C mode), so results do not depend on the
 * tiling. */
/* GCC/Clang vector extension: one tile column (64 bytes; two AVX2 or one AVX-512 register).
 * Vector types alias their element type, and T is 64-byte aligned. */
typedef float hq_tilevec __attribute__((vector_size(HQ_TILE * sizeof(float))));

/* the arguments of one gptq_block call that every tile shares */
struct blk {
  int maxq;
  int64_t count, c0, c1, ldw, ldh, lde, ldc, ldp;
  const float *Hinv1;
  const int32_t *cg; /* column -> group (NULL: one parameter pair per row) */
};

/* the tile's parameters for column i: per row, or of column i's group */
static void tile_params(const struct blk *b, int64_t nr, int64_t i, const float *scale,
                        const float *zero, float *s, float *z) {
  const int64_t off = b->cg ? (int64_t)b->cg[i] * b->ldp : 0;
  for (int l = 0; l < HQ_TILE; l++) {
    s[l] = l < nr ? scale[off + l] : 1.0f;
    z[l] = l < nr ? zero[off + l] : 0.0f;
  }
}

static void gptq_tile(const struct blk *b, int64_t nr, float *W1, const float *scale,
                      const float *zero, float *Err1, uint8_t *codes, double *row_loss,
                      float *restrict T) {
  float s[HQ_TILE], z[HQ_TILE], err[HQ_TILE];
  int cd[HQ_TILE];
  double loss[HQ_TILE] = {0};
  const int64_t count = b->count;
  tile_params(b, nr, b->c0, scale, zero, s, z);
  for (int64_t j = b->c0; j < count; j++) {
    float *t = T + j * HQ_TILE;
    for (int l = 0; l < HQ_TILE; l++) t[l] = l < nr ? W1[l * b->ldw + j] : 0.0f;
  }
  for (int64_t i = b->c0; i < b->c1; i++) {
    const float *restrict h = b->Hinv1 + i * b->ldh;
    float *restrict t = T + i * HQ_TILE;
    const float d = h[i];
    if (b->cg && i > b->c0 && b->cg[i] != b->cg[i - 1]) tile_params(b, nr, i, scale, zero, s, z);
    for (int l = 0; l < HQ_TILE; l++) {
      float wi = t[l];
      int code = hq_quant_code(wi, s[l], z[l], b->maxq);
      float q = hq_dequant(code, s[l], z[l]);
      err[l] = (wi - q) / d;
      t[l] = q;
      cd[l] = code;
    }
    for (int l = 0; l < nr; l++) {
      Err1[l * b->lde + i] = err[l];
      codes[l * b->ldc + i] = (uint8_t)cd[l];
      loss[l] += 0.5 * (double)err[l] * (double)err[l];
    }
    hq_tilevec ev;
    memcpy(&ev, err, sizeof ev);
    hq_tilevec *tv = (hq_tilevec *)(void *)T;
    for (int64_t j = i + 1; j < count; j++) tv[j] -= ev * h[j];
  }
  for (int l = 0; l < nr; l++) {
    float *w = W1 + l * b->ldw;
    for (int64_t j = b->c0; j < count; j++) w[j] = T[j * HQ_TILE + l];
  }
  for (int l = 0; l < nr; l++) row_loss[l] += loss[l];
}

void hq_cpu_gptq_block(struct hq_grid g, int64_t rows, int64_t count, int64_t c0, int64_t c1,
                       float *W1, int64_t ldw, const float *Hinv1, int64_t ldh,
                       const float *scale, const float *zero, const int32_t *col_group,
                       float *Err1, int64_t lde, uint8_t *codes, int64_t ldc, double *row_loss) {
  if (hq_gptq_block_empty(rows, count, c0, c1)) return;
  const struct blk b = {g.maxq, count, c0, c1, ldw, ldh, lde, ldc, rows, Hinv1, col_group};
  const int64_t ntiles = (rows + HQ_TILE - 1) / HQ_TILE;
  int nomem = 0;
  /* Work per row is ~ (c1 - c0) * count flops; do not fork threads for tiny calls. */
#pragma omp parallel reduction(| : nomem) if (rows * (c1 - c0) * count > 65536)
  {
    float *T = NULL;
    if (posix_memalign((void **)&T, 64, (size_t)count * HQ_TILE * sizeof(float))) {
      T = NULL;
      nomem = 1;
    }
#pragma omp for schedule(static)
    for (int64_t tb = 0; tb < ntiles; tb++) {
      if (!T) continue;
      const int64_t r0 = tb * HQ_TILE, nr = rows - r0 < HQ_TILE ? rows - r0 : HQ_TILE;
      gptq_tile(&b, nr, W1 + r0 * ldw, scale + r0, zero + r0, Err1 + r0 * lde, codes + r0 * ldc,
                row_loss + r0, T);
    }
    free(T);
  }
  if (nomem) HQ_DIE("gptq_block: out of memory for a %lld-float tile", (long long)count * HQ_TILE);
}

void hq_cpu_rtn_cols(struct hq_grid g, int64_t rows, int64_t ncols, float *W, int64_t ldw,
                     const float *scale, const float *zero, uint8_t *codes, int64_t ldc) {
#pragma omp parallel for schedule(static) if (rows * ncols > 65536)
  for (int64_t r = 0; r < rows; r++) {
    float *w = W + r * ldw;
    uint8_t *c = codes + r * ldc;
    float s = scale[r], z = zero[r];
    for (int64_t i = 0; i < ncols; i++) {
      int code = hq_quant_code(w[i], s, z, g.maxq);
      w[i] = hq_dequant(code, s, z);
      c[i] = (uint8_t)code;
    }
  }
}
