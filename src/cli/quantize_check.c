/* hpcq quantize: checks before anything is created (src/cli/quantize_check.h). Not collective. */
#include "quantize_check.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "equalize.h"
#include "error.h"
#include "fileio.h"
#include "h5io.h"
#include "model.h"
#include "outpath.h"

static int needs_calib(const struct hq_quant_opts *o) {
  return o->method == HQ_METHOD_GPTQ || o->scale_from_hessian || (o->equalize & HQ_EQ_SMOOTH);
}

static int validate_method(const struct hq_quant_opts *o) {
  const char *m = hq_method_name(o->method);
  if (o->method != HQ_METHOD_GPTQ && (o->g.act_order || o->g.static_groups))
    return hq_fail(HQ_ERR_INPUT, "%s is a GPTQ option (the order of GPTQ's column updates and "
                   "its group parameters); --method %s quantizes every column on its own, so it "
                   "would change nothing but the recorded settings: drop it, or use --method "
                   "gptq", o->g.act_order ? "--act-order" : "--static-groups", m);
  if (o->method == HQ_METHOD_HQQ && o->scale_from_hessian)
    return hq_fail(HQ_ERR_INPUT, "--scale-from-hessian works with gptq and rtn, not hqq (HQQ is "
                   "calibration-free)");
  if (o->method == HQ_METHOD_HQQ) HQ_TRY(hq_hqq_opts_check(&o->hqq));
  if (o->act_bits && (o->act_bits < 2 || o->act_bits > 16))
    return hq_fail(HQ_ERR_INPUT, "--act-bits must be in 2..16 (8 or 4 usually), got %d",
                   o->act_bits);
  if (o->act_bits && o->method != HQ_METHOD_GPTQ && !o->scale_from_hessian)
    return hq_fail(HQ_ERR_INPUT, "--act-bits changes quantization only through the Hessians "
                   "(gptq or --scale-from-hessian); with --method %s measure activation "
                   "quantization with hpcq eval --act-bits instead", m);
  return HQ_OK;
}

/* skip keeps a linear as the model has it: equalization would have rescaled it */
static int validate_rules(const struct hq_quant_opts *o) {
  for (int i = 0; o->rules && i < o->rules->n; i++)
    if (o->rules->r[i].skip && o->equalize)
      return hq_fail(HQ_ERR_INPUT, "rule %d ('%s') skips linears, but --equalize %s rescales "
                     "them together with the norms (a skipped linear is stored as the model has "
                     "it); drop --equalize or the skip rule", i + 1, o->rules->r[i].pattern,
                     hq_equalize_name(o->equalize));
  return HQ_OK;
}

int hq_quant_opts_validate(const struct hq_quant_opts *o) {
  if (o->resume && o->overwrite)
    return hq_fail(HQ_ERR_INPUT, "--resume and --overwrite contradict each other: --resume "
                   "continues the interrupted run in --out, --overwrite starts it again from "
                   "scratch; pass one of them");
  if (o->g.bits != 2 && o->g.bits != 3 && o->g.bits != 4 && o->g.bits != 8)
    return hq_fail(HQ_ERR_INPUT, "--bits must be 2, 3, 4 or 8 (the widths the GPTQ checkpoint "
                   "layout packs), got %d", o->g.bits);
  if (o->g.group_size == 0 || o->g.group_size < -1)
    return hq_fail(HQ_ERR_INPUT, "--group-size %lld: give the columns per group (>= 1, e.g. "
                   "128), or -1 for one group per output channel", (long long)o->g.group_size);
  HQ_TRY(hq_gptq_opts_check(&o->g, 1));
  HQ_TRY(validate_method(o));
  HQ_TRY(validate_rules(o));
  if (needs_calib(o) && !o->calib_path)
    return hq_fail(HQ_ERR_INPUT, "%s needs calibration tokens: --calib FILE (raw int32 token ids "
                   "made with the model's tokenizer, e.g. by tools/hpcq_tokenize.py --model DIR --out "
                   "FILE.i32 TEXT...)", o->method == HQ_METHOD_GPTQ ? "GPTQ"
                   : o->scale_from_hessian ? "--scale-from-hessian" : "--equalize smooth");
  return HQ_OK;
}

/* --out / --json-summary: a regular file or nothing yet. */
static int check_out_path(const char *path, const char *opt) {
  struct stat sb;
  if (!path || stat(path, &sb) != 0 || S_ISREG(sb.st_mode)) return HQ_OK;
  if (S_ISDIR(sb.st_mode))
    return hq_fail(HQ_ERR_INPUT, "%s %s is a directory; give the name of the file to write, e.g. "
                   "%s/result.h5", opt, path, path);
  return hq_fail(HQ_ERR_INPUT, "%s %s is %s, not a regular file: hpcq writes its output to a "
                 "regular file (the result with MPI-IO, on a file system all ranks share); "
                 "choose another name", opt, path, hq_file_kind((unsigned)sb.st_mode));
}

static double phys_bytes(void) {
  const long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
  return pages > 0 && psz > 0 ? (double)pages * (double)psz : 0.0;
}

/* The pipeline's largest per-rank allocations for the calibration windows (src/pipeline/pipeline.c):
 * the sampled windows (every rank), its share of them, their activations and one forward
 * workspace of batch x seqlen tokens. Activations and workspace live on the device with cuda. */
static int check_memory(const struct hq_quant_opts *o, const struct hq_model_config *c,
                        int nranks, int64_t seqlen) {
  const double nloc = (double)((o->nsamples + nranks - 1) / nranks), S = (double)seqlen;
  const double batch = (double)(o->batch > 0 ? o->batch
                                              : hq_pipeline_default_batch(c, (int64_t)nloc, seqlen));
  const double per_tok = (double)hq_pipeline_ws_floats_per_token(c);
  const double host = 4.0 * ((double)o->nsamples * S + nloc * S);
  const int dev = o->backend && strcmp(o->backend, "cpu") != 0;
  const double act = 4.0 * nloc * S * (double)c->hidden, ws = 4.0 * batch * S * per_tok;
  const double need = host + (dev ? 0.0 : act + ws), have = phys_bytes();
  if (have <= 0.0 || need <= have) return HQ_OK;
  const double G = 1024.0 * 1024.0 * 1024.0;
  return hq_fail(HQ_ERR_INPUT, "--nsamples %lld x --seqlen %lld needs about %.1f GiB per rank "
                 "(windows %.1f GiB, activations %.1f GiB, forward workspace %.1f GiB for "
                 "--batch %.0f on %d rank%s), more than this node's %.1f GiB of memory: use "
                 "fewer --nsamples, a smaller --batch or more ranks", (long long)o->nsamples,
                 (long long)seqlen, need / G, host / G, dev ? 0.0 : act / G, dev ? 0.0 : ws / G,
                 batch, nranks, nranks == 1 ? "" : "s", have / G);
}

static int check_windows(const struct hq_quant_opts *o, int nranks) {
  struct hq_model_config c;
  if (hq_config_load(o->model_dir, &c) != HQ_OK) { /* the pipeline reports it in full */
    hq_error_clear();
    return HQ_OK;
  }
  const int64_t seqlen = o->seqlen > c.max_pos ? c.max_pos : o->seqlen;
  int rc = hq_config_check_seqlen(&c, seqlen, "--seqlen");
  if (!rc && o->nsamples < nranks)
    rc = hq_fail(HQ_ERR_INPUT, "--nsamples %lld is smaller than the %d ranks: every rank needs at "
                 "least one calibration window", (long long)o->nsamples, nranks);
  if (!rc) rc = check_memory(o, &c, nranks, seqlen);
  hq_config_free(&c);
  return rc;
}

/* Mixtures of experts: one block group, no equalization, the CPU backend. */
static int check_moe(const struct hq_quant_opts *o) {
  struct hq_model_config c;
  if (hq_config_load(o->model_dir, &c) != HQ_OK) { /* the pipeline reports it in full */
    hq_error_clear();
    return HQ_OK;
  }
  const char *what = !c.n_experts ? NULL : o->block_groups > 1 ? "--block-groups above 1"
                     : o->equalize ? "--equalize" : !strcmp(o->backend, "cuda") ? "--backend cuda"
                     : NULL;
  int rc = HQ_OK;
  if (what)
    rc = hq_fail(HQ_ERR_UNSUPPORTED, "%s is a mixture of experts (%s, %lld experts): %s is not "
                 "supported for it yet (docs/readme/moe.md); leave it out", o->model_dir,
                 c.arch_name, (long long)c.n_experts, what);
  hq_config_free(&c);
  return rc;
}

/* --rule / --rules against the model's linears (not for mixtures of experts yet) */
static int check_rules(const struct hq_quant_opts *o) {
  struct hq_model_config c;
  if (!o->rules || !o->rules->n) return HQ_OK;
  if (hq_config_load(o->model_dir, &c) != HQ_OK) { /* the pipeline reports it in full */
    hq_error_clear();
    return HQ_OK;
  }
  int rc = c.n_experts ? hq_fail(HQ_ERR_UNSUPPORTED, "%s is a mixture of experts: --rule / "
                                 "--rules are not supported for it yet; leave them out",
                                 o->model_dir)
                       : hq_rules_check_model(o->rules, &c, o->g.bits, o->g.group_size);
  hq_config_free(&c);
  return rc;
}

int hq_quant_preflight(const struct hq_quant_opts *o, int nranks, int *usage) {
  *usage = 0;
  HQ_TRY(check_moe(o));
  *usage = 1;
  HQ_TRY(check_rules(o));
  HQ_TRY(check_out_path(o->out_path, "--out"));
  HQ_TRY(check_out_path(o->json_summary, "--json-summary"));
  if (o->block_groups > nranks)
    return hq_fail(HQ_ERR_INPUT, "--block-groups %d needs at least %d ranks (one per group), this "
                   "run has %d: start more ranks (mpirun -np %d) or use fewer groups",
                   o->block_groups, o->block_groups, nranks, o->block_groups);
  /* the windows are split over the ranks of a group: the largest has this many */
  if (needs_calib(o)) HQ_TRY(check_windows(o, (nranks + o->block_groups - 1) / o->block_groups));
  *usage = 0;
  HQ_TRY(hq_out_lock_busy(o->out_path));
  struct stat sb;
  if (o->resume && stat(o->out_path, &sb) == 0) return hq_result_check_resumable(o->out_path);
  return HQ_OK;
}

#define LEFTOVER "it is the leftover of a run killed before its first block was flushed to disk, " \
                 "and holds nothing that can be resumed: rerun with --overwrite (it starts "      \
                 "from scratch)"

/* What the first bytes say: 1 HDF5 signature, 2 hpcq's placeholder (h5io.c precreate), 0 other. */
static int file_magic(const char *path) {
  FILE *f;
  if (hq_fopen_regular(path, "hpcq result", &f) != HQ_OK) return -1;
  char b[8] = {0};
  const size_t n = fread(b, 1, sizeof b, f);
  fclose(f);
  if (n == 8 && !memcmp(b, "\x89HDF\r\n\x1a\n", 8)) return 1;
  return n >= 5 && !memcmp(b, "hpcq ", 5) ? 2 : 0;
}

int hq_result_check_resumable(const char *path) {
  const int magic = file_magic(path);
  if (magic < 0) return HQ_ERR_IO; /* message from hq_fopen_regular */
  if (magic == 2) return hq_fail(HQ_ERR_INPUT, "%s is not an HDF5 file yet: " LEFTOVER, path);
  if (magic == 0)
    return hq_fail(HQ_ERR_INPUT, "%s is not an HDF5 file, so not an hpcq result (nothing to "
                   "resume or inspect)", path);
  struct hq_h5 *h = NULL;
  if (hq_h5_open_read(path, 1, &h) != HQ_OK)
    return hq_fail_ctx(HQ_ERR_INPUT, "%s cannot be resumed (if %s is the leftover of a run killed "
                       "before its first flush, rerun with --overwrite): ", path, path);
  int rc = HQ_OK;
  struct hq_h5_state st;
  if (!hq_h5_attr_exists(h, "/", "n_blocks"))
    rc = hq_fail(HQ_ERR_INPUT, "%s has no progress record (root attribute n_blocks and "
                 "/progress): " LEFTOVER, path);
  else if (hq_h5_status(h, &st) != HQ_OK)
    rc = hq_fail_ctx(HQ_ERR_INPUT, "%s cannot be resumed (rerun with --overwrite): ", path);
  else
    hq_h5_state_free(&st);
  hq_h5_close(h);
  return rc;
}
