/*
 * dist_eval_setup.h — the program, dataset and Evaluate options that both
 * the distributed-Evaluate test (coordinator and single-node reference) and
 * its worker nodes use, so their scores can be compared example by example.
 * Call from a process; starts the LM client "lm" on the sim model.
 */
#ifndef DX_DIST_EVAL_SETUP_H
#define DX_DIST_EVAL_SETUP_H

#include "dspex/evaluate.h"
#include "dspex/lm.h"
#include "dspex/module.h"
#include "dspex/signature.h"
#include "dspex/sim.h"

#define DIST_EVAL_N 40

static int dist_eval_setup(dx_module **prog, dx_dataset **ds)
{
    dx_lm_client_opts o = {.primary = {"sim/base", NULL, NULL}};
    int rc = dx_lm_client_start(&o, &(dx_server_opts){.name = "lm"}, NULL);
    if (rc != DX_OK)
        return rc;
    dx_signature *sig;
    rc = dx_signature_parse("question -> answer", NULL, NULL, 0, &sig, NULL);
    if (rc != DX_OK)
        return rc;
    *prog = dx_predict_new(sig, NULL);
    dx_signature_unref(sig);
    if (*prog == NULL)
        return DX_ENOMEM;
    return dx_sim_generate(DX_SIM_CAPITALS, "dev", DX_SIM_DEFAULT_SEED,
                           DIST_EVAL_N, ds);
}

static dx_eval_opts dist_eval_opts(void)
{
    dx_eval_opts eo = {.metric = {.kind = DX_METRIC_EXACT_MATCH},
                       .concurrency = 4,
                       .progress = DX_EVAL_PROGRESS_OFF,
                       .call = {.lm_name = "lm"}};
    return eo;
}

#endif
