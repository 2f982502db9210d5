/*
 * adapter_stream.c — reading an LM answer incrementally (adapter.h,
 * dx_adapter_stream): the ChatAdapter's `[[ ## name ## ]]` sections turned
 * into per-field pieces of text as the answer streams in.
 *
 * The reader keeps only the current line while it may still be a section
 * marker (a line is a marker when its stripped text starts with one, the
 * rule dx_adapter_parse uses); once decided, body text goes straight out.
 * Whitespace is held back until non-whitespace follows it in the same
 * field, so a field's pieces never carry the leading or trailing whitespace
 * that the parser strips. Whitespace is ASCII's and the separators Python's
 * str.strip() also removes (0x1c-0x1f); lines end at '\n' ('\r' is
 * whitespace). Each feed hands out at most one piece per field section it
 * touched, so a listener sees about as many pieces as the LM sent.
 *
 * A JSONAdapter answer is read with a small state machine over the
 * top-level object: the string value of an output field streams as it is
 * decoded (escapes, \uXXXX and surrogate pairs to UTF-8), other values
 * and nested objects are skipped, and text before the first '{' (a code
 * fence) is ignored. Anything it does not follow (single quotes, a
 * truncated key) ends the streaming for that answer; the parse at the end
 * still reads it with repair.
 */
#include <ctype.h>
#include <string.h>

#include "dspex/adapter.h"
#include "dspex/alloc.h"
#include "dspex/error.h"

/* Longer undecided lines are body text: no field name is this long. */
#define MAX_MARKER_LINE 1024

struct dx_adapter_stream {
    dx_adapter_kind kind;
    const dx_signature *sig;
    dx_adapter_chunk_fn fn;
    void *ud;
    int rc;         /* sticky failure */
    int cur;        /* output field being streamed; -1 = none */
    bool started;   /* cur has had non-whitespace */
    bool *seen;     /* per output: its section was already streamed */
    bool undecided; /* the current line may still be a marker */
    char line[MAX_MARKER_LINE];
    size_t line_len;
    /* JSONAdapter: where the reader is (see feed_json). */
    int js;
    char key[256];
    size_t key_len;
    bool key_over;
    int esc;        /* in a string: 0, 1 after '\\', 2-5 reading \uXXXX */
    unsigned u, hi; /* the \u digits so far, a pending high surrogate */
    int depth;      /* a skipped value: nesting */
    bool in_str;    /* a skipped value: inside a string */
    /* Held whitespace of cur, then the piece being built. */
    char *ws, *out;
    size_t ws_len, ws_cap, out_len, out_cap;
};

static bool is_ws(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

static int grow(char **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return DX_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    char *q = dx_realloc(*p, c);
    if (!q)
        return DX_ENOMEM;
    *p = q;
    *cap = c;
    return DX_OK;
}

/* Hand the piece built so far to the listener. */
static void flush(dx_adapter_stream *st)
{
    if (st->out_len > 0 && st->cur >= 0) {
        st->out[st->out_len] = '\0';
        st->fn(dx_signature_output(st->sig, (size_t)st->cur)->name, st->out,
               st->out_len, st->ud);
    }
    st->out_len = 0;
}

/* Body text of the current section. */
static void body(dx_adapter_stream *st, const char *p, size_t n)
{
    if (st->cur < 0 || st->rc != DX_OK)
        return;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (is_ws(c)) {
            if (!st->started)
                continue;
            if (grow(&st->ws, &st->ws_cap, st->ws_len + 1) != DX_OK) {
                st->rc = DX_ENOMEM;
                return;
            }
            st->ws[st->ws_len++] = (char)c;
            continue;
        }
        if (grow(&st->out, &st->out_cap, st->out_len + st->ws_len + 2) !=
            DX_OK) {
            st->rc = DX_ENOMEM;
            return;
        }
        if (st->ws_len > 0) /* ws is NULL until the first whitespace */
            memcpy(st->out + st->out_len, st->ws, st->ws_len);
        st->out_len += st->ws_len;
        st->ws_len = 0;
        st->out[st->out_len++] = (char)c;
        st->started = true;
    }
}

/* A marker line names a section: the text that follows it goes there. */
static void section(dx_adapter_stream *st, const char *name, size_t n)
{
    flush(st);
    st->cur = -1;
    st->started = false;
    st->ws_len = 0;
    for (size_t i = 0; i < dx_signature_n_outputs(st->sig); i++) {
        const char *fn = dx_signature_output(st->sig, i)->name;
        if (strlen(fn) == n && memcmp(fn, name, n) == 0) {
            if (!st->seen[i]) { /* the parser keeps the first one */
                st->seen[i] = true;
                st->cur = (int)i;
            }
            return;
        }
    }
}

enum { MAYBE, MARKER, NOT_MARKER };

static bool name_char(unsigned char c)
{
    return isalnum(c) || c == '_' || c >= 0x80;
}

/* Is line (so far) a marker, not one, or undecided? For a marker, the
 * name span and where the rest of the line starts. */
static int classify(const char *line, size_t len, const char **name,
                    size_t *name_n, size_t *rest)
{
    static const char open[] = "[[ ## ", close[] = " ## ]]";
    size_t i = 0;
    while (i < len && is_ws((unsigned char)line[i]))
        i++;
    size_t k = 0;
    for (; k < 6 && i + k < len; k++)
        if (line[i + k] != open[k])
            return NOT_MARKER;
    if (k < 6)
        return MAYBE;
    size_t s = i + 6, e = s;
    while (e < len && name_char((unsigned char)line[e]))
        e++;
    if (e == len)
        return MAYBE;
    if (e == s)
        return NOT_MARKER;
    for (k = 0; k < 6 && e + k < len; k++)
        if (line[e + k] != close[k])
            return NOT_MARKER;
    if (k < 6)
        return MAYBE;
    *name = line + s;
    *name_n = e - s;
    *rest = e + 6;
    return MARKER;
}

/* Settle the held line: at its end (final) or as it grows. */
static void decide(dx_adapter_stream *st, bool final)
{
    const char *name = NULL;
    size_t nn = 0, rest = 0;
    int k = classify(st->line, st->line_len, &name, &nn, &rest);
    if (k == MAYBE && !final && st->line_len < sizeof st->line)
        return;
    st->undecided = false;
    if (k == MARKER) {
        section(st, name, nn);
        body(st, st->line + rest, st->line_len - rest);
    } else {
        body(st, st->line, st->line_len);
    }
    st->line_len = 0;
}

/* ---- JSONAdapter ---------------------------------------------------- */

enum {
    J_SEEK,    /* before the top-level '{' */
    J_KEYWAIT, /* a key, ',' or '}' */
    J_KEY,     /* in a key */
    J_KEYESC,  /* a key's escaped character */
    J_COLON,   /* after a key */
    J_VALWAIT, /* a value */
    J_STR,     /* in a string value */
    J_AFTER,   /* after a string value: ',' or '}' */
    J_OTHER,   /* in a value that is not a string (skipped) */
    J_END,     /* done, or lost: nothing more streams */
};

static void put(dx_adapter_stream *st, const char *p, size_t n)
{
    if (st->cur < 0 || st->rc != DX_OK)
        return;
    if (grow(&st->out, &st->out_cap, st->out_len + n + 1) != DX_OK) {
        st->rc = DX_ENOMEM;
        return;
    }
    memcpy(st->out + st->out_len, p, n);
    st->out_len += n;
}

static void put_code_point(dx_adapter_stream *st, unsigned cp)
{
    char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xC0 | (cp >> 6));
        b[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xE0 | (cp >> 12));
        b[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (char)(0xF0 | (cp >> 18));
        b[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    put(st, b, n);
}

/* The key just read names the string value that starts: stream it if it
 * is an output field seen for the first time (cJSON keeps the first). */
static void json_value_starts(dx_adapter_stream *st)
{
    st->cur = -1;
    if (st->key_over)
        return;
    for (size_t i = 0; i < dx_signature_n_outputs(st->sig); i++) {
        const char *fn = dx_signature_output(st->sig, i)->name;
        if (strlen(fn) == st->key_len &&
            memcmp(fn, st->key, st->key_len) == 0) {
            if (!st->seen[i]) {
                st->seen[i] = true;
                st->cur = (int)i;
            }
            return;
        }
    }
}

/* A character of a string value. */
static void json_str(dx_adapter_stream *st, char c)
{
    if (st->esc == 0) {
        if (c == '\\') {
            st->esc = 1;
        } else if (c == '"') {
            flush(st);
            st->cur = -1;
            st->js = J_AFTER;
        } else {
            put(st, &c, 1);
        }
        return;
    }
    if (st->esc == 1) {
        static const char from[] = "nrtbf", to[] = "\n\r\t\b\f";
        const char *k = c ? strchr(from, c) : NULL;
        st->esc = 0;
        if (c == 'u') {
            st->esc = 2;
            st->u = 0;
        } else if (k != NULL) {
            put(st, &to[k - from], 1);
        } else {
            put(st, &c, 1); /* \" \\ \/ and anything else as itself */
        }
        return;
    }
    int h = isdigit((unsigned char)c) ? c - '0'
            : (c >= 'a' && c <= 'f')  ? c - 'a' + 10
            : (c >= 'A' && c <= 'F')  ? c - 'A' + 10
                                      : -1;
    if (h < 0) { /* not an escape after all: drop it */
        st->esc = 0;
        return;
    }
    st->u = st->u * 16 + (unsigned)h;
    if (++st->esc < 6)
        return;
    st->esc = 0;
    if (st->u >= 0xD800 && st->u < 0xDC00) {
        st->hi = st->u;
    } else if (st->u >= 0xDC00 && st->u < 0xE000) {
        if (st->hi)
            put_code_point(st, 0x10000 + ((st->hi - 0xD800) << 10) +
                                   (st->u - 0xDC00));
        st->hi = 0;
    } else {
        put_code_point(st, st->u);
    }
}

static void feed_json(dx_adapter_stream *st, const char *text, size_t len)
{
    for (size_t i = 0; i < len && st->rc == DX_OK; i++) {
        char c = text[i];
        bool ws = is_ws((unsigned char)c);
        switch (st->js) {
        case J_SEEK:
            if (c == '{')
                st->js = J_KEYWAIT;
            break;
        case J_KEYWAIT:
            if (c == '"') {
                st->js = J_KEY;
                st->key_len = 0;
                st->key_over = false;
            } else if (!ws && c != ',') {
                st->js = J_END; /* '}' or something it cannot follow */
            }
            break;
        case J_KEYESC:
        case J_KEY:
            if (st->js == J_KEY && c == '"') {
                st->js = J_COLON;
                break;
            }
            if (st->js == J_KEY && c == '\\') {
                st->js = J_KEYESC;
                break;
            }
            st->js = J_KEY;
            if (st->key_len < sizeof st->key)
                st->key[st->key_len++] = c;
            else
                st->key_over = true;
            break;
        case J_COLON:
            if (c == ':')
                st->js = J_VALWAIT;
            else if (!ws)
                st->js = J_END;
            break;
        case J_VALWAIT:
            if (ws)
                break;
            if (c == '"') {
                json_value_starts(st);
                st->js = J_STR;
                st->esc = 0;
                st->hi = 0;
            } else {
                st->js = J_OTHER;
                st->in_str = false;
                st->esc = 0;
                st->depth = c == '{' || c == '[' ? 1 : 0;
            }
            break;
        case J_STR:
            json_str(st, c);
            break;
        case J_AFTER:
            if (c == ',')
                st->js = J_KEYWAIT;
            else if (!ws)
                st->js = J_END;
            break;
        case J_OTHER:
            if (st->in_str) {
                if (st->esc)
                    st->esc = 0;
                else if (c == '\\')
                    st->esc = 1;
                else if (c == '"')
                    st->in_str = false;
            } else if (c == '"') {
                st->in_str = true;
            } else if (c == '{' || c == '[') {
                st->depth++;
            } else if (c == '}' || c == ']') {
                if (st->depth == 0)
                    st->js = J_END;
                else
                    st->depth--;
            } else if (c == ',' && st->depth == 0) {
                st->js = J_KEYWAIT;
            }
            break;
        default:
            return;
        }
    }
}

int dx_adapter_stream_new(dx_adapter_kind kind, const dx_signature *s,
                          dx_adapter_chunk_fn fn, void *ud,
                          dx_adapter_stream **out)
{
    if (out)
        *out = NULL;
    if (!s || !fn || !out ||
        (kind != DX_ADAPTER_CHAT && kind != DX_ADAPTER_JSON))
        return DX_EINVAL;
    dx_adapter_stream *st = dx_calloc(1, sizeof *st);
    size_t n = dx_signature_n_outputs(s);
    bool *seen = dx_calloc(n ? n : 1, sizeof *seen);
    if (!st || !seen) {
        dx_free(st);
        dx_free(seen);
        return DX_ENOMEM;
    }
    st->kind = kind;
    st->sig = s;
    st->fn = fn;
    st->ud = ud;
    st->seen = seen;
    st->cur = -1;
    st->undecided = true;
    *out = st;
    return DX_OK;
}

int dx_adapter_stream_feed(dx_adapter_stream *st, const char *text, size_t len)
{
    if (!st || (!text && len))
        return DX_EINVAL;
    if (st->rc != DX_OK)
        return st->rc;
    if (st->kind == DX_ADAPTER_JSON) {
        feed_json(st, text, len);
        if (st->rc == DX_OK)
            flush(st);
        return st->rc;
    }
    size_t i = 0;
    while (i < len && st->rc == DX_OK) {
        if (st->undecided) {
            char c = text[i++];
            if (c == '\n') {
                decide(st, true);
                body(st, "\n", 1);
                st->undecided = true;
                continue;
            }
            st->line[st->line_len++] = c;
            decide(st, false);
            continue;
        }
        /* The rest of a decided line goes out up to its end. */
        const char *nl = memchr(text + i, '\n', len - i);
        size_t n = nl ? (size_t)(nl - (text + i)) : len - i;
        body(st, text + i, n);
        i += n;
        if (nl) {
            body(st, "\n", 1);
            i++;
            st->undecided = true;
        }
    }
    if (st->rc == DX_OK)
        flush(st);
    return st->rc;
}

int dx_adapter_stream_finish(dx_adapter_stream *st)
{
    if (!st)
        return DX_EINVAL;
    if (st->rc != DX_OK)
        return st->rc;
    if (st->kind == DX_ADAPTER_CHAT && st->undecided && st->line_len > 0)
        decide(st, true);
    if (st->rc == DX_OK)
        flush(st);
    return st->rc;
}

void dx_adapter_stream_free(dx_adapter_stream *st)
{
    if (!st)
        return;
    dx_free(st->seen);
    dx_free(st->ws);
    dx_free(st->out);
    dx_free(st);
}
