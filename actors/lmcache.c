/*
 * lmcache.c — the LM response cache: canonical request keys (SHA-256 of the
 * "dxc1" form described in lmcache.h), the in-memory LRU tier and the SQLite
 * file tier (which decodes with dx_lm_response_from_json, provider.c). The
 * memory tier keeps each response decoded, so a hit is a deep copy rather
 * than a parse; the file keeps the text of dx_lm_response_to_json. Either
 * way a hit hands out a fresh copy the caller cannot share by mistake.
 */
#include "dspex/lmcache.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"

#define DEFAULT_ENTRIES 10000
#define DEFAULT_BYTES ((size_t)64 << 20)
#define DEFAULT_BUSY_MS 5000
#define FORMAT_VERSION 1
/* Canonical forms and responses beyond this are refused rather than grown
 * without bound. */
#define MAX_TEXT ((size_t)256 << 20)

/* ---- SHA-256 ---------------------------------------------------------------
 *
 * libcrypto's SHA-256 (the SHA extensions of the CPU where it has them): a
 * key hashes the whole canonical request — the system prompt included — on
 * every call, so this is most of a cache hit's cost. The digest
 * implementation is fetched once and kept for the life of the process.
 */

static pthread_once_t sha_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha_md;

static void sha_fetch(void)
{
    sha_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

/* ---- canonical form ------------------------------------------------------ */

/* An append buffer with a sticky error: the canonical text is built with
 * plain copies (no per-field formatting), and a failure anywhere is checked
 * once at the end. */
typedef struct cbuf {
    char *p;
    size_t len;
    size_t cap;
    int rc;
} cbuf;

static bool reserve(cbuf *b, size_t n)
{
    if (b->rc != DX_OK)
        return false;
    if (n > MAX_TEXT || b->len > MAX_TEXT - n) {
        b->rc = DX_EINVAL;
        return false;
    }
    size_t want = b->len + n + 1; /* room for the final NUL */
    if (want <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 512;
    while (cap < want)
        cap *= 2;
    char *p = dx_realloc(b->p, cap);
    if (!p) {
        b->rc = DX_ENOMEM;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

static void put(cbuf *b, const char *s, size_t n)
{
    if (n && reserve(b, n)) {
        memcpy(b->p + b->len, s, n);
        b->len += n;
    }
}

/* Decimal digits of v into out (at least 20 bytes); returns their count. */
static size_t udec(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

/* tag includes its '=' (tl bytes), so each line is one or two copies. */
static void put_str(cbuf *b, const char *tag, size_t tl, const char *v)
{
    if (!v) {
        put(b, tag, tl);
        put(b, "~\n", 2);
        return;
    }
    size_t vl = strlen(v);
    char num[24];
    size_t nl = udec(num, vl);
    num[nl++] = ':';
    put(b, tag, tl);
    put(b, num, nl);
    put(b, v, vl);
    put(b, "\n", 1);
}

static void put_int(cbuf *b, const char *tag, size_t tl, int64_t v)
{
    char num[24];
    size_t nl = 0;
    uint64_t u = (uint64_t)v;
    if (v < 0) {
        num[nl++] = '-';
        u = (uint64_t)0 - u;
    }
    nl += udec(num + nl, u);
    num[nl++] = '\n';
    put(b, tag, tl);
    put(b, num, nl);
}

#define PUT_STR(b, tag, v) put_str(b, tag "=", sizeof tag, v)
#define PUT_INT(b, tag, v) put_int(b, tag "=", sizeof tag, (int64_t)(v))

static void canon_calls(cbuf *b, const dx_lm_tool_call *tc, size_t n)
{
    PUT_INT(b, "calls", n);
    for (size_t i = 0; b->rc == DX_OK && i < n; i++) {
        PUT_STR(b, "call.id", tc[i].id);
        PUT_STR(b, "call.name", tc[i].name);
        PUT_STR(b, "call.args", tc[i].arguments);
    }
}

static void canonical(cbuf *b, const dx_lm_request *r, const char *model,
                      const char *ns)
{
    put(b, "dxc1\n", 5);
    PUT_STR(b, "ns", ns && *ns ? ns : NULL);
    PUT_STR(b, "model", model ? model : r->model);
    PUT_INT(b, "messages", r->n_messages);
    for (size_t i = 0; b->rc == DX_OK && i < r->n_messages; i++) {
        const dx_lm_message *m = &r->messages[i];
        PUT_INT(b, "role", m->role);
        PUT_STR(b, "content", m->content);
        PUT_STR(b, "tool_call_id", m->tool_call_id);
        canon_calls(b, m->tool_calls, m->n_tool_calls);
    }
    if (r->has_temperature) {
        char t[40];
        snprintf(t, sizeof t, "%.17g", r->temperature);
        PUT_STR(b, "temperature", t);
    } else {
        PUT_STR(b, "temperature", NULL);
    }
    PUT_INT(b, "max_tokens", r->max_tokens);
    /* 0 and 1 both ask for one choice. */
    PUT_INT(b, "n", r->n <= 1 ? 1 : r->n);
    PUT_INT(b, "stop", r->n_stop);
    for (size_t i = 0; b->rc == DX_OK && i < r->n_stop; i++)
        PUT_STR(b, "stop.s", r->stop[i]);
    if (r->has_seed)
        PUT_INT(b, "seed", r->seed);
    else
        PUT_STR(b, "seed", NULL);
    PUT_INT(b, "format", r->format);
    if (r->format == DX_LM_FORMAT_JSON_SCHEMA) {
        PUT_STR(b, "schema_name", r->schema_name);
        PUT_STR(b, "schema", r->schema);
        PUT_INT(b, "schema_strict", r->schema_strict);
    }
    PUT_INT(b, "tools", r->n_tools);
    for (size_t i = 0; b->rc == DX_OK && i < r->n_tools; i++) {
        PUT_STR(b, "tool.name", r->tools[i].name);
        PUT_STR(b, "tool.desc", r->tools[i].description);
        PUT_STR(b, "tool.params", r->tools[i].parameters);
    }
    PUT_INT(b, "tool_choice", r->tool_choice);
    if (r->tool_choice == DX_LM_TOOL_CHOICE_NAMED)
        PUT_STR(b, "tool_choice_name", r->tool_choice_name);
}

#undef PUT_STR
#undef PUT_INT

static int hash_text(const char *s, size_t n, char hex[DX_LMCACHE_KEY_HEX + 1])
{
    pthread_once(&sha_once, sha_fetch);
    unsigned char md[32];
    unsigned int md_len = 0;
    if (!sha_md || !EVP_Digest(s, n, md, &md_len, sha_md, NULL) ||
        md_len != sizeof md)
        return DX_EINIT;
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof md; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[2 * sizeof md] = '\0';
    return DX_OK;
}

int dx_lmcache_key_make(const dx_lm_request *req, const char *model,
                        const char *ns, dx_lmcache_key *key)
{
    if (!key)
        return DX_EINVAL;
    memset(key, 0, sizeof *key);
    if (!req)
        return DX_EINVAL;
    cbuf b = {NULL, 0, 0, DX_OK};
    canonical(&b, req, model, ns);
    if (b.rc == DX_OK)
        reserve(&b, 0); /* an empty text still gets its NUL */
    if (b.rc != DX_OK) {
        dx_free(b.p);
        return b.rc;
    }
    b.p[b.len] = '\0';
    key->canonical = b.p;
    key->len = b.len;
    key->mode = DX_LMCACHE_USE;
    int rc = hash_text(key->canonical, key->len, key->hex);
    if (rc != DX_OK)
        dx_lmcache_key_clear(key);
    return rc;
}

void dx_lmcache_key_clear(dx_lmcache_key *key)
{
    if (!key)
        return;
    dx_free(key->canonical);
    memset(key, 0, sizeof *key);
}

/* ---- the memory tier ----------------------------------------------------- */

typedef struct entry {
    char hex[DX_LMCACHE_KEY_HEX + 1];
    char *canonical;
    size_t canon_len;
    dx_lm_response *resp; /* decoded once: a hit is a copy, not a parse */
    size_t bytes;
    struct entry *prev, *next; /* LRU list: head is the most recent */
    struct entry *chain;       /* hash bucket */
} entry;

struct dx_lmcache {
    dx_lmcache_limits lim;
    entry **buckets;
    size_t n_buckets; /* a power of two */
    entry *head, *tail;
    dx_lmcache_stats st;
    sqlite3 *db;
    sqlite3_stmt *get_stmt;
    sqlite3_stmt *put_stmt;
    char *path;
    char err[512];
};

static size_t bucket_of(const dx_lmcache *c, const char *hex)
{
    uint64_t h = 0;
    /* The key is already a uniform hash: its first 16 hex digits do. */
    for (int i = 0; i < 16; i++)
        h = h << 4 |
            (uint64_t)(hex[i] <= '9' ? hex[i] - '0' : hex[i] - 'a' + 10);
    return (size_t)(h & (c->n_buckets - 1));
}

static entry *find(const dx_lmcache *c, const char *hex)
{
    for (entry *e = c->buckets[bucket_of(c, hex)]; e; e = e->chain)
        if (memcmp(e->hex, hex, DX_LMCACHE_KEY_HEX) == 0)
            return e;
    return NULL;
}

static void lru_unlink(dx_lmcache *c, entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_front(dx_lmcache *c, entry *e)
{
    e->next = c->head;
    e->prev = NULL;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

static void remove_entry(dx_lmcache *c, entry *e)
{
    entry **pp = &c->buckets[bucket_of(c, e->hex)];
    while (*pp != e)
        pp = &(*pp)->chain;
    *pp = e->chain;
    lru_unlink(c, e);
    c->st.entries--;
    c->st.bytes -= e->bytes;
    dx_free(e->canonical);
    dx_lm_response_free(e->resp);
    dx_free(e);
}

/* Double the bucket array when chains would grow past one on average; a
 * failed grow only makes chains longer. */
static void maybe_grow(dx_lmcache *c)
{
    if (c->st.entries < c->n_buckets)
        return;
    size_t n = c->n_buckets * 2;
    entry **nb = dx_calloc(n, sizeof *nb);
    if (!nb)
        return;
    entry **old = c->buckets;
    size_t old_n = c->n_buckets;
    c->buckets = nb;
    c->n_buckets = n;
    for (size_t i = 0; i < old_n; i++) {
        entry *e = old[i];
        while (e) {
            entry *next = e->chain;
            size_t k = bucket_of(c, e->hex);
            e->chain = nb[k];
            nb[k] = e;
            e = next;
        }
    }
    dx_free(old);
}

/* A deep copy of a response as the cache hands it out: normalised the way
 * a trip through dx_lm_response_to_json / _from_json would (latency 0, no
 * usage numbers without has_usage, a NULL text as "", an unknown finish as
 * OTHER), so memory and disk hits look alike. */
static int resp_copy(const dx_lm_response *s, dx_lm_response **out)
{
    int rc = dx_lm_response_copy(s, out);
    if (rc != DX_OK)
        return rc;
    dx_lm_response *r = *out;
    r->latency_ms = 0; /* a hit costs no upstream time */
    if (!r->has_usage)
        memset(&r->usage, 0, sizeof r->usage);
    for (size_t i = 0; i < r->n_choices; i++)
        if ((unsigned)r->choices[i].finish > DX_LM_FINISH_OTHER)
            r->choices[i].finish = DX_LM_FINISH_OTHER;
    return DX_OK;
}

static size_t str_bytes(const char *s)
{
    return s ? strlen(s) + 1 : 0;
}

/* What an entry holds, near enough: its structs and every string. */
static size_t resp_bytes(const dx_lm_response *r)
{
    size_t n = sizeof *r + str_bytes(r->id) + str_bytes(r->model) +
               str_bytes(r->request_id) + r->n_choices * sizeof *r->choices;
    for (size_t i = 0; i < r->n_choices; i++) {
        const dx_lm_choice *c = &r->choices[i];
        n += str_bytes(c->text ? c->text : "") + str_bytes(c->finish_raw) +
             c->n_tool_calls * sizeof *c->tool_calls;
        for (size_t k = 0; k < c->n_tool_calls; k++)
            n += str_bytes(c->tool_calls[k].id) +
                 str_bytes(c->tool_calls[k].name) +
                 str_bytes(c->tool_calls[k].arguments);
    }
    return n;
}

/* Insert or replace the memory entry for hex (resp is copied), then evict
 * from the tail until both bounds hold. An entry alone over max_bytes is
 * not kept. */
static int mem_put(dx_lmcache *c, const char *hex, const char *canon,
                   size_t canon_len, const dx_lm_response *resp)
{
    entry *old = find(c, hex);
    if (old)
        remove_entry(c, old);
    size_t bytes = sizeof(entry) + canon_len + 1 + resp_bytes(resp);
    if (bytes > c->lim.max_bytes)
        return DX_OK;
    entry *e = dx_calloc(1, sizeof *e);
    if (!e)
        return DX_ENOMEM;
    e->canonical = dx_malloc(canon_len + 1);
    if (!e->canonical || resp_copy(resp, &e->resp) != DX_OK) {
        dx_free(e->canonical);
        dx_free(e);
        return DX_ENOMEM;
    }
    memcpy(e->hex, hex, DX_LMCACHE_KEY_HEX + 1);
    memcpy(e->canonical, canon, canon_len);
    e->canonical[canon_len] = '\0';
    e->canon_len = canon_len;
    e->bytes = bytes;
    size_t k = bucket_of(c, hex);
    e->chain = c->buckets[k];
    c->buckets[k] = e;
    lru_front(c, e);
    c->st.entries++;
    c->st.bytes += bytes;
    while (c->tail != e && (c->st.entries > c->lim.max_entries ||
                            c->st.bytes > c->lim.max_bytes)) {
        remove_entry(c, c->tail);
        c->st.evictions++;
    }
    maybe_grow(c);
    return DX_OK;
}

/* ---- the file tier ------------------------------------------------------- */

static void set_err(dx_lmcache *c, const char *what)
{
    snprintf(c->err, sizeof c->err, "lmcache: cache file '%s': %s: %s",
             c->path ? c->path : "?", what,
             c->db ? sqlite3_errmsg(c->db) : "cannot open");
}

static void db_close(dx_lmcache *c)
{
    sqlite3_finalize(c->get_stmt);
    sqlite3_finalize(c->put_stmt);
    sqlite3_close(c->db);
    c->get_stmt = c->put_stmt = NULL;
    c->db = NULL;
}

static int exec(dx_lmcache *c, const char *sql, const char *what)
{
    if (sqlite3_exec(c->db, sql, NULL, NULL, NULL) != SQLITE_OK) {
        set_err(c, what);
        return DX_ECACHEFILE;
    }
    return DX_OK;
}

static int user_version(dx_lmcache *c, int *v)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(c->db, "PRAGMA user_version", -1, &s, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
        set_err(c, "reading the format version");
        sqlite3_finalize(s);
        return DX_ECACHEFILE;
    }
    *v = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    return DX_OK;
}

static int db_open(dx_lmcache *c)
{
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    if (sqlite3_open_v2(c->path, &c->db, flags, NULL) != SQLITE_OK) {
        set_err(c, "cannot open");
        return DX_ECACHEFILE;
    }
    sqlite3_busy_timeout(c->db, c->lim.busy_timeout_ms);
    /* The first read of the header is where "not a database" shows. */
    int v = 0;
    int rc = user_version(c, &v);
    if (rc == DX_OK && v != 0 && v != FORMAT_VERSION) {
        snprintf(c->err, sizeof c->err,
                 "lmcache: cache file '%s': format version %d, expected %d",
                 c->path, v, FORMAT_VERSION);
        return DX_ECACHEFILE;
    }
    if (rc == DX_OK)
        rc = exec(c, "PRAGMA journal_mode=WAL", "enabling WAL");
    if (rc == DX_OK)
        rc = exec(c, "PRAGMA synchronous=NORMAL", "setting synchronous");
    if (rc == DX_OK)
        rc = exec(c,
                  "CREATE TABLE IF NOT EXISTS lm_cache ("
                  " key TEXT PRIMARY KEY,"
                  " request BLOB NOT NULL,"
                  " response TEXT NOT NULL,"
                  " created_at INTEGER NOT NULL);"
                  "PRAGMA user_version=1;",
                  "creating the table");
    /* Damage deeper in the file shows later, per lookup, as a disk error
     * and a miss; a full check here would read the whole file at open. */
    if (rc == DX_OK &&
        sqlite3_prepare_v2(c->db,
                           "SELECT request, response FROM lm_cache "
                           "WHERE key = ?1",
                           -1, &c->get_stmt, NULL) != SQLITE_OK) {
        set_err(c, "preparing the lookup");
        rc = DX_ECACHEFILE;
    }
    if (rc == DX_OK &&
        sqlite3_prepare_v2(c->db,
                           "INSERT OR REPLACE INTO lm_cache "
                           "(key, request, response, created_at) "
                           "VALUES (?1, ?2, ?3, ?4)",
                           -1, &c->put_stmt, NULL) != SQLITE_OK) {
        set_err(c, "preparing the insert");
        rc = DX_ECACHEFILE;
    }
    return rc;
}

/* DX_OK with *json (dx_malloc'd) on a hit; DX_ENOENT on a miss or a
 * collision; DX_ECACHEFILE on a read error; DX_ENOMEM. */
static int db_get(dx_lmcache *c, const dx_lmcache_key *k, char **json,
                  size_t *json_len)
{
    sqlite3_stmt *s = c->get_stmt;
    int rc = DX_ENOENT;
    sqlite3_reset(s);
    if (sqlite3_bind_text(s, 1, k->hex, DX_LMCACHE_KEY_HEX, SQLITE_STATIC)) {
        set_err(c, "binding the lookup");
        return DX_ECACHEFILE;
    }
    int step = sqlite3_step(s);
    if (step == SQLITE_ROW) {
        const void *req = sqlite3_column_blob(s, 0);
        size_t req_len = (size_t)sqlite3_column_bytes(s, 0);
        const unsigned char *resp = sqlite3_column_text(s, 1);
        size_t resp_len = (size_t)sqlite3_column_bytes(s, 1);
        if (req_len != k->len ||
            (req_len && memcmp(req, k->canonical, req_len))) {
            c->st.collisions++;
        } else if (!resp) {
            set_err(c, "reading a response");
            rc = DX_ECACHEFILE;
        } else {
            *json = dx_malloc(resp_len + 1);
            if (!*json) {
                rc = DX_ENOMEM;
            } else {
                memcpy(*json, resp, resp_len);
                (*json)[resp_len] = '\0';
                *json_len = resp_len;
                rc = DX_OK;
            }
        }
    } else if (step != SQLITE_DONE) {
        set_err(c, "looking a key up");
        rc = DX_ECACHEFILE;
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc;
}

static int db_put(dx_lmcache *c, const dx_lmcache_key *k, const char *json,
                  size_t json_len, int64_t now_ms)
{
    sqlite3_stmt *s = c->put_stmt;
    sqlite3_reset(s);
    int rc = sqlite3_bind_text(s, 1, k->hex, DX_LMCACHE_KEY_HEX, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_blob(s, 2, k->canonical, (int)k->len, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(s, 3, json, (int)json_len, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s, 4, now_ms);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
    if (rc != SQLITE_OK)
        set_err(c, "writing an entry");
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_OK ? DX_OK : DX_ECACHEFILE;
}

/* ---- the API ------------------------------------------------------------- */

int dx_lmcache_open(const char *path, const dx_lmcache_limits *limits,
                    dx_lmcache **out)
{
    if (!out)
        return DX_EINVAL;
    *out = NULL;
    dx_lmcache *c = dx_calloc(1, sizeof *c);
    if (!c)
        return DX_ENOMEM;
    if (limits)
        c->lim = *limits;
    if (!c->lim.max_entries)
        c->lim.max_entries = DEFAULT_ENTRIES;
    if (!c->lim.max_bytes)
        c->lim.max_bytes = DEFAULT_BYTES;
    if (c->lim.busy_timeout_ms <= 0)
        c->lim.busy_timeout_ms = DEFAULT_BUSY_MS;
    c->n_buckets = 64;
    c->buckets = dx_calloc(c->n_buckets, sizeof *c->buckets);
    if (!c->buckets || (path && !(c->path = dx_strdup(path)))) {
        dx_free(c->buckets);
        dx_free(c);
        return DX_ENOMEM;
    }
    int rc = DX_OK;
    if (path) {
        rc = db_open(c);
        if (rc != DX_OK)
            db_close(c);
    }
    c->st.disk = c->db != NULL;
    *out = c;
    return rc;
}

void dx_lmcache_close(dx_lmcache *c)
{
    if (!c)
        return;
    while (c->head)
        remove_entry(c, c->head);
    db_close(c);
    dx_free(c->buckets);
    dx_free(c->path);
    dx_free(c);
}

static bool key_ok(const dx_lmcache_key *k)
{
    return k && k->canonical && k->hex[DX_LMCACHE_KEY_HEX] == '\0' &&
           strlen(k->hex) == DX_LMCACHE_KEY_HEX;
}

/* {.mode = DX_LMCACHE_BYPASS} and nothing else: a call that skips the
 * cache need not pay for hashing its request. */
static bool is_bare_bypass(const dx_lmcache_key *k)
{
    return k->mode == DX_LMCACHE_BYPASS && !k->canonical && k->hex[0] == '\0';
}

int dx_lmcache_get(dx_lmcache *c, const dx_lmcache_key *key,
                   dx_lm_response **out)
{
    if (!out)
        return DX_EINVAL;
    *out = NULL;
    if (!c || !key)
        return DX_EINVAL;
    /* Checked before the key: a BYPASS key may carry no hash at all. */
    if (key->mode != DX_LMCACHE_USE && (key_ok(key) || is_bare_bypass(key))) {
        c->st.bypassed++;
        return DX_ENOENT;
    }
    if (!key_ok(key))
        return DX_EINVAL;
    entry *e = find(c, key->hex);
    if (e) {
        if (e->canon_len == key->len &&
            memcmp(e->canonical, key->canonical, key->len) == 0) {
            int rc = resp_copy(e->resp, out);
            if (rc != DX_OK)
                return rc;
            lru_unlink(c, e);
            lru_front(c, e);
            c->st.hits_memory++;
            return DX_OK;
        }
        c->st.collisions++;
        c->st.misses++;
        return DX_ENOENT;
    }
    if (c->db) {
        char *json = NULL;
        size_t json_len = 0;
        int rc = db_get(c, key, &json, &json_len);
        if (rc == DX_ENOMEM)
            return rc;
        if (rc == DX_OK) {
            rc = dx_lm_response_from_json(json, json_len, out);
            if (rc == DX_OK) {
                /* Promotion is best effort: the answer is already in hand. */
                (void)mem_put(c, key->hex, key->canonical, key->len, *out);
                c->st.hits_disk++;
                dx_free(json);
                return DX_OK;
            }
            dx_free(json);
            if (rc == DX_ENOMEM)
                return rc;
            snprintf(c->err, sizeof c->err,
                     "lmcache: cache file '%s': entry %s holds an unreadable "
                     "response",
                     c->path, key->hex);
            rc = DX_ECACHEFILE;
        }
        if (rc == DX_ECACHEFILE)
            c->st.disk_errors++;
    }
    c->st.misses++;
    return DX_ENOENT;
}

int dx_lmcache_put(dx_lmcache *c, const dx_lmcache_key *key,
                   const dx_lm_response *resp, int64_t now_ms)
{
    if (!c || !key || !resp)
        return DX_EINVAL;
    if (key->mode == DX_LMCACHE_BYPASS && (key_ok(key) || is_bare_bypass(key)))
        return DX_OK;
    if (!key_ok(key))
        return DX_EINVAL;
    /* The file keeps JSON; a memory-only cache never renders it. */
    char *json = NULL;
    int rc = c->db ? dx_lm_response_to_json(resp, &json) : DX_OK;
    if (rc != DX_OK)
        return rc;
    rc = mem_put(c, key->hex, key->canonical, key->len, resp);
    if (rc == DX_OK && c->db && db_put(c, key, json, strlen(json), now_ms)) {
        c->st.disk_errors++;
        rc = DX_ECACHEFILE;
    }
    if (rc != DX_ENOMEM)
        c->st.puts++;
    dx_free(json);
    return rc;
}

void dx_lmcache_stats_get(const dx_lmcache *c, dx_lmcache_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    if (c)
        *out = c->st;
}

const char *dx_lmcache_error(const dx_lmcache *c)
{
    return c ? c->err : "";
}
