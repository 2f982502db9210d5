/*
 * signature.h — what goes into and out of one LM step.
 *
 * A signature is an ordered list of input fields, an ordered list of output
 * fields and the instructions. It is written the way Python DSPy writes it,
 *
 *     "context: list[str], question -> answer, confidence: float"
 *
 * or built in C field by field. Each field has a name, a type, a
 * description ("desc"; DSPy's default is "${name}", which prompts leave
 * out), a prefix (default: the name in title case plus ":", as DSPy's
 * infer_prefix makes it), an optional constraints text and, for inputs, an
 * optional default value; an untyped field is a str marked
 * type_undefined. Instructions default to DSPy's "Given the fields `a`,
 * `b`, produce the fields `c`.".
 *
 * Types are the ones a DSPy string signature names: str, int, float, bool,
 * list[T], dict / dict[K, V], Literal[...] choices, Optional[T] /
 * Union[T, None] / T | None, Any (typing names List/Dict too), and named JSON
 * object types with a JSON schema (DSPy's pydantic models) given through a
 * dx_custom_type table. A type renders exactly as DSPy names it in prompts
 * ("list[str]", "Literal['a', 'b']", "Union[str, NoneType]").
 *
 * Signatures are immutable and reference counted: every "change"
 * (prepend, append, insert, delete, with_instructions, ...) returns a new
 * signature and leaves the old one as it was, as in DSPy. Sharing one
 * between processes is a dx_signature_ref. Renderings that depend only on
 * the signature (an adapter's system message) are computed once per
 * signature and kept with it (thread-safe, published atomically).
 *
 * Errors point at the offending character or field:
 *   signature: expected "->" at column 17
 *   signature: field "answer" is both an input and an output
 *   signature: unknown type "lst" at column 12
 */
#ifndef DSPEX_SIGNATURE_H
#define DSPEX_SIGNATURE_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#include "diag.h"
#include "export.h"

/* ---- types ------------------------------------------------------------ */

typedef enum dx_type_kind {
    DX_TYPE_STR,
    DX_TYPE_INT,
    DX_TYPE_FLOAT,
    DX_TYPE_BOOL,
    DX_TYPE_ANY,      /* typing.Any */
    DX_TYPE_LIST,     /* list[args[0]]; bare `list`: n_args 0 */
    DX_TYPE_DICT,     /* dict[args[0], args[1]]; bare `dict`: n_args 0 */
    DX_TYPE_LITERAL,  /* Literal[...]: choices */
    DX_TYPE_OPTIONAL, /* args[0] or None */
    DX_TYPE_OBJECT,   /* a named JSON object type with a schema */
} dx_type_kind;

/* A type tree. Immutable once made; owned by the field that holds it. */
typedef struct dx_type dx_type;
struct dx_type {
    dx_type_kind kind;
    dx_type **args; /* LIST: 1 or 0; DICT: 2 or 0; OPTIONAL: 1 */
    size_t n_args;
    /* LITERAL: the choices as JSON values (strings, numbers, bools) in an
     * array, in the order written. */
    cJSON *choices;
    /* OBJECT: the type's name (as it appears in prompts) and its JSON
     * schema (an object). */
    char *name;
    cJSON *schema;
    /* OPTIONAL made like DSPy's class-based `T | None` annotation (DSPy
     * then names it "UnionType[...]"). Set by C code only: DSPy's string
     * parser turns `T | None` into typing's Union, so dx_type_parse never
     * sets it. */
    bool pep604;
    /* OPTIONAL written with None first (Union[None, T], None | T): DSPy
     * names it in the written order, "Union[NoneType, T]". */
    bool none_first;
    /* bare LIST / DICT written as typing's List / Dict: DSPy names these
     * "list[]" / "dict[]" (builtin bare list / dict: "list" / "dict"). */
    bool typing_bare;
};

/* A named JSON object type the string form may refer to (DSPy's
 * custom_types): the schema is a JSON object text, e.g. pydantic's
 * model_json_schema() of the model. */
typedef struct dx_custom_type {
    const char *name;
    const char *schema_json;
} dx_custom_type;

/* Parse a type expression ("list[str]", "Literal['a', 'b']", a custom type
 * name). DX_OK with *out the caller's (dx_type_free); DX_ESYNTAX (diag
 * column is 1-based within text); DX_ENOMEM. */
DX_API int dx_type_parse(const char *text, const dx_custom_type *customs,
                         size_t n_customs, dx_type **out, dx_diag *diag);
DX_API dx_type *dx_type_copy(const dx_type *t);
DX_API void dx_type_free(dx_type *t);
DX_API bool dx_type_equal(const dx_type *a, const dx_type *b);
/* Simple types made in C (NULL on OOM). */
DX_API dx_type *dx_type_new(dx_type_kind kind);      /* STR INT FLOAT BOOL ANY,
                                                   bare LIST / DICT */
DX_API dx_type *dx_type_list_of(dx_type *item);      /* takes item */
DX_API dx_type *dx_type_optional_of(dx_type *inner); /* takes inner */
/* Literal of the given string choices. */
DX_API dx_type *dx_type_literal(const char *const *choices, size_t n);
/* A named object type; schema_json must be a JSON object text (NULL when
 * it is not, or on OOM). */
DX_API dx_type *dx_type_object(const char *name, const char *schema_json);

/* The type's name as DSPy prints it in prompts (get_annotation_name):
 * "str", "list[str]", "dict[str, int]", "Literal['a', 'b']",
 * "Union[int, NoneType]". *out is the caller's (dx_free). DX_OK/ENOMEM. */
DX_API int dx_type_name(const dx_type *t, char **out);
/* The JSON schema of the type as DSPy puts it in prompts (pydantic's
 * schema with "type" moved first in every object), as compact JSON text
 * with ", " / ": " separators. *out is the caller's. */
DX_API int dx_type_schema(const dx_type *t, char **out);

/* ---- fields ----------------------------------------------------------- */

typedef enum dx_field_role {
    DX_FIELD_INPUT,
    DX_FIELD_OUTPUT,
} dx_field_role;

/* A field as given to the builders (everything copied). NULL desc, prefix
 * or type take the defaults (desc "${name}", inferred prefix, str with
 * type_undefined). default_json: an input's default value (JSON text) used
 * when a call does not give the input; an output's default used when the
 * LM leaves the field out. */
typedef struct dx_field_spec {
    const char *name;
    dx_field_role role;
    const dx_type *type;
    const char *desc;
    const char *prefix;
    const char *constraints;
    const char *default_json;
} dx_field_spec;

/* A field of a signature (read-only view). */
typedef struct dx_field {
    char *name;
    dx_field_role role;
    dx_type *type;
    char *desc;           /* never NULL: "${name}" when not given */
    char *prefix;         /* never NULL */
    char *constraints;    /* NULL when none */
    cJSON *default_value; /* NULL when none */
    bool type_undefined;  /* written without a type: str */
} dx_field;

/* DSPy's infer_prefix: "someAttributeName42IsCool" → "Some Attribute Name
 * 42 Is Cool", "URLAddress" → "URL Address". *out is the caller's. */
DX_API int dx_infer_prefix(const char *name, char **out);

/* ---- signatures ------------------------------------------------------- */

typedef struct dx_signature dx_signature;

/* Parse DSPy's string form; instructions may be NULL for the default.
 * customs (may be NULL) names the object types the text may use.
 * DX_OK with *out holding one reference; DX_ESYNTAX (diag: what and the
 * 1-based column in text, or the field); DX_ENOMEM; DX_EINVAL. */
DX_API int dx_signature_parse(const char *text, const char *instructions,
                              const dx_custom_type *customs, size_t n_customs,
                              dx_signature **out, dx_diag *diag);
/* Build from field specs (inputs and outputs in any interleaving; each
 * group keeps its order). DX_EINVAL with diag for a bad or repeated name. */
DX_API int dx_signature_build(const dx_field_spec *fields, size_t n,
                              const char *instructions, dx_signature **out,
                              dx_diag *diag);

DX_API dx_signature *dx_signature_ref(dx_signature *s);
DX_API void dx_signature_unref(dx_signature *s);

/* Reading. Fields are ordered inputs first, then outputs. */
DX_API const char *dx_signature_instructions(const dx_signature *s);
DX_API size_t dx_signature_n_fields(const dx_signature *s);
DX_API size_t dx_signature_n_inputs(const dx_signature *s);
DX_API size_t dx_signature_n_outputs(const dx_signature *s);
DX_API const dx_field *dx_signature_field(const dx_signature *s, size_t i);
DX_API const dx_field *dx_signature_input(const dx_signature *s, size_t i);
DX_API const dx_field *dx_signature_output(const dx_signature *s, size_t i);
/* By name, or NULL. */
DX_API const dx_field *dx_signature_find(const dx_signature *s,
                                         const char *name);
/* "a, b -> c" (names only, as DSPy's Signature.signature). */
DX_API int dx_signature_string(const dx_signature *s, char **out);

/* New signatures from old ones (the old one is untouched; *out holds one
 * reference). insert: index within the field's role group, negative counts
 * from the end (-1 = last), as DSPy's insert. DX_EINVAL with diag for a
 * name already present or an index out of range. delete of an absent name
 * returns a new reference to an equal signature (no error, as DSPy). */
DX_API int dx_signature_prepend(const dx_signature *s, const dx_field_spec *f,
                                dx_signature **out, dx_diag *diag);
DX_API int dx_signature_append(const dx_signature *s, const dx_field_spec *f,
                               dx_signature **out, dx_diag *diag);
DX_API int dx_signature_insert(const dx_signature *s, long index,
                               const dx_field_spec *f, dx_signature **out,
                               dx_diag *diag);
DX_API int dx_signature_delete(const dx_signature *s, const char *name,
                               dx_signature **out);
DX_API int dx_signature_with_instructions(const dx_signature *s,
                                          const char *instructions,
                                          dx_signature **out);
/* Instructions joined to the old ones by a blank line. */
DX_API int dx_signature_append_instructions(const dx_signature *s,
                                            const char *instructions,
                                            dx_signature **out);
/* Replace a field's desc and/or prefix (NULL = keep). DX_ENOENT. */
DX_API int dx_signature_with_field_text(const dx_signature *s, const char *name,
                                        const char *desc, const char *prefix,
                                        dx_signature **out);
/* An independent copy (equal, not shared). */
DX_API int dx_signature_copy(const dx_signature *s, dx_signature **out);

/* DSPy's equals: same instructions, same field names, and per field the
 * same role, desc, prefix, constraints and type_undefined mark; types are
 * compared too. */
DX_API bool dx_signature_equal(const dx_signature *a, const dx_signature *b);

/* DSPy's dump_state: {"instructions": ..., "fields": [{"prefix": ...,
 * "description": ...}, ...]} in field order, as a new cJSON object
 * (cJSON_Delete it). NULL on OOM. */
DX_API cJSON *dx_signature_dump_state(const dx_signature *s);
/* DSPy's load_state: a new signature with instructions and per-field
 * prefix/description from state, fields matched by position (extra saved
 * fields ignored, missing ones keep their text). DX_ESYNTAX (diag) when
 * state is not of that shape. */
DX_API int dx_signature_load_state(const dx_signature *s, const cJSON *state,
                                   dx_signature **out, dx_diag *diag);

/* Cached per-signature renderings (used by adapters): slot i (< 4) holds a
 * string computed once by make(s, ud) → dx_malloc'd text; later calls
 * return the same pointer, valid while s lives. NULL on OOM. */
#define DX_SIGNATURE_CACHE_SLOTS 4
DX_API const char *
dx_signature_cached(const dx_signature *s, unsigned slot,
                    char *(*make)(const dx_signature *s, void *ud), void *ud);

#endif
