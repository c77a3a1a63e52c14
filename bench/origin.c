/*
 * bench/origin.c — a small, fast HTTP/1.1 origin for Portico's benchmarks.
 *
 *   origin [-a 127.0.0.1] [-p 18080] [-t threads]
 *
 * GET  /0 /1k /100k /1m   -> 200 with a fixed body of 0 / 1024 / 102400 / 1048576 bytes
 * POST (any path)         -> reads and discards the body (Content-Length or chunked),
 *                            answers 200 with "ok\n"
 * GET  /_stats             -> 200 "requests N\nconnections M\n": requests answered so far (all
 *                            threads, not counting /_stats itself) and connections accepted,
 *                            for the cache scenarios' hit checks and the upstream reuse count;
 *                            not for pipelining (one reply buffer per connection)
 * anything else           -> 404, empty body
 *
 * Keep-alive by default (HTTP/1.1), "Connection: close" or HTTP/1.0 without keep-alive
 * closes after the response.  Pipelining-safe: every complete request in the read buffer is
 * answered in order, responses are queued as iovecs over static buffers (no copies) and sent
 * with writev.  Each thread (-t) owns an epoll loop and its own SO_REUSEPORT listener.
 * Built with `cc -O2 -pthread -o origin origin.c` by bench/run.py.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define RBUF 65536
#define MAXQ 64 /* queued responses (iovecs) per connection */

enum { R_0, R_1K, R_100K, R_1M, R_POST, R_404, R_400, R_N };
static const size_t body_len[R_N] = {0, 1024, 102400, 1048576, 3, 0, 0};
static const char *status_line[R_N] = {"200 OK", "200 OK",        "200 OK",         "200 OK",
                                       "200 OK", "404 Not Found", "400 Bad Request"};
static char *hdr[R_N][2]; /* [resp][close] */
static size_t hdr_len[R_N][2];
static char *body[R_N];

static unsigned long long served;   /* answered requests, /_stats excluded (atomic) */
static unsigned long long accepted; /* connections accepted (atomic) */

static const char *addr = "127.0.0.1";
static int port = 18080;

struct conn {
    int fd;
    int closing;        /* close once the queue drains */
    size_t rlen;        /* bytes in rbuf */
    long long body_rem; /* request body bytes still to discard (-1: in chunked mode) */
    int chunk_state;    /* chunked: 0 size line, 1 data, 2 data CRLF, 3 trailers */
    long long chunk_rem;
    int qhead, qn; /* iovec queue */
    struct iovec q[MAXQ];
    char sbuf[256]; /* the /_stats reply */
    char rbuf[RBUF];
};

static void die(const char *m)
{
    perror(m);
    exit(1);
}

static void build(void)
{
    for (int r = 0; r < R_N; r++) {
        body[r] = malloc(body_len[r] + 1);
        if (r == R_POST)
            memcpy(body[r], "ok\n", 3);
        else
            memset(body[r], 'x', body_len[r]);
        for (int c = 0; c < 2; c++) {
            char tmp[256];
            int n =
                snprintf(tmp, sizeof tmp,
                         "HTTP/1.1 %s\r\nServer: origin\r\nContent-Type: %s\r\n"
                         "Content-Length: %zu\r\n%s\r\n",
                         status_line[r], r == R_POST ? "text/plain" : "application/octet-stream",
                         body_len[r], c ? "Connection: close\r\n" : "");
            hdr[r][c] = strdup(tmp);
            hdr_len[r][c] = (size_t)n;
        }
    }
}

static void push(struct conn *c, const void *p, size_t n)
{
    if (!n)
        return;
    int i = (c->qhead + c->qn) % MAXQ;
    c->q[i].iov_base = (void *)p;
    c->q[i].iov_len = n;
    c->qn++;
}

/* returns 1 if the queue drained, 0 if it would block, -1 on error */
static int flush(struct conn *c)
{
    while (c->qn) {
        struct iovec v[MAXQ];
        int n = 0;
        for (int i = 0; i < c->qn; i++)
            v[n++] = c->q[(c->qhead + i) % MAXQ];
        ssize_t w = writev(c->fd, v, n);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return 0;
            return -1;
        }
        while (w > 0 && c->qn) {
            struct iovec *h = &c->q[c->qhead];
            if ((size_t)w >= h->iov_len) {
                w -= (ssize_t)h->iov_len;
                c->qhead = (c->qhead + 1) % MAXQ;
                c->qn--;
            } else {
                h->iov_base = (char *)h->iov_base + w;
                h->iov_len -= (size_t)w;
                w = 0;
            }
        }
    }
    return 1;
}

static const char *memmem_crlf2(const char *p, size_t n)
{
    return memmem(p, n, "\r\n\r\n", 4);
}

/* case-insensitive header lookup inside [p, end) — returns value start or NULL */
static const char *header(const char *p, const char *end, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    const char *line = memchr(p, '\n', (size_t)(end - p));
    while (line && line + 1 < end) {
        line++;
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol)
            break;
        if ((size_t)(eol - line) > nl && line[nl] == ':' && !strncasecmp(line, name, nl)) {
            const char *v = line + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        line = eol;
    }
    return NULL;
}

/* consume request body bytes from rbuf[*off..rlen); returns 1 when body done, 0 need more,
 * -1 malformed */
static int eat_body(struct conn *c, size_t *off)
{
    if (c->body_rem > 0) {
        size_t avail = c->rlen - *off;
        size_t take = (long long)avail < c->body_rem ? avail : (size_t)c->body_rem;
        *off += take;
        c->body_rem -= (long long)take;
        return c->body_rem == 0;
    }
    if (c->body_rem == 0)
        return 1;
    /* chunked */
    for (;;) {
        char *p = c->rbuf + *off;
        size_t avail = c->rlen - *off;
        switch (c->chunk_state) {
        case 0: { /* size line */
            char *nl = memchr(p, '\n', avail);
            if (!nl)
                return avail > 1024 ? -1 : 0;
            c->chunk_rem = strtoll(p, NULL, 16);
            if (c->chunk_rem < 0)
                return -1;
            *off += (size_t)(nl - p) + 1;
            c->chunk_state = c->chunk_rem ? 1 : 3;
            break;
        }
        case 1: {
            size_t take = (long long)avail < c->chunk_rem ? avail : (size_t)c->chunk_rem;
            *off += take;
            c->chunk_rem -= (long long)take;
            if (c->chunk_rem)
                return 0;
            c->chunk_state = 2;
            break;
        }
        case 2: {
            char *nl = memchr(p, '\n', avail);
            if (!nl)
                return 0;
            *off += (size_t)(nl - p) + 1;
            c->chunk_state = 0;
            break;
        }
        case 3: { /* trailers until empty line */
            char *nl = memchr(p, '\n', avail);
            if (!nl)
                return avail > 8192 ? -1 : 0;
            size_t ll = (size_t)(nl - p) + 1;
            *off += ll;
            if (ll <= 2) {
                c->body_rem = 0;
                c->chunk_state = 0;
                return 1;
            }
            break;
        }
        }
    }
}

/* parse and answer every complete request in rbuf; returns -1 to drop the connection */
static int process(struct conn *c)
{
    size_t off = 0;
    for (;;) {
        if (c->body_rem) {
            int r = eat_body(c, &off);
            if (r < 0)
                return -1;
            if (r == 0)
                break;
            push(c, hdr[R_POST][c->closing], hdr_len[R_POST][c->closing]);
            push(c, body[R_POST], body_len[R_POST]);
            if (c->closing)
                break;
            continue;
        }
        if (c->closing || c->qn > MAXQ - 4)
            break;
        const char *p = c->rbuf + off;
        size_t n = c->rlen - off;
        while (n && (*p == '\r' || *p == '\n')) {
            p++;
            n--;
            off++;
        }
        const char *e = memmem_crlf2(p, n);
        if (!e) {
            if (n >= RBUF - 1)
                return -1; /* head too large */
            break;
        }
        const char *end = e + 4;
        size_t vl;
        const char *v;
        int http10 = memmem(p, (size_t)(end - p), "HTTP/1.0\r\n", 10) != NULL;
        int close = http10;
        if ((v = header(p, end, "Connection", &vl))) {
            if (memmem(v, vl, "close", 5) || memmem(v, vl, "Close", 5))
                close = 1;
            else if (http10 && (memmem(v, vl, "eep-alive", 9)))
                close = 0;
        }
        c->closing = close;
        off += (size_t)(end - p);
        if (n >= 5 && !memcmp(p, "POST ", 5)) {
            c->body_rem = 0;
            if ((v = header(p, end, "Transfer-Encoding", &vl)) && vl >= 7 &&
                !strncasecmp(v + vl - 7, "chunked", 7)) {
                c->body_rem = -1;
                c->chunk_state = 0;
            } else if ((v = header(p, end, "Content-Length", &vl))) {
                c->body_rem = strtoll(v, NULL, 10);
            }
            __atomic_fetch_add(&served, 1, __ATOMIC_RELAXED);
            if (c->body_rem == 0) {
                push(c, hdr[R_POST][close], hdr_len[R_POST][close]);
                push(c, body[R_POST], body_len[R_POST]);
            }
            continue;
        }
        int r = R_404;
        if (n >= 4 && (!memcmp(p, "GET ", 4) || !memcmp(p, "HEAD", 4))) {
            const char *u = memchr(p, ' ', n) + 1;
            const char *ue = memchr(u, ' ', (size_t)(end - u));
            if (!ue)
                return -1;
            size_t ul = (size_t)(ue - u);
            const char *qm = memchr(u, '?', ul);
            if (qm)
                ul = (size_t)(qm - u);
            if (ul == 7 && !memcmp(u, "/_stats", 7)) {
                unsigned long long nreq = __atomic_load_n(&served, __ATOMIC_RELAXED);
                unsigned long long nconn = __atomic_load_n(&accepted, __ATOMIC_RELAXED);
                char b[64];
                int bl = snprintf(b, sizeof b, "requests %llu\nconnections %llu\n", nreq, nconn);
                int hl =
                    snprintf(c->sbuf, sizeof c->sbuf,
                             "HTTP/1.1 200 OK\r\nServer: origin\r\nContent-Type: text/plain\r\n"
                             "Cache-Control: no-store\r\nContent-Length: %d\r\n%s\r\n%s",
                             bl, close ? "Connection: close\r\n" : "", p[0] == 'G' ? b : "");
                push(c, c->sbuf, (size_t)hl);
                continue;
            }
            __atomic_fetch_add(&served, 1, __ATOMIC_RELAXED);
            if (ul == 2 && !memcmp(u, "/0", 2))
                r = R_0;
            else if (ul == 3 && !memcmp(u, "/1k", 3))
                r = R_1K;
            else if (ul == 5 && !memcmp(u, "/100k", 5))
                r = R_100K;
            else if (ul == 3 && !memcmp(u, "/1m", 3))
                r = R_1M;
            else if (ul == 1 && *u == '/')
                r = R_0;
            push(c, hdr[r][close], hdr_len[r][close]);
            if (p[0] == 'G')
                push(c, body[r], body_len[r]);
        } else {
            push(c, hdr[R_400][1], hdr_len[R_400][1]);
            c->closing = 1;
        }
    }
    if (off) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
    return 0;
}

static void drop(int ep, struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

static int listener(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
        die("address");
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        die("bind");
    if (listen(fd, 4096) < 0)
        die("listen");
    return fd;
}

static void *loop(void *arg)
{
    (void)arg;
    int lfd = listener();
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0)
                        break;
                    __atomic_fetch_add(&accepted, 1, __ATOMIC_RELAXED);
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    if (!c) {
                        close(fd);
                        continue;
                    }
                    c->fd = fd;
                    struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            uint32_t e = evs[i].events;
            if (e & (EPOLLERR | EPOLLHUP)) {
                drop(ep, c);
                continue;
            }
            int was_blocked = c->qn > 0;
            if (e & EPOLLOUT) {
                int f = flush(c);
                if (f < 0) {
                    drop(ep, c);
                    continue;
                }
            }
            if ((e & (EPOLLIN | EPOLLRDHUP)) && !(c->closing && !c->body_rem)) {
                /* read until EAGAIN (bounded by buffer space) */
                int eof = 0;
                for (;;) {
                    if (c->rlen == RBUF)
                        break;
                    ssize_t r = read(c->fd, c->rbuf + c->rlen, RBUF - c->rlen);
                    if (r > 0) {
                        c->rlen += (size_t)r;
                        if (c->body_rem > 0 && (long long)c->rlen >= c->body_rem) {
                            /* fast path for large uploads: discard without memmove */
                            size_t off = 0;
                            eat_body(c, &off);
                            if (c->body_rem == 0) {
                                push(c, hdr[R_POST][c->closing], hdr_len[R_POST][c->closing]);
                                push(c, body[R_POST], body_len[R_POST]);
                            }
                            memmove(c->rbuf, c->rbuf + off, c->rlen - off);
                            c->rlen -= off;
                        } else if (c->body_rem > 0 && c->rlen == RBUF) {
                            c->body_rem -= (long long)c->rlen;
                            c->rlen = 0;
                        }
                        continue;
                    }
                    if (r == 0) {
                        eof = 1;
                        break;
                    }
                    if (errno == EINTR)
                        continue;
                    if (errno != EAGAIN)
                        eof = 1;
                    break;
                }
                if (process(c) < 0) {
                    drop(ep, c);
                    continue;
                }
                if (eof && !c->qn) {
                    drop(ep, c);
                    continue;
                }
            }
            int f = flush(c);
            if (f < 0) {
                drop(ep, c);
                continue;
            }
            if (f == 1) {
                if (c->closing && !c->body_rem) {
                    shutdown(c->fd, SHUT_WR);
                    drop(ep, c);
                    continue;
                }
                /* more pipelined requests may wait in rbuf with no new socket data */
                while (f == 1 && c->rlen && !c->closing) {
                    size_t before = c->rlen;
                    if (process(c) < 0) {
                        f = -1;
                        break;
                    }
                    if (!c->qn && c->rlen == before)
                        break; /* incomplete head/body */
                    f = flush(c);
                }
                if (f < 0) {
                    drop(ep, c);
                    continue;
                }
                if (f == 1 && c->closing && !c->body_rem) {
                    shutdown(c->fd, SHUT_WR);
                    drop(ep, c);
                    continue;
                }
            }
            int blocked = c->qn > 0;
            if (blocked != was_blocked || (e & EPOLLOUT && !blocked)) {
                struct epoll_event ne = {.events = blocked ? EPOLLOUT : (EPOLLIN | EPOLLRDHUP),
                                         .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ne);
            }
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = 1, opt;
    while ((opt = getopt(argc, argv, "a:p:t:h")) != -1) {
        switch (opt) {
        case 'a':
            addr = optarg;
            break;
        case 'p':
            port = atoi(optarg);
            break;
        case 't':
            threads = atoi(optarg);
            break;
        default:
            fprintf(stderr, "usage: %s [-a addr] [-p port] [-t threads]\n", argv[0]);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    build();
    if (threads < 1)
        threads = 1;
    for (int i = 1; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, loop, NULL))
            die("pthread_create");
    }
    fprintf(stderr, "origin listening on %s:%d (%d thread%s)\n", addr, port, threads,
            threads > 1 ? "s" : "");
    loop(NULL);
    return 0;
}
