/* Opening input files without hanging on a named pipe, socket or device, and strict JSON
 * parsing of whole files. Not collective.
 *
 * A plain open(2) of a FIFO blocks until the other end opens it, so a check of the file type
 * after the open comes too late: every input file of hpcq is opened through hq_open_regular /
 * hq_fopen_regular, which open with O_NONBLOCK, fstat, and refuse anything that is not a
 * regular file (naming the file and its type) before a single byte is read. Files that a
 * library opens itself (HDF5) are checked with hq_path_regular first. No special file is
 * accepted anywhere (none is documented as an input). */
#ifndef HQ_FILEIO_H
#define HQ_FILEIO_H

#include <stddef.h>
#include <stdio.h>

/* "a directory", "a named pipe (FIFO)", "a socket", "a character device", ... for st_mode. */
const char *hq_file_kind(unsigned mode);

/* Open `path` read-only. HQ_ERR_IO when it cannot be opened (message: "cannot open WHAT PATH:
 * strerror"), HQ_ERR_INPUT when it is not a regular file (no blocking open happens). `what`
 * names the role in messages ("token file", "config.json"). */
int hq_open_regular(const char *path, const char *what, int *fd);
int hq_fopen_regular(const char *path, const char *what, FILE **fp);

/* stat only: HQ_OK with *exists = 0 when `path` does not exist, HQ_OK with *exists = 1 when it
 * is a regular file, HQ_ERR_INPUT naming its kind otherwise (a directory, a FIFO, ...). */
int hq_path_regular(const char *path, const char *what, int *exists);

/* Parse the whole of text[0, len) as one JSON value: NULL when it is not valid JSON or when
 * anything but JSON whitespace (space, tab, CR, LF) follows the value; *bad_at (may be NULL)
 * gets the byte offset of the problem (the first trailing byte, or where parsing failed;
 * -1 when unknown). The caller frees the result with cJSON_Delete. */
struct cJSON;
struct cJSON *hq_json_parse_whole(const char *text, size_t len, long long *bad_at);

#endif
