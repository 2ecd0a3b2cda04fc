/* The checkpoint folder of hpcq export: temporaries, folder checks, file helpers
 * (src/io/export_util.h). Not collective. */
#include "export_util.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "fileio.h"
#include "util.h"

cJSON *hq_json_raw_int(int64_t v) {
  char b[32];
  snprintf(b, sizeof b, "%lld", (long long)v);
  return cJSON_CreateRaw(b);
}

char *hq_path_join(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = hq_xmalloc(n);
  snprintf(p, n, "%s/%s", dir, name);
  return p;
}

static int ends_with(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && !strcmp(s + a - b, suf);
}

int hq_file_copy(const char *src, const char *dst) {
  FILE *in;
  HQ_TRY(hq_fopen_regular(src, "tokenizer file", &in));
  FILE *out = fopen(dst, "wb");
  if (!out) {
    fclose(in);
    return hq_fail(HQ_ERR_IO, "cannot create %s: %s", dst, strerror(errno));
  }
  char buf[1 << 16];
  size_t n;
  int rc = HQ_OK;
  while ((n = fread(buf, 1, sizeof buf, in)) > 0)
    if (fwrite(buf, 1, n, out) != n) {
      rc = hq_fail(HQ_ERR_IO, "cannot write %s: %s", dst, strerror(errno));
      break;
    }
  if (!rc && ferror(in)) rc = hq_fail(HQ_ERR_IO, "cannot read %s", src);
  if ((fflush(out) != 0 || fsync(fileno(out)) != 0) && !rc)
    rc = hq_fail(HQ_ERR_IO, "cannot write %s: %s", dst, strerror(errno));
  fclose(in);
  if (fclose(out) != 0 && !rc) rc = hq_fail(HQ_ERR_IO, "cannot close %s", dst);
  return rc;
}

int hq_file_write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  if (!f) return hq_fail(HQ_ERR_IO, "cannot create %s: %s", path, strerror(errno));
  size_t n = strlen(text);
  int ok = fwrite(text, 1, n, f) == n && fputc('\n', f) != EOF && fflush(f) == 0 &&
           fsync(fileno(f)) == 0;
  int er = errno;
  if (fclose(f) != 0) ok = 0;
  return ok ? HQ_OK : hq_fail(HQ_ERR_IO, "cannot write %s: %s", path, strerror(er));
}

int hq_dir_is(const char *dir) {
  struct stat sb;
  return dir && stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode);
}

int hq_dir_same(const char *a, const char *b) {
  struct stat sa, sb;
  return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

/* 1 when the directory holds anything but . and .. (or cannot be listed), 0 when empty. */
static int dir_nonempty(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 1;
  struct dirent *de;
  int any = 0;
  while ((de = readdir(d)))
    if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
      any = 1;
      break;
    }
  closedir(d);
  return any;
}

int hq_outdir_check(const char *dir, int overwrite) {
  struct stat sb;
  if (stat(dir, &sb) != 0) return HQ_OK; /* created later */
  if (!S_ISDIR(sb.st_mode))
    return hq_fail(HQ_ERR_INPUT, "--out %s exists and is not a directory", dir);
  if (dir_nonempty(dir) && !overwrite)
    return hq_fail(HQ_ERR_INPUT, "--out %s exists and is not empty; add --overwrite to "
                   "replace the checkpoint in it, or choose a new folder", dir);
  return HQ_OK;
}

static int mkdir_p(const char *dir) {
  char *p = strdup(dir);
  int rc = HQ_OK;
  for (char *s = p + 1;; s++) {
    if (*s == '/' || *s == 0) {
      char c = *s;
      *s = 0;
      if (mkdir(p, 0777) != 0 && errno != EEXIST) {
        rc = hq_fail(HQ_ERR_IO, "cannot create directory %s: %s", p, strerror(errno));
        break;
      }
      *s = c;
      if (!c) break;
    }
  }
  free(p);
  if (rc) return rc;
  if (!hq_dir_is(dir)) return hq_fail(HQ_ERR_IO, "--out %s exists and is not a directory", dir);
  return HQ_OK;
}

/* Remove every entry of dir whose name `doomed` accepts. */
static void remove_matching(const char *dir, int (*doomed)(const char *name)) {
  DIR *dd = opendir(dir);
  struct dirent *de;
  while (dd && (de = readdir(dd)))
    if (doomed(de->d_name)) {
      char *p = hq_path_join(dir, de->d_name);
      unlink(p);
      free(p);
    }
  if (dd) closedir(dd);
}

/* ".NAME.tmp": a temporary file of an (interrupted) export. */
static int is_leftover(const char *name) { return name[0] == '.' && ends_with(name, ".tmp"); }

/* A shard or index of an earlier export. */
static int is_stale(const char *name) {
  return name[0] != '.' &&
         (ends_with(name, ".safetensors") || ends_with(name, ".safetensors.index.json"));
}

int hq_outdir_prepare(const char *dir) {
  HQ_TRY(mkdir_p(dir));
  /* leftovers of an interrupted export (only reachable with --overwrite: the folder was not
   * empty otherwise) */
  remove_matching(dir, is_leftover);
  return HQ_OK;
}

const char *hq_pending_add(struct hq_pending *p, const char *dir, const char *name) {
  if (p->n == p->cap) {
    p->cap = p->cap ? 2 * p->cap : 16;
    p->tmp = realloc(p->tmp, (size_t)p->cap * sizeof *p->tmp);
    p->final = realloc(p->final, (size_t)p->cap * sizeof *p->final);
    HQ_ASSERT(p->tmp && p->final);
  }
  size_t n = strlen(name) + 8;
  char *t = hq_xmalloc(n);
  snprintf(t, n, ".%s.tmp", name);
  p->tmp[p->n] = hq_path_join(dir, t);
  free(t);
  p->final[p->n] = hq_path_join(dir, name);
  return p->tmp[p->n++];
}

int hq_pending_commit(const struct hq_pending *p, const char *dir) {
  char *oldcfg = hq_path_join(dir, "config.json");
  unlink(oldcfg);
  free(oldcfg);
  remove_matching(dir, is_stale);
  for (int i = 0; i < p->n; i++)
    if (rename(p->tmp[i], p->final[i]) != 0)
      return hq_fail(HQ_ERR_IO, "cannot rename %s to %s: %s", p->tmp[i], p->final[i],
                     strerror(errno));
  int dfd = open(dir, O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return HQ_OK;
}

void hq_pending_free(struct hq_pending *p, int remove_tmp) {
  for (int i = 0; i < p->n; i++) {
    if (remove_tmp) unlink(p->tmp[i]);
    free(p->tmp[i]);
    free(p->final[i]);
  }
  free(p->tmp);
  free(p->final);
  memset(p, 0, sizeof *p);
}
