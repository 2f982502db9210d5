/*
 * fuzz_lmserver_http.c — fuzz target for the local LM server's request
 * handling (providers/lmserver.c: HTTP parsing, framing, limits, and
 * lmserver_wire.c: routing, the three provider request formats, fault
 * specs). One server is started for the whole run (small body limit, so the
 * 413 path is reachable); each input is sent raw over a fresh loopback
 * connection.
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
    dx_lmserver_opts o = {.max_body_bytes = 64 * 1024, .max_connections = 64};
    FUZZ_CHECK(dx_lmserver_start(&o, &srv) == DX_OK);
    port = dx_lmserver_port(srv);
    atexit(stop_server);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    start_server();
    char head[FUZZ_HTTP_KEEP + 1];
    size_t got = fuzz_http_exchange(port, data, size, 300, head);
    if (got >= 9)
        FUZZ_CHECK(strncmp(head, "HTTP/1.1 ", 9) == 0);

    static const char probe[] = "GET /v1/models HTTP/1.1\r\n"
                                "Host: 127.0.0.1\r\n"
                                "Connection: close\r\n\r\n";
    got = fuzz_http_exchange(port, (const uint8_t *)probe, sizeof probe - 1,
                             5000, head);
    FUZZ_CHECK(got >= 9 && strncmp(head, "HTTP/1.1 ", 9) == 0);
    return 0;
}
