/*
 * null_server.h — the least an HTTP/1.1 server can do for a benchmark: a
 * few threads, each with an epoll set and a listening socket of its own on
 * one port (SO_REUSEPORT), that read each request up to the end of its
 * Content-Length body, hold it for a fixed latency and answer it with the
 * same canned 200 response. No parsing beyond that, no JSON, no libuv.
 *
 * Run with floor_client.h against it, it measures what the kernel and the
 * machine alone leave of a benchmark's ideal, with neither dspex nor the
 * local LM server's work in it: the floor under the floor. The caller owns
 * the server from null_server_start to null_server_stop, which joins its
 * threads and frees everything.
 */
#ifndef DSPEX_BENCH_NULL_SERVER_H
#define DSPEX_BENCH_NULL_SERVER_H

typedef struct null_server null_server;

/* Listen on 127.0.0.1 (an ephemeral port) with `threads` threads (1..16),
 * answering each request latency_ms after it was read. Returns NULL when
 * the sockets or threads cannot be made. */
null_server *null_server_start(unsigned threads, long latency_ms);

int null_server_port(const null_server *s);

void null_server_stop(null_server *s);

#endif
