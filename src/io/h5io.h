/* hpcq's output: ONE HDF5 file per run (format version 2, docs/readme/output-format.md).
 *
 * Writer (collective, MPI-IO): every rank calls every writer function with identical
 * names/shapes in the same order; datasets are written with H5FD_MPIO_COLLECTIVE transfers,
 * each rank its own hyperslab (none where it owns nothing). Attribute VALUES and whole-tensor
 * data are taken from rank 0 (broadcast inside), so other ranks may pass anything for them.
 * Every collective writer function agrees on its status across ranks (hq_comm_agree) before
 * returning: it returns the same status on every rank, and hq_last_error() reads
 * "rank R: ..." everywhere when rank R failed.
 *
 * Reader: hq_h5_open_read opens the file serially (no MPI-IO; any process, any rank count).
 * Readers also work on a handle from hq_h5_open_rw (each rank reads independently).
 *
 * Layout:
 *   /                      root attributes (hpcq_format_version, settings_json, n_blocks, ...)
 *   /tensors/<HF name>     unquantized tensors in their original dtype
 *   /linears/<HF prefix>/  qweight int32 [in*bits/32, out], qzeros int32 [ngroups, out*bits/32],
 *                          scales float16 [ngroups, out], g_idx int32 [in] (src/io/pack.h layout)
 *   /progress              int8 [n_blocks] block-done flags; root attribute complete = 1 at end
 */
#ifndef HQ_H5IO_H
#define HQ_H5IO_H

#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "model.h" /* enum hq_dtype */
#include "pack.h"  /* struct hq_packed, enum hq_pack_format */

#define HQ_H5_FORMAT_VERSION 2

struct hq_h5; /* opaque handle */

/* Not collective. Call first in main(), before MPI_Init: see h5io.c (HDF5 shutdown after a
 * failed close, SIGXFSZ). */
void hq_h5_process_init(void);

/* ---------------- writer (collective) ---------------- */

/* Collective. Create `path` (truncating it only when `overwrite`). Fails on every rank, with a
 * message, when the file exists and !overwrite, or the path cannot be created (missing
 * directory, no permission). Writes the root attributes hpcq_format_version, hpcq_version,
 * created (ISO 8601 UTC, rank 0's clock) and nranks. */
int hq_h5_create(const struct hq_comm *c, const char *path, int overwrite, struct hq_h5 **out);

/* What an existing file says about a run (hq_h5_open_rw, hq_h5_status). */
struct hq_h5_state {
  int64_t n_blocks;    /* root attribute n_blocks (0 when hq_h5_progress_init never ran) */
  int64_t blocks_done; /* leading blocks whose /progress flag is 1: resume from this block */
  int64_t flags_set;   /* number of /progress flags set (any position) */
  int complete;        /* root attribute complete == 1 */
  char *settings_json; /* root attribute settings_json (malloc'ed, NULL when absent) */
};
void hq_h5_state_free(struct hq_h5_state *s); /* Not collective. */

/* Collective. Open an existing hpcq file read-write for --resume. Fails on every rank when the
 * file is missing, unreadable, not an hpcq file, or of a newer format version. `st` (may be
 * NULL) receives the progress and settings_json, identical on every rank. */
int hq_h5_open_rw(const struct hq_comm *c, const char *path, struct hq_h5 **out,
                  struct hq_h5_state *st);

/* Collective for writable handles (also flushes), not collective for read handles. NULL ok. */
int hq_h5_close(struct hq_h5 *h);

/* Collective. Set (create or replace) an attribute on the object at `obj` ("/" for the root,
 * "/linears/<name>" for a linear, "/tensors/<name>"); rank 0's value is written. */
int hq_h5_attr_set_str(struct hq_h5 *h, const char *obj, const char *name, const char *value);
int hq_h5_attr_set_i64(struct hq_h5 *h, const char *obj, const char *name, int64_t value);
int hq_h5_attr_set_f64(struct hq_h5 *h, const char *obj, const char *name, double value);
int hq_h5_attr_set_i64_array(struct hq_h5 *h, const char *obj, const char *name,
                             const int64_t *values, int64_t n);
int hq_h5_attr_set_f64_array(struct hq_h5 *h, const char *obj, const char *name,
                             const double *values, int64_t n);

/* Collective. /tensors/<name> in its original dtype (F32 float32, F16 IEEE half, BF16 uint16
 * raw bits with attribute dtype="bfloat16"); data [shape] row-major is read on rank 0 only
 * (other ranks may pass NULL). Replaces an existing dataset of the same name and shape. */
int hq_h5_write_tensor(struct hq_h5 *h, const char *name, enum hq_dtype dtype, int ndim,
                       const int64_t *shape, const void *data);

/* One quantized linear (W is rows x cols = out x in). */
struct hq_h5_linear_desc {
  int64_t rows, cols;          /* out, in features */
  int bits;                    /* 2, 3, 4, 8 */
  int64_t group_size;          /* columns per group; <= 0: per output channel */
  int64_t ngroups;             /* ceil(cols / group_size), 1 per channel */
  enum hq_pack_format format;  /* zero-point convention of qzeros (hpcq writes gptq_v2) */
};

/* Collective. Create /linears/<name> with its four datasets (shapes checked with
 * hq_pack_check: no padding) and attributes bits, group_size, rows, cols, zero_convention.
 * When the group already exists with the same description (a resumed run) it is reused. */
int hq_h5_linear_create(struct hq_h5 *h, const char *name, const struct hq_h5_linear_desc *d);

/* Collective. Every rank writes its slab (output rows [slab->row0, +nrows)) of the linear's
 * qweight/qzeros/scales as hyperslabs; a rank that owns nothing passes NULL. g_idx is written
 * from the lowest rank passing a slab (all owners hold the same g_idx). May be called more
 * than once per linear (e.g. one row range per call). */
int hq_h5_linear_write(struct hq_h5 *h, const char *name, const struct hq_packed *slab);

/* Per-linear statistics, written as attributes of /linears/<name> (rank 0's values). */
struct hq_h5_linear_stats {
  double loss_proxy_gptq;  /* tr(dW H dW^T) of the GPTQ result (already summed over ranks) */
  double loss_proxy_rtn;   /* the same for round-to-nearest on the same grid */
  double loss_ref;         /* the reference implementation's loss: sum (w-q)^2/Hinv_jj^2/2 */
  double damp_used;        /* damping actually added (after retries), absolute */
  int64_t dead_cols;       /* columns with H[i,i] == 0 */
  int nphases;             /* seconds per phase: attribute "seconds_<phase_names[i]>" */
  const char *const *phase_names;
  const double *phase_seconds;
  const int64_t *owner_rows; /* [nranks] rows each rank quantized; NULL to skip */
  int nranks;
};
/* Collective. */
int hq_h5_linear_stats(struct hq_h5 *h, const char *name, const struct hq_h5_linear_stats *s);

/* Collective. Create /progress int8 [n_blocks] (all 0) and the root attribute n_blocks; on a
 * resumed file with the same n_blocks it keeps the flags. */
int hq_h5_progress_init(struct hq_h5 *h, int64_t n_blocks);
/* Collective. Mark block b done (after ALL its data is written) and flush the file to disk, so
 * that a run killed later resumes after block b. */
int hq_h5_block_done(struct hq_h5 *h, int64_t b);
/* Not collective. 1 when block b is marked done on this writable handle (the flags read at
 * hq_h5_open_rw or set since), else 0. */
int hq_h5_block_is_done(const struct hq_h5 *h, int64_t b);
/* Collective. Check every block is marked, then write the root attribute complete = 1 and flush.
 * Only a file with complete = 1 is a finished result. */
int hq_h5_complete(struct hq_h5 *h);

/* Not collective. 1 when the last hyperslab write of hq_h5_linear_write on this rank was
 * performed as collective MPI-IO (H5Pget_mpio_actual_io_mode), 0 otherwise. */
int hq_h5_last_write_collective(const struct hq_h5 *h);

/* Not collective. Test hook: write whole tensors in pieces of at most `bytes` (default and
 * <= 0: 512 MiB). Set the same value on every rank. */
void hq_h5_set_piece_bytes_for_test(int64_t bytes);

/* ---------------- reader (not collective) ---------------- */

/* Not collective. Open serially for reading. A file that is not complete is refused with
 * "incomplete: N of M blocks written ..." unless allow_incomplete (inspect, resume checks). */
int hq_h5_open_read(const char *path, int allow_incomplete, struct hq_h5 **out);

/* Not collective. Progress and settings of an open file (any handle). */
int hq_h5_status(struct hq_h5 *h, struct hq_h5_state *st);

/* Not collective. 1 when the attribute exists on obj, else 0. */
int hq_h5_attr_exists(struct hq_h5 *h, const char *obj, const char *name);
/* Not collective. *value is malloc'ed (caller frees). */
int hq_h5_attr_get_str(struct hq_h5 *h, const char *obj, const char *name, char **value);
/* Not collective. Integer or float attributes (scalar or first element). */
int hq_h5_attr_get_i64(struct hq_h5 *h, const char *obj, const char *name, int64_t *value);
int hq_h5_attr_get_f64(struct hq_h5 *h, const char *obj, const char *name, double *value);
/* Not collective. *values malloc'ed [*n]. */
int hq_h5_attr_get_i64_array(struct hq_h5 *h, const char *obj, const char *name,
                             int64_t **values, int64_t *n);

/* Not collective. Names (malloc'ed array of malloc'ed strings, free with hq_h5_names_free) of
 * the quantized linears ("model.layers.0.self_attn.q_proj", creation = plan order) or of the
 * unquantized tensors. */
int hq_h5_list_linears(struct hq_h5 *h, char ***names, int64_t *n);
int hq_h5_list_tensors(struct hq_h5 *h, char ***names, int64_t *n);
void hq_h5_names_free(char **names, int64_t n);

/* Not collective. dtype/ndim/shape of /tensors/<name>. */
int hq_h5_tensor_info(struct hq_h5 *h, const char *name, enum hq_dtype *dtype, int *ndim,
                      int64_t shape[HQ_ST_MAXDIM]);
/* Not collective. /tensors/<name> as fp32 (malloc'ed, *numel elements; exact for all dtypes),
 * its checksum verified. */
int hq_h5_read_tensor_f32(struct hq_h5 *h, const char *name, float **out, int64_t *numel);

/* Not collective. Rows [r0, r0+nr) of the first dimension of /tensors/<name> as raw bytes of
 * its stored type (what hq_h5_tensor_info says; bfloat16 as its uint16 bits) into buf;
 * *sum += their hq64 terms. After all rows, hq_h5_tensor_check_sum compares the sum with the
 * tensor's checksum: a reader streaming a tensor in pieces must call it before trusting the
 * data. */
int hq_h5_read_tensor_rows(struct hq_h5 *h, const char *name, int64_t r0, int64_t nr, void *buf,
                           uint64_t *sum);
int hq_h5_tensor_check_sum(struct hq_h5 *h, const char *name, uint64_t sum);

/* Not collective. Description of /linears/<name> (from its attributes and dataset shapes). */
int hq_h5_linear_info(struct hq_h5 *h, const char *name, struct hq_h5_linear_desc *d);
/* Not collective. Read the whole linear as one slab: `p` is initialised with hq_pack_init
 * (row0 0, nrows = rows) and filled; free with hq_pack_free. Fails (nothing returned) when a
 * dataset's content does not match its checksum or not all rows were written. */
int hq_h5_linear_read(struct hq_h5 *h, const char *name, struct hq_packed *p);
/* Not collective. Only the qzeros of the linear (int32 [ngroups, out*bits/32], small), its
 * checksum verified: `p` gets the description (bits, format, in, out, ngroups; row0 0, nrows =
 * out) and qzeros, the other arrays NULL; free with hq_pack_free. */
int hq_h5_linear_read_qzeros(struct hq_h5 *h, const char *name, struct hq_packed *p);

#endif
