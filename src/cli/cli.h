/* hpcq subcommands: each lives in src/cli/cli_<name>.c and is linked into the hpcq executable. */
#ifndef HQ_CLI_H
#define HQ_CLI_H

int hq_cli_layer(int argc, char **argv);    /* quantize one real layer, GPTQ vs RTN table */
int hq_cli_eval(int argc, char **argv);     /* perplexity of a model folder or an .h5 result */
int hq_cli_quantize(int argc, char **argv); /* the distributed pipeline */
int hq_cli_inspect(int argc, char **argv);  /* per-layer statistics of an .h5 result */
int hq_cli_export(int argc, char **argv);   /* GPTQ safetensors checkpoint */
int hq_cli_compare(int argc, char **argv);  /* codes/loss agreement of two .h5 results */

/* Value checks: parse "--name value" strings/integers/floats (integers and floats with range
 * checks) with a clear message; return HQ_OK or HQ_ERR_INPUT. */
int hq_cli_str(const char *opt, const char *val, const char **out);
int hq_cli_int(const char *opt, const char *val, long long lo, long long hi, long long *out);
int hq_cli_float(const char *opt, const char *val, double lo, double hi, double *out);

/* One option of a command's table. dst points to: FLAG int (set to 1), STR const char *,
 * INT int, I64 int64_t, U64 uint64_t (integers in [lo, hi]), F32 float, F64 double (in
 * [flo, fhi]), FN whatever fn parses the value into (fn returns HQ_OK or sets a message). */
enum hq_opt_kind { HQ_OPT_FLAG, HQ_OPT_STR, HQ_OPT_INT, HQ_OPT_I64, HQ_OPT_U64, HQ_OPT_F32,
                   HQ_OPT_F64, HQ_OPT_FN };
struct hq_opt {
  const char *name; /* "--bits"; a table ends with an entry whose name is NULL */
  enum hq_opt_kind kind;
  void *dst;
  long long lo, hi;
  double flo, fhi;
  int (*fn)(const char *opt, const char *val, void *dst);
  int *given; /* optional: set to 1 when the option appears */
};
/* Table entries (designated initializers, so the unused fields stay zero). */
#define HQ_ARG_FLAG(n, p) {.name = (n), .kind = HQ_OPT_FLAG, .dst = (p)}
#define HQ_ARG_STR(n, p) {.name = (n), .kind = HQ_OPT_STR, .dst = (p)}
#define HQ_ARG_INT(n, p, l, h) {.name = (n), .kind = HQ_OPT_INT, .dst = (p), .lo = (l), .hi = (h)}
#define HQ_ARG_I64(n, p, l, h) {.name = (n), .kind = HQ_OPT_I64, .dst = (p), .lo = (l), .hi = (h)}
#define HQ_ARG_U64(n, p, l, h) {.name = (n), .kind = HQ_OPT_U64, .dst = (p), .lo = (l), .hi = (h)}
#define HQ_ARG_F32(n, p, l, h) {.name = (n), .kind = HQ_OPT_F32, .dst = (p), .flo = (l), .fhi = (h)}
#define HQ_ARG_F64(n, p, l, h) {.name = (n), .kind = HQ_OPT_F64, .dst = (p), .flo = (l), .fhi = (h)}
#define HQ_ARG_FN(n, p, f) {.name = (n), .kind = HQ_OPT_FN, .dst = (p), .fn = (f)}
#define HQ_ARG_END {.name = NULL}
#define HQ_CLI_HELP (-1) /* hq_cli_parse saw -h/--help: print the usage, exit 0 */

/* Parse argv[1..argc-1] (argv[0] is the command) against opts. Arguments that are not options
 * go to pos[0..max_pos-1] (*npos of them; pos NULL: none allowed). Returns HQ_OK, HQ_CLI_HELP,
 * or HQ_ERR_INPUT with a message naming the option and `hpcq CMD --help`. Later options win. */
int hq_cli_parse(int argc, char **argv, const struct hq_opt *opts, const char *cmd,
                 const char **pos, int max_pos, int *npos);
/* The exit status of a command whose arguments did not parse (rc != HQ_OK): 0 after --help
 * (the usage is already printed), else 2 after "hpcq CMD: <message>" on stderr. */
int hq_cli_args_exit(int rc, const char *cmd);

#endif
