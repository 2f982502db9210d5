/*
 * agent_common.h — what the example agents share: the --model option, the
 * supervised LM client child, and supervisor reports told in words.
 *
 * Every example runs on the offline simulated model `sim/base` unless
 * --model names a real one ("openai/gpt-4o-mini", "anthropic/...",
 * "gemini/..."); the provider's key is then read from its usual environment
 * variable (OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY). The LM
 * client is a child of the example's root supervisor registered as "lm",
 * which is the name dx_module_call uses when no client is given.
 *
 * Header-only (static inline) so that each example stays one file to read.
 */
#ifndef DSPEX_EXAMPLES_AGENT_COMMON_H
#define DSPEX_EXAMPLES_AGENT_COMMON_H

#include <stdio.h>
#include <string.h>

#include <dspex/lm.h>
#include <dspex/log.h>
#include <dspex/runtime.h>
#include <dspex/supervisor.h>

#define EX_DEFAULT_MODEL "sim/base"

/* The model of `--model M` at argv[*i] (advancing *i), or NULL when argv[*i]
 * is not --model. A --model without a value is reported by the caller's
 * usage message: this returns "" then. */
static inline const char *ex_model_arg(int argc, char **argv, int *i)
{
    if (strcmp(argv[*i], "--model") != 0)
        return NULL;
    if (*i + 1 >= argc)
        return "";
    return argv[++*i];
}

/* Fill *spec with the LM client child ("lm", registered as "lm") on model
 * (NULL: sim/base). The spec's arg is heap memory: free it with
 * dx_lm_client_child_spec_free after the application has stopped. */
static inline int ex_lm_child(dx_child_spec *spec, const char *model)
{
    dx_lm_client_opts o = {
        .primary = {.model = model ? model : EX_DEFAULT_MODEL},
    };
    /* A model the client would refuse is said plainly here, rather than
     * as the supervisor's report of a child that failed to start. */
    char why[256];
    int rc = dx_lm_config_explain(o.primary.model, NULL, NULL, why, sizeof why);
    if (rc != DX_OK) {
        fprintf(stderr, "model %s: %s\n", o.primary.model, why);
        return rc;
    }
    return dx_lm_client_child_spec(spec, "lm", &o, "lm");
}

/* A log field's value as text into buf. */
static inline const char *ex_field(const dx_log_record *r, const char *key,
                                   char *buf, size_t cap)
{
    buf[0] = '\0';
    for (size_t i = 0; i < r->nfields; i++) {
        const dx_log_field *f = &r->fields[i];
        if (strcmp(f->key, key) != 0)
            continue;
        if (f->type == DX_LOG_V_STR) {
            snprintf(buf, cap, "%s", f->v.s ? f->v.s : "");
        } else if (f->type == DX_LOG_V_INT) {
            snprintf(buf, cap, "%lld", (long long)f->v.i);
        } else if (f->type == DX_LOG_V_TERM) {
            dx_term_format(f->v.t, buf, cap);
        } else {
            dx_term *t = dx_pid_term(f->v.pid);
            dx_term_format(t, buf, cap);
            dx_term_free(t);
        }
    }
    return buf;
}

/* Log sink: supervisor crash and restart reports in words, other errors as
 * logged, progress reports (child_started) left out. A sink must not call
 * the runtime (log.h), so it only formats and prints. */
static inline void ex_say(const dx_log_record *r, void *ud)
{
    (void)ud;
    char child[64], pid[32], reason[160], restarts[24];
    ex_field(r, "child", child, sizeof child);
    ex_field(r, "pid", pid, sizeof pid);
    ex_field(r, "reason", reason, sizeof reason);
    ex_field(r, "restarts", restarts, sizeof restarts);
    if (strcmp(r->event, "child_terminated") == 0)
        printf("  [supervisor] %s %s exited: %s\n", child, pid, reason);
    else if (strcmp(r->event, "child_restarted") == 0)
        printf("  [supervisor] restarted %s as %s (restart #%s)\n", child, pid,
               restarts);
    else if (r->level >= DX_LOG_ERROR)
        printf("  [log] %s\n", r->line);
    fflush(stdout);
}

/* Route the logger through ex_say (info level, so restarts show). */
static inline void ex_logs_in_words(void)
{
    dx_log_set_sink(ex_say, NULL);
    dx_log_set_level(DX_LOG_INFO);
}

#endif
