/*
 * evaluate.h — evaluating a program over a dataset with a metric: every
 * example in its own process, a bounded number in flight, errors isolated
 * and recorded, results in dataset order.
 *
 * An example whose program fails (crash, timeout, parse error, LM error)
 * or whose metric crashes is recorded with its error and scores 0
 * (failure_score); evaluation stops early only once more than max_errors
 * examples have failed. A crash never takes another example with it: the
 * program and the metric run in the example's own process.
 *
 * Metrics: DSPy's answer_exact_match (normalised exact match, list answers
 * allowed), token F1, answer_passage_match, the LM-judged SemanticF1 and
 * CompleteAndGrounded, or a C function returning a float in [0, 1] (a bool
 * is 0/1) that may look at the run's trace.
 *
 * Results: overall score (percent, as DSPy), a row per example (inputs,
 * prediction, score, error, latency, tokens, cost), latency percentiles,
 * totals; written as JSONL and shown as a table. Progress: a live bar on a
 * terminal, plain periodic lines otherwise.
 *
 * Cancellation: dx_evaluate_cancel_all (any thread, or a SIGINT handler)
 * stops starting new examples, kills those in flight and returns
 * what finished (cancelled = true).
 *
 * Nothing finished is lost to a kill: dx_eval_opts.on_row sees each row as
 * its example ends (a journal writes it to a file), and dx_eval_opts.resume
 * takes an earlier run's rows (dx_eval_result_read_jsonl) so only the rest
 * run.
 */
#ifndef DSPEX_EVALUATE_H
#define DSPEX_EVALUATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "diag.h"
#include "example.h"
#include "export.h"
#include "module.h"

/* ---- metrics ---------------------------------------------------------- */

/* DSPy's normalize_text: NFD, str.lower() (final sigma included), remove
 * ASCII punctuation (string.punctuation), remove the articles a/an/the
 * (Python's \b), collapse whitespace (str.split), character for character
 * as Python does it, for every script (Unicode 14, Python 3.11's).
 * *out is the caller's. */
DX_API int dx_metric_normalize(const char *text, char **out);
/* Normalised exact match of prediction against answer. */
DX_API bool dx_metric_em(const char *prediction, const char *answer);
/* Token-level F1 (SQuAD / DSPy's F1) of prediction against answer. */
DX_API double dx_metric_f1(const char *prediction, const char *answer);
/* Does any passage contain the normalised answer? */
DX_API bool dx_metric_passage_has_answer(const char *const *passages, size_t n,
                                         const char *answer);

/* A metric: score for (example, prediction); trace may be NULL (NULL when
 * the evaluation does not keep traces). Runs in the example's process. */
typedef double (*dx_metric_fn)(const dx_example *example,
                               const dx_prediction *pred, const dx_trace *trace,
                               void *ud);
/* A yes/no metric, as DSPy metrics often are (they return a bool): true
 * scores 1, false 0, and DSPy-style result files write True/False. */
typedef bool (*dx_metric_pass_fn)(const dx_example *example,
                                  const dx_prediction *pred,
                                  const dx_trace *trace, void *ud);

typedef enum dx_metric_kind {
    DX_METRIC_EXACT_MATCH,   /* answer_exact_match on `field` */
    DX_METRIC_F1,            /* token F1 on `field` (max over list answers) */
    DX_METRIC_PASSAGE_MATCH, /* answer_passage_match: the prediction's
                                `passages_field` contains the answer */
    DX_METRIC_CUSTOM,
    /* DSPy's SemanticF1: an LM judge (a ChainOfThought on DSPy's
     * SemanticRecallPrecision signature, or with `decompositional` its
     * DecompositionalSemanticRecallPrecision) reads the example's
     * `question_field`, its `field` (the ground truth) and the prediction's
     * `field` (the system response), and reports recall and precision; the
     * score is their F1, each clamped to [0, 1]. */
    DX_METRIC_SEMANTIC_F1,
    /* DSPy's CompleteAndGrounded: two judge calls, AnswerCompleteness
     * (against the example's `field`) and AnswerGroundedness (against the
     * prediction's `passages_field`, the retrieved context); the score is
     * the F1 of groundedness and completeness. */
    DX_METRIC_COMPLETE_AND_GROUNDED,
} dx_metric_kind;

typedef struct dx_metric {
    dx_metric_kind kind;
    /* The label / output field compared (default "answer"; "response" for
     * the judged kinds, as DSPy's). The example's value may be a string or
     * a list of strings (any one matching). A
     * label that is not a string (a number, a bool) is compared as its
     * JSON text, so 42 matches the answer "42"; DSPy's built-in metrics
     * raise for such a label, which fails every example. */
    const char *field;
    const char *passages_field; /* default "context" */
    dx_metric_fn fn;            /* DX_METRIC_CUSTOM: a score */
    dx_metric_pass_fn pass;     /* DX_METRIC_CUSTOM without fn: yes/no */
    void *ud;                   /* for fn or pass */
    /* DX_METRIC_EXACT_MATCH: DSPy's answer_exact_match(frac=...). Strictly
     * between 0 and 1: an answer matches when the token F1 against it is at
     * least frac (score 1, else 0). 0 (unset) or 1 and above: exact match. */
    double frac;
    /* The score's column in DSPy-style result files, which DSPy names
     * after the metric function (dx_metric_name). NULL: the built-in's
     * DSPy name, or "metric" for a custom one. */
    const char *name;
    /* ---- the LM-judged kinds (SEMANTIC_F1, COMPLETE_AND_GROUNDED) ----
     * The judge runs in the example's process after the program, on the
     * LM client judge_lm_name (NULL: the program's LM, as DSPy's settings
     * LM), with the evaluation's adapter, cache namespace and remaining
     * time; its tokens and cost count in the example's row. A judge call
     * that fails (LM error, an answer without a number) fails the example
     * with the judge's reason, as the metric raising does in DSPy. */
    const char *question_field; /* default "question" */
    const char *judge_lm_name;
    bool decompositional; /* SEMANTIC_F1: the decompositional signature */
    /* The pass mark when an optimizer bootstraps demos with this metric
     * and sets no metric_threshold of its own (DSPy's metric returns
     * score >= threshold there). 0 = DSPy's 0.66. */
    double threshold;
} dx_metric;

/* Score with a built-in metric (or call fn). Any thread or process; the
 * LM-judged kinds only in a process (they call the judge and wait), and
 * they return NaN when the judge fails (dx_evaluate reports why). */
DX_API double dx_metric_score(const dx_metric *m, const dx_example *example,
                              const dx_prediction *pred, const dx_trace *trace);
/* "exact_match", "f1", "passage_match" → kind; DX_ENOENT otherwise. */
DX_API int dx_metric_from_name(const char *name, dx_metric_kind *out);
/* m->name, else "answer_exact_match", "f1", "answer_passage_match" or
 * "metric" by kind. Static or m's own. */
DX_API const char *dx_metric_name(const dx_metric *m);

/* ---- evaluation ------------------------------------------------------- */

typedef enum dx_eval_progress_mode {
    DX_EVAL_PROGRESS_AUTO, /* a bar when `progress_out` is a TTY, else lines */
    DX_EVAL_PROGRESS_OFF,
    DX_EVAL_PROGRESS_BAR,
    DX_EVAL_PROGRESS_LINES,
} dx_eval_progress_mode;

typedef struct dx_eval_row dx_eval_row;
struct dx_eval_result;

typedef struct dx_eval_opts {
    dx_metric metric;
    /* Examples in flight at once; 0 = 16. Each example is a process, so
     * thousands are fine; their LM calls still go through the HTTP layer,
     * which opens at most dx_http_limits.max_host_connections (default
     * 256) connections per host and queues the rest: above that, raise
     * the limit (dx_http_set_limits) and the process's descriptor limit
     * for an HTTP/1.1 server, which takes one call per connection (the
     * dspex command does both for --concurrency above 256). */
    size_t concurrency;
    /* Stop after more than this many failed examples; 0 = never stop. */
    size_t max_errors;
    /* Per example (program + metric); 0 = 120,000 ms. */
    int64_t example_timeout_ms;
    double failure_score; /* default 0 */
    /* Passed to every dx_module_call (LM client, adapter, rollout id...);
     * timeout_ms there is replaced by example_timeout_ms. */
    dx_call_opts call;
    /* Keep traces for the metric (and the rows). */
    bool trace;
    dx_eval_progress_mode progress;
    FILE *progress_out; /* default stderr */
    /* Seconds between plain progress lines (0 = 2 s). */
    double progress_interval_s;
    /* Called as each example that ran ends, in the order they end, with
     * its row (done, its prediction or error, usage), before the next
     * example starts in its place: a journal (dx_eval_journal_row) writes
     * it out, so a run that is killed keeps what finished. It runs in the
     * evaluation's coordinator process and must not block for long, nor
     * keep the row. The row's example is then the dataset's own (the row
     * gets its copy when the run ends). Not called for rows taken from
     * `resume`. */
    void (*on_row)(const dx_eval_row *row, void *ud);
    void *on_row_ud;
    /* The rows of an earlier run of this evaluation (read back with
     * dx_eval_result_read_jsonl, or an earlier dx_eval_result): a row
     * that finished without an error is taken as it is (copied, resumed
     * = true) and its example does not run again; a failed row, and an
     * example it has no row for, runs. Its n must be the dataset's and
     * each taken row's example equal the dataset's at that index, else
     * DX_EINVAL. NULL: every example runs. The caller's; read only. */
    const struct dx_eval_result *resume;
    /* What this run's rows depend on besides their example: a fingerprint
     * of the program, the metric and the LM (dx_eval_run_key makes one).
     * Copied into the result and written in every row ("run_key"), and a
     * `resume` whose rows carry another key is refused (DX_EINVAL): rows
     * of another program, metric or model would otherwise be mixed in
     * silently. NULL: no key; rows without one are resumed unchecked. */
    const char *run_key;
} dx_eval_opts;

struct dx_eval_row {
    size_t index;        /* in the dataset */
    dx_example *example; /* the dataset's example (copy) */
    /* NULL when the program failed; kept when it answered and only the
     * metric failed (a missing label, a judge that did not answer). */
    dx_prediction *pred;
    double score;
    int error;       /* DX_OK or the failure's code */
    char *error_msg; /* NULL when ok */
    /* To the microsecond: the program's run; for an example that crashed,
     * hung or was killed, from its start until it ended. */
    double latency_ms;
    dx_usage_acc usage;  /* the example's LM usage (program run) */
    bool done;           /* false: not run (stopped early / cancelled) */
    bool resumed;        /* taken from dx_eval_opts.resume, not run */
    const char *run_key; /* the result's run_key (borrowed), or NULL */
};

typedef struct dx_eval_result {
    double score;  /* percent: 100 * sum(scores) / n_done, 2 decimals */
    size_t n;      /* examples in the dataset */
    size_t n_done; /* examples that finished (ok or failed) */
    size_t n_errors;
    bool stopped_early; /* max_errors reached */
    bool cancelled;
    double wall_s;
    /* Of the examples that finished without an error; 0 when none did. */
    double latency_p50_ms, latency_p95_ms, latency_p99_ms;
    dx_usage_acc usage; /* all examples */
    dx_eval_row *rows;  /* n rows, dataset order */
    size_t n_resumed;   /* rows taken from dx_eval_opts.resume (in n_done) */
    /* dx_eval_opts.run_key, or the key of the rows read back (NULL: none).
     * The result's; freed with it. */
    char *run_key;
} dx_eval_result;

typedef struct dx_eval dx_eval;

/* Evaluate m over ds. Blocks until done, stopped or cancelled. Works from
 * a host thread or a process. DX_OK with *out the caller's
 * (dx_eval_result_free) — also when stopped early or cancelled (see the
 * flags); DX_EINVAL, DX_ESTATE (runtime not running), DX_ENOMEM. */
DX_API int dx_evaluate(const dx_module *m, const dx_dataset *ds,
                       const dx_eval_opts *opts, dx_eval_result **out,
                       dx_diag *diag);
/* Cancel every evaluation running now: they stop starting examples, kill
 * those in flight and return what finished (cancelled = true). Optimizers
 * running now (teleprompt.h) stop too, with DX_ECANCELED. Safe from any
 * thread and from a signal handler: it bumps an atomic counter and writes
 * to an eventfd that a thread of the evaluations' waits on (the first
 * evaluation or optimization makes the eventfd, which stays open for the
 * life of the OS process; errno is left as it was). */
DX_API void dx_evaluate_cancel_all(void);

DX_API void dx_eval_result_free(dx_eval_result *r);
/* One JSON object per finished row, in dataset order: {"index",
 * "example", "prediction", "score", "error", "error_code" (dx_err, 0 when
 * ok), "latency_ms", "input_tokens", "output_tokens", "cost_usd",
 * "cached" (every LM call came from the response cache), "lm_calls",
 * "cached_calls"}, and "run_key" when the run had one. Written whole or
 * not at all (a temporary file renamed). DX_OK, DX_EIO (diag), DX_ENOMEM.
 */
DX_API int dx_eval_result_write_jsonl(const dx_eval_result *r, const char *path,
                                      dx_diag *diag);
/* Read a file of rows (dx_eval_result_write_jsonl's, or a journal's, in
 * any order) back as a result over ds: n = ds->n, a row done for each
 * line, the rest not done; the scores, counts and usage summed over the
 * rows read (wall time and percentiles 0). A line's "index" must be in
 * the dataset and its "example" equal the dataset's there (else the file
 * is of another dataset); a later line for the same index replaces an
 * earlier one. A last line without its newline (a write cut short) is
 * skipped and counted in *n_cut (may be NULL). A missing file is DX_ENOENT;
 * a malformed line DX_ESYNTAX with diag naming the file, line and what.
 * A failed row's error code is its "error_code" (DX_EINVAL in a file
 * without one). Rows that carry a "run_key" must all carry the same one
 * (else DX_EINVAL: rows of two runs in one file), which becomes the
 * result's run_key; rows without one are taken too. *out is the
 * caller's. */
DX_API int dx_eval_result_read_jsonl(const char *path, const dx_dataset *ds,
                                     dx_eval_result **out, size_t *n_cut,
                                     dx_diag *diag);

/* A journal: rows appended to a file as examples finish, so an evaluation
 * that is killed (OOM, a lost session, a reboot) leaves every finished
 * row behind, and dx_eval_result_read_jsonl + dx_eval_opts.resume run
 * only the rest. Use it as dx_eval_opts.on_row; afterwards write the
 * whole result over the same path (dx_eval_result_write_jsonl), which puts
 * the rows in dataset order. Each row is one write(2) of a whole line; the
 * file is flushed to its disk (fdatasync) at most once a second while rows
 * come and at close, so a machine that loses power loses at most the last
 * second's rows (those examples run again on resume), and a run that is
 * only killed loses none.
 * One evaluation at a time per journal (its coordinator is the only
 * writer). */
typedef struct dx_eval_journal dx_eval_journal;
/* Start path (created or replaced) with the finished rows of `kept` (may
 * be NULL: empty), written whole first (a temporary file renamed), then
 * open it for appending. DX_OK with *out the caller's; DX_EIO (diag
 * names the file and why), DX_ENOMEM. */
DX_API int dx_eval_journal_open(const char *path,
                                const struct dx_eval_result *kept,
                                dx_eval_journal **out, dx_diag *diag);
/* An on_row function: append row to the journal `ud`. A failed write is
 * kept for dx_eval_journal_close to report; later rows still try. */
DX_API void dx_eval_journal_row(const dx_eval_row *row, void *ud);
/* Close; DX_OK, or DX_EIO (diag) when a row could not be written. NULL is
 * a no-op. */
DX_API int dx_eval_journal_close(dx_eval_journal *j, dx_diag *diag);
/* A run key for dx_eval_opts.run_key: 16 hex digits of a SHA-256 over
 * what decides an example's row besides the example: m's state (DSPy's
 * dump_state: instructions, demos, signature, lm), the metric's kind and
 * settings (field, frac, passages and question fields, judge, name; a
 * custom metric is known only by its name: give it one), the adapter,
 * the cache namespace (rollout_id), the failure score, and `extra` (may
 * be NULL), which names what the options cannot: the model and endpoint
 * of the LM client, say. DX_OK, DX_EINVAL (NULL m or opts), DX_ENOMEM. */
#define DX_EVAL_RUN_KEY_LEN 17 /* 16 hex digits and the NUL */
DX_API int dx_eval_run_key(const dx_module *m, const dx_eval_opts *opts,
                           const char *extra, char out[DX_EVAL_RUN_KEY_LEN]);
/* A summary and the first max_rows rows (0 = all) as a text table. */
DX_API void dx_eval_result_print(const dx_eval_result *r, FILE *f,
                                 size_t max_rows);

typedef enum dx_eval_file_format {
    DX_EVAL_FILE_CSV,  /* as DSPy's Evaluate(save_as_csv=path) */
    DX_EVAL_FILE_JSON, /* as DSPy's Evaluate(save_as_json=path) */
} dx_eval_file_format;

/* The rows in the file DSPy's Evaluate saves, so scripts written for it
 * read dspex's results unchanged. One record per finished example, in
 * dataset order: the example's fields, then the prediction's (a key in
 * both becomes example_<key> and pred_<key>), then the score under
 * dx_metric_name(metric). The score is what DSPy's metric returns:
 * True/False for exact match, passage match and a `pass` metric, a float
 * for F1 and an `fn` metric, and failure_score (a float) for an example
 * that failed, whose
 * record has no prediction fields. JSON: a list of objects as json.dump
 * writes it (ASCII, ", " and ": "). CSV: Python's csv module (excel
 * dialect, \r\n, quotes only where needed), cells as Python's str()
 * (lists and dicts as their repr, None empty); its header is every key in
 * order of first appearance, where DSPy takes the first record's keys and
 * fails on a later record with others. Examples that did not run (stopped
 * early or cancelled) are left out. Written whole or not at all (a
 * temporary file renamed). DX_OK, DX_EIO (diag says the file and why),
 * DX_ENOMEM, DX_EINVAL. */
DX_API int dx_eval_result_save_dspy(const dx_eval_result *r,
                                    const dx_metric *metric,
                                    dx_eval_file_format format,
                                    const char *path, dx_diag *diag);

#endif
