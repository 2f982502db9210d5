/*
 * term.h — structured message payloads that map onto Erlang's term model.
 *
 * A dx_term is an immutable-by-convention tree of atoms, integers, floats,
 * binaries, lists, tuples, maps, pids and refs. Terms are what crosses process
 * boundaries when a payload must be printable, comparable or (later) encoded
 * in the Erlang external term format for distribution.
 *
 * Representation: atoms and 61-bit signed integers (-2^60 .. 2^60-1) are
 * immediates (the pointer value itself carries them; copying or freeing
 * them costs nothing).
 * Everything else is one heap node allocated with dx_malloc. Lists are
 * proper lists stored as arrays; maps keep insertion order and unique keys.
 *
 * Ownership: constructors that take child terms take ownership of them, on
 * success and on failure. A constructor given a NULL child returns NULL after
 * freeing the other children, so nested construction composes:
 *     dx_term *t = dx_tuple(2, dx_atom("ok"), dx_int(42));   // NULL on OOM
 * Accessors return borrowed pointers that live as long as the parent.
 * dx_term_free(NULL) is a no-op. Terms are not thread-safe; a term belongs to
 * one process at a time and moves with the message that carries it.
 */
#ifndef DSPEX_TERM_H
#define DSPEX_TERM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "export.h"

/* A process identifier: a value handle, safe to keep after the process died
 * (sending to it then fails with DX_ENOPROC). Zero is "no process". */
typedef struct dx_pid {
    uint64_t id;
} dx_pid;

/* A unique reference (monitors, calls, timers). Zero is "no reference". */
typedef struct dx_ref {
    uint64_t id;
} dx_ref;

#define DX_NOPID ((dx_pid){0})
#define DX_NOREF ((dx_ref){0})

static inline bool dx_pid_eq(dx_pid a, dx_pid b)
{
    return a.id == b.id;
}

static inline bool dx_pid_is_none(dx_pid a)
{
    return a.id == 0;
}

static inline bool dx_ref_eq(dx_ref a, dx_ref b)
{
    return a.id == b.id;
}

typedef struct dx_term dx_term;

typedef enum dx_term_type {
    DX_TERM_INVALID = 0, /* NULL */
    DX_TERM_ATOM,
    DX_TERM_INT,
    DX_TERM_FLOAT,
    DX_TERM_BINARY,
    DX_TERM_LIST,
    DX_TERM_TUPLE,
    DX_TERM_MAP,
    DX_TERM_PID,
    DX_TERM_REF,
} dx_term_type;

/* Longest atom name in bytes (Erlang's limit is 255 characters). */
#define DX_ATOM_MAX_LEN 255

/* ---- construction ---- */

/* Intern an atom. Atoms live for the life of the OS process (like Erlang's
 * atom table). NULL if name is NULL, longer than DX_ATOM_MAX_LEN, on OOM,
 * or when the table is full (1,048,576 atoms, Erlang's default). Any
 * thread. */
DX_API dx_term *dx_atom(const char *name);
DX_API dx_term *dx_atom_n(const char *name, size_t len);
DX_API dx_term *dx_int(int64_t v);
DX_API dx_term *dx_float(double v);
/* Binary holding a copy of data[0..len). data may be NULL when len is 0. */
DX_API dx_term *dx_binary(const void *data, size_t len);
/* Binary holding a copy of a NUL-terminated string (without the NUL). */
DX_API dx_term *dx_str(const char *s);
DX_API dx_term *dx_pid_term(dx_pid pid);
DX_API dx_term *dx_ref_term(dx_ref ref);
/* Tuple / list of n items given as varargs (dx_term *), taking ownership. */
DX_API dx_term *dx_tuple(size_t n, ...);
DX_API dx_term *dx_list(size_t n, ...);
/* Same, from an array; takes ownership of the items, not of the array. */
DX_API dx_term *dx_tuplev(size_t n, dx_term *const *items);
DX_API dx_term *dx_listv(size_t n, dx_term *const *items);
/* The empty list. */
DX_API dx_term *dx_nil(void);
/* Append item to a list, taking ownership of item. DX_EINVAL if list is not
 * a list or item is NULL (item is freed), DX_ENOMEM (item is freed). */
DX_API int dx_list_append(dx_term *list, dx_term *item);
DX_API dx_term *dx_map_new(void);
/* Put key => value into map, replacing (and freeing) an equal key's old
 * value. Takes ownership of key and value in every case. DX_EINVAL if map is
 * not a map or key/value is NULL; DX_ENOMEM. */
DX_API int dx_map_put(dx_term *map, dx_term *key, dx_term *value);

/* ---- inspection ---- */

DX_API dx_term_type dx_term_type_of(const dx_term *t);
DX_API const char *dx_term_type_name(dx_term_type type);
/* Atom name (static, lives forever), or NULL if t is not an atom. */
DX_API const char *dx_atom_name(const dx_term *t);
/* True when t is the atom `name`. */
DX_API bool dx_is_atom(const dx_term *t, const char *name);
/* Value getters: true and *out set when t has that type, else false. */
DX_API bool dx_int_value(const dx_term *t, int64_t *out);
DX_API bool dx_float_value(const dx_term *t, double *out);
DX_API bool dx_pid_value(const dx_term *t, dx_pid *out);
DX_API bool dx_ref_value(const dx_term *t, dx_ref *out);
/* Binary bytes (borrowed) and length; NULL if t is not a binary. The bytes
 * are followed by a NUL that is not counted, so text binaries can be used as
 * C strings. */
DX_API const char *dx_binary_data(const dx_term *t, size_t *len);
/* Arity of a tuple, length of a list, number of pairs in a map; 0 otherwise. */
DX_API size_t dx_term_size(const dx_term *t);
/* Element i of a tuple or list (borrowed); NULL if out of range or wrong type. */
DX_API const dx_term *dx_term_at(const dx_term *t, size_t i);
/* i-th key / value of a map in insertion order (borrowed). */
DX_API const dx_term *dx_map_key_at(const dx_term *map, size_t i);
DX_API const dx_term *dx_map_value_at(const dx_term *map, size_t i);
/* Value for a key equal to `key` (borrowed), NULL if absent. */
DX_API const dx_term *dx_map_get(const dx_term *map, const dx_term *key);
/* Value for an atom or binary key spelled `key` (atom tried first). */
DX_API const dx_term *dx_map_get_str(const dx_term *map, const char *key);

/* ---- whole-term operations ---- */

/* Deep copy; NULL on OOM (or when t is NULL). Immediates copy for free. */
DX_API dx_term *dx_term_copy(const dx_term *t);
DX_API void dx_term_free(dx_term *t);
/* Structural equality (1 and 1.0 are not equal, as with Erlang's =:=). */
DX_API bool dx_term_equal(const dx_term *a, const dx_term *b);
/* Erlang's standard term order: number < atom < ref < pid < tuple < map <
 * list < binary; returns <0, 0, >0. NULL sorts first. */
DX_API int dx_term_compare(const dx_term *a, const dx_term *b);
/* Print in Erlang syntax ({ok,42}, <<"text">>, #{a => 1}, <0.12.3>, ...).
 * NULL prints as <invalid>; non-finite floats as nan, inf and -inf (not
 * Erlang syntax: Erlang has no such floats). Writes at most cap bytes
 * including the NUL (truncating like snprintf) and returns the length the
 * full text needs. */
DX_API size_t dx_term_format(const dx_term *t, char *buf, size_t cap);
/* Same, into a new string (dx_free it); NULL on OOM. */
DX_API char *dx_term_to_string(const dx_term *t);

#endif
