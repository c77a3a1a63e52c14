#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

enum log_level log_current_level = LOG_NOTICE;

static int log_fd = 2;
static char log_path[4096];
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {
    "emerg", "alert", "crit", "error", "warn", "notice", "info", "debug",
};

int log_level_parse(const char *s)
{
    for (int i = 0; i <= LOG_DEBUG; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    if (strcmp(s, "err") == 0)
        return LOG_ERR;
    return -1;
}

static int open_target(const char *path)
{
    if (strcmp(path, "stderr") == 0)
        return dup(2);
    return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

int log_open(const char *path, enum log_level level)
{
    int fd = open_target(path);
    if (fd < 0)
        return -1;
    pthread_mutex_lock(&log_lock);
    int old = log_fd;
    log_fd = fd;
    snprintf(log_path, sizeof(log_path), "%s", path);
    log_current_level = level;
    pthread_mutex_unlock(&log_lock);
    if (old != 2)
        close(old);
    return 0;
}

int log_reopen(void)
{
    if (log_path[0] == '\0' || strcmp(log_path, "stderr") == 0)
        return 0;
    return log_open(log_path, log_current_level);
}

void log_vwrite(enum log_level lvl, const char *fmt, va_list ap)
{
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    localtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line),
                     "%04d/%02d/%02d %02d:%02d:%02d [%s] %d: ", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, level_names[lvl], (int)getpid());
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    if (m < 0)
        m = 0;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    int saved = errno;
    /* O_APPEND and one write per line: whole lines even across threads */
    pthread_mutex_lock(&log_lock);
    ssize_t w = write(log_fd, line, len);
    pthread_mutex_unlock(&log_lock);
    (void)w;
    errno = saved;
}

void log_write(enum log_level lvl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(lvl, fmt, ap);
    va_end(ap);
}

void log_bug(const char *file, int line, const char *cond)
{
    log_write(LOG_ALERT, "BUG at %s:%d: %s", file, line, cond);
    abort();
}
