/*
 * eval_int.h — what evaluate.c shares with eval_report.c: progress display
 * and percentiles. Not installed.
 */
#ifndef DSPEX_EVAL_INT_H
#define DSPEX_EVAL_INT_H

#include <stdio.h>

#include "dspex/evaluate.h"

/* Progress of one evaluation. The bar (a TTY) is redrawn in place at most
 * ~10 times a second: [#####.....] done/total, running score (percent of
 * the done examples), errors, elapsed and ETA. Lines mode prints one plain
 * line every interval_s seconds (and at the end). OFF prints nothing.
 * AUTO picks BAR when isatty(fileno(out)), else LINES. Owned by the one
 * thread/process that runs the evaluation loop. */
typedef struct dx__progress dx__progress;

dx__progress *dx__progress_new(FILE *out, dx_eval_progress_mode mode,
                               size_t total, double interval_s);
/* Report the state now (prints if due). now_s: seconds since start. */
void dx__progress_update(dx__progress *p, size_t done, size_t errors,
                         double score_sum, double now_s);
/* When (seconds since start) an update with no news would next print
 * something: the bar's elapsed time and ETA, the next line. INFINITY when
 * nothing is shown. The evaluation loop sleeps no longer than this. */
double dx__progress_next_s(const dx__progress *p);
/* Final line (always printed unless OFF); ends the bar's line. */
void dx__progress_finish(dx__progress *p, size_t done, size_t errors,
                         double score_sum, double now_s, bool stopped);
void dx__progress_free(dx__progress *p);

/* The q-th percentile (0..100) of v[0..n) by linear interpolation between
 * closest ranks (numpy's default); sorts v in place. 0 for n == 0. */
double dx__percentile(double *v, size_t n, double q);

#endif
