/*
 * test_dist_ext.c — the external term format decoder (runtime/dist_ext.c)
 * on hostile bytes, white-box and offline (dx__dist_codec_open: no epmd,
 * no connection): it never reads past the buffer it is given (each input
 * is in a buffer of exactly its size, so ASan sees a stray read), refuses
 * truncated terms, forged lengths and counts, malformed UTF-8 and nesting
 * past its bound, and what it accepts encodes again. The cases are the
 * findings of fuzz/fuzz_term_ext.c (fuzz/corpus/term_ext/regress-*).
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "dist_int.h"
#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/term.h"

static void setup(void)
{
    cr_assert_eq(dx__dist_codec_open("test@localhost", 1), DX_OK);
}

static void teardown(void)
{
    dx__dist_codec_close();
}

TestSuite(dist_ext, .init = setup, .fini = teardown, .timeout = 60);

/* Decode bytes[0..len) (after the version byte 131, which must be first)
 * from a heap copy of exactly len bytes. */
static int decode_n(const void *bytes, size_t len, dx_term **out)
{
    char *buf = malloc(len ? len : 1);
    cr_assert_not_null(buf);
    memcpy(buf, bytes, len);
    int idx = len > 0 && (unsigned char)buf[0] == 131 ? 1 : 0;
    *out = (dx_term *)buf; /* the decoder must set it */
    int rc = dx__ext_decode(buf, (int)len, &idx, out);
    if (rc == DX_OK)
        cr_assert_eq(idx, (int)len, "the whole input is one term");
    else
        cr_assert_null(*out);
    free(buf);
    return rc;
}

#define DECODE(lit, out) decode_n(lit, sizeof(lit) - 1, out)

Test(dist_ext, a_binary_whose_length_runs_past_the_packet_is_einval)
{
    /* {'$dx', ..., <<27648 bytes>>} with 5 bytes there: the length was
     * followed into the memory after the packet. */
    dx_term *t;
    cr_expect_eq(DECODE("\x83m\x00\x00\x6c\x00\x34", &t), DX_EINVAL);
    cr_expect_eq(DECODE("\x83h\x02"
                        "d\x00\x01"
                        "am\x00\x00\x6c\x00"
                        "ab",
                        &t),
                 DX_EINVAL);
    /* A string and an atom the same way. */
    cr_expect_eq(DECODE("\x83k\xff\xf0"
                        "ab",
                        &t),
                 DX_EINVAL);
    cr_expect_eq(DECODE("\x83v\x01\x00"
                        "ab",
                        &t),
                 DX_EINVAL);
    /* The old float format is 31 bytes of text for sscanf. */
    cr_expect_eq(DECODE("\x83"
                        "c1.00000000000000000000e+00",
                        &t),
                 DX_EINVAL);
}

Test(dist_ext, every_truncation_of_a_valid_term_is_refused)
{
    /* {'$gen_call', {Pid, Ref}, #{q => [1.5, <<"hi">>, "ab", 1 bsl 62]}}
     * as BEAM encodes it, pid and ref of another node. */
    static const unsigned char term[] = {
        131, 104, 3,   100, 0,   9,   '$', 'g', 'e', 'n', '_', 'c', 'a', 'l',
        'l', 104, 2,   88,  119, 6,   'a', '@', 'h', 'o', 's', 't', 0,   0,
        0,   7,   0,   0,   0,   0,   0,   0,   0,   1,   90,  0,   3,   119,
        6,   'a', '@', 'h', 'o', 's', 't', 0,   0,   0,   1,   0,   0,   0,
        9,   0,   0,   0,   8,   0,   0,   0,   7,   116, 0,   0,   0,   1,
        119, 1,   'q', 108, 0,   0,   0,   4,   70,  63,  248, 0,   0,   0,
        0,   0,   0,   109, 0,   0,   0,   2,   'h', 'i', 107, 0,   2,   'a',
        'b', 110, 8,   0,   0,   0,   0,   0,   0,   0,   0,   64,  106};
    dx_term *t;
    cr_assert_eq(decode_n(term, sizeof term, &t), DX_OK);
    char *s = dx_term_to_string(t);
    cr_expect_str_eq(s,
                     "{'$gen_call',{<1.7.0>,#Ref<0.4503599627370497>},#{q => "
                     "[1.5,<<\"hi\">>,[97,98],4611686018427387904]}}");
    dx_free(s);
    dx_term_free(t);
    for (size_t n = 1; n < sizeof term; n++) {
        int rc = decode_n(term, n, &t);
        cr_expect_eq(rc, DX_EINVAL, "%zu of %zu bytes: %s", n, sizeof term,
                     dx_err_name(rc));
    }
}

Test(dist_ext, a_count_beyond_the_bytes_left_is_einval_before_any_allocation)
{
    dx_term *t;
    /* 2^31 - 1 list elements, tuple elements, map pairs; and a negative
     * count as erl_interface's int sees 2^32 - 1. */
    cr_expect_eq(DECODE("\x83l\x7f\xff\xff\xff"
                        "aa",
                        &t),
                 DX_EINVAL);
    cr_expect_eq(DECODE("\x83i\x7f\xff\xff\xff"
                        "aa",
                        &t),
                 DX_EINVAL);
    cr_expect_eq(DECODE("\x83t\x40\x00\x00\x00"
                        "aaaa",
                        &t),
                 DX_EINVAL);
    cr_expect_eq(DECODE("\x83l\xff\xff\xff\xff"
                        "aa",
                        &t),
                 DX_EINVAL);
    /* A ref claiming more words than erlang_ref holds. */
    cr_expect_eq(DECODE("\x83Z\x00\x06w\x03"
                        "a@b\x00\x00\x00\x01"
                        "123412341234123412341234",
                        &t),
                 DX_EINVAL);
}

Test(dist_ext, atoms_and_node_names_that_are_not_utf8_are_einval)
{
    dx_term *t;
    /* An atom; the node of a ref (the fuzzer's input); the node of a pid;
     * an overlong '/' and a surrogate. */
    cr_expect_eq(DECODE("\x83w\x02\xd1\xd1", &t), DX_EINVAL);
    cr_expect_eq(DECODE("\x83Z\x00\x03w\x0e"
                        "fuzz@l\xd1\xd1\xd1\xd1\xd1\xd1\xd1\xd1"
                        "\x00\x00\x00\x03"
                        "\x00\x00\x12\x34\xde\xad\xbe\xef\x00\x00\x00\x07",
                        &t),
                 DX_EINVAL);
    cr_expect_eq(DECODE("\x83Xw\x04\xff@hs\x00\x00\x00\x01\x00\x00\x00\x00"
                        "\x00\x00\x00\x01",
                        &t),
                 DX_EINVAL);
    cr_expect_eq(DECODE("\x83w\x02\xc0\xaf", &t), DX_EINVAL);
    cr_expect_eq(DECODE("\x83w\x03\xed\xa0\x80", &t), DX_EINVAL);
    /* Valid UTF-8 and Latin-1 atoms decode to the same atom. */
    cr_assert_eq(DECODE("\x83w\x02\xc3\xa9", &t), DX_OK);
    cr_expect(dx_is_atom(t, "\xc3\xa9"));
    cr_assert_eq(DECODE("\x83s\x01\xe9", &t), DX_OK);
    cr_expect(dx_is_atom(t, "\xc3\xa9"));
    /* A NUL would silently make it another atom. */
    cr_expect_eq(DECODE("\x83w\x03"
                        "a\x00"
                        "b",
                        &t),
                 DX_ENOTSUP);
}

/* n levels of one-element lists around inner (bytes after the version
 * byte), with their n tails: a heap buffer the caller frees. */
static char *nest(size_t n, const char *inner, size_t ilen, size_t *len)
{
    *len = 1 + 5 * n + ilen + n;
    char *b = malloc(*len);
    cr_assert_not_null(b);
    b[0] = (char)131;
    for (size_t i = 0; i < n; i++)
        memcpy(b + 1 + 5 * i, "l\x00\x00\x00\x01", 5);
    memcpy(b + 1 + 5 * n, inner, ilen);
    memset(b + 1 + 5 * n + ilen, 'j', n);
    return b;
}

Test(dist_ext, nesting_past_512_levels_is_elimit_and_a_string_counts_one_more)
{
    size_t len;
    dx_term *t;
    char *b = nest(512, "j", 1, &len);
    cr_expect_eq(decode_n(b, len, &t), DX_OK);
    dx_term_free(t);
    free(b);
    b = nest(513, "j", 1, &len);
    cr_expect_eq(decode_n(b, len, &t), DX_ELIMIT);
    free(b);
    b = nest(100000, "j", 1, &len);
    cr_expect_eq(decode_n(b, len, &t), DX_ELIMIT);
    free(b);
    /* A string's bytes come back as a list of integers one level down,
     * where the encoder would refuse them: the decoder refuses them
     * first. An empty string is [] and has no elements. */
    b = nest(512, "k\x00\x01x", 4, &len);
    cr_expect_eq(decode_n(b, len, &t), DX_ELIMIT);
    free(b);
    b = nest(511, "k\x00\x01x", 4, &len);
    cr_assert_eq(decode_n(b, len, &t), DX_OK);
    ei_x_buff x;
    ei_x_new(&x);
    cr_expect_eq(dx__ext_encode(&x, t), DX_OK);
    ei_x_free(&x);
    dx_term_free(t);
    free(b);
}

Test(dist_ext, refs_of_this_node_and_of_others_round_trip)
{
    dx_term *t;
    /* A ref of this node (3 words, the first within 18 bits) and one of
     * another node with 5 words, as newer BEAMs may send. */
    cr_assert_eq(DECODE("\x83Z\x00\x03w\x0etest@localhost\x00\x00\x00\x01"
                        "\x00\x00\x12\x34\xde\xad\xbe\xef\x00\x00\x00\x01",
                        &t),
                 DX_OK);
    dx_ref r;
    cr_assert(dx_ref_value(t, &r));
    cr_expect_eq(dx__ref_node(r), 0u, "a ref of this node is local");
    dx_term_free(t);
    static const char five[] = "\x83Z\x00\x05w\x03"
                               "a@b\x00\x00\x00\x02"
                               "\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"
                               "\x03\x00\x00\x00\x04\x00\x00\x00\x05";
    cr_assert_eq(DECODE(five, &t), DX_OK);
    ei_x_buff x;
    ei_x_new_with_version(&x);
    cr_assert_eq(dx__ext_encode(&x, t), DX_OK);
    cr_expect_eq(x.index, (int)sizeof five - 1);
    cr_expect(memcmp(x.buff, five, sizeof five - 1) == 0,
              "the ref goes back byte for byte");
    ei_x_free(&x);
    dx_term_free(t);
}

/* dx__ext_check guards a packet's control tuple, which erl_interface then
 * reads on trust: it accepts a whole term (and says where it ends) and
 * refuses every cut of it and a forged length inside it. */
static int check_n(const void *bytes, size_t len, int *end)
{
    char *buf = malloc(len ? len : 1);
    cr_assert_not_null(buf);
    memcpy(buf, bytes, len);
    int idx = 1;
    int rc = dx__ext_check(buf, (int)len, &idx);
    free(buf);
    *end = idx;
    return rc;
}

Test(dist_ext, the_control_tuple_check_bounds_every_length)
{
    /* {2, '', Pid} as a SEND control tuple, then a payload after it. */
    static const char ctl[] = "\x83h\x03"
                              "a\x02"
                              "d\x00\x00"
                              "Xv\x00\x0etest@localhost\x00\x00\x00\x01"
                              "\x00\x00\x00\x00\x00\x00\x00\x01"
                              "a\x07";
    size_t whole = sizeof ctl - 1, term_end = whole - 2;
    int end;
    cr_assert_eq(check_n(ctl, whole, &end), DX_OK);
    cr_expect_eq(end, (int)term_end, "the tuple ends before the payload");
    for (size_t cut = 1; cut < term_end; cut++)
        cr_expect_eq(check_n(ctl, cut, &end), DX_EINVAL, "cut at %zu", cut);
    /* A tuple that claims more elements than there are bytes. */
    cr_expect_eq(check_n("\x83h\xff"
                         "a\x01",
                         5, &end),
                 DX_EINVAL);
    /* A binary inside a list whose length runs past the packet. */
    cr_expect_eq(check_n("\x83l\x00\x00\x00\x01m\x00\x00\x6c\x00"
                         "abj",
                         14, &end),
                 DX_EINVAL);
    /* A fun is no control term. */
    cr_expect_eq(check_n("\x83p\x00\x00\x00\x05", 6, &end), DX_ENOTSUP);
}

Test(dist_ext, the_control_tuple_check_walks_deep_nesting_without_recursion)
{
    const size_t levels = 100000;
    size_t len = 1 + levels * 2 + 1;
    char *buf = malloc(len);
    cr_assert_not_null(buf);
    buf[0] = (char)131;
    for (size_t i = 0; i < levels; i++) {
        buf[1 + 2 * i] = 'h'; /* SMALL_TUPLE_EXT of one element */
        buf[2 + 2 * i] = 1;
    }
    buf[len - 1] = 'j';
    int idx = 1;
    cr_expect_eq(dx__ext_check(buf, (int)len, &idx), DX_OK);
    cr_expect_eq(idx, (int)len);
    idx = 1;
    cr_expect_eq(dx__ext_check(buf, (int)len - 1, &idx), DX_EINVAL);
    free(buf);
}

/* The encoder's refusals: nothing, nesting past its bound, a pid or ref
 * of a node this node does not know. */
Test(dist_ext, the_encoder_refuses_what_it_cannot_send)
{
    ei_x_buff x;
    cr_assert_eq(ei_x_new_with_version(&x), 0);
    cr_expect_eq(dx__ext_encode(&x, NULL), DX_EINVAL);
    dx_term *deep = dx_nil();
    for (int i = 0; i < 600; i++)
        deep = dx_list(1, deep);
    cr_expect_eq(dx__ext_encode(&x, deep), DX_ELIMIT);
    dx_term_free(deep);
    ei_x_free(&x);

    /* A pid and a ref of a node index this node never learned. */
    dx_pid stray = {.id = ((uint64_t)4000 << 52) | 5};
    dx_ref stray_ref = {.id = ((uint64_t)4000 << 52) | 1};
    dx_term *tp = dx_pid_term(stray), *tr = dx_ref_term(stray_ref);
    cr_assert_eq(ei_x_new_with_version(&x), 0);
    cr_expect_neq(dx__ext_encode(&x, tp), DX_OK);
    cr_expect_neq(dx__ext_encode(&x, tr), DX_OK);
    dx_term_free(tp);
    dx_term_free(tr);
    ei_x_free(&x);
}
