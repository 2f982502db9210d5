/*
 * sim.c — the simulated model: reads a chat request the way an LM would
 * have to (the system message's output fields, format and objective; the
 * demos; the inputs of the last user message), recognises and solves the
 * task (sim_tasks.c), lets the skill model decide whether this answer is
 * right, and writes it in the requested format.
 *
 * The skill model, in numbers (docs/internals/sim.md explains the choices):
 * p = base[profile][task] + 0.08 per correct demo (at most 4)
 *     - 0.15 per wrong demo + reasoning bonus (arithmetic 0.35, twohop
 *     0.10, others 0.03, when a `reasoning` output comes first) + 0.08 per
 *     task keyword in the instructions (at most 2) + 0.05 when they ask
 *     for care ("careful", "step by step", ...) + 0.30 per supporting
 *     twohop fact in the inputs, clamped to [0.02, 0.97]. The answer is
 * right when a draw u < p. At temperature 0, u depends on the profile and
 * the inputs only, so the same question meets the same "difficulty" under
 * every prompt: a better prompt turns wrong answers right, never the
 * reverse, which keeps an optimizer's measurements clean. At temperature >
 * 0 the seed (or a hash of the whole request) and the choice index enter u.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/sim.h"
#include "sim_int.h"

#define MAX_FIELDS 16
/* Instructions asking for care (see diligence_words). */
#define DILIGENCE_BONUS 0.05
#define MAX_CHOICES 16
#define MAX_OUT (64 * 1024)

typedef struct profile {
    const char *name;
    double base[DX_SIM_N_TASKS]; /* arithmetic, capitals, classify, twohop */
} profile;

static const profile profiles[] = {
    {"base", {0.30, 0.55, 0.50, 0.15}},
    {"strong", {0.55, 0.80, 0.75, 0.35}},
    {"weak", {0.15, 0.35, 0.35, 0.05}},
};

#define DEMO_BONUS 0.08
#define DEMO_CAP 4
#define WRONG_DEMO 0.15
#define KEYWORD_BONUS 0.08
#define KEYWORD_CAP 2
#define SUPPORT_BONUS 0.30
static const double reasoning_bonus[DX_SIM_N_TASKS] = {0.35, 0.03, 0.03, 0.10};

/* ---- bounded text builder -------------------------------------------- */

typedef struct sb {
    char *p;
    size_t len, cap;
    bool bad; /* out of memory or past MAX_OUT */
} sb;

static void sb_put(sb *b, const char *s, size_t n)
{
    if (b->bad)
        return;
    if (b->len + n + 1 > MAX_OUT) {
        b->bad = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 256;
        while (nc < b->len + n + 1)
            nc *= 2;
        char *np = dx_realloc(b->p, nc);
        if (!np) {
            b->bad = true;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(sb *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_json_str(sb *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char e[8];
        if (c == '"' || c == '\\') {
            e[0] = '\\', e[1] = (char)c;
            sb_put(b, e, 2);
        } else if (c == '\n') {
            sb_put(b, "\\n", 2);
        } else if (c < 0x20) {
            snprintf(e, sizeof e, "\\u%04x", c);
            sb_put(b, e, 6);
        } else {
            sb_put(b, s, 1);
        }
    }
    sb_put(b, "\"", 1);
}

/* ---- reading the prompt ---------------------------------------------- */

typedef struct field {
    char name[64];
    char type[96];
} field;

typedef struct prompt {
    field out[MAX_FIELDS];
    size_t n_out;
    bool json; /* JSONAdapter: answer a JSON object */
    bool has_system;
    bool has_completed;    /* the system message shows the completed marker */
    const char *objective; /* into the system message; NULL if none */
    size_t n_good_demos, n_bad_demos, n_demos;
    /* Asked to write instructions (a `proposed_instruction` output, as
     * COPRO's and MIPRO's proposers ask): the task the prompt is about
     * (-1: none recognised) and the draw choosing this choice's wording. */
    int instr_task;
    uint64_t instr_draw;
    /* Asked to judge a response against a ground truth (DSPy's
     * SemanticF1 / CompleteAndGrounded signatures): the word-overlap
     * scores it answers. */
    bool judging;
    double recall, precision, groundedness;
} prompt;

/* Lines "N. `name` (type): desc" after "Your output fields are:". */
static void read_output_fields(const char *sys, prompt *pr)
{
    const char *p = strstr(sys, "Your output fields are:");
    if (!p)
        return;
    const char *end = strstr(p, "All interactions will be structured");
    for (p = strchr(p, '\n'); p && *p && (!end || p < end);
         p = strchr(p, '\n')) {
        p++;
        const char *q = p;
        while (isdigit((unsigned char)*q))
            q++;
        if (q == p || strncmp(q, ". `", 3) != 0)
            continue;
        q += 3;
        const char *tick = strchr(q, '`');
        if (!tick || pr->n_out == MAX_FIELDS)
            continue;
        field *f = &pr->out[pr->n_out++];
        snprintf(f->name, sizeof f->name, "%.*s", (int)(tick - q), q);
        f->type[0] = '\0';
        if (strncmp(tick, "` (", 3) == 0) {
            const char *t = tick + 3;
            int depth = 1;
            const char *e = t;
            while (*e && *e != '\n' && depth > 0) {
                if (*e == '(' || *e == '[')
                    depth++;
                else if (*e == ')' || *e == ']')
                    depth--;
                if (depth > 0)
                    e++;
            }
            snprintf(f->type, sizeof f->type, "%.*s", (int)(e - t), t);
        }
    }
}

/* Calls fn for each `[[ ## name ## ]]` section of text with its value
 * (trimmed; the final user message's "Respond with ..." reminder cut). */
typedef void (*section_fn)(const char *name, size_t nl, const char *val,
                           size_t vl, void *ud);

static void sections(const char *text, section_fn fn, void *ud)
{
    const char *p = text;
    while ((p = strstr(p, "[[ ## ")) != NULL) {
        if (p != text && p[-1] != '\n') {
            p += 6;
            continue;
        }
        const char *name = p + 6;
        const char *close = strstr(name, " ## ]]");
        if (!close)
            return;
        const char *val = close + 6;
        const char *next = val;
        for (;;) {
            next = strstr(next, "[[ ## ");
            if (!next || next[-1] == '\n')
                break;
            next += 6;
        }
        const char *vend = next ? next : val + strlen(val);
        const char *respond = strstr(val, "\n\nRespond with ");
        if (respond && respond < vend)
            vend = respond;
        while (val < vend && isspace((unsigned char)*val))
            val++;
        while (vend > val && isspace((unsigned char)vend[-1]))
            vend--;
        fn(name, (size_t)(close - name), val, (size_t)(vend - val), ud);
        if (!next)
            return;
        p = next;
    }
}

typedef struct collect {
    sb text;          /* every section's value, newline separated */
    const char *want; /* a section to capture */
    char got[DX__SIM_STEPS_MAX];
    bool found;
} collect;

static void collect_fn(const char *name, size_t nl, const char *val, size_t vl,
                       void *ud)
{
    collect *c = ud;
    if (strncmp(name, "completed", nl) != 0 || nl != 9) {
        sb_put(&c->text, val, vl);
        sb_put(&c->text, "\n", 1);
    }
    if (c->want && strlen(c->want) == nl && strncmp(name, c->want, nl) == 0 &&
        !c->found) {
        snprintf(c->got, sizeof c->got, "%.*s", (int)vl, val);
        c->found = true;
    }
}

/* Lower-case, trimmed of spaces, quotes and a final period; numbers
 * compare by value ("6" == "6.0"). */
static bool same_answer(const char *a, const char *b)
{
    char x[DX__SIM_ANSWER_MAX], y[DX__SIM_ANSWER_MAX];
    const char *in[2] = {a, b};
    char *o[2] = {x, y};
    for (int k = 0; k < 2; k++) {
        const char *s = in[k];
        while (*s && (isspace((unsigned char)*s) || *s == '"' || *s == '\''))
            s++;
        size_t n = 0;
        while (*s && n + 1 < DX__SIM_ANSWER_MAX)
            o[k][n++] = (char)tolower((unsigned char)*s++);
        while (n > 0 && (isspace((unsigned char)o[k][n - 1]) ||
                         strchr("\"'.", o[k][n - 1])))
            n--;
        o[k][n] = '\0';
    }
    char *e1, *e2;
    double d1 = strtod(x, &e1), d2 = strtod(y, &e2);
    if (*x && *y && !*e1 && !*e2)
        return d1 == d2;
    return strcmp(x, y) == 0;
}

/* The field that carries the task's answer: the task's own key when
 * requested, else the first output that is not a reasoning field. */
static int answer_field(const prompt *pr, dx_sim_task t)
{
    for (size_t i = 0; i < pr->n_out; i++)
        if (strcmp(pr->out[i].name, dx__sim_output_key(t)) == 0)
            return (int)i;
    for (size_t i = 0; i < pr->n_out; i++)
        if (strcmp(pr->out[i].name, "reasoning") != 0 &&
            strcmp(pr->out[i].name, "rationale") != 0)
            return (int)i;
    return -1;
}

/* The value of member "name" of the JSON object text, when it is a string
 * or a number (the JSONAdapter's demo answers): no allocation, so reading a
 * demo cannot fail. */
static bool json_member(const char *text, const char *name, char *b, size_t cap)
{
    char pat[80];
    snprintf(pat, sizeof pat, "\"%s\"", name);
    const char *p = strstr(text, pat);
    if (!p || cap == 0)
        return false;
    p += strlen(pat);
    while (isspace((unsigned char)*p))
        p++;
    if (*p++ != ':')
        return false;
    while (isspace((unsigned char)*p))
        p++;
    size_t n = 0;
    if (*p == '"') {
        for (p++; *p && *p != '"'; p++) {
            if (*p == '\\' && p[1])
                p++;
            if (n + 1 < cap)
                b[n++] = *p;
        }
        if (*p != '"')
            return false;
    } else {
        while (*p && (isdigit((unsigned char)*p) || strchr("+-.eE", *p)))
            if (n + 1 < cap)
                b[n++] = *p++;
            else
                p++;
        if (n == 0)
            return false;
    }
    b[n] = '\0';
    return true;
}

/* Judge one demo (user inputs, assistant outputs): +1 correct, -1 wrong,
 * 0 when the sim cannot tell (another task, no answer field), -2 out of
 * memory. */
static int judge_demo(const prompt *pr, const char *user, const char *asst)
{
    collect in = {0};
    sections(user, collect_fn, &in);
    if (in.text.bad) {
        dx_free(in.text.p);
        return -2;
    }
    if (!in.text.p)
        return 0;
    dx__sim_solution sol;
    bool ok = dx__sim_solve(in.text.p, 0, &sol);
    dx_free(in.text.p);
    if (!ok)
        return 0;
    int af = answer_field(pr, sol.task);
    if (af < 0)
        return 0;
    const char *name = pr->out[af].name;
    char given[DX__SIM_ANSWER_MAX];
    bool have = false;
    if (pr->json) {
        have = json_member(asst, name, given, sizeof given);
    } else {
        collect out = {.want = name};
        sections(asst, collect_fn, &out);
        bool oom = out.text.bad;
        dx_free(out.text.p);
        if (oom)
            return -2;
        if (out.found) {
            snprintf(given, sizeof given, "%.*s", (int)sizeof given - 1,
                     out.got);
            have = true;
        }
    }
    if (!have)
        return 0;
    return same_answer(given, sol.answer) ? 1 : -1;
}

/* DX_OK or DX_ENOMEM. */
static int read_prompt(const dx_lm_request *req, prompt *pr, size_t last_user)
{
    const char *sys = NULL;
    if (req->n_messages > 0 && req->messages[0].role == DX_LM_SYSTEM)
        sys = req->messages[0].content;
    if (sys) {
        pr->has_system = true;
        read_output_fields(sys, pr);
        pr->json = strstr(sys, "Outputs will be a JSON object") != NULL;
        pr->has_completed = strstr(sys, "[[ ## completed ## ]]") != NULL;
        const char *obj = strstr(sys, "your objective is:");
        pr->objective = obj ? obj + strlen("your objective is:") : NULL;
    }
    if (req->format != DX_LM_FORMAT_TEXT)
        pr->json = true;
    for (size_t i = sys ? 1 : 0; i + 1 < last_user; i++) {
        if (req->messages[i].role != DX_LM_USER ||
            req->messages[i + 1].role != DX_LM_ASSISTANT)
            continue;
        pr->n_demos++;
        int j = judge_demo(pr, req->messages[i].content,
                           req->messages[i + 1].content);
        if (j == -2)
            return DX_ENOMEM;
        if (j > 0)
            pr->n_good_demos++;
        else if (j < 0)
            pr->n_bad_demos++;
        i++;
    }
    return DX_OK;
}

static size_t keyword_hits(const char *objective, dx_sim_task t)
{
    if (!objective)
        return 0;
    char low[2048];
    size_t n = 0;
    for (const char *s = objective; *s && n + 1 < sizeof low; s++)
        low[n++] = (char)tolower((unsigned char)*s);
    low[n] = '\0';
    size_t hits = 0;
    for (const char *const *k = dx__sim_task_keywords(t); *k; k++)
        hits += strstr(low, *k) != NULL;
    return hits;
}

/* ---- answering ------------------------------------------------------- */

static double unit(uint64_t h)
{
    return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}

static bool is_number_type(const char *t)
{
    return strcmp(t, "int") == 0 || strcmp(t, "float") == 0;
}

/* A value for a field the sim has nothing to say about, valid for its
 * type so that parsing succeeds. */
static void filler(const field *f, bool json, char *b, size_t cap)
{
    const char *t = f->type;
    if (strcmp(t, "int") == 0)
        snprintf(b, cap, "0");
    else if (strcmp(t, "float") == 0)
        snprintf(b, cap, "0.5");
    else if (strcmp(t, "bool") == 0)
        snprintf(b, cap, json ? "false" : "False");
    else if (strncmp(t, "list", 4) == 0)
        snprintf(b, cap, "[]");
    else if (strncmp(t, "dict", 4) == 0)
        snprintf(b, cap, "{}");
    else if (strncmp(t, "Literal[", 8) == 0) {
        /* the first choice, without its quotes */
        const char *s = t + 8;
        if (*s == '\'' || *s == '"')
            s++;
        size_t n = strcspn(s, "',]\"");
        snprintf(b, cap, "%.*s", (int)n, s);
    } else
        snprintf(b, cap, "Not applicable.");
}

static bool is_reasoning(const char *name)
{
    return strcmp(name, "reasoning") == 0 || strcmp(name, "rationale") == 0;
}

/* Instructions that ask for care help a little on every task, as they do
 * with real models; at most one counts. */
static const char *const diligence_words[] = {"careful", "step by step",
                                              "precise", "double-check", NULL};

static bool diligent(const char *objective)
{
    if (!objective)
        return false;
    char low[2048];
    size_t n = 0;
    for (const char *s = objective; *s && n + 1 < sizeof low; s++)
        low[n++] = (char)tolower((unsigned char)*s);
    low[n] = '\0';
    for (const char *const *w = diligence_words; *w; w++)
        if (strstr(low, *w))
            return true;
    return false;
}

/* The task a whole prompt is about, by its keywords (-1: none). */
static int prompt_task(const dx_lm_request *req)
{
    size_t best = 0;
    int task = -1;
    for (int t = 0; t < DX_SIM_N_TASKS; t++) {
        size_t hits = 0;
        for (size_t i = 0; i < req->n_messages; i++)
            hits += keyword_hits(req->messages[i].content, (dx_sim_task)t);
        if (hits > best) {
            best = hits;
            task = t;
        }
    }
    return task;
}

/* A proposed instruction: one of a few wordings, drawn per choice, some
 * naming the task's keywords, some asking for care, some neither — so a
 * proposer's candidates differ in quality and an optimizer has something
 * to find. */
static void propose_instruction(const prompt *pr, char *b, size_t cap)
{
    static const char *const task_words[DX_SIM_N_TASKS] = {
        "Work out the arithmetic step by step and give the final number",
        "Name the capital or currency of the country asked about",
        "Classify the sentiment of the text as positive, negative or neutral",
        "Use the passages to find the country of the person's birthplace",
    };
    unsigned pick = (unsigned)(pr->instr_draw % 4);
    if (pr->instr_task >= 0 && pick == 0)
        snprintf(b, cap, "%s; be careful and precise.",
                 task_words[pr->instr_task]);
    else if (pr->instr_task >= 0 && pick == 1)
        snprintf(b, cap, "%s.", task_words[pr->instr_task]);
    else if (pick == 2)
        snprintf(b, cap, "Read the inputs carefully and give only the answer.");
    else
        snprintf(b, cap, "Produce the outputs from the inputs.");
}

/* One field's value in the answer; *quoted: a JSON string in JSON mode. */
/* ---- judging a response ----------------------------------------------
 *
 * A judge prompt (outputs recall / precision / completeness /
 * groundedness, inputs ground_truth / system_response / retrieved_context)
 * is answered by word overlap, the sim's stand-in for comparing key ideas:
 * recall = the ground truth's distinct words found in the response,
 * precision = the response's found in the ground truth, groundedness = the
 * response's found in the retrieved context. Deterministic, whatever the
 * profile, so an offline evaluation with a judged metric has stable,
 * meaningful scores. */

#define JUDGE_MAX_WORDS 512

typedef struct word_set {
    char *w[JUDGE_MAX_WORDS];
    size_t n;
    char *store; /* the lower-cased copy the words point into */
} word_set;

static int cmp_word(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Distinct lower-case words (ASCII letters and digits, and any byte of a
 * multibyte character) of text[0..n), sorted. false on OOM. */
static bool word_set_of(const char *text, size_t n, word_set *ws)
{
    ws->n = 0;
    ws->store = dx_malloc(n + 1);
    if (!ws->store)
        return false;
    char *t = ws->store;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)text[i];
        t[i] = isalnum(c) || c >= 0x80 ? (char)tolower(c) : '\0';
    }
    t[n] = '\0';
    for (size_t i = 0; i < n && ws->n < JUDGE_MAX_WORDS;) {
        if (!t[i]) {
            i++;
            continue;
        }
        ws->w[ws->n++] = t + i;
        i += strlen(t + i);
    }
    qsort(ws->w, ws->n, sizeof ws->w[0], cmp_word);
    size_t u = 0;
    for (size_t i = 0; i < ws->n; i++)
        if (u == 0 || strcmp(ws->w[u - 1], ws->w[i]) != 0)
            ws->w[u++] = ws->w[i];
    ws->n = u;
    return true;
}

/* Of a's words, the fraction also in b; 0 when a has none. */
static double share_in(const word_set *a, const word_set *b)
{
    if (a->n == 0)
        return 0;
    size_t found = 0;
    for (size_t i = 0; i < a->n; i++)
        found += bsearch(&a->w[i], b->w, b->n, sizeof b->w[0], cmp_word) != 0;
    return (double)found / (double)a->n;
}

typedef struct judge_inputs {
    const char *truth, *response, *context;
    size_t truth_n, response_n, context_n;
} judge_inputs;

static void judge_fn(const char *name, size_t nl, const char *val, size_t vl,
                     void *ud)
{
    judge_inputs *j = ud;
    if (nl == 12 && strncmp(name, "ground_truth", nl) == 0)
        j->truth = val, j->truth_n = vl;
    else if (nl == 15 && strncmp(name, "system_response", nl) == 0)
        j->response = val, j->response_n = vl;
    else if (nl == 17 && strncmp(name, "retrieved_context", nl) == 0)
        j->context = val, j->context_n = vl;
}

/* Recognise a judge prompt in pr and the last user message; fill its
 * scores. DX_OK (pr->judging says whether it is one) or DX_ENOMEM. */
static int read_judge(prompt *pr, const char *user)
{
    bool asks = false;
    for (size_t i = 0; i < pr->n_out; i++)
        asks = asks || strcmp(pr->out[i].name, "recall") == 0 ||
               strcmp(pr->out[i].name, "completeness") == 0 ||
               strcmp(pr->out[i].name, "groundedness") == 0;
    judge_inputs j = {0};
    if (asks)
        sections(user, judge_fn, &j);
    if (!asks || !j.response)
        return DX_OK;
    word_set r, other;
    if (!word_set_of(j.response, j.response_n, &r))
        return DX_ENOMEM;
    bool ok = true;
    if (j.truth && (ok = word_set_of(j.truth, j.truth_n, &other))) {
        pr->recall = share_in(&other, &r);
        pr->precision = share_in(&r, &other);
        dx_free(other.store);
    }
    if (ok && j.context && (ok = word_set_of(j.context, j.context_n, &other))) {
        pr->groundedness = share_in(&r, &other);
        dx_free(other.store);
    }
    dx_free(r.store);
    pr->judging = ok;
    return ok ? DX_OK : DX_ENOMEM;
}

/* A judge prompt's value for output field f, or false when f is not one
 * of its scores. */
static bool judge_value(const prompt *pr, const field *f, char *b, size_t cap)
{
    double v;
    if (strcmp(f->name, "recall") == 0 || strcmp(f->name, "completeness") == 0)
        v = pr->recall;
    else if (strcmp(f->name, "precision") == 0)
        v = pr->precision;
    else if (strcmp(f->name, "groundedness") == 0)
        v = pr->groundedness;
    else
        return false;
    snprintf(b, cap, "%.2f", v);
    return true;
}

static void field_value(const prompt *pr, size_t i, const dx__sim_solution *sol,
                        bool solved, bool right, int af, char *b, size_t cap,
                        bool *quoted)
{
    const field *f = &pr->out[i];
    *quoted = true;
    if (pr->judging && judge_value(pr, f, b, cap)) {
        *quoted = false;
    } else if (pr->judging && is_reasoning(f->name)) {
        snprintf(b, cap,
                 "I compare the words of the response with those of "
                 "the ground truth and the context.");
    } else if (is_reasoning(f->name)) {
        if (solved)
            snprintf(b, cap, "%s", right ? sol->steps : sol->wrong_steps);
        else
            snprintf(b, cap,
                     "I do not recognise this task, so I answer as "
                     "best I can.");
    } else if (strcmp(f->name, "proposed_instruction") == 0) {
        /* writing instructions, not answering the examples shown */
        propose_instruction(pr, b, cap);
    } else if (solved && (int)i == af) {
        snprintf(b, cap, "%s", right ? sol->answer : sol->wrong);
        if (is_number_type(f->type))
            *quoted = false;
    } else {
        filler(f, pr->json, b, cap);
        const char *t = f->type;
        if (is_number_type(t) || strcmp(t, "bool") == 0 ||
            strncmp(t, "list", 4) == 0 || strncmp(t, "dict", 4) == 0)
            *quoted = false;
    }
    if (pr->json && !*quoted) {
        /* a number answer that is not a number stays a string */
        char *e;
        (void)strtod(b, &e);
        if (is_number_type(f->type) && (*e || !*b))
            *quoted = true;
    }
}

static void render(const prompt *pr, const dx__sim_solution *sol, bool solved,
                   bool right, int mode, sb *o)
{
    int af = solved ? answer_field(pr, sol->task) : -1;
    char v[DX__SIM_STEPS_MAX];
    bool quoted;
    if (pr->n_out == 0) {
        /* no adapter prompt: plain text, as a chat model would answer */
        sb_str(o, solved ? (right ? sol->answer : sol->wrong)
                         : "I am not sure what is being asked.");
        return;
    }
    if (pr->json) {
        if (mode == 2)
            sb_str(o, "```json\n");
        sb_str(o, "{\n");
        for (size_t i = 0; i < pr->n_out; i++) {
            field_value(pr, i, sol, solved, right, af, v, sizeof v, &quoted);
            sb_str(o, "  ");
            sb_json_str(o, pr->out[i].name);
            sb_str(o, ": ");
            if (quoted)
                sb_json_str(o, v);
            else
                sb_str(o, v);
            sb_str(o, i + 1 < pr->n_out ? ",\n" : "\n");
        }
        sb_str(o, "}");
        if (mode == 2)
            sb_str(o, "\n```");
        return;
    }
    for (size_t i = 0; i < pr->n_out; i++) {
        field_value(pr, i, sol, solved, right, af, v, sizeof v, &quoted);
        if (mode == 1) {
            /* format lost: "name: value" lines, no markers */
            sb_str(o, pr->out[i].name);
            sb_str(o, ": ");
        } else {
            sb_str(o, "[[ ## ");
            sb_str(o, pr->out[i].name);
            sb_str(o, " ## ]]\n");
        }
        sb_str(o, v);
        sb_str(o, "\n\n");
    }
    if (mode != 1)
        sb_str(o, "[[ ## completed ## ]]");
}

/* ---- acting as an agent ---------------------------------------------- */

/* The twohop task played as an agent: search for the person, read the city
 * from what came back, search for the city, read its country, finish. Every
 * fact is read from the observations (the trajectory, or the tool results
 * of a native tool-call conversation), never from the sim's own tables, so
 * a tool that fails or returns garbage leaves the agent searching again
 * until AGENT_MAX_STEPS, when it gives up and finishes. */

#define AGENT_MAX_TOOLS 16
#define AGENT_MAX_STEPS 5

typedef struct agent_tools {
    char name[AGENT_MAX_TOOLS][64];
    char arg[AGENT_MAX_TOOLS][64]; /* first argument name; "" when none */
    size_t n;
} agent_tools;

typedef struct agent_step {
    char thought[DX__SIM_STEPS_MAX];
    int tool;       /* index into the tools, -1: finish without a finish tool */
    char args[256]; /* JSON object text */
    bool finish;
} agent_step;

/* The first quoted key after "{" at p (Python repr or JSON quotes) into
 * b; "" when the object is empty or p has none. */
static void first_key(const char *p, char *b, size_t cap)
{
    b[0] = '\0';
    if (!p)
        return;
    p = strchr(p, '{');
    if (!p)
        return;
    p++;
    while (isspace((unsigned char)*p))
        p++;
    if (*p != '\'' && *p != '"')
        return;
    char q = *p++;
    size_t n = strcspn(p, q == '\'' ? "'" : "\"");
    snprintf(b, cap, "%.*s", (int)n, p);
}

/* Tools of a text ReAct prompt: the choices of next_tool_name's Literal
 * type, each tool's first argument from its "(N) name, whose description
 * is ... It takes arguments {...}." line in the instructions. */
static void react_tools(const prompt *pr, const char *sys, agent_tools *t)
{
    t->n = 0;
    for (size_t i = 0; i < pr->n_out; i++) {
        if (strcmp(pr->out[i].name, "next_tool_name") != 0)
            continue;
        const char *s = pr->out[i].type;
        if (strncmp(s, "Literal[", 8) != 0)
            return;
        s += 8;
        while (*s && *s != ']' && t->n < AGENT_MAX_TOOLS) {
            while (*s == ' ' || *s == ',')
                s++;
            if (*s != '\'' && *s != '"')
                break;
            char q = *s++;
            size_t n = strcspn(s, q == '\'' ? "'" : "\"");
            snprintf(t->name[t->n], sizeof t->name[0], "%.*s", (int)n, s);
            t->arg[t->n][0] = '\0';
            t->n++;
            s += n;
            if (*s)
                s++;
        }
    }
    for (size_t i = 0; i < t->n && sys; i++) {
        char pat[96];
        snprintf(pat, sizeof pat, ") %s", t->name[i]);
        for (const char *p = strstr(sys, pat); p; p = strstr(p + 1, pat)) {
            char after = p[strlen(pat)];
            if (after != ',' && after != '.' && after != ' ')
                continue;
            const char *line_end = strchr(p, '\n');
            const char *a = strstr(p, "It takes arguments {");
            if (a && (!line_end || a < line_end))
                first_key(a + strlen("It takes arguments "), t->arg[i],
                          sizeof t->arg[0]);
            break;
        }
    }
}

/* Tools of a native tool-call request: names and the first property of
 * each parameters schema. */
static void native_tools(const dx_lm_request *req, agent_tools *t)
{
    t->n = 0;
    for (size_t i = 0; i < req->n_tools && t->n < AGENT_MAX_TOOLS; i++) {
        snprintf(t->name[t->n], sizeof t->name[0], "%s", req->tools[i].name);
        const char *props =
            req->tools[i].parameters
                ? strstr(req->tools[i].parameters, "\"properties\"")
                : NULL;
        if (props)
            first_key(props + strlen("\"properties\""), t->arg[t->n],
                      sizeof t->arg[0]);
        else
            t->arg[t->n][0] = '\0';
        t->n++;
    }
}

static int find_tool(const agent_tools *t, const char *name)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->name[i], name) == 0)
            return (int)i;
    return -1;
}

/* The tool to search with: one named like a search, else the first that
 * is not finish; -1 if none. */
static int search_tool(const agent_tools *t)
{
    static const char *const likes[] = {"search", "retriev", "lookup", "wiki"};
    for (size_t k = 0; k < sizeof likes / sizeof *likes; k++)
        for (size_t i = 0; i < t->n; i++) {
            char low[64];
            size_t n = 0;
            for (; t->name[i][n] && n + 1 < sizeof low; n++)
                low[n] = (char)tolower((unsigned char)t->name[i][n]);
            low[n] = '\0';
            if (strstr(low, likes[k]))
                return (int)i;
        }
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->name[i], "finish") != 0)
            return (int)i;
    return -1;
}

/* "<subject><link>X." in text: X (up to '.', ',' or a line end). */
static bool read_fact(const char *text, const char *subject, const char *link,
                      char *b, size_t cap)
{
    char pat[160];
    snprintf(pat, sizeof pat, "%s%s", subject, link);
    const char *p = strstr(text, pat);
    if (!p)
        return false;
    p += strlen(pat);
    size_t n = strcspn(p, ".,\n\"'\xc2");
    while (n > 0 && p[n - 1] == ' ')
        n--;
    if (n == 0 || n >= cap)
        return false;
    snprintf(b, cap, "%.*s", (int)n, p);
    return true;
}

static void set_args(agent_step *s, const agent_tools *t, int tool,
                     const char *value)
{
    sb a = {0};
    sb_str(&a, "{");
    if (t->arg[tool][0]) {
        sb_json_str(&a, t->arg[tool]);
        sb_str(&a, ": ");
        sb_json_str(&a, value);
    }
    sb_str(&a, "}");
    snprintf(s->args, sizeof s->args, "%s", a.p && !a.bad ? a.p : "{}");
    dx_free(a.p);
}

/* The next step for question text q given the observations obs after
 * `steps` tool calls. false when q is no twohop question. */
static bool agent_decide(const char *q, const char *obs, const agent_tools *t,
                         size_t steps, agent_step *s)
{
    char person[64], city[96], country[96];
    if (!dx__sim_twohop_person(q, person, sizeof person))
        return false;
    memset(s, 0, sizeof *s);
    snprintf(s->args, sizeof s->args, "{}");
    bool have_city = read_fact(obs, person, " was born in ", city, sizeof city);
    bool have_country = have_city && read_fact(obs, city, " is a city in ",
                                               country, sizeof country);
    int search = search_tool(t);
    if (have_country) {
        snprintf(s->thought, sizeof s->thought,
                 "%s was born in %s, and %s is a city in %s. I now have "
                 "everything needed to answer.",
                 person, city, city, country);
        s->finish = true;
    } else if (search < 0 || steps >= AGENT_MAX_STEPS) {
        snprintf(s->thought, sizeof s->thought,
                 "I could not find where %s was born and in which "
                 "country; I finish with what I have.",
                 person);
        s->finish = true;
    } else if (have_city) {
        snprintf(s->thought, sizeof s->thought,
                 "%s was born in %s. Next I need the country %s is in, so "
                 "I search for %s.",
                 person, city, city, city);
        s->tool = search;
        set_args(s, t, search, city);
    } else {
        snprintf(s->thought, sizeof s->thought,
                 "I need to find the city where %s was born, so I search "
                 "for %s.",
                 person, person);
        s->tool = search;
        set_args(s, t, search, person);
    }
    if (s->finish)
        s->tool = find_tool(t, "finish");
    return true;
}

static void count_steps_fn(const char *name, size_t nl, const char *val,
                           size_t vl, void *ud)
{
    (void)val, (void)vl;
    if (nl > 10 && strncmp(name, "tool_name_", 10) == 0)
        (*(size_t *)ud)++;
}

/* A ReAct step answer: next_thought, next_tool_name, next_tool_args in the
 * prompt's format (other outputs get fillers). */
static void render_react(const prompt *pr, const agent_tools *t,
                         const agent_step *s, sb *o)
{
    if (pr->json)
        sb_str(o, "{\n");
    for (size_t i = 0; i < pr->n_out; i++) {
        const char *name = pr->out[i].name;
        char v[DX__SIM_STEPS_MAX];
        bool quoted = true;
        if (strcmp(name, "next_thought") == 0)
            snprintf(v, sizeof v, "%s", s->thought);
        else if (strcmp(name, "next_tool_name") == 0)
            snprintf(v, sizeof v, "%s",
                     s->tool >= 0 ? t->name[s->tool] : "finish");
        else if (strcmp(name, "next_tool_args") == 0) {
            snprintf(v, sizeof v, "%s", s->args);
            quoted = false;
        } else {
            filler(&pr->out[i], pr->json, v, sizeof v);
        }
        if (pr->json) {
            sb_str(o, "  ");
            sb_json_str(o, name);
            sb_str(o, ": ");
            if (quoted)
                sb_json_str(o, v);
            else
                sb_str(o, v);
            sb_str(o, i + 1 < pr->n_out ? ",\n" : "\n");
        } else {
            sb_str(o, "[[ ## ");
            sb_str(o, name);
            sb_str(o, " ## ]]\n");
            sb_str(o, v);
            sb_str(o, "\n\n");
        }
    }
    sb_str(o, pr->json ? "}" : "[[ ## completed ## ]]");
}

static bool has_output(const prompt *pr, const char *name)
{
    for (size_t i = 0; i < pr->n_out; i++)
        if (strcmp(pr->out[i].name, name) == 0)
            return true;
    return false;
}

static int64_t words(const char *s)
{
    int64_t n = 0;
    bool in = false;
    for (; *s; s++) {
        bool w = !isspace((unsigned char)*s);
        n += w && !in;
        in = w;
    }
    return n;
}

/* A response of n identical choices: text, and when call is set one tool
 * call (finish reason tool_calls). */
static int agent_response(const dx_lm_request *req, const profile *pf,
                          uint64_t hall, int n_choices, const char *text,
                          const char *call_name, const char *call_args,
                          dx_lm_response **out)
{
    dx_lm_response *r = dx_calloc(1, sizeof *r);
    if (!r)
        return DX_ENOMEM;
    int64_t out_words = 0;
    r->choices = dx_calloc((size_t)n_choices, sizeof *r->choices);
    if (!r->choices)
        goto oom;
    r->n_choices = (size_t)n_choices;
    for (int c = 0; c < n_choices; c++) {
        dx_lm_choice *ch = &r->choices[c];
        if (!(ch->text = dx_strdup(text)))
            goto oom;
        out_words += words(text);
        ch->finish = call_name ? DX_LM_FINISH_TOOL_CALLS : DX_LM_FINISH_STOP;
        if (!(ch->finish_raw = dx_strdup(call_name ? "tool_calls" : "stop")))
            goto oom;
        if (!call_name)
            continue;
        ch->tool_calls = dx_calloc(1, sizeof *ch->tool_calls);
        if (!ch->tool_calls)
            goto oom;
        ch->n_tool_calls = 1;
        char id[48];
        snprintf(id, sizeof id, "call_%016llx",
                 (unsigned long long)dx__sim_mix(hall + (uint64_t)c));
        ch->tool_calls[0].id = dx_strdup(id);
        ch->tool_calls[0].name = dx_strdup(call_name);
        ch->tool_calls[0].arguments = dx_strdup(call_args);
        if (!ch->tool_calls[0].id || !ch->tool_calls[0].name ||
            !ch->tool_calls[0].arguments)
            goto oom;
        out_words += words(call_args);
    }
    int64_t in_words = 0;
    for (size_t i = 0; i < req->n_messages; i++)
        in_words += words(req->messages[i].content);
    char id[40], name[80];
    snprintf(id, sizeof id, "sim-%016llx", (unsigned long long)hall);
    snprintf(name, sizeof name, "sim/%s", pf->name);
    r->id = dx_strdup(id);
    r->model = dx_strdup(name);
    if (!r->id || !r->model)
        goto oom;
    r->has_usage = true;
    r->usage.input_tokens = in_words;
    r->usage.output_tokens = out_words;
    r->usage.total_tokens = in_words + out_words;
    *out = r;
    return DX_OK;
oom:
    dx_lm_response_free(r);
    return DX_ENOMEM;
}

static int fail(dx_lm_error *err, const char *msg)
{
    if (err) {
        dx_lm_error_clear(err);
        dx_lm_error_set(err, DX_LM_ERR_BAD_REQUEST, 400, "sim", "sim: %s", msg);
    }
    return DX_EPROVIDER;
}

int dx_sim_complete(const dx_lm_request *req, const char *model,
                    dx_lm_response **out, dx_lm_error *err)
{
    if (!req || !out)
        return DX_EINVAL;
    *out = NULL;
    if (err)
        dx_lm_error_clear(err);
    const char *m = model ? model : req->model;
    if (!m)
        return fail(err, "no model name");
    if (strncmp(m, "sim/", 4) == 0)
        m += 4;
    const profile *pf = NULL;
    for (size_t i = 0; i < sizeof profiles / sizeof profiles[0]; i++)
        if (strcmp(profiles[i].name, m) == 0)
            pf = &profiles[i];
    if (!pf) {
        char msg[160];
        snprintf(msg, sizeof msg,
                 "unknown model \"%.80s\" (known: sim/base, "
                 "sim/strong, sim/weak)",
                 m);
        return fail(err, msg);
    }
    size_t last_user = req->n_messages;
    for (size_t i = req->n_messages; i-- > 0;)
        if (req->messages[i].role == DX_LM_USER) {
            last_user = i;
            break;
        }
    if (last_user == req->n_messages)
        return fail(err, "the request has no user message");
    int n_choices = req->n > 1 ? req->n : 1;
    if (n_choices > MAX_CHOICES)
        return fail(err, "at most 16 choices");

    prompt pr = {0};
    if (read_prompt(req, &pr, last_user) != DX_OK)
        return DX_ENOMEM;
    pr.instr_task = -1;
    for (size_t i = 0; i < pr.n_out; i++)
        if (strcmp(pr.out[i].name, "proposed_instruction") == 0)
            pr.instr_task = prompt_task(req);

    /* the inputs: every section of the last user message, or its whole
     * text when it has none (a plain chat request) */
    const char *user = req->messages[last_user].content;
    collect in = {0};
    sections(user, collect_fn, &in);
    if (in.text.bad) {
        dx_free(in.text.p);
        return DX_ENOMEM;
    }
    const char *inputs = in.text.p ? in.text.p : user;
    if (read_judge(&pr, user) != DX_OK) {
        dx_free(in.text.p);
        return DX_ENOMEM;
    }

    /* Agents. Native tool calling (the request offers tools): the tool
     * results after the last user message are the observations, and once
     * the sim has what it needs it answers in text (or calls a "finish"
     * tool when one is offered) from the inputs plus those results. A
     * ReAct step prompt (output next_tool_name): the trajectory in the
     * inputs is the observations. */
    sb obs = {0};
    agent_tools tools;
    agent_step step;
    bool native =
        req->n_tools > 0 && req->tool_choice != DX_LM_TOOL_CHOICE_NONE;
    bool answered = false; /* as an agent: arc is the outcome */
    int arc = DX_OK;
    uint64_t hagent = dx__sim_hash_str(0, pf->name);
    for (size_t i = 0; i < req->n_messages; i++)
        hagent = dx__sim_hash_str(hagent, req->messages[i].content);
    if (native) {
        size_t steps = 0;
        sb_str(&obs, inputs);
        for (size_t i = last_user + 1; i < req->n_messages; i++) {
            const dx_lm_message *msg = &req->messages[i];
            steps += msg->role == DX_LM_ASSISTANT && msg->n_tool_calls > 0;
            sb_str(&obs, "\n");
            sb_str(&obs, msg->content);
        }
        if (obs.bad) {
            answered = true;
            arc = DX_ENOMEM;
        } else {
            native_tools(req, &tools);
            if (agent_decide(inputs, obs.p, &tools, steps, &step) &&
                step.tool >= 0) {
                answered = true;
                arc = agent_response(req, pf, hagent, n_choices, step.thought,
                                     tools.name[step.tool], step.args, out);
            }
            inputs = obs.p;
        }
    } else if (has_output(&pr, "next_tool_name")) {
        size_t steps = 0;
        sections(user, count_steps_fn, &steps);
        react_tools(&pr, req->messages[0].content, &tools);
        if (!agent_decide(inputs, inputs, &tools, steps, &step)) {
            memset(&step, 0, sizeof step);
            snprintf(step.thought, sizeof step.thought,
                     "I do not recognise this task, so I finish.");
            snprintf(step.args, sizeof step.args, "{}");
            step.finish = true;
            step.tool = find_tool(&tools, "finish");
        }
        sb text = {0};
        answered = true;
        render_react(&pr, &tools, &step, &text);
        arc = text.bad ? DX_ENOMEM
                       : agent_response(req, pf, hagent, n_choices, text.p,
                                        NULL, NULL, out);
        dx_free(text.p);
    }
    if (answered) {
        dx_free(obs.p);
        dx_free(in.text.p);
        return arc;
    }

    uint64_t hin = dx__sim_hash_str(dx__sim_hash_str(0, pf->name), inputs);
    uint64_t hall = hin;
    for (size_t i = 0; i < req->n_messages; i++)
        hall = dx__sim_hash_str(hall ^ (uint64_t)req->messages[i].role,
                                req->messages[i].content);
    bool hot = req->has_temperature && req->temperature > 0;
    uint64_t hseed = req->has_seed ? dx__sim_mix((uint64_t)req->seed) : hall;

    dx__sim_solution sol;
    /* a judge answers from the texts it compares, not as a task solver */
    bool solved = !pr.judging && dx__sim_solve(inputs, hin, &sol);
    double p = 0;
    if (solved) {
        /* key the draw on the question alone (see the top of the file) */
        hin = dx__sim_hash_str(dx__sim_hash_str(0, pf->name), sol.key);
        dx__sim_solve(inputs, dx__sim_mix(hin ^ 1), &sol);
        size_t good = pr.n_good_demos < DEMO_CAP ? pr.n_good_demos : DEMO_CAP;
        size_t kw = keyword_hits(pr.objective, sol.task);
        if (kw > KEYWORD_CAP)
            kw = KEYWORD_CAP;
        p = pf->base[sol.task] + DEMO_BONUS * (double)good -
            WRONG_DEMO * (double)pr.n_bad_demos + KEYWORD_BONUS * (double)kw +
            (diligent(pr.objective) ? DILIGENCE_BONUS : 0) +
            SUPPORT_BONUS * sol.support;
        if (pr.n_out > 0 && is_reasoning(pr.out[0].name))
            p += reasoning_bonus[sol.task];
        p = p < 0.02 ? 0.02 : p > 0.97 ? 0.97 : p;
    }
    /* how likely the format is lost: demos show it, the completed marker
     * describes it; neither means a guess */
    double p_bad_format = 0;
    if (pr.json)
        p_bad_format = pr.n_demos ? 0 : 0.15; /* a code fence, repairable */
    else if (pr.n_out > 0)
        p_bad_format = !pr.has_completed ? 0.5 : pr.n_demos ? 0 : 0.10;

    dx_lm_response *r = dx_calloc(1, sizeof *r);
    sb *texts = dx_calloc((size_t)n_choices, sizeof *texts);
    int rc = DX_ENOMEM;
    if (!r || !texts)
        goto out;
    r->choices = dx_calloc((size_t)n_choices, sizeof *r->choices);
    if (!r->choices)
        goto out;
    r->n_choices = (size_t)n_choices;
    int64_t out_words = 0;
    for (int c = 0; c < n_choices; c++) {
        uint64_t hc =
            hot ? dx__sim_mix(hin ^ dx__sim_mix(hseed + (uint64_t)c)) : hin;
        /* a separate stream (keyed on the whole prompt) for the format */
        uint64_t hf = dx__sim_mix(hall ^ 0xf0f0f0f0ull ^
                                  (hot ? dx__sim_mix(hseed + (uint64_t)c) : 0));
        if (solved && hot)
            dx__sim_solve(inputs, dx__sim_mix(hc ^ 1), &sol); /* another
                                                                wrong answer */
        bool right = solved && unit(hc) < p;
        int mode = 0;
        if (unit(hf) < p_bad_format)
            mode = pr.json ? 2 : 1;
        pr.instr_draw =
            dx__sim_mix(hall ^ 0x1257ull ^ dx__sim_mix(hseed + (uint64_t)c));
        render(&pr, &sol, solved, right, mode, &texts[c]);
        if (texts[c].bad || !texts[c].p)
            goto out;
        r->choices[c].text = texts[c].p;
        texts[c].p = NULL;
        r->choices[c].finish = DX_LM_FINISH_STOP;
        if (!(r->choices[c].finish_raw = dx_strdup("stop")))
            goto out;
        out_words += words(r->choices[c].text);
    }
    int64_t in_words = 0;
    for (size_t i = 0; i < req->n_messages; i++)
        in_words += words(req->messages[i].content);
    char id[40], name[80];
    snprintf(id, sizeof id, "sim-%016llx", (unsigned long long)hall);
    snprintf(name, sizeof name, "sim/%s", pf->name);
    r->id = dx_strdup(id);
    r->model = dx_strdup(name);
    if (!r->id || !r->model)
        goto out;
    r->has_usage = true;
    r->usage.input_tokens = in_words;
    r->usage.output_tokens = out_words;
    r->usage.total_tokens = in_words + out_words;
    *out = r;
    r = NULL;
    rc = DX_OK;
out:
    if (texts)
        for (int c = 0; c < n_choices; c++)
            dx_free(texts[c].p);
    dx_free(texts);
    dx_free(in.text.p);
    dx_free(obs.p);
    dx_lm_response_free(r);
    return rc;
}
