/*
 * helper_thread.h — the signal mask of dspex's own helper threads (the I/O
 * lanes, Evaluate's cancellation relay): no asynchronous signals, which
 * belong to the application's threads (SIGINT, SIGTERM) or must not end
 * the OS process (SIGPIPE from a peer that closed); faults stay
 * deliverable. A thread inherits the mask it is created with, so the
 * creator sets this one around pthread_create and restores its own after.
 * Not installed.
 */
#ifndef DSPEX_HELPER_THREAD_H
#define DSPEX_HELPER_THREAD_H

#include <signal.h>

static inline void dx__helper_thread_sigmask(sigset_t *set)
{
    sigfillset(set);
    sigdelset(set, SIGSEGV);
    sigdelset(set, SIGBUS);
    sigdelset(set, SIGFPE);
    sigdelset(set, SIGILL);
    sigdelset(set, SIGABRT);
}

#endif
