/*
 * term.c — dx_term: the global atom table, construction and inspection of
 * terms, deep copy and free, equality, Erlang's standard term order, and
 * printing in Erlang syntax.
 *
 * A dx_term * is a tagged word. Low three bits 0: a pointer to one heap node
 * from dx_malloc (so the allocator must return 8-byte aligned blocks; a
 * misaligned block is treated as an allocation failure). Low bits 1: a small
 * integer, value = word >> 3, for every int64 that fits in 61 signed bits
 * (larger ones are boxed INT nodes, so each integer has exactly one
 * representation and equality never compares an immediate with a box).
 * Low bits 2: an atom, word >> 3 = its index in the atom table.
 *
 * Terms are built by dspex code (and, later, by the external-term-format
 * decoder, which limits nesting depth), so copy, free, equal, compare and
 * format recurse over the tree; the depth is bounded by what the decoder
 * accepts, not checked here.
 */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/term.h"

#define TAG_MASK ((uintptr_t)7)
#define TAG_PTR ((uintptr_t)0)
#define TAG_INT ((uintptr_t)1)
#define TAG_ATOM ((uintptr_t)2)
#define SMALL_MIN (INTPTR_MIN / 8)
#define SMALL_MAX (INTPTR_MAX / 8)

#define NONE SIZE_MAX

/* Below this many pairs a map is searched linearly; from it on, a hash
 * index (positions + 1 in an open-addressing table, load <= 1/2) keeps
 * put/get O(1) so a large decoded map cannot make building it quadratic. */
#define MAP_LINEAR_MAX 8
/* Pair positions are stored as uint32 in the index, cap doubles, and the
 * keys+values block (4 * pairs pointers at most) must fit in a size_t. */
#define MAP_MAX_PAIRS                                                          \
    (SIZE_MAX / 4 / sizeof(dx_term *) < ((size_t)1 << 30)                      \
         ? SIZE_MAX / 4 / sizeof(dx_term *)                                    \
         : ((size_t)1 << 30))

struct dx_term {
    dx_term_type type;
    union {
        int64_t i;
        double f;
        uint64_t id;
        struct {
            size_t len;
            const char *data; /* the bytes follow the node, NUL-ended */
        } bin;
        struct {
            size_t n, cap;
            dx_term **items; /* tuples: after the node; lists: own block */
        } seq;
        struct {
            uint32_t n, cap;
            dx_term **kv; /* keys in kv[0..cap), values in kv[cap..2cap) */
            uint32_t *index;
            size_t imask;
        } map;
    } u;
};

_Static_assert(sizeof(dx_term) % 8 == 0, "trailing storage stays aligned");

static inline uintptr_t word(const dx_term *t)
{
    return (uintptr_t)t;
}

static inline bool is_node(const dx_term *t)
{
    return t != NULL && (word(t) & TAG_MASK) == TAG_PTR;
}

static inline bool is_small(const dx_term *t)
{
    return (word(t) & TAG_MASK) == TAG_INT;
}

static inline bool is_atom(const dx_term *t)
{
    return (word(t) & TAG_MASK) == TAG_ATOM;
}

static inline bool node_is(const dx_term *t, dx_term_type type)
{
    return is_node(t) && t->type == type;
}

static inline dx_term *make_small(int64_t v)
{
    return (dx_term *)(((uintptr_t)(intptr_t)v << 3) | TAG_INT);
}

/* Exact division of the untagged word: no reliance on how >> treats
 * negative numbers. */
static inline int64_t small_value(const dx_term *t)
{
    return (int64_t)((intptr_t)(word(t) & ~TAG_MASK) / 8);
}

static inline dx_term *make_atom(size_t index)
{
    return (dx_term *)(((uintptr_t)index << 3) | TAG_ATOM);
}

static inline size_t atom_index(const dx_term *t)
{
    return (size_t)(word(t) >> 3);
}

/* ---- hashing (atom table and map index) ---- */

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* Seeded from an address so that, with ASLR, colliding names or keys cannot
 * be precomputed; constant for the life of the process, which map copies
 * (they copy the index as is) rely on. */
static uint64_t hash_seed(void)
{
    static const char anchor = 0;
    return mix((uint64_t)(uintptr_t)&anchor ^ 0x9e3779b97f4a7c15ull);
}

static uint64_t hash_bytes(const void *data, size_t len, uint64_t h)
{
    const unsigned char *p = data;
    h ^= (uint64_t)len * 0x9e3779b97f4a7c15ull;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = mix(h ^ w) + 0x632be59bd9b4e019ull;
        p += 8;
        len -= 8;
    }
    if (len > 0) {
        uint64_t w = 0;
        memcpy(&w, p, len);
        h = mix(h ^ w ^ 0xa5a5a5a5a5a5a5a5ull);
    }
    return mix(h);
}

/* ---- the atom table ----
 *
 * Atoms are never freed (like Erlang's atom table), so a lookup never races
 * with a removal. Names live in slabs; an index's record is found through a
 * fixed array of chunk pointers, so records never move. Lookups probe an
 * open-addressing table of (hash32 << 32 | index + 1) words without a lock;
 * only inserting takes atom_mu. Growing builds a new table and publishes it;
 * old tables stay allocated (and linked, so they stay reachable) because a
 * reader may still be probing one. A reader that misses in a stale table
 * retries under the lock against the current one.
 *
 * The table's memory comes from the allocator in use when an atom is first
 * interned and is kept for the life of the OS process.
 */

#define ATOM_CHUNK_BITS 12
#define ATOM_CHUNK_LEN ((size_t)1 << ATOM_CHUNK_BITS)
#define ATOM_CHUNKS 256
/* Like Erlang's default atom limit: atoms are never collected, so names
 * coming from outside must not grow the table without bound. */
#define ATOM_LIMIT (ATOM_CHUNK_LEN * ATOM_CHUNKS)
#define ATOM_SLAB_SIZE 16384
#define ATOM_SLAB_HDR 16
#define ATOM_TABLE_MIN 4096

typedef struct atom_rec {
    uint32_t len;
    char name[];
} atom_rec;

typedef struct atom_table {
    size_t mask;
    struct atom_table *older;
    _Atomic uint64_t slots[];
} atom_table;

static pthread_mutex_t atom_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(atom_rec **) atom_chunks[ATOM_CHUNKS];
static _Atomic(atom_table *) atom_tab;
static size_t atom_count; /* atom_mu */
static char *atom_slab;   /* atom_mu; first word links the previous slab */
static size_t atom_slab_used;

static const atom_rec *atom_rec_at(size_t index)
{
    if (index >= ATOM_LIMIT)
        return NULL;
    atom_rec **chunk = atomic_load_explicit(
        &atom_chunks[index >> ATOM_CHUNK_BITS], memory_order_acquire);
    return chunk ? chunk[index & (ATOM_CHUNK_LEN - 1)] : NULL;
}

static uint32_t atom_hash(const char *name, size_t len)
{
    return (uint32_t)hash_bytes(name, len, hash_seed() ^ 0x41544f4dull);
}

static dx_term *atom_probe(atom_table *tab, uint32_t h, const char *name,
                           size_t len)
{
    for (size_t i = h & tab->mask;; i = (i + 1) & tab->mask) {
        uint64_t s = atomic_load_explicit(&tab->slots[i], memory_order_acquire);
        if (s == 0)
            return NULL;
        if ((uint32_t)(s >> 32) != h)
            continue;
        size_t index = (size_t)(uint32_t)s - 1;
        const atom_rec *r = atom_rec_at(index);
        if (r != NULL && r->len == len && memcmp(r->name, name, len) == 0)
            return make_atom(index);
    }
}

static void table_place(atom_table *tab, uint64_t s, memory_order order)
{
    size_t i = (uint32_t)(s >> 32) & tab->mask;
    while (atomic_load_explicit(&tab->slots[i], memory_order_relaxed) != 0)
        i = (i + 1) & tab->mask;
    atomic_store_explicit(&tab->slots[i], s, order);
}

static atom_table *atom_grow(atom_table *old)
{
    size_t nslots = old ? (old->mask + 1) * 2 : ATOM_TABLE_MIN;
    atom_table *t = dx_malloc(sizeof *t + nslots * sizeof(uint64_t));
    if (t == NULL)
        return NULL;
    t->mask = nslots - 1;
    t->older = old;
    for (size_t i = 0; i < nslots; i++)
        atomic_init(&t->slots[i], 0);
    if (old != NULL) {
        for (size_t i = 0; i <= old->mask; i++) {
            uint64_t s =
                atomic_load_explicit(&old->slots[i], memory_order_relaxed);
            if (s != 0)
                table_place(t, s, memory_order_relaxed);
        }
    }
    atomic_store_explicit(&atom_tab, t, memory_order_release);
    return t;
}

static void *slab_alloc(size_t size)
{
    size = (size + 7) & ~(size_t)7;
    if (atom_slab == NULL || atom_slab_used + size > ATOM_SLAB_SIZE) {
        char *s = dx_malloc(ATOM_SLAB_SIZE);
        if (s == NULL)
            return NULL;
        memcpy(s, &atom_slab, sizeof atom_slab);
        atom_slab = s;
        atom_slab_used = ATOM_SLAB_HDR;
    }
    void *p = atom_slab + atom_slab_used;
    atom_slab_used += size;
    return p;
}

/* Everything that can fail happens before the atom is published, so a
 * failure leaves the table as it was (a grown table or a new chunk is simply
 * used by the next insert). */
static dx_term *atom_insert_locked(uint32_t h, const char *name, size_t len)
{
    atom_table *tab = atomic_load_explicit(&atom_tab, memory_order_relaxed);
    if (tab != NULL) {
        dx_term *a = atom_probe(tab, h, name, len);
        if (a != NULL)
            return a;
    }
    if (atom_count >= ATOM_LIMIT)
        return NULL;
    if (tab == NULL || (atom_count + 1) * 2 > tab->mask + 1) {
        tab = atom_grow(tab);
        if (tab == NULL)
            return NULL;
    }
    size_t index = atom_count;
    size_t c = index >> ATOM_CHUNK_BITS;
    atom_rec **chunk =
        atomic_load_explicit(&atom_chunks[c], memory_order_relaxed);
    if (chunk == NULL) {
        chunk = dx_calloc(ATOM_CHUNK_LEN, sizeof *chunk);
        if (chunk == NULL)
            return NULL;
        atomic_store_explicit(&atom_chunks[c], chunk, memory_order_release);
    }
    atom_rec *r = slab_alloc(sizeof *r + len + 1);
    if (r == NULL)
        return NULL;
    r->len = (uint32_t)len;
    if (len > 0)
        memcpy(r->name, name, len);
    r->name[len] = '\0';
    chunk[index & (ATOM_CHUNK_LEN - 1)] = r;
    atom_count++;
    table_place(tab, ((uint64_t)h << 32) | (uint64_t)(index + 1),
                memory_order_release);
    return make_atom(index);
}

/* An existing atom, or NULL; never creates one (lookups by name must not
 * grow the table). */
static dx_term *atom_find(const char *name, size_t len)
{
    if (len > DX_ATOM_MAX_LEN)
        return NULL;
    atom_table *tab = atomic_load_explicit(&atom_tab, memory_order_acquire);
    return tab ? atom_probe(tab, atom_hash(name, len), name, len) : NULL;
}

dx_term *dx_atom_n(const char *name, size_t len)
{
    if (name == NULL || len > DX_ATOM_MAX_LEN)
        return NULL;
    uint32_t h = atom_hash(name, len);
    atom_table *tab = atomic_load_explicit(&atom_tab, memory_order_acquire);
    if (tab != NULL) {
        dx_term *a = atom_probe(tab, h, name, len);
        if (a != NULL)
            return a;
    }
    pthread_mutex_lock(&atom_mu);
    dx_term *a = atom_insert_locked(h, name, len);
    pthread_mutex_unlock(&atom_mu);
    return a;
}

dx_term *dx_atom(const char *name)
{
    if (name == NULL)
        return NULL;
    size_t len = strnlen(name, DX_ATOM_MAX_LEN + 1);
    return len > DX_ATOM_MAX_LEN ? NULL : dx_atom_n(name, len);
}

/* ---- construction ---- */

static dx_term *node_new(dx_term_type type, size_t extra)
{
    if (extra > SIZE_MAX - sizeof(dx_term))
        return NULL;
    dx_term *t = dx_malloc(sizeof(dx_term) + extra);
    if (t == NULL)
        return NULL;
    if ((word(t) & TAG_MASK) != 0) {
        /* The tags need 8-byte alignment; an allocator that breaks it
         * cannot hold terms. */
        dx_free(t);
        return NULL;
    }
    t->type = type;
    return t;
}

dx_term *dx_int(int64_t v)
{
    if (v >= SMALL_MIN && v <= SMALL_MAX)
        return make_small(v);
    dx_term *t = node_new(DX_TERM_INT, 0);
    if (t != NULL)
        t->u.i = v;
    return t;
}

dx_term *dx_float(double v)
{
    dx_term *t = node_new(DX_TERM_FLOAT, 0);
    if (t != NULL)
        t->u.f = v;
    return t;
}

dx_term *dx_binary(const void *data, size_t len)
{
    if (data == NULL && len > 0)
        return NULL;
    if (len == SIZE_MAX)
        return NULL;
    dx_term *t = node_new(DX_TERM_BINARY, len + 1);
    if (t == NULL)
        return NULL;
    char *bytes = (char *)(t + 1);
    if (len > 0)
        memcpy(bytes, data, len);
    bytes[len] = '\0';
    t->u.bin.len = len;
    t->u.bin.data = bytes;
    return t;
}

dx_term *dx_str(const char *s)
{
    return s ? dx_binary(s, strlen(s)) : NULL;
}

dx_term *dx_pid_term(dx_pid pid)
{
    dx_term *t = node_new(DX_TERM_PID, 0);
    if (t != NULL)
        t->u.id = pid.id;
    return t;
}

dx_term *dx_ref_term(dx_ref ref)
{
    dx_term *t = node_new(DX_TERM_REF, 0);
    if (t != NULL)
        t->u.id = ref.id;
    return t;
}

/* A tuple or list node with room for n items (uninitialised) and count n. */
static dx_term *seq_new(dx_term_type type, size_t n)
{
    if (n > (SIZE_MAX - sizeof(dx_term)) / sizeof(dx_term *))
        return NULL;
    if (type == DX_TERM_TUPLE) {
        dx_term *t = node_new(type, n * sizeof(dx_term *));
        if (t != NULL) {
            t->u.seq.n = t->u.seq.cap = n;
            t->u.seq.items = (dx_term **)(t + 1);
        }
        return t;
    }
    dx_term **items = NULL;
    if (n > 0 && (items = dx_malloc(n * sizeof *items)) == NULL)
        return NULL;
    dx_term *t = node_new(type, 0);
    if (t == NULL) {
        dx_free(items);
        return NULL;
    }
    t->u.seq.n = t->u.seq.cap = n;
    t->u.seq.items = items;
    return t;
}

static dx_term *seq_from_array(dx_term_type type, size_t n,
                               dx_term *const *items)
{
    if (n > 0 && items == NULL)
        return NULL;
    bool complete = true;
    for (size_t i = 0; i < n; i++)
        complete = complete && items[i] != NULL;
    dx_term *t = complete ? seq_new(type, n) : NULL;
    if (t == NULL) {
        for (size_t i = 0; i < n; i++)
            dx_term_free(items[i]);
        return NULL;
    }
    if (n > 0)
        memcpy(t->u.seq.items, items, n * sizeof *items);
    return t;
}

/* Every vararg is consumed, so each child is owned (stored or freed) even
 * when the node cannot be allocated. */
static dx_term *seq_from_va(dx_term_type type, size_t n, va_list ap)
{
    dx_term *t = seq_new(type, n);
    bool complete = t != NULL;
    for (size_t i = 0; i < n; i++) {
        dx_term *c = va_arg(ap, dx_term *);
        complete = complete && c != NULL;
        if (t != NULL)
            t->u.seq.items[i] = c;
        else
            dx_term_free(c);
    }
    if (t != NULL && !complete) {
        dx_term_free(t); /* frees the non-NULL children */
        return NULL;
    }
    return t;
}

dx_term *dx_tuple(size_t n, ...)
{
    va_list ap;
    va_start(ap, n);
    dx_term *t = seq_from_va(DX_TERM_TUPLE, n, ap);
    va_end(ap);
    return t;
}

dx_term *dx_list(size_t n, ...)
{
    va_list ap;
    va_start(ap, n);
    dx_term *t = seq_from_va(DX_TERM_LIST, n, ap);
    va_end(ap);
    return t;
}

dx_term *dx_tuplev(size_t n, dx_term *const *items)
{
    return seq_from_array(DX_TERM_TUPLE, n, items);
}

dx_term *dx_listv(size_t n, dx_term *const *items)
{
    return seq_from_array(DX_TERM_LIST, n, items);
}

dx_term *dx_nil(void)
{
    return seq_new(DX_TERM_LIST, 0);
}

int dx_list_append(dx_term *list, dx_term *item)
{
    if (item == NULL)
        return DX_EINVAL;
    if (!node_is(list, DX_TERM_LIST)) {
        dx_term_free(item);
        return DX_EINVAL;
    }
    if (list->u.seq.n == list->u.seq.cap) {
        size_t cap = list->u.seq.cap ? list->u.seq.cap * 2 : 4;
        dx_term **items = NULL;
        if (cap <= SIZE_MAX / 2 / sizeof *items)
            items = dx_realloc(list->u.seq.items, cap * sizeof *items);
        if (items == NULL) {
            dx_term_free(item);
            return DX_ENOMEM;
        }
        list->u.seq.items = items;
        list->u.seq.cap = cap;
    }
    list->u.seq.items[list->u.seq.n++] = item;
    return DX_OK;
}

dx_term *dx_map_new(void)
{
    dx_term *t = node_new(DX_TERM_MAP, 0);
    if (t != NULL) {
        t->u.map.n = t->u.map.cap = 0;
        t->u.map.kv = NULL;
        t->u.map.index = NULL;
        t->u.map.imask = 0;
    }
    return t;
}

static inline dx_term **map_keys(const dx_term *m)
{
    return m->u.map.kv;
}

static inline dx_term **map_vals(const dx_term *m)
{
    return m->u.map.kv + m->u.map.cap;
}

static uint64_t term_hash(const dx_term *t);

static size_t map_find(const dx_term *m, const dx_term *key, uint64_t h)
{
    dx_term **keys = map_keys(m);
    if (m->u.map.index == NULL) {
        for (size_t i = 0; i < m->u.map.n; i++)
            if (dx_term_equal(keys[i], key))
                return i;
        return NONE;
    }
    for (size_t i = h & m->u.map.imask;; i = (i + 1) & m->u.map.imask) {
        uint32_t s = m->u.map.index[i];
        if (s == 0)
            return NONE;
        if (dx_term_equal(keys[s - 1], key))
            return s - 1;
    }
}

static void index_place(uint32_t *index, size_t mask, uint64_t h, size_t pos)
{
    size_t i = h & mask;
    while (index[i] != 0)
        i = (i + 1) & mask;
    index[i] = (uint32_t)(pos + 1);
}

/* Make the index hold want pairs at load <= 1/2, rebuilding it larger. */
static int map_reserve_index(dx_term *m, size_t want)
{
    size_t have = m->u.map.index ? m->u.map.imask + 1 : 0;
    if (have >= want * 2)
        return DX_OK;
    size_t slots = 16;
    while (slots < want * 2)
        slots *= 2;
    uint32_t *index = dx_calloc(slots, sizeof *index);
    if (index == NULL)
        return DX_ENOMEM;
    dx_term **keys = map_keys(m);
    for (size_t i = 0; i < m->u.map.n; i++)
        index_place(index, slots - 1, term_hash(keys[i]), i);
    dx_free(m->u.map.index);
    m->u.map.index = index;
    m->u.map.imask = slots - 1;
    return DX_OK;
}

static int map_reserve_pairs(dx_term *m)
{
    if (m->u.map.n < m->u.map.cap)
        return DX_OK;
    uint32_t cap = m->u.map.cap ? m->u.map.cap * 2 : 4;
    dx_term **kv = dx_malloc((size_t)cap * 2 * sizeof *kv);
    if (kv == NULL)
        return DX_ENOMEM;
    if (m->u.map.n > 0) {
        memcpy(kv, map_keys(m), m->u.map.n * sizeof *kv);
        memcpy(kv + cap, map_vals(m), m->u.map.n * sizeof *kv);
    }
    dx_free(m->u.map.kv);
    m->u.map.kv = kv;
    m->u.map.cap = cap;
    return DX_OK;
}

int dx_map_put(dx_term *map, dx_term *key, dx_term *value)
{
    if (!node_is(map, DX_TERM_MAP) || key == NULL || value == NULL) {
        dx_term_free(key);
        dx_term_free(value);
        return DX_EINVAL;
    }
    size_t n = map->u.map.n;
    bool indexed = map->u.map.index != NULL || n + 1 > MAP_LINEAR_MAX;
    uint64_t h = indexed ? term_hash(key) : 0;
    size_t pos = map_find(map, key, h);
    if (pos != NONE) {
        dx_term_free(map_vals(map)[pos]);
        map_vals(map)[pos] = value;
        dx_term_free(key);
        return DX_OK;
    }
    int rc = n >= MAP_MAX_PAIRS ? DX_ENOMEM : map_reserve_pairs(map);
    if (rc == DX_OK && indexed)
        rc = map_reserve_index(map, n + 1);
    if (rc != DX_OK) {
        dx_term_free(key);
        dx_term_free(value);
        return rc;
    }
    map_keys(map)[n] = key;
    map_vals(map)[n] = value;
    if (indexed)
        index_place(map->u.map.index, map->u.map.imask, h, n);
    map->u.map.n = (uint32_t)(n + 1);
    return DX_OK;
}

/* ---- inspection ---- */

dx_term_type dx_term_type_of(const dx_term *t)
{
    if (t == NULL)
        return DX_TERM_INVALID;
    switch (word(t) & TAG_MASK) {
    case TAG_PTR:
        return t->type;
    case TAG_INT:
        return DX_TERM_INT;
    case TAG_ATOM:
        return DX_TERM_ATOM;
    default:
        return DX_TERM_INVALID;
    }
}

const char *dx_term_type_name(dx_term_type type)
{
    switch (type) {
    case DX_TERM_INVALID:
        return "invalid";
    case DX_TERM_ATOM:
        return "atom";
    case DX_TERM_INT:
        return "integer";
    case DX_TERM_FLOAT:
        return "float";
    case DX_TERM_BINARY:
        return "binary";
    case DX_TERM_LIST:
        return "list";
    case DX_TERM_TUPLE:
        return "tuple";
    case DX_TERM_MAP:
        return "map";
    case DX_TERM_PID:
        return "pid";
    case DX_TERM_REF:
        return "reference";
    }
    return "unknown";
}

static const atom_rec *atom_of(const dx_term *t)
{
    return is_atom(t) ? atom_rec_at(atom_index(t)) : NULL;
}

const char *dx_atom_name(const dx_term *t)
{
    const atom_rec *r = atom_of(t);
    return r ? r->name : NULL;
}

bool dx_is_atom(const dx_term *t, const char *name)
{
    const atom_rec *r = atom_of(t);
    /* strnlen first: name may be shorter than the atom, and the atom may
     * hold a NUL byte. */
    return r != NULL && name != NULL &&
           strnlen(name, (size_t)r->len + 1) == r->len &&
           memcmp(r->name, name, r->len) == 0;
}

bool dx_int_value(const dx_term *t, int64_t *out)
{
    if (t != NULL && is_small(t)) {
        if (out)
            *out = small_value(t);
        return true;
    }
    if (node_is(t, DX_TERM_INT)) {
        if (out)
            *out = t->u.i;
        return true;
    }
    return false;
}

bool dx_float_value(const dx_term *t, double *out)
{
    if (!node_is(t, DX_TERM_FLOAT))
        return false;
    if (out)
        *out = t->u.f;
    return true;
}

bool dx_pid_value(const dx_term *t, dx_pid *out)
{
    if (!node_is(t, DX_TERM_PID))
        return false;
    if (out)
        out->id = t->u.id;
    return true;
}

bool dx_ref_value(const dx_term *t, dx_ref *out)
{
    if (!node_is(t, DX_TERM_REF))
        return false;
    if (out)
        out->id = t->u.id;
    return true;
}

const char *dx_binary_data(const dx_term *t, size_t *len)
{
    if (!node_is(t, DX_TERM_BINARY))
        return NULL;
    if (len)
        *len = t->u.bin.len;
    return t->u.bin.data;
}

static bool is_seq(const dx_term *t)
{
    return is_node(t) && (t->type == DX_TERM_TUPLE || t->type == DX_TERM_LIST);
}

size_t dx_term_size(const dx_term *t)
{
    if (is_seq(t))
        return t->u.seq.n;
    if (node_is(t, DX_TERM_MAP))
        return t->u.map.n;
    return 0;
}

const dx_term *dx_term_at(const dx_term *t, size_t i)
{
    return is_seq(t) && i < t->u.seq.n ? t->u.seq.items[i] : NULL;
}

const dx_term *dx_map_key_at(const dx_term *map, size_t i)
{
    return node_is(map, DX_TERM_MAP) && i < map->u.map.n ? map_keys(map)[i]
                                                         : NULL;
}

const dx_term *dx_map_value_at(const dx_term *map, size_t i)
{
    return node_is(map, DX_TERM_MAP) && i < map->u.map.n ? map_vals(map)[i]
                                                         : NULL;
}

static const dx_term *map_lookup(const dx_term *map, const dx_term *key)
{
    uint64_t h = map->u.map.index ? term_hash(key) : 0;
    size_t pos = map_find(map, key, h);
    return pos == NONE ? NULL : map_vals(map)[pos];
}

const dx_term *dx_map_get(const dx_term *map, const dx_term *key)
{
    if (!node_is(map, DX_TERM_MAP) || key == NULL)
        return NULL;
    return map_lookup(map, key);
}

const dx_term *dx_map_get_str(const dx_term *map, const char *key)
{
    if (!node_is(map, DX_TERM_MAP) || key == NULL)
        return NULL;
    size_t len = strlen(key);
    const dx_term *atom = atom_find(key, len);
    if (atom != NULL) {
        const dx_term *v = map_lookup(map, atom);
        if (v != NULL)
            return v;
    }
    /* A binary key equal to `key`, without copying it into a new term. */
    dx_term probe;
    probe.type = DX_TERM_BINARY;
    probe.u.bin.len = len;
    probe.u.bin.data = key;
    return map_lookup(map, &probe);
}

/* ---- copy and free ---- */

static dx_term *map_copy(const dx_term *t)
{
    dx_term *c = dx_map_new();
    uint32_t n = t->u.map.n;
    if (c == NULL || n == 0)
        return c;
    c->u.map.kv = dx_malloc((size_t)n * 2 * sizeof(dx_term *));
    if (c->u.map.kv == NULL) {
        dx_term_free(c);
        return NULL;
    }
    c->u.map.cap = n;
    if (t->u.map.index != NULL) {
        /* Same keys at the same positions hash the same: copy the index. */
        size_t slots = t->u.map.imask + 1;
        c->u.map.index = dx_malloc(slots * sizeof(uint32_t));
        if (c->u.map.index == NULL) {
            dx_term_free(c);
            return NULL;
        }
        memcpy(c->u.map.index, t->u.map.index, slots * sizeof(uint32_t));
        c->u.map.imask = t->u.map.imask;
    }
    for (uint32_t i = 0; i < n; i++) {
        dx_term *k = dx_term_copy(map_keys(t)[i]);
        dx_term *v = dx_term_copy(map_vals(t)[i]);
        if (k == NULL || v == NULL) {
            dx_term_free(k);
            dx_term_free(v);
            dx_term_free(c);
            return NULL;
        }
        map_keys(c)[i] = k;
        map_vals(c)[i] = v;
        c->u.map.n = i + 1;
    }
    return c;
}

dx_term *dx_term_copy(const dx_term *t)
{
    if (!is_node(t))
        return (dx_term *)t; /* NULL or an immediate */
    dx_term *c;
    switch (t->type) {
    case DX_TERM_BINARY:
        return dx_binary(t->u.bin.data, t->u.bin.len);
    case DX_TERM_TUPLE:
    case DX_TERM_LIST:
        c = seq_new(t->type, t->u.seq.n);
        if (c == NULL)
            return NULL;
        for (size_t i = 0; i < t->u.seq.n; i++) {
            c->u.seq.items[i] = dx_term_copy(t->u.seq.items[i]);
            if (c->u.seq.items[i] == NULL) {
                c->u.seq.n = i;
                dx_term_free(c);
                return NULL;
            }
        }
        return c;
    case DX_TERM_MAP:
        return map_copy(t);
    default: /* INT, FLOAT, PID, REF: no children */
        c = node_new(t->type, 0);
        if (c != NULL)
            c->u = t->u;
        return c;
    }
}

void dx_term_free(dx_term *t)
{
    if (!is_node(t))
        return;
    switch (t->type) {
    case DX_TERM_TUPLE:
    case DX_TERM_LIST:
        for (size_t i = 0; i < t->u.seq.n; i++)
            dx_term_free(t->u.seq.items[i]);
        if (t->type == DX_TERM_LIST)
            dx_free(t->u.seq.items);
        break;
    case DX_TERM_MAP:
        for (uint32_t i = 0; i < t->u.map.n; i++) {
            dx_term_free(map_keys(t)[i]);
            dx_term_free(map_vals(t)[i]);
        }
        dx_free(t->u.map.kv);
        dx_free(t->u.map.index);
        break;
    default:
        break;
    }
    dx_free(t);
}

/* ---- equality and hashing ---- */

static uint64_t float_bits(double d)
{
    uint64_t b;
    memcpy(&b, &d, sizeof b);
    return b;
}

/* Consistent with dx_term_equal: equal terms hash alike. Map hashes ignore
 * insertion order, as map equality does. */
static uint64_t term_hash(const dx_term *t)
{
    uint64_t seed = hash_seed();
    if (t == NULL)
        return seed;
    if (is_small(t))
        return mix(seed ^ (uint64_t)small_value(t) ^ 0x11);
    if (is_atom(t))
        return mix(seed ^ ((uint64_t)atom_index(t) << 8) ^ 0x22);
    uint64_t h;
    switch (t->type) {
    case DX_TERM_INT:
        return mix(seed ^ (uint64_t)t->u.i ^ 0x11);
    case DX_TERM_FLOAT:
        return mix(seed ^ float_bits(t->u.f) ^ 0x33);
    case DX_TERM_BINARY:
        return hash_bytes(t->u.bin.data, t->u.bin.len, seed ^ 0x44);
    case DX_TERM_TUPLE:
    case DX_TERM_LIST:
        h = seed ^ (uint64_t)t->type ^ ((uint64_t)t->u.seq.n << 8);
        for (size_t i = 0; i < t->u.seq.n; i++)
            h = mix(h * 31 + term_hash(t->u.seq.items[i]));
        return mix(h);
    case DX_TERM_MAP:
        h = 0;
        for (uint32_t i = 0; i < t->u.map.n; i++) {
            uint64_t kh = term_hash(map_keys(t)[i]);
            uint64_t vh = term_hash(map_vals(t)[i]);
            h += mix(kh ^ ((vh << 17) | (vh >> 47)));
        }
        return mix(h ^ seed ^ 0x55 ^ ((uint64_t)t->u.map.n << 8));
    case DX_TERM_PID:
        return mix(seed ^ t->u.id ^ 0x66);
    case DX_TERM_REF:
        return mix(seed ^ t->u.id ^ 0x77);
    default:
        return seed;
    }
}

bool dx_term_equal(const dx_term *a, const dx_term *b)
{
    if (a == b)
        return true;
    /* Immediates are canonical: distinct words are distinct terms. */
    if (!is_node(a) || !is_node(b) || a->type != b->type)
        return false;
    switch (a->type) {
    case DX_TERM_INT:
        return a->u.i == b->u.i;
    case DX_TERM_FLOAT:
        /* Bitwise, as =:= is: 0.0 and -0.0 differ, and a NaN key can still
         * be found again in a map. */
        return float_bits(a->u.f) == float_bits(b->u.f);
    case DX_TERM_BINARY:
        return a->u.bin.len == b->u.bin.len &&
               memcmp(a->u.bin.data, b->u.bin.data, a->u.bin.len) == 0;
    case DX_TERM_TUPLE:
    case DX_TERM_LIST:
        if (a->u.seq.n != b->u.seq.n)
            return false;
        for (size_t i = 0; i < a->u.seq.n; i++)
            if (!dx_term_equal(a->u.seq.items[i], b->u.seq.items[i]))
                return false;
        return true;
    case DX_TERM_MAP:
        if (a->u.map.n != b->u.map.n)
            return false;
        for (uint32_t i = 0; i < a->u.map.n; i++) {
            const dx_term *v = map_lookup(b, map_keys(a)[i]);
            if (v == NULL || !dx_term_equal(map_vals(a)[i], v))
                return false;
        }
        return true;
    case DX_TERM_PID:
    case DX_TERM_REF:
        return a->u.id == b->u.id;
    default:
        return false;
    }
}

/* ---- term order ----
 *
 * cmp(a, b, exact): with exact false this is Erlang's == order (1 == 1.0);
 * with exact true, ties between numbers of different kinds or float bit
 * patterns are broken (integer before float, -0.0 before 0.0), which makes it
 * a total order whose 0 means dx_term_equal. Erlang orders map keys that way
 * ("integers before floats in map key order"), so map comparison uses it for
 * keys.
 */

static int cmp(const dx_term *a, const dx_term *b, bool exact);

static int sign3(bool lt, bool gt)
{
    return lt ? -1 : gt ? 1 : 0;
}

/* -1, 0 or 1 as a is below, equal to or above b (plain C comparison). */
#define ORD(a, b) (((a) > (b)) - ((a) < (b)))

static int rank(const dx_term *t)
{
    switch (dx_term_type_of(t)) {
    case DX_TERM_INT:
    case DX_TERM_FLOAT:
        return 1;
    case DX_TERM_ATOM:
        return 2;
    case DX_TERM_REF:
        return 3;
    case DX_TERM_PID:
        return 4;
    case DX_TERM_TUPLE:
        return 5;
    case DX_TERM_MAP:
        return 6;
    case DX_TERM_LIST:
        return 7;
    case DX_TERM_BINARY:
        return 8;
    default:
        return 0; /* NULL (and garbage) first */
    }
}

/* NaN has no place in Erlang; it sorts above every other number so that the
 * order stays total. */
static int float_cmp(double x, double y)
{
    bool xn = isnan(x), yn = isnan(y);
    if (xn || yn)
        return sign3(yn && !xn, xn && !yn);
    return ORD(x, y);
}

/* Key for the IEEE total order: -0.0 before 0.0. */
static uint64_t float_total_key(double d)
{
    uint64_t b = float_bits(d);
    return (b >> 63) ? ~b : b | ((uint64_t)1 << 63);
}

/* i vs d, exactly: converting i to double would round above 2^53. */
static int int_float_cmp(int64_t i, double d)
{
    if (isnan(d) || d >= 9223372036854775808.0)
        return -1;
    if (d < -9223372036854775808.0)
        return 1;
    int64_t t = (int64_t)d; /* truncates; exact in this range */
    if (i != t)
        return ORD(i, t);
    double frac = d - (double)t; /* exact */
    return sign3(frac > 0, frac < 0);
}

static int num_cmp(const dx_term *a, const dx_term *b, bool exact)
{
    int64_t ia, ib;
    bool a_int = dx_int_value(a, &ia), b_int = dx_int_value(b, &ib);
    if (a_int && b_int)
        return ORD(ia, ib);
    if (!a_int && !b_int) {
        int c = float_cmp(a->u.f, b->u.f);
        if (c == 0 && exact) {
            uint64_t ka = float_total_key(a->u.f);
            uint64_t kb = float_total_key(b->u.f);
            c = ORD(ka, kb);
        }
        return c;
    }
    int c = a_int ? int_float_cmp(ia, b->u.f) : -int_float_cmp(ib, a->u.f);
    if (c == 0 && exact)
        c = a_int ? -1 : 1;
    return c;
}

static int bytes_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = n ? memcmp(a, b, n) : 0;
    if (c != 0)
        return c < 0 ? -1 : 1;
    return ORD(alen, blen);
}

static void sift_down(dx_term *const *keys, size_t *ix, size_t root, size_t n)
{
    for (;;) {
        size_t child = 2 * root + 1;
        if (child >= n)
            return;
        if (child + 1 < n &&
            cmp(keys[ix[child]], keys[ix[child + 1]], true) < 0)
            child++;
        if (cmp(keys[ix[root]], keys[ix[child]], true) >= 0)
            return;
        size_t tmp = ix[root];
        ix[root] = ix[child];
        ix[child] = tmp;
        root = child;
    }
}

/* Heapsort: in place and allocation-free, so it needs only the index
 * buffer. */
static void sort_keys(const dx_term *m, size_t *ix)
{
    size_t n = m->u.map.n;
    dx_term *const *keys = map_keys(m);
    for (size_t i = 0; i < n; i++)
        ix[i] = i;
    for (size_t i = n / 2; i-- > 0;)
        sift_down(keys, ix, i, n);
    for (size_t end = n; end-- > 1;) {
        size_t tmp = ix[0];
        ix[0] = ix[end];
        ix[end] = tmp;
        sift_down(keys, ix, 0, end);
    }
}

/* Position of the smallest key greater than keys[prev] (prev NONE: the
 * smallest key). The no-memory path of map comparison: O(n) per step. */
static size_t next_key(const dx_term *m, size_t prev)
{
    dx_term *const *keys = map_keys(m);
    size_t best = NONE;
    for (size_t i = 0; i < m->u.map.n; i++) {
        if (prev != NONE && cmp(keys[i], keys[prev], true) <= 0)
            continue;
        if (best == NONE || cmp(keys[i], keys[best], true) < 0)
            best = i;
    }
    return best;
}

static int map_cmp_slow(const dx_term *a, const dx_term *b, bool exact)
{
    size_t n = a->u.map.n;
    for (int pass = 0; pass < 2; pass++) {
        size_t pa = NONE, pb = NONE;
        for (size_t k = 0; k < n; k++) {
            pa = next_key(a, pa);
            pb = next_key(b, pb);
            int c = pass == 0 ? cmp(map_keys(a)[pa], map_keys(b)[pb], true)
                              : cmp(map_vals(a)[pa], map_vals(b)[pb], exact);
            if (c != 0)
                return c;
        }
    }
    return 0;
}

#define MAP_CMP_STACK 32

/* Erlang: by size, then keys in (map key) order, then values in key
 * order. */
static int map_cmp(const dx_term *a, const dx_term *b, bool exact)
{
    size_t n = a->u.map.n;
    if (n != b->u.map.n)
        return ORD(n, b->u.map.n);
    if (n == 0)
        return 0;
    size_t stack[2 * MAP_CMP_STACK];
    size_t *ia = stack, *heap = NULL;
    if (n > MAP_CMP_STACK) {
        ia = heap = dx_malloc(2 * n * sizeof *heap);
        if (heap == NULL)
            return map_cmp_slow(a, b, exact);
    }
    size_t *ib = ia + n;
    sort_keys(a, ia);
    sort_keys(b, ib);
    int c = 0;
    for (size_t i = 0; c == 0 && i < n; i++)
        c = cmp(map_keys(a)[ia[i]], map_keys(b)[ib[i]], true);
    for (size_t i = 0; c == 0 && i < n; i++)
        c = cmp(map_vals(a)[ia[i]], map_vals(b)[ib[i]], exact);
    dx_free(heap);
    return c;
}

static int cmp(const dx_term *a, const dx_term *b, bool exact)
{
    if (a == b)
        return 0;
    int ra = rank(a), rb = rank(b);
    if (ra != rb)
        return ORD(ra, rb);
    switch (dx_term_type_of(a)) {
    case DX_TERM_INT:
    case DX_TERM_FLOAT:
        return num_cmp(a, b, exact);
    case DX_TERM_ATOM: {
        const atom_rec *x = atom_of(a), *y = atom_of(b);
        return bytes_cmp(x->name, x->len, y->name, y->len);
    }
    case DX_TERM_REF:
    case DX_TERM_PID:
        return ORD(a->u.id, b->u.id);
    case DX_TERM_TUPLE:
        if (a->u.seq.n != b->u.seq.n)
            return ORD(a->u.seq.n, b->u.seq.n);
        for (size_t i = 0; i < a->u.seq.n; i++) {
            int c = cmp(a->u.seq.items[i], b->u.seq.items[i], exact);
            if (c != 0)
                return c;
        }
        return 0;
    case DX_TERM_LIST: {
        size_t n = a->u.seq.n < b->u.seq.n ? a->u.seq.n : b->u.seq.n;
        for (size_t i = 0; i < n; i++) {
            int c = cmp(a->u.seq.items[i], b->u.seq.items[i], exact);
            if (c != 0)
                return c;
        }
        return ORD(a->u.seq.n, b->u.seq.n);
    }
    case DX_TERM_MAP:
        return map_cmp(a, b, exact);
    case DX_TERM_BINARY:
        return bytes_cmp(a->u.bin.data, a->u.bin.len, b->u.bin.data,
                         b->u.bin.len);
    default:
        return 0;
    }
}

int dx_term_compare(const dx_term *a, const dx_term *b)
{
    return cmp(a, b, false);
}

/* ---- printing ---- */

typedef struct out {
    char *buf;
    size_t cap;
    size_t len; /* what the full text needs so far */
} out;

static void put(out *o, const char *s, size_t n)
{
    if (o->cap > 0 && o->len < o->cap - 1) {
        size_t room = o->cap - 1 - o->len;
        memcpy(o->buf + o->len, s, n < room ? n : room);
    }
    o->len += n;
}

static void puts_(out *o, const char *s)
{
    put(o, s, strlen(s));
}

static void putch(out *o, char c)
{
    put(o, &c, 1);
}

static void put_u64(out *o, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%" PRIu64, v);
    put(o, tmp, (size_t)n);
}

static void put_i64(out *o, int64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%" PRId64, v);
    put(o, tmp, (size_t)n);
}

/* One byte inside a quoted atom or string, escaped as Erlang reads it. */
static void put_escaped(out *o, unsigned char c, char quote)
{
    static const char from[] = "\n\r\t\v\b\f\x1b\x7f";
    static const char to[] = "nrtvbfed";
    const char *hit = c ? strchr(from, c) : NULL;
    if (c == (unsigned char)quote || c == '\\') {
        char e[2] = {'\\', (char)c};
        put(o, e, 2);
    } else if (hit != NULL) {
        char e[2] = {'\\', to[hit - from]};
        put(o, e, 2);
    } else if (c < 0x20) {
        char e[5];
        int n = snprintf(e, sizeof e, "\\%03o", (unsigned)c);
        put(o, e, (size_t)n);
    } else {
        putch(o, (char)c);
    }
}

static bool atom_is_bare(const char *s, size_t len)
{
    static const char *const reserved[] = {
        "after", "and",     "andalso", "band", "begin", "bnot",
        "bor",   "bsl",     "bsr",     "bxor", "case",  "catch",
        "cond",  "div",     "else",    "end",  "fun",   "if",
        "let",   "maybe",   "not",     "of",   "or",    "orelse",
        "query", "receive", "rem",     "try",  "when",  "xor",
    };
    if (len == 0 || s[0] < 'a' || s[0] > 'z')
        return false;
    for (size_t i = 1; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '@'))
            return false;
    }
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (strlen(reserved[i]) == len && memcmp(reserved[i], s, len) == 0)
            return false;
    return true;
}

static void fmt_atom(out *o, const atom_rec *r)
{
    if (atom_is_bare(r->name, r->len)) {
        put(o, r->name, r->len);
        return;
    }
    putch(o, '\'');
    for (size_t i = 0; i < r->len; i++)
        put_escaped(o, (unsigned char)r->name[i], '\'');
    putch(o, '\'');
}

/* Length of the UTF-8 sequence at p if it encodes a code point Erlang
 * prints as text (io_lib's printable unicode range), else 0. */
static size_t utf8_printable(const unsigned char *p, size_t n)
{
    uint32_t cp;
    size_t len;
    if (p[0] < 0xc2)
        return 0;
    if (p[0] < 0xe0) {
        len = 2;
        cp = p[0] & 0x1f;
    } else if (p[0] < 0xf0) {
        len = 3;
        cp = p[0] & 0x0f;
    } else if (p[0] < 0xf5) {
        len = 4;
        cp = p[0] & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    static const uint32_t min_for_len[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for_len[len] || cp < 0xa0 || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff) || cp == 0xfffe || cp == 0xffff)
        return 0;
    return len;
}

enum { BIN_BYTES, BIN_TEXT, BIN_UTF8 };

/* Text when every byte is printable ASCII or a whitespace escape (io_lib's
 * printable latin1 set restricted to ASCII), UTF-8 text when it also holds
 * valid printable multibyte characters, bytes otherwise. */
static int bin_kind(const unsigned char *p, size_t n)
{
    int kind = BIN_TEXT;
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        if ((c >= 0x20 && c < 0x7f) || (c && strchr("\n\r\t\v\b\f\x1b", c))) {
            i++;
            continue;
        }
        size_t len = c >= 0x80 ? utf8_printable(p + i, n - i) : 0;
        if (len == 0)
            return BIN_BYTES;
        kind = BIN_UTF8;
        i += len;
    }
    return kind;
}

static void fmt_binary(out *o, const char *data, size_t n)
{
    const unsigned char *p = (const unsigned char *)data;
    puts_(o, "<<");
    int kind = n ? bin_kind(p, n) : BIN_BYTES;
    if (kind == BIN_BYTES) {
        for (size_t i = 0; i < n; i++) {
            if (i)
                putch(o, ',');
            put_u64(o, p[i]);
        }
    } else {
        putch(o, '"');
        for (size_t i = 0; i < n; i++) {
            if (p[i] >= 0x80)
                putch(o, (char)p[i]);
            else
                put_escaped(o, p[i], '"');
        }
        putch(o, '"');
        if (kind == BIN_UTF8)
            puts_(o, "/utf8");
    }
    puts_(o, ">>");
}

static size_t digit_count(int v)
{
    size_t n = v < 0 ? 2 : 1;
    for (v = v < 0 ? -v : v; v >= 10; v /= 10)
        n++;
    return n;
}

/* Erlang's short float form: the fewest digits that read back as the same
 * double; written as d.ddde[-]X when that is strictly shorter than plain
 * decimal notation, or always when |d| >= 2^53 (beyond that plain notation
 * would show digits the double does not have). */
static void fmt_float(out *o, double d)
{
    if (isnan(d)) {
        puts_(o, "nan");
        return;
    }
    if (isinf(d)) {
        puts_(o, d < 0 ? "-inf" : "inf");
        return;
    }
    if (signbit(d))
        putch(o, '-');
    d = fabs(d);
    if (d == 0) {
        puts_(o, "0.0");
        return;
    }
    char sci[40];
    for (int prec = 0; prec <= 17; prec++) {
        snprintf(sci, sizeof sci, "%.*e", prec, d);
        if (strtod(sci, NULL) == d)
            break;
    }
    char digits[24];
    size_t nd = 0;
    const char *p = sci;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9' && nd < sizeof digits)
            digits[nd++] = *p;
    int exp = (int)strtol(*p ? p + 1 : p, NULL, 10);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;

    size_t sci_len = 2 + (nd > 1 ? nd - 1 : 1) + 1 + digit_count(exp);
    size_t dec_len = exp >= 0
                         ? ((size_t)exp + 1 >= nd ? (size_t)exp + 3 : nd + 1)
                         : 2 + (size_t)(-exp - 1) + nd;
    if (d >= 9007199254740992.0 || sci_len < dec_len) {
        putch(o, digits[0]);
        putch(o, '.');
        if (nd > 1)
            put(o, digits + 1, nd - 1);
        else
            putch(o, '0');
        putch(o, 'e');
        put_i64(o, exp);
    } else if (exp >= 0) {
        size_t whole = (size_t)exp + 1;
        if (whole >= nd) {
            put(o, digits, nd);
            for (size_t i = nd; i < whole; i++)
                putch(o, '0');
            puts_(o, ".0");
        } else {
            put(o, digits, whole);
            putch(o, '.');
            put(o, digits + whole, nd - whole);
        }
    } else {
        puts_(o, "0.");
        for (int i = 0; i < -exp - 1; i++)
            putch(o, '0');
        put(o, digits, nd);
    }
}

static void fmt(out *o, const dx_term *t)
{
    switch (dx_term_type_of(t)) {
    case DX_TERM_ATOM: {
        const atom_rec *r = atom_of(t);
        if (r != NULL)
            fmt_atom(o, r);
        else
            puts_(o, "<invalid>");
        return;
    }
    case DX_TERM_INT:
        put_i64(o, is_small(t) ? small_value(t) : t->u.i);
        return;
    case DX_TERM_FLOAT:
        fmt_float(o, t->u.f);
        return;
    case DX_TERM_BINARY:
        fmt_binary(o, t->u.bin.data, t->u.bin.len);
        return;
    case DX_TERM_LIST:
    case DX_TERM_TUPLE: {
        bool list = t->type == DX_TERM_LIST;
        putch(o, list ? '[' : '{');
        for (size_t i = 0; i < t->u.seq.n; i++) {
            if (i)
                putch(o, ',');
            fmt(o, t->u.seq.items[i]);
        }
        putch(o, list ? ']' : '}');
        return;
    }
    case DX_TERM_MAP:
        puts_(o, "#{");
        for (uint32_t i = 0; i < t->u.map.n; i++) {
            if (i)
                putch(o, ',');
            fmt(o, map_keys(t)[i]);
            puts_(o, " => ");
            fmt(o, map_vals(t)[i]);
        }
        putch(o, '}');
        return;
    case DX_TERM_PID:
        /* id: index in bits 0..31, serial in 32..51, node in 52..63. */
        putch(o, '<');
        put_u64(o, t->u.id >> 52);
        putch(o, '.');
        put_u64(o, t->u.id & 0xffffffffu);
        putch(o, '.');
        put_u64(o, (t->u.id >> 32) & 0xfffffu);
        putch(o, '>');
        return;
    case DX_TERM_REF:
        puts_(o, "#Ref<0.");
        put_u64(o, t->u.id);
        putch(o, '>');
        return;
    default:
        puts_(o, "<invalid>");
        return;
    }
}

size_t dx_term_format(const dx_term *t, char *buf, size_t cap)
{
    out o = {buf, buf ? cap : 0, 0};
    fmt(&o, t);
    if (o.cap > 0)
        o.buf[o.len < o.cap ? o.len : o.cap - 1] = '\0';
    return o.len;
}

char *dx_term_to_string(const dx_term *t)
{
    char small[256];
    size_t n = dx_term_format(t, small, sizeof small);
    if (n == SIZE_MAX)
        return NULL;
    char *s = dx_malloc(n + 1);
    if (s == NULL)
        return NULL;
    if (n < sizeof small)
        memcpy(s, small, n + 1);
    else
        dx_term_format(t, s, n + 1);
    return s;
}
