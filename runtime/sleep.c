/*
 * sleep.c — the C library's sleep(), usleep() and nanosleep(), made to
 * park a process instead of its scheduler thread.
 *
 * A process that calls the C library's sleep holds its scheduler thread
 * for the whole sleep: every process queued on that scheduler waits, and
 * a kill sent to the sleeper is not acted on until it wakes. Program code
 * written for threads sleeps this way (a retry's back-off, a poll loop, a
 * test example made to hang). So dspex defines these three functions:
 * called from a process's own code they park the process, as dx_sleep
 * does, and the scheduler runs the others meanwhile. Called from anywhere
 * else they are the C library's, found with RTLD_NEXT at load time:
 *
 * - a thread that is no scheduler (the host's threads, blocking threads);
 * - runtime code acting for the process (in_runtime);
 * - a library that keeps state behind locks of its own (SQLite's busy
 *   handler sleeps holding its connection's mutex; a process parked there
 *   would leave the mutex held while another process on the same thread
 *   waits for it). The caller is told by the return address.
 *
 * Differences a caller in a process sees: the sleep is not cut short by a
 * signal (it returns 0 and reports no time left), and a sleep shorter than
 * a millisecond lasts one (usleep(0) and a zero nanosleep yield instead).
 */
#include <dlfcn.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>

#include "dspex/export.h"
#include "dx_internal.h"

typedef unsigned (*sleep_fn)(unsigned);
typedef int (*usleep_fn)(useconds_t);
typedef int (*nanosleep_fn)(const struct timespec *, struct timespec *);

static _Atomic(sleep_fn) libc_sleep;
static _Atomic(usleep_fn) libc_usleep;
static _Atomic(nanosleep_fn) libc_nanosleep;

/* The longest sleep handed to dx_sleep: about 35 years, far from the
 * nanosecond clock's overflow. */
#define LONGEST_SLEEP_MS ((int64_t)1 << 40)

/* At load time as well as at runtime start, so that a program sleeping
 * before it starts the runtime gets the C library's functions too, and no
 * sleep ever has to look them up (dlsym is not async-signal-safe; sleep
 * is). */
__attribute__((constructor)) static void resolve_at_load(void)
{
    dx__sleep_init();
}

void dx__sleep_init(void)
{
    if (atomic_load(&libc_nanosleep) != NULL)
        return;
    atomic_store(&libc_sleep, (sleep_fn)dlsym(RTLD_NEXT, "sleep"));
    atomic_store(&libc_usleep, (usleep_fn)dlsym(RTLD_NEXT, "usleep"));
    atomic_store(&libc_nanosleep, (nanosleep_fn)dlsym(RTLD_NEXT, "nanosleep"));
}

/* Whether a sleep called from caller_pc parks the calling process. */
static bool parks_process(const void *caller_pc)
{
    dx__proc *p = dx__self_proc();
    return p != NULL && p->in_runtime == 0 &&
           !dx__pc_in_locking_library((uintptr_t)caller_pc);
}

/* The C library's nanosleep, or the system call if it was not found. */
static int forward_nanosleep(const struct timespec *req, struct timespec *rem)
{
    nanosleep_fn fn = atomic_load(&libc_nanosleep);
    if (fn != NULL)
        return fn(req, rem);
    int rc = clock_nanosleep(CLOCK_REALTIME, 0, req, rem);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    return 0;
}

static void park_for_ms(int64_t ms)
{
    if (ms <= 0)
        dx_yield();
    else
        dx_sleep(ms < LONGEST_SLEEP_MS ? ms : LONGEST_SLEEP_MS);
}

DX_API unsigned sleep(unsigned seconds)
{
    if (parks_process(__builtin_return_address(0))) {
        park_for_ms((int64_t)seconds * 1000);
        return 0;
    }
    sleep_fn fn = atomic_load(&libc_sleep);
    if (fn != NULL)
        return fn(seconds);
    struct timespec req = {.tv_sec = seconds}, rem = {0};
    if (forward_nanosleep(&req, &rem) == 0)
        return 0;
    return (unsigned)rem.tv_sec + (rem.tv_nsec > 0);
}

DX_API int usleep(useconds_t usec)
{
    if (parks_process(__builtin_return_address(0))) {
        park_for_ms(((int64_t)usec + 999) / 1000);
        return 0;
    }
    usleep_fn fn = atomic_load(&libc_usleep);
    if (fn != NULL)
        return fn(usec);
    struct timespec req = {.tv_sec = usec / 1000000,
                           .tv_nsec = (long)(usec % 1000000) * 1000};
    return forward_nanosleep(&req, NULL);
}

DX_API int nanosleep(const struct timespec *req, struct timespec *rem)
{
    if (req != NULL && parks_process(__builtin_return_address(0))) {
        if (req->tv_sec < 0 || req->tv_nsec < 0 || req->tv_nsec >= 1000000000) {
            errno = EINVAL;
            return -1;
        }
        int64_t ms = req->tv_sec >= LONGEST_SLEEP_MS / 1000
                         ? LONGEST_SLEEP_MS
                         : (int64_t)req->tv_sec * 1000 +
                               (req->tv_nsec + 999999) / 1000000;
        park_for_ms(ms);
        if (rem != NULL)
            *rem = (struct timespec){0};
        return 0;
    }
    return forward_nanosleep(req, rem);
}
