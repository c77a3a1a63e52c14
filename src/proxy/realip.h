/* The real client address behind trusted proxies (nginx's realip module):
 * set_real_ip_from, real_ip_header, real_ip_recursive. When the connection
 * comes from a trusted address, $remote_addr (and everything that uses the
 * client address: logs, ip_hash, X-Forwarded-For, purge ACLs) becomes the
 * address the header names; $realip_remote_addr keeps the connection's. */
#ifndef PORTICO_PROXY_REALIP_H
#define PORTICO_PROXY_REALIP_H

struct cf_ctx;
struct cf_node;
struct cf_directive;
struct exchange;
struct loc_conf;

int realip_set_from(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                    void *conf);

/* Apply lc's rules once per request (later calls do nothing once the
 * address was replaced). */
void realip_apply(struct exchange *ex, const struct loc_conf *lc);

#endif
