/* nginx's auth_basic module: HTTP Basic authentication against an htpasswd
 * file, read on each request as nginx does (a changed file applies without
 * a reload). Password forms: crypt(3) ($1$, $5$, $6$, $2y$/$2b$ bcrypt,
 * $y$ yescrypt, DES), Apache's $apr1$, {SHA}, {SSHA} and {PLAIN}. */
#ifndef PORTICO_PROXY_AUTH_H
#define PORTICO_PROXY_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"
#include "core/str.h"

struct exchange;
struct tmpl;

struct auth_conf {
    struct tmpl *realm; /* NULL: off (or unset: see `set`) */
    bool set;
    const char *user_file;
};

cf_set_fn auth_set_basic;
cf_set_fn auth_set_user_file;

/* AUTH_FORBIDDEN: the user file does not exist (403, as nginx); AUTH_ERROR:
 * it cannot be read (500). */
enum auth_result { AUTH_OK, AUTH_NONE, AUTH_FAILED, AUTH_FORBIDDEN, AUTH_ERROR };

/* Check the request's Authorization against the location's file. */
enum auth_result auth_check(struct exchange *ex);

/* Does `password` match the htpasswd `hash` (any supported form)? */
bool auth_password_ok(struct slice password, const char *hash);

#endif
