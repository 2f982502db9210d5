/*
 * descriptors.c — sizing the process's descriptor table ahead of a burst
 * of connections (dx_reserve_descriptors, runtime.h).
 *
 * Linux keeps a process's open descriptors in a table that starts with
 * room for 64 and doubles whenever a new descriptor does not fit. When
 * more than one thread shares the table, each doubling waits for an RCU
 * grace period (expand_fdtable calls synchronize_rcu), and every thread
 * that opens, accepts or duplicates a descriptor meanwhile sleeps behind
 * it. A grace period is milliseconds, tens of them on a busy virtual
 * machine; the first burst of 256 connections to a local model server
 * doubled the table four times (to 128, 256, 512, 1024 for both ends) and
 * stalled the whole process for 20-30 ms in all (seen with perf: every
 * thread in D state under expand_files).
 *
 * The table never shrinks, so asking once for a descriptor numbered
 * count - 1 and closing it leaves room for count. F_DUPFD (unlike dup2)
 * never replaces a descriptor in use: it takes the lowest free number at
 * or above the one asked for. Done before the process has threads this
 * costs no grace period at all; the kernel memory is 8 bytes and two bits
 * per descriptor. On other systems it is a harmless dup and close.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/resource.h>
#include <unistd.h>

#include "dspex/runtime.h"

/* Duplicate some open descriptor to number `at` or above; -1 if none. */
static int dup_high(int at)
{
    /* 0-2 are open in nearly every process; a daemon may have closed them. */
    for (int src = 0; src <= 2; src++) {
        int fd = fcntl(src, F_DUPFD_CLOEXEC, at);
        if (fd >= 0 || errno != EBADF)
            return fd;
    }
    int src = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (src < 0)
        return -1;
    int fd = fcntl(src, F_DUPFD_CLOEXEC, at);
    close(src);
    return fd;
}

unsigned dx_reserve_descriptors(unsigned count)
{
    if (count == 0)
        return 0;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        (rlim_t)count > rl.rlim_cur)
        count = (unsigned)rl.rlim_cur;
    if (count > INT_MAX) /* descriptors are ints (Linux stops at 2^20) */
        count = INT_MAX;
    if (count == 0)
        return 0;
    int fd = dup_high((int)(count - 1));
    if (fd < 0)
        return 0;
    close(fd);
    return (unsigned)fd + 1;
}
