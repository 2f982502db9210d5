/*
 * test_metrics.c — the built-in metrics against what Python DSPy computes:
 * normalize_text (NFD, lower-case, ASCII punctuation, articles, whitespace)
 * on ASCII and Unicode text, exact match, token F1 with exact values,
 * passage match as DSPy's DPR tokenizer sees it, and dx_metric_score on
 * examples and predictions (list answers, non-string values, missing
 * fields, custom metrics). Expected values were computed with DSPy 3.3's
 * dspy/evaluate/metrics.py under Python 3 (Unicode 14).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/evaluate.h"

static void expect_norm(const char *in, const char *want)
{
    char *out = NULL;
    cr_assert_eq(dx_metric_normalize(in, &out), DX_OK, "%s", in);
    cr_expect_str_eq(out, want, "normalize(\"%s\")", in);
    dx_free(out);
}

Test(metrics, normalize_strips_case_punctuation_articles_and_spaces,
     .timeout = 10)
{
    expect_norm("The,  Eiffel  Tower!", "eiffel tower");
    expect_norm("", "");
    expect_norm("  \t\n ", "");
    expect_norm("A an THE", "");
    expect_norm("the_cat", "thecat"); /* '_' is punctuation, then no article */
    expect_norm("the.the", "thethe");
    expect_norm("an-apple", "anapple");
    expect_norm("apple's pie", "apples pie");
    expect_norm("a1-b2", "a1b2");
    expect_norm("tab\tnew\nline", "tab new line");
    expect_norm("«the» end", "« » end");
}

/* ASCII text takes a byte-wise path: the same answers as DSPy for every
 * whitespace str.split() knows, control characters (kept, and a word
 * boundary for the article rule) and articles inside words. */
Test(metrics, normalize_ascii_controls_and_every_split_whitespace,
     .timeout = 10)
{
    expect_norm("x\x01"
                "a\x01"
                "y",
                "x\x01 \x01"
                "y");
    expect_norm("The\x1c"
                "End\x1f"
                "an\x0b"
                "apple\x0c"
                "THE\r"
                "cat",
                "end apple cat");
    expect_norm("an\x7fthe", "\x7f");
    expect_norm("a\x01", "\x01");
    expect_norm("\x01the\x01", "\x01 \x01");
    expect_norm("Answer: The Answer (a)", "answer answer");
    expect_norm("theatre thea an a", "theatre thea");
}

/* ASCII text takes its own one-pass path; a trailing no-break space (split
 * whitespace, dropped at the end) sends the same text through the general
 * Unicode path. The two must agree on every mix of letters, articles,
 * punctuation, controls and spaces. */
Test(metrics, normalize_ascii_path_agrees_with_the_unicode_path, .timeout = 30)
{
    static const char alphabet[] = "aAnNtThHeE xyzZ09 .,!_-'\"\t\n\r\v\f"
                                   "#$%&()*+/:;<=>?@[\\]^`{|}~"
                                   "\x01\x08\x0e\x1b\x1c\x1f\x7f";
    unsigned state = 12345;
    char text[40], wide[44];
    for (int round = 0; round < 20000; round++) {
        size_t len = round % 24;
        for (size_t i = 0; i < len; i++) {
            state = state * 1103515245u + 12345u;
            text[i] = alphabet[(state >> 16) % (sizeof alphabet - 1)];
        }
        text[len] = '\0';
        snprintf(wide, sizeof wide, "%s\xc2\xa0", text);
        char *ascii = NULL, *general = NULL;
        cr_assert_eq(dx_metric_normalize(text, &ascii), DX_OK);
        cr_assert_eq(dx_metric_normalize(wide, &general), DX_OK);
        cr_assert_str_eq(ascii, general, "round %d", round);
        dx_free(ascii);
        dx_free(general);
    }
}

Test(metrics, normalize_keeps_combining_marks_as_nfd_does, .timeout = 10)
{
    /* NFD splits é into e + U+0301 and nothing removes the mark. */
    expect_norm("Café", "cafe\xcc\x81");
    expect_norm("CAFÉ", "cafe\xcc\x81");
    expect_norm("naïve façade", "nai\xcc\x88ve fac\xcc\xa7"
                                "ade");
    /* The mark is not a word character, so NFD "à"'s "a" is an article. */
    expect_norm("à la carte", "\xcc\x80 la carte");
    expect_norm("İstanbul", "i\xcc\x87stanbul");
    expect_norm("Ёлка Йод", "е\xcc\x88лка и\xcc\x86од");
}

Test(metrics, normalize_lowercases_beyond_ascii_and_keeps_unicode_punctuation,
     .timeout = 10)
{
    expect_norm("Hello—world", "hello—world");
    expect_norm("l’été", "l’e\xcc\x81te\xcc\x81");
    expect_norm("Ǆ DŽ", "ǆ dz\xcc\x8c");
    expect_norm("ΣΊΣΥΦΟΣ", "σι\xcc\x81συφος"); /* final sigma at the end */
    expect_norm("Straße", "straße");
    expect_norm("ẞ", "ß");
    expect_norm("ＡＢＣ", "ａｂｃ");
    expect_norm("Ⅻ", "ⅻ");
    expect_norm("ﬁne", "ﬁne"); /* a compatibility form: NFD keeps it */
    expect_norm("½ cup", "½ cup");
    expect_norm("×÷", "×÷");
    expect_norm("x\xc2\xa0y\xe3\x80\x80z", "x y z"); /* NBSP, ideographic */
    expect_norm("한국어", "\xe1\x84\x92\xe1\x85\xa1\xe1\x86\xab"
                          "\xe1\x84\x80\xe1\x85\xae\xe1\x86\xa8"
                          "\xe1\x84\x8b\xe1\x85\xa5");
    expect_norm("𝒜bc", "𝒜bc");
}

/* NFD everywhere, not only in the Latin, Greek and Cyrillic blocks: kana
 * with a voicing mark, Devanagari nukta letters, Arabic madda, CJK
 * compatibility ideographs, the Angstrom and Kelvin signs (which decompose
 * to letters that then lower-case), the Greek question mark (to ';',
 * which is then punctuation), musical symbols beyond the BMP; and the
 * canonical order of combining marks (ccc 220 before 230). Values from
 * Python 3.11's normalize_text. */
Test(metrics, normalize_decomposes_every_script_and_orders_marks, .timeout = 10)
{
    expect_norm("が", "か\xe3\x82\x99");
    expect_norm("ガイド", "カ\xe3\x82\x99イト\xe3\x82\x99");
    expect_norm("\xe0\xa5\x98", "क\xe0\xa4\xbc"); /* U+0958 */
    expect_norm("آ", "ا\xd9\x93");
    expect_norm("\xef\xa4\x80", "\xe8\xb1\x88"); /* U+F900 -> U+8C48 */
    expect_norm("\xe2\x84\xab", "\xcc\x8a"); /* Å sign: "a" + ring, "a" goes */
    expect_norm("\xe2\x84\xaa", "k");        /* Kelvin sign */
    expect_norm("\xe2\x84\xa6", "ω");        /* Ohm sign */
    expect_norm("\xcd\xbe", "");             /* Greek question mark */
    expect_norm("ÅNGSTRÖM", "\xcc\x8angstro\xcc\x88m");
    /* a + acute + dot below, in either order: dot below (220) first. */
    expect_norm("xa\xcc\x81\xcc\xa3", "xa\xcc\xa3\xcc\x81");
    expect_norm("xa\xcc\xa3\xcc\x81", "xa\xcc\xa3\xcc\x81");
    expect_norm("ṩ", "s\xcc\xa3\xcc\x87");
    expect_norm("\xf0\x9d\x85\x9e", /* U+1D15E musical half note */
                "\xf0\x9d\x85\x97\xf0\x9d\x85\xa5");
}

/* str.lower() beyond the BMP (Deseret, Adlam), and the final sigma as
 * Python decides it: before a letter that has no case (Arabic, kana) a
 * sigma still ends its word; before an apostrophe and a cased letter it
 * does not (the apostrophe is case-ignorable, and lower-casing happens
 * before punctuation is dropped). */
Test(metrics, normalize_lowercases_every_plane_and_finds_final_sigmas,
     .timeout = 10)
{
    expect_norm("\xf0\x90\x90\x80\xf0\x90\x90\x81", /* U+10400 U+10401 */
                "\xf0\x90\x90\xa8\xf0\x90\x90\xa9");
    expect_norm("\xf0\x9e\xa4\x80", "\xf0\x9e\xa4\xa2"); /* U+1E900 */
    expect_norm("ΣΑΣا", "σαςا");
    expect_norm("ΟΔΥΣΣΕΎΣが", "οδυσσευ\xcc\x81ςか\xe3\x82\x99");
    expect_norm("ΣΑΣ'NAIVE", "σασnaive");
    cr_expect(dx_metric_em("σαςا", "ΣΑΣا"));
    cr_expect(!dx_metric_em("σας'naive", "ΣΑΣ'NAIVE"));
}

/* Text written in two forms matches as it does in DSPy. */
Test(metrics, exact_match_and_f1_see_through_composed_and_decomposed_forms,
     .timeout = 10)
{
    static const char *const same[][2] = {
        {"が", "か\xe3\x82\x99"},
        {"\xe0\xa5\x98 \xe0\xa4\xa9", "क\xe0\xa4\xbc न\xe0\xa4\xbc"},
        {"\xe2\x84\xabngstrom", "Ångstrom"},
        {"a\xcc\x81\xcc\xa3", "a\xcc\xa3\xcc\x81"},
        {"\xf0\x90\x90\xa8", "\xf0\x90\x90\x80"},
        {"\xef\xa4\x80", "\xe8\xb1\x88"},
    };
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        cr_expect(dx_metric_em(same[i][0], same[i][1]), "%zu", i);
        cr_expect_float_eq(dx_metric_f1(same[i][0], same[i][1]), 1.0, 1e-12,
                           "%zu", i);
    }
}

Test(metrics, normalize_passes_invalid_utf8_through, .timeout = 10)
{
    expect_norm("ab\xff"
                "C",
                "ab\xff"
                "c");
    expect_norm("\xc3", "\xc3"); /* a truncated sequence */
    char *out = (char *)1;
    cr_expect_eq(dx_metric_normalize("x", NULL), DX_EINVAL);
    cr_expect_eq(dx_metric_normalize(NULL, &out), DX_OK);
    cr_expect_str_eq(out, "");
    dx_free(out);
}

Test(metrics, exact_match_compares_normalised_text, .timeout = 10)
{
    cr_expect(dx_metric_em("The Eiffel Tower", "Eiffel Tower"));
    cr_expect(dx_metric_em("paris", "Paris"));
    cr_expect(dx_metric_em("  Paris.  ", "paris"));
    cr_expect_not(dx_metric_em("paris", "Paris, France"));
    cr_expect(dx_metric_em("", ""));
    cr_expect(dx_metric_em("the", "")); /* only an article: empty */
    cr_expect_not(dx_metric_em("x", ""));
    cr_expect_not(dx_metric_em("Café", "Cafe")); /* the mark stays */
    cr_expect(dx_metric_em("CAFÉ", "café"));
}

Test(metrics, f1_counts_overlapping_tokens, .timeout = 10)
{
    cr_expect_float_eq(dx_metric_f1("Eiffel Tower is in Paris", "Paris"),
                       0.33333333333333337, 1e-12);
    cr_expect_float_eq(
        dx_metric_f1("the cat sat on the mat", "the cat on a mat"),
        0.8571428571428571, 1e-12);
    /* Repeated tokens count as often as both sides have them. */
    cr_expect_float_eq(dx_metric_f1("a b b c", "b b b d"), 0.5714285714285715,
                       1e-12);
    cr_expect_float_eq(dx_metric_f1("The Eiffel Tower", "eiffel tower"), 1.0,
                       1e-12);
    cr_expect_float_eq(dx_metric_f1("", ""), 0.0, 1e-12); /* as DSPy */
    cr_expect_float_eq(dx_metric_f1("x", ""), 0.0, 1e-12);
    cr_expect_float_eq(dx_metric_f1("berlin", "paris"), 0.0, 1e-12);
}

Test(metrics, passage_match_finds_answer_tokens_in_order, .timeout = 10)
{
    const char *p1[] = {"Nothing here.", "The Eiffel Tower is in Paris."};
    cr_expect(dx_metric_passage_has_answer(p1, 2, "eiffel tower"));
    cr_expect_not(dx_metric_passage_has_answer(p1, 1, "eiffel tower"));
    const char *p2[] = {"Eiffel-Towers are tall"};
    cr_expect_not(dx_metric_passage_has_answer(p2, 1, "eiffel tower"));
    const char *p3[] = {"l’été est chaud"};
    cr_expect(dx_metric_passage_has_answer(p3, 1, "été"));
    const char *p4[] = {"Café au lait"};
    cr_expect_not(dx_metric_passage_has_answer(p4, 1, "cafe"));
    const char *p5[] = {"abc"};
    cr_expect(dx_metric_passage_has_answer(p5, 1, "")); /* as DSPy */
    cr_expect_not(dx_metric_passage_has_answer(NULL, 0, "abc"));
    /* Whole tokens only: "tow" is not in "tower". */
    cr_expect_not(dx_metric_passage_has_answer(p1, 2, "eiffel tow"));
}

/* The DPR tokenizer's classes for every plane: a format character splits
 * a token and is skipped ("1" ZWSP "000" is not "1000"); a CJK extension H
 * ideograph (Unicode 15) is a word character, as the regex module DSPy
 * tokenizes with has it; a decomposed answer finds a composed passage. */
Test(metrics, passage_match_tokenizes_like_dpr_in_every_script, .timeout = 10)
{
    const char *kana[] = {"the answer is か\xe3\x82\x99 here"};
    cr_expect(dx_metric_passage_has_answer(kana, 1, "が"));
    const char *zwsp[] = {"key 1\xe2\x80\x8b"
                          "000 here"};
    cr_expect_not(dx_metric_passage_has_answer(zwsp, 1, "1000"));
    cr_expect(dx_metric_passage_has_answer(zwsp, 1, "1 000"));
    const char *ext_h[] = {"x \xf0\xb1\x8d\x90 y"}; /* U+31350 */
    cr_expect(dx_metric_passage_has_answer(ext_h, 1, "\xf0\xb1\x8d\x90"));
    cr_expect_not(dx_metric_passage_has_answer(ext_h, 1, "x\xf0\xb1\x8d\x90"));
    const char *nordic[] = {"søren kierkegaard", "s\xc3\xb6ren"};
    cr_expect(dx_metric_passage_has_answer(nordic, 2, "so\xcc\x88ren"));
}

static dx_example *ex_json(const char *json)
{
    dx_example *ex = NULL;
    cr_assert_eq(dx_example_from_json(json, strlen(json), &ex, NULL), DX_OK,
                 "%s", json);
    return ex;
}

static dx_prediction *pred_json(const char *json)
{
    dx_prediction *p = dx_prediction_new();
    cr_assert_not_null(p);
    dx_example *f = ex_json(json);
    for (size_t i = 0; i < dx_example_len(f); i++)
        cr_assert_eq(dx_example_set_value(dx_prediction_fields_mut(p),
                                          dx_example_key(f, i),
                                          dx_example_value(f, i)),
                     DX_OK);
    dx_example_free(f);
    return p;
}

static double score_with(dx_metric m, const char *ex, const char *pred)
{
    dx_example *e = ex_json(ex);
    dx_prediction *p = pred_json(pred);
    double s = dx_metric_score(&m, e, p, NULL);
    dx_example_free(e);
    dx_prediction_free(p);
    return s;
}

static double score(dx_metric_kind kind, const char *field, const char *ex,
                    const char *pred)
{
    return score_with((dx_metric){.kind = kind, .field = field}, ex, pred);
}

Test(metrics, score_exact_match_takes_string_or_list_answers, .timeout = 10)
{
    cr_expect_float_eq(score(DX_METRIC_EXACT_MATCH, NULL,
                             "{\"answer\": \"Eiffel Tower\"}",
                             "{\"answer\": \"the eiffel tower.\"}"),
                       1.0, 1e-12);
    cr_expect_float_eq(score(DX_METRIC_EXACT_MATCH, NULL,
                             "{\"answer\": [\"Louvre\", \"Eiffel Tower\"]}",
                             "{\"answer\": \"The Eiffel Tower\"}"),
                       1.0, 1e-12);
    cr_expect_float_eq(score(DX_METRIC_EXACT_MATCH, NULL,
                             "{\"answer\": [\"Louvre\", \"Orsay\"]}",
                             "{\"answer\": \"The Eiffel Tower\"}"),
                       0.0, 1e-12);
    cr_expect_float_eq(score(DX_METRIC_EXACT_MATCH, NULL, "{\"answer\": []}",
                             "{\"answer\": \"\"}"),
                       0.0, 1e-12);
    /* A non-string value compares as its JSON text. */
    cr_expect_float_eq(score(DX_METRIC_EXACT_MATCH, NULL, "{\"answer\": \"4\"}",
                             "{\"answer\": 4}"),
                       1.0, 1e-12);
    cr_expect_float_eq(score(DX_METRIC_EXACT_MATCH, "label",
                             "{\"label\": \"Yes\", \"answer\": \"no\"}",
                             "{\"label\": \"yes\", \"answer\": \"x\"}"),
                       1.0, 1e-12);
}

static double score_frac(double frac, const char *ex, const char *pred)
{
    return score_with((dx_metric){.kind = DX_METRIC_EXACT_MATCH, .frac = frac},
                      ex, pred);
}

/* DSPy's answer_exact_match(example, pred, frac=F): F < 1 scores
 * F1(pred, answers) >= F. "Eiffel Tower in Paris" against "the Eiffel
 * Tower": precision 2/4, recall 2/2, F1 2/3. */
Test(metrics, exact_match_with_frac_is_token_f1_at_least_frac, .timeout = 10)
{
    const char *ex = "{\"answer\": \"the Eiffel Tower\"}";
    const char *pred = "{\"answer\": \"Eiffel Tower in Paris\"}";
    cr_expect_float_eq(score_frac(0.6, ex, pred), 1.0, 1e-12);
    cr_expect_float_eq(score_frac(2.0 / 3.0, ex, pred), 1.0, 1e-12);
    cr_expect_float_eq(score_frac(0.7, ex, pred), 0.0, 1e-12);
    /* 1 and above, and 0 (unset): exact match. */
    cr_expect_float_eq(score_frac(1.0, ex, pred), 0.0, 1e-12);
    cr_expect_float_eq(score_frac(0.0, ex, pred), 0.0, 1e-12);
    cr_expect_float_eq(score_frac(1.0, ex, "{\"answer\": \"eiffel tower!\"}"),
                       1.0, 1e-12);
    /* Any one of a list of answers. */
    cr_expect_float_eq(
        score_frac(0.6, "{\"answer\": [\"Louvre\", \"the Eiffel Tower\"]}",
                   pred),
        1.0, 1e-12);
    cr_expect_float_eq(
        score_frac(0.6, "{\"answer\": [\"Louvre\", \"Orsay\"]}", pred), 0.0,
        1e-12);
    /* Empty against empty: DSPy's F1 is 0 there (its exact match is 1). */
    cr_expect_float_eq(
        score_frac(0.5, "{\"answer\": \"\"}", "{\"answer\": \"\"}"), 0.0,
        1e-12);
    cr_expect_float_eq(
        score_frac(0.0, "{\"answer\": \"\"}", "{\"answer\": \"\"}"), 1.0,
        1e-12);
}

Test(metrics, score_is_zero_when_a_field_is_missing, .timeout = 10)
{
    cr_expect_float_eq(score(DX_METRIC_EXACT_MATCH, NULL, "{\"answer\": \"\"}",
                             "{\"other\": \"\"}"),
                       0.0, 1e-12);
    cr_expect_float_eq(
        score(DX_METRIC_F1, NULL, "{\"other\": \"x\"}", "{\"answer\": \"x\"}"),
        0.0, 1e-12);
    dx_metric m = {.kind = DX_METRIC_EXACT_MATCH};
    cr_expect_float_eq(dx_metric_score(&m, NULL, NULL, NULL), 0.0, 1e-12);
    cr_expect_float_eq(dx_metric_score(NULL, NULL, NULL, NULL), 0.0, 1e-12);
}

Test(metrics, score_f1_is_the_best_over_list_answers, .timeout = 10)
{
    cr_expect_float_eq(score(DX_METRIC_F1, NULL,
                             "{\"answer\": [\"Paris\", \"in Paris France\"]}",
                             "{\"answer\": \"Eiffel Tower is in Paris\"}"),
                       0.5, 1e-12);
}

Test(metrics, score_passage_match_reads_the_passages_field, .timeout = 10)
{
    const char *ex = "{\"answer\": [\"Louvre\", \"Eiffel Tower\"]}";
    const char *pred = "{\"context\": [\"Nothing.\", \"The Eiffel Tower!\"],"
                       " \"docs\": [\"nope\"]}";
    cr_expect_float_eq(score(DX_METRIC_PASSAGE_MATCH, NULL, ex, pred), 1.0,
                       1e-12);
    dx_metric m = {.kind = DX_METRIC_PASSAGE_MATCH, .passages_field = "docs"};
    dx_example *e = ex_json(ex);
    dx_prediction *p = pred_json(pred);
    cr_expect_float_eq(dx_metric_score(&m, e, p, NULL), 0.0, 1e-12);
    m.passages_field = "missing";
    cr_expect_float_eq(dx_metric_score(&m, e, p, NULL), 0.0, 1e-12);
    dx_example_free(e);
    dx_prediction_free(p);
    /* A single string is one passage. */
    cr_expect_float_eq(score(DX_METRIC_PASSAGE_MATCH, NULL, ex,
                             "{\"context\": \"at the Louvre museum\"}"),
                       1.0, 1e-12);
}

static double half_if_long(const dx_example *ex, const dx_prediction *pred,
                           const dx_trace *trace, void *ud)
{
    (void)ex;
    (void)trace;
    int *calls = ud;
    (*calls)++;
    return strlen(dx_prediction_get_str(pred, "answer", "")) > 3 ? 0.5 : 1.0;
}

Test(metrics, score_custom_calls_the_function_with_its_data, .timeout = 10)
{
    int calls = 0;
    dx_metric m = {.kind = DX_METRIC_CUSTOM, .fn = half_if_long, .ud = &calls};
    dx_example *e = ex_json("{\"answer\": \"x\"}");
    dx_prediction *p = pred_json("{\"answer\": \"long one\"}");
    double s = dx_metric_score(&m, e, p, NULL);
    cr_expect_float_eq(s, 0.5, 1e-12);
    cr_expect_eq(calls, 1);
    m.fn = NULL;
    cr_expect_float_eq(dx_metric_score(&m, e, p, NULL), 0.0, 1e-12);
    dx_example_free(e);
    dx_prediction_free(p);
}

Test(metrics, from_name_knows_the_built_in_metrics, .timeout = 10)
{
    dx_metric_kind k = DX_METRIC_CUSTOM;
    cr_expect_eq(dx_metric_from_name("exact_match", &k), DX_OK);
    cr_expect_eq(k, DX_METRIC_EXACT_MATCH);
    cr_expect_eq(dx_metric_from_name("f1", &k), DX_OK);
    cr_expect_eq(k, DX_METRIC_F1);
    cr_expect_eq(dx_metric_from_name("passage_match", &k), DX_OK);
    cr_expect_eq(k, DX_METRIC_PASSAGE_MATCH);
    cr_expect_eq(dx_metric_from_name("answer_exact_match", &k), DX_OK);
    cr_expect_eq(k, DX_METRIC_EXACT_MATCH);
    k = DX_METRIC_F1;
    cr_expect_eq(dx_metric_from_name("bleu", &k), DX_ENOENT);
    cr_expect_eq(k, DX_METRIC_F1);
    cr_expect_eq(dx_metric_from_name(NULL, &k), DX_EINVAL);
}
