/* hpcq inspect FILE.h5: run metadata and the per-layer statistics table. Not collective
 * (serial read; runs as one process). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* What --plot keeps of a row: the method's proxy loss / RTN's and damp_used (NaN: absent). */
struct plot_pt {
  double ratio, damp;
};

/* One row of the table (sums[] += its proxy losses, ms the experts', *pt its plot point when
 * not NULL); a read failure returns before printing. */
static int print_linear(struct hq_h5 *h, const char *name, int64_t i, int json, int width,
                        double sums[2], struct moe_sum *ms, struct plot_pt *pt) {
  struct linear_row r;
  HQ_TRY(read_row(h, name, &r));
  r.width = width;
  if (pt) *pt = (struct plot_pt){r.lg / r.lr, r.damp};
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

/* The file, --json and --plot into *path / *json / *png; HQ_CLI_HELP (usage printed) or
 * HQ_ERR_INPUT. */
static int parse(int argc, char **argv, const char **path, int *json, const char **png) {
  const struct hq_opt t[] = {HQ_ARG_FLAG("--json", json), HQ_ARG_STR("--plot", png), HQ_ARG_END};
  int npos = 0;
  int rc = hq_cli_parse(argc, argv, t, "inspect", path, 1, &npos);
  if (rc == HQ_CLI_HELP)
    printf("usage: hpcq inspect FILE.h5 [--json] [--plot FILE.png]\n  prints the run settings and "
           "the per-layer statistics (proxy losses of GPTQ and RTN, damping, time, owning ranks)\n"
           "  --plot FILE.png  also draws with gnuplot, per linear in file order (block by block),\n"
           "                   the method's proxy loss relative to RTN's and the damping used\n"
           "                   (log scales; one colour and point type per kind of linear)\n");
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
  char **skipped;   /* linears a --rule skipped (stored unquantized in /tensors) */
  int64_t nskipped;
  int64_t *gb, ngb; /* block_group_first_block [G + 1] (--block-groups > 1), else NULL */
};

/* Frees and closes what file_open and file_read got (also after a failure). */
static void file_close(struct inspect_file *f) {
  hq_h5_names_free(f->names, f->n);
  hq_h5_names_free(f->skipped, f->nskipped);
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

static int read_skipped(struct inspect_file *f);

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
  if (!rc && hq_h5_attr_exists(f->h, "/", "rules")) rc = read_skipped(f);
  return rc;
}

/* The linears that --rule skipped: "<linear>.weight" tensors of a file with rules */
static int read_skipped(struct inspect_file *f) {
  char **t = NULL;
  int64_t nt = 0;
  HQ_TRY(hq_h5_list_tensors(f->h, &t, &nt));
  f->skipped = hq_xcalloc((size_t)nt + 1, sizeof *f->skipped);
  for (int64_t i = 0; i < nt; i++) {
    const size_t n = strlen(t[i]);
    if (n > 12 && !strcmp(t[i] + n - 12, "_proj.weight")) {
      t[i][n - 7] = 0;
      f->skipped[f->nskipped++] = t[i];
      t[i] = NULL;
    }
  }
  hq_h5_names_free(t, nt);
  return HQ_OK;
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

/* The linears --rule skipped: a line (text) or "skipped": [...] (JSON) */
static void print_skipped(const struct inspect_file *f, int json) {
  if (!f->skipped) return; /* a file without rules */
  if (json) printf(", \"skipped\": [");
  else if (f->nskipped) printf("\nnot quantized (skipped by a rule, stored as tensors): %lld:", (long long)f->nskipped);
  for (int64_t i = 0; i < f->nskipped; i++)
    printf(json ? "%s\"%s\"" : "%s %s", json && i ? ", " : "", f->skipped[i]);
  if (json) printf("]");
  else if (f->nskipped) printf("\n");
}

/* Header, rows and the closing line (JSON) or the total proxy losses (text); pt (NULL: no
 * --plot) gets the rows' plot points. */
static int print_file(const char *path, const struct inspect_file *f, int json, struct plot_pt *pt) {
  int width = 36;
  for (int64_t i = 0; i < f->n; i++)
    width = (int)strlen(f->names[i]) > width ? (int)strlen(f->names[i]) : width;
  print_header(path, f, json, width);
  double sums[2] = {0, 0};
  struct moe_sum ms = {NULL, 0, 0};
  int rc = HQ_OK;
  for (int64_t i = 0; i < f->n && !rc; i++)
    rc = print_linear(f->h, f->names[i], i, json, width, sums, &ms, pt ? pt + i : NULL);
  if (!rc && json) {
    printf("]");
    print_moe(&ms, json);
    print_skipped(f, json);
    printf("}\n");
  } else if (!rc) {
    if (f->n)
      printf("\ntotal proxy loss: GPTQ %.6g, RTN %.6g (ratio %.3f)\n", sums[0], sums[1],
             sums[0] / sums[1]);
    print_moe(&ms, json);
    print_skipped(f, json);
  }
  free(ms.tok);
  return rc;
}

/* ---- --plot FILE.png: gnuplot draws the rows' plot points (two panels, log y) ---- */

/* Kinds of linears: a colour and point type each; a MoE's experts (many) by gate/up/down. */
enum { KINDS = 11 };
static const char *const kind_name[KINDS] = {"q", "k", "v", "o", "gate", "up", "down",
                                             "expert gate", "expert up", "expert down", "other"};
static const char *const kind_style[KINDS] = {
    "pt 7 lc rgb '#1f77b4'", "pt 5 lc rgb '#ff7f0e'", "pt 9 lc rgb '#2ca02c'",
    "pt 11 lc rgb '#d62728'", "pt 13 lc rgb '#9467bd'", "pt 7 lc rgb '#8c564b'",
    "pt 5 lc rgb '#e377c2'", "pt 1 lc rgb '#9467bd'", "pt 2 lc rgb '#8c564b'",
    "pt 3 lc rgb '#e377c2'", "pt 6 lc rgb '#7f7f7f'"};

/* The kind of linear `name` (an index of kind_name), from its last name part. */
static int linear_kind(const char *name) {
  static const char *const tail[] = {"q_proj", "k_proj",    "v_proj", "o_proj", "gate_proj",
                                     "up_proj", "down_proj", "w1",     "w3",     "w2"};
  static const int kind[] = {0, 1, 2, 3, 4, 5, 6, 4, 5, 6};
  const char *dot = strrchr(name, '.'), *t = dot ? dot + 1 : name;
  for (int k = 0; k < 10; k++)
    if (!strcmp(t, tail[k])) return kind[k] + (kind[k] >= 4 && strstr(name, ".experts.") ? 3 : 0);
  return KINDS - 1;
}

/* The block of "model.layers.<b>.…", else -1. */
static long long linear_block(const char *name) {
  long long b;
  return sscanf(name, "model.layers.%lld.", &b) == 1 ? b : -1;
}

/* gnuplot's path (searched on $PATH as execvp would) into exe[n], or the install hint. */
static int find_gnuplot(char *exe, size_t n) {
  const char *p = getenv("PATH");
  if (!p || !*p) p = "/usr/local/bin:/usr/bin:/bin";
  for (size_t len; *p; p += len + (p[len] == ':')) {
    len = strcspn(p, ":");
    snprintf(exe, n, "%.*s/gnuplot", len ? (int)len : 1, len ? p : ".");
    struct stat st;
    if (!stat(exe, &st) && S_ISREG(st.st_mode) && !access(exe, X_OK)) return HQ_OK;
  }
  return hq_fail(HQ_ERR_UNSUPPORTED, "--plot needs gnuplot, which is not on PATH: install gnuplot-nox "
                 "(Debian) or drop --plot");
}

/* Before anything is printed: png names a file in a writable folder, not the result itself,
 * and gnuplot is installed (its path into exe[n]). */
static int plot_check(const char *png, const char *h5, char *exe, size_t n) {
  const char *slash = strrchr(png, '/');
  if (!*png || (slash && !slash[1]))
    return hq_fail(HQ_ERR_INPUT, "--plot '%s': give a file name (FILE.png)", png);
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - png) + (slash == png) : 1, slash ? png : ".");
  struct stat d, o, in;
  const int e = stat(dir, &d) ? errno : !S_ISDIR(d.st_mode) ? ENOTDIR : access(dir, W_OK | X_OK) ? errno : 0;
  if (e == ENOENT)
    return hq_fail(HQ_ERR_INPUT, "--plot %s: folder %s does not exist (create it: mkdir -p %s)", png, dir,
                   dir);
  if (e) return hq_fail(HQ_ERR_IO, "--plot %s: cannot write in folder %s (%s)", png, dir, strerror(e));
  const int exists = !stat(png, &o);
  if (exists && S_ISDIR(o.st_mode))
    return hq_fail(HQ_ERR_INPUT, "--plot %s is a folder: give a file name", png);
  if (exists && !stat(h5, &in) && o.st_dev == in.st_dev && o.st_ino == in.st_ino)
    return hq_fail(HQ_ERR_INPUT, "--plot %s is the result being inspected: give another file name", png);
  return find_gnuplot(exe, n);
}

/* What the data file holds: the points of each panel (0: loss ratio, 1: damping) and kind. */
struct plot_set {
  int64_t npt[2];
  int has[2][KINDS];
};

/* One row per linear: index, block, kind, ratio, damp_used ('?': none to draw), short name. */
static void write_data(FILE *d, const struct inspect_file *f, const struct plot_pt *pt,
                       struct plot_set *s) {
  fprintf(d, "# index block kind ratio damp_used linear\n");
  for (int64_t i = 0; i < f->n; i++) {
    const int k = linear_kind(f->names[i]);
    const double v[2] = {pt[i].ratio, pt[i].damp};
    const char *dot = strrchr(f->names[i], '.');
    fprintf(d, "%lld %lld %d", (long long)i, linear_block(f->names[i]), k);
    for (int p = 0; p < 2; p++) {
      const int ok = isfinite(v[p]) && v[p] > 0; /* log scale: positive values only */
      if (ok) fprintf(d, " %.9g", v[p]);
      else fprintf(d, " ?");
      s->npt[p] += ok;
      s->has[p][k] |= ok;
    }
    fprintf(d, " %s\n", dot ? dot + 1 : f->names[i]);
  }
}

/* Dotted lines between blocks and the block numbers (of at most ~32 blocks) on the x axis. */
static void write_blocks(FILE *g, const struct inspect_file *f) {
  int64_t nb = 0, first = 0, b = 0;
  for (int64_t i = 0; i < f->n; i++)
    nb += !i || linear_block(f->names[i]) != linear_block(f->names[i - 1]);
  const int64_t step = (nb + 31) / 32;
  for (int64_t i = 1; i <= f->n; i++) {
    const long long prev = linear_block(f->names[i - 1]);
    if (i < f->n && linear_block(f->names[i]) == prev) continue;
    char label[32] = "-";
    if (prev >= 0) snprintf(label, sizeof label, "%lld", prev);
    if (b++ % step == 0)
      fprintf(g, "set xtics %s('%s' %.1f)\n", b > 1 ? "add " : "", label, (first + i - 1) / 2.0);
    if (i < f->n)
      fprintf(g, "set arrow from %.1f, graph 0 to %.1f, graph 1 nohead dt 3 lc rgb 'gray60' back\n", i - 0.5,
              i - 0.5);
    first = i;
  }
}

/* One panel: p 0 the loss ratio (ARG4 its title; a dashed line at 1 = RTN), 1 the damping. */
static void write_panel(FILE *g, const struct plot_set *s, int p, double ps) {
  fprintf(g, p ? "set title 'damping added to the diagonal of H (damp_used)'\nset ylabel 'damp_used'\n"
                 "unset ytics\nset ytics\nplot "
               : "set title ARG4\nset ylabel 'proxy loss / RTN proxy loss'\n"
                 "set ytics add ('0.2' 0.2, '0.3' 0.3, '0.5' 0.5, '2' 2, '3' 3, '5' 5)\n"
                 "plot 1 with lines dt 2 lw 1.5 lc rgb 'black' title 'RTN (= 1)'");
  for (int k = 0, c = !p; k < KINDS; k++)
    if (s->has[p][k])
      fprintf(g, "%sARG2 using 1:($3 == %d ? $%d : NaN) with points %s ps %.2f title '%s'",
              c++ ? ", \\\n  " : "", k, 4 + p, kind_style[k], ps, kind_name[k]);
  fprintf(g, "\n");
}

/* The script: PNG terminal (pngcairo where gnuplot has it), output ARG1, data ARG2, title ARG3. */
static void write_script(FILE *g, const struct inspect_file *f, const struct plot_set *s) {
  const int panels = (s->npt[0] > 0) + (s->npt[1] > 0), h = panels == 2 ? 900 : 500;
  fprintf(g, "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
             "  set terminal pngcairo size 1400,%d font ',10'\n} else {\n  set terminal png size 1400,%d\n}\n"
             "set termoption noenhanced\nset output ARG1\nset datafile missing '?'\n"
             "set multiplot layout %d,1 title ARG3\n", h, h, panels);
  fprintf(g, "set lmargin at screen 0.07\nset rmargin at screen 0.86\nset key outside right top\n"
             "set grid ytics\nset xtics nomirror scale 0\nset logscale y\nset format y '%%g'\n"
             "set autoscale yfix\nset offsets 0, 0, graph 0.06, graph 0.06\nset xrange [-0.5:%.1f]\n"
             "set xlabel 'block (linears in file order)'\n", f->n - 0.5);
  write_blocks(g, f);
  const double ps = f->n > 1000 ? 0.5 : f->n > 200 ? 0.7 : 1.0;
  for (int p = 0; p < 2; p++)
    if (s->npt[p]) write_panel(g, s, p, ps);
  fprintf(g, "unset multiplot\nset output\n");
}

/* The temporaries of one plot: a folder with the data, the script and gnuplot's messages. */
struct plot_tmp {
  char dir[PATH_MAX], dat[PATH_MAX + 16], gp[PATH_MAX + 16], err[PATH_MAX + 16];
};

static void tmp_remove(const struct plot_tmp *t) {
  unlink(t->dat);
  unlink(t->gp);
  unlink(t->err);
  rmdir(t->dir);
}

/* The temporary folder, the data file (*s: what it holds) and, when it has points, the script. */
static int tmp_write(struct plot_tmp *t, const struct inspect_file *f, const struct plot_pt *pt,
                     struct plot_set *s) {
  const char *td = getenv("TMPDIR");
  snprintf(t->dir, sizeof t->dir, "%s/hpcq-plot.XXXXXX", td && *td ? td : "/tmp");
  if (!mkdtemp(t->dir))
    return hq_fail(HQ_ERR_IO, "--plot: cannot create a temporary folder %s: %s (set TMPDIR)", t->dir,
                   strerror(errno));
  snprintf(t->dat, sizeof t->dat, "%s/plot.dat", t->dir);
  snprintf(t->gp, sizeof t->gp, "%s/plot.gp", t->dir);
  snprintf(t->err, sizeof t->err, "%s/gnuplot.err", t->dir);
  FILE *d = fopen(t->dat, "w");
  int bad = !d;
  if (d) write_data(d, f, pt, s);
  if (d && fclose(d)) bad = 1;
  if (!bad && (s->npt[0] || s->npt[1])) { /* else nothing to draw: no script */
    FILE *g = fopen(t->gp, "w");
    if (g) write_script(g, f, s);
    if (!g || fclose(g)) bad = 1;
  }
  return bad ? hq_fail(HQ_ERR_IO, "--plot: cannot write the temporary files in %s", t->dir) : HQ_OK;
}

/* Runs gnuplot (argv[0] = exe; no shell), its output into errpath; its messages are copied to
 * stderr when it fails. */
static int run_gnuplot(const char *exe, char *const argv[], const char *errpath) {
  fflush(stdout);
  fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) return hq_fail(HQ_ERR_IO, "--plot: cannot start gnuplot: %s", strerror(errno));
  if (!pid) {
    const int in = open("/dev/null", O_RDONLY);
    const int out = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (in < 0 || out < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0) _exit(126);
    execv(exe, argv);
    _exit(127);
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) return hq_fail(HQ_ERR_IO, "--plot: waiting for gnuplot: %s", strerror(errno));
  if (WIFEXITED(st) && !WEXITSTATUS(st)) return HQ_OK;
  FILE *e = fopen(errpath, "r");
  char buf[4096];
  for (size_t k; e && (k = fread(buf, 1, sizeof buf, e)) > 0;) fwrite(buf, 1, k, stderr);
  if (e) fclose(e);
  if (WIFEXITED(st))
    return hq_fail(HQ_ERR_IO, "--plot: %s exited with status %d (its messages above)", exe, WEXITSTATUS(st));
  return hq_fail(HQ_ERR_IO, "--plot: %s was killed by signal %d", exe, WTERMSIG(st));
}

/* What is left out of the plot, on stderr; HQ_ERR_INPUT when nothing is left to draw. */
static int plot_notes(const char *h5, const struct inspect_file *f, const struct plot_set *s) {
  const char *m = f->method ? f->method : "?";
  const int nohess = !strcmp(m, "rtn") || !strcmp(m, "hqq");
  if (!f->n) return hq_fail(HQ_ERR_INPUT, "--plot: nothing to draw: %s has no linears yet; drop --plot", h5);
  if (!s->npt[0] && !s->npt[1])
    return hq_fail(HQ_ERR_INPUT, "--plot: nothing to draw: no linear of %s has proxy losses or a damping "
                   "above 0%s; drop --plot", h5,
                   nohess ? " (methods rtn and hqq use no Hessian: plot a --method gptq result)" : "");
  if (!s->npt[0])
    fprintf(stderr, "hpcq inspect: --plot: no linear of %s has both proxy losses (method %s): the loss "
            "ratio is not available, only the damping is drawn\n", h5, m);
  else if (s->npt[0] < f->n)
    fprintf(stderr, "hpcq inspect: --plot: %lld of %lld linears have no loss ratio (no proxy losses, e.g. "
            "experts with --moe-fallback rtn) and are left out of the loss panel\n",
            (long long)(f->n - s->npt[0]), (long long)f->n);
  if (!s->npt[1])
    fprintf(stderr, "hpcq inspect: --plot: no linear has a damping above 0: no damping panel\n");
  return HQ_OK;
}

/* The titles (ARG3, ARG4) of the plot of result h5. */
static void plot_titles(const char *h5, const struct inspect_file *f, char *t3, char *t4, size_t n) {
  const char *base = strrchr(h5, '/'), *m = f->method ? f->method : "?";
  char up[32];
  size_t k = 0;
  for (; m[k] && k + 1 < sizeof up; k++) up[k] = (char)(m[k] >= 'a' && m[k] <= 'z' ? m[k] - 32 : m[k]);
  up[k] = 0;
  snprintf(t3, n, "hpcq inspect %s (%s, %lld linears)", base ? base + 1 : h5, m, (long long)f->n);
  snprintf(t4, n, "%s proxy loss tr(dW H dW^T) relative to RTN's (below 1: better than RTN)", up);
}

/* The plot of the rows' points into png, through png.tmp renamed once gnuplot succeeded. */
static int plot_file(const char *png, const char *h5, const struct inspect_file *f,
                     const struct plot_pt *pt, const char *exe) {
  struct plot_tmp t;
  struct plot_set s;
  memset(&t, 0, sizeof t);
  memset(&s, 0, sizeof s);
  int rc = tmp_write(&t, f, pt, &s);
  if (!rc) rc = plot_notes(h5, f, &s);
  const size_t n = strlen(png) + 5;
  char *out = hq_xmalloc(n), t3[512], t4[512];
  snprintf(out, n, "%s.tmp", png);
  plot_titles(h5, f, t3, t4, sizeof t3);
  char *argv[] = {(char *)"gnuplot", (char *)"-c", t.gp, out, t.dat, t3, t4, NULL};
  if (!rc) rc = run_gnuplot(exe, argv, t.err);
  if (!rc && rename(out, png))
    rc = hq_fail(HQ_ERR_IO, "--plot: cannot rename %s to %s: %s", out, png, strerror(errno));
  if (!rc) fprintf(stderr, "hpcq inspect: wrote %s\n", png);
  unlink(out);
  free(out);
  tmp_remove(&t);
  return rc;
}

int hq_cli_inspect(int argc, char **argv) {
  const char *path = NULL, *png = NULL;
  int json = 0;
  int rc = parse(argc, argv, &path, &json, &png);
  if (rc) return hq_cli_args_exit(rc, "inspect");
  char exe[PATH_MAX + 16];
  struct inspect_file f = {0};
  struct plot_pt *pt = NULL;
  if (png) rc = plot_check(png, path, exe, sizeof exe);
  if (!rc) rc = file_open(path, &f);
  if (!rc) rc = file_read(&f);
  if (!rc && png) pt = hq_xcalloc((size_t)f.n + 1, sizeof *pt);
  if (!rc) rc = print_file(path, &f, json, pt);
  if (!rc && png) rc = plot_file(png, path, &f, pt, exe);
  if (rc) fprintf(stderr, "hpcq inspect: %s\n", hq_last_error());
  free(pt);
  file_close(&f);
  return rc ? 1 : 0;
}
