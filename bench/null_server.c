/*
 * null_server.c — the canned-answer server of null_server.h. Each thread
 * owns its listening socket, epoll set, connections and a FIFO of held
 * requests; as every request is held for the same latency, the FIFO is
 * already in due order and one timerfd (absolute, armed for the head)
 * releases them, a quarter of a millisecond at a time as the local LM
 * server does. A connection closed while a request of it is held stays
 * allocated (marked dead) until the thread ends, so the FIFO never points
 * at freed memory.
 */
#include "null_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define NULL_SERVER_MAX_THREADS 16
#define RELEASE_WINDOW_NS 250000 /* answers due this soon go out together */

typedef struct nconn {
    int fd; /* -1 once closed */
    char *in;
    size_t in_len, in_cap;
    struct nconn *next; /* the thread's list, freed at the end */
} nconn;

typedef struct held {
    int64_t due_ns;
    nconn *conn;
} held;

typedef struct nthread {
    struct null_server *srv;
    pthread_t thread;
    int listen_fd, ep, timer_fd;
    nconn *conns;
    held *fifo;
    size_t head, tail, cap; /* fifo[head..tail) */
} nthread;

struct null_server {
    int port;
    int64_t latency_ns;
    int stop_fd; /* an eventfd every thread watches */
    char answer[1024];
    size_t answer_len;
    unsigned nthreads;
    nthread threads[NULL_SERVER_MAX_THREADS];
};

/* About the size of the local LM server's answer to the eval benchmark. */
static const char ANSWER_BODY[] =
    "{\"id\":\"chatcmpl-0\",\"object\":\"chat.completion\",\"created\":0,"
    "\"model\":\"bench-model\",\"choices\":[{\"index\":0,\"message\":{"
    "\"role\":\"assistant\",\"content\":\"{\\\"answer\\\": \\\"x\\\"}\","
    "\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}],"
    "\"usage\":{\"prompt_tokens\":67,\"completion_tokens\":39,"
    "\"total_tokens\":106},\"system_fingerprint\":\"fp_null_server\"}";

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void arm(nthread *t, int64_t due_ns)
{
    struct itimerspec its = {.it_value = {.tv_sec = due_ns / 1000000000,
                                          .tv_nsec = due_ns % 1000000000}};
    timerfd_settime(t->timer_fd, TFD_TIMER_ABSTIME, &its, NULL);
}

static void conn_close(nthread *t, nconn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(t->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
}

static bool hold(nthread *t, nconn *c)
{
    if (t->tail == t->cap) {
        if (t->head > 0) { /* slide what is left to the front */
            memmove(t->fifo, t->fifo + t->head,
                    (t->tail - t->head) * sizeof *t->fifo);
            t->tail -= t->head;
            t->head = 0;
        } else {
            size_t cap = t->cap ? t->cap * 2 : 1024;
            held *f = realloc(t->fifo, cap * sizeof *f);
            if (f == NULL)
                return false;
            t->fifo = f;
            t->cap = cap;
        }
    }
    bool was_empty = t->head == t->tail;
    t->fifo[t->tail++] = (held){now_ns() + t->srv->latency_ns, c};
    if (was_empty)
        arm(t, t->fifo[t->tail - 1].due_ns);
    return true;
}

/* Take every complete request out of c's input; each is held. */
static bool take_requests(nthread *t, nconn *c)
{
    for (;;) {
        char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (end == NULL)
            return c->in_len < 65536; /* a head that never ends: close */
        size_t head = (size_t)(end - c->in) + 4, body = 0;
        for (char *p = c->in; p < end;) {
            char *eol = memchr(p, '\n', (size_t)(end - p));
            if (eol == NULL)
                break;
            if (strncasecmp(p, "content-length:", 15) == 0)
                body = (size_t)strtoul(p + 15, NULL, 10);
            p = eol + 1;
        }
        if (c->in_len < head + body)
            return true;
        if (!hold(t, c))
            return false;
        c->in_len -= head + body;
        memmove(c->in, c->in + head + body, c->in_len);
    }
}

static void on_readable(nthread *t, nconn *c)
{
    for (;;) {
        if (c->in_cap - c->in_len < 4096) {
            size_t cap = c->in_cap ? c->in_cap * 2 : 8192;
            char *p = realloc(c->in, cap);
            if (p == NULL) {
                conn_close(t, c);
                return;
            }
            c->in = p;
            c->in_cap = cap;
        }
        ssize_t r = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        if (r <= 0) {
            conn_close(t, c);
            return;
        }
        c->in_len += (size_t)r;
    }
    if (!take_requests(t, c))
        conn_close(t, c);
}

static void on_accept(nthread *t)
{
    for (;;) {
        int fd =
            accept4(t->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        nconn *c = calloc(1, sizeof *c);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (c == NULL || epoll_ctl(t->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            free(c);
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->fd = fd;
        c->next = t->conns;
        t->conns = c;
    }
}

/* Answer what is due; the answer is small enough for an empty socket
 * buffer, so a short write means a client gone wrong: close it. */
static void on_timer(nthread *t)
{
    uint64_t ticks;
    (void)!read(t->timer_fd, &ticks, sizeof ticks);
    int64_t until = now_ns() + RELEASE_WINDOW_NS;
    while (t->head < t->tail && t->fifo[t->head].due_ns <= until) {
        nconn *c = t->fifo[t->head++].conn;
        if (c->fd >= 0 && send(c->fd, t->srv->answer, t->srv->answer_len,
                               MSG_NOSIGNAL) != (ssize_t)t->srv->answer_len)
            conn_close(t, c);
    }
    if (t->head < t->tail)
        arm(t, t->fifo[t->head].due_ns);
}

static void *serve(void *arg)
{
    nthread *t = arg;
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(t->ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &t->srv->stop_fd)
                return NULL;
            if (p == &t->listen_fd)
                on_accept(t);
            else if (p == &t->timer_fd)
                on_timer(t);
            else
                on_readable(t, p);
        }
    }
}

static void thread_free(nthread *t)
{
    for (nconn *c = t->conns, *next; c != NULL; c = next) {
        next = c->next;
        if (c->fd >= 0)
            close(c->fd);
        free(c->in);
        free(c);
    }
    free(t->fifo);
    if (t->timer_fd >= 0)
        close(t->timer_fd);
    if (t->ep >= 0)
        close(t->ep);
    if (t->listen_fd >= 0)
        close(t->listen_fd);
}

static bool watch(int ep, int fd, void *tag)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = tag};
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0;
}

/* The thread's sockets, on the port of the first (0: pick one). */
static bool thread_init(null_server *s, nthread *t, int port)
{
    t->srv = s;
    t->listen_fd =
        socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    t->ep = epoll_create1(EPOLL_CLOEXEC);
    t->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (t->listen_fd < 0 || t->ep < 0 || t->timer_fd < 0)
        return false;
    int one = 1;
    setsockopt(t->listen_fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (bind(t->listen_fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(t->listen_fd, 4096) != 0 ||
        getsockname(t->listen_fd, (struct sockaddr *)&sa, &len) != 0)
        return false;
    s->port = ntohs(sa.sin_port);
    return watch(t->ep, t->listen_fd, &t->listen_fd) &&
           watch(t->ep, t->timer_fd, &t->timer_fd) &&
           watch(t->ep, s->stop_fd, &s->stop_fd);
}

null_server *null_server_start(unsigned threads, long latency_ms)
{
    if (threads < 1 || threads > NULL_SERVER_MAX_THREADS || latency_ms < 0)
        return NULL;
    null_server *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->latency_ns = (int64_t)latency_ms * 1000000;
    s->answer_len = (size_t)snprintf(
        s->answer, sizeof s->answer,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        "Content-Length: %zu\r\nConnection: keep-alive\r\n\r\n%s",
        sizeof ANSWER_BODY - 1, ANSWER_BODY);
    s->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    for (unsigned i = 0; i < threads; i++)
        s->threads[i].listen_fd = s->threads[i].ep = s->threads[i].timer_fd =
            -1;
    bool ok = s->stop_fd >= 0;
    for (unsigned i = 0; ok && i < threads; i++) {
        ok = thread_init(s, &s->threads[i], s->port);
        s->nthreads = i + 1;
    }
    unsigned started = 0;
    for (; ok && started < threads; started++)
        ok = pthread_create(&s->threads[started].thread, NULL, serve,
                            &s->threads[started]) == 0;
    if (!ok) {
        if (s->stop_fd >= 0)
            (void)!write(s->stop_fd, &(uint64_t){1}, sizeof(uint64_t));
        for (unsigned i = 0; i + 1 < started; i++)
            pthread_join(s->threads[i].thread, NULL);
        for (unsigned i = 0; i < s->nthreads; i++)
            thread_free(&s->threads[i]);
        if (s->stop_fd >= 0)
            close(s->stop_fd);
        free(s);
        return NULL;
    }
    return s;
}

int null_server_port(const null_server *s)
{
    return s->port;
}

void null_server_stop(null_server *s)
{
    if (s == NULL)
        return;
    (void)!write(s->stop_fd, &(uint64_t){1}, sizeof(uint64_t));
    for (unsigned i = 0; i < s->nthreads; i++)
        pthread_join(s->threads[i].thread, NULL);
    for (unsigned i = 0; i < s->nthreads; i++)
        thread_free(&s->threads[i]);
    close(s->stop_fd);
    free(s);
}
