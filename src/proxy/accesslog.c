#include "proxy/accesslog.h"
#include "proxy/stats.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "proxy/exchange.h"
#include "proxy/vars.h"

/* Open log files, shared by path between snapshots: a reload that keeps a
 * log keeps its file descriptor; reopen swaps the file behind the same
 * descriptor number with dup2, so writers never see a closed fd. */
struct log_file {
    char *path;
    int fd;
    int refs;
    struct log_file *next;
};

static pthread_mutex_t files_lock = PTHREAD_MUTEX_INITIALIZER;
static struct log_file *files;

static int open_log(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

static int file_acquire(const char *path)
{
    pthread_mutex_lock(&files_lock);
    for (struct log_file *f = files; f; f = f->next)
        if (strcmp(f->path, path) == 0) {
            f->refs++;
            pthread_mutex_unlock(&files_lock);
            return f->fd;
        }
    int fd = open_log(path);
    if (fd >= 0) {
        struct log_file *f = calloc(1, sizeof(*f));
        char *p = strdup(path);
        if (!f || !p) {
            free(f);
            free(p);
            close(fd);
            fd = -1;
            errno = ENOMEM;
        } else {
            f->path = p;
            f->fd = fd;
            f->refs = 1;
            f->next = files;
            files = f;
        }
    }
    pthread_mutex_unlock(&files_lock);
    return fd;
}

static void file_release(const char *path)
{
    pthread_mutex_lock(&files_lock);
    for (struct log_file *f = files; f; f = f->next) {
        if (strcmp(f->path, path) != 0)
            continue;
        /* A file no snapshot uses stays open: a worker may still hold
         * buffered lines for it, and a closed descriptor number could be
         * reused by a socket. Reopen (SIGUSR1) still rotates it. */
        if (f->refs > 0)
            f->refs--;
        break;
    }
    pthread_mutex_unlock(&files_lock);
}

int accesslog_open_all(struct snapshot *s, const struct snapshot *old, char *err, size_t errlen)
{
    (void)old;
    for (size_t i = 0; i < s->nall_logs; i++) {
        struct access_log *al = s->all_logs[i];
        int fd = file_acquire(al->path);
        if (fd < 0) {
            snprintf(err, errlen, "%s:%d: open() \"%s\" failed (%d: %s)", al->file, al->line,
                     al->path, errno, strerror(errno));
            for (size_t k = 0; k < i; k++)
                file_release(s->all_logs[k]->path);
            s->nall_logs = 0;
            return -1;
        }
        atomic_store(&al->fd, fd);
    }
    return 0;
}

void accesslog_close_all(struct snapshot *s, const struct snapshot *newer)
{
    (void)newer;
    accesslog_flush_thread();
    for (size_t i = 0; i < s->nall_logs; i++)
        file_release(s->all_logs[i]->path);
    s->nall_logs = 0;
}

void accesslog_reopen_all(struct snapshot *s)
{
    (void)s;
    pthread_mutex_lock(&files_lock);
    for (struct log_file *f = files; f; f = f->next) {
        int fd = open_log(f->path);
        if (fd < 0) {
            log_write(LOG_ALERT, "reopen of \"%s\" failed: %s", f->path, strerror(errno));
            continue;
        }
        dup2(fd, f->fd);
        close(fd);
    }
    pthread_mutex_unlock(&files_lock);
}

/* Per-thread buffers for logs with buffer=: keyed by the log object. */
struct log_buf {
    const struct access_log *log;
    int fd;
    char *data;
    size_t len, cap;
    struct log_buf *next;
};

static __thread struct log_buf *bufs;

static void buf_flush(struct log_buf *b)
{
    if (b->len == 0)
        return;
    ssize_t w = write(b->fd, b->data, b->len);
    (void)w;
    b->len = 0;
}

void accesslog_flush_thread(void)
{
    for (struct log_buf *b = bufs; b; b = b->next)
        buf_flush(b);
}

void accesslog_thread_deinit(void)
{
    while (bufs) {
        struct log_buf *b = bufs;
        buf_flush(b);
        bufs = b->next;
        free(b->data);
        free(b);
    }
}

static void write_buffered(const struct access_log *al, int fd, struct slice line)
{
    struct log_buf *b;
    for (b = bufs; b; b = b->next)
        if (b->log == al)
            break;
    if (!b) {
        b = calloc(1, sizeof(*b));
        if (!b || !(b->data = malloc(al->buffer_size))) {
            free(b);
            ssize_t w = write(fd, line.p, line.len);
            (void)w;
            return;
        }
        b->log = al;
        b->cap = al->buffer_size;
        b->next = bufs;
        bufs = b;
    }
    b->fd = fd;
    if (b->len + line.len > b->cap)
        buf_flush(b);
    if (line.len > b->cap) {
        ssize_t w = write(fd, line.p, line.len);
        (void)w;
        return;
    }
    memcpy(b->data + b->len, line.p, line.len);
    b->len += line.len;
}

void accesslog_write(struct exchange *ex)
{
    stats_exchange_end(ex); /* the log phase counts every answer, logged or not */
    const struct loc_conf *lc = ex->lc;
    if (!lc)
        lc = ex->srv ? ex->srv->lc : ex->snap->http_lc;
    if (!lc || lc->log_off || !lc->logs_set || lc->nlogs == 0)
        return;
    for (size_t i = 0; i < lc->nlogs; i++) {
        const struct access_log *al = lc->logs[i];
        const struct log_format *f = al->format;
        if (al->cond) {
            struct slice c = tmpl_eval(ex, al->cond, ESC_NONE);
            if (!c.len || (c.len == 1 && c.p[0] == '0'))
                continue;
        }
        enum tmpl_escape esc = f->escape_json ? ESC_JSON : f->escape_none ? ESC_NONE : ESC_DEFAULT;
        struct slice v = tmpl_eval(ex, f->t, esc);
        char *line = arena_alloc(&ex->arena, v.len + 1);
        if (!line)
            continue;
        memcpy(line, v.p, v.len);
        line[v.len] = '\n';
        int fd = atomic_load_explicit(&((struct access_log *)al)->fd, memory_order_relaxed);
        if (al->buffer_size)
            write_buffered(al, fd, slice_make(line, v.len + 1));
        else {
            ssize_t w = write(fd, line, v.len + 1);
            (void)w;
        }
    }
}
