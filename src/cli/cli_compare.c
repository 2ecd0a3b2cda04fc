/* hpcq compare A.h5 B.h5: do two results hold the same quantized model? Per linear: the
 * fractions of identical codes, zero points and g_idx entries, the largest relative
 * difference of the scales and of the statistics (proxy losses of the method and of RTN, the
 * reference loss, the damping, the dead columns). Used to check that runs at different rank
 * counts, batches, thread counts, resumed runs and Slurm runs agree. Exit status 0 when every
 * linear meets --min-equal (default 1.0), --scale-rtol (default 0 with --min-equal 1, else
 * not checked) and --loss-rtol (default 0), 1 otherwise. Not collective. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "error.h"
#include "h5io.h"
#include "pack.h"

/* An optional attribute; NaN when absent. */
static double getf(struct hq_h5 *h, const char *obj, const char *name) {
  double v = NAN;
  if (hq_h5_attr_exists(h, obj, name)) hq_h5_attr_get_f64(h, obj, name, &v);
  return v;
}

/* the largest relative difference of the per-linear statistics; a value present in only one
 * file, or finite in one and not the other, counts as different (infinite) */
static double stats_rdiff(struct hq_h5 *A, struct hq_h5 *B, const char *obj) {
  static const char *const names[] = {"loss_proxy_gptq", "loss_proxy_rtn", "loss_ref", "damp_used",
                                      "dead_cols"};
  double worst = 0.0;
  for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
    const double a = getf(A, obj, names[k]), b = getf(B, obj, names[k]);
    if (isnan(a) && isnan(b)) continue;
    const double d = a == b ? 0.0 : fabs(a - b) / fmax(fabs(a), 1e-30);
    if (!(d <= worst)) worst = isnan(d) ? INFINITY : d;
  }
  return worst;
}

struct compare_opts {
  const char *pa, *pb;
  double min_equal, loss_rtol, scale_rtol;
};

/* The two files and the tolerances into o (--scale-rtol's default follows --min-equal);
 * HQ_CLI_HELP (usage printed) or HQ_ERR_INPUT for a usage error. */
static int parse(int argc, char **argv, struct compare_opts *o) {
  *o = (struct compare_opts){NULL, NULL, 1.0, 0.0, -1.0};
  const struct hq_opt t[] = {HQ_ARG_F64("--min-equal", &o->min_equal, 0, 1),
                             HQ_ARG_F64("--scale-rtol", &o->scale_rtol, 0, 1e9),
                             HQ_ARG_F64("--loss-rtol", &o->loss_rtol, 0, 1e9), HQ_ARG_END};
  const char *pos[2] = {NULL, NULL};
  int npos = 0;
  int rc = hq_cli_parse(argc, argv, t, "compare", pos, 2, &npos);
  if (rc == HQ_CLI_HELP) {
    printf("usage: hpcq compare A.h5 B.h5 [--min-equal F] [--scale-rtol S] [--loss-rtol R]\n"
           "  per linear: fractions of identical codes, zero points and g_idx entries, max relative\n"
           "  scale difference and max relative difference of the statistics (proxy losses of the\n"
           "  method and of RTN, reference loss, damping, dead columns); exit 0 when every linear\n"
           "  has all three fractions >= F (default 1), scales within S (default 0 when F is 1,\n"
           "  else not checked) and statistics within R (default 0: identical)\n");
    return rc;
  }
  if (!rc && npos < 2) rc = hq_fail(HQ_ERR_INPUT, "give two .h5 files written by hpcq quantize");
  o->pa = pos[0];
  o->pb = pos[1];
  if (o->scale_rtol < 0) o->scale_rtol = o->min_equal >= 1.0 ? 0.0 : INFINITY;
  return rc;
}

/* Both files open, with their lists of linears (the same number of them). */
struct compare_files {
  struct hq_h5 *A, *B;
  char **na, **nb;
  int64_t ca, cb;
};

/* Closes what files_open opened (also after a partial files_open). */
static void files_close(struct compare_files *f) {
  hq_h5_names_free(f->na, f->ca);
  hq_h5_names_free(f->nb, f->cb);
  hq_h5_close(f->A);
  hq_h5_close(f->B);
}

/* Opens both files of o and lists their linears into f. */
static int files_open(const struct compare_opts *o, struct compare_files *f) {
  memset(f, 0, sizeof *f);
  HQ_TRY(hq_h5_open_read(o->pa, 0, &f->A));
  HQ_TRY(hq_h5_open_read(o->pb, 0, &f->B));
  HQ_TRY(hq_h5_list_linears(f->A, &f->na, &f->ca));
  HQ_TRY(hq_h5_list_linears(f->B, &f->nb, &f->cb));
  if (f->ca != f->cb)
    return hq_fail(HQ_ERR_INPUT, "%s has %lld linears, %s has %lld", o->pa, (long long)f->ca,
                   o->pb, (long long)f->cb);
  return HQ_OK;
}

/* One linear decoded (hq_pack_decode): codes [out x in], zero points and scales
 * [out x ngroups], g_idx [in]. */
struct decoded {
  uint8_t *codes;
  float *zeros, *scales;
  int32_t *g_idx;
};

/* Frees the arrays of d (NULL ones too). */
static void decoded_free(struct decoded *d) {
  free(d->codes);
  free(d->zeros);
  free(d->scales);
  free(d->g_idx);
}

/* d: the arrays of p, allocated and decoded. */
static int decode(const struct hq_packed *p, struct decoded *d) {
  const int64_t n = p->out * p->in, ng = p->out * p->ngroups;
  d->codes = hq_xmalloc((size_t)n);
  d->zeros = hq_xmalloc((size_t)ng * 4);
  d->scales = hq_xmalloc((size_t)ng * 4);
  d->g_idx = hq_xmalloc((size_t)p->in * 4);
  return hq_pack_decode(p, d->codes, d->zeros, d->scales, d->g_idx);
}

/* The agreement of one linear in both files. */
struct agreement {
  int64_t n, eq;                  /* codes, identical codes */
  double frac, zfrac, gfrac, srd; /* fractions of identical codes / zeros / g_idx, scale rdiff */
};

/* codes, zero points and the column -> group map all count: equal codes with other zeros or
 * another act-order permutation are a different model */
static void agree(const struct hq_packed *p, const struct decoded *x, const struct decoded *y,
                  struct agreement *a) {
  const int64_t n = p->out * p->in, ng = p->out * p->ngroups;
  int64_t zeq = 0, geq = 0;
  a->n = n;
  a->eq = 0;
  a->srd = 0;
  for (int64_t k = 0; k < n; k++) a->eq += x->codes[k] == y->codes[k];
  for (int64_t k = 0; k < ng; k++) zeq += x->zeros[k] == y->zeros[k];
  for (int64_t k = 0; k < p->in; k++) geq += x->g_idx[k] == y->g_idx[k];
  for (int64_t k = 0; k < ng; k++) {
    const double s = x->scales[k], d = fabs(s - y->scales[k]) / fmax(fabs(s), 1e-30);
    if (d > a->srd) a->srd = d;
  }
  a->frac = (double)a->eq / (double)n;
  a->zfrac = (double)zeq / (double)ng;
  a->gfrac = (double)geq / (double)p->in;
}

/* Both packed copies of linear `name` (same shape and bits) decoded and compared into a. */
static int compare_codes(const struct compare_files *f, const char *name, struct agreement *a) {
  struct hq_packed p, q;
  struct decoded x = {0}, y = {0};
  memset(&p, 0, sizeof p);
  memset(&q, 0, sizeof q);
  int rc = hq_h5_linear_read(f->A, name, &p);
  if (!rc) rc = hq_h5_linear_read(f->B, name, &q);
  if (!rc && (p.in != q.in || p.out != q.out || p.bits != q.bits || p.ngroups != q.ngroups))
    rc = hq_fail(HQ_ERR_INPUT, "%s: shapes or bits differ", name);
  if (!rc) {
    rc = decode(&p, &x);
    if (!rc) rc = decode(&q, &y);
    if (rc) hq_fail_ctx(rc, "%s: ", name);
    else agree(&p, &x, &y, a);
  }
  decoded_free(&x);
  decoded_free(&y);
  hq_pack_free(&p);
  hq_pack_free(&q);
  return rc;
}

/* One row of the table; *ok: the linear is within the tolerances. */
static int compare_linear(const struct compare_files *f, const struct compare_opts *o,
                          const char *name, struct agreement *a, int *ok) {
  HQ_TRY(compare_codes(f, name, a));
  char obj[512];
  snprintf(obj, sizeof obj, "/linears/%s", name);
  const double lrd = stats_rdiff(f->A, f->B, obj), me = o->min_equal;
  *ok = a->frac >= me && a->zfrac >= me && a->gfrac >= me && a->srd <= o->scale_rtol &&
        lrd <= o->loss_rtol;
  printf("%-36s %12.6f %12.6f %12.6f %12.3g %12.3g%s\n", name, a->frac, a->zfrac, a->gfrac, a->srd,
         lrd, *ok ? "" : "  <-- differs");
  return HQ_OK;
}

/* The table and its total line; *bad: linears outside the tolerances. */
static int compare_all(const struct compare_files *f, const struct compare_opts *o, int *bad) {
  int64_t tot = 0, toteq = 0;
  *bad = 0;
  printf("%-36s %12s %12s %12s %12s %12s\n", "linear", "equal_codes", "equal_zeros", "equal_g_idx",
         "scale_rdiff", "stats_rdiff");
  for (int64_t i = 0; i < f->ca; i++) {
    struct agreement a = {0};
    int ok = 0;
    HQ_TRY(compare_linear(f, o, f->na[i], &a, &ok));
    *bad += !ok;
    tot += a.n;
    toteq += a.eq;
  }
  printf("total: %.6f of %lld codes identical; %d linear(s) outside tolerance\n",
         (double)toteq / (double)(tot ? tot : 1), (long long)tot, *bad);
  return HQ_OK;
}

int hq_cli_compare(int argc, char **argv) {
  struct compare_opts o;
  int rc = parse(argc, argv, &o);
  if (rc) return hq_cli_args_exit(rc, "compare");
  struct compare_files f;
  int bad = 0;
  rc = files_open(&o, &f);
  if (!rc) rc = compare_all(&f, &o, &bad);
  if (rc) fprintf(stderr, "hpcq compare: %s\n", hq_last_error());
  files_close(&f);
  return rc ? 2 : (bad ? 1 : 0);
}
