/*
 * server.c — the server behaviour (gen_server) and its client side.
 *
 * A server is a process running server_main: it starts its state with
 * init, acknowledges the starter, then loops over its mailbox dispatching
 * calls, casts, system requests and other messages to the callbacks.
 *
 * A call monitors the server and uses the monitor's reference as the call's
 * reference, so the reply and a DOWN for the server are matched by one
 * selective receive; the receive starts scanning at the message that was
 * last in the queue when the call began, so a long mailbox does not make
 * calls slower. A reply that arrives after the caller gave up is dropped
 * when the mailbox is drained (proc.c), never delivered.
 */
#include <stdio.h>
#include <string.h>

#include "dx_internal.h"

enum { SYS_ACK = 1, SYS_STOP = 2 };

typedef struct start_ctx {
    const dx_server_ops *ops;
    void *arg;
    dx_pid parent;
    dx_ref ack_ref;
    bool linked;
} start_ctx;

/* Send with a given kind, from a process or a host thread. */
static int send_kind(dx_pid to, dx_msg *m, uint32_t kind)
{
    if (m == NULL)
        return DX_EINVAL;
    if (m->tag < 0) {
        dx_msg_free(m);
        return DX_EINVAL;
    }
    dx__proc *self = dx__self_proc();
    m->dx__signal = DX__SIG_MSG;
    m->kind = kind;
    if (self != NULL) {
        m->from = self->pid;
        return dx__deliver(to, m);
    }
    m->from = DX_NOPID;
    int entered;
    int rc = dx__ext_enter(&entered);
    if (rc != DX_OK) {
        dx_msg_free(m);
        return rc;
    }
    rc = dx__deliver(to, m);
    dx__ext_leave(entered);
    return rc;
}

static DX_NORETURN void server_stop(const dx_server_ops *ops, void *state,
                                    dx_term *reason)
{
    if (reason == NULL)
        reason = dx_atom("normal");
    if (ops->terminate)
        ops->terminate(state, reason);
    dx_exit_self(reason);
}

static void server_main(void *arg)
{
    start_ctx *ctx = arg;
    const dx_server_ops *ops = ctx->ops;
    char label[64];
    snprintf(label, sizeof label, "dx_server:%s", ops->name ? ops->name : "?");
    dx_set_label(label);

    void *state = NULL;
    dx_term *reason = NULL;
    int rc = ops->init(ctx->arg, &state, &reason);
    if (rc > 0)
        rc = DX_EINIT; /* codes are negative; anything else is a bug */
    dx_msg *ack = dx_msg_new(-rc);
    if (rc != DX_OK) {
        /* The starter learns of the failure from the ack; unlinking first
         * keeps our exit from also killing it. */
        if (ctx->linked)
            dx_unlink(ctx->parent);
        if (ack) {
            ack->ref = ctx->ack_ref;
            ack->term = dx_term_copy(reason);
            send_kind(ctx->parent, ack, DX_MSG_SYSTEM);
        }
        dx_exit_self(reason ? reason : dx_atom("init_failed"));
    }
    if (ack == NULL)
        dx_exit_self(dx_atom("out_of_memory"));
    ack->ref = ctx->ack_ref;
    send_kind(ctx->parent, ack, DX_MSG_SYSTEM);
    dx_pid parent = ctx->parent;

    for (;;) {
        dx_msg *m;
        dx_receive_any(DX_INFINITY, &m);
        dx_term *stop_reason = NULL;
        dx_srv_ret ret = DX_SRV_NOREPLY;
        switch (m->kind) {
        case DX_MSG_CALL: {
            dx_from from = {m->from, m->ref};
            if (ops->handle_call == NULL) {
                ret = DX_SRV_STOP;
                stop_reason = dx_atom("bad_call");
                break;
            }
            dx_msg *reply = NULL;
            ret = ops->handle_call(state, m, from, &reply, &stop_reason);
            if (ret == DX_SRV_REPLY && reply == NULL)
                reply = dx_msg_new(0);
            if (reply != NULL)
                dx_reply(from, reply);
            break;
        }
        case DX_MSG_CAST:
            if (ops->handle_cast)
                ret = ops->handle_cast(state, m, &stop_reason);
            break;
        case DX_MSG_SYSTEM:
            if (m->tag == SYS_STOP) {
                ret = DX_SRV_STOP;
                stop_reason = dx_msg_take_term(m);
            }
            break;
        default:
            /* A trapped exit from our parent means "stop", as in OTP. */
            if (m->tag == DX_TAG_EXIT && dx_pid_eq(m->from, parent)) {
                ret = DX_SRV_STOP;
                stop_reason = dx_msg_take_term(m);
            } else if (ops->handle_info) {
                ret = ops->handle_info(state, m, &stop_reason);
            }
            break;
        }
        dx_msg_free(m);
        if (ret == DX_SRV_STOP)
            server_stop(ops, state, stop_reason);
        dx_term_free(stop_reason);
    }
}

static void start_ctx_free(void *arg)
{
    dx_free(arg);
}

typedef struct ack_match {
    dx_ref ack;
    dx_ref mon;
} ack_match;

static bool is_ack_or_down(const dx_msg *m, void *ud)
{
    const ack_match *am = ud;
    if (m->kind == DX_MSG_SYSTEM && m->ref.id == am->ack.id)
        return true;
    return m->tag == DX_TAG_DOWN && m->ref.id == am->mon.id;
}

int dx_server_start(const dx_server_ops *ops, void *arg,
                    const dx_server_opts *opts, dx_pid *pid_out,
                    dx_term **init_reason)
{
    static const dx_server_opts defaults;
    if (opts == NULL)
        opts = &defaults;
    if (pid_out)
        *pid_out = DX_NOPID;
    if (init_reason)
        *init_reason = NULL;
    if (ops == NULL || ops->init == NULL)
        return DX_EINVAL;
    dx__proc *self = dx__self_proc();
    if (self == NULL)
        return DX_ENOTPROC;
    start_ctx *ctx = dx_calloc(1, sizeof *ctx);
    if (ctx == NULL)
        return DX_ENOMEM;
    ctx->ops = ops;
    ctx->arg = arg;
    ctx->parent = self->pid;
    ctx->ack_ref = dx_make_ref();
    ctx->linked = opts->link;
    dx_spawn_opts so = {
        .link = opts->link,
        .monitor = true,
        .trap_exit = opts->trap_exit,
        .name = opts->name,
        .arg_free = start_ctx_free,
    };
    dx_pid pid;
    dx_ref mon;
    ack_match am = {.ack = ctx->ack_ref};
    int rc = dx_spawn_opt(server_main, ctx, &so, &pid, &mon);
    if (rc != DX_OK) {
        dx_free(ctx);
        return rc;
    }
    am.mon = mon;
    int64_t timeout = opts->timeout_ms == 0 ? 5000 : opts->timeout_ms;
    dx_match mt = {.pred = is_ack_or_down, .ud = &am};
    dx_msg *m;
    rc = dx_receive(&mt, timeout, &m);
    if (rc == DX_ETIMEDOUT) {
        if (opts->link)
            dx_unlink(pid);
        dx_kill(pid);
        dx_demonitor(mon, true);
        return DX_ETIMEDOUT;
    }
    if (rc != DX_OK)
        return rc;
    if (m->tag == DX_TAG_DOWN) { /* crashed in init */
        if (init_reason)
            *init_reason = dx_msg_take_term(m);
        dx_msg_free(m);
        return DX_EDOWN;
    }
    int code = m->tag == 0 ? DX_OK : (int)-m->tag;
    if (code != DX_OK && init_reason)
        *init_reason = dx_msg_take_term(m);
    dx_msg_free(m);
    dx_demonitor(mon, true);
    if (code == DX_OK && pid_out)
        *pid_out = pid;
    return code;
}

int dx_call(dx_pid server, dx_msg *request, int64_t timeout_ms, dx_msg **reply)
{
    if (reply)
        *reply = NULL;
    if (request == NULL || reply == NULL) {
        dx_msg_free(request);
        return DX_EINVAL;
    }
    dx__proc *p = dx__self_proc();
    if (p == NULL) {
        dx_msg_free(request);
        return DX_ENOTPROC;
    }
    if (server.id == p->pid.id) {
        dx_msg_free(request);
        return DX_EDEADLK;
    }
    if (request->tag < 0) {
        dx_msg_free(request);
        return DX_EINVAL;
    }
    dx_ref ref;
    int rc = dx_monitor(server, &ref);
    if (rc != DX_OK) {
        dx_msg_free(request);
        return rc;
    }
    dx_msg *mark = p->q_last; /* nothing older can carry our fresh ref */
    request->dx__signal = DX__SIG_MSG;
    request->kind = DX_MSG_CALL;
    request->from = p->pid;
    request->ref = ref;
    p->awaiting_reply = ref;
    if (dx__deliver(server, request) != DX_OK) {
        p->awaiting_reply = DX_NOREF;
        dx_demonitor(ref, true);
        return DX_ENOPROC;
    }
    dx_match mt = {.fields = DX_MATCH_REF, .ref = ref};
    dx_msg *m;
    rc = dx__receive_after(p, &mt, mark, timeout_ms, &m);
    p->awaiting_reply = DX_NOREF;
    if (rc != DX_OK) {
        dx_demonitor(ref, true);
        return rc;
    }
    if (m->kind == DX_MSG_REPLY) {
        dx_demonitor(ref, true);
        *reply = m;
        return DX_OK;
    }
    /* The DOWN of our monitor: the server was gone or died meanwhile. */
    rc = dx_is_atom(m->term, "noproc") ? DX_ENOPROC : DX_EDOWN;
    dx_msg_free(m);
    return rc;
}

int dx_call_named(const char *name, dx_msg *request, int64_t timeout_ms,
                  dx_msg **reply)
{
    dx_pid pid = dx_whereis(name);
    if (pid.id == 0) {
        if (reply)
            *reply = NULL;
        dx_msg_free(request);
        return DX_ENOPROC;
    }
    return dx_call(pid, request, timeout_ms, reply);
}

int dx_cast(dx_pid server, dx_msg *msg)
{
    return send_kind(server, msg, DX_MSG_CAST);
}

int dx_reply(dx_from from, dx_msg *reply)
{
    if (reply == NULL)
        return DX_EINVAL;
    reply->ref = from.ref;
    return send_kind(from.pid, reply, DX_MSG_REPLY);
}

int dx_server_stop(dx_pid server, dx_term *reason, int64_t timeout_ms)
{
    dx__proc *p = dx__self_proc();
    if (p == NULL) {
        dx_term_free(reason);
        return DX_ENOTPROC;
    }
    dx_msg *m = dx_msg_new(SYS_STOP);
    if (m == NULL) {
        dx_term_free(reason);
        return DX_ENOMEM;
    }
    m->term = reason;
    dx_ref ref;
    int rc = dx_monitor(server, &ref);
    if (rc != DX_OK) {
        dx_msg_free(m);
        return rc;
    }
    if (send_kind(server, m, DX_MSG_SYSTEM) != DX_OK) {
        dx_demonitor(ref, true);
        return DX_ENOPROC;
    }
    dx_match mt = {
        .fields = DX_MATCH_REF | DX_MATCH_TAG, .tag = DX_TAG_DOWN, .ref = ref};
    dx_msg *down;
    rc = dx_receive(&mt, timeout_ms, &down);
    if (rc != DX_OK) {
        dx_demonitor(ref, true);
        return rc;
    }
    rc = dx_is_atom(down->term, "noproc") ? DX_ENOPROC : DX_OK;
    dx_msg_free(down);
    return rc;
}
