#include <stdio.h>

#include "cli.h"

int hq_cli_layer(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "hpcq layer: not implemented yet\n");
  return 2;
}
