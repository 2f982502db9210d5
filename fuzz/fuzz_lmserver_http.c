/*
 * fuzz_lmserver_http.c — fuzz target for the local LM server's request
 * handling (providers/lmserver.c: HTTP parsing, framing, limits, and
 * lmserver_wire.c: routing, the three provider request formats, fault
 * specs). One server is started for the whole run (small body limit, so the
 * 413 path is reachable); each input is sent raw over a fresh loopback
 * connection, half-closed after it when the first byte is odd.
 * Invariants: the server never crashes; whatever it sends starts with an
 * HTTP/1.1 status line; after every input it still answers a well-formed
 * request (so no input wedges or kills it).
 */
#include <stdlib.h>

#include "dspex/error.h"
#include "dspex/lmserver.h"
#include "fuzz_http_common.h"

static dx_lmserver *srv;
static int port;

static void stop_server(void)
{
    dx_lmserver_stop_free(srv);
    srv = NULL;
}

static void start_server(void)
{
    if (srv)
        return;
    /* The default connection limit: a connection the server closes on
     * purpose lingers (draining input) for up to a second and still
     * counts, and the fuzzer makes hundreds of those a second; with a
     * small limit the probe would be refused by design. */
    dx_lmserver_opts o = {.max_body_bytes = 64 * 1024};
    FUZZ_CHECK(dx_lmserver_start(&o, &srv) == DX_OK);
    port = dx_lmserver_port(srv);
    atexit(stop_server);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    start_server();
    char head[FUZZ_HTTP_KEEP + 1];
    /* The first byte's low bit: half-close after sending or not. */
    bool half_close = size > 0 && (data[0] & 1);
    size_t got = fuzz_http_exchange(port, data, size, half_close, 20, head);
    if (got >= 9)
        FUZZ_CHECK(strncmp(head, "HTTP/1.1 ", 9) == 0);

    static const char probe[] = "GET /v1/models HTTP/1.1\r\n"
                                "Host: 127.0.0.1\r\n"
                                "Connection: close\r\n\r\n";
    got = fuzz_http_exchange(port, (const uint8_t *)probe, sizeof probe - 1,
                             false, 5000, head);
    if (got < 9 || strncmp(head, "HTTP/1.1 ", 9) != 0) {
        dx_lmserver_stats st;
        dx_lmserver_stats_get(srv, &st);
        fprintf(stderr,
                "the server no longer answers (%zu bytes: %.20s); "
                "connections open %llu, accepted %llu, closed early %llu, "
                "requests %llu\n",
                got, head, (unsigned long long)st.connections_open,
                (unsigned long long)st.connections_accepted,
                (unsigned long long)st.connections_closed_early,
                (unsigned long long)st.requests);
        abort();
    }
    return 0;
}
