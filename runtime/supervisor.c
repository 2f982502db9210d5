/*
 * supervisor.c — the supervisor behaviour (supervisor.h), built as a
 * dx_server on the public kernel API only.
 *
 * It owns the supervisor's state (children in start order, a pid index,
 * the sliding window of restart times), the restart rules of each strategy
 * and restart type, the shutdown protocol, the reports it logs, and the
 * client side of the run-time API (each function is one dx_call).
 *
 * All state is dx_palloc'd by the supervisor process, so a supervisor that
 * is killed (no terminate callback runs) still leaks nothing of its own.
 * Children are found by pid through an open-addressing table, so an exit
 * costs the same with 10 children or 10,000.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/log.h"
#include "dspex/server.h"
#include "dspex/supervisor.h"
#include "dx_internal.h"

/* Default shutdown time of a worker, in ms (OTP's 5000). */
#define WORKER_SHUTDOWN_MS 5000
#define DEFAULT_INTENSITY 1
#define DEFAULT_PERIOD_S 5

/* Internal start result: the start function broke its contract (DX_OK
 * without a pid, or a positive value other than DX_SUP_IGNORE). */
#define START_BAD_RETURN 2

/* Call operations (request tags) and the supervisor's own cast. */
enum {
    OP_START_CHILD = 1,
    OP_START_DYNAMIC,
    OP_TERMINATE,
    OP_TERMINATE_PID,
    OP_RESTART,
    OP_DELETE,
    OP_FIND,
    OP_WHICH,
    OP_COUNT,
    CAST_TRY_AGAIN,
};

enum {
    ST_RUNNING = DX_SUP_CHILD_RUNNING,
    ST_RESTARTING = DX_SUP_CHILD_RESTARTING,
    ST_UNDEFINED = DX_SUP_CHILD_UNDEFINED,
    ST_STOPPING, /* shutdown sent, DOWN not yet seen (mass shutdown) */
};

typedef struct child {
    char *id; /* NULL for dynamic children */
    dx_sup_start_fn start;
    void *arg;
    void *extra;
    dx_sup_restart restart;
    int64_t shutdown; /* resolved: > 0 ms, DX_INFINITY or BRUTAL_KILL */
    dx_sup_child_type type;
    dx_pid pid;
    dx_ref mon; /* during shutdown */
    int status;
    uint64_t restarts;
    uint64_t key; /* unique per child; names it in try-again casts */
    size_t pos;   /* index in sup.kids */
} child;

typedef struct slot {
    uint64_t pid; /* 0: empty */
    child *c;
} slot;

typedef struct sup {
    dx_pid self;
    dx_pid parent;
    char label[80]; /* registered name or pid text, for reports */
    dx_sup_strategy strategy;
    int intensity;
    int64_t period_ms;
    bool dynamic;
    child tmpl; /* simple_one_for_one template */
    const char *tmpl_id;
    void (*extra_free)(void *extra);

    child **kids;
    size_t nkids, capkids;
    uint64_t next_key;

    slot *tab; /* pid -> child */
    size_t tabmask, tablen;

    int64_t *ring; /* restart times (ms) within the period, oldest first */
    size_t rhead, rlen, rcap;
    uint64_t total_restarts;
} sup;

/* What dx_sup_start_link hands to init: a heap copy of the spec (the
 * caller's stack is not readable from the supervisor process). */
typedef struct start_arg {
    dx__spec_copy copy;
    dx_pid parent;
} start_arg;

/* A call's request payload. */
typedef struct req {
    dx_child_spec spec;
    char id[DX_SUP_ID_MAX + 1];
    dx_pid pid;
    void *extra;
} req;

/* A call's reply payload. The result code travels here, not in the
 * reply's tag: negative tags belong to the runtime. */
typedef struct rep {
    int rc;
    dx_pid pid;
    dx_sup_counts counts;
    dx_sup_child *list;
    size_t n;
} rep;

static void rep_free(void *p)
{
    rep *r = p;
    if (r != NULL)
        dx_free(r->list);
    dx_free(r);
}

const char *dx_sup_strategy_name(dx_sup_strategy s)
{
    switch (s) {
    case DX_SUP_ONE_FOR_ONE:
        return "one_for_one";
    case DX_SUP_ONE_FOR_ALL:
        return "one_for_all";
    case DX_SUP_REST_FOR_ONE:
        return "rest_for_one";
    case DX_SUP_SIMPLE_ONE_FOR_ONE:
        return "simple_one_for_one";
    }
    return "?";
}

const char *dx_sup_restart_name(dx_sup_restart r)
{
    switch (r) {
    case DX_SUP_PERMANENT:
        return "permanent";
    case DX_SUP_TRANSIENT:
        return "transient";
    case DX_SUP_TEMPORARY:
        return "temporary";
    }
    return "?";
}

static const char *type_name(dx_sup_child_type t)
{
    return t == DX_SUP_SUPERVISOR ? "supervisor" : "worker";
}

/* ---- validation ----------------------------------------------------------- */

static bool id_ok(const char *id)
{
    if (id == NULL)
        return false;
    size_t n = strnlen(id, DX_SUP_ID_MAX + 1);
    return n > 0 && n <= DX_SUP_ID_MAX;
}

static int check_child(const dx_child_spec *c, bool need_id)
{
    if (c->start == NULL)
        return DX_EINVAL;
    if (need_id && !id_ok(c->id))
        return DX_EINVAL;
    if ((int)c->restart < DX_SUP_PERMANENT ||
        (int)c->restart > DX_SUP_TEMPORARY)
        return DX_EINVAL;
    if ((int)c->type < DX_SUP_WORKER || (int)c->type > DX_SUP_SUPERVISOR)
        return DX_EINVAL;
    if (c->shutdown_ms < DX_SUP_BRUTAL_KILL)
        return DX_EINVAL;
    return DX_OK;
}

static int check_spec(const dx_sup_spec *s)
{
    if (s == NULL)
        return DX_EINVAL;
    if ((int)s->strategy < DX_SUP_ONE_FOR_ONE ||
        (int)s->strategy > DX_SUP_SIMPLE_ONE_FOR_ONE)
        return DX_EINVAL;
    if (s->intensity < 0 || s->period_s < 0)
        return DX_EINVAL;
    if (s->nchildren > 0 && s->children == NULL)
        return DX_EINVAL;
    if (s->strategy == DX_SUP_SIMPLE_ONE_FOR_ONE) {
        if (s->nchildren != 1)
            return DX_EINVAL;
        if (s->children[0].id != NULL && !id_ok(s->children[0].id))
            return DX_EINVAL;
        return check_child(&s->children[0], false);
    }
    for (size_t i = 0; i < s->nchildren; i++) {
        int rc = check_child(&s->children[i], true);
        if (rc != DX_OK)
            return rc;
        for (size_t j = 0; j < i; j++)
            if (strcmp(s->children[i].id, s->children[j].id) == 0)
                return DX_EINVAL;
    }
    return DX_OK;
}

static int64_t resolve_shutdown(int64_t ms, dx_sup_child_type type)
{
    if (ms == DX_SUP_SHUTDOWN_DEFAULT)
        return type == DX_SUP_SUPERVISOR ? DX_INFINITY : WORKER_SHUTDOWN_MS;
    return ms;
}

/* ---- pid index ------------------------------------------------------------ */

static size_t hslot(uint64_t pid, size_t mask)
{
    uint64_t h = pid * UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(h ^ (h >> 31)) & mask;
}

static child *hfind(const sup *s, dx_pid pid)
{
    if (pid.id == 0 || s->tab == NULL)
        return NULL;
    for (size_t i = hslot(pid.id, s->tabmask);; i = (i + 1) & s->tabmask) {
        if (s->tab[i].pid == pid.id)
            return s->tab[i].c;
        if (s->tab[i].pid == 0)
            return NULL;
    }
}

static void hput_raw(slot *tab, size_t mask, uint64_t pid, child *c)
{
    size_t i = hslot(pid, mask);
    while (tab[i].pid != 0)
        i = (i + 1) & mask;
    tab[i].pid = pid;
    tab[i].c = c;
}

static int hput(sup *s, dx_pid pid, child *c)
{
    if (s->tab == NULL || (s->tablen + 1) * 2 > s->tabmask + 1) {
        size_t ncap = s->tab == NULL ? 16 : (s->tabmask + 1) * 2;
        slot *nt = dx_pcalloc(ncap, sizeof *nt);
        if (nt == NULL)
            return DX_ENOMEM;
        if (s->tab != NULL) {
            for (size_t i = 0; i <= s->tabmask; i++)
                if (s->tab[i].pid != 0)
                    hput_raw(nt, ncap - 1, s->tab[i].pid, s->tab[i].c);
            dx_pfree(s->tab);
        }
        s->tab = nt;
        s->tabmask = ncap - 1;
    }
    hput_raw(s->tab, s->tabmask, pid.id, c);
    s->tablen++;
    return DX_OK;
}

/* Linear-probing delete with backward shift, so lookups never need
 * tombstones. */
static void hdel(sup *s, dx_pid pid)
{
    if (pid.id == 0 || s->tab == NULL)
        return;
    size_t mask = s->tabmask;
    size_t i = hslot(pid.id, mask);
    while (s->tab[i].pid != pid.id) {
        if (s->tab[i].pid == 0)
            return;
        i = (i + 1) & mask;
    }
    size_t j = i;
    for (;;) {
        s->tab[i].pid = 0;
        s->tab[i].c = NULL;
        for (;;) {
            j = (j + 1) & mask;
            if (s->tab[j].pid == 0) {
                s->tablen--;
                return;
            }
            size_t home = hslot(s->tab[j].pid, mask);
            /* Move j back to i unless its home lies cyclically in (i, j]. */
            bool stays =
                i <= j ? (i < home && home <= j) : (i < home || home <= j);
            if (!stays)
                break;
        }
        s->tab[i] = s->tab[j];
        i = j;
    }
}

/* ---- children list ----------------------------------------------------------- */

static int kids_push(sup *s, child *c)
{
    if (s->nkids == s->capkids) {
        size_t ncap = s->capkids ? s->capkids * 2 : 8;
        child **nk = dx_prealloc(s->kids, ncap * sizeof *nk);
        if (nk == NULL)
            return DX_ENOMEM;
        s->kids = nk;
        s->capkids = ncap;
    }
    c->pos = s->nkids;
    s->kids[s->nkids++] = c;
    return DX_OK;
}

/* Remove a child record for good: static children keep their order,
 * dynamic ones (order does not matter) are swapped out in O(1). */
static void kids_remove(sup *s, child *c)
{
    size_t pos = c->pos;
    if (s->dynamic) {
        s->kids[pos] = s->kids[--s->nkids];
        s->kids[pos]->pos = pos;
    } else {
        memmove(&s->kids[pos], &s->kids[pos + 1],
                (s->nkids - pos - 1) * sizeof *s->kids);
        s->nkids--;
        for (size_t i = pos; i < s->nkids; i++)
            s->kids[i]->pos = i;
    }
    if (c->pid.id != 0)
        hdel(s, c->pid);
    if (c->extra != NULL && s->extra_free != NULL)
        s->extra_free(c->extra);
    dx_pfree(c->id);
    dx_pfree(c);
}

static child *find_id(const sup *s, const char *id)
{
    for (size_t i = 0; i < s->nkids; i++)
        if (s->kids[i]->id != NULL && strcmp(s->kids[i]->id, id) == 0)
            return s->kids[i];
    return NULL;
}

static child *find_key(const sup *s, uint64_t key)
{
    for (size_t i = 0; i < s->nkids; i++)
        if (s->kids[i]->key == key)
            return s->kids[i];
    return NULL;
}

static child *child_new(sup *s, const dx_child_spec *spec, void *extra)
{
    child *c = dx_pcalloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    if (spec->id != NULL && !s->dynamic) {
        size_t n = strlen(spec->id);
        c->id = dx_palloc(n + 1);
        if (c->id == NULL) {
            dx_pfree(c);
            return NULL;
        }
        memcpy(c->id, spec->id, n + 1);
    }
    c->start = spec->start;
    c->arg = spec->arg;
    c->extra = extra;
    c->restart = spec->restart;
    c->type = spec->type;
    c->shutdown = resolve_shutdown(spec->shutdown_ms, spec->type);
    c->status = ST_UNDEFINED;
    c->key = ++s->next_key;
    return c;
}

/* ---- reports ------------------------------------------------------------------ */

static const char *child_name(const sup *s, const child *c)
{
    if (c->id != NULL)
        return c->id;
    return s->tmpl_id != NULL ? s->tmpl_id : "undefined";
}

static void report(const sup *s, dx_log_level level, const char *event,
                   const child *c, dx_pid pid, const dx_term *reason)
{
    if (!dx_log_enabled(level))
        return;
    dx_log_field f[8];
    size_t n = 0;
    f[n++] = DX_LOG_STR("supervisor", s->label);
    f[n++] = DX_LOG_STR("child", child_name(s, c));
    f[n++] = DX_LOG_PID("pid", pid);
    if (reason != NULL)
        f[n++] = DX_LOG_TERM("reason", reason);
    f[n++] = DX_LOG_INT("restarts", c->restarts);
    if (strcmp(event, "child_started") == 0) {
        f[n++] = DX_LOG_STR("type", type_name(c->type));
        f[n++] = DX_LOG_STR("restart_type", dx_sup_restart_name(c->restart));
        f[n++] = DX_LOG_INT("shutdown", c->shutdown);
    }
    dx_log_event(level, event, f, n);
}

/* A start function's code as a reason atom: lower case like Erlang's POSIX
 * error atoms (enomem, enoent), or bad_return for a broken contract. */
static dx_term *code_atom(int rc)
{
    if (rc == START_BAD_RETURN)
        return dx_atom("bad_return");
    char name[32];
    snprintf(name, sizeof name, "%s", dx_err_name(rc));
    for (char *p = name; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return dx_atom(name);
}

static void report_code(const sup *s, const char *event, const child *c, int rc)
{
    if (!dx_log_enabled(DX_LOG_ERROR))
        return;
    dx_term *r = code_atom(rc);
    report(s, DX_LOG_ERROR, event, c, DX_NOPID, r);
    dx_term_free(r);
}

/* ---- starting ----------------------------------------------------------------- */

/* Run the child's start function: DX_OK (c now running and indexed),
 * DX_SUP_IGNORE, START_BAD_RETURN or a negative error. */
static int start_one(sup *s, child *c)
{
    dx_pid pid = DX_NOPID;
    int rc = c->start(c->arg, c->extra, &pid);
    if (rc == DX_SUP_IGNORE)
        return DX_SUP_IGNORE;
    if (rc < 0)
        return rc;
    if (rc != DX_OK || dx_pid_is_none(pid))
        return START_BAD_RETURN;
    if (hput(s, pid, c) != DX_OK) {
        /* Unsupervisable child: end it rather than lose track of it. */
        dx_kill(pid);
        return DX_ENOMEM;
    }
    c->pid = pid;
    c->status = ST_RUNNING;
    return DX_OK;
}

static bool is_shutdown_reason(const dx_term *r)
{
    if (dx_is_atom(r, "shutdown"))
        return true;
    return dx_term_type_of(r) == DX_TERM_TUPLE && dx_term_size(r) == 2 &&
           dx_is_atom(dx_term_at(r, 0), "shutdown");
}

static bool is_normal_end(const dx_term *r)
{
    return dx_is_atom(r, "normal") || is_shutdown_reason(r);
}

/* ---- stopping ------------------------------------------------------------------ */

static dx_term *await_down(dx_ref ref, int64_t timeout_ms, bool *timed_out)
{
    dx_match m = {
        .fields = DX_MATCH_TAG | DX_MATCH_REF, .tag = DX_TAG_DOWN, .ref = ref};
    dx_msg *msg = NULL;
    int rc = dx_receive(&m, timeout_ms, &msg);
    if (rc != DX_OK) {
        *timed_out = true;
        return NULL;
    }
    *timed_out = false;
    dx_term *reason = dx_msg_take_term(msg);
    dx_msg_free(msg);
    return reason;
}

/* The child's link delivers an EXIT too, always ahead of the DOWN, so it is
 * normally here already: take it. A DOWN that says only noproc means the
 * child had died before we monitored it, and its EXIT (with the real
 * reason) may still be on its way: allow it a moment. A late EXIT is
 * harmless anyway: its pid is no longer indexed, so it is ignored. */
#define NOPROC_GRACE_MS 100

static dx_term *flush_exit(dx_pid pid, dx_term *down_reason)
{
    dx_match m = {.fields = DX_MATCH_TAG | DX_MATCH_FROM,
                  .tag = DX_TAG_EXIT,
                  .from = pid};
    dx_msg *msg = NULL;
    int64_t wait = dx_is_atom(down_reason, "noproc") ? NOPROC_GRACE_MS : 0;
    if (dx_receive(&m, wait, &msg) != DX_OK)
        return down_reason;
    dx_term *r = dx_msg_take_term(msg);
    dx_msg_free(msg);
    if (r == NULL)
        return down_reason;
    dx_term_free(down_reason);
    return r;
}

/* Whether an end seen during shutdown is the expected one (OTP's rules:
 * a permanent child must end with exactly the reason it was sent). */
static bool shutdown_ok(const child *c, const dx_term *r, bool killed_by_us)
{
    if (killed_by_us)
        return dx_is_atom(r, "killed") ||
               (c->restart != DX_SUP_PERMANENT && is_normal_end(r));
    if (dx_is_atom(r, "shutdown"))
        return true;
    return c->restart != DX_SUP_PERMANENT && is_normal_end(r);
}

/* OTP's shutdown protocol for one running child: monitor it, send exit
 * `shutdown` (or kill for brutal_kill), wait up to its shutdown time for the
 * DOWN, then kill. Leaves c not running and unindexed. */
static void stop_one(sup *s, child *c)
{
    dx_pid pid = c->pid;
    hdel(s, pid);
    c->pid = DX_NOPID;
    c->status = ST_UNDEFINED;

    dx_ref ref;
    if (dx_monitor(pid, &ref) != DX_OK) {
        /* Cannot watch it end (out of memory): the only safe stop left is
         * the untrappable one. */
        dx_kill(pid);
        return;
    }
    bool brutal = c->shutdown == DX_SUP_BRUTAL_KILL;
    bool timed_out = false;
    dx_term *reason;
    if (brutal) {
        dx_kill(pid);
        reason = await_down(ref, DX_INFINITY, &timed_out);
    } else {
        dx_exit(pid, dx_atom("shutdown"));
        reason = await_down(ref, c->shutdown, &timed_out);
        if (timed_out) {
            dx_kill(pid);
            reason = await_down(ref, DX_INFINITY, &timed_out);
            /* Killed because it outlived its shutdown time: OTP reports
             * that as a shutdown_error even though `killed` is expected. */
            reason = flush_exit(pid, reason);
            report(s, DX_LOG_ERROR, "shutdown_error", c, pid, reason);
            dx_term_free(reason);
            return;
        }
    }
    reason = flush_exit(pid, reason);
    if (!shutdown_ok(c, reason, brutal))
        report(s, DX_LOG_ERROR, "shutdown_error", c, pid, reason);
    dx_term_free(reason);
}

/* Stop one child as part of a group and drop it if it is temporary (a
 * temporary child is never restarted, so it leaves the supervisor). */
static void stop_member(sup *s, child *c)
{
    if (c->status == ST_RUNNING)
        stop_one(s, c);
    else
        c->status = ST_UNDEFINED;
    if (c->restart == DX_SUP_TEMPORARY)
        kids_remove(s, c);
}

static bool match_stopping(const dx_msg *m, void *ud)
{
    const sup *s = ud;
    if (m->tag != DX_TAG_DOWN && m->tag != DX_TAG_EXIT)
        return false;
    const child *c = hfind(s, m->from);
    if (c == NULL || c->status != ST_STOPPING)
        return false;
    return m->tag == DX_TAG_EXIT || dx_ref_eq(m->ref, c->mon);
}

/* Dynamic children stop all at once (their number is unbounded and they
 * are independent), within one shutdown time, as OTP does for
 * simple_one_for_one. */
static void stop_all_dynamic(sup *s)
{
    bool brutal = s->tmpl.shutdown == DX_SUP_BRUTAL_KILL;
    size_t pending = 0;
    for (size_t i = 0; i < s->nkids; i++) {
        child *c = s->kids[i];
        if (c->status != ST_RUNNING)
            continue;
        if (dx_monitor(c->pid, &c->mon) != DX_OK) {
            dx_kill(c->pid);
            hdel(s, c->pid);
            c->pid = DX_NOPID;
            c->status = ST_UNDEFINED;
            continue;
        }
        c->status = ST_STOPPING;
        pending++;
        if (brutal)
            dx_kill(c->pid);
        else
            dx_exit(c->pid, dx_atom("shutdown"));
    }
    int64_t timeout = brutal ? DX_INFINITY : s->tmpl.shutdown;
    int64_t deadline = timeout == DX_INFINITY ? 0 : dx_now_ms() + timeout;
    bool killed = brutal;
    dx_match m = {.pred = match_stopping, .ud = s};
    while (pending > 0) {
        int64_t wait = DX_INFINITY;
        if (!killed && timeout != DX_INFINITY) {
            wait = deadline - dx_now_ms();
            if (wait < 0)
                wait = 0;
        }
        dx_msg *msg = NULL;
        if (dx_receive(&m, wait, &msg) != DX_OK) {
            /* Shutdown time is up: kill whoever is left. */
            for (size_t i = 0; i < s->nkids; i++)
                if (s->kids[i]->status == ST_STOPPING)
                    dx_kill(s->kids[i]->pid);
            killed = true;
            continue;
        }
        child *c = hfind(s, msg->from);
        if (msg->tag == DX_TAG_DOWN) {
            const dx_term *r = msg->term;
            /* Killed after the shutdown time is an error, as in stop_one.
             * noproc: it had ended on its own before the shutdown began;
             * its real reason went by in an EXIT, so say nothing. */
            if (!dx_is_atom(r, "noproc") && !shutdown_ok(c, r, brutal))
                report(s, DX_LOG_ERROR, "shutdown_error", c, c->pid, r);
            hdel(s, c->pid);
            c->pid = DX_NOPID;
            c->status = ST_UNDEFINED;
            pending--;
        }
        dx_msg_free(msg);
    }
}

/* Stop every child: static ones one by one in reverse start order, dynamic
 * ones together. Temporary and dynamic children leave the supervisor. */
static void stop_all(sup *s)
{
    if (s->dynamic) {
        stop_all_dynamic(s);
        while (s->nkids > 0)
            kids_remove(s, s->kids[s->nkids - 1]);
        return;
    }
    for (size_t i = s->nkids; i-- > 0;)
        stop_member(s, s->kids[i]);
}

/* ---- restarting --------------------------------------------------------------- */

/* Record one restart; false when it makes more than `intensity` restarts
 * within the period (OTP's sliding window, here in milliseconds). */
static bool add_restart(sup *s)
{
    int64_t now = dx_now_ms();
    while (s->rlen > 0 && now - s->ring[s->rhead] >= s->period_ms) {
        s->rhead = (s->rhead + 1) % s->rcap;
        s->rlen--;
    }
    s->total_restarts++;
    if (s->rlen == s->rcap) {
        size_t ncap = s->rcap ? s->rcap * 2 : 8;
        int64_t *nr = dx_palloc(ncap * sizeof *nr);
        if (nr == NULL)
            return false; /* cannot keep count: giving up is the safe side */
        for (size_t i = 0; i < s->rlen; i++)
            nr[i] = s->ring[(s->rhead + i) % s->rcap];
        dx_pfree(s->ring);
        s->ring = nr;
        s->rcap = ncap;
        s->rhead = 0;
    }
    s->ring[(s->rhead + s->rlen) % s->rcap] = now;
    s->rlen++;
    return s->rlen <= (size_t)s->intensity;
}

static void try_again_later(sup *s, child *c)
{
    c->status = ST_RESTARTING;
    dx_msg *m = dx_msg_new(CAST_TRY_AGAIN);
    if (m == NULL)
        return;
    m->term = dx_int((int64_t)c->key);
    dx_cast(s->self, m);
}

/* Start c as a restart: counts it, reports it. Returns false if it failed
 * and a retry was scheduled. */
static bool restart_one(sup *s, child *c)
{
    c->restarts++;
    int rc = start_one(s, c);
    if (rc == DX_OK) {
        report(s, DX_LOG_INFO, "child_restarted", c, c->pid, NULL);
        return true;
    }
    if (rc == DX_SUP_IGNORE) {
        c->status = ST_UNDEFINED;
        if (s->dynamic || c->restart == DX_SUP_TEMPORARY)
            kids_remove(s, c);
        return true;
    }
    report_code(s, "start_error", c, rc);
    try_again_later(s, c);
    return false;
}

/* Restart the children from position `from` on (one_for_all: 0,
 * rest_for_one: the failed child's): stop the running ones in reverse
 * order, then start them all in order. A start that fails leaves the rest
 * not running and schedules a retry of the group. */
static void restart_group(sup *s, size_t from)
{
    for (size_t i = s->nkids; i-- > from;)
        stop_member(s, s->kids[i]);
    /* The group holds no temporary child any more (stop_member dropped
     * them), so every member is started again and none leaves here. */
    for (size_t i = from; i < s->nkids; i++)
        if (!restart_one(s, s->kids[i]))
            return;
}

/* Returns false when the intensity is exceeded (the supervisor must stop). */
static bool restart(sup *s, child *c)
{
    if (!add_restart(s)) {
        if (dx_log_enabled(DX_LOG_ERROR)) {
            dx_log_field f[] = {
                DX_LOG_STR("supervisor", s->label),
                DX_LOG_STR("child", child_name(s, c)),
                DX_LOG_INT("restarts", c->restarts),
                DX_LOG_INT("intensity", s->intensity),
                DX_LOG_INT("period_s", s->period_ms / 1000),
            };
            dx_log_event(DX_LOG_ERROR, "reached_max_restart_intensity", f,
                         sizeof f / sizeof f[0]);
        }
        return false;
    }
    switch (s->strategy) {
    case DX_SUP_ONE_FOR_ALL:
        restart_group(s, 0);
        break;
    case DX_SUP_REST_FOR_ONE:
        restart_group(s, c->pos);
        break;
    default:
        restart_one(s, c);
        break;
    }
    return true;
}

/* A child ended with `reason`: apply its restart type. False: give up. */
static bool child_exited(sup *s, child *c, const dx_term *reason)
{
    dx_pid pid = c->pid;
    hdel(s, pid);
    c->pid = DX_NOPID;
    c->status = ST_UNDEFINED;

    if (c->restart == DX_SUP_PERMANENT) {
        report(s, DX_LOG_ERROR, "child_terminated", c, pid, reason);
        return restart(s, c);
    }
    if (is_normal_end(reason)) {
        if (s->dynamic || c->restart == DX_SUP_TEMPORARY)
            kids_remove(s, c);
        return true;
    }
    report(s, DX_LOG_ERROR, "child_terminated", c, pid, reason);
    if (c->restart == DX_SUP_TRANSIENT)
        return restart(s, c);
    kids_remove(s, c);
    return true;
}

/* ---- server callbacks -------------------------------------------------------- */

static dx_term *failed_to_start(const char *id, int rc)
{
    return dx_tuple(2, dx_atom("shutdown"),
                    dx_tuple(3, dx_atom("failed_to_start_child"), dx_atom(id),
                             code_atom(rc)));
}

static int sup_init(void *arg, void **state, dx_term **stop_reason)
{
    const start_arg *a = arg;
    const dx_sup_spec *spec = &a->copy.spec;
    sup *s = dx_pcalloc(1, sizeof *s);
    if (s == NULL)
        return DX_ENOMEM;
    s->self = dx_self();
    s->parent = a->parent;
    s->strategy = spec->strategy;
    s->dynamic = spec->strategy == DX_SUP_SIMPLE_ONE_FOR_ONE;
    if (spec->intensity == 0 && spec->period_s == 0) {
        s->intensity = DEFAULT_INTENSITY;
        s->period_ms = DEFAULT_PERIOD_S * 1000;
    } else {
        s->intensity = spec->intensity;
        s->period_ms =
            (int64_t)(spec->period_s ? spec->period_s : DEFAULT_PERIOD_S) *
            1000;
    }
    if (a->copy.name != NULL) {
        snprintf(s->label, sizeof s->label, "%s", a->copy.name);
    } else {
        dx_term *t = dx_pid_term(s->self);
        if (t != NULL)
            dx_term_format(t, s->label, sizeof s->label);
        dx_term_free(t);
    }
    char lbl[64];
    snprintf(lbl, sizeof lbl, "dx_supervisor:%.49s", s->label);
    dx_set_label(lbl);
    *state = s;

    if (s->dynamic) {
        const dx_child_spec *t = &spec->children[0];
        s->tmpl.start = t->start;
        s->tmpl.arg = t->arg;
        s->tmpl.restart = t->restart;
        s->tmpl.type = t->type;
        s->tmpl.shutdown = resolve_shutdown(t->shutdown_ms, t->type);
        s->extra_free = t->extra_free;
        if (t->id != NULL) {
            size_t n = strlen(t->id);
            char *id = dx_palloc(n + 1);
            if (id == NULL)
                return DX_ENOMEM;
            memcpy(id, t->id, n + 1);
            s->tmpl_id = id;
        }
        return DX_OK;
    }

    for (size_t i = 0; i < spec->nchildren; i++) {
        child *c = child_new(s, &spec->children[i], NULL);
        if (c == NULL || kids_push(s, c) != DX_OK) {
            stop_all(s);
            return DX_ENOMEM;
        }
        int rc = start_one(s, c);
        if (rc == DX_OK) {
            report(s, DX_LOG_INFO, "child_started", c, c->pid, NULL);
        } else if (rc == DX_SUP_IGNORE) {
            if (c->restart == DX_SUP_TEMPORARY)
                kids_remove(s, c);
        } else {
            report_code(s, "start_error", c, rc);
            *stop_reason = failed_to_start(c->id, rc);
            stop_all(s);
            return DX_EINIT;
        }
    }
    return DX_OK;
}

static void sup_terminate(void *state, const dx_term *reason)
{
    sup *s = state;
    stop_all(s);
    if (dx_log_enabled(DX_LOG_INFO)) {
        dx_log_field f[] = {DX_LOG_STR("supervisor", s->label),
                            DX_LOG_TERM("reason", reason)};
        dx_log_event(DX_LOG_INFO, "supervisor_stopped", f, 2);
    }
    /* The state is process memory: it goes with the process. */
}

static dx_srv_ret sup_info(void *state, dx_msg *msg, dx_term **stop_reason)
{
    sup *s = state;
    if (msg->tag != DX_TAG_EXIT) {
        if (dx_log_enabled(DX_LOG_ERROR)) {
            dx_log_field f[] = {DX_LOG_STR("supervisor", s->label),
                                DX_LOG_INT("tag", msg->tag),
                                DX_LOG_PID("from", msg->from)};
            dx_log_event(DX_LOG_ERROR, "supervisor_unexpected_message", f, 3);
        }
        return DX_SRV_NOREPLY;
    }
    child *c = hfind(s, msg->from);
    if (c == NULL) {
        /* Like gen_server: the parent's exit ends the supervisor with the
         * parent's reason (after its children, in terminate). */
        if (dx_pid_eq(msg->from, s->parent) && !dx_pid_is_none(s->parent)) {
            *stop_reason =
                msg->term ? dx_term_copy(msg->term) : dx_atom("normal");
            return DX_SRV_STOP;
        }
        return DX_SRV_NOREPLY; /* a child we already let go of */
    }
    dx_term *normal = dx_atom("normal");
    if (!child_exited(s, c, msg->term ? msg->term : normal)) {
        *stop_reason = dx_atom("shutdown");
        return DX_SRV_STOP;
    }
    return DX_SRV_NOREPLY;
}

static dx_srv_ret sup_cast(void *state, dx_msg *msg, dx_term **stop_reason)
{
    sup *s = state;
    int64_t key;
    if (msg->tag != CAST_TRY_AGAIN || !dx_int_value(msg->term, &key))
        return DX_SRV_NOREPLY;
    child *c = find_key(s, (uint64_t)key);
    if (c == NULL || c->status != ST_RESTARTING)
        return DX_SRV_NOREPLY;
    if (!restart(s, c)) {
        *stop_reason = dx_atom("shutdown");
        return DX_SRV_STOP;
    }
    return DX_SRV_NOREPLY;
}

static int call_start_child(sup *s, req *r, rep *out)
{
    if (s->dynamic)
        return DX_ENOTSUP;
    r->spec.id = r->id;
    int rc = check_child(&r->spec, true);
    if (rc != DX_OK)
        return rc;
    child *old = find_id(s, r->id);
    if (old != NULL) {
        out->pid = old->pid;
        return DX_EEXIST;
    }
    child *c = child_new(s, &r->spec, NULL);
    if (c == NULL)
        return DX_ENOMEM;
    rc = start_one(s, c);
    if (rc == DX_OK ||
        (rc == DX_SUP_IGNORE && c->restart != DX_SUP_TEMPORARY)) {
        if (kids_push(s, c) != DX_OK) {
            if (c->pid.id != 0) {
                stop_one(s, c);
            }
            dx_pfree(c->id);
            dx_pfree(c);
            return DX_ENOMEM;
        }
        if (rc == DX_OK)
            report(s, DX_LOG_INFO, "child_started", c, c->pid, NULL);
        out->pid = c->pid;
        return DX_OK;
    }
    dx_pfree(c->id);
    dx_pfree(c);
    if (rc == DX_SUP_IGNORE)
        return DX_OK;
    return rc == START_BAD_RETURN ? DX_EINIT : rc;
}

static int call_start_dynamic(sup *s, req *r, rep *out)
{
    if (!s->dynamic)
        return DX_ENOTSUP;
    dx_child_spec t = {.start = s->tmpl.start,
                       .arg = s->tmpl.arg,
                       .restart = s->tmpl.restart,
                       .type = s->tmpl.type,
                       .shutdown_ms = s->tmpl.shutdown};
    child *c = child_new(s, &t, r->extra);
    if (c == NULL)
        return DX_ENOMEM;
    int rc = start_one(s, c);
    if (rc == DX_OK) {
        if (kids_push(s, c) != DX_OK) {
            stop_one(s, c);
            dx_pfree(c);
            return DX_ENOMEM;
        }
        report(s, DX_LOG_INFO, "child_started", c, c->pid, NULL);
        out->pid = c->pid;
        return DX_OK;
    }
    dx_pfree(c);
    if (rc == DX_SUP_IGNORE) {
        if (r->extra != NULL && s->extra_free != NULL)
            s->extra_free(r->extra);
        return DX_OK;
    }
    return rc == START_BAD_RETURN ? DX_EINIT : rc;
}

static int call_by_id(sup *s, int op, req *r, rep *out)
{
    if (s->dynamic)
        return DX_ENOTSUP;
    child *c = find_id(s, r->id);
    if (c == NULL)
        return DX_ENOENT;
    switch (op) {
    case OP_TERMINATE:
        if (c->status == ST_RUNNING)
            stop_one(s, c);
        c->status = ST_UNDEFINED;
        if (c->restart == DX_SUP_TEMPORARY)
            kids_remove(s, c);
        return DX_OK;
    case OP_RESTART: {
        if (c->status != ST_UNDEFINED)
            return DX_ESTATE;
        int rc = start_one(s, c);
        if (rc == DX_OK) {
            report(s, DX_LOG_INFO, "child_started", c, c->pid, NULL);
            out->pid = c->pid;
            return DX_OK;
        }
        if (rc == DX_SUP_IGNORE)
            return DX_OK;
        return rc == START_BAD_RETURN ? DX_EINIT : rc;
    }
    case OP_DELETE:
        if (c->status != ST_UNDEFINED)
            return DX_ESTATE;
        kids_remove(s, c);
        return DX_OK;
    case OP_FIND:
        out->pid = c->pid;
        return c->status == ST_RUNNING ? DX_OK : DX_ENOPROC;
    default:
        return DX_EINVAL;
    }
}

static int call_terminate_pid(sup *s, req *r)
{
    /* OTP: a pid names a child only under simple_one_for_one; elsewhere it
     * is simply not found. */
    if (!s->dynamic)
        return DX_ENOENT;
    child *c = hfind(s, r->pid);
    if (c == NULL)
        return DX_ENOENT;
    stop_one(s, c);
    kids_remove(s, c);
    return DX_OK;
}

static int call_which(sup *s, rep *out)
{
    if (s->nkids == 0)
        return DX_OK;
    out->list = dx_calloc(s->nkids, sizeof *out->list);
    if (out->list == NULL)
        return DX_ENOMEM;
    for (size_t i = 0; i < s->nkids; i++) {
        const child *c = s->kids[i];
        dx_sup_child *o = &out->list[i];
        if (c->id != NULL)
            snprintf(o->id, sizeof o->id, "%s", c->id);
        o->pid = c->pid;
        o->status = (dx_sup_child_status)c->status;
        o->type = c->type;
        o->restart = c->restart;
        o->restarts = c->restarts;
    }
    out->n = s->nkids;
    return DX_OK;
}

static void call_count(sup *s, rep *out)
{
    dx_sup_counts *k = &out->counts;
    k->specs = s->nkids;
    for (size_t i = 0; i < s->nkids; i++) {
        if (s->kids[i]->status == ST_RUNNING)
            k->active++;
        if (s->kids[i]->type == DX_SUP_SUPERVISOR)
            k->supervisors++;
        else
            k->workers++;
    }
    k->restarts = s->total_restarts;
    int64_t now = dx_now_ms();
    for (size_t i = 0; i < s->rlen; i++)
        if (now - s->ring[(s->rhead + i) % s->rcap] < s->period_ms)
            k->restarts_in_period++;
}

static dx_srv_ret sup_call(void *state, dx_msg *request, dx_from from,
                           dx_msg **reply, dx_term **stop_reason)
{
    (void)from;
    (void)stop_reason;
    sup *s = state;
    req *r = request->ptr;
    rep *out = dx_calloc(1, sizeof *out);
    int rc;
    if (out == NULL) {
        rc = DX_ENOMEM;
    } else if (r == NULL && request->tag != OP_WHICH &&
               request->tag != OP_COUNT) {
        rc = DX_EINVAL;
    } else {
        switch (request->tag) {
        case OP_START_CHILD:
            rc = call_start_child(s, r, out);
            break;
        case OP_START_DYNAMIC:
            rc = call_start_dynamic(s, r, out);
            break;
        case OP_TERMINATE:
        case OP_RESTART:
        case OP_DELETE:
        case OP_FIND:
            rc = call_by_id(s, (int)request->tag, r, out);
            break;
        case OP_TERMINATE_PID:
            rc = call_terminate_pid(s, r);
            break;
        case OP_WHICH:
            rc = call_which(s, out);
            break;
        case OP_COUNT:
            call_count(s, out);
            rc = DX_OK;
            break;
        default:
            rc = DX_EINVAL;
            break;
        }
    }
    dx_msg *m = dx_msg_new(0);
    if (m == NULL) {
        rep_free(out);
        /* No reply can be built; the caller is still waiting, so the only
         * honest thing left is to stop and let the call fail with EDOWN. */
        *stop_reason = dx_atom("out_of_memory");
        return DX_SRV_STOP;
    }
    if (out != NULL)
        out->rc = rc;
    m->ptr = out;
    m->ptr_free = rep_free;
    *reply = m;
    return DX_SRV_REPLY;
}

static const dx_server_ops sup_ops = {
    .name = "dx_supervisor",
    .init = sup_init,
    .handle_call = sup_call,
    .handle_cast = sup_cast,
    .handle_info = sup_info,
    .terminate = sup_terminate,
};

/* ---- client side ------------------------------------------------------------- */

int dx__spec_copy_init(dx__spec_copy *c, const dx_sup_spec *spec)
{
    memset(c, 0, sizeof *c);
    c->spec = *spec;
    size_t idlen = 1;
    for (size_t i = 0; i < spec->nchildren; i++)
        if (spec->children[i].id != NULL)
            idlen += strnlen(spec->children[i].id, DX_SUP_ID_MAX + 1) + 1;
    if (spec->nchildren > 0) {
        c->children = dx_calloc(spec->nchildren, sizeof *c->children);
        c->ids = dx_malloc(idlen);
        if (c->children == NULL || c->ids == NULL)
            goto oom;
        char *p = c->ids;
        for (size_t i = 0; i < spec->nchildren; i++) {
            c->children[i] = spec->children[i];
            const char *id = spec->children[i].id;
            if (id != NULL) {
                size_t n = strnlen(id, DX_SUP_ID_MAX + 1);
                memcpy(p, id, n);
                p[n] = '\0';
                c->children[i].id = p;
                p += n + 1;
            }
        }
    }
    c->spec.children = c->children;
    if (spec->name != NULL) {
        c->name = dx_strdup(spec->name);
        if (c->name == NULL)
            goto oom;
    }
    c->spec.name = c->name;
    return DX_OK;
oom:
    dx__spec_copy_fini(c);
    return DX_ENOMEM;
}

void dx__spec_copy_fini(dx__spec_copy *c)
{
    dx_free(c->children);
    dx_free(c->ids);
    dx_free(c->name);
    memset(c, 0, sizeof *c);
}

static void start_arg_free(start_arg *a)
{
    if (a == NULL)
        return;
    dx__spec_copy_fini(&a->copy);
    dx_free(a);
}

static start_arg *start_arg_new(const dx_sup_spec *spec)
{
    start_arg *a = dx_calloc(1, sizeof *a);
    if (a == NULL)
        return NULL;
    if (dx__spec_copy_init(&a->copy, spec) != DX_OK) {
        dx_free(a);
        return NULL;
    }
    a->parent = dx_self();
    return a;
}

int dx_sup_start_link(const dx_sup_spec *spec, dx_pid *pid_out, dx_term **error)
{
    if (error != NULL)
        *error = NULL;
    if (pid_out != NULL)
        *pid_out = DX_NOPID;
    if (dx_pid_is_none(dx_self()))
        return DX_ENOTPROC;
    int rc = check_spec(spec);
    if (rc != DX_OK)
        return rc;
    start_arg *a = start_arg_new(spec);
    if (a == NULL)
        return DX_ENOMEM;
    dx_server_opts o = {.link = true,
                        .name = a->copy.name,
                        .timeout_ms = DX_INFINITY,
                        .trap_exit = true};
    dx_pid pid = DX_NOPID;
    dx_term *reason = NULL;
    rc = dx_server_start(&sup_ops, a, &o, &pid, &reason);
    start_arg_free(a);
    if (rc != DX_OK) {
        if (error != NULL)
            *error = reason;
        else
            dx_term_free(reason);
        return rc;
    }
    dx_term_free(reason);
    if (pid_out != NULL)
        *pid_out = pid;
    return DX_OK;
}

int dx_sup_start_nested(void *spec, void *extra, dx_pid *pid_out)
{
    (void)extra;
    return dx_sup_start_link(spec, pid_out, NULL);
}

int dx_sup_stop(dx_pid sup_pid, dx_term *reason, int64_t timeout_ms)
{
    return dx_server_stop(sup_pid, reason ? reason : dx_atom("normal"),
                          timeout_ms);
}

/* One call to the supervisor. Takes r (may be NULL) in every case. On a
 * result from the supervisor, *out (if non-NULL) receives the reply payload
 * (caller frees with rep_free). */
static int sup_request(dx_pid sup_pid, int op, req *r, rep **out)
{
    if (out != NULL)
        *out = NULL;
    dx_msg *m = dx_msg_new(op);
    if (m == NULL) {
        dx_free(r);
        return DX_ENOMEM;
    }
    m->ptr = r;
    m->ptr_free = r ? dx_free : NULL;
    dx_msg *reply = NULL;
    int rc = dx_call(sup_pid, m, DX_INFINITY, &reply);
    if (rc != DX_OK)
        return rc;
    rep *p = dx_msg_take_ptr(reply);
    dx_msg_free(reply);
    /* No payload: the supervisor could not allocate one. */
    rc = p != NULL ? p->rc : DX_ENOMEM;
    if (out != NULL)
        *out = p;
    else
        rep_free(p);
    return rc;
}

static req *req_new(const char *id)
{
    req *r = dx_calloc(1, sizeof *r);
    if (r != NULL && id != NULL)
        memcpy(r->id, id, strlen(id) + 1);
    return r;
}

/* Requests by id: an id that cannot exist needs no round trip. */
static int id_request(dx_pid sup_pid, int op, const char *id, dx_pid *pid_out)
{
    if (pid_out != NULL)
        *pid_out = DX_NOPID;
    if (id == NULL || !id_ok(id))
        return id == NULL ? DX_EINVAL : DX_ENOENT;
    req *r = req_new(id);
    if (r == NULL)
        return DX_ENOMEM;
    rep *p = NULL;
    int rc = sup_request(sup_pid, op, r, &p);
    if (p != NULL && pid_out != NULL)
        *pid_out = p->pid;
    rep_free(p);
    return rc;
}

int dx_sup_start_child(dx_pid sup_pid, const dx_child_spec *spec,
                       dx_pid *pid_out)
{
    if (pid_out != NULL)
        *pid_out = DX_NOPID;
    if (spec == NULL || check_child(spec, true) != DX_OK)
        return DX_EINVAL;
    req *r = req_new(spec->id);
    if (r == NULL)
        return DX_ENOMEM;
    r->spec = *spec;
    r->spec.id = NULL; /* the supervisor points it at its own copy */
    rep *p = NULL;
    int rc = sup_request(sup_pid, OP_START_CHILD, r, &p);
    if (p != NULL && pid_out != NULL)
        *pid_out = p->pid;
    rep_free(p);
    return rc;
}

int dx_sup_start_dynamic(dx_pid sup_pid, void *extra, dx_pid *pid_out)
{
    if (pid_out != NULL)
        *pid_out = DX_NOPID;
    req *r = req_new(NULL);
    if (r == NULL)
        return DX_ENOMEM;
    r->extra = extra;
    rep *p = NULL;
    int rc = sup_request(sup_pid, OP_START_DYNAMIC, r, &p);
    if (p != NULL && pid_out != NULL)
        *pid_out = p->pid;
    rep_free(p);
    return rc;
}

int dx_sup_terminate_child(dx_pid sup_pid, const char *id)
{
    return id_request(sup_pid, OP_TERMINATE, id, NULL);
}

int dx_sup_terminate_pid(dx_pid sup_pid, dx_pid child_pid)
{
    req *r = req_new(NULL);
    if (r == NULL)
        return DX_ENOMEM;
    r->pid = child_pid;
    return sup_request(sup_pid, OP_TERMINATE_PID, r, NULL);
}

int dx_sup_restart_child(dx_pid sup_pid, const char *id, dx_pid *pid_out)
{
    return id_request(sup_pid, OP_RESTART, id, pid_out);
}

int dx_sup_delete_child(dx_pid sup_pid, const char *id)
{
    return id_request(sup_pid, OP_DELETE, id, NULL);
}

int dx_sup_find_child(dx_pid sup_pid, const char *id, dx_pid *pid_out)
{
    return id_request(sup_pid, OP_FIND, id, pid_out);
}

int dx_sup_which_children(dx_pid sup_pid, dx_sup_child **out, size_t *count)
{
    if (out == NULL || count == NULL)
        return DX_EINVAL;
    *out = NULL;
    *count = 0;
    rep *p = NULL;
    int rc = sup_request(sup_pid, OP_WHICH, NULL, &p);
    if (rc == DX_OK && p != NULL) {
        *out = p->list;
        *count = p->n;
        p->list = NULL;
    }
    rep_free(p);
    return rc;
}

int dx_sup_count_children(dx_pid sup_pid, dx_sup_counts *out)
{
    if (out == NULL)
        return DX_EINVAL;
    memset(out, 0, sizeof *out);
    rep *p = NULL;
    int rc = sup_request(sup_pid, OP_COUNT, NULL, &p);
    if (rc == DX_OK && p != NULL)
        *out = p->counts;
    rep_free(p);
    return rc;
}
