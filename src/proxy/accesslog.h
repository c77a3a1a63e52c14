/* Access logs: log_format templates written per request, buffered per
 * worker thread when asked (buffer=, flush=), reopened on SIGUSR1. */
#ifndef PORTICO_PROXY_ACCESSLOG_H
#define PORTICO_PROXY_ACCESSLOG_H

#include <stdatomic.h>
#include <stdint.h>

#include "proxy/conf.h"

struct exchange;

struct access_log {
    char *path;
    _Atomic int fd;
    const struct log_format *format;
    struct tmpl *cond;  /* if=: no line when it is empty or "0" */
    size_t buffer_size; /* 0: one write per line */
    uint32_t flush_ms;
    size_t index;     /* slot in each worker's buffers */
    const char *file; /* the access_log line, for errors */
    int line;
};

/* Open every log file of a snapshot; files that an older snapshot already
 * has open are shared. Returns 0 or -1 with a message. */
int accesslog_open_all(struct snapshot *s, const struct snapshot *old, char *err, size_t errlen);
/* Release the snapshot's hold on its log files (they stay open: see accesslog.c). */
void accesslog_close_all(struct snapshot *s, const struct snapshot *newer);
/* Reopen every file in place (SIGUSR1). */
void accesslog_reopen_all(struct snapshot *s);

/* Write the exchange's line to each of its location's logs. */
void accesslog_write(struct exchange *ex);
/* Flush this thread's buffered lines (timer, reload, exit). */
void accesslog_flush_thread(void);
/* Flush and free this thread's buffers (worker exit). */
void accesslog_thread_deinit(void);

#endif
