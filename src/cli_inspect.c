#include <stdio.h>

#include "cli.h"

int hq_cli_inspect(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "hpcq inspect: not implemented yet\n");
  return 2;
}
