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
          "  --calib FILE        calibration tokens: raw little-endian int32 ids (GPTQ;\n"
          "                      tools/hpcq_tokenize.py makes them from text)\n"
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
          "  --batch N           windows per forward call (default 8, fewer when the forward\n"
          "                      workspace would exceed 1 GiB; results do not depend on it)\n"
          "  --keep-activations-mib M  keep a block's activations between its linear groups\n"
          "                      when they take at most M MiB per rank (default 4096), so\n"
          "                      each group's input is computed once; 0: recompute them\n"
          "                      from the block input (same results, ~2x forward time)\n"
          "  --block-groups G    split the ranks into G groups that quantize their own\n"
          "                      contiguous ranges of blocks at the same time, each group's\n"
          "                      first block from full-precision inputs (default 1: every\n"
          "                      block from the quantized blocks before it; docs/readme/\n"
          "                      block-groups.md)\n"
          "  --moe-min-tokens N  mixtures of experts: an expert routed fewer calibration\n"
          "                      tokens gets the fallback (default: hidden_size)\n"
          "  --moe-fallback F    block (default: GPTQ with the Hessian of all the block's\n"
          "                      tokens) or rtn (docs/readme/moe.md)\n"
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
          "  --rule PATTERN:KEY=VALUE[,KEY=VALUE...]  (repeatable) other settings for the\n"
          "                      linears whose name (\"model.layers.5.mlp.down_proj\") matches\n"
          "                      the extended regular expression PATTERN from its start (like\n"
          "                      GPTQModel's dynamic / re.match); the first matching rule wins.\n"
          "                      Keys: bits (2, 3, 4, 8), group_size (>= 1, -1), skip=1 (keep\n"
          "                      it unquantized). E.g. --rule 'model\\.layers\\.5\\.mlp\\.down_proj:bits=8'\n"
          "  --rules FILE        rules from a file, one a line ('#' comments), after the --rule\n"
          "                      options before it and before those after it\n"
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

static int parse_method(const char *opt, const char *v, void *dst) {
  enum hq_method *m = dst;
  if (!strcmp(v, "gptq")) *m = HQ_METHOD_GPTQ;
  else if (!strcmp(v, "rtn")) *m = HQ_METHOD_RTN;
  else if (!strcmp(v, "hqq")) *m = HQ_METHOD_HQQ;
  else return hq_fail(HQ_ERR_INPUT, "%s must be gptq, rtn or hqq (got '%s')", opt, v);
  return HQ_OK;
}

static int parse_moe_fallback(const char *opt, const char *v, void *dst) {
  int *f = dst;
  if (!strcmp(v, "block")) *f = HQ_MOE_FALLBACK_BLOCK;
  else if (!strcmp(v, "rtn")) *f = HQ_MOE_FALLBACK_RTN;
  else return hq_fail(HQ_ERR_INPUT, "%s must be block or rtn (got '%s')", opt, v);
  return HQ_OK;
}

static int parse_equalize(const char *opt, const char *v, void *dst) {
  if ((*(int *)dst = hq_equalize_parse(v)) < 0)
    return hq_fail(HQ_ERR_INPUT, "%s must be none, smooth, cle or smooth,cle (got '%s')", opt, v);
  return HQ_OK;
}

/* --rule / --rules: appended to the rules in the order given */
static int parse_rule(const char *opt, const char *v, void *dst) {
  return hq_rules_add(dst, v, opt);
}
static int parse_rules_file(const char *opt, const char *v, void *dst) {
  (void)opt;
  return hq_rules_add_file(dst, v);
}

/* The options into o; *gs_given: --group-size was given. */
static int parse(int argc, char **argv, struct hq_quant_opts *o, int *gs_given,
                 struct hq_rules *rules) {
  const struct hq_opt t[] = {
      HQ_ARG_FN("--rule", rules, parse_rule),
      HQ_ARG_FN("--rules", rules, parse_rules_file),
      HQ_ARG_STR("--model", &o->model_dir),
      HQ_ARG_STR("--calib", &o->calib_path),
      HQ_ARG_STR("--out", &o->out_path),
      HQ_ARG_STR("--backend", &o->backend),
      HQ_ARG_STR("--json-summary", &o->json_summary),
      HQ_ARG_FN("--method", &o->method, parse_method),
      HQ_ARG_FN("--equalize", &o->equalize, parse_equalize),
      HQ_ARG_INT("--bits", &o->g.bits, 2, 8),
      {.name = "--group-size", .kind = HQ_OPT_I64, .dst = &o->g.group_size, .lo = -1,
       .hi = 1 << 30, .given = gs_given},
      HQ_ARG_INT("--act-bits", &o->act_bits, 2, 16),
      HQ_ARG_INT("--hqq-iters", &o->hqq.iters, 0, 10000),
      HQ_ARG_F32("--hqq-p", &o->hqq.lp, 1e-3, 0.999),
      HQ_ARG_F32("--hqq-beta", &o->hqq.beta, 1e-6, 1e12),
      HQ_ARG_F32("--hqq-kappa", &o->hqq.kappa, 1.0, 100.0),
      HQ_ARG_F32("--smooth-alpha", &o->smooth_alpha, 0.0, 1.0),
      HQ_ARG_FLAG("--hqq-scale", &o->hqq.opt_scale),
      HQ_ARG_FLAG("--scale-from-hessian", &o->scale_from_hessian),
      HQ_ARG_F32("--damp", &o->g.percdamp, 1e-8, 10.0),
      HQ_ARG_I64("--nsamples", &o->nsamples, 1, 1 << 24),
      HQ_ARG_I64("--seqlen", &o->seqlen, 2, 1 << 24),
      HQ_ARG_U64("--seed", &o->seed, 0, 1LL << 62),
      HQ_ARG_INT("--block-size", &o->g.block_size, 1, 1 << 16),
      HQ_ARG_I64("--batch", &o->batch, 1, 1 << 20),
      HQ_ARG_I64("--keep-activations-mib", &o->keep_act_mib, 0, 1LL << 40),
      HQ_ARG_INT("--block-groups", &o->block_groups, 1, 1 << 20),
      HQ_ARG_I64("--moe-min-tokens", &o->moe_min_tokens, 0, 1LL << 40),
      HQ_ARG_FN("--moe-fallback", &o->moe_fallback, parse_moe_fallback),
      HQ_ARG_FLAG("--sym", &o->g.sym),
      HQ_ARG_FLAG("--mse", &o->g.mse),
      HQ_ARG_FLAG("--act-order", &o->g.act_order),
      HQ_ARG_FLAG("--static-groups", &o->g.static_groups),
      HQ_ARG_FLAG("--resume", &o->resume),
      HQ_ARG_FLAG("--overwrite", &o->overwrite),
      HQ_ARG_FLAG("--quiet", &o->quiet),
      HQ_ARG_END};
  return hq_cli_parse(argc, argv, t, "quantize", NULL, 0, NULL);
}

/* The options into o, defaults first and checked (hq_quant_opts_validate): HQ_OK, HQ_CLI_HELP
 * (usage printed) or HQ_ERR_INPUT for a usage error. */
static int quantize_args(int argc, char **argv, struct hq_quant_opts *o, struct hq_rules *rules) {
  hq_quant_opts_default(o);
  o->g.group_size = 128;
  o->rules = rules;
  int gs_given = 0;
  int rc = parse(argc, argv, o, &gs_given, rules);
  if (rc == HQ_CLI_HELP) {
    usage(stdout);
    return rc;
  }
  if (!rc && (!o->model_dir || !o->out_path))
    rc = hq_fail(HQ_ERR_INPUT, "--model and --out are required (see hpcq quantize --help)");
  if (!rc && !gs_given && o->method == HQ_METHOD_HQQ) o->g.group_size = 64;
  if (!rc) rc = hq_quant_opts_validate(o);
  return rc;
}

/* Every rank says why it stops (the message is agreed, rank 0's line is the usual one). */
static void report_failure(const struct hq_comm *comm, int rc) {
  const char *what = rc == HQ_ERR_INTERRUPTED ? "interrupted" : "error";
  if (comm->rank == 0) fprintf(stderr, "hpcq quantize: %s: %s\n", what, hq_last_error());
  else fprintf(stderr, "hpcq quantize (rank %d): %s: %s\n", comm->rank, what, hq_last_error());
}

int hq_cli_quantize(int argc, char **argv) {
  struct hq_quant_opts o;
  struct hq_rules rules = {0};
  int rc = quantize_args(argc, argv, &o, &rules);
  if (rc) {
    hq_rules_free(&rules);
    return hq_cli_args_exit(rc, "quantize");
  }
  struct hq_comm comm;
  rc = hq_comm_init(&comm, &argc, &argv);
  if (rc) {
    fprintf(stderr, "hpcq quantize: %s\n", hq_last_error());
    hq_rules_free(&rules);
    return 1;
  }
  int usage = 0;
  rc = preflight(&comm, &o, &usage);
  if (!rc) rc = hq_quantize_run(&comm, &o);
  if (rc) report_failure(&comm, rc);
  hq_comm_finalize(&comm);
  hq_rules_free(&rules);
  return rc == HQ_OK ? 0 : usage ? 2 : rc == HQ_ERR_INTERRUPTED ? 75 : 1;
}
