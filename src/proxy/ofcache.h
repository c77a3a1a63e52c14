/* open_file_cache (nginx's): per worker thread, file descriptors and
 * stat results of files served, by path, so a hot static file costs no
 * path walk; each entry is checked again (stat) after open_file_cache_valid,
 * dropped after `inactive` without use, the least recently used one going
 * when `max` are held. With open_file_cache_errors, failed lookups are
 * remembered too. */
#ifndef PORTICO_PROXY_OFCACHE_H
#define PORTICO_PROXY_OFCACHE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "config/config.h"

struct ofc_conf {
    uint32_t max; /* 0: off */
    uint32_t inactive_ms;
    uint32_t valid_ms;
    uint32_t min_uses;
    int errors;
    bool set;
};

extern const struct cf_module ofcache_cf_module;

void ofc_conf_merge(struct ofc_conf *c, const struct ofc_conf *p);

/* open(path, O_RDONLY) + fstat through the cache: a descriptor the caller
 * owns (a dup of the cached one) and its stat, or -1 with errno. */
int ofc_open(const struct ofc_conf *c, uint64_t now_ms, const char *path, struct stat *st);

/* Close this thread's cached descriptors (a worker ends). */
void ofc_thread_flush(void);

#endif
