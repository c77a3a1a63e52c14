/* JSON Web Token authentication (RFC 7519, signed JWS compact form), with
 * the NGINX Plus directive names: auth_jwt, auth_jwt_key_file (a JWK set:
 * "oct" for HS256/384/512, "RSA" for RS* and PS*, "EC" P-256/384/521 for
 * ES*, "OKP" Ed25519 for EdDSA), auth_jwt_leeway, auth_jwt_require, and the
 * $jwt_header_NAME / $jwt_claim_NAME variables. exp and nbf are checked;
 * "none" is never accepted. */
#ifndef PORTICO_PROXY_JWT_H
#define PORTICO_PROXY_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "core/arena.h"
#include "core/str.h"

struct exchange;
struct snapshot;
struct tmpl;
struct jwt_keyset;

struct jwt_conf {
    struct tmpl *realm; /* NULL: off */
    bool set;
    struct tmpl *token; /* token=$var; NULL: Authorization: Bearer */
    const struct jwt_keyset *keys;
    uint32_t leeway_s; /* CF_UNSET_MSEC when unset */
    struct tmpl **require;
    size_t nrequire;
    bool require_set;
    int require_error; /* 401 or 403 */
};

cf_set_fn jwt_set_auth;
cf_set_fn jwt_set_key_file;
cf_set_fn jwt_set_leeway;
cf_set_fn jwt_set_require;
cf_set_fn jwt_set_type;

/* The key sets of a snapshot (EVP_PKEYs) are freed with it. */
void jwt_free(struct snapshot *s);

enum jwt_result { JWT_OK, JWT_NONE, JWT_INVALID, JWT_REQUIRE_FAILED };

/* Check the request's token; on success ex->jwt_header/jwt_payload hold the
 * decoded JSON for the $jwt_* variables. */
enum jwt_result jwt_check(struct exchange *ex);

/* $jwt_claim_* / $jwt_header_* read before the access phase (a limit_req
 * key, as NGINX Plus allows): check the token now, once. */
void jwt_lazy(struct exchange *ex);

/* A top-level member of a JSON object as text: strings unescaped, numbers,
 * true/false/null as written, objects and arrays as their JSON. Empty when
 * absent (used by $jwt_claim_ and $jwt_header_). */
struct slice jwt_json_member(struct arena *a, struct slice object, struct slice name);

/* For tests: verify a compact token against a JWK set text (now in seconds).
 * 0 valid, -1 not. */
int jwt_verify_text(const char *jwks, size_t jwks_len, struct slice token, int64_t now,
                    uint32_t leeway);

#endif
