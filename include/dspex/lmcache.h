/*
 * lmcache.h — the LM response cache of the client actor.
 *
 * A cache entry maps a request to the response it got. The key is the
 * SHA-256 (hex) of a canonical serialisation of everything that changes the
 * answer: the model string, the messages (role, content, tool calls, tool
 * call ids), temperature, max_tokens, n, stop sequences, seed, the response
 * format with its schema, the tools and tool_choice, and an optional
 * namespace (a rollout id: the same request under another namespace is a
 * fresh sample). The stream flag is not part of it: a streamed and an
 * unstreamed call get the same answer.
 *
 * Canonical form (version "dxc1"): the text "dxc1\n" followed by one field
 * per line group, each `<tag>=<len>:<bytes>\n` for strings (len in decimal
 * bytes, so any content is unambiguous) or `<tag>=~\n` for an absent value,
 * and `<tag>=<decimal>\n` for numbers (temperature as "%.17g", so distinct
 * doubles stay distinct). Fields come in a fixed order; lists are preceded
 * by their count. JSON texts (schemas, tool parameters, call arguments) are
 * taken byte for byte: two spellings of the same schema are two keys — a
 * miss, never a wrong hit.
 *
 * Two tiers: an LRU in memory, bounded by entries and bytes, in front of an
 * optional SQLite file (WAL, busy timeout, so several OS processes may share
 * it). Each tier keeps the canonical text beside the response and compares
 * it on a hit, so a hash collision is a miss, never the wrong answer.
 *
 * Threads: a cache has one owner (the client actor); no call locks. The
 * file may be shared with other processes.
 */
#ifndef DSPEX_LMCACHE_H
#define DSPEX_LMCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "export.h"
#include "provider.h"

#define DX_LMCACHE_KEY_HEX 64 /* hex digits of a key (SHA-256) */

typedef enum dx_lmcache_mode {
    DX_LMCACHE_USE,     /* read, and write on a miss */
    DX_LMCACHE_BYPASS,  /* neither read nor write */
    DX_LMCACHE_REFRESH, /* do not read; write the fresh answer */
} dx_lmcache_mode;

/* A request's cache key. Built by dx_lmcache_key_make; release with
 * dx_lmcache_key_clear. The fields are public so a caller (or a test) can
 * inspect them; mode may be changed freely between make and get/put.
 * A call that skips the cache may instead pass (dx_lmcache_key){.mode =
 * DX_LMCACHE_BYPASS}, never made: get and put treat it as any BYPASS key. */
typedef struct dx_lmcache_key {
    char hex[DX_LMCACHE_KEY_HEX + 1];
    char *canonical; /* dx_malloc'd, NUL-terminated, len bytes */
    size_t len;
    dx_lmcache_mode mode;
} dx_lmcache_key;

/* Bounds; a zero field takes the default shown. */
typedef struct dx_lmcache_limits {
    size_t max_entries;  /* in memory; default 10000 */
    size_t max_bytes;    /* in memory (canonical + response text + overhead);
                            default 64 MiB */
    int busy_timeout_ms; /* SQLite busy timeout; default 5000 */
} dx_lmcache_limits;

typedef struct dx_lmcache_stats {
    uint64_t hits_memory;
    uint64_t hits_disk;
    uint64_t misses;
    uint64_t bypassed;   /* gets in BYPASS or REFRESH mode */
    uint64_t puts;       /* stored (puts in BYPASS mode are not counted) */
    uint64_t evictions;  /* from memory, by count or bytes */
    uint64_t collisions; /* same hash, different canonical text */
    uint64_t disk_errors;
    size_t entries; /* now in memory */
    size_t bytes;   /* now in memory */
    bool disk;      /* a file is in use */
} dx_lmcache_stats;

typedef struct dx_lmcache dx_lmcache;

/* Compute the key of req. model is the full model string the client talks
 * to (e.g. "openai/gpt-4o-mini"); NULL means req->model. ns is the
 * namespace (rollout id); NULL and "" are the same (no namespace).
 * mode is set to DX_LMCACHE_USE. On DX_OK key holds an allocation: release
 * it with dx_lmcache_key_clear. DX_EINVAL (NULL req/key), DX_ENOMEM; on
 * failure key is zeroed. */
DX_API int dx_lmcache_key_make(const dx_lm_request *req, const char *model,
                               const char *ns, dx_lmcache_key *key);
/* Free the canonical text and zero the key. NULL is a no-op. */
DX_API void dx_lmcache_key_clear(dx_lmcache_key *key);

/* Open a cache. path is the SQLite file (created if absent) or NULL for a
 * memory-only cache; limits may be NULL (defaults).
 *   DX_OK: *out is ready.
 *   DX_ECACHEFILE: the file could not be used (unopenable, not a database,
 *     corrupt, a cache of another format version); *out is still a working
 *     memory-only cache and dx_lmcache_error() says why, naming the path.
 *   DX_EINVAL (NULL out), DX_ENOMEM: *out is NULL.
 * Close with dx_lmcache_close in both DX_OK and DX_ECACHEFILE cases. */
DX_API int dx_lmcache_open(const char *path, const dx_lmcache_limits *limits,
                           dx_lmcache **out);
/* Close the file and free everything. NULL is a no-op. */
DX_API void dx_lmcache_close(dx_lmcache *c);

/* Look a key up: memory first, then the file (a disk hit is copied into
 * memory). DX_OK: *out is a fresh copy the caller owns
 * (dx_lm_response_free); its usage is the original call's (a hit costs
 * nothing: the caller accounts it as a cached call) and latency_ms is 0.
 * DX_ENOENT: a miss (also for keys in BYPASS/REFRESH mode, for a collision,
 * and for a row the file cannot give back: counted in disk_errors); *out is
 * NULL. DX_EINVAL, DX_ENOMEM. */
DX_API int dx_lmcache_get(dx_lmcache *c, const dx_lmcache_key *key,
                          dx_lm_response **out);

/* Store resp (copied) under key, replacing what was there, created at
 * now_ms (Unix ms, from the caller's clock). A key in BYPASS mode stores
 * nothing and returns DX_OK. An entry larger than max_bytes is written to
 * the file only. DX_OK; DX_ECACHEFILE when the file write failed (the
 * memory tier still has the entry; dx_lmcache_error says why); DX_EINVAL,
 * DX_ENOMEM (nothing stored). */
DX_API int dx_lmcache_put(dx_lmcache *c, const dx_lmcache_key *key,
                          const dx_lm_response *resp, int64_t now_ms);

/* Counters and sizes. */
DX_API void dx_lmcache_stats_get(const dx_lmcache *c, dx_lmcache_stats *out);

/* The last file problem ("" when none): static until the next call on c. */
DX_API const char *dx_lmcache_error(const dx_lmcache *c);

#endif
