/*
 * test_registry.c — the name registry: register/whereis/unregister from
 * processes and host threads, name taken or process already named
 * (DX_EEXIST), dead pids (DX_ENOPROC), the 255-byte limit, names copied,
 * names freed when their process exits or crashes, and racing registrations.
 */
#include "kernel_test_util.h"

Test(registry, register_whereis_and_unregister_from_a_host_thread,
     .timeout = 30)
{
    kt_start(1);
    dx_pid a;
    cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &a), DX_OK);
    cr_expect(dx_pid_is_none(dx_whereis("kt_reg")));
    cr_expect_eq(dx_register("kt_reg", a), DX_OK);
    cr_expect(dx_pid_eq(dx_whereis("kt_reg"), a));
    dx_proc_info info;
    cr_assert_eq(dx_process_info(a, &info), DX_OK);
    cr_expect_str_eq(info.name, "kt_reg");
    cr_expect_eq(dx_unregister("kt_reg"), DX_OK);
    cr_expect(dx_pid_is_none(dx_whereis("kt_reg")));
    cr_assert_eq(dx_process_info(a, &info), DX_OK);
    cr_expect_str_eq(info.name, "");
    /* Unregistered, the process may take a name again. */
    cr_expect_eq(dx_register("kt_reg2", a), DX_OK);
    cr_expect(dx_pid_eq(dx_whereis("kt_reg2"), a));
    cr_assert_eq(dx_send_tag(a, 1), DX_OK);
    kt_host_join(a);
    kt_stop();
}

Test(registry, unregister_of_an_unknown_name_fails, .timeout = 30)
{
    kt_start(1);
    /* The header does not name the code; any failure will do. */
    cr_expect_neq(dx_unregister("kt_never_registered"), DX_OK);
    kt_stop();
}

Test(registry, a_taken_name_or_an_already_named_process_gives_eexist,
     .timeout = 30)
{
    kt_start(1);
    dx_pid a, b;
    cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &a), DX_OK);
    cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &b), DX_OK);
    cr_assert_eq(dx_register("kt_one", a), DX_OK);
    cr_expect_eq(dx_register("kt_one", b), DX_EEXIST);
    cr_expect_eq(dx_register("kt_one", a), DX_EEXIST);
    cr_expect_eq(dx_register("kt_two", a), DX_EEXIST);
    cr_expect(dx_pid_eq(dx_whereis("kt_one"), a));
    cr_expect(dx_pid_is_none(dx_whereis("kt_two")));
    dx_send_tag(a, 1);
    dx_send_tag(b, 1);
    kt_host_join(a);
    kt_host_join(b);
    kt_stop();
}

Test(registry, registering_a_dead_pid_gives_enoproc, .timeout = 30)
{
    kt_start(1);
    dx_pid a;
    cr_assert_eq(dx_spawn(kt_exit_with_fn, "normal", &a), DX_OK);
    kt_host_join(a);
    cr_expect_eq(dx_register("kt_dead", a), DX_ENOPROC);
    cr_expect(dx_pid_is_none(dx_whereis("kt_dead")));
    kt_stop();
}

Test(registry, names_up_to_255_bytes_are_accepted_and_copied, .timeout = 30)
{
    kt_start(1);
    dx_pid a, b;
    cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &a), DX_OK);
    cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &b), DX_OK);
    char name[300];
    memset(name, 'n', 255);
    name[255] = '\0';
    cr_expect_eq(dx_register(name, a), DX_OK);
    char copy[300];
    memcpy(copy, name, sizeof name);
    name[0] = 'X'; /* the registry holds its own copy */
    cr_expect(dx_pid_eq(dx_whereis(copy), a));
    cr_expect(dx_pid_is_none(dx_whereis(name)));
    memset(name, 'm', 256);
    name[256] = '\0';
    cr_expect_neq(dx_register(name, b), DX_OK, "a 256-byte name was taken");
    cr_expect(dx_pid_is_none(dx_whereis(name)));
    dx_send_tag(a, 1);
    dx_send_tag(b, 1);
    kt_host_join(a);
    kt_host_join(b);
    kt_stop();
}

/* ---- names die with their process -------------------------------------- */

static void register_self_then(void *arg)
{
    KT_CHECK_RC(dx_register("kt_mortal", dx_self()), DX_OK);
    KT_CHECK(dx_pid_eq(dx_whereis("kt_mortal"), dx_self()));
    dx_msg *m = NULL;
    if (dx_receive_any(10000, &m) == DX_OK)
        dx_msg_free(m);
    if (arg != NULL)
        dx_exit_self(dx_atom((const char *)arg));
}

static void names_die_body(void *arg)
{
    (void)arg;
    /* normal exit, exit with boom, killed */
    const char *how[] = {NULL, "boom", NULL};
    for (int i = 0; i < 3; i++) {
        dx_pid p;
        dx_ref r;
        KT_CHECK_RC(
            dx_spawn_monitor(register_self_then, (void *)how[i], &p, &r),
            DX_OK);
        /* Wait until the name is there. */
        int64_t deadline = dx_now_ms() + 10000;
        while (dx_pid_is_none(dx_whereis("kt_mortal")) &&
               dx_now_ms() < deadline)
            dx_sleep(1);
        KT_CHECK(dx_pid_eq(dx_whereis("kt_mortal"), p));
        if (i == 2)
            dx_kill(p);
        else
            dx_send_tag(p, 1);
        dx_term_free(kt_await_down(r, 10000));
        KT_CHECK(dx_pid_is_none(dx_whereis("kt_mortal")));
        KT_CHECK_RC(dx_send_named("kt_mortal", dx_msg_new(1)), DX_ENOPROC);
    }
    /* The name is free for a new process. */
    dx_pid q;
    KT_CHECK_RC(dx_spawn(kt_wait_msg_fn, NULL, &q), DX_OK);
    KT_CHECK_RC(dx_register("kt_mortal", q), DX_OK);
    dx_send_tag(q, 1);
    dx_term_free(kt_join(q, 10000));
}

Test(registry, a_name_dies_with_its_process_on_exit_crash_and_kill,
     .timeout = 30)
{
    kt_body_test(2, names_die_body, NULL);
}

Test(registry, a_name_dies_with_its_process_seen_from_the_host, .timeout = 30)
{
    kt_start(2);
    dx_pid a;
    dx_spawn_opts o = {.name = "kt_spawned_named"};
    cr_assert_eq(dx_spawn_opt(kt_park_fn, NULL, &o, &a, NULL), DX_OK);
    cr_expect(dx_pid_eq(dx_whereis("kt_spawned_named"), a));
    cr_assert_eq(dx_exit(a, dx_atom("boom")), DX_OK);
    kt_host_join(a);
    cr_expect(dx_pid_is_none(dx_whereis("kt_spawned_named")));
    cr_expect_neq(dx_unregister("kt_spawned_named"), DX_OK);
    kt_stop();
}

/* ---- racing registrations ---------------------------------------------- */

enum { RACERS = 16 };
static atomic_int won, lost, other;

static void racer_fn(void *arg)
{
    (void)arg;
    dx_yield();
    int rc = dx_register("kt_contested", dx_self());
    if (rc == DX_OK)
        atomic_fetch_add(&won, 1);
    else if (rc == DX_EEXIST)
        atomic_fetch_add(&lost, 1);
    else
        atomic_fetch_add(&other, 1);
    kt_wait_msg_fn(NULL);
}

Test(registry, racing_registrations_have_exactly_one_winner, .timeout = 30)
{
    kt_start(2);
    dx_pid p[RACERS];
    for (int i = 0; i < RACERS; i++)
        cr_assert_eq(dx_spawn(racer_fn, NULL, &p[i]), DX_OK);
    KT_HOST_WAIT_UNTIL(
        atomic_load(&won) + atomic_load(&lost) + atomic_load(&other) == RACERS,
        10000);
    cr_expect_eq(atomic_load(&won), 1);
    cr_expect_eq(atomic_load(&lost), RACERS - 1);
    cr_expect_eq(atomic_load(&other), 0);
    dx_pid holder = dx_whereis("kt_contested");
    bool known = false;
    for (int i = 0; i < RACERS; i++)
        known = known || dx_pid_eq(holder, p[i]);
    cr_expect(known, "the name is held by none of the racers");
    for (int i = 0; i < RACERS; i++) {
        dx_send_tag(p[i], 1);
        kt_host_join(p[i]);
    }
    cr_expect(dx_pid_is_none(dx_whereis("kt_contested")));
    kt_stop();
}

Test(registry, whereis_of_an_unknown_name_is_nopid, .timeout = 30)
{
    kt_start(1);
    cr_expect(dx_pid_is_none(dx_whereis("kt_nobody")));
    cr_expect(dx_pid_is_none(dx_whereis("")));
    kt_stop();
}

/* Past the registry's first table of 64 buckets every name must still be
 * found, and names still registered when the runtime stops are released
 * with it (a later runtime starts with none of them). */
#define MANY_NAMES 200

Test(registry, hundreds_of_names_survive_the_table_growing_and_a_restart,
     .timeout = 60)
{
    kt_start(1);
    dx_pid pids[MANY_NAMES];
    char name[32];
    for (int i = 0; i < MANY_NAMES; i++) {
        cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &pids[i]), DX_OK);
        snprintf(name, sizeof name, "kt_many_%d", i);
        cr_assert_eq(dx_register(name, pids[i]), DX_OK, "%s", name);
    }
    for (int i = 0; i < MANY_NAMES; i++) {
        snprintf(name, sizeof name, "kt_many_%d", i);
        cr_expect(dx_pid_eq(dx_whereis(name), pids[i]), "%s", name);
    }
    /* Half go away with their processes; the rest stay registered. */
    for (int i = 0; i < MANY_NAMES; i += 2) {
        cr_assert_eq(dx_send_tag(pids[i], 1), DX_OK);
        kt_host_join(pids[i]);
    }
    for (int i = 0; i < MANY_NAMES; i++) {
        snprintf(name, sizeof name, "kt_many_%d", i);
        cr_expect_eq(dx_pid_is_none(dx_whereis(name)), i % 2 == 0, "%s", name);
    }
    kt_stop();
    kt_start(1);
    cr_expect(dx_pid_is_none(dx_whereis("kt_many_1")));
    kt_stop();
}

Test(registry, calls_without_a_name_or_a_runtime_are_refused, .timeout = 30)
{
    kt_start(1);
    cr_expect_eq(dx_unregister(NULL), DX_EINVAL);
    cr_expect(dx_pid_is_none(dx_whereis(NULL)));
    dx_pid a;
    cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &a), DX_OK);
    cr_assert_eq(dx_send_tag(a, 1), DX_OK);
    kt_host_join(a);
    kt_stop();
    cr_expect_eq(dx_register("kt_after_stop", a), DX_ESTATE);
    cr_expect_eq(dx_unregister("kt_after_stop"), DX_ESTATE);
}
