/*
 * test_supervisor_chaos.c — 1,000 workers under a three-level supervision
 * tree (root → 5 middle supervisors → 4 leaf supervisors each → 50 workers
 * each), killed at random (workers mostly, supervisors now and then) for a
 * bounded time. Afterwards every permanent child must be alive, no
 * supervisor may have restarted more often than its intensity allows, and
 * once the tree is stopped the process count must be back to where it was.
 *
 * Leaves alternate the three static strategies and hold permanent,
 * transient and temporary workers; leaves have a low intensity so that
 * some give up and the middle level restarts them (escalation under load);
 * the root's intensity is high enough that the tree as a whole survives.
 */
#include <limits.h>
#include <stdlib.h>

#include "dspex/log.h"
#include "dspex/supervisor.h"
#include "kernel_test_util.h"

#define NMID 5
#define NLEAF 4  /* per middle supervisor */
#define NWORK 50 /* per leaf */
#define NLEAVES (NMID * NLEAF)
#define NWORKERS (NLEAVES * NWORK)

#define CHAOS_MS 2000
#define KILL_EVERY_MS 1

#define LEAF_INTENSITY 12
#define MID_INTENSITY 5
#define ROOT_INTENSITY 1000000
#define PERIOD_S 1

/* Everything the supervisors read lives here, never on a process stack. */
static struct {
    char leaf_ids[NLEAVES][8];
    char work_ids[NWORKERS][8];
    char mid_ids[NMID][8];
    int work_idx[NWORKERS];
    dx_child_spec work_specs[NLEAVES][NWORK];
    dx_sup_spec leaf_specs[NLEAVES];
    dx_child_spec leaf_children[NMID][NLEAF];
    dx_sup_spec mid_specs[NMID];
    dx_child_spec mid_children[NMID];
    dx_sup_spec root_spec;
    _Atomic uint64_t worker_pid[NWORKERS];
} t;

static atomic_long kills, sup_kills, gave_up;
static char summary[200]; /* printed by the host thread */

static void count_sink(const dx_log_record *r, void *ud)
{
    (void)ud;
    if (strcmp(r->event, "reached_max_restart_intensity") == 0)
        atomic_fetch_add(&gave_up, 1);
}

static void worker(void *arg)
{
    (void)arg;
    for (;;) {
        dx_msg *m = NULL;
        if (dx_receive_any(DX_INFINITY, &m) == DX_OK)
            dx_msg_free(m);
    }
}

static int work_start(void *arg, void *extra, dx_pid *pid_out)
{
    (void)extra;
    int idx = *(const int *)arg;
    int rc = dx_spawn_link(worker, NULL, pid_out);
    if (rc == DX_OK)
        atomic_store(&t.worker_pid[idx], pid_out->id);
    return rc;
}

static dx_sup_restart restart_of(int j)
{
    return j % 10 == 0   ? DX_SUP_TEMPORARY
           : j % 10 == 1 ? DX_SUP_TRANSIENT
                         : DX_SUP_PERMANENT;
}

static void build_tree(void)
{
    static const dx_sup_strategy strategies[] = {
        DX_SUP_ONE_FOR_ONE, DX_SUP_ONE_FOR_ALL, DX_SUP_REST_FOR_ONE};
    for (int l = 0; l < NLEAVES; l++) {
        for (int j = 0; j < NWORK; j++) {
            int idx = l * NWORK + j;
            t.work_idx[idx] = idx;
            snprintf(t.work_ids[idx], sizeof t.work_ids[idx], "w%d", j);
            t.work_specs[l][j] = (dx_child_spec){
                .id = t.work_ids[idx],
                .start = work_start,
                .arg = &t.work_idx[idx],
                .restart = restart_of(j),
                .shutdown_ms = (j % 2) ? DX_SUP_BRUTAL_KILL : 1000,
            };
        }
        t.leaf_specs[l] = (dx_sup_spec){
            .strategy = strategies[l % 3],
            .intensity = LEAF_INTENSITY,
            .period_s = PERIOD_S,
            .children = t.work_specs[l],
            .nchildren = NWORK,
        };
    }
    for (int m = 0; m < NMID; m++) {
        for (int k = 0; k < NLEAF; k++) {
            int l = m * NLEAF + k;
            snprintf(t.leaf_ids[l], sizeof t.leaf_ids[l], "leaf%d", k);
            t.leaf_children[m][k] = (dx_child_spec){
                .id = t.leaf_ids[l],
                .start = dx_sup_start_nested,
                .arg = &t.leaf_specs[l],
                .type = DX_SUP_SUPERVISOR,
            };
        }
        t.mid_specs[m] = (dx_sup_spec){
            .strategy = DX_SUP_ONE_FOR_ONE,
            .intensity = MID_INTENSITY,
            .period_s = PERIOD_S,
            .children = t.leaf_children[m],
            .nchildren = NLEAF,
        };
        snprintf(t.mid_ids[m], sizeof t.mid_ids[m], "mid%d", m);
        t.mid_children[m] = (dx_child_spec){
            .id = t.mid_ids[m],
            .start = dx_sup_start_nested,
            .arg = &t.mid_specs[m],
            .type = DX_SUP_SUPERVISOR,
        };
    }
    t.root_spec = (dx_sup_spec){
        .name = "chaos_root",
        .intensity = ROOT_INTENSITY,
        .period_s = PERIOD_S,
        .children = t.mid_children,
        .nchildren = NMID,
    };
}

/* The killer: random workers, and every so often a leaf or a middle
 * supervisor (found through the run-time API, as an operator would). */
static void killer(void *arg)
{
    dx_pid root = *(const dx_pid *)arg;
    unsigned seed = 4242;
    int64_t end = dx_now_ms() + CHAOS_MS;
    long n = 0;
    while (dx_now_ms() < end) {
        n++;
        if (n % 97 == 0 || n % 251 == 0) {
            int m = rand_r(&seed) % NMID;
            dx_pid mid = DX_NOPID, victim = DX_NOPID;
            dx_sup_find_child(root, t.mid_ids[m], &mid);
            if (n % 251 == 0)
                victim = mid;
            else if (!dx_pid_is_none(mid))
                dx_sup_find_child(mid,
                                  t.leaf_ids[m * NLEAF + rand_r(&seed) % NLEAF],
                                  &victim);
            if (!dx_pid_is_none(victim) && dx_kill(victim) == DX_OK)
                atomic_fetch_add(&sup_kills, 1);
        } else {
            int idx = rand_r(&seed) % NWORKERS;
            dx_pid w = {atomic_load(&t.worker_pid[idx])};
            if (dx_kill(w) == DX_OK)
                atomic_fetch_add(&kills, 1);
        }
        dx_sleep(KILL_EVERY_MS);
    }
}

/* Whether a supervisor's counts respect its intensity: never more than
 * `intensity` restarts inside the current period, and over a life of at
 * most life_s seconds no more than intensity per started period. */
static bool within(const dx_sup_counts *k, long intensity, int64_t life_s,
                   long *worst)
{
    long over = (long)k->restarts_in_period - intensity;
    if (over > *worst)
        *worst = over;
    return over <= 0 && k->restarts <= (uint64_t)(life_s / PERIOD_S + 1) *
                                           (uint64_t)intensity;
}

/* Whether every permanent (and every transient: kills are abnormal) child
 * of the whole tree runs, and every supervisor kept within its intensity
 * (*bounds_ok; *worst is the largest restarts_in_period - intensity). */
static bool tree_complete(dx_pid root, int64_t life_s, bool *bounds_ok,
                          long *worst, uint64_t *total)
{
    bool ok = true;
    dx_sup_child *mids = NULL, *leaves = NULL, *works = NULL;
    size_t nm = 0, nl = 0, nw = 0;
    dx_sup_counts k;
    *worst = LONG_MIN;
    *total = 0;
    if (dx_sup_count_children(root, &k) != DX_OK)
        return false;
    *bounds_ok = within(&k, ROOT_INTENSITY, life_s, worst);
    *total += k.restarts;
    if (dx_sup_which_children(root, &mids, &nm) != DX_OK || nm != NMID)
        ok = false;
    for (size_t m = 0; ok && m < nm; m++) {
        if (mids[m].status != DX_SUP_CHILD_RUNNING ||
            dx_sup_count_children(mids[m].pid, &k) != DX_OK) {
            ok = false;
            break;
        }
        *bounds_ok &= within(&k, MID_INTENSITY, life_s, worst);
        *total += k.restarts;
        if (dx_sup_which_children(mids[m].pid, &leaves, &nl) != DX_OK ||
            nl != NLEAF)
            ok = false;
        for (size_t l = 0; ok && l < nl; l++) {
            if (leaves[l].status != DX_SUP_CHILD_RUNNING ||
                dx_sup_count_children(leaves[l].pid, &k) != DX_OK) {
                ok = false;
                break;
            }
            *bounds_ok &= within(&k, LEAF_INTENSITY, life_s, worst);
            *total += k.restarts;
            if (dx_sup_which_children(leaves[l].pid, &works, &nw) != DX_OK)
                ok = false;
            for (size_t w = 0; ok && w < nw; w++) {
                if (works[w].restart == DX_SUP_TEMPORARY)
                    continue;
                if (works[w].status != DX_SUP_CHILD_RUNNING ||
                    !dx_is_alive(works[w].pid))
                    ok = false;
            }
            /* Every permanent and transient worker is still listed. */
            size_t kept = 0;
            for (size_t w = 0; w < nw; w++)
                kept += works[w].restart != DX_SUP_TEMPORARY;
            if (kept != NWORK - NWORK / 10)
                ok = false;
            dx_free(works);
            works = NULL;
        }
        dx_free(leaves);
        leaves = NULL;
    }
    dx_free(mids);
    return ok;
}

static void chaos_body(void *arg)
{
    (void)arg;
    size_t base = dx_process_count();
    dx_pid root;
    int64_t t0 = dx_now_ms();
    if (!KT_CHECK_RC(dx_sup_start_link(&t.root_spec, &root, NULL), DX_OK))
        return;
    /* root + mids + leaves + workers */
    KT_CHECK_EQ(dx_process_count(), base + 1 + NMID + NLEAVES + NWORKERS);

    static dx_pid root_copy;
    root_copy = root;
    dx_pid kp;
    dx_ref kref;
    KT_CHECK_RC(dx_spawn_monitor(killer, &root_copy, &kp, &kref), DX_OK);
    dx_term_free(kt_await_down(kref, CHAOS_MS + KT_WAIT_MS));
    KT_CHECK(atomic_load(&kills) > 100);

    /* Let in-flight restarts finish, then everything must be there. */
    long worst = 0;
    uint64_t total = 0;
    bool complete = false, bounds_ok = false;
    for (int i = 0; i < 500 && !complete; i++) {
        /* Whole seconds since the tree started, rounded up: no supervisor
         * in it has lived longer. */
        int64_t life_s = (dx_now_ms() - t0 + 999) / 1000;
        complete = tree_complete(root, life_s, &bounds_ok, &worst, &total);
        if (!complete)
            dx_sleep(20);
    }
    KT_CHECK(complete);
    KT_CHECK(bounds_ok);
    KT_CHECK(worst <= 0);
    KT_CHECK(total > 0);
    KT_CHECK(dx_is_alive(root));

    KT_CHECK_RC(dx_sup_stop(root, NULL, KT_WAIT_MS), DX_OK);
    size_t n = dx_process_count();
    for (int i = 0; i < 2000 && n != base; i++) {
        dx_sleep(5);
        n = dx_process_count();
    }
    KT_CHECK_EQ(n, base);
    snprintf(summary, sizeof summary,
             "chaos: %ld worker kills, %ld supervisor kills, %llu restarts "
             "counted by live supervisors, %ld gave up",
             atomic_load(&kills), atomic_load(&sup_kills),
             (unsigned long long)total, atomic_load(&gave_up));
}

Test(supervisor_chaos,
     random_kills_leave_every_permanent_child_alive_and_no_leak, .timeout = 120)
{
    build_tree();
    dx_log_set_sink(count_sink, NULL);
    dx_log_set_level(DX_LOG_ERROR);
    kt_body_test(2, chaos_body, NULL);
    dx_log_set_sink(NULL, NULL);
    cr_log_info("%s", summary);
}
