/*
 * test_copro.c — COPRO against the local LM server with scripted
 * proposals: a program whose answer is its predictor's instructions and a
 * metric that rewards some instruction words, so the test knows which
 * candidate must win; the result's signature carries the winner's
 * instruction and prefix; a checkpointed run replays without the LM; the
 * LM call budget stops new rounds; a cancellation ends a proposal that
 * waits on the LM.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dspex/alloc.h"
#include "dspex/teleprompt.h"
#include "lm_fixture.h"

TestSuite(copro, .init = fixture_setup, .fini = fixture_teardown,
          .timeout = 60);

static dx_dataset *trainset(size_t n)
{
    dx_dataset *ds = dx_dataset_new();
    const char *in[] = {"question"};
    for (size_t i = 0; i < n; i++) {
        dx_example *ex = dx_example_new();
        dx_example_set_int(ex, "question", (int64_t)i);
        dx_example_set_str(ex, "answer", "?");
        dx_example_with_inputs(ex, in, 1);
        cr_assert_eq(dx_dataset_append(ds, ex), DX_OK);
    }
    return ds;
}

/* Answers with its predictor's instructions and last field prefix, without
 * an LM call. */
static int probe_forward(dx_ctx *ctx, const dx_module *self,
                         const dx_example *in, dx_prediction **out)
{
    (void)ctx;
    (void)in;
    const dx_signature *s = dx_predict_signature(dx_module_child(self, "p"));
    *out = dx_prediction_new();
    if (!*out)
        return DX_ENOMEM;
    dx_example_set_str(dx_prediction_fields_mut(*out), "answer",
                       dx_signature_instructions(s));
    dx_example_set_str(
        dx_prediction_fields_mut(*out), "prefix",
        dx_signature_field(s, dx_signature_n_fields(s) - 1)->prefix);
    return DX_OK;
}

static dx_module *probe_program(void)
{
    dx_signature *s = NULL;
    cr_assert_eq(
        dx_signature_parse("question -> answer", NULL, NULL, 0, &s, NULL),
        DX_OK);
    dx_module *p = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    dx_module *m = dx_module_new("Probe", probe_forward, NULL, NULL, NULL);
    cr_assert_eq(dx_module_add(m, "p", p), DX_OK);
    return m;
}

/* "banana" scores 1 everywhere; "apple" on even questions only. */
static double fruit_metric(const dx_example *ex, const dx_prediction *p,
                           const dx_trace *t, void *ud)
{
    (void)t;
    (void)ud;
    const char *a = dx_prediction_get_str(p, "answer", "");
    if (strstr(a, "banana"))
        return 1.0;
    if (strstr(a, "apple"))
        return (long)dx_example_get_num(ex, "question", 1) % 2 == 0 ? 1.0 : 0.0;
    return 0.0;
}

static void push_proposal(const char *instr, const char *prefix)
{
    char reply[512];
    snprintf(reply, sizeof reply,
             "[[ ## proposed_instruction ## ]]\n%s\n\n"
             "[[ ## proposed_prefix_for_output_field ## ]]\n%s\n\n"
             "[[ ## completed ## ]]",
             instr, prefix);
    cr_assert_eq(dx_lmserver_push_reply(srv, reply), DX_OK);
}

static dx_tp_opts opts(void)
{
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = fruit_metric},
        .concurrency = 4,
        .progress = DX_EVAL_PROGRESS_OFF,
        /* Every proposal reaches the server (no cached answers). */
        .call = {.cache_mode = DX_LMCACHE_BYPASS},
    };
    return o;
}

static const char *instructions_of(const dx_module *m)
{
    return dx_signature_instructions(
        dx_predict_signature(dx_module_child(m, "p")));
}

static const char *prefix_of(const dx_module *m)
{
    const dx_signature *s = dx_predict_signature(dx_module_child(m, "p"));
    return dx_signature_field(s, dx_signature_n_fields(s) - 1)->prefix;
}

Test(copro, picks_the_best_proposed_instruction_and_prefix)
{
    dx_module *st = probe_program();
    dx_dataset *ds = trainset(4);
    /* Round 0 (two completions, one text), then the refinement. */
    push_proposal("\"Answer with apple.\"", "Fruit:");
    push_proposal("Answer with banana.", "Banana:");
    dx_tp_opts o = opts();
    dx_copro_opts c = {.breadth = 3, .depth = 2};
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_copro(st, ds, &o, &c, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_str_eq(instructions_of(r->program), "Answer with banana.");
    cr_assert_str_eq(prefix_of(r->program), "Banana:");
    cr_assert_float_eq(r->score, 100.0, 1e-9);
    cr_assert_str_eq(instructions_of(st),
                     "Given the fields `question`, produce the fields "
                     "`answer`.",
                     "the student is not changed");
    /* Round 0: apple twice (quotes stripped) and the original; round 1:
     * three banana completions. */
    cr_assert_eq(r->n_trials, 6);
    double want[] = {50, 50, 0, 100, 100, 100};
    for (size_t i = 0; i < 6; i++) {
        cr_assert_float_eq(r->trials[i].score, want[i], 1e-9, "trial %zu", i);
        cr_assert_str_eq(r->trials[i].kind, "instruction");
    }
    cr_assert_eq(upstream_requests(), 2, "one prompt-LM call per round");
    cr_assert_eq(r->usage.calls, 2);
    dx_tp_result_free(r);

    /* Breadth 1 is refused, as DSPy. */
    c.breadth = 1;
    cr_assert_eq(dx_copro(st, ds, &o, &c, &r, &d), DX_EINVAL);
    cr_assert_null(r);
    dx_module_free(st);
    dx_dataset_free(ds);
}

Test(copro, keeps_the_original_when_no_proposal_is_better)
{
    dx_module *st = probe_program();
    dx_dataset *ds = trainset(4);
    /* The original instruction mentions apple: the proposals (nothing) are
     * worse, so the original stays, with its prefix. */
    dx_signature *s = NULL;
    cr_assert_eq(dx_signature_parse("question -> answer", "Say apple.", NULL, 0,
                                    &s, NULL),
                 DX_OK);
    cr_assert_eq(dx_predict_set_signature(dx_module_child(st, "p"), s), DX_OK);
    dx_signature_unref(s);
    push_proposal("Say nothing.", "Nothing:");
    dx_tp_opts o = opts();
    dx_copro_opts c = {.breadth = 2, .depth = 1};
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_copro(st, ds, &o, &c, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_str_eq(instructions_of(r->program), "Say apple.");
    cr_assert_str_eq(prefix_of(r->program), "Answer:");
    cr_assert_float_eq(r->score, 50.0, 1e-9);
    cr_assert_eq(r->n_trials, 2);
    dx_tp_result_free(r);
    dx_module_free(st);
    dx_dataset_free(ds);
}

Test(copro, a_checkpointed_run_replays_without_the_lm)
{
    char ckpt[] = "/tmp/dx_copro_ckpt_XXXXXX";
    int fd = mkstemp(ckpt);
    cr_assert_geq(fd, 0);
    close(fd);
    unlink(ckpt);
    dx_module *st = probe_program();
    dx_dataset *ds = trainset(4);
    push_proposal("Answer with apple.", "Fruit:");
    push_proposal("Answer with banana.", "Banana:");
    dx_tp_opts o = opts();
    o.checkpoint_path = ckpt;
    dx_copro_opts c = {.breadth = 3, .depth = 2};
    dx_tp_result *a = NULL, *b = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_copro(st, ds, &o, &c, &a, &d), DX_OK, "%s", d.msg);
    uint64_t calls = upstream_requests();
    /* Nothing pushed now: an LM call would get an unparsable answer. */
    cr_assert_eq(dx_copro(st, ds, &o, &c, &b, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(upstream_requests(), calls, "every proposal came back");
    cr_assert_str_eq(instructions_of(b->program), instructions_of(a->program));
    cr_assert_str_eq(prefix_of(b->program), prefix_of(a->program));
    cr_assert_float_eq(a->score, b->score, 1e-9);
    cr_assert_eq(a->n_trials, b->n_trials);
    for (size_t i = 0; i < b->n_trials; i++) {
        cr_assert(b->trials[i].from_checkpoint);
        cr_assert_float_eq(a->trials[i].score, b->trials[i].score, 1e-9);
    }
    dx_tp_result_free(a);
    dx_tp_result_free(b);
    dx_module_free(st);
    dx_dataset_free(ds);
    unlink(ckpt);
    char aux[64];
    snprintf(aux, sizeof aux, "%s-wal", ckpt);
    unlink(aux);
    snprintf(aux, sizeof aux, "%s-shm", ckpt);
    unlink(aux);
}

Test(copro, the_lm_call_budget_stops_new_rounds)
{
    dx_module *st = probe_program();
    dx_dataset *ds = trainset(4);
    push_proposal("Answer with apple.", "Fruit:");
    push_proposal("Answer with banana.", "Banana:");
    push_proposal("Answer with banana.", "Banana:");
    dx_tp_opts o = opts();
    o.max_lm_calls = 2;
    dx_copro_opts c = {.breadth = 2, .depth = 3};
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_copro(st, ds, &o, &c, &r, &d), DX_OK, "%s", d.msg);
    /* Round 0 proposed and evaluated, round 1 proposed, then out of
     * budget: round 1's banana was never evaluated. */
    cr_assert_eq(upstream_requests(), 2);
    cr_assert_str_eq(instructions_of(r->program), "Answer with apple.");
    cr_assert_eq(r->n_trials, 2);
    dx_tp_result_free(r);

    /* A budget spent by the first proposal leaves nothing evaluated. */
    o.max_lm_calls = 1;
    cr_assert_eq(dx_copro(st, ds, &o, &c, &r, &d), DX_ELIMIT);
    dx_module_free(st);
    dx_dataset_free(ds);
}

static double crashing_metric(const dx_example *ex, const dx_prediction *p,
                              const dx_trace *t, void *ud)
{
    if ((long)dx_example_get_num(ex, "question", 0) == 1)
        crash_now();
    return fruit_metric(ex, p, t, ud);
}

Test(copro, a_crashing_metric_costs_only_its_example)
{
    dx_module *st = probe_program();
    dx_dataset *ds = trainset(4);
    push_proposal("Answer with banana.", "Banana:");
    dx_tp_opts o = opts();
    o.metric.fn = crashing_metric;
    dx_copro_opts c = {.breadth = 2, .depth = 1};
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_copro(st, ds, &o, &c, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_str_eq(instructions_of(r->program), "Answer with banana.");
    cr_assert_float_eq(r->score, 75.0, 1e-9, "example 1 scores 0");
    dx_tp_result_free(r);
    dx_module_free(st);
    dx_dataset_free(ds);
}

/* ---- cancellation ------------------------------------------------------ */

typedef struct copro_thread {
    dx_module *st;
    dx_dataset *train;
    int rc;
    dx_diag d;
} copro_thread;

static void *run_copro(void *arg)
{
    copro_thread *t = arg;
    dx_tp_opts o = opts();
    dx_copro_opts c = {.breadth = 2, .depth = 1};
    dx_tp_result *r = NULL;
    t->rc = dx_copro(t->st, t->train, &o, &c, &r, &t->d);
    dx_tp_result_free(r);
    return NULL;
}

/* The proposal call hangs in the prompt LM: a cancellation ends it at
 * once, not when the LM answers or its timeout (120 s) passes. */
Test(copro, a_cancellation_stops_a_proposal_waiting_on_the_lm)
{
    copro_thread t = {.st = probe_program(), .train = trainset(4)};
    cr_assert_eq(dx_lmserver_inject(srv, "slow:100000", 1), DX_OK);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, run_copro, &t), 0);
    for (int i = 0; i < 20000 && upstream_requests() < 1; i++)
        usleep(1000);
    cr_assert_geq(upstream_requests(), 1, "the proposal reached the server");
    dx_evaluate_cancel_all();
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 30; /* not a performance bound: the LM would take 100 s */
    cr_assert_eq(pthread_timedjoin_np(th, NULL, &ts), 0,
                 "the cancellation was not noticed");
    cr_assert_eq(t.rc, DX_ECANCELED, "%s", t.d.msg);
    cr_assert(strstr(t.d.msg, "cancelled") != NULL, "%s", t.d.msg);
    dx_module_free(t.st);
    dx_dataset_free(t.train);
}
