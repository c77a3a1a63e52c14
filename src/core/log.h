/* The error log: leveled, thread-safe, one write(2) per line so lines from
 * several workers never interleave. Messages are short; the data path logs
 * client mistakes at debug level only. */
#ifndef PORTICO_CORE_LOG_H
#define PORTICO_CORE_LOG_H

#include <stdarg.h>
#include <stdbool.h>

enum log_level {
    LOG_EMERG = 0,
    LOG_ALERT,
    LOG_CRIT,
    LOG_ERR,
    LOG_WARN,
    LOG_NOTICE,
    LOG_INFO,
    LOG_DEBUG,
};

/* Parse "debug" .. "emerg" (nginx names). Returns -1 if unknown. */
int log_level_parse(const char *s);

/* Point the error log at `path` ("stderr" for standard error) from now on.
 * Returns 0, or -1 with errno set (the previous target stays). */
int log_open(const char *path, enum log_level level);

/* Reopen the current file (after logrotate moved it). */
int log_reopen(void);

extern enum log_level log_current_level;

void log_write(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vwrite(enum log_level lvl, const char *fmt, va_list ap);

#define log_enabled(lvl) ((lvl) <= log_current_level)
#define LOG(lvl, ...)                                                                              \
    do {                                                                                           \
        if (log_enabled(lvl))                                                                      \
            log_write(lvl, __VA_ARGS__);                                                           \
    } while (0)

/* Invariant guard: a violated one is a bug in Portico, never bad input. */
#define BUG_ON(cond)                                                                               \
    do {                                                                                           \
        if (__builtin_expect(!!(cond), 0))                                                         \
            log_bug(__FILE__, __LINE__, #cond);                                                    \
    } while (0)
void log_bug(const char *file, int line, const char *cond) __attribute__((noreturn));

#endif
