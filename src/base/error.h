/* hpcq error handling: two tiers (DESIGN.md "Conventions").
 *
 * 1. Bad input and numerical trouble: the function records a message that says what to do
 *    (hq_fail) and returns a non-zero enum hq_status; the caller propagates it. In MPI code
 *    a rank that fails locally agrees on it with the others (hq_comm_agree in mpi/comm.h)
 *    before the next collective, so nobody hangs.
 * 2. Programmer and device failures (broken invariants, CUDA/NCCL/MPI errors, out of memory
 *    in a place that cannot recover): HQ_DIE / HQ_ASSERT print "[rank R host H] file:line msg"
 *    and call MPI_Abort (or abort() outside MPI).
 *
 * Every macro here evaluates its arguments exactly once. */
#ifndef HQ_ERROR_H
#define HQ_ERROR_H

#include <stddef.h>

#ifdef __cplusplus
#define HQ_NORETURN [[noreturn]]
#else
#define HQ_NORETURN _Noreturn
#endif

enum hq_status {
  HQ_OK = 0,
  HQ_ERR_INPUT = 1,       /* bad argument, option, file content */
  HQ_ERR_NUMERIC = 2,     /* not positive definite after all damping retries, NaN/Inf */
  HQ_ERR_IO = 3,          /* cannot open/read/write/map a file */
  HQ_ERR_NOMEM = 4,       /* an allocation the user can fix (smaller batch, more ranks) */
  HQ_ERR_UNSUPPORTED = 5, /* valid but not supported (dtype, architecture, shape) */
  HQ_ERR_INTERRUPTED = 6, /* stopped by a signal (SIGTERM/SIGINT), output is resumable */
  HQ_ERR_REMOTE = 7       /* another rank failed; its message was printed there */
};

/* Record a message (printf-style) for the calling thread and return `status`. */
int hq_fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepend context to the recorded message ("reading model.safetensors: " + old). */
int hq_fail_ctx(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *hq_last_error(void);
void hq_error_clear(void);
const char *hq_status_name(int status);

/* Tier 2: print "[rank R host H] file:line: msg" to stderr and abort the whole job. */
HQ_NORETURN void hq_die(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define HQ_DIE(...) hq_die(__FILE__, __LINE__, __VA_ARGS__)
#define HQ_ASSERT(cond)                                                                   \
  do {                                                                                    \
    if (!(cond)) hq_die(__FILE__, __LINE__, "assertion failed: %s", #cond);               \
  } while (0)
/* Propagate a non-zero status: HQ_TRY(hq_thing(...)); */
#define HQ_TRY(expr)                                                                      \
  do {                                                                                    \
    int hq_try_rc_ = (expr);                                                              \
    if (hq_try_rc_ != HQ_OK) return hq_try_rc_;                                           \
  } while (0)

/* Allocation that aborts through the funnel on failure (for small/bounded buffers). */
void *hq_xmalloc_at(size_t bytes, const char *file, int line);
void *hq_xcalloc_at(size_t n, size_t size, const char *file, int line);
#define hq_xmalloc(bytes) hq_xmalloc_at((bytes), __FILE__, __LINE__)
#define hq_xcalloc(n, size) hq_xcalloc_at((n), (size), __FILE__, __LINE__)

/* Rank used in messages (set by mpi/comm at init; -1 before). */
void hq_error_set_rank(int rank);
int hq_error_rank(void);

#endif
