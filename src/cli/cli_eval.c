/* hpcq eval: perplexity of a Hugging Face model folder on a token file.
 *
 * Protocol: contiguous non-overlapping windows of --seqlen tokens (the remainder is dropped),
 * each window starts at position 0, tokens 1..seqlen-1 of every window are predicted from
 * their prefix; perplexity = exp(mean NLL) over all predicted tokens. The model runs block
 * by block (hq_forward_model_nll): all windows of a batch go through block b before block
 * b+1; with several batches the loaded blocks are kept for the later batches when their f32
 * weights fit --keep-weights-mib, else every batch streams them again (one stderr line says
 * which).
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
          "  --batch-windows K    windows whose activations stay resident while they go\n"
          "                       through the blocks (default: as many as fit in 1 GiB;\n"
          "                       at least one --chunk-tokens chunk of windows);\n"
          "                       with several batches each block is loaded once when\n"
          "                       --keep-weights-mib allows, else once per batch\n"
          "  --keep-weights-mib M keep the blocks' (and an untied lm_head's) f32 weights\n"
          "                       loaded across batches when they take at most M MiB\n"
          "                       (default 4096; 0: load the blocks again for every batch)\n"
          "  --chunk-tokens T     tokens per block forward call (workspace size, default 4096)\n"
          "  --backend NAME       cpu (default), cuda or auto\n"
          "  --act-bits N         fake-quantize every linear's input per token (dynamic,\n"
          "                       symmetric, N bits: 8 for W?A8, 4 for W?A4; 0: off).\n"
          "                       Default: the act_bits an hpcq .h5 result was quantized\n"
          "                       with, else off\n"
          "  --json               print one JSON object on stdout (with batches and\n"
          "                       block_loads: how often the blocks were read)\n"
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

struct eval_args {
  const char *model, *tokens, *backend;
  int64_t seqlen, max_windows, batch_windows, chunk_tokens;
  int64_t keep_mib; /* --keep-weights-mib, -1 when not given */
  int act_bits, act_bits_given, json, quiet;
};

static int parse_act_bits(const char *opt, const char *v, void *dst) {
  long long b = 0;
  HQ_TRY(hq_cli_int(opt, v, 0, 16, &b));
  if (b == 1) return hq_fail(HQ_ERR_INPUT, "--act-bits must be 0 (off) or 2..16, got 1");
  *(int *)dst = (int)b;
  return HQ_OK;
}

/* The options into a: HQ_OK, HQ_CLI_HELP or HQ_ERR_INPUT. `hpcq eval FILE.h5` / `hpcq eval
 * DIR`: one argument that is not an option is the model (unless --model is given). */
static int parse(int argc, char **argv, struct eval_args *a) {
  const struct hq_opt t[] = {
      HQ_ARG_STR("--model", &a->model),
      HQ_ARG_STR("--tokens", &a->tokens),
      HQ_ARG_STR("--backend", &a->backend),
      HQ_ARG_I64("--seqlen", &a->seqlen, 2, 1LL << 30),
      HQ_ARG_I64("--max-windows", &a->max_windows, 1, 1LL << 40),
      HQ_ARG_I64("--batch-windows", &a->batch_windows, 1, 1LL << 40),
      HQ_ARG_I64("--chunk-tokens", &a->chunk_tokens, 1, 1LL << 40),
      HQ_ARG_I64("--keep-weights-mib", &a->keep_mib, 0, 1LL << 40),
      {.name = "--act-bits", .kind = HQ_OPT_FN, .dst = &a->act_bits, .fn = parse_act_bits,
       .given = &a->act_bits_given},
      HQ_ARG_FLAG("--json", &a->json),
      HQ_ARG_FLAG("--quiet", &a->quiet),
      HQ_ARG_END};
  const char *pos[8] = {NULL};
  int npos = 0;
  const int rc = hq_cli_parse(argc, argv, t, "eval", pos, 8, &npos);
  if (rc == HQ_CLI_HELP) usage(stdout);
  if (rc) return rc;
  /* the first argument that cannot be the model: after --model or a first one, or "-" */
  const int bad = npos && (a->model || !strcmp(pos[0], "-")) ? 0 : 1;
  if (npos > bad)
    return hq_fail(HQ_ERR_INPUT, "unknown option '%s' (see hpcq eval --help)", pos[bad]);
  if (npos) a->model = pos[0];
  return HQ_OK;
}

/* Opens a->model (a folder or an hpcq .h5 result, checked whole): 0, or 1 after a message. */
static int open_model(const struct eval_args *a, struct hq_model *m) {
  if (hq_model_open(a->model, m) != HQ_OK) {
    const size_t ml = strlen(a->model);
    const int h5 = ml > 3 && !strcmp(a->model + ml - 3, ".h5");
    fprintf(stderr, "hpcq eval: cannot open model %s: %s\n  hint: --model takes %s\n", a->model,
            hq_last_error(), h5 ? "a complete result of hpcq quantize (FILE.h5)"
            : "a Hugging Face model folder with config.json and model.safetensors (or an index)");
    return 1;
  }
  /* a quantized result is validated whole before anything runs on it (src/io/h5check.h) */
  if (m->h5 && hq_h5_check_model(m->h5, &m->cfg) != HQ_OK) {
    fprintf(stderr, "hpcq eval: %s: %s\n", a->model, hq_last_error());
    hq_model_close(m);
    return 1;
  }
  return 0;
}

/* A result quantized for W?A<n> (hpcq quantize --act-bits n) is evaluated that way unless
 * --act-bits says otherwise: the weights were compensated for quantized activations.
 * Sets a->act_bits; 0, or 1 after a message. */
static int resolve_act_bits(struct eval_args *a, const struct hq_model *m) {
  int64_t file_bits = 0;
  if (m->h5 && hq_h5_attr_exists(m->h5, "/", "act_bits") &&
      hq_h5_attr_get_i64(m->h5, "/", "act_bits", &file_bits) != HQ_OK)
    return fail();
  if (!a->act_bits_given && file_bits > 0) {
    a->act_bits = (int)file_bits;
    if (!a->quiet)
      fprintf(stderr, "[eval] %s was quantized with --act-bits %lld: evaluating with "
              "%lld-bit activations (pass --act-bits 0 for unquantized ones)\n", a->model,
              (long long)file_bits, (long long)file_bits);
  } else if (a->act_bits_given && a->act_bits != file_bits && m->h5 && !a->quiet) {
    fprintf(stderr, "[eval] note: %s was quantized with act_bits %lld; evaluating with "
            "--act-bits %d as asked\n", a->model, (long long)file_bits, a->act_bits);
  }
  return 0;
}

/* --seqlen against the model: 0, or 2 (usage) after a message. */
static int check_seqlen(const struct eval_args *a, const struct hq_model_config *c) {
  if (a->seqlen > c->max_pos) {
    fprintf(stderr, "hpcq eval: --seqlen %lld is longer than the model's "
            "max_position_embeddings (%lld); use --seqlen %lld or less\n", (long long)a->seqlen,
            (long long)c->max_pos, (long long)c->max_pos);
    return 2;
  }
  if (hq_config_check_seqlen(c, a->seqlen, "--seqlen") != HQ_OK) {
    fail();
    return 2; /* an option the model cannot take: usage */
  }
  return 0;
}

/* The token file and its windows: *nwin_all in the file, *nwin evaluated (--max-windows).
 * 0, or 1 after a message. */
static int load_windows(const struct eval_args *a, const struct hq_model_config *c,
                        struct hq_tokens *tok, int64_t *nwin, int64_t *nwin_all) {
  if (hq_tokens_load(a->tokens, c->vocab, tok) != HQ_OK) return fail();
  *nwin_all = *nwin = hq_tokens_nwindows(tok, a->seqlen);
  if (*nwin < 1) {
    fprintf(stderr, "hpcq eval: %s has %lld tokens, fewer than one window of --seqlen %lld; "
            "use a smaller --seqlen or a longer token file\n", a->tokens, (long long)tok->n,
            (long long)a->seqlen);
    return 1;
  }
  if (a->max_windows && a->max_windows < *nwin) *nwin = a->max_windows;
  return 0;
}

/* One line on stderr when there are several batches: blocks kept, or streamed per batch. */
static void report_plan(const struct hq_eval_plan *p, const struct hq_model_config *c) {
  if (p->batches < 2) return;
  const double mib = (double)p->weight_bytes / 1048576.0;
  if (p->keep)
    fprintf(stderr, "[eval] %lld batches of %lld windows: each block is loaded once and kept "
            "(%.1f MiB of f32 weights, --keep-weights-mib %lld)\n", (long long)p->batches,
            (long long)p->batch_windows, mib, (long long)(p->keep_budget >> 20));
  else
    fprintf(stderr, "[eval] %lld batches of %lld windows: the blocks' f32 weights (%.1f MiB) "
            "exceed --keep-weights-mib %lld, so they stream again for every batch (%lld block "
            "loads); raise --keep-weights-mib or --batch-windows to load each block once\n",
            (long long)p->batches, (long long)p->batch_windows, mib,
            (long long)(p->keep_budget > 0 ? p->keep_budget >> 20 : 0),
            (long long)(p->batches * c->n_layers));
}

/* What one evaluation measured, for the report. */
struct eval_result {
  int64_t nwin, npred;
  double mean, ppl, secs;
  struct hq_eval_stats st;
};

static void report_json(const struct eval_args *a, const struct hq_backend *be,
                        const struct eval_result *r) {
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "model", a->model);
  cJSON_AddStringToObject(j, "tokens_file", a->tokens);
  cJSON_AddStringToObject(j, "backend", be->name);
  cJSON_AddNumberToObject(j, "seqlen", (double)a->seqlen);
  cJSON_AddNumberToObject(j, "windows", (double)r->nwin);
  cJSON_AddNumberToObject(j, "tokens", (double)r->npred);
  cJSON_AddNumberToObject(j, "act_bits", (double)a->act_bits);
  cJSON_AddNumberToObject(j, "nll_mean", r->mean);
  cJSON_AddNumberToObject(j, "perplexity", r->ppl);
  cJSON_AddNumberToObject(j, "seconds", r->secs);
  cJSON_AddNumberToObject(j, "tokens_per_second", (double)(r->nwin * a->seqlen) / r->secs);
  cJSON_AddNumberToObject(j, "batches", (double)r->st.plan.batches);
  cJSON_AddBoolToObject(j, "blocks_kept", r->st.plan.keep);
  cJSON_AddNumberToObject(j, "block_loads", (double)r->st.block_loads);
  char *s = cJSON_PrintUnformatted(j);
  printf("%s\n", s);
  cJSON_free(s);
  cJSON_Delete(j);
}

static void report_text(const struct eval_args *a, const struct eval_result *r) {
  char d[32];
  hq_format_duration(r->secs, d, sizeof d);
  printf("perplexity %.6f (mean NLL %.6f) over %lld predicted tokens in %lld windows of %lld; "
         "%s (%.0f tokens/s)\n", r->ppl, r->mean, (long long)r->npred, (long long)r->nwin,
         (long long)a->seqlen, d, (double)(r->nwin * a->seqlen) / r->secs);
}

/* The perplexity of nwin windows of tok into r: 0, or 1 after a message. */
static int run_eval(const struct eval_args *a, const struct hq_backend *be,
                    const struct hq_model *m, const struct hq_tokens *tok, struct eval_result *r) {
  struct progress pr = {.t0 = hq_now(), .last = hq_now(), .quiet = a->quiet};
  /* keep_mib -1: not given (the default budget); 0: never keep */
  const int64_t keep = a->keep_mib < 0 ? 0 : a->keep_mib ? a->keep_mib << 20 : -1;
  struct hq_eval_opts o = {.chunk_tokens = a->chunk_tokens, .batch_windows = a->batch_windows,
                           .keep_bytes = keep, .progress = on_progress,
                           .progress_ctx = &pr, .act_bits = a->act_bits, .stats = &r->st};
  struct hq_eval_plan plan;
  if (hq_forward_model_plan(&m->cfg, r->nwin, a->seqlen, &o, &plan) != HQ_OK) return fail();
  if (!a->quiet) report_plan(&plan, &m->cfg);
  double nll = 0;
  if (hq_forward_model_nll(be, m, tok->ids, r->nwin, a->seqlen, &o, &nll, NULL) != HQ_OK)
    return fail();
  r->secs = hq_now() - pr.t0;
  r->npred = r->nwin * (a->seqlen - 1);
  r->mean = nll / (double)r->npred;
  r->ppl = exp(r->mean);
  if (isfinite(r->ppl)) return 0;
  fprintf(stderr, "hpcq eval: the perplexity of %s is %s (mean NLL %g over %lld tokens): the "
          "model's logits overflow or are NaN, so there is no perplexity to report\n  hint: "
          "its weights are broken or out of range: for an .h5 result check `hpcq inspect` "
          "(loss ratios, damping) and quantize again, e.g. with more bits, a smaller "
          "--group-size or without --act-bits; for a model folder check the checkpoint\n",
          a->model, isnan(r->ppl) ? "NaN" : "infinite", r->mean, (long long)r->npred);
  return 1;
}

/* Everything after the options: model, act_bits, seqlen, windows, forward, report. */
static int eval_model(struct eval_args *a, const struct hq_backend *be) {
  struct hq_model m;
  if (open_model(a, &m)) return 1;
  const struct hq_model_config *c = &m.cfg;
  struct hq_tokens tok = {0};
  struct eval_result r = {0};
  int64_t nwin_all = 0;
  int ret = resolve_act_bits(a, &m);
  if (!ret) ret = check_seqlen(a, c);
  if (!ret) ret = load_windows(a, c, &tok, &r.nwin, &nwin_all);
  if (!ret && !a->quiet)
    fprintf(stderr, "[eval] %s: %lld windows x %lld tokens (%lld tokens in the file, %lld "
            "windows in all), %lld blocks, backend %s\n", a->model, (long long)r.nwin,
            (long long)a->seqlen, (long long)tok.n, (long long)nwin_all,
            (long long)c->n_layers, be->name);
  if (!ret) ret = run_eval(a, be, &m, &tok, &r);
  if (!ret && a->json) report_json(a, be, &r);
  else if (!ret) report_text(a, &r);
  hq_tokens_free(&tok);
  hq_model_close(&m);
  return ret;
}

int hq_cli_eval(int argc, char **argv) {
  struct eval_args a = {.backend = "cpu", .keep_mib = -1};
  const int rc = parse(argc, argv, &a);
  if (rc) return hq_cli_args_exit(rc, "eval");
  if (!a.model || !a.tokens || !a.seqlen) {
    fprintf(stderr, "hpcq eval: %s is required\n\n",
            !a.model ? "--model" : !a.tokens ? "--tokens" : "--seqlen");
    usage(stderr);
    return 2;
  }
  /* An hpcq .h5 result opens through the same model API (model_h5.c): its linears are the
   * dequantized weights scale * (q - zero). */
  const struct hq_backend *be = hq_backend_by_name(a.backend);
  if (!be) return fail();
  return eval_model(&a, be);
}
