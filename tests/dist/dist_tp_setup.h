/*
 * dist_tp_setup.h — the student, datasets and options that the
 * distributed-optimization test (coordinator and single-node reference)
 * and its worker nodes share, so their trials can be compared example by
 * example. Call from a process; starts the LM client "lm" on the sim model.
 */
#ifndef DX_DIST_TP_SETUP_H
#define DX_DIST_TP_SETUP_H

#include "dspex/evaluate.h"
#include "dspex/lm.h"
#include "dspex/module.h"
#include "dspex/server.h"
#include "dspex/signature.h"
#include "dspex/sim.h"
#include "dspex/teleprompt.h"

#define DIST_TP_TRAIN 24
#define DIST_TP_VAL 20

static inline int dist_tp_setup(dx_module **student, dx_dataset **train,
                                dx_dataset **val)
{
    dx_lm_client_opts o = {.primary = {"sim/base", NULL, NULL}};
    int rc = dx_lm_client_start(&o, &(dx_server_opts){.name = "lm"}, NULL);
    if (rc != DX_OK)
        return rc;
    dx_signature *sig;
    rc = dx_signature_parse("question -> answer", NULL, NULL, 0, &sig, NULL);
    if (rc != DX_OK)
        return rc;
    *student = dx_predict_new(sig, NULL);
    dx_signature_unref(sig);
    if (*student == NULL)
        return DX_ENOMEM;
    rc = dx_sim_generate(DX_SIM_CAPITALS, "train", DX_SIM_DEFAULT_SEED,
                         DIST_TP_TRAIN, train);
    if (rc == DX_OK)
        rc = dx_sim_generate(DX_SIM_CAPITALS, "dev", DX_SIM_DEFAULT_SEED,
                             DIST_TP_VAL, val);
    return rc;
}

/* The optimizer's options; a worker evaluates with dist_tp_eval_opts,
 * the same metric, concurrency and LM. */
static inline dx_tp_opts dist_tp_opts(void)
{
    dx_tp_opts o = {.metric = {.kind = DX_METRIC_EXACT_MATCH},
                    .max_bootstrapped_demos = 3,
                    .max_labeled_demos = 4,
                    .num_candidates = 3,
                    .concurrency = 4,
                    .call = {.lm_name = "lm"},
                    .progress = DX_EVAL_PROGRESS_OFF};
    return o;
}

static inline dx_eval_opts dist_tp_eval_opts(void)
{
    dx_tp_opts t = dist_tp_opts();
    dx_eval_opts eo = {.metric = t.metric,
                       .concurrency = t.concurrency,
                       .call = t.call,
                       .progress = DX_EVAL_PROGRESS_OFF};
    return eo;
}

#endif
