/*
 * telemetry.c — the process-wide subscriber table and event fan-out.
 *
 * The table is a fixed array under a pthread mutex. Emit copies the matching
 * pids out under the lock and sends after unlocking: a process may be
 * switched out inside a runtime call, and it must never be while holding a
 * host mutex another process on the same scheduler thread could want.
 */
#include "dspex/telemetry.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/runtime.h"

typedef struct sub {
    dx_pid pid;
    char prefix[DX_TELEMETRY_NAME_MAX];
    size_t prefix_len;
} sub;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static sub subs[DX_TELEMETRY_MAX_SUBSCRIBERS];
/* Written under the lock; read without it by dx_telemetry_emit, so an
 * event nobody subscribed to costs no lock (every LM call emits two). */
static _Atomic int n_subs;

static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= cap)
        n = cap - 1;
    if (n > 0)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

void dx_telemetry_event_set(dx_telemetry_event *e, dx_telemetry_kind kind,
                            const char *name, const char *model)
{
    if (e == NULL)
        return;
    e->kind = kind;
    copy_str(e->name, sizeof e->name, name);
    copy_str(e->model, sizeof e->model, model);
}

/* Order does not matter to subscribers, so removal moves the last entry in.
 * Caller holds the lock. */
static void remove_at(int i)
{
    subs[i] = subs[--n_subs];
}

int dx_telemetry_subscribe(dx_pid subscriber, const char *prefix)
{
    if (dx_pid_is_none(subscriber) || prefix == NULL)
        return DX_EINVAL;
    size_t len = strlen(prefix);
    if (len >= DX_TELEMETRY_NAME_MAX)
        return DX_EINVAL;
    if (!dx_runtime_running())
        return DX_ESTATE;
    if (!dx_is_alive(subscriber))
        return DX_ENOPROC;
    int rc = DX_OK;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < n_subs; i++) {
        if (dx_pid_eq(subs[i].pid, subscriber) &&
            strcmp(subs[i].prefix, prefix) == 0) {
            rc = DX_EEXIST;
            goto out;
        }
    }
    if (n_subs == DX_TELEMETRY_MAX_SUBSCRIBERS) {
        for (int i = n_subs - 1; i >= 0; i--)
            if (!dx_is_alive(subs[i].pid))
                remove_at(i);
    }
    if (n_subs == DX_TELEMETRY_MAX_SUBSCRIBERS) {
        rc = DX_ELIMIT;
        goto out;
    }
    subs[n_subs].pid = subscriber;
    memcpy(subs[n_subs].prefix, prefix, len + 1);
    subs[n_subs].prefix_len = len;
    n_subs++;
out:
    pthread_mutex_unlock(&lock);
    return rc;
}

int dx_telemetry_unsubscribe(dx_pid subscriber, const char *prefix)
{
    if (dx_pid_is_none(subscriber))
        return DX_EINVAL;
    int removed = 0;
    pthread_mutex_lock(&lock);
    for (int i = n_subs - 1; i >= 0; i--) {
        if (dx_pid_eq(subs[i].pid, subscriber) &&
            (prefix == NULL || strcmp(subs[i].prefix, prefix) == 0)) {
            remove_at(i);
            removed++;
        }
    }
    pthread_mutex_unlock(&lock);
    return removed > 0 ? DX_OK : DX_ENOENT;
}

/* Drop pid's subscriptions after a send found it dead. */
static void drop_dead(dx_pid pid)
{
    pthread_mutex_lock(&lock);
    for (int i = n_subs - 1; i >= 0; i--)
        if (dx_pid_eq(subs[i].pid, pid))
            remove_at(i);
    pthread_mutex_unlock(&lock);
}

int dx_telemetry_emit(const dx_telemetry_event *e)
{
    if (e == NULL)
        return DX_EINVAL;
    if (!dx_runtime_running())
        return DX_ESTATE;
    if (atomic_load_explicit(&n_subs, memory_order_acquire) == 0)
        return DX_OK;
    dx_pid to[DX_TELEMETRY_MAX_SUBSCRIBERS];
    int n = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < n_subs; i++)
        if (strncmp(e->name, subs[i].prefix, subs[i].prefix_len) == 0)
            to[n++] = subs[i].pid;
    pthread_mutex_unlock(&lock);
    int rc = DX_OK;
    for (int i = 0; i < n; i++) {
        dx_telemetry_event *copy = dx_malloc(sizeof *copy);
        if (copy == NULL) {
            rc = DX_ENOMEM;
            continue;
        }
        *copy = *e;
        /* The name may arrive without a terminator from a caller that
         * filled the array itself; subscribers get a string. */
        copy->name[sizeof copy->name - 1] = '\0';
        copy->model[sizeof copy->model - 1] = '\0';
        int s = dx_send_ptr(to[i], DX_TELEMETRY_TAG, copy, dx_free);
        if (s == DX_ENOPROC)
            drop_dead(to[i]);
        else if (s == DX_ENOMEM)
            rc = DX_ENOMEM;
        else if (s == DX_ESTATE)
            rc = DX_ESTATE;
    }
    return rc;
}

int dx_telemetry_count(void)
{
    /* Without the lock: emitters ask before they build an event. */
    return atomic_load_explicit(&n_subs, memory_order_acquire);
}

void dx_telemetry_reset(void)
{
    pthread_mutex_lock(&lock);
    n_subs = 0;
    pthread_mutex_unlock(&lock);
}
