/* The output path of a run (outpath.h). */
#include "outpath.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "error.h"

#define HQ_LOCK_TEXT 384

/* The refusal when another process holds the lock on fd (closed here): its text names it. */
static int held_by(const char *path, int fd) {
  char held[HQ_LOCK_TEXT] = "";
  ssize_t n = pread(fd, held, sizeof held - 1, 0);
  held[n > 0 ? n : 0] = 0;
  held[strcspn(held, "\n")] = 0;
  close(fd);
  return hq_fail(HQ_ERR_INPUT, "another hpcq run is writing this output (%s: pid, host, "
                 "nonce, start: %s); wait for it to finish or stop it, or choose another "
                 "--out", path, held[0] ? held : "unknown");
}

/* Rank 0: open and lock OUT.lock; the path must still name the locked file afterwards (a
 * holder that just finished may unlink it between our open and flock). */
static int lock_open(const char *path, int *fd_out) {
  for (int attempt = 0; attempt < 10; attempt++) {
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644);
    if (fd < 0 && errno == ENOENT)
      return hq_fail(HQ_ERR_IO, "cannot create the lock file %s: the output's folder does not "
                     "exist; create it (mkdir -p) or choose another --out", path);
    if (fd < 0)
      return hq_fail(HQ_ERR_IO, "cannot create the lock file %s: %s; the output's folder must be "
                     "writable", path, strerror(errno));
    struct stat a, b;
    if (fstat(fd, &a) != 0 || !S_ISREG(a.st_mode)) {
      close(fd);
      return hq_fail(HQ_ERR_IO, "%s exists and is not a regular file; remove it", path);
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) return held_by(path, fd);
    if (stat(path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
      *fd_out = fd;
      return HQ_OK;
    }
    close(fd); /* unlinked under us: try again */
  }
  return hq_fail(HQ_ERR_IO, "cannot lock %s: it keeps being replaced", path);
}

static int lock_write(int fd, const char *text) {
  size_t n = strlen(text);
  if (ftruncate(fd, 0) != 0 || pwrite(fd, text, n, 0) != (ssize_t)n)
    return hq_fail(HQ_ERR_IO, "cannot write the lock file: %s", strerror(errno));
  return HQ_OK;
}

/* Every rank but 0: the lock file must hold rank 0's text (same file on a shared FS) */
static int lock_seen(const char *path, const char *text, const char *host) {
  char buf[HQ_LOCK_TEXT] = "";
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ssize_t n = fd >= 0 ? pread(fd, buf, sizeof buf - 1, 0) : -1;
  if (fd >= 0) close(fd);
  buf[n > 0 ? n : 0] = 0;
  if (strcmp(buf, text) == 0) return HQ_OK;
  return hq_fail(HQ_ERR_IO, "the output's folder is not the same on every rank: host %s does "
                 "not see rank 0's %s; put --out on a file system shared by all nodes (not a "
                 "node-local /tmp or scratch)", host, path);
}

int hq_out_lock_take(const struct hq_comm *c, const char *out, struct hq_out_lock *l) {
  l->fd = -1;
  l->path = malloc(strlen(out) + 6);
  if (!l->path) return hq_comm_agree(c, hq_fail(HQ_ERR_NOMEM, "out of memory"));
  sprintf(l->path, "%s.lock", out);
  char text[HQ_LOCK_TEXT] = "";
  int rc = HQ_OK;
  if (c->rank == 0) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(text, sizeof text, "%d %s %lld.%09ld\n", (int)getpid(), c->host, (long long)ts.tv_sec,
             ts.tv_nsec);
    rc = lock_open(l->path, &l->fd);
    if (!rc) rc = lock_write(l->fd, text);
  }
  rc = hq_comm_agree(c, rc);
  if (!rc && c->size > 1) {
    hq_comm_bcast(c, text, sizeof text, 0);
    rc = hq_comm_agree(c, c->rank ? lock_seen(l->path, text, c->host) : HQ_OK);
  }
  if (rc) hq_out_lock_release(c, l);
  return rc;
}

void hq_out_lock_release(const struct hq_comm *c, struct hq_out_lock *l) {
  if (c->rank == 0 && l->fd >= 0) {
    unlink(l->path); /* while still holding the lock: a waiter re-checks the path */
    close(l->fd);
  }
  l->fd = -1;
  free(l->path);
  l->path = NULL;
}

int hq_out_check_inputs(const char *out, int n, const char *const *inputs, const char *const *what) {
  struct stat o, s;
  if (stat(out, &o) != 0) return HQ_OK; /* a new file cannot be an existing input */
  for (int i = 0; i < n; i++)
    if (inputs[i] && stat(inputs[i], &s) == 0 && s.st_dev == o.st_dev && s.st_ino == o.st_ino)
      return hq_fail(HQ_ERR_INPUT, "--out %s is %s (%s): writing it would destroy an input of "
                     "this run; choose another output path", out, what[i], inputs[i]);
  return HQ_OK;
}

/* Not collective. */
int hq_out_lock_busy(const char *out) {
  char path[4200];
  snprintf(path, sizeof path, "%s.lock", out);
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return HQ_OK;
  struct stat a;
  if (fstat(fd, &a) == 0 && S_ISREG(a.st_mode) && flock(fd, LOCK_SH | LOCK_NB) != 0 &&
      errno == EWOULDBLOCK)
    return held_by(path, fd);
  close(fd); /* closing drops a shared lock we took */
  return HQ_OK;
}
