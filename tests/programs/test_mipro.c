/*
 * test_mipro.c — MIPROv2: the TPE sampler alone finds the optimum of a
 * synthetic objective within its trial budget (no LM); end to end against
 * the local LM server with scripted proposals, on a program whose answer
 * shows its instructions and demo count, it sets the rewarded instruction
 * (label stripped, as DSPy) and demos and beats the baseline; a seed makes
 * runs repeat; a checkpointed minibatch run replays without the LM; the LM
 * call budget. The grounded proposer: the instruction prompt carries the
 * dataset summary and the program and module descriptions (read back from
 * the LM client's history), the trainset is shown as Python's repr, the
 * observations stop at 10 calls or after 5 COMPLETEs, the switches give
 * the old calls back, and the summary and descriptions are checkpointed.
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

/* A ChatAdapter reply giving output field `field` the text. */
static void push_field(const char *field, const char *text)
{
    char reply[512];
    snprintf(reply, sizeof reply, "[[ ## %s ## ]]\n%s\n\n[[ ## completed ## ]]",
             field, text);
    cr_assert_eq(dx_lmserver_push_reply(srv, reply), DX_OK);
}

static void push_instruction(const char *text)
{
    push_field("proposed_instruction", text);
}

/* The grounded proposer's switches off: DSPy's proposer with
 * data_aware_proposer and program_aware_proposer False. */
#define UNGROUNDED .no_data_summary = true, .no_program_description = true

/* Three proposals (the first is replaced by the current instruction). */
static void push_three(void)
{
    push_instruction("Say something.");
    push_instruction("* Proposed Instruction: \"Answer with banana.\"");
    push_instruction("Say cherry.");
}

/* Descriptions of the program and of its predictor for one proposal. */
static void push_descriptions(void)
{
    push_field("program_description",
               "Program Description: It answers numeric questions.");
    push_field("module_description", "It maps a question to an answer.");
}

/* The replies of a grounded run with 6 train examples and 3 proposals:
 * one observation, the summary, then per proposal the two descriptions
 * and the instruction (11 calls). */
static void push_grounded(void)
{
    push_field("observations", "The questions are whole numbers.");
    push_field("summary", "Summary: The questions are small whole numbers.");
    const char *instr[] = {"Say something.",
                           "* Proposed Instruction: \"Answer with banana.\"",
                           "Say cherry."};
    for (int i = 0; i < 3; i++) {
        push_descriptions();
        push_instruction(instr[i]);
    }
}

/* The LM client's history (dx_lm_client_inspect_history, which must run
 * in a process): every call's messages and response, oldest first. */
static char *history_text;

static void grab_history(void *arg)
{
    (void)arg;
    dx_free(history_text);
    history_text = NULL;
    atomic_store(&fixture_rc, dx_lm_client_inspect_history(dx_whereis("lm"), 0,
                                                           &history_text));
}

static const char *lm_history(void)
{
    fixture_run(grab_history);
    cr_assert_not_null(history_text);
    return history_text;
}

/* The k-th call (0-based) in the history text; a copy, the caller's. */
static char *history_call(const char *h, int k)
{
    const char *marker = "System message:";
    const char *p = strstr(h, marker);
    for (int i = 0; p && i < k; i++)
        p = strstr(p + 1, marker);
    cr_assert_not_null(p, "call %d is in the history", k);
    const char *end = strstr(p + 1, marker);
    size_t n = end ? (size_t)(end - p) : strlen(p);
    char *c = dx_malloc(n + 1);
    memcpy(c, p, n);
    c[n] = '\0';
    return c;
}

static size_t count_of(const char *h, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(h, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
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
                       .no_minibatch = true,
                       UNGROUNDED};
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
    push_grounded();
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
    cr_assert_eq(calls, 11, "summary, descriptions, proposals");
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &b, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(upstream_requests(), calls,
                 "the summary, descriptions and proposals came back");
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
                       .no_minibatch = true,
                       UNGROUNDED};
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
                       .no_minibatch = true,
                       UNGROUNDED};
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_gt(r->score, 0);
    dx_tp_result_free(r);
    dx_module_free(st);
    dx_dataset_free(train);
    dx_dataset_free(val);
}

/* ---- the grounded proposer ------------------------------------------------- */

static void free_history(void)
{
    dx_free(history_text);
    history_text = NULL;
}

Test(mipro, the_instruction_prompt_holds_the_dataset_summary_and_descriptions)
{
    dx_module *st = probe_program();
    dx_dataset *train = dataset(6), *val = dataset(6);
    push_grounded();
    dx_tp_opts o = opts();
    dx_mipro_opts m = {.auto_mode = DX_MIPRO_AUTO_NONE,
                       .num_candidates = 3,
                       .num_trials = 3,
                       .no_minibatch = true};
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(upstream_requests(), 11);
    const char *h = lm_history();

    /* The first call sees the trainset as DSPy's repr of its Examples. */
    char *c = history_call(h, 0);
    cr_assert(strstr(c, "[[ ## examples ## ]]\n[Example({'question': 0, "
                        "'answer': '?'}) (input_keys={'question'}), "
                        "Example({'question': 1, 'answer': '?'}) "
                        "(input_keys={'question'}),"),
              "%s", c);
    cr_assert(strstr(c, "'answer': '?'}) (input_keys={'question'})]\n"), "%s",
              c);
    cr_assert(strstr(c, "observations about trends that hold for most or "
                        "all of the samples."));
    dx_free(c);
    c = history_call(h, 1);
    cr_assert(strstr(c, "[[ ## observations ## ]]\nThe questions are whole "
                        "numbers.\n"),
              "%s", c);
    dx_free(c);

    /* The describers get the program's structure and the prefix-stripped
     * program description. */
    c = history_call(h, 3);
    cr_assert(strstr(c, "[[ ## program_code ## ]]\nProbe, a program of 1 "
                        "predictor:\n\np = Predict(\"question -> "
                        "answer\")\n    instructions: Given the fields "
                        "`question`, produce the fields `answer`.\n"),
              "%s", c);
    cr_assert(strstr(c, "[[ ## program_description ## ]]\nIt answers "
                        "numeric questions.\n"),
              "%s", c);
    cr_assert(strstr(c, "[[ ## module ## ]]\nPredict(question) -> answer\n"),
              "%s", c);
    dx_free(c);

    /* Every instruction proposal carries all of it. */
    for (int k = 4; k < 11; k += 3) {
        c = history_call(h, k);
        cr_assert(strstr(c, "`dataset_description` (str): A description of "
                            "the dataset that we are using."),
                  "%s", c);
        cr_assert(strstr(c, "[[ ## dataset_description ## ]]\nThe questions "
                            "are small whole numbers.\n"),
                  "summary label stripped: %s", c);
        cr_assert(strstr(c, "[[ ## program_code ## ]]\nProbe, a program"));
        cr_assert(strstr(c, "[[ ## program_description ## ]]\nIt answers "
                            "numeric questions.\n"));
        cr_assert(strstr(c, "[[ ## module ## ]]\nPredict(question) -> "
                            "answer\n"));
        cr_assert(strstr(c, "[[ ## module_description ## ]]\nIt maps a "
                            "question to an answer.\n"));
        cr_assert(strstr(c, "[[ ## basic_instruction ## ]]\n"));
        cr_assert(strstr(c, "[[ ## proposed_instruction ## ]]"));
        dx_free(c);
    }
    cr_assert_str_eq(dx_signature_instructions(dx_predict_signature(
                         dx_module_child(r->program, "p"))),
                     "Answer with banana.");
    free_history();
    dx_tp_result_free(r);
    dx_module_free(st);
    dx_dataset_free(train);
    dx_dataset_free(val);
}

Test(mipro, switched_off_the_proposer_makes_only_its_proposals)
{
    dx_module *st = probe_program();
    dx_dataset *train = dataset(30), *val = dataset(6);
    push_three();
    dx_tp_opts o = opts();
    dx_mipro_opts m = {.auto_mode = DX_MIPRO_AUTO_NONE,
                       .num_candidates = 3,
                       .num_trials = 3,
                       .no_minibatch = true,
                       UNGROUNDED};
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(upstream_requests(), 3);
    const char *h = lm_history();
    cr_assert_eq(count_of(h, "[[ ## proposed_instruction ## ]]\n"), 6,
                 "3 prompts, 3 replies");
    cr_assert_null(strstr(h, "dataset_description"));
    cr_assert_null(strstr(h, "program_code"));
    cr_assert_null(strstr(h, "module_description"));
    dx_tp_result_free(r);

    /* Only the summary: one call on 30 examples per batch of 10, then
     * the summary, and no descriptions. */
    m.no_data_summary = false;
    push_field("observations", "Numbers.");
    push_field("observations", "Still numbers.");
    push_field("observations", "Only numbers.");
    push_field("summary", "Whole numbers.");
    push_three();
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(upstream_requests(), 3 + 4 + 3);
    h = lm_history();
    char *c = history_call(h, 7);
    cr_assert(strstr(c, "[[ ## dataset_description ## ]]\nWhole numbers.\n"),
              "%s", c);
    cr_assert_null(strstr(c, "program_code"));
    dx_free(c);
    free_history();
    dx_tp_result_free(r);
    dx_module_free(st);
    dx_dataset_free(train);
    dx_dataset_free(val);
}

Test(mipro, observations_stop_after_five_completes_and_at_ten_calls)
{
    dx_module *st = probe_program();
    /* 80 examples: 8 batches, so 7 calls with prior observations at most;
     * the fifth COMPLETE (any case, anything after it) ends them after 6. */
    dx_dataset *train = dataset(80), *val = dataset(6);
    push_field("observations", "First.");
    push_field("observations", "Second.");
    push_field("observations", "COMPLETE");
    push_field("observations", "complete - nothing to add");
    push_field("observations", "Complete.");
    push_field("observations", "COMPLETE");
    push_field("observations", "CoMpLeTe");
    push_field("summary", "Short.");
    push_three();
    dx_tp_opts o = opts();
    dx_mipro_opts m = {.auto_mode = DX_MIPRO_AUTO_NONE,
                       .num_candidates = 3,
                       .num_trials = 3,
                       .no_minibatch = true,
                       .no_program_description = true};
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(upstream_requests(), 1 + 6 + 1 + 3);
    const char *h = lm_history();
    /* Observations are appended as they come, COMPLETEs left out. */
    char *c = history_call(h, 2);
    cr_assert(strstr(c, "[[ ## prior_observations ## ]]\nFirst.Second.\n"),
              "%s", c);
    cr_assert(strstr(c, "(input_keys={'question'})]\n"));
    cr_assert(strstr(c, "[Example({'question': 20, 'answer': '?'})"), "%s", c);
    dx_free(c);
    c = history_call(h, 7);
    cr_assert(strstr(c, "[[ ## observations ## ]]\nFirst.Second.\n"), "%s", c);
    cr_assert(strstr(c, "2-3 sentence summary"));
    dx_free(c);
    dx_tp_result_free(r);

    /* 120 examples and no COMPLETE: 10 observation calls, not 12. */
    dx_dataset *big = dataset(120);
    for (int i = 0; i < 10; i++)
        push_field("observations", "More.");
    push_field("summary", "Short.");
    push_three();
    uint64_t before = upstream_requests();
    cr_assert_eq(dx_mipro(st, big, val, &o, &m, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(upstream_requests() - before, 10 + 1 + 3);
    h = lm_history();
    c = history_call(h, 11 + 10);
    cr_assert(strstr(c, "[[ ## observations ## ]]\nMore.More.More.More.More."
                        "More.More.More.More.More.\n"),
              "%s", c);
    dx_free(c);
    free_history();
    dx_tp_result_free(r);
    dx_dataset_free(big);
    dx_module_free(st);
    dx_dataset_free(train);
    dx_dataset_free(val);
}

Test(mipro, the_budget_stops_the_summary_and_a_resumed_run_asks_only_the_rest)
{
    char ckpt[] = "/tmp/dx_mipro_ground_XXXXXX";
    int fd = mkstemp(ckpt);
    cr_assert_geq(fd, 0);
    close(fd);
    unlink(ckpt);
    dx_module *st = probe_program();
    dx_dataset *train = dataset(6), *val = dataset(6);
    dx_tp_opts o = opts();
    dx_mipro_opts m = {.auto_mode = DX_MIPRO_AUTO_NONE,
                       .num_candidates = 3,
                       .num_trials = 3,
                       .no_minibatch = true};
    dx_tp_result *r = NULL;
    dx_diag d = {0};

    /* One call allowed: the first observation, then nothing. */
    o.max_lm_calls = 1;
    push_field("observations", "The questions are whole numbers.");
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &r, &d), DX_ELIMIT, "%s",
                 d.msg);
    cr_assert_eq(upstream_requests(), 1);

    /* With a checkpoint, four calls: the summary and the first proposal's
     * two descriptions; its instruction is not asked. */
    o.checkpoint_path = ckpt;
    o.max_lm_calls = 4;
    push_field("observations", "The questions are whole numbers.");
    push_field("summary", "Summary: The questions are small whole numbers.");
    push_descriptions();
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &r, &d), DX_ELIMIT, "%s",
                 d.msg);
    cr_assert_eq(upstream_requests(), 1 + 4);

    /* Resumed without a budget: the first instruction, then two whole
     * proposals; the summary and descriptions come from the checkpoint. */
    o.max_lm_calls = 0;
    push_instruction("Say something.");
    push_descriptions();
    push_instruction("Answer with banana.");
    push_descriptions();
    push_instruction("Say cherry.");
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(upstream_requests(), 1 + 4 + 7);
    const char *h = lm_history();
    char *c = history_call(h, 5);
    cr_assert(strstr(c, "[[ ## dataset_description ## ]]\nThe questions are "
                        "small whole numbers.\n"),
              "the stored summary: %s", c);
    cr_assert(strstr(c, "[[ ## module_description ## ]]\nIt maps a question "
                        "to an answer.\n"),
              "the stored description: %s", c);
    cr_assert(strstr(c, "[[ ## proposed_instruction ## ]]"));
    dx_free(c);
    cr_assert_str_eq(dx_signature_instructions(dx_predict_signature(
                         dx_module_child(r->program, "p"))),
                     "Answer with banana.");
    dx_tp_result_free(r);

    /* And once more: nothing is asked. */
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(upstream_requests(), 1 + 4 + 7);
    free_history();
    dx_tp_result_free(r);
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

Test(mipro, a_failed_summary_is_left_out_as_dspy_does)
{
    dx_module *st = probe_program();
    dx_dataset *train = dataset(6), *val = dataset(6);
    /* The first observation call fails for good (retries included). */
    cr_assert_eq(dx_lmserver_inject(srv, "auth", 1), DX_OK);
    push_three();
    dx_tp_opts o = opts();
    dx_mipro_opts m = {.auto_mode = DX_MIPRO_AUTO_NONE,
                       .num_candidates = 3,
                       .num_trials = 3,
                       .no_minibatch = true,
                       .no_program_description = true};
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &r, &d), DX_OK, "%s", d.msg);
    const char *h = lm_history();
    cr_assert_eq(count_of(h, "[[ ## proposed_instruction ## ]]\nSay cherry."),
                 1);
    char *c = history_call(h, 1);
    cr_assert_null(strstr(c, "dataset_description"), "%s", c);
    cr_assert(strstr(c, "[[ ## task_demos ## ]]"));
    dx_free(c);
    free_history();
    dx_tp_result_free(r);
    dx_module_free(st);
    dx_dataset_free(train);
    dx_dataset_free(val);
}

Test(mipro, the_trainset_is_shown_as_python_reprs_of_its_examples)
{
    dx_module *st = probe_program();
    dx_dataset *train = dx_dataset_new(), *val = dataset(6);
    const char *in[] = {"question", "context"};
    dx_example *a = dx_example_new();
    dx_example_set_str(a, "question", "It's \"x\"\ncaf\xc3\xa9\xc2\xa0!");
    dx_example_set_str(a, "context", "tab\there");
    cr_assert_eq(dx_example_set_json(a, "answer", "[1, 2.5, true, null]", NULL),
                 DX_OK);
    dx_example_set_str(a, "dspy_split", "train");
    dx_example_with_inputs(a, in, 2);
    dx_example *b = dx_example_new();
    dx_example_set_str(b, "question", "it's");
    cr_assert_eq(dx_example_set_json(b, "context", "{\"k\": \"v\"}", NULL),
                 DX_OK);
    dx_example_set_float(b, "answer", 0.5);
    dx_example_with_inputs(b, in, 2);
    cr_assert_eq(dx_dataset_append(train, a), DX_OK);
    cr_assert_eq(dx_dataset_append(train, b), DX_OK);
    push_field("observations", "Mixed values.");
    push_field("summary", "Mixed.");
    push_three();
    dx_tp_opts o = opts();
    dx_mipro_opts m = {.auto_mode = DX_MIPRO_AUTO_NONE,
                       .num_candidates = 3,
                       .num_trials = 3,
                       .no_minibatch = true,
                       .no_program_description = true};
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_mipro(st, train, val, &o, &m, &r, &d), DX_OK, "%s", d.msg);
    char *c = history_call(lm_history(), 0);
    /* Python: repr(trainset[0:2]) with the input keys sorted, dspy_ keys
     * left out, a non-printable no-break space escaped. */
    const char *want =
        "[[ ## examples ## ]]\n"
        "[Example({'question': 'It\\'s \"x\"\\ncaf\xc3\xa9\\xa0!', "
        "'context': 'tab\\there', 'answer': [1, 2.5, True, None]}) "
        "(input_keys={'context', 'question'}), "
        "Example({'question': \"it's\", 'context': {'k': 'v'}, "
        "'answer': 0.5}) (input_keys={'context', 'question'})]\n";
    cr_assert(strstr(c, want), "%s", c);
    dx_free(c);
    free_history();
    dx_tp_result_free(r);
    dx_module_free(st);
    dx_dataset_free(train);
    dx_dataset_free(val);
}
