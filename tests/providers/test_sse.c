/*
 * test_sse.c — the incremental SSE parser (sse.h): line endings of every
 * kind and split across chunks, multi-line data, comments, field rules,
 * the per-event bound, and sticky failures.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "dspex/error.h"
#include "dspex/sse.h"

typedef struct seen {
    int n;
    char data[8][128];
    char event[8][32];
    char id[8][32];
    long retry[8];
    int stop_after; /* return 99 from the callback after this many */
} seen;

static int on_event(dx_sse *p, const dx_sse_event *ev, void *ud)
{
    (void)p;
    seen *s = ud;
    cr_assert_lt(s->n, 8);
    cr_assert_eq(strlen(ev->data), ev->data_len);
    snprintf(s->data[s->n], 128, "%s", ev->data);
    snprintf(s->event[s->n], 32, "%s", ev->event);
    snprintf(s->id[s->n], 32, "%s", ev->id);
    s->retry[s->n] = ev->retry;
    s->n++;
    return s->stop_after && s->n >= s->stop_after ? 99 : 0;
}

/* Parse text fed in chunks of `chunk` bytes. */
static int parse(const char *text, size_t chunk, seen *s, size_t max)
{
    dx_sse *p;
    cr_assert_eq(dx_sse_new(max, &p), DX_OK);
    size_t n = strlen(text);
    int rc = DX_OK;
    for (size_t off = 0; off < n && rc == DX_OK; off += chunk)
        rc = dx_sse_feed(p, text + off, n - off < chunk ? n - off : chunk,
                         on_event, s);
    dx_sse_free(p);
    return rc;
}

Test(sse, every_line_ending_in_every_chunking_gives_the_same_events,
     .timeout = 10)
{
    const char *texts[] = {
        "event: a\ndata: one\n\ndata: two\n\n",
        "event: a\r\ndata: one\r\n\r\ndata: two\r\n\r\n",
        "event: a\rdata: one\r\rdata: two\r\r",
    };
    for (size_t t = 0; t < 3; t++)
        for (size_t chunk = 1; chunk <= 9; chunk++) {
            seen s = {0};
            cr_assert_eq(parse(texts[t], chunk, &s, 0), DX_OK);
            cr_assert_eq(s.n, 2, "text %zu chunk %zu: %d events", t, chunk,
                         s.n);
            cr_assert_str_eq(s.data[0], "one");
            cr_assert_str_eq(s.event[0], "a");
            cr_assert_str_eq(s.data[1], "two");
            cr_assert_str_eq(s.event[1], "message");
        }
}

Test(sse, data_lines_join_with_newlines_and_comments_are_skipped, .timeout = 10)
{
    seen s = {0};
    cr_assert_eq(parse(": ping\ndata: a\n: mid\ndata:b\ndata\n\n", 1, &s, 0),
                 DX_OK);
    cr_assert_eq(s.n, 1);
    cr_assert_str_eq(s.data[0], "a\nb\n");
}

Test(sse, events_without_data_are_not_dispatched, .timeout = 10)
{
    seen s = {0};
    cr_assert_eq(parse("event: x\n\n: c\n\nid: 5\n\ndata: y\n\n", 2, &s, 0),
                 DX_OK);
    cr_assert_eq(s.n, 1);
    cr_assert_str_eq(s.event[0], "message", "event type reset at blank line");
    cr_assert_str_eq(s.id[0], "5", "the last id persists");
}

Test(sse, only_one_space_after_the_colon_is_stripped_and_retry_is_parsed,
     .timeout = 10)
{
    seen s = {0};
    cr_assert_eq(parse("retry: 1500\ndata:  two spaces\n\nretry: x1\ndata: "
                       "z\n\n",
                       3, &s, 0),
                 DX_OK);
    cr_assert_eq(s.n, 2);
    cr_assert_str_eq(s.data[0], " two spaces");
    cr_assert_eq(s.retry[0], 1500);
    cr_assert_eq(s.retry[1], -1);
}

Test(sse, a_leading_byte_order_mark_is_dropped, .timeout = 10)
{
    for (size_t chunk = 1; chunk <= 4; chunk++) {
        seen s = {0};
        cr_assert_eq(parse("\xEF\xBB\xBF"
                           "data: x\n\n",
                           chunk, &s, 0),
                     DX_OK);
        cr_assert_eq(s.n, 1);
        cr_assert_str_eq(s.data[0], "x");
    }
}

Test(sse, an_event_past_the_bound_fails_and_stays_failed, .timeout = 10)
{
    dx_sse *p;
    seen s = {0};
    cr_assert_eq(dx_sse_new(16, &p), DX_OK);
    cr_assert_eq(dx_sse_feed(p, "data: 0123456789\n\n", 18, on_event, &s),
                 DX_OK);
    cr_assert_eq(s.n, 1);
    cr_assert_eq(dx_sse_feed(p, "data: 0123456789", 16, on_event, &s), DX_OK);
    cr_assert_eq(dx_sse_feed(p, "\ndata: 0123456789\n", 18, on_event, &s),
                 DX_ELIMIT, "two data lines exceed 16 bytes together");
    cr_assert_eq(dx_sse_feed(p, "\n", 1, on_event, &s), DX_ELIMIT);
    cr_assert_eq(s.n, 1);
    dx_sse_free(p);

    /* one endless line is refused too, whatever the chunking */
    cr_assert_eq(dx_sse_new(64, &p), DX_OK);
    int rc = DX_OK;
    for (int i = 0; i < 100 && rc == DX_OK; i++)
        rc = dx_sse_feed(p, "xx", 2, on_event, &s);
    cr_assert_eq(rc, DX_ELIMIT);
    dx_sse_free(p);
}

Test(sse, comment_lines_do_not_count_against_the_bound, .timeout = 10)
{
    dx_sse *p;
    seen s = {0};
    cr_assert_eq(dx_sse_new(16, &p), DX_OK);
    for (int i = 0; i < 100; i++)
        cr_assert_eq(dx_sse_feed(p, ": keep-alive\n", 13, on_event, &s), DX_OK);
    dx_sse_free(p);
}

Test(sse, a_callback_error_stops_the_feed_and_sticks, .timeout = 10)
{
    dx_sse *p;
    seen s = {.stop_after = 1};
    cr_assert_eq(dx_sse_new(0, &p), DX_OK);
    const char *t = "data: a\n\ndata: b\n\n";
    cr_assert_eq(dx_sse_feed(p, t, strlen(t), on_event, &s), 99);
    cr_assert_eq(s.n, 1, "no event after the callback failed");
    cr_assert_eq(dx_sse_feed(p, t, strlen(t), on_event, &s), 99);
    cr_assert_eq(s.n, 1);
    dx_sse_free(p);
}

Test(sse, pending_reports_an_unfinished_event, .timeout = 10)
{
    dx_sse *p;
    seen s = {0};
    cr_assert_eq(dx_sse_new(0, &p), DX_OK);
    cr_assert_eq(dx_sse_pending(p), 0);
    cr_assert_eq(dx_sse_feed(p, "data: a\n", 8, on_event, &s), DX_OK);
    cr_assert_neq(dx_sse_pending(p), 0);
    cr_assert_eq(dx_sse_feed(p, "\n", 1, on_event, &s), DX_OK);
    cr_assert_eq(dx_sse_pending(p), 0);
    dx_sse_free(NULL);
    dx_sse_free(p);
}
