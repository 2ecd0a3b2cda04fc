/* hpcq compare A B: do two results hold the same quantized model? A and B are hpcq .h5
 * results or GPTQ checkpoint folders (hpcq export's, or GPTQModel's / AutoGPTQ's: a user
 * compares hpcq with the tool they know). Per linear: the fractions of identical codes, zero
 * points and g_idx entries, the largest relative difference of the scales and of the
 * statistics (proxy losses of the method and of RTN, the reference loss, the damping, the dead
 * columns; only between two .h5 files, a checkpoint has none) and the relative Frobenius
 * distance of the dequantized weights. Used to check that runs at different rank counts,
 * batches, thread counts, resumed runs and Slurm runs agree. Exit status 0 when every linear
 * meets --min-equal (default 1.0), --scale-rtol (default 0 with --min-equal 1, else not
 * checked), --loss-rtol (default 0) and --weight-rtol (default: not checked), 1 otherwise.
 * Not collective. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "error.h"
#include "h5io.h"
#include "model.h"
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
  double min_equal, loss_rtol, scale_rtol, weight_rtol;
};

/* The two files and the tolerances into o (--scale-rtol's default follows --min-equal);
 * HQ_CLI_HELP (usage printed) or HQ_ERR_INPUT for a usage error. */
static int parse(int argc, char **argv, struct compare_opts *o) {
  *o = (struct compare_opts){NULL, NULL, 1.0, 0.0, -1.0, INFINITY};
  const struct hq_opt t[] = {HQ_ARG_F64("--min-equal", &o->min_equal, 0, 1),
                             HQ_ARG_F64("--scale-rtol", &o->scale_rtol, 0, 1e9),
                             HQ_ARG_F64("--loss-rtol", &o->loss_rtol, 0, 1e9),
                             HQ_ARG_F64("--weight-rtol", &o->weight_rtol, 0, 1e9), HQ_ARG_END};
  const char *pos[2] = {NULL, NULL};
  int npos = 0;
  int rc = hq_cli_parse(argc, argv, t, "compare", pos, 2, &npos);
  if (rc == HQ_CLI_HELP) {
    printf("usage: hpcq compare A B [--min-equal F] [--scale-rtol S] [--loss-rtol R]\n"
           "                         [--weight-rtol W]\n"
           "  A, B: .h5 results of hpcq quantize or GPTQ checkpoint folders (hpcq export,\n"
           "  GPTQModel, AutoGPTQ). Per linear: fractions of identical codes, zero points and\n"
           "  g_idx entries, max relative scale difference, max relative difference of the\n"
           "  statistics (proxy losses of the method and of RTN, reference loss, damping, dead\n"
           "  columns; \"-\" when a side is a checkpoint, which has none) and the relative\n"
           "  Frobenius distance of the dequantized weights; exit 0 when every linear has all\n"
           "  three fractions >= F (default 1), scales within S (default 0 when F is 1, else\n"
           "  not checked), statistics within R (default 0: identical) and the weight distance\n"
           "  within W (default: not checked). Two tools' GPTQ differ in their codes by\n"
           "  construction: compare them with --min-equal 0 and look at weight_rdiff\n");
    return rc;
  }
  if (!rc && npos < 2) rc = hq_fail(HQ_ERR_INPUT, "give two results: .h5 files of hpcq quantize or GPTQ checkpoint folders");
  o->pa = pos[0];
  o->pb = pos[1];
  if (o->scale_rtol < 0) o->scale_rtol = o->min_equal >= 1.0 ? 0.0 : INFINITY;
  return rc;
}

/* One side of the comparison: an hpcq .h5 result or a GPTQ checkpoint folder (hpcq export,
 * GPTQModel, AutoGPTQ; src/model/model_gptq.c), with its list of quantized linears. */
struct side {
  const char *path;
  struct hq_h5 *h;    /* an .h5 result, else NULL */
  struct hq_model m;  /* a GPTQ checkpoint when m.gptq_format */
  char **names;
  int64_t n;
};

static void side_close(struct side *s) {
  hq_h5_names_free(s->names, s->n);
  hq_h5_close(s->h);
  if (s->m.dir) hq_model_close(&s->m);
}

static int side_open(const char *path, struct side *s) {
  s->path = path;
  const size_t l = strlen(path);
  if (l > 3 && !strcmp(path + l - 3, ".h5")) {
    HQ_TRY(hq_h5_open_read(path, 0, &s->h));
    return hq_h5_list_linears(s->h, &s->names, &s->n);
  }
  HQ_TRY(hq_model_open(path, &s->m));
  if (!s->m.gptq_format)
    return hq_fail(HQ_ERR_INPUT, "%s is a full-precision model; hpcq compare takes .h5 results "
                   "of hpcq quantize and GPTQ checkpoints (quantization_config.quant_method "
                   "\"gptq\")", path);
  s->n = hq_model_gptq_list(&s->m, &s->names);
  return HQ_OK;
}

/* Linear `name` of side s as a whole-layer packed slab. */
static int side_read(const struct side *s, const char *name, struct hq_packed *p) {
  if (s->h) return hq_h5_linear_read(s->h, name, p);
  if (!hq_model_gptq_has(&s->m, name))
    return hq_fail(HQ_ERR_INPUT, "linear %s is not in %s", name, s->path);
  return hq_model_gptq_read(&s->m, name, p);
}

/* Both sides open (the same number of linears). */
struct compare_files {
  struct side a, b;
};

/* Closes what files_open opened (also after a partial files_open). */
static void files_close(struct compare_files *f) {
  side_close(&f->a);
  side_close(&f->b);
}

/* Opens both files of o and lists their linears into f. */
static int files_open(const struct compare_opts *o, struct compare_files *f) {
  memset(f, 0, sizeof *f);
  HQ_TRY(side_open(o->pa, &f->a));
  HQ_TRY(side_open(o->pb, &f->b));
  if (f->a.n != f->b.n)
    return hq_fail(HQ_ERR_INPUT, "%s has %lld quantized linears, %s has %lld", o->pa,
                   (long long)f->a.n, o->pb, (long long)f->b.n);
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
  double wrd;                     /* ||Wa - Wb|| / ||Wa|| (Frobenius) of the dequantized weights */
};

/* Weight [r, i] of a decoded linear with ngroups groups, as hq_pack_dequantize gives it */
static double dq(const struct decoded *d, int64_t in, int64_t ng, int64_t r, int64_t i) {
  const int64_t g = r * ng + d->g_idx[i];
  return hq_dequant(d->codes[r * in + i], d->scales[g], d->zeros[g]);
}

/* The relative Frobenius distance of the two dequantized weights (what differs in a model,
 * also when codes differ by construction, as between two tools) */
static double weight_rdiff(const struct hq_packed *p, const struct decoded *x,
                           const struct decoded *y) {
  double num = 0, den = 0;
  for (int64_t r = 0; r < p->out; r++)
    for (int64_t i = 0; i < p->in; i++) {
      const double a = dq(x, p->in, p->ngroups, r, i), b = dq(y, p->in, p->ngroups, r, i);
      num += (a - b) * (a - b);
      den += a * a;
    }
  return num == 0 ? 0.0 : sqrt(num / fmax(den, 1e-300));
}

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
  a->wrd = weight_rdiff(p, x, y);
}

/* Both packed copies of linear `name` (same shape and bits) decoded and compared into a. */
static int compare_codes(const struct compare_files *f, const char *name, struct agreement *a) {
  struct hq_packed p, q;
  struct decoded x = {0}, y = {0};
  memset(&p, 0, sizeof p);
  memset(&q, 0, sizeof q);
  int rc = side_read(&f->a, name, &p);
  if (!rc) rc = side_read(&f->b, name, &q);
  if (!rc && (p.in != q.in || p.out != q.out || p.bits != q.bits || p.ngroups != q.ngroups))
    rc = hq_fail(HQ_ERR_INPUT, "%s: %s has %lld x %lld, %d bits, %lld groups; %s has %lld x "
                 "%lld, %d bits, %lld groups: not the same model and settings", name, f->a.path,
                 (long long)p.out, (long long)p.in, p.bits, (long long)p.ngroups, f->b.path,
                 (long long)q.out, (long long)q.in, q.bits, (long long)q.ngroups);
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
  char obj[512], lbuf[32] = "-";
  snprintf(obj, sizeof obj, "/linears/%s", name);
  /* a checkpoint has no statistics: not compared */
  const double lrd = f->a.h && f->b.h ? stats_rdiff(f->a.h, f->b.h, obj) : 0.0, me = o->min_equal;
  if (f->a.h && f->b.h) snprintf(lbuf, sizeof lbuf, "%.3g", lrd);
  *ok = a->frac >= me && a->zfrac >= me && a->gfrac >= me && a->srd <= o->scale_rtol &&
        lrd <= o->loss_rtol && a->wrd <= o->weight_rtol;
  printf("%-36s %12.6f %12.6f %12.6f %12.3g %12s %12.3g%s\n", name, a->frac, a->zfrac, a->gfrac,
         a->srd, lbuf, a->wrd, *ok ? "" : "  <-- differs");
  return HQ_OK;
}

/* The table and its total line; *bad: linears outside the tolerances. */
static int compare_all(const struct compare_files *f, const struct compare_opts *o, int *bad) {
  int64_t tot = 0, toteq = 0;
  *bad = 0;
  printf("%-36s %12s %12s %12s %12s %12s %12s\n", "linear", "equal_codes", "equal_zeros",
         "equal_g_idx", "scale_rdiff", "stats_rdiff", "weight_rdiff");
  for (int64_t i = 0; i < f->a.n; i++) {
    struct agreement a = {0};
    int ok = 0;
    HQ_TRY(compare_linear(f, o, f->a.names[i], &a, &ok));
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
