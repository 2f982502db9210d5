/*
 * test_mipro.c — MIPROv2: the TPE sampler alone finds the optimum of a
 * synthetic objective within its trial budget (no LM); end to end against
 * the local LM server with scripted proposals, on a program whose answer
 * shows its instructions and demo count, it sets the rewarded instruction
 * (label stripped, as DSPy) and demos and beats the baseline; a seed makes
 * runs repeat; a checkpointed minibatch run replays without the LM; the LM
 * call budget.
 */
#include <criterion/criterion.h>
#include <string.h>
#include <unistd.h>

#include "dspex/alloc.h"
#include "dspex/teleprompt.h"
#include "lm_fixture.h"
#include "teleprompt_int.h"

/* ---- the sampler --------------------------------------------------------- */

/* Three parameters of 8 choices; the optimum (5, 2, 7) is worth 1, each
 * right coordinate a third. 512 combinations: 80 uniform draws find it
 * with probability under 15%, and five seeds in a row almost never. */
static double synthetic(const size_t *x)
{
    return ((x[0] == 5) + (x[1] == 2) + (x[2] == 7)) / 3.0;
}

static size_t trials_to_optimum(int64_t seed, size_t budget, size_t *seq)
{
    size_t nch[3] = {8, 8, 8};
    dx__tpe *t = dx__tpe_new(nch, 3, seed);
    cr_assert_not_null(t);
    size_t x[3] = {0, 0, 0};
    cr_assert_eq(dx__tpe_add(t, x, synthetic(x)), DX_OK);
    size_t found = 0;
    for (size_t i = 0; i < budget && !found; i++) {
        cr_assert_eq(dx__tpe_suggest(t, x), DX_OK);
        for (int j = 0; j < 3; j++)
            cr_assert_lt(x[j], 8);
        if (seq)
            seq[i] = x[0] * 64 + x[1] * 8 + x[2];
        cr_assert_eq(dx__tpe_add(t, x, synthetic(x)), DX_OK);
        if (synthetic(x) == 1.0)
            found = i + 1;
    }
    dx__tpe_free(t);
    return found;
}

Test(tpe, finds_the_optimum_of_a_synthetic_objective, .timeout = 20)
{
    for (int64_t seed = 0; seed < 5; seed++) {
        size_t n = trials_to_optimum(seed, 80, NULL);
        cr_assert(n > 0, "seed %lld: not found in 80 trials", (long long)seed);
    }
}

Test(tpe, the_same_seed_gives_the_same_suggestions, .timeout = 20)
{
    size_t a[40] = {0}, b[40] = {0}, c[40] = {0};
    trials_to_optimum(3, 40, a);
    trials_to_optimum(3, 40, b);
    trials_to_optimum(4, 40, c);
    cr_assert_arr_eq(a, b, sizeof a);
    cr_assert(memcmp(a, c, sizeof a) != 0, "another seed, other draws");
}

/* ---- MIPROv2 end to end ---------------------------------------------------- */

TestSuite(mipro, .init = fixture_setup, .fini = fixture_teardown,
          .timeout = 90);

static dx_dataset *dataset(size_t n)
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

/* Answers with its predictor's instructions and demo count (no LM). */
static int probe_forward(dx_ctx *ctx, const dx_module *self,
                         const dx_example *in, dx_prediction **out)
{
    (void)ctx;
    (void)in;
    const dx_module *p = dx_module_child(self, "p");
    *out = dx_prediction_new();
    if (!*out)
        return DX_ENOMEM;
    dx_example_set_str(dx_prediction_fields_mut(*out), "answer",
                       dx_signature_instructions(dx_predict_signature(p)));
    dx_example_set_int(dx_prediction_fields_mut(*out), "demos",
                       (int64_t)dx_predict_n_demos(p));
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

/* Half for "banana" in the instructions, half for having demos; only
 * even questions count the banana, so minibatches differ. */
static double metric(const dx_example *ex, const dx_prediction *p,
                     const dx_trace *t, void *ud)
{
    (void)t;
    (void)ud;
    double s = 0;
    if (strstr(dx_prediction_get_str(p, "answer", ""), "banana"))
        s += (long)dx_example_get_num(ex, "question", 1) % 2 == 0 ? 0.5 : 0.25;
    if (dx_example_get_num(dx_prediction_fields(p), "demos", 0) > 0)
        s += 0.5;
    return s;
}

static void push_instruction(const char *text)
{
    char reply[512];
    snprintf(reply, sizeof reply,
             "[[ ## proposed_instruction ## ]]\n%s\n\n[[ ## completed ## ]]",
             text);
    cr_assert_eq(dx_lmserver_push_reply(srv, reply), DX_OK);
}

/* Three proposals (the first is replaced by the current instruction). */
static void push_three(void)
{
    push_instruction("Say something.");
    push_instruction("* Proposed Instruction: \"Answer with banana.\"");
    push_instruction("Say cherry.");
}

static dx_tp_opts opts(void)
{
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = metric},
        .max_bootstrapped_demos = 2,
        .concurrency = 4,
        .progress = DX_EVAL_PROGRESS_OFF,
        .call = {.cache_mode = DX_LMCACHE_BYPASS},
    };
    return o;
}

static char *state_text(const dx_module *m)
{
    cJSON *st = dx_module_dump_state(m);
    char *t = cJSON_PrintUnformatted(st);
    cJSON_Delete(st);
    return t;
}

Test(mipro, sets_the_best_instruction_and_demos_and_beats_the_baseline)
{
    dx_module *st = probe_program();
    dx_dataset *train = dataset(6), *val = dataset(6);
    push_three();
    dx_tp_opts o = opts();
    dx_mipro_opts m = {.auto_mode = DX_MIPRO_AUTO_NONE,
                       .num_candidates = 3,
                       .num_trials = 12,
                       .no_minibatch = true};
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(upstream_requests(), 3, "one proposal per demo set");
    cr_assert_str_eq(r->trials[0].kind, "default");
    double baseline = r->trials[0].score;
    cr_assert_float_eq(baseline, 0.0, 1e-9);
    cr_assert_eq(r->n_trials, 13);
    const dx_module *p = dx_module_child(r->program, "p");
    cr_assert_str_eq(dx_signature_instructions(dx_predict_signature(p)),
                     "Answer with banana.", "label and quotes stripped: %s",
                     dx_signature_instructions(dx_predict_signature(p)));
    cr_assert_gt(dx_predict_n_demos(p), 0);
    cr_assert_float_eq(r->score, 87.5, 1e-9);
    cr_assert_geq(r->score, baseline);
    cr_assert_eq(dx_predict_n_demos(dx_module_child(st, "p")), 0,
                 "the student is not changed");

    /* The same seed again: the same trials and program. */
    push_three();
    dx_tp_result *r2 = NULL;
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &r2, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(r2->n_trials, r->n_trials);
    for (size_t i = 0; i < r->n_trials; i++)
        cr_assert_float_eq(r2->trials[i].score, r->trials[i].score, 1e-9,
                           "trial %zu", i);
    char *a = state_text(r->program), *b = state_text(r2->program);
    cr_assert_str_eq(a, b);
    cJSON_free(a);
    cJSON_free(b);
    dx_tp_result_free(r2);
    dx_tp_result_free(r);
    dx_module_free(st);
    dx_dataset_free(train);
    dx_dataset_free(val);
}

Test(mipro, minibatch_trials_with_full_evaluations_replay_from_a_checkpoint)
{
    char ckpt[] = "/tmp/dx_mipro_ckpt_XXXXXX";
    int fd = mkstemp(ckpt);
    cr_assert_geq(fd, 0);
    close(fd);
    unlink(ckpt);
    dx_module *st = probe_program();
    dx_dataset *train = dataset(6), *val = dataset(8);
    push_three();
    dx_tp_opts o = opts();
    o.checkpoint_path = ckpt;
    dx_mipro_opts m = {.auto_mode = DX_MIPRO_AUTO_NONE,
                       .num_candidates = 3,
                       .num_trials = 5,
                       .minibatch_size = 3,
                       .minibatch_full_eval_steps = 2};
    dx_tp_result *a = NULL, *b = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &a, &d), DX_OK, "%s", d.msg);
    /* DSPy's numbering: default 1; minibatches 2, 3 (full 4), 5, 6 (full
     * 7), 8 (full 9: the last). */
    int64_t ids[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    cr_assert_eq(a->n_trials, 9);
    for (size_t i = 0; i < 9; i++)
        cr_assert_eq(a->trials[i].id, ids[i], "trial %zu", i);
    cr_assert_str_eq(a->trials[3].kind, "full");
    cr_assert_str_eq(a->trials[1].kind, "minibatch");
    uint64_t calls = upstream_requests();
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &b, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(upstream_requests(), calls, "proposals came back");
    cr_assert_eq(b->n_trials, a->n_trials);
    for (size_t i = 0; i < b->n_trials; i++) {
        cr_assert(b->trials[i].from_checkpoint);
        cr_assert_float_eq(a->trials[i].score, b->trials[i].score, 1e-9);
    }
    cr_assert_float_eq(a->score, b->score, 1e-9);
    char *x = state_text(a->program), *y = state_text(b->program);
    cr_assert_str_eq(x, y);
    cJSON_free(x);
    cJSON_free(y);
    dx_tp_result_free(a);
    dx_tp_result_free(b);
    dx_module_free(st);
    dx_dataset_free(train);
    dx_dataset_free(val);
    unlink(ckpt);
    char aux[64];
    snprintf(aux, sizeof aux, "%s-wal", ckpt);
    unlink(aux);
    snprintf(aux, sizeof aux, "%s-shm", ckpt);
    unlink(aux);
}

Test(mipro, the_lm_call_budget_and_bad_options)
{
    dx_module *st = probe_program();
    dx_dataset *train = dataset(6), *val = dataset(6);
    push_three();
    dx_tp_opts o = opts();
    o.max_lm_calls = 1;
    dx_mipro_opts m = {.auto_mode = DX_MIPRO_AUTO_NONE,
                       .num_candidates = 3,
                       .num_trials = 4,
                       .no_minibatch = true};
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &r, &d), DX_ELIMIT, "%s",
                 d.msg);
    cr_assert_eq(upstream_requests(), 1);
    o.max_lm_calls = 0;
    m.num_trials = 0;
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &r, &d), DX_EINVAL);
    m.num_trials = 4;
    m.no_minibatch = false;
    m.minibatch_size = 7;
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &r, &d), DX_EINVAL);
    cr_assert(strstr(d.msg, "minibatch"), "%s", d.msg);
    dx_module_free(st);
    dx_dataset_free(train);
    dx_dataset_free(val);
}

static double crashing(const dx_example *ex, const dx_prediction *p,
                       const dx_trace *t, void *ud)
{
    if ((long)dx_example_get_num(ex, "question", 0) == 3)
        crash_now();
    return metric(ex, p, t, ud);
}

Test(mipro, a_crashing_metric_does_not_stop_it)
{
    dx_module *st = probe_program();
    dx_dataset *train = dataset(6), *val = dataset(6);
    push_three();
    dx_tp_opts o = opts();
    o.metric.fn = crashing;
    dx_mipro_opts m = {.auto_mode = DX_MIPRO_AUTO_NONE,
                       .num_candidates = 3,
                       .num_trials = 12,
                       .no_minibatch = true};
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_gt(r->score, 0);
    dx_tp_result_free(r);
    dx_module_free(st);
    dx_dataset_free(train);
    dx_dataset_free(val);
}
