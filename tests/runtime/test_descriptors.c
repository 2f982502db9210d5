/*
 * test_descriptors.c — dx_reserve_descriptors and the room dx_runtime_start
 * makes: the kernel's descriptor table (FDSize in /proc/self/status) is as
 * large as asked afterwards, no descriptor is opened, closed or moved by it,
 * the soft RLIMIT_NOFILE caps it, and it works in a process whose standard
 * descriptors are closed. Each test runs in a process of its own, whose table
 * starts at the kernel's 64 slots unless the test grows it.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "../fd_table_util.h"
#include "dspex/runtime.h"

static unsigned open_descriptors(void)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    unsigned n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own */
}

/* A target the table is certainly not yet as large as. */
static unsigned beyond_current_table(void)
{
    unsigned now = fd_table_size();
    cr_assert_gt(now, 0, "FDSize missing from /proc/self/status");
    struct rlimit rl;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    rlim_t want = (rlim_t)now * 4;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        cr_assert(rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want,
                  "the hard descriptor limit %llu leaves no room to test",
                  (unsigned long long)rl.rlim_max);
        rl.rlim_cur = want;
        cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    return now * 4;
}

Test(descriptors, the_table_has_the_room_asked_for_and_nothing_moves,
     .timeout = 10)
{
    unsigned want = beyond_current_table();
    /* A pipe whose write end sits between the table's end and the target
     * (which doubles the table, still short of the target): still the
     * pipe afterwards. */
    int p[2];
    cr_assert_eq(pipe(p), 0);
    int high = (int)fd_table_size();
    cr_assert_eq(dup2(p[1], high), high);
    close(p[1]);
    unsigned before = open_descriptors();

    unsigned room = dx_reserve_descriptors(want);
    cr_assert_geq(room, want, "room %u for %u asked", room, want);
    cr_assert_geq(fd_table_size(), want, "FDSize %u after asking for %u",
                  fd_table_size(), want);
    cr_assert_eq(open_descriptors(), before, "a descriptor was left open");
    cr_assert_eq(write(high, "x", 1), 1);
    char c = 0;
    cr_assert_eq(read(p[0], &c, 1), 1);
    cr_assert_eq(c, 'x');
    close(high);
    close(p[0]);
}

Test(descriptors, the_soft_limit_caps_the_room, .timeout = 10)
{
    unsigned now = fd_table_size();
    cr_assert_gt(now, 0);
    unsigned limit = now * 2;
    struct rlimit rl;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    cr_assert(rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= limit);
    rl.rlim_cur = limit;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    unsigned room = dx_reserve_descriptors(100000);
    cr_assert_gt(room, now, "room %u, the table had %u", room, now);
    cr_assert_leq(room, limit, "room %u beyond the limit of %u", room, limit);
    cr_assert_geq(fd_table_size(), room);
    cr_assert_eq(dx_reserve_descriptors(0), 0);
}

Test(descriptors, works_with_the_standard_descriptors_closed, .timeout = 10)
{
    unsigned want = beyond_current_table();
    for (int fd = 0; fd <= 2; fd++)
        close(fd);
    unsigned room = dx_reserve_descriptors(want);
    cr_assert_geq(room, want, "room %u for %u asked", room, want);
    cr_assert_geq(fd_table_size(), want);
    /* Still closed: the stand-in it duplicated from is gone again. */
    for (int fd = 0; fd <= 2; fd++)
        cr_assert_eq(fcntl(fd, F_GETFD), -1, "descriptor %d was opened", fd);
}

Test(descriptors, the_runtime_makes_room_before_its_threads_start,
     .timeout = 30)
{
    unsigned want = beyond_current_table();
    cr_assert_lt(fd_table_size(), want);
    cr_assert_eq(dx_runtime_start(
                     &(dx_runtime_opts){.schedulers = 2, .descriptors = want}),
                 DX_OK);
    unsigned size = fd_table_size();
    cr_assert_eq(dx_runtime_stop(), DX_OK);
    cr_assert_geq(size, want, "FDSize %u after a start asking for %u", size,
                  want);
}
