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

/* An optional root string attribute into *v (left NULL when absent); *rc as attr_f64. */
static void opt_str(struct hq_h5 *h, const char *name, char **v, int *rc) {
  if (!*rc && hq_h5_attr_exists(h, "/", name)) *rc = hq_h5_attr_get_str(h, "/", name, v);
}

/* One linear's row: its shape and settings, statistics (NaN when absent) and owning ranks. */
struct linear_row {
  struct hq_h5_linear_desc d;
  double lg, lr, damp, tc, tg; /* proxy losses of GPTQ and RTN, damping, seconds */
  char owners[256];            /* "0,1": the ranks that held its rows */
  int width;                   /* of the name column */
  int64_t tokens;              /* a MoE expert's routed calibration tokens; -2: not an expert */
  char fallback[16];           /* its fallback: "none", "block", "rtn" ("" when not one) */
};

/* The row of linear `name`; a read failure (a damaged file) returns its status. */
static int read_row(struct hq_h5 *h, const char *name, struct linear_row *r) {
  char obj[512];
  snprintf(obj, sizeof obj, "/linears/%s", name);
  int rc = hq_h5_linear_info(h, name, &r->d);
  r->lg = attr_f64(h, obj, "loss_proxy_gptq", &rc);
  r->lr = attr_f64(h, obj, "loss_proxy_rtn", &rc);
  r->damp = attr_f64(h, obj, "damp_used", &rc);
  r->tc = attr_f64(h, obj, "seconds_cholesky", &rc);
  r->tg = attr_f64(h, obj, "seconds_gptq", &rc);
  int64_t *own = NULL, nown = 0;
  r->owners[0] = 0;
  if (!rc && hq_h5_attr_exists(h, obj, "owner_rows"))
    rc = hq_h5_attr_get_i64_array(h, obj, "owner_rows", &own, &nown);
  for (int64_t k = 0, i = 0; !rc && k < nown && i < (int64_t)sizeof r->owners - 24; k++)
    i += snprintf(r->owners + i, sizeof r->owners - (size_t)i, "%s%lld", k ? "," : "",
                  (long long)own[k]);
  free(own);
  r->tokens = -2;
  r->fallback[0] = 0;
  if (!rc && hq_h5_attr_exists(h, obj, "moe_tokens"))
    rc = hq_h5_attr_get_i64(h, obj, "moe_tokens", &r->tokens);
  if (!rc && hq_h5_attr_exists(h, obj, "moe_fallback")) {
    char *f = NULL;
    rc = hq_h5_attr_get_str(h, obj, "moe_fallback", &f);
    if (!rc) snprintf(r->fallback, sizeof r->fallback, "%s", f);
    free(f);
  }
  return rc;
}

/* The row as JSON (i: its index, for the separator) or as a line of the text table. */
static void print_row(const char *name, const struct linear_row *r, int64_t i, int json) {
  const struct hq_h5_linear_desc *d = &r->d;
  if (json) {
    printf("%s{\"name\": \"%s\", \"rows\": %lld, \"cols\": %lld, \"bits\": %d, \"group_size\": %lld, "
           "\"loss_proxy_gptq\": %.9g, \"loss_proxy_rtn\": %.9g, \"damp_used\": %.9g, \"owner_rows\": [%s]",
           i ? ", " : "", name, (long long)d->rows, (long long)d->cols, d->bits,
           (long long)d->group_size,
           isfinite(r->lg) ? r->lg : -1.0, isfinite(r->lr) ? r->lr : -1.0,
           isfinite(r->damp) ? r->damp : -1.0, r->owners);
    if (r->tokens > -2)
      printf(", \"moe_tokens\": %lld, \"moe_fallback\": \"%s\"}", (long long)r->tokens, r->fallback);
    else
      printf("}");
    return;
  }
  char shape[48], moe[64] = "";
  snprintf(shape, sizeof shape, "%lldx%lld", (long long)d->rows, (long long)d->cols);
  if (r->tokens > -2) snprintf(moe, sizeof moe, "  tokens %lld fallback %s", (long long)r->tokens, r->fallback);
  printf("%-*s %11s %4d %5lld %12.5g %12.5g %7.3f %10.3g %8.3f %8.3f %s%s\n", r->width, name, shape,
         d->bits, (long long)d->group_size, r->lg, r->lr, r->lg / r->lr, r->damp, r->tc, r->tg,
         r->owners, moe);
}

/* The experts of a MoE model: one routed-token count per expert (its gate's row) and how
 * many took a fallback. */
struct moe_sum {
  int64_t *tok, n, fallback;
};

static int is_expert_gate(const char *name) {
  const size_t n = strlen(name);
  return strstr(name, ".experts.") &&
         ((n > 3 && !strcmp(name + n - 3, ".w1")) || (n > 10 && !strcmp(name + n - 10, ".gate_proj")));
}

/* One row of the table (sums[] += its proxy losses, ms the experts'); a read failure returns
 * before printing. */
static int print_linear(struct hq_h5 *h, const char *name, int64_t i, int json, int width,
                        double sums[2], struct moe_sum *ms) {
  struct linear_row r;
  HQ_TRY(read_row(h, name, &r));
  r.width = width;
  if (isfinite(r.lg)) sums[0] += r.lg;
  if (isfinite(r.lr)) sums[1] += r.lr;
  if (r.tokens > -2 && is_expert_gate(name)) {
    ms->tok = realloc(ms->tok, (size_t)(ms->n + 1) * sizeof(int64_t));
    HQ_ASSERT(ms->tok);
    ms->tok[ms->n++] = r.tokens;
    ms->fallback += strcmp(r.fallback, "none") != 0;
  }
  print_row(name, &r, i, json);
  return HQ_OK;
}

static int cmp_i64(const void *a, const void *b) {
  const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* The experts' routed tokens (min / median / max) and fallbacks, text or JSON (after the
 * linears' list). */
static void print_moe(const struct moe_sum *ms, int json) {
  if (!ms->n) return;
  int64_t *t = ms->tok;
  qsort(t, (size_t)ms->n, sizeof *t, cmp_i64);
  const double med = ms->n % 2 ? (double)t[ms->n / 2] : 0.5 * (double)(t[ms->n / 2 - 1] + t[ms->n / 2]);
  if (json) {
    printf(", \"moe\": {\"experts\": %lld, \"tokens_min\": %lld, \"tokens_median\": %.1f, "
           "\"tokens_max\": %lld, \"fallback\": %lld}", (long long)ms->n, (long long)t[0], med,
           (long long)t[ms->n - 1], (long long)ms->fallback);
    return;
  }
  if (t[0] < 0) {
    printf("experts: %lld (no calibration: no routing)\n", (long long)ms->n);
    return;
  }
  printf("experts: %lld; calibration tokens routed per expert: min %lld, median %.1f, max %lld; "
         "%lld took the fallback\n", (long long)ms->n, (long long)t[0], med,
         (long long)t[ms->n - 1], (long long)ms->fallback);
}

/* The file and --json into *path / *json; HQ_CLI_HELP (usage printed) or HQ_ERR_INPUT. */
static int parse(int argc, char **argv, const char **path, int *json) {
  const struct hq_opt t[] = {HQ_ARG_FLAG("--json", json), HQ_ARG_END};
  int npos = 0;
  int rc = hq_cli_parse(argc, argv, t, "inspect", path, 1, &npos);
  if (rc == HQ_CLI_HELP)
    printf("usage: hpcq inspect FILE.h5 [--json]\n  prints the run settings and the per-layer "
           "statistics (proxy losses of GPTQ and RTN, damping, time, owning ranks)\n");
  else if (!rc && !npos) rc = hq_fail(HQ_ERR_INPUT, "give the .h5 file written by hpcq quantize");
  return rc;
}

/* What is read of the file before anything is printed: its progress, the root attributes
 * settings_json and method (NULL when absent) and the names of the linears. */
struct inspect_file {
  struct hq_h5 *h;
  struct hq_h5_state st;
  char *settings, *method;
  char **names;
  int64_t n;
  int64_t *gb, ngb; /* block_group_first_block [G + 1] (--block-groups > 1), else NULL */
};

/* Frees and closes what file_open and file_read got (also after a failure). */
static void file_close(struct inspect_file *f) {
  hq_h5_names_free(f->names, f->n);
  hq_h5_state_free(&f->st);
  free(f->settings);
  free(f->method);
  free(f->gb);
  hq_h5_close(f->h);
}

/* f->h open, or HQ_ERR_* (the leftover of a kill before the first flush is recognised). */
static int file_open(const char *path, struct inspect_file *f) {
  memset(f, 0, sizeof *f);
  HQ_TRY(hq_result_check_resumable(path));
  return hq_h5_open_read(path, 1, &f->h);
}

/* Everything but the rows' statistics, so that all of it is readable before printing. */
static int file_read(struct inspect_file *f) {
  int rc = hq_h5_status(f->h, &f->st);
  opt_str(f->h, "settings_json", &f->settings, &rc);
  opt_str(f->h, "method", &f->method, &rc);
  if (!rc && hq_h5_attr_exists(f->h, "/", "block_group_first_block"))
    rc = hq_h5_attr_get_i64_array(f->h, "/", "block_group_first_block", &f->gb, &f->ngb);
  if (!rc) rc = hq_h5_list_linears(f->h, &f->names, &f->n);
  for (int64_t i = 0; i < f->n && !rc; i++) {
    struct hq_h5_linear_desc d;
    rc = hq_h5_linear_info(f->h, f->names[i], &d);
  }
  return rc;
}

/* "block groups: G (blocks 1-3, 4-6)" when the run had several */
static void print_groups(const struct inspect_file *f) {
  if (!f->gb || f->ngb < 3) return;
  printf("block groups: %lld (blocks", (long long)(f->ngb - 1));
  for (int64_t k = 0; k + 1 < f->ngb; k++)
    printf("%s %lld-%lld", k ? "," : "", (long long)f->gb[k] + 1, (long long)f->gb[k + 1]);
  printf("), each group's first block quantized from full-precision inputs\n");
}

/* The run's state and settings, then the table header (text) or the opening of "linears". */
static void print_header(const char *path, const struct inspect_file *f, int json, int width) {
  const struct hq_h5_state *st = &f->st;
  if (json) {
    printf("{\"file\": \"%s\", \"complete\": %s, \"blocks_done\": %lld, \"n_blocks\": %lld, "
           "\"block_groups\": %lld, \"settings\": %s, \"linears\": [", path,
           st->complete ? "true" : "false", (long long)st->flags_set, (long long)st->n_blocks,
           (long long)(f->gb ? f->ngb - 1 : 1), f->settings ? f->settings : "null");
    return;
  }
  printf("%s: %s, %lld of %lld blocks%s\n", path, f->method ? f->method : "?",
         (long long)st->flags_set, (long long)st->n_blocks,
         st->complete ? " (complete)" : " (INCOMPLETE: resume with --resume)");
  print_groups(f);
  printf("settings: %s\n\n", f->settings ? f->settings : "?");
  printf("%-*s %11s %4s %5s %12s %12s %7s %10s %8s %8s %s\n", width, "linear", "shape", "bits", "group",
         "loss_gptq", "loss_rtn", "ratio", "damp", "chol_s", "gptq_s", "owner rows");
}

/* Header, rows and the closing line (JSON) or the total proxy losses (text). */
static int print_file(const char *path, const struct inspect_file *f, int json) {
  int width = 36;
  for (int64_t i = 0; i < f->n; i++)
    width = (int)strlen(f->names[i]) > width ? (int)strlen(f->names[i]) : width;
  print_header(path, f, json, width);
  double sums[2] = {0, 0};
  struct moe_sum ms = {NULL, 0, 0};
  int rc = HQ_OK;
  for (int64_t i = 0; i < f->n && !rc; i++) rc = print_linear(f->h, f->names[i], i, json, width, sums, &ms);
  if (!rc && json) {
    printf("]");
    print_moe(&ms, json);
    printf("}\n");
  } else if (!rc && f->n) {
    printf("\ntotal proxy loss: GPTQ %.6g, RTN %.6g (ratio %.3f)\n", sums[0], sums[1],
           sums[0] / sums[1]);
    print_moe(&ms, json);
  }
  free(ms.tok);
  return rc;
}

int hq_cli_inspect(int argc, char **argv) {
  const char *path = NULL;
  int json = 0;
  int rc = parse(argc, argv, &path, &json);
  if (rc) return hq_cli_args_exit(rc, "inspect");
  struct inspect_file f;
  rc = file_open(path, &f);
  if (!rc) rc = file_read(&f);
  if (!rc) rc = print_file(path, &f, json);
  if (rc) fprintf(stderr, "hpcq inspect: %s\n", hq_last_error());
  file_close(&f);
  return rc ? 1 : 0;
}
