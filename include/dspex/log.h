/*
 * log.h — the dspex logger: one line per event, levels, a human or a
 * machine-readable format, and a pluggable sink.
 *
 * An event is a name ("child_terminated") plus key/value fields. The logger
 * formats it into one line (never more: newlines in values are escaped) in
 * the current format and hands it, together with the structured fields, to
 * the sink. The default sink writes the line to stderr.
 *
 * Levels follow OTP's logger: crash and supervisor error reports are
 * `error`; progress reports (a child started) are `info`. The default level
 * is `notice`, as in OTP, so errors show and progress does not. The
 * environment variables DX_LOG_LEVEL (debug, info, notice, warning, error,
 * none) and DX_LOG_FORMAT (text, logfmt, json) set the initial level and
 * format; the functions below override them.
 *
 * Threads: every function may be called from any thread and from processes.
 * The sink is called with the logger's lock held, so lines never interleave
 * and a sink needs no locking of its own. A sink must not log and must not
 * call runtime functions (send, receive, sleep...): a process that parked
 * or was preempted there would hold the lock while other processes on the
 * same scheduler thread wait for it.
 */
#ifndef DSPEX_LOG_H
#define DSPEX_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "export.h"
#include "term.h"

typedef enum dx_log_level {
    DX_LOG_DEBUG = 0,
    DX_LOG_INFO,
    DX_LOG_NOTICE,
    DX_LOG_WARNING,
    DX_LOG_ERROR,
    DX_LOG_NONE, /* as a threshold: log nothing */
} dx_log_level;

typedef enum dx_log_format {
    /* "12:00:01.250 error child_terminated: supervisor=root child=db ..." */
    DX_LOG_TEXT = 0,
    /* "ts=2024-05-01T12:00:01.250123Z level=error event=child_terminated
     * supervisor=root child=db reason=\"{badarg,1}\" restarts=1" */
    DX_LOG_LOGFMT,
    /* {"ts":"...","level":"error","event":"child_terminated",...} */
    DX_LOG_JSON,
} dx_log_format;

typedef enum dx_log_vtype {
    DX_LOG_V_STR = 0, /* v.s, NULL prints as an empty string */
    DX_LOG_V_INT,     /* v.i */
    DX_LOG_V_TERM,    /* v.t, printed in Erlang syntax */
    DX_LOG_V_PID,     /* v.pid, printed as <0.N.0> */
} dx_log_vtype;

/* One key/value of an event. Keys and values are borrowed for the call. */
typedef struct dx_log_field {
    const char *key;
    dx_log_vtype type;
    union {
        const char *s;
        int64_t i;
        const dx_term *t;
        dx_pid pid;
    } v;
} dx_log_field;

#define DX_LOG_STR(k, x)                                                       \
    ((dx_log_field){.key = (k), .type = DX_LOG_V_STR, .v.s = (x)})
#define DX_LOG_INT(k, x)                                                       \
    ((dx_log_field){.key = (k), .type = DX_LOG_V_INT, .v.i = (int64_t)(x)})
#define DX_LOG_TERM(k, x)                                                      \
    ((dx_log_field){.key = (k), .type = DX_LOG_V_TERM, .v.t = (x)})
#define DX_LOG_PID(k, x)                                                       \
    ((dx_log_field){.key = (k), .type = DX_LOG_V_PID, .v.pid = (x)})

/* What a sink receives. Everything is borrowed for the duration of the
 * call; copy what you keep. */
typedef struct dx_log_record {
    dx_log_level level;
    int64_t time_us;   /* wall clock, microseconds since the Unix epoch */
    dx_pid pid;        /* the process that logged; DX_NOPID from a host */
    const char *event; /* event name; "message" for dx_logf */
    const dx_log_field *fields;
    size_t nfields;
    const char *line; /* the formatted line, NUL-terminated, no newline */
    size_t len;
} dx_log_record;

/* A sink: record first, user data second (see the threads note above). */
typedef void (*dx_log_sink)(const dx_log_record *rec, void *ud);

/* Longest formatted line in bytes; longer lines are cut at a field
 * boundary and end with a `truncated` marker (still valid JSON). */
#define DX_LOG_LINE_MAX 4096
/* Longest printed value (a term, a string) before it is cut with "...". */
#define DX_LOG_VALUE_MAX 1024

/* Set the threshold: events below it are dropped before any formatting.
 * Returns the previous level. Out-of-range values are clamped to NONE. */
DX_API dx_log_level dx_log_set_level(dx_log_level level);
DX_API dx_log_level dx_log_get_level(void);
/* Whether an event at `level` would be logged; cheap (one atomic load), so
 * callers test it before building fields that cost something. */
DX_API bool dx_log_enabled(dx_log_level level);

/* Set the line format; returns the previous one. */
DX_API dx_log_format dx_log_set_format(dx_log_format format);
DX_API dx_log_format dx_log_get_format(void);

/* Replace the sink (NULL restores the stderr sink). The sink stays in use
 * until it is replaced; once this returns, the previous sink is no longer
 * running and will not be called again. */
DX_API void dx_log_set_sink(dx_log_sink sink, void *ud);

/* Log one event with nfields fields (fields may be NULL when nfields is
 * 0). event must be non-NULL. Nothing is retained after the call. */
DX_API void dx_log_event(dx_log_level level, const char *event,
                         const dx_log_field *fields, size_t nfields);

/* Log a free-form message: event "message" with one field msg=<text>. */
DX_API void dx_logf(dx_log_level level, const char *fmt, ...) DX_PRINTF(2, 3);

/* "debug", "info", "notice", "warning", "error", "none"; "?" otherwise. */
DX_API const char *dx_log_level_name(dx_log_level level);
/* Parse a level name (case-insensitive). DX_EINVAL if unknown. */
DX_API int dx_log_level_parse(const char *name, dx_log_level *out);
/* Parse a format name: "text", "logfmt" (also "kv"), "json". DX_EINVAL. */
DX_API int dx_log_format_parse(const char *name, dx_log_format *out);

#endif
