/* allow / deny (access.h). */
#include "proxy/access.h"

#include <string.h>

#include "proxy/conf.h"

int access_set_rule(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                    void *conf)
{
    struct loc_conf *lc = conf;
    if (!lc->access_set) { /* this level replaces what it would inherit */
        lc->access_set = true;
        lc->access = NULL;
        lc->naccess = 0;
    }
    struct access_rule r = {.allow = d->name[0] == 'a'};
    if (strncmp(n->args[0], "unix:", 5) == 0)
        return cf_error(cx, n, "\"unix:\" is not supported: Portico listens on TCP only");
    if (net_cidr_parse(n->args[0], &r.net) < 0)
        return cf_error(cx, n, "invalid parameter \"%s\"", n->args[0]);
    struct access_rule *slot =
        arena_push(cx->arena, (void **)&lc->access, &lc->naccess, &lc->cap_access, sizeof(*slot));
    if (!slot)
        return cf_error(cx, n, "out of memory");
    *slot = r;
    return 0;
}

bool access_allowed(const struct access_rule *rules, size_t n, const struct net_addr *addr)
{
    for (size_t i = 0; i < n; i++)
        if (net_cidr_match(&rules[i].net, addr))
            return rules[i].allow;
    return true;
}
