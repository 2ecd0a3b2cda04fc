#include "error.h"

#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static _Thread_local char hq_errbuf[2048];
static int hq_rank_for_msgs = -1;

void hq_error_set_rank(int rank) { hq_rank_for_msgs = rank; }
int hq_error_rank(void) { return hq_rank_for_msgs; }

int hq_fail(int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(hq_errbuf, sizeof hq_errbuf, fmt, ap);
  va_end(ap);
  return status;
}

int hq_fail_ctx(int status, const char *fmt, ...) {
  char old[sizeof hq_errbuf];
  memcpy(old, hq_errbuf, sizeof old);
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(hq_errbuf, sizeof hq_errbuf, fmt, ap);
  va_end(ap);
  if (n >= 0 && (size_t)n < sizeof hq_errbuf)
    snprintf(hq_errbuf + n, sizeof hq_errbuf - (size_t)n, "%s", old);
  return status;
}

const char *hq_last_error(void) { return hq_errbuf[0] ? hq_errbuf : "(no message)"; }
void hq_error_clear(void) { hq_errbuf[0] = 0; }

const char *hq_status_name(int status) {
  switch (status) {
  case HQ_OK: return "ok";
  case HQ_ERR_INPUT: return "bad input";
  case HQ_ERR_NUMERIC: return "numerical error";
  case HQ_ERR_IO: return "I/O error";
  case HQ_ERR_NOMEM: return "out of memory";
  case HQ_ERR_UNSUPPORTED: return "unsupported";
  case HQ_ERR_INTERRUPTED: return "interrupted";
  case HQ_ERR_REMOTE: return "failed on another rank";
  default: return "error";
  }
}

void hq_die(const char *file, int line, const char *fmt, ...) {
  char host[256] = "?";
  gethostname(host, sizeof host - 1);
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "[rank %d host %s] %s:%d: fatal: %s\n", hq_rank_for_msgs, host, file, line, msg);
  fflush(stderr);
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin) MPI_Abort(MPI_COMM_WORLD, 70);
  abort();
}

void *hq_xmalloc_at(size_t bytes, const char *file, int line) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p) hq_die(file, line, "out of memory allocating %zu bytes", bytes);
  return p;
}

void *hq_xcalloc_at(size_t n, size_t size, const char *file, int line) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) hq_die(file, line, "out of memory allocating %zu x %zu bytes", n, size);
  return p;
}
