/*
 * sim_int.h — what the simulated model (sim.c), its task families
 * (sim_tasks.c), the dataset bridge (sim_dataset.c) and the data generator
 * (simdata_main.c) share. Nothing here touches the programs layer, so the
 * model and the generator link with the providers library alone.
 */
#ifndef DSPEX_SIM_INT_H
#define DSPEX_SIM_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dspex/sim.h"

#define DX__SIM_TEXT_MAX 320
#define DX__SIM_ANSWER_MAX 96
#define DX__SIM_STEPS_MAX 480

/* One generated example: the input text and its answer. */
typedef struct dx__sim_item {
    char input[DX__SIM_TEXT_MAX];
    char answer[DX__SIM_ANSWER_MAX];
} dx__sim_item;

/* What the sim knows about one input: the task, the right answer, a
 * plausible wrong one and the reasoning towards each. For twohop, how many
 * of the two supporting facts the text itself states (0..2). */
typedef struct dx__sim_solution {
    dx_sim_task task;
    char answer[DX__SIM_ANSWER_MAX];
    char wrong[DX__SIM_ANSWER_MAX];
    char steps[DX__SIM_STEPS_MAX];
    char wrong_steps[DX__SIM_STEPS_MAX];
    int support;
    /* What identifies the question whatever else the prompt holds (the
     * matched question text): the skill model's draw is keyed on it. */
    char key[DX__SIM_TEXT_MAX];
} dx__sim_solution;

/* 64-bit mixing (splitmix64 finaliser) and FNV-1a over bytes, seeded. */
uint64_t dx__sim_mix(uint64_t x);
uint64_t dx__sim_hash(uint64_t h, const void *p, size_t n);
uint64_t dx__sim_hash_str(uint64_t h, const char *s);

/* "question"/"text" and "answer"/"label". */
const char *dx__sim_input_key(dx_sim_task t);
const char *dx__sim_output_key(dx_sim_task t);

/* n items of split (see dx_sim_generate). DX_OK with *out the caller's
 * (dx_free), DX_EINVAL, DX_ENOMEM. */
int dx__sim_generate_items(dx_sim_task t, const char *split, uint64_t seed,
                           size_t n, dx__sim_item **out);

/* Items as JSONL text, one compact object per line ({"question":...,
 * "answer":...}), exactly what the bundled files hold. *out is the caller's
 * (dx_free). DX_OK, DX_ENOMEM. */
int dx__sim_jsonl(dx_sim_task t, const dx__sim_item *items, size_t n,
                  char **out, size_t *len);

/* Recognise a task in text (all input values of one prompt) and solve it;
 * h picks among wrong answers. false when no task is recognised. */
bool dx__sim_solve(const char *text, uint64_t h, dx__sim_solution *out);

/* The person a twohop question in text asks about ("In which country was
 * NAME born?", NAME one of the task's people) into name; false if none. */
bool dx__sim_twohop_person(const char *text, char *name, size_t cap);

/* Words that, found in the instructions, tell the sim what the task is. */
const char *const *dx__sim_task_keywords(dx_sim_task t);

#endif
