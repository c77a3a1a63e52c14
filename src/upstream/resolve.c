/* Re-resolution of `server name:port resolve;` off the data path: one thread
 * for the process, blocking lookups (getaddrinfo, or one UDP DNS query to
 * the group's `resolver`), and an atomic pointer per server to an immutable
 * address block, so a worker reads a whole address or the previous one. */
#include "upstream/upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "net/dns.h"

void ups_server_publish(struct ups_server *s, const struct net_addr *a)
{
    struct ups_addr *b = calloc(1, sizeof(*b));
    if (!b)
        return; /* keep the old address; the next round tries again */
    b->addr = *a;
    net_addr_format(a, b->text, sizeof(b->text));
    /* only the resolver thread writes: a plain load is enough for `older` */
    b->older = atomic_load_explicit(&s->resolved, memory_order_relaxed);
    atomic_store_explicit(&s->resolved, b, memory_order_release);
}

void ups_group_release(struct ups_group *g)
{
    for (size_t i = 0; i < g->nservers; i++) {
        struct ups_addr *b = atomic_exchange(&g->servers[i].resolved, NULL);
        while (b) {
            struct ups_addr *o = b->older;
            free(b);
            b = o;
        }
    }
}

/* "host:port" of the server line into host and port (default 80) */
static int split_name(const char *name, char *host, size_t cap, int *port)
{
    const char *colon = strrchr(name, ':');
    size_t hl = colon ? (size_t)(colon - name) : strlen(name);
    if (hl >= cap)
        return -1;
    memcpy(host, name, hl);
    host[hl] = '\0';
    *port = colon ? atoi(colon + 1) : 80;
    return *port > 0 && *port < 65536 ? 0 : -1;
}

static int lookup_system(const char *host, struct net_addr *out)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
        return -1;
    int rc = -1;
    if (res->ai_addrlen <= sizeof(out->in6)) {
        memset(out, 0, sizeof(*out));
        memcpy(&out->in6, res->ai_addr, res->ai_addrlen);
        out->len = (socklen_t)res->ai_addrlen;
        rc = 0;
    }
    freeaddrinfo(res);
    return rc;
}

int ups_resolve_server(const struct ups_group *g, struct ups_server *s)
{
    char host[256];
    int port;
    struct net_addr a;
    if (split_name(s->name, host, sizeof(host), &port) < 0)
        return -1;
    int rc = g->resolver.n ? net_dns_lookup(g->resolver.addr, g->resolver.n, host,
                                            g->resolver.timeout_ms ? g->resolver.timeout_ms : 30000,
                                            g->resolver.ipv6, &a)
                           : lookup_system(host, &a);
    if (rc < 0) {
        LOG(LOG_WARN, "upstream server %s of \"%s\" could not be resolved; keeping %s", s->name,
            g->name, ups_server_addr_text(s));
        return -1;
    }
    if (a.sa.ss_family == AF_INET)
        a.in4.sin_port = htons((uint16_t)port);
    else
        a.in6.sin6_port = htons((uint16_t)port);
    if (net_addr_equal(&a, ups_server_addr(s)))
        return 0;
    ups_server_publish(s, &a);
    LOG(LOG_NOTICE, "upstream server %s of \"%s\" resolved to %s", s->name, g->name,
        ups_server_addr_text(s));
    return 1;
}

/* ---- the thread ---- */

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
    bool running, stop;
    struct ups_group **groups;
    size_t ngroups;
    uint64_t *due; /* per group: next pass, ms (CLOCK_MONOTONIC) */
} R = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool has_resolve(const struct ups_group *g)
{
    for (size_t i = 0; i < g->nservers; i++)
        if (g->servers[i].resolve)
            return true;
    return false;
}

/* Take the groups (a copy of the array: the snapshot's may be reused). */
static int set_groups(struct ups_group *const *groups, size_t n)
{
    struct ups_group **gs = n ? calloc(n, sizeof(*gs)) : NULL;
    uint64_t *due = n ? calloc(n, sizeof(*due)) : NULL;
    if (n && (!gs || !due)) {
        free(gs);
        free(due);
        return -1;
    }
    size_t k = 0;
    uint64_t now = mono_ms();
    for (size_t i = 0; i < n; i++)
        if (has_resolve(groups[i])) {
            gs[k] = groups[i];
            due[k++] = now + groups[i]->resolver_valid_ms;
        }
    free(R.groups);
    free(R.due);
    R.groups = gs;
    R.due = due;
    R.ngroups = k;
    return 0;
}

static void *resolve_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&R.lock);
    while (!R.stop) {
        uint64_t now = mono_ms(), next = now + 60000;
        for (size_t i = 0; i < R.ngroups; i++) {
            struct ups_group *g = R.groups[i];
            if (R.due[i] <= now) {
                /* the lookups run under the lock: a reload waits for them
                 * (at most one pass) and then the old groups are no longer
                 * touched */
                for (size_t j = 0; j < g->nservers; j++)
                    if (g->servers[j].resolve)
                        ups_resolve_server(g, &g->servers[j]);
                now = mono_ms();
                R.due[i] = now + g->resolver_valid_ms;
            }
            if (R.due[i] < next)
                next = R.due[i];
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t wait = next > now ? next - now : 0;
        ts.tv_sec += (time_t)(wait / 1000);
        ts.tv_nsec += (long)(wait % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&R.cond, &R.lock, &ts);
    }
    pthread_mutex_unlock(&R.lock);
    return NULL;
}

int ups_resolve_start(struct ups_group *const *groups, size_t ngroups)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&R.cond, &ca);
    pthread_condattr_destroy(&ca);
    if (set_groups(groups, ngroups) < 0)
        return -1;
    R.stop = false;
    int e = pthread_create(&R.thread, NULL, resolve_main, NULL);
    if (e) {
        errno = e;
        return -1;
    }
    R.running = true;
    return 0;
}

void ups_resolve_reload(struct ups_group *const *groups, size_t ngroups)
{
    pthread_mutex_lock(&R.lock);
    if (set_groups(groups, ngroups) < 0)
        R.ngroups = 0; /* out of memory: no re-resolution rather than stale groups */
    pthread_cond_signal(&R.cond);
    pthread_mutex_unlock(&R.lock);
}

void ups_resolve_stop(void)
{
    if (!R.running)
        return;
    pthread_mutex_lock(&R.lock);
    R.stop = true;
    pthread_cond_signal(&R.cond);
    pthread_mutex_unlock(&R.lock);
    pthread_join(R.thread, NULL);
    R.running = false;
    free(R.groups);
    free(R.due);
    R.groups = NULL;
    R.due = NULL;
    R.ngroups = 0;
}
