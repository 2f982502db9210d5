/*
 * pipeline.c — a multi-agent actor graph: a planner fans a job out to
 * researchers working in parallel, a writer gathers their findings into a
 * report; every agent is a supervised process and only messages pass
 * between them. One researcher crashes on its first job and is restarted;
 * the job it dropped is asked again and the report is still complete.
 *
 *     build/examples/pipeline [--model M] [--people N]
 *
 * The tree (root supervisor "pipeline_app", one_for_one):
 *   lm             the LM client
 *   writer         server "writer": collects findings per job, replies to
 *                  the job's requester when the last one arrives
 *   researcher_1..3  servers "researcher_N": answer one question each call
 *                  with a RAG program (BM25 over the two-hop corpus +
 *                  ChainOfThought)
 *   planner        server "planner": turns a request ("where were these
 *                  people born?") into one question per person and starts
 *                  a courier process per question
 * The flow of one job:
 *   main --call--> planner --cast expect(job, n, reply-to)--> writer
 *   planner --spawn--> courier i --call--> researcher_(i mod 3)
 *   courier i --cast finding(job, i, ...)--> writer --reply--> main
 * The planner does not wait: it answers the main process later, through
 * the writer (a deferred reply, server.h). A courier whose researcher dies
 * mid-call (DX_EDOWN) waits for the supervisor to register the new one and
 * asks again. In this example the planner and the writer are plain C; the
 * researchers are the LM programs.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dspex/app.h>
#include <dspex/evaluate.h>
#include <dspex/module.h>
#include <dspex/retrieve.h>
#include <dspex/server.h>
#include <dspex/sim.h>

#include "agent_common.h"

enum {
    TAG_REPORT = 1, /* main -> planner: list of names */
    TAG_RESEARCH,   /* courier -> researcher: question */
    TAG_FINDING,    /* researcher -> courier (reply); courier -> writer */
    TAG_EXPECT,     /* planner -> writer: {Job, N, ReplyPid, ReplyRef} */
    TAG_DONE,       /* writer -> main (the planner's deferred reply) */
};

#define N_RESEARCHERS 3
#define MAX_PEOPLE 12
#define MAX_JOBS 4

static long n_people = 5;
static dx_module *rag;           /* shared by the researchers, read-only */
static dx_dataset *dev;          /* where the people come from */
static _Atomic int crashed_once; /* researcher_2 crashes on its first job */

static char *pid_text(dx_pid pid, char *buf, size_t cap)
{
    dx_term *t = dx_pid_term(pid);
    dx_term_format(t, buf, cap);
    dx_term_free(t);
    return buf;
}

/* ---- researchers -------------------------------------------------------- */

static int researcher_init(void *arg, void **state, dx_term **stop)
{
    (void)stop;
    *state = arg; /* its registered name (static) */
    return DX_OK;
}

static dx_srv_ret researcher_call(void *state, dx_msg *req, dx_from from,
                                  dx_msg **reply, dx_term **stop)
{
    (void)from;
    (void)stop;
    const char *me = state;
    size_t len = 0;
    const char *q = dx_binary_data(req->term, &len);
    if (req->tag != TAG_RESEARCH || q == NULL)
        return DX_SRV_NOREPLY;
    if (strcmp(me, "researcher_2") == 0 && !atomic_exchange(&crashed_once, 1)) {
        char pid[32];
        printf("  [researcher_2 %s] crashing on purpose in the middle of a "
               "job\n",
               pid_text(dx_self(), pid, sizeof pid));
        fflush(stdout);
        dx_exit_self(dx_atom("simulated_crash"));
    }
    dx_example *in = dx_example_new();
    dx_example_set_str(in, "question", q);
    dx_prediction *pred = NULL;
    dx_diag d = {0};
    int rc = dx_module_call(rag, in, NULL, &pred, NULL, &d);
    dx_example_free(in);
    *reply = dx_msg_new(TAG_FINDING);
    if (*reply != NULL)
        (*reply)->term = dx_str(
            rc == DX_OK ? dx_prediction_get_str(pred, "answer", "") : d.msg);
    dx_prediction_free(pred);
    return DX_SRV_REPLY;
}

static const dx_server_ops researcher_ops = {
    .name = "researcher",
    .init = researcher_init,
    .handle_call = researcher_call,
};

static int start_researcher(void *arg, void *extra, dx_pid *pid_out)
{
    (void)extra;
    dx_server_opts o = {.link = true, .name = arg};
    return dx_server_start(&researcher_ops, arg, &o, pid_out, NULL);
}

/* ---- the writer --------------------------------------------------------- */

typedef struct job {
    int64_t id; /* 0: free slot */
    size_t expected, got;
    dx_from reply_to;
    char lines[MAX_PEOPLE][160];
} job;

typedef struct writer {
    job jobs[MAX_JOBS];
} writer;

static int writer_init(void *arg, void **state, dx_term **stop)
{
    (void)arg;
    (void)stop;
    /* Process memory: a writer that dies loses its jobs with it. */
    *state = dx_pcalloc(1, sizeof(writer));
    return *state ? DX_OK : DX_ENOMEM;
}

static job *find_job(writer *w, int64_t id)
{
    for (size_t i = 0; i < MAX_JOBS; i++)
        if (w->jobs[i].id == id)
            return &w->jobs[i];
    return NULL;
}

static void finish_if_done(job *j)
{
    if (j->expected == 0 || j->got < j->expected)
        return;
    char report[MAX_PEOPLE * 170 + 128];
    size_t len = (size_t)snprintf(report, sizeof report,
                                  "Where %zu people were born\n", j->expected);
    for (size_t i = 0; i < j->expected && len < sizeof report; i++)
        len += (size_t)snprintf(report + len, sizeof report - len, "  - %s\n",
                                j->lines[i]);
    dx_msg *m = dx_msg_new(TAG_DONE);
    if (m != NULL) {
        m->term = dx_str(report);
        dx_reply(j->reply_to, m);
    }
    j->id = 0;
}

static dx_srv_ret writer_cast(void *state, dx_msg *msg, dx_term **stop)
{
    (void)stop;
    writer *w = state;
    int64_t id = 0, n = 0;
    if (!dx_int_value(dx_term_at(msg->term, 0), &id))
        return DX_SRV_NOREPLY;
    job *j = find_job(w, id);
    if (msg->tag == TAG_EXPECT && j == NULL && (j = find_job(w, 0)) != NULL &&
        dx_int_value(dx_term_at(msg->term, 1), &n) && n <= MAX_PEOPLE) {
        memset(j, 0, sizeof *j);
        j->id = id;
        j->expected = (size_t)n;
        dx_pid_value(dx_term_at(msg->term, 2), &j->reply_to.pid);
        dx_ref_value(dx_term_at(msg->term, 3), &j->reply_to.ref);
    } else if (msg->tag == TAG_FINDING && j != NULL &&
               dx_int_value(dx_term_at(msg->term, 1), &n) && n >= 0 &&
               n < MAX_PEOPLE) {
        /* {Job, I, Name, Answer, Researcher} */
        size_t l1, l2, l3;
        const char *name = dx_binary_data(dx_term_at(msg->term, 2), &l1);
        const char *ans = dx_binary_data(dx_term_at(msg->term, 3), &l2);
        const char *who = dx_binary_data(dx_term_at(msg->term, 4), &l3);
        snprintf(j->lines[n], sizeof j->lines[n], "%.*s: %.*s (by %.*s)",
                 (int)l1, name, (int)l2, ans, (int)l3, who);
        j->got++;
    }
    if (j != NULL)
        finish_if_done(j);
    return DX_SRV_NOREPLY;
}

static const dx_server_ops writer_ops = {
    .name = "writer",
    .init = writer_init,
    .handle_cast = writer_cast,
};

static int start_writer(void *arg, void *extra, dx_pid *pid_out)
{
    (void)arg;
    (void)extra;
    dx_server_opts o = {.link = true, .name = "writer"};
    return dx_server_start(&writer_ops, NULL, &o, pid_out, NULL);
}

/* ---- couriers: one per question ----------------------------------------- */

typedef struct errand {
    int64_t job;
    int64_t index;
    char name[64];
    char researcher[32];
} errand;

static void courier(void *arg)
{
    const errand *e = arg; /* dx_malloc'd, owned by this process */
    char question[160], answer[256] = "";
    snprintf(question, sizeof question, "In which country was %s born?",
             e->name);
    int rc = DX_ENOPROC;
    for (int attempt = 0; attempt < 3 && rc != DX_OK; attempt++) {
        dx_pid target = dx_whereis(e->researcher);
        dx_msg *req = dx_msg_new(TAG_RESEARCH), *rep = NULL;
        if (req == NULL)
            break;
        req->term = dx_str(question);
        rc = dx_call(target, req, 60000, &rep);
        if (rc == DX_OK) {
            size_t len = 0;
            const char *a = dx_binary_data(rep->term, &len);
            snprintf(answer, sizeof answer, "%.*s", (int)len, a ? a : "");
            dx_msg_free(rep);
        } else if (rc == DX_EDOWN || rc == DX_ENOPROC) {
            printf("  [courier for %s] %s went down mid-call; asking again "
                   "once the supervisor has restarted it\n",
                   e->name, e->researcher);
            fflush(stdout);
            for (int i = 0; i < 500; i++) {
                dx_pid now = dx_whereis(e->researcher);
                if (!dx_pid_is_none(now) && !dx_pid_eq(now, target))
                    break;
                dx_sleep(10);
            }
        }
    }
    if (rc != DX_OK)
        snprintf(answer, sizeof answer, "no answer (%s)", dx_strerror(rc));
    dx_msg *m = dx_msg_new(TAG_FINDING);
    if (m == NULL)
        return;
    m->term = dx_tuple(5, dx_int(e->job), dx_int(e->index), dx_str(e->name),
                       dx_str(answer), dx_str(e->researcher));
    dx_pid w = dx_whereis("writer");
    if (dx_pid_is_none(w))
        dx_msg_free(m);
    else
        dx_cast(w, m);
}

/* ---- the planner -------------------------------------------------------- */

static int planner_init(void *arg, void **state, dx_term **stop)
{
    (void)arg;
    (void)stop;
    *state = NULL;
    return DX_OK;
}

/* Request: a list of names. No reply now: the writer replies to `from`
 * when the findings are in. */
static dx_srv_ret planner_call(void *state, dx_msg *req, dx_from from,
                               dx_msg **reply, dx_term **stop)
{
    (void)state;
    (void)reply;
    (void)stop;
    static int64_t next_job = 1;
    size_t n = dx_term_size(req->term);
    if (req->tag != TAG_REPORT || n == 0 || n > MAX_PEOPLE)
        return DX_SRV_NOREPLY;
    int64_t id = next_job++;
    dx_msg *expect = dx_msg_new(TAG_EXPECT);
    if (expect == NULL)
        return DX_SRV_NOREPLY;
    expect->term = dx_tuple(4, dx_int(id), dx_int((int64_t)n),
                            dx_pid_term(from.pid), dx_ref_term(from.ref));
    dx_cast(dx_whereis("writer"), expect);
    printf("  [planner] job %lld: %zu questions for %d researchers\n",
           (long long)id, n, N_RESEARCHERS);
    fflush(stdout);
    for (size_t i = 0; i < n; i++) {
        errand *e = dx_malloc(sizeof *e);
        if (e == NULL)
            continue;
        size_t len = 0;
        const char *name = dx_binary_data(dx_term_at(req->term, i), &len);
        *e = (errand){.job = id, .index = (int64_t)i};
        snprintf(e->name, sizeof e->name, "%.*s", (int)len, name ? name : "");
        snprintf(e->researcher, sizeof e->researcher, "researcher_%zu",
                 i % N_RESEARCHERS + 1);
        dx_spawn_opts so = {.arg_free = dx_free};
        if (dx_spawn_opt(courier, e, &so, NULL, NULL) != DX_OK)
            dx_free(e);
    }
    return DX_SRV_NOREPLY;
}

static const dx_server_ops planner_ops = {
    .name = "planner",
    .init = planner_init,
    .handle_call = planner_call,
};

static int start_planner(void *arg, void *extra, dx_pid *pid_out)
{
    (void)arg;
    (void)extra;
    dx_server_opts o = {.link = true, .name = "planner"};
    return dx_server_start(&planner_ops, NULL, &o, pid_out, NULL);
}

/* ---- main --------------------------------------------------------------- */

static int exit_code = 1;

static void client(void *arg)
{
    (void)arg;
    dx_term *names = dx_nil();
    for (long i = 0; i < n_people && (size_t)i < dev->n; i++) {
        /* "In which country was P born?" -> P */
        const char *q = dx_example_get_str(dev->items[i], "question", "");
        const char *p = strstr(q, " was ");
        const char *end = strstr(q, " born?");
        if (p && end && end > p + 5)
            dx_list_append(names, dx_binary(p + 5, (size_t)(end - p - 5)));
    }
    printf("pipeline: asking the planner where %zu people were born\n",
           dx_term_size(names));
    fflush(stdout);
    dx_msg *req = dx_msg_new(TAG_REPORT), *rep = NULL;
    if (req == NULL) {
        dx_term_free(names);
        return;
    }
    req->term = names;
    int rc = dx_call_named("planner", req, 60000, &rep);
    if (rc != DX_OK) {
        printf("pipeline: no report: %s\n", dx_strerror(rc));
        return;
    }
    size_t len = 0;
    const char *text = dx_binary_data(rep->term, &len);
    printf("\nreport from the writer:\n%.*s", (int)len, text ? text : "");
    long right = 0;
    for (long i = 0; i < n_people && (size_t)i < dev->n; i++) {
        const dx_example *ex = dev->items[i];
        char want[160];
        const char *q = dx_example_get_str(ex, "question", "");
        const char *p = strstr(q, " was ");
        const char *end = strstr(q, " born?");
        if (!p || !end || end <= p + 5)
            continue;
        snprintf(want, sizeof want, "%.*s: %s (", (int)(end - p - 5), p + 5,
                 dx_example_get_str(ex, "answer", ""));
        right += text && strstr(text, want) != NULL;
    }
    dx_sup_counts k = {0};
    dx_sup_count_children(dx_whereis("pipeline_app"), &k);
    printf("\n%ld of %ld findings match the dataset; restarts in the tree: "
           "%llu\n",
           right, n_people, (unsigned long long)k.restarts);
    fflush(stdout);
    dx_msg_free(rep);
    exit_code = 0;
}

static int usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--model M] [--people N]\n"
            "  planner -> parallel researchers -> writer, each a supervised\n"
            "  process; one researcher crashes and is restarted.\n"
            "  --model M   LM to use (default %s)\n"
            "  --people N  people to research, 1..%d (default 5)\n",
            prog, EX_DEFAULT_MODEL, MAX_PEOPLE);
    return 2;
}

static int build_rag(void)
{
    char **passages = NULL;
    size_t n = 0;
    dx_bm25 *ix = NULL;
    dx_retriever *r = NULL;
    int rc = dx_sim_corpus(NULL, 0, &passages, &n);
    if (rc == DX_OK)
        rc = dx_bm25_new(NULL, &ix);
    for (size_t i = 0; rc == DX_OK && i < n; i++)
        rc = dx_bm25_add(ix, passages[i], NULL, NULL);
    dx_sim_corpus_free(passages, n);
    if (rc != DX_OK) {
        dx_bm25_free(ix);
        return rc;
    }
    if ((rc = dx_bm25_retriever(ix, &r)) != DX_OK)
        return rc;
    rag = dx_rag_new(r, 3, NULL);
    dx_retriever_unref(r); /* the module holds its reference */
    return rag ? DX_OK : DX_ENOMEM;
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
        } else if (i + 1 < argc && strcmp(argv[i], "--people") == 0) {
            char *end;
            errno = 0;
            n_people = strtol(argv[++i], &end, 10);
            if (*end != '\0' || errno != 0 || n_people < 1 ||
                n_people > MAX_PEOPLE)
                return usage(argv[0]);
        } else {
            return usage(argv[0]);
        }
    }
    if (build_rag() != DX_OK ||
        dx_sim_generate(DX_SIM_TWOHOP, "dev", DX_SIM_DEFAULT_SEED,
                        DX_SIM_DEV_SIZE, &dev) != DX_OK) {
        fprintf(stderr, "pipeline: cannot build the program or the data\n");
        dx_module_free(rag);
        return 1;
    }

    static char *const researcher_names[N_RESEARCHERS] = {
        "researcher_1", "researcher_2", "researcher_3"};
    dx_child_spec children[3 + N_RESEARCHERS] = {{0}};
    if (ex_lm_child(&children[0], model) != DX_OK)
        return 1;
    children[1] = (dx_child_spec){.id = "writer", .start = start_writer};
    for (size_t i = 0; i < N_RESEARCHERS; i++)
        children[2 + i] = (dx_child_spec){.id = researcher_names[i],
                                          .start = start_researcher,
                                          .arg = researcher_names[i]};
    children[2 + N_RESEARCHERS] =
        (dx_child_spec){.id = "planner", .start = start_planner};
    dx_sup_spec root = {
        .name = "pipeline_app",
        .strategy = DX_SUP_ONE_FOR_ONE,
        .intensity = 5,
        .period_s = 10,
        .children = children,
        .nchildren = 3 + N_RESEARCHERS,
    };
    ex_logs_in_words();
    int rc = dx_app_run(NULL, &root, client, NULL, NULL);
    dx_log_set_sink(NULL, NULL);
    if (rc != DX_OK)
        fprintf(stderr, "pipeline: %s (model %s)\n", dx_strerror(rc),
                model ? model : EX_DEFAULT_MODEL);
    dx_lm_client_child_spec_free(&children[0]);
    dx_module_free(rag);
    dx_dataset_free(dev);
    return rc == DX_OK ? exit_code : 1;
}
