/*
 * qa_agent.c — a dspex program served to BEAM applications: this node runs
 * a Predict program ("question -> answer") behind a server registered as
 * `qa_agent`, so any Erlang or Elixir node with the cookie can ask
 *
 *     gen_server:call({qa_agent, 'qa@127.0.0.1'},
 *                     {predict, #{<<"question">> => <<"...">>}})
 *
 * and gets {ok, #{<<"answer">> => ...}} or {error, Reason}. See README.md.
 *
 * Usage: beam_qa_agent [NODE_NAME] [COOKIE]   (defaults qa@127.0.0.1, the
 * cookie in ~/.erlang.cookie); the model is $DX_MODEL or sim/base (offline).
 */
#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dspex/lm.h"
#include "dspex/module.h"
#include "dspex/node.h"
#include "dspex/server.h"
#include "dspex/signature.h"

static dx_module *program;
static volatile sig_atomic_t quit;

static void on_signal(int sig)
{
    (void)sig;
    quit = 1;
}

/* The prediction's fields as a map of binaries (non-string values as JSON
 * text). */
static dx_term *outputs_term(const dx_prediction *p)
{
    const dx_example *f = dx_prediction_fields(p);
    dx_term *m = dx_map_new();
    for (size_t i = 0; m && i < dx_example_len(f); i++) {
        const cJSON *v = dx_example_value(f, i);
        dx_term *val;
        if (cJSON_IsString(v)) {
            val = dx_str(v->valuestring);
        } else {
            char *json = cJSON_PrintUnformatted(v);
            val = dx_str(json ? json : "null");
            cJSON_free(json);
        }
        dx_map_put(m, dx_str(dx_example_key(f, i)), val);
    }
    return m;
}

static int qa_init(void *arg, void **state, dx_term **reason)
{
    (void)arg;
    (void)reason;
    *state = NULL;
    return DX_OK;
}

static dx_srv_ret qa_call(void *state, dx_msg *req, dx_from from,
                          dx_msg **reply, dx_term **reason)
{
    (void)state;
    (void)from;
    (void)reason;
    const dx_term *t = req->term;
    const dx_term *q = dx_map_get_str(dx_term_at(t, 1), "question");
    dx_term *out;
    if (!dx_is_atom(dx_term_at(t, 0), "predict") ||
        dx_term_type_of(q) != DX_TERM_BINARY) {
        out = dx_tuple(2, dx_atom("error"), dx_atom("bad_request"));
    } else {
        dx_example *in = dx_example_new();
        dx_example_set_str(in, "question", dx_binary_data(q, NULL));
        dx_prediction *p = NULL;
        dx_diag d = {0};
        int rc = dx_module_call(program, in, &(dx_call_opts){.lm_name = "lm"},
                                &p, NULL, &d);
        dx_example_free(in);
        out = rc == DX_OK ? dx_tuple(2, dx_atom("ok"), outputs_term(p))
                          : dx_tuple(2, dx_atom("error"),
                                     dx_tuple(2, dx_atom(dx_err_name(rc)),
                                              dx_str(d.msg)));
        dx_prediction_free(p);
    }
    *reply = dx_msg_new(DX_TAG_TERM);
    if (*reply)
        (*reply)->term = out;
    else
        dx_term_free(out);
    return DX_SRV_REPLY;
}

static const dx_server_ops qa_ops = {
    .name = "qa_agent", .init = qa_init, .handle_call = qa_call};

static _Atomic int started = 1;

static void start(void *arg)
{
    const char *model = arg;
    dx_lm_client_opts o = {.primary = {model, NULL, NULL}};
    int rc = dx_lm_client_start(&o, &(dx_server_opts){.name = "lm"}, NULL);
    if (rc == DX_OK)
        rc = dx_server_start(&qa_ops, NULL,
                             &(dx_server_opts){.name = "qa_agent"}, NULL, NULL);
    started = rc;
}

int main(int argc, char **argv)
{
    const char *name = argc > 1 ? argv[1] : "qa@127.0.0.1";
    const char *cookie = argc > 2 ? argv[2] : NULL;
    const char *model = getenv("DX_MODEL") ? getenv("DX_MODEL") : "sim/base";
    dx_signature *sig = NULL;
    if (dx_runtime_start(NULL) != DX_OK ||
        dx_signature_parse("question -> answer", NULL, NULL, 0, &sig, NULL) !=
            DX_OK)
        return 1;
    program = dx_predict_new(sig, NULL);
    dx_signature_unref(sig);
    int rc = dx_node_start(&(dx_node_opts){.name = name, .cookie = cookie});
    if (rc != DX_OK) {
        fprintf(stderr, "qa_agent: node %s: %s (is epmd running?)\n", name,
                dx_strerror(rc));
        return 1;
    }
    dx_spawn(start, (void *)model, NULL);
    while (started == 1)
        nanosleep(&(struct timespec){0, 5000000}, NULL);
    if (started != DX_OK) {
        fprintf(stderr, "qa_agent: %s\n", dx_strerror(started));
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    printf("qa_agent serving on %s (model %s)\n", name, model);
    fflush(stdout);
    while (!quit)
        nanosleep(&(struct timespec){0, 100000000}, NULL);
    dx_node_stop();
    dx_runtime_stop();
    dx_module_free(program);
    return 0;
}
