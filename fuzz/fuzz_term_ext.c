/*
 * fuzz_term_ext.c — fuzz target for the Erlang external term format
 * decoder (dx__ext_decode, runtime/dist_ext.c): what another node sends in
 * every message, exit reason and call. The codec runs offline
 * (dx__dist_codec_open: this node is fuzz@localhost, no network), with
 * fresh node and ref tables for each input so a replay is exact. The input
 * is one term, optionally after the version byte 131, in a buffer of
 * exactly its size.
 * Invariants: the decoder never crashes and never reads past the input; a
 * failure leaves no term; whatever decodes encodes again (dx__ext_encode)
 * and that decodes, consuming exactly the encoding, to an equal term
 * (dx_term_equal) whose encoding is the same bytes; nesting deeper than
 * the decoder's bound (512) is refused with DX_ELIMIT, not followed until
 * the stack overflows (checked once with 100,000 levels of lists, tuples
 * and maps).
 */
#include <ei.h>

#include "dist_int.h"
#include "dspex/term.h"
#include "fuzz.h"

#define SELF "fuzz@localhost"
#define VERSION_MAGIC 131

/* Decode buf[0..len) from its start (after an optional version byte). */
static int decode(const char *buf, int len, int *idx, dx_term **out)
{
    *idx = len > 0 && (unsigned char)buf[0] == VERSION_MAGIC ? 1 : 0;
    return dx__ext_decode(buf, len, idx, out);
}

/* Nesting far past the bound: levels of the given one-child container
 * header around an empty list. Must be refused, not recursed into. */
static void check_deep(const char *header, size_t hlen)
{
    const size_t levels = 100000;
    size_t len = 1 + levels * hlen + 1 + levels;
    char *buf = malloc(len);
    FUZZ_CHECK(buf != NULL);
    size_t at = 0;
    buf[at++] = (char)VERSION_MAGIC;
    for (size_t i = 0; i < levels; i++, at += hlen)
        memcpy(buf + at, header, hlen);
    buf[at++] = 'j'; /* NIL_EXT */
    /* Lists need their tails; tuples and maps ignore what follows. */
    memset(buf + at, 'j', levels);
    int idx;
    dx_term *t = (dx_term *)buf; /* must be reset */
    FUZZ_CHECK(decode(buf, (int)len, &idx, &t) == DX_ELIMIT);
    FUZZ_CHECK(t == NULL);
    free(buf);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    FUZZ_CHECK(dx__dist_codec_open(SELF, 3) == DX_OK);
    static const char list1[] = {'l', 0, 0, 0, 1};     /* LIST_EXT, 1 element */
    static const char tuple1[] = {'h', 1};             /* SMALL_TUPLE_EXT, 1 */
    static const char map1[] = {'t', 0, 0, 0, 1, 'j'}; /* MAP_EXT, [] => */
    check_deep(list1, sizeof list1);
    check_deep(tuple1, sizeof tuple1);
    check_deep(map1, sizeof map1);
    dx__dist_codec_close();
    return 0;
}

/* Encode t with a version byte; the buffer is the caller's (ei_x_free). */
static void encode(const dx_term *t, ei_x_buff *x)
{
    FUZZ_CHECK(ei_x_new_with_version(x) == 0);
    int rc = dx__ext_encode(x, t);
    if (rc != DX_OK)
        fprintf(stderr, "encoding a decoded term failed: %s\n",
                dx_err_name(rc));
    FUZZ_CHECK(rc == DX_OK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > INT32_MAX)
        return 0;
    FUZZ_CHECK(dx__dist_codec_open(SELF, 3) == DX_OK);
    /* Exactly the input's size, so ASan sees a read past its end. */
    char *buf = malloc(size ? size : 1);
    FUZZ_CHECK(buf != NULL);
    if (size)
        memcpy(buf, data, size);
    int idx;
    dx_term *t = (dx_term *)buf; /* must be set either way */
    int rc = decode(buf, (int)size, &idx, &t);
    /* The bounds walk that guards a packet's control tuple reads nothing
     * past the input either, and agrees with the decoder on where a term
     * it decodes ends. */
    int cidx = size > 0 && (uint8_t)buf[0] == VERSION_MAGIC ? 1 : 0;
    int crc = dx__ext_check(buf, (int)size, &cidx);
    if (rc == DX_OK)
        FUZZ_CHECK(crc == DX_OK && cidx == idx);
    if (rc != DX_OK) {
        FUZZ_CHECK(t == NULL);
    } else {
        FUZZ_CHECK(t != NULL);
        FUZZ_CHECK(idx > 0 && (size_t)idx <= size);
        ei_x_buff x1, x2;
        encode(t, &x1);
        int j;
        dx_term *u = NULL;
        rc = decode(x1.buff, x1.index, &j, &u);
        if (rc != DX_OK)
            fprintf(stderr, "decoding a re-encoded term failed: %s\n",
                    dx_err_name(rc));
        FUZZ_CHECK(rc == DX_OK);
        FUZZ_CHECK(j == x1.index);
        FUZZ_CHECK(dx_term_equal(t, u));
        /* The encoding is canonical: the second one is the same bytes. */
        encode(u, &x2);
        FUZZ_CHECK(x2.index == x1.index &&
                   memcmp(x1.buff, x2.buff, (size_t)x1.index) == 0);
        ei_x_free(&x1);
        ei_x_free(&x2);
        dx_term_free(u);
        dx_term_free(t);
    }
    free(buf);
    dx__dist_codec_close();
    return 0;
}
