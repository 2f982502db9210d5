/*
 * registry.c — the name registry: register/whereis/unregister, and names
 * that die with their process.
 *
 * One hash table of name -> pid behind a mutex. A process's name (and its
 * introspection label) is also reachable from its control block; both are
 * changed only under this lock, so a process that is exiting and a thread
 * that registers it cannot both win.
 */
#include <string.h>

#include "dx_internal.h"

typedef struct entry {
    struct entry *next;
    dx_pid pid;
    char *name;
} entry;

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static entry **buckets;
static size_t nbuckets, nentries;

#define NAME_MAX_LEN 255

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

void dx__registry_lock(void)
{
    pthread_mutex_lock(&reg_mu);
}
void dx__registry_unlock(void)
{
    pthread_mutex_unlock(&reg_mu);
}

void dx__registry_init(void)
{
    pthread_mutex_lock(&reg_mu);
    buckets = NULL;
    nbuckets = nentries = 0;
    pthread_mutex_unlock(&reg_mu);
}

void dx__registry_destroy(void)
{
    pthread_mutex_lock(&reg_mu);
    for (size_t i = 0; i < nbuckets; i++) {
        entry *e = buckets[i];
        while (e) {
            entry *next = e->next;
            dx_free(e->name);
            dx_free(e);
            e = next;
        }
    }
    dx_free(buckets);
    buckets = NULL;
    nbuckets = nentries = 0;
    pthread_mutex_unlock(&reg_mu);
}

static entry **find(const char *name)
{
    if (nbuckets == 0)
        return NULL;
    entry **pp = &buckets[hash_name(name) & (nbuckets - 1)];
    while (*pp && strcmp((*pp)->name, name) != 0)
        pp = &(*pp)->next;
    return pp;
}

static int grow(void)
{
    size_t n = nbuckets ? nbuckets * 2 : 64;
    entry **nb = dx_calloc(n, sizeof *nb);
    if (nb == NULL)
        return DX_ENOMEM;
    for (size_t i = 0; i < nbuckets; i++) {
        entry *e = buckets[i];
        while (e) {
            entry *next = e->next;
            size_t b = hash_name(e->name) & (n - 1);
            e->next = nb[b];
            nb[b] = e;
            e = next;
        }
    }
    dx_free(buckets);
    buckets = nb;
    nbuckets = n;
    return DX_OK;
}

/* Register p (alive, owned by the caller's bracket) under name. */
int dx__registry_add(dx__proc *p, const char *name)
{
    if (name == NULL || *name == '\0' || strlen(name) > NAME_MAX_LEN)
        return DX_EINVAL;
    pthread_mutex_lock(&reg_mu);
    int rc = DX_OK;
    entry **pp;
    if (atomic_load(&p->state) == DX__EXITING)
        rc = DX_ENOPROC;
    else if (p->name != NULL || ((pp = find(name)) != NULL && *pp != NULL))
        rc = DX_EEXIST;
    else if (nentries >= nbuckets && grow() != DX_OK)
        rc = DX_ENOMEM;
    if (rc == DX_OK) {
        entry *e = dx_malloc(sizeof *e);
        char *copy = dx_strdup(name);
        if (e == NULL || copy == NULL) {
            dx_free(e);
            dx_free(copy);
            rc = DX_ENOMEM;
        } else {
            size_t b = hash_name(name) & (nbuckets - 1);
            e->name = copy;
            e->pid = p->pid;
            e->next = buckets[b];
            buckets[b] = e;
            nentries++;
            /* seq_cst pairs with the exiting side (dx__registry_drop). */
            __atomic_store_n(&p->name, copy, __ATOMIC_SEQ_CST);
        }
    }
    pthread_mutex_unlock(&reg_mu);
    return rc;
}

void dx__registry_drop(dx__proc *p)
{
    /* Most processes have neither a name nor a label: skip the global lock.
     * The exiting process stored EXITING (seq_cst) before this load, and a
     * registration checks EXITING before its seq_cst store of the name, so
     * one of the two sees the other. The label is written only by p. */
    if (__atomic_load_n(&p->name, __ATOMIC_SEQ_CST) == NULL && p->label == NULL)
        return;
    pthread_mutex_lock(&reg_mu);
    if (p->name != NULL) {
        entry **pp = find(p->name);
        if (pp && *pp && (*pp)->pid.id == p->pid.id) {
            entry *e = *pp;
            *pp = e->next;
            dx_free(e->name);
            dx_free(e);
            nentries--;
        }
        __atomic_store_n(&p->name, NULL, __ATOMIC_SEQ_CST);
    }
    dx_free(p->label);
    p->label = NULL;
    pthread_mutex_unlock(&reg_mu);
}

int dx_register(const char *name, dx_pid pid)
{
    int entered;
    int rc = dx__ext_enter(&entered);
    if (rc != DX_OK)
        return rc;
    dx__proc *p = dx__lookup(pid);
    rc = p ? dx__registry_add(p, name) : DX_ENOPROC;
    dx__ext_leave(entered);
    return rc;
}

int dx_unregister(const char *name)
{
    if (name == NULL)
        return DX_EINVAL;
    int entered;
    int rc = dx__ext_enter(&entered);
    if (rc != DX_OK)
        return rc;
    pthread_mutex_lock(&reg_mu);
    entry **pp = find(name);
    if (pp == NULL || *pp == NULL) {
        rc = DX_ENOENT;
    } else {
        entry *e = *pp;
        *pp = e->next;
        nentries--;
        dx__proc *p = dx__lookup(e->pid);
        if (p != NULL && p->name == e->name)
            __atomic_store_n(&p->name, NULL, __ATOMIC_SEQ_CST);
        dx_free(e->name);
        dx_free(e);
    }
    pthread_mutex_unlock(&reg_mu);
    dx__ext_leave(entered);
    return rc;
}

dx_pid dx_whereis(const char *name)
{
    if (name == NULL)
        return DX_NOPID;
    dx_pid pid = DX_NOPID;
    pthread_mutex_lock(&reg_mu);
    entry **pp = find(name);
    if (pp && *pp)
        pid = (*pp)->pid;
    pthread_mutex_unlock(&reg_mu);
    return pid;
}

int dx_send_named(const char *name, dx_msg *m)
{
    dx_pid pid = dx_whereis(name);
    if (pid.id == 0) {
        dx_msg_free(m);
        return DX_ENOPROC;
    }
    return dx_send(pid, m);
}
