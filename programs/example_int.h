/*
 * example_int.h — what example.c offers the rest of programs/ beyond the
 * public API: storing a value without copying it, for callers (the
 * adapters) that build a value only to store it, and a view of an
 * example's inputs that copies none of them, for Evaluate. Not installed.
 */
#ifndef DSPEX_EXAMPLE_INT_H
#define DSPEX_EXAMPLE_INT_H

#include <cjson/cJSON.h>

#include "dspex/example.h"

/* dx_example_set_value, taking value instead of copying it: value (not in
 * any array or object, its key name ignored) belongs to ex afterwards, or
 * is freed when the call fails. */
int dx__example_set_taking(dx_example *ex, const char *key, cJSON *value);

/* What dx_example_inputs gives, without copying: an example whose entries
 * are ex's inputs themselves (the same keys and values, in ex's order) and
 * whose input designation is ex's. It owns nothing of ex, so ex must
 * outlive it and not change meanwhile; it is read-only (every setter,
 * dx_example_remove and dx_example_with_inputs refuse it with DX_EINVAL).
 * dx_example_free frees it; dx_example_copy of it is an ordinary example.
 * NULL when ex has no input designation or on OOM. */
dx_example *dx__example_inputs_view(const dx_example *ex);

#endif
