/* hpcq quantize: the distributed sequential pipeline (DESIGN.md "The job, end to end").
 * Collective over the communicator: every rank calls hq_quantize_run with identical options. */
#ifndef HQ_PIPELINE_H
#define HQ_PIPELINE_H

#include <stdint.h>

#include "comm.h"
#include "gptq.h"

enum hq_method { HQ_METHOD_GPTQ = 0, HQ_METHOD_RTN = 1 };

struct hq_quant_opts {
  const char *model_dir;   /* HF folder: config.json + *.safetensors */
  const char *calib_path;  /* raw int32 tokens */
  const char *out_path;    /* .h5 */
  const char *backend;     /* "cpu" | "cuda" | "auto" */
  enum hq_method method;
  struct hq_gptq_opts g;   /* bits, group size, sym, act-order, static groups, damp, block */
  int64_t nsamples;        /* calibration windows (default 128) */
  int64_t seqlen;          /* window length (default 2048, capped by max_position_embeddings) */
  uint64_t seed;           /* window sampling seed (default 0) */
  int64_t batch;           /* windows per forward call (bounds activation workspace) */
  int resume, overwrite;
  const char *json_summary; /* optional: write a JSON summary (phase times, memory) here */
  int quiet;
};

void hq_quant_opts_default(struct hq_quant_opts *o);
const char *hq_method_name(enum hq_method m);

/* Collective. Returns HQ_OK, or an error status agreed by all ranks (message in
 * hq_last_error() on every rank); HQ_ERR_INTERRUPTED when stopped by SIGTERM/SIGINT after
 * writing a resumable file. */
int hq_quantize_run(const struct hq_comm *comm, const struct hq_quant_opts *o);

/* Not collective. Install SIGTERM/SIGINT handlers that request a stop at the next block end. */
void hq_pipeline_install_signals(void);

#endif
