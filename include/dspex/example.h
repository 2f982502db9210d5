/*
 * example.h — examples (one record of a dataset or a demo) and datasets.
 *
 * An example is an ordered key → value record whose values are JSON (a
 * string, a number, a bool, null, a list or an object), with an optional
 * designation of which keys are inputs; the other keys are labels. This is
 * DSPy's Example: `with_inputs`, `inputs()`, `labels()`, `copy`, `without`,
 * `get(key, default)`, equality of the stores. Keys keep their insertion
 * order (setting an existing key replaces its value in place).
 *
 * Values are held as cJSON trees owned by the example. Readers get borrowed
 * `const cJSON *` pointers that stay valid until the key is set again or
 * removed, or the example is freed. Values come in as JSON text, as C
 * strings/numbers/bools, or as a borrowed cJSON tree that is deep-copied:
 * ownership of a cJSON tree never crosses the API (cJSON allocates through
 * dspex's allocator hooks, which the caller's trees may not use).
 *
 * A dataset is an array of examples loaded from JSONL (one object per line)
 * or a JSON array of objects. A malformed line is an error that names the
 * file, the line and the column; nothing is loaded half-way.
 *
 * Threads: an example has one owner while it changes; an example no longer
 * changed may be read from any number of threads and processes.
 */
#ifndef DSPEX_EXAMPLE_H
#define DSPEX_EXAMPLE_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diag.h"
#include "export.h"

typedef struct dx_example dx_example;

/* ---- lifetime --------------------------------------------------------- */

/* A new empty example (no input designation). NULL on OOM. */
DX_API dx_example *dx_example_new(void);
DX_API void dx_example_free(dx_example *ex);
/* Deep copy, input designation included. NULL on OOM (or NULL ex). */
DX_API dx_example *dx_example_copy(const dx_example *ex);

/* Parse a JSON object text ("{...}") into a new example, keys in text
 * order. DX_OK; DX_ESYNTAX (not JSON, or not an object: diag says where);
 * DX_ENOMEM; DX_EINVAL (NULL arguments). */
DX_API int dx_example_from_json(const char *json, size_t len, dx_example **out,
                                dx_diag *diag);
/* The example as a compact JSON object text ({"k":v,...}, keys in order,
 * input designation not included). *out is the caller's (dx_free). DX_OK,
 * DX_ENOMEM, DX_EINVAL. */
DX_API int dx_example_to_json(const dx_example *ex, char **out);

/* ---- values ----------------------------------------------------------- */

/* Set key to a value. Returns DX_OK, DX_EINVAL (NULL/empty key, NULL
 * value), DX_ESYNTAX (set_json: not JSON; diag says where), DX_ENOMEM. On
 * failure the example is unchanged. */
DX_API int dx_example_set_str(dx_example *ex, const char *key,
                              const char *value);
DX_API int dx_example_set_int(dx_example *ex, const char *key, int64_t value);
DX_API int dx_example_set_float(dx_example *ex, const char *key, double value);
DX_API int dx_example_set_bool(dx_example *ex, const char *key, bool value);
DX_API int dx_example_set_null(dx_example *ex, const char *key);
DX_API int dx_example_set_json(dx_example *ex, const char *key,
                               const char *json, dx_diag *diag);
/* Deep copy of value. */
DX_API int dx_example_set_value(dx_example *ex, const char *key,
                                const cJSON *value);

/* The value of key, or NULL when absent. Borrowed (see top of file). */
DX_API const cJSON *dx_example_get(const dx_example *ex, const char *key);
/* The string value of key; dflt when absent or not a string. */
DX_API const char *dx_example_get_str(const dx_example *ex, const char *key,
                                      const char *dflt);
/* The numeric value of key (a JSON number, or a bool as 0/1); dflt when
 * absent or of another type. */
DX_API double dx_example_get_num(const dx_example *ex, const char *key,
                                 double dflt);
DX_API bool dx_example_has(const dx_example *ex, const char *key);
/* Remove key. DX_OK or DX_ENOENT. The key also leaves the inputs. */
DX_API int dx_example_remove(dx_example *ex, const char *key);

/* Keys in order: count, then the i-th key and value (NULL past the end). */
DX_API size_t dx_example_len(const dx_example *ex);
DX_API const char *dx_example_key(const dx_example *ex, size_t i);
DX_API const cJSON *dx_example_value(const dx_example *ex, size_t i);

/* Equal stores: the same keys with equal values (order of keys and the
 * input designation do not matter, as for DSPy's ==). Numbers compare by
 * value. */
DX_API bool dx_example_equal(const dx_example *a, const dx_example *b);

/* ---- inputs and labels ------------------------------------------------ */

/* Designate keys as the inputs (replacing any earlier designation). Keys
 * need not be present yet. DX_OK, DX_EINVAL, DX_ENOMEM. */
DX_API int dx_example_with_inputs(dx_example *ex, const char *const *keys,
                                  size_t n);
/* Has an input designation been made? */
DX_API bool dx_example_has_inputs(const dx_example *ex);
DX_API bool dx_example_is_input(const dx_example *ex, const char *key);
/* A new example holding only the input keys (in the example's order), or
 * only the others. DX_OK; DX_ESTATE when no inputs were designated
 * (inputs() only; diag says so); DX_ENOMEM. The result keeps the input
 * designation. */
DX_API int dx_example_inputs(const dx_example *ex, dx_example **out,
                             dx_diag *diag);
DX_API int dx_example_labels(const dx_example *ex, dx_example **out);
/* A copy without the given keys. NULL on OOM. */
DX_API dx_example *dx_example_without(const dx_example *ex,
                                      const char *const *keys, size_t n);

/* ---- datasets --------------------------------------------------------- */

typedef struct dx_dataset {
    dx_example **items;
    size_t n;
} dx_dataset;

/* Load a dataset file: JSONL (one object per non-blank line) or, when the
 * first non-blank byte is '[', a JSON array of objects; or, when the file
 * name ends in ".csv" (any case), CSV as RFC 4180 writes it: the first
 * record is a header naming the columns (non-empty, unique); every later
 * record has exactly as many fields and becomes an example whose values
 * are strings (as Python's csv.DictReader gives them), keys in column
 * order. Fields are separated by ',', records by CRLF or LF; a field in
 * double quotes may hold commas, line breaks and "" for a quote; empty
 * lines are skipped. CSV errors are DX_ESYNTAX with diag
 * `file:line:column: what` (a quote inside an unquoted field, text after
 * a closing quote, a quoted field never closed, a record with another
 * field count than the header, an empty or repeated column name, a NUL
 * byte). input_keys (may be
 * NULL/0) are designated as the inputs of every example. DX_OK with *out
 * the caller's (dx_dataset_free); DX_EIO (cannot read: diag names the file
 * and errno text); DX_ESYNTAX (diag: `path:line: what at column c`);
 * DX_ENOMEM; DX_EINVAL. */
DX_API int dx_dataset_load(const char *path, const char *const *input_keys,
                           size_t n_inputs, dx_dataset **out, dx_diag *diag);
/* The same from text in memory; name is used in messages and, by its
 * ".csv" ending, picks CSV. */
DX_API int dx_dataset_parse(const char *text, size_t len, const char *name,
                            const char *const *input_keys, size_t n_inputs,
                            dx_dataset **out, dx_diag *diag);
/* Write one compact JSON object per line (written to a temporary file,
 * then renamed over path). DX_OK, DX_EIO, DX_ENOMEM, DX_EINVAL. */
DX_API int dx_dataset_save_jsonl(const dx_dataset *ds, const char *path,
                                 dx_diag *diag);
/* An empty dataset (NULL on OOM); append takes ownership of ex (also on
 * failure, when it is freed). DX_OK, DX_ENOMEM, DX_EINVAL. */
DX_API dx_dataset *dx_dataset_new(void);
DX_API int dx_dataset_append(dx_dataset *ds, dx_example *ex);
DX_API void dx_dataset_free(dx_dataset *ds);

#endif
