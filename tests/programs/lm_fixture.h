/*
 * lm_fixture.h — what the program suites share: the local LM server, the
 * runtime and an LM client registered as "lm" (started before each test,
 * stopped after it, so nothing leaks), and a way to crash a process that
 * works in every build.
 */
#ifndef DSPEX_TEST_LM_FIXTURE_H
#define DSPEX_TEST_LM_FIXTURE_H

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "dspex/alloc.h"
#include "dspex/lm.h"
#include "dspex/lmserver.h"
#include "dspex/runtime.h"
#include "dx_config.h"

static dx_lmserver *srv;
static char url[128];
static _Atomic int fixture_rc;

static inline void host_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* How many processes carry this label now (dx_process_list): the
 * examples, programs or tools a test expects to have ended. */
static inline size_t processes_labeled(const char *label)
{
    dx_proc_info *all = NULL;
    size_t n = 0, found = 0;
    cr_assert_eq(dx_process_list(&all, &n), DX_OK);
    for (size_t i = 0; i < n; i++)
        found += strcmp(all[i].label, label) == 0;
    dx_free(all);
    return found;
}

/* Start the client from a short-lived process (not linked to it, so the
 * client stays), registered as "lm". */
static void fixture_start_client(void *arg)
{
    (void)arg;
    dx_lm_client_opts o = {
        .primary = {"openai-compatible/test-model", url, "sk-test"},
    };
    dx_server_opts so = {.name = "lm"};
    atomic_store(&fixture_rc, dx_lm_client_start(&o, &so, NULL));
}

static void fixture_stop_client(void *arg)
{
    (void)arg;
    dx_pid lm = dx_whereis("lm");
    atomic_store(&fixture_rc,
                 dx_pid_is_none(lm) ? DX_OK : dx_server_stop(lm, NULL, 5000));
}

static void fixture_run(dx_proc_fn fn)
{
    atomic_store(&fixture_rc, 1);
    dx_pid pid;
    cr_assert_eq(dx_spawn(fn, NULL, &pid), DX_OK);
    for (int i = 0; i < 1000 && atomic_load(&fixture_rc) == 1; i++)
        host_sleep_ms(5);
    cr_assert_eq(atomic_load(&fixture_rc), DX_OK, "%s",
                 dx_err_name(atomic_load(&fixture_rc)));
}

static void fixture_setup_on(int schedulers)
{
    cr_assert_eq(dx_lmserver_start(NULL, &srv), DX_OK);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", dx_lmserver_port(srv));
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = schedulers}),
                 DX_OK);
    fixture_run(fixture_start_client);
}

static void fixture_setup(void)
{
    fixture_setup_on(2);
}

/* For suites where every process must share one scheduler. */
__attribute__((unused)) static void fixture_setup_one_scheduler(void)
{
    fixture_setup_on(1);
}

static void fixture_teardown(void)
{
    fixture_run(fixture_stop_client);
    cr_assert_eq(dx_runtime_stop(), DX_OK);
    dx_lmserver_stop_free(srv);
}

static inline uint64_t upstream_requests(void)
{
    dx_lmserver_stats st;
    dx_lmserver_stats_get(srv, &st);
    return st.requests;
}

/* End the calling process abnormally. A write to an unmapped address
 * where the runtime isolates faults (not address 0: a null write is
 * undefined behaviour that UndefinedBehaviorSanitizer stops at before the
 * fault); under ThreadSanitizer (no fault isolation there, see
 * docs/internals/runtime.md) an exit with a non-normal reason, which the
 * caller sees the same way: the process died. */
static volatile uintptr_t crash_address = 64; /* never mapped */

static inline void crash_now(void)
{
#if DX_SANITIZE_THREAD
    dx_exit_self(dx_atom("crashed"));
#else
    *(volatile int *)crash_address = 1;
#endif
}

/* ---- small helpers the suites share ------------------------------------ */

static inline dx_signature *sig(const char *text)
{
    dx_signature *s = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_signature_parse(text, NULL, NULL, 0, &s, &d), DX_OK, "%s",
                 d.msg);
    return s;
}

/* A Predict of the signature text. */
static inline dx_module *predict(const char *text)
{
    dx_signature *s = sig(text);
    dx_module *p = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    return p;
}

static inline dx_example *question(const char *q)
{
    dx_example *ex = dx_example_new();
    cr_assert_eq(dx_example_set_str(ex, "question", q), DX_OK);
    return ex;
}

/* A ReAct step for the server's script. */
static inline void push_step(const char *thought, const char *tool,
                             const char *args)
{
    char buf[1024];
    snprintf(
        buf, sizeof buf,
        "[[ ## next_thought ## ]]\n%s\n\n[[ ## next_tool_name ## ]]\n%s\n\n"
        "[[ ## next_tool_args ## ]]\n%s\n\n[[ ## completed ## ]]",
        thought, tool, args);
    cr_assert_eq(dx_lmserver_push_reply(srv, buf), DX_OK);
}

#endif
