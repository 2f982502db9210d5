/*
 * embed_minimal.c — the smallest host program that embeds dspex: start
 * the runtime and an LM client, call a program once blocking and once
 * with a callback, shut down. docs/embedding.md shows this file whole.
 */
#include <stdio.h>
#include <string.h>

#include <dspex/embed.h>
#include <dspex/lm.h>
#include <dspex/program.h>

static const char program_json[] =
    "{\"program\": {\"modules\": [{\"name\": \"answer\", \"module\": "
    "\"predict\", \"signature\": \"question -> answer\"}]}}";

/* Runs once, on a runtime thread (no loop attached); owns pred. */
static void on_done(dx_embed_call *call, int rc, dx_prediction *pred,
                    const dx_diag *diag, void *ud)
{
    (void)call;
    (void)ud;
    if (rc == DX_OK)
        printf("async answer: %s\n", dx_prediction_get_str(pred, "answer", ""));
    else
        printf("async failed: %s\n", diag->msg);
    dx_prediction_free(pred);
}

int main(void)
{
    dx_embed *e = NULL;
    if (dx_embed_start(NULL, &e) != DX_OK)
        return 1;

    /* An application tree with one LM client registered as "lm", the name
     * programs use by default. The spec must outlive the tree. */
    dx_lm_client_opts lm = {.primary = {"sim/base", NULL, NULL}};
    dx_child_spec client;
    dx_lm_client_child_spec(&client, "lm", &lm, "lm");
    dx_sup_spec root = {.name = "root", .children = &client, .nchildren = 1};
    int rc = dx_embed_app_start(e, &root, NULL, NULL);

    dx_module *prog = NULL;
    dx_diag d = {0};
    if (rc == DX_OK)
        rc = dx_program_parse(program_json, strlen(program_json), "inline",
                              &prog, &d);
    dx_example *in = dx_example_new();
    dx_example_set_str(in, "question", "What is the capital of Peru?");

    if (rc == DX_OK) { /* blocking */
        dx_prediction *p = NULL;
        rc = dx_embed_call_sync(e, prog, in, NULL, &p, &d);
        if (rc == DX_OK)
            printf("answer: %s\n", dx_prediction_get_str(p, "answer", ""));
        dx_prediction_free(p);
    }
    if (rc == DX_OK) { /* with a callback */
        dx_embed_call *call = NULL;
        rc = dx_embed_call_async(e, prog, in, NULL, on_done, NULL, &call);
        if (rc == DX_OK)
            dx_embed_call_wait(call, DX_INFINITY);
        dx_embed_call_release(call);
    }
    if (rc != DX_OK)
        fprintf(stderr, "failed: %s %s\n", dx_err_name(rc), d.msg);

    dx_example_free(in);
    /* Drain for up to a second, stop the tree and the runtime. */
    dx_embed_shutdown(e, 1000, NULL);
    dx_lm_client_child_spec_free(&client);
    dx_module_free(prog);
    return rc == DX_OK ? 0 : 1;
}
