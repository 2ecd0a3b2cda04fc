/* hpcq export FILE.h5 --format gptq --out DIR: a GPTQ safetensors checkpoint that
 * transformers / vLLM load (src/io/export.h, docs/readme/export.md). Not collective. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "error.h"
#include "export.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: hpcq export FILE.h5 --format gptq --out DIR [options]\n"
          "\n"
          "Write the quantized result FILE.h5 (from hpcq quantize) as a GPTQ safetensors\n"
          "checkpoint: model.safetensors (sharded with model.safetensors.index.json above\n"
          "--max-shard-size), config.json with quantization_config, quantize_config.json and\n"
          "the tokenizer files of the source model folder. Files are written under temporary\n"
          "names and renamed at the end (config.json last).\n"
          "\n"
          "  --format gptq               checkpoint type (only gptq for now)\n"
          "  --checkpoint-format F       zero-point convention: gptq (v1, stores zero-1; what\n"
          "                              most loaders expect, the default) or gptq_v2\n"
          "  --out DIR                   output folder (created when missing)\n"
          "  --max-shard-size S          shard above S bytes of tensors (default 2GB; 500MB,\n"
          "                              4GiB, 123456 ...)\n"
          "  --overwrite                 replace the checkpoint in a non-empty DIR\n"
          "  --json                      print a JSON summary on stdout\n"
          "  --quiet                     no progress lines or warnings\n");
}

static int parse_ckpt_format(const char *opt, const char *v, void *dst) {
  if (!(*(enum hq_pack_format *)dst = hq_pack_format_parse(v)))
    return hq_fail(HQ_ERR_INPUT, "%s must be gptq or gptq_v2 (got '%s')", opt, v);
  return HQ_OK;
}

static int parse_shard_size(const char *opt, const char *v, void *dst) {
  (void)opt; /* the message of hq_export_parse_size names --max-shard-size */
  return hq_export_parse_size(v, (int64_t *)dst);
}

/* The options into o, *json, *format, *out and *in (the one positional argument, FILE.h5).
 * Returns HQ_OK, HQ_CLI_HELP or HQ_ERR_INPUT with a message. */
static int parse(int argc, char **argv, struct hq_export_opts *o, int *json, const char **format,
                 const char **in, const char **out) {
  const struct hq_opt t[] = {
      HQ_ARG_STR("--format", format),
      HQ_ARG_FN("--checkpoint-format", &o->format, parse_ckpt_format),
      HQ_ARG_STR("--out", out),
      HQ_ARG_FN("--max-shard-size", &o->max_shard_bytes, parse_shard_size),
      HQ_ARG_FLAG("--overwrite", &o->overwrite),
      HQ_ARG_FLAG("--json", json),
      HQ_ARG_FLAG("--quiet", &o->quiet),
      HQ_ARG_END};
  int npos = 0;
  const int rc = hq_cli_parse(argc, argv, t, "export", in, 1, &npos);
  if (rc == HQ_CLI_HELP) usage(stdout);
  return rc;
}

/* The one-line summary on stderr. */
static void print_summary(const char *out, const struct hq_export_opts *o,
                          const struct hq_export_stats *st) {
  const double mib = 1.0 / (1024.0 * 1024.0);
  fprintf(stderr,
          "hpcq export: wrote %s: %lld tensors (%lld quantized linears, checkpoint_format %s) "
          "in %d shard%s, %.1f MiB, %d tokenizer file%s; %.2f s, peak memory %.1f MiB\n",
          out, (long long)st->ntensors, (long long)st->nlinears, hq_pack_format_name(o->format),
          st->nshards, st->nshards == 1 ? "" : "s", (double)st->bytes * mib, st->ntokenizer_files,
          st->ntokenizer_files == 1 ? "" : "s", st->seconds, (double)st->peak_rss_kb / 1024.0);
}

/* --json: the same as one JSON object on stdout (cJSON escapes the path). */
static void print_json(const char *out, const struct hq_export_opts *o,
                       const struct hq_export_stats *st) {
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "out", out);
  cJSON_AddStringToObject(j, "checkpoint_format", hq_pack_format_name(o->format));
  cJSON_AddNumberToObject(j, "tensors", (double)st->ntensors);
  cJSON_AddNumberToObject(j, "linears", (double)st->nlinears);
  cJSON_AddNumberToObject(j, "shards", st->nshards);
  cJSON_AddNumberToObject(j, "bytes", (double)st->bytes);
  cJSON_AddNumberToObject(j, "tokenizer_files", st->ntokenizer_files);
  cJSON_AddNumberToObject(j, "seconds", st->seconds);
  cJSON_AddNumberToObject(j, "peak_rss_kb", (double)st->peak_rss_kb);
  char *js = cJSON_PrintUnformatted(j);
  printf("%s\n", js);
  cJSON_free(js);
  cJSON_Delete(j);
}

int hq_cli_export(int argc, char **argv) {
  const char *in = NULL, *out = NULL, *format = NULL;
  struct hq_export_opts o = {.format = HQ_PACK_GPTQ};
  int json = 0;
  int rc = parse(argc, argv, &o, &json, &format, &in, &out);
  if (rc) return hq_cli_args_exit(rc, "export");
  if (!in || !out) {
    fprintf(stderr, "hpcq export: %s is required\n\n", !in ? "the input FILE.h5" : "--out DIR");
    usage(stderr);
    return 2;
  }
  if (format && strcmp(format, "gptq")) {
    fprintf(stderr, "hpcq export: --format %s is not supported; the only format is gptq "
            "(choose the zero-point convention with --checkpoint-format gptq|gptq_v2)\n", format);
    return 2;
  }
  struct hq_export_stats st;
  if (hq_export_gptq(in, out, &o, &st)) {
    fprintf(stderr, "hpcq export: %s\n", hq_last_error());
    return 1;
  }
  if (!o.quiet) print_summary(out, &o, &st);
  if (json) print_json(out, &o, &st);
  return 0;
}
