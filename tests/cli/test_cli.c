/*
 * test_cli.c — the `dspex` command end to end: each subcommand spawned as
 * a process (the binary meson built, DX_DSPEX_BIN), its output and exit
 * code asserted, on the offline sim model; bad input exits 2 with a
 * one-line error that says where. One test runs `dspex eval` against the
 * local LM server, to see how many calls reach it at once.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "dspex/error.h"
#include "dspex/lmserver.h"

static char out_buf[1 << 20];
static char err_buf[1 << 16];
static char tmpdir[128];

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dx_cli_XXXXXX");
    cr_assert(mkdtemp(tmpdir));
    /* `dspex inspect` reads what the last command kept here. */
    setenv("DSPEX_HOME", tmpdir, 1);
}

static void teardown(void)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(cli, .init = setup, .fini = teardown, .timeout = 120);

static void read_all(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    ssize_t got;
    while (n + 1 < cap && (got = read(fd, buf + n, cap - 1 - n)) > 0)
        n += (size_t)got;
    buf[n] = '\0';
}

/* Start dspex with args (NULL-terminated), stdout and stderr going to
 * files that dspex_wait reads. */
static pid_t dspex_start(const char *const *args)
{
    const char *bin = getenv("DX_DSPEX_BIN");
    cr_assert(bin, "DX_DSPEX_BIN is not set");
    char out_path[200], err_path[200];
    snprintf(out_path, sizeof out_path, "%s/stdout", tmpdir);
    snprintf(err_path, sizeof err_path, "%s/stderr", tmpdir);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        FILE *o = freopen(out_path, "w", stdout);
        FILE *e = freopen(err_path, "w", stderr);
        (void)o;
        (void)e;
        const char *argv[32] = {bin};
        int n = 1;
        for (; args[n - 1] && n < 31; n++)
            argv[n] = args[n - 1];
        argv[n] = NULL;
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* Wait for a dspex_start'ed run: its output in out_buf and err_buf, its
 * exit status returned (128 + the signal if one ended it). */
static int dspex_wait(pid_t pid)
{
    char out_path[200], err_path[200];
    snprintf(out_path, sizeof out_path, "%s/stdout", tmpdir);
    snprintf(err_path, sizeof err_path, "%s/stderr", tmpdir);
    int status = 0;
    waitpid(pid, &status, 0);
    FILE *f = fopen(out_path, "r");
    read_all(fileno(f), out_buf, sizeof out_buf);
    fclose(f);
    f = fopen(err_path, "r");
    read_all(fileno(f), err_buf, sizeof err_buf);
    fclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Run dspex with args (NULL-terminated); stdout/stderr captured; returns
 * the exit status. */
static int dspex(const char *const *args)
{
    return dspex_wait(dspex_start(args));
}

static const char *example(const char *rel)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/../../examples/programs/%s",
             getenv("DX_FIXTURES"), rel);
    return path;
}

static const char *data(const char *rel)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/../../data/sim/%s", getenv("DX_FIXTURES"),
             rel);
    return path;
}

Test(cli, help_and_unknown_commands)
{
    cr_assert_eq(dspex((const char *[]){"--help", NULL}), 0);
    cr_assert(strstr(out_buf, "optimize"), "%s", out_buf);
    cr_assert_eq(dspex((const char *[]){"eval", "--help", NULL}), 0);
    cr_assert(strstr(out_buf, "--metric"), "%s", out_buf);
    cr_assert_eq(dspex((const char *[]){"frobnicate", NULL}), 2);
    cr_assert(strstr(err_buf, "unknown command"), "%s", err_buf);
    cr_assert_eq(dspex((const char *[]){NULL}), 2);
    cr_assert_eq(dspex((const char *[]){"run", "--bogus", NULL}), 2);
    cr_assert(strstr(err_buf, "unknown option --bogus (see dspex run --help)"),
              "%s", err_buf);
}

/* An option the command does not use is refused by name before anything
 * runs, long or short as it was typed; one missing its value says which. */
Test(cli, commands_refuse_options_they_do_not_use)
{
    const char *prog = example("capitals.json");
    const char *dev = data("capitals/dev.jsonl");
    cr_assert_eq(dspex((const char *[]){"eval", prog, dev, "--optimizer",
                                        "copro", NULL}),
                 2);
    cr_assert(strstr(err_buf, "--optimizer is not an option of dspex eval "
                              "(see dspex eval --help)"),
              "%s", err_buf);
    cr_assert_eq(out_buf[0], '\0', "nothing ran: %s", out_buf);
    cr_assert_eq(dspex((const char *[]){"eval", prog, dev, "-s", "3", NULL}),
                 2);
    cr_assert(strstr(err_buf, "-s is not an option of dspex eval"), "%s",
              err_buf);
    cr_assert_eq(dspex((const char *[]){"serve", prog, "--input", "q=x", NULL}),
                 2);
    cr_assert(strstr(err_buf, "--input is not an option of dspex serve"), "%s",
              err_buf);
    cr_assert_eq(
        dspex((const char *[]){"lm-server", "--model", "sim/base", NULL}), 2);
    cr_assert(strstr(err_buf, "--model is not an option of dspex lm-server"),
              "%s", err_buf);
    cr_assert_eq(dspex((const char *[]){"eval", prog, dev, "--metric", NULL}),
                 2);
    cr_assert(strstr(err_buf, "--metric wants a value (see dspex eval --help)"),
              "%s", err_buf);
    cr_assert_eq(dspex((const char *[]){"inspect", "--last", NULL}), 2);
    cr_assert(strstr(err_buf, "--last wants a value"), "%s", err_buf);
    /* A program is a file or --module / --signature, not both. */
    cr_assert_eq(dspex((const char *[]){"run", prog, "--module", "predict",
                                        "--input", "question=x", NULL}),
                 2);
    cr_assert(strstr(err_buf, "give one or the other, not both"), "%s",
              err_buf);
    /* eval takes a declared program and then DATA alone. */
    cr_assert_eq(
        dspex((const char *[]){"eval", "--module", "predict", "--signature",
                               "question -> answer", dev, NULL}),
        0, "%s", err_buf);
    cr_assert(strstr(out_buf, "done      50/50"), "%s", out_buf);
    /* What each command does take still works, here --seed for optimize. */
    char out[256];
    snprintf(out, sizeof out, "%s/opt.json", tmpdir);
    cr_assert_eq(dspex((const char *[]){
                     "optimize", prog, data("capitals/train.jsonl"), "-o", out,
                     "--optimizer", "labeled", "-s", "7", NULL}),
                 0, "%s", err_buf);
}

Test(cli, prompt_prints_the_exact_messages_without_an_lm)
{
    int rc = dspex((const char *[]){
        "prompt", "--module", "predict", "--signature", "question -> answer",
        "--instructions", "Answer the question.", "--input",
        "question=What is the capital of France?", NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    cJSON *msgs = cJSON_Parse(out_buf);
    cr_assert(cJSON_IsArray(msgs), "%s", out_buf);
    cr_assert_eq(cJSON_GetArraySize(msgs), 2);
    /* DSPy's exact simple-signature messages (test_chat_adapter.py). */
    cr_assert_str_eq(
        cJSON_GetObjectItem(cJSON_GetArrayItem(msgs, 0), "content")
            ->valuestring,
        "Your input fields are:\n1. `question` (str):\nYour output fields "
        "are:\n1. `answer` (str):\nAll interactions will be structured in the "
        "following way, with the appropriate values filled in.\n\n[[ ## "
        "question ## ]]\n{question}\n\n[[ ## answer ## ]]\n{answer}\n\n[[ ## "
        "completed ## ]]\nIn adhering to this structure, your objective is: "
        "\n        Answer the question.");
    cr_assert_str_eq(
        cJSON_GetObjectItem(cJSON_GetArrayItem(msgs, 1), "role")->valuestring,
        "user");
    cJSON_Delete(msgs);
}

Test(cli, prompt_applies_a_dspy_state_file)
{
    char prog[300];
    snprintf(prog, sizeof prog, "%s/prog.json", tmpdir);
    FILE *f = fopen(prog, "w");
    fputs("{\"program\": {\"modules\": [{\"name\": \"generate_query\", "
          "\"module\": \"predict\", \"signature\": \"question -> query\"}, "
          "{\"name\": \"answer\", \"module\": \"chain_of_thought\", "
          "\"signature\": \"question, context: list[str], summary -> "
          "answer\"}]}}",
          f);
    fclose(f);
    char state[512];
    snprintf(state, sizeof state, "%s/programs/dspy_saved_program.json",
             getenv("DX_FIXTURES"));
    int rc = dspex((const char *[]){"prompt", prog, "--state", state, "--input",
                                    "question=Who?", NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    cJSON *msgs = cJSON_Parse(out_buf);
    /* system + 2 demos (4 messages) + the question */
    cr_assert_eq(cJSON_GetArraySize(msgs), 6, "%s", out_buf);
    cr_assert(strstr(out_buf, "Write a short web search query"));
    cJSON_Delete(msgs);
}

Test(cli, bad_input_exits_2_and_says_where)
{
    char prog[300];
    snprintf(prog, sizeof prog, "%s/broken.json", tmpdir);
    FILE *f = fopen(prog, "w");
    fputs("{\n  \"program\": {\n    \"modules\": [,]\n  }\n}\n", f);
    fclose(f);
    cr_assert_eq(dspex((const char *[]){"prompt", prog, NULL}), 2);
    cr_assert(strstr(err_buf, "broken.json:3:"), "%s", err_buf);

    f = fopen(prog, "w");
    fputs("{\"program\": {\"modules\": [{\"name\": \"x\", \"module\": "
          "\"teleport\", \"signature\": \"a -> b\"}]}}",
          f);
    fclose(f);
    cr_assert_eq(dspex((const char *[]){"prompt", prog, NULL}), 2);
    cr_assert(strstr(err_buf, "unknown module \"teleport\""), "%s", err_buf);

    cr_assert_eq(
        dspex((const char *[]){"prompt", "--module", "predict", "--signature",
                               "question answer", NULL}),
        2);
    cr_assert(strstr(err_buf, "->"), "%s", err_buf);

    cr_assert_eq(dspex((const char *[]){"eval", example("capitals.json"),
                                        data("capitals/dev.jsonl"), "--metric",
                                        "bleu", NULL}),
                 2);
    cr_assert(strstr(err_buf, "unknown metric \"bleu\""), "%s", err_buf);

    cr_assert_eq(dspex((const char *[]){"eval", example("capitals.json"),
                                        data("capitals/dev.jsonl"), "--metric",
                                        "f1", "--frac", "0.5", NULL}),
                 2);
    cr_assert(strstr(err_buf, "--frac goes with --metric exact_match"), "%s",
              err_buf);
    cr_assert_eq(dspex((const char *[]){"eval", example("capitals.json"),
                                        data("capitals/dev.jsonl"), "--frac",
                                        "1.5", NULL}),
                 2);
    cr_assert(strstr(err_buf, "--frac wants a number in (0, 1]"), "%s",
              err_buf);

    cr_assert_eq(dspex((const char *[]){"eval", example("capitals.json"),
                                        data("classify/dev.jsonl"), NULL}),
                 2);
    cr_assert(strstr(err_buf, "no input field \"question\""), "%s", err_buf);
}

Test(cli, run_prints_a_prediction_from_the_sim_model)
{
    int rc = dspex((const char *[]){"run", example("capitals.json"), "--input",
                                    "question=What is the capital of Norway?",
                                    NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    cr_assert(strncmp(out_buf, "answer: ", 8) == 0, "%s", out_buf);
    rc = dspex((const char *[]){"run", example("capitals.json"), "--input",
                                "question=What is the capital of Norway?",
                                "--json", NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    cJSON *o = cJSON_Parse(out_buf);
    cr_assert(cJSON_IsString(cJSON_GetObjectItem(o, "answer")), "%s", out_buf);
    cJSON_Delete(o);
}

Test(cli, eval_scores_a_dataset_and_writes_rows)
{
    char rows[300];
    snprintf(rows, sizeof rows, "%s/rows.jsonl", tmpdir);
    int rc = dspex((const char *[]){
        "eval", example("capitals.json"), data("capitals/dev.jsonl"),
        "--metric", "exact_match", "--concurrency", "8", "--out", rows, NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    cr_assert(strstr(out_buf, "score"), "%s", out_buf);
    FILE *f = fopen(rows, "r");
    cr_assert(f);
    int lines = 0, c;
    while ((c = fgetc(f)) != EOF)
        lines += c == '\n';
    fclose(f);
    cr_assert_eq(lines, 50);
    /* The table shows 20 rows unless --table says otherwise (0: all). */
    cr_assert(strstr(out_buf, "30 more rows"), "%s", out_buf);
    rc = dspex((const char *[]){"eval", example("capitals.json"),
                                data("capitals/dev.jsonl"), "--table", "3",
                                NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    cr_assert(strstr(out_buf, "47 more rows"), "%s", out_buf);
    rc = dspex((const char *[]){"eval", example("capitals.json"),
                                data("capitals/dev.jsonl"), "--table", "0",
                                NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    cr_assert(strstr(out_buf, "more row") == NULL, "%s", out_buf);
    cr_assert(strstr(out_buf, "\n    49 "), "%s", out_buf);

    /* DSPy's answer_exact_match(frac=...) from the command line, and the
     * files DSPy's Evaluate(save_as_csv=..., save_as_json=...) writes. */
    char csv[300], json[300];
    snprintf(csv, sizeof csv, "%s/rows.csv", tmpdir);
    snprintf(json, sizeof json, "%s/rows.json", tmpdir);
    rc = dspex((const char *[]){"eval", example("capitals.json"),
                                data("capitals/dev.jsonl"), "--metric",
                                "exact_match", "--frac", "0.8", "--save-as-csv",
                                csv, "--save-as-json", json, NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    cr_assert(strstr(out_buf, "score"), "%s", out_buf);
    f = fopen(csv, "r");
    cr_assert(f);
    char header[200] = "";
    cr_assert(fgets(header, sizeof header, f));
    fclose(f);
    cr_assert_str_eq(header, "question,example_answer,pred_answer,"
                             "answer_exact_match\r\n");
    f = fopen(json, "r");
    cr_assert(f);
    char text[65536];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    cJSON *recs = cJSON_Parse(text);
    cr_assert_eq(cJSON_GetArraySize(recs), 50, "%s", text);
    cr_assert(cJSON_IsBool(cJSON_GetObjectItem(cJSON_GetArrayItem(recs, 0),
                                               "answer_exact_match")));
    cJSON_Delete(recs);
    /* An unwritable path: said, and the exit status is 1. */
    rc = dspex((const char *[]){"eval", example("capitals.json"),
                                data("capitals/dev.jsonl"), "--save-as-csv",
                                "/nonexistent-dir/rows.csv", NULL});
    cr_assert_eq(rc, 1);
    cr_assert(strstr(err_buf, "/nonexistent-dir/rows.csv"), "%s", err_buf);
}

/* --field names the label compared when it is not `answer` (the
 * classify task's `label`); without it every example fails, and the
 * message says how to fix that. */
Test(cli, eval_compares_the_field_it_is_told)
{
    char prog[300];
    snprintf(prog, sizeof prog, "%s/classify.json", tmpdir);
    FILE *f = fopen(prog, "w");
    fputs("{\"program\": {\"modules\": [{\"name\": \"c\", \"module\": "
          "\"predict\", \"signature\": \"text -> label\"}]}}",
          f);
    fclose(f);
    int rc =
        dspex((const char *[]){"eval", prog, data("classify/dev.jsonl"), NULL});
    cr_assert_eq(rc, 1, "%s", err_buf);
    cr_assert(strstr(err_buf, "the example has no \"answer\""), "%s", err_buf);
    cr_assert(strstr(err_buf, "--field NAME"), "%s", err_buf);
    rc = dspex((const char *[]){"eval", prog, data("classify/dev.jsonl"),
                                "--field", "label", NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    double score = -1;
    cr_assert_eq(sscanf(out_buf, "score %lf%%", &score), 1, "%s", out_buf);
    cr_assert(strstr(out_buf, "50/50, 0 errors"), "%s", out_buf);
    cr_assert_gt(score, 0);
    cr_assert_eq(
        dspex((const char *[]){"eval", prog, data("classify/dev.jsonl"),
                               "--field", "", NULL}),
        2);
}

/* DSPy's SemanticF1 from the command line, judged offline by the sim
 * model (word overlap): a program answering `response` scores what exact
 * match gives it on the capitals task, where a right answer is the ground
 * truth's one word and a wrong one shares none; the file says the DSPy
 * name, and the judge's calls are counted. */
Test(cli, eval_judges_answers_with_semantic_f1)
{
    char prog[300], ds[300], json[300];
    snprintf(prog, sizeof prog, "%s/qa.json", tmpdir);
    snprintf(ds, sizeof ds, "%s/dev.jsonl", tmpdir);
    snprintf(json, sizeof json, "%s/rows.json", tmpdir);
    FILE *f = fopen(prog, "w");
    fputs("{\"program\": {\"modules\": [{\"name\": \"answer\", \"module\": "
          "\"predict\", \"signature\": \"question -> response\"}]}}",
          f);
    fclose(f);
    FILE *in = fopen(data("capitals/dev.jsonl"), "r");
    f = fopen(ds, "w");
    cr_assert(in && f);
    char line[1024];
    while (fgets(line, sizeof line, in)) {
        char *a = strstr(line, "\"answer\"");
        cr_assert(a);
        fprintf(f, "%.*s\"response\"%s", (int)(a - line), line, a + 8);
    }
    fclose(in);
    fclose(f);
    int rc = dspex((const char *[]){"eval", example("capitals.json"),
                                    data("capitals/dev.jsonl"), NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    double em = -1, judged = -1;
    cr_assert_eq(sscanf(out_buf, "score %lf%%", &em), 1, "%s", out_buf);
    rc = dspex((const char *[]){"eval", prog, ds, "--metric", "semantic_f1",
                                "--save-as-json", json, NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    cr_assert_eq(sscanf(out_buf, "score %lf%%", &judged), 1, "%s", out_buf);
    cr_assert(strstr(out_buf, "50/50, 0 errors"), "%s", out_buf);
    cr_assert_float_eq(judged, em, 0.01);
    cr_assert_gt(judged, 0);
    cr_assert_lt(judged, 100);
    /* one program call and at least one judge call per example */
    unsigned in_tok, out_tok, calls;
    const char *t = strstr(out_buf, "tokens");
    cr_assert(t && sscanf(t, "tokens %u in, %u out, %u LM calls", &in_tok,
                          &out_tok, &calls) == 3,
              "%s", out_buf);
    cr_assert_geq(calls, 100, "%s", out_buf);
    f = fopen(json, "r");
    cr_assert(f);
    static char text[65536];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    cr_assert(strstr(text, "\"SemanticF1\": 1.0"), "%.300s", text);

    /* --judge-model: the judge's calls go to a client of their own (the
     * sim judges alike under every profile, so the score stays) */
    rc = dspex((const char *[]){"eval", prog, ds, "--metric", "semantic_f1",
                                "--judge-model", "sim/strong", NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    double by_strong = -1;
    cr_assert_eq(sscanf(out_buf, "score %lf%%", &by_strong), 1, "%s", out_buf);
    cr_assert_float_eq(by_strong, judged, 0.01);
    rc = dspex((const char *[]){"inspect", NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    const char *judge_call = strstr(out_buf, "sim/strong");
    cr_assert(judge_call, "%.2000s", out_buf);
    cr_assert(strstr(judge_call, "[[ ## system_response ## ]]"), "%.2000s",
              judge_call);
    cr_assert(strstr(out_buf, "sim/base"), "the program's calls too");
    rc = dspex((const char *[]){"eval", prog, ds, "--judge-model", "sim/strong",
                                NULL});
    cr_assert_eq(rc, 2);
    cr_assert(strstr(err_buf, "--judge-model goes with"), "%s", err_buf);
    rc = dspex((const char *[]){"eval", prog, ds, "--metric", "semantic_f1",
                                "--judge-model", "opneai/x", NULL});
    cr_assert_eq(rc, 2);
    cr_assert(strstr(err_buf, "judge model opneai/x: unknown provider"), "%s",
              err_buf);
}

/* A CSV dataset reads as the library reads one (dx_dataset_load): the
 * same examples as the JSONL, and a malformed file is refused at its line
 * and column rather than read some other way. */
Test(cli, eval_reads_csv_datasets_and_says_where_one_is_malformed)
{
    int rc = dspex((const char *[]){"eval", example("capitals.json"),
                                    data("capitals/dev.jsonl"), NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    const char *score = strstr(out_buf, "score     ");
    cr_assert_not_null(score, "%s", out_buf);
    char want[64];
    snprintf(want, sizeof want, "%.*s", (int)strcspn(score, "\n"), score);

    char csv[300];
    snprintf(csv, sizeof csv, "%s/dev.csv", tmpdir);
    FILE *in = fopen(data("capitals/dev.jsonl"), "r");
    FILE *out = fopen(csv, "w");
    cr_assert(in && out);
    fputs("question,answer\r\n", out);
    char line[1024];
    while (fgets(line, sizeof line, in)) {
        cJSON *o = cJSON_Parse(line);
        cr_assert_not_null(o, "%s", line);
        /* Quoted, as Python's csv writes a field with a comma. */
        fprintf(out, "\"%s\",%s\r\n",
                cJSON_GetObjectItem(o, "question")->valuestring,
                cJSON_GetObjectItem(o, "answer")->valuestring);
        cJSON_Delete(o);
    }
    fclose(in);
    fclose(out);
    rc = dspex((const char *[]){"eval", example("capitals.json"), csv, NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    cr_assert(strstr(out_buf, want), "want \"%s\" in %s", want, out_buf);

    out = fopen(csv, "w");
    cr_assert(out);
    fputs("question,answer\n\"What is the capital of Norway?\",Oslo\n"
          "\"What is the capital of Peru?,Lima\n",
          out);
    fclose(out);
    rc = dspex((const char *[]){"eval", example("capitals.json"), csv, NULL});
    cr_assert_eq(rc, 2, "%s", err_buf);
    snprintf(want, sizeof want, "dev.csv:3:1: quoted field never closed");
    cr_assert(strstr(err_buf, want), "%s", err_buf);
}

Test(cli, optimize_saves_a_program_that_loads_and_runs)
{
    char out[300];
    snprintf(out, sizeof out, "%s/optimized.json", tmpdir);
    int rc = dspex((const char *[]){"optimize", example("capitals.json"),
                                    data("capitals/train.jsonl"), "--optimizer",
                                    "bootstrap", "--max-demos", "3",
                                    "--max-labeled", "4", "-o", out, NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    cr_assert(strstr(out_buf, "saved"), "%s", out_buf);
    rc = dspex((const char *[]){"prompt", out, "--input", "question=Q?", NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    cJSON *msgs = cJSON_Parse(out_buf);
    cr_assert_eq(cJSON_GetArraySize(msgs), 2 + 2 * 4, "4 demos: %s", out_buf);
    cJSON_Delete(msgs);
}

Test(cli, lm_server_listens_and_stops_on_sigterm)
{
    const char *bin = getenv("DX_DSPEX_BIN");
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        execl(bin, bin, "lm-server", "--port", "0", "--latency-ms", "5",
              (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char line[128] = "";
    ssize_t n = read(fds[0], line, sizeof line - 1);
    cr_assert_gt(n, 0);
    line[n] = '\0';
    cr_assert(strncmp(line, "listening on 127.0.0.1:", 23) == 0, "%s", line);
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(fds[0]);
}

Test(cli, demo_improves_on_the_baseline_and_saves_its_work)
{
    char out[300];
    snprintf(out, sizeof out, "%s/demo", tmpdir);
    int rc = dspex(
        (const char *[]){"demo", "--task", "capitals", "--out", out, NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    double base_dev = -1, base_test = -1, boot_dev = -1, boot_test = -1;
    const char *b = strstr(out_buf, "baseline (zero-shot)");
    const char *o = strstr(out_buf, "BootstrapFewShot ");
    cr_assert(b && o, "%s", out_buf);
    cr_assert_eq(sscanf(b + strlen("baseline (zero-shot)"), " %lf%% %lf%%",
                        &base_dev, &base_test),
                 2);
    cr_assert_eq(sscanf(o + strlen("BootstrapFewShot"), " %lf%% %lf%%",
                        &boot_dev, &boot_test),
                 2);
    cr_assert_gt(boot_dev, base_dev + 10, "%s", out_buf);
    cr_assert_gt(boot_test, base_test + 10, "%s", out_buf);
    char path[400];
    snprintf(path, sizeof path, "%s/optimized.json", out);
    cr_assert_eq(access(path, R_OK), 0);
    snprintf(path, sizeof path, "%s/report.html", out);
    cr_assert_eq(access(path, R_OK), 0);
    /* The saved program runs. */
    snprintf(path, sizeof path, "%s/optimized.json", out);
    rc = dspex((const char *[]){"run", path, "--input",
                                "question=What is the capital of Peru?", NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
}

Test(cli, inspect_shows_the_last_commands_lm_calls)
{
    cr_assert_eq(dspex((const char *[]){"inspect", NULL}), 1,
                 "nothing recorded yet");
    int rc =
        dspex((const char *[]){"run", example("capitals.json"), "--input",
                               "question=What is the capital of Chile?", NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    rc = dspex((const char *[]){"inspect", "--last", "1", NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    cr_assert(strstr(out_buf, "sim/base"), "%s", out_buf);
    cr_assert(strstr(out_buf, "What is the capital of Chile?"), "%s", out_buf);
    cr_assert(strstr(out_buf, "Response:"), "%s", out_buf);
    cr_assert_eq(dspex((const char *[]){"inspect", "--bogus", NULL}), 2);
}

Test(cli, a_config_file_selects_the_model_and_bad_ones_are_refused)
{
    char cfg[300];
    snprintf(cfg, sizeof cfg, "%s/config.json", tmpdir);
    setenv("DSPEX_CONFIG", cfg, 1);
    FILE *f = fopen(cfg, "w");
    /* Port 1 on loopback: nothing listens, so using it fails at once —
     * which shows the file's model and base URL were used. */
    fputs("{\"model\": \"openai-compatible/x\", \"base_url\": "
          "\"http://127.0.0.1:1/v1\"}",
          f);
    fclose(f);
    int rc = dspex((const char *[]){"run", example("capitals.json"), "--input",
                                    "question=Hi", NULL});
    cr_assert_eq(rc, 1, "%s", err_buf);
    cr_assert(strstr(err_buf, "connect"), "%s", err_buf);
    /* --model wins over the file. */
    rc = dspex((const char *[]){"run", example("capitals.json"), "--model",
                                "sim/base", "--input", "question=Hi", NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    f = fopen(cfg, "w");
    fputs("{\"modle\": \"sim/base\"}", f);
    fclose(f);
    rc = dspex((const char *[]){"run", example("capitals.json"), "--input",
                                "question=Hi", NULL});
    cr_assert_eq(rc, 2);
    cr_assert(strstr(err_buf, "\"modle\""), "%s", err_buf);
    unsetenv("DSPEX_CONFIG");
    /* A model that cannot be used says why, not just "invalid argument". */
    rc = dspex((const char *[]){"run", example("capitals.json"), "--model",
                                "opneai/gpt-4o", "--input", "question=Hi",
                                NULL});
    cr_assert_eq(rc, 2);
    cr_assert(strstr(err_buf, "unknown provider \"opneai\""), "%s", err_buf);
    rc = dspex((const char *[]){"run", example("capitals.json"), "--model",
                                "openai-compatible/x", "--input", "question=Hi",
                                NULL});
    cr_assert_eq(rc, 2);
    cr_assert(strstr(err_buf, "needs the server's base URL"), "%s", err_buf);
}

Test(cli, agents_and_rag_programs_evaluate_on_the_two_hop_task)
{
    int rc = dspex((const char *[]){"eval", example("react_twohop.json"),
                                    data("twohop/dev.jsonl"), NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    double react = -1, rag = -1;
    cr_assert_eq(sscanf(out_buf, "score %lf%%", &react), 1, "%s", out_buf);
    rc = dspex((const char *[]){"eval", example("rag_bm25.json"),
                                data("twohop/dev.jsonl"), NULL});
    cr_assert_eq(rc, 0, "%s", err_buf);
    cr_assert_eq(sscanf(out_buf, "score %lf%%", &rag), 1, "%s", out_buf);
    /* The agent reads both hops; RAG retrieves once. */
    cr_assert_gt(react, rag, "react %.2f rag %.2f", react, rag);
    cr_assert_gt(rag, 30, "rag %.2f", rag);
}

/* --concurrency above the HTTP layer's default of 256 connections per host
 * holds against an HTTP/1.1 server, which takes one call per connection:
 * the local server holds every answer for a while and counts the calls it
 * owed at once. */
/* A local LM server started with o, its URL in url, and n questions
 * ("Question i?", answer "x") written to tmpdir/name, whose path goes in
 * path. */
static dx_lmserver *server_and_questions(const dx_lmserver_opts *o,
                                         char url[96], const char *name, int n,
                                         char path[200])
{
    dx_lmserver *srv = NULL;
    cr_assert_eq(dx_lmserver_start(o, &srv), DX_OK);
    snprintf(url, 96, "http://127.0.0.1:%d/v1", dx_lmserver_port(srv));
    snprintf(path, 200, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < n; i++)
        fprintf(f, "{\"question\": \"Question %d?\", \"answer\": \"x\"}\n", i);
    fclose(f);
    return srv;
}

Test(cli, eval_concurrency_above_256_reaches_an_http_1_1_server)
{
    char url[96], path[200];
    dx_lmserver_opts so = {.latency_ms = 1500, .max_connections = 2048};
    dx_lmserver *srv = server_and_questions(&so, url, "many.jsonl", 400, path);
    int rc = dspex((const char *[]){"eval", example("capitals.json"), path,
                                    "--model", "openai-compatible/x",
                                    "--base-url", url, "--api-key", "k",
                                    "--concurrency", "400", NULL});
    dx_lmserver_stats st;
    dx_lmserver_stats_get(srv, &st);
    dx_lmserver_stop_free(srv);
    cr_assert_eq(rc, 0, "%s", err_buf);
    cr_assert_gt(st.max_in_flight, 256, "at most %llu calls at once",
                 (unsigned long long)st.max_in_flight);
}

/* Once `calls` requests of the dspex run `pid` have reached srv (whose
 * answers hang), press Ctrl-C; stop srv and return the run's exit status. */
static int ctrl_c_after(dx_lmserver *srv, uint64_t calls, pid_t pid)
{
    dx_lmserver_stats st = {0};
    for (int i = 0; i < 60000 && st.requests < calls; i++) {
        usleep(1000);
        dx_lmserver_stats_get(srv, &st);
    }
    cr_assert_eq(st.requests, calls, "the calls reached the server");
    kill(pid, SIGINT);
    int rc = dspex_wait(pid);
    dx_lmserver_stop_free(srv);
    return rc;
}

/* Ctrl-C during an evaluation whose every call hangs: the calls in flight
 * are cancelled, the table and the rows file are still written, and the
 * exit status is 130 (128 + SIGINT, as a shell reports it), so a script
 * does not take a cut-short run for a finished one. */
Test(cli, eval_stops_on_ctrl_c_and_exits_130)
{
    char url[96], path[200], rows[240];
    dx_lmserver *srv = server_and_questions(
        &(dx_lmserver_opts){.latency_ms = 600000}, url, "hang.jsonl", 4, path);
    snprintf(rows, sizeof rows, "%s/rows.jsonl", tmpdir);
    pid_t pid = dspex_start(
        (const char *[]){"eval", example("capitals.json"), path, "--model",
                         "openai-compatible/x", "--base-url", url, "--api-key",
                         "k", "--out", rows, NULL});
    int rc = ctrl_c_after(srv, 4, pid);
    cr_expect_eq(rc, 130, "%s", err_buf);
    cr_expect(strstr(out_buf, "done      0/4, 0 errors, cancelled") != NULL,
              "%s", out_buf);
    cr_expect_eq(access(rows, F_OK), 0, "the rows file was written");
}

static size_t lines_in(const char *path, char *text, size_t cap)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    size_t n = fread(text, 1, cap - 1, f);
    fclose(f);
    text[n] = '\0';
    size_t lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += text[i] == '\n';
    return lines;
}

/* An evaluation killed outright (the OOM killer, a lost session) leaves
 * the rows of the examples that finished in OUT.partial, each a whole
 * line, and OUT as it was; --resume runs only the others (a fresh server
 * sees just their calls), writes OUT whole in dataset order and removes
 * the partial file. */
Test(cli, a_killed_eval_leaves_its_rows_and_resume_runs_only_the_rest)
{
    char url[96], path[200], rows[240], partial[260], text[8192];
    dx_lmserver *srv =
        server_and_questions(&(dx_lmserver_opts){0}, url, "six.jsonl", 6, path);
    /* One call per example (JSON adapter), one example at a time: three
     * are answered, the fourth hangs. */
    cr_assert_eq(dx_lmserver_inject(srv, "slow:1", 3), DX_OK);
    cr_assert_eq(dx_lmserver_inject(srv, "stall", 100), DX_OK);
    snprintf(rows, sizeof rows, "%s/killed.jsonl", tmpdir);
    snprintf(partial, sizeof partial, "%s.partial", rows);
    FILE *f = fopen(rows, "w");
    fputs("an earlier run's results\n", f);
    fclose(f);
    const char *args[] = {"eval",
                          example("capitals.json"),
                          path,
                          "--model",
                          "openai-compatible/x",
                          "--base-url",
                          url,
                          "--api-key",
                          "k",
                          "--adapter",
                          "json",
                          "--concurrency",
                          "1",
                          "--out",
                          rows,
                          NULL,
                          NULL};
    pid_t pid = dspex_start(args);
    dx_lmserver_stats st = {0};
    for (int i = 0; i < 60000 && st.requests < 4; i++) {
        usleep(1000);
        dx_lmserver_stats_get(srv, &st);
    }
    cr_assert_eq(st.requests, 4, "the fourth example's call arrived");
    kill(pid, SIGKILL);
    cr_expect_eq(dspex_wait(pid), 128 + SIGKILL);
    dx_lmserver_stop_free(srv);
    cr_assert_eq(lines_in(partial, text, sizeof text), 3, "%s", text);
    lines_in(rows, text, sizeof text);
    cr_expect_str_eq(text, "an earlier run's results\n");
    /* A row cut short as it was written. */
    f = fopen(partial, "a");
    fputs("{\"index\":3,\"exam", f);
    fclose(f);

    srv =
        server_and_questions(&(dx_lmserver_opts){0}, url, "six.jsonl", 6, path);
    /* Not started over by a run without --resume: its rows would be lost. */
    int rc = dspex(args);
    cr_expect_eq(rc, 2);
    cr_expect(strstr(err_buf, "killed.jsonl.partial holds the rows of a run "
                              "that did not finish: add --resume") != NULL,
              "%s", err_buf);
    args[15] = "--resume";
    rc = dspex(args);
    dx_lmserver_stats_get(srv, &st);
    dx_lmserver_stop_free(srv);
    cr_assert_eq(rc, 0, "%s", err_buf);
    cr_expect_eq(st.requests, 3, "only the three without a row ran");
    cr_expect(strstr(out_buf, "done      6/6, 0 errors, 3 resumed") != NULL,
              "%s", out_buf);
    cr_expect(strstr(err_buf, "killed.jsonl.partial: 3 of 6 examples finished "
                              "without an error; running the other 3 (its "
                              "last line was cut short") != NULL,
              "%s", err_buf);
    cr_expect_neq(access(partial, F_OK), 0, "the partial file is removed");
    cr_assert_eq(lines_in(rows, text, sizeof text), 6, "%s", text);
    const char *at = text;
    for (int i = 0; i < 6; i++) {
        char want[32];
        snprintf(want, sizeof want, "{\"index\":%d,", i);
        cr_expect(strncmp(at, want, strlen(want)) == 0, "line %d: %.40s", i,
                  at);
        at = strchr(at, '\n') + 1;
    }
}

/* --resume wants --out; a file that is not this dataset's rows is refused
 * before any call, and left as it was. */
Test(cli, eval_resume_refuses_rows_of_another_dataset_and_keeps_them)
{
    char url[96], path[200], rows[240], text[512];
    dx_lmserver *srv =
        server_and_questions(&(dx_lmserver_opts){0}, url, "two.jsonl", 2, path);
    int rc =
        dspex((const char *[]){"eval", example("capitals.json"), path,
                               "--model", "openai-compatible/x", "--base-url",
                               url, "--api-key", "k", "--resume", NULL});
    cr_expect_eq(rc, 2);
    cr_expect(strstr(err_buf, "--resume wants --out") != NULL, "%s", err_buf);

    snprintf(rows, sizeof rows, "%s/other.jsonl", tmpdir);
    const char *other = "{\"index\":1,\"example\":{\"question\":\"Elsewhere?\","
                        "\"answer\":\"x\"},\"score\":1}\n";
    FILE *f = fopen(rows, "w");
    fputs(other, f);
    fclose(f);
    rc = dspex((const char *[]){"eval", example("capitals.json"), path,
                                "--model", "openai-compatible/x", "--base-url",
                                url, "--api-key", "k", "--out", rows,
                                "--resume", NULL});
    dx_lmserver_stats st;
    dx_lmserver_stats_get(srv, &st);
    dx_lmserver_stop_free(srv);
    cr_expect_eq(rc, 2, "%s", err_buf);
    cr_expect(strstr(err_buf, "other.jsonl:1: the row of example 1 has "
                              "another example") != NULL,
              "%s", err_buf);
    cr_expect_eq(st.requests, 0);
    lines_in(rows, text, sizeof text);
    cr_expect_str_eq(text, other, "the file is left as it was");
}

/* The rows name the program, metric and model they came from: --resume
 * with another model is refused before any call and the rows are kept;
 * the same command resumes them (nothing left to run), even against the
 * model served again on another port. */
Test(cli, eval_resume_refuses_rows_of_another_model_and_keeps_them)
{
    char url[96], path[200], rows[240], before[4096], after[4096];
    dx_lmserver *srv = server_and_questions(&(dx_lmserver_opts){0}, url,
                                            "keyed.jsonl", 2, path);
    snprintf(rows, sizeof rows, "%s/keyed_rows.jsonl", tmpdir);
    const char *args[] = {"eval",
                          example("capitals.json"),
                          path,
                          "--model",
                          "openai-compatible/x",
                          "--base-url",
                          url,
                          "--api-key",
                          "k",
                          "--out",
                          rows,
                          NULL,
                          NULL};
    int rc = dspex(args);
    dx_lmserver_stop_free(srv);
    cr_assert_eq(rc, 0, "%s", err_buf);
    cr_assert_eq(lines_in(rows, before, sizeof before), 2, "%s", before);
    cr_expect(strstr(before, ",\"run_key\":\"") != NULL, "%s", before);

    srv = server_and_questions(&(dx_lmserver_opts){0}, url, "keyed.jsonl", 2,
                               path);
    args[4] = "openai-compatible/y";
    args[11] = "--resume";
    rc = dspex(args);
    dx_lmserver_stats st;
    dx_lmserver_stats_get(srv, &st);
    cr_expect_eq(rc, 2, "%s", err_buf);
    cr_expect(strstr(err_buf, "keyed_rows.jsonl are of another program, "
                              "metric or model (run key ") != NULL,
              "%s", err_buf);
    cr_expect_eq(st.requests, 0);
    lines_in(rows, after, sizeof after);
    cr_expect_str_eq(after, before, "the rows are left as they were");

    args[4] = "openai-compatible/x";
    rc = dspex(args);
    dx_lmserver_stats_get(srv, &st);
    dx_lmserver_stop_free(srv);
    cr_expect_eq(rc, 0, "%s", err_buf);
    cr_expect_eq(st.requests, 0, "every row was taken");
    cr_expect(strstr(out_buf, "2 resumed") != NULL, "%s", out_buf);
}

/* The config file's headers go with its endpoint (here the key, in the
 * header a gateway would take it in); --base-url naming another endpoint
 * leaves them out; a header the transport owns is refused naming the
 * file. */
Test(cli, a_config_files_headers_go_to_its_endpoint_only)
{
    char url[96], path[200], cfg[300], text[600];
    dx_lmserver *srv =
        server_and_questions(&(dx_lmserver_opts){0}, url, "cfg.jsonl", 2, path);
    unsetenv("OPENAI_API_KEY");
    snprintf(cfg, sizeof cfg, "%s/config.json", tmpdir);
    setenv("DSPEX_CONFIG", cfg, 1);
    snprintf(text, sizeof text,
             "{\"model\": \"openai-compatible/x\", \"base_url\": \"%s\", "
             "\"headers\": {\"Authorization\": \"Bearer from-config\", "
             "\"X-Route\": \"gpu\"}}",
             url);
    FILE *f = fopen(cfg, "w");
    fputs(text, f);
    fclose(f);
    int rc =
        dspex((const char *[]){"eval", example("capitals.json"), path, NULL});
    cr_expect_eq(rc, 0, "%s", err_buf);
    cr_expect(strstr(out_buf, "done      2/2, 0 errors") != NULL, "%s",
              out_buf);
    /* The same server named on the command line is another endpoint to
     * the config: its key does not go there. */
    rc = dspex((const char *[]){"eval", example("capitals.json"), path,
                                "--model", "openai-compatible/x", "--base-url",
                                url, NULL});
    cr_expect_eq(rc, 1, "%s", out_buf);
    cr_expect(strstr(err_buf, "API key") != NULL, "%s", err_buf);

    f = fopen(cfg, "w");
    fputs("{\"headers\": {\"Content-Length\": \"3\"}}", f);
    fclose(f);
    rc = dspex((const char *[]){"eval", example("capitals.json"), path, NULL});
    cr_expect_eq(rc, 2);
    cr_expect(strstr(err_buf, "config.json: \"headers\": Content-Length is "
                              "written by the transport") != NULL,
              "%s", err_buf);
    f = fopen(cfg, "w");
    fputs("{\"headers\": {\"X-Route\": 7}}", f);
    fclose(f);
    rc = dspex((const char *[]){"eval", example("capitals.json"), path, NULL});
    cr_expect_eq(rc, 2);
    cr_expect(strstr(err_buf, "\"X-Route\": expected a string") != NULL, "%s",
              err_buf);
    unsetenv("DSPEX_CONFIG");
    dx_lmserver_stop_free(srv);
}

/* Ctrl-C during an optimization whose teacher runs all hang: it stops,
 * says so, saves nothing and exits 130. */
Test(cli, optimize_stops_on_ctrl_c_and_exits_130)
{
    char url[96], path[200], saved[240];
    dx_lmserver *srv = server_and_questions(
        &(dx_lmserver_opts){.latency_ms = 600000}, url, "train.jsonl", 4, path);
    snprintf(saved, sizeof saved, "%s/optimized.json", tmpdir);
    pid_t pid = dspex_start((const char *[]){
        "optimize", example("capitals.json"), path, "--optimizer", "bootstrap",
        "-o", saved, "--model", "openai-compatible/x", "--base-url", url,
        "--api-key", "k", NULL});
    int rc = ctrl_c_after(srv, 4, pid);
    cr_expect_eq(rc, 130, "%s", err_buf);
    cr_expect(strstr(err_buf, "optimization cancelled") != NULL, "%s", err_buf);
    cr_expect_neq(access(saved, F_OK), 0, "nothing was saved");
}

/* A wrong key fails every example: the table still shows them, and the
 * exit status and stderr say so, so a script does not take 0 % for a
 * score. With the key, the same run exits 0. */
Test(cli, eval_exits_1_when_every_example_failed)
{
    char url[96], path[200];
    dx_lmserver *srv = server_and_questions(&(dx_lmserver_opts){0}, url,
                                            "three.jsonl", 3, path);
    unsetenv("OPENAI_API_KEY");
    int rc = dspex((const char *[]){"eval", example("capitals.json"), path,
                                    "--model", "openai-compatible/x",
                                    "--base-url", url, NULL});
    cr_expect_eq(rc, 1, "%s", err_buf);
    cr_expect(strstr(out_buf, "done      3/3, 3 errors") != NULL, "%s",
              out_buf);
    cr_expect(strstr(err_buf, "every example failed (3 of 3); the first: ") !=
                  NULL,
              "%s", err_buf);
    cr_expect(strstr(err_buf, "API key") != NULL, "%s", err_buf);
    /* DSPy's failure_score: what each failed example scores. */
    rc = dspex((const char *[]){"eval", example("capitals.json"), path,
                                "--model", "openai-compatible/x", "--base-url",
                                url, "--failure-score", "0.25", NULL});
    cr_expect_eq(rc, 1, "%s", err_buf);
    cr_expect(strstr(out_buf, "score     25.00%") != NULL, "%s", out_buf);
    rc = dspex((const char *[]){"eval", example("capitals.json"), path,
                                "--failure-score", "lots", NULL});
    cr_expect_eq(rc, 2);
    cr_expect(strstr(err_buf, "--failure-score wants a number") != NULL, "%s",
              err_buf);
    rc = dspex((const char *[]){"eval", example("capitals.json"), path,
                                "--model", "openai-compatible/x", "--base-url",
                                url, "--api-key", "k", NULL});
    cr_expect_eq(rc, 0, "%s", err_buf);
    cr_expect(strstr(out_buf, "done      3/3, 0 errors") != NULL, "%s",
              out_buf);
    /* The key in a header of the user's (as a gateway would take it). */
    rc = dspex(
        (const char *[]){"eval", example("capitals.json"), path, "--model",
                         "openai-compatible/x", "--base-url", url, "--header",
                         "Authorization:  Bearer sk-in-a-header ", NULL});
    cr_expect_eq(rc, 0, "%s", err_buf);
    cr_expect(strstr(out_buf, "done      3/3, 0 errors") != NULL, "%s",
              out_buf);
    rc = dspex((const char *[]){"eval", example("capitals.json"), path,
                                "--header", "Content-Length: 3", NULL});
    cr_expect_eq(rc, 2);
    cr_expect(strstr(err_buf, "--header: Content-Length is written by the "
                              "transport") != NULL,
              "%s", err_buf);
    rc = dspex((const char *[]){"eval", example("capitals.json"), path,
                                "--header", "X-Route gpu", NULL});
    cr_expect_eq(rc, 2);
    cr_expect(strstr(err_buf, "--header: a header is \"Name: value\"") != NULL,
              "%s", err_buf);
    dx_lmserver_stop_free(srv);
}
