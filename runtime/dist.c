/*
 * dist.c — this runtime as a node of an Erlang distribution cluster: the
 * node table, connections (erl_interface does epmd, the cookie handshake
 * and the term encoding; this file frames and routes), the router the
 * kernel calls for pids of other nodes, and the bookkeeping that turns a
 * lost connection into `noconnection` DOWNs and exits.
 *
 * Threads: one acceptor and one thread per connection, never the
 * schedulers. One mutex (G.mu) guards all node state. Lock order: the
 * runtime's host-thread bracket (dx__ext_enter) before G.mu; deliveries to
 * local processes happen with G.mu released or from inside the router
 * (whose caller already is inside the runtime). See docs/distribution.md.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dist_int.h"
#include "helper_thread.h"
#include "dspex/log.h"
#include "dspex/node.h"

#define MAX_NODES 4096u  /* node index 0 is this node */
#define MAX_NAMES 4096u  /* registered-name handles per node */
#define MAX_CALLS 65536u /* calls from other nodes awaiting a reply */
#define MAX_FRAME (128u << 20)
#define REF_BUCKETS 4096u
#define MAX_REFS (1u << 20)

/* Distribution operation codes (the control tuple's first element). */
enum {
    OP_LINK = 1,
    OP_SEND = 2,
    OP_EXIT = 3,
    OP_UNLINK = 4,
    OP_REG_SEND = 6,
    OP_EXIT2 = 8,
    OP_MONITOR_P = 19,
    OP_DEMONITOR_P = 20,
    OP_MONITOR_P_EXIT = 21,
    OP_SEND_SENDER = 22,
    OP_UNLINK_ID = 35,
    OP_UNLINK_ID_ACK = 36,
};

enum { N_IDLE = 0, N_CONNECTING, N_UP };

typedef struct frame {
    struct frame *next;
    size_t len;
    char data[]; /* 4-byte big-endian length, then the packet */
} frame;

typedef struct node {
    uint32_t idx;
    char name[MAXNODELEN + 1];
    unsigned creation;
    int state;
    int fd;
    int wake; /* eventfd: the queue has frames */
    frame *q_head, *q_tail;
    size_t q_bytes;
    bool stop; /* close this connection */
    uint64_t attempts;
    int last_rc;
    char *names[MAX_NAMES];
    uint32_t nnames;
} node;

/* A monitor a local process holds on a process of another node. */
typedef struct omon {
    dx_ref ref;
    dx_pid local, remote;
    uint32_t node;
    bool
        call; /* the monitor of a dx_call in flight: {Ref, Reply} is its reply */
} omon;

/* A link between a local process and one of another node. */
typedef struct olink {
    dx_pid local, remote;
} olink;

/* A reference made by another node, kept so it can be sent back. */
typedef struct rref {
    uint32_t node;
    erlang_ref ref;
    uint32_t next;            /* hash chain (index+1, 0 = end) */
    char by_name[MAXATOMLEN]; /* monitored us by this name ("" = by pid) */
} rref;

/* The tag of a call another node made: its encoded bytes, sent back. */
typedef struct ctag {
    uint32_t node; /* 0 = free slot */
    uint32_t gen;
    char *bytes;
    int len;
} ctag;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* threads_live changes */
    bool running, stopping;
    ei_cnode ec;
    char self[MAXNODELEN + 1];
    unsigned creation;
    int64_t ticktime_ms, connect_timeout_ms;
    size_t queue_limit;
    int lfd, pubfd;
    int threads_live;
    node *nodes[MAX_NODES];
    uint32_t nnodes; /* highest index used + 1 */
    omon *omons;
    uint32_t nomons, comons;
    olink *olinks;
    uint32_t nolinks, colinks;
    rref *refs;
    uint32_t nrefs, crefs;
    uint32_t ref_heads[REF_BUCKETS];
    ctag *ctags;
    uint32_t ctag_free_hint;
    dx_pid *subs;
    uint32_t nsubs, csubs;
    _Atomic uint64_t msgs_out, msgs_in, bytes_out, bytes_in, dropped, refused;
} G = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static dx_term *a_noconnection, *a_noproc, *a_gen_call, *a_gen_cast, *a_dx,
    *a_nodeup, *a_nodedown, *a_kill;

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
    if (dx_self().id != 0) {
        dx_sleep(ms);
        return;
    }
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static bool valid_node_name(const char *s)
{
    if (s == NULL)
        return false;
    const char *at = strchr(s, '@');
    size_t len = strlen(s);
    return at != NULL && at != s && at[1] != '\0' && len <= MAXNODELEN &&
           strchr(at + 1, '@') == NULL;
}

/* Deliver to a local process from a node thread (outside the runtime). */
static int deliver_ext(dx_pid to, dx_msg *m)
{
    int entered;
    int rc = dx__ext_enter(&entered);
    if (rc != DX_OK) {
        dx_msg_free(m);
        return rc;
    }
    rc = dx__deliver(to, m);
    if (rc != DX_OK)
        atomic_fetch_add(&G.dropped, 1);
    dx__ext_leave(entered);
    return rc;
}

static void signal_ext(dx_pid to, uint32_t sig, dx_pid from, dx_ref ref,
                       int64_t tag, dx_term *term)
{
    dx_msg *m = dx__signal_new(sig, from, ref, tag, term);
    if (m != NULL)
        deliver_ext(to, m);
}

/* ------------------------------------------------------------------ */
/* Node table (G.mu held)                                              */
/* ------------------------------------------------------------------ */

static node *node_find(const char *name)
{
    for (uint32_t i = 1; i < G.nnodes; i++)
        if (G.nodes[i] && strcmp(G.nodes[i]->name, name) == 0)
            return G.nodes[i];
    return NULL;
}

static node *node_get(const char *name)
{
    node *n = node_find(name);
    if (n != NULL)
        return n;
    if (G.nnodes >= MAX_NODES || !valid_node_name(name))
        return NULL;
    n = dx_calloc(1, sizeof(*n));
    if (n == NULL)
        return NULL;
    n->wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (n->wake < 0) {
        dx_free(n);
        return NULL;
    }
    snprintf(n->name, sizeof n->name, "%s", name);
    n->fd = -1;
    n->idx = G.nnodes;
    G.nodes[G.nnodes++] = n;
    return n;
}

static node *node_of_pid(dx_pid pid)
{
    uint32_t i = dx__pid_node(pid);
    return i > 0 && i < G.nnodes ? G.nodes[i] : NULL;
}

/* ------------------------------------------------------------------ */
/* Pid / ref translation (G.mu held)                                   */
/* ------------------------------------------------------------------ */

int dx__dist_pid_out(dx_pid pid, erlang_pid *out)
{
    memset(out, 0, sizeof(*out));
    uint32_t ni = dx__pid_node(pid);
    if (ni == 0) {
        snprintf(out->node, sizeof out->node, "%s", G.self);
        out->num = (unsigned)(pid.id & 0xffffffffu);
        out->serial = (unsigned)((pid.id >> 32) & 0xfffffu);
        out->creation = G.creation;
        return DX_OK;
    }
    node *n = node_of_pid(pid);
    if (n == NULL || (pid.id & DX__DIST_NAME_BIT))
        return DX_EINVAL;
    snprintf(out->node, sizeof out->node, "%s", n->name);
    out->num = (unsigned)(pid.id & 0xffffffffu);
    out->serial = (unsigned)((pid.id >> 32) & 0x7ffffu);
    out->creation = n->creation;
    return DX_OK;
}

int dx__dist_pid_in(const erlang_pid *in, dx_pid *out)
{
    if (strcmp(in->node, G.self) == 0) {
        if (in->serial > 0xfffffu)
            return DX_EINVAL;
        out->id = (uint64_t)in->num | ((uint64_t)in->serial << 32);
        return DX_OK;
    }
    /* Serials beyond 19 bits do not fit beside the name bit; BEAM's stay
     * far below (docs/distribution.md). */
    if (in->serial > 0x7ffffu)
        return DX_ENOTSUP;
    node *n = node_get(in->node);
    if (n == NULL)
        return DX_ELIMIT;
    /* The newest incarnation wins: pids sent back carry its creation. */
    n->creation = in->creation;
    out->id = ((uint64_t)n->idx << DX__NODE_SHIFT) |
              ((uint64_t)in->serial << 32) | in->num;
    return DX_OK;
}

int dx__dist_name_of(dx_pid pid, const char **name, const char **node_name)
{
    node *n = node_of_pid(pid);
    uint32_t i = (uint32_t)(pid.id & 0xffffffffu);
    if (n == NULL || !(pid.id & DX__DIST_NAME_BIT) || i >= n->nnames)
        return DX_EINVAL;
    *name = n->names[i];
    *node_name = n->name;
    return DX_OK;
}

static uint32_t ref_hash(uint32_t node, const erlang_ref *r)
{
    uint64_t h = node * 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < r->len && i < 5; i++)
        h = (h ^ r->n[i]) * 0x100000001b3ull;
    return (uint32_t)(h >> 20) % REF_BUCKETS;
}

int dx__dist_ref_out(dx_ref ref, erlang_ref *out)
{
    memset(out, 0, sizeof(*out));
    uint32_t ni = dx__ref_node(ref);
    if (ni == 0) {
        /* Three words; the first holds 18 bits, as BEAM's refs do. */
        snprintf(out->node, sizeof out->node, "%s", G.self);
        out->len = 3;
        out->n[0] = (unsigned)(ref.id & 0x3ffffu);
        out->n[1] = (unsigned)((ref.id >> 18) & 0xffffffffu);
        out->n[2] = (unsigned)(ref.id >> 50);
        out->creation = G.creation;
        return DX_OK;
    }
    if (ref.id & DX__DIST_CALL_BIT)
        return DX_EINVAL;
    uint64_t serial = ref.id & ((1ull << 51) - 1);
    if (serial == 0 || serial > G.nrefs)
        return DX_EINVAL;
    *out = G.refs[serial - 1].ref;
    return DX_OK;
}

static rref *rref_of(dx_ref ref)
{
    if (dx__ref_node(ref) == 0 || (ref.id & DX__DIST_CALL_BIT))
        return NULL;
    uint64_t serial = ref.id & ((1ull << 51) - 1);
    return serial && serial <= G.nrefs ? &G.refs[serial - 1] : NULL;
}

int dx__dist_ref_in(const erlang_ref *in, dx_ref *out)
{
    if (strcmp(in->node, G.self) == 0 && in->len == 3) {
        out->id = (uint64_t)in->n[0] | ((uint64_t)in->n[1] << 18) |
                  ((uint64_t)in->n[2] << 50);
        if (dx__ref_node(*out) != 0)
            return DX_EINVAL;
        return DX_OK;
    }
    node *n = node_get(in->node);
    if (n == NULL)
        return DX_ELIMIT;
    uint32_t b = ref_hash(n->idx, in);
    for (uint32_t i = G.ref_heads[b]; i != 0; i = G.refs[i - 1].next) {
        rref *r = &G.refs[i - 1];
        if (r->node == n->idx && r->ref.len == in->len &&
            r->ref.creation == in->creation &&
            memcmp(r->ref.n, in->n, sizeof(unsigned) * (size_t)in->len) == 0) {
            out->id = ((uint64_t)n->idx << DX__NODE_SHIFT) | i;
            return DX_OK;
        }
    }
    if (G.nrefs >= MAX_REFS)
        return DX_ELIMIT;
    if (G.nrefs == G.crefs) {
        uint32_t c = G.crefs ? G.crefs * 2 : 256;
        rref *nr = dx_realloc(G.refs, sizeof(*nr) * c);
        if (nr == NULL)
            return DX_ENOMEM;
        G.refs = nr;
        G.crefs = c;
    }
    rref *r = &G.refs[G.nrefs++];
    memset(r, 0, sizeof(*r));
    r->node = n->idx;
    r->ref = *in;
    r->next = G.ref_heads[b];
    G.ref_heads[b] = G.nrefs;
    out->id = ((uint64_t)n->idx << DX__NODE_SHIFT) | G.nrefs;
    return DX_OK;
}

/* ------------------------------------------------------------------ */
/* Bookkeeping tables (G.mu held)                                      */
/* ------------------------------------------------------------------ */

static int grow(void **items, uint32_t *cap, uint32_t len, size_t size)
{
    if (len < *cap)
        return DX_OK;
    uint32_t c = *cap ? *cap * 2 : 16;
    void *n = dx_realloc(*items, size * c);
    if (n == NULL)
        return DX_ENOMEM;
    *items = n;
    *cap = c;
    return DX_OK;
}

static int omon_add(dx_ref ref, dx_pid local, dx_pid remote)
{
    if (grow((void **)&G.omons, &G.comons, G.nomons, sizeof(omon)) != DX_OK)
        return DX_ENOMEM;
    G.omons[G.nomons++] = (omon){.ref = ref,
                                 .local = local,
                                 .remote = remote,
                                 .node = dx__pid_node(remote)};
    return DX_OK;
}

static omon *omon_find(dx_ref ref)
{
    for (uint32_t i = 0; i < G.nomons; i++)
        if (G.omons[i].ref.id == ref.id)
            return &G.omons[i];
    return NULL;
}

static bool omon_take(dx_ref ref, omon *out)
{
    omon *m = omon_find(ref);
    if (m == NULL)
        return false;
    if (out)
        *out = *m;
    *m = G.omons[--G.nomons];
    return true;
}

static void olink_add(dx_pid local, dx_pid remote)
{
    for (uint32_t i = 0; i < G.nolinks; i++)
        if (G.olinks[i].local.id == local.id &&
            G.olinks[i].remote.id == remote.id)
            return;
    if (grow((void **)&G.olinks, &G.colinks, G.nolinks, sizeof(olink)) == DX_OK)
        G.olinks[G.nolinks++] = (olink){local, remote};
}

static void olink_remove(dx_pid local, dx_pid remote)
{
    for (uint32_t i = 0; i < G.nolinks; i++)
        if (G.olinks[i].local.id == local.id &&
            G.olinks[i].remote.id == remote.id) {
            G.olinks[i] = G.olinks[--G.nolinks];
            return;
        }
}

static int ctag_add(uint32_t node_idx, const char *bytes, int len, dx_ref *out)
{
    if (G.ctags == NULL) {
        G.ctags = dx_calloc(MAX_CALLS, sizeof(ctag));
        if (G.ctags == NULL)
            return DX_ENOMEM;
    }
    for (uint32_t k = 0; k < MAX_CALLS; k++) {
        uint32_t i = (G.ctag_free_hint + k) % MAX_CALLS;
        ctag *c = &G.ctags[i];
        if (c->node != 0)
            continue;
        c->bytes = dx_malloc((size_t)len);
        if (c->bytes == NULL)
            return DX_ENOMEM;
        memcpy(c->bytes, bytes, (size_t)len);
        c->len = len;
        c->node = node_idx;
        c->gen = (c->gen + 1) & 0x7ffffu;
        G.ctag_free_hint = i + 1;
        out->id = ((uint64_t)node_idx << DX__NODE_SHIFT) | DX__DIST_CALL_BIT |
                  ((uint64_t)c->gen << 32) | i;
        return DX_OK;
    }
    return DX_ELIMIT;
}

static ctag *ctag_of(dx_ref ref)
{
    if (G.ctags == NULL || dx__ref_node(ref) == 0 ||
        !(ref.id & DX__DIST_CALL_BIT))
        return NULL;
    uint32_t i = (uint32_t)(ref.id & 0xffffffffu);
    uint32_t gen = (uint32_t)((ref.id >> 32) & 0x7ffffu);
    if (i >= MAX_CALLS || G.ctags[i].node != dx__ref_node(ref) ||
        G.ctags[i].gen != gen)
        return NULL;
    return &G.ctags[i];
}

static void ctag_free(ctag *c)
{
    dx_free(c->bytes);
    c->bytes = NULL;
    c->node = 0;
}

/* ------------------------------------------------------------------ */
/* Frames                                                              */
/* ------------------------------------------------------------------ */

/* Start a packet: pass-through byte, then the control tuple's header. */
static int pkt_begin(ei_x_buff *x, long arity, long op)
{
    if (ei_x_new(x) < 0)
        return DX_ENOMEM;
    static const char hdr[5] = {0, 0, 0, 0, 'p'};
    if (ei_x_append_buf(x, hdr, 5) < 0 || ei_x_encode_version(x) < 0 ||
        ei_x_encode_tuple_header(x, arity) < 0 || ei_x_encode_long(x, op) < 0)
        return DX_ENOMEM;
    return DX_OK;
}

static int enc_pid(ei_x_buff *x, dx_pid pid)
{
    erlang_pid ep;
    int rc = dx__dist_pid_out(pid, &ep);
    if (rc != DX_OK)
        return rc;
    return ei_x_encode_pid(x, &ep) < 0 ? DX_ENOMEM : DX_OK;
}

static int enc_ref(ei_x_buff *x, dx_ref ref)
{
    erlang_ref er;
    int rc = dx__dist_ref_out(ref, &er);
    if (rc != DX_OK)
        return rc;
    return ei_x_encode_ref(x, &er) < 0 ? DX_ENOMEM : DX_OK;
}

static int enc_atom(ei_x_buff *x, const char *a)
{
    return ei_x_encode_atom_len_as(x, a, (int)strlen(a), ERLANG_UTF8,
                                   ERLANG_UTF8) < 0
               ? DX_ENOMEM
               : DX_OK;
}

/* The term a message carries across: see node.h. */
static int enc_payload(ei_x_buff *x, const dx_msg *m)
{
    if (m->ptr != NULL)
        return DX_ENOTSUP;
    if (m->tag == DX_TAG_TERM && m->term != NULL)
        return dx__ext_encode(x, m->term);
    if (ei_x_encode_tuple_header(x, m->term ? 4 : 3) < 0 ||
        enc_atom(x, "$dx") != DX_OK || ei_x_encode_longlong(x, m->tag) < 0)
        return DX_ENOMEM;
    int rc = m->from.id ? enc_pid(x, m->from) : enc_atom(x, "undefined");
    if (rc == DX_OK && m->term)
        rc = dx__ext_encode(x, m->term);
    return rc;
}

/* Queue a finished packet for n (G.mu held); frees x either way. */
static int pkt_queue(node *n, ei_x_buff *x, bool is_msg)
{
    size_t len = (size_t)x->index;
    if (len - 4 > MAX_FRAME || G.queue_limit < n->q_bytes + len) {
        ei_x_free(x);
        return DX_ELIMIT;
    }
    frame *f = dx_malloc(sizeof(frame) + len);
    if (f == NULL) {
        ei_x_free(x);
        return DX_ENOMEM;
    }
    uint32_t plen = (uint32_t)(len - 4);
    x->buff[0] = (char)(plen >> 24);
    x->buff[1] = (char)(plen >> 16);
    x->buff[2] = (char)(plen >> 8);
    x->buff[3] = (char)plen;
    memcpy(f->data, x->buff, len);
    ei_x_free(x);
    f->len = len;
    f->next = NULL;
    if (n->q_tail)
        n->q_tail->next = f;
    else
        n->q_head = f;
    n->q_tail = f;
    n->q_bytes += len;
    if (is_msg)
        atomic_fetch_add_explicit(&G.msgs_out, 1, memory_order_relaxed);
    uint64_t one = 1;
    if (write(n->wake, &one, sizeof one) < 0) {
        /* The counter is already non-zero: the thread will look. */
    }
    return DX_OK;
}

static void queue_drop(node *n)
{
    frame *f = n->q_head;
    while (f) {
        frame *next = f->next;
        dx_free(f);
        f = next;
    }
    n->q_head = n->q_tail = NULL;
    n->q_bytes = 0;
}

/* ------------------------------------------------------------------ */
/* Connections                                                         */
/* ------------------------------------------------------------------ */

typedef struct conn_arg {
    node *n;
    int fd; /* -1: connect first */
} conn_arg;

static void *conn_main(void *arg);

/* A detached thread of this module running fn(arg), with the helper
 * threads' signal mask (helper_thread.h): a write to a peer that died
 * (SIGPIPE), in erl_interface's handshake or ours, fails with EPIPE
 * instead of ending the OS process, and the application's signals go to
 * its own threads. 0 or pthread_create's error. */
static int start_thread(void *(*fn)(void *), void *arg)
{
    sigset_t all, old;
    dx__helper_thread_sigmask(&all);
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int e = pthread_create(&t, &attr, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return e;
}

/* Start a thread for n (G.mu held). */
static int conn_spawn(node *n, int fd)
{
    conn_arg *a = dx_malloc(sizeof(*a));
    if (a == NULL)
        return DX_ENOMEM;
    a->n = n;
    a->fd = fd;
    int e = start_thread(conn_main, a);
    if (e != 0) {
        dx_free(a);
        return DX_ESYS;
    }
    G.threads_live++;
    n->stop = false;
    n->state = fd < 0 ? N_CONNECTING : N_UP;
    if (fd >= 0)
        n->fd = fd;
    return DX_OK;
}

/* Make sure n is connected or connecting (G.mu held). */
static void ensure_connect(node *n)
{
    if (n->state == N_IDLE && !G.stopping)
        conn_spawn(n, -1);
}

typedef struct down_work {
    omon *mons;
    uint32_t nmons;
    olink *links;
    uint32_t nlinks;
    dx_pid *subs;
    uint32_t nsubs;
} down_work;

/* Collect what n's loss must tell local processes and forget it (G.mu
 * held); the deliveries happen after the lock is released. */
static void node_down_collect(node *n, down_work *w, bool was_up)
{
    memset(w, 0, sizeof(*w));
    for (uint32_t i = 0; i < G.nomons;) {
        if (G.omons[i].node == n->idx) {
            omon *nm = dx_realloc(w->mons, sizeof(omon) * (w->nmons + 1));
            if (nm) {
                w->mons = nm;
                w->mons[w->nmons++] = G.omons[i];
            }
            G.omons[i] = G.omons[--G.nomons];
        } else {
            i++;
        }
    }
    for (uint32_t i = 0; i < G.nolinks;) {
        if (dx__pid_node(G.olinks[i].remote) == n->idx) {
            olink *nl = dx_realloc(w->links, sizeof(olink) * (w->nlinks + 1));
            if (nl) {
                w->links = nl;
                w->links[w->nlinks++] = G.olinks[i];
            }
            G.olinks[i] = G.olinks[--G.nolinks];
        } else {
            i++;
        }
    }
    if (G.ctags)
        for (uint32_t i = 0; i < MAX_CALLS; i++)
            if (G.ctags[i].node == n->idx)
                ctag_free(&G.ctags[i]);
    queue_drop(n);
    if (was_up && G.nsubs) {
        w->subs = dx_malloc(sizeof(dx_pid) * G.nsubs);
        if (w->subs) {
            memcpy(w->subs, G.subs, sizeof(dx_pid) * G.nsubs);
            w->nsubs = G.nsubs;
        }
    }
}

static void node_event(dx_pid *subs, uint32_t nsubs, dx_term *what,
                       const char *name)
{
    for (uint32_t i = 0; i < nsubs; i++) {
        dx_msg *m = dx_msg_new(DX_TAG_TERM);
        if (m == NULL)
            continue;
        m->term = dx_tuple(2, what, dx_atom(name));
        deliver_ext(subs[i], m);
    }
}

static void node_down_deliver(down_work *w, const char *name)
{
    for (uint32_t i = 0; i < w->nmons; i++)
        signal_ext(w->mons[i].local, DX__SIG_DOWN, w->mons[i].remote,
                   w->mons[i].ref, 0, a_noconnection);
    for (uint32_t i = 0; i < w->nlinks; i++)
        signal_ext(w->links[i].local, DX__SIG_EXIT, w->links[i].remote,
                   DX_NOREF, DX__EXIT_LINK, a_noconnection);
    node_event(w->subs, w->nsubs, a_nodedown, name);
    dx_free(w->mons);
    dx_free(w->links);
    dx_free(w->subs);
}

static void handle_packet(node *n, const char *buf, size_t len);

static bool write_some(int fd, frame **cur, size_t *off)
{
    while (*cur) {
        /* MSG_NOSIGNAL: a peer that died is EPIPE here, not SIGPIPE. */
        ssize_t w =
            send(fd, (*cur)->data + *off, (*cur)->len - *off, MSG_NOSIGNAL);
        if (w < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        atomic_fetch_add_explicit(&G.bytes_out, (uint64_t)w,
                                  memory_order_relaxed);
        *off += (size_t)w;
        if (*off == (*cur)->len) {
            frame *f = *cur;
            *cur = f->next;
            *off = 0;
            dx_free(f);
        }
    }
    return true;
}

static void *conn_main(void *arg)
{
    conn_arg *a = arg;
    node *n = a->n;
    int fd = a->fd;
    dx_free(a);
    bool up = fd >= 0;
    char name[MAXNODELEN + 1];
    pthread_mutex_lock(&G.mu);
    snprintf(name, sizeof name, "%s", n->name);
    int64_t tick = G.ticktime_ms;
    unsigned cto = (unsigned)G.connect_timeout_ms;
    pthread_mutex_unlock(&G.mu);

    if (!up) {
        /* ei_connect reads the node structure only; it may block for the
         * timeout, which is why it runs here and not on a scheduler. */
        fd = ei_connect_tmo(&G.ec, name, cto);
        if (fd < 0)
            atomic_fetch_add(&G.refused, 1);
    }
    pthread_mutex_lock(&G.mu);
    n->attempts++;
    n->last_rc = fd >= 0 ? DX_OK : DX_ECONNECT;
    dx_pid *subs = NULL;
    uint32_t nsubs = 0;
    if (fd >= 0 && !G.stopping) {
        n->fd = fd;
        n->state = N_UP;
        if (G.nsubs && (subs = dx_malloc(sizeof(dx_pid) * G.nsubs))) {
            memcpy(subs, G.subs, sizeof(dx_pid) * G.nsubs);
            nsubs = G.nsubs;
        }
    }
    bool ok = n->state == N_UP;
    pthread_mutex_unlock(&G.mu);
    if (!ok && fd >= 0)
        close(fd); /* connected while the node was stopping */
    node_event(subs, nsubs, a_nodeup, name);
    dx_free(subs);

    char *rbuf = NULL;
    size_t rlen = 0, rcap = 0;
    frame *cur = NULL;
    size_t off = 0;
    if (ok) {
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        int64_t last_in = now_ms(), last_out = now_ms();
        int64_t drain_until = 0;
        for (;;) {
            pthread_mutex_lock(&G.mu);
            bool stop = n->stop;
            bool stopping = G.stopping;
            if (cur == NULL && n->q_head) {
                cur = n->q_head;
                n->q_head = n->q_tail = NULL;
                n->q_bytes = 0;
            }
            pthread_mutex_unlock(&G.mu);
            if (stop)
                break;
            if (stopping) {
                /* Node stop: what is queued (the DOWNs and exits of the
                 * processes the runtime just ended) still goes out, for
                 * at most a second. */
                if (drain_until == 0)
                    drain_until = now_ms() + 1000;
                if (cur == NULL || now_ms() > drain_until)
                    break;
            }
            int64_t t = now_ms();
            if (cur == NULL && t - last_out >= tick / 4) {
                frame *f = dx_malloc(sizeof(frame) + 4);
                if (f) {
                    memset(f->data, 0, 4);
                    f->len = 4;
                    f->next = NULL;
                    cur = f;
                }
            }
            if (cur) {
                if (!write_some(fd, &cur, &off))
                    break;
                last_out = now_ms();
            }
            if (t - last_in > tick)
                break; /* the peer stopped ticking */
            struct pollfd p[2] = {
                {.fd = fd, .events = POLLIN | (cur ? POLLOUT : 0)},
                {.fd = n->wake, .events = POLLIN},
            };
            int64_t wait = tick / 4 - (now_ms() - last_out);
            if (wait < 1)
                wait = 1;
            if (wait > 200)
                wait = 200; /* notice stop requests */
            if (poll(p, 2, (int)wait) < 0 && errno != EINTR)
                break;
            if (p[1].revents & POLLIN) {
                uint64_t v;
                if (read(n->wake, &v, sizeof v) < 0) {
                    /* EAGAIN: someone else drained it */
                }
            }
            if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
                bool closed = false;
                for (;;) {
                    if (rcap - rlen < 65536) {
                        size_t c = rcap ? rcap * 2 : 131072;
                        char *nb = dx_realloc(rbuf, c);
                        if (nb == NULL) {
                            closed = true;
                            break;
                        }
                        rbuf = nb;
                        rcap = c;
                    }
                    ssize_t r = read(fd, rbuf + rlen, rcap - rlen);
                    if (r == 0) {
                        closed = true;
                        break;
                    }
                    if (r < 0) {
                        if (errno != EAGAIN && errno != EWOULDBLOCK &&
                            errno != EINTR)
                            closed = true;
                        break;
                    }
                    rlen += (size_t)r;
                    atomic_fetch_add_explicit(&G.bytes_in, (uint64_t)r,
                                              memory_order_relaxed);
                    last_in = now_ms();
                    if (rcap > MAX_FRAME * 2)
                        break;
                }
                size_t pos = 0;
                while (rlen - pos >= 4) {
                    const unsigned char *h = (const unsigned char *)rbuf + pos;
                    size_t plen = ((size_t)h[0] << 24) | ((size_t)h[1] << 16) |
                                  ((size_t)h[2] << 8) | h[3];
                    if (plen > MAX_FRAME) {
                        closed = true;
                        break;
                    }
                    if (rlen - pos - 4 < plen)
                        break;
                    if (plen > 0)
                        handle_packet(n, rbuf + pos + 4, plen);
                    pos += 4 + plen;
                }
                memmove(rbuf, rbuf + pos, rlen - pos);
                rlen -= pos;
                if (closed)
                    break;
            }
        }
        close(fd);
    }
    while (cur) {
        frame *f = cur->next;
        dx_free(cur);
        cur = f;
    }
    dx_free(rbuf);

    down_work w;
    pthread_mutex_lock(&G.mu);
    n->state = N_IDLE;
    n->fd = -1;
    node_down_collect(n, &w, ok);
    pthread_mutex_unlock(&G.mu);
    node_down_deliver(&w, name);
    pthread_mutex_lock(&G.mu);
    G.threads_live--;
    pthread_cond_broadcast(&G.cv);
    pthread_mutex_unlock(&G.mu);
    return NULL;
}

static void *accept_main(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&G.mu);
        bool stop = G.stopping;
        pthread_mutex_unlock(&G.mu);
        if (stop)
            break;
        struct pollfd p = {.fd = G.lfd, .events = POLLIN};
        if (poll(&p, 1, 200) <= 0)
            continue;
        ErlConnect con;
        int fd =
            ei_accept_tmo(&G.ec, G.lfd, &con, (unsigned)G.connect_timeout_ms);
        if (fd < 0) {
            /* A failed handshake: most often a wrong cookie. */
            atomic_fetch_add(&G.refused, 1);
            continue;
        }
        pthread_mutex_lock(&G.mu);
        node *n = G.stopping ? NULL : node_get(con.nodename);
        if (n == NULL || n->state != N_IDLE || conn_spawn(n, fd) != DX_OK) {
            /* Already connected (or connecting) to it: keep that one. */
            close(fd);
        }
        pthread_mutex_unlock(&G.mu);
    }
    pthread_mutex_lock(&G.mu);
    G.threads_live--;
    pthread_cond_broadcast(&G.cv);
    pthread_mutex_unlock(&G.mu);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Outgoing: the router                                                */
/* ------------------------------------------------------------------ */

static int route_locked(node *n, dx_pid to, dx_msg *m)
{
    bool named = (to.id & DX__DIST_NAME_BIT) != 0;
    const char *tname = named && (to.id & 0xffffffffu) < n->nnames
                            ? n->names[to.id & 0xffffffffu]
                            : NULL;
    if (named && tname == NULL)
        return DX_ENOPROC;
    ei_x_buff x;
    int rc = DX_OK;
    bool is_msg = false;
    switch (m->dx__signal) {
    case DX__SIG_MSG: {
        is_msg = true;
        if (m->kind == DX_MSG_REPLY && (m->ref.id & DX__DIST_CALL_BIT)) {
            /* The answer to a call from that node: {Tag, Reply} with the
             * tag exactly as the caller sent it. */
            ctag *c = ctag_of(m->ref);
            if (c == NULL || named)
                return DX_ENOPROC;
            rc = pkt_begin(&x, 3, OP_SEND);
            if (rc == DX_OK)
                rc = enc_atom(&x, "");
            if (rc == DX_OK)
                rc = enc_pid(&x, to);
            if (rc == DX_OK)
                rc = ei_x_encode_version(&x) < 0 ||
                             ei_x_encode_tuple_header(&x, 2) < 0 ||
                             ei_x_append_buf(&x, c->bytes, c->len) < 0
                         ? DX_ENOMEM
                         : DX_OK;
            if (rc == DX_OK)
                rc = enc_payload(&x, m);
            ctag_free(c);
            break;
        }
        if (named) {
            rc = pkt_begin(&x, 4, OP_REG_SEND);
            if (rc == DX_OK)
                rc = m->from.id ? enc_pid(&x, m->from)
                                : enc_atom(&x, "undefined");
            if (rc == DX_OK)
                rc = enc_atom(&x, "");
            if (rc == DX_OK)
                rc = enc_atom(&x, tname);
        } else {
            /* The "unused" slot carries the sender, so a dspex peer can
             * fill in dx_msg.from; BEAM ignores it. */
            rc = pkt_begin(&x, 3, OP_SEND);
            if (rc == DX_OK)
                rc = m->from.id ? enc_pid(&x, m->from) : enc_atom(&x, "");
            if (rc == DX_OK)
                rc = enc_pid(&x, to);
        }
        if (rc == DX_OK)
            rc = ei_x_encode_version(&x) < 0 ? DX_ENOMEM : DX_OK;
        if (rc != DX_OK)
            break;
        if (m->kind == DX_MSG_CALL) {
            omon *om = omon_find(m->ref);
            if (om)
                om->call = true;
            rc = ei_x_encode_tuple_header(&x, 3) < 0 ? DX_ENOMEM : DX_OK;
            if (rc == DX_OK)
                rc = enc_atom(&x, "$gen_call");
            if (rc == DX_OK)
                rc = ei_x_encode_tuple_header(&x, 2) < 0 ? DX_ENOMEM : DX_OK;
            if (rc == DX_OK)
                rc = enc_pid(&x, m->from);
            if (rc == DX_OK)
                rc = enc_ref(&x, m->ref);
        } else if (m->kind == DX_MSG_CAST) {
            rc = ei_x_encode_tuple_header(&x, 2) < 0 ? DX_ENOMEM : DX_OK;
            if (rc == DX_OK)
                rc = enc_atom(&x, "$gen_cast");
        } else if (m->kind == DX_MSG_REPLY) {
            /* A reply to a call made with a local ref (a dspex caller
             * on that node got our pid some other way). */
            rc = ei_x_encode_tuple_header(&x, 2) < 0 ? DX_ENOMEM : DX_OK;
            if (rc == DX_OK)
                rc = enc_ref(&x, m->ref);
        }
        if (rc == DX_OK)
            rc = enc_payload(&x, m);
        break;
    }
    case DX__SIG_MONITOR:
        rc = pkt_begin(&x, 4, OP_MONITOR_P);
        if (rc == DX_OK)
            rc = enc_pid(&x, m->from);
        if (rc == DX_OK)
            rc = named ? enc_atom(&x, tname) : enc_pid(&x, to);
        if (rc == DX_OK)
            rc = enc_ref(&x, m->ref);
        if (rc == DX_OK)
            rc = omon_add(m->ref, m->from, to);
        break;
    case DX__SIG_DEMONITOR:
        if (!omon_take(m->ref, NULL))
            return DX_OK; /* already fired */
        rc = pkt_begin(&x, 4, OP_DEMONITOR_P);
        if (rc == DX_OK)
            rc = enc_pid(&x, m->from);
        if (rc == DX_OK)
            rc = named ? enc_atom(&x, tname) : enc_pid(&x, to);
        if (rc == DX_OK)
            rc = enc_ref(&x, m->ref);
        break;
    case DX__SIG_DOWN: {
        /* A local process that another node monitors has ended. */
        rref *r = rref_of(m->ref);
        if (named || r == NULL)
            return DX_ENOPROC;
        rc = pkt_begin(&x, 5, OP_MONITOR_P_EXIT);
        if (rc == DX_OK)
            rc =
                r->by_name[0] ? enc_atom(&x, r->by_name) : enc_pid(&x, m->from);
        if (rc == DX_OK)
            rc = enc_pid(&x, to);
        if (rc == DX_OK)
            rc = enc_ref(&x, m->ref);
        if (rc == DX_OK)
            rc = m->term ? dx__ext_encode(&x, m->term) : enc_atom(&x, "normal");
        break;
    }
    case DX__SIG_LINK:
    case DX__SIG_UNLINK:
        if (named || m->from.id == 0)
            return DX_ENOPROC;
        rc = pkt_begin(&x, 3,
                       m->dx__signal == DX__SIG_LINK ? OP_LINK : OP_UNLINK);
        if (rc == DX_OK)
            rc = enc_pid(&x, m->from);
        if (rc == DX_OK)
            rc = enc_pid(&x, to);
        if (rc == DX_OK) {
            if (m->dx__signal == DX__SIG_LINK)
                olink_add(m->from, to);
            else
                olink_remove(m->from, to);
        }
        break;
    case DX__SIG_EXIT: {
        if (named)
            return DX_ENOPROC;
        bool link = (m->tag & DX__EXIT_LINK) != 0;
        rc = pkt_begin(&x, 4, link ? OP_EXIT : OP_EXIT2);
        if (rc == DX_OK)
            rc = m->from.id ? enc_pid(&x, m->from) : enc_atom(&x, "undefined");
        if (rc == DX_OK)
            rc = enc_pid(&x, to);
        if (rc == DX_OK)
            rc = m->term ? dx__ext_encode(&x, m->term) : enc_atom(&x, "normal");
        if (link)
            olink_remove(m->from, to);
        break;
    }
    default:
        return DX_ENOTSUP;
    }
    if (rc != DX_OK) {
        ei_x_free(&x);
        return rc;
    }
    rc = pkt_queue(n, &x, is_msg);
    if (rc == DX_OK)
        ensure_connect(n);
    return rc;
}

static int router_deliver(dx_pid to, dx_msg *m)
{
    pthread_mutex_lock(&G.mu);
    node *n = G.running && !G.stopping ? node_of_pid(to) : NULL;
    int rc = n ? route_locked(n, to, m) : DX_ENOPROC;
    bool mon_failed = rc != DX_OK && m->dx__signal == DX__SIG_MONITOR;
    pthread_mutex_unlock(&G.mu);
    if (mon_failed && n != NULL) {
        /* Monitoring a process of a node we cannot reach: the monitor
         * fires with noconnection, as in Erlang. */
        dx_msg *d = dx__signal_new(DX__SIG_DOWN, to, m->ref, 0, a_noconnection);
        if (d)
            dx__deliver(m->from, d);
        rc = DX_OK;
    }
    if (rc != DX_OK && m->dx__signal == DX__SIG_MSG)
        atomic_fetch_add(&G.dropped, 1);
    dx_msg_free(m);
    return rc;
}

static const dx__router the_router = {.deliver = router_deliver};

/* ------------------------------------------------------------------ */
/* Incoming                                                            */
/* ------------------------------------------------------------------ */

/* Resolve a pid-or-name in the control tuple to a local pid. */
static int dec_local(const char *buf, int *idx, dx_pid *out, char *name,
                     size_t cap)
{
    int type = 0, size = 0;
    name[0] = '\0';
    if (ei_get_type(buf, idx, &type, &size) < 0)
        return DX_EINVAL;
    if (type == ERL_ATOM_EXT || type == ERL_SMALL_ATOM_EXT ||
        type == ERL_ATOM_UTF8_EXT || type == ERL_SMALL_ATOM_UTF8_EXT) {
        if (ei_decode_atom_as(buf, idx, name, (int)cap, ERLANG_UTF8, NULL,
                              NULL) < 0)
            return DX_EINVAL;
        *out = dx_whereis(name);
        return DX_OK;
    }
    erlang_pid ep;
    if (ei_decode_pid(buf, idx, &ep) < 0)
        return DX_EINVAL;
    pthread_mutex_lock(&G.mu);
    int rc = dx__dist_pid_in(&ep, out);
    pthread_mutex_unlock(&G.mu);
    return rc;
}

static int dec_pid_locked(const char *buf, int *idx, dx_pid *out)
{
    erlang_pid ep;
    if (ei_decode_pid(buf, idx, &ep) < 0)
        return DX_EINVAL;
    pthread_mutex_lock(&G.mu);
    int rc = dx__dist_pid_in(&ep, out);
    pthread_mutex_unlock(&G.mu);
    return rc;
}

static int dec_term_locked(const char *buf, int len, int *idx, dx_term **out)
{
    pthread_mutex_lock(&G.mu);
    int rc = dx__ext_decode(buf, len, idx, out);
    pthread_mutex_unlock(&G.mu);
    return rc;
}

static int dec_ref_locked(const char *buf, int *idx, dx_ref *out)
{
    erlang_ref er;
    if (ei_decode_ref(buf, idx, &er) < 0)
        return DX_EINVAL;
    pthread_mutex_lock(&G.mu);
    int rc = dx__dist_ref_in(&er, out);
    pthread_mutex_unlock(&G.mu);
    return rc;
}

/* Unwrap {'$dx', Tag, From[, Term]} into m; other terms become m->term. */
static void set_payload(dx_msg *m, dx_term *t)
{
    if (dx_term_type_of(t) == DX_TERM_TUPLE &&
        (dx_term_size(t) == 3 || dx_term_size(t) == 4) &&
        dx_term_at(t, 0) == a_dx) {
        int64_t tag;
        dx_pid from = DX_NOPID;
        if (dx_int_value(dx_term_at(t, 1), &tag) && tag >= 0) {
            dx_pid_value(dx_term_at(t, 2), &from);
            m->tag = tag;
            if (from.id)
                m->from = from;
            m->term =
                dx_term_size(t) == 4 ? dx_term_copy(dx_term_at(t, 3)) : NULL;
            dx_term_free(t);
            return;
        }
    }
    m->term = t;
}

/* A message for a local process: classify it (call, cast, reply to one of
 * our calls, plain) and deliver it. */
static void incoming_msg(node *n, dx_pid to, dx_pid from, const char *buf,
                         int len, int idx)
{
    atomic_fetch_add_explicit(&G.msgs_in, 1, memory_order_relaxed);
    dx_msg *m = dx_msg_new(DX_TAG_TERM);
    if (m == NULL)
        return;
    m->from = from;
    int v = 0;
    ei_decode_version(buf, &idx, &v);
    /* {'$gen_call', {Pid, Tag}, Request}: kept byte-exact for the tag,
     * which may be an improper list ([alias | Ref] since OTP 24). */
    int save = idx, arity = 0;
    char atom[MAXATOMLEN];
    if (ei_decode_tuple_header(buf, &idx, &arity) == 0 && arity == 3 &&
        ei_decode_atom(buf, &idx, atom) == 0 &&
        strcmp(atom, "$gen_call") == 0 &&
        ei_decode_tuple_header(buf, &idx, &arity) == 0 && arity == 2) {
        dx_pid caller;
        if (dec_pid_locked(buf, &idx, &caller) != DX_OK)
            goto bad;
        int tstart = idx;
        if (ei_skip_term(buf, &idx) < 0)
            goto bad;
        int tend = idx;
        dx_term *req;
        if (dec_term_locked(buf, len, &idx, &req) != DX_OK)
            goto bad;
        pthread_mutex_lock(&G.mu);
        int rc = ctag_add(n->idx, buf + tstart, tend - tstart, &m->ref);
        pthread_mutex_unlock(&G.mu);
        if (rc != DX_OK) {
            dx_term_free(req);
            goto bad;
        }
        m->kind = DX_MSG_CALL;
        m->from = caller;
        set_payload(m, req);
        m->dx__signal = DX__SIG_MSG;
        dx_ref tag = m->ref;
        if (deliver_ext(to, m) != DX_OK) {
            /* Nobody there: the caller's own monitor or timeout ends the
             * call; the tag's slot is not needed. */
            pthread_mutex_lock(&G.mu);
            ctag *c = ctag_of(tag);
            if (c)
                ctag_free(c);
            pthread_mutex_unlock(&G.mu);
        }
        return;
    }
    idx = save;
    dx_term *t;
    if (dec_term_locked(buf, len, &idx, &t) != DX_OK)
        goto bad;
    m->kind = DX_MSG_PLAIN;
    if (dx_term_type_of(t) == DX_TERM_TUPLE && dx_term_size(t) == 2) {
        const dx_term *a = dx_term_at(t, 0);
        dx_ref r;
        if (a == a_gen_cast) {
            m->kind = DX_MSG_CAST;
            set_payload(m, dx_term_copy(dx_term_at(t, 1)));
            dx_term_free(t);
            t = NULL;
        } else if (dx_ref_value(a, &r) && dx__ref_node(r) == 0) {
            pthread_mutex_lock(&G.mu);
            omon *om = omon_find(r);
            bool reply = om && om->call && om->local.id == to.id;
            if (reply)
                om->call = false;
            pthread_mutex_unlock(&G.mu);
            if (reply) {
                m->kind = DX_MSG_REPLY;
                m->ref = r;
                set_payload(m, dx_term_copy(dx_term_at(t, 1)));
                dx_term_free(t);
                t = NULL;
            }
        }
    }
    if (t != NULL)
        set_payload(m, t);
    m->dx__signal = DX__SIG_MSG;
    deliver_ext(to, m);
    return;
bad:
    atomic_fetch_add(&G.dropped, 1);
    dx_msg_free(m);
}

static void send_ctl_locked(node *n, ei_x_buff *x)
{
    if (pkt_queue(n, x, false) != DX_OK)
        atomic_fetch_add(&G.dropped, 1);
}

static void handle_packet(node *n, const char *buf, size_t len)
{
    if (len < 2 || buf[0] != 'p') {
        atomic_fetch_add(&G.dropped, 1);
        return;
    }
    /* len <= MAX_FRAME: it fits erl_interface's int index. The control
     * tuple is read with erl_interface below, which follows length fields
     * wherever they point: check it lies within the packet first (the
     * message after it is decoded by dx__ext_decode, which checks as it
     * goes). */
    int idx = 1, v = 0, arity = 0, ctl_end = 2;
    long op = 0;
    if (dx__ext_check(buf, (int)len, &ctl_end) != DX_OK ||
        ei_decode_version(buf, &idx, &v) < 0 ||
        ei_decode_tuple_header(buf, &idx, &arity) < 0 || arity < 1 ||
        ei_decode_long(buf, &idx, &op) < 0) {
        atomic_fetch_add(&G.dropped, 1);
        return;
    }
    char name[MAXATOMLEN];
    dx_pid from = DX_NOPID, to = DX_NOPID;
    switch (op) {
    case OP_SEND:
    case OP_SEND_SENDER: {
        /* {2, Unused, To} / {22, From, To}: a dspex peer puts the sender
         * in the unused slot. */
        int t = 0, s = 0;
        ei_get_type(buf, &idx, &t, &s);
        if (t == ERL_PID_EXT || t == ERL_NEW_PID_EXT) {
            if (dec_pid_locked(buf, &idx, &from) != DX_OK)
                from = DX_NOPID;
        } else {
            ei_skip_term(buf, &idx);
        }
        if (dec_pid_locked(buf, &idx, &to) != DX_OK || dx__pid_node(to) != 0)
            break;
        incoming_msg(n, to, from, buf, (int)len, idx);
        return;
    }
    case OP_REG_SEND: {
        /* {6, From, Unused, ToName} */
        int t = 0, s = 0;
        ei_get_type(buf, &idx, &t, &s);
        if (t == ERL_PID_EXT || t == ERL_NEW_PID_EXT) {
            if (dec_pid_locked(buf, &idx, &from) != DX_OK)
                from = DX_NOPID;
        } else {
            ei_skip_term(buf, &idx);
        }
        ei_skip_term(buf, &idx);
        if (dec_local(buf, &idx, &to, name, sizeof name) != DX_OK || to.id == 0)
            break;
        incoming_msg(n, to, from, buf, (int)len, idx);
        return;
    }
    case OP_MONITOR_P:
    case OP_DEMONITOR_P: {
        /* {19|20, FromPid, ToProc, Ref} */
        dx_ref ref;
        if (dec_pid_locked(buf, &idx, &from) != DX_OK ||
            dec_local(buf, &idx, &to, name, sizeof name) != DX_OK ||
            dec_ref_locked(buf, &idx, &ref) != DX_OK)
            break;
        if (op == OP_DEMONITOR_P) {
            if (to.id)
                signal_ext(to, DX__SIG_DEMONITOR, from, ref, 0, NULL);
            return;
        }
        pthread_mutex_lock(&G.mu);
        rref *r = rref_of(ref);
        if (r && name[0])
            snprintf(r->by_name, sizeof r->by_name, "%s", name);
        pthread_mutex_unlock(&G.mu);
        int rc = DX_ENOPROC;
        dx_msg *m =
            to.id ? dx__signal_new(DX__SIG_MONITOR, from, ref, 0, NULL) : NULL;
        if (m != NULL) {
            int entered;
            if (dx__ext_enter(&entered) == DX_OK) {
                rc = dx__deliver(to, m);
                dx__ext_leave(entered);
            } else {
                dx_msg_free(m);
            }
        }
        if (rc != DX_OK) {
            /* Nothing there to monitor: DOWN noproc at once. */
            ei_x_buff x;
            pthread_mutex_lock(&G.mu);
            if (pkt_begin(&x, 5, OP_MONITOR_P_EXIT) == DX_OK &&
                (name[0] ? enc_atom(&x, name) : enc_pid(&x, to)) == DX_OK &&
                enc_pid(&x, from) == DX_OK && enc_ref(&x, ref) == DX_OK &&
                enc_atom(&x, "noproc") == DX_OK)
                send_ctl_locked(n, &x);
            else
                ei_x_free(&x);
            pthread_mutex_unlock(&G.mu);
        }
        return;
    }
    case OP_MONITOR_P_EXIT: {
        /* {21, FromProc, ToPid, Ref, Reason}: a monitor of ours fired. */
        ei_skip_term(buf, &idx);
        dx_ref ref;
        dx_term *reason;
        if (dec_pid_locked(buf, &idx, &to) != DX_OK ||
            dec_ref_locked(buf, &idx, &ref) != DX_OK)
            break;
        if (dec_term_locked(buf, (int)len, &idx, &reason) != DX_OK)
            reason = dx_atom("unknown");
        omon om;
        pthread_mutex_lock(&G.mu);
        bool had = omon_take(ref, &om);
        pthread_mutex_unlock(&G.mu);
        if (had)
            signal_ext(om.local, DX__SIG_DOWN, om.remote, ref, 0, reason);
        else
            dx_term_free(reason);
        return;
    }
    case OP_LINK:
    case OP_UNLINK: {
        if (dec_pid_locked(buf, &idx, &from) != DX_OK ||
            dec_pid_locked(buf, &idx, &to) != DX_OK || dx__pid_node(to))
            break;
        pthread_mutex_lock(&G.mu);
        if (op == OP_LINK)
            olink_add(to, from);
        else
            olink_remove(to, from);
        pthread_mutex_unlock(&G.mu);
        signal_ext(to, op == OP_LINK ? DX__SIG_LINK : DX__SIG_UNLINK, from,
                   DX_NOREF, 0, NULL);
        return;
    }
    case OP_UNLINK_ID: {
        /* {35, Id, From, To}: unlink, then acknowledge with the id. */
        EI_ULONGLONG id = 0;
        if (ei_decode_ulonglong(buf, &idx, &id) < 0 ||
            dec_pid_locked(buf, &idx, &from) != DX_OK ||
            dec_pid_locked(buf, &idx, &to) != DX_OK || dx__pid_node(to))
            break;
        ei_x_buff x;
        pthread_mutex_lock(&G.mu);
        olink_remove(to, from);
        if (pkt_begin(&x, 4, OP_UNLINK_ID_ACK) == DX_OK &&
            ei_x_encode_ulonglong(&x, id) == 0 && enc_pid(&x, to) == DX_OK &&
            enc_pid(&x, from) == DX_OK)
            send_ctl_locked(n, &x);
        else
            ei_x_free(&x);
        pthread_mutex_unlock(&G.mu);
        signal_ext(to, DX__SIG_UNLINK, from, DX_NOREF, 0, NULL);
        return;
    }
    case OP_EXIT:
    case OP_EXIT2: {
        dx_term *reason;
        if (dec_pid_locked(buf, &idx, &from) != DX_OK ||
            dec_pid_locked(buf, &idx, &to) != DX_OK || dx__pid_node(to))
            break;
        if (dec_term_locked(buf, (int)len, &idx, &reason) != DX_OK)
            reason = dx_atom("unknown");
        int64_t flags = op == OP_EXIT ? DX__EXIT_LINK : 0;
        if (op == OP_EXIT2 && reason == a_kill)
            flags = DX__EXIT_KILL;
        if (op == OP_EXIT) {
            pthread_mutex_lock(&G.mu);
            olink_remove(to, from);
            pthread_mutex_unlock(&G.mu);
        }
        signal_ext(to, DX__SIG_EXIT, from, DX_NOREF, flags, reason);
        return;
    }
    default:
        return; /* group leaders, tracing, ...: not used by dspex */
    }
    atomic_fetch_add(&G.dropped, 1);
}

/* ------------------------------------------------------------------ */
/* Public API                                                          */
/* ------------------------------------------------------------------ */

static int read_cookie(char *out, size_t cap)
{
    const char *home = getenv("HOME");
    if (home == NULL)
        return DX_EINVAL;
    char path[4096];
    snprintf(path, sizeof path, "%s/.erlang.cookie", home);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return DX_EINVAL;
    if (fgets(out, (int)cap, f) == NULL) {
        fclose(f);
        return DX_EINVAL;
    }
    fclose(f);
    size_t n = strlen(out);
    while (n > 0 &&
           (out[n - 1] == '\n' || out[n - 1] == '\r' || out[n - 1] == ' '))
        out[--n] = '\0';
    return n > 0 ? DX_OK : DX_EINVAL;
}

static void atoms_init(void)
{
    a_noconnection = dx_atom("noconnection");
    a_noproc = dx_atom("noproc");
    a_gen_call = dx_atom("$gen_call");
    a_gen_cast = dx_atom("$gen_cast");
    a_dx = dx_atom("$dx");
    a_nodeup = dx_atom("nodeup");
    a_nodedown = dx_atom("nodedown");
    a_kill = dx_atom("kill");
}

static void free_tables(void)
{
    for (uint32_t i = 1; i < G.nnodes; i++) {
        node *n = G.nodes[i];
        queue_drop(n);
        for (uint32_t k = 0; k < n->nnames; k++)
            dx_free(n->names[k]);
        close(n->wake);
        dx_free(n);
        G.nodes[i] = NULL;
    }
    G.nnodes = 1;
    if (G.ctags)
        for (uint32_t i = 0; i < MAX_CALLS; i++)
            if (G.ctags[i].node)
                ctag_free(&G.ctags[i]);
    dx_free(G.ctags);
    G.ctags = NULL;
    dx_free(G.omons);
    dx_free(G.olinks);
    dx_free(G.refs);
    dx_free(G.subs);
    G.omons = NULL;
    G.olinks = NULL;
    G.refs = NULL;
    G.subs = NULL;
    G.nomons = G.comons = G.nolinks = G.colinks = 0;
    G.nrefs = G.crefs = G.nsubs = G.csubs = 0;
    memset(G.ref_heads, 0, sizeof G.ref_heads);
}

int dx_node_start(const dx_node_opts *opts)
{
    if (opts == NULL || !valid_node_name(opts->name))
        return DX_EINVAL;
    if (!dx_runtime_running())
        return DX_ESTATE;
    pthread_mutex_lock(&G.mu);
    if (G.running || G.threads_live > 0) {
        pthread_mutex_unlock(&G.mu);
        return DX_ESTATE;
    }
    char cookie[EI_MAX_COOKIE_SIZE + 1];
    if (opts->cookie) {
        if (strlen(opts->cookie) > EI_MAX_COOKIE_SIZE ||
            opts->cookie[0] == '\0') {
            pthread_mutex_unlock(&G.mu);
            return DX_EINVAL;
        }
        snprintf(cookie, sizeof cookie, "%s", opts->cookie);
    } else if (read_cookie(cookie, sizeof cookie) != DX_OK) {
        pthread_mutex_unlock(&G.mu);
        return DX_EINVAL;
    }
    atoms_init();
    ei_init();
    char alive[EI_MAXALIVELEN + 1], host[EI_MAXHOSTNAMELEN + 1];
    const char *at = strchr(opts->name, '@');
    snprintf(alive, sizeof alive, "%.*s", (int)(at - opts->name), opts->name);
    snprintf(host, sizeof host, "%s", at + 1);
    struct in_addr addr;
    if (inet_pton(AF_INET, opts->listen_addr ? opts->listen_addr : "127.0.0.1",
                  &addr) != 1) {
        pthread_mutex_unlock(&G.mu);
        return DX_EINVAL;
    }
    int rc = DX_OK;
    if (ei_connect_xinit(&G.ec, host, alive, opts->name, &addr, cookie, 0) <
        0) {
        pthread_mutex_unlock(&G.mu);
        return DX_EINVAL;
    }
    int port = opts->port;
    G.lfd = ei_xlisten(&G.ec, &addr, &port, 16);
    if (G.lfd < 0) {
        pthread_mutex_unlock(&G.mu);
        return DX_ESYS;
    }
    G.pubfd = ei_publish_tmo(&G.ec, port, 5000);
    if (G.pubfd < 0) {
        close(G.lfd);
        pthread_mutex_unlock(&G.mu);
        return DX_ECONNECT;
    }
    snprintf(G.self, sizeof G.self, "%s", opts->name);
    G.creation = G.ec.creation;
    G.ticktime_ms = opts->ticktime_ms > 0 ? opts->ticktime_ms : 60000;
    G.connect_timeout_ms =
        opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 5000;
    G.queue_limit = opts->queue_limit ? opts->queue_limit : (64u << 20);
    G.nnodes = 1;
    G.stopping = false;
    atomic_store(&G.msgs_out, 0);
    atomic_store(&G.msgs_in, 0);
    atomic_store(&G.bytes_out, 0);
    atomic_store(&G.bytes_in, 0);
    atomic_store(&G.dropped, 0);
    atomic_store(&G.refused, 0);
    if (start_thread(accept_main, NULL) != 0) {
        close(G.pubfd);
        close(G.lfd);
        rc = DX_ESYS;
    } else {
        G.threads_live++;
        G.running = true;
        dx__set_router(&the_router);
    }
    pthread_mutex_unlock(&G.mu);
    return rc;
}

int dx_node_stop(void)
{
    pthread_mutex_lock(&G.mu);
    if (!G.running || G.stopping) {
        pthread_mutex_unlock(&G.mu);
        return DX_ESTATE;
    }
    G.stopping = true;
    while (G.threads_live > 0)
        pthread_cond_wait(&G.cv, &G.mu);
    dx__set_router(NULL);
    close(G.pubfd); /* closing the epmd connection unpublishes */
    close(G.lfd);
    free_tables();
    G.running = false;
    G.stopping = false;
    G.self[0] = '\0';
    pthread_mutex_unlock(&G.mu);
    return DX_OK;
}

int dx__dist_codec_open(const char *self, unsigned creation)
{
    if (!valid_node_name(self))
        return DX_EINVAL;
    pthread_mutex_lock(&G.mu);
    if (G.running || G.self[0] != '\0') {
        pthread_mutex_unlock(&G.mu);
        return DX_ESTATE;
    }
    snprintf(G.self, sizeof G.self, "%s", self);
    G.creation = creation;
    G.nnodes = 1;
    pthread_mutex_unlock(&G.mu);
    return DX_OK;
}

void dx__dist_codec_close(void)
{
    pthread_mutex_lock(&G.mu);
    if (!G.running) {
        free_tables();
        G.self[0] = '\0';
    }
    pthread_mutex_unlock(&G.mu);
}

bool dx_node_alive(void)
{
    pthread_mutex_lock(&G.mu);
    bool r = G.running && !G.stopping;
    pthread_mutex_unlock(&G.mu);
    return r;
}

const char *dx_node_self(void)
{
    return G.self[0] ? G.self : "nonode@nohost";
}

int dx_node_connect(const char *name, int64_t timeout_ms)
{
    if (!valid_node_name(name))
        return DX_EINVAL;
    pthread_mutex_lock(&G.mu);
    if (!G.running || G.stopping) {
        pthread_mutex_unlock(&G.mu);
        return DX_ESTATE;
    }
    if (strcmp(name, G.self) == 0) {
        pthread_mutex_unlock(&G.mu);
        return DX_OK;
    }
    node *n = node_get(name);
    if (n == NULL) {
        pthread_mutex_unlock(&G.mu);
        return DX_ELIMIT;
    }
    uint64_t a0 = n->attempts;
    if (n->state == N_CONNECTING)
        a0--; /* the attempt under way counts */
    ensure_connect(n);
    pthread_mutex_unlock(&G.mu);
    int64_t deadline = now_ms() + (timeout_ms < 0 ? INT32_MAX : timeout_ms);
    for (;;) {
        pthread_mutex_lock(&G.mu);
        int st = n->state;
        uint64_t at = n->attempts;
        int last = n->last_rc;
        pthread_mutex_unlock(&G.mu);
        if (st == N_UP)
            return DX_OK;
        if (at > a0 && st == N_IDLE)
            return last != DX_OK ? last : DX_ECONNECT;
        if (now_ms() >= deadline)
            return DX_ETIMEDOUT;
        sleep_ms(5);
    }
}

int dx_node_disconnect(const char *name)
{
    pthread_mutex_lock(&G.mu);
    node *n = G.running ? node_find(name) : NULL;
    int rc = n && n->state == N_UP ? DX_OK : DX_ENOENT;
    if (rc == DX_OK) {
        n->stop = true;
        uint64_t one = 1;
        if (write(n->wake, &one, sizeof one) < 0) {
            /* already signalled */
        }
    }
    pthread_mutex_unlock(&G.mu);
    return rc;
}

dx_pid dx_node_name_pid(const char *node_name, const char *name)
{
    if (name == NULL || name[0] == '\0' || strlen(name) > DX_ATOM_MAX_LEN ||
        !valid_node_name(node_name))
        return DX_NOPID;
    pthread_mutex_lock(&G.mu);
    dx_pid pid = DX_NOPID;
    node *n = G.running && strcmp(node_name, G.self) != 0 ? node_get(node_name)
                                                          : NULL;
    if (G.running && strcmp(node_name, G.self) == 0) {
        pthread_mutex_unlock(&G.mu);
        return dx_whereis(name);
    }
    if (n != NULL) {
        uint32_t i = 0;
        while (i < n->nnames && strcmp(n->names[i], name) != 0)
            i++;
        if (i == n->nnames && n->nnames < MAX_NAMES) {
            size_t len = strlen(name) + 1;
            n->names[i] = dx_malloc(len);
            if (n->names[i]) {
                memcpy(n->names[i], name, len);
                n->nnames++;
            }
        }
        if (i < n->nnames)
            pid.id =
                ((uint64_t)n->idx << DX__NODE_SHIFT) | DX__DIST_NAME_BIT | i;
    }
    pthread_mutex_unlock(&G.mu);
    return pid;
}

int dx_node_of(dx_pid pid, char *buf, size_t cap)
{
    if (pid.id == 0 || buf == NULL)
        return DX_EINVAL;
    pthread_mutex_lock(&G.mu);
    const char *name = NULL;
    if (dx__pid_node(pid) == 0) {
        name = dx_node_self();
    } else {
        node *n = node_of_pid(pid);
        name = n ? n->name : NULL;
    }
    int rc = DX_EINVAL;
    if (name) {
        size_t len = strlen(name);
        rc = len < cap ? DX_OK : DX_ELIMIT;
        if (rc == DX_OK)
            memcpy(buf, name, len + 1);
    }
    pthread_mutex_unlock(&G.mu);
    return rc;
}

bool dx_node_is_remote(dx_pid pid)
{
    return dx__pid_node(pid) != 0;
}

int dx_node_monitor_nodes(bool on)
{
    dx_pid self = dx_self();
    if (self.id == 0)
        return DX_ENOTPROC;
    pthread_mutex_lock(&G.mu);
    int rc = DX_OK;
    if (!G.running) {
        rc = DX_ESTATE;
    } else if (on) {
        rc = grow((void **)&G.subs, &G.csubs, G.nsubs, sizeof(dx_pid));
        if (rc == DX_OK)
            G.subs[G.nsubs++] = self;
    } else {
        for (uint32_t i = 0; i < G.nsubs; i++)
            if (G.subs[i].id == self.id) {
                G.subs[i] = G.subs[--G.nsubs];
                break;
            }
    }
    /* Drop subscribers that have exited, so the list stays short. */
    for (uint32_t i = 0; i < G.nsubs;) {
        if (!dx_is_alive(G.subs[i]))
            G.subs[i] = G.subs[--G.nsubs];
        else
            i++;
    }
    pthread_mutex_unlock(&G.mu);
    return rc;
}

int dx_node_list(char ***out, size_t *count)
{
    *out = NULL;
    *count = 0;
    pthread_mutex_lock(&G.mu);
    if (!G.running) {
        pthread_mutex_unlock(&G.mu);
        return DX_ESTATE;
    }
    size_t n = 0, bytes = 0;
    for (uint32_t i = 1; i < G.nnodes; i++)
        if (G.nodes[i]->state == N_UP) {
            n++;
            bytes += strlen(G.nodes[i]->name) + 1;
        }
    int rc = DX_OK;
    if (n > 0) {
        char **arr = dx_malloc(n * sizeof(char *) + bytes);
        if (arr == NULL) {
            rc = DX_ENOMEM;
        } else {
            char *p = (char *)(arr + n);
            size_t k = 0;
            for (uint32_t i = 1; i < G.nnodes; i++)
                if (G.nodes[i]->state == N_UP) {
                    size_t len = strlen(G.nodes[i]->name) + 1;
                    memcpy(p, G.nodes[i]->name, len);
                    arr[k++] = p;
                    p += len;
                }
            *out = arr;
            *count = n;
        }
    }
    pthread_mutex_unlock(&G.mu);
    return rc;
}

void dx_node_stats_get(dx_node_stats *out)
{
    out->msgs_out = atomic_load(&G.msgs_out);
    out->msgs_in = atomic_load(&G.msgs_in);
    out->bytes_out = atomic_load(&G.bytes_out);
    out->bytes_in = atomic_load(&G.bytes_in);
    out->dropped = atomic_load(&G.dropped);
    out->refused = atomic_load(&G.refused);
}
