#include <stdio.h>

#include "cli.h"

int hq_cli_eval(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "hpcq eval: not implemented yet\n");
  return 2;
}
