/* hpcq command-line entry point: dispatches to the subcommands of src/cli/cli_*.c. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "error.h"
#include "h5io.h"
#include "pipeline.h"

struct hq_cmd {
  const char *name;
  int (*fn)(int, char **);
  const char *help;
};

static const struct hq_cmd hq_cmds[] = {
    {"quantize", hq_cli_quantize, "quantize a Hugging Face model (GPTQ/RTN/...), MPI-distributed"},
    {"eval", hq_cli_eval, "perplexity of a model folder or an hpcq .h5 result"},
    {"inspect", hq_cli_inspect, "per-layer statistics of an hpcq .h5 result"},
    {"export", hq_cli_export, "write a GPTQ safetensors checkpoint from an .h5 result"},
    {"compare", hq_cli_compare, "compare two .h5 results (identical codes, proxy losses)"},
    {"layer", hq_cli_layer, "quantize one real layer of a model, print GPTQ vs RTN"},
};

static void usage(FILE *f) {
  fprintf(f, "hpcq %s — MPI-distributed post-training quantizer\n\nusage: hpcq <command> [options]\n\n",
          HQ_VERSION);
  for (size_t i = 0; i < sizeof hq_cmds / sizeof hq_cmds[0]; i++)
    fprintf(f, "  %-9s %s\n", hq_cmds[i].name, hq_cmds[i].help);
  fprintf(f, "\n`hpcq <command> --help` shows the options of a command.\n");
}

int main(int argc, char **argv) {
  /* First thing: a SIGTERM/SIGINT that arrives while MPI starts or the model opens must stop the
   * run at the next block boundary (exit 75), not kill it (status 143) */
  if (argc >= 2 && !strcmp(argv[1], "quantize")) hq_pipeline_install_signals();
  /* A fixed mmap threshold: buffers >= 1 MiB (block weights, Hessians) go back to the OS when
   * freed, so the peak RSS does not creep up block after block (glibc would otherwise raise
   * the threshold dynamically and keep them in the heap). */
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
  hq_h5_process_init(); /* before MPI_Init */
  if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!strcmp(argv[1], "--version")) {
    printf("hpcq %s\n", HQ_VERSION);
    return 0;
  }
  for (size_t i = 0; i < sizeof hq_cmds / sizeof hq_cmds[0]; i++)
    if (!strcmp(argv[1], hq_cmds[i].name)) return hq_cmds[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "hpcq: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
