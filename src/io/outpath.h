/* The output path of a run (hpcq quantize --out): one run at a time, seen by every rank,
 * never one of the run's own inputs. */
#ifndef HQ_OUTPATH_H
#define HQ_OUTPATH_H

#include "comm.h"

struct hq_out_lock {
  int fd;       /* rank 0: the locked OUT.lock, else -1 */
  char *path;   /* OUT.lock */
};

/* Collective. Rank 0 takes an exclusive flock on OUT.lock (created next to OUT) and writes
 * "pid host nonce start-time" into it; a lock held by a running hpcq is refused with its
 * holder named. Every other rank then reads OUT.lock and must find rank 0's nonce: a path
 * that is not the same file on every rank (node-local scratch) is refused before any MPI-IO
 * open. The kernel drops the lock when the holder dies (kill -9), so no stale lock remains. */
int hq_out_lock_take(const struct hq_comm *c, const char *out, struct hq_out_lock *l);
/* Not collective. HQ_ERR_INPUT (the holder named) when a running hpcq holds OUT.lock: asked
 * before anything looks at OUT, whose content a running writer may be changing. */
int hq_out_lock_busy(const char *out);
/* Collective. Remove OUT.lock and release the lock (rank 0). */
void hq_out_lock_release(const struct hq_comm *c, struct hq_out_lock *l);

/* Not collective. HQ_ERR_INPUT when `out` exists and is, by device and inode, one of the n
 * files `inputs` (what[i] says what each is, for the message); missing inputs are skipped. */
int hq_out_check_inputs(const char *out, int n, const char *const *inputs, const char *const *what);

#endif
