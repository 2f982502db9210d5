/*
 * node.h — distribution: this runtime as a node of an Erlang distribution
 * cluster (an Erlang "C-node" built on Erlang/OTP's erl_interface).
 *
 * A started node has a name (`alive@host`), publishes its listening port
 * to epmd, accepts connections from nodes that know the cookie and connects
 * on demand to the nodes its processes send to. Other nodes may be dspex
 * nodes or BEAM nodes (Erlang, Elixir): both speak the same protocol.
 *
 * Once a node runs, the ordinary kernel calls work across nodes: dx_send,
 * dx_monitor, dx_link, dx_exit, dx_call and dx_reply accept pids of other
 * nodes (they arrive inside messages, or come from dx_node_name_pid for a
 * registered name). Messages that cross nodes are encoded in the Erlang
 * external term format: a message's term travels as itself (so a BEAM
 * process receives exactly that term), a message with a non-zero tag or
 * no term travels as {'$dx', Tag, From} / {'$dx', Tag, From, Term}, calls
 * and casts travel as gen_server's {'$gen_call', {Pid, Tag}, Request} and
 * {'$gen_cast', Msg}. Opaque `ptr` payloads cannot cross (DX_ENOTSUP).
 * Sending to another node is asynchronous: DX_OK means "queued for that
 * node", as in Erlang; DX_ENOPROC means the node is known to be down or
 * unreachable.
 *
 * Failures: a monitor on a process of a node that goes away (connection
 * lost, ticks missed, kill -9) fires with reason `noconnection`; a link
 * delivers an exit signal `noconnection`. dx_node_monitor_nodes delivers
 * {nodeup, Node} and {nodedown, Node} messages.
 *
 * Threads: the node layer runs its own threads (an acceptor and one per
 * connection); schedulers never block on the network. Every function here
 * may be called from any thread unless it says "process". One node per OS
 * process; the runtime must be running while the node runs.
 *
 * See docs/distribution.md for the protocol details, limits and security.
 */
#ifndef DSPEX_NODE_H
#define DSPEX_NODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "export.h"
#include "runtime.h"

typedef struct dx_node_opts {
    /* Full node name "alive@host" (required). The host part is what other
     * nodes use to reach this node's epmd; use an address or a name that
     * resolves on every node of the cluster. */
    const char *name;
    /* Cookie; NULL = the first line of ~/.erlang.cookie. */
    const char *cookie;
    /* Address to listen on; NULL = "127.0.0.1" (a cluster spanning hosts
     * must name a private-network address here). */
    const char *listen_addr;
    /* Port to listen on; 0 = an ephemeral port (epmd tells others). */
    int port;
    /* Net tick time in ms (Erlang's net_ticktime): a connection that stays
     * silent this long is declared down; ticks are sent every quarter of
     * it. 0 = 60000. */
    int64_t ticktime_ms;
    /* Bytes that may wait unsent for one node; a send beyond it fails with
     * DX_ELIMIT. 0 = 64 MiB. */
    size_t queue_limit;
    /* Timeout for connecting to another node (epmd lookup + handshake) in
     * ms; 0 = 5000. */
    int64_t connect_timeout_ms;
} dx_node_opts;

/* Start this node: listen, publish to epmd, start the acceptor. The
 * runtime must be running. DX_ESTATE (runtime not running or a node
 * already started), DX_EINVAL (bad name, no cookie given and none in
 * ~/.erlang.cookie), DX_ECONNECT (epmd not reachable or the name is
 * taken), DX_ESYS (listen failed), DX_ENOMEM. Nothing is left behind on
 * failure. Host thread. */
DX_API int dx_node_start(const dx_node_opts *opts);

/* Stop the node: unpublish, close every connection (monitors of remote
 * processes fire with noconnection), join the node's threads. Call before
 * dx_runtime_stop. DX_ESTATE if no node runs. Host thread. */
DX_API int dx_node_stop(void);

/* Whether a node runs. */
DX_API bool dx_node_alive(void);

/* This node's name ("alive@host"); "nonode@nohost" when none runs. The
 * string lives until dx_node_stop. */
DX_API const char *dx_node_self(void);

/* Connect to `node` now (nodes also connect on first send) and wait up to
 * timeout_ms for the handshake. DX_OK when connected; DX_ECONNECT if the
 * node cannot be reached or refused us (wrong cookie); DX_ETIMEDOUT;
 * DX_ESTATE if no node runs; DX_EINVAL for a malformed name. From a
 * process the wait parks the process, never the scheduler. */
DX_API int dx_node_connect(const char *node, int64_t timeout_ms);

/* Close the connection to `node` (like erlang:disconnect_node): monitors
 * and links to its processes fire with noconnection. DX_ENOENT if not
 * connected. */
DX_API int dx_node_disconnect(const char *node);

/* A pid standing for the process registered as `name` on `node` (like
 * {Name, Node} in Erlang): dx_send, dx_call, dx_cast and dx_monitor on it
 * reach whatever process has that name there when the message arrives.
 * DX_NOPID if no node runs, on a malformed name or when the table of
 * remote names (4096 per node) is full. Asking twice gives the same pid. */
DX_API dx_pid dx_node_name_pid(const char *node, const char *name);

/* The node a pid belongs to, copied into buf (at most cap bytes with the
 * NUL): this node's name for local pids. DX_EINVAL if pid is none or
 * belongs to no known node, DX_ELIMIT if cap is too small. */
DX_API int dx_node_of(dx_pid pid, char *buf, size_t cap);

/* Whether pid belongs to another node. */
DX_API bool dx_node_is_remote(dx_pid pid);

/* Subscribe (on = true) or unsubscribe the calling process to node events:
 * it receives {nodeup, Node} and {nodedown, Node} (tag DX_TAG_TERM) as
 * connections come and go, like net_kernel:monitor_nodes/1. A process
 * that exits is unsubscribed. DX_ENOMEM, DX_ESTATE. Process. */
DX_API int dx_node_monitor_nodes(bool on);

/* Names of the connected nodes: *out is an array of *count strings, all
 * in one dx_malloc block the caller frees with dx_free (NULL when none).
 * DX_ESTATE, DX_ENOMEM. */
DX_API int dx_node_list(char ***out, size_t *count);

/* Counters of this node since start. */
typedef struct dx_node_stats {
    uint64_t msgs_out, msgs_in;   /* messages (not control signals) */
    uint64_t bytes_out, bytes_in; /* on the wire, ticks included */
    uint64_t dropped;             /* undecodable or undeliverable */
    uint64_t refused; /* failed handshakes or connects, both directions */
} dx_node_stats;
DX_API void dx_node_stats_get(dx_node_stats *out);

#endif
