/* The options of every hpcq command (cli.h): one table-driven parser and the value checks. */
#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "error.h"

int hq_cli_str(const char *opt, const char *val, const char **out) {
  if (!val) return hq_fail(HQ_ERR_INPUT, "%s needs a value", opt);
  *out = val;
  return HQ_OK;
}

int hq_cli_int(const char *opt, const char *val, long long lo, long long hi, long long *out) {
  if (!val) return hq_fail(HQ_ERR_INPUT, "%s needs a value", opt);
  char *end = NULL;
  errno = 0;
  long long v = strtoll(val, &end, 10);
  if (errno || end == val || *end)
    return hq_fail(HQ_ERR_INPUT, "%s expects an integer, got '%s'", opt, val);
  if (v < lo || v > hi)
    return hq_fail(HQ_ERR_INPUT, "%s must be in [%lld, %lld], got %lld", opt, lo, hi, v);
  *out = v;
  return HQ_OK;
}

int hq_cli_float(const char *opt, const char *val, double lo, double hi, double *out) {
  if (!val) return hq_fail(HQ_ERR_INPUT, "%s needs a value", opt);
  char *end = NULL;
  errno = 0;
  double v = strtod(val, &end);
  if (errno || end == val || *end || v != v)
    return hq_fail(HQ_ERR_INPUT, "%s expects a number, got '%s'", opt, val);
  if (v < lo || v > hi)
    return hq_fail(HQ_ERR_INPUT, "%s must be in [%g, %g], got %g", opt, lo, hi, v);
  *out = v;
  return HQ_OK;
}

static const struct hq_opt *find(const struct hq_opt *opts, const char *name) {
  for (; opts->name; opts++)
    if (!strcmp(opts->name, name)) return opts;
  return NULL;
}

/* Parse val (NULL when the option is last) into p->dst according to p->kind. */
static int set_value(const struct hq_opt *p, const char *val) {
  long long i = 0;
  double f = 0;
  switch (p->kind) {
  case HQ_OPT_FLAG: *(int *)p->dst = 1; return HQ_OK;
  case HQ_OPT_STR: return hq_cli_str(p->name, val, (const char **)p->dst);
  case HQ_OPT_FN:
    if (!val) return hq_fail(HQ_ERR_INPUT, "%s needs a value", p->name);
    return p->fn(p->name, val, p->dst);
  case HQ_OPT_F32:
  case HQ_OPT_F64:
    HQ_TRY(hq_cli_float(p->name, val, p->flo, p->fhi, &f));
    if (p->kind == HQ_OPT_F32) *(float *)p->dst = (float)f;
    else *(double *)p->dst = f;
    return HQ_OK;
  default: break;
  }
  HQ_TRY(hq_cli_int(p->name, val, p->lo, p->hi, &i));
  if (p->kind == HQ_OPT_INT) *(int *)p->dst = (int)i;
  else if (p->kind == HQ_OPT_I64) *(int64_t *)p->dst = (int64_t)i;
  else *(uint64_t *)p->dst = (uint64_t)i;
  return HQ_OK;
}

int hq_cli_parse(int argc, char **argv, const struct hq_opt *opts, const char *cmd,
                 const char **pos, int max_pos, int *npos) {
  if (npos) *npos = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) return HQ_CLI_HELP;
    const struct hq_opt *p = a[0] == '-' && a[1] ? find(opts, a) : NULL;
    if (!p && a[0] == '-' && a[1])
      return hq_fail(HQ_ERR_INPUT, "unknown option '%s' (see hpcq %s --help)", a, cmd);
    if (!p) {
      if (!npos || *npos >= max_pos)
        return hq_fail(HQ_ERR_INPUT, "unexpected argument '%s' (see hpcq %s --help)", a, cmd);
      pos[(*npos)++] = a;
      continue;
    }
    const char *val = p->kind == HQ_OPT_FLAG ? NULL : i + 1 < argc ? argv[++i] : NULL;
    HQ_TRY(set_value(p, val));
    if (p->given) *p->given = 1;
  }
  return HQ_OK;
}

int hq_cli_args_exit(int rc, const char *cmd) {
  if (rc == HQ_CLI_HELP) return 0;
  fprintf(stderr, "hpcq %s: %s\n", cmd, hq_last_error());
  return 2;
}
