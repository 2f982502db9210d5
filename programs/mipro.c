/*
 * mipro.c — MIPROv2 (see teleprompt.h) and the TPE sampler it searches
 * with.
 *
 * The steps and their random draws follow DSPy: one random.Random(seed)
 * samples the auto-mode valset, shuffles the demo-set trainsets, picks
 * each proposal's tip and cache namespace, and samples every minibatch,
 * in that order, so a run is a function of its seed and the LM's answers.
 * The search cannot match Optuna's draws (its TPE uses numpy's
 * generator); it follows Optuna's algorithm with CPython's generator.
 *
 * The proposer is DSPy's GroundedProposer with its defaults: a dataset
 * summary made once (observations on 10 trainset examples at a time,
 * then a summary), and per proposal a description of the program and of
 * the predictor, then the instruction itself. Where dspex cannot show what
 * DSPy shows: the "program_code" is the program's structure as text (no
 * Python source exists; see program_code()), and the examples' Python
 * repr is reproduced by examples_repr() and py_repr(), whose comments say
 * where it differs.
 *
 * Checkpoints: the dataset summary, every proposal's descriptions and
 * instruction and every trial's score are stored; a resumed run makes the
 * same random draws and reuses them, so it ends with the same program and
 * score and asks the LM nothing it already answered.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/teleprompt.h"
#include "module_int.h"
#include "pyjson.h"
#include "pyrandom.h"
#include "teleprompt_int.h"

/* ---- TPE --------------------------------------------------------------------- */

#define TPE_STARTUP 10
#define TPE_CANDIDATES 24
#define TPE_PRIOR_WEIGHT 1.0

struct dx__tpe {
    size_t np;
    size_t *n_choices;
    size_t *obs; /* n_obs rows of np */
    double *val;
    size_t n_obs, cap;
    dx__pyrand rng;
};

dx__tpe *dx__tpe_new(const size_t *n_choices, size_t n_params, int64_t seed)
{
    dx__tpe *t = dx_calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->np = n_params;
    t->n_choices = dx_calloc(n_params ? n_params : 1, sizeof *t->n_choices);
    if (!t->n_choices) {
        dx_free(t);
        return NULL;
    }
    for (size_t j = 0; j < n_params; j++)
        t->n_choices[j] = n_choices[j] ? n_choices[j] : 1;
    dx__pyrand_seed(&t->rng, seed);
    return t;
}

void dx__tpe_free(dx__tpe *t)
{
    if (!t)
        return;
    dx_free(t->n_choices);
    dx_free(t->obs);
    dx_free(t->val);
    dx_free(t);
}

int dx__tpe_add(dx__tpe *t, const size_t *params, double value)
{
    if (t->n_obs == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 16;
        size_t *o = dx_realloc(t->obs, cap * (t->np ? t->np : 1) * sizeof *o);
        if (!o)
            return DX_ENOMEM;
        t->obs = o;
        double *v = dx_realloc(t->val, cap * sizeof *v);
        if (!v)
            return DX_ENOMEM;
        t->val = v;
        t->cap = cap;
    }
    memcpy(t->obs + t->n_obs * t->np, params, t->np * sizeof *params);
    t->val[t->n_obs++] = value;
    return DX_OK;
}

/* A Parzen mixture over the rows idx[0..n): kernel k < n puts
 * prior/(n+1) on every choice plus 1 on its observation (normalised); the
 * last kernel is uniform. Mixture weights: Optuna's default_weights (1
 * each below 25 observations, a ramp for the oldest beyond) and the prior
 * weight, normalised. */
typedef struct parzen {
    const dx__tpe *t;
    const size_t *idx;
    size_t n;
    double *w; /* n + 1 */
} parzen;

static int parzen_init(parzen *z, const dx__tpe *t, const size_t *idx, size_t n)
{
    z->t = t;
    z->idx = idx;
    z->n = n;
    z->w = dx_calloc(n + 1, sizeof *z->w);
    if (!z->w)
        return DX_ENOMEM;
    double sum = 0;
    for (size_t k = 0; k < n; k++) {
        /* idx is in observation order: the ramp weighs old ones less. */
        double w = 1.0;
        if (n >= 25 && k < n - 25)
            w = n - 25 > 1 ? 1.0 / (double)n + (1.0 - 1.0 / (double)n) *
                                                   (double)k / (double)(n - 26)
                           : 1.0 / (double)n;
        z->w[k] = w;
        sum += w;
    }
    z->w[n] = TPE_PRIOR_WEIGHT;
    sum += TPE_PRIOR_WEIGHT;
    for (size_t k = 0; k <= n; k++)
        z->w[k] /= sum;
    return DX_OK;
}

static double kernel_p(const parzen *z, size_t k, size_t j, size_t x)
{
    double c = (double)z->t->n_choices[j];
    if (k == z->n)
        return 1.0 / c;
    double base = TPE_PRIOR_WEIGHT / (double)(z->n + 1);
    double hit = z->t->obs[z->idx[k] * z->t->np + j] == x ? 1.0 : 0.0;
    return (base + hit) / (base * c + 1.0);
}

static double parzen_log_pdf(const parzen *z, const size_t *x)
{
    double s = 0;
    for (size_t k = 0; k <= z->n; k++) {
        double p = z->w[k];
        for (size_t j = 0; j < z->t->np; j++)
            p *= kernel_p(z, k, j, x[j]);
        s += p;
    }
    return log(s);
}

static void parzen_sample(const parzen *z, dx__pyrand *rng, size_t *x)
{
    double u = dx__pyrand_random(rng), acc = 0;
    size_t k = z->n;
    for (size_t i = 0; i <= z->n; i++) {
        acc += z->w[i];
        if (u < acc) {
            k = i;
            break;
        }
    }
    for (size_t j = 0; j < z->t->np; j++) {
        size_t c = z->t->n_choices[j];
        double v = dx__pyrand_random(rng), a = 0;
        x[j] = c - 1;
        for (size_t i = 0; i < c; i++) {
            a += kernel_p(z, k, j, i);
            if (v < a) {
                x[j] = i;
                break;
            }
        }
    }
}

static const dx__tpe *sort_tpe;
static int by_value_desc(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    double vx = sort_tpe->val[x], vy = sort_tpe->val[y];
    if (vx != vy)
        return vx > vy ? -1 : 1;
    return x < y ? -1 : x > y;
}

static int by_index(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

int dx__tpe_suggest(dx__tpe *t, size_t *out)
{
    if (t->n_obs < TPE_STARTUP) {
        for (size_t j = 0; j < t->np; j++)
            out[j] = (size_t)dx__pyrand_below(&t->rng, t->n_choices[j]);
        return DX_OK;
    }
    size_t n = t->n_obs;
    size_t n_below = (size_t)ceil(0.1 * (double)n);
    if (n_below > 25)
        n_below = 25;
    size_t *order = dx_calloc(n, sizeof *order);
    size_t *cand = dx_calloc(t->np ? t->np : 1, sizeof *cand);
    if (!order || !cand) {
        dx_free(order);
        dx_free(cand);
        return DX_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        order[i] = i;
    /* qsort is not reentrant-safe with a global; the sampler is used by
     * one thread at a time (see the header), and this global only lives
     * for the call. */
    sort_tpe = t;
    qsort(order, n, sizeof *order, by_value_desc);
    sort_tpe = NULL;
    qsort(order, n_below, sizeof *order, by_index);
    qsort(order + n_below, n - n_below, sizeof *order, by_index);
    parzen below = {0}, above = {0};
    int rc = parzen_init(&below, t, order, n_below);
    if (rc == DX_OK)
        rc = parzen_init(&above, t, order + n_below, n - n_below);
    double best = -INFINITY;
    for (int c = 0; rc == DX_OK && c < TPE_CANDIDATES; c++) {
        parzen_sample(&below, &t->rng, cand);
        double s = parzen_log_pdf(&below, cand) - parzen_log_pdf(&above, cand);
        if (s > best) {
            best = s;
            memcpy(out, cand, t->np * sizeof *cand);
        }
    }
    dx_free(below.w);
    dx_free(above.w);
    dx_free(order);
    dx_free(cand);
    return rc;
}

/* ---- the grounded proposer -------------------------------------------------- */

static const char *const TIPS[] = {
    "",
    "Don't be afraid to be creative when creating the new instruction!",
    "Keep the instruction clear and concise.",
    "Make sure your instruction is very informative and descriptive.",
    "The instruction should include a high stakes scenario in which the LM "
    "must solve the task!",
    "Include a persona that is relevant to the task in the instruction (ie. "
    "\"You are a ...\")",
};

static const char PROPOSE_INSTRUCTIONS[] =
    "Use the information below to learn about a task that we are trying to "
    "solve using calls to an LM, then generate a new instruction that will "
    "be used to prompt a Language Model to better solve the task.";

static bool word_char(unsigned char c)
{
    return c >= 0x80 || c == '_' || c == '\'' || c == '-' ||
           (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
}

static bool space_char(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

/* DSPy's strip_prefix: drop a leading "Up To Five Words:" label (after
 * any '*' and spaces), then Python's strip('"'). */
static char *strip_prefix(const char *text)
{
    const char *s = text;
    while (*s == '*' || space_char((unsigned char)*s))
        s++;
    const char *p = s, *start = text;
    for (int words = 0; words < 5; words++) {
        if (!word_char((unsigned char)*p))
            break;
        while (word_char((unsigned char)*p))
            p++;
        if (*p == ':') {
            p++;
            while (space_char((unsigned char)*p))
                p++;
            start = p;
            break;
        }
        if (!space_char((unsigned char)*p))
            break;
        while (space_char((unsigned char)*p))
            p++;
    }
    size_t a = 0, b = strlen(start);
    while (a < b && start[a] == '"')
        a++;
    while (b > a && start[b - 1] == '"')
        b--;
    char *out = dx_malloc(b - a + 1);
    if (out) {
        memcpy(out, start + a, b - a);
        out[b - a] = '\0';
    }
    return out;
}

/* ---- Python's repr of examples ------------------------------------------------ */

/* Is code point c one that Python's str.isprintable() rejects (so repr
 * escapes it)? Exact for ASCII and Latin-1; beyond, the separators,
 * format characters, private-use planes and noncharacters that text
 * actually carries. Python also escapes every unassigned code point;
 * dspex has no Unicode table and prints those as they are. */
static bool py_unprintable(unsigned long c)
{
    if (c < 0x20 || (c >= 0x7f && c <= 0xa0) || c == 0xad)
        return true;
    if (c < 0x600)
        return false;
    return (c >= 0x600 && c <= 0x605) || c == 0x61c || c == 0x6dd ||
           c == 0x70f || c == 0x890 || c == 0x891 || c == 0x8e2 ||
           c == 0x1680 || c == 0x180e || (c >= 0x2000 && c <= 0x200f) ||
           (c >= 0x2028 && c <= 0x202f) || (c >= 0x205f && c <= 0x206f) ||
           c == 0x3000 || (c >= 0xd800 && c <= 0xf8ff) || c == 0xfeff ||
           (c >= 0xfff9 && c <= 0xfffb) || c == 0xfffe || c == 0xffff ||
           (c >= 0x1d173 && c <= 0x1d17a) || c == 0xe0001 ||
           (c >= 0xe0020 && c <= 0xe007f) || c >= 0xf0000;
}

/* The code point of the UTF-8 sequence at s (*len its bytes); 0 with
 * *len 1 for a byte that starts no valid sequence. */
static unsigned long utf8_at(const unsigned char *s, size_t *len)
{
    unsigned long c;
    size_t n;
    if (s[0] < 0x80) {
        *len = 1;
        return s[0];
    } else if ((s[0] & 0xe0) == 0xc0) {
        c = s[0] & 0x1f;
        n = 2;
    } else if ((s[0] & 0xf0) == 0xe0) {
        c = s[0] & 0x0f;
        n = 3;
    } else if ((s[0] & 0xf8) == 0xf0) {
        c = s[0] & 0x07;
        n = 4;
    } else {
        *len = 1;
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            *len = 1;
            return 0;
        }
        c = c << 6 | (s[i] & 0x3f);
    }
    *len = n;
    return c;
}

/* Python's repr of a str: single quotes unless the text has ' and no ",
 * backslash escapes for \\ \n \r \t and the quote, \xNN / \uNNNN /
 * \UNNNNNNNN for what is not printable. Bytes that are not UTF-8 (a
 * Python str cannot hold them) are copied as they are. */
static void py_str_repr(dx__sb *b, const char *s)
{
    char q = strchr(s, '\'') && !strchr(s, '"') ? '"' : '\'';
    dx__sb_putc(b, q);
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t n = 1;
        unsigned long c = utf8_at(p, &n);
        if (c == '\\' || c == (unsigned char)q)
            dx__sb_printf(b, "\\%c", (char)c);
        else if (c == '\n')
            dx__sb_puts(b, "\\n");
        else if (c == '\r')
            dx__sb_puts(b, "\\r");
        else if (c == '\t')
            dx__sb_puts(b, "\\t");
        else if (c != 0 && py_unprintable(c))
            dx__sb_printf(b,
                          c < 0x100     ? "\\x%02lx"
                          : c < 0x10000 ? "\\u%04lx"
                                        : "\\U%08lx",
                          c);
        else
            dx__sb_put(b, (const char *)p, n);
        p += n;
    }
    dx__sb_putc(b, q);
}

/* Python's repr of a JSON value as DSPy holds it: str, int, float,
 * True/False/None, list, dict. */
static void py_repr(dx__sb *b, const cJSON *v)
{
    if (cJSON_IsString(v)) {
        py_str_repr(b, v->valuestring ? v->valuestring : "");
    } else if (cJSON_IsArray(v) || cJSON_IsObject(v)) {
        bool obj = cJSON_IsObject(v);
        dx__sb_putc(b, obj ? '{' : '[');
        for (const cJSON *c = v->child; c; c = c->next) {
            if (c != v->child)
                dx__sb_puts(b, ", ");
            if (obj) {
                py_str_repr(b, c->string ? c->string : "");
                dx__sb_puts(b, ": ");
            }
            py_repr(b, c);
        }
        dx__sb_putc(b, obj ? '}' : ']');
    } else {
        dx__pystr(b, v);
    }
}

/* Python's f"{value}": a str as it is, anything else as its repr. */
static void py_format(dx__sb *b, const cJSON *v)
{
    if (v && !cJSON_IsString(v))
        py_repr(b, v);
    else
        dx__pystr(b, v);
}

static int by_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* DSPy's order_input_keys_in_string(repr(trainset[lo:hi])):
 * "[Example({'question': '...', 'answer': '...'}) (input_keys={'question'}),
 * ...]", keys starting with "dspy_" left out, the input keys' reprs sorted
 * as text. An example without an input designation shows "None", one with
 * an empty designation "set()". Difference: DSPy lists every designated
 * input key; dspex can list only the designated keys the example holds. */
static void examples_repr(dx__sb *b, const dx_dataset *ds, size_t lo, size_t hi)
{
    dx__sb_putc(b, '[');
    for (size_t i = lo; i < hi; i++) {
        const dx_example *ex = ds->items[i];
        if (i > lo)
            dx__sb_puts(b, ", ");
        dx__sb_puts(b, "Example({");
        size_t n = dx_example_len(ex), shown = 0, n_in = 0;
        char **keys = dx_calloc(n ? n : 1, sizeof *keys);
        for (size_t k = 0; k < n; k++) {
            const char *key = dx_example_key(ex, k);
            if (strncmp(key, "dspy_", 5) == 0)
                continue;
            if (shown++)
                dx__sb_puts(b, ", ");
            py_str_repr(b, key);
            dx__sb_puts(b, ": ");
            py_repr(b, dx_example_value(ex, k));
            if (keys && dx_example_is_input(ex, key)) {
                dx__sb tmp;
                dx__sb_init(&tmp);
                py_str_repr(&tmp, key);
                char *t = dx__sb_take(&tmp);
                if (t)
                    keys[n_in++] = t;
                else
                    b->oom = true;
            }
        }
        if (!keys)
            b->oom = true;
        dx__sb_puts(b, "}) (input_keys=");
        if (!dx_example_has_inputs(ex)) {
            dx__sb_puts(b, "None");
        } else if (n_in == 0) {
            dx__sb_puts(b, "set()");
        } else {
            qsort(keys, n_in, sizeof *keys, by_str);
            dx__sb_putc(b, '{');
            for (size_t k = 0; k < n_in; k++)
                dx__sb_printf(b, "%s%s", k ? ", " : "", keys[k]);
            dx__sb_putc(b, '}');
        }
        dx__sb_putc(b, ')');
        for (size_t k = 0; k < n_in; k++)
            dx_free(keys[k]);
        dx_free(keys);
    }
    dx__sb_putc(b, ']');
}

typedef struct mipro_run {
    const dx_module *student;
    dx_tp_opts o;
    dx_mipro_opts m;
    dx__tp_ckpt ck;
    dx_tp_result *res;
    dx__pyrand rng;
    dx_named_predictor *preds; /* of program */
    size_t np;
    dx_module *program;
    dx_module **sets; /* demo-set programs */
    size_t n_sets;
    char ***instr; /* [p][i] */
    size_t *n_instr;
    char *summary;   /* the dataset summary; NULL: none (left out) */
    char *prog_code; /* the program as text; NULL: not program-aware */
    dx_diag *diag;
    /* The valset as given and, with an auto mode, the positions in it of
     * the sampled valset (NULL: the same), so evaluations name examples
     * of the valset the caller (and every node) holds. */
    const dx_dataset *val_base;
    size_t *val_map;
    struct search_state *ss; /* search's, while it runs */
    dx__eval_keep keep;      /* every evaluation's examples hold the run */
} mipro_run;

static void search_state_free(void *obj);

/* Closes the checkpoint and frees the run, its search's state and its
 * result (NULL once handed on). Runs with the last reference to the run
 * (dx__kept, eval_int.h): when dx_mipro is done with it, or once the optimizer's
 * process has ended inside dx_mipro (a kill, a crash) and no example of
 * its evaluations is left. */
static void mipro_run_free(void *obj)
{
    mipro_run *r = obj;
    dx__tp_ckpt_close(&r->ck);
    for (size_t p = 0; r->instr && p < r->np; p++) {
        for (size_t i = 0; r->instr[p] && i < r->n_instr[p]; i++)
            dx_free(r->instr[p][i]);
        dx_free(r->instr[p]);
    }
    dx_free(r->instr);
    dx_free(r->n_instr);
    dx_free(r->summary);
    dx_free(r->prog_code);
    for (size_t s = 0; s < r->n_sets; s++)
        dx_module_free(r->sets[s]);
    dx_free(r->sets);
    dx_free(r->preds);
    dx_module_free(r->program);
    dx_free(r->val_map);
    if (r->ss)
        search_state_free(r->ss);
    dx_tp_result_free(r->res);
    dx_free(r);
}

static bool spent(const mipro_run *r)
{
    return dx__tp_over_budget(&r->o, &r->res->usage);
}

/* The task demos text: up to 3 augmented demos of predictor p from set
 * si, then the following sets, then the earlier ones. */
static char *task_demos(const mipro_run *r, size_t p, size_t si)
{
    dx__sb b;
    dx__sb_init(&b);
    size_t count = 0;
    const dx_signature *sig = dx_predict_signature(r->preds[p].predict);
    for (size_t k = 0; k < r->n_sets && count < 3; k++) {
        size_t s = (si + k) % r->n_sets;
        dx_named_predictor *sp = NULL;
        size_t ns = 0;
        if (dx_module_predictors(r->sets[s], &sp, &ns) != DX_OK || ns <= p) {
            dx_free(sp);
            continue;
        }
        const dx_module *pp = sp[p].predict;
        for (size_t i = 0; i < dx_predict_n_demos(pp) && count < 3; i++) {
            const dx_example *d = dx_predict_demo(pp, i);
            if (!dx_example_has(d, "augmented"))
                continue;
            if (count)
                dx__sb_puts(&b, "\n\n");
            for (size_t f = 0; f < dx_signature_n_fields(sig); f++) {
                const dx_field *fd = dx_signature_field(sig, f);
                dx__sb_printf(&b, "%s%s ", f ? "\n" : "", fd->prefix);
                /* f"{name} {value}", so a list shows as Python's. */
                py_format(&b, dx_example_get(d, fd->name));
            }
            count++;
        }
        dx_free(sp);
    }
    if (count)
        dx__sb_puts(&b, "\n\n");
    if (count == 0 || si == 0) {
        dx__sb_free(&b);
        return dx_strdup("No task demos provided.");
    }
    return dx__sb_take(&b);
}

/* ---- the proposer's LM calls ------------------------------------------------- */

/* DSPy's signatures, word for word (their typos included: the prompts
 * must match). */
static const char DESCRIBE_DATA[] =
    "Given several examples from a dataset please write observations about "
    "trends that hold for most or all of the samples. Some areas you may "
    "consider in your observations: topics, content, syntax, conciseness, "
    "etc. It will be useful to make an educated guess as to the nature of "
    "the task this dataset will enable. Don't be afraid to be creative";
static const char DESCRIBE_DATA_PRIOR[] =
    "Given several examples from a dataset please write observations about "
    "trends that hold for most or all of the samples. I will also provide "
    "you with a few observations I have already made.  Please add your own "
    "observations or if you feel the observations are comprehensive say "
    "'COMPLETE' Some areas you may consider in your observations: topics, "
    "content, syntax, conciceness, etc. It will be useful to make an "
    "educated guess as to the nature of the task this dataset will enable. "
    "Don't be afraid to be creative";
static const char SUMMARIZE[] =
    "Given a series of observations I have made about my dataset, please "
    "summarize them into a brief 2-3 sentence summary which highlights only "
    "the most important details.";
static const char DESCRIBE_PROGRAM[] =
    "Below is some pseudo-code for a pipeline that solves tasks with calls "
    "to language models. Please describe what type of task this program "
    "appears to be designed to solve, and how it appears to work.";
static const char DESCRIBE_MODULE[] =
    "Below is some pseudo-code for a pipeline that solves tasks with calls "
    "to language models. Please describe the purpose of one of the "
    "specified module in this pipeline.";

static const char D_EXAMPLES[] = "Sample data points from the dataset";
static const char D_PSEUDOCODE[] =
    "Pseudocode for a language model program designed to solve a particular "
    "task.";
static const char D_PROGRAM_EXAMPLE[] = "An example of the program in use.";
static const char D_PROGRAM_SUMMARY[] =
    "Summary of the task the program is designed to solve, and how it goes "
    "about solving it.";

static dx_field_spec in_field(const char *name, const char *desc)
{
    return (dx_field_spec){.name = name, .role = DX_FIELD_INPUT, .desc = desc};
}

static dx_field_spec out_field(const char *name, const char *desc)
{
    return (dx_field_spec){.name = name, .role = DX_FIELD_OUTPUT, .desc = desc};
}

/* One prompt-LM call: a Predict of fields[0..nf) with instructions, the
 * inputs values[0..n_in) (in field order), temperature and cache
 * namespace ns (NULL: the run's). *out is the first output field's text
 * (the caller's). DX_OK; DX_ENOMEM; else the call failed (DX_EPROVIDER,
 * DX_EPARSE...), which the proposer's callers forgive as DSPy does, so
 * the reason goes to a diag of our own, not the run's. */
static int ask_text(mipro_run *r, const dx_field_spec *fields, size_t nf,
                    const char *instructions, const char *const *values,
                    size_t n_in, double temperature, const char *ns, char **out)
{
    *out = NULL;
    dx_signature *sig = NULL;
    dx_example *in = dx_example_new();
    dx_diag quiet = {0};
    int rc = in ? dx_signature_build(fields, nf, instructions, &sig, NULL)
                : DX_ENOMEM;
    for (size_t i = 0; rc == DX_OK && i < n_in; i++)
        rc = dx_example_set_str(in, fields[i].name, values[i]);
    dx_prediction *pred = NULL;
    if (rc == DX_OK)
        rc = dx__tp_ask(sig, in, 1, temperature, r->m.prompt_lm_name, ns, &r->o,
                        &pred, &r->res->usage, &quiet);
    if (rc == DX_OK) {
        *out = dx_strdup(dx_prediction_get_str(pred, fields[n_in].name, ""));
        if (!*out)
            rc = DX_ENOMEM;
    }
    dx_prediction_free(pred);
    dx_example_free(in);
    dx_signature_unref(sig);
    return rc;
}

/* Store text (NULL: JSON null, "the LM gave none") under key. */
static void ckpt_put_text(mipro_run *r, const char *key, const char *text)
{
    cJSON *v = text ? cJSON_CreateString(text) : cJSON_CreateNull();
    if (v)
        dx__tp_ckpt_put(&r->ck, key, v);
    cJSON_Delete(v);
}

/* The checkpointed text under key: 1 with *out (the caller's; NULL for
 * a stored null), 0 when not stored, -1 on OOM. */
static int ckpt_get_text(mipro_run *r, const char *key, char **out)
{
    *out = NULL;
    cJSON *v = dx__tp_ckpt_get(&r->ck, key);
    int found = cJSON_IsString(v) || cJSON_IsNull(v);
    if (cJSON_IsString(v) && !(*out = dx_strdup(v->valuestring)))
        found = -1;
    cJSON_Delete(v);
    return found;
}

/* Does DSPy read this observation as "COMPLETE"? (Its first 8 characters
 * upper-cased; ASCII is all that can spell it.) */
static bool says_complete(const char *s)
{
    static const char W[] = "COMPLETE";
    for (size_t i = 0; i < 8; i++)
        if (!s[i] || (s[i] >= 'a' && s[i] <= 'z' ? s[i] - 32 : s[i]) != W[i])
            return false;
    return true;
}

#define VIEW_BATCH 10
#define MAX_SUMMARY_CALLS 10
#define MAX_COMPLETE 5

/* DSPy's create_dataset_summary over train into r->summary (stays NULL
 * when the LM gives none or the budget runs out first). Checkpointed
 * under "data_summary". DX_OK or DX_ENOMEM. */
static int data_summary(mipro_run *r, const dx_dataset *train)
{
    int got = ckpt_get_text(r, "data_summary", &r->summary);
    if (got != 0)
        return got < 0 ? dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "out of memory")
                       : DX_OK;
    if (spent(r))
        return DX_OK;
    dx_field_spec first[] = {
        in_field("examples", D_EXAMPLES),
        out_field("observations", "Somethings that holds true for most or "
                                  "all of the data you observed"),
    };
    dx_field_spec more[] = {
        in_field("examples", D_EXAMPLES),
        in_field("prior_observations",
                 "Some prior observations I made about the data"),
        out_field("observations",
                  "Somethings that holds true for most or all of the data "
                  "you observed or COMPLETE if you have nothing to add"),
    };
    dx_field_spec sum[] = {
        in_field("observations", "Observations I have made about my dataset"),
        out_field("summary", "Two to Three sentence summary of only the most "
                             "significant highlights of my observations"),
    };
    dx__sb obs, view;
    dx__sb_init(&obs);
    dx__sb_init(&view);
    size_t hi = train->n < VIEW_BATCH ? train->n : VIEW_BATCH;
    examples_repr(&view, train, 0, hi);
    const char *vals[2] = {dx__sb_cstr(&view), NULL};
    char *text = NULL, *summary = NULL;
    int rc = vals[0] ? ask_text(r, first, 2, DESCRIBE_DATA, vals, 1, 1.0, NULL,
                                &text)
                     : DX_ENOMEM;
    bool have = rc == DX_OK;
    if (have)
        dx__sb_puts(&obs, text);
    dx_free(text);
    /* Later batches; DSPy's loop makes at most 9 of these calls. */
    size_t calls = 0, skips = 0;
    for (size_t lo = VIEW_BATCH; have && lo < train->n; lo += VIEW_BATCH) {
        if (++calls >= MAX_SUMMARY_CALLS || spent(r))
            break;
        hi = train->n - lo < VIEW_BATCH ? train->n : lo + VIEW_BATCH;
        view.len = 0;
        examples_repr(&view, train, lo, hi);
        /* Field order: examples, prior_observations (values follow it). */
        const char *v2[2] = {dx__sb_cstr(&view), dx__sb_cstr(&obs)};
        if (!v2[0] || !v2[1]) {
            rc = DX_ENOMEM;
            break;
        }
        rc = ask_text(r, more, 3, DESCRIBE_DATA_PRIOR, v2, 2, 1.0, NULL, &text);
        if (rc != DX_OK) {
            /* DSPy: keep the observations so far. */
            dx_free(text);
            break;
        }
        if (says_complete(text)) {
            dx_free(text);
            if (++skips >= MAX_COMPLETE)
                break;
            continue;
        }
        /* Appended as they come, without a separator, as DSPy does. */
        dx__sb_puts(&obs, text);
        dx_free(text);
    }
    if (rc == DX_ENOMEM || obs.oom || view.oom) {
        dx__sb_free(&obs);
        dx__sb_free(&view);
        return dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    rc = DX_OK;
    bool asked = false;
    if (have && !spent(r)) {
        const char *v3[1] = {dx__sb_cstr(&obs)};
        asked = true;
        rc = v3[0] ? ask_text(r, sum, 2, SUMMARIZE, v3, 1, 1.0, NULL, &text)
                   : DX_ENOMEM;
        if (rc == DX_OK) {
            summary = strip_prefix(text);
            rc = summary ? DX_OK : DX_ENOMEM;
        }
        dx_free(text);
    }
    dx__sb_free(&obs);
    dx__sb_free(&view);
    if (rc == DX_ENOMEM)
        return dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "out of memory");
    /* Stored when the run went without one because the LM failed, so a
     * resumed run goes without it too; not when the budget stopped it. */
    if (asked || !have)
        ckpt_put_text(r, "data_summary", summary);
    r->summary = summary;
    return DX_OK;
}

/* The "program_code" DSPy fills with the program's Python source (each
 * signature class, then the module class). dspex programs have no
 * source, so the program is shown as its structure: the type name, then
 * each predictor's path, signature and instructions (continuation lines
 * indented), in named_predictors order. NULL on OOM. */
static char *program_code(const mipro_run *r)
{
    dx__sb b;
    dx__sb_init(&b);
    dx__sb_printf(&b, "%s, a program of %zu predictor%s:\n",
                  dx_module_type_name(r->program), r->np,
                  r->np == 1 ? "" : "s");
    for (size_t p = 0; p < r->np; p++) {
        const dx_signature *sig = dx_predict_signature(r->preds[p].predict);
        char *str = NULL;
        if (dx_signature_string(sig, &str) != DX_OK)
            b.oom = true;
        dx__sb_printf(&b, "\n%s = Predict(\"%s\")\n    instructions: ",
                      r->preds[p].path, str ? str : "");
        dx_free(str);
        for (const char *s = dx_signature_instructions(sig); *s; s++) {
            dx__sb_putc(&b, *s);
            if (*s == '\n' && s[1])
                dx__sb_puts(&b, "    ");
        }
        dx__sb_putc(&b, '\n');
    }
    return dx__sb_take(&b);
}

/* DSPy's module string for predictor p: "Predict(in, ...) -> out, ...". */
static char *module_code(const mipro_run *r, size_t p)
{
    const dx_signature *sig = dx_predict_signature(r->preds[p].predict);
    dx__sb b;
    dx__sb_init(&b);
    dx__sb_puts(&b, "Predict(");
    for (size_t i = 0; i < dx_signature_n_inputs(sig); i++)
        dx__sb_printf(&b, "%s%s", i ? ", " : "",
                      dx_signature_input(sig, i)->name);
    dx__sb_puts(&b, ") -> ");
    for (size_t i = 0; i < dx_signature_n_outputs(sig); i++)
        dx__sb_printf(&b, "%s%s", i ? ", " : "",
                      dx_signature_output(sig, i)->name);
    return dx__sb_take(&b);
}

/* What a proposal shows the LM about the program and predictor p. */
typedef struct described {
    char *program; /* program_description */
    char *module;  /* module */
    char *role;    /* module_description */
    bool stopped;  /* the budget ran out before all were asked */
} described;

static void described_free(described *d)
{
    dx_free(d->program);
    dx_free(d->module);
    dx_free(d->role);
}

/* DSPy's program-aware step of one proposal: DescribeProgram (its answer
 * prefix-stripped), then DescribeModule, with the task demos as the
 * program example, at init_temperature in the proposal's cache
 * namespace. A failed call leaves DSPy's placeholders. Each answer is
 * checkpointed under "<what>/<p>/<si>". DX_OK or DX_ENOMEM. */
static int describe(mipro_run *r, size_t p, size_t si, const char *demos,
                    const char *ns, described *d)
{
    memset(d, 0, sizeof *d);
    char kp[64], km[64];
    snprintf(kp, sizeof kp, "program_description/%zu/%zu", p, si);
    snprintf(km, sizeof km, "module_description/%zu/%zu", p, si);
    char *text = NULL;
    int got = ckpt_get_text(r, kp, &text);
    int rc = got < 0 ? DX_ENOMEM : DX_OK;
    if (rc == DX_OK && got == 0) {
        dx_field_spec f[] = {
            in_field("program_code", D_PSEUDOCODE),
            in_field("program_example", D_PROGRAM_EXAMPLE),
            out_field(
                "program_description",
                "Describe what task the program is designed to solve, and how "
                "it goes about solving this task."),
        };
        const char *v[] = {r->prog_code, demos};
        char *raw = NULL;
        rc = ask_text(r, f, 3, DESCRIBE_PROGRAM, v, 2, r->m.init_temperature,
                      ns, &raw);
        if (rc == DX_OK) {
            text = strip_prefix(raw);
            rc = text ? DX_OK : DX_ENOMEM;
        } else if (rc != DX_ENOMEM) {
            rc = DX_OK;
        }
        dx_free(raw);
        if (rc == DX_OK)
            ckpt_put_text(r, kp, text);
    }
    if (rc == DX_OK && text) {
        d->program = text;
        d->module = module_code(r, p);
        rc = d->module ? DX_OK : DX_ENOMEM;
        got = rc == DX_OK ? ckpt_get_text(r, km, &d->role) : 0;
        if (got < 0)
            rc = DX_ENOMEM;
        if (rc == DX_OK && got == 0 && spent(r)) {
            d->stopped = true;
        } else if (rc == DX_OK && got == 0) {
            dx_field_spec f[] = {
                in_field("program_code", D_PSEUDOCODE),
                in_field("program_example", D_PROGRAM_EXAMPLE),
                in_field("program_description", D_PROGRAM_SUMMARY),
                in_field("module", "The module in the program that we want to "
                                   "describe."),
                out_field("module_description",
                          "Description of the module's role in the broader "
                          "program."),
            };
            const char *v[] = {r->prog_code, demos, d->program, d->module};
            rc = ask_text(r, f, 5, DESCRIBE_MODULE, v, 4, r->m.init_temperature,
                          ns, &d->role);
            if (rc != DX_OK && rc != DX_ENOMEM)
                rc = DX_OK;
            if (rc == DX_OK)
                ckpt_put_text(r, km, d->role);
        }
    }
    if (rc == DX_OK && !d->program &&
        !(d->program = dx_strdup("Not available")))
        rc = DX_ENOMEM;
    if (rc == DX_OK && !d->module && !(d->module = dx_strdup("Not provided")))
        rc = DX_ENOMEM;
    if (rc == DX_OK && !d->role && !(d->role = dx_strdup("Not provided")))
        rc = DX_ENOMEM;
    if (rc != DX_OK) {
        described_free(d);
        memset(d, 0, sizeof *d);
        return dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    return DX_OK;
}

/* One proposal (DSPy's GenerateModuleInstruction) for predictor p from
 * demo set si into *out; *out stays NULL when the budget ran out before
 * its calls were made. */
static int propose_one(mipro_run *r, size_t p, size_t si, const char *tip,
                       int64_t rollout, char **out)
{
    *out = NULL;
    char key[64];
    snprintf(key, sizeof key, "instruction/%zu/%zu", p, si);
    cJSON *cv = dx__tp_ckpt_get(&r->ck, key);
    if (cJSON_IsString(cv)) {
        *out = dx_strdup(cv->valuestring);
        cJSON_Delete(cv);
        return *out ? DX_OK : DX_ENOMEM;
    }
    cJSON_Delete(cv);
    bool use_demos = !r->m.no_task_demos && r->n_sets > 0;
    bool use_tip = tip && *tip;
    char *demos = use_demos ? task_demos(r, p, si) : NULL;
    const char *demo_text = demos ? demos : "No task demos provided.";
    char ns[32];
    snprintf(ns, sizeof ns, "%lld", (long long)rollout);
    described d = {0};
    int rc = use_demos && !demos ? DX_ENOMEM : DX_OK;
    if (rc == DX_OK && r->prog_code)
        rc = describe(r, p, si, demo_text, ns, &d);
    if (rc != DX_OK || d.stopped || spent(r)) {
        described_free(&d);
        dx_free(demos);
        return rc == DX_OK ? DX_OK
                           : dx_diag_set(r->diag, rc, 0, 0, "out of memory");
    }
    /* GenerateSingleModuleInstruction's fields in DSPy's order; the
     * instruction history is off in MIPROv2. */
    dx_field_spec f[9];
    const char *v[8];
    size_t nf = 0;
    if (r->summary) {
        v[nf] = r->summary;
        f[nf++] = in_field("dataset_description",
                           "A description of the dataset that we are using.");
    }
    if (r->prog_code) {
        v[nf] = r->prog_code;
        f[nf++] = in_field("program_code", "Language model program designed to "
                                           "solve a particular task.");
        v[nf] = d.program;
        f[nf++] = in_field("program_description", D_PROGRAM_SUMMARY);
        v[nf] = d.module;
        f[nf++] =
            in_field("module", "The module to create an instruction for.");
        v[nf] = d.role;
        f[nf++] = in_field("module_description", "Description of the module "
                                                 "to create an instruction "
                                                 "for.");
    }
    v[nf] = demo_text;
    f[nf++] = in_field("task_demos", "Example inputs/outputs of our module.");
    v[nf] =
        dx_signature_instructions(dx_predict_signature(r->preds[p].predict));
    f[nf++] = in_field("basic_instruction", "Basic instruction.");
    if (use_tip) {
        v[nf] = tip;
        f[nf++] = in_field("tip", "A suggestion for how to go about "
                                  "generating the new instruction.");
    }
    size_t n_in = nf;
    f[nf++] = out_field("proposed_instruction",
                        "Propose an instruction that will be used to "
                        "prompt a Language Model to perform this "
                        "task.");
    dx_signature *sig = NULL;
    dx_example *in = dx_example_new();
    rc = in ? dx_signature_build(f, nf, PROPOSE_INSTRUCTIONS, &sig, NULL)
            : DX_ENOMEM;
    for (size_t i = 0; rc == DX_OK && i < n_in; i++)
        rc = dx_example_set_str(in, f[i].name, v[i]);
    dx_prediction *pred = NULL;
    if (rc == DX_OK)
        rc = dx__tp_ask(sig, in, 1, r->m.init_temperature, r->m.prompt_lm_name,
                        ns, &r->o, &pred, &r->res->usage, r->diag);
    else
        dx_diag_set(r->diag, rc, 0, 0, "mipro: out of memory");
    if (rc == DX_OK) {
        *out = strip_prefix(
            dx_prediction_get_str(pred, "proposed_instruction", ""));
        if (!*out)
            rc = dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "out of memory");
        cJSON *cj = *out ? cJSON_CreateString(*out) : NULL;
        if (cj)
            dx__tp_ckpt_put(&r->ck, key, cj);
        cJSON_Delete(cj);
    }
    dx_prediction_free(pred);
    dx_example_free(in);
    dx_signature_unref(sig);
    described_free(&d);
    dx_free(demos);
    return rc;
}

/* ---- datasets -------------------------------------------------------------- */

/* The indices of n examples of src chosen by rng.sample (DSPy's
 * create_minibatch); *idx is the caller's (dx_free). */
static int sample_idx(dx__pyrand *rng, const dx_dataset *src, size_t n,
                      size_t **idx, size_t *n_out)
{
    if (n > src->n)
        n = src->n;
    *idx = dx_calloc(n ? n : 1, sizeof **idx);
    *n_out = n;
    if (!*idx || dx__pyrand_sample(rng, src->n, n, *idx) != DX_OK) {
        dx_free(*idx);
        *idx = NULL;
        return DX_ENOMEM;
    }
    return DX_OK;
}

/* ---- demo sets ---------------------------------------------------------------- */

static int demo_sets(mipro_run *r, const dx_dataset *train, size_t n_sets,
                     size_t max_boot, size_t max_lab)
{
    r->sets = dx_calloc(n_sets ? n_sets : 1, sizeof *r->sets);
    if (!r->sets)
        return dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "out of memory");
    int rc = DX_OK;
    for (int64_t seed = -3; seed < (int64_t)n_sets - 3 && rc == DX_OK; seed++) {
        if (spent(r))
            break;
        dx_module *prog = NULL;
        dx_tp_opts bo = r->o;
        bo.report_path = NULL;
        bo.max_bootstrapped_demos = max_boot;
        bo.max_labeled_demos = max_lab;
        bo.labeled_none = max_lab == 0;
        if (seed == -3) {
            prog = dx_module_reset_copy(r->student);
            rc = prog ? DX_OK : DX_ENOMEM;
        } else if (seed == -2 && max_lab > 0) {
            rc = dx_labeled_fewshot(r->student, train, max_lab, true, &prog);
        } else {
            dx_dataset copy = {0};
            copy.n = train->n;
            copy.items = dx_calloc(train->n ? train->n : 1, sizeof *copy.items);
            if (!copy.items) {
                rc = DX_ENOMEM;
                break;
            }
            memcpy(copy.items, train->items, train->n * sizeof *copy.items);
            if (seed != -1) {
                dx__pyrand_shuffle_n(&r->rng, (void *)copy.items, copy.n,
                                     sizeof *copy.items);
                int64_t size = 1;
                dx__pyrand_randint(&r->rng, 1, (int64_t)max_boot, &size);
                bo.max_bootstrapped_demos = (size_t)size;
            }
            dx_tp_result *sub = NULL;
            /* freed by the process if it ends in the bootstrap */
            dx_ptie *tie = dx_ptie_new(copy.items, dx_free);
            rc = dx_bootstrap_fewshot(r->student, NULL, &copy, &bo, &sub,
                                      r->diag);
            dx_ptie_cut(tie);
            if (rc == DX_OK) {
                prog = sub->program;
                sub->program = NULL;
                dx_usage_acc_merge(&r->res->usage, &sub->usage);
            }
            dx_tp_result_free(sub);
            dx_free(copy.items);
        }
        if (rc == DX_OK)
            r->sets[r->n_sets++] = prog;
    }
    if (rc == DX_ENOMEM)
        dx_diag_set(r->diag, rc, 0, 0, "mipro: out of memory");
    return rc;
}

/* ---- the search ------------------------------------------------------------- */

typedef struct combo {
    size_t *params;
    double sum;
    size_t n;
    bool full; /* fully evaluated */
} combo;

static dx_module *build(mipro_run *r, const size_t *params, bool demos)
{
    dx_module *c = dx_module_copy(r->program);
    dx_named_predictor *cp = NULL;
    size_t ncp = 0;
    if (!c || dx_module_predictors(c, &cp, &ncp) != DX_OK) {
        dx_module_free(c);
        return NULL;
    }
    int rc = DX_OK;
    for (size_t p = 0; p < ncp && rc == DX_OK; p++) {
        size_t ii = params[demos ? 2 * p : p];
        dx_signature *s = NULL;
        rc = dx_signature_with_instructions(dx_predict_signature(cp[p].predict),
                                            r->instr[p][ii], &s);
        if (rc == DX_OK)
            rc = dx_predict_set_signature(cp[p].predict, s);
        dx_signature_unref(s);
        if (rc == DX_OK && demos) {
            dx_named_predictor *sp = NULL;
            size_t ns = 0;
            rc = dx_module_predictors(r->sets[params[2 * p + 1]], &sp, &ns);
            if (rc == DX_OK && ns > p) {
                const dx_module *src = sp[p].predict;
                size_t nd = dx_predict_n_demos(src);
                const dx_example **d = dx_calloc(nd ? nd : 1, sizeof *d);
                for (size_t i = 0; d && i < nd; i++)
                    d[i] = dx_predict_demo(src, i);
                rc = d ? dx_predict_set_demos(cp[p].predict,
                                              (const dx_example *const *)d, nd)
                       : DX_ENOMEM;
                dx_free(d);
            }
            dx_free(sp);
        }
    }
    dx_free(cp);
    if (rc != DX_OK) {
        dx_module_free(c);
        return NULL;
    }
    return c;
}

/* One evaluation, from the checkpoint when it holds it for these params. */
static int trial_eval(mipro_run *r, int64_t num, const char *kind,
                      const dx_module *prog, const dx_dataset *ds,
                      const size_t *idx, size_t n_idx, const size_t *params,
                      size_t nparams, double *score)
{
    dx_tp_trial t = {.id = num};
    snprintf(t.kind, sizeof t.kind, "%s", kind);
    dx_usage_acc_init(&t.usage, "candidate");
    int64_t t0 = dx_now_ms();
    char key[48];
    snprintf(key, sizeof key, "trial/%lld", (long long)num);
    cJSON *cv = dx__tp_ckpt_get(&r->ck, key);
    const cJSON *sc = cJSON_GetObjectItem(cv, "score");
    const cJSON *pa = cJSON_GetObjectItem(cv, "params");
    bool same = cJSON_IsNumber(sc) && cJSON_IsArray(pa) &&
                (size_t)cJSON_GetArraySize(pa) == nparams;
    for (size_t j = 0; same && j < nparams; j++)
        same = cJSON_GetNumberValue(cJSON_GetArrayItem(pa, (int)j)) ==
               (double)params[j];
    dx__tp_emit("optimize.trial", DX_TELEMETRY_START, "mipro", num, 0);
    int rc = DX_OK;
    if (same) {
        t.score = sc->valuedouble;
        t.from_checkpoint = true;
        dx__tp_restore_usage(cv, &t.usage);
    } else {
        cJSON *rows = NULL;
        /* Name the examples by their place in the caller's valset. */
        size_t n_ev = idx ? n_idx : ds->n;
        size_t *ev = NULL;
        if (r->val_map) {
            ev = dx_calloc(n_ev ? n_ev : 1, sizeof *ev);
            for (size_t i = 0; ev && i < n_ev; i++)
                ev[i] = r->val_map[idx ? idx[i] : i];
        }
        /* freed by the process if it ends in the evaluation */
        dx_ptie *ev_tie = ev ? dx_ptie_new(ev, dx_free) : NULL;
        if (r->val_map && !ev)
            rc = dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "out of memory");
        else if (r->val_map)
            rc = dx__tp_evaluate_idx(prog, r->val_base, ev, n_ev, &r->o,
                                     &r->keep, &t.score, &t.usage, &rows,
                                     r->diag);
        else
            rc = dx__tp_evaluate_idx(prog, ds, idx, n_idx, &r->o, &r->keep,
                                     &t.score, &t.usage, &rows, r->diag);
        dx_ptie_cut(ev_tie);
        dx_free(ev);
        cJSON *v = rc == DX_OK ? cJSON_CreateObject() : NULL;
        cJSON *arr = v ? cJSON_AddArrayToObject(v, "params") : NULL;
        for (size_t j = 0; arr && j < nparams; j++)
            cJSON_AddItemToArray(arr, cJSON_CreateNumber((double)params[j]));
        if (arr) {
            cJSON_AddNumberToObject(v, "score", t.score);
            dx__tp_record(v, &t.usage, rows);
            rows = NULL;
            dx__tp_ckpt_put(&r->ck, key, v);
        }
        cJSON_Delete(rows);
        cJSON_Delete(v);
    }
    cJSON_Delete(cv);
    if (rc != DX_OK)
        return rc;
    t.wall_s = (double)(dx_now_ms() - t0) / 1000.0;
    *score = t.score;
    dx__tp_emit("optimize.trial", DX_TELEMETRY_STOP, "mipro", num, t.score);
    return dx__tp_add_trial(r->res, &t);
}

static int keep_best(mipro_run *r, const dx_module *prog, double score,
                     int64_t num)
{
    if (score <= r->res->score)
        return DX_OK;
    dx_module *c = dx_module_copy(prog);
    if (!c)
        return DX_ENOMEM;
    dx_module_free(r->res->program);
    r->res->program = c;
    r->res->score = score;
    dx__tp_emit("optimize.best", DX_TELEMETRY_STOP, "mipro", num, score);
    return DX_OK;
}

/* What search holds across its trials' evaluations. */
typedef struct search_state {
    size_t *nch, *params;
    combo *combos;
    size_t n_combos;
    dx__tpe *tpe;
    dx_module *cand; /* the candidate being evaluated */
    size_t *mb;      /* its minibatch */
} search_state;

static void search_state_free(void *obj)
{
    search_state *ss = obj;
    for (size_t i = 0; ss->combos && i < ss->n_combos; i++)
        dx_free(ss->combos[i].params);
    dx_free(ss->combos);
    dx_free(ss->nch);
    dx_free(ss->params);
    dx__tpe_free(ss->tpe);
    dx_module_free(ss->cand);
    dx_free(ss->mb);
    dx_free(ss);
}

static int search(mipro_run *r, const dx_dataset *val, size_t num_trials,
                  bool minibatch, size_t mb_size, size_t steps, int64_t seed)
{
    bool demos = r->n_sets > 0 && !r->m.zero_shot;
    size_t nparams = demos ? 2 * r->np : r->np;
    /* The run's: the trials wait on evaluations, where an optimizer
     * stopped or crashed ends (mipro_run_free). */
    search_state *ss = r->ss = dx_calloc(1, sizeof *ss);
    if (!ss) {
        dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "mipro: out of memory");
        return DX_ENOMEM;
    }
    size_t *nch = ss->nch = dx_calloc(nparams ? nparams : 1, sizeof *nch);
    size_t *params = ss->params =
        dx_calloc(nparams ? nparams : 1, sizeof *params);
    combo *combos = ss->combos = dx_calloc(num_trials + 1, sizeof *combos);
    size_t n_combos = 0;
    dx__tpe *tpe = NULL;
    int rc = nch && params && combos ? DX_OK : DX_ENOMEM;
    for (size_t p = 0; rc == DX_OK && p < r->np; p++) {
        nch[demos ? 2 * p : p] = r->n_instr[p];
        if (demos)
            nch[2 * p + 1] = r->n_sets;
    }
    if (rc == DX_OK && !(tpe = ss->tpe = dx__tpe_new(nch, nparams, seed)))
        rc = DX_ENOMEM;
    /* The default program, fully evaluated: trial 1. */
    double score = 0;
    if (rc == DX_OK)
        rc = trial_eval(r, 1, "default", r->program, val, NULL, 0, params,
                        nparams, &score);
    if (rc == DX_OK)
        rc = keep_best(r, r->program, score, 1);
    if (rc == DX_OK)
        rc = dx__tpe_add(tpe, params, score);
    size_t in_study = 1;
    size_t adjusted = minibatch ? num_trials + num_trials / steps + 1 +
                                      (num_trials % steps != 0 ? 1 : 0)
                                : num_trials;
    for (size_t k = 0; rc == DX_OK && k < num_trials && !spent(r); k++) {
        size_t num = in_study + 1;
        rc = dx__tpe_suggest(tpe, params);
        dx_module *cand = ss->cand =
            rc == DX_OK ? build(r, params, demos) : NULL;
        if (rc == DX_OK && !cand)
            rc = DX_ENOMEM;
        size_t batch = minibatch ? mb_size : val->n;
        size_t n_mb = 0;
        if (rc == DX_OK && batch < val->n)
            rc = sample_idx(&r->rng, val, batch, &ss->mb, &n_mb);
        if (rc == DX_OK)
            rc = trial_eval(r, (int64_t)num, minibatch ? "minibatch" : "full",
                            cand, val, ss->mb, n_mb, params, nparams, &score);
        dx_free(ss->mb);
        ss->mb = NULL;
        in_study++;
        if (rc == DX_OK)
            rc = dx__tpe_add(tpe, params, score);
        if (rc == DX_OK && !minibatch)
            rc = keep_best(r, cand, score, (int64_t)num);
        dx_module_free(cand);
        ss->cand = NULL;
        if (rc != DX_OK || !minibatch)
            continue;
        combo *c = NULL;
        for (size_t i = 0; i < n_combos && !c; i++)
            if (memcmp(combos[i].params, params, nparams * sizeof *params) == 0)
                c = &combos[i];
        if (!c) {
            c = &combos[n_combos];
            c->params = dx_calloc(nparams ? nparams : 1, sizeof *params);
            if (!c->params) {
                rc = DX_ENOMEM;
                break;
            }
            memcpy(c->params, params, nparams * sizeof *params);
            ss->n_combos = ++n_combos;
        }
        c->sum += score;
        c->n++;
        if (num % (steps + 1) != 0 && num != adjusted - 1)
            continue;
        /* Full evaluation of the best-averaging combination not yet fully
         * evaluated (first of equal means, as Python's stable sort). */
        combo *top = NULL;
        for (size_t i = 0; i < n_combos; i++)
            if (!combos[i].full &&
                (!top || combos[i].sum / (double)combos[i].n >
                             top->sum / (double)top->n))
                top = &combos[i];
        if (!top)
            continue;
        dx_module *fp = ss->cand = build(r, top->params, demos);
        if (!fp) {
            rc = DX_ENOMEM;
            break;
        }
        rc = trial_eval(r, (int64_t)num + 1, "full", fp, val, NULL, 0,
                        top->params, nparams, &score);
        in_study++;
        top->full = true;
        if (rc == DX_OK)
            rc = dx__tpe_add(tpe, top->params, score);
        if (rc == DX_OK)
            rc = keep_best(r, fp, score, (int64_t)num + 1);
        dx_module_free(fp);
        ss->cand = NULL;
    }
    r->ss = NULL;
    search_state_free(ss);
    if (rc == DX_ENOMEM)
        dx_diag_set(r->diag, rc, 0, 0, "mipro: out of memory");
    return rc;
}

/* ---- MIPROv2 ------------------------------------------------------------------ */

static const struct {
    size_t n, val;
} AUTO[] = {{6, 100}, {12, 300}, {18, 1000}};

static int mipro_body(mipro_run *r, const dx_dataset *train,
                      const dx_dataset *val_in)
{
    const dx_mipro_opts *m = &r->m;
    int64_t seed = m->has_seed ? m->seed : 9;
    dx__pyrand_seed(&r->rng, seed);
    size_t max_boot = r->o.max_bootstrapped_demos;
    size_t max_lab = r->o.labeled_none ? 0 : r->o.max_labeled_demos;
    bool zero_shot = m->zero_shot;
    dx_dataset val = *val_in, val_view = {0};
    dx_ptie *view_tie = NULL;
    r->val_base = val_in;
    size_t n_instr, n_fewshot, num_trials;
    bool minibatch = !m->no_minibatch;
    if (m->auto_mode != DX_MIPRO_AUTO_NONE) {
        size_t a = (size_t)m->auto_mode;
        if (a > 2)
            return dx_diag_set(r->diag, DX_EINVAL, 0, 0, "mipro: bad auto");
        size_t nv = 0;
        if (sample_idx(&r->rng, val_in, AUTO[a].val, &r->val_map, &nv) !=
                DX_OK ||
            !(val_view.items =
                  dx_calloc(nv ? nv : 1, sizeof *val_view.items))) {
            dx_free(r->val_map);
            r->val_map = NULL;
            return dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "out of memory");
        }
        val_view.n = nv;
        for (size_t i = 0; i < nv; i++)
            val_view.items[i] = val_in->items[r->val_map[i]];
        val = val_view;
        /* freed by the process if it ends in the run (r->val_map is the
         * run's, which is tied already) */
        view_tie = dx_ptie_new(val_view.items, dx_free);
        minibatch = val.n > 50;
        n_fewshot = AUTO[a].n;
        n_instr = zero_shot ? AUTO[a].n : AUTO[a].n / 2;
        size_t vars = r->np * (zero_shot ? 1 : 2);
        double t1 = 2.0 * (double)vars * log2((double)AUTO[a].n);
        double t2 = 1.5 * (double)AUTO[a].n;
        num_trials = (size_t)(t1 > t2 ? t1 : t2);
    } else {
        if (!m->num_candidates || !m->num_trials)
            return dx_diag_set(r->diag, DX_EINVAL, 0, 0,
                               "mipro: without auto, num_candidates and "
                               "num_trials must be given");
        n_instr = n_fewshot = m->num_candidates;
        num_trials = m->num_trials;
    }
    size_t mb_size = m->minibatch_size ? m->minibatch_size : 35;
    size_t steps =
        m->minibatch_full_eval_steps ? m->minibatch_full_eval_steps : 5;
    int rc = DX_OK;
    if (minibatch && mb_size > val.n)
        rc = dx_diag_set(r->diag, DX_EINVAL, 0, 0,
                         "mipro: minibatch size %zu exceeds the valset (%zu)",
                         mb_size, val.n);
    /* Step 1: demo sets (zero-shot: 3 bootstrapped, for the proposer). */
    if (rc == DX_OK)
        rc = demo_sets(r, train, n_fewshot, zero_shot ? 3 : max_boot,
                       zero_shot ? 0 : max_lab);
    /* Step 2: instructions, the current one first. DSPy's proposer reads
     * the program and summarises the trainset once, before proposing. */
    if (rc == DX_OK && !m->no_program_description &&
        !(r->prog_code = program_code(r)))
        rc = dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "out of memory");
    if (rc == DX_OK && !m->no_data_summary)
        rc = data_summary(r, train);
    r->instr = rc == DX_OK ? dx_calloc(r->np, sizeof *r->instr) : NULL;
    r->n_instr = rc == DX_OK ? dx_calloc(r->np, sizeof *r->n_instr) : NULL;
    if (rc == DX_OK && (!r->instr || !r->n_instr))
        rc = dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "out of memory");
    size_t num_demos = r->n_sets ? r->n_sets : 1;
    size_t per = n_instr < num_demos ? n_instr : num_demos;
    if (r->n_sets == 0)
        per = n_instr;
    for (size_t p = 0; rc == DX_OK && p < r->np; p++) {
        r->instr[p] = dx_calloc(per ? per : 1, sizeof **r->instr);
        if (!r->instr[p]) {
            rc = DX_ENOMEM;
            break;
        }
        for (size_t i = 0; rc == DX_OK && i < per; i++) {
            size_t tip = 0;
            if (!r->m.no_tip)
                dx__pyrand_choice(&r->rng, 6, &tip);
            int64_t rollout = 0;
            dx__pyrand_randint(&r->rng, 0, 1000000000, &rollout);
            if (spent(r))
                break;
            rc = propose_one(r, p, i, r->m.no_tip ? NULL : TIPS[tip], rollout,
                             &r->instr[p][i]);
            if (rc == DX_OK && !r->instr[p][i])
                break; /* the budget ran out */
            if (rc == DX_OK)
                r->n_instr[p]++;
        }
        if (rc == DX_OK && r->n_instr[p] == 0) {
            r->instr[p][0] = NULL;
            r->n_instr[p] = 1;
        }
        if (rc == DX_OK) {
            char *orig = dx_strdup(dx_signature_instructions(
                dx_predict_signature(r->preds[p].predict)));
            if (!orig) {
                rc = DX_ENOMEM;
                break;
            }
            dx_free(r->instr[p][0]);
            r->instr[p][0] = orig;
        }
    }
    /* Step 3: the search. */
    if (rc == DX_OK && !spent(r))
        rc = search(r, &val, num_trials, minibatch, mb_size, steps, seed);
    if (rc == DX_OK && !r->res->program)
        rc = dx_diag_set(r->diag, DX_ELIMIT, 0, 0,
                         "mipro: nothing was evaluated (budget exhausted?)");
    dx_ptie_cut(view_tie);
    dx_free(val_view.items);
    dx_free(r->val_map);
    r->val_map = NULL;
    return rc;
}

int dx_mipro(const dx_module *student, const dx_dataset *trainset,
             const dx_dataset *valset, const dx_tp_opts *opts,
             const dx_mipro_opts *mipro, dx_tp_result **out, dx_diag *diag)
{
    int rc = dx__tp_check_opts(student, trainset, opts, out, diag);
    if (rc != DX_OK)
        return rc;
    /* DSPy: without a valset, the last 80% of the trainset (at most
     * 1000) validates and the rest trains. */
    dx_dataset train = *trainset, val = {0};
    if (valset) {
        val = *valset;
    } else {
        if (trainset->n < 2)
            return dx_diag_set(diag, DX_EINVAL, 0, 0,
                               "mipro: the trainset needs at least 2 "
                               "examples without a valset");
        size_t vn = (size_t)((double)trainset->n * 0.8);
        vn = vn < 1 ? 1 : vn > 1000 ? 1000 : vn;
        train.n = trainset->n - vn;
        val.items = trainset->items + train.n;
        val.n = vn;
    }
    if (train.n == 0 || val.n == 0)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "mipro: empty trainset or valset");
    /* Shared with the calling process and the examples of its evaluations
     * (dx__kept, eval_int.h): an optimizer stopped mid-run (its supervisor, a
     * caller that went away) or crashed closes its checkpoint and frees
     * its state once no example reads the program under evaluation. */
    mipro_run *r = dx_calloc(1, sizeof *r);
    dx__kept *shared = r ? dx__kept_new(r, mipro_run_free) : NULL;
    if (!shared) {
        dx_free(r);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    r->keep = dx__kept_keep(shared);
    r->student = student;
    r->diag = diag;
    /* MIPROv2's demo defaults: 4 and 4. */
    dx_tp_opts o = *opts;
    if (!o.max_labeled_demos && !o.labeled_none)
        o.max_labeled_demos = 4;
    r->o = dx__tp_normalized(&o);
    if (mipro)
        r->m = *mipro;
    if (r->m.init_temperature <= 0)
        r->m.init_temperature = 1.0;
    char kind[400];
    snprintf(kind, sizeof kind,
             "mipro|%d|%zu|%zu|%d|%zu|%zu|%lld|%d|%.17g|%d%d|%s|%d|%d%d",
             (int)r->m.auto_mode, r->m.num_candidates, r->m.num_trials,
             (int)r->m.no_minibatch, r->m.minibatch_size,
             r->m.minibatch_full_eval_steps, (long long)r->m.seed,
             (int)r->m.has_seed, r->m.init_temperature, (int)r->m.no_task_demos,
             (int)r->m.no_tip, r->m.prompt_lm_name ? r->m.prompt_lm_name : "",
             (int)r->m.zero_shot, (int)r->m.no_data_summary,
             (int)r->m.no_program_description);
    rc = dx__tp_ckpt_open(&r->ck, r->o.checkpoint_path, kind, student, NULL,
                          &train, &val, &r->o, 0, diag);
    if (rc == DX_OK)
        r->res = dx__tp_result_new();
    r->program = dx_module_copy(student);
    if (rc != DX_OK) {
        /* the checkpoint's error is in diag */
    } else if (!r->res || !r->program ||
               dx_module_predictors(r->program, &r->preds, &r->np) != DX_OK) {
        rc = dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    } else if (r->np == 0) {
        rc = dx_diag_set(diag, DX_EINVAL, 0, 0,
                         "mipro: the program has no predictors");
    }
    int64_t t0 = dx_now_ms();
    if (rc == DX_OK)
        rc = mipro_body(r, &train, &val);
    dx_tp_result *res = r->res;
    r->res = NULL;
    dx__kept_done(shared);
    if (rc != DX_OK) {
        dx_tp_result_free(res);
        return rc;
    }
    res->wall_s = (double)(dx_now_ms() - t0) / 1000.0;
    if (o.report_path)
        dx_tp_write_report(res, "MIPROv2", o.report_path, NULL);
    *out = res;
    return DX_OK;
}
