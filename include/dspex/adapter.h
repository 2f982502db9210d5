/*
 * adapter.h — from a signature, demos and inputs to LM messages, and from
 * the LM's answer back to typed outputs.
 *
 * Two adapters, both producing Python DSPy 3.3's messages byte for byte:
 *
 * ChatAdapter — a system message describing the input and output fields
 * (`1. \`question\` (str): desc`), their structure with `[[ ## name ## ]]`
 * section markers and the `[[ ## completed ## ]]` marker, and the
 * objective (the instructions); demos as user/assistant turns (incomplete
 * demos first, with DSPy's "This is an example of the task, though some
 * input or output fields are not supplied." prefix); the final user message
 * with the inputs and the reminder of the output order. Parsing splits the
 * answer at lines that start with a section marker, keeps the first
 * occurrence of each output field, ignores unknown sections and the text
 * before the first marker, tolerates a missing completed marker, extra
 * whitespace and fields in any order, and converts each field to its type.
 *
 * JSONAdapter — the same field description, an input structure and a JSON
 * skeleton of the outputs; asks the provider for structured output (a
 * strict JSON schema of the outputs) when every output has a closed type,
 * JSON-object mode otherwise; parses with repair of common breakage (code
 * fences, trailing text, Python literals).
 *
 * Values are rendered as DSPy renders them: strings as-is, a list given to
 * a str field as a numbered «» list, lists and objects as
 * json.dumps(ensure_ascii=False), other scalars as Python's str(). Typed
 * outputs are converted and validated: an int field that says "forty-two"
 * is DX_ETYPE with a message naming the field and the value.
 *
 * The system message depends only on (adapter, signature) and is rendered
 * once per signature (dx_signature_cached).
 *
 * Threads: every function is reentrant; signatures and examples are only
 * read.
 */
#ifndef DSPEX_ADAPTER_H
#define DSPEX_ADAPTER_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "diag.h"
#include "example.h"
#include "export.h"
#include "provider.h"
#include "signature.h"

typedef enum dx_adapter_kind {
    DX_ADAPTER_CHAT,
    DX_ADAPTER_JSON,
} dx_adapter_kind;

/* "ChatAdapter" / "JSONAdapter". */
DX_API const char *dx_adapter_name(dx_adapter_kind kind);

/* The system message for s (cached with s; valid while s lives). NULL on
 * OOM or an unknown kind. */
DX_API const char *dx_adapter_system_message(dx_adapter_kind kind,
                                             const dx_signature *s);

/* Append the whole conversation to req: system message, demos, the final
 * user message built from inputs (only the signature's inputs that inputs
 * has are shown, in signature order). demos may be NULL when n_demos is 0.
 * The JSON adapter also sets req's response format (a strict schema, or
 * JSON-object mode when an output is an open dict or Any). DX_OK,
 * DX_ENOMEM, DX_EINVAL. */
DX_API int dx_adapter_format(dx_adapter_kind kind, const dx_signature *s,
                             const dx_example *const *demos, size_t n_demos,
                             const dx_example *inputs, dx_lm_request *req,
                             dx_diag *diag);

/* The user / assistant message contents alone (*out the caller's,
 * dx_free). main_request adds the output reminder. missing: text for an
 * output the example lacks (NULL: rendered as "None", as DSPy does). */
DX_API int dx_adapter_user_content(dx_adapter_kind kind, const dx_signature *s,
                                   const dx_example *values, const char *prefix,
                                   bool main_request, char **out);
DX_API int dx_adapter_assistant_content(dx_adapter_kind kind,
                                        const dx_signature *s,
                                        const dx_example *values,
                                        const char *missing, char **out);

/* Parse one completion into a new example holding every output field, in
 * signature order, converted to its type. Missing optional outputs (an
 * Optional type or a default) take None / the default.
 *   DX_EPARSE: a required output is missing or the text is empty / not a
 *     JSON object (JSON adapter); diag names the adapter and the fields
 *     expected and found.
 *   DX_ETYPE: a value does not convert; diag names the field and value.
 *   DX_ENOMEM, DX_EINVAL. */
DX_API int dx_adapter_parse(dx_adapter_kind kind, const dx_signature *s,
                            const char *text, size_t len, dx_example **out,
                            dx_diag *diag);

/* Convert the text of one field to its type (DSPy's parse_value): str
 * as-is; Literal tolerant of quotes and Literal[...] wrappers; the rest
 * through repaired JSON / Python literals, then validated (int accepts
 * 42, "42", 42.0; bool accepts true/True/yes/1...). *out is a new cJSON
 * value (cJSON_Delete). DX_ETYPE with diag naming the field. */
DX_API int dx_adapter_parse_value(const dx_field *f, const char *text,
                                  size_t len, cJSON **out, dx_diag *diag);

/* Render one value as DSPy's format_field_value for field f. */
DX_API int dx_adapter_format_value(const dx_field *f, const cJSON *value,
                                   char **out);

/* ---- streaming an answer (DSPy's StreamListener) -----------------------
 *
 * An incremental reader of an answer as it arrives: fed the text in any
 * chunking, it calls fn(field, text, len) with each piece of an output
 * field's text, never a section marker. ChatAdapter: a section starts at a
 * line whose stripped text begins with `[[ ## name ## ]]` (as
 * dx_adapter_parse reads it); the pieces of a field add up to the text
 * dx_adapter_parse gives that field before type conversion (leading and
 * trailing whitespace dropped: whitespace is held back until text follows
 * it), only the first section of each output field is streamed, and text
 * of unknown sections, of the completed marker and before the first
 * marker is dropped. A line that may still become a marker is held back
 * until it is decided (a newline, or text no marker can continue).
 * JSONAdapter: the string value of each top-level output field streams
 * as it is decoded (its pieces add up to the parsed string); values that
 * are not strings, nested objects and text before the first '{' give no
 * pieces; an answer it cannot follow (single quotes, say) stops streaming
 * there, and a key repeated later streams only its first value (the parse
 * keeps the last). fn runs in the feeding
 * thread, inside feed and finish; field is borrowed for the call (the
 * signature's name). */
typedef void (*dx_adapter_chunk_fn)(const char *field, const char *text,
                                    size_t len, void *ud);

typedef struct dx_adapter_stream dx_adapter_stream;

/* s must outlive the reader. DX_OK: *out is the caller's
 * (dx_adapter_stream_free). DX_EINVAL (NULL s, fn or out, unknown kind),
 * DX_ENOMEM. */
DX_API int dx_adapter_stream_new(dx_adapter_kind kind, const dx_signature *s,
                                 dx_adapter_chunk_fn fn, void *ud,
                                 dx_adapter_stream **out);
/* Feed the next len bytes of the answer. DX_OK, DX_ENOMEM (sticky: later
 * calls return it and fn is not called again). */
DX_API int dx_adapter_stream_feed(dx_adapter_stream *st, const char *text,
                                  size_t len);
/* The answer is complete: decide a last line still held back. DX_OK,
 * DX_ENOMEM. */
DX_API int dx_adapter_stream_finish(dx_adapter_stream *st);
/* NULL is a no-op. */
DX_API void dx_adapter_stream_free(dx_adapter_stream *st);

#endif
