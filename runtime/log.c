/*
 * log.c — the logger behind log.h: level and format switches, one-line
 * formatting in text, logfmt and JSON, and the sink that receives each line.
 *
 * The level and format are atomics read without a lock, so a filtered-out
 * event costs one load. An event that passes is formatted on the caller's
 * stack into bounded buffers (no allocation except for printing terms), then
 * the sink runs under one mutex, which is what keeps lines whole when many
 * processes and host threads log at once.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "dspex/error.h"
#include "dspex/log.h"
#include "dspex/runtime.h"

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static atomic_int cur_level = DX_LOG_NOTICE;
static atomic_int cur_format = DX_LOG_TEXT;

static pthread_mutex_t sink_mu = PTHREAD_MUTEX_INITIALIZER;
static dx_log_sink cur_sink; /* NULL: stderr */
static void *cur_ud;

static const char *const level_names[] = {"debug",   "info",  "notice",
                                          "warning", "error", "none"};

/* The environment sets the starting point once; explicit calls made after
 * that win because every entry point runs this first. */
static void init_from_env(void)
{
    const char *lv = getenv("DX_LOG_LEVEL");
    dx_log_level level;
    if (lv != NULL && dx_log_level_parse(lv, &level) == DX_OK)
        atomic_store(&cur_level, (int)level);
    const char *fm = getenv("DX_LOG_FORMAT");
    dx_log_format format;
    if (fm != NULL && dx_log_format_parse(fm, &format) == DX_OK)
        atomic_store(&cur_format, (int)format);
}

static void ensure_init(void)
{
    pthread_once(&init_once, init_from_env);
}

const char *dx_log_level_name(dx_log_level level)
{
    if ((int)level < 0 || level > DX_LOG_NONE)
        return "?";
    return level_names[level];
}

int dx_log_level_parse(const char *name, dx_log_level *out)
{
    if (name == NULL || out == NULL)
        return DX_EINVAL;
    for (int i = 0; i <= DX_LOG_NONE; i++)
        if (strcasecmp(name, level_names[i]) == 0) {
            *out = (dx_log_level)i;
            return DX_OK;
        }
    if (strcasecmp(name, "off") == 0) {
        *out = DX_LOG_NONE;
        return DX_OK;
    }
    return DX_EINVAL;
}

int dx_log_format_parse(const char *name, dx_log_format *out)
{
    if (name == NULL || out == NULL)
        return DX_EINVAL;
    if (strcasecmp(name, "text") == 0)
        *out = DX_LOG_TEXT;
    else if (strcasecmp(name, "logfmt") == 0 || strcasecmp(name, "kv") == 0)
        *out = DX_LOG_LOGFMT;
    else if (strcasecmp(name, "json") == 0)
        *out = DX_LOG_JSON;
    else
        return DX_EINVAL;
    return DX_OK;
}

dx_log_level dx_log_set_level(dx_log_level level)
{
    ensure_init();
    if ((int)level < 0 || level > DX_LOG_NONE)
        level = DX_LOG_NONE;
    return (dx_log_level)atomic_exchange(&cur_level, (int)level);
}

dx_log_level dx_log_get_level(void)
{
    ensure_init();
    return (dx_log_level)atomic_load(&cur_level);
}

bool dx_log_enabled(dx_log_level level)
{
    ensure_init();
    return level < DX_LOG_NONE &&
           (int)level >= atomic_load_explicit(&cur_level, memory_order_relaxed);
}

dx_log_format dx_log_set_format(dx_log_format format)
{
    ensure_init();
    if ((int)format < 0 || format > DX_LOG_JSON)
        format = DX_LOG_TEXT;
    return (dx_log_format)atomic_exchange(&cur_format, (int)format);
}

dx_log_format dx_log_get_format(void)
{
    ensure_init();
    return (dx_log_format)atomic_load(&cur_format);
}

void dx_log_set_sink(dx_log_sink sink, void *ud)
{
    ensure_init();
    pthread_mutex_lock(&sink_mu);
    cur_sink = sink;
    cur_ud = ud;
    pthread_mutex_unlock(&sink_mu);
}

/* ---- bounded writer ---------------------------------------------------- */

typedef struct wbuf {
    char *p;
    size_t cap; /* bytes including the NUL */
    size_t len;
} wbuf;

/* Append what fits, always leaving room for the NUL. */
static void put(wbuf *w, const char *s, size_t n)
{
    size_t room = w->cap - 1 - w->len;
    if (n > room)
        n = room;
    memcpy(w->p + w->len, s, n);
    w->len += n;
    w->p[w->len] = '\0';
}

static void puts_(wbuf *w, const char *s)
{
    put(w, s, strlen(s));
}

static void putc_(wbuf *w, char c)
{
    put(w, &c, 1);
}

/* ---- values ------------------------------------------------------------ */

/* Cut a value that did not fit: back off to a UTF-8 character boundary so
 * JSON output stays valid UTF-8, then mark the cut. */
static size_t cut_value(char *raw, size_t cap)
{
    size_t cut = cap - 4;
    while (cut > 0 && ((unsigned char)raw[cut] & 0xC0) == 0x80)
        cut--;
    memcpy(raw + cut, "...", 4);
    return cut + 3;
}

/* The value's plain text (before escaping) into raw[cap]; returns length. */
static size_t render_value(const dx_log_field *f, char *raw, size_t cap)
{
    size_t need = 0;
    switch (f->type) {
    case DX_LOG_V_INT:
        return (size_t)snprintf(raw, cap, "%" PRId64, f->v.i);
    case DX_LOG_V_STR: {
        const char *s = f->v.s ? f->v.s : "";
        need = strlen(s);
        if (need >= cap) {
            memcpy(raw, s, cap - 1);
            raw[cap - 1] = '\0';
        } else {
            memcpy(raw, s, need + 1);
        }
        break;
    }
    case DX_LOG_V_TERM:
        if (f->v.t == NULL) {
            return (size_t)snprintf(raw, cap, "undefined");
        }
        need = dx_term_format(f->v.t, raw, cap);
        break;
    case DX_LOG_V_PID: {
        if (dx_pid_is_none(f->v.pid))
            return (size_t)snprintf(raw, cap, "undefined");
        dx_term *t = dx_pid_term(f->v.pid);
        if (t == NULL)
            return (size_t)snprintf(raw, cap, "<?>");
        need = dx_term_format(t, raw, cap);
        dx_term_free(t);
        break;
    }
    default:
        return (size_t)snprintf(raw, cap, "?");
    }
    if (need >= cap)
        return cut_value(raw, cap);
    return need;
}

static bool logfmt_needs_quotes(const char *s, size_t n)
{
    if (n == 0)
        return true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c == '=' || c == '"' || c == 0x7f)
            return true;
    }
    return false;
}

/* Escape s[0..n) for the format. quote: wrap in double quotes. */
static void put_escaped(wbuf *w, const char *s, size_t n, dx_log_format fmt,
                        bool quote)
{
    if (quote)
        putc_(w, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        switch (c) {
        case '\n':
            puts_(w, "\\n");
            continue;
        case '\r':
            puts_(w, "\\r");
            continue;
        case '\t':
            puts_(w, "\\t");
            continue;
        case '"':
        case '\\':
            if (quote) {
                putc_(w, '\\');
                putc_(w, (char)c);
                continue;
            }
            break;
        default:
            break;
        }
        if (c < 0x20 || c == 0x7f) {
            if (fmt == DX_LOG_JSON)
                snprintf(esc, sizeof esc, "\\u%04x", c);
            else
                snprintf(esc, sizeof esc, "\\x%02x", c);
            puts_(w, esc);
            continue;
        }
        putc_(w, (char)c);
    }
    if (quote)
        putc_(w, '"');
}

/* One " key=value" (text, logfmt) or ",\"key\":value" (JSON) into w. */
static void put_field(wbuf *w, const dx_log_field *f, dx_log_format fmt)
{
    char raw[DX_LOG_VALUE_MAX + 1];
    size_t n = render_value(f, raw, sizeof raw);
    const char *key = f->key ? f->key : "?";
    if (fmt == DX_LOG_JSON) {
        putc_(w, ',');
        put_escaped(w, key, strlen(key), fmt, true);
        putc_(w, ':');
        put_escaped(w, raw, n, fmt, f->type != DX_LOG_V_INT);
        return;
    }
    putc_(w, ' ');
    put_escaped(w, key, strlen(key), fmt, false);
    putc_(w, '=');
    bool quote = fmt == DX_LOG_LOGFMT && f->type != DX_LOG_V_INT &&
                 logfmt_needs_quotes(raw, n);
    put_escaped(w, raw, n, fmt, quote);
}

/* ---- lines --------------------------------------------------------------- */

static void put_time(wbuf *w, int64_t time_us, dx_log_format fmt)
{
    time_t secs = (time_t)(time_us / 1000000);
    long us = (long)(time_us % 1000000);
    struct tm tm;
    char buf[64];
    if (fmt == DX_LOG_TEXT) {
        localtime_r(&secs, &tm);
        snprintf(buf, sizeof buf, "%02d:%02d:%02d.%03ld", tm.tm_hour, tm.tm_min,
                 tm.tm_sec, us / 1000);
    } else {
        gmtime_r(&secs, &tm);
        snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                 tm.tm_min, tm.tm_sec, us);
    }
    puts_(w, buf);
}

/* Room kept free for the truncation marker and the closing brace. */
#define TAIL_RESERVE 24

static void format_line(wbuf *w, const dx_log_record *r, dx_log_format fmt)
{
    const char *lv = dx_log_level_name(r->level);
    size_t first = 0;
    if (fmt == DX_LOG_JSON) {
        puts_(w, "{\"ts\":\"");
        put_time(w, r->time_us, fmt);
        puts_(w, "\",\"level\":\"");
        puts_(w, lv);
        puts_(w, "\",\"event\":");
        put_escaped(w, r->event, strlen(r->event), fmt, true);
    } else if (fmt == DX_LOG_LOGFMT) {
        puts_(w, "ts=");
        put_time(w, r->time_us, fmt);
        puts_(w, " level=");
        puts_(w, lv);
        puts_(w, " event=");
        put_escaped(w, r->event, strlen(r->event), fmt,
                    logfmt_needs_quotes(r->event, strlen(r->event)));
    } else {
        put_time(w, r->time_us, fmt);
        putc_(w, ' ');
        puts_(w, lv);
        putc_(w, ' ');
        /* A free-form message reads better as itself than as msg=... */
        if (strcmp(r->event, "message") == 0 && r->nfields > 0 &&
            r->fields[0].type == DX_LOG_V_STR && r->fields[0].key != NULL &&
            strcmp(r->fields[0].key, "msg") == 0) {
            const char *m = r->fields[0].v.s ? r->fields[0].v.s : "";
            put_escaped(w, m, strlen(m), fmt, false);
            first = 1;
        } else {
            put_escaped(w, r->event, strlen(r->event), fmt, false);
            if (r->nfields > 0)
                putc_(w, ':');
        }
    }

    bool truncated = false;
    for (size_t i = first; i < r->nfields; i++) {
        /* Build the field apart so a line is only ever cut between fields. */
        char fbuf[DX_LOG_VALUE_MAX * 6 + 128];
        wbuf fw = {fbuf, sizeof fbuf, 0};
        fbuf[0] = '\0';
        put_field(&fw, &r->fields[i], fmt);
        if (w->len + fw.len + TAIL_RESERVE >= w->cap) {
            truncated = true;
            break;
        }
        put(w, fbuf, fw.len);
    }
    if (fmt == DX_LOG_JSON) {
        if (truncated)
            puts_(w, ",\"truncated\":true");
        putc_(w, '}');
    } else if (truncated) {
        puts_(w, " truncated=true");
    }
}

static void stderr_sink(const dx_log_record *rec)
{
    /* One write per line keeps it whole next to other stderr writers. */
    char out[DX_LOG_LINE_MAX + 1];
    memcpy(out, rec->line, rec->len);
    out[rec->len] = '\n';
    fwrite(out, 1, rec->len + 1, stderr);
    fflush(stderr);
}

void dx_log_event(dx_log_level level, const char *event,
                  const dx_log_field *fields, size_t nfields)
{
    if (event == NULL || !dx_log_enabled(level))
        return;
    if (fields == NULL)
        nfields = 0;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    dx_log_record rec = {
        .level = level,
        .time_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000,
        .pid = dx_self(),
        .event = event,
        .fields = fields,
        .nfields = nfields,
    };
    char line[DX_LOG_LINE_MAX];
    wbuf w = {line, sizeof line, 0};
    line[0] = '\0';
    format_line(&w, &rec, (dx_log_format)atomic_load(&cur_format));
    rec.line = line;
    rec.len = w.len;

    pthread_mutex_lock(&sink_mu);
    if (cur_sink != NULL)
        cur_sink(&rec, cur_ud);
    else
        stderr_sink(&rec);
    pthread_mutex_unlock(&sink_mu);
}

void dx_logf(dx_log_level level, const char *fmt, ...)
{
    if (fmt == NULL || !dx_log_enabled(level))
        return;
    char msg[DX_LOG_VALUE_MAX + 1];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof msg)
        cut_value(msg, sizeof msg);
    dx_log_field f = DX_LOG_STR("msg", msg);
    dx_log_event(level, "message", &f, 1);
}
