/* Input files that never block (src/io/fileio.h). */
#include "fileio.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"

const char *hq_file_kind(unsigned mode) {
  switch (mode & S_IFMT) {
  case S_IFREG: return "a regular file";
  case S_IFDIR: return "a directory";
  case S_IFIFO: return "a named pipe (FIFO)";
  case S_IFSOCK: return "a socket";
  case S_IFCHR: return "a character device";
  case S_IFBLK: return "a block device";
  default: return "not a regular file";
  }
}

static int not_regular(const char *path, const char *what, unsigned mode) {
  return hq_fail(HQ_ERR_INPUT, "%s %s is %s, not a regular file: hpcq reads its inputs from "
                 "regular files only (copy the data into a file and pass that)", what, path,
                 hq_file_kind(mode));
}

int hq_open_regular(const char *path, const char *what, int *fd) {
  *fd = -1;
  int exists;
  HQ_TRY(hq_path_regular(path, what, &exists)); /* devices are never opened at all */
  int f = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (f < 0) return hq_fail(HQ_ERR_IO, "cannot open %s %s: %s", what, path, strerror(errno));
  struct stat sb;
  if (fstat(f, &sb) != 0) {
    int e = errno;
    close(f);
    return hq_fail(HQ_ERR_IO, "cannot stat %s %s: %s", what, path, strerror(e));
  }
  if (!S_ISREG(sb.st_mode)) {
    close(f);
    return not_regular(path, what, (unsigned)sb.st_mode);
  }
  int fl = fcntl(f, F_GETFL);
  if (fl >= 0) fcntl(f, F_SETFL, fl & ~O_NONBLOCK);
  *fd = f;
  return HQ_OK;
}

int hq_fopen_regular(const char *path, const char *what, FILE **fp) {
  *fp = NULL;
  int fd;
  HQ_TRY(hq_open_regular(path, what, &fd));
  FILE *f = fdopen(fd, "rb");
  if (!f) {
    int e = errno;
    close(fd);
    return hq_fail(HQ_ERR_IO, "cannot open %s %s: %s", what, path, strerror(e));
  }
  *fp = f;
  return HQ_OK;
}

int hq_path_regular(const char *path, const char *what, int *exists) {
  struct stat sb;
  *exists = 0;
  if (stat(path, &sb) != 0) {
    if (errno == ENOENT) return HQ_OK;
    return hq_fail(HQ_ERR_IO, "cannot stat %s %s: %s", what, path, strerror(errno));
  }
  if (!S_ISREG(sb.st_mode)) return not_regular(path, what, (unsigned)sb.st_mode);
  *exists = 1;
  return HQ_OK;
}

struct cJSON *hq_json_parse_whole(const char *text, size_t len, long long *bad_at) {
  const char *end = NULL;
  if (bad_at) *bad_at = -1;
  cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
  if (!root) {
    const char *e = cJSON_GetErrorPtr();
    if (bad_at && e && e >= text && e <= text + len) *bad_at = (long long)(e - text);
    return NULL;
  }
  for (const char *p = end ? end : text + len; p < text + len; p++) {
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
      if (bad_at) *bad_at = (long long)(p - text);
      cJSON_Delete(root);
      return NULL;
    }
  }
  return root;
}
