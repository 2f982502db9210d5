/*
 * server.h — the server behaviour (OTP's gen_server): a process that owns a
 * state and serves synchronous calls, asynchronous casts and other messages
 * through callbacks, plus the client side (dx_call, dx_cast, dx_reply).
 *
 * Call semantics follow gen_server:call: the caller monitors the server for
 * the duration, so a dead server fails the call at once (DX_ENOPROC, or
 * DX_EDOWN if it died while handling it); after a timeout the caller gets
 * DX_ETIMEDOUT and a reply that arrives later is dropped, never delivered.
 */
#ifndef DSPEX_SERVER_H
#define DSPEX_SERVER_H

#include "runtime.h"

/* Identifies a pending call so the server can reply later (deferred reply). */
typedef struct dx_from {
    dx_pid pid;
    dx_ref ref;
} dx_from;

typedef enum dx_srv_ret {
    DX_SRV_REPLY = 0, /* handle_call: *reply is sent to the caller */
    DX_SRV_NOREPLY,   /* no reply now (handle_call: reply later, dx_reply) */
    DX_SRV_STOP,      /* stop the server with *stop_reason (NULL = normal);
                         handle_call may also set *reply, sent before stopping */
} dx_srv_ret;

/* Callbacks. Every callback runs in the server process. The runtime frees
 * the incoming message after the callback returns; a callback keeps a payload
 * by detaching it (dx_msg_take_term / dx_msg_take_ptr). Only init is
 * required: with no handle_call a call stops the server with reason
 * `bad_call` (the caller gets DX_EDOWN); without handle_cast/handle_info
 * those messages are dropped; without terminate the state is not freed. */
typedef struct dx_server_ops {
    const char *name; /* behaviour name, shown by introspection */
    /* Build the state. Return DX_OK to run; any other code fails the start
     * with that code (set *stop_reason to explain; ownership passes). */
    int (*init)(void *arg, void **state, dx_term **stop_reason);
    dx_srv_ret (*handle_call)(void *state, dx_msg *request, dx_from from,
                              dx_msg **reply, dx_term **stop_reason);
    dx_srv_ret (*handle_cast)(void *state, dx_msg *msg, dx_term **stop_reason);
    dx_srv_ret (*handle_info)(void *state, dx_msg *msg, dx_term **stop_reason);
    /* Called when the server stops by returning DX_SRV_STOP, by dx_server_stop,
     * or (if it traps exits) on an exit signal from its parent; it must free
     * the state. Not called when the server is killed or crashes. */
    void (*terminate)(void *state, const dx_term *reason);
} dx_server_ops;

typedef struct dx_server_opts {
    bool link;          /* link to the caller (like start_link) */
    const char *name;   /* register under this name */
    int64_t timeout_ms; /* for init; 0 = 5000, DX_INFINITY = none */
    bool trap_exit;     /* trap exits (so terminate runs on parent exit) */
} dx_server_opts;

/* Start a server and wait for init to finish. On DX_OK *pid (optional) is
 * the running server. If init fails its code is returned (and, if
 * init_reason is non-NULL, its reason; caller frees); DX_EDOWN if it
 * crashed in init; DX_ETIMEDOUT if init took too long (the server is
 * killed). ops must outlive the server. Process (host threads: see
 * dx_wait_exit; servers are started from processes). */
DX_API int dx_server_start(const dx_server_ops *ops, void *arg,
                           const dx_server_opts *opts, dx_pid *pid,
                           dx_term **init_reason);

/* Call a server: send request (ownership taken in every case) and wait for
 * the reply up to timeout_ms (DX_INFINITY = forever). On DX_OK *reply owns
 * the reply. DX_ENOPROC (server not alive), DX_EDOWN (it exited before
 * replying), DX_ETIMEDOUT, DX_EDEADLK (calling yourself). Process. */
DX_API int dx_call(dx_pid server, dx_msg *request, int64_t timeout_ms,
                   dx_msg **reply);
/* dx_call to a registered name (DX_ENOPROC if none). Process. */
DX_API int dx_call_named(const char *name, dx_msg *request, int64_t timeout_ms,
                         dx_msg **reply);
/* Send a cast (ownership taken in every case). Any thread. */
DX_API int dx_cast(dx_pid server, dx_msg *msg);
/* Reply to a call (ownership of reply taken). DX_ENOPROC if the caller is
 * gone; a caller that already timed out drops it silently. Any thread. */
DX_API int dx_reply(dx_from from, dx_msg *reply);

/* Stop a server like gen_server:stop: it runs terminate with `reason`
 * (ownership taken; NULL = normal) and exits; waits up to timeout_ms.
 * DX_ENOPROC, DX_ETIMEDOUT. Process. */
DX_API int dx_server_stop(dx_pid server, dx_term *reason, int64_t timeout_ms);

#endif
