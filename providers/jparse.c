/*
 * jparse.c — JSON text parsed into the same cJSON tree cJSON_ParseWithLength
 * (1.7.15) builds, at a fraction of its cost.
 *
 * Every answer dspex receives is parsed, and the local LM server parses
 * every request (a few KB of prompt each); at hundreds of calls in flight
 * cJSON's parser was a tenth of the instructions of an exchange. It reads
 * each string twice through a per-byte branch, and every number through a
 * copy and strtod. Here a string is one scan for its closing quote (16
 * bytes a step, jscan_int.h) and one memcpy when it has no escapes, and
 * numbers of up to 15 digits without fraction or exponent (ids, counts,
 * token usage) are converted exactly without strtod.
 *
 * Same tree, node for node, so code written against cJSON does not change:
 * the same acceptance (whitespace is any byte up to 0x20, a UTF-8 byte order
 * mark at the start of a text of five bytes or more is skipped, text after the first value is ignored, at
 * most 1000 levels of nesting, numbers are what strtod reads of the run of
 * [0-9+-.eE] bytes (of any length: Debian's 1.7.15 carries that fix), raw
 * control bytes inside strings are
 * kept, \u escapes with surrogate pairs become UTF-8 and a lone or reversed
 * surrogate is an error), the same values (valueint saturated at INT_MIN /
 * INT_MAX), the same links (a first child's prev is the last child), nodes
 * and strings allocated with cJSON_malloc so cJSON_Delete frees them.
 * tests/providers/test_jparse.c holds the two parsers to each other.
 */
#include <limits.h>
#include <locale.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec_int.h"
#include "dspex/alloc.h"
#include "jscan_int.h"

#define NESTING_LIMIT 1000 /* cJSON's CJSON_NESTING_LIMIT */

/* dx__jparse_block's memory: blocks chained from the first, whose data
 * starts with the root node; nodes and strings are carved off in order. */
typedef struct jblock {
    struct jblock *next;
    size_t used, cap; /* bytes of data, which follows (8-aligned) */
} jblock;

#define JBLOCK_FIRST_MAX 65536
#define JBLOCK_MAX (1u << 20)

typedef struct reader {
    const unsigned char *p;
    const unsigned char *end;
    int depth;
    jblock *block; /* the block being filled; NULL: cJSON_malloc */
} reader;

static jblock *jblock_new(size_t cap)
{
    jblock *b = dx_malloc(sizeof *b + cap);
    if (b != NULL) {
        b->next = NULL;
        b->used = 0;
        b->cap = cap;
    }
    return b;
}

/* n bytes (8-aligned) from the reader's blocks, or cJSON_malloc. */
static void *take(reader *r, size_t n)
{
    if (r->block == NULL)
        return cJSON_malloc(n);
    n = (n + 7) & ~(size_t)7;
    jblock *b = r->block;
    if (b->cap - b->used < n) {
        size_t cap = b->cap * 2 < JBLOCK_MAX ? b->cap * 2 : JBLOCK_MAX;
        jblock *nb = jblock_new(cap > n ? cap : n);
        if (nb == NULL)
            return NULL;
        b->next = nb;
        r->block = b = nb;
    }
    void *p = (char *)(b + 1) + b->used;
    b->used += n;
    return p;
}

/* Give back what take() gave, when the parse fails part way. */
static void give_back(reader *r, void *p)
{
    if (r->block == NULL)
        cJSON_free(p);
}

static void skip_space(reader *r)
{
    while (r->p < r->end && *r->p <= 32)
        r->p++;
}

static cJSON *new_item(reader *r)
{
    cJSON *item = take(r, sizeof *item);
    if (item != NULL)
        memset(item, 0, sizeof *item);
    return item;
}

/* Four hex digits; like cJSON, a non-hex digit makes the whole code 0 (so
 * "\uZZZZ" is a NUL byte, which ends the C string there). */
static unsigned hex4(const unsigned char *p)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return 0;
    }
    return v;
}

/* \uXXXX (with its low surrogate, if any) at p (the backslash) to UTF-8 at
 * *out; returns the bytes of input used, 0 if invalid. */
static size_t utf16_escape(const unsigned char *p, const unsigned char *end,
                           unsigned char **out)
{
    if (end - p < 6)
        return 0;
    unsigned first = hex4(p + 2), cp;
    if (first >= 0xDC00 && first <= 0xDFFF)
        return 0;
    size_t used = 6;
    if (first >= 0xD800 && first <= 0xDBFF) {
        if (end - p < 12 || p[6] != '\\' || p[7] != 'u')
            return 0;
        unsigned second = hex4(p + 8);
        if (second < 0xDC00 || second > 0xDFFF)
            return 0;
        cp = 0x10000 + (((first & 0x3FF) << 10) | (second & 0x3FF));
        used = 12;
    } else {
        cp = first;
    }
    unsigned char *o = *out;
    if (cp < 0x80) {
        *o++ = (unsigned char)cp;
    } else if (cp < 0x800) {
        *o++ = (unsigned char)(0xC0 | (cp >> 6));
        *o++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *o++ = (unsigned char)(0xE0 | (cp >> 12));
        *o++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (unsigned char)(0xF0 | (cp >> 18));
        *o++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        *o++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (unsigned char)(0x80 | (cp & 0x3F));
    }
    *out = o;
    return used;
}

/* The string at r->p (its opening quote), as a cJSON_malloc'd C string. */
static char *read_string(reader *r)
{
    if (r->p >= r->end || *r->p != '"')
        return NULL;
    const unsigned char *start = r->p + 1, *q = start;
    bool escaped = false;
    for (;;) {
        q = dx__json_scan_stop(q, r->end);
        if (q >= r->end)
            return NULL; /* no closing quote */
        if (*q == '"')
            break;
        escaped = true;
        if (q + 1 >= r->end)
            return NULL;
        q += 2; /* the escape and the byte it escapes */
    }
    size_t n = (size_t)(q - start);
    unsigned char *s = take(r, n + 1);
    if (s == NULL)
        return NULL;
    if (!escaped) {
        memcpy(s, start, n);
        s[n] = '\0';
        r->p = q + 1;
        return (char *)s;
    }
    unsigned char *o = s;
    for (const unsigned char *p = start; p < q;) {
        if (*p != '\\') {
            const unsigned char *run = p;
            p = memchr(p, '\\', (size_t)(q - p));
            if (p == NULL)
                p = q;
            memcpy(o, run, (size_t)(p - run));
            o += p - run;
            continue;
        }
        switch (p[1]) {
        case 'b':
            *o++ = '\b';
            break;
        case 'f':
            *o++ = '\f';
            break;
        case 'n':
            *o++ = '\n';
            break;
        case 'r':
            *o++ = '\r';
            break;
        case 't':
            *o++ = '\t';
            break;
        case '"':
        case '\\':
        case '/':
            *o++ = p[1];
            break;
        case 'u': {
            size_t used = utf16_escape(p, q, &o);
            if (used == 0) {
                give_back(r, s);
                return NULL;
            }
            p += used;
            continue;
        }
        default:
            give_back(r, s);
            return NULL;
        }
        p += 2;
    }
    *o = '\0';
    r->p = q + 1;
    return (char *)s;
}

static bool is_number_byte(unsigned char c)
{
    return (c >= '0' && c <= '9') || c == '+' || c == '-' || c == 'e' ||
           c == 'E' || c == '.';
}

static void set_number(cJSON *item, double v)
{
    item->type = cJSON_Number;
    item->valuedouble = v;
    if (v >= INT_MAX)
        item->valueint = INT_MAX;
    else if (v <= (double)INT_MIN)
        item->valueint = INT_MIN;
    else
        item->valueint = (int)v;
}

static bool read_number(reader *r, cJSON *item)
{
    /* Whole numbers of up to 15 digits are exact doubles: no strtod. */
    const unsigned char *p = r->p;
    bool neg = p < r->end && *p == '-';
    p += neg;
    const unsigned char *digits = p;
    uint64_t whole = 0;
    while (p < r->end && *p >= '0' && *p <= '9' && p - digits < 16)
        whole = whole * 10 + (uint64_t)(*p++ - '0');
    size_t nd = (size_t)(p - digits);
    if (nd > 0 && nd <= 15 && (p >= r->end || !is_number_byte(*p))) {
        double v = (double)whole;
        set_number(item, neg ? -v : v);
        r->p = p;
        return true;
    }
    /* Anything else as cJSON does it: the whole run of number bytes, in the
     * C library's locale, through strtod. */
    size_t n = 0;
    while (r->p + n < r->end && is_number_byte(r->p[n]))
        n++;
    char small[64];
    char *text = n < sizeof small ? small : cJSON_malloc(n + 1);
    if (text == NULL)
        return false;
    const char point = localeconv()->decimal_point[0];
    for (size_t i = 0; i < n; i++)
        text[i] = r->p[i] == '.' ? point : (char)r->p[i];
    text[n] = '\0';
    char *after = NULL;
    double v = strtod(text, &after);
    size_t used = (size_t)(after - text);
    if (text != small)
        cJSON_free(text);
    if (used == 0)
        return false;
    set_number(item, v);
    r->p += used;
    return true;
}

static bool read_value(reader *r, cJSON *item);

/* Children of an array or object up to its closing bracket; r->p is just
 * past the opening one. */
static bool read_children(reader *r, cJSON *item, bool object)
{
    if (r->depth >= NESTING_LIMIT)
        return false;
    r->depth++;
    item->type = object ? cJSON_Object : cJSON_Array;
    const unsigned char close = object ? '}' : ']';
    skip_space(r);
    if (r->p < r->end && *r->p == close) {
        r->p++;
        r->depth--;
        return true;
    }
    if (r->p >= r->end)
        return false;
    cJSON *last = NULL;
    for (;;) {
        cJSON *child = new_item(r);
        if (child == NULL)
            return false;
        if (last == NULL) {
            item->child = child;
        } else {
            last->next = child;
            child->prev = last;
        }
        last = child;
        skip_space(r);
        if (object) {
            child->string = read_string(r);
            if (child->string == NULL)
                return false;
            skip_space(r);
            if (r->p >= r->end || *r->p != ':')
                return false;
            r->p++;
            skip_space(r);
        }
        if (!read_value(r, child))
            return false;
        skip_space(r);
        if (r->p >= r->end)
            return false;
        if (*r->p == ',') {
            r->p++;
            continue;
        }
        if (*r->p != close)
            return false;
        r->p++;
        break;
    }
    item->child->prev = last;
    r->depth--;
    return true;
}

static bool literal(reader *r, const char *word, size_t n)
{
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n) != 0)
        return false;
    r->p += n;
    return true;
}

static bool read_value(reader *r, cJSON *item)
{
    if (r->p >= r->end)
        return false;
    switch (*r->p) {
    case 'n':
        item->type = cJSON_NULL;
        return literal(r, "null", 4);
    case 'f':
        item->type = cJSON_False;
        return literal(r, "false", 5);
    case 't':
        item->type = cJSON_True;
        item->valueint = 1;
        return literal(r, "true", 4);
    case '"':
        item->type = cJSON_String;
        item->valuestring = read_string(r);
        return item->valuestring != NULL;
    case '[':
        r->p++;
        return read_children(r, item, false);
    case '{':
        r->p++;
        return read_children(r, item, true);
    default:
        if (*r->p == '-' || (*r->p >= '0' && *r->p <= '9'))
            return read_number(r, item);
        return false;
    }
}

static bool parse_into(reader *r, size_t n, cJSON *root)
{
    /* cJSON looks for the mark only in texts of five bytes or more. */
    if (n >= 5 && memcmp(r->p, "\xEF\xBB\xBF", 3) == 0)
        r->p += 3;
    skip_space(r);
    return read_value(r, root);
}

cJSON *dx__jparse(const char *s, size_t n)
{
    dx__json_init();
    if (s == NULL || n == 0)
        return NULL;
    reader r = {(const unsigned char *)s, (const unsigned char *)s + n, 0,
                NULL};
    cJSON *root = new_item(&r);
    if (root == NULL)
        return NULL;
    if (!parse_into(&r, n, root)) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* Sized so the tree of a typical request or answer (its strings, which
 * are never longer than the text, and a node per few dozen bytes) fits
 * the first block. */
cJSON *dx__jparse_block(const char *s, size_t n)
{
    dx__json_init();
    if (s == NULL || n == 0)
        return NULL;
    size_t first =
        n < (JBLOCK_FIRST_MAX - 1024) / 2 ? 2 * n + 1024 : JBLOCK_FIRST_MAX;
    jblock *b = jblock_new(first);
    if (b == NULL)
        return NULL;
    reader r = {(const unsigned char *)s, (const unsigned char *)s + n, 0, b};
    cJSON *root = new_item(&r); /* at the very start of b's data */
    if (root == NULL || !parse_into(&r, n, root)) {
        dx__jfree_block(root != NULL ? root : (cJSON *)(b + 1));
        return NULL;
    }
    return root;
}

void dx__jfree_block(cJSON *root)
{
    if (root == NULL)
        return;
    jblock *b = (jblock *)root - 1;
    while (b != NULL) {
        jblock *next = b->next;
        dx_free(b);
        b = next;
    }
}
