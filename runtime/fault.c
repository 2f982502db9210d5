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
 *
 * The same jump stops a killed process that never calls the runtime again
 * (an endless pure-C loop, a sleep()), which would otherwise hold its
 * scheduler thread for good. The stopper thread (stopper.c) signals the
 * scheduler thread with SIGURG, and the handler here jumps out when the
 * process is at a point that can be abandoned: on its own stack, outside
 * runtime code, and outside the libraries that keep global state behind
 * locks (the C library, the allocator, the loader, ...) except the C
 * library's plain waits (sleep, nanosleep, pause). Anywhere else it
 * returns, and the stopper tries again a little later.
 */
#include <dlfcn.h>
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

/* Executable ranges of some loaded libraries, found by name. */
#define MAX_RANGES 48
typedef struct code_ranges {
    const char *const *names; /* substrings of the libraries' paths */
    size_t n_names;
    uintptr_t lo[MAX_RANGES], hi[MAX_RANGES];
    int n;
} code_ranges;

static int add_named_library(struct dl_phdr_info *info, size_t size, void *ud)
{
    (void)size;
    code_ranges *r = ud;
    const char *name = info->dlpi_name;
    bool listed = false;
    for (size_t k = 0; name != NULL && !listed && k < r->n_names; k++)
        listed = strstr(name, r->names[k]) != NULL;
    for (int i = 0; listed && i < info->dlpi_phnum && r->n < MAX_RANGES; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
            r->lo[r->n] = info->dlpi_addr + ph->p_vaddr;
            r->hi[r->n] = r->lo[r->n] + ph->p_memsz;
            r->n++;
        }
    }
    return 0; /* every library */
}

static void find_ranges(code_ranges *r)
{
    r->n = 0;
    dl_iterate_phdr(add_named_library, r);
}

static bool in_ranges(const code_ranges *r, uintptr_t pc)
{
    for (int i = 0; i < r->n; i++)
        if (pc >= r->lo[i] && pc < r->hi[i])
            return true;
    return false;
}

/* The C library: a fault there (in malloc, say) means its state may be
 * corrupt, so it is never survivable. */
static const char *const libc_names[] = {"/libc.so"};
static code_ranges libc_code = {libc_names, 1, {0}, {0}, 0};

/* Libraries a process must not be abandoned in: their state is shared by
 * every thread and guarded by their own locks (an allocator's heap, the
 * loader's lists, OpenSSL's and SQLite's mutexes). A process stopped there
 * could leave a lock held or a list half-linked. */
static const char *const unstoppable_names[] = {
    "/libc.so",    "/ld-linux",    "/libmimalloc", "/libstdc++", "/libgcc_s",
    "/libasan",    "/libubsan",    "/libtsan",     "/libcrypto", "/libssl",
    "/libsqlite3", "/libcurl",     "/libuv",       "/libnghttp", "/libz.so",
    "/libei",      "/libvalgrind", "vgpreload",
};
static code_ranges unstoppable_code = {unstoppable_names,
                                       sizeof unstoppable_names /
                                           sizeof unstoppable_names[0],
                                       {0},
                                       {0},
                                       0};

/* C library functions that only wait and hold none of the library's
 * locks: a process stopped in one leaves nothing half-done. A sleep() in
 * process code (the usual way to make a test example hang) spends its
 * time in the system call inside one of these, where the stopper's signal
 * lands. Found by symbol in the C library itself, not through the global
 * scope, where a sanitizer's wrapper of the same name would be found. */
static const char *const libc_wait_names[] = {
    "sleep", "usleep", "nanosleep", "clock_nanosleep", "pause", "sigsuspend",
};
#define N_LIBC_WAITS (sizeof libc_wait_names / sizeof libc_wait_names[0])
static code_ranges libc_wait_code; /* one range per function found */

static void find_libc_waits(void)
{
    libc_wait_code.n = 0;
    void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    if (libc == NULL)
        return;
    for (size_t i = 0; i < N_LIBC_WAITS && libc_wait_code.n < MAX_RANGES; i++) {
        void *fn = dlsym(libc, libc_wait_names[i]);
        Dl_info info;
        const ElfW(Sym) *sym = NULL;
        if (fn != NULL &&
            dladdr1(fn, &info, (void **)&sym, RTLD_DL_SYMENT) != 0 &&
            sym != NULL && sym->st_size > 0) {
            libc_wait_code.lo[libc_wait_code.n] = (uintptr_t)fn;
            libc_wait_code.hi[libc_wait_code.n] = (uintptr_t)fn + sym->st_size;
            libc_wait_code.n++;
        }
    }
    dlclose(libc);
}

void dx__library_ranges_init(void)
{
    find_ranges(&libc_code);
    find_ranges(&unstoppable_code);
    find_libc_waits();
}

bool dx__pc_in_locking_library(uintptr_t pc)
{
    return in_ranges(&unstoppable_code, pc);
}

static bool pc_in_libc(uintptr_t pc)
{
    return in_ranges(&libc_code, pc);
}

static bool pc_stoppable(uintptr_t pc)
{
    return pc != 0 && (!in_ranges(&unstoppable_code, pc) ||
                       in_ranges(&libc_wait_code, pc));
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

static uintptr_t interrupted_sp(void *uc)
{
#if defined(__x86_64__)
    return (uintptr_t)((ucontext_t *)uc)->uc_mcontext.gregs[REG_RSP];
#elif defined(__aarch64__)
    return (uintptr_t)((ucontext_t *)uc)->uc_mcontext.sp;
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

static struct sigaction previous_urg;
static void on_stop(int sig, siginfo_t *si, void *uc);

int dx__fault_install(void)
{
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
    /* SIGURG, which nothing sends unasked (the kernel only for a socket's
     * out-of-band data, to an owner set with F_SETOWN); a handler installed
     * before ours still gets every SIGURG that is not a stop request.
     * RESTART: a system call the signal lands in goes on. */
    sa.sa_sigaction = on_stop;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER | SA_RESTART;
    if (sigaction(SIGURG, &sa, &previous_urg) != 0)
        return DX_ESYS;
    return DX_OK;
}

void dx__fault_uninstall(void)
{
    for (size_t i = 0; i < NSIG_FAULT; i++)
        sigaction(fault_signals[i], &previous[i], NULL);
    sigaction(SIGURG, &previous_urg, NULL);
}

/* ---- stopping a killed process that never calls the runtime ----------- */

/* Whether sp lies on the stack p's own code runs on: not the scheduler
 * loop's, which may be between switches with p still current. */
static bool on_proc_stack(dx__sched *s, dx__proc *p, uintptr_t sp)
{
#if DX_COPY_STACK
    (void)p;
    return sp >= (uintptr_t)s->stack_lo && sp < (uintptr_t)s->stack_hi;
#else
    (void)s;
    uintptr_t lo = (uintptr_t)p->stack_lo;
    return lo != 0 && sp >= lo && sp < lo + p->stack_size;
#endif
}

static void pass_on_urg(int sig, siginfo_t *si, void *uc)
{
    if (previous_urg.sa_flags & SA_SIGINFO) {
        if (previous_urg.sa_sigaction != NULL)
            previous_urg.sa_sigaction(sig, si, uc);
    } else if (previous_urg.sa_handler != SIG_DFL &&
               previous_urg.sa_handler != SIG_IGN &&
               previous_urg.sa_handler != NULL) {
        previous_urg.sa_handler(sig);
    }
}

static void on_stop(int sig, siginfo_t *si, void *uc)
{
    dx__sched *s = dx__tls_sched;
    uint64_t want = s ? atomic_load(&s->stop_pid) : 0;
    if (want == 0) {
        pass_on_urg(sig, si, uc);
        return;
    }
    dx__proc *p = s->current;
    if (p == NULL || p->pid.id != want) {
        /* Gone from this thread since: nothing to stop. */
        atomic_compare_exchange_strong(&s->stop_pid, &want, 0);
        return;
    }
    if (p->in_runtime > 0 || !pc_stoppable(fault_pc(uc)) ||
        !on_proc_stack(s, p, interrupted_sp(uc)))
        return; /* not a point to abandon it at: the stopper tries again */
    atomic_store(&s->stop_pid, 0);
    s->fault_sig = DX__FAULT_STOPPED;
    s->fault_addr = NULL;
    siglongjmp(s->fault_jmp, 1);
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
    if (s->fault_sig == DX__FAULT_STOPPED)
        return dx_atom(atomic_load(&s->stop_shutdown) ? "shutdown" : "killed");
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
