/* hpcq eval: perplexity of a Hugging Face model folder on a token file.
 *
 * Protocol: contiguous non-overlapping windows of --seqlen tokens (the remainder is dropped),
 * each window starts at position 0, tokens 1..seqlen-1 of every window are predicted from
 * their prefix; perplexity = exp(mean NLL) over all predicted tokens. The model streams block
 * by block (hq_forward_model_nll): all windows of a batch go through block b before block b+1
 * is loaded, so memory is one block's weights + the batch's activations.
 *
 * Quantized results (hpcq .h5 files) are evaluated through the same model API. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cli.h"
#include "error.h"
#include "forward.h"
#include "h5check.h"
#include "h5io.h"
#include "model.h"
#include "util.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: hpcq eval --model DIR --tokens FILE --seqlen N [options]\n"
          "\n"
          "Perplexity of a Hugging Face Llama-family checkpoint on a token file: contiguous\n"
          "non-overlapping windows of N tokens (remainder dropped), next-token NLL of tokens\n"
          "1..N-1 of every window, perplexity = exp(mean NLL).\n"
          "\n"
          "  --model DIR          model folder (config.json + *.safetensors)\n"
          "  --tokens FILE        raw little-endian int32 token ids (the model's tokenizer)\n"
          "  --seqlen N           window length, 2 <= N <= max_position_embeddings\n"
          "  --max-windows K      evaluate only the first K windows\n"
          "  --batch-windows K    windows whose activations stay resident while the blocks\n"
          "                       stream (default: as many as fit in 1 GiB)\n"
          "  --chunk-tokens T     tokens per block forward call (workspace size, default 4096)\n"
          "  --backend NAME       cpu (default), cuda or auto\n"
          "  --act-bits N         fake-quantize every linear's input per token (dynamic,\n"
          "                       symmetric, N bits: 8 for W?A8, 4 for W?A4; 0: off).\n"
          "                       Default: the act_bits an hpcq .h5 result was quantized\n"
          "                       with, else off\n"
          "  --json               print one JSON object on stdout\n"
          "  --quiet              no progress lines on stderr\n");
}

struct progress {
  double t0, last; /* start, last line printed */
  int quiet;
};

static void on_progress(void *ctx, int64_t done, int64_t total) {
  struct progress *p = ctx;
  if (p->quiet) return;
  const double now = hq_now(), el = now - p->t0;
  if (done < total && now - p->last < 2.0) return; /* a line every 2 s at most, and the last */
  p->last = now;
  char e[32], r[32];
  hq_format_duration(el, e, sizeof e);
  hq_format_duration(done ? el * (double)(total - done) / (double)done : 0, r, sizeof r);
  fprintf(stderr, "[eval] %lld/%lld chunk steps (%.0f%%), %s elapsed, ETA %s\n",
          (long long)done, (long long)total, 100.0 * (double)done / (double)total, e, r);
}

static int fail(void) {
  fprintf(stderr, "hpcq eval: %s\n", hq_last_error());
  return 1;
}

int hq_cli_eval(int argc, char **argv) {
  const char *model = NULL, *tokens = NULL, *backend = "cpu";
  long long seqlen = 0, max_windows = 0, batch_windows = 0, chunk_tokens = 0, act_bits = 0;
  int json = 0, quiet = 0, act_bits_given = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int rc = HQ_OK;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--model")) {
      rc = hq_cli_str(a, v, &model), i++;
    } else if (!strcmp(a, "--tokens")) {
      rc = hq_cli_str(a, v, &tokens), i++;
    } else if (!strcmp(a, "--backend")) {
      rc = hq_cli_str(a, v, &backend), i++;
    } else if (!strcmp(a, "--seqlen")) {
      rc = hq_cli_int(a, v, 2, 1LL << 30, &seqlen), i++;
    } else if (!strcmp(a, "--max-windows")) {
      rc = hq_cli_int(a, v, 1, 1LL << 40, &max_windows), i++;
    } else if (!strcmp(a, "--batch-windows")) {
      rc = hq_cli_int(a, v, 1, 1LL << 40, &batch_windows), i++;
    } else if (!strcmp(a, "--chunk-tokens")) {
      rc = hq_cli_int(a, v, 1, 1LL << 40, &chunk_tokens), i++;
    } else if (!strcmp(a, "--act-bits")) {
      rc = hq_cli_int(a, v, 0, 16, &act_bits), i++;
      if (!rc && act_bits == 1) rc = hq_fail(HQ_ERR_INPUT, "--act-bits must be 0 (off) or 2..16, got 1");
      act_bits_given = 1;
    } else if (!strcmp(a, "--json")) {
      json = 1;
    } else if (!strcmp(a, "--quiet")) {
      quiet = 1;
    } else if (a[0] != '-' && !model) {
      model = a; /* `hpcq eval FILE.h5` / `hpcq eval DIR` */
    } else {
      rc = hq_fail(HQ_ERR_INPUT, "unknown option '%s' (see hpcq eval --help)", a);
    }
    if (rc) {
      fprintf(stderr, "hpcq eval: %s\n", hq_last_error());
      return 2;
    }
  }
  if (!model || !tokens || !seqlen) {
    fprintf(stderr, "hpcq eval: %s is required\n\n",
            !model ? "--model" : !tokens ? "--tokens" : "--seqlen");
    usage(stderr);
    return 2;
  }
  /* An hpcq .h5 result opens through the same model API (model_h5.c): its linears are the
   * dequantized weights scale * (q - zero). */
  const struct hq_backend *be = hq_backend_by_name(backend);
  if (!be) return fail();

  struct hq_model m;
  if (hq_model_open(model, &m) != HQ_OK) {
    const size_t ml = strlen(model);
    const int h5 = ml > 3 && !strcmp(model + ml - 3, ".h5");
    fprintf(stderr, "hpcq eval: cannot open model %s: %s\n  hint: --model takes %s\n", model,
            hq_last_error(), h5 ? "a complete result of hpcq quantize (FILE.h5)"
            : "a Hugging Face model folder with config.json and model.safetensors (or an index)");
    return 1;
  }
  const struct hq_model_config *c = &m.cfg;
  int ret = 1;
  struct hq_tokens tok = {0};
  /* a quantized result is validated whole before anything runs on it (src/io/h5check.h) */
  if (m.h5 && hq_h5_check_model(m.h5, c) != HQ_OK) {
    fprintf(stderr, "hpcq eval: %s: %s\n", model, hq_last_error());
    goto out;
  }
  /* A result quantized for W?A<n> (hpcq quantize --act-bits n) is evaluated that way unless
   * --act-bits says otherwise: the weights were compensated for quantized activations. */
  int64_t file_act_bits = 0;
  if (m.h5 && hq_h5_attr_exists(m.h5, "/", "act_bits") &&
      hq_h5_attr_get_i64(m.h5, "/", "act_bits", &file_act_bits) != HQ_OK) {
    fail();
    goto out;
  }
  if (!act_bits_given && file_act_bits > 0) {
    act_bits = file_act_bits;
    if (!quiet)
      fprintf(stderr, "[eval] %s was quantized with --act-bits %lld: evaluating with "
              "%lld-bit activations (pass --act-bits 0 for unquantized ones)\n", model,
              (long long)file_act_bits, (long long)file_act_bits);
  } else if (act_bits_given && act_bits != file_act_bits && m.h5 && !quiet) {
    fprintf(stderr, "[eval] note: %s was quantized with act_bits %lld; evaluating with "
            "--act-bits %lld as asked\n", model, (long long)file_act_bits, act_bits);
  }
  if (seqlen > c->max_pos) {
    fprintf(stderr, "hpcq eval: --seqlen %lld is longer than the model's "
            "max_position_embeddings (%lld); use --seqlen %lld or less\n", seqlen,
            (long long)c->max_pos, (long long)c->max_pos);
    ret = 2; /* an option the model cannot take: usage */
    goto out;
  }
  if (hq_config_check_seqlen(c, seqlen, "--seqlen") != HQ_OK) {
    fail();
    ret = 2;
    goto out;
  }
  if (hq_tokens_load(tokens, c->vocab, &tok) != HQ_OK) {
    fail();
    goto out;
  }
  int64_t nwin = hq_tokens_nwindows(&tok, seqlen);
  if (nwin < 1) {
    fprintf(stderr, "hpcq eval: %s has %lld tokens, fewer than one window of --seqlen %lld; "
            "use a smaller --seqlen or a longer token file\n", tokens, (long long)tok.n, seqlen);
    goto out;
  }
  const int64_t nwin_all = nwin;
  if (max_windows && max_windows < nwin) nwin = max_windows;

  struct progress pr = {.t0 = hq_now(), .last = hq_now(), .quiet = quiet};
  struct hq_eval_opts o = {.chunk_tokens = chunk_tokens, .batch_windows = batch_windows,
                           .progress = on_progress, .progress_ctx = &pr, .act_bits = (int)act_bits};
  if (!quiet)
    fprintf(stderr, "[eval] %s: %lld windows x %lld tokens (%lld tokens in the file, %lld "
            "windows in all), %lld blocks, backend %s\n", model, (long long)nwin, seqlen,
            (long long)tok.n, (long long)nwin_all, (long long)c->n_layers, be->name);
  double nll = 0;
  if (hq_forward_model_nll(be, &m, tok.ids, nwin, seqlen, &o, &nll, NULL) != HQ_OK) {
    fail();
    goto out;
  }
  const double secs = hq_now() - pr.t0;
  const int64_t npred = nwin * (seqlen - 1);
  const double mean = nll / (double)npred, ppl = exp(mean);
  if (!isfinite(ppl)) {
    fprintf(stderr, "hpcq eval: the perplexity of %s is %s (mean NLL %g over %lld tokens): the "
            "model's logits overflow or are NaN, so there is no perplexity to report\n  hint: "
            "its weights are broken or out of range: for an .h5 result check `hpcq inspect` "
            "(loss ratios, damping) and quantize again, e.g. with more bits, a smaller "
            "--group-size or without --act-bits; for a model folder check the checkpoint\n",
            model, isnan(ppl) ? "NaN" : "infinite", mean, (long long)npred);
    goto out;
  }
  if (json) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model", model);
    cJSON_AddStringToObject(j, "tokens_file", tokens);
    cJSON_AddStringToObject(j, "backend", be->name);
    cJSON_AddNumberToObject(j, "seqlen", (double)seqlen);
    cJSON_AddNumberToObject(j, "windows", (double)nwin);
    cJSON_AddNumberToObject(j, "tokens", (double)npred);
    cJSON_AddNumberToObject(j, "act_bits", (double)act_bits);
    cJSON_AddNumberToObject(j, "nll_mean", mean);
    cJSON_AddNumberToObject(j, "perplexity", ppl);
    cJSON_AddNumberToObject(j, "seconds", secs);
    cJSON_AddNumberToObject(j, "tokens_per_second", (double)(nwin * seqlen) / secs);
    char *s = cJSON_PrintUnformatted(j);
    printf("%s\n", s);
    cJSON_free(s);
    cJSON_Delete(j);
  } else {
    char d[32];
    hq_format_duration(secs, d, sizeof d);
    printf("perplexity %.6f (mean NLL %.6f) over %lld predicted tokens in %lld windows of %lld; "
           "%s (%.0f tokens/s)\n", ppl, mean, (long long)npred, (long long)nwin, seqlen, d,
           (double)(nwin * seqlen) / secs);
  }
  ret = 0;
out:
  hq_tokens_free(&tok);
  hq_model_close(&m);
  return ret;
}
