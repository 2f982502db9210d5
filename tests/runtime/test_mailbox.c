/*
 * test_mailbox.c — messages and mailboxes: send (to pids, names, dead pids,
 * from host threads), payload ownership, selective receive by tag, sender,
 * ref and predicate, receive timeouts, sleep and yield, lazy sends (no
 * wake-up until something else wakes the receiver), the calls that only
 * processes may make, and 1,000,000 messages between scheduler threads with
 * none lost, duplicated or reordered per sender.
 */
#include <pthread.h>

#include "kernel_test_util.h"

static atomic_int ptr_frees;

static void count_ptr_free(void *p)
{
    atomic_fetch_add(&ptr_frees, 1);
    dx_free(p);
}

static dx_msg *msg_int(int64_t tag, int64_t v)
{
    dx_msg *m = dx_msg_new(tag);
    if (m != NULL)
        m->term = dx_int(v);
    return m;
}

static int64_t int_of(const dx_msg *m)
{
    int64_t v = -1;
    if (m == NULL || !dx_int_value(m->term, &v))
        return -1;
    return v;
}

/* ---- send and receive --------------------------------------------------- */

static dx_pid body_pid;

static void echo_fn(void *arg)
{
    (void)arg;
    dx_msg *m = NULL;
    if (dx_receive_any(5000, &m) != DX_OK)
        return;
    dx_send_term(body_pid, 2,
                 dx_tuple(2, dx_pid_term(m->from), dx_term_copy(m->term)));
    dx_msg_free(m);
}

static void send_receive_body(void *arg)
{
    (void)arg;
    body_pid = dx_self();
    dx_pid echo;
    KT_CHECK_RC(dx_spawn(echo_fn, NULL, &echo), DX_OK);
    KT_CHECK_RC(dx_send_term(echo, 1, dx_str("hello")), DX_OK);
    dx_msg *m = NULL;
    if (!KT_CHECK_RC(dx_receive_any(5000, &m), DX_OK))
        return;
    KT_CHECK_EQ(m->tag, 2);
    KT_CHECK(dx_pid_eq(m->from, echo));
    KT_CHECK_EQ(m->kind, DX_MSG_PLAIN);
    dx_pid from = DX_NOPID;
    KT_CHECK(dx_pid_value(dx_term_at(m->term, 0), &from));
    KT_CHECK(dx_pid_eq(from, dx_self()));
    size_t len = 0;
    const char *text = dx_binary_data(dx_term_at(m->term, 1), &len);
    KT_CHECK(text != NULL && len == 5 && memcmp(text, "hello", 5) == 0);
    dx_msg_free(m);
}

Test(mailbox, send_delivers_the_payload_and_the_sender, .timeout = 30)
{
    kt_body_test(2, send_receive_body, NULL);
}

static atomic_int host_msg_ok;

static void host_sender_target(void *arg)
{
    (void)arg;
    dx_msg *m = NULL;
    if (!KT_CHECK_RC(dx_receive_any(5000, &m), DX_OK))
        return;
    KT_CHECK(dx_pid_is_none(m->from));
    KT_CHECK_EQ(m->tag, 9);
    KT_CHECK_EQ(int_of(m), 99);
    atomic_store(&host_msg_ok, 1);
    dx_msg_free(m);
}

Test(mailbox, a_host_thread_can_send_and_from_is_nopid, .timeout = 30)
{
    kt_start(1);
    dx_pid pid;
    cr_assert_eq(dx_spawn(host_sender_target, NULL, &pid), DX_OK);
    cr_assert_eq(dx_send(pid, msg_int(9, 99)), DX_OK);
    kt_host_join(pid);
    kt_stop();
    kt_assert_clean();
    cr_expect(atomic_load(&host_msg_ok));
}

Test(mailbox, send_to_a_dead_pid_returns_enoproc_and_frees_the_message,
     .timeout = 30)
{
    kt_start(1);
    dx_pid pid;
    cr_assert_eq(dx_spawn(kt_exit_with_fn, "normal", &pid), DX_OK);
    kt_host_join(pid);
    dx_msg *m = dx_msg_new(1);
    cr_assert_not_null(m);
    m->ptr = dx_malloc(8);
    m->ptr_free = count_ptr_free;
    cr_expect_eq(dx_send(pid, m), DX_ENOPROC);
    cr_expect_eq(atomic_load(&ptr_frees), 1);
    cr_expect_eq(dx_send_ptr(pid, 1, dx_malloc(8), count_ptr_free), DX_ENOPROC);
    cr_expect_eq(atomic_load(&ptr_frees), 2);
    cr_expect_eq(dx_send_term(pid, 1, dx_str("lost")), DX_ENOPROC);
    cr_expect_eq(dx_send_tag(pid, 1), DX_ENOPROC);
    cr_expect_eq(dx_send_tag(DX_NOPID, 1), DX_ENOPROC);
    kt_stop();
}

static void ptr_owner_body(void *arg)
{
    (void)arg;
    dx_pid me = dx_self();
    KT_CHECK_RC(dx_send_ptr(me, 1, dx_malloc(16), count_ptr_free), DX_OK);
    KT_CHECK_RC(dx_send_ptr(me, 2, dx_malloc(16), count_ptr_free), DX_OK);
    KT_CHECK_RC(dx_send_term(me, 3, dx_atom("t")), DX_OK);
    dx_msg *m = NULL;
    /* Freeing the message runs ptr_free once. */
    if (KT_CHECK_RC(dx_receive_tag(1, 0, &m), DX_OK)) {
        KT_CHECK(m->ptr != NULL);
        dx_msg_free(m);
        KT_CHECK_EQ(atomic_load(&ptr_frees), 1);
    }
    /* Taking the payload clears the destructor. */
    if (KT_CHECK_RC(dx_receive_tag(2, 0, &m), DX_OK)) {
        void *p = dx_msg_take_ptr(m);
        KT_CHECK(p != NULL);
        KT_CHECK(m->ptr == NULL);
        dx_msg_free(m);
        KT_CHECK_EQ(atomic_load(&ptr_frees), 1);
        count_ptr_free(p);
    }
    if (KT_CHECK_RC(dx_receive_tag(3, 0, &m), DX_OK)) {
        dx_term *t = dx_msg_take_term(m);
        KT_CHECK(m->term == NULL);
        dx_msg_free(m);
        KT_CHECK(dx_is_atom(t, "t"));
        dx_term_free(t);
    }
    dx_msg_free(NULL);
}

Test(mailbox, received_messages_own_their_payloads, .timeout = 30)
{
    kt_body_test(1, ptr_owner_body, NULL);
    cr_expect_eq(atomic_load(&ptr_frees), 2);
}

static void named_target(void *arg)
{
    (void)arg;
    dx_msg *m = NULL;
    if (KT_CHECK_RC(dx_receive_tag(5, 5000, &m), DX_OK)) {
        KT_CHECK_EQ(int_of(m), 55);
        dx_msg_free(m);
    }
}

Test(mailbox, send_named_reaches_the_registered_process, .timeout = 30)
{
    kt_start(2);
    dx_pid pid;
    dx_spawn_opts o = {.name = "kt_named_target"};
    cr_assert_eq(dx_spawn_opt(named_target, NULL, &o, &pid, NULL), DX_OK);
    cr_expect_eq(dx_send_named("kt_named_target", msg_int(5, 55)), DX_OK);
    kt_host_join(pid);
    dx_msg *m = dx_msg_new(1);
    m->ptr = dx_malloc(4);
    m->ptr_free = count_ptr_free;
    cr_expect_eq(dx_send_named("kt_named_target", m), DX_ENOPROC);
    cr_expect_eq(atomic_load(&ptr_frees), 1, "message not freed");
    kt_stop();
    kt_assert_clean();
}

/* ---- selective receive -------------------------------------------------- */

static void selective_tag_body(void *arg)
{
    (void)arg;
    dx_pid me = dx_self();
    /* tags 1,2,3,2 carrying values 10,20,30,21 */
    dx_send(me, msg_int(1, 10));
    dx_send(me, msg_int(2, 20));
    dx_send(me, msg_int(3, 30));
    dx_send(me, msg_int(2, 21));
    dx_msg *m = NULL;
    if (KT_CHECK_RC(dx_receive_tag(2, 0, &m), DX_OK)) {
        KT_CHECK_EQ(int_of(m), 20);
        dx_msg_free(m);
    }
    KT_CHECK_RC(dx_receive_tag(4, 0, &m), DX_ETIMEDOUT);
    int64_t want[] = {10, 30, 21};
    for (int i = 0; i < 3; i++) {
        if (KT_CHECK_RC(dx_receive_any(0, &m), DX_OK)) {
            KT_CHECK_EQ(int_of(m), want[i]);
            dx_msg_free(m);
        }
    }
    KT_CHECK_RC(dx_receive_any(0, &m), DX_ETIMEDOUT);
}

Test(mailbox, receive_by_tag_takes_the_first_match_and_keeps_the_rest_in_order,
     .timeout = 30)
{
    kt_body_test(1, selective_tag_body, NULL);
}

static dx_pid sel_parent;

static void send_value_fn(void *arg)
{
    dx_send(sel_parent, msg_int(1, (int64_t)(intptr_t)arg));
    kt_wait_msg_fn(NULL);
}

static void selective_from_body(void *arg)
{
    (void)arg;
    sel_parent = dx_self();
    dx_pid a, b;
    dx_ref ra, rb;
    KT_CHECK_RC(dx_spawn_monitor(send_value_fn, (void *)(intptr_t)1, &a, &ra),
                DX_OK);
    KT_CHECK_RC(dx_spawn_monitor(send_value_fn, (void *)(intptr_t)2, &b, &rb),
                DX_OK);
    dx_msg *m = NULL;
    dx_match from_b = {.fields = DX_MATCH_FROM, .from = b};
    if (KT_CHECK_RC(dx_receive(&from_b, 5000, &m), DX_OK)) {
        KT_CHECK(dx_pid_eq(m->from, b));
        KT_CHECK_EQ(int_of(m), 2);
        dx_msg_free(m);
    }
    dx_match from_a = {
        .fields = DX_MATCH_FROM | DX_MATCH_TAG, .from = a, .tag = 1};
    if (KT_CHECK_RC(dx_receive(&from_a, 5000, &m), DX_OK)) {
        KT_CHECK(dx_pid_eq(m->from, a));
        KT_CHECK_EQ(int_of(m), 1);
        dx_msg_free(m);
    }
    /* Nothing else from b is pending. */
    KT_CHECK_RC(dx_receive(&from_b, 0, &m), DX_ETIMEDOUT);
    dx_send_tag(a, 0);
    dx_send_tag(b, 0);
    KT_CHECK_REASON_ATOM(kt_await_down(ra, 5000), "normal");
    KT_CHECK_REASON_ATOM(kt_await_down(rb, 5000), "normal");
}

Test(mailbox, receive_by_sender_selects_that_senders_message, .timeout = 30)
{
    kt_body_test(2, selective_from_body, NULL);
}

static void selective_ref_body(void *arg)
{
    (void)arg;
    dx_pid me = dx_self();
    dx_ref refs[3] = {dx_make_ref(), dx_make_ref(), dx_make_ref()};
    for (int i = 0; i < 3; i++) {
        dx_msg *m = msg_int(1, i);
        m->ref = refs[i];
        dx_send(me, m);
    }
    dx_msg *m = NULL;
    dx_match by_ref = {.fields = DX_MATCH_REF, .ref = refs[2]};
    if (KT_CHECK_RC(dx_receive(&by_ref, 0, &m), DX_OK)) {
        KT_CHECK(dx_ref_eq(m->ref, refs[2]));
        KT_CHECK_EQ(int_of(m), 2);
        dx_msg_free(m);
    }
    by_ref.ref = refs[2];
    KT_CHECK_RC(dx_receive(&by_ref, 0, &m), DX_ETIMEDOUT);
    /* A ref that no message carries matches nothing, even with tag 1. */
    dx_match other = {
        .fields = DX_MATCH_REF | DX_MATCH_TAG, .ref = dx_make_ref(), .tag = 1};
    KT_CHECK_RC(dx_receive(&other, 0, &m), DX_ETIMEDOUT);
    KT_CHECK_EQ(kt_drain(), 2);
}

Test(mailbox, receive_by_ref_selects_the_message_with_that_ref, .timeout = 30)
{
    kt_body_test(1, selective_ref_body, NULL);
}

static atomic_int pred_calls;

static bool value_equals(const dx_msg *m, void *ud)
{
    atomic_fetch_add(&pred_calls, 1);
    return int_of(m) == *(const int64_t *)ud;
}

static int64_t pred_want = 33;

static void predicate_body(void *arg)
{
    (void)arg;
    dx_pid me = dx_self();
    dx_send(me, msg_int(1, 11));
    dx_send(me, msg_int(2, 33));
    dx_send(me, msg_int(1, 33));
    dx_send(me, msg_int(1, 44));
    dx_msg *m = NULL;
    /* pred and tag must both accept: the tag-1 message carrying 33. */
    dx_match both = {.fields = DX_MATCH_TAG,
                     .tag = 1,
                     .pred = value_equals,
                     .ud = &pred_want};
    if (KT_CHECK_RC(dx_receive(&both, 0, &m), DX_OK)) {
        KT_CHECK_EQ(m->tag, 1);
        KT_CHECK_EQ(int_of(m), 33);
        dx_msg_free(m);
    }
    KT_CHECK(atomic_load(&pred_calls) >= 1);
    dx_match only_pred = {.pred = value_equals, .ud = &pred_want};
    if (KT_CHECK_RC(dx_receive(&only_pred, 0, &m), DX_OK)) {
        KT_CHECK_EQ(m->tag, 2);
        dx_msg_free(m);
    }
    KT_CHECK_RC(dx_receive(&only_pred, 0, &m), DX_ETIMEDOUT);
    KT_CHECK_EQ(kt_drain(), 2);
}

Test(mailbox, receive_with_a_predicate_needs_it_and_the_fields_to_accept,
     .timeout = 30)
{
    kt_body_test(1, predicate_body, NULL);
}

/* ---- timeouts and waking ------------------------------------------------ */

static void timeout_body(void *arg)
{
    (void)arg;
    dx_msg *m = NULL;
    int64_t t0 = dx_now_ms();
    KT_CHECK_RC(dx_receive_any(50, &m), DX_ETIMEDOUT);
    KT_CHECK(dx_now_ms() - t0 >= 50);
    KT_CHECK(m == NULL);

    /* A non-matching message does not end a selective wait early ... */
    dx_send_tag(dx_self(), 1);
    t0 = dx_now_ms();
    KT_CHECK_RC(dx_receive_tag(2, 30, &m), DX_ETIMEDOUT);
    KT_CHECK(dx_now_ms() - t0 >= 30);
    /* ... and stays in the mailbox. */
    if (KT_CHECK_RC(dx_receive_tag(1, 0, &m), DX_OK))
        dx_msg_free(m);
    /* Timeout 0 only looks. */
    KT_CHECK_RC(dx_receive_any(0, &m), DX_ETIMEDOUT);
}

Test(mailbox, receive_times_out_without_a_matching_message, .timeout = 30)
{
    kt_body_test(1, timeout_body, NULL);
}

static dx_pid waiter;

static void late_sender(void *arg)
{
    (void)arg;
    dx_sleep(30);
    dx_send_tag(waiter, 1); /* not matched */
    dx_sleep(10);
    dx_send(waiter, msg_int(2, 77));
}

static void wake_body(void *arg)
{
    (void)arg;
    waiter = dx_self();
    KT_CHECK_RC(dx_spawn(late_sender, NULL, NULL), DX_OK);
    dx_msg *m = NULL;
    if (KT_CHECK_RC(dx_receive_tag(2, DX_INFINITY, &m), DX_OK)) {
        KT_CHECK_EQ(int_of(m), 77);
        dx_msg_free(m);
    }
    KT_CHECK_EQ(kt_drain(), 1);
}

Test(mailbox, a_matching_message_wakes_a_waiting_receiver, .timeout = 30)
{
    kt_body_test(2, wake_body, NULL);
}

static void sleep_body(void *arg)
{
    (void)arg;
    dx_send_tag(dx_self(), 1);
    int64_t t0 = dx_now_ms();
    KT_CHECK_RC(dx_sleep(40), DX_OK);
    KT_CHECK(dx_now_ms() - t0 >= 40);
    KT_CHECK_RC(dx_yield(), DX_OK);
    KT_CHECK_RC(dx_sleep(0), DX_OK);
    /* Sleeping left the message where it was. */
    KT_CHECK_EQ(kt_drain(), 1);
}

Test(mailbox, sleep_parks_for_the_time_and_keeps_messages, .timeout = 30)
{
    kt_body_test(1, sleep_body, NULL);
}

Test(mailbox, process_calls_from_a_host_thread_return_enotproc, .timeout = 30)
{
    dx_msg *m = NULL;
    cr_expect_eq(dx_receive_any(0, &m), DX_ENOTPROC);
    kt_start(1);
    dx_match any = {0};
    cr_expect_eq(dx_receive(&any, 10, &m), DX_ENOTPROC);
    cr_expect_eq(dx_receive_any(DX_INFINITY, &m), DX_ENOTPROC);
    cr_expect_eq(dx_receive_tag(1, 0, &m), DX_ENOTPROC);
    cr_expect_null(m);
    cr_expect_eq(dx_sleep(1), DX_ENOTPROC);
    cr_expect_eq(dx_yield(), DX_ENOTPROC);
    kt_stop();
}

/* ---- concurrency -------------------------------------------------------- */

/* Producers tag each message with (producer << 32 | sequence); the consumer
 * checks that every producer's sequence arrives complete, once, in order. */
enum { PRODUCERS = 4, PER_PRODUCER = 250000 };

static dx_pid consumer_pid;
static atomic_int send_failures;
static int64_t next_seq[PRODUCERS];
static atomic_long bad_order;
static atomic_long received_total;

static void producer_fn(void *arg)
{
    int64_t id = (int64_t)(intptr_t)arg;
    for (int64_t i = 0; i < PER_PRODUCER; i++)
        if (dx_send_tag(consumer_pid, (id << 32) | i) != DX_OK)
            atomic_fetch_add(&send_failures, 1);
}

static void consumer_fn(void *arg)
{
    (void)arg;
    long total = (long)PRODUCERS * PER_PRODUCER;
    for (long n = 0; n < total; n++) {
        dx_msg *m = NULL;
        if (dx_receive_any(20000, &m) != DX_OK)
            break;
        int64_t id = m->tag >> 32;
        int64_t seq = m->tag & 0xffffffff;
        if (id < 0 || id >= PRODUCERS || seq != next_seq[id])
            atomic_fetch_add(&bad_order, 1);
        else
            next_seq[id]++;
        atomic_fetch_add(&received_total, 1);
        dx_msg_free(m);
    }
    /* Nothing extra (duplicates) may follow. */
    dx_msg *m = NULL;
    if (dx_receive_any(50, &m) == DX_OK) {
        atomic_fetch_add(&bad_order, 1);
        dx_msg_free(m);
    }
}

static void million_body(void *arg)
{
    (void)arg;
    dx_ref cref;
    KT_CHECK_RC(dx_spawn_monitor(consumer_fn, NULL, &consumer_pid, &cref),
                DX_OK);
    dx_ref prefs[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++)
        KT_CHECK_RC(
            dx_spawn_monitor(producer_fn, (void *)(intptr_t)i, NULL, &prefs[i]),
            DX_OK);
    for (int i = 0; i < PRODUCERS; i++)
        KT_CHECK_REASON_ATOM(kt_await_down(prefs[i], 60000), "normal");
    KT_CHECK_REASON_ATOM(kt_await_down(cref, 60000), "normal");
}

Test(mailbox, a_million_messages_from_four_producers_arrive_once_in_order,
     .timeout = 120)
{
    kt_body_test(2, million_body, NULL);
    cr_expect_eq(atomic_load(&send_failures), 0);
    cr_expect_eq(atomic_load(&bad_order), 0);
    cr_expect_eq(atomic_load(&received_total), (long)PRODUCERS * PER_PRODUCER);
    for (int i = 0; i < PRODUCERS; i++)
        cr_expect_eq(next_seq[i], PER_PRODUCER, "producer %d: %lld of %d", i,
                     (long long)next_seq[i], PER_PRODUCER);
}

enum { HOST_THREADS = 2, PER_HOST = 100000 };

static void *host_producer(void *arg)
{
    int64_t id = (int64_t)(intptr_t)arg;
    for (int64_t i = 0; i < PER_HOST; i++)
        if (dx_send_tag(consumer_pid, (id << 32) | i) != DX_OK)
            atomic_fetch_add(&send_failures, 1);
    return NULL;
}

static void host_consumer_fn(void *arg)
{
    (void)arg;
    for (long n = 0; n < (long)HOST_THREADS * PER_HOST; n++) {
        dx_msg *m = NULL;
        if (dx_receive_any(20000, &m) != DX_OK)
            break;
        int64_t id = m->tag >> 32;
        int64_t seq = m->tag & 0xffffffff;
        if (id < 0 || id >= HOST_THREADS || seq != next_seq[id])
            atomic_fetch_add(&bad_order, 1);
        else
            next_seq[id]++;
        KT_CHECK(dx_pid_is_none(m->from));
        atomic_fetch_add(&received_total, 1);
        dx_msg_free(m);
    }
}

Test(mailbox, host_threads_can_send_concurrently_without_loss, .timeout = 120)
{
    kt_start(2);
    cr_assert_eq(dx_spawn(host_consumer_fn, NULL, &consumer_pid), DX_OK);
    pthread_t th[HOST_THREADS];
    for (int i = 0; i < HOST_THREADS; i++)
        cr_assert_eq(
            pthread_create(&th[i], NULL, host_producer, (void *)(intptr_t)i),
            0);
    for (int i = 0; i < HOST_THREADS; i++)
        pthread_join(th[i], NULL);
    kt_host_join(consumer_pid);
    kt_stop();
    kt_assert_clean();
    cr_expect_eq(atomic_load(&send_failures), 0);
    cr_expect_eq(atomic_load(&bad_order), 0);
    cr_expect_eq(atomic_load(&received_total), (long)HOST_THREADS * PER_HOST);
}

/* ---- lazy sends ---------------------------------------------------------- */

/* A lazy message does not wake a waiting receiver: it is handled, in its
 * place, when something else wakes it, or when more than the backlog (64)
 * wait. */
enum { LAZY_STOP = 99, LAZY_MAX = 256 };
static _Atomic int lazy_n;
static int64_t lazy_seen[LAZY_MAX];

static void lazy_receiver(void *arg)
{
    (void)arg;
    for (;;) {
        dx_msg *m = NULL;
        if (dx_receive_any(DX_INFINITY, &m) != DX_OK)
            return;
        int64_t tag = m->tag;
        dx_msg_free(m);
        int i = atomic_load(&lazy_n);
        if (i < LAZY_MAX)
            lazy_seen[i] = tag;
        atomic_store(&lazy_n, i + 1);
        if (tag == LAZY_STOP)
            return;
    }
}

static bool waits(dx_pid pid)
{
    dx_proc_info info;
    return dx_process_info(pid, &info) == DX_OK &&
           info.status == DX_PROC_WAITING;
}

static void lazy_body(void *arg)
{
    (void)arg;
    dx_pid r;
    KT_CHECK_RC(dx_spawn(lazy_receiver, NULL, &r), DX_OK);
    for (int i = 0; i < 5000 && !waits(r); i++)
        dx_sleep(1);
    for (int64_t tag = 1; tag <= 3; tag++)
        KT_CHECK_RC(dx_send_lazy(r, dx_msg_new(tag)), DX_OK);
    /* Nothing woke it: the three wait in its mailbox. */
    dx_sleep(100);
    KT_CHECK_EQ(atomic_load(&lazy_n), 0);
    dx_proc_info info;
    if (KT_CHECK_RC(dx_process_info(r, &info), DX_OK))
        KT_CHECK_EQ(info.mailbox_len, 3);
    /* A plain send wakes it; the lazy ones come first. */
    KT_CHECK_RC(dx_send_tag(r, 4), DX_OK);
    for (int i = 0; i < 5000 && atomic_load(&lazy_n) < 4; i++)
        dx_sleep(1);
    if (KT_CHECK_EQ(atomic_load(&lazy_n), 4))
        for (int i = 0; i < 4; i++)
            KT_CHECK_EQ(lazy_seen[i], i + 1);
    for (int i = 0; i < 5000 && !waits(r); i++)
        dx_sleep(1);
    /* Lazy messages alone: the backlog wakes it, with no plain send. */
    for (int i = 0; i < 100; i++)
        KT_CHECK_RC(dx_send_lazy(r, dx_msg_new(5)), DX_OK);
    for (int i = 0; i < 5000 && atomic_load(&lazy_n) < 4 + 65; i++)
        dx_sleep(1);
    KT_CHECK(atomic_load(&lazy_n) >= 4 + 65);
    dx_ref mon;
    KT_CHECK_RC(dx_monitor(r, &mon), DX_OK);
    KT_CHECK_RC(dx_send_tag(r, LAZY_STOP), DX_OK);
    KT_CHECK_REASON_ATOM(kt_await_down(mon, 5000), "normal");
    KT_CHECK_EQ(atomic_load(&lazy_n), 4 + 100 + 1);
    for (int i = 4; i < 104; i++)
        KT_CHECK_EQ(lazy_seen[i], 5);
    /* To a dead pid: refused and freed, as dx_send. */
    atomic_store(&ptr_frees, 0);
    KT_CHECK_RC(dx_send_lazy(r, dx_msg_new(6)), DX_ENOPROC);
    dx_msg *m = dx_msg_new(7);
    if (m) {
        m->ptr = dx_malloc(8);
        m->ptr_free = count_ptr_free;
    }
    KT_CHECK_RC(dx_send_lazy(r, m), DX_ENOPROC);
    KT_CHECK_EQ(atomic_load(&ptr_frees), 1);
}

Test(mailbox, a_lazy_message_waits_for_the_next_wake_up_in_its_place,
     .timeout = 30)
{
    kt_body_test(2, lazy_body, NULL);
}

/* Undelivered messages are freed with their process. */
static void hoard_fn(void *arg)
{
    (void)arg;
    for (int i = 0; i < 100; i++)
        dx_send_ptr(dx_self(), 1, dx_malloc(32), count_ptr_free);
    dx_exit_self(dx_atom("boom"));
}

Test(mailbox, unread_messages_are_freed_when_the_process_exits, .timeout = 30)
{
    kt_start(1);
    dx_pid pid;
    cr_assert_eq(dx_spawn(hoard_fn, NULL, &pid), DX_OK);
    kt_host_join(pid);
    KT_HOST_WAIT_UNTIL(atomic_load(&ptr_frees) == 100, 5000);
    cr_expect_eq(atomic_load(&ptr_frees), 100);
    kt_stop();
    cr_expect_eq(atomic_load(&ptr_frees), 100);
}
