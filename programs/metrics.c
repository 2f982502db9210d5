/*
 * metrics.c — the built-in metrics of Evaluate: DSPy's normalize_text,
 * answer_exact_match, token F1 and answer_passage_match, and
 * dx_metric_score, which applies one of them (or the user's function) to
 * an example and a prediction.
 *
 * normalize_text in DSPy is: unicodedata NFD, str.lower(), drop the ASCII
 * punctuation of string.punctuation (nothing else: "’", "«" or "—" stay),
 * replace the words a/an/the by a space (Python's \b, so a word is a run of
 * str.isalnum() characters; combining marks are not word characters, which
 * makes the "a" of NFD "à" an article), and collapse whitespace (str.split).
 * The Unicode facts this needs are tables generated from Python's
 * unicodedata (unicode_tables.h, scripts/gen_unicode_tables.py), for every
 * plane: full canonical decompositions and combining classes (NFD, with
 * its canonical ordering of marks; Hangul syllables by rule), str.lower()
 * of each character, str.isalnum(), the general categories, and the Cased
 * and Case_Ignorable properties lower() uses for a final sigma. A
 * character Python's Unicode version does not know is unassigned here too.
 *
 * answer_passage_match tokenises like DSPy's DPR tokenizer: runs of
 * letters, digits and marks, and every other visible character alone.
 * Invalid UTF-8 bytes pass through unchanged as symbols of their own.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/evaluate.h"
#include "dspex/runtime.h"
#include "eval_int.h"
#include "module_int.h"
#include "pyjson.h"

/* Invalid UTF-8 bytes decode to INVALID + byte and encode back as the byte. */
#define INVALID 0x110000u

struct cp_range {
    uint32_t lo, hi;
};
/* Code points first..last, every stride-th one, lower-case to cp + delta. */
struct lower_run {
    uint32_t first, last;
    uint16_t stride;
    int32_t delta;
};
struct decomp {
    uint32_t cp;
    uint32_t to[4]; /* 0-terminated when shorter */
};
#include "unicode_tables.h"

/* ---- character classes ------------------------------------------------- */

/* The index of the range of r[0..n) (sorted, disjoint) holding cp, or -1. */
static long range_index(const struct cp_range *r, size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid].lo)
            hi = mid;
        else if (cp > r[mid].hi)
            lo = mid + 1;
        else
            return (long)mid;
    }
    return -1;
}

static bool in_ranges(const struct cp_range *r, size_t n, uint32_t cp)
{
    return range_index(r, n, cp) >= 0;
}

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static bool is_ascii_alnum(uint32_t cp)
{
    return (cp >= '0' && cp <= '9') ||
           ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z');
}

/* Python's str.isalnum() (the \w of re, less '_'). */
static bool is_alnum(uint32_t cp)
{
    if (cp < 0x80)
        return is_ascii_alnum(cp);
    return cp < INVALID && in_ranges(alnum_ranges, N_OF(alnum_ranges), cp);
}

/* A character of the DPR tokenizer's words: [\p{L}\p{N}\p{M}]. Wider than
 * is_alnum by the marks and a few letters and numbers str.isalnum() does
 * not count. */
static bool is_dpr_word(uint32_t cp)
{
    if (cp < 0x80)
        return is_ascii_alnum(cp);
    return cp < INVALID &&
           in_ranges(dpr_word_ranges, N_OF(dpr_word_ranges), cp);
}

/* What the DPR tokenizer skips between tokens, [\p{Z}\p{C}]. */
static bool is_dpr_skip(uint32_t cp)
{
    if (cp < 0x80)
        return cp <= 0x20 || cp == 0x7F;
    return cp < INVALID &&
           in_ranges(dpr_skip_ranges, N_OF(dpr_skip_ranges), cp);
}

/* str.split()'s whitespace. */
static bool is_space(uint32_t cp)
{
    if (cp < 0x80)
        return cp == ' ' || (cp >= 0x09 && cp <= 0x0D) ||
               (cp >= 0x1C && cp <= 0x1F);
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* Unicode category C (Cc, Cf, Cs, Co and the unassigned Cn), as Python's
 * unicodedata has it: what str.isprintable() refuses. Invalid UTF-8 bytes
 * are not in it: they stay as symbols. */
static bool is_control(uint32_t cp)
{
    if (cp < 0x80)
        return cp < 0x20 || cp == 0x7F;
    return cp < INVALID && in_ranges(control_ranges, N_OF(control_ranges), cp);
}

static bool is_ascii_punct(uint32_t cp)
{
    return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) ||
           (cp >= 0x5B && cp <= 0x60) || (cp >= 0x7B && cp <= 0x7E);
}

/* str.lower() of one character. The one character whose lower case is
 * two, U+0130, never gets here: NFD has made it "I" and U+0307. */
static uint32_t to_lower(uint32_t cp)
{
    if (cp < 0x80)
        return (cp >= 'A' && cp <= 'Z') ? cp + 0x20 : cp;
    if (cp >= INVALID)
        return cp;
    size_t lo = 0, hi = N_OF(lower_runs);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct lower_run *r = &lower_runs[mid];
        if (cp < r->first)
            hi = mid;
        else if (cp > r->last)
            lo = mid + 1;
        else
            return (cp - r->first) % r->stride == 0
                       ? (uint32_t)((int32_t)cp + r->delta)
                       : cp;
    }
    return cp;
}

/* NFD of one code point into out (room for 4: no full canonical
 * decomposition is longer); the count written. */
static size_t decompose(uint32_t cp, uint32_t out[4])
{
    if (cp >= 0xAC00 && cp <= 0xD7A3) { /* Hangul syllables, by rule */
        uint32_t s = cp - 0xAC00;
        out[0] = 0x1100 + s / 588;
        out[1] = 0x1161 + (s % 588) / 28;
        if (s % 28 == 0)
            return 2;
        out[2] = 0x11A7 + s % 28;
        return 3;
    }
    if (cp >= 0xC0 && cp < INVALID) {
        size_t lo = 0, hi = N_OF(decomp);
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (cp < decomp[mid].cp) {
                hi = mid;
            } else if (cp > decomp[mid].cp) {
                lo = mid + 1;
            } else {
                size_t n = 0;
                while (n < 4 && decomp[mid].to[n])
                    out[n] = decomp[mid].to[n], n++;
                return n;
            }
        }
    }
    out[0] = cp;
    return 1;
}

static uint8_t combining_class(uint32_t cp)
{
    if (cp < 0x300 || cp >= INVALID)
        return 0;
    long i = range_index(ccc_ranges, N_OF(ccc_ranges), cp);
    return i >= 0 ? ccc_classes[i] : 0;
}

/* NFD's canonical ordering: each run of combining marks (class not 0) is
 * sorted by class, stably, so "a" U+0301 U+0323 and "a" U+0323 U+0301
 * become the same text. Runs are short: insertion sort. */
static void canonical_order(uint32_t *cp, size_t m)
{
    for (size_t i = 1; i < m; i++) {
        uint8_t c = combining_class(cp[i]);
        if (c == 0)
            continue;
        size_t j = i;
        uint32_t x = cp[i];
        while (j > 0) {
            uint8_t p = combining_class(cp[j - 1]);
            if (p == 0 || p <= c)
                break;
            cp[j] = cp[j - 1];
            j--;
        }
        cp[j] = x;
    }
}

/* ---- UTF-8 ------------------------------------------------------------- */

static uint32_t utf8_next(const unsigned char *s, size_t n, size_t *len)
{
    unsigned char c = s[0];
    uint32_t cp;
    size_t need;
    if (c < 0x80) {
        *len = 1;
        return c;
    } else if (c >= 0xC2 && c <= 0xDF) {
        cp = c & 0x1F, need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        cp = c & 0x0F, need = 2;
    } else if (c >= 0xF0 && c <= 0xF4) {
        cp = c & 0x07, need = 3;
    } else {
        *len = 1;
        return INVALID + c;
    }
    if (need >= n) {
        *len = 1;
        return INVALID + c;
    }
    for (size_t i = 1; i <= need; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *len = 1;
            return INVALID + c;
        }
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    /* Overlong forms, surrogates and values past U+10FFFF are not UTF-8. */
    if ((need == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (need == 3 && (cp < 0x10000 || cp > 0x10FFFF))) {
        *len = 1;
        return INVALID + c;
    }
    *len = need + 1;
    return cp;
}

uint32_t dx__utf8_decode(const unsigned char *s, size_t n, size_t *len)
{
    return utf8_next(s, n, len);
}

bool dx__unicode_printable(uint32_t cp)
{
    if (cp == ' ')
        return true;
    /* Python's str.isprintable: not in category C (is_control) nor Z. */
    return cp < INVALID && !is_control(cp) && !is_space(cp);
}

int dx__display_width(uint32_t cp)
{
    if (cp < 0x300 || cp >= INVALID)
        return cp >= 0x20; /* controls: none; an invalid byte: one */
    if (in_ranges(zero_width_ranges, N_OF(zero_width_ranges), cp))
        return 0;
    return in_ranges(wide_ranges, N_OF(wide_ranges), cp) ? 2 : 1;
}

static void utf8_put(dx__sb *b, uint32_t cp)
{
    char u[4];
    if (cp >= INVALID) {
        dx__sb_putc(b, (char)(cp - INVALID));
    } else if (cp < 0x80) {
        dx__sb_putc(b, (char)cp);
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        dx__sb_put(b, u, 2);
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        dx__sb_put(b, u, 3);
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        dx__sb_put(b, u, 4);
    }
}

/* ---- normalize_text ---------------------------------------------------- */

static bool is_case_ignorable(uint32_t cp)
{
    return cp < INVALID &&
           in_ranges(case_ignorable_ranges, N_OF(case_ignorable_ranges), cp);
}

/* Cased, for a character that is not case-ignorable. */
static bool is_cased(uint32_t cp)
{
    if (cp < 0x80)
        return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return cp < INVALID && in_ranges(cased_ranges, N_OF(cased_ranges), cp);
}

/* str.lower() writes the capital sigma at i of cp[0..m) as the final form
 * ς when a cased character comes before it and none after, skipping the
 * case-ignorable characters (marks, apostrophes, periods...) between:
 * Unicode's Final_Sigma, as Python applies it. cp is the text before
 * lower-casing. */
static bool final_sigma(const uint32_t *cp, size_t m, size_t i)
{
    size_t j = i;
    while (j > 0 && is_case_ignorable(cp[j - 1]))
        j--;
    if (j == 0 || !is_cased(cp[j - 1]))
        return false;
    for (j = i + 1; j < m && is_case_ignorable(cp[j]); j++)
        ;
    return j == m || !is_cased(cp[j]);
}

static bool is_article(const uint32_t *w, size_t n)
{
    if (n == 1)
        return w[0] == 'a';
    if (n == 2)
        return w[0] == 'a' && w[1] == 'n';
    return n == 3 && w[0] == 't' && w[1] == 'h' && w[2] == 'e';
}

/* How normalize_ascii treats each byte: part of a word (W, lower-cased),
 * dropped (P: ASCII punctuation), a space (S: what str.split() splits at),
 * kept on its own (O: other controls, DEL), or not ASCII (N: the text takes
 * the general path). One load per byte instead of a chain of range tests:
 * on a long passage this loop is most of a metric's cost. */
static const char ascii_class[257] =
    "OOOOOOOOOSSSSSOO" /* 0x00: \t \n \v \f \r are spaces */
    "OOOOOOOOOOOOSSSS" /* 0x10: so are 0x1C-0x1F */
    "SPPPPPPPPPPPPPPP" /* 0x20: space ! " # $ % & ' ( ) * + , - . / */
    "WWWWWWWWWWPPPPPP" /* 0x30: 0-9 : ; < = > ? */
    "PWWWWWWWWWWWWWWW" /* 0x40: @ A-O */
    "WWWWWWWWWWWPPPPP" /* 0x50: P-Z [ \ ] ^ _ */
    "PWWWWWWWWWWWWWWW" /* 0x60: ` a-o */
    "WWWWWWWWWWWPPPPO" /* 0x70: p-z { | } ~ DEL */
    "NNNNNNNNNNNNNNNN"
    "NNNNNNNNNNNNNNNN"
    "NNNNNNNNNNNNNNNN"
    "NNNNNNNNNNNNNNNN"
    "NNNNNNNNNNNNNNNN"
    "NNNNNNNNNNNNNNNN"
    "NNNNNNNNNNNNNNNN"
    "NNNNNNNNNNNNNNNN";

/* normalize_text of ASCII text, the common case: NFD changes nothing and
 * lower-casing is a byte, so the steps below run in one pass over the
 * bytes into a buffer no longer than the text. Punctuation is dropped
 * before words are cut (so "a.b" is the word "ab"); a finished word that
 * is an article is taken back out, leaving a space; runs of spaces become
 * one, none at either end. NOT_ASCII at the first byte that is not
 * ASCII (nothing is kept): that text takes the general path. */
enum { NOT_ASCII = 1 }; /* beside DX_OK and the (negative) DX_E* codes */

static int normalize_ascii(const char *text, size_t n, char **out)
{
    char *b = dx_malloc(n + 1);
    if (!b)
        return DX_ENOMEM;
    const unsigned char *s = (const unsigned char *)text;
    size_t w = 0; /* written */
    bool pending_space = false;
    for (size_t i = 0; i < n;) {
        char k = ascii_class[s[i]];
        if (k == 'W') {
            size_t mark = w; /* w before the word and its space */
            if (pending_space)
                b[w++] = ' ';
            pending_space = false;
            size_t word = w;
            /* Letters lower-cased; digits have the 0x20 bit already.
             * Punctuation inside the word is dropped, not a cut. */
            for (; i < n && ((k = ascii_class[s[i]]) == 'W' || k == 'P'); i++)
                if (k == 'W')
                    b[w++] = (char)(s[i] | 0x20);
            size_t len = w - word;
            if ((len == 1 && b[word] == 'a') ||
                (len == 2 && b[word] == 'a' && b[word + 1] == 'n') ||
                (len == 3 && memcmp(b + word, "the", 3) == 0)) {
                w = mark;
                pending_space = w > 0;
            }
            continue;
        }
        if (k == 'N') {
            dx_free(b);
            return NOT_ASCII;
        }
        if (k == 'S') {
            pending_space = w > 0;
        } else if (k == 'O') {
            /* A character outside words: kept as it is. */
            if (pending_space)
                b[w++] = ' ';
            pending_space = false;
            b[w++] = (char)s[i];
        }
        i++;
    }
    b[w] = '\0';
    *out = b;
    return DX_OK;
}

int dx_metric_normalize(const char *text, char **out)
{
    if (!out)
        return DX_EINVAL;
    *out = NULL;
    if (!text)
        text = "";
    size_t n = strlen(text);
    int rc = normalize_ascii(text, n, out);
    if (rc != NOT_ASCII)
        return rc;
    if (n > (SIZE_MAX / sizeof(uint32_t) - 1) / 4)
        return DX_ENOMEM;
    /* NFD at most quadruples the code points of this range. */
    uint32_t *cp = dx_malloc((4 * n + 1) * sizeof *cp);
    if (!cp)
        return DX_ENOMEM;
    size_t m = 0;
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < n;) {
        size_t len;
        m += decompose(utf8_next(s + i, n - i, &len), cp + m);
        i += len;
    }
    canonical_order(cp, m);
    /* A capital sigma's final form depends on the text around it as it
     * was: decided first (a sigma made final is still a cased letter to
     * the next one's look-back). Then lower-case and drop punctuation in
     * place (never longer). */
    bool has_sigma = false;
    for (size_t i = 0; i < m && !has_sigma; i++)
        has_sigma = cp[i] == 0x3A3;
    if (has_sigma)
        for (size_t i = 0; i < m; i++)
            if (cp[i] == 0x3A3 && final_sigma(cp, m, i))
                cp[i] = 0x3C2;
    size_t w = 0;
    for (size_t i = 0; i < m; i++) {
        uint32_t c = to_lower(cp[i]);
        if (!is_ascii_punct(c))
            cp[w++] = c;
    }
    m = w;
    /* Articles become a space; then words are rejoined by single spaces. */
    dx__sb b;
    dx__sb_init(&b);
    bool pending_space = false;
    for (size_t i = 0; i < m;) {
        if (is_space(cp[i])) {
            pending_space = b.len > 0;
            i++;
            continue;
        }
        size_t j = i;
        while (j < m && is_alnum(cp[j]))
            j++;
        if (j > i && is_article(cp + i, j - i)) {
            pending_space = b.len > 0;
            i = j;
            continue;
        }
        if (j == i)
            j = i + 1; /* a character outside words: kept as it is */
        if (pending_space)
            dx__sb_putc(&b, ' ');
        pending_space = false;
        for (; i < j; i++)
            utf8_put(&b, cp[i]);
    }
    dx_free(cp);
    if (b.oom) {
        dx__sb_free(&b);
        return DX_ENOMEM;
    }
    *out = b.len ? dx__sb_take(&b) : dx_strdup("");
    dx__sb_free(&b);
    return *out ? DX_OK : DX_ENOMEM;
}

/* ---- tokens ------------------------------------------------------------ */

typedef struct tok {
    const char *p;
    size_t n;
} tok;

/* Normalised text split at spaces; dpr: also split like DSPy's DPR
 * tokenizer (letter/digit/mark runs; other characters alone). *buf holds
 * the text the tokens point into. */
static int tokenize(const char *text, bool dpr, char **buf, tok **toks,
                    size_t *nt)
{
    *toks = NULL;
    *nt = 0;
    int rc = dx_metric_normalize(text, buf);
    if (rc != DX_OK)
        return rc;
    size_t n = strlen(*buf);
    tok *t = dx_malloc((n + 1) * sizeof *t);
    if (!t) {
        dx_free(*buf);
        *buf = NULL;
        return DX_ENOMEM;
    }
    const unsigned char *s = (const unsigned char *)*buf;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        size_t len;
        uint32_t c = utf8_next(s + i, n - i, &len);
        if (c == ' ' || (dpr && is_dpr_skip(c))) {
            i += len;
            continue;
        }
        size_t j = i + len;
        bool word = !dpr || is_dpr_word(c);
        while (word && j < n) {
            c = utf8_next(s + j, n - j, &len);
            if (c == ' ' || (dpr && !is_dpr_word(c)))
                break;
            j += len;
        }
        t[k].p = *buf + i;
        t[k].n = j - i;
        k++;
        i = j;
    }
    *toks = t;
    *nt = k;
    return DX_OK;
}

static int tokcmp(const void *a, const void *b)
{
    const tok *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->p, y->p, n);
    if (c)
        return c;
    return (x->n > y->n) - (x->n < y->n);
}

/* ---- EM, F1, passages -------------------------------------------------- */

bool dx_metric_em(const char *prediction, const char *answer)
{
    char *a = NULL, *b = NULL;
    bool eq = dx_metric_normalize(prediction, &a) == DX_OK &&
              dx_metric_normalize(answer, &b) == DX_OK && strcmp(a, b) == 0;
    dx_free(a);
    dx_free(b);
    return eq;
}

double dx_metric_f1(const char *prediction, const char *answer)
{
    char *pb = NULL, *gb = NULL;
    tok *pt = NULL, *gt = NULL;
    size_t np = 0, ng = 0;
    double f1 = 0;
    if (tokenize(prediction, false, &pb, &pt, &np) != DX_OK ||
        tokenize(answer, false, &gb, &gt, &ng) != DX_OK)
        goto out;
    /* The size of the multiset intersection (Counter & Counter): walk both
     * sorted token lists together. */
    qsort(pt, np, sizeof *pt, tokcmp);
    qsort(gt, ng, sizeof *gt, tokcmp);
    size_t same = 0;
    for (size_t i = 0, j = 0; i < np && j < ng;) {
        int c = tokcmp(&pt[i], &gt[j]);
        if (c == 0)
            same++, i++, j++;
        else if (c < 0)
            i++;
        else
            j++;
    }
    /* Both empty scores 0, as in DSPy (SQuAD would give 1). */
    if (same > 0) {
        double precision = (double)same / (double)np;
        double recall = (double)same / (double)ng;
        f1 = 2 * precision * recall / (precision + recall);
    }
out:
    dx_free(pb);
    dx_free(gb);
    dx_free(pt);
    dx_free(gt);
    return f1;
}

static bool contains_seq(const tok *hay, size_t nh, const tok *needle,
                         size_t nn)
{
    /* An empty answer is found in every passage, as in DSPy. */
    for (size_t i = 0; i + nn <= nh; i++) {
        size_t k = 0;
        while (k < nn && tokcmp(&hay[i + k], &needle[k]) == 0)
            k++;
        if (k == nn)
            return true;
    }
    return false;
}

bool dx_metric_passage_has_answer(const char *const *passages, size_t n,
                                  const char *answer)
{
    if (!passages || n == 0)
        return false;
    char *ab = NULL;
    tok *at = NULL;
    size_t na = 0;
    if (tokenize(answer, true, &ab, &at, &na) != DX_OK)
        return false;
    bool found = false;
    for (size_t i = 0; i < n && !found; i++) {
        char *pb = NULL;
        tok *pt = NULL;
        size_t np = 0;
        if (tokenize(passages[i], true, &pb, &pt, &np) == DX_OK)
            found = contains_seq(pt, np, at, na);
        dx_free(pb);
        dx_free(pt);
    }
    dx_free(ab);
    dx_free(at);
    return found;
}

/* ---- dx_metric_score --------------------------------------------------- */

/* A value as text: a string as-is, anything else as its JSON text. NULL
 * when v is NULL (or on OOM); *tmp is freed by the caller. */
static const char *value_text(const cJSON *v, char **tmp)
{
    *tmp = NULL;
    if (!v)
        return NULL;
    if (cJSON_IsString(v))
        return v->valuestring;
    dx__sb b;
    dx__sb_init(&b);
    dx__pyjson_dump(&b, v, -1);
    *tmp = dx__sb_take(&b);
    return *tmp;
}

/* The example's answers: a string, or each item of a list. */
static size_t n_answers(const cJSON *v)
{
    return cJSON_IsArray(v) ? (size_t)cJSON_GetArraySize(v) : (v ? 1 : 0);
}

static const cJSON *answer_at(const cJSON *v, size_t i)
{
    return cJSON_IsArray(v) ? cJSON_GetArrayItem(v, (int)i) : v;
}

static double score_passages(const cJSON *answers, const cJSON *ctx)
{
    /* A single string is one passage (DSPy would iterate its characters). */
    size_t np = n_answers(ctx);
    const char **ps = dx_calloc(np ? np : 1, sizeof *ps);
    char **tmp = dx_calloc(np ? np : 1, sizeof *tmp);
    double score = 0;
    if (!ps || !tmp)
        goto out;
    for (size_t i = 0; i < np; i++) {
        ps[i] = value_text(answer_at(ctx, i), &tmp[i]);
        if (!ps[i])
            ps[i] = "";
    }
    for (size_t i = 0, na = n_answers(answers); i < na && score == 0; i++) {
        char *t;
        const char *a = value_text(answer_at(answers, i), &t);
        if (a && dx_metric_passage_has_answer(ps, np, a))
            score = 1;
        dx_free(t);
    }
out:
    for (size_t i = 0; tmp && i < np; i++)
        dx_free(tmp[i]);
    dx_free(tmp);
    dx_free(ps);
    return score;
}

int dx__metric_fields_check(const dx_metric *m, const dx_example *example,
                            const dx_prediction *pred, dx_diag *diag)
{
    if (!m || m->kind == DX_METRIC_CUSTOM)
        return DX_OK;
    if (dx__metric_is_judged(m))
        return dx__metric_judge_fields_check(m, example, pred, diag);
    const char *field = m->field ? m->field : "answer";
    if (!example || !dx_example_get(example, field))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "the example has no \"%s\" for %s to compare with",
                           field, dx_metric_name(m));
    const char *pf = m->kind == DX_METRIC_PASSAGE_MATCH
                         ? (m->passages_field ? m->passages_field : "context")
                         : field;
    if (!pred || !dx_prediction_get(pred, pf))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "the prediction has no \"%s\" for %s", pf,
                           dx_metric_name(m));
    return DX_OK;
}

double dx_metric_score(const dx_metric *m, const dx_example *example,
                       const dx_prediction *pred, const dx_trace *trace)
{
    if (!m)
        return 0;
    if (m->kind == DX_METRIC_CUSTOM) {
        if (m->fn)
            return m->fn(example, pred, trace, m->ud);
        return m->pass && m->pass(example, pred, trace, m->ud) ? 1 : 0;
    }
    if (!example || !pred)
        return 0;
    if (dx__metric_is_judged(m)) {
        /* The judge's LM call needs a process to wait in. */
        if (dx_pid_is_none(dx_self()))
            return NAN;
        /* no run deadline: what a call gets by default */
        int rc;
        return dx__metric_judge(m, example, pred, NULL,
                                dx_now_ms() + DX__DEFAULT_CALL_TIMEOUT_MS, NULL,
                                &rc, NULL);
    }
    const char *field = m->field ? m->field : "answer";
    const cJSON *answers = dx_example_get(example, field);
    if (!answers)
        return 0;
    if (m->kind == DX_METRIC_PASSAGE_MATCH) {
        const char *pf = m->passages_field ? m->passages_field : "context";
        const cJSON *ctx = dx_prediction_get(pred, pf);
        return ctx ? score_passages(answers, ctx) : 0;
    }
    char *ptmp;
    const char *p = value_text(dx_prediction_get(pred, field), &ptmp);
    /* DSPy's _answer_match: frac below 1 is max F1 >= frac, which is the
     * same as any one answer's F1 reaching it. */
    bool by_f1 = m->kind == DX_METRIC_F1;
    bool by_frac =
        m->kind == DX_METRIC_EXACT_MATCH && m->frac > 0 && m->frac < 1;
    double best = 0;
    for (size_t i = 0, na = n_answers(answers); p && i < na; i++) {
        char *t;
        const char *a = value_text(answer_at(answers, i), &t);
        double s = 0;
        if (a && by_f1)
            s = dx_metric_f1(p, a);
        else if (a && by_frac)
            s = dx_metric_f1(p, a) >= m->frac ? 1.0 : 0.0;
        else if (a)
            s = dx_metric_em(p, a) ? 1.0 : 0.0;
        dx_free(t);
        if (s > best)
            best = s;
    }
    dx_free(ptmp);
    return best;
}

const char *dx_metric_name(const dx_metric *m)
{
    if (!m)
        return "metric";
    if (m->name && *m->name)
        return m->name;
    switch (m->kind) {
    case DX_METRIC_EXACT_MATCH:
        return "answer_exact_match";
    case DX_METRIC_F1:
        return "f1";
    case DX_METRIC_PASSAGE_MATCH:
        return "answer_passage_match";
    case DX_METRIC_SEMANTIC_F1:
        return "SemanticF1";
    case DX_METRIC_COMPLETE_AND_GROUNDED:
        return "CompleteAndGrounded";
    default:
        return "metric";
    }
}

int dx_metric_from_name(const char *name, dx_metric_kind *out)
{
    static const struct {
        const char *name;
        dx_metric_kind kind;
    } names[] = {
        {"exact_match", DX_METRIC_EXACT_MATCH},
        {"answer_exact_match", DX_METRIC_EXACT_MATCH},
        {"f1", DX_METRIC_F1},
        {"passage_match", DX_METRIC_PASSAGE_MATCH},
        {"answer_passage_match", DX_METRIC_PASSAGE_MATCH},
        {"semantic_f1", DX_METRIC_SEMANTIC_F1},
        {"SemanticF1", DX_METRIC_SEMANTIC_F1},
        {"complete_and_grounded", DX_METRIC_COMPLETE_AND_GROUNDED},
        {"CompleteAndGrounded", DX_METRIC_COMPLETE_AND_GROUNDED},
    };
    if (!name || !out)
        return DX_EINVAL;
    for (size_t i = 0; i < N_OF(names); i++) {
        if (strcmp(name, names[i].name) == 0) {
            *out = names[i].kind;
            return DX_OK;
        }
    }
    return DX_ENOENT;
}
