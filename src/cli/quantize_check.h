/* hpcq quantize: every check that can be made before the pipeline creates or opens its output,
 * so that a bad option never leaves a file behind, and the recognition of a result file that
 * cannot be resumed. Not collective (the CLI runs the preflight on rank 0 and agrees).
 *
 * Exit-status classes (src/cli/cli_quantize.c): a failure of hq_quant_opts_validate, or one of
 * hq_quant_preflight with *usage set, is a usage error (exit 2); anything else exits 1. */
#ifndef HQ_QUANTIZE_CHECK_H
#define HQ_QUANTIZE_CHECK_H

#include "pipeline.h"

/* The options alone (no file is touched): bits 2/3/4/8, a group size of -1 or >= 1 (0 is
 * refused: use -1 for per channel), --resume with --overwrite (contradictory), GPTQ-only
 * options (--act-order, --static-groups) with rtn/hqq, --act-bits / --scale-from-hessian /
 * hqq settings, calibration needed but no --calib. HQ_ERR_INPUT with a message. */
int hq_quant_opts_validate(const struct hq_quant_opts *o);

/* With the model's config.json, the rank count and the paths: --out and --json-summary must not
 * be a directory or a special file (a FIFO would block the collective open); with --resume an
 * existing --out must be resumable (hq_result_check_resumable); the calibration windows must
 * fit: at least one per rank, --seqlen within a Mistral sliding_window, and the per-rank
 * memory of --nsamples x --seqlen windows (plus the --batch workspace) below this node's
 * memory. *usage is set to 1 when the failure is an option error. */
int hq_quant_preflight(const struct hq_quant_opts *o, int nranks, int *usage);

/* An existing hpcq output that --resume (or inspect) can use: HQ_ERR_INPUT, with a message
 * saying to rerun with --overwrite, when it is the leftover of a run killed before its first
 * flush (the 32-byte placeholder hpcq writes before the HDF5 file, an HDF5 file that does not
 * open, or one without a progress record), or not an hpcq file at all. */
int hq_result_check_resumable(const char *path);

#endif
