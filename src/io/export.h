/* Export of an hpcq result (.h5) as a GPTQ safetensors checkpoint (`hpcq export`), and the
 * small streaming safetensors writer it uses. Not collective (one process).
 *
 * Checkpoint written into DIR (docs/readme/export.md):
 *   model.safetensors, or model-0000K-of-0000N.safetensors + model.safetensors.index.json
 *     when the tensors exceed the shard size;
 *     <prefix>.qweight int32 [in*b/32, out], .qzeros int32 [ngroups, out*b/32],
 *     .scales F16 [ngroups, out], .g_idx int32 [in]  (layout of src/io/pack.h) per quantized
 *     linear; every other tensor in its original dtype (BF16 stays BF16);
 *   config.json = the source config.json + "quantization_config"; quantize_config.json;
 *   tokenizer / generation files copied from the source model folder when present.
 * Everything is written to hidden temporary files in DIR (".NAME.tmp") and renamed at the
 * end, config.json last, so an interrupted export never leaves a checkpoint that looks
 * complete. Memory: one linear (packed) or one unquantized tensor (fp32 + original dtype)
 * at a time. */
#ifndef HQ_EXPORT_H
#define HQ_EXPORT_H

#include <stddef.h>
#include <stdint.h>

#include "model.h" /* HQ_ST_MAXDIM */
#include "pack.h"  /* enum hq_pack_format */

/* ---------------- streaming safetensors writer ---------------- */

/* One tensor of a file to write. */
struct hq_stw_entry {
  const char *name;  /* tensor name (not copied: must outlive hq_stw_open's header build) */
  const char *dtype; /* safetensors dtype string: "I32", "F16", "BF16", "F32" */
  int ndim;          /* 0..HQ_ST_MAXDIM */
  int64_t shape[HQ_ST_MAXDIM];
  size_t nbytes;     /* product(shape) * dtype size */
};

struct hq_stw; /* opaque */

/* Create `path` and write the header for the tensors e[0..n) in THIS order: data offsets are
 * consecutive (no holes, as the format requires), the header is padded with spaces so the
 * data starts on an 8-byte boundary, and "__metadata__" is {"format": "pt"}. The data must
 * then be appended with hq_stw_write in the same order. HQ_ERR_INPUT for an inconsistent
 * entry (nbytes != numel * dtype size, unknown dtype), HQ_ERR_IO when the file cannot be
 * created. */
int hq_stw_open(const char *path, const struct hq_stw_entry *e, int64_t n, struct hq_stw **out);
/* Append `nbytes` bytes of tensor data (a whole tensor or a piece of one). HQ_ERR_INPUT when
 * more bytes are written than the header announced. */
int hq_stw_write(struct hq_stw *w, const void *data, size_t nbytes);
/* Check that exactly the announced bytes were written, fsync and close. The handle is freed
 * in every case; on error the file is left for the caller to remove. */
int hq_stw_close(struct hq_stw *w);
/* Close without checks (error paths). NULL ok. */
void hq_stw_abort(struct hq_stw *w);

/* ---------------- GPTQ export ---------------- */

struct hq_export_opts {
  enum hq_pack_format format; /* checkpoint_format to write; 0 = HQ_PACK_GPTQ (v1) */
  int64_t max_shard_bytes;    /* start a new shard above this many data bytes; <= 0: 2 GB */
  int overwrite;              /* replace the checkpoint files of a non-empty DIR */
  int quiet;                  /* no progress lines / warnings on stderr */
};

struct hq_export_stats {
  int64_t ntensors;      /* tensors written */
  int64_t nlinears;      /* quantized linears among them (4 tensors each) */
  int nshards;           /* safetensors files */
  int64_t bytes;         /* data bytes of all shards (index "total_size") */
  int ntokenizer_files;  /* files copied from the source model folder */
  double seconds;        /* wall time of the export */
  int64_t peak_rss_kb;   /* getrusage ru_maxrss of the process at the end */
};

/* Parse a size such as "2GB", "500MB", "1.5GiB", "4096" (bytes). GB/MB/KB are powers of
 * 1000 and GiB/MiB/KiB powers of 1024 (as Hugging Face's max_shard_size). */
int hq_export_parse_size(const char *s, int64_t *bytes);

/* Export the hpcq result `h5_path` as a GPTQ checkpoint into directory `out_dir` (created
 * when missing). Refuses, with a message saying what to do instead: an incomplete or
 * non-hpcq file; a non-empty out_dir without o->overwrite; a v1 ("gptq") export of a
 * result holding an asymmetric zero point of 0 (names the linear, group and output row, and
 * suggests --checkpoint-format gptq_v2 or quantizing with --sym); linears whose bits or
 * group size differ from the file's settings. On failure no temporary file is left behind
 * and an existing checkpoint in out_dir is untouched. */
int hq_export_gptq(const char *h5_path, const char *out_dir, const struct hq_export_opts *o,
                   struct hq_export_stats *st);

#endif
