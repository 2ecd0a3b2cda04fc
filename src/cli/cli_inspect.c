/* hpcq inspect FILE.h5: run metadata and the per-layer statistics table. Not collective
 * (serial read; runs as one process). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "error.h"
#include "h5io.h"
#include "quantize_check.h"

/* An optional attribute: NaN when absent; *rc records a read failure (a damaged file). */
static double attr_f64(struct hq_h5 *h, const char *obj, const char *name, int *rc) {
  double v = NAN;
  if (!*rc && hq_h5_attr_exists(h, obj, name)) *rc = hq_h5_attr_get_f64(h, obj, name, &v);
  return v;
}

static void opt_str(struct hq_h5 *h, const char *name, char **v, int *rc) {
  if (!*rc && hq_h5_attr_exists(h, "/", name)) *rc = hq_h5_attr_get_str(h, "/", name, v);
}

/* One row of the table (sums[] += its proxy losses); a read failure returns before printing. */
static int print_linear(struct hq_h5 *h, const char *name, int64_t i, int json, double sums[2]) {
  char obj[512];
  snprintf(obj, sizeof obj, "/linears/%s", name);
  struct hq_h5_linear_desc d;
  int rc = hq_h5_linear_info(h, name, &d);
  double lg = attr_f64(h, obj, "loss_proxy_gptq", &rc), lr = attr_f64(h, obj, "loss_proxy_rtn", &rc);
  double damp = attr_f64(h, obj, "damp_used", &rc);
  double tc = attr_f64(h, obj, "seconds_cholesky", &rc), tg = attr_f64(h, obj, "seconds_gptq", &rc);
  int64_t *own = NULL, nown = 0;
  char owners[256] = "";
  if (!rc && hq_h5_attr_exists(h, obj, "owner_rows")) rc = hq_h5_attr_get_i64_array(h, obj, "owner_rows", &own, &nown);
  for (int64_t r = 0, k = 0; !rc && r < nown && k < (int64_t)sizeof owners - 24; r++)
    k += snprintf(owners + k, sizeof owners - (size_t)k, "%s%lld", r ? "," : "", (long long)own[r]);
  free(own);
  if (rc) return rc;
  if (isfinite(lg)) sums[0] += lg;
  if (isfinite(lr)) sums[1] += lr;
  if (json) {
    printf("%s{\"name\": \"%s\", \"rows\": %lld, \"cols\": %lld, \"bits\": %d, \"group_size\": %lld, "
           "\"loss_proxy_gptq\": %.9g, \"loss_proxy_rtn\": %.9g, \"damp_used\": %.9g, \"owner_rows\": [%s]}",
           i ? ", " : "", name, (long long)d.rows, (long long)d.cols, d.bits, (long long)d.group_size,
           isfinite(lg) ? lg : -1.0, isfinite(lr) ? lr : -1.0, isfinite(damp) ? damp : -1.0, owners);
  } else {
    char shape[48];
    snprintf(shape, sizeof shape, "%lldx%lld", (long long)d.rows, (long long)d.cols);
    printf("%-36s %11s %4d %5lld %12.5g %12.5g %7.3f %10.3g %8.3f %8.3f %s\n", name, shape, d.bits,
           (long long)d.group_size, lg, lr, lg / lr, damp, tc, tg, owners);
  }
  return HQ_OK;
}

int hq_cli_inspect(int argc, char **argv) {
  const char *path = NULL;
  int json = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      printf("usage: hpcq inspect FILE.h5 [--json]\n  prints the run settings and the per-layer "
             "statistics (proxy losses of GPTQ and RTN, damping, time, owning ranks)\n");
      return 0;
    } else if (!strcmp(argv[i], "--json")) json = 1;
    else if (argv[i][0] == '-') {
      fprintf(stderr, "hpcq inspect: unknown option '%s'\n", argv[i]);
      return 2;
    } else path = argv[i];
  }
  if (!path) {
    fprintf(stderr, "hpcq inspect: give the .h5 file written by hpcq quantize\n");
    return 2;
  }
  struct hq_h5 *h = NULL;
  int rc = hq_result_check_resumable(path); /* the leftover of a kill before the first flush */
  if (!rc) rc = hq_h5_open_read(path, 1, &h);
  if (rc) {
    fprintf(stderr, "hpcq inspect: %s\n", hq_last_error());
    return 1;
  }
  struct hq_h5_state st;
  memset(&st, 0, sizeof st);
  char *settings = NULL, *method = NULL;
  char **names = NULL;
  int64_t n = 0;
  rc = hq_h5_status(h, &st);
  opt_str(h, "settings_json", &settings, &rc);
  opt_str(h, "method", &method, &rc);
  if (!rc) rc = hq_h5_list_linears(h, &names, &n);
  for (int64_t i = 0; i < n && !rc; i++) { /* all of it readable before anything is printed */
    struct hq_h5_linear_desc d;
    rc = hq_h5_linear_info(h, names[i], &d);
  }
  if (rc) {
    fprintf(stderr, "hpcq inspect: %s\n", hq_last_error());
    hq_h5_state_free(&st);
    hq_h5_names_free(names, n);
    free(settings);
    free(method);
    hq_h5_close(h);
    return 1;
  }
  if (json) {
    printf("{\"file\": \"%s\", \"complete\": %s, \"blocks_done\": %lld, \"n_blocks\": %lld, \"settings\": %s, \"linears\": [",
           path, st.complete ? "true" : "false", (long long)st.blocks_done, (long long)st.n_blocks,
           settings ? settings : "null");
  } else {
    printf("%s: %s, %lld of %lld blocks%s\nsettings: %s\n\n", path, method ? method : "?",
           (long long)st.blocks_done, (long long)st.n_blocks, st.complete ? " (complete)" : " (INCOMPLETE: resume with --resume)",
           settings ? settings : "?");
    printf("%-36s %11s %4s %5s %12s %12s %7s %10s %8s %8s %s\n", "linear", "shape", "bits", "group",
           "loss_gptq", "loss_rtn", "ratio", "damp", "chol_s", "gptq_s", "owner rows");
  }
  double sums[2] = {0, 0};
  for (int64_t i = 0; i < n && !rc; i++) rc = print_linear(h, names[i], i, json, sums);
  if (rc) fprintf(stderr, "hpcq inspect: %s\n", hq_last_error());
  else if (json) printf("]}\n");
  else if (n) printf("\ntotal proxy loss: GPTQ %.6g, RTN %.6g (ratio %.3f)\n", sums[0], sums[1], sums[0] / sums[1]);
  hq_h5_names_free(names, n);
  hq_h5_state_free(&st);
  free(settings);
  free(method);
  hq_h5_close(h);
  return rc ? 1 : 0;
}
