/*
 * h1_int.h — dspex's own HTTP/1.1 client, the transport's path for plain
 * HTTP to a server named by IP address (a local vLLM, llama.cpp or Ollama,
 * the local LM server). http.c decides which requests take it, owns the
 * transfers and their completions, and drives this module from its lanes;
 * everything here but dx__h1_prepare runs on a lane's loop thread.
 *
 * Why not curl for these: curl spends ~80 k instructions a request
 * (callgrind; its printf engine formats the request head a character at a
 * time), which on a 2-vCPU machine was a quarter of an evaluated example's
 * CPU. This client writes the request head once, parses the response with
 * http_parser (the library the local server uses) and keeps connections per
 * lane, as curl's multi handle did. Internal: not installed.
 */
#ifndef DSPEX_H1_INT_H
#define DSPEX_H1_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "dspex/http.h"

/* Where a request goes; connections to the same key are shared. */
typedef struct dx__h1_target {
    struct sockaddr_storage addr;
    socklen_t addr_len;
    /* Another address of the same server, tried when the first refuses
     * (localhost: [::1] after 127.0.0.1); alt_len 0: none. */
    struct sockaddr_storage alt;
    socklen_t alt_len;
    char key[80]; /* "address port" */
} dx__h1_target;

/* On the submitting thread. True when req can take this path, with *t
 * filled and the whole request (head and body) in *out (dx_malloc'd, owned
 * by the caller, *out_len bytes). False when it cannot — https, a host
 * name other than localhost, a proxy in the environment, a header this client does not speak
 * for (Host, Content-Length, Transfer-Encoding, Connection, a "Name;"
 * header), DX_HTTP_CURL set — or when out of memory: curl then takes it. */
bool dx__h1_prepare(const dx_http_request *req, const char *method,
                    dx__h1_target *t, char **out, size_t *out_len);

typedef struct dx__h1_result {
    int err;          /* DX_OK, or DX_ECONNECT, DX_ETIMEDOUT, DX_ERESET,
                         DX_EHTTP, DX_ENOMEM, DX_ECANCELED (a callback said
                         stop) */
    const char *what; /* for err: what went wrong, for people */
    char detail[96];  /* more about it ("Connection refused"), or "" */
    int http_version; /* 10, 11; 0 if no response */
    int64_t total_us, connect_us, ttfb_us;
} dx__h1_result;

typedef struct dx__h1_ops {
    /* The response head, a line at a time, as curl gives it: the status
     * line ("HTTP/1.1 200\r\n"), "Name: value\r\n" lines, "\r\n"; again for
     * the final response after an informational (1xx) one. false stops the
     * exchange (a limit). */
    bool (*header)(void *ud, const char *line, size_t len);
    /* Body bytes as they come (de-chunked). false stops the exchange. */
    bool (*body)(void *ud, const char *data, size_t len);
    /* The exchange ended; called once, never from dx__h1_start itself. */
    void (*done)(void *ud, const dx__h1_result *r);
} dx__h1_ops;

typedef struct dx__h1_xfer dx__h1_xfer;

/* Start an exchange on this lane: takes `request` (freed here whatever
 * happens). timeout_ms / connect_timeout_ms <= 0: none. NULL when out of
 * memory; otherwise ops->done is called once, later. */
dx__h1_xfer *dx__h1_start(const dx__h1_target *t, char *request, size_t len,
                          bool head_request, int64_t timeout_ms,
                          int64_t connect_timeout_ms, const dx__h1_ops *ops,
                          void *ud);

/* End an exchange now without its done callback; a connection it was using
 * is closed (the server sees the close). */
void dx__h1_cancel(dx__h1_xfer *x);

/* This lane's share of the limits (dx_http_limits; 0 = none, and for idle
 * connections 0 = four per exchange running, curl's default), and how long
 * (ms) a connection may have been idle and still be reused (0 = any). */
void dx__h1_set_limits(long host_max, long total_max, long idle_max,
                       long idle_age_ms);

/* Close the lane's idle connections (dx_http_close_idle); exchanges
 * running keep theirs. */
void dx__h1_close_idle(void);

/* At the lane's teardown, after every exchange has ended: close the
 * connections and free the lane's state. */
void dx__h1_close_all(void);

/* Connections opened so far, by every lane. */
uint64_t dx__h1_connections_opened(void);

#endif
