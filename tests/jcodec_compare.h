/*
 * jcodec_compare.h — for the suites and the fuzz target that hold the
 * providers' JSON parser (providers/jparse.c) to cJSON's: whether two cJSON
 * trees are the same node for node (types, keys, strings, both number
 * fields bit for bit, and the sibling links, a first child's prev being the
 * last child), and where they first differ; and the generator of random
 * inputs the suites share.
 */
#ifndef DSPEX_TESTS_JCODEC_COMPARE_H
#define DSPEX_TESTS_JCODEC_COMPARE_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* xorshift64: the next number of the sequence *state walks. */
static inline uint64_t jc_rand(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

static inline bool jc_same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) ||
           (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* NULL if the same, else a static description of the first difference. */
static inline const char *jc_difference(const cJSON *a, const cJSON *b)
{
    if ((a == NULL) != (b == NULL))
        return a == NULL ? "only the second exists" : "only the first exists";
    if (a == NULL)
        return NULL;
    if (a->type != b->type)
        return "types differ";
    if (!jc_same_str(a->string, b->string))
        return "keys differ";
    if (!jc_same_str(a->valuestring, b->valuestring))
        return "strings differ";
    if (memcmp(&a->valuedouble, &b->valuedouble, sizeof a->valuedouble) != 0)
        return "valuedouble differs";
    if (a->valueint != b->valueint)
        return "valueint differs";
    const cJSON *ca = a->child, *cb = b->child;
    const cJSON *la = NULL, *lb = NULL;
    while (ca != NULL || cb != NULL) {
        const char *d = jc_difference(ca, cb);
        if (d != NULL)
            return d;
        if ((la != NULL && ca->prev != la) || (lb != NULL && cb->prev != lb))
            return "a prev link is wrong";
        la = ca;
        lb = cb;
        ca = ca->next;
        cb = cb->next;
    }
    if (a->child != NULL && (a->child->prev != la || b->child->prev != lb))
        return "the first child's prev is not the last child";
    return NULL;
}

#endif
