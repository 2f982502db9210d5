/*
 * dist_ext.c — dx_term <-> the Erlang external term format, for messages
 * that cross nodes. erl_interface does the byte-level work; this file maps
 * each dx_term type onto its Erlang counterpart and back, and refuses
 * (rather than guesses at) what dx_term cannot hold: improper lists, bit
 * strings, ports, funs and integers outside 64 bits.
 */
#include <stdlib.h>
#include <string.h>

#include "dist_int.h"

#define MAX_DEPTH 512

static int enc(ei_x_buff *x, const dx_term *t, int depth)
{
    if (depth > MAX_DEPTH)
        return DX_ELIMIT;
    int rc = 0;
    switch (dx_term_type_of(t)) {
    case DX_TERM_ATOM: {
        const char *a = dx_atom_name(t);
        rc = ei_x_encode_atom_len_as(x, a, (int)strlen(a), ERLANG_UTF8,
                                     ERLANG_UTF8);
        break;
    }
    case DX_TERM_INT: {
        int64_t v = 0;
        dx_int_value(t, &v);
        rc = ei_x_encode_longlong(x, (EI_LONGLONG)v);
        break;
    }
    case DX_TERM_FLOAT: {
        double d = 0;
        dx_float_value(t, &d);
        rc = ei_x_encode_double(x, d);
        break;
    }
    case DX_TERM_BINARY: {
        size_t len = 0;
        const char *data = dx_binary_data(t, &len);
        if (len > INT32_MAX)
            return DX_ELIMIT;
        rc = ei_x_encode_binary(x, data, (int)len);
        break;
    }
    case DX_TERM_LIST: {
        size_t n = dx_term_size(t);
        if (n > 0) {
            if (ei_x_encode_list_header(x, (long)n) < 0)
                return DX_ENOMEM;
            for (size_t i = 0; i < n; i++) {
                int e = enc(x, dx_term_at(t, i), depth + 1);
                if (e != DX_OK)
                    return e;
            }
        }
        rc = ei_x_encode_empty_list(x);
        break;
    }
    case DX_TERM_TUPLE: {
        size_t n = dx_term_size(t);
        if (ei_x_encode_tuple_header(x, (long)n) < 0)
            return DX_ENOMEM;
        for (size_t i = 0; i < n; i++) {
            int e = enc(x, dx_term_at(t, i), depth + 1);
            if (e != DX_OK)
                return e;
        }
        return DX_OK;
    }
    case DX_TERM_MAP: {
        size_t n = dx_term_size(t);
        if (ei_x_encode_map_header(x, (long)n) < 0)
            return DX_ENOMEM;
        for (size_t i = 0; i < n; i++) {
            int e = enc(x, dx_map_key_at(t, i), depth + 1);
            if (e == DX_OK)
                e = enc(x, dx_map_value_at(t, i), depth + 1);
            if (e != DX_OK)
                return e;
        }
        return DX_OK;
    }
    case DX_TERM_PID: {
        dx_pid pid;
        dx_pid_value(t, &pid);
        if (pid.id & DX__DIST_NAME_BIT && dx__pid_node(pid) != 0) {
            /* A registered-name handle travels as {Name, Node}, which is
             * what Erlang code uses to address the same process. */
            const char *name, *node;
            if (dx__dist_name_of(pid, &name, &node) != DX_OK)
                return DX_EINVAL;
            if (ei_x_encode_tuple_header(x, 2) < 0 ||
                ei_x_encode_atom_len_as(x, name, (int)strlen(name), ERLANG_UTF8,
                                        ERLANG_UTF8) < 0 ||
                ei_x_encode_atom_len_as(x, node, (int)strlen(node), ERLANG_UTF8,
                                        ERLANG_UTF8) < 0)
                return DX_ENOMEM;
            return DX_OK;
        }
        erlang_pid ep;
        int e = dx__dist_pid_out(pid, &ep);
        if (e != DX_OK)
            return e;
        rc = ei_x_encode_pid(x, &ep);
        break;
    }
    case DX_TERM_REF: {
        dx_ref ref;
        dx_ref_value(t, &ref);
        erlang_ref er;
        int e = dx__dist_ref_out(ref, &er);
        if (e != DX_OK)
            return e;
        rc = ei_x_encode_ref(x, &er);
        break;
    }
    default:
        return DX_EINVAL;
    }
    return rc < 0 ? DX_ENOMEM : DX_OK;
}

int dx__ext_encode(ei_x_buff *x, const dx_term *t)
{
    if (t == NULL)
        return DX_EINVAL;
    return enc(x, t, 0);
}

/* ---- decoding ------------------------------------------------------------
 * erl_interface's decoders trust their buffer: they follow a length field
 * wherever it points (a binary's or a string's memmove, a float's sscanf)
 * and know no end, so a truncated or forged term from another node made
 * them read past the packet (found by fuzz/fuzz_term_ext.c). Here every
 * term's own bytes (all of a leaf, the header of a list, tuple or map) are
 * measured against the end of the buffer before erl_interface sees them,
 * and a leaf it decoded must end exactly where they do; element counts are
 * checked against the bytes left before anything is allocated for them.
 */

static uint32_t be16(const unsigned char *p)
{
    return (uint32_t)p[0] << 8 | p[1];
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           p[3];
}

/* Bytes of the atom at b[i] (any of the four atom tags), header included,
 * or -1 when it is no atom or does not end before len. */
static int64_t atom_len(const unsigned char *b, int64_t len, int64_t i)
{
    int64_t n;
    if (i >= len)
        return -1;
    switch (b[i]) {
    case ERL_ATOM_EXT:
    case ERL_ATOM_UTF8_EXT:
        if (len - i < 3)
            return -1;
        n = 3 + (int64_t)be16(b + i + 1);
        break;
    case ERL_SMALL_ATOM_EXT:
    case ERL_SMALL_ATOM_UTF8_EXT:
        if (len - i < 2)
            return -1;
        n = 2 + (int64_t)b[i + 1];
        break;
    default:
        return -1;
    }
    return n <= len - i ? n : -1;
}

/* *n = the bytes erl_interface reads for the term at b[i]: all of a leaf,
 * the header of a list, tuple or map. DX_EINVAL when they do not all lie
 * before len, DX_ENOTSUP for a kind of term dx_term cannot hold. */
static int head_len(const unsigned char *b, int64_t len, int64_t i, int64_t *n)
{
    int64_t left = len - i, a;
    if (left < 1)
        return DX_EINVAL;
    switch (b[i]) {
    case ERL_SMALL_INTEGER_EXT:
    case ERL_SMALL_TUPLE_EXT:
        *n = 2;
        break;
    case ERL_INTEGER_EXT:
    case ERL_LIST_EXT:
    case ERL_LARGE_TUPLE_EXT:
    case ERL_MAP_EXT:
        *n = 5;
        break;
    case ERL_FLOAT_EXT:
        *n = 32; /* 31 bytes of text */
        break;
    case NEW_FLOAT_EXT:
        *n = 9;
        break;
    case ERL_NIL_EXT:
        *n = 1;
        break;
    case ERL_ATOM_EXT:
    case ERL_SMALL_ATOM_EXT:
    case ERL_ATOM_UTF8_EXT:
    case ERL_SMALL_ATOM_UTF8_EXT:
        if ((*n = atom_len(b, len, i)) < 0)
            return DX_EINVAL;
        break;
    case ERL_BINARY_EXT:
        if (left < 5)
            return DX_EINVAL;
        *n = 5 + (int64_t)be32(b + i + 1);
        break;
    case ERL_STRING_EXT:
        if (left < 3)
            return DX_EINVAL;
        *n = 3 + (int64_t)be16(b + i + 1);
        break;
    case ERL_SMALL_BIG_EXT:
        if (left < 2)
            return DX_EINVAL;
        *n = 3 + (int64_t)b[i + 1];
        break;
    case ERL_LARGE_BIG_EXT:
        if (left < 5)
            return DX_EINVAL;
        *n = 6 + (int64_t)be32(b + i + 1);
        break;
    case ERL_PID_EXT:
    case ERL_NEW_PID_EXT:
        if ((a = atom_len(b, len, i + 1)) < 0)
            return DX_EINVAL;
        *n = 1 + a + (b[i] == ERL_PID_EXT ? 9 : 12);
        break;
    case ERL_REFERENCE_EXT:
        if ((a = atom_len(b, len, i + 1)) < 0)
            return DX_EINVAL;
        *n = 1 + a + 5;
        break;
    case ERL_NEW_REFERENCE_EXT:
    case ERL_NEWER_REFERENCE_EXT: {
        if (left < 3)
            return DX_EINVAL;
        /* erlang_ref has room for 5 words (BEAM sends 3 to 5). */
        int64_t words = (int64_t)be16(b + i + 1);
        if (words < 1 || words > 5 || (a = atom_len(b, len, i + 3)) < 0)
            return DX_EINVAL;
        *n = 3 + a + (b[i] == ERL_NEW_REFERENCE_EXT ? 1 : 4) + 4 * words;
        break;
    }
    default:
        return DX_ENOTSUP; /* ports, funs, bit strings, ... */
    }
    return *n <= left ? DX_OK : DX_EINVAL;
}

/* Well-formed UTF-8 (RFC 3629: no overlong forms, surrogates or code
 * points past U+10FFFF), which BEAM requires of atoms. erl_interface
 * decodes a UTF-8 atom without looking but will not encode a malformed
 * one, so without this check a term (an atom, or the node of a pid or
 * ref) was accepted that could never be sent back (found by
 * fuzz/fuzz_term_ext.c). */
static bool utf8_ok(const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str);
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i <= k)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k + 1;
    }
    return true;
}

static int dec(const char *buf, int len, int *idx, dx_term **out, int depth);

/* Decode `n` consecutive terms into a new array (dx_malloc'd). */
static int dec_items(const char *buf, int len, int *idx, size_t n,
                     dx_term ***items, int depth)
{
    *items = NULL;
    if (n == 0)
        return DX_OK;
    dx_term **a = dx_calloc(n, sizeof(*a));
    if (a == NULL)
        return DX_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        int rc = dec(buf, len, idx, &a[i], depth + 1);
        if (rc != DX_OK) {
            for (size_t j = 0; j < i; j++)
                dx_term_free(a[j]);
            dx_free(a);
            return rc;
        }
    }
    *items = a;
    return DX_OK;
}

/* An element count read from a header: each element takes a byte at
 * least, so a count beyond the bytes left is a lie (and must not size an
 * allocation). per: elements per count (2 for a map's pairs). */
static bool count_fits(int n, int per, int len, int idx)
{
    return n >= 0 && (int64_t)n * per <= (int64_t)len - idx;
}

static int dec(const char *buf, int len, int *idx, dx_term **out, int depth)
{
    *out = NULL;
    if (depth > MAX_DEPTH)
        return DX_ELIMIT;
    const unsigned char *b = (const unsigned char *)buf;
    int64_t hlen = 0;
    int rc = head_len(b, len, *idx, &hlen);
    if (rc != DX_OK)
        return rc;
    /* Where a leaf ends (a container's header, for the others). */
    const int end = *idx + (int)hlen;
    /* The tag, not ei_get_type's type, which folds some together (a
     * NEW_FLOAT_EXT is an ERL_FLOAT_EXT to it). */
    const int tag = b[*idx];
    bool leaf = true;
    int type = 0, size = 0;
    if (ei_get_type(buf, idx, &type, &size) < 0)
        return DX_EINVAL;
    dx_term *t = NULL;
    switch (tag) {
    case ERL_SMALL_INTEGER_EXT:
    case ERL_INTEGER_EXT:
    case ERL_SMALL_BIG_EXT:
    case ERL_LARGE_BIG_EXT: {
        EI_LONGLONG v;
        if (ei_decode_longlong(buf, idx, &v) < 0)
            return DX_ENOTSUP; /* beyond 64 bits */
        t = dx_int((int64_t)v);
        break;
    }
    case ERL_FLOAT_EXT: {
        /* The old text format, read with sscanf: from a NUL-terminated
         * copy, so the number cannot run on past its 31 bytes. */
        char text[33];
        memcpy(text, buf + *idx, 32);
        text[32] = '\0';
        int j = 0;
        double d;
        if (ei_decode_double(text, &j, &d) < 0 || j != 32)
            return DX_EINVAL;
        *idx += 32;
        t = dx_float(d);
        break;
    }
    case NEW_FLOAT_EXT: {
        double d;
        if (ei_decode_double(buf, idx, &d) < 0)
            return DX_EINVAL;
        t = dx_float(d);
        break;
    }
    case ERL_ATOM_EXT:
    case ERL_SMALL_ATOM_EXT:
    case ERL_ATOM_UTF8_EXT:
    case ERL_SMALL_ATOM_UTF8_EXT: {
        /* A NUL would cut the name short (a different atom), and a dx
         * atom holds 255 bytes where a UTF-8 one may need 1020. */
        int at =
            *idx + (tag == ERL_ATOM_EXT || tag == ERL_ATOM_UTF8_EXT ? 3 : 2);
        if (memchr(buf + at, '\0', (size_t)(end - at)) != NULL)
            return DX_ENOTSUP;
        char a[MAXATOMLEN_UTF8];
        if (ei_decode_atom_as(buf, idx, a, sizeof a, ERLANG_UTF8, NULL, NULL) <
                0 ||
            !utf8_ok(a))
            return DX_EINVAL;
        if (strlen(a) > DX_ATOM_MAX_LEN)
            return DX_ENOTSUP;
        t = dx_atom(a);
        break;
    }
    case ERL_BINARY_EXT: {
        char *data = dx_malloc((size_t)size + 1);
        if (data == NULL)
            return DX_ENOMEM;
        long blen = 0;
        if (ei_decode_binary(buf, idx, data, &blen) < 0) {
            dx_free(data);
            return DX_EINVAL;
        }
        t = dx_binary(data, (size_t)blen);
        dx_free(data);
        break;
    }
    case ERL_STRING_EXT: {
        /* A list of bytes sent compactly: back to a list of integers,
         * which sit one level deeper than the list (as the encoder counts
         * them). */
        if (size > 0 && depth >= MAX_DEPTH)
            return DX_ELIMIT;
        char *s = dx_malloc((size_t)size + 1);
        if (s == NULL)
            return DX_ENOMEM;
        if (ei_decode_string(buf, idx, s) < 0) {
            dx_free(s);
            return DX_EINVAL;
        }
        t = dx_nil();
        for (int i = 0; t != NULL && i < size; i++) {
            if (dx_list_append(t, dx_int((unsigned char)s[i])) != DX_OK) {
                dx_term_free(t);
                t = NULL;
            }
        }
        dx_free(s);
        break;
    }
    case ERL_NIL_EXT:
    case ERL_LIST_EXT: {
        int n = 0;
        if (ei_decode_list_header(buf, idx, &n) < 0 || *idx != end ||
            !count_fits(n, 1, len, *idx))
            return DX_EINVAL;
        leaf = false;
        dx_term **items;
        rc = dec_items(buf, len, idx, (size_t)n, &items, depth);
        if (rc != DX_OK)
            return rc;
        if (n > 0) {
            if (*idx >= len)
                rc = DX_EINVAL; /* the tail is missing */
            else if (b[*idx] != ERL_NIL_EXT)
                rc = DX_ENOTSUP; /* improper list */
            else
                *idx += 1;
            if (rc != DX_OK) {
                for (int i = 0; i < n; i++)
                    dx_term_free(items[i]);
                dx_free(items);
                return rc;
            }
        }
        t = dx_listv((size_t)n, items);
        dx_free(items);
        break;
    }
    case ERL_SMALL_TUPLE_EXT:
    case ERL_LARGE_TUPLE_EXT: {
        int n = 0;
        if (ei_decode_tuple_header(buf, idx, &n) < 0 || *idx != end ||
            !count_fits(n, 1, len, *idx))
            return DX_EINVAL;
        leaf = false;
        dx_term **items;
        rc = dec_items(buf, len, idx, (size_t)n, &items, depth);
        if (rc != DX_OK)
            return rc;
        t = dx_tuplev((size_t)n, items);
        dx_free(items);
        break;
    }
    case ERL_MAP_EXT: {
        int n = 0;
        if (ei_decode_map_header(buf, idx, &n) < 0 || *idx != end ||
            !count_fits(n, 2, len, *idx))
            return DX_EINVAL;
        leaf = false;
        dx_term **items;
        rc = dec_items(buf, len, idx, (size_t)n * 2, &items, depth);
        if (rc != DX_OK)
            return rc;
        t = dx_map_new();
        for (int i = 0; i < n; i++) {
            if (t != NULL) {
                if (dx_map_put(t, items[2 * i], items[2 * i + 1]) != DX_OK) {
                    dx_term_free(t);
                    t = NULL;
                }
            } else {
                dx_term_free(items[2 * i]);
                dx_term_free(items[2 * i + 1]);
            }
        }
        dx_free(items);
        break;
    }
    case ERL_PID_EXT:
    case ERL_NEW_PID_EXT: {
        erlang_pid ep;
        if (ei_decode_pid(buf, idx, &ep) < 0 || *idx != end ||
            !utf8_ok(ep.node))
            return DX_EINVAL;
        dx_pid pid;
        rc = dx__dist_pid_in(&ep, &pid);
        if (rc != DX_OK)
            return rc;
        t = dx_pid_term(pid);
        break;
    }
    case ERL_REFERENCE_EXT:
    case ERL_NEW_REFERENCE_EXT:
    case ERL_NEWER_REFERENCE_EXT: {
        erlang_ref er;
        /* The index check also catches a decoder that reads fewer words
         * than the count says (the ref table compares er.len of them). */
        if (ei_decode_ref(buf, idx, &er) < 0 || *idx != end || er.len < 1 ||
            er.len > 5 || !utf8_ok(er.node))
            return DX_EINVAL;
        dx_ref ref;
        rc = dx__dist_ref_in(&er, &ref);
        if (rc != DX_OK)
            return rc;
        t = dx_ref_term(ref);
        break;
    }
    default:
        return DX_ENOTSUP; /* not reached: head_len refused it */
    }
    if (t == NULL)
        return DX_ENOMEM;
    if (leaf && *idx != end) {
        dx_term_free(t);
        return DX_EINVAL;
    }
    *out = t;
    return DX_OK;
}

int dx__ext_decode(const char *buf, int len, int *idx, dx_term **out)
{
    *out = NULL;
    if (buf == NULL || len < 0 || *idx < 0 || *idx > len)
        return DX_EINVAL;
    return dec(buf, len, idx, out, 0);
}

/* Walk the term at buf[*idx] without building it: every header and leaf
 * must end before len. Iterative (a count of terms still to visit), so
 * nesting costs nothing and needs no limit here. */
int dx__ext_check(const char *buf, int len, int *idx)
{
    if (buf == NULL || len < 0 || *idx < 0 || *idx > len)
        return DX_EINVAL;
    const unsigned char *b = (const unsigned char *)buf;
    int64_t i = *idx, pending = 1;
    while (pending > 0) {
        int64_t n;
        int rc = head_len(b, len, i, &n);
        if (rc != DX_OK)
            return rc;
        int64_t inner = 0;
        switch (b[i]) {
        case ERL_SMALL_TUPLE_EXT:
            inner = b[i + 1];
            break;
        case ERL_LARGE_TUPLE_EXT:
            inner = be32(b + i + 1);
            break;
        case ERL_LIST_EXT:
            /* The elements, then the tail; a header of no elements (BEAM
             * never sends one) has none, as the decoder reads it. */
            inner = (int64_t)be32(b + i + 1);
            inner += inner > 0;
            break;
        case ERL_MAP_EXT:
            inner = 2 * (int64_t)be32(b + i + 1);
            break;
        default:
            break;
        }
        i += n;
        pending += inner - 1;
        /* Each term still to visit takes a byte at least. */
        if (pending > len - i)
            return DX_EINVAL;
    }
    *idx = (int)i;
    return DX_OK;
}
