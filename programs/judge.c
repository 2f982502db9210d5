/*
 * judge.c — the LM-judged metrics: DSPy's SemanticF1 and
 * CompleteAndGrounded (dspy/evaluate/auto_evaluation.py).
 *
 * Each asks a ChainOfThought on one of DSPy's judge signatures — the same
 * instructions, field names, types and descriptions, so the adapter writes
 * the prompt DSPy's would and the scores are comparable — and combines the
 * numbers it answers with DSPy's f1_score. The judge runs in the calling
 * process (an evaluation's example, a bootstrap run), under the run's
 * deadline, and its usage is added to the caller's.
 *
 * The four signatures are built once and shared read-only; a judge module
 * is built per call (a few allocations next to an LM call) and held in a
 * dx__held, so a kill during the judge's LM call frees it.
 */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "dspex/alloc.h"
#include "eval_int.h"
#include "module_int.h"

/* ---- DSPy's judge signatures ------------------------------------------ */

enum judge_sig {
    SIG_SEMANTIC,     /* SemanticRecallPrecision */
    SIG_DECOMPOSED,   /* DecompositionalSemanticRecallPrecision */
    SIG_COMPLETENESS, /* AnswerCompleteness */
    SIG_GROUNDEDNESS, /* AnswerGroundedness */
    SIG_COUNT,
};

/* An output field of a judge signature: name, type ("str" or "float"),
 * description. */
typedef struct judge_out {
    const char *name, *type, *desc;
} judge_out;

static const char RECALL_DESC[] =
    "fraction (out of 1.0) of ground truth covered by the system response";
static const char PRECISION_DESC[] =
    "fraction (out of 1.0) of system response covered by the ground truth";
static const char GT_IDEAS_DESC[] =
    "enumeration of key ideas in the ground truth";
static const char SR_IDEAS_DESC[] =
    "enumeration of key ideas in the system response";
static const char OVERLAP_DESC[] =
    "discussion of the overlap between ground truth and system response";

/* DSPy's class name, its docstring as DSPy reads it (inspect.cleandoc),
 * the input names (the question, what the response is held against, the
 * response) and the outputs, in DSPy's order. */
static const struct {
    const char *name;
    const char *instructions;
    const char *inputs[3];
    judge_out outputs[5];
} judge_defs[SIG_COUNT] = {
    [SIG_SEMANTIC] =
        {"SemanticRecallPrecision",
         "Compare a system's response to the ground truth to compute its "
         "recall and precision.\n"
         "If asked to reason, enumerate key ideas in each response, and "
         "whether they are present in the other response.",
         {"question", "ground_truth", "system_response"},
         {{"recall", "float", RECALL_DESC},
          {"precision", "float", PRECISION_DESC}}},
    [SIG_DECOMPOSED] =
        {"DecompositionalSemanticRecallPrecision",
         "Compare a system's response to the ground truth to compute recall "
         "and precision of key ideas.\n"
         "You will first enumerate key ideas in each response, discuss their "
         "overlap, and then report recall and precision.",
         {"question", "ground_truth", "system_response"},
         {{"ground_truth_key_ideas", "str", GT_IDEAS_DESC},
          {"system_response_key_ideas", "str", SR_IDEAS_DESC},
          {"discussion", "str", OVERLAP_DESC},
          {"recall", "float", RECALL_DESC},
          {"precision", "float", PRECISION_DESC}}},
    [SIG_COMPLETENESS] =
        {"AnswerCompleteness",
         "Estimate the completeness of a system's responses, against the "
         "ground truth.\n"
         "You will first enumerate key ideas in each response, discuss their "
         "overlap, and then report completeness.",
         {"question", "ground_truth", "system_response"},
         {{"ground_truth_key_ideas", "str", GT_IDEAS_DESC},
          {"system_response_key_ideas", "str", SR_IDEAS_DESC},
          {"discussion", "str", OVERLAP_DESC},
          {"completeness", "float", RECALL_DESC}}},
    [SIG_GROUNDEDNESS] =
        {"AnswerGroundedness",
         "Estimate the groundedness of a system's responses, against real "
         "retrieved documents written by people.\n"
         "You will first enumerate whatever non-trivial or check-worthy "
         "claims are made in the system response, and then\n"
         "discuss the extent to which some or all of them can be deduced "
         "from the retrieved context and basic commonsense.",
         {"question", "retrieved_context", "system_response"},
         {{"system_response_claims", "str",
           "enumeration of non-trivial or check-worthy claims in the system "
           "response"},
          {"discussion", "str",
           "discussion of how supported the claims are by the retrieved "
           "context"},
          {"groundedness", "float",
           "fraction (out of 1.0) of system response supported by the "
           "retrieved context"}}},
};

static dx_signature *judge_sigs[SIG_COUNT];
static pthread_once_t judge_once = PTHREAD_ONCE_INIT;

static dx_signature *build_sig(enum judge_sig which)
{
    dx_field_spec f[8];
    dx_type *types[8] = {0};
    size_t n = 0;
    for (size_t i = 0; i < 3; i++) {
        types[n] = dx_type_new(DX_TYPE_STR);
        f[n] = (dx_field_spec){.name = judge_defs[which].inputs[i],
                               .role = DX_FIELD_INPUT,
                               .type = types[n]};
        n++;
    }
    for (size_t i = 0; i < 5 && judge_defs[which].outputs[i].name; i++) {
        const judge_out *o = &judge_defs[which].outputs[i];
        types[n] = dx_type_new(strcmp(o->type, "float") == 0 ? DX_TYPE_FLOAT
                                                             : DX_TYPE_STR);
        f[n] = (dx_field_spec){.name = o->name,
                               .role = DX_FIELD_OUTPUT,
                               .type = types[n],
                               .desc = o->desc};
        n++;
    }
    dx_signature *s = NULL;
    bool typed = true;
    for (size_t i = 0; i < n; i++)
        typed = typed && types[i] != NULL;
    if (typed)
        (void)dx_signature_build(f, n, judge_defs[which].instructions, &s,
                                 NULL);
    for (size_t i = 0; i < n; i++)
        dx_type_free(types[i]);
    return s;
}

static void build_sigs(void)
{
    for (int i = 0; i < SIG_COUNT; i++)
        judge_sigs[i] = build_sig((enum judge_sig)i);
}

/* ---- one judge call ----------------------------------------------------- */

/* DSPy's f1_score: both clamped to [0, 1]; 0 when both are 0. */
static double clamped_f1(double precision, double recall)
{
    precision = fmax(0.0, fmin(1.0, precision));
    recall = fmax(0.0, fmin(1.0, recall));
    return precision + recall == 0
               ? 0.0
               : 2 * precision * recall / (precision + recall);
}

typedef struct judge_run {
    const dx_metric *metric;
    const dx_call_opts *call;
    int64_t deadline_ms;
    dx_usage_acc *usage;
    dx_diag *diag;
} judge_run;

/* Ask the judge `which` about (question, against, response) — its three
 * inputs in order — and read the named numbers from its answer into
 * out[]. DX_OK, or the failure with diag saying which judge and why. */
static int ask(const judge_run *jr, enum judge_sig which, const cJSON *question,
               const cJSON *against, const cJSON *response,
               const char *const *numbers, double *out, size_t n_numbers)
{
    const char *const *in = judge_defs[which].inputs;
    if (judge_sigs[which] == NULL)
        return dx_diag_set(jr->diag, DX_ENOMEM, 0, 0, "%s: out of memory",
                           dx_metric_name(jr->metric));
    dx__held *h = dx__held_new();
    if (h == NULL)
        return dx_diag_set(jr->diag, DX_ENOMEM, 0, 0, "%s: out of memory",
                           dx_metric_name(jr->metric));
    dx_predict_opts po = {.lm_name = jr->metric->judge_lm_name};
    h->mod[0] = dx_chain_of_thought_new(judge_sigs[which], &po);
    h->ex[0] = dx_example_new();
    int rc = h->mod[0] && h->ex[0] ? DX_OK : DX_ENOMEM;
    if (rc == DX_OK)
        rc = dx_example_set_value(h->ex[0], in[0], question);
    if (rc == DX_OK)
        rc = dx_example_set_value(h->ex[0], in[1], against);
    if (rc == DX_OK)
        rc = dx_example_set_value(h->ex[0], in[2], response);
    if (rc != DX_OK) {
        dx__held_free(h);
        return dx_diag_set(jr->diag, rc, 0, 0, "%s: out of memory",
                           dx_metric_name(jr->metric));
    }
    /* The run's LM, adapter, cache namespace and prices; neither its
     * trace nor its stream listener, which are the program's. */
    dx_call_opts call = jr->call ? *jr->call : (dx_call_opts){0};
    call.trace = false;
    call.on_chunk = NULL;
    call.chunk_ud = NULL;
    dx_usage_acc used;
    dx_usage_acc_init(&used, "judge");
    rc = dx__run_program(h->mod[0], h->ex[0], &call, jr->deadline_ms,
                         &h->pred[0], NULL, jr->diag, &used);
    if (jr->usage)
        dx_usage_acc_merge(jr->usage, &used);
    if (rc != DX_OK) {
        dx_diag_prefix(jr->diag, "%s judge (%s)", dx_metric_name(jr->metric),
                       judge_defs[which].name);
        dx__held_free(h);
        return rc;
    }
    for (size_t i = 0; i < n_numbers; i++) {
        const cJSON *v = dx_prediction_get(h->pred[0], numbers[i]);
        if (!cJSON_IsNumber(v) || isnan(v->valuedouble)) {
            dx__held_free(h);
            return dx_diag_set(
                jr->diag, DX_EPARSE, 0, 0, "%s judge (%s): no number for %s",
                dx_metric_name(jr->metric), judge_defs[which].name, numbers[i]);
        }
        out[i] = v->valuedouble;
    }
    dx__held_free(h);
    return DX_OK;
}

static const char *label_field(const dx_metric *m)
{
    return m->field ? m->field : "response";
}

bool dx__metric_is_judged(const dx_metric *m)
{
    return m && (m->kind == DX_METRIC_SEMANTIC_F1 ||
                 m->kind == DX_METRIC_COMPLETE_AND_GROUNDED);
}

double dx__metric_pass_mark(const dx_metric *m)
{
    if (!dx__metric_is_judged(m))
        return 0;
    return m->threshold > 0 ? m->threshold : 0.66;
}

int dx__metric_judge_fields_check(const dx_metric *m, const dx_example *example,
                                  const dx_prediction *pred, dx_diag *diag)
{
    const char *q = m->question_field ? m->question_field : "question";
    const char *f = label_field(m);
    const char *missing_ex = !example || !dx_example_get(example, q) ? q
                             : !dx_example_get(example, f)           ? f
                                                                     : NULL;
    if (missing_ex)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "the example has no \"%s\" for %s", missing_ex,
                           dx_metric_name(m));
    const char *pf = m->passages_field ? m->passages_field : "context";
    const char *missing_pred = !pred || !dx_prediction_get(pred, f) ? f
                               : m->kind == DX_METRIC_COMPLETE_AND_GROUNDED &&
                                       !dx_prediction_get(pred, pf)
                                   ? pf
                                   : NULL;
    if (missing_pred)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "the prediction has no \"%s\" for %s", missing_pred,
                           dx_metric_name(m));
    return DX_OK;
}

double dx__metric_judge(const dx_metric *m, const dx_example *example,
                        const dx_prediction *pred, const dx_call_opts *call,
                        int64_t deadline_ms, dx_usage_acc *usage, int *rc,
                        dx_diag *diag)
{
    int code = dx__metric_judge_fields_check(m, example, pred, diag);
    if (code != DX_OK) {
        *rc = code;
        return NAN;
    }
    pthread_once(&judge_once, build_sigs);
    judge_run jr = {m, call, deadline_ms, usage, diag};
    const cJSON *question = dx_example_get(
        example, m->question_field ? m->question_field : "question");
    const cJSON *truth = dx_example_get(example, label_field(m));
    const cJSON *response = dx_prediction_get(pred, label_field(m));
    double score = NAN;
    if (m->kind == DX_METRIC_SEMANTIC_F1) {
        static const char *const rp[] = {"recall", "precision"};
        double v[2] = {0, 0};
        code = ask(&jr, m->decompositional ? SIG_DECOMPOSED : SIG_SEMANTIC,
                   question, truth, response, rp, v, 2);
        if (code == DX_OK)
            score = clamped_f1(v[1], v[0]);
    } else {
        static const char *const c[] = {"completeness"};
        static const char *const g[] = {"groundedness"};
        double completeness = 0, groundedness = 0;
        const cJSON *context = dx_prediction_get(
            pred, m->passages_field ? m->passages_field : "context");
        code = ask(&jr, SIG_COMPLETENESS, question, truth, response, c,
                   &completeness, 1);
        if (code == DX_OK)
            code = ask(&jr, SIG_GROUNDEDNESS, question, context, response, g,
                       &groundedness, 1);
        if (code == DX_OK)
            score = clamped_f1(groundedness, completeness);
    }
    *rc = code;
    return code == DX_OK ? score : NAN;
}
