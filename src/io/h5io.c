/* hpcq's HDF5 output file: collective writer over MPI-IO and serial reader (src/io/h5io.h,
 * docs/readme/output-format.md). */
#include "h5io.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "fileio.h"
#include "h5sum.h"
#include "quant.h"

#ifndef HQ_VERSION
#define HQ_VERSION "unknown"
#endif

/* Largest slab of one H5Dwrite of a whole tensor (bytes); bigger tensors go in row pieces so
 * no MPI-IO call sees a count above INT_MAX. */
static size_t hq_h5_piece_bytes = (size_t)1 << 29;

/* Not collective. Test hook: largest piece of one whole-tensor write (<= 0: 512 MiB). */
void hq_h5_set_piece_bytes_for_test(int64_t bytes) {
  hq_h5_piece_bytes = bytes > 0 ? (size_t)bytes : (size_t)1 << 29;
}

struct hq_h5 {
  hid_t file;
  const struct hq_comm *c; /* NULL for a serial (read-only) handle */
  int writable;
  char *path;
  hid_t dxpl;              /* collective transfer list (writable handles), else H5P_DEFAULT */
  hid_t f16;               /* IEEE binary16 little-endian, as h5py's float16 */
  int last_coll;           /* hq_h5_last_write_collective */
  char *broken;            /* writer: the agreed message of an I/O failure; no HDF5 call
                            * touches the file after it (hq_h5_close abandons the file) */
  int complete_set;        /* the attribute complete = 1 may have reached the file */
  int complete_flushed;    /* ... and the complete file was flushed: nothing left to write */
  int8_t *flags;           /* writer: its copy of /progress (identical on every rank) */
  int64_t nflags;
};

/* ---------------- helpers ---------------- */

static herr_t walk_cb(unsigned n, const H5E_error2_t *e, void *data) {
  char *buf = (char *)data;
  if (n == 0 && e->desc) snprintf(buf, 512, "%s", e->desc);
  return 0;
}

static int h5vfail(int status, const char *cause, const char *fmt, va_list ap) {
  char msg[1200], detail[512] = "";
  vsnprintf(msg, sizeof msg, fmt, ap);
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_cb, detail);
  H5Eclear2(H5E_DEFAULT);
  if (cause && cause[0] && detail[0]) return hq_fail(status, "%s: %s (HDF5: %s)", msg, cause, detail);
  if (cause && cause[0]) return hq_fail(status, "%s: %s", msg, cause);
  if (detail[0]) return hq_fail(status, "%s (HDF5: %s)", msg, detail);
  return hq_fail(status, "%s", msg);
}

/* Fail with `fmt` plus the innermost HDF5 error description (when there is one). */
static int h5fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int h5fail(int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = h5vfail(status, NULL, fmt, ap);
  va_end(ap);
  return rc;
}

#define HQ_H5_PROBE_BYTES ((off_t)1 << 20)

static void say_free(const char *path, char *buf, size_t n, const char *what) {
  struct statvfs vf;
  if (statvfs(path, &vf) == 0)
    snprintf(buf, n, "%s: %.1f MB free on the file system of %s; free space or choose another "
             "--out", what, (double)vf.f_bavail * (double)vf.f_frsize / 1e6, path);
  else
    snprintf(buf, n, "%s; free space or choose another --out", what);
}

/* Whether `path` can grow, from the operating system: the process's file size limit allows
 * `limit_end` bytes, and the file system has room up to `end` (fallocate of the missing range,
 * keeping the size; statvfs where the file system cannot preallocate). "" when nothing is in
 * the way; else what is, in words (errno's). */
static void room_cause(const char *path, uint64_t limit_end, uint64_t end, char *buf, size_t n) {
  buf[0] = 0;
  struct stat st;
  struct rlimit rl;
  if (stat(path, &st) != 0) {
    snprintf(buf, n, "%s", strerror(errno));
    return;
  }
  if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && limit_end > (uint64_t)rl.rlim_cur) {
    snprintf(buf, n, "file size limit exceeded (EFBIG: this process may write files of at most "
             "%llu bytes, ulimit -f); raise the limit", (unsigned long long)rl.rlim_cur);
    return;
  }
  if (end <= (uint64_t)st.st_size) return;
  const off_t need = (off_t)(end - (uint64_t)st.st_size);
  int fd = open(path, O_WRONLY);
  int e = fd < 0 ? errno : fallocate(fd, FALLOC_FL_KEEP_SIZE, st.st_size, need) ? errno : 0;
  if (fd >= 0) close(fd);
  struct statvfs vf;
  if ((e == EOPNOTSUPP || e == ENOSYS) && statvfs(path, &vf) == 0 &&
      (double)vf.f_bavail * (double)vf.f_frsize < (double)need)
    e = ENOSPC;
  if (e == ENOSPC) say_free(path, buf, n, "no space left on device (ENOSPC)");
  else if (e == EDQUOT) say_free(path, buf, n, "disk quota exceeded (EDQUOT)");
  else if (e == EFBIG) snprintf(buf, n, "file too large (EFBIG)");
  else if (e && e != EOPNOTSUPP && e != ENOSYS) snprintf(buf, n, "%s", strerror(e));
}

/* Why writing `path` failed: room_cause for HQ_H5_PROBE_BYTES more than its size. */
static void io_cause(const char *path, char *buf, size_t n) {
  struct stat st;
  uint64_t size = stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
  room_cause(path, size + (uint64_t)HQ_H5_PROBE_BYTES, size + (uint64_t)HQ_H5_PROBE_BYTES, buf, n);
}

/* Fail after a write/flush/close of h's file: the message says why when the OS can tell. */
static int h5fail_io(const struct hq_h5 *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int h5fail_io(const struct hq_h5 *h, const char *fmt, ...) {
  char cause[600];
  io_cause(h->path, cause, sizeof cause);
  va_list ap;
  va_start(ap, fmt);
  int rc = h5vfail(HQ_ERR_IO, cause, fmt, ap);
  va_end(ap);
  return rc;
}

static void h5_quiet(void) {
  static int done = 0;
  if (!done) {
    H5open();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* we report errors ourselves */
    done = 1;
  }
}

/* Not collective. HDF5 is initialised before MPI_Init so that it does not hook its shutdown
 * into MPI_Finalize, and never shut down at exit: HDF5 1.10 crashes shutting down with a file
 * whose close failed (a full disk), and hpcq closes every file it can itself. Writes past
 * `ulimit -f` fail with EFBIG (reported) instead of killing the process with SIGXFSZ. */
void hq_h5_process_init(void) {
  signal(SIGXFSZ, SIG_IGN);
  H5dont_atexit();
  h5_quiet();
}

/* Agree on a status over the writer's ranks (serial handles: unchanged). An agreed I/O
 * failure (HQ_ERR_IO: a write, flush or metadata operation of HDF5 failed on some rank) marks
 * a writer broken on every rank: no rank makes another HDF5 call on the file, since HDF5's own
 * collectives could hang once the ranks' states differ, and hq_h5_close abandons it. */
static int agree(struct hq_h5 *h, int rc) {
  if (h->c) rc = hq_comm_agree(h->c, rc);
  if (rc == HQ_ERR_IO && h->writable && !h->broken) h->broken = strdup(hq_last_error());
  return rc;
}

/* Collective. Room for what a flush writes, agreed BEFORE H5Fflush: a write that fails
 * inside it (collective metadata writes) can fail on one rank and succeed on the others,
 * which then wait in its MPI_File_sync for ever. Every rank checks that its file size limit
 * allows HQ_H5_FLUSH_SLACK bytes beyond the end of the file (more than the metadata of a
 * block) and reserves HQ_H5_PROBE_BYTES there (room_cause). The end of the file is the
 * larger of its size and HDF5's end of allocation (H5Fget_eoa; 0 with the MPI-IO driver of
 * HDF5 1.10). */
#define HQ_H5_FLUSH_SLACK ((uint64_t)64 << 10)
static int room_to_flush(struct hq_h5 *h) {
  char cause[600] = "";
  haddr_t eoa = 0;
  struct stat st;
  uint64_t end = stat(h->path, &st) == 0 ? (uint64_t)st.st_size : 0;
  if (H5Fget_eoa(h->file, &eoa) >= 0 && (uint64_t)eoa > end && eoa != HADDR_UNDEF) end = (uint64_t)eoa;
  room_cause(h->path, end + HQ_H5_FLUSH_SLACK, end + (uint64_t)HQ_H5_PROBE_BYTES, cause, sizeof cause);
  int rc = cause[0] ? hq_fail(HQ_ERR_IO, "cannot flush %s: %s", h->path, cause) : HQ_OK;
  return agree(h, rc);
}

static hid_t make_f16(void) {
  hid_t t = H5Tcopy(H5T_IEEE_F32LE);
  H5Tset_fields(t, 15, 10, 5, 0, 10);
  H5Tset_size(t, 2);
  H5Tset_ebias(t, 15);
  H5Tset_precision(t, 16);
  return t;
}

static struct hq_h5 *handle_new(const char *path, const struct hq_comm *c, int writable) {
  struct hq_h5 *h = hq_xcalloc(1, sizeof *h);
  h->file = H5I_INVALID_HID;
  h->c = c;
  h->writable = writable;
  h->path = strdup(path);
  h->f16 = make_f16();
  h->dxpl = H5P_DEFAULT;
  if (writable) {
    h->dxpl = H5Pcreate(H5P_DATASET_XFER);
    H5Pset_dxpl_mpio(h->dxpl, H5FD_MPIO_COLLECTIVE);
  }
  return h;
}

static void handle_free(struct hq_h5 *h) {
  if (!h) return;
  if (h->dxpl != H5P_DEFAULT) H5Pclose(h->dxpl);
  H5Tclose(h->f16);
  free(h->path);
  free(h->broken);
  free(h->flags);
  free(h);
}

static hid_t fapl_mpio(const struct hq_comm *c) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_fapl_mpio(fapl, c->comm, MPI_INFO_NULL);
  H5Pset_coll_metadata_write(fapl, 1);
#if H5_VERSION_GE(1, 10, 2)
  H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V110);
#else
  H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);
#endif
  return fapl;
}

/* Broadcast a byte buffer's content from rank 0 (writers take rank 0's values). */
static void bcast0(const struct hq_h5 *h, void *buf, size_t bytes) {
  if (h->c && h->c->size > 1) hq_comm_bcast(h->c, buf, bytes, 0);
}

static int is_root(const struct hq_h5 *h) { return !h->c || h->c->rank == 0; }

/* Every writer function starts here: a handle broken by an agreed I/O failure fails at once
 * (on every rank, since the failure was agreed) without touching HDF5. */
static int need_writable(const struct hq_h5 *h, const char *what) {
  if (!h || !h->writable)
    return hq_fail(HQ_ERR_INPUT, "%s: the HDF5 file is not open for writing", what);
  if (h->broken) return hq_fail(HQ_ERR_IO, "%s", h->broken);
  return HQ_OK;
}

/* Format 2 keeps every attribute and link in its object's header ("compact" storage), which
 * HDF5 protects with a checksum: the "dense" storage it switches to past 8 attributes or links
 * keeps them in fractal-heap blocks without one, where a changed byte goes unnoticed. */
#define HQ_H5_COMPACT 65535

static hid_t ocpl_compact(hid_t cls) {
  hid_t p = H5Pcreate(cls);
  H5Pset_attr_phase_change(p, HQ_H5_COMPACT, HQ_H5_COMPACT);
  if (cls == H5P_GROUP_CREATE || cls == H5P_FILE_CREATE)
    H5Pset_link_phase_change(p, HQ_H5_COMPACT, HQ_H5_COMPACT);
  return p;
}

/* Create a group with creation-order tracking when it does not exist yet (collective). */
static int ensure_group(struct hq_h5 *h, const char *path) {
  htri_t e = H5Lexists(h->file, path, H5P_DEFAULT);
  if (e > 0) return HQ_OK;
  hid_t gcpl = ocpl_compact(H5P_GROUP_CREATE);
  H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
  hid_t g = H5Gcreate2(h->file, path, H5P_DEFAULT, gcpl, H5P_DEFAULT);
  H5Pclose(gcpl);
  if (g < 0) return h5fail(HQ_ERR_IO, "cannot create group %s in %s", path, h->path);
  H5Gclose(g);
  return HQ_OK;
}

/* ---------------- attributes ---------------- */

static hid_t open_obj(struct hq_h5 *h, const char *obj) {
  return H5Oopen(h->file, obj && obj[0] ? obj : "/", H5P_DEFAULT);
}

/* Create or replace attribute `name` of `obj` with type/space and write `buf`. Not agreed. */
static int attr_write(struct hq_h5 *h, const char *obj, const char *name, hid_t ftype,
                      hid_t mtype, hid_t space, const void *buf) {
  hid_t o = open_obj(h, obj);
  if (o < 0) return h5fail(HQ_ERR_INPUT, "no object %s in %s for attribute %s", obj, h->path, name);
  if (H5Aexists(o, name) > 0) H5Adelete(o, name);
  hid_t a = H5Acreate2(o, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT);
  int rc = HQ_OK;
  if (a < 0 || H5Awrite(a, mtype, buf) < 0)
    rc = h5fail(HQ_ERR_IO, "cannot write attribute %s of %s in %s", name, obj, h->path);
  if (a >= 0) H5Aclose(a);
  H5Oclose(o);
  return rc;
}

/* Fixed-length UTF-8 string of `len` bytes, NUL-padded. Format 2 has no variable-length
 * strings: HDF5 reads their global heap without a checksum and crashes on a damaged one. */
static hid_t str_type(size_t len) {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, len ? len : 1);
  H5Tset_strpad(t, H5T_STR_NULLPAD);
  H5Tset_cset(t, H5T_CSET_UTF8);
  return t;
}

/* Collective. */
int hq_h5_attr_set_str(struct hq_h5 *h, const char *obj, const char *name, const char *value) {
  int rc = need_writable(h, name);
  if (rc) return rc;
  uint64_t len = is_root(h) && value ? strlen(value) : 0;
  bcast0(h, &len, sizeof len);
  char *v = hq_xmalloc((size_t)len + 1);
  if (is_root(h) && value) memcpy(v, value, (size_t)len);
  bcast0(h, v, (size_t)len);
  v[len] = 0;
  hid_t t = str_type((size_t)len), s = H5Screate(H5S_SCALAR);
  rc = attr_write(h, obj, name, t, t, s, v);
  H5Sclose(s);
  H5Tclose(t);
  free(v);
  return agree(h, rc);
}

static int attr_set_num(struct hq_h5 *h, const char *obj, const char *name, hid_t ftype,
                        hid_t mtype, const void *values, size_t esize, int64_t n, int scalar) {
  int rc = need_writable(h, name);
  if (rc) return rc;
  if (n < 0 || (n > 0 && !values && is_root(h)))
    return agree(h, hq_fail(HQ_ERR_INPUT, "attribute %s: bad array", name));
  void *v = hq_xmalloc(esize * (size_t)(n ? n : 1));
  if (is_root(h) && n) memcpy(v, values, esize * (size_t)n);
  bcast0(h, v, esize * (size_t)n);
  hsize_t d = (hsize_t)n;
  hid_t s = scalar ? H5Screate(H5S_SCALAR) : (n ? H5Screate_simple(1, &d, NULL) : H5Screate(H5S_NULL));
  rc = attr_write(h, obj, name, ftype, mtype, s, v);
  H5Sclose(s);
  free(v);
  return agree(h, rc);
}

/* Collective. */
int hq_h5_attr_set_i64(struct hq_h5 *h, const char *obj, const char *name, int64_t value) {
  return attr_set_num(h, obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value, sizeof value, 1, 1);
}
/* Collective. */
int hq_h5_attr_set_f64(struct hq_h5 *h, const char *obj, const char *name, double value) {
  return attr_set_num(h, obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value, sizeof value, 1, 1);
}
/* Collective. */
int hq_h5_attr_set_i64_array(struct hq_h5 *h, const char *obj, const char *name,
                             const int64_t *values, int64_t n) {
  return attr_set_num(h, obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, values, sizeof(int64_t), n, 0);
}
/* Collective. */
int hq_h5_attr_set_f64_array(struct hq_h5 *h, const char *obj, const char *name,
                             const double *values, int64_t n) {
  return attr_set_num(h, obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, values, sizeof(double), n, 0);
}

/* Not collective. */
int hq_h5_attr_exists(struct hq_h5 *h, const char *obj, const char *name) {
  hid_t o = open_obj(h, obj);
  if (o < 0) {
    H5Eclear2(H5E_DEFAULT);
    return 0;
  }
  htri_t e = H5Aexists(o, name);
  H5Oclose(o);
  return e > 0;
}

/* Elements of a dataspace (closes it); -1 on error. */
static hssize_t npoints(hid_t space) {
  hssize_t n = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
  if (space >= 0) H5Sclose(space);
  return n;
}

#define HQ_H5_MAX_STR (64 << 20)   /* longest string attribute a reader accepts */
#define HQ_H5_MAX_ATTR (1 << 20)   /* most elements of a numeric attribute a reader accepts */

static hid_t attr_open(struct hq_h5 *h, const char *obj, const char *name) {
  hid_t o = open_obj(h, obj);
  if (o < 0) return H5I_INVALID_HID;
  hid_t a = H5Aexists(o, name) > 0 ? H5Aopen(o, name, H5P_DEFAULT) : H5I_INVALID_HID;
  H5Oclose(o);
  return a;
}

/* Not collective. */
int hq_h5_attr_get_str(struct hq_h5 *h, const char *obj, const char *name, char **value) {
  *value = NULL;
  hid_t a = attr_open(h, obj, name);
  if (a < 0) return h5fail(HQ_ERR_INPUT, "%s: %s has no attribute %s", h->path, obj, name);
  hid_t ft = H5Aget_type(a);
  int rc = HQ_OK;
  if (H5Tget_class(ft) != H5T_STRING) {
    rc = hq_fail(HQ_ERR_INPUT, "%s: attribute %s of %s is not a string", h->path, name, obj);
  } else if (H5Tis_variable_str(ft) != 0 || H5Tget_size(ft) > HQ_H5_MAX_STR ||
             npoints(H5Aget_space(a)) != 1) {
    rc = hq_fail(HQ_ERR_INPUT, "%s: attribute %s of %s is not a fixed-length string of at most "
                 "%d bytes (not written by this hpcq, or damaged)", h->path, name, obj, HQ_H5_MAX_STR);
  } else {
    size_t n = H5Tget_size(ft);
    hid_t mt = H5Tcopy(H5T_C_S1);
    H5Tset_size(mt, n + 1);
    H5Tset_cset(mt, H5Tget_cset(ft));
    char *s = hq_xcalloc(n + 2, 1);
    if (H5Aread(a, mt, s) < 0) {
      free(s);
      rc = h5fail(HQ_ERR_IO, "%s: cannot read attribute %s of %s", h->path, name, obj);
    } else {
      *value = s;
    }
    H5Tclose(mt);
  }
  H5Tclose(ft);
  H5Aclose(a);
  return rc;
}

static int attr_get_num(struct hq_h5 *h, const char *obj, const char *name, hid_t mtype,
                        size_t esize, void **out, int64_t *n) {
  hid_t a = attr_open(h, obj, name);
  if (a < 0) return h5fail(HQ_ERR_INPUT, "%s: %s has no attribute %s", h->path, obj, name);
  hid_t t = H5Aget_type(a);
  hssize_t np = npoints(H5Aget_space(a));
  H5T_class_t cl = H5Tget_class(t);
  H5Tclose(t);
  if (np < 0 || np > HQ_H5_MAX_ATTR || (cl != H5T_INTEGER && cl != H5T_FLOAT)) {
    H5Aclose(a);
    return h5fail(HQ_ERR_INPUT, "%s: attribute %s of %s is not a numeric array of at most %d "
                  "values (damaged file?)", h->path, name, obj, HQ_H5_MAX_ATTR);
  }
  int rc = HQ_OK;
  void *v = hq_xmalloc(esize * (size_t)(np > 0 ? np : 1));
  if (np > 0 && H5Aread(a, mtype, v) < 0) {
    rc = h5fail(HQ_ERR_INPUT, "%s: attribute %s of %s is not numeric", h->path, name, obj);
    free(v);
    v = NULL;
  }
  H5Aclose(a);
  *out = v;
  *n = np > 0 ? (int64_t)np : 0;
  return rc;
}

/* Not collective. The first value of a numeric attribute, as mtype (esize bytes), into *value. */
static int attr_get_first(struct hq_h5 *h, const char *obj, const char *name, hid_t mtype,
                          size_t esize, void *value) {
  void *v;
  int64_t n;
  HQ_TRY(attr_get_num(h, obj, name, mtype, esize, &v, &n));
  int rc = n ? HQ_OK : hq_fail(HQ_ERR_INPUT, "%s: attribute %s of %s is empty", h->path, name, obj);
  if (n) memcpy(value, v, esize);
  free(v);
  return rc;
}

/* Not collective. */
int hq_h5_attr_get_i64(struct hq_h5 *h, const char *obj, const char *name, int64_t *value) {
  return attr_get_first(h, obj, name, H5T_NATIVE_INT64, sizeof *value, value);
}

/* Not collective. */
int hq_h5_attr_get_f64(struct hq_h5 *h, const char *obj, const char *name, double *value) {
  return attr_get_first(h, obj, name, H5T_NATIVE_DOUBLE, sizeof *value, value);
}

/* Not collective. */
int hq_h5_attr_get_i64_array(struct hq_h5 *h, const char *obj, const char *name,
                             int64_t **values, int64_t *n) {
  void *v;
  HQ_TRY(attr_get_num(h, obj, name, H5T_NATIVE_INT64, sizeof(int64_t), &v, n));
  *values = (int64_t *)v;
  return HQ_OK;
}

/* ---------------- checksums (src/io/h5sum.h) ---------------- */

/* Collective. Set the attribute "checksum" (uint64 hq64) of dataset `path` to rank 0's `v`. */
static int set_sum(struct hq_h5 *h, const char *path, uint64_t v) {
  return attr_set_num(h, path, "checksum", H5T_STD_U64LE, H5T_NATIVE_UINT64, &v, sizeof v, 1, 1);
}

/* Not collective. The attribute "checksum" of dataset `path`. */
static int get_sum(struct hq_h5 *h, const char *path, uint64_t *v) {
  void *b;
  int64_t n;
  HQ_TRY(attr_get_num(h, path, "checksum", H5T_NATIVE_UINT64, sizeof(uint64_t), &b, &n));
  int rc = n == 1 ? HQ_OK : hq_fail(HQ_ERR_INPUT, "%s: checksum of %s is not one value", h->path, path);
  if (n == 1) *v = *(uint64_t *)b;
  free(b);
  return rc;
}

/* Not collective. Compare the hq64 of everything read from dataset `path` with its checksum. */
static int check_sum(struct hq_h5 *h, const char *path, uint64_t got) {
  uint64_t want = 0;
  int rc = get_sum(h, path, &want);
  if (rc) return hq_fail_ctx(rc, "%s: no valid checksum for %s (damaged file?): ", h->path, path);
  if (got != want)
    return hq_fail(HQ_ERR_INPUT, "%s: the data of %s does not match its checksum: the file is "
                   "damaged (changed bytes); restore it from a good copy or quantize again",
                   h->path, path);
  return HQ_OK;
}

/* Not collective. check_sum of the n elements of a whole dataset. */
static int verify_sum(struct hq_h5 *h, const char *path, const void *buf, size_t esize, int64_t n) {
  return check_sum(h, path, hq_sum64(buf, esize, n));
}

/* ---------------- open / create / close ---------------- */

static void iso_now(char *buf, size_t n) {
  time_t t = time(NULL);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Rank 0 creates (or truncates) the file with plain POSIX calls so that every "cannot create"
 * case gets a precise message before MPI-IO touches the path, and writes `nonce` into it so
 * the other ranks can check they see the same file (shared file system). */
static int precreate(const char *path, int overwrite, const char nonce[32], int *created) {
  *created = 0;
  struct stat st;
  int existed = stat(path, &st) == 0;
  if (existed && S_ISDIR(st.st_mode))
    return hq_fail(HQ_ERR_IO, "cannot create output file %s: it is a directory", path);
  if (existed && !S_ISREG(st.st_mode)) /* /dev/null, a FIFO (opening it would block), ... */
    return hq_fail(HQ_ERR_IO, "cannot write the output to %s: it is not a regular file (a "
                   "device or pipe); hpcq writes one HDF5 file, give a file path", path);
  if (existed && !overwrite)
    return hq_fail(HQ_ERR_INPUT,
                   "output file %s already exists; pass --overwrite to replace it or --resume "
                   "to continue the run that wrote it",
                   path);
  int fd = open(path, O_WRONLY | O_CREAT | (overwrite ? O_TRUNC : O_EXCL), 0644);
  if (fd < 0) {
    int e = errno;
    if (e == EEXIST)
      return hq_fail(HQ_ERR_INPUT,
                     "output file %s already exists; pass --overwrite to replace it or --resume "
                     "to continue the run that wrote it",
                     path);
    if (e == ENOENT || e == ENOTDIR)
      return hq_fail(HQ_ERR_IO, "cannot create output file %s: its directory does not exist",
                     path);
    return hq_fail(HQ_ERR_IO, "cannot create output file %s: %s; choose a writable location",
                   path, strerror(e));
  }
  ssize_t w = write(fd, nonce, 32);
  int e = w < 0 ? errno : ENOSPC;
  close(fd);
  *created = !existed;
  if (w != 32) {
    char cause[600];
    io_cause(path, cause, sizeof cause);
    return hq_fail(HQ_ERR_IO, "cannot write output file %s: %s", path, cause[0] ? cause : strerror(e));
  }
  return HQ_OK;
}

/* Every rank must see rank 0's file: a path on a node-local file system (/tmp of each node)
 * would otherwise give each node its own half-written file. */
static int check_shared(const char *path, const char nonce[32], const char *host) {
  char buf[32];
  int fd = open(path, O_RDONLY);
  ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf) : -1;
  if (fd >= 0) close(fd);
  if (n != 32 || memcmp(buf, nonce, 32) != 0)
    return hq_fail(HQ_ERR_IO,
                   "output file %s created by rank 0 is not visible on host %s: put the output "
                   "on a file system shared by all nodes (not a node-local /tmp)",
                   path, host);
  return HQ_OK;
}

/* Collective open/create of the MPI-IO file on every rank; a mixed outcome (some ranks opened
 * it, some did not: typically a path that is not on a file system shared by all nodes) cannot
 * be undone without a hang, so it aborts the job. */
static int open_collective(struct hq_h5 *h, int create) {
  hid_t fapl = fapl_mpio(h->c);
  if (create) {
    hid_t fcpl = ocpl_compact(H5P_FILE_CREATE); /* the root group's */
    h->file = H5Fcreate(h->path, H5F_ACC_TRUNC, fcpl, fapl);
    H5Pclose(fcpl);
  } else {
    h->file = H5Fopen(h->path, H5F_ACC_RDWR, fapl);
  }
  H5Pclose(fapl);
  int ok = h->file >= 0, all = 0, any = 0;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, h->c->comm);
  MPI_Allreduce(&ok, &any, 1, MPI_INT, MPI_LOR, h->c->comm);
  if (any && !all)
    HQ_DIE("%s of %s succeeded on some ranks only; is it on a file system shared by all "
           "nodes?", create ? "creating" : "opening", h->path);
  int rc = ok ? HQ_OK
              : h5fail(HQ_ERR_IO, "cannot %s %s with MPI-IO", create ? "create" : "open", h->path);
  return hq_comm_agree(h->c, rc);
}

/* Collective. */
int hq_h5_create(const struct hq_comm *c, const char *path, int overwrite, struct hq_h5 **out) {
  h5_quiet();
  *out = NULL;
  int created = 0, rc = HQ_OK;
  char nonce[32];
  memset(nonce, 0, sizeof nonce);
  if (c->rank == 0) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(nonce, sizeof nonce, "hpcq %lld.%09ld %d", (long long)ts.tv_sec, ts.tv_nsec,
             (int)getpid());
    rc = precreate(path, overwrite, nonce, &created);
  }
  rc = hq_comm_agree(c, rc);
  if (rc) return rc;
  if (c->size > 1) {
    hq_comm_bcast(c, nonce, sizeof nonce, 0);
    rc = hq_comm_agree(c, c->rank ? check_shared(path, nonce, c->host) : HQ_OK);
    if (rc) {
      if (c->rank == 0 && created) unlink(path);
      return rc;
    }
  }
  struct hq_h5 *h = handle_new(path, c, 1);
  rc = open_collective(h, 1);
  if (rc == HQ_OK) {
    char when[64];
    iso_now(when, sizeof when);
    rc = hq_h5_attr_set_i64(h, "/", "hpcq_format_version", HQ_H5_FORMAT_VERSION);
    if (!rc) rc = hq_h5_attr_set_str(h, "/", "hpcq_version", HQ_VERSION);
    if (!rc) rc = hq_h5_attr_set_str(h, "/", "created", when);
    if (!rc) rc = hq_h5_attr_set_i64(h, "/", "nranks", c->size);
    if (!rc) rc = agree(h, ensure_group(h, "/tensors"));
    if (!rc) rc = agree(h, ensure_group(h, "/linears"));
    if (rc) {
      H5Fclose(h->file);
      h->file = H5I_INVALID_HID;
    }
  }
  if (rc) {
    if (c->rank == 0 && created) unlink(path);
    handle_free(h);
    return rc;
  }
  *out = h;
  return HQ_OK;
}

static int check_format(struct hq_h5 *h) {
  if (!hq_h5_attr_exists(h, "/", "hpcq_format_version"))
    return hq_fail(HQ_ERR_INPUT,
                   "%s is an HDF5 file but not an hpcq result (no hpcq_format_version "
                   "attribute)",
                   h->path);
  int64_t v = 0;
  HQ_TRY(hq_h5_attr_get_i64(h, "/", "hpcq_format_version", &v));
  if (v >= 1 && v < HQ_H5_FORMAT_VERSION)
    return hq_fail(HQ_ERR_UNSUPPORTED,
                   "%s has hpcq format version %lld, written by an older hpcq; this hpcq (" HQ_VERSION
                   ") reads version %d only (checksummed data, fixed-length strings): quantize "
                   "again, or read it with the hpcq that wrote it",
                   h->path, (long long)v, HQ_H5_FORMAT_VERSION);
  if (v != HQ_H5_FORMAT_VERSION)
    return hq_fail(HQ_ERR_UNSUPPORTED,
                   "%s has hpcq format version %lld; this hpcq (" HQ_VERSION
                   ") reads version %d: use a newer hpcq",
                   h->path, (long long)v, HQ_H5_FORMAT_VERSION);
  return HQ_OK;
}

/* Not collective. */
void hq_h5_state_free(struct hq_h5_state *s) {
  if (!s) return;
  free(s->settings_json);
  memset(s, 0, sizeof *s);
}

/* Not collective. /progress [n] with its checksum checked and every flag 0 or 1. */
static int read_progress(struct hq_h5 *h, int64_t n, int8_t **out) {
  *out = NULL;
  if (n < 1 || n > HQ_H5_MAX_ATTR)
    return hq_fail(HQ_ERR_INPUT, "%s: n_blocks = %lld is out of range (damaged file?)", h->path,
                   (long long)n);
  hid_t d = H5Lexists(h->file, "/progress", H5P_DEFAULT) > 0 ? H5Dopen2(h->file, "/progress", H5P_DEFAULT)
                                                             : H5I_INVALID_HID;
  hssize_t np = d >= 0 ? npoints(H5Dget_space(d)) : -1;
  int8_t *f = hq_xcalloc((size_t)n, 1);
  int rc = HQ_OK;
  if (np != n || H5Dread(d, H5T_NATIVE_INT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, f) < 0)
    rc = h5fail(HQ_ERR_INPUT, "%s: /progress is missing, unreadable or has %lld entries for %lld "
                "blocks (damaged file?)", h->path, (long long)np, (long long)n);
  if (d >= 0) H5Dclose(d);
  if (!rc && (rc = verify_sum(h, "/progress", f, 1, n)) != HQ_OK) {
    /* the flag of block b reaches the disk as raw data before the flush that writes its
     * checksum: a run killed in between leaves the last flag set without its sum. Then the
     * flags with that flag cleared match the sum, and block b is simply done again. */
    int64_t b = n - 1;
    while (b >= 0 && f[b] != 1) b--;
    if (b >= 0) {
      f[b] = 0;
      if (verify_sum(h, "/progress", f, 1, n) == HQ_OK) {
        hq_error_clear();
        rc = HQ_OK;
      } else {
        f[b] = 1;
        rc = verify_sum(h, "/progress", f, 1, n); /* the first message again */
      }
    }
  }
  for (int64_t b = 0; b < n && !rc; b++)
    if (f[b] != 0 && f[b] != 1)
      rc = hq_fail(HQ_ERR_INPUT, "%s: /progress holds %d for block %lld (damaged file?)", h->path,
                   (int)f[b], (long long)b);
  if (rc) free(f);
  else *out = f;
  return rc;
}

/* Not collective. hq_h5_status that also hands back the flags (*flags NULL without them). */
static int status_flags(struct hq_h5 *h, struct hq_h5_state *st, int8_t **flags) {
  memset(st, 0, sizeof *st);
  *flags = NULL;
  int64_t v = 0;
  int rc = HQ_OK;
  if (hq_h5_attr_exists(h, "/", "n_blocks")) rc = hq_h5_attr_get_i64(h, "/", "n_blocks", &st->n_blocks);
  if (!rc && hq_h5_attr_exists(h, "/", "complete")) rc = hq_h5_attr_get_i64(h, "/", "complete", &v);
  if (!rc && v != 0 && v != 1) rc = hq_fail(HQ_ERR_INPUT, "%s: complete = %lld (damaged file?)", h->path, (long long)v);
  st->complete = v == 1;
  if (!rc && hq_h5_attr_exists(h, "/", "settings_json"))
    rc = hq_h5_attr_get_str(h, "/", "settings_json", &st->settings_json);
  if (!rc && (st->n_blocks != 0 || st->complete)) rc = read_progress(h, st->n_blocks, flags);
  for (int64_t b = 0, lead = 1; !rc && b < st->n_blocks; b++) {
    st->flags_set += (*flags)[b];
    lead = lead && (*flags)[b];
    st->blocks_done += lead;
  }
  if (!rc && st->complete && st->flags_set != st->n_blocks)
    rc = hq_fail(HQ_ERR_INPUT, "%s says complete but %lld of %lld blocks are marked done (damaged "
                 "file?)", h->path, (long long)st->flags_set, (long long)st->n_blocks);
  if (rc) {
    hq_h5_state_free(st);
    free(*flags);
    *flags = NULL;
  }
  return rc;
}

/* Not collective. */
int hq_h5_status(struct hq_h5 *h, struct hq_h5_state *st) {
  int8_t *f;
  int rc = status_flags(h, st, &f);
  free(f);
  return rc;
}

/* Collective. */
int hq_h5_open_rw(const struct hq_comm *c, const char *path, struct hq_h5 **out,
                  struct hq_h5_state *st) {
  h5_quiet();
  *out = NULL;
  if (st) memset(st, 0, sizeof *st);
  int rc = HQ_OK;
  if (c->rank == 0) {
    if (access(path, F_OK) != 0)
      rc = hq_fail(HQ_ERR_INPUT, "cannot resume: %s does not exist", path);
    else if (access(path, R_OK | W_OK) != 0)
      rc = hq_fail(HQ_ERR_IO, "cannot resume %s: %s", path, strerror(errno));
    else if (H5Fis_hdf5(path) <= 0)
      rc = h5fail(HQ_ERR_INPUT, "cannot resume: %s is not an HDF5 file", path);
  }
  rc = hq_comm_agree(c, rc);
  if (rc) return rc;
  struct hq_h5 *h = handle_new(path, c, 1);
  rc = open_collective(h, 0);
  if (rc) {
    handle_free(h);
    return rc;
  }
  rc = agree(h, check_format(h));
  struct hq_h5_state tmp;
  memset(&tmp, 0, sizeof tmp);
  if (!rc) rc = agree(h, status_flags(h, &tmp, &h->flags));
  h->nflags = h->flags ? tmp.n_blocks : 0;
  if (rc) {
    H5Fclose(h->file);
    handle_free(h);
    return rc;
  }
  if (st) *st = tmp;
  else hq_h5_state_free(&tmp);
  *out = h;
  return HQ_OK;
}

/* Not collective. */
int hq_h5_open_read(const char *path, int allow_incomplete, struct hq_h5 **out) {
  h5_quiet();
  *out = NULL;
  int exists = 0; /* a FIFO would block the HDF5 open below */
  HQ_TRY(hq_path_regular(path, "hpcq result", &exists));
  if (access(path, R_OK) != 0)
    return hq_fail(HQ_ERR_IO, "cannot read %s: %s", path, strerror(errno));
  if (H5Fis_hdf5(path) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    return hq_fail(HQ_ERR_INPUT, "%s is not an HDF5 file (expected an hpcq quantize result)", path);
  }
  struct hq_h5 *h = handle_new(path, NULL, 0);
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
#if H5_VERSION_GE(1, 10, 7)
  H5Pset_file_locking(fapl, 0, 1); /* readers never block a writer (or each other) */
#endif
  h->file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
  H5Pclose(fapl);
  if (h->file < 0) {
    int rc = h5fail(HQ_ERR_IO, "cannot open %s", path);
    handle_free(h);
    return rc;
  }
  int rc = check_format(h);
  if (rc == HQ_OK && !allow_incomplete) {
    struct hq_h5_state s;
    rc = hq_h5_status(h, &s);
    if (rc == HQ_OK && !s.complete)
      rc = hq_fail(HQ_ERR_INPUT,
                   "%s is incomplete: %lld of %lld blocks written (the run that wrote it was "
                   "interrupted; continue it with hpcq quantize --resume)",
                   path, (long long)s.flags_set, (long long)s.n_blocks);
    hq_h5_state_free(&s);
  }
  if (rc) {
    H5Fclose(h->file);
    handle_free(h);
    return rc;
  }
  *out = h;
  return HQ_OK;
}

/* Collective (rank 0 acts). A writer that failed is left open (see hq_h5_process_init): no
 * HDF5 call can succeed on it, and closing it would try to write again. When `complete` may
 * have reached the file, its content is removed so the file cannot pass for a result. */
static int abandon(struct hq_h5 *h) {
  int rc = hq_fail(HQ_ERR_IO, "%s", h->broken);
  if (h->complete_set && is_root(h) && truncate(h->path, 0) == 0)
    rc = hq_fail(HQ_ERR_IO, "%s; %s was emptied so that it cannot be taken for a finished result",
                 h->broken, h->path);
  h->file = H5I_INVALID_HID;
  return agree(h, rc);
}

/* Collective for writable handles. */
int hq_h5_close(struct hq_h5 *h) {
  if (!h) return HQ_OK;
  int rc = HQ_OK;
  if (h->writable && h->file >= 0) {
    if (!h->broken && !h->complete_flushed) rc = room_to_flush(h);
    if (!h->broken && !h->complete_flushed && H5Fflush(h->file, H5F_SCOPE_GLOBAL) < 0)
      rc = h5fail_io(h, "cannot flush %s", h->path);
    if (!h->broken) rc = agree(h, rc); /* nobody enters the collective H5Fclose alone */
    if (!h->broken && H5Fclose(h->file) < 0) rc = h5fail_io(h, "cannot close %s", h->path);
    if (!h->broken) rc = agree(h, rc);
    if (h->broken) rc = abandon(h);
  } else if (h->file >= 0 && H5Fclose(h->file) < 0) {
    rc = h5fail(HQ_ERR_IO, "cannot close %s", h->path);
  }
  handle_free(h);
  return rc;
}

/* ---------------- datasets ---------------- */

static hid_t dcpl_nofill(void) {
  hid_t p = ocpl_compact(H5P_DATASET_CREATE);
  H5Pset_alloc_time(p, H5D_ALLOC_TIME_EARLY);
  H5Pset_fill_time(p, H5D_FILL_TIME_NEVER); /* progress flags, not fill values, mark done data */
  return p;
}

/* Open dataset `path` when it exists with exactly this type class/size and shape, or create it.
 * A different existing shape is an error (a resume against a different model). */
static int dset_ensure(struct hq_h5 *h, const char *path, hid_t ftype, int ndim,
                       const hsize_t *dims, hid_t *out) {
  *out = H5I_INVALID_HID;
  if (H5Lexists(h->file, path, H5P_DEFAULT) > 0) {
    hid_t d = H5Dopen2(h->file, path, H5P_DEFAULT);
    if (d < 0) return h5fail(HQ_ERR_IO, "cannot open %s in %s", path, h->path);
    hid_t s = H5Dget_space(d), t = H5Dget_type(d);
    hsize_t have[HQ_ST_MAXDIM];
    int nd = H5Sget_simple_extent_dims(s, have, NULL);
    int same = nd == ndim && H5Tequal(t, ftype) > 0;
    for (int i = 0; same && i < ndim; i++) same = have[i] == dims[i];
    H5Sclose(s);
    H5Tclose(t);
    if (!same) {
      H5Dclose(d);
      return hq_fail(HQ_ERR_INPUT,
                     "%s: dataset %s already exists with a different type or shape (a file "
                     "written for another model or settings?)",
                     h->path, path);
    }
    *out = d;
    return HQ_OK;
  }
  hid_t s = ndim ? H5Screate_simple(ndim, dims, NULL) : H5Screate(H5S_SCALAR);
  hid_t p = dcpl_nofill();
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  hid_t d = H5Dcreate2(h->file, path, ftype, s, lcpl, p, H5P_DEFAULT);
  H5Pclose(lcpl);
  H5Pclose(p);
  H5Sclose(s);
  if (d < 0) return h5fail(HQ_ERR_IO, "cannot create dataset %s in %s", path, h->path);
  *out = d;
  return HQ_OK;
}

/* Collective write of a 2-D block [n0 x n1] at (o0, o1) of dataset d from `buf` whose rows are
 * `ld` elements apart; a rank with n0*n1 == 0 selects nothing. Records the actual I/O mode. */
static int write_block(struct hq_h5 *h, hid_t d, hid_t mtype, int ndim, hsize_t o0, hsize_t o1,
                       hsize_t n0, hsize_t n1, hsize_t ld, const void *buf) {
  static const char dummy[16];
  hid_t fs = H5Dget_space(d);
  hid_t ms;
  if (n0 == 0 || n1 == 0 || !buf) {
    H5Sselect_none(fs);
    hsize_t one = 1;
    ms = H5Screate_simple(1, &one, NULL);
    H5Sselect_none(ms);
    buf = dummy;
  } else if (ndim == 1) {
    hsize_t start = o1, count = n1;
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, NULL, &count, NULL);
    ms = H5Screate_simple(1, &count, NULL);
  } else {
    hsize_t start[2] = {o0, o1}, count[2] = {n0, n1};
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
    hsize_t mdims[2] = {n0, ld}, mstart[2] = {0, 0};
    ms = H5Screate_simple(2, mdims, NULL);
    H5Sselect_hyperslab(ms, H5S_SELECT_SET, mstart, NULL, count, NULL);
  }
  herr_t e = H5Dwrite(d, mtype, ms, fs, h->dxpl, buf);
  H5Sclose(ms);
  H5Sclose(fs);
  if (e < 0) return h5fail_io(h, "cannot write to %s", h->path);
  H5D_mpio_actual_io_mode_t mode = H5D_MPIO_NO_COLLECTIVE;
  if (h->dxpl != H5P_DEFAULT) H5Pget_mpio_actual_io_mode(h->dxpl, &mode);
  h->last_coll = mode != H5D_MPIO_NO_COLLECTIVE;
  return HQ_OK;
}

/* How a tensor dtype is stored: file and memory types, and the "dtype" attribute. */
struct tensor_type {
  hid_t ft, mt;
  const char *dn;
};

/* Not agreed. The arguments of hq_h5_write_tensor: its name (one path component), ndim,
 * dtype (into *tt), a non-negative shape (into dims) and rank 0's data. */
static int tensor_args(const struct hq_h5 *h, const char *name, enum hq_dtype dtype, int ndim,
                       const int64_t *shape, const void *data, struct tensor_type *tt,
                       hsize_t *dims) {
  if (ndim < 1 || ndim > HQ_ST_MAXDIM || !name || !name[0] || strchr(name, '/'))
    return hq_fail(HQ_ERR_INPUT, "tensor '%s': bad name or %d dimensions", name ? name : "", ndim);
  switch (dtype) {
  case HQ_DTYPE_F32: *tt = (struct tensor_type){H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, "float32"}; break;
  case HQ_DTYPE_F16: *tt = (struct tensor_type){h->f16, h->f16, "float16"}; break;
  case HQ_DTYPE_BF16: *tt = (struct tensor_type){H5T_STD_U16LE, H5T_NATIVE_UINT16, "bfloat16"}; break;
  default: return hq_fail(HQ_ERR_UNSUPPORTED, "tensor %s: dtype %d", name, (int)dtype);
  }
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return hq_fail(HQ_ERR_INPUT, "tensor %s: negative shape", name);
    dims[i] = (hsize_t)shape[i];
  }
  if (is_root(h) && !data) return hq_fail(HQ_ERR_INPUT, "tensor %s: no data on rank 0", name);
  return HQ_OK;
}

/* Not agreed. Rows [r, r+n) of the first dimension of dataset d [dims] from buf (n rows
 * row-major); buf NULL (a rank other than 0) or no element: this rank selects nothing. */
static int write_rows(struct hq_h5 *h, hid_t d, hid_t fs0, hid_t mt, int ndim,
                      const hsize_t *dims, hsize_t r, hsize_t n, const void *buf,
                      const char *name) {
  static const char dummy[16]; /* any non-NULL pointer: nothing is read from it */
  hid_t fs = H5Scopy(fs0);
  hsize_t start[HQ_ST_MAXDIM] = {0}, count[HQ_ST_MAXDIM];
  for (int i = 0; i < ndim; i++) count[i] = dims[i];
  start[0] = r;
  count[0] = n;
  hsize_t melems = n;
  for (int i = 1; i < ndim; i++) melems *= dims[i];
  hid_t ms = H5Screate_simple(1, melems ? &melems : (hsize_t[]){1}, NULL);
  if (buf && melems) {
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
  } else {
    H5Sselect_none(fs);
    H5Sselect_none(ms);
    buf = dummy;
  }
  int rc = HQ_OK;
  if (H5Dwrite(d, mt, ms, fs, h->dxpl, buf) < 0)
    rc = h5fail_io(h, "cannot write tensor %s to %s", name, h->path);
  H5Sclose(ms);
  H5Sclose(fs);
  return rc;
}

/* Collective. Rank 0's whole tensor src [dims] (esize bytes per element; NULL elsewhere) into
 * dataset d, in pieces of rows of the first dimension of at most hq_h5_piece_bytes (the same
 * count on every rank: the shape is identical), each piece agreed before the next. */
static int write_pieces(struct hq_h5 *h, hid_t d, hid_t mt, int ndim, const hsize_t *dims,
                        size_t esize, const char *src, const char *name) {
  size_t rowel = 1;
  for (int i = 1; i < ndim; i++) rowel *= (size_t)dims[i];
  size_t rb = esize * rowel > 0 ? esize * rowel : 1;
  hsize_t per = (hsize_t)(hq_h5_piece_bytes / rb) ? (hsize_t)(hq_h5_piece_bytes / rb) : 1;
  hid_t fs0 = H5Dget_space(d);
  int rc = HQ_OK;
  for (hsize_t r = 0; r < dims[0] && rc == HQ_OK; r += per) {
    hsize_t n = dims[0] - r < per ? dims[0] - r : per;
    rc = write_rows(h, d, fs0, mt, ndim, dims, r, n, src ? src + (size_t)r * rb : NULL, name);
    rc = agree(h, rc); /* before the next piece's collective write */
  }
  H5Sclose(fs0);
  return rc;
}

/* Collective. */
int hq_h5_write_tensor(struct hq_h5 *h, const char *name, enum hq_dtype dtype, int ndim,
                       const int64_t *shape, const void *data) {
  HQ_TRY(need_writable(h, name));
  struct tensor_type tt = {H5I_INVALID_HID, H5I_INVALID_HID, NULL};
  hsize_t dims[HQ_ST_MAXDIM];
  int rc = tensor_args(h, name, dtype, ndim, shape, data, &tt, dims);
  if (rc) return agree(h, rc);
  char path[1024];
  snprintf(path, sizeof path, "/tensors/%s", name);
  hid_t d;
  rc = agree(h, dset_ensure(h, path, tt.ft, ndim, dims, &d));
  if (rc) return rc;
  const size_t esize = hq_dtype_size(dtype);
  const char *src = is_root(h) ? (const char *)data : NULL;
  rc = write_pieces(h, d, tt.mt, ndim, dims, esize, src, name);
  if (!h->broken) H5Dclose(d);
  if (rc) return rc;
  uint64_t numel = 1;
  for (int i = 0; i < ndim; i++) numel *= dims[i];
  rc = set_sum(h, path, src ? hq_sum64(src, esize, (int64_t)numel) : 0);
  if (!rc) rc = hq_h5_attr_set_str(h, path, "dtype", tt.dn);
  return rc;
}

/* ---------------- linears ---------------- */

static int desc_check(const struct hq_h5_linear_desc *d, const char *name) {
  HQ_TRY(hq_pack_check(d->bits, d->format, d->cols, d->rows, d->ngroups, 0, d->rows));
  int64_t want = d->group_size > 0 ? (d->cols + d->group_size - 1) / d->group_size : 1;
  if (d->ngroups != want)
    return hq_fail(HQ_ERR_INPUT, "linear %s: %lld groups for group size %lld and %lld columns "
                   "(expected %lld)", name, (long long)d->ngroups, (long long)d->group_size,
                   (long long)d->cols, (long long)want);
  return HQ_OK;
}

static void linear_dims(const struct hq_h5_linear_desc *d, hsize_t qw[2], hsize_t qz[2],
                        hsize_t sc[2], hsize_t *gi) {
  qw[0] = (hsize_t)(d->cols * d->bits / 32);
  qw[1] = (hsize_t)d->rows;
  qz[0] = (hsize_t)d->ngroups;
  qz[1] = (hsize_t)(d->rows * d->bits / 32);
  sc[0] = (hsize_t)d->ngroups;
  sc[1] = (hsize_t)d->rows;
  *gi = (hsize_t)d->cols;
}

static int linear_path(char *buf, size_t n, const char *name, const char *ds) {
  if (!name || !name[0] || strchr(name, '/'))
    return hq_fail(HQ_ERR_INPUT, "bad linear name '%s'", name ? name : "");
  snprintf(buf, n, "/linears/%s%s%s", name, ds ? "/" : "", ds ? ds : "");
  return HQ_OK;
}

static const char *const lin_ds[4] = {"qweight", "qzeros", "scales", "g_idx"};

/* Collective. The checksums of a linear's datasets and its rows_written count start at 0. */
static int linear_sums_reset(struct hq_h5 *h, const char *g) {
  int rc = hq_h5_attr_set_i64(h, g, "rows_written", 0);
  for (int i = 0; i < 4 && !rc; i++) {
    char p[1100];
    snprintf(p, sizeof p, "%s/%s", g, lin_ds[i]);
    rc = set_sum(h, p, 0);
  }
  return rc;
}

/* Collective. Add this call's slabs to the checksums of linear g (qweight, qzeros, scales are
 * sums over all slabs since hq_h5_linear_create; g_idx is replaced when a slab came). */
static int linear_sums_add(struct hq_h5 *h, const char *g, const struct hq_h5_linear_desc *d,
                           const struct hq_packed *s, int gidx_mine) {
  const int64_t qw0 = d->cols * d->bits / 32, zw = d->rows * d->bits / 32;
  uint64_t add[5] = {0, 0, 0, 0, 0}; /* qweight, qzeros, scales, g_idx, rows */
  if (s && s->nrows > 0) {
    const int64_t n = s->nrows, nz = n * d->bits / 32, z0 = s->row0 * d->bits / 32;
    add[0] = hq_sum64_block(s->qweight, 4, qw0, n, n, d->rows, (uint64_t)s->row0);
    add[1] = hq_sum64_block(s->qzeros, 4, d->ngroups, nz, nz, zw, (uint64_t)z0);
    add[2] = hq_sum64_block(s->scales, 2, d->ngroups, n, n, d->rows, (uint64_t)s->row0);
    if (gidx_mine) add[3] = hq_sum64(s->g_idx, 4, d->cols);
    add[4] = (uint64_t)n;
  }
  MPI_Allreduce(MPI_IN_PLACE, add, 5, MPI_UINT64_T, MPI_SUM, h->c->comm);
  int64_t rows = 0;
  int rc = hq_h5_attr_get_i64(h, g, "rows_written", &rows);
  if (!rc && rows + (int64_t)add[4] > d->rows)
    rc = hq_fail(HQ_ERR_INPUT, "linear %s: %lld rows written since its creation, it has %lld: "
                 "write each row once", g, (long long)(rows + (int64_t)add[4]), (long long)d->rows);
  rc = agree(h, rc);
  for (int i = 0; i < 3 && !rc; i++) {
    char p[1100];
    uint64_t v = 0;
    snprintf(p, sizeof p, "%s/%s", g, lin_ds[i]);
    rc = agree(h, get_sum(h, p, &v));
    if (!rc) rc = set_sum(h, p, v + add[i]);
  }
  if (!rc && add[4] > 0) {
    char p[1100];
    snprintf(p, sizeof p, "%s/g_idx", g);
    rc = set_sum(h, p, add[3]);
  }
  if (!rc) rc = hq_h5_attr_set_i64(h, g, "rows_written", rows + (int64_t)add[4]);
  return rc;
}

/* Collective. */
int hq_h5_linear_create(struct hq_h5 *h, const char *name, const struct hq_h5_linear_desc *d) {
  HQ_TRY(need_writable(h, name));
  char g[1024];
  int rc = linear_path(g, sizeof g, name, NULL);
  if (!rc) rc = desc_check(d, name ? name : "");
  if (!rc && H5Lexists(h->file, g, H5P_DEFAULT) > 0) {
    struct hq_h5_linear_desc have;
    rc = hq_h5_linear_info(h, name, &have);
    if (!rc && (have.rows != d->rows || have.cols != d->cols || have.bits != d->bits ||
                have.ngroups != d->ngroups || have.format != d->format ||
                (have.group_size > 0 ? have.group_size : -1) != (d->group_size > 0 ? d->group_size : -1)))
      rc = hq_fail(HQ_ERR_INPUT,
                   "%s: linear %s exists with a different shape or settings (a file written "
                   "for another model or settings?)",
                   h->path, name);
    rc = agree(h, rc);
    return rc ? rc : linear_sums_reset(h, g); /* its rows are written again */
  }
  rc = agree(h, rc);
  if (rc) return rc;
  hid_t gcpl = ocpl_compact(H5P_GROUP_CREATE);
  hid_t grp = H5Gcreate2(h->file, g, H5P_DEFAULT, gcpl, H5P_DEFAULT);
  H5Pclose(gcpl);
  if (grp < 0) rc = h5fail(HQ_ERR_IO, "cannot create %s in %s", g, h->path);
  else H5Gclose(grp);
  rc = agree(h, rc);
  if (rc) return rc;
  hsize_t qw[2], qz[2], sc[2], gi;
  linear_dims(d, qw, qz, sc, &gi);
  hid_t types[4] = {H5T_STD_I32LE, H5T_STD_I32LE, h->f16, H5T_STD_I32LE};
  const hsize_t *dims[4] = {qw, qz, sc, &gi};
  int nds[4] = {2, 2, 2, 1};
  for (int i = 0; i < 4 && !rc; i++) {
    char p[1100];
    snprintf(p, sizeof p, "%s/%s", g, lin_ds[i]);
    hid_t ds;
    rc = dset_ensure(h, p, types[i], nds[i], dims[i], &ds);
    if (!rc) H5Dclose(ds);
    rc = agree(h, rc);
  }
  if (!rc) rc = hq_h5_attr_set_i64(h, g, "bits", d->bits);
  if (!rc) rc = hq_h5_attr_set_i64(h, g, "group_size", d->group_size > 0 ? d->group_size : -1);
  if (!rc) rc = hq_h5_attr_set_i64(h, g, "rows", d->rows);
  if (!rc) rc = hq_h5_attr_set_i64(h, g, "cols", d->cols);
  if (!rc) rc = hq_h5_attr_set_str(h, g, "zero_convention", hq_pack_format_name(d->format));
  if (!rc) rc = linear_sums_reset(h, g);
  return rc;
}

/* Not agreed. *d: the description of linear `name` in the file; a slab s that holds rows
 * (NULL or none: this rank owns nothing) must match it and be packable. */
static int slab_check(struct hq_h5 *h, const char *name, const struct hq_packed *s,
                      struct hq_h5_linear_desc *d) {
  HQ_TRY(hq_h5_linear_info(h, name, d));
  if (!s || s->nrows <= 0) return HQ_OK;
  if (s->bits != d->bits || s->format != d->format || s->in != d->cols || s->out != d->rows ||
      s->ngroups != d->ngroups)
    return hq_fail(HQ_ERR_INPUT,
                   "linear %s: slab (%d bits, %s, %lld x %lld, %lld groups) does not match the "
                   "file (%d bits, %s, %lld x %lld, %lld groups)",
                   name, s->bits, hq_pack_format_name(s->format) ? hq_pack_format_name(s->format) : "?",
                   (long long)s->out, (long long)s->in, (long long)s->ngroups, d->bits,
                   hq_pack_format_name(d->format), (long long)d->rows, (long long)d->cols,
                   (long long)d->ngroups);
  return hq_pack_check(s->bits, s->format, s->in, s->out, s->ngroups, s->row0, s->nrows);
}

/* Collective, not agreed. This rank's part of dataset i (lin_ds order) of a linear [d]: the
 * columns [row0, +nrows) of qweight [in*b/32, out] and scales [ngroups, out], the words
 * [row0*b/32, +nrows*b/32) of qzeros [ngroups, out*b/32]; g_idx [in] from gidx_rank only. */
static int linear_write_ds(struct hq_h5 *h, hid_t ds, int i, const struct hq_h5_linear_desc *d,
                           const struct hq_packed *s, int gidx_rank) {
  const int have = s && s->nrows > 0;
  hsize_t qw[2], qz[2], sc[2], gi;
  linear_dims(d, qw, qz, sc, &gi);
  hsize_t r0 = have ? (hsize_t)s->row0 : 0, n = have ? (hsize_t)s->nrows : 0;
  hsize_t zb = (hsize_t)d->bits;
  if (i == 0)
    return write_block(h, ds, H5T_NATIVE_INT32, 2, 0, r0, qw[0], n, n, have ? s->qweight : NULL);
  if (i == 1)
    return write_block(h, ds, H5T_NATIVE_INT32, 2, 0, r0 * zb / 32, qz[0], n * zb / 32,
                       n * zb / 32, have ? s->qzeros : NULL);
  if (i == 2) return write_block(h, ds, h->f16, 2, 0, r0, sc[0], n, n, have ? s->scales : NULL);
  int w = h->c->rank == gidx_rank && have;
  int last = h->last_coll;
  int rc = write_block(h, ds, H5T_NATIVE_INT32, 1, 0, 0, w ? 1 : 0, w ? gi : 0, gi,
                       w ? s->g_idx : NULL);
  h->last_coll = last; /* report the qweight/qzeros/scales hyperslab writes */
  return rc;
}

/* Collective. The four datasets of linear group g, one after the other. */
static int linear_write_all(struct hq_h5 *h, const char *g, const struct hq_h5_linear_desc *d,
                            const struct hq_packed *s, int gidx_rank) {
  int rc = HQ_OK;
  for (int i = 0; i < 4 && !rc; i++) {
    char p[1100];
    snprintf(p, sizeof p, "%s/%s", g, lin_ds[i]);
    hid_t ds = H5Dopen2(h->file, p, H5P_DEFAULT);
    /* agreed before the collective write: a rank that cannot open it must not leave the
     * others inside H5Dwrite */
    rc = agree(h, ds < 0 ? h5fail(HQ_ERR_IO, "cannot open %s in %s", p, h->path) : HQ_OK);
    if (!rc) rc = agree(h, linear_write_ds(h, ds, i, d, s, gidx_rank)); /* before the next */
    if (ds >= 0 && !h->broken) H5Dclose(ds);
  }
  return rc;
}

/* Collective. */
int hq_h5_linear_write(struct hq_h5 *h, const char *name, const struct hq_packed *s) {
  HQ_TRY(need_writable(h, name));
  char g[1024];
  struct hq_h5_linear_desc d;
  memset(&d, 0, sizeof d);
  int rc = linear_path(g, sizeof g, name, NULL);
  if (!rc) rc = slab_check(h, name, s, &d);
  rc = agree(h, rc); /* nobody enters a collective write when a slab is bad */
  if (rc) return rc;
  int have = s && s->nrows > 0, mine = have ? h->c->rank : h->c->size, gidx_rank = 0;
  MPI_Allreduce(&mine, &gidx_rank, 1, MPI_INT, MPI_MIN, h->c->comm);
  rc = linear_write_all(h, g, &d, s, gidx_rank);
  return rc ? rc : linear_sums_add(h, g, &d, s, h->c->rank == gidx_rank && have);
}

/* Not collective. */
int hq_h5_last_write_collective(const struct hq_h5 *h) { return h ? h->last_coll : 0; }

/* Collective. */
int hq_h5_linear_stats(struct hq_h5 *h, const char *name, const struct hq_h5_linear_stats *s) {
  HQ_TRY(need_writable(h, name));
  char g[1024];
  int rc = agree(h, linear_path(g, sizeof g, name, NULL));
  if (!rc) rc = hq_h5_attr_set_f64(h, g, "loss_proxy_gptq", s->loss_proxy_gptq);
  if (!rc) rc = hq_h5_attr_set_f64(h, g, "loss_proxy_rtn", s->loss_proxy_rtn);
  if (!rc) rc = hq_h5_attr_set_f64(h, g, "loss_ref", s->loss_ref);
  if (!rc) rc = hq_h5_attr_set_f64(h, g, "damp_used", s->damp_used);
  if (!rc) rc = hq_h5_attr_set_i64(h, g, "dead_cols", s->dead_cols);
  /* phase count and names must be identical on every rank (they name attributes) */
  for (int i = 0; i < s->nphases && !rc; i++) {
    char an[128];
    snprintf(an, sizeof an, "seconds_%s", s->phase_names[i]);
    rc = hq_h5_attr_set_f64(h, g, an, s->phase_seconds[i]);
  }
  if (!rc && s->owner_rows)
    rc = hq_h5_attr_set_i64_array(h, g, "owner_rows", s->owner_rows, s->nranks);
  return rc;
}

/* ---------------- progress ---------------- */

/* Collective. */
int hq_h5_progress_init(struct hq_h5 *h, int64_t n_blocks) {
  HQ_TRY(need_writable(h, "progress"));
  if (n_blocks < 1) return agree(h, hq_fail(HQ_ERR_INPUT, "progress for %lld blocks", (long long)n_blocks));
  int existed = H5Lexists(h->file, "/progress", H5P_DEFAULT) > 0;
  int rc = HQ_OK;
  if (existed) {
    int64_t have = 0;
    if (hq_h5_attr_exists(h, "/", "n_blocks")) rc = hq_h5_attr_get_i64(h, "/", "n_blocks", &have);
    if (!rc && have != n_blocks)
      rc = hq_fail(HQ_ERR_INPUT, "%s records %lld blocks, this run has %lld (a different model?)",
                   h->path, (long long)have, (long long)n_blocks);
  }
  hsize_t dims = (hsize_t)n_blocks;
  hid_t d;
  if (!rc) rc = dset_ensure(h, "/progress", H5T_STD_I8LE, 1, &dims, &d);
  rc = agree(h, rc);
  if (rc) return rc;
  if (existed && h->nflags != n_blocks) /* hq_h5_open_rw read them when n_blocks was set */
    rc = hq_fail(HQ_ERR_INPUT, "%s: /progress exists without n_blocks (damaged file?)", h->path);
  if (!existed) {
    free(h->flags);
    h->flags = hq_xcalloc((size_t)n_blocks, 1);
    h->nflags = n_blocks;
    rc = write_block(h, d, H5T_NATIVE_INT8, 1, 0, 0, is_root(h) ? 1 : 0,
                     is_root(h) ? dims : 0, dims, is_root(h) ? h->flags : NULL);
  }
  rc = agree(h, rc);
  if (!h->broken) H5Dclose(d);
  if (!rc && !existed) rc = set_sum(h, "/progress", hq_sum64(h->flags, 1, n_blocks));
  if (!rc && !existed) rc = hq_h5_attr_set_i64(h, "/", "n_blocks", n_blocks);
  return rc;
}

/* Collective. Flush the file to disk (H5Fflush, i.e. MPI_File_sync); the caller has checked
 * room_to_flush before it changed anything that the flush must write. */
static int flush(struct hq_h5 *h) {
  int rc = H5Fflush(h->file, H5F_SCOPE_GLOBAL) < 0 ? h5fail_io(h, "cannot flush %s", h->path) : HQ_OK;
  return agree(h, rc);
}

/* Not collective. */
int hq_h5_block_is_done(const struct hq_h5 *h, int64_t b) {
  return h && h->flags && b >= 0 && b < h->nflags && h->flags[b] != 0;
}

/* Collective. */
int hq_h5_block_done(struct hq_h5 *h, int64_t b) {
  HQ_TRY(need_writable(h, "block_done"));
  int64_t n = h->nflags;
  int rc = h->flags ? HQ_OK : hq_fail(HQ_ERR_INPUT, "block_done before progress_init");
  if (!rc && (b < 0 || b >= n))
    rc = hq_fail(HQ_ERR_INPUT, "block %lld out of range [0, %lld)", (long long)b, (long long)n);
  hid_t d = H5I_INVALID_HID;
  if (!rc) {
    d = H5Dopen2(h->file, "/progress", H5P_DEFAULT);
    if (d < 0) rc = h5fail(HQ_ERR_IO, "%s has no /progress", h->path);
  }
  rc = agree(h, rc);
  if (!rc) rc = room_to_flush(h); /* before the flag: a failure leaves the file as it was */
  if (rc) {
    if (d >= 0 && !h->broken) H5Dclose(d);
    return rc;
  }
  int8_t one = 1;
  rc = write_block(h, d, H5T_NATIVE_INT8, 1, 0, (hsize_t)b, is_root(h) ? 1 : 0,
                   is_root(h) ? 1 : 0, 1, is_root(h) ? &one : NULL);
  rc = agree(h, rc);
  if (!h->broken) H5Dclose(d);
  if (rc) return rc;
  h->flags[b] = 1;
  rc = set_sum(h, "/progress", hq_sum64(h->flags, 1, n));
  return rc ? rc : flush(h);
}

/* Collective. */
int hq_h5_complete(struct hq_h5 *h) {
  HQ_TRY(need_writable(h, "complete"));
  int64_t done = 0;
  for (int64_t b = 0; b < h->nflags; b++) done += h->flags[b] == 1;
  int rc = HQ_OK;
  if (h->nflags < 1 || done != h->nflags)
    rc = hq_fail(HQ_ERR_INPUT, "cannot mark %s complete: %lld of %lld blocks are done", h->path,
                 (long long)done, (long long)h->nflags);
  rc = agree(h, rc);
  if (!rc) rc = room_to_flush(h);
  if (rc) return rc;
  h->complete_set = 1; /* from here on a failure must not leave the attribute behind */
  rc = hq_h5_attr_set_i64(h, "/", "complete", 1);
  if (!rc) rc = flush(h);
  if (!rc) h->complete_set = 0, h->complete_flushed = 1; /* on disk, whole: close keeps it */
  return rc;
}

/* ---------------- readers ---------------- */

struct names_acc {
  char **v;
  int64_t n, cap;
};

static herr_t name_cb(hid_t g, const char *name, const H5L_info_t *info, void *data) {
  (void)g;
  (void)info;
  struct names_acc *a = (struct names_acc *)data;
  if (a->n == a->cap) {
    a->cap = a->cap ? 2 * a->cap : 64;
    char **nv = realloc(a->v, sizeof(char *) * (size_t)a->cap);
    if (!nv) HQ_DIE("out of memory listing HDF5 names");
    a->v = nv;
  }
  a->v[a->n++] = strdup(name);
  return 0;
}

static int list_group(struct hq_h5 *h, const char *group, char ***names, int64_t *n) {
  *names = NULL;
  *n = 0;
  struct names_acc a = {0};
  if (H5Lexists(h->file, group, H5P_DEFAULT) <= 0) return HQ_OK;
  hid_t g = H5Gopen2(h->file, group, H5P_DEFAULT);
  if (g < 0) return h5fail(HQ_ERR_IO, "cannot open %s in %s", group, h->path);
  hsize_t idx = 0;
  herr_t e = H5Literate(g, H5_INDEX_CRT_ORDER, H5_ITER_INC, &idx, name_cb, &a);
  if (e < 0) { /* a group without creation-order index (not written by hpcq): by name */
    H5Eclear2(H5E_DEFAULT);
    hq_h5_names_free(a.v, a.n);
    memset(&a, 0, sizeof a);
    idx = 0;
    e = H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, &idx, name_cb, &a);
  }
  H5Gclose(g);
  if (e < 0) {
    hq_h5_names_free(a.v, a.n);
    return h5fail(HQ_ERR_IO, "cannot list %s in %s", group, h->path);
  }
  *names = a.v;
  *n = a.n;
  return HQ_OK;
}

/* Not collective. */
int hq_h5_list_linears(struct hq_h5 *h, char ***names, int64_t *n) {
  return list_group(h, "/linears", names, n);
}
/* Not collective. */
int hq_h5_list_tensors(struct hq_h5 *h, char ***names, int64_t *n) {
  return list_group(h, "/tensors", names, n);
}
/* Not collective. */
void hq_h5_names_free(char **names, int64_t n) {
  for (int64_t i = 0; i < n; i++) free(names[i]);
  free(names);
}

/* Not collective. A dataset of `bytes` must fit in the file a reader opened (damaged
 * dimensions would else ask for absurd buffers). */
static int fits_file(struct hq_h5 *h, const char *path, double bytes) {
  hsize_t size = 0;
  if (h->writable) return HQ_OK; /* being written: the file is not that long yet */
  if (H5Fget_filesize(h->file, &size) < 0 || bytes > (double)size)
    return h5fail(HQ_ERR_INPUT, "%s: %s claims %.0f bytes, more than the file holds (damaged "
                  "file?)", h->path, path, bytes);
  return HQ_OK;
}

/* Not collective. */
int hq_h5_tensor_info(struct hq_h5 *h, const char *name, enum hq_dtype *dtype, int *ndim,
                      int64_t shape[HQ_ST_MAXDIM]) {
  char path[1024];
  snprintf(path, sizeof path, "/tensors/%s", name);
  if (H5Lexists(h->file, "/tensors", H5P_DEFAULT) <= 0 || H5Lexists(h->file, path, H5P_DEFAULT) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    return hq_fail(HQ_ERR_INPUT, "%s has no tensor %s", h->path, name);
  }
  hid_t d = H5Dopen2(h->file, path, H5P_DEFAULT);
  if (d < 0) return h5fail(HQ_ERR_IO, "cannot open %s in %s", path, h->path);
  hid_t t = H5Dget_type(d), s = H5Dget_space(d);
  hsize_t dims[HQ_ST_MAXDIM];
  int nd = H5Sget_simple_extent_ndims(s);
  int rc = HQ_OK;
  if (nd < 0 || nd > HQ_ST_MAXDIM) rc = hq_fail(HQ_ERR_UNSUPPORTED, "%s: %s has %d dimensions", h->path, path, nd);
  else H5Sget_simple_extent_dims(s, dims, NULL);
  H5T_class_t cl = H5Tget_class(t);
  size_t sz = H5Tget_size(t);
  H5Sclose(s);
  H5Tclose(t);
  H5Dclose(d);
  double bytes = (double)sz;
  for (int i = 0; !rc && i < nd; i++) bytes *= (double)dims[i];
  if (!rc) rc = fits_file(h, path, bytes);
  if (rc) return rc;
  if (cl == H5T_FLOAT && sz == 4) *dtype = HQ_DTYPE_F32;
  else if (cl == H5T_FLOAT && sz == 2) *dtype = HQ_DTYPE_F16;
  else if (cl == H5T_INTEGER && sz == 2) {
    char *dn = NULL;
    if (hq_h5_attr_exists(h, path, "dtype")) hq_h5_attr_get_str(h, path, "dtype", &dn);
    int bf = dn && !strcmp(dn, "bfloat16");
    free(dn);
    if (!bf) return hq_fail(HQ_ERR_UNSUPPORTED, "%s: %s is 16-bit integer without dtype=bfloat16", h->path, path);
    *dtype = HQ_DTYPE_BF16;
  } else {
    return hq_fail(HQ_ERR_UNSUPPORTED, "%s: %s has an unsupported element type", h->path, path);
  }
  *ndim = nd;
  for (int i = 0; i < nd; i++) shape[i] = (int64_t)dims[i];
  return HQ_OK;
}

/* Not collective. */
int hq_h5_read_tensor_f32(struct hq_h5 *h, const char *name, float **out, int64_t *numel) {
  *out = NULL;
  enum hq_dtype dt;
  int nd;
  int64_t shape[HQ_ST_MAXDIM];
  HQ_TRY(hq_h5_tensor_info(h, name, &dt, &nd, shape));
  int64_t n = 1;
  for (int i = 0; i < nd; i++) n *= shape[i];
  char path[1024];
  snprintf(path, sizeof path, "/tensors/%s", name);
  hid_t d = H5Dopen2(h->file, path, H5P_DEFAULT);
  float *f = hq_xmalloc(sizeof(float) * (size_t)(n ? n : 1));
  int rc = HQ_OK;
  if (dt == HQ_DTYPE_F32) {
    if (H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, f) < 0)
      rc = h5fail(HQ_ERR_IO, "cannot read %s from %s", path, h->path);
    if (!rc) rc = verify_sum(h, path, f, 4, n); /* float32 LE: the file's bytes */
  } else {
    uint16_t *raw = hq_xmalloc(sizeof(uint16_t) * (size_t)(n ? n : 1));
    if (H5Dread(d, dt == HQ_DTYPE_F16 ? h->f16 : H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw) < 0)
      rc = h5fail(HQ_ERR_IO, "cannot read %s from %s", path, h->path);
    if (!rc) rc = verify_sum(h, path, raw, 2, n);
    for (int64_t i = 0; !rc && i < n; i++)
      f[i] = dt == HQ_DTYPE_F16 ? hq_f16_to_f32(raw[i]) : hq_bf16_to_f32(raw[i]);
    free(raw);
  }
  H5Dclose(d);
  if (rc) {
    free(f);
    return rc;
  }
  *out = f;
  *numel = n;
  return HQ_OK;
}

/* Not collective. */
int hq_h5_read_tensor_rows(struct hq_h5 *h, const char *name, int64_t r0, int64_t nr, void *buf,
                           uint64_t *sum) {
  enum hq_dtype dt;
  int nd;
  int64_t shape[HQ_ST_MAXDIM];
  HQ_TRY(hq_h5_tensor_info(h, name, &dt, &nd, shape));
  int64_t rows = nd ? shape[0] : 1, rowel = 1;
  for (int k = 1; k < nd; k++) rowel *= shape[k];
  if (r0 < 0 || nr < 0 || r0 + nr > rows)
    return hq_fail(HQ_ERR_INPUT, "rows [%lld, %lld) of %s: it has %lld", (long long)r0,
                   (long long)(r0 + nr), name, (long long)rows);
  char path[1024];
  snprintf(path, sizeof path, "/tensors/%s", name);
  hid_t ds = H5Dopen2(h->file, path, H5P_DEFAULT);
  hid_t ft = ds >= 0 ? H5Dget_type(ds) : H5I_INVALID_HID;
  hid_t fs = ds >= 0 ? H5Dget_space(ds) : H5I_INVALID_HID;
  hsize_t start[HQ_ST_MAXDIM] = {0}, count[HQ_ST_MAXDIM] = {1};
  for (int k = 0; k < nd; k++) count[k] = (hsize_t)shape[k];
  start[0] = (hsize_t)r0;
  count[0] = (hsize_t)nr;
  hid_t ms = H5Screate_simple(nd ? nd : 1, count, NULL);
  herr_t e = ds < 0 ? -1 : nd ? H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) : 0;
  if (e >= 0 && nr > 0) e = H5Dread(ds, ft, ms, nd ? fs : H5S_ALL, H5P_DEFAULT, buf);
  H5Sclose(ms);
  if (fs >= 0) H5Sclose(fs);
  if (ft >= 0) H5Tclose(ft);
  if (ds >= 0) H5Dclose(ds);
  if (e < 0) return h5fail(HQ_ERR_IO, "cannot read rows %lld..%lld of %s from %s", (long long)r0,
                           (long long)(r0 + nr), path, h->path);
  *sum += hq_sum64_block(buf, hq_dtype_size(dt), 1, nr * rowel, 0, 0, (uint64_t)(r0 * rowel));
  return HQ_OK;
}

/* Not collective. */
int hq_h5_tensor_check_sum(struct hq_h5 *h, const char *name, uint64_t sum) {
  char path[1024];
  snprintf(path, sizeof path, "/tensors/%s", name);
  return check_sum(h, path, sum);
}

static int dims_of(struct hq_h5 *h, const char *path, int want_nd, hsize_t *dims) {
  hid_t d = H5Dopen2(h->file, path, H5P_DEFAULT);
  if (d < 0) return h5fail(HQ_ERR_INPUT, "%s has no dataset %s", h->path, path);
  hid_t s = H5Dget_space(d);
  int nd = H5Sget_simple_extent_ndims(s);
  if (nd == want_nd) H5Sget_simple_extent_dims(s, dims, NULL);
  H5Sclose(s);
  H5Dclose(d);
  if (nd != want_nd) return hq_fail(HQ_ERR_INPUT, "%s: %s has %d dimensions, expected %d", h->path, path, nd, want_nd);
  return HQ_OK;
}

/* Not collective. */
int hq_h5_linear_info(struct hq_h5 *h, const char *name, struct hq_h5_linear_desc *d) {
  memset(d, 0, sizeof *d);
  char g[1024], p[1100];
  HQ_TRY(linear_path(g, sizeof g, name, NULL));
  if (H5Lexists(h->file, "/linears", H5P_DEFAULT) <= 0 || H5Lexists(h->file, g, H5P_DEFAULT) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    return hq_fail(HQ_ERR_INPUT, "%s has no quantized linear %s", h->path, name);
  }
  int64_t bits = 0;
  char *zc = NULL;
  HQ_TRY(hq_h5_attr_get_i64(h, g, "bits", &bits));
  HQ_TRY(hq_h5_attr_get_i64(h, g, "group_size", &d->group_size));
  HQ_TRY(hq_h5_attr_get_i64(h, g, "rows", &d->rows));
  HQ_TRY(hq_h5_attr_get_i64(h, g, "cols", &d->cols));
  HQ_TRY(hq_h5_attr_get_str(h, g, "zero_convention", &zc));
  d->bits = (int)bits;
  d->format = hq_pack_format_parse(zc);
  free(zc);
  if (!d->format) return hq_fail_ctx(HQ_ERR_INPUT, "%s: linear %s: ", h->path, name);
  hsize_t qw[2], qz[2], sc[2], gi;
  snprintf(p, sizeof p, "%s/scales", g);
  HQ_TRY(dims_of(h, p, 2, sc));
  d->ngroups = (int64_t)sc[0];
  int rc = desc_check(d, name);
  if (rc) return hq_fail_ctx(rc, "%s: ", h->path);
  hsize_t wqw[2], wqz[2], wsc[2], wgi;
  linear_dims(d, wqw, wqz, wsc, &wgi);
  snprintf(p, sizeof p, "%s/qweight", g);
  HQ_TRY(dims_of(h, p, 2, qw));
  snprintf(p, sizeof p, "%s/qzeros", g);
  HQ_TRY(dims_of(h, p, 2, qz));
  snprintf(p, sizeof p, "%s/g_idx", g);
  HQ_TRY(dims_of(h, p, 1, &gi));
  if (qw[0] != wqw[0] || qw[1] != wqw[1] || qz[0] != wqz[0] || qz[1] != wqz[1] ||
      sc[1] != wsc[1] || gi != wgi)
    return hq_fail(HQ_ERR_INPUT, "%s: the datasets of linear %s do not have the shapes its "
                   "attributes imply (damaged file?)", h->path, name);
  return fits_file(h, g, 4.0 * (double)(qw[0] * qw[1] + qz[0] * qz[1] + gi) + 2.0 * (double)(sc[0] * sc[1]));
}

/* Not collective. The whole dataset `path` (n elements of esize bytes, as mtype) into buf, its
 * checksum verified. */
static int read_whole(struct hq_h5 *h, const char *path, hid_t mtype, void *buf, size_t esize,
                      int64_t n) {
  hid_t ds = H5Dopen2(h->file, path, H5P_DEFAULT);
  herr_t e = ds >= 0 ? H5Dread(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) : -1;
  if (ds >= 0) H5Dclose(ds);
  return e < 0 ? h5fail(HQ_ERR_IO, "cannot read %s from %s", path, h->path)
               : verify_sum(h, path, buf, esize, n);
}

/* Not collective. */
int hq_h5_linear_read(struct hq_h5 *h, const char *name, struct hq_packed *p) {
  memset(p, 0, sizeof *p);
  struct hq_h5_linear_desc d;
  HQ_TRY(hq_h5_linear_info(h, name, &d));
  HQ_TRY(hq_pack_init(p, d.bits, d.format, d.cols, d.rows, d.ngroups, 0, d.rows));
  hid_t mt[4] = {H5T_NATIVE_INT32, H5T_NATIVE_INT32, h->f16, H5T_NATIVE_INT32};
  void *bufs[4] = {p->qweight, p->qzeros, p->scales, p->g_idx};
  const size_t es[4] = {4, 4, 2, 4};
  const int64_t ne[4] = {d.cols * d.bits / 32 * d.rows, d.ngroups * (d.rows * d.bits / 32),
                         d.ngroups * d.rows, d.cols};
  char g[1100];
  snprintf(g, sizeof g, "/linears/%s", name);
  int64_t rows = -1;
  int rc = hq_h5_attr_get_i64(h, g, "rows_written", &rows);
  if (!rc && rows != d.rows)
    rc = hq_fail(HQ_ERR_INPUT, "%s: linear %s has %lld of its %lld rows written (damaged file?)",
                 h->path, name, (long long)rows, (long long)d.rows);
  for (int i = 0; i < 4 && !rc; i++) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", g, lin_ds[i]);
    rc = read_whole(h, path, mt[i], bufs[i], es[i], ne[i]);
  }
  if (rc) hq_pack_free(p);
  return rc;
}

/* Not collective. */
int hq_h5_linear_read_qzeros(struct hq_h5 *h, const char *name, struct hq_packed *p) {
  memset(p, 0, sizeof *p);
  struct hq_h5_linear_desc d;
  HQ_TRY(hq_h5_linear_info(h, name, &d));
  const int64_t n = d.ngroups * (d.rows * d.bits / 32); /* [ngroups, out*bits/32] */
  int32_t *qz = malloc((size_t)n * sizeof *qz);
  if (!qz) return hq_fail(HQ_ERR_NOMEM, "out of memory reading %s qzeros", name);
  char path[1100];
  snprintf(path, sizeof path, "/linears/%s/qzeros", name);
  int rc = read_whole(h, path, H5T_NATIVE_INT32, qz, 4, n);
  if (rc) {
    free(qz);
    return rc;
  }
  *p = (struct hq_packed){.bits = d.bits, .format = d.format, .in = d.cols, .out = d.rows,
                          .row0 = 0, .nrows = d.rows, .ngroups = d.ngroups, .qzeros = qz};
  return HQ_OK;
}
