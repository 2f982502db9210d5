/*
 * test_telemetry.c — subscriptions and fan-out: delivery with every field,
 * per-emitter order with emitters on several schedulers, prefix filtering,
 * unsubscribing, dropping dead subscribers, limits and the stopped runtime.
 *
 * Processes never assert (a failed assertion must not unwind a process
 * stack); they record what they saw and the host thread checks it.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "dspex/error.h"
#include "dspex/runtime.h"
#include "dspex/telemetry.h"

#define MAX_SEEN 1024

/* A subscriber: takes up to `want` events, then waits `linger_ms` more for
 * any extra one (which the test counts as a failure of filtering). */
typedef struct collector {
    int want;
    int64_t linger_ms;
    int got;
    dx_telemetry_event seen[MAX_SEEN];
    dx_pid from[MAX_SEEN];
    int extra;
} collector;

static void collect(void *arg)
{
    collector *c = arg;
    while (c->got < c->want) {
        dx_msg *m = NULL;
        if (dx_receive_tag(DX_TELEMETRY_TAG, 5000, &m) != DX_OK)
            return;
        if (c->got < MAX_SEEN) {
            c->seen[c->got] = *(const dx_telemetry_event *)m->ptr;
            c->from[c->got] = m->from;
        }
        c->got++;
        dx_msg_free(m);
    }
    dx_msg *m = NULL;
    while (dx_receive_tag(DX_TELEMETRY_TAG, c->linger_ms, &m) == DX_OK) {
        c->extra++;
        dx_msg_free(m);
    }
}

static dx_pid start_collector(collector *c, int want, int64_t linger_ms)
{
    memset(c, 0, sizeof *c);
    c->want = want;
    c->linger_ms = linger_ms;
    dx_pid pid;
    cr_assert_eq(dx_spawn(collect, c, &pid), DX_OK);
    return pid;
}

static void await(dx_pid pid)
{
    int rc = dx_wait_exit(pid, 20000, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC, "wait_exit: %d", rc);
}

static dx_telemetry_event event(dx_telemetry_kind kind, const char *name)
{
    dx_telemetry_event e = {0};
    dx_telemetry_event_set(&e, kind, name, "gpt-4o-mini");
    return e;
}

static void setup(void)
{
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);
}

static void teardown(void)
{
    cr_assert_eq(dx_runtime_stop(), DX_OK);
    dx_telemetry_reset();
}

TestSuite(telemetry, .init = setup, .fini = teardown, .timeout = 30);

Test(telemetry, subscriber_receives_a_copy_of_every_field)
{
    collector c;
    dx_pid pid = start_collector(&c, 1, 0);
    cr_assert_eq(dx_telemetry_subscribe(pid, "lm."), DX_OK);
    dx_telemetry_event e = event(DX_TELEMETRY_EXCEPTION, "lm.call");
    e.duration_us = 1234;
    e.input_tokens = 10;
    e.output_tokens = 20;
    e.cache_hit = true;
    e.retries = 3;
    e.error_kind = DX_LM_ERR_TIMEOUT;
    e.ref = (dx_ref){42};
    cr_assert_eq(dx_telemetry_emit(&e), DX_OK);
    await(pid);
    cr_assert_eq(c.got, 1);
    const dx_telemetry_event *s = &c.seen[0];
    cr_assert_eq(s->kind, DX_TELEMETRY_EXCEPTION);
    cr_assert_str_eq(s->name, "lm.call");
    cr_assert_str_eq(s->model, "gpt-4o-mini");
    cr_assert_eq(s->duration_us, 1234);
    cr_assert_eq(s->input_tokens, 10);
    cr_assert_eq(s->output_tokens, 20);
    cr_assert(s->cache_hit);
    cr_assert_eq(s->retries, 3);
    cr_assert_eq(s->error_kind, DX_LM_ERR_TIMEOUT);
    cr_assert_eq(s->ref.id, 42);
    /* From a host thread there is no sending process. */
    cr_assert(dx_pid_is_none(c.from[0]));
}

#define EMITTERS 4
#define PER_EMITTER 200

typedef struct emitter {
    int index;
    int scheduler;
} emitter;

static void emit_many(void *arg)
{
    emitter *em = arg;
    dx_proc_info info;
    if (dx_process_info(dx_self(), &info) == DX_OK)
        em->scheduler = info.scheduler;
    for (int i = 0; i < PER_EMITTER; i++) {
        dx_telemetry_event e = event(DX_TELEMETRY_STOP, "lm.call");
        e.retries = em->index;
        e.duration_us = i;
        dx_telemetry_emit(&e);
        if (i % 50 == 0)
            dx_yield();
    }
}

static void *host_emitter(void *arg)
{
    emitter *em = arg;
    for (int i = 0; i < PER_EMITTER; i++) {
        dx_telemetry_event e = event(DX_TELEMETRY_STOP, "lm.call");
        e.retries = em->index;
        e.duration_us = i;
        dx_telemetry_emit(&e);
    }
    return NULL;
}

/* Processes (spread over the two schedulers as the runtime places them)
 * and a host thread emit at once. */
Test(telemetry, events_from_each_emitter_arrive_in_order)
{
    static collector c;
    dx_pid sub = start_collector(&c, (EMITTERS + 1) * PER_EMITTER, 50);
    cr_assert_eq(dx_telemetry_subscribe(sub, ""), DX_OK);
    emitter em[EMITTERS];
    dx_pid pids[EMITTERS];
    for (int i = 0; i < EMITTERS; i++) {
        em[i] = (emitter){.index = i, .scheduler = -1};
        cr_assert_eq(dx_spawn(emit_many, &em[i], &pids[i]), DX_OK);
    }
    emitter host = {.index = EMITTERS, .scheduler = -1};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, host_emitter, &host), 0);
    cr_assert_eq(pthread_join(th, NULL), 0);
    for (int i = 0; i < EMITTERS; i++)
        await(pids[i]);
    await(sub);
    cr_assert_eq(c.got, (EMITTERS + 1) * PER_EMITTER);
    cr_assert_eq(c.extra, 0);
    int64_t next[EMITTERS + 1] = {0};
    for (int k = 0; k < c.got; k++) {
        int who = c.seen[k].retries;
        cr_assert(who >= 0 && who <= EMITTERS);
        dx_pid want = who == EMITTERS ? DX_NOPID : pids[who];
        cr_assert(dx_pid_eq(c.from[k], want));
        cr_assert_eq(c.seen[k].duration_us, next[who], "emitter %d", who);
        next[who]++;
    }
    for (int i = 0; i <= EMITTERS; i++)
        cr_assert_eq(next[i], PER_EMITTER);
    cr_log_info("emitters ran on schedulers %d %d %d %d", em[0].scheduler,
                em[1].scheduler, em[2].scheduler, em[3].scheduler);
}

Test(telemetry, only_names_starting_with_the_prefix_are_delivered)
{
    collector lm, tool, all;
    dx_pid p_lm = start_collector(&lm, 2, 100);
    dx_pid p_tool = start_collector(&tool, 1, 100);
    dx_pid p_all = start_collector(&all, 4, 100);
    cr_assert_eq(dx_telemetry_subscribe(p_lm, "lm."), DX_OK);
    cr_assert_eq(dx_telemetry_subscribe(p_tool, "tool.run"), DX_OK);
    cr_assert_eq(dx_telemetry_subscribe(p_all, ""), DX_OK);
    const char *names[] = {"lm.call", "tool.run", "lm", "lm.embed"};
    for (size_t i = 0; i < 4; i++) {
        dx_telemetry_event e = event(DX_TELEMETRY_START, names[i]);
        cr_assert_eq(dx_telemetry_emit(&e), DX_OK);
    }
    await(p_lm);
    await(p_tool);
    await(p_all);
    cr_assert_eq(lm.got, 2);
    cr_assert_eq(lm.extra, 0);
    cr_assert_str_eq(lm.seen[0].name, "lm.call");
    cr_assert_str_eq(lm.seen[1].name, "lm.embed");
    cr_assert_eq(tool.got, 1);
    cr_assert_eq(tool.extra, 0);
    cr_assert_str_eq(tool.seen[0].name, "tool.run");
    cr_assert_eq(all.got, 4);
    cr_assert_eq(all.extra, 0);
    for (int i = 0; i < 4; i++)
        cr_assert_str_eq(all.seen[i].name, names[i]);
}

Test(telemetry, one_message_per_matching_subscription)
{
    collector c;
    dx_pid pid = start_collector(&c, 2, 100);
    cr_assert_eq(dx_telemetry_subscribe(pid, "lm"), DX_OK);
    cr_assert_eq(dx_telemetry_subscribe(pid, "lm.call"), DX_OK);
    cr_assert_eq(dx_telemetry_subscribe(pid, "lm"), DX_EEXIST);
    dx_telemetry_event e = event(DX_TELEMETRY_START, "lm.call");
    cr_assert_eq(dx_telemetry_emit(&e), DX_OK);
    await(pid);
    cr_assert_eq(c.got, 2);
    cr_assert_eq(c.extra, 0);
}

Test(telemetry, unsubscribed_processes_get_nothing)
{
    collector c;
    dx_pid pid = start_collector(&c, 1, 100);
    cr_assert_eq(dx_telemetry_subscribe(pid, "lm."), DX_OK);
    cr_assert_eq(dx_telemetry_subscribe(pid, "tool."), DX_OK);
    cr_assert_eq(dx_telemetry_subscribe(pid, "x"), DX_OK);
    cr_assert_eq(dx_telemetry_count(), 3);
    cr_assert_eq(dx_telemetry_unsubscribe(pid, "lm."), DX_OK);
    cr_assert_eq(dx_telemetry_unsubscribe(pid, "lm."), DX_ENOENT);
    cr_assert_eq(dx_telemetry_count(), 2);
    dx_telemetry_event e = event(DX_TELEMETRY_START, "lm.call");
    cr_assert_eq(dx_telemetry_emit(&e), DX_OK);
    e = event(DX_TELEMETRY_START, "tool.x");
    cr_assert_eq(dx_telemetry_emit(&e), DX_OK);
    /* NULL removes every remaining subscription of the pid. */
    cr_assert_eq(dx_telemetry_unsubscribe(pid, NULL), DX_OK);
    cr_assert_eq(dx_telemetry_count(), 0);
    cr_assert_eq(dx_telemetry_unsubscribe(pid, NULL), DX_ENOENT);
    e = event(DX_TELEMETRY_START, "tool.y");
    cr_assert_eq(dx_telemetry_emit(&e), DX_OK);
    await(pid);
    cr_assert_eq(c.got, 1);
    cr_assert_str_eq(c.seen[0].name, "tool.x");
    cr_assert_eq(c.extra, 0);
}

Test(telemetry, dead_subscribers_are_dropped)
{
    collector c;
    dx_pid pid = start_collector(&c, 1, 0);
    cr_assert_eq(dx_telemetry_subscribe(pid, ""), DX_OK);
    dx_telemetry_event e = event(DX_TELEMETRY_START, "lm.call");
    cr_assert_eq(dx_telemetry_emit(&e), DX_OK);
    await(pid);
    cr_assert_eq(c.got, 1);
    cr_assert_eq(dx_telemetry_count(), 1);
    cr_assert_eq(dx_telemetry_emit(&e), DX_OK);
    cr_assert_eq(dx_telemetry_count(), 0);
    /* A pid already dead cannot subscribe. */
    cr_assert_eq(dx_telemetry_subscribe(pid, ""), DX_ENOPROC);
    cr_assert_eq(dx_telemetry_count(), 0);
}

Test(telemetry, bad_arguments_and_the_subscriber_limit)
{
    collector c;
    dx_pid pid = start_collector(&c, 1, 100);
    cr_assert_eq(dx_telemetry_subscribe(DX_NOPID, ""), DX_EINVAL);
    cr_assert_eq(dx_telemetry_subscribe(pid, NULL), DX_EINVAL);
    char long_prefix[DX_TELEMETRY_NAME_MAX + 1];
    memset(long_prefix, 'a', sizeof long_prefix - 1);
    long_prefix[sizeof long_prefix - 1] = '\0';
    cr_assert_eq(dx_telemetry_subscribe(pid, long_prefix), DX_EINVAL);
    cr_assert_eq(dx_telemetry_unsubscribe(DX_NOPID, NULL), DX_EINVAL);
    cr_assert_eq(dx_telemetry_emit(NULL), DX_EINVAL);
    char prefix[16];
    for (int i = 0; i < DX_TELEMETRY_MAX_SUBSCRIBERS; i++) {
        snprintf(prefix, sizeof prefix, "p%d", i);
        cr_assert_eq(dx_telemetry_subscribe(pid, prefix), DX_OK);
    }
    cr_assert_eq(dx_telemetry_subscribe(pid, "one.more"), DX_ELIMIT);
    cr_assert_eq(dx_telemetry_count(), DX_TELEMETRY_MAX_SUBSCRIBERS);
    /* Names are truncated to fit, and stay terminated; this one matches
     * only the subscription "p0". */
    long_prefix[0] = 'p';
    long_prefix[1] = '0';
    dx_telemetry_event e = {0};
    dx_telemetry_event_set(&e, DX_TELEMETRY_STOP, long_prefix, NULL);
    cr_assert_eq(strlen(e.name), DX_TELEMETRY_NAME_MAX - 1);
    cr_assert_str_eq(e.model, "");
    cr_assert_eq(dx_telemetry_emit(&e), DX_OK);
    await(pid);
    cr_assert_eq(c.got, 1);
    cr_assert_str_eq(c.seen[0].name, e.name);
    cr_assert_eq(c.extra, 0);
}

Test(telemetry, a_stopped_runtime_is_an_error)
{
    /* The suite's init started the runtime; stop it here on purpose. */
    cr_assert_eq(dx_runtime_stop(), DX_OK);
    dx_telemetry_event e = event(DX_TELEMETRY_START, "lm.call");
    cr_assert_eq(dx_telemetry_emit(&e), DX_ESTATE);
    cr_assert_eq(dx_telemetry_subscribe((dx_pid){1}, ""), DX_ESTATE);
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);
}
