/* GPTQ checkpoint packing: see pack.h for the layout and the shape rules. */
#include "pack.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "quant.h"

int64_t hq_pack_unit(int bits) {
  switch (bits) {
    case 2: return 16;
    case 3: return 32;
    case 4: return 8;
    case 8: return 4;
    default: return 0;
  }
}

const char *hq_pack_format_name(enum hq_pack_format f) {
  switch (f) {
    case HQ_PACK_GPTQ: return "gptq";
    case HQ_PACK_GPTQ_V2: return "gptq_v2";
  }
  return NULL;
}

enum hq_pack_format hq_pack_format_parse(const char *s) {
  if (s && (!strcmp(s, "gptq") || !strcmp(s, "v1"))) return HQ_PACK_GPTQ;
  if (s && (!strcmp(s, "gptq_v2") || !strcmp(s, "v2"))) return HQ_PACK_GPTQ_V2;
  hq_fail(HQ_ERR_INPUT, "unknown checkpoint format '%s'; use gptq (v1) or gptq_v2", s ? s : "");
  return (enum hq_pack_format)0;
}

int hq_pack_check(int bits, enum hq_pack_format format, int64_t in, int64_t out,
                  int64_t ngroups, int64_t row0, int64_t nrows) {
  int64_t u = hq_pack_unit(bits);
  if (u == 0)
    return hq_fail(HQ_ERR_UNSUPPORTED,
                   "cannot pack %d-bit codes: the GPTQ layout supports bits 2, 3, 4 and 8", bits);
  if (!hq_pack_format_name(format))
    return hq_fail(HQ_ERR_INPUT, "invalid checkpoint format %d; use gptq (v1) or gptq_v2",
                   (int)format);
  if (in < 1 || out < 1)
    return hq_fail(HQ_ERR_INPUT, "cannot pack a %lld x %lld layer (out x in)", (long long)out,
                   (long long)in);
  if (ngroups < 1 || ngroups > in)
    return hq_fail(HQ_ERR_INPUT, "%lld groups for %lld input columns; need 1..%lld",
                   (long long)ngroups, (long long)in, (long long)in);
  if (in % u != 0 || out % u != 0) {
    /* name the widths that fit (or --rule ...:skip=1 leaves the linear unquantized) */
    char alt[64] = "";
    int len = 0;
    for (int b = 2; b <= 8; b++)
      if (hq_pack_unit(b) && in % hq_pack_unit(b) == 0 && out % hq_pack_unit(b) == 0)
        len += snprintf(alt + len, sizeof alt - (size_t)len, "%s%d", len ? ", " : "", b);
    const int bad_in = in % u != 0;
    return hq_fail(HQ_ERR_UNSUPPORTED,
                   "%s dimension %lld is not a multiple of %lld: %d-bit %s pack %lld values per "
                   "%s along it and GPTQ loaders require %s %% %lld == 0; hpcq does not pad, so "
                   "this linear cannot be stored at %d bits (leave it unquantized with --rule "
                   "'NAME:skip=1')%s%s",
                   bad_in ? "input" : "output", (long long)(bad_in ? in : out), (long long)u,
                   bits, bad_in ? "qweight" : "qzeros", (long long)u,
                   bits == 3 ? "3 words" : "word", bad_in ? "in" : "out", (long long)u, bits,
                   len ? ": use --bits " : "", alt);
  }
  if (row0 < 0 || nrows < 1 || row0 + nrows > out)
    return hq_fail(HQ_ERR_INPUT, "row range [%lld, %lld) is not inside the %lld output rows",
                   (long long)row0, (long long)(row0 + nrows), (long long)out);
  if (row0 % u != 0 || nrows % u != 0)
    return hq_fail(HQ_ERR_UNSUPPORTED,
                   "row range [%lld, %lld) is not aligned to %lld rows: %d-bit qzeros of a "
                   "slab must start and end on a packed word; align the partition's row "
                   "ranges to multiples of 32",
                   (long long)row0, (long long)(row0 + nrows), (long long)u, bits);
  return HQ_OK;
}

int hq_pack_init(struct hq_packed *p, int bits, enum hq_pack_format format, int64_t in,
                 int64_t out, int64_t ngroups, int64_t row0, int64_t nrows) {
  memset(p, 0, sizeof *p);
  HQ_TRY(hq_pack_check(bits, format, in, out, ngroups, row0, nrows));
  p->bits = bits;
  p->format = format;
  p->in = in;
  p->out = out;
  p->row0 = row0;
  p->nrows = nrows;
  p->ngroups = ngroups;
  size_t qw = (size_t)(in * bits / 32) * (size_t)nrows;
  size_t qz = (size_t)ngroups * (size_t)(nrows * bits / 32);
  p->qweight = calloc(qw, sizeof(int32_t));
  p->qzeros = calloc(qz, sizeof(int32_t));
  p->scales = calloc((size_t)ngroups * (size_t)nrows, sizeof(uint16_t));
  p->g_idx = calloc((size_t)in, sizeof(int32_t));
  if (!p->qweight || !p->qzeros || !p->scales || !p->g_idx) {
    hq_pack_free(p);
    return hq_fail(HQ_ERR_NOMEM, "out of memory packing a %lld x %lld slab (%.1f MB)",
                   (long long)nrows, (long long)in, (double)(qw * 4 + qz * 4) / 1e6);
  }
  return HQ_OK;
}

void hq_pack_free(struct hq_packed *p) {
  if (!p) return;
  free(p->qweight);
  free(p->qzeros);
  free(p->scales);
  free(p->g_idx);
  p->qweight = p->qzeros = p->g_idx = NULL;
  p->scales = NULL;
}

/* A stream of `bits`-bit values in 32-bit words, least significant bits first: the bits not yet
 * written (encode) or not yet read (decode) are acc's low nb bits; w is the next word. */
struct bit_stream {
  uint64_t mask, acc;
  int nb;
  int64_t w;
};

static struct bit_stream stream_start(int bits, int64_t n) {
  HQ_ASSERT(hq_pack_unit(bits) > 0 && n % hq_pack_unit(bits) == 0);
  return (struct bit_stream){.mask = (1u << bits) - 1u, .acc = 0, .nb = 0, .w = 0};
}

void hq_pack_stream_encode(int bits, int64_t n, const uint8_t *vals, int64_t vstride,
                           uint32_t *words, int64_t stride) {
  struct bit_stream s = stream_start(bits, n);
  for (int64_t k = 0; k < n; k++) {
    s.acc |= ((uint64_t)vals[k * vstride] & s.mask) << s.nb;
    s.nb += bits;
    if (s.nb >= 32) {
      words[s.w++ * stride] = (uint32_t)s.acc;
      s.acc >>= 32;
      s.nb -= 32;
    }
  }
}

void hq_pack_stream_decode(int bits, int64_t n, const uint32_t *words, int64_t stride,
                           uint8_t *vals, int64_t vstride) {
  struct bit_stream s = stream_start(bits, n);
  for (int64_t k = 0; k < n; k++) {
    if (s.nb < bits) {
      s.acc |= (uint64_t)words[s.w++ * stride] << s.nb;
      s.nb += 32;
    }
    vals[k * vstride] = (uint8_t)(s.acc & s.mask);
    s.acc >>= bits;
    s.nb -= bits;
  }
}

/* Validate everything before writing anything (so a failed encode leaves no half slab). */
static int check_inputs(const struct hq_packed *p, const uint8_t *codes, const float *zeros,
                        const float *scales, const int32_t *g_idx) {
  const int maxq = (1 << p->bits) - 1;
  const int64_t in = p->in, nr = p->nrows, ng = p->ngroups;
  for (int64_t i = 0; i < in; i++)
    if (g_idx[i] < 0 || g_idx[i] >= ng)
      return hq_fail(HQ_ERR_INPUT, "g_idx[%lld] = %d is outside 0..%lld", (long long)i,
                     (int)g_idx[i], (long long)(ng - 1));
  int64_t bad = -1;
#pragma omp parallel for schedule(static) reduction(max : bad)
  for (int64_t r = 0; r < nr; r++) {
    const uint8_t *c = codes + r * in;
    for (int64_t i = 0; i < in; i++)
      if (c[i] > maxq) bad = bad > r ? bad : r;
  }
  if (bad >= 0) {
    int64_t i = 0;
    while (codes[bad * in + i] <= maxq) i++;
    return hq_fail(HQ_ERR_INPUT, "code %d at row %lld, column %lld exceeds maxq %d of %d bits",
                   (int)codes[bad * in + i], (long long)(p->row0 + bad), (long long)i, maxq,
                   p->bits);
  }
  for (int64_t k = 0; k < nr * ng; k++) {
    float z = zeros[k], s = scales[k];
    long long row = (long long)(p->row0 + k / ng), grp = (long long)(k % ng);
    if (!(z >= 0.0f && z <= (float)maxq) || z != rintf(z))
      return hq_fail(HQ_ERR_INPUT, "zero %g (row %lld, group %lld) is not an integer in 0..%d",
                     (double)z, row, grp, maxq);
    if (z == 0.0f && p->format == HQ_PACK_GPTQ)
      return hq_fail(HQ_ERR_UNSUPPORTED,
                     "zero point 0 (row %lld, group %lld) cannot be stored in the \"gptq\" (v1) "
                     "format, which stores zero-1; write --format gptq_v2, or quantize with "
                     "--sym (symmetric zeros are %d)",
                     row, grp, (maxq + 1) / 2);
    if (!(isfinite(s) && s > 0.0f) || hq_fp16_round(s) != s)
      return hq_fail(HQ_ERR_INPUT,
                     "scale %.9g (row %lld, group %lld) is not a positive fp16 value; scales "
                     "must be rounded to fp16 before quantizing (quant.h hq_scale_fp16)",
                     (double)s, row, grp);
  }
  return HQ_OK;
}

int hq_pack_encode(struct hq_packed *p, const uint8_t *codes, const float *zeros,
                   const float *scales, const int32_t *g_idx) {
  HQ_ASSERT(p && p->qweight && codes && zeros && scales && g_idx);
  HQ_TRY(check_inputs(p, codes, zeros, scales, g_idx));
  const int b = p->bits;
  const int64_t in = p->in, nr = p->nrows, ng = p->ngroups;
  const int64_t zw = nr * b / 32; /* qzeros words per group row */
  const int v1 = p->format == HQ_PACK_GPTQ;
  uint32_t *qw = (uint32_t *)p->qweight, *qz = (uint32_t *)p->qzeros;
  /* qweight: column r of the slab is the stream of row r's codes along the input dim. */
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < nr; r++) hq_pack_stream_encode(b, in, codes + r * in, 1, qw + r, nr);
  /* scales and qzeros: [ngroups x nrows], the zeros packed along the output dim. */
#pragma omp parallel
  {
    uint8_t *zrow = hq_xmalloc((size_t)nr);
#pragma omp for schedule(static)
    for (int64_t g = 0; g < ng; g++) {
      for (int64_t r = 0; r < nr; r++) {
        p->scales[g * nr + r] = hq_f32_to_f16(scales[r * ng + g]);
        zrow[r] = (uint8_t)((int)zeros[r * ng + g] - v1);
      }
      hq_pack_stream_encode(b, nr, zrow, 1, qz + g * zw, 1);
    }
    free(zrow);
  }
  memcpy(p->g_idx, g_idx, (size_t)in * sizeof(int32_t));
  return HQ_OK;
}

int hq_pack_encode_result(struct hq_packed *p, const struct hq_gptq_result *res) {
  if (res->rows != p->nrows || res->cols != p->in || res->ngroups != p->ngroups)
    return hq_fail(HQ_ERR_INPUT,
                   "result is %lld x %lld with %lld groups but the slab is %lld x %lld with "
                   "%lld groups",
                   (long long)res->rows, (long long)res->cols, (long long)res->ngroups,
                   (long long)p->nrows, (long long)p->in, (long long)p->ngroups);
  return hq_pack_encode(p, res->codes, res->zeros, res->scales, res->g_idx);
}

static int check_packed(const struct hq_packed *p) {
  for (int64_t i = 0; i < p->in; i++)
    if (p->g_idx[i] < 0 || p->g_idx[i] >= p->ngroups)
      return hq_fail(HQ_ERR_INPUT, "packed g_idx[%lld] = %d is outside 0..%lld", (long long)i,
                     (int)p->g_idx[i], (long long)(p->ngroups - 1));
  for (int64_t k = 0; k < p->ngroups * p->nrows; k++)
    if ((p->scales[k] & 0x7c00u) == 0x7c00u)
      return hq_fail(HQ_ERR_INPUT, "packed scale 0x%04x (group %lld, row %lld) is Inf/NaN",
                     (unsigned)p->scales[k], (long long)(k / p->nrows),
                     (long long)(p->row0 + k % p->nrows));
  return HQ_OK;
}

/* Actual zeros [ngroups x nrows] (stored + 1 for v1), as float. */
static void decode_zeros(const struct hq_packed *p, float *zg) {
  const int64_t nr = p->nrows, zw = nr * p->bits / 32;
  const float add = p->format == HQ_PACK_GPTQ ? 1.0f : 0.0f;
#pragma omp parallel
  {
    uint8_t *zrow = hq_xmalloc((size_t)nr);
#pragma omp for schedule(static)
    for (int64_t g = 0; g < p->ngroups; g++) {
      hq_pack_stream_decode(p->bits, nr, (const uint32_t *)p->qzeros + g * zw, 1, zrow, 1);
      for (int64_t r = 0; r < nr; r++) zg[g * nr + r] = (float)zrow[r] + add;
    }
    free(zrow);
  }
}

int hq_pack_decode(const struct hq_packed *p, uint8_t *codes, float *zeros, float *scales,
                   int32_t *g_idx) {
  HQ_TRY(check_packed(p));
  const int64_t in = p->in, nr = p->nrows, ng = p->ngroups;
  if (codes) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < nr; r++)
      hq_pack_stream_decode(p->bits, in, (const uint32_t *)p->qweight + r, nr, codes + r * in, 1);
  }
  if (zeros) {
    float *zg = hq_xmalloc((size_t)(ng * nr) * sizeof(float));
    decode_zeros(p, zg);
    for (int64_t g = 0; g < ng; g++)
      for (int64_t r = 0; r < nr; r++) zeros[r * ng + g] = zg[g * nr + r];
    free(zg);
  }
  if (scales)
    for (int64_t g = 0; g < ng; g++)
      for (int64_t r = 0; r < nr; r++) scales[r * ng + g] = hq_f16_to_f32(p->scales[g * nr + r]);
  if (g_idx) memcpy(g_idx, p->g_idx, (size_t)in * sizeof(int32_t));
  return HQ_OK;
}

int hq_pack_dequantize(const struct hq_packed *p, float *W) {
  HQ_TRY(check_packed(p));
  const int64_t in = p->in, nr = p->nrows;
  float *zg = hq_xmalloc((size_t)(p->ngroups * nr) * sizeof(float));
  decode_zeros(p, zg);
#pragma omp parallel
  {
    uint8_t *q = hq_xmalloc((size_t)in);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < nr; r++) {
      hq_pack_stream_decode(p->bits, in, (const uint32_t *)p->qweight + r, nr, q, 1);
      float *w = W + r * in;
      for (int64_t i = 0; i < in; i++) {
        int64_t g = p->g_idx[i];
        w[i] = hq_dequant(q[i], hq_f16_to_f32(p->scales[g * nr + r]), zg[g * nr + r]);
      }
    }
    free(q);
  }
  free(zg);
  return HQ_OK;
}
