/*
 * test_adapter_stream.c — the incremental ChatAdapter reader: whatever the
 * chunking (one byte at a time, or every split point of the answer), the
 * pieces of each output field add up to what dx_adapter_parse gives that
 * field, no marker text leaks, text before the first marker, unknown
 * sections, repeated sections and the completed marker are dropped, and a
 * JSONAdapter reader stays silent.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "dspex/adapter.h"
#include "dspex/error.h"
#include "dspex/signature.h"

typedef struct got {
    char reasoning[512], answer[512];
    int pieces;
    bool other; /* a field that is not an output */
} got;

static void on_chunk(const char *field, const char *text, size_t len, void *ud)
{
    got *g = ud;
    g->pieces++;
    char *dst = strcmp(field, "reasoning") == 0 ? g->reasoning
                : strcmp(field, "answer") == 0  ? g->answer
                                                : NULL;
    if (!dst) {
        g->other = true;
        return;
    }
    cr_assert_gt(len, 0);
    cr_assert_lt(strlen(dst) + len, 512);
    strncat(dst, text, len);
}

static dx_signature *sig(void)
{
    dx_signature *s = NULL;
    cr_assert_eq(dx_signature_parse("question -> reasoning, answer", NULL, NULL,
                                    0, &s, NULL),
                 DX_OK);
    return s;
}

/* Feed text cut at the given points (sorted offsets, n of them). */
static void feed_cut(dx_adapter_kind kind, const dx_signature *s,
                     const char *text, const size_t *cuts, size_t n, got *g)
{
    dx_adapter_stream *st = NULL;
    cr_assert_eq(dx_adapter_stream_new(kind, s, on_chunk, g, &st), DX_OK);
    size_t at = 0;
    for (size_t i = 0; i <= n; i++) {
        size_t end = i < n ? cuts[i] : strlen(text);
        cr_assert_eq(dx_adapter_stream_feed(st, text + at, end - at), DX_OK);
        at = end;
    }
    cr_assert_eq(dx_adapter_stream_finish(st), DX_OK);
    dx_adapter_stream_free(st);
}

static const char answer_text[] =
    "Let me think.\n"
    "[[ ## reasoning ## ]]\n"
    "  Two plus two:\n\n  add them [[ not a marker ]]  \n"
    "[[ ## notes ## ]]\nignored section\n"
    "  [[ ## answer ## ]] 4 is the\n"
    "answer\n\n"
    "[[ ## reasoning ## ]]\nsecond copy, ignored\n"
    "[[ ## completed ## ]]\n";

static void check_against_parse(const dx_signature *s, const got *g)
{
    dx_example *ex = NULL;
    cr_assert_eq(dx_adapter_parse(DX_ADAPTER_CHAT, s, answer_text,
                                  strlen(answer_text), &ex, NULL),
                 DX_OK);
    cr_assert_str_eq(g->reasoning, dx_example_get_str(ex, "reasoning", "?"));
    cr_assert_str_eq(g->answer, dx_example_get_str(ex, "answer", "?"));
    cr_assert_not(g->other);
    dx_example_free(ex);
}

TestSuite(adapter_stream, .timeout = 30);

Test(adapter_stream, byte_by_byte_pieces_add_up_to_the_parsed_fields)
{
    dx_signature *s = sig();
    size_t n = strlen(answer_text) - 1;
    size_t cuts[512];
    for (size_t i = 0; i < n; i++)
        cuts[i] = i + 1;
    got g = {0};
    feed_cut(DX_ADAPTER_CHAT, s, answer_text, cuts, n, &g);
    check_against_parse(s, &g);
    cr_assert_str_eq(g.reasoning, "Two plus two:\n\n  add them [[ not a "
                                  "marker ]]");
    cr_assert_str_eq(g.answer, "4 is the\nanswer");
    cr_assert_gt(g.pieces, 10, "byte-sized feeds give many pieces");
    dx_signature_unref(s);
}

Test(adapter_stream, every_two_piece_split_gives_the_same_fields)
{
    dx_signature *s = sig();
    for (size_t cut = 0; cut <= strlen(answer_text); cut++) {
        got g = {0};
        feed_cut(DX_ADAPTER_CHAT, s, answer_text, &cut, 1, &g);
        check_against_parse(s, &g);
        cr_assert_null(strstr(g.answer, "##"));
        cr_assert_null(strstr(g.reasoning, "##"));
    }
    dx_signature_unref(s);
}

Test(adapter_stream, a_last_line_without_newline_is_decided_at_finish)
{
    dx_signature *s = sig();
    got g = {0};
    const char *t = "[[ ## answer ## ]]\n[[ ## answ";
    feed_cut(DX_ADAPTER_CHAT, s, t, NULL, 0, &g);
    cr_assert_str_eq(g.answer, "[[ ## answ");
    dx_signature_unref(s);
}

static const char json_text[] =
    "Here you go:\n```json\n{\"notes\": {\"answer\": \"nested\", \"x\": [1, "
    "\"}\"]}, \"reasoning\": \"He said \\\"hi\\\" \\\\ then\\nleft "
    "\\u00e9\\ud83d\\ude00 \\/\", \"n\": 3, \"answer\": \"4\"}\n```"
    "\n";

static void check_json(const dx_signature *s, const got *g)
{
    dx_example *ex = NULL;
    cr_assert_eq(dx_adapter_parse(DX_ADAPTER_JSON, s, json_text,
                                  strlen(json_text), &ex, NULL),
                 DX_OK);
    cr_assert_str_eq(g->reasoning, dx_example_get_str(ex, "reasoning", "?"));
    cr_assert_str_eq(g->answer, dx_example_get_str(ex, "answer", "?"));
    cr_assert_not(g->other);
    dx_example_free(ex);
}

Test(adapter_stream, a_json_answer_streams_its_string_values_decoded)
{
    dx_signature *s = sig();
    size_t n = strlen(json_text) - 1;
    size_t cuts[512];
    cr_assert_lt(n, 512);
    for (size_t i = 0; i < n; i++)
        cuts[i] = i + 1;
    got g = {0};
    feed_cut(DX_ADAPTER_JSON, s, json_text, cuts, n, &g);
    check_json(s, &g);
    cr_assert_str_eq(g.reasoning,
                     "He said \"hi\" \\ then\nleft \u00e9\U0001F600 /");
    cr_assert_str_eq(g.answer, "4");
    for (size_t cut = 0; cut <= strlen(json_text); cut++) {
        got h = {0};
        feed_cut(DX_ADAPTER_JSON, s, json_text, &cut, 1, &h);
        check_json(s, &h);
    }
    dx_signature_unref(s);
}

Test(adapter_stream, a_reader_needs_a_listener)
{
    dx_signature *s = sig();
    dx_adapter_stream *st = NULL;
    cr_assert_eq(dx_adapter_stream_new(DX_ADAPTER_CHAT, s, NULL, NULL, &st),
                 DX_EINVAL);
    cr_assert_null(st);
    dx_signature_unref(s);
}
