/*
 * fileio.c — reading a whole file and replacing one atomically, for the
 * programs layer's savers and loaders (see pyjson.h): datasets, evaluation
 * rows, program state, declarative programs, reports.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "dspex/error.h"
#include "pyjson.h"

int dx__write_file_atomic(const char *path, const char *data, size_t len,
                          dx_diag *diag)
{
    static atomic_uint seq;
    /* Same directory as path, so the rename cannot cross file systems; a
     * reader sees the old file or the new one, never a half-written one. */
    char tmp[4096];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%u", path, (long)getpid(),
                     atomic_fetch_add(&seq, 1));
    if (n < 0 || (size_t)n >= sizeof tmp)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0)
        return dx_diag_set(diag, DX_EIO, 0, 0, "%s: %s", tmp, strerror(errno));
    size_t off = 0;
    int e = 0;
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            e = errno;
            break;
        }
        off += (size_t)w;
    }
    if (!e && fsync(fd) != 0)
        e = errno;
    if (close(fd) != 0 && !e)
        e = errno;
    if (!e && rename(tmp, path) != 0)
        e = errno;
    if (e) {
        unlink(tmp);
        return dx_diag_set(diag, DX_EIO, 0, 0, "%s: %s", path, strerror(e));
    }
    return DX_OK;
}

int dx__read_file(const char *path, dx__sb *out, dx_diag *diag)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return dx_diag_set(diag, DX_EIO, 0, 0, "%s: %s", path, strerror(errno));
    char chunk[16384];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
        dx__sb_put(out, chunk, got);
    bool bad = ferror(f);
    fclose(f);
    if (bad)
        return dx_diag_set(diag, DX_EIO, 0, 0, "%s: read failed", path);
    if (out->oom || !dx__sb_cstr(out))
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "%s: out of memory", path);
    return DX_OK;
}
