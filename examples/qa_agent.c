/*
 * qa_agent.c — a question-answering agent served as a supervised process:
 * kill it while it answers and the supervisor starts a new one; the client
 * asks again and the answering goes on.
 *
 *     build/examples/qa_agent [--model M] [--questions N] [--kill-at K]
 *                             [--think-ms MS]
 *
 * The tree (root supervisor "qa_app", one_for_one):
 *   lm        the LM client (sim/base unless --model names a real LM)
 *   qa_agent  a server registered as "qa_agent" that answers calls with a
 *             ChainOfThought program on "question -> answer"
 * The main process asks N capitals questions from the sim's dev split.
 * While the agent works on question K, a "chaos" process kills it
 * (untrappably, as `kill -9` would): the main process's call fails with
 * "process down", the supervisor restarts the agent under the same name, and
 * the main process asks the same question again. --think-ms is a pause the
 * agent takes before calling the LM (default 100 ms), so that the kill lands
 * while a question is being answered even on the instantaneous sim model.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dspex/app.h>
#include <dspex/evaluate.h>
#include <dspex/module.h>
#include <dspex/runtime.h>
#include <dspex/server.h>
#include <dspex/sim.h>
#include <dspex/supervisor.h>

#include "agent_common.h"

enum { TAG_ASK = 1, TAG_ANSWER = 2 };

typedef struct settings {
    long questions;
    long kill_at;
    long think_ms;
} settings;

/* Heap/static data only: the supervisor and the agent read these from
 * other processes (see supervisor.h's memory rule). */
static settings cfg = {.questions = 6, .kill_at = 3, .think_ms = 100};
static dx_module *program;  /* read-only while the application runs */
static dx_dataset *dataset; /* the questions and their answers */

/* ---- the agent: a server that answers one question per call ------------ */

static int agent_init(void *arg, void **state, dx_term **stop_reason)
{
    (void)stop_reason;
    *state = arg; /* the program: shared, never changed, so nothing to free */
    return DX_OK;
}

static void free_example(void *ex)
{
    dx_example_free(ex);
}

/* A call's request term is the question (a binary); the reply is {ok,
 * Answer} or {error, Why}. The agent parks in dx_module_call while the
 * program runs in a process of its own. */
static dx_srv_ret agent_call(void *state, dx_msg *req, dx_from from,
                             dx_msg **reply, dx_term **stop)
{
    (void)from;
    (void)stop;
    const dx_module *prog = state;
    size_t len = 0;
    const char *q = req->term ? dx_binary_data(req->term, &len) : NULL;
    if (req->tag != TAG_ASK || q == NULL)
        return DX_SRV_NOREPLY;
    if (cfg.think_ms > 0)
        dx_sleep(cfg.think_ms);
    dx_example *in = dx_example_new();
    dx_example_set_str(in, "question", q);
    dx_call_opts opts = {.lm_name = "lm"};
    dx_prediction *pred = NULL;
    dx_diag d = {0};
    /* Killed while the program runs (the chaos monkey does that), the
     * agent still frees its question. */
    dx_ptie *tie = dx_ptie_new(in, free_example);
    int rc = dx_module_call(prog, in, &opts, &pred, NULL, &d);
    dx_ptie_cut(tie);
    dx_example_free(in);
    *reply = dx_msg_new(TAG_ANSWER);
    if (*reply == NULL) {
        dx_prediction_free(pred);
        return DX_SRV_NOREPLY;
    }
    if (rc == DX_OK)
        (*reply)->term =
            dx_tuple(2, dx_atom("ok"),
                     dx_str(dx_prediction_get_str(pred, "answer", "")));
    else
        (*reply)->term = dx_tuple(2, dx_atom("error"), dx_str(d.msg));
    dx_prediction_free(pred);
    return DX_SRV_REPLY;
}

static const dx_server_ops agent_ops = {
    .name = "qa_agent",
    .init = agent_init,
    .handle_call = agent_call,
};

static int start_agent(void *arg, void *extra, dx_pid *pid_out)
{
    (void)extra;
    dx_server_opts o = {.link = true, .name = "qa_agent"};
    return dx_server_start(&agent_ops, arg, &o, pid_out, NULL);
}

/* ---- chaos: kill the agent while it answers ---------------------------- */

static void chaos(void *arg)
{
    (void)arg;
    dx_sleep(cfg.think_ms / 2);
    dx_pid victim = dx_whereis("qa_agent");
    char pid[32] = "?";
    dx_term *t = dx_pid_term(victim);
    dx_term_format(t, pid, sizeof pid);
    dx_term_free(t);
    printf("  [chaos] killing qa_agent %s while it answers\n", pid);
    fflush(stdout);
    dx_kill(victim);
}

/* ---- the client -------------------------------------------------------- */

/* Ask the agent registered as "qa_agent"; DX_OK with the answer in buf. */
static int ask(const char *question, char *buf, size_t cap)
{
    dx_msg *req = dx_msg_new(TAG_ASK);
    if (req == NULL)
        return DX_ENOMEM;
    req->term = dx_str(question);
    dx_msg *rep = NULL;
    int rc = dx_call_named("qa_agent", req, 60000, &rep);
    if (rc != DX_OK)
        return rc;
    size_t len = 0;
    const char *text = dx_binary_data(dx_term_at(rep->term, 1), &len);
    snprintf(buf, cap, "%.*s", (int)len, text ? text : "");
    rc = dx_is_atom(dx_term_at(rep->term, 0), "ok") ? DX_OK : DX_EPROVIDER;
    dx_msg_free(rep);
    return rc;
}

/* Wait (up to 5 s) until a process other than old is registered as name. */
static dx_pid wait_for_new(const char *name, dx_pid old)
{
    for (int i = 0; i < 500; i++) {
        dx_pid p = dx_whereis(name);
        if (!dx_pid_is_none(p) && !dx_pid_eq(p, old))
            return p;
        dx_sleep(10);
    }
    return DX_NOPID;
}

static void client(void *arg)
{
    (void)arg;
    long correct = 0, answered = 0;
    printf("qa_agent: %ld questions; the agent is killed during question "
           "%ld\n\n",
           cfg.questions, cfg.kill_at);
    for (long i = 0; i < cfg.questions && (size_t)i < dataset->n; i++) {
        const dx_example *ex = dataset->items[i];
        const char *q = dx_example_get_str(ex, "question", "");
        const char *gold = dx_example_get_str(ex, "answer", "");
        printf("Q%ld: %s\n", i + 1, q);
        fflush(stdout);
        if (i + 1 == cfg.kill_at)
            dx_spawn(chaos, NULL, NULL);
        char answer[512];
        dx_pid before = dx_whereis("qa_agent");
        int rc = ask(q, answer, sizeof answer);
        for (int tries = 0; (rc == DX_EDOWN || rc == DX_ENOPROC) && tries < 3;
             tries++) {
            printf("  [client] the call failed (%s): the agent died "
                   "mid-answer; asking again\n",
                   dx_strerror(rc));
            wait_for_new("qa_agent", before);
            before = dx_whereis("qa_agent");
            rc = ask(q, answer, sizeof answer);
        }
        if (rc != DX_OK) {
            printf("  error: %s %s\n", dx_strerror(rc), answer);
            continue;
        }
        bool ok = dx_metric_em(answer, gold);
        answered++;
        correct += ok;
        printf("  A: %s   (%s; expected %s)\n", answer, ok ? "right" : "wrong",
               gold);
        fflush(stdout);
    }
    dx_sup_counts k = {0};
    dx_sup_count_children(dx_whereis("qa_app"), &k);
    printf("\nanswered %ld of %ld questions, %ld right; the supervisor "
           "restarted the agent %llu time(s)\n",
           answered, cfg.questions, correct, (unsigned long long)k.restarts);
    fflush(stdout);
}

/* ---- main -------------------------------------------------------------- */

static int usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--model M] [--questions N] [--kill-at K] "
            "[--think-ms MS]\n"
            "  A supervised question answerer; its process is killed while\n"
            "  it answers question K (default 3) and restarted.\n"
            "  --model M   LM to use (default %s; a real one reads its key\n"
            "              from the provider's environment variable)\n",
            prog, EX_DEFAULT_MODEL);
    return 2;
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno != 0 || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    const char *model = NULL;
    for (int i = 1; i < argc; i++) {
        const char *m = ex_model_arg(argc, argv, &i);
        if (m != NULL) {
            if (!*m)
                return usage(argv[0]);
            model = m;
        } else if (i + 1 < argc && strcmp(argv[i], "--questions") == 0) {
            if (!parse_long(argv[++i], 1, 60, &cfg.questions))
                return usage(argv[0]);
        } else if (i + 1 < argc && strcmp(argv[i], "--kill-at") == 0) {
            if (!parse_long(argv[++i], 0, 60, &cfg.kill_at))
                return usage(argv[0]);
        } else if (i + 1 < argc && strcmp(argv[i], "--think-ms") == 0) {
            if (!parse_long(argv[++i], 0, 10000, &cfg.think_ms))
                return usage(argv[0]);
        } else {
            return usage(argv[0]);
        }
    }

    dx_signature *sig = NULL;
    dx_diag d = {0};
    if (dx_signature_parse("question -> answer", NULL, NULL, 0, &sig, &d) !=
            DX_OK ||
        (program = dx_chain_of_thought_new(sig, NULL)) == NULL ||
        dx_sim_generate(DX_SIM_CAPITALS, "dev", DX_SIM_DEFAULT_SEED,
                        DX_SIM_DEV_SIZE, &dataset) != DX_OK) {
        fprintf(stderr, "qa_agent: cannot build the program: %s\n", d.msg);
        return 1;
    }
    dx_signature_unref(sig); /* the program holds its own reference */

    dx_child_spec children[2] = {{0}};
    if (ex_lm_child(&children[0], model) != DX_OK)
        return 1;
    children[1] =
        (dx_child_spec){.id = "qa_agent", .start = start_agent, .arg = program};
    dx_sup_spec root = {
        .name = "qa_app",
        .strategy = DX_SUP_ONE_FOR_ONE,
        .intensity = 5,
        .period_s = 10,
        .children = children,
        .nchildren = 2,
    };

    ex_logs_in_words();
    dx_term *reason = NULL;
    int rc = dx_app_run(NULL, &root, client, NULL, &reason);
    dx_log_set_sink(NULL, NULL);
    if (rc != DX_OK) {
        char buf[256] = "";
        if (reason)
            dx_term_format(reason, buf, sizeof buf);
        fprintf(stderr, "qa_agent: %s %s (model %s)\n", dx_strerror(rc), buf,
                model ? model : EX_DEFAULT_MODEL);
    }
    dx_term_free(reason);
    dx_lm_client_child_spec_free(&children[0]);
    dx_module_free(program);
    dx_dataset_free(dataset);
    return rc == DX_OK ? 0 : 1;
}
