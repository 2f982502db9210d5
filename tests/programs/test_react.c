/*
 * test_react.c — ReAct against the local LM server: DSPy's instructions,
 * the trajectory step by step (and as the LM sees it), finish, max_iters
 * reached with the extraction still answering, a crashing and a hanging
 * tool costing one step each, an unreadable tool choice ending the loop,
 * truncation past max_trajectory_chars, and native tool calling through
 * the OpenAI, Anthropic and Gemini codecs.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/module.h"
#include "dspex/react.h"
#include "dspex/tool.h"
#include "lm_fixture.h"

TestSuite(react, .init = fixture_setup, .fini = fixture_teardown,
          .timeout = 60);

static void push_answer(const char *answer)
{
    char buf[512];
    snprintf(buf, sizeof buf,
             "[[ ## reasoning ## ]]\nFrom the trajectory.\n\n"
             "[[ ## answer ## ]]\n%s\n\n[[ ## completed ## ]]",
             answer);
    dx_lmserver_push_reply(srv, buf);
}

static dx_prediction *run(const dx_module *m, const char *question,
                          const dx_call_opts *o, dx_trace *trace)
{
    dx_example *in = dx_example_new();
    cr_assert_eq(dx_example_set_str(in, "question", question), DX_OK);
    dx_prediction *p = NULL;
    dx_diag d = {0};
    int rc = dx_module_call(m, in, o, &p, trace, &d);
    cr_assert_eq(rc, DX_OK, "%s: %s", dx_err_name(rc), d.msg);
    dx_example_free(in);
    return p;
}

static const char *traj_str(const dx_prediction *p, const char *key)
{
    const cJSON *t = dx_prediction_get(p, "trajectory");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(t, key);
    cr_assert(cJSON_IsString(v), "trajectory has no string %s", key);
    return v->valuestring;
}

static char *traj_json(const dx_prediction *p, const char *key)
{
    const cJSON *t = dx_prediction_get(p, "trajectory");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(t, key);
    cr_assert_not_null(v, "trajectory has no %s", key);
    return cJSON_PrintUnformatted(v);
}

Test(react, builds_dspys_predictors_and_instructions)
{
    dx_signature *s = sig("question -> answer");
    dx_tool *calc = dx_tool_calculator_new();
    dx_module *m = dx_react_new(s, &calc, 1, 5);
    cr_assert_not_null(m);
    dx_named_predictor *ps = NULL;
    size_t n = 0;
    cr_assert_eq(dx_module_predictors(m, &ps, &n), DX_OK);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(ps[0].path, "react");
    cr_assert_str_eq(ps[1].path, "extract.predict");
    char *str = NULL;
    dx_signature_string(dx_predict_signature(ps[0].predict), &str);
    cr_assert_str_eq(str, "question, trajectory -> next_thought, "
                          "next_tool_name, next_tool_args");
    dx_free(str);
    dx_signature_string(dx_predict_signature(ps[1].predict), &str);
    cr_assert_str_eq(str, "question, trajectory -> reasoning, answer");
    dx_free(str);
    const char *want =
        "Given the fields `question`, produce the fields `answer`.\n\n"
        "You are an Agent. In each episode, you will be given the fields "
        "`question` as input. And you can see your past trajectory so far.\n"
        "Your goal is to use one or more of the supplied tools to collect any "
        "necessary information for producing `answer`.\n\n"
        "To do this, you will interleave next_thought, next_tool_name, and "
        "next_tool_args in each turn, and also when finishing the task.\n"
        "After each tool call, you receive a resulting observation, which "
        "gets appended to your trajectory.\n\n"
        "When writing next_thought, you may reason about the current "
        "situation and plan for future steps.\n"
        "When selecting the next_tool_name and its next_tool_args, the tool "
        "must be one of:\n\n"
        "(1) calculator, whose description is <desc>Evaluates an arithmetic "
        "expression: numbers, + - * / // % **, parentheses.</desc>. It takes "
        "arguments {'expression': {'type': 'string', 'description': 'an "
        "arithmetic expression, e.g. (2 + 3) * 4 ** 2 / 7'}}.\n"
        "(2) finish, whose description is <desc>Marks the task as complete. "
        "That is, signals that all information for producing the outputs, "
        "i.e. `answer`, are now available to be extracted.</desc>. It takes "
        "arguments {}.\n"
        "When providing `next_tool_args`, the value inside the field must be "
        "in JSON format";
    cr_assert_str_eq(
        dx_signature_instructions(dx_predict_signature(ps[0].predict)), want);
    const dx_field *f = dx_signature_find(dx_predict_signature(ps[0].predict),
                                          "next_tool_name");
    char *tn = NULL;
    dx_type_name(f->type, &tn);
    cr_assert_str_eq(tn, "Literal['calculator', 'finish']");
    dx_free(tn);
    dx_free(ps);

    /* finish is ReAct's; a second tool of one name is refused. */
    dx_tool *fin = dx_tool_finish_new(NULL);
    dx_module *bad = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_react_create(s, &fin, 1, NULL, &bad, &d), DX_EINVAL);
    cr_assert(strstr(d.msg, "finish"), "%s", d.msg);
    dx_tool *two[] = {calc, calc};
    cr_assert_eq(dx_react_create(s, two, 2, NULL, &bad, &d), DX_EINVAL);
    cr_assert(strstr(d.msg, "two tools are named \"calculator\""), "%s", d.msg);
    dx_tool_unref(fin);
    dx_module_free(m);
    dx_tool_unref(calc);
    dx_signature_unref(s);
}

Test(react, runs_tools_until_finish_then_extracts)
{
    dx_signature *s = sig("question -> answer");
    dx_tool *calc = dx_tool_calculator_new();
    dx_module *m = dx_react_new(s, &calc, 1, 5);
    dx_tool_unref(calc);
    dx_signature_unref(s);
    push_step("I should multiply.", "calculator", "{\"expression\": \"6*7\"}");
    push_step("I know it now.", "finish", "{}");
    push_answer("42");
    dx_call_opts o = {.lm = DX_NOPID, .trace = true};
    dx_trace tr = {0};
    dx_prediction *p = run(m, "What is six times seven?", &o, &tr);

    cr_assert_str_eq(dx_prediction_get_str(p, "answer", ""), "42");
    cr_assert_str_eq(dx_prediction_get_str(p, "reasoning", ""),
                     "From the trajectory.");
    cr_assert_str_eq(dx_example_key(dx_prediction_fields(p), 0), "trajectory");
    const cJSON *t = dx_prediction_get(p, "trajectory");
    cr_assert_eq(cJSON_GetArraySize(t), 8);
    cr_assert_str_eq(t->child->string, "thought_0");
    cr_assert_str_eq(traj_str(p, "thought_0"), "I should multiply.");
    cr_assert_str_eq(traj_str(p, "tool_name_0"), "calculator");
    char *a = traj_json(p, "tool_args_0");
    cr_assert_str_eq(a, "{\"expression\":\"6*7\"}");
    cJSON_free(a);
    cr_assert_str_eq(traj_str(p, "observation_0"), "42");
    cr_assert_str_eq(traj_str(p, "tool_name_1"), "finish");
    cr_assert_str_eq(traj_str(p, "observation_1"), "Completed.");
    cr_assert_eq(dx_prediction_usage(p)->calls, 3);

    /* What the LM saw: DSPy's trajectory blocks. */
    cr_assert_eq(tr.n, 3);
    cr_assert_str_eq(tr.steps[0].path, "react");
    cr_assert_str_eq(dx_example_get_str(tr.steps[0].inputs, "trajectory", "?"),
                     "");
    cr_assert_str_eq(dx_example_get_str(tr.steps[1].inputs, "trajectory", "?"),
                     "[[ ## thought_0 ## ]]\nI should multiply.\n\n"
                     "[[ ## tool_name_0 ## ]]\ncalculator\n\n"
                     "[[ ## tool_args_0 ## ]]\n{\"expression\": \"6*7\"}\n\n"
                     "[[ ## observation_0 ## ]]\n42");
    cr_assert_str_eq(tr.steps[2].path, "extract.predict");
    cr_assert(strstr(dx_example_get_str(tr.steps[2].inputs, "trajectory", ""),
                     "[[ ## observation_1 ## ]]\nCompleted."));
    dx_trace_free(&tr);
    dx_prediction_free(p);
    dx_module_free(m);
}

Test(react, max_iters_reached_and_the_extraction_still_answers)
{
    dx_signature *s = sig("question -> answer");
    dx_tool *calc = dx_tool_calculator_new();
    dx_module *m = dx_react_new(s, &calc, 1, 2);
    dx_tool_unref(calc);
    dx_signature_unref(s);
    push_step("First.", "calculator", "{\"expression\": \"1+1\"}");
    push_step("Again.", "calculator", "{\"expression\": \"2+2\"}");
    push_answer("4");
    dx_prediction *p = run(m, "Keep adding", NULL, NULL);
    const cJSON *t = dx_prediction_get(p, "trajectory");
    cr_assert_eq(cJSON_GetArraySize(t), 8);
    cr_assert_str_eq(traj_str(p, "observation_0"), "2");
    cr_assert_str_eq(traj_str(p, "observation_1"), "4");
    cr_assert_null(cJSON_GetObjectItemCaseSensitive(t, "thought_2"));
    cr_assert_str_eq(dx_prediction_get_str(p, "answer", ""), "4");
    dx_prediction_free(p);

    /* max_iters given with the inputs wins, as in DSPy. */
    push_step("Only one.", "calculator", "{\"expression\": \"3*3\"}");
    push_answer("9");
    dx_example *in = dx_example_new();
    dx_example_set_str(in, "question", "Once");
    dx_example_set_int(in, "max_iters", 1);
    dx_diag d = {0};
    cr_assert_eq(dx_module_call(m, in, NULL, &p, NULL, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(cJSON_GetArraySize(dx_prediction_get(p, "trajectory")), 4);
    cr_assert_str_eq(dx_prediction_get_str(p, "answer", ""), "9");
    dx_prediction_free(p);
    dx_example_free(in);
    dx_module_free(m);
}

static int crash_fn(const cJSON *args, char **result, void *ud)
{
    (void)args;
    (void)result;
    (void)ud;
    crash_now();
    return DX_OK;
}

static int hang_fn(const cJSON *args, char **result, void *ud)
{
    (void)args;
    (void)result;
    (void)ud;
    dx_sleep(60000);
    return DX_OK;
}

Test(react, a_crashing_and_a_hanging_tool_cost_one_step_each)
{
    dx_signature *s = sig("question -> answer");
    dx_tool *tools[3] = {NULL, NULL, dx_tool_calculator_new()};
    cr_assert_eq(dx_tool_new("crasher", "Crashes.", NULL, 0, crash_fn, NULL,
                             &tools[0], NULL),
                 DX_OK);
    cr_assert_eq(dx_tool_new("sleeper", "Hangs.", NULL, 0, hang_fn, NULL,
                             &tools[1], NULL),
                 DX_OK);
    dx_tool_set_timeout(tools[1], 200);
    dx_module *m = dx_react_new(s, tools, 3, 6);
    for (int i = 0; i < 3; i++)
        dx_tool_unref(tools[i]);
    dx_signature_unref(s);
    push_step("Try the crasher.", "crasher", "{}");
    push_step("Try the sleeper.", "sleeper", "{}");
    push_step("Bad arguments.", "calculator", "{\"expr\": \"1\"}");
    push_step("Then compute.", "calculator", "{\"expression\": \"2*21\"}");
    push_step("Done.", "finish", "{}");
    push_answer("42");
    dx_prediction *p = run(m, "Use the tools", NULL, NULL);
    const char *crash = traj_str(p, "observation_0");
    cr_assert(!strncmp(crash,
                       "Execution error in crasher: the tool's process "
                       "died",
                       strlen("Execution error in crasher: the tool's process "
                              "died")),
              "%s", crash);
    cr_assert_str_eq(traj_str(p, "observation_1"),
                     "Execution error in sleeper: no result within 200 ms (the "
                     "tool's process was killed)");
    cr_assert_str_eq(traj_str(p, "observation_2"),
                     "Execution error in calculator: Arg expr is not in the "
                     "tool's args.");
    cr_assert_str_eq(traj_str(p, "observation_3"), "42");
    cr_assert_str_eq(traj_str(p, "tool_name_4"), "finish");
    cr_assert_str_eq(dx_prediction_get_str(p, "answer", ""), "42");
    dx_prediction_free(p);
    dx_module_free(m);
}

Test(react, an_unreadable_tool_choice_ends_the_loop_and_extract_answers)
{
    dx_signature *s = sig("question -> answer");
    dx_tool *calc = dx_tool_calculator_new();
    dx_module *m = dx_react_new(s, &calc, 1, 5);
    dx_tool_unref(calc);
    dx_signature_unref(s);
    push_step("Use it.", "calculator", "{\"expression\": \"1+2\"}");
    push_step("Something else.", "telepathy", "{}");
    push_answer("3");
    dx_call_opts o = {.lm = DX_NOPID, .no_json_fallback = true};
    dx_prediction *p = run(m, "Sum", &o, NULL);
    cr_assert_eq(cJSON_GetArraySize(dx_prediction_get(p, "trajectory")), 4);
    cr_assert_str_eq(traj_str(p, "observation_0"), "3");
    cr_assert_str_eq(dx_prediction_get_str(p, "answer", ""), "3");
    dx_prediction_free(p);
    dx_module_free(m);
}

Test(react, trajectory_past_the_character_limit_drops_the_oldest_steps)
{
    dx_signature *s = sig("question -> answer");
    dx_tool *calc = dx_tool_calculator_new();
    dx_module *m = NULL;
    dx_react_opts ro = {.max_iters = 6, .max_trajectory_chars = 350};
    cr_assert_eq(dx_react_create(s, &calc, 1, &ro, &m, NULL), DX_OK);
    dx_tool_unref(calc);
    dx_signature_unref(s);
    push_step("Step zero of the long computation.", "calculator",
              "{\"expression\": \"1+1\"}");
    push_step("Step one of the long computation.", "calculator",
              "{\"expression\": \"2+2\"}");
    push_step("Step two of the long computation.", "calculator",
              "{\"expression\": \"3+3\"}");
    push_step("Done.", "finish", "{}");
    push_answer("6");
    dx_call_opts o = {.lm = DX_NOPID, .trace = true};
    dx_trace tr = {0};
    dx_prediction *p = run(m, "Add", &o, &tr);
    const cJSON *t = dx_prediction_get(p, "trajectory");
    /* A computation step renders to 168 characters, finish to 125: two
     * steps fit in 350, so the extraction saw steps 2 and 3 only. */
    cr_assert_null(cJSON_GetObjectItemCaseSensitive(t, "thought_0"));
    cr_assert_null(cJSON_GetObjectItemCaseSensitive(t, "thought_1"));
    cr_assert_str_eq(traj_str(p, "observation_2"), "6");
    cr_assert_str_eq(traj_str(p, "tool_name_3"), "finish");
    /* The last react call saw step 2 but no longer step 0. */
    const char *last = dx_example_get_str(tr.steps[3].inputs, "trajectory", "");
    cr_assert(strstr(last, "thought_2") && !strstr(last, "thought_0"), "%s",
              last);
    dx_trace_free(&tr);
    dx_prediction_free(p);
    dx_module_free(m);
}

/* ---- native tool calling ---------------------------------------------- */

static const char *client_model, *client_base, *client_name;
static void start_named_client(void *arg)
{
    (void)arg;
    dx_lm_client_opts o = {.primary = {client_model, client_base, "sk-test"}};
    dx_server_opts so = {.name = client_name};
    atomic_store(&fixture_rc, dx_lm_client_start(&o, &so, NULL));
}

static void stop_named_client(void *arg)
{
    (void)arg;
    dx_pid lm = dx_whereis(client_name);
    atomic_store(&fixture_rc,
                 dx_pid_is_none(lm) ? DX_OK : dx_server_stop(lm, NULL, 5000));
}

static void native_through(const char *model, const char *path)
{
    char base[128];
    snprintf(base, sizeof base, "http://127.0.0.1:%d%s", dx_lmserver_port(srv),
             path);
    client_model = model;
    client_base = base;
    client_name = "lm_native";
    fixture_run(start_named_client);

    dx_signature *s = sig("question -> answer");
    dx_tool *calc = dx_tool_calculator_new();
    dx_module *m = NULL;
    dx_react_opts ro = {.max_iters = 4, .native_tools = true};
    cr_assert_eq(dx_react_create(s, &calc, 1, &ro, &m, NULL), DX_OK);
    dx_tool_unref(calc);
    dx_signature_unref(s);
    dx_call_opts o = {.lm = DX_NOPID, .lm_name = "lm_native"};
    /* The server calls the tool the question names; after the tool's
     * result it answers in text ("answer: 42"), which ends the loop. */
    dx_prediction *p = run(m, "call calculator expression=6*7", &o, NULL);
    cr_assert_str_eq(traj_str(p, "tool_name_0"), "calculator", "%s", model);
    char *a = traj_json(p, "tool_args_0");
    cr_assert_str_eq(a, "{\"expression\":\"6*7\"}", "%s", model);
    cJSON_free(a);
    cr_assert_str_eq(traj_str(p, "observation_0"), "42");
    cr_assert_str_eq(traj_str(p, "tool_name_1"), "finish");
    /* The model's text (Gemini's codec sends the result as {"output":
     * ...}, which the server echoes). */
    cr_assert(!strncmp(traj_str(p, "thought_1"), "answer: ", 8) &&
                  strstr(traj_str(p, "thought_1"), "42"),
              "%s: %s", model, traj_str(p, "thought_1"));
    cr_assert_str_eq(traj_str(p, "observation_1"), "Completed.");
    cr_assert_eq(cJSON_GetArraySize(dx_prediction_get(p, "trajectory")), 8);
    cr_assert_not_null(dx_prediction_get(p, "answer"));
    /* Two native steps and the extraction (with its JSON fallback). */
    cr_assert_geq(dx_prediction_usage(p)->calls, 3);
    dx_prediction_free(p);
    dx_module_free(m);
    fixture_run(stop_named_client);
}

Test(react, native_tool_calls_through_openai)
{
    native_through("openai/gpt-4o-mini", "/v1");
}

Test(react, native_tool_calls_through_anthropic)
{
    native_through("anthropic/claude-3-5-haiku-latest", "");
}

Test(react, native_tool_calls_through_gemini)
{
    native_through("gemini/gemini-2.0-flash", "/v1beta");
}
