/*
 * test_examples.c — smoke tests of the example agents (examples/): each
 * binary meson built (in DX_EXAMPLES_DIR) runs on the offline sim model as
 * a user would run it, and what it promises to show is asserted: the
 * restart after a kill, the score going up after optimizing, the flaky
 * tool's crash and hang in the trajectory, the pipeline's complete report.
 * Under the sanitizer builds the examples are sanitized too, so a leak or
 * a race in them fails here.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char out_buf[1 << 18];
static char tmpdir[128];

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dx_examples_XXXXXX");
    cr_assert(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(examples, .init = setup, .fini = teardown, .timeout = 120);

/* Run examples/<name> with args (NULL-terminated) in tmpdir, stdout and
 * stderr into out_buf; returns the exit status (128 + signal). */
static int run(const char *name, const char *const *args)
{
    const char *dir = getenv("DX_EXAMPLES_DIR");
    cr_assert(dir, "DX_EXAMPLES_DIR is not set");
    char bin[512], out_path[200];
    snprintf(bin, sizeof bin, "%s/%s", dir, name);
    snprintf(out_path, sizeof out_path, "%s/output", tmpdir);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (chdir(tmpdir) != 0 || !freopen(out_path, "w", stdout) ||
            dup2(fileno(stdout), 2) < 0)
            _exit(126);
        const char *argv[16] = {bin};
        int n = 1;
        for (; args[n - 1] && n < 15; n++)
            argv[n] = args[n - 1];
        argv[n] = NULL;
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    FILE *f = fopen(out_path, "r");
    cr_assert(f);
    size_t n = fread(out_buf, 1, sizeof out_buf - 1, f);
    out_buf[n] = '\0';
    fclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* The percentages on the line starting with label (b: -1 if one). */
static void scores(const char *label, double *a, double *b)
{
    char line[128];
    snprintf(line, sizeof line, "\n%s ", label);
    const char *p = strstr(out_buf, line);
    cr_assert(p, "no line \"%s\" in:\n%s", label, out_buf);
    p += strlen(line);
    *b = -1;
    cr_assert_geq(sscanf(p, " %lf%% %lf%%", a, b), 1, "%s", p);
}

Test(examples, qa_agent_is_restarted_after_a_kill_and_answers_everything)
{
    int rc = run("qa_agent",
                 (const char *[]){"--questions", "4", "--kill-at", "2", NULL});
    cr_assert_eq(rc, 0, "%s", out_buf);
    cr_assert(strstr(out_buf, "[chaos] killing qa_agent"), "%s", out_buf);
    cr_assert(strstr(out_buf, "restarted qa_agent as"), "%s", out_buf);
    cr_assert(strstr(out_buf, "answered 4 of 4 questions"), "%s", out_buf);
    cr_assert(strstr(out_buf, "restarted the agent 1 time(s)"), "%s", out_buf);
    cr_assert_eq(count(out_buf, "  A: "), 4, "%s", out_buf);
}

Test(examples, rag_agent_scores_higher_after_bootstrap)
{
    cr_assert_eq(run("rag_agent", (const char *[]){NULL}), 0, "%s", out_buf);
    double before, after, unused;
    scores("RAG, zero-shot", &before, &unused);
    scores("RAG + BootstrapFewShot", &after, &unused);
    cr_assert_gt(after, before, "%s", out_buf);
    cr_assert(strstr(out_buf, "read 3 passage(s)"), "%s", out_buf);
    cr_assert(strstr(out_buf, "  answer: "), "%s", out_buf);
}

Test(examples, react_agent_sees_the_flaky_tool_fail_and_goes_on)
{
    cr_assert_eq(run("react_agent", (const char *[]){NULL}), 0, "%s", out_buf);
    cr_assert(strstr(out_buf, "-> 21.0"), "%s", out_buf);
    cr_assert(strstr(out_buf, "Execution error in search: the tool's process "
                              "died"),
              "%s", out_buf);
    cr_assert(strstr(out_buf, "Execution error in search: no result within "
                              "300 ms"),
              "%s", out_buf);
    /* After the failures the agent read both facts and finished. */
    cr_assert(strstr(out_buf, "is a city in"), "%s", out_buf);
    cr_assert_eq(count(out_buf, "Completed."), 2, "%s", out_buf);
    cr_assert_eq(count(out_buf, "  answer: "), 2, "%s", out_buf);
}

Test(examples, pipeline_report_is_complete_despite_a_researcher_crash)
{
    int rc = run("pipeline", (const char *[]){"--people", "4", NULL});
    cr_assert_eq(rc, 0, "%s", out_buf);
    cr_assert(strstr(out_buf, "restarted researcher_2 as"), "%s", out_buf);
    cr_assert(strstr(out_buf, "went down mid-call"), "%s", out_buf);
    cr_assert_eq(count(out_buf, "(by researcher_"), 4, "%s", out_buf);
    cr_assert(strstr(out_buf, "(by researcher_2)"), "%s", out_buf);
    cr_assert(strstr(out_buf, "restarts in the tree: 1"), "%s", out_buf);
}

Test(examples, optimize_improves_writes_the_report_and_resumes)
{
    cr_assert_eq(run("optimize", (const char *[]){"--out", "out", NULL}), 0,
                 "%s", out_buf);
    double b_dev, b_test, a_dev, a_test;
    scores("baseline (zero-shot)", &b_dev, &b_test);
    scores("MIPROv2 (light)", &a_dev, &a_test);
    cr_assert_gt(a_dev, b_dev, "%s", out_buf);
    cr_assert(strstr(out_buf, "(0 read back from the checkpoint)"), "%s",
              out_buf);
    char path[256], html[8192];
    snprintf(path, sizeof path, "%s/out/report.html", tmpdir);
    FILE *f = fopen(path, "r");
    cr_assert(f, "no %s", path);
    size_t n = fread(html, 1, sizeof html - 1, f);
    html[n] = '\0';
    fclose(f);
    cr_assert(strstr(html, "<svg"), "%s", html);
    snprintf(path, sizeof path, "%s/out/optimized.json", tmpdir);
    cr_assert_eq(access(path, R_OK), 0);

    /* Again with the same directory: every trial comes from the
     * checkpoint, no LM call is made, the result is the same. */
    cr_assert_eq(run("optimize", (const char *[]){"--out", "out", NULL}), 0,
                 "%s", out_buf);
    double again_dev, again_test;
    scores("MIPROv2 (light)", &again_dev, &again_test);
    cr_assert_float_eq(again_dev, a_dev, 1e-9);
    cr_assert(strstr(out_buf, ", 0 LM calls"), "%s", out_buf);
    cr_assert_eq(strstr(out_buf, "(0 read back"), NULL, "%s", out_buf);
}

Test(examples, bad_arguments_print_usage_and_exit_2)
{
    static const char *const names[] = {"qa_agent", "rag_agent", "react_agent",
                                        "pipeline", "optimize"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        cr_assert_eq(run(names[i], (const char *[]){"--bogus", NULL}), 2,
                     "%s: %s", names[i], out_buf);
        cr_assert(strstr(out_buf, "usage:"), "%s: %s", names[i], out_buf);
        cr_assert_eq(run(names[i], (const char *[]){"--model", NULL}), 2, "%s",
                     names[i]);
    }
    cr_assert_eq(run("optimize", (const char *[]){"--task", "poetry", NULL}),
                 2);
}

Test(examples, an_unknown_model_fails_cleanly)
{
    int rc = run("rag_agent", (const char *[]){"--model", "nosuch/x", NULL});
    cr_assert_eq(rc, 1, "%s", out_buf);
    cr_assert(strstr(out_buf, "nosuch/x"), "%s", out_buf);
}
