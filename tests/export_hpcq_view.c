/* export_hpcq_view MODEL.h5 TOKENS.i32 NWIN SEQLEN OUT.safetensors
 *
 * Test helper of tests/test_export.sh: hpcq's view of a quantized result, written as
 * safetensors for tools/gptq_reference_loader.py:
 *   <prefix>.weight  F32 [out, in]   every quantized linear as `hpcq eval` sees it
 *                                    (hq_model_load_f32 on the .h5 model: scale * (q - zero))
 *   ids              I32 [NWIN, SEQLEN]  the first NWIN windows of TOKENS
 *   logits           F32 [NWIN*SEQLEN, vocab]  hpcq's forward of the .h5 model (CPU backend)
 *   nll_sum          F32 [1]             summed next-token NLL of those windows */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "export.h"
#include "forward.h"
#include "h5io.h"
#include "model.h"

static int die(const char *what) {
  fprintf(stderr, "export_hpcq_view: %s: %s\n", what, hq_last_error());
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: export_hpcq_view MODEL.h5 TOKENS.i32 NWIN SEQLEN OUT.safetensors\n");
    return 2;
  }
  const int64_t nwin = atoll(argv[3]), seqlen = atoll(argv[4]);
  struct hq_model m;
  if (hq_model_open(argv[1], &m)) return die("open model");
  if (!m.h5) {
    fprintf(stderr, "export_hpcq_view: %s is not an .h5 result\n", argv[1]);
    return 2;
  }
  char **lin = NULL;
  int64_t nlin = 0;
  if (hq_h5_list_linears(m.h5, &lin, &nlin)) return die("list linears");
  struct hq_tokens tok;
  if (hq_tokens_load(argv[2], m.cfg.vocab, &tok)) return die("tokens");
  if (tok.n < nwin * seqlen) {
    fprintf(stderr, "export_hpcq_view: too few tokens\n");
    return 2;
  }
  const int64_t V = m.cfg.vocab;
  float *logits = malloc((size_t)(nwin * seqlen * V) * sizeof(float));
  double nll = 0;
  struct hq_eval_opts eo;
  memset(&eo, 0, sizeof eo);
  const struct hq_backend *be = hq_backend_by_name("cpu");
  if (!be || hq_forward_model_nll(be, &m, tok.ids, nwin, seqlen, &eo, &nll, logits))
    return die("forward");
  float nllf = (float)nll;

  const int64_t n = nlin + 3;
  struct hq_stw_entry *e = calloc((size_t)n, sizeof *e);
  char **names = calloc((size_t)nlin, sizeof *names);
  for (int64_t i = 0; i < nlin; i++) {
    struct hq_h5_linear_desc d;
    if (hq_h5_linear_info(m.h5, lin[i], &d)) return die("linear info");
    names[i] = malloc(strlen(lin[i]) + 8);
    sprintf(names[i], "%s.weight", lin[i]);
    e[i] = (struct hq_stw_entry){.name = names[i], .dtype = "F32", .ndim = 2,
                                 .shape = {d.rows, d.cols},
                                 .nbytes = (size_t)(d.rows * d.cols) * 4};
  }
  e[nlin] = (struct hq_stw_entry){.name = "ids", .dtype = "I32", .ndim = 2,
                                  .shape = {nwin, seqlen}, .nbytes = (size_t)(nwin * seqlen) * 4};
  e[nlin + 1] = (struct hq_stw_entry){.name = "logits", .dtype = "F32", .ndim = 2,
                                      .shape = {nwin * seqlen, V},
                                      .nbytes = (size_t)(nwin * seqlen * V) * 4};
  e[nlin + 2] = (struct hq_stw_entry){.name = "nll_sum", .dtype = "F32", .ndim = 1,
                                      .shape = {1}, .nbytes = 4};
  struct hq_stw *w = NULL;
  if (hq_stw_open(argv[5], e, n, &w)) return die("create output");
  for (int64_t i = 0; i < nlin; i++) {
    float *W = NULL;
    int64_t ne = 0;
    if (hq_model_load_f32(&m, names[i], &W, &ne)) return die(names[i]);
    if ((size_t)ne * 4 != e[i].nbytes) {
      fprintf(stderr, "export_hpcq_view: %s has %lld elements\n", names[i], (long long)ne);
      return 1;
    }
    if (hq_stw_write(w, W, e[i].nbytes)) return die("write");
    free(W);
  }
  if (hq_stw_write(w, tok.ids, e[nlin].nbytes) || hq_stw_write(w, logits, e[nlin + 1].nbytes) ||
      hq_stw_write(w, &nllf, 4) || hq_stw_close(w))
    return die("write");
  printf("%.9g\n", nll);
  for (int64_t i = 0; i < nlin; i++) free(names[i]);
  free(names);
  free(e);
  free(logits);
  hq_h5_names_free(lin, nlin);
  hq_tokens_free(&tok);
  hq_model_close(&m);
  return 0;
}
