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

/* Decode `n` consecutive terms into a new array (dx_malloc'd). */
static int dec(const char *buf, int *idx, dx_term **out, int depth);

static int dec_items(const char *buf, int *idx, size_t n, dx_term ***items,
                     int depth)
{
    *items = NULL;
    if (n == 0)
        return DX_OK;
    dx_term **a = dx_calloc(n, sizeof(*a));
    if (a == NULL)
        return DX_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        int rc = dec(buf, idx, &a[i], depth + 1);
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

static int dec(const char *buf, int *idx, dx_term **out, int depth)
{
    *out = NULL;
    if (depth > MAX_DEPTH)
        return DX_ELIMIT;
    int type = 0, size = 0;
    if (ei_get_type(buf, idx, &type, &size) < 0)
        return DX_EINVAL;
    dx_term *t = NULL;
    switch (type) {
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
    case ERL_FLOAT_EXT:
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
        char a[MAXATOMLEN_UTF8];
        if (ei_decode_atom_as(buf, idx, a, sizeof a, ERLANG_UTF8, NULL, NULL) <
            0)
            return DX_EINVAL;
        t = dx_atom(a);
        break;
    }
    case ERL_BINARY_EXT: {
        char *data = dx_malloc((size_t)size + 1);
        if (data == NULL)
            return DX_ENOMEM;
        long len = 0;
        if (ei_decode_binary(buf, idx, data, &len) < 0) {
            dx_free(data);
            return DX_EINVAL;
        }
        t = dx_binary(data, (size_t)len);
        dx_free(data);
        break;
    }
    case ERL_STRING_EXT: {
        /* A list of bytes sent compactly: back to a list of integers. */
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
        if (ei_decode_list_header(buf, idx, &n) < 0)
            return DX_EINVAL;
        dx_term **items;
        int rc = dec_items(buf, idx, (size_t)n, &items, depth);
        if (rc != DX_OK)
            return rc;
        if (n > 0) {
            int tt = 0, ts = 0;
            if (ei_get_type(buf, idx, &tt, &ts) < 0 || tt != ERL_NIL_EXT) {
                rc = DX_ENOTSUP; /* improper list */
            } else {
                int z = 0;
                ei_decode_list_header(buf, idx, &z);
            }
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
        if (ei_decode_tuple_header(buf, idx, &n) < 0)
            return DX_EINVAL;
        dx_term **items;
        int rc = dec_items(buf, idx, (size_t)n, &items, depth);
        if (rc != DX_OK)
            return rc;
        t = dx_tuplev((size_t)n, items);
        dx_free(items);
        break;
    }
    case ERL_MAP_EXT: {
        int n = 0;
        if (ei_decode_map_header(buf, idx, &n) < 0)
            return DX_EINVAL;
        dx_term **items;
        int rc = dec_items(buf, idx, (size_t)n * 2, &items, depth);
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
        if (ei_decode_pid(buf, idx, &ep) < 0)
            return DX_EINVAL;
        dx_pid pid;
        int rc = dx__dist_pid_in(&ep, &pid);
        if (rc != DX_OK)
            return rc;
        t = dx_pid_term(pid);
        break;
    }
    case ERL_REFERENCE_EXT:
    case ERL_NEW_REFERENCE_EXT:
    case ERL_NEWER_REFERENCE_EXT: {
        erlang_ref er;
        if (ei_decode_ref(buf, idx, &er) < 0)
            return DX_EINVAL;
        dx_ref ref;
        int rc = dx__dist_ref_in(&er, &ref);
        if (rc != DX_OK)
            return rc;
        t = dx_ref_term(ref);
        break;
    }
    default:
        return DX_ENOTSUP; /* ports, funs, bit strings */
    }
    if (t == NULL)
        return DX_ENOMEM;
    *out = t;
    return DX_OK;
}

int dx__ext_decode(const char *buf, int *idx, dx_term **out)
{
    return dec(buf, idx, out, 0);
}
