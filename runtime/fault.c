/*
 * fault.c — turning a fault in a process's own code into that process's
 * exit.
 *
 * SIGSEGV, SIGBUS, SIGFPE and SIGILL are caught on a per-scheduler
 * alternate stack. If the faulting instruction belongs to process code (not
 * to the runtime acting for the process, not to the C library, and not to
 * the scheduler loop itself), the handler jumps back to the scheduler loop,
 * which ends the process with a reason such as {segv, Address} or
 * stack_overflow. Anything else is a bug the runtime cannot contain: the
 * previous handler is restored and the signal re-delivered, which normally
 * ends the OS process with a core dump. docs/internals/runtime.md lists the
 * cases.
 *
 * A blocking thread (blocking.c) is guarded the same way while it runs a
 * process's function: a fault in it jumps back to the thread's loop, which
 * ends the calling process with the reason a fault in its own code gives.
 */
#include <link.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include "dx_internal.h"

static const int fault_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
#define NSIG_FAULT (sizeof fault_signals / sizeof fault_signals[0])
static struct sigaction previous[NSIG_FAULT];

/* Executable ranges of the C library: a fault there (in malloc, say) means
 * its state may be corrupt, so it is never survivable. */
#define MAX_RANGES 8
static uintptr_t libc_lo[MAX_RANGES], libc_hi[MAX_RANGES];
static int nranges;

static int find_libc(struct dl_phdr_info *info, size_t size, void *ud)
{
    (void)size;
    (void)ud;
    const char *name = info->dlpi_name;
    if (name == NULL || strstr(name, "/libc.so") == NULL)
        return 0;
    for (int i = 0; i < info->dlpi_phnum && nranges < MAX_RANGES; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
            libc_lo[nranges] = info->dlpi_addr + ph->p_vaddr;
            libc_hi[nranges] = libc_lo[nranges] + ph->p_memsz;
            nranges++;
        }
    }
    return 1;
}

static int pc_in_libc(uintptr_t pc)
{
    for (int i = 0; i < nranges; i++)
        if (pc >= libc_lo[i] && pc < libc_hi[i])
            return 1;
    return 0;
}

static uintptr_t fault_pc(void *uc)
{
#if defined(__x86_64__)
    return (uintptr_t)((ucontext_t *)uc)->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
    return (uintptr_t)((ucontext_t *)uc)->uc_mcontext.pc;
#else
    (void)uc;
    return 0;
#endif
}

static void give_up(int sig)
{
    static const char msg[] =
        "dspex: fatal fault outside process code (runtime, C library or "
        "scheduler); cannot isolate it\n";
    (void)!write(2, msg, sizeof msg - 1);
    for (size_t i = 0; i < NSIG_FAULT; i++)
        if (fault_signals[i] == sig)
            sigaction(sig, &previous[i], NULL);
    /* Returning re-executes the faulting instruction under the previous
     * disposition (default: terminate with a core dump). */
}

_Thread_local dx__fault_guard *dx__tls_fault_guard;

static void on_fault(int sig, siginfo_t *si, void *uc)
{
    dx__sched *s = dx__tls_sched;
    dx__fault_guard *g = s ? NULL : dx__tls_fault_guard;
    if (g != NULL && g->armed && !pc_in_libc(fault_pc(uc))) {
        g->armed = 0;
        g->sig = sig;
        g->addr = si->si_addr;
        siglongjmp(g->jmp, 1);
    }
    dx__proc *p = s ? s->current : NULL;
    if (p == NULL || p->in_runtime > 0 || pc_in_libc(fault_pc(uc))) {
        give_up(sig);
        return;
    }
    s->fault_sig = sig;
    s->fault_addr = si->si_addr;
    siglongjmp(s->fault_jmp, 1);
}

int dx__fault_install(void)
{
    nranges = 0;
    dl_iterate_phdr(find_libc, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    /* NODEFER: we leave the handler by longjmp, so the kernel never gets
     * to unblock the signal for us. */
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < NSIG_FAULT; i++)
        if (sigaction(fault_signals[i], &sa, &previous[i]) != 0)
            return DX_ESYS;
    return DX_OK;
}

void dx__fault_uninstall(void)
{
    for (size_t i = 0; i < NSIG_FAULT; i++)
        sigaction(fault_signals[i], &previous[i], NULL);
}

#define ALTSTACK_BYTES (64 * 1024)

/* The calling thread's alternate signal stack: a fault handler needs one
 * to run after a stack overflow. NULL when it cannot be made. */
static void *altstack_new(void)
{
    void *m = mmap(NULL, ALTSTACK_BYTES, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    stack_t ss = {.ss_sp = m, .ss_size = ALTSTACK_BYTES, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) {
        munmap(m, ALTSTACK_BYTES);
        return NULL;
    }
    return m;
}

static void altstack_free(void *m)
{
    if (m == NULL)
        return;
    stack_t ss = {.ss_flags = SS_DISABLE};
    sigaltstack(&ss, NULL);
    munmap(m, ALTSTACK_BYTES);
}

int dx__fault_thread_init(dx__sched *s)
{
    s->altstack = altstack_new();
    return s->altstack ? DX_OK : DX_ESYS;
}

void dx__fault_thread_fini(dx__sched *s)
{
    altstack_free(s->altstack);
    s->altstack = NULL;
}

void dx__fault_guard_init(dx__fault_guard *g)
{
    *g = (dx__fault_guard){0};
    if (!dx__rt.fault_isolation)
        return;
    g->altstack = altstack_new();
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        void *lo = NULL;
        size_t size = 0, guard = 0;
        pthread_attr_getstack(&attr, &lo, &size);
        pthread_attr_getguardsize(&attr, &guard);
        g->stack_lo = lo;
        g->guard_bytes = guard;
        pthread_attr_destroy(&attr);
    }
    dx__tls_fault_guard = g->altstack ? g : NULL;
}

void dx__fault_guard_fini(dx__fault_guard *g)
{
    dx__tls_fault_guard = NULL;
    altstack_free(g->altstack);
    g->altstack = NULL;
}

/* The exit reason of a fault with signal sig at addr. */
static dx_term *reason_of(int sig, void *addr, bool stack_overflow)
{
    dx_term *where = dx_int((int64_t)(uintptr_t)addr);
    switch (sig) {
    case SIGSEGV:
        if (stack_overflow) {
            dx_term_free(where);
            return dx_atom("stack_overflow");
        }
        return dx_tuple(2, dx_atom("segv"), where);
    case SIGBUS:
        return dx_tuple(2, dx_atom("bus_error"), where);
    case SIGFPE:
        return dx_tuple(2, dx_atom("arithmetic_error"), where);
    case SIGILL:
        return dx_tuple(2, dx_atom("illegal_instruction"), where);
    default:
        dx_term_free(where);
        return dx_atom("fault");
    }
}

dx_term *dx__fault_reason(dx__sched *s, dx__proc *p)
{
    void *addr = s->fault_addr;
    return reason_of(s->fault_sig, addr, dx__is_guard_hit(s, p, addr));
}

dx_term *dx__fault_guard_reason(const dx__fault_guard *g)
{
    /* The thread's guard pages lie just below its stack. */
    char *a = g->addr, *lo = g->stack_lo;
    bool overflow = lo != NULL && a < lo && a >= lo - g->guard_bytes;
    return reason_of(g->sig, g->addr, overflow);
}
