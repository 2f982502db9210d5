/*
 * example_int.h — what example.c offers the rest of programs/ beyond the
 * public API: storing a value without copying it, for callers (the
 * adapters) that build a value only to store it. Not installed.
 */
#ifndef DSPEX_EXAMPLE_INT_H
#define DSPEX_EXAMPLE_INT_H

#include <cjson/cJSON.h>

#include "dspex/example.h"

/* dx_example_set_value, taking value instead of copying it: value (not in
 * any array or object, its key name ignored) belongs to ex afterwards, or
 * is freed when the call fails. */
int dx__example_set_taking(dx_example *ex, const char *key, cJSON *value);

#endif
