/* hpcq quantize: parse options, start MPI, run the pipeline (src/pipeline/pipeline.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "comm.h"
#include "equalize.h"
#include "error.h"
#include "pipeline.h"
#include "quantize_check.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: hpcq quantize --model DIR --calib FILE --out FILE.h5 [options]\n"
          "       mpirun -np N hpcq quantize ...   |   srun --mpi=pmix hpcq quantize ...\n\n"
          "  --model DIR         Hugging Face model folder (config.json, *.safetensors)\n"
          "  --calib FILE        calibration tokens: raw little-endian int32 ids (GPTQ)\n"
          "  --out FILE.h5       output (one HDF5 file, written collectively)\n"
          "  --method M          gptq (default), rtn (round-to-nearest, no calibration) or hqq\n"
          "                      (half-quadratic zero/scale optimisation, no calibration)\n"
          "  --bits N            2, 3, 4 (default) or 8\n"
          "  --group-size G      columns per quantization group (>= 1); -1 = one group per\n"
          "                      output channel (default 128, 64 for hqq)\n"
          "  --sym               symmetric grid (default asymmetric)\n"
          "  --mse               MSE clip search for the grid\n"
          "  --act-order         gptq: quantize columns by descending Hessian diagonal (desc_act)\n"
          "  --static-groups     gptq: group parameters from the unpermuted weights\n"
          "  --damp F            percdamp: damping = F * mean(diag H) (default 0.01; raised\n"
          "                      automatically when the Cholesky factorisation fails)\n"
          "  --nsamples N        calibration windows (default 128)\n"
          "  --seqlen N          window length (default 2048, capped by the model)\n"
          "  --seed N            window sampling seed (default 0)\n"
          "  --block-size N      GPTQ lazy-update block (default 128)\n"
          "  --batch N           windows per forward call (default 8)\n"
          "  --backend B         cpu (default), cuda or auto\n"
          "  --hqq-scale         hqq: also optimise the scale (default: zero point only)\n"
          "  --hqq-iters N       hqq: iterations (default 20, early stop)\n"
          "  --hqq-p F           hqq: lp shrinkage norm, 0 < p < 1 (default 0.7)\n"
          "  --hqq-beta F        hqq: initial beta (default 10)\n"
          "  --hqq-kappa F       hqq: beta growth per iteration (default 1.01)\n"
          "  --act-bits N        fake-quantize linear inputs per token (8 or 4) in the calibration\n"
          "                      forward: Hessians and next-block inputs see them (gptq)\n"
          "  --equalize E        none (default), smooth (SmoothQuant norm->linear migration,\n"
          "                      needs --calib), cle (cross-layer v->o, up->down) or smooth,cle\n"
          "  --smooth-alpha F    SmoothQuant migration strength in [0, 1] (default 0.5)\n"
          "  --scale-from-hessian  EXPERIMENTAL: group scales minimising the H-diagonal-weighted\n"
          "                      error (gptq, rtn; needs --calib)\n"
          "  --resume            continue an interrupted run from its last complete block\n"
          "                      (a missing --out starts a new run)\n"
          "  --overwrite         replace an existing output file (not with --resume)\n"
          "  --json-summary FILE write phase times (rank 0's, and the maximum over ranks) and\n"
          "                      peak memory as JSON (rank 0)\n"
          "  --quiet             no progress lines\n\n"
          "Exit status: 0 done, 1 error, 2 usage, 75 stopped by SIGTERM/SIGINT (resumable).\n");
}

/* Collective: rank 0 checks the paths, the model's config and the sizes before anything is
 * created (src/cli/quantize_check.h); every rank gets its verdict and whether it is a usage error. */
static int preflight(const struct hq_comm *comm, const struct hq_quant_opts *o, int *usage) {
  int rc = comm->rank == 0 ? hq_quant_preflight(o, comm->size, usage) : HQ_OK;
  hq_comm_bcast(comm, usage, sizeof *usage, 0);
  rc = hq_comm_agree(comm, rc);
  if (!rc) *usage = 0;
  return rc;
}

int hq_cli_quantize(int argc, char **argv) {
  struct hq_quant_opts o;
  hq_quant_opts_default(&o);
  o.g.group_size = 128;
  long long v;
  double d;
  int gs_given = 0;
  int rc = HQ_OK;
  for (int i = 1; i < argc && !rc; i++) {
    const char *a = argv[i];
    const char *nx = i + 1 < argc ? argv[i + 1] : NULL;
#define NEEDV()                                                                            \
  do {                                                                                     \
    if (!nx) {                                                                             \
      rc = hq_fail(HQ_ERR_INPUT, "%s needs a value", a);                                   \
      break;                                                                               \
    }                                                                                      \
    i++;                                                                                   \
  } while (0)
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--model")) { NEEDV(); o.model_dir = nx; }
    else if (!strcmp(a, "--calib")) { NEEDV(); o.calib_path = nx; }
    else if (!strcmp(a, "--out")) { NEEDV(); o.out_path = nx; }
    else if (!strcmp(a, "--backend")) { NEEDV(); o.backend = nx; }
    else if (!strcmp(a, "--json-summary")) { NEEDV(); o.json_summary = nx; }
    else if (!strcmp(a, "--method")) {
      NEEDV();
      if (!rc && !strcmp(nx, "gptq")) o.method = HQ_METHOD_GPTQ;
      else if (!rc && !strcmp(nx, "rtn")) o.method = HQ_METHOD_RTN;
      else if (!rc && !strcmp(nx, "hqq")) o.method = HQ_METHOD_HQQ;
      else if (!rc) rc = hq_fail(HQ_ERR_INPUT, "--method must be gptq, rtn or hqq (got '%s')", nx);
    } else if (!strcmp(a, "--equalize")) {
      NEEDV();
      if (!rc && (o.equalize = hq_equalize_parse(nx)) < 0)
        rc = hq_fail(HQ_ERR_INPUT, "--equalize must be none, smooth, cle or smooth,cle (got '%s')", nx);
    } else if (!strcmp(a, "--bits")) { NEEDV(); if (!rc && !(rc = hq_cli_int(a, nx, 2, 8, &v))) o.g.bits = (int)v; }
    else if (!strcmp(a, "--group-size")) { NEEDV(); if (!rc && !(rc = hq_cli_int(a, nx, -1, 1 << 30, &v))) { o.g.group_size = v; gs_given = 1; } }
    else if (!strcmp(a, "--act-bits")) { NEEDV(); if (!rc && !(rc = hq_cli_int(a, nx, 2, 16, &v))) o.act_bits = (int)v; }
    else if (!strcmp(a, "--hqq-iters")) { NEEDV(); if (!rc && !(rc = hq_cli_int(a, nx, 0, 10000, &v))) o.hqq.iters = (int)v; }
    else if (!strcmp(a, "--hqq-p")) { NEEDV(); if (!rc && !(rc = hq_cli_float(a, nx, 1e-3, 0.999, &d))) o.hqq.lp = (float)d; }
    else if (!strcmp(a, "--hqq-beta")) { NEEDV(); if (!rc && !(rc = hq_cli_float(a, nx, 1e-6, 1e12, &d))) o.hqq.beta = (float)d; }
    else if (!strcmp(a, "--hqq-kappa")) { NEEDV(); if (!rc && !(rc = hq_cli_float(a, nx, 1.0, 100.0, &d))) o.hqq.kappa = (float)d; }
    else if (!strcmp(a, "--smooth-alpha")) { NEEDV(); if (!rc && !(rc = hq_cli_float(a, nx, 0.0, 1.0, &d))) o.smooth_alpha = (float)d; }
    else if (!strcmp(a, "--hqq-scale")) o.hqq.opt_scale = 1;
    else if (!strcmp(a, "--scale-from-hessian")) o.scale_from_hessian = 1;
    else if (!strcmp(a, "--damp")) { NEEDV(); if (!rc && !(rc = hq_cli_float(a, nx, 1e-8, 10.0, &d))) o.g.percdamp = (float)d; }
    else if (!strcmp(a, "--nsamples")) { NEEDV(); if (!rc && !(rc = hq_cli_int(a, nx, 1, 1 << 24, &v))) o.nsamples = v; }
    else if (!strcmp(a, "--seqlen")) { NEEDV(); if (!rc && !(rc = hq_cli_int(a, nx, 2, 1 << 24, &v))) o.seqlen = v; }
    else if (!strcmp(a, "--seed")) { NEEDV(); if (!rc && !(rc = hq_cli_int(a, nx, 0, (1LL << 62), &v))) o.seed = (uint64_t)v; }
    else if (!strcmp(a, "--block-size")) { NEEDV(); if (!rc && !(rc = hq_cli_int(a, nx, 1, 1 << 16, &v))) o.g.block_size = (int)v; }
    else if (!strcmp(a, "--batch")) { NEEDV(); if (!rc && !(rc = hq_cli_int(a, nx, 1, 1 << 20, &v))) o.batch = v; }
    else if (!strcmp(a, "--sym")) o.g.sym = 1;
    else if (!strcmp(a, "--mse")) o.g.mse = 1;
    else if (!strcmp(a, "--act-order")) o.g.act_order = 1;
    else if (!strcmp(a, "--static-groups")) o.g.static_groups = 1;
    else if (!strcmp(a, "--resume")) o.resume = 1;
    else if (!strcmp(a, "--overwrite")) o.overwrite = 1;
    else if (!strcmp(a, "--quiet")) o.quiet = 1;
    else rc = hq_fail(HQ_ERR_INPUT, "unknown option '%s' (see hpcq quantize --help)", a);
#undef NEEDV
  }
  if (!rc && (!o.model_dir || !o.out_path))
    rc = hq_fail(HQ_ERR_INPUT, "--model and --out are required (see hpcq quantize --help)");
  if (!rc && !gs_given && o.method == HQ_METHOD_HQQ) o.g.group_size = 64;
  if (!rc) rc = hq_quant_opts_validate(&o);
  if (rc) {
    fprintf(stderr, "hpcq quantize: %s\n", hq_last_error());
    return 2;
  }
  struct hq_comm comm;
  rc = hq_comm_init(&comm, &argc, &argv);
  if (rc) {
    fprintf(stderr, "hpcq quantize: %s\n", hq_last_error());
    return 1;
  }
  int usage = 0;
  rc = preflight(&comm, &o, &usage);
  if (!rc) rc = hq_quantize_run(&comm, &o);
  /* every rank says why it stops (the message is agreed, rank 0's line is the usual one) */
  if (rc && comm.rank == 0)
    fprintf(stderr, "hpcq quantize: %s: %s\n", rc == HQ_ERR_INTERRUPTED ? "interrupted" : "error", hq_last_error());
  else if (rc)
    fprintf(stderr, "hpcq quantize (rank %d): %s: %s\n", comm.rank,
            rc == HQ_ERR_INTERRUPTED ? "interrupted" : "error", hq_last_error());
  hq_comm_finalize(&comm);
  return rc == HQ_OK ? 0 : usage ? 2 : rc == HQ_ERR_INTERRUPTED ? 75 : 1;
}
