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

int hq_cli_compare(int argc, char **argv) {
  const char *pa = NULL, *pb = NULL;
  double min_equal = 1.0, loss_rtol = 0.0, scale_rtol = -1.0;
  int rc = HQ_OK;
  for (int i = 1; i < argc && !rc; i++) {
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      printf("usage: hpcq compare A.h5 B.h5 [--min-equal F] [--scale-rtol S] [--loss-rtol R]\n"
             "  per linear: fractions of identical codes, zero points and g_idx entries, max relative\n"
             "  scale difference and max relative difference of the statistics (proxy losses of the\n"
             "  method and of RTN, reference loss, damping, dead columns); exit 0 when every linear\n"
             "  has all three fractions >= F (default 1), scales within S (default 0 when F is 1,\n"
             "  else not checked) and statistics within R (default 0: identical)\n");
      return 0;
    } else if (!strcmp(argv[i], "--min-equal")) {
      rc = hq_cli_float(argv[i], i + 1 < argc ? argv[i + 1] : NULL, 0, 1, &min_equal);
      i++;
    } else if (!strcmp(argv[i], "--scale-rtol")) {
      rc = hq_cli_float(argv[i], i + 1 < argc ? argv[i + 1] : NULL, 0, 1e9, &scale_rtol);
      i++;
    } else if (!strcmp(argv[i], "--loss-rtol")) {
      rc = hq_cli_float(argv[i], i + 1 < argc ? argv[i + 1] : NULL, 0, 1e9, &loss_rtol);
      i++;
    } else if (argv[i][0] == '-') {
      rc = hq_fail(HQ_ERR_INPUT, "unknown option '%s'", argv[i]);
    } else if (!pa) pa = argv[i];
    else if (!pb) pb = argv[i];
    else rc = hq_fail(HQ_ERR_INPUT, "give exactly two files");
  }
  if (!rc && (!pa || !pb)) rc = hq_fail(HQ_ERR_INPUT, "give two .h5 files written by hpcq quantize");
  if (scale_rtol < 0) scale_rtol = min_equal >= 1.0 ? 0.0 : INFINITY;
  if (rc) {
    fprintf(stderr, "hpcq compare: %s\n", hq_last_error());
    return 2;
  }
  struct hq_h5 *A = NULL, *B = NULL;
  rc = hq_h5_open_read(pa, 0, &A);
  if (!rc) rc = hq_h5_open_read(pb, 0, &B);
  char **na = NULL, **nb = NULL;
  int64_t ca = 0, cb = 0;
  if (!rc) rc = hq_h5_list_linears(A, &na, &ca);
  if (!rc) rc = hq_h5_list_linears(B, &nb, &cb);
  if (!rc && ca != cb) rc = hq_fail(HQ_ERR_INPUT, "%s has %lld linears, %s has %lld", pa, (long long)ca, pb, (long long)cb);
  if (rc) {
    fprintf(stderr, "hpcq compare: %s\n", hq_last_error());
    hq_h5_close(A);
    hq_h5_close(B);
    return 2;
  }
  int bad = 0;
  int64_t tot = 0, toteq = 0;
  printf("%-36s %12s %12s %12s %12s %12s\n", "linear", "equal_codes", "equal_zeros", "equal_g_idx",
         "scale_rdiff", "stats_rdiff");
  for (int64_t i = 0; i < ca && !rc; i++) {
    struct hq_packed p, q;
    memset(&p, 0, sizeof p);
    memset(&q, 0, sizeof q);
    rc = hq_h5_linear_read(A, na[i], &p);
    if (!rc) rc = hq_h5_linear_read(B, na[i], &q);
    if (!rc && (p.in != q.in || p.out != q.out || p.bits != q.bits || p.ngroups != q.ngroups))
      rc = hq_fail(HQ_ERR_INPUT, "%s: shapes or bits differ", na[i]);
    if (rc) {
      hq_pack_free(&p);
      hq_pack_free(&q);
      break;
    }
    int64_t n = p.out * p.in, ng = p.out * p.ngroups;
    uint8_t *c1 = hq_xmalloc((size_t)n), *c2 = hq_xmalloc((size_t)n);
    float *z1 = hq_xmalloc((size_t)ng * 4), *z2 = hq_xmalloc((size_t)ng * 4);
    float *s1 = hq_xmalloc((size_t)ng * 4), *s2 = hq_xmalloc((size_t)ng * 4);
    int32_t *g1 = hq_xmalloc((size_t)p.in * 4), *g2 = hq_xmalloc((size_t)p.in * 4);
    rc = hq_pack_decode(&p, c1, z1, s1, g1);
    if (!rc) rc = hq_pack_decode(&q, c2, z2, s2, g2);
    if (rc) {
      hq_fail_ctx(rc, "%s: ", na[i]);
      free(c1); free(c2); free(z1); free(z2); free(s1); free(s2); free(g1); free(g2);
      hq_pack_free(&p);
      hq_pack_free(&q);
      break;
    }
    /* codes, zero points and the column -> group map all count: equal codes with other zeros
     * or another act-order permutation are a different model */
    int64_t eq = 0, zeq = 0, geq = 0;
    for (int64_t k = 0; k < n; k++) eq += c1[k] == c2[k];
    for (int64_t k = 0; k < ng; k++) zeq += z1[k] == z2[k];
    for (int64_t k = 0; k < p.in; k++) geq += g1[k] == g2[k];
    double srd = 0;
    for (int64_t k = 0; k < ng; k++) {
      double d = fabs((double)s1[k] - s2[k]) / fmax(fabs((double)s1[k]), 1e-30);
      if (d > srd) srd = d;
    }
    char obj[512];
    snprintf(obj, sizeof obj, "/linears/%s", na[i]);
    const double lrd = stats_rdiff(A, B, obj);
    double frac = (double)eq / (double)n, zfrac = (double)zeq / (double)ng,
           gfrac = (double)geq / (double)p.in;
    int ok = frac >= min_equal && zfrac >= min_equal && gfrac >= min_equal && srd <= scale_rtol &&
             lrd <= loss_rtol;
    bad += !ok;
    tot += n;
    toteq += eq;
    printf("%-36s %12.6f %12.6f %12.6f %12.3g %12.3g%s\n", na[i], frac, zfrac, gfrac, srd, lrd,
           ok ? "" : "  <-- differs");
    free(c1); free(c2); free(z1); free(z2); free(s1); free(s2); free(g1); free(g2);
    hq_pack_free(&p);
    hq_pack_free(&q);
  }
  if (!rc) printf("total: %.6f of %lld codes identical; %d linear(s) outside tolerance\n",
                  (double)toteq / (double)(tot ? tot : 1), (long long)tot, bad);
  else fprintf(stderr, "hpcq compare: %s\n", hq_last_error());
  hq_h5_names_free(na, ca);
  hq_h5_names_free(nb, cb);
  hq_h5_close(A);
  hq_h5_close(B);
  return rc ? 2 : (bad ? 1 : 0);
}
