/*
 * reward_int.h — declared rewards (reward.c) for the declarative program
 * loader: compile a reward declaration into the reward_ud of a BestOfN or
 * Refine, with the Python text Refine's feedback LM reads as its code.
 */
#ifndef DSPEX_REWARD_INT_H
#define DSPEX_REWARD_INT_H

#include <cjson/cJSON.h>

#include "dspex/diag.h"
#include "dspex/modules.h"

/* Compile spec (see program.h); `where` prefixes every error; sig (may be
 * NULL) is the wrapped module's: a checked field must be one of its
 * outputs. DX_OK with
 * *ud for dx__reward_call (freed by dx__reward_free) and *code (dx_free'd
 * by the caller); DX_EINVAL / DX_ESYNTAX / DX_ENOENT with diag; DX_ENOMEM. */
int dx__reward_compile(const cJSON *spec, const char *where,
                       const dx_signature *sig, void **ud, char **code,
                       dx_diag *diag);
int dx__reward_call(const dx_example *inputs, const dx_prediction *pred,
                    void *ud, double *reward);
void dx__reward_free(void *ud);

#endif
