/* Activation quantization (src/quant/actquant.c, the forward's act_bits):
 *  1. hq_act_quant_rows against a plain per-token reference written here (absmax / (2^(b-1)-1),
 *     round half to even, clamp to [-2^(b-1), 2^(b-1)-1]) on rows with outliers, an all-zero
 *     row and a single-element row, at 8, 4 and 3 bits: bit-identical; every value on its
 *     row's grid; the error at most half a step.
 *  2. The forward applies it to the inputs of all four linear groups: on llama-sotu-5m block 0
 *     the captured q/k/v input with act_bits 8 equals the reference applied to the captured
 *     input without act quantization; the o, gate/up and down inputs with act_bits 4 lie on
 *     their rows' 4-bit grids (and not without it).
 *  3. Perplexity through hq_forward_model_nll (4 windows x 128 of WikiText-2): A8 within 1 %
 *     of full precision, A4 clearly worse than A8; act_bits 1 is refused. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actquant.h"
#include "backend.h"
#include "error.h"
#include "forward.h"
#include "model.h"
#include "testutil.h"

static void ref_quant(const float *x, float *y, int64_t rows, int64_t cols, int bits) {
  const int qmax = (1 << (bits - 1)) - 1, qmin = -(1 << (bits - 1));
  for (int64_t r = 0; r < rows; r++) {
    float m = 0;
    for (int64_t j = 0; j < cols; j++) m = fmaxf(m, fabsf(x[r * cols + j]));
    for (int64_t j = 0; j < cols; j++) {
      if (m == 0.0f) {
        y[r * cols + j] = x[r * cols + j];
        continue;
      }
      float s = m / (float)qmax;
      float q = rintf(x[r * cols + j] / s);
      if (q < (float)qmin) q = (float)qmin;
      if (q > (float)qmax) q = (float)qmax;
      y[r * cols + j] = q * s;
    }
  }
}

/* fraction of rows not on their own per-token grid of `bits` */
static double off_grid(const float *X, int64_t rows, int64_t cols, int bits) {
  const float qmax = (float)((1 << (bits - 1)) - 1);
  int64_t bad = 0;
  for (int64_t r = 0; r < rows; r++) {
    float m = 0;
    for (int64_t j = 0; j < cols; j++) m = fmaxf(m, fabsf(X[r * cols + j]));
    if (m == 0.0f) continue;
    const float s = m / qmax;
    int ok = 1;
    for (int64_t j = 0; j < cols && ok; j++) {
      const float k = X[r * cols + j] / s;
      ok = fabsf(k - rintf(k)) < 1e-3f && fabsf(k) <= qmax + 1e-3f;
    }
    bad += !ok;
  }
  return (double)bad / (double)rows;
}

static void test_rows(void) {
  const int64_t rows = 9, cols = 301;
  float *x = malloc(rows * cols * sizeof(float)), *y = malloc(rows * cols * sizeof(float)),
        *z = malloc(rows * cols * sizeof(float));
  const int bl[3] = {8, 4, 3};
  for (int b = 0; b < 3; b++) {
    hq_t_randn(x, rows * cols, 11 + b, 1.0f);
    for (int64_t k = 0; k < rows * cols; k += 53) x[k] *= 40.0f; /* channel outliers */
    for (int64_t j = 0; j < cols; j++) x[3 * cols + j] = 0.0f;     /* all-zero token */
    memcpy(y, x, rows * cols * sizeof(float));
    hq_act_quant_rows(y, rows, cols, bl[b]);
    ref_quant(x, z, rows, cols, bl[b]);
    int64_t diff = 0;
    double worst = 0;
    for (int64_t r = 0; r < rows; r++) {
      float m = 0;
      for (int64_t j = 0; j < cols; j++) m = fmaxf(m, fabsf(x[r * cols + j]));
      const double step = m / ((1 << (bl[b] - 1)) - 1);
      for (int64_t j = 0; j < cols; j++) {
        diff += y[r * cols + j] != z[r * cols + j];
        if (step > 0) worst = fmax(worst, fabs((double)y[r * cols + j] - x[r * cols + j]) / step);
      }
    }
    CHECK(diff == 0, "A%d: %lld values differ from the reference", bl[b], (long long)diff);
    CHECK(worst <= 0.5 + 1e-5, "A%d: error %.4f steps > half a step", bl[b], worst);
    CHECK(off_grid(y, rows, cols, bl[b]) == 0.0, "A%d: rows off their grid", bl[b]);
    CHECK(off_grid(x, rows, cols, bl[b]) > 0.5, "A%d: the input already on the grid (test proves nothing)", bl[b]);
  }
  float one = -3.0f;
  hq_act_quant_rows(&one, 1, 1, 4);
  CHECK(one == -3.0f, "single value -3 -> %g", (double)one);
  free(x);
  free(y);
  free(z);
}

/* capture hook: copy the input of group `want` (and stop) */
struct grab {
  enum hq_group want;
  float *X;
  int64_t ntok, cols;
};
static int cap_grab(void *ctx, enum hq_group g, const float *X, int64_t ntok, int64_t cols) {
  struct grab *gr = ctx;
  if (g != gr->want) return 0;
  gr->X = malloc((size_t)(ntok * cols) * sizeof(float));
  memcpy(gr->X, X, (size_t)(ntok * cols) * sizeof(float));
  gr->ntok = ntok;
  gr->cols = cols;
  return 1;
}

static void test_forward(const struct hq_model *m, const struct hq_tokens *tok) {
  const struct hq_backend *be = hq_backend_cpu();
  const struct hq_model_config *c = &m->cfg;
  const int64_t nseq = 2, seq = 64, ntok = nseq * seq, H = c->hidden;
  struct hq_rope_table rope;
  HQ_ASSERT(hq_rope_table_init(&rope, be, c, seq) == HQ_OK);
  struct hq_fwd_ws *ws = hq_fwd_ws_new(be, c, ntok);
  float *embed = NULL, *x = malloc((size_t)(ntok * H) * sizeof(float));
  int64_t n;
  HQ_ASSERT(hq_model_load_f32(m, "model.embed_tokens.weight", &embed, &n) == HQ_OK);
  struct hq_block_weights w;
  HQ_ASSERT(hq_model_load_block(m, 0, &w) == HQ_OK);
  struct hq_block_dev d;
  HQ_ASSERT(hq_block_dev_upload(be, c, &w, &d) == HQ_OK);
  for (int g = 0; g < HQ_GROUP_COUNT; g++) {
    struct grab plain = {(enum hq_group)g, NULL, 0, 0}, q = plain;
    const int bits = g == HQ_GROUP_QKV ? 8 : 4;
    hq_forward_embed(be, c, embed, tok->ids, ntok, x);
    CHECK(hq_fwd_ws_set_act_bits(ws, 0) == HQ_OK, "set 0");
    hq_forward_block(be, c, &d, &rope, ws, nseq, seq, x, cap_grab, &plain);
    CHECK(hq_fwd_ws_set_act_bits(ws, bits) == HQ_OK, "set %d", bits);
    hq_forward_block(be, c, &d, &rope, ws, nseq, seq, x, cap_grab, &q);
    const int64_t cols = q.cols;
    if (g == HQ_GROUP_QKV) {
      float *r = malloc((size_t)(ntok * cols) * sizeof(float));
      ref_quant(plain.X, r, ntok, cols, 8);
      int64_t diff = 0;
      for (int64_t k = 0; k < ntok * cols; k++) diff += r[k] != q.X[k];
      CHECK(diff == 0, "q/k/v input with A8: %lld values differ from the reference", (long long)diff);
      free(r);
    }
    CHECK(off_grid(q.X, ntok, cols, bits) == 0.0, "group %d input with A%d: %.0f%% of tokens off the grid", g,
          bits, 100 * off_grid(q.X, ntok, cols, bits));
    CHECK(off_grid(plain.X, ntok, cols, bits) > 0.5, "group %d input without act quantization is on the grid", g);
    free(plain.X);
    free(q.X);
  }
  CHECK(hq_fwd_ws_set_act_bits(ws, 1) == HQ_ERR_INPUT, "act_bits 1 accepted");
  hq_block_dev_free(be, &d);
  hq_block_weights_free(&w);
  free(embed);
  free(x);
  hq_fwd_ws_free(ws);
  hq_rope_table_free(&rope, be);
}

static void test_ppl(const struct hq_model *m, const struct hq_tokens *tok) {
  const struct hq_backend *be = hq_backend_cpu();
  double ppl[3];
  const int bits[3] = {0, 8, 4};
  for (int i = 0; i < 3; i++) {
    struct hq_eval_opts o = {0};
    o.act_bits = bits[i];
    double nll = 0;
    int rc = hq_forward_model_nll(be, m, tok->ids, 4, 128, &o, &nll, NULL);
    CHECK(rc == HQ_OK, "nll A%d: %s", bits[i], hq_last_error());
    ppl[i] = exp(nll / (4.0 * 127.0));
  }
  printf("perplexity (4 x 128 tokens): FP %.3f, A8 %.3f, A4 %.3f\n", ppl[0], ppl[1], ppl[2]);
  CHECK(fabs(ppl[1] - ppl[0]) <= 0.01 * ppl[0], "A8 %.3f not within 1%% of FP %.3f", ppl[1], ppl[0]);
  CHECK(ppl[2] > ppl[1] * 1.01, "A4 %.3f not clearly worse than A8 %.3f", ppl[2], ppl[1]);
  struct hq_eval_opts bad = {0};
  bad.act_bits = 1;
  double nll;
  CHECK(hq_forward_model_nll(be, m, tok->ids, 1, 16, &bad, &nll, NULL) == HQ_ERR_INPUT, "act_bits 1 accepted by eval");
}

int main(void) {
  test_rows();
  struct hq_model m;
  int rc = hq_model_open(hq_t_data("llama-sotu-5m"), &m);
  CHECK(rc == HQ_OK, "open: %s", hq_last_error());
  if (!rc) {
    struct hq_tokens tok;
    rc = hq_tokens_load(hq_t_data("llama-sotu-5m/wikitext2-test.i32"), m.cfg.vocab, &tok);
    CHECK(rc == HQ_OK, "tokens");
    if (!rc) {
      test_forward(&m, &tok);
      test_ppl(&m, &tok);
      hq_tokens_free(&tok);
    }
    hq_model_close(&m);
  }
  return hq_t_done("test_actquant");
}
