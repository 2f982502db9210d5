/*
 * test_dist.c — distribution across OS processes: a dspex node (this test
 * process) talks to dspex nodes (tests/dist/dist_node.c) and erl nodes
 * (tests/dist/dist_peer.erl) through a private epmd on 127.0.0.1.
 */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "dist_eval_setup.h"
#include "dist_fixture.h"
#include "dspex/dist_eval.h"
#include "dspex/module.h"
#include "dspex/lm.h"
#include "dspex/node.h"
#include "dspex/tool.h"
#include "dspex/runtime.h"
#include "dspex/server.h"
#include "dspex/signature.h"

#define COOKIE "dxtestcookie"

static char self_name[128];
static char peer_name[128];
static char ebin[256];

static void setup(void)
{
    fx_epmd_start();
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);
    fx_name(self_name, sizeof self_name, "dxt");
    fx_name(peer_name, sizeof peer_name, "peer");
    dx_node_opts o = {
        .name = self_name, .cookie = COOKIE, .connect_timeout_ms = 5000};
    /* epmd may still be starting on a loaded machine: retry a while. */
    int rc = DX_ECONNECT;
    for (int i = 0; i < 100 && rc == DX_ECONNECT; i++) {
        rc = dx_node_start(&o);
        if (rc == DX_ECONNECT)
            fx_sleep_ms(50);
    }
    cr_assert_eq(rc, DX_OK, "node start: %s", dx_strerror(rc));
}

static void teardown(void)
{
    fx_kill_all();
    dx_node_stop();
    dx_runtime_stop();
    fx_epmd_stop();
}

static void spawn_dspex_node(fx_child *c, const char *name, const char *cookie,
                             const char *mode)
{
    const char *bin = getenv("DX_DIST_NODE_BIN");
    cr_assert_not_null(bin);
    char *argv[] = {(char *)bin, (char *)name, (char *)cookie, (char *)mode,
                    NULL};
    cr_assert_eq(fx_spawn(c, argv), 0);
    cr_assert_eq(fx_expect(c, "READY", NULL, 0, 10000), 0,
                 "dspex node did not start");
}

static void compile_peer(void)
{
    const char *src = getenv("DX_DIST_SRC");
    cr_assert_not_null(src);
    snprintf(ebin, sizeof ebin, "/tmp/dx_dist_ebin_%d", (int)getpid());
    char *mk[] = {"mkdir", "-p", ebin, NULL};
    cr_assert_eq(fx_run(mk), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/dist_peer.erl", src);
    char *erlc[] = {"erlc", "-o", ebin, path, NULL};
    cr_assert_eq(fx_run(erlc), 0, "erlc failed");
}

static void remove_ebin(void)
{
    char *rm[] = {"rm", "-rf", ebin, NULL};
    fx_run(rm);
}

static void spawn_erl(fx_child *c, const char *name, const char *mode,
                      const char *arg)
{
    char *argv[] = {"erl",       "-name",     (char *)name, "-setcookie",
                    COOKIE,      "-noshell",  "-pa",        ebin,
                    "-run",      "dist_peer", "main",       (char *)mode,
                    (char *)arg, NULL};
    cr_assert_eq(fx_spawn(c, argv), 0);
}

/* ---- running test bodies in a process ---- */

typedef void (*body_fn)(void);
static _Atomic int body_done;
static char body_fail[512];

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            snprintf(body_fail, sizeof body_fail, __VA_ARGS__);                \
            atomic_store(&body_done, 2);                                       \
            return;                                                            \
        }                                                                      \
    } while (0)

static void body_proc(void *arg)
{
    body_fn fn = (body_fn)(uintptr_t)arg;
    fn();
    int expected = 0;
    atomic_compare_exchange_strong(&body_done, &expected, 1);
}

static void run_body(body_fn fn, int timeout_ms)
{
    atomic_store(&body_done, 0);
    body_fail[0] = '\0';
    cr_assert_eq(dx_spawn(body_proc, (void *)(uintptr_t)fn, NULL), DX_OK);
    for (int w = 0; atomic_load(&body_done) == 0 && w < timeout_ms; w += 10)
        fx_sleep_ms(10);
    cr_assert_eq(atomic_load(&body_done), 1, "%s",
                 body_fail[0] ? body_fail : "timed out");
}

static dx_msg *recv_match(const char *head, int64_t timeout)
{
    int64_t deadline = dx_now_ms() + timeout;
    for (;;) {
        int64_t left = deadline - dx_now_ms();
        if (left < 0)
            return NULL;
        dx_msg *m;
        if (dx_receive_any(left, &m) != DX_OK)
            return NULL;
        if (head == NULL || dx_is_atom(dx_term_at(m->term, 0), head) ||
            dx_is_atom(m->term, head))
            return m;
        dx_msg_free(m);
    }
}

/* ---- tests ---- */

TestSuite(dist, .init = setup, .fini = teardown, .timeout = 60);

static char other_name[128];

Test(dist, wrong_cookie_is_refused)
{
    fx_child c;
    fx_name(other_name, sizeof other_name, "bad");
    spawn_dspex_node(&c, other_name, "not-the-cookie", "idle");
    cr_expect_eq(dx_node_connect(other_name, 5000), DX_ECONNECT);
    char **list;
    size_t n;
    cr_assert_eq(dx_node_list(&list, &n), DX_OK);
    cr_expect_eq(n, 0);
    dx_free(list);
    dx_node_stats st;
    dx_node_stats_get(&st);
    cr_expect_geq(st.refused, 1);
    fx_stop(&c);
}

Test(dist, right_cookie_connects_and_lists_the_node)
{
    fx_child c;
    spawn_dspex_node(&c, peer_name, COOKIE, "idle");
    cr_assert_eq(dx_node_connect(peer_name, 5000), DX_OK);
    char **list;
    size_t n;
    cr_assert_eq(dx_node_list(&list, &n), DX_OK);
    cr_assert_eq(n, 1);
    cr_expect_str_eq(list[0], peer_name);
    dx_free(list);
    fx_stop(&c);
}

Test(dist, connecting_to_a_node_that_does_not_exist_fails)
{
    cr_expect_eq(dx_node_connect("nobody@127.0.0.1", 5000), DX_ECONNECT);
    cr_expect_eq(dx_node_connect("no-at-sign", 100), DX_EINVAL);
}

#define N_MSGS 100000

static void exchange_body(void)
{
    dx_pid sink = dx_node_name_pid(peer_name, "sink");
    CHECK(sink.id != 0, "no name pid");
    for (int i = 0; i < N_MSGS; i++) {
        int rc = dx_send_term(sink, DX_TAG_TERM,
                              dx_tuple(2, dx_atom("seq"), dx_int(i)));
        CHECK(rc == DX_OK, "send %d: %s", i, dx_strerror(rc));
    }
    dx_send_term(
        sink, DX_TAG_TERM,
        dx_tuple(3, dx_atom("done"), dx_pid_term(dx_self()), dx_int(N_MSGS)));
    dx_msg *m = recv_match("count", 30000);
    CHECK(m != NULL, "no count reply");
    int64_t n = 0, sum = 0;
    dx_int_value(dx_term_at(m->term, 1), &n);
    dx_int_value(dx_term_at(m->term, 2), &sum);
    CHECK(n == N_MSGS, "peer got %lld of %d", (long long)n, N_MSGS);
    CHECK(sum == (int64_t)N_MSGS * (N_MSGS - 1) / 2, "sum %lld",
          (long long)sum);
    CHECK(dx_is_atom(dx_term_at(m->term, 3), "true"), "out of order");
    CHECK(dx_node_is_remote(m->from) || m->from.id == 0, "from");
    dx_msg_free(m);
    /* And back: the peer sends N_MSGS to us. */
    int64_t got = 0, last = -1;
    for (;;) {
        m = recv_match(NULL, 30000);
        CHECK(m != NULL, "stalled after %lld messages", (long long)got);
        if (dx_is_atom(dx_term_at(m->term, 0), "sent")) {
            dx_msg_free(m);
            break;
        }
        int64_t i = -1;
        dx_int_value(dx_term_at(m->term, 1), &i);
        CHECK(i == last + 1, "got %lld after %lld", (long long)i,
              (long long)last);
        last = i;
        got++;
        dx_msg_free(m);
    }
    CHECK(got == N_MSGS, "received %lld of %d", (long long)got, N_MSGS);
}

Test(dist, two_dspex_nodes_exchange_100000_messages_both_ways_none_lost,
     .timeout = 120)
{
    fx_child c;
    spawn_dspex_node(&c, peer_name, COOKIE, "sink");
    run_body(exchange_body, 100000);
    dx_node_stats st;
    dx_node_stats_get(&st);
    cr_expect_geq(st.msgs_out, N_MSGS);
    cr_expect_geq(st.msgs_in, N_MSGS);
    cr_expect_eq(st.dropped, 0);
    fx_stop(&c);
}

/* Ping the peer's sink and wait for its pong (NULL: none in 10 s); also
 * a round trip, so what was sent before has reached the peer. */
static dx_msg *ping_sink(dx_pid sink)
{
    dx_send_term(sink, DX_TAG_TERM,
                 dx_tuple(2, dx_atom("ping"), dx_pid_term(dx_self())));
    return recv_match("pong", 10000);
}

/* A DOWN for a monitor of a process on a node killed with -9. */
static fx_child killed;

static void monitor_body(void)
{
    CHECK(dx_node_monitor_nodes(true) == DX_OK, "monitor_nodes");
    dx_pid sink = dx_node_name_pid(peer_name, "sink");
    dx_msg *m = ping_sink(sink);
    CHECK(m != NULL, "no pong");
    dx_pid remote;
    CHECK(dx_pid_value(dx_term_at(m->term, 1), &remote), "pong without pid");
    CHECK(dx_node_is_remote(remote), "pid is not remote");
    char where[128];
    CHECK(dx_node_of(remote, where, sizeof where) == DX_OK &&
              strcmp(where, peer_name) == 0,
          "pid's node");
    dx_msg_free(m);
    dx_ref ref;
    CHECK(dx_monitor(remote, &ref) == DX_OK, "monitor");
    dx_ref ref2;
    dx_pid named = dx_node_name_pid(peer_name, "sink");
    CHECK(dx_monitor(named, &ref2) == DX_OK, "monitor by name");
    /* A round trip, so the monitors reached the peer before the kill. */
    m = ping_sink(sink);
    CHECK(m != NULL, "no second pong");
    dx_msg_free(m);
    kill(killed.pid, SIGKILL);
    int downs = 0;
    bool nodedown = false;
    int64_t deadline = dx_now_ms() + 10000;
    while ((downs < 2 || !nodedown) && dx_now_ms() < deadline) {
        if (dx_receive_any(deadline - dx_now_ms(), &m) != DX_OK)
            break;
        if (m->tag == DX_TAG_DOWN) {
            CHECK(dx_is_atom(m->term, "noconnection"), "DOWN reason");
            CHECK(dx_ref_eq(m->ref, ref) || dx_ref_eq(m->ref, ref2), "ref");
            downs++;
        } else if (dx_is_atom(dx_term_at(m->term, 0), "nodedown")) {
            CHECK(strcmp(dx_atom_name(dx_term_at(m->term, 1)), peer_name) == 0,
                  "nodedown names the node");
            nodedown = true;
        }
        dx_msg_free(m);
    }
    CHECK(downs == 2, "%d DOWN messages", downs);
    CHECK(nodedown, "no nodedown");
}

Test(dist, monitor_of_a_remote_process_fires_noconnection_on_kill_9)
{
    spawn_dspex_node(&killed, peer_name, COOKIE, "sink");
    run_body(monitor_body, 40000);
    fx_kill(&killed, SIGKILL);
}

/* A peer killed while this node is writing to it: the connection's
 * writes fail (EPIPE) and the node goes down, but this OS process, which
 * does not ignore SIGPIPE (the test runner does not), lives on. */
static void flood_kill_body(void)
{
    CHECK(dx_node_monitor_nodes(true) == DX_OK, "monitor_nodes");
    dx_pid sink = dx_node_name_pid(peer_name, "sink");
    dx_msg *m = ping_sink(sink);
    CHECK(m != NULL, "no pong");
    dx_msg_free(m);
    static char blob[4096];
    memset(blob, 'x', sizeof blob);
    bool killed_it = false, nodedown = false;
    int64_t start = dx_now_ms(), deadline = start + 20000;
    while (!nodedown && dx_now_ms() < deadline) {
        for (int i = 0; i < 64; i++)
            dx_send_term(
                sink, DX_TAG_TERM,
                dx_tuple(2, dx_atom("blob"), dx_binary(blob, sizeof blob)));
        if (!killed_it && dx_now_ms() - start >= 100) {
            kill(killed.pid, SIGKILL);
            killed_it = true;
        }
        while (dx_receive_any(0, &m) == DX_OK) {
            nodedown =
                nodedown || dx_is_atom(dx_term_at(m->term, 0), "nodedown");
            dx_msg_free(m);
        }
    }
    CHECK(killed_it, "the peer was not killed");
    CHECK(nodedown, "no nodedown within 20 s");
}

Test(dist, a_peer_killed_while_this_node_writes_to_it_ends_only_the_link,
     .timeout = 60)
{
    for (int round = 0; round < 5; round++) {
        spawn_dspex_node(&killed, peer_name, COOKIE, "sink");
        run_body(flood_kill_body, 40000);
        fx_kill(&killed, SIGKILL);
    }
}

static void monitor_exit_body(void)
{
    dx_pid sink = dx_node_name_pid(peer_name, "sink");
    dx_msg *m = ping_sink(sink);
    CHECK(m != NULL, "no pong");
    dx_pid remote;
    dx_pid_value(dx_term_at(m->term, 1), &remote);
    dx_msg_free(m);
    dx_ref ref;
    CHECK(dx_monitor(remote, &ref) == DX_OK, "monitor");
    dx_send_term(sink, DX_TAG_TERM, dx_atom("stop"));
    CHECK(dx_receive_tag(DX_TAG_DOWN, 10000, &m) == DX_OK, "no DOWN");
    CHECK(dx_ref_eq(m->ref, ref), "ref");
    CHECK(dx_is_atom(m->term, "normal"), "reason");
    dx_msg_free(m);
}

Test(dist, monitor_of_a_remote_process_that_exits_gets_its_reason)
{
    fx_child c;
    spawn_dspex_node(&c, peer_name, COOKIE, "sink");
    run_body(monitor_exit_body, 20000);
    fx_stop(&c);
}

/* ---- BEAM interop ---- */

static dx_term *sample_term(dx_pid self)
{
    dx_term *map = dx_map_new();
    dx_map_put(map, dx_str("question"), dx_str("why?"));
    dx_map_put(map, dx_atom("n"), dx_int(-7));
    return dx_tuple(9, dx_atom("hello"), dx_int(42), dx_int(INT64_C(1) << 62),
                    dx_int(INT64_MIN), dx_float(2.5), dx_binary("\0bin", 4),
                    dx_list(3, dx_int(1), dx_nil(), dx_str("x")), map,
                    dx_tuple(2, dx_pid_term(self), dx_ref_term(dx_make_ref())));
}

static void beam_echo_body(void)
{
    dx_pid echo = dx_node_name_pid(peer_name, "echo");
    dx_term *t = sample_term(dx_self());
    dx_term *copy = dx_term_copy(t);
    dx_send_term(echo, DX_TAG_TERM, dx_tuple(2, dx_pid_term(dx_self()), t));
    dx_msg *m = recv_match("echo", 10000);
    CHECK(m != NULL, "no echo");
    char *s = dx_term_to_string(dx_term_at(m->term, 1));
    bool eq = dx_term_equal(dx_term_at(m->term, 1), copy);
    dx_term_free(copy);
    CHECK(eq, "echo differs: %s", s);
    dx_free(s);
    dx_msg_free(m);
}

static void beam_ready(fx_child *c);

static void beam_weird_body(void)
{
    dx_pid echo = dx_node_name_pid(peer_name, "echo");
    dx_node_stats before;
    dx_node_stats_get(&before);
    dx_send_term(echo, DX_TAG_TERM,
                 dx_tuple(2, dx_pid_term(dx_self()), dx_atom("weird")));
    dx_msg *m = recv_match("echo", 10000);
    CHECK(m != NULL, "no echo");
    /* The first to arrive is the last one sent: the others were dropped. */
    dx_term *want = dx_list(4, dx_int(1), dx_int(INT64_C(1) << 40),
                            dx_int(-(INT64_C(1) << 62)),
                            dx_list(3, dx_int('s'), dx_int('t'), dx_int('r')));
    bool eq = dx_term_equal(dx_term_at(m->term, 1), want);
    char *got = dx_term_to_string(m->term);
    dx_term_free(want);
    dx_msg_free(m);
    CHECK(eq, "got %s", got);
    dx_free(got);
    dx_node_stats after;
    dx_node_stats_get(&after);
    CHECK(after.dropped - before.dropped == 4, "dropped %llu",
          (unsigned long long)(after.dropped - before.dropped));
}

/* Exit signals from BEAM processes into a trapping dspex process. */
static void beam_links_body(void)
{
    dx_trap_exit(true);
    dx_pid echo = dx_node_name_pid(peer_name, "echo");
    dx_send_term(echo, DX_TAG_TERM,
                 dx_tuple(2, dx_pid_term(dx_self()), dx_atom("links")));
    bool unlinked = false, linked = false, told = false, died = false;
    int64_t deadline = dx_now_ms() + 10000;
    while (!(unlinked && linked && told && died)) {
        dx_msg *m;
        int64_t left = deadline - dx_now_ms();
        CHECK(left > 0 && dx_receive_any(left, &m) == DX_OK,
              "missing: unlinked %d linked %d told %d died %d", unlinked,
              linked, told, died);
        if (m->tag == DX_TAG_EXIT) {
            CHECK(!dx_is_atom(m->term, "quiet"),
                  "the exit of a link taken back arrived");
            char *r = dx_term_to_string(m->term);
            told |= strcmp(r, "{told, 1}") == 0 || strcmp(r, "{told,1}") == 0;
            died |= strcmp(r, "{died, 2}") == 0 || strcmp(r, "{died,2}") == 0;
            dx_free(r);
        } else if (dx_is_atom(dx_term_at(m->term, 0), "echo")) {
            unlinked |= dx_is_atom(dx_term_at(m->term, 1), "unlinked");
            linked |= dx_is_atom(dx_term_at(m->term, 1), "linked");
        }
        dx_msg_free(m);
    }
    /* The unlinked process exited (quiet) before it said so: nothing more
     * may come. */
    dx_msg *m;
    CHECK(dx_receive_tag(DX_TAG_EXIT, 300, &m) == DX_ETIMEDOUT,
          "an exit signal after the link was taken back");
}

static dx_pid watcher_pid;

static void linked_child(void *arg)
{
    (void)arg;
    dx_link(watcher_pid);
    dx_exit_self(dx_atom("child_done"));
}

/* Exit signals from dspex processes to a trapping BEAM process: exit/2 and
 * a linked process that ends. */
static void beam_watch_body(void)
{
    dx_pid echo = dx_node_name_pid(peer_name, "echo");
    dx_send_term(echo, DX_TAG_TERM,
                 dx_tuple(2, dx_pid_term(dx_self()), dx_atom("watch")));
    dx_msg *m = recv_match("echo", 10000);
    CHECK(m != NULL, "no watcher");
    CHECK(dx_pid_value(dx_term_at(dx_term_at(m->term, 1), 1), &watcher_pid),
          "watcher pid");
    dx_msg_free(m);
    CHECK(dx_exit(watcher_pid, dx_tuple(1, dx_atom("bye"))) == DX_OK, "exit/2");
    m = recv_match("echo", 10000);
    CHECK(m != NULL, "the watcher saw no exit/2");
    char *s = dx_term_to_string(dx_term_at(m->term, 1));
    CHECK(strstr(s, "exit") && strstr(s, "bye"), "watcher saw %s", s);
    dx_free(s);
    dx_msg_free(m);
    dx_pid child;
    CHECK(dx_spawn(linked_child, NULL, &child) == DX_OK, "spawn");
    m = recv_match("echo", 10000);
    CHECK(m != NULL, "the watcher saw no exit through the link");
    s = dx_term_to_string(dx_term_at(m->term, 1));
    CHECK(strstr(s, "child_done") != NULL, "watcher saw %s", s);
    dx_free(s);
    dx_pid from;
    CHECK(dx_pid_value(dx_term_at(dx_term_at(m->term, 1), 1), &from) &&
              dx_pid_eq(from, child),
          "the exit names the child");
    dx_msg_free(m);
}

Test(dist, exit_signals_cross_to_and_from_beam_processes)
{
    fx_child c;
    beam_ready(&c);
    run_body(beam_links_body, 20000);
    run_body(beam_watch_body, 20000);
    fx_stop(&c);
}

Test(dist, terms_a_dspex_node_cannot_hold_are_dropped_not_misread)
{
    fx_child c;
    beam_ready(&c);
    run_body(beam_weird_body, 20000);
    fx_stop(&c);
    remove_ebin();
}

static void beam_ready(fx_child *c)
{
    compile_peer();
    spawn_erl(c, peer_name, "peer", NULL);
    cr_assert_eq(fx_expect(c, "READY", NULL, 0, 20000), 0, "erl peer");
}

Test(dist, erl_node_echoes_every_term_type_unchanged)
{
    fx_child c;
    beam_ready(&c);
    run_body(beam_echo_body, 20000);
    fx_stop(&c);
    remove_ebin();
}

static void beam_call_body(void)
{
    dx_pid srv = dx_node_name_pid(peer_name, "beam_srv");
    dx_msg *req = dx_msg_new(DX_TAG_TERM);
    req->term = dx_tuple(2, dx_atom("double"), dx_int(21));
    dx_msg *rep;
    int rc = dx_call(srv, req, 10000, &rep);
    CHECK(rc == DX_OK, "call: %s", dx_strerror(rc));
    int64_t v = 0;
    CHECK(dx_is_atom(dx_term_at(rep->term, 0), "ok") &&
              dx_int_value(dx_term_at(rep->term, 1), &v) && v == 42,
          "reply");
    dx_msg_free(rep);
    /* A name nobody holds there. BEAM drops the message; with OTP 25's
     * erl_interface it also exchanges no process monitors with a C-node
     * (docs/distribution.md), so the call ends by its timeout. */
    req = dx_msg_new(DX_TAG_TERM);
    req->term = dx_atom("ping");
    rc = dx_call(dx_node_name_pid(peer_name, "nobody"), req, 500, &rep);
    CHECK(rc == DX_ETIMEDOUT || rc == DX_ENOPROC || rc == DX_EDOWN,
          "call to nobody: %s", dx_strerror(rc));
}

Test(dist, dspex_process_calls_a_beam_gen_server)
{
    fx_child c;
    beam_ready(&c);
    run_body(beam_call_body, 30000);
    fx_stop(&c);
    remove_ebin();
}

/* A gen_server on a BEAM node as an agent's tool: the observation is its
 * reply, and its {error, Text} is an execution error, as with any tool. */
static void beam_tool_body(void)
{
    static const dx_tool_param p[] = {
        {.name = "city", .type = "str", .required = true}};
    dx_pid srv = dx_node_name_pid(peer_name, "beam_srv");
    dx_tool *t = NULL, *bad = NULL;
    dx_diag d = {0};
    CHECK(dx_tool_from_pid("weather", "Weather from BEAM.", p, 1, srv, &t,
                           &d) == DX_OK,
          "tool: %.200s", d.msg);
    CHECK(dx_tool_from_pid("radar", NULL, p, 1, srv, &bad, &d) == DX_OK,
          "tool: %.200s", d.msg);
    cJSON *args = cJSON_Parse("{\"city\": \"Lima\"}");
    char *obs = NULL;
    dx_tool_status st;
    CHECK(dx_tool_call(t, args, &obs, &st) == DX_OK && st == DX_TOOL_OK,
          "call: %.200s", obs ? obs : "(none)");
    CHECK(strcmp(obs, "BEAM says sunny for {\"city\":\"Lima\"}") == 0,
          "observation %.200s", obs);
    dx_free(obs);
    CHECK(dx_tool_call(bad, args, &obs, &st) == DX_OK && st == DX_TOOL_FAILED,
          "bad tool: %.200s", obs ? obs : "(none)");
    CHECK(strcmp(obs, "Execution error in radar: no tool radar") == 0,
          "observation %.200s", obs);
    dx_free(obs);
    cJSON_Delete(args);
    dx_tool_unref(t);
    dx_tool_unref(bad);
}

Test(dist, a_beam_gen_server_is_an_agents_tool)
{
    fx_child c;
    beam_ready(&c);
    run_body(beam_tool_body, 30000);
    fx_stop(&c);
    remove_ebin();
}

/* The qa_agent: a server answering {predict, #{<<"question">> => Q}} with
 * {ok, #{<<"answer">> => A}} from a Predict program on the sim model. */
static dx_module *qa_program;

static int qa_init(void *arg, void **state, dx_term **reason)
{
    (void)arg;
    (void)reason;
    *state = NULL;
    return DX_OK;
}

static dx_srv_ret qa_call(void *state, dx_msg *req, dx_from from,
                          dx_msg **reply, dx_term **reason)
{
    (void)state;
    (void)from;
    (void)reason;
    dx_term *out = NULL;
    const dx_term *t = req->term;
    const dx_term *q = dx_map_get_str(dx_term_at(t, 1), "question");
    const char *qs = q ? dx_binary_data(q, NULL) : NULL;
    if (!dx_is_atom(dx_term_at(t, 0), "predict") || qs == NULL) {
        out = dx_tuple(2, dx_atom("error"), dx_atom("bad_request"));
    } else {
        dx_example *in = dx_example_new();
        dx_example_set_str(in, "question", qs);
        dx_prediction *p = NULL;
        dx_call_opts co = {.lm_name = "lm"};
        int rc = dx_module_call(qa_program, in, &co, &p, NULL, NULL);
        dx_example_free(in);
        if (rc == DX_OK) {
            dx_term *m = dx_map_new();
            const char *a = dx_prediction_get_str(p, "answer", "");
            dx_map_put(m, dx_str("answer"), dx_str(a));
            out = dx_tuple(2, dx_atom("ok"), m);
        } else {
            out = dx_tuple(2, dx_atom("error"), dx_atom(dx_err_name(rc)));
        }
        dx_prediction_free(p);
    }
    *reply = dx_msg_new(DX_TAG_TERM);
    (*reply)->term = out;
    return DX_SRV_REPLY;
}

static const dx_server_ops qa_ops = {
    .name = "qa_agent", .init = qa_init, .handle_call = qa_call};

static void start_agent_body(void)
{
    dx_lm_client_opts o = {.primary = {"sim/base", NULL, NULL}};
    int rc = dx_lm_client_start(&o, &(dx_server_opts){.name = "lm"}, NULL);
    CHECK(rc == DX_OK, "lm client: %s", dx_strerror(rc));
    dx_signature *sig;
    CHECK(dx_signature_parse("question -> answer", NULL, NULL, 0, &sig, NULL) ==
              DX_OK,
          "signature");
    qa_program = dx_predict_new(sig, NULL);
    dx_signature_unref(sig);
    CHECK(qa_program != NULL, "predict");
    rc = dx_server_start(&qa_ops, NULL, &(dx_server_opts){.name = "qa_agent"},
                         NULL, NULL);
    CHECK(rc == DX_OK, "agent: %s", dx_strerror(rc));
}

static void stop_agent_body(void)
{
    CHECK(dx_server_stop(dx_whereis("qa_agent"), NULL, 5000) == DX_OK,
          "stop agent");
    CHECK(dx_server_stop(dx_whereis("lm"), NULL, 5000) == DX_OK, "stop lm");
}

Test(dist, erl_gen_server_call_gets_the_answer_of_a_dspex_program)
{
    run_body(start_agent_body, 10000);
    compile_peer();
    fx_child c;
    spawn_erl(&c, peer_name, "call", self_name);
    char line[1024];
    cr_assert_eq(fx_expect(&c, "RESULT1", line, sizeof line, 30000), 0);
    cr_expect(strstr(line, "{ok,#{<<\"answer\">> => <<\"") != NULL, "%s", line);
    cr_assert_eq(fx_expect(&c, "RESULT2", line, sizeof line, 30000), 0);
    cr_expect_str_eq(line, "RESULT2 {error,bad_request}");
    cr_assert_eq(fx_expect(&c, "RESULT3", line, sizeof line, 30000), 0);
    cr_expect_str_eq(line, "RESULT3 'EXIT'");
    fx_stop(&c);
    remove_ebin();
    run_body(stop_agent_body, 10000);
    dx_module_free(qa_program);
}

/* ---- dspex to dspex: calls, casts, tags, links ---- */

static void dspex_call_body(void)
{
    dx_pid calc = dx_node_name_pid(peer_name, "calc");
    dx_msg *req = dx_msg_new(7);
    req->term = dx_int(21);
    dx_msg *rep;
    int rc = dx_call(calc, req, 10000, &rep);
    CHECK(rc == DX_OK, "call: %s", dx_strerror(rc));
    int64_t v = 0;
    CHECK(rep->kind == DX_MSG_REPLY && rep->tag == 8 &&
              dx_int_value(rep->term, &v) && v == 42,
          "reply tag %lld", (long long)rep->tag);
    dx_msg_free(rep);
    /* A cast with a tag and a term, then a call that reads it back. */
    dx_msg *c = dx_msg_new(3);
    c->term = dx_tuple(2, dx_atom("set"), dx_str("v"));
    CHECK(dx_cast(calc, c) == DX_OK, "cast");
    req = dx_msg_new(10);
    rc = dx_call(calc, req, 10000, &rep);
    CHECK(rc == DX_OK && rep->tag == 10, "read back: %s", dx_strerror(rc));
    dx_term *want = dx_tuple(2, dx_atom("set"), dx_str("v"));
    bool eq = dx_term_equal(rep->term, want);
    dx_term_free(want);
    dx_msg_free(rep);
    CHECK(eq, "cast term differs");
    /* Opaque pointers cannot cross. */
    CHECK(dx_send_ptr(calc, 1, dx_malloc(8), dx_free) == DX_ENOTSUP, "ptr");
    /* The server dies handling the call: DX_EDOWN at once (monitors work
     * between dspex nodes). */
    req = dx_msg_new(9);
    int64_t t0 = dx_now_ms();
    rc = dx_call(calc, req, 20000, &rep);
    CHECK(rc == DX_EDOWN, "crashing call: %s", dx_strerror(rc));
    CHECK(dx_now_ms() - t0 < 15000, "EDOWN came only with the timeout");
    /* Now nobody is registered as calc there: DX_ENOPROC. */
    req = dx_msg_new(7);
    req->term = dx_int(1);
    rc = dx_call(calc, req, 20000, &rep);
    CHECK(rc == DX_ENOPROC, "call to gone server: %s", dx_strerror(rc));
}

Test(dist, dspex_calls_and_casts_a_server_on_another_dspex_node)
{
    fx_child c;
    spawn_dspex_node(&c, peer_name, COOKIE, "sink");
    run_body(dspex_call_body, 60000);
    fx_stop(&c);
}

static void link_body(void)
{
    CHECK(dx_node_monitor_nodes(true) == DX_OK, "monitor_nodes");
    dx_trap_exit(true);
    dx_pid sink = dx_node_name_pid(peer_name, "sink");
    dx_send_term(sink, DX_TAG_TERM,
                 dx_tuple(2, dx_atom("ping"), dx_pid_term(dx_self())));
    dx_msg *m = recv_match("nodeup", 10000);
    CHECK(m != NULL, "no nodeup");
    CHECK(strcmp(dx_atom_name(dx_term_at(m->term, 1)), peer_name) == 0,
          "nodeup names the node");
    dx_msg_free(m);
    m = recv_match("pong", 10000);
    CHECK(m != NULL, "no pong");
    dx_pid remote;
    dx_pid_value(dx_term_at(m->term, 1), &remote);
    dx_msg_free(m);
    CHECK(dx_link(remote) == DX_OK, "link");
    /* Round trip so the link is in place before the kill. */
    m = ping_sink(sink);
    CHECK(m != NULL, "no second pong");
    dx_msg_free(m);
    kill(killed.pid, SIGKILL);
    CHECK(dx_receive_tag(DX_TAG_EXIT, 10000, &m) == DX_OK, "no exit signal");
    CHECK(dx_pid_eq(m->from, remote), "exit from another pid");
    CHECK(dx_is_atom(m->term, "noconnection"), "exit reason");
    dx_msg_free(m);
}

Test(dist, link_to_a_remote_process_delivers_noconnection_on_kill_9)
{
    spawn_dspex_node(&killed, peer_name, COOKIE, "sink");
    run_body(link_body, 40000);
    fx_kill(&killed, SIGKILL);
}

/* ---- distributed Evaluate ---- */

static dx_dist_eval_result *dres;
static int dres_rc;
static dx_eval_result *local_res;

static void coordinator_body(void)
{
    dx_dist_eval_opts o = {
        .shard_size = 4, .min_workers = 3, .timeout_ms = 60000};
    dres_rc = dx_dist_evaluate(DIST_EVAL_N, &o, &dres);
}

static void local_eval_body(void)
{
    dx_module *prog = NULL;
    dx_dataset *ds = NULL;
    int rc = dist_eval_setup(&prog, &ds);
    CHECK(rc == DX_OK, "setup: %s", dx_strerror(rc));
    dx_eval_opts eo = dist_eval_opts();
    rc = dx_evaluate(prog, ds, &eo, &local_res, NULL);
    dx_module_free(prog);
    dx_dataset_free(ds);
    dx_server_stop(dx_whereis("lm"), NULL, 5000);
    CHECK(rc == DX_OK, "local evaluate: %s", dx_strerror(rc));
}

static void cancelled_coordinator_body(void)
{
    dx_dist_eval_opts o = {
        .shard_size = 4, .min_workers = 2, .timeout_ms = 60000};
    dres_rc = dx_dist_evaluate(DIST_EVAL_N, &o, &dres);
}

Test(dist, a_cancelled_distributed_evaluation_ends_at_once_on_every_node,
     .timeout = 120)
{
    atomic_store(&body_done, 0);
    body_fail[0] = '\0';
    cr_assert_eq(dx_spawn(body_proc,
                          (void *)(uintptr_t)cancelled_coordinator_body, NULL),
                 DX_OK);
    for (int w = 0; dx_whereis("dx_dist_eval").id == 0 && w < 5000; w += 5)
        fx_sleep_ms(5);
    cr_assert_neq(dx_whereis("dx_dist_eval").id, 0);
    /* Two workers whose LM answers in a minute: each holds a shard. */
    fx_child ws[2];
    char names[2][128], line[256];
    const char *alive[2] = {"wha", "whb"};
    for (int i = 0; i < 2; i++) {
        fx_name(names[i], sizeof names[i], alive[i]);
        const char *bin = getenv("DX_DIST_NODE_BIN");
        char *argv[] = {(char *)bin, names[i], COOKIE, "worker",
                        self_name,   "hang",   NULL};
        cr_assert_eq(fx_spawn(&ws[i], argv), 0);
    }
    for (int i = 0; i < 2; i++)
        cr_assert_eq(fx_expect(&ws[i], "SHARD", line, sizeof line, 20000), 0,
                     "worker %d took no shard", i);
    dx_evaluate_cancel_all();
    for (int w = 0; atomic_load(&body_done) == 0 && w < 10000; w += 10)
        fx_sleep_ms(10);
    cr_assert_eq(atomic_load(&body_done), 1,
                 "the coordinator did not stop within 10 s");
    cr_assert_eq(dres_rc, DX_ECANCELED, "%s", dx_strerror(dres_rc));
    cr_assert_not_null(dres, "what was scored comes back");
    cr_expect_eq(dres->n_done, 0);
    dx_dist_eval_result_free(dres);
    /* They dropped their shards and heard "done", long before the LM's
     * minute is up. */
    for (int i = 0; i < 2; i++) {
        cr_expect_eq(fx_expect(&ws[i], "WORKER-DONE", line, sizeof line, 10000),
                     0, "worker %d still busy with its shard", i);
        cr_expect(strstr(line, " OK") != NULL, "%s", line);
        fx_stop(&ws[i]);
    }
}

/* An earlier run that scored examples 0..19, 5 with an error. */
static dx_dist_eval_result *earlier_run(void)
{
    dx_dist_eval_result *r = dx_calloc(1, sizeof *r);
    cr_assert_not_null(r);
    r->n = DIST_EVAL_N;
    r->scores = dx_calloc(DIST_EVAL_N, sizeof *r->scores);
    r->errors = dx_calloc(DIST_EVAL_N, sizeof *r->errors);
    r->done = dx_calloc(DIST_EVAL_N, sizeof *r->done);
    cr_assert(r->scores && r->errors && r->done);
    for (size_t i = 0; i < 20; i++) {
        r->done[i] = true;
        r->scores[i] = 0.5; /* no exact match scores that: not run again */
    }
    r->errors[5] = DX_ETIMEDOUT;
    r->scores[5] = 0;
    return r;
}

static dx_dist_eval_result *resume_from;
static int results_seen[DIST_EVAL_N];

static void note_result(size_t index, double score, int error, void *ud)
{
    (void)score;
    (void)error;
    (void)ud;
    if (index < DIST_EVAL_N)
        results_seen[index]++;
}

static void resumed_coordinator_body(void)
{
    dx_dist_eval_opts o = {.shard_size = 4,
                           .min_workers = 1,
                           .timeout_ms = 60000,
                           .on_result = note_result,
                           .resume = resume_from};
    dres_rc = dx_dist_evaluate(DIST_EVAL_N, &o, &dres);
}

/* A resumed run hands out only the examples the earlier one did not score
 * (its failed one included), in shards that hold no scored example; each
 * new score reaches on_result once as it arrives. */
Test(dist, a_resumed_distributed_evaluation_runs_only_what_was_not_scored,
     .timeout = 120)
{
    resume_from = earlier_run();
    memset(results_seen, 0, sizeof results_seen);
    atomic_store(&body_done, 0);
    body_fail[0] = '\0';
    cr_assert_eq(
        dx_spawn(body_proc, (void *)(uintptr_t)resumed_coordinator_body, NULL),
        DX_OK);
    for (int w = 0; dx_whereis("dx_dist_eval").id == 0 && w < 5000; w += 5)
        fx_sleep_ms(5);
    cr_assert_neq(dx_whereis("dx_dist_eval").id, 0);
    fx_child wk;
    char name[128], line[256];
    fx_name(name, sizeof name, "wres");
    const char *bin = getenv("DX_DIST_NODE_BIN");
    char *argv[] = {(char *)bin, name, COOKIE, "worker", self_name, NULL};
    cr_assert_eq(fx_spawn(&wk, argv), 0);
    /* The first shard is the failed example alone. */
    cr_expect_eq(fx_expect(&wk, "SHARD", line, sizeof line, 20000), 0);
    cr_expect_str_eq(line, "SHARD 5 6", "%s", line);
    for (int w = 0; atomic_load(&body_done) == 0 && w < 90000; w += 10)
        fx_sleep_ms(10);
    cr_assert_eq(atomic_load(&body_done), 1, "coordinator did not finish");
    cr_assert_eq(dres_rc, DX_OK, "%s", dx_strerror(dres_rc));
    cr_expect_eq(dres->n_done, DIST_EVAL_N);
    cr_expect_eq(dres->n_resumed, 19);
    cr_expect_eq(dres->shards, 6, "{5} and 20..39 in fours");
    for (size_t i = 0; i < DIST_EVAL_N; i++) {
        bool resumed = i < 20 && i != 5;
        cr_expect(dres->done[i], "example %zu", i);
        cr_expect_eq(results_seen[i], resumed ? 0 : 1, "example %zu", i);
        if (resumed)
            cr_expect_float_eq(dres->scores[i], 0.5, 1e-12, "example %zu", i);
        else
            cr_expect(dres->scores[i] == 0 || dres->scores[i] == 1,
                      "example %zu scored %g", i, dres->scores[i]);
    }
    cr_expect_eq(fx_expect(&wk, "WORKER-DONE", line, sizeof line, 20000), 0);
    cr_expect(strstr(line, "WORKER-DONE 6 OK") != NULL, "%s", line);
    dx_dist_eval_result_free(dres);
    dres = NULL;
    fx_stop(&wk);

    /* Nothing left to run: done at once, no shard cut. */
    atomic_store(&body_done, 0);
    dx_dist_eval_result *all = earlier_run();
    for (size_t i = 0; i < DIST_EVAL_N; i++)
        all->done[i] = true;
    all->errors[5] = DX_OK;
    dx_dist_eval_result_free(resume_from);
    resume_from = all;
    memset(results_seen, 0, sizeof results_seen);
    run_body(resumed_coordinator_body, 10000);
    cr_assert_eq(dres_rc, DX_OK, "%s", dx_strerror(dres_rc));
    cr_expect_eq(dres->n_done, DIST_EVAL_N);
    cr_expect_eq(dres->shards, 0);
    cr_expect_eq(dres->n_resumed, DIST_EVAL_N);
    dx_dist_eval_result_free(dres);
    dres = NULL;

    /* A resume of another dataset's size is refused. */
    resume_from->n = DIST_EVAL_N - 1;
    run_body(resumed_coordinator_body, 10000);
    cr_expect_eq(dres_rc, DX_EINVAL);
    cr_expect_null(dres);
    resume_from->n = DIST_EVAL_N;
    dx_dist_eval_result_free(resume_from);
    resume_from = NULL;
}

Test(dist,
     evaluate_over_3_worker_nodes_with_one_killed_scores_each_example_once,
     .timeout = 120)
{
    /* The reference: the same program and dataset on this node alone. */
    run_body(local_eval_body, 60000);

    atomic_store(&body_done, 0);
    body_fail[0] = '\0';
    cr_assert_eq(dx_spawn(body_proc, (void *)(uintptr_t)coordinator_body, NULL),
                 DX_OK);
    for (int w = 0; dx_whereis("dx_dist_eval").id == 0 && w < 5000; w += 5)
        fx_sleep_ms(5);
    cr_assert_neq(dx_whereis("dx_dist_eval").id, 0);

    fx_child ws[3];
    char names[3][128];
    const char *alive[3] = {"wa", "wb", "wdie"};
    for (int i = 0; i < 3; i++) {
        fx_name(names[i], sizeof names[i], alive[i]);
        const char *bin = getenv("DX_DIST_NODE_BIN");
        char *argv[] = {(char *)bin, names[i],  COOKIE,
                        "worker",    self_name, i == 2 ? "die" : NULL,
                        NULL};
        cr_assert_eq(fx_spawn(&ws[i], argv), 0);
    }
    for (int w = 0; atomic_load(&body_done) == 0 && w < 90000; w += 10)
        fx_sleep_ms(10);
    cr_assert_eq(atomic_load(&body_done), 1, "coordinator did not finish");
    cr_assert_eq(dres_rc, DX_OK, "%s", dx_strerror(dres_rc));
    cr_assert_not_null(dres);
    cr_expect_eq(dres->n, DIST_EVAL_N);
    cr_expect_eq(dres->n_done, DIST_EVAL_N);
    cr_expect_eq(dres->workers, 3);
    cr_expect_geq(dres->requeued, 1,
                  "the killed worker's shard was not "
                  "handed out again");
    for (size_t i = 0; i < DIST_EVAL_N; i++) {
        cr_expect(dres->done[i], "example %zu not scored", i);
        cr_expect_eq(dres->errors[i], local_res->rows[i].error, "example %zu",
                     i);
        cr_expect_float_eq(dres->scores[i], local_res->rows[i].score, 1e-9,
                           "example %zu", i);
    }
    cr_expect_float_eq(dres->score, local_res->score, 1e-9);
    /* The two survivors finished cleanly. */
    char line[256];
    for (int i = 0; i < 2; i++) {
        cr_expect_eq(fx_expect(&ws[i], "WORKER-DONE", line, sizeof line, 20000),
                     0);
        cr_expect(strstr(line, " OK") != NULL, "%s", line);
    }
    dx_dist_eval_result_free(dres);
    dx_eval_result_free(local_res);
    for (int i = 0; i < 3; i++)
        fx_stop(&ws[i]);
}
