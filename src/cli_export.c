#include <stdio.h>

#include "cli.h"

int hq_cli_export(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "hpcq export: not implemented yet\n");
  return 2;
}
