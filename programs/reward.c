/*
 * reward.c — rewards for BestOfN and Refine declared in a program file
 * (program.h): checks on one output field (word and character counts, a
 * regular expression, a set of accepted answers, non-empty), their
 * conjunction and disjunction, and C functions registered by name, so a
 * program that needs a reward written in C can still be a JSON file.
 *
 * A declared reward compiles to a tree that is immutable afterwards and
 * shared by every copy of the module (BestOfN's reward_ud_free frees it
 * with the last copy). Each node also renders itself as the Python
 * expression a DSPy user would have written, which is what Refine's
 * feedback LM reads as "the code of the reward function".
 */
#include <ctype.h>
#include <regex.h>
#include <stdio.h>
#include <string.h>
#include <threads.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/program.h"
#include "pyjson.h"
#include "reward_int.h"

/* ---- the registry of C rewards -------------------------------------------- */

#define MAX_REGISTERED 64

typedef struct registered {
    char name[64];
    dx_reward_fn fn;
    void *ud;
} registered;

static registered registry[MAX_REGISTERED];
static size_t n_registered;
static mtx_t registry_lock;
static once_flag registry_once = ONCE_FLAG_INIT;

static void registry_init(void)
{
    mtx_init(&registry_lock, mtx_plain);
}

int dx_program_register_reward(const char *name, dx_reward_fn fn, void *ud)
{
    if (!name || !name[0] || strlen(name) >= sizeof registry[0].name)
        return DX_EINVAL;
    call_once(&registry_once, registry_init);
    mtx_lock(&registry_lock);
    int rc = DX_OK;
    size_t i = 0;
    while (i < n_registered && strcmp(registry[i].name, name) != 0)
        i++;
    if (!fn) {
        if (i < n_registered)
            registry[i] = registry[--n_registered];
        else
            rc = DX_ENOENT;
    } else if (i < n_registered) {
        registry[i].fn = fn;
        registry[i].ud = ud;
    } else if (n_registered == MAX_REGISTERED) {
        rc = DX_ELIMIT;
    } else {
        snprintf(registry[i].name, sizeof registry[i].name, "%s", name);
        registry[i].fn = fn;
        registry[i].ud = ud;
        n_registered++;
    }
    mtx_unlock(&registry_lock);
    return rc;
}

static bool registry_find(const char *name, dx_reward_fn *fn, void **ud)
{
    call_once(&registry_once, registry_init);
    mtx_lock(&registry_lock);
    bool found = false;
    for (size_t i = 0; i < n_registered && !found; i++)
        if (strcmp(registry[i].name, name) == 0) {
            *fn = registry[i].fn;
            *ud = registry[i].ud;
            found = true;
        }
    mtx_unlock(&registry_lock);
    return found;
}

/* ---- the reward tree ---------------------------------------------------- */

typedef enum node_kind {
    MAX_WORDS,
    MIN_WORDS,
    MAX_CHARS,
    MATCHES,
    ONE_OF,
    NOT_EMPTY,
    ALL,
    ANY,
    NAMED,
} node_kind;

typedef struct node node;
struct node {
    node_kind kind;
    char *field;  /* the checks */
    double limit; /* MAX_WORDS, MIN_WORDS, MAX_CHARS */
    regex_t re;   /* MATCHES */
    bool re_ok;
    char **choices; /* ONE_OF: normalised (trimmed, lower-cased) */
    size_t n_choices;
    node **kids; /* ALL, ANY */
    size_t n_kids;
    dx_reward_fn fn; /* NAMED: looked up when compiled */
    void *ud;
};

static void node_free(node *n)
{
    if (!n)
        return;
    dx_free(n->field);
    if (n->re_ok)
        regfree(&n->re);
    for (size_t i = 0; i < n->n_choices; i++)
        dx_free(n->choices[i]);
    dx_free(n->choices);
    for (size_t i = 0; i < n->n_kids; i++)
        node_free(n->kids[i]);
    dx_free(n->kids);
    dx_free(n);
}

void dx__reward_free(void *ud)
{
    node_free(ud);
}

/* The text with surrounding white space removed and letters lower-cased
 * (how an answer is compared with the accepted ones). */
static char *normalise(const char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t len = strlen(s);
    while (len && isspace((unsigned char)s[len - 1]))
        len--;
    char *out = dx_malloc(len + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)s[i]);
    out[len] = '\0';
    return out;
}

static size_t count_words(const char *s)
{
    size_t n = 0;
    bool in_word = false;
    for (; *s; s++) {
        bool space = isspace((unsigned char)*s);
        if (!space && !in_word)
            n++;
        in_word = !space;
    }
    return n;
}

/* The field's value as text: a string as it is, anything else as JSON. */
static char *field_text(const dx_prediction *p, const char *field)
{
    const cJSON *v = dx_example_get(dx_prediction_fields(p), field);
    if (!v)
        return NULL;
    if (cJSON_IsString(v))
        return dx_strdup(v->valuestring);
    char *json = cJSON_PrintUnformatted(v);
    char *out = json ? dx_strdup(json) : NULL;
    cJSON_free(json);
    return out;
}

static int eval(const node *n, const dx_example *inputs,
                const dx_prediction *pred, double *out)
{
    if (n->kind == NAMED)
        return n->fn(inputs, pred, n->ud, out);
    if (n->kind == ALL || n->kind == ANY) {
        double acc = n->kind == ALL ? 1.0 : 0.0;
        for (size_t i = 0; i < n->n_kids; i++) {
            double r = 0;
            DX_TRY(eval(n->kids[i], inputs, pred, &r));
            acc = n->kind == ALL ? (r < acc ? r : acc) : (r > acc ? r : acc);
        }
        *out = acc;
        return DX_OK;
    }
    /* A missing output earns nothing; it is not an error of the reward. */
    char *text = field_text(pred, n->field);
    if (!text) {
        *out = 0.0;
        return DX_OK;
    }
    bool ok = false;
    switch (n->kind) {
    case MAX_WORDS:
        ok = (double)count_words(text) <= n->limit;
        break;
    case MIN_WORDS:
        ok = (double)count_words(text) >= n->limit;
        break;
    case MAX_CHARS:
        ok = (double)strlen(text) <= n->limit;
        break;
    case MATCHES:
        ok = regexec(&n->re, text, 0, NULL, 0) == 0;
        break;
    case NOT_EMPTY:
        ok = count_words(text) > 0;
        break;
    case ONE_OF: {
        char *norm = normalise(text);
        if (!norm) {
            dx_free(text);
            return DX_ENOMEM;
        }
        for (size_t i = 0; i < n->n_choices && !ok; i++)
            ok = strcmp(norm, n->choices[i]) == 0;
        dx_free(norm);
        break;
    }
    default:
        break;
    }
    dx_free(text);
    *out = ok ? 1.0 : 0.0;
    return DX_OK;
}

int dx__reward_call(const dx_example *inputs, const dx_prediction *pred,
                    void *ud, double *reward)
{
    return eval(ud, inputs, pred, reward);
}

/* ---- compiling a declaration ---------------------------------------------- */

/* The checks on one field, with the key that selects each. */
static const struct {
    const char *key;
    node_kind kind;
} checks[] = {
    {"max_words", MAX_WORDS}, {"min_words", MIN_WORDS},
    {"max_chars", MAX_CHARS}, {"matches", MATCHES},
    {"one_of", ONE_OF},       {"not_empty", NOT_EMPTY},
};

#define CHECK_NAMES                                                            \
    "max_words, min_words, max_chars, matches, one_of or not_empty"

static int compile(const cJSON *spec, const char *where,
                   const dx_signature *sig, node **out, dx_diag *diag);

static int compile_list(const cJSON *list, node_kind kind, const char *where,
                        const dx_signature *sig, node *n, dx_diag *diag)
{
    const char *key = kind == ALL ? "all" : "any";
    if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) == 0)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "%s: \"%s\" must be a non-empty list of rewards",
                           where, key);
    size_t cap = (size_t)cJSON_GetArraySize(list);
    n->kids = dx_calloc(cap, sizeof *n->kids);
    if (!n->kids)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    const cJSON *it;
    cJSON_ArrayForEach(it, list)
    {
        char sub[256];
        snprintf(sub, sizeof sub, "%s.%s[%zu]", where, key, n->n_kids);
        /* A kid that failed half-way is counted so the tree frees it. */
        int rc = compile(it, sub, sig, &n->kids[n->n_kids], diag);
        n->n_kids++;
        if (rc != DX_OK)
            return rc;
    }
    return DX_OK;
}

static int compile_check(const cJSON *spec, const cJSON *arg, node_kind kind,
                         const char *key, const char *where, node *n,
                         dx_diag *diag)
{
    switch (kind) {
    case MAX_WORDS:
    case MIN_WORDS:
    case MAX_CHARS:
        if (!cJSON_IsNumber(arg) || arg->valuedouble < 0)
            return dx_diag_set(diag, DX_EINVAL, 0, 0,
                               "%s: \"%s\" must be a number >= 0", where, key);
        n->limit = arg->valuedouble;
        return DX_OK;
    case MATCHES: {
        if (!cJSON_IsString(arg))
            return dx_diag_set(diag, DX_EINVAL, 0, 0,
                               "%s: \"matches\" must be a regular expression "
                               "(POSIX extended) in a string",
                               where);
        int rc = regcomp(&n->re, arg->valuestring, REG_EXTENDED | REG_NOSUB);
        if (rc != 0) {
            char why[128];
            regerror(rc, &n->re, why, sizeof why);
            return dx_diag_set(diag, DX_ESYNTAX, 0, 0,
                               "%s: \"matches\": %s in /%s/", where, why,
                               arg->valuestring);
        }
        n->re_ok = true;
        return DX_OK;
    }
    case ONE_OF: {
        int size = cJSON_GetArraySize(arg);
        if (!cJSON_IsArray(arg) || size == 0)
            return dx_diag_set(diag, DX_EINVAL, 0, 0,
                               "%s: \"one_of\" must be a non-empty list of "
                               "strings",
                               where);
        n->choices = dx_calloc((size_t)size, sizeof *n->choices);
        if (!n->choices)
            return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
        const cJSON *c;
        cJSON_ArrayForEach(c, arg)
        {
            if (!cJSON_IsString(c))
                return dx_diag_set(diag, DX_EINVAL, 0, 0,
                                   "%s: \"one_of\"[%zu] is not a string", where,
                                   n->n_choices);
            if (!(n->choices[n->n_choices] = normalise(c->valuestring)))
                return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
            n->n_choices++;
        }
        return DX_OK;
    }
    case NOT_EMPTY:
        if (!cJSON_IsTrue(arg))
            return dx_diag_set(diag, DX_EINVAL, 0, 0,
                               "%s: \"not_empty\" can only be true", where);
        return DX_OK;
    default:
        (void)spec;
        return DX_EINVAL;
    }
}

static int compile(const cJSON *spec, const char *where,
                   const dx_signature *sig, node **out, dx_diag *diag)
{
    *out = NULL;
    node *n = dx_calloc(1, sizeof *n);
    if (!n)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    *out = n; /* freed by the caller's tree on failure */
    const char *name = cJSON_IsString(spec) ? spec->valuestring : NULL;
    if (!name && cJSON_IsObject(spec)) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(spec, "name");
        name = cJSON_IsString(nm) ? nm->valuestring : NULL;
    }
    if (name) {
        n->kind = NAMED;
        if (!registry_find(name, &n->fn, &n->ud))
            return dx_diag_set(diag, DX_ENOENT, 0, 0,
                               "%s: no reward is registered as \"%s\" "
                               "(dx_program_register_reward)",
                               where, name);
        return (n->field = dx_strdup(name))
                   ? DX_OK
                   : dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    if (!cJSON_IsObject(spec))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "%s: a reward is a registered name or an object "
                           "({\"field\": ..., \"%s\": ...}, {\"all\": [...]}, "
                           "{\"any\": [...]})",
                           where, "max_words");
    const cJSON *list;
    if ((list = cJSON_GetObjectItemCaseSensitive(spec, "all"))) {
        n->kind = ALL;
        return compile_list(list, ALL, where, sig, n, diag);
    }
    if ((list = cJSON_GetObjectItemCaseSensitive(spec, "any"))) {
        n->kind = ANY;
        return compile_list(list, ANY, where, sig, n, diag);
    }
    const cJSON *field = cJSON_GetObjectItemCaseSensitive(spec, "field");
    if (!cJSON_IsString(field) || !field->valuestring[0])
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "%s: \"field\" (the output to check) is required",
                           where);
    const dx_field *f = sig ? dx_signature_find(sig, field->valuestring) : NULL;
    if (sig && (!f || f->role != DX_FIELD_OUTPUT))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "%s: \"%s\" is not an output of the wrapped "
                           "module",
                           where, field->valuestring);
    if (!(n->field = dx_strdup(field->valuestring)))
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    size_t found = 0;
    const char *key = NULL;
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        const cJSON *arg =
            cJSON_GetObjectItemCaseSensitive(spec, checks[i].key);
        if (!arg)
            continue;
        if (found++) {
            return dx_diag_set(diag, DX_EINVAL, 0, 0,
                               "%s: one check per reward (\"%s\" and \"%s\"); "
                               "combine checks with \"all\" or \"any\"",
                               where, key, checks[i].key);
        }
        key = checks[i].key;
        n->kind = checks[i].kind;
        DX_TRY(compile_check(spec, arg, checks[i].kind, key, where, n, diag));
    }
    if (!found)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "%s: no check on \"%s\" (use %s)", where, n->field,
                           CHECK_NAMES);
    return DX_OK;
}

/* ---- the reward as Python code ------------------------------------------ */

static void render(const node *n, const cJSON *spec, dx__sb *b)
{
    switch (n->kind) {
    case NAMED:
        dx__sb_printf(b, "%s(args, pred)", n->field);
        return;
    case ALL:
    case ANY: {
        dx__sb_puts(b, n->kind == ALL ? "min(" : "max(");
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(
            spec, n->kind == ALL ? "all" : "any");
        for (size_t i = 0; i < n->n_kids; i++) {
            if (i)
                dx__sb_puts(b, ", ");
            render(n->kids[i], cJSON_GetArrayItem(list, (int)i), b);
        }
        dx__sb_putc(b, ')');
        return;
    }
    default:
        break;
    }
    const char *f = n->field;
    switch (n->kind) {
    case MAX_WORDS:
    case MIN_WORDS:
        dx__sb_printf(b, "(1.0 if len(pred.%s.split()) %s %g else 0.0)", f,
                      n->kind == MAX_WORDS ? "<=" : ">=", n->limit);
        break;
    case MAX_CHARS:
        dx__sb_printf(b, "(1.0 if len(pred.%s) <= %g else 0.0)", f, n->limit);
        break;
    case MATCHES: {
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(spec, "matches");
        dx__sb_puts(b, "(1.0 if re.search(");
        dx__pyjson_str(b, re->valuestring, strlen(re->valuestring));
        dx__sb_printf(b, ", pred.%s) else 0.0)", f);
        break;
    }
    case ONE_OF:
        dx__sb_printf(b, "(1.0 if pred.%s.strip().lower() in [", f);
        for (size_t i = 0; i < n->n_choices; i++) {
            if (i)
                dx__sb_puts(b, ", ");
            dx__pyjson_str(b, n->choices[i], strlen(n->choices[i]));
        }
        dx__sb_puts(b, "] else 0.0)");
        break;
    case NOT_EMPTY:
        dx__sb_printf(b, "(1.0 if pred.%s.strip() else 0.0)", f);
        break;
    default:
        break;
    }
}

int dx__reward_compile(const cJSON *spec, const char *where,
                       const dx_signature *sig, void **ud, char **code,
                       dx_diag *diag)
{
    *ud = NULL;
    *code = NULL;
    node *root = NULL;
    int rc = compile(spec, where, sig, &root, diag);
    if (rc != DX_OK) {
        node_free(root);
        return rc;
    }
    dx__sb b;
    dx__sb_init(&b);
    dx__sb_puts(&b, "def reward(args, pred):\n    return ");
    render(root, spec, &b);
    dx__sb_putc(&b, '\n');
    *code = dx__sb_take(&b);
    if (!*code) {
        node_free(root);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    *ud = root;
    return DX_OK;
}
