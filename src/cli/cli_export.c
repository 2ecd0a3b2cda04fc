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

int hq_cli_export(int argc, char **argv) {
  const char *in = NULL, *out = NULL, *format = NULL;
  struct hq_export_opts o = {.format = HQ_PACK_GPTQ};
  int json = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int rc = HQ_OK;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--format")) {
      rc = hq_cli_str(a, v, &format), i++;
    } else if (!strcmp(a, "--checkpoint-format")) {
      if (!v) rc = hq_fail(HQ_ERR_INPUT, "--checkpoint-format needs a value");
      else if (!(o.format = hq_pack_format_parse(v)))
        rc = hq_fail(HQ_ERR_INPUT, "--checkpoint-format must be gptq or gptq_v2 (got '%s')", v);
      i++;
    } else if (!strcmp(a, "--out")) {
      rc = hq_cli_str(a, v, &out), i++;
    } else if (!strcmp(a, "--max-shard-size")) {
      rc = hq_export_parse_size(v, &o.max_shard_bytes), i++;
    } else if (!strcmp(a, "--overwrite")) {
      o.overwrite = 1;
    } else if (!strcmp(a, "--json")) {
      json = 1;
    } else if (!strcmp(a, "--quiet")) {
      o.quiet = 1;
    } else if (a[0] != '-' && !in) {
      in = a;
    } else {
      rc = hq_fail(HQ_ERR_INPUT, "unknown option '%s' (see hpcq export --help)", a);
    }
    if (rc) {
      fprintf(stderr, "hpcq export: %s\n", hq_last_error());
      return 2;
    }
  }
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
  int rc = hq_export_gptq(in, out, &o, &st);
  if (rc) {
    fprintf(stderr, "hpcq export: %s\n", hq_last_error());
    return 1;
  }
  const double mib = 1.0 / (1024.0 * 1024.0);
  if (!o.quiet)
    fprintf(stderr,
            "hpcq export: wrote %s: %lld tensors (%lld quantized linears, checkpoint_format %s) "
            "in %d shard%s, %.1f MiB, %d tokenizer file%s; %.2f s, peak memory %.1f MiB\n",
            out, (long long)st.ntensors, (long long)st.nlinears, hq_pack_format_name(o.format),
            st.nshards, st.nshards == 1 ? "" : "s", (double)st.bytes * mib, st.ntokenizer_files,
            st.ntokenizer_files == 1 ? "" : "s", st.seconds, (double)st.peak_rss_kb / 1024.0);
  if (json) { /* cJSON escapes the path */
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "out", out);
    cJSON_AddStringToObject(j, "checkpoint_format", hq_pack_format_name(o.format));
    cJSON_AddNumberToObject(j, "tensors", (double)st.ntensors);
    cJSON_AddNumberToObject(j, "linears", (double)st.nlinears);
    cJSON_AddNumberToObject(j, "shards", st.nshards);
    cJSON_AddNumberToObject(j, "bytes", (double)st.bytes);
    cJSON_AddNumberToObject(j, "tokenizer_files", st.ntokenizer_files);
    cJSON_AddNumberToObject(j, "seconds", st.seconds);
    cJSON_AddNumberToObject(j, "peak_rss_kb", (double)st.peak_rss_kb);
    char *js = cJSON_PrintUnformatted(j);
    printf("%s\n", js);
    cJSON_free(js);
    cJSON_Delete(j);
  }
  return 0;
}
