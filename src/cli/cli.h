/* hpcq subcommands: each lives in src/cli_<name>.c and is linked into the hpcq executable. */
#ifndef HQ_CLI_H
#define HQ_CLI_H

int hq_cli_layer(int argc, char **argv);    /* quantize one real layer, GPTQ vs RTN table */
int hq_cli_eval(int argc, char **argv);     /* perplexity of a model folder or an .h5 result */
int hq_cli_quantize(int argc, char **argv); /* the distributed pipeline */
int hq_cli_inspect(int argc, char **argv);  /* per-layer statistics of an .h5 result */
int hq_cli_export(int argc, char **argv);   /* GPTQ safetensors checkpoint */
int hq_cli_compare(int argc, char **argv);  /* codes/loss agreement of two .h5 results */

/* Shared option helpers: parse "--name value" strings/integers/floats (integers and floats
 * with range checks) with a clear message; return HQ_OK or HQ_ERR_INPUT. */
int hq_cli_str(const char *opt, const char *val, const char **out);
int hq_cli_int(const char *opt, const char *val, long long lo, long long hi, long long *out);
int hq_cli_float(const char *opt, const char *val, double lo, double hi, double *out);

#endif
