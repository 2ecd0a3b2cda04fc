#include <stdio.h>

#include "cli.h"

int hq_cli_quantize(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "hpcq quantize: not implemented yet\n");
  return 2;
}
