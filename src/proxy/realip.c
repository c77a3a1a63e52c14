#include "proxy/realip.h"

#include <arpa/inet.h>
#include <string.h>

#include "config/config.h"
#include "proxy/conf.h"
#include "proxy/exchange.h"
#include "proxy/vars.h"

int realip_set_from(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                    void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    if (!lc->realip_from_set) { /* this level replaces what it would inherit */
        lc->realip_from_set = true;
        lc->realip_from = NULL;
        lc->nrealip_from = 0;
    }
    struct net_cidr c;
    if (strncmp(n->args[0], "unix:", 5) == 0)
        return cf_error(cx, n, "\"unix:\" is not supported: Portico listens on TCP only");
    if (net_cidr_parse(n->args[0], &c) < 0)
        return cf_error(cx, n, "invalid address or network \"%s\"", n->args[0]);
    struct net_cidr *nv = arena_alloc(cx->arena, (lc->nrealip_from + 1) * sizeof(*nv));
    if (!nv)
        return cf_error(cx, n, "out of memory");
    if (lc->nrealip_from)
        memcpy(nv, lc->realip_from, lc->nrealip_from * sizeof(*nv));
    nv[lc->nrealip_from++] = c;
    lc->realip_from = nv;
    return 0;
}

static bool trusted(const struct loc_conf *lc, const struct net_addr *a)
{
    for (size_t i = 0; i < lc->nrealip_from; i++)
        if (net_cidr_match(&lc->realip_from[i], a))
            return true;
    return false;
}

/* "1.2.3.4", "1.2.3.4:80", "::1", "[::1]" or "[::1]:80" (spaces trimmed). */
static bool parse_addr(struct slice t, struct net_addr *out)
{
    while (t.len && (t.p[0] == ' ' || t.p[0] == '\t'))
        t.p++, t.len--;
    while (t.len && (t.p[t.len - 1] == ' ' || t.p[t.len - 1] == '\t'))
        t.len--;
    char buf[64];
    int port = 0;
    if (!t.len || t.len >= sizeof(buf))
        return false;
    if (t.p[0] == '[') {
        const char *e = memchr(t.p, ']', t.len);
        if (!e)
            return false;
        size_t after = t.len - (size_t)(e - t.p) - 1;
        if (after) {
            if (e[1] != ':' || after < 2 || after > 6)
                return false;
            for (size_t i = 2; i <= after; i++) {
                if (e[i] < '0' || e[i] > '9')
                    return false;
                port = port * 10 + (e[i] - '0');
            }
        }
        t = slice_make(t.p + 1, (size_t)(e - t.p) - 1);
    } else {
        const char *c = memchr(t.p, ':', t.len);
        if (c && !memchr(c + 1, ':', t.len - (size_t)(c - t.p) - 1)) { /* v4:port */
            size_t pl = t.len - (size_t)(c - t.p) - 1;
            if (!pl || pl > 5)
                return false;
            for (size_t i = 0; i < pl; i++) {
                if (c[1 + i] < '0' || c[1 + i] > '9')
                    return false;
                port = port * 10 + (c[1 + i] - '0');
            }
            t.len = (size_t)(c - t.p);
        }
    }
    if (port > 65535)
        return false;
    memcpy(buf, t.p, t.len);
    buf[t.len] = '\0';
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, buf, &out->in4.sin_addr) == 1) {
        out->in4.sin_family = AF_INET;
        out->in4.sin_port = htons((uint16_t)port);
        out->len = sizeof(out->in4);
        return true;
    }
    if (inet_pton(AF_INET6, buf, &out->in6.sin6_addr) == 1) {
        out->in6.sin6_family = AF_INET6;
        out->in6.sin6_port = htons((uint16_t)port);
        out->len = sizeof(out->in6);
        return true;
    }
    return false;
}

void realip_apply(struct exchange *ex, const struct loc_conf *lc)
{
    if (ex->realip_orig || !lc || !lc->nrealip_from || !trusted(lc, ex->peer))
        return;
    if (lc->realip_pp) {
        if (ex->pp_src) {
            ex->realip_orig = ex->peer;
            ex->peer = ex->pp_src;
        }
        return;
    }
    struct slice name = lc->realip_header ? slice_cstr(lc->realip_header) : SLICE_LIT("x-real-ip");
    /* X-Forwarded-For: every field, in order, as one list; another field:
     * its first occurrence (as nginx) */
    bool xff = slice_eq_lit_ci(name, "x-forwarded-for");
    struct slice list = SLICE_NULL;
    size_t total = 0, count = 0;
    for (size_t i = 0; i < ex->nreq_fields; i++)
        if (slice_eq_ci(ex->req_fields[i].name, name) && (xff || !count)) {
            if (!count)
                list = ex->req_fields[i].value;
            total += ex->req_fields[i].value.len + 1;
            count++;
        }
    if (!count)
        return;
    if (count > 1) {
        char *b = arena_alloc(&ex->arena, total);
        if (!b)
            return;
        size_t o = 0;
        for (size_t i = 0; i < ex->nreq_fields; i++)
            if (slice_eq_ci(ex->req_fields[i].name, name)) {
                if (o)
                    b[o++] = ',';
                memcpy(b + o, ex->req_fields[i].value.p, ex->req_fields[i].value.len);
                o += ex->req_fields[i].value.len;
            }
        list = slice_make(b, o);
    }
    /* right to left over entries separated by commas and/or spaces (empty
     * ones skipped): the last address, or with real_ip_recursive the first
     * that is not itself trusted */
    struct net_addr found;
    bool have = false;
    size_t end = list.len;
    for (;;) {
        while (end > 0 &&
               (list.p[end - 1] == ',' || list.p[end - 1] == ' ' || list.p[end - 1] == '\t'))
            end--;
        if (end == 0)
            break;
        size_t start = end;
        while (start > 0 && list.p[start - 1] != ',' && list.p[start - 1] != ' ' &&
               list.p[start - 1] != '\t')
            start--;
        struct net_addr a;
        if (!parse_addr(slice_make(list.p + start, end - start), &a))
            break; /* a bad entry: keep what we have (nginx stops there too) */
        found = a;
        have = true;
        if (!lc->realip_recursive || !trusted(lc, &a))
            break;
        end = start;
    }
    if (!have)
        return;
    struct net_addr *na = arena_alloc(&ex->arena, sizeof(*na));
    if (!na)
        return;
    *na = found;
    ex->realip_orig = ex->peer;
    ex->peer = na;
}
