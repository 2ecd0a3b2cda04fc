/* The checkpoint folder of hpcq export (src/io/export.c): temporary files renamed into place at
 * the end, the folder checks and clean-ups, and small file and JSON helpers. Not collective.
 * Internal to src/io (export.c, st_writer.c). */
#ifndef HQ_EXPORT_UTIL_H
#define HQ_EXPORT_UTIL_H

#include <stdint.h>

struct cJSON;

/* A cJSON raw number holding v exactly (cJSON numbers are doubles). */
struct cJSON *hq_json_raw_int(int64_t v);

/* "dir/name", malloc'ed. */
char *hq_path_join(const char *dir, const char *name);

/* Copy the regular file src to dst (created or truncated) and fsync it. */
int hq_file_copy(const char *src, const char *dst);
/* Write text plus a newline to path (created or truncated) and fsync it. */
int hq_file_write_text(const char *path, const char *text);

/* 1 when `dir` is a directory. 1 when the directories a and b are one and the same. */
int hq_dir_is(const char *dir);
int hq_dir_same(const char *a, const char *b);

/* Before anything is read: an existing --out must be a directory, and an empty one unless
 * overwrite. */
int hq_outdir_check(const char *dir, int overwrite);
/* Create `dir` (and its parents) and remove the ".NAME.tmp" leftovers of an interrupted export
 * from it. */
int hq_outdir_prepare(const char *dir);

/* Temporary files created in the output folder: removed on failure, renamed at the end. */
struct hq_pending {
  char **tmp, **final; /* "DIR/.NAME.tmp" -> "DIR/NAME" */
  int n, cap;
};
/* Register DIR/NAME; returns the path of its temporary file ("DIR/.NAME.tmp", owned by p). */
const char *hq_pending_add(struct hq_pending *p, const char *dir, const char *name);
/* Put every temporary file into place: the old config.json goes first, then the stale shards
 * and index of an earlier export, then the renames in order (the caller adds config.json
 * last), then the folder is fsync'ed. */
int hq_pending_commit(const struct hq_pending *p, const char *dir);
/* Free p, removing its temporary files when remove_tmp (the export failed). */
void hq_pending_free(struct hq_pending *p, int remove_tmp);

#endif
