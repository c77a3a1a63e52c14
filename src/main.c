/* portico: command line, signals, start, reload and stop of the workers. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/store.h"
#include "config/config.h"
#include "core/log.h"
#include "proxy/accesslog.h"
#include "proxy/conf.h"
#include "proxy/proxy.h"
#include "proxy/worker.h"
#include "upstream/check.h"

#define DEFAULT_CONF "/etc/portico/portico.conf"
#define DEFAULT_PID  "/run/portico.pid"

static void usage(FILE *out)
{
    fprintf(out, "Usage: portico [-c file] [-t | -T] [-s signal] [-v] [-h]\n"
                 "  -c file    configuration file (default " DEFAULT_CONF ")\n"
                 "  -t         check the configuration and exit\n"
                 "  -T         check the configuration, print it and exit\n"
                 "  -s signal  send a signal to the running instance: stop, quit, reload, reopen\n"
                 "  -v         print the version and exit\n"
                 "  --docs     print the directive reference (Markdown) and exit\n");
}

static const char *pid_path(const struct snapshot *s)
{
    return s && s->main.pid_path ? s->main.pid_path : DEFAULT_PID;
}

static int send_signal(const char *conf, const char *name)
{
    int sig;
    if (strcmp(name, "stop") == 0)
        sig = SIGTERM;
    else if (strcmp(name, "quit") == 0)
        sig = SIGQUIT;
    else if (strcmp(name, "reload") == 0)
        sig = SIGHUP;
    else if (strcmp(name, "reopen") == 0)
        sig = SIGUSR1;
    else {
        fprintf(stderr, "portico: invalid option: \"-s %s\"\n", name);
        return 1;
    }
    char err[1024];
    struct snapshot *s = conf_load(conf, NULL, err, sizeof(err));
    const char *path = pid_path(s);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "portico: [error] open() \"%s\" failed (%d: %s)\n", path, errno,
                strerror(errno));
        snapshot_unref(s);
        return 1;
    }
    long pid = 0;
    if (fscanf(f, "%ld", &pid) != 1 || pid <= 0) {
        fprintf(stderr, "portico: [error] invalid PID number in \"%s\"\n", path);
        fclose(f);
        snapshot_unref(s);
        return 1;
    }
    fclose(f);
    snapshot_unref(s);
    if (kill((pid_t)pid, sig) < 0) {
        fprintf(stderr, "portico: [error] kill(%ld, %d) failed (%d: %s)\n", pid, sig, errno,
                strerror(errno));
        return 1;
    }
    return 0;
}

static int worker_count(const struct snapshot *s)
{
    if (s->main.worker_processes > 0)
        return s->main.worker_processes;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* Point the error log at the snapshot's; on failure nothing changes and
 * err says file:line and why (start refuses to run, reload keeps the old
 * configuration). */
static int apply_error_log(const struct snapshot *s, char *err, size_t errlen)
{
    const char *path = s->main.error_log_path ? s->main.error_log_path : "stderr";
    if (log_open(path, (enum log_level)s->main.error_log_level) == 0)
        return 0;
    snprintf(err, errlen, "%s:%d: open() \"%s\" failed (%d: %s)",
             s->main.error_log_file ? s->main.error_log_file : "-", s->main.error_log_line, path,
             errno, strerror(errno));
    return -1;
}

/* `user`: hand the directories Portico writes in to the user, then become
 * it for good (all threads: glibc's setuid applies process-wide). Started
 * without root: ignored with a warning, as nginx. 0 or -1 (logged). */
static int drop_privileges(const struct snapshot *s)
{
    const struct main_conf *m = &s->main;
    if (!m->user)
        return 0;
    if (geteuid() != 0) {
        log_write(LOG_WARN, "the \"user\" directive makes sense only when Portico starts as "
                            "root, ignored");
        return 0;
    }
    for (size_t i = 0; i < s->ndirs; i++)
        if (chown(s->dirs[i], m->uid, m->gid) < 0)
            log_write(LOG_WARN, "chown(\"%s\", %s) failed: %s", s->dirs[i], m->user,
                      strerror(errno));
    /* the log files too, so that a reopen (SIGUSR1) as the user works, and
     * the pid file (which only root may remove from /run at exit) */
    const char *elog = s->main.error_log_path;
    if (elog && strcmp(elog, "stderr") && chown(elog, m->uid, m->gid) < 0)
        log_write(LOG_WARN, "chown(\"%s\", %s) failed: %s", elog, m->user, strerror(errno));
    for (size_t i = 0; i < s->nall_logs; i++)
        if (chown(s->all_logs[i]->path, m->uid, m->gid) < 0)
            log_write(LOG_WARN, "chown(\"%s\", %s) failed: %s", s->all_logs[i]->path, m->user,
                      strerror(errno));
    if (chown(pid_path(s), m->uid, m->gid) < 0)
        log_write(LOG_WARN, "chown(\"%s\", %s) failed: %s", pid_path(s), m->user, strerror(errno));
    if (s->http_lc)
        for (const struct cache_path_decl *d = s->http_lc->cache.paths; d; d = d->next)
            if (chown(d->zc.path, m->uid, m->gid) < 0)
                log_write(LOG_WARN, "chown(\"%s\", %s) failed: %s", d->zc.path, m->user,
                          strerror(errno));
    if (initgroups(m->user, m->gid) < 0 || setgid(m->gid) < 0 || setuid(m->uid) < 0) {
        log_write(LOG_EMERG, "could not become user \"%s\": %s", m->user, strerror(errno));
        return -1;
    }
    if (setuid(0) == 0) {
        log_write(LOG_EMERG, "root privileges could be regained after setuid(%u)", m->uid);
        return -1;
    }
    log_write(LOG_NOTICE, "running as user \"%s\" (uid %u, gid %u)", m->user, m->uid, m->gid);
    return 0;
}

static void write_pid(const struct snapshot *s)
{
    const char *path = pid_path(s);
    FILE *f = fopen(path, "w");
    if (!f) {
        log_write(LOG_WARN, "open() \"%s\" failed (%d: %s)", path, errno, strerror(errno));
        return;
    }
    fprintf(f, "%ld\n", (long)getpid());
    fclose(f);
}

int main(int argc, char **argv)
{
    const char *conf = DEFAULT_CONF;
    bool test = false, dump = false;
    const char *sig = NULL;
    static const struct option longopts[] = {
        {"docs", no_argument, NULL, 'D'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    conf_register_all();
    while ((c = getopt_long(argc, argv, "c:tTs:vh?", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            conf = optarg;
            break;
        case 't':
            test = true;
            break;
        case 'T':
            test = dump = true;
            break;
        case 's':
            sig = optarg;
            break;
        case 'v':
            printf("portico version %s\n", PORTICO_VERSION);
            return 0;
        case 'D':
            conf_docs(stdout);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 1;
    }
    if (sig)
        return send_signal(conf, sig);

    char err[2048];
    struct snapshot *snap = conf_load(conf, NULL, err, sizeof(err));
    if (!snap) {
        fprintf(stderr, "portico: [emerg] %s\n", err);
        if (test)
            fprintf(stderr, "portico: configuration file %s test failed\n", conf);
        return 1;
    }
    if (test) {
        if (dump) {
            struct arena a;
            arena_init(&a, 64 * 1024, 0);
            struct cf_node *root = cf_parse_file(&a, conf, err, sizeof(err));
            if (root) {
                printf("# configuration file %s:\n", conf);
                cf_dump(root, stdout);
            }
            arena_deinit(&a);
        }
        fprintf(stderr, "portico: the configuration file %s syntax is ok\n", conf);
        fprintf(stderr, "portico: configuration file %s test is successful\n", conf);
        snapshot_unref(snap);
        cache_shutdown();
        return 0;
    }
    if (!snap->has_http || snap->nlistens == 0) {
        fprintf(stderr, "portico: [emerg] %s: no \"http\" block with a server to run\n", conf);
        snapshot_unref(snap);
        return 1;
    }

    /* signals are taken by this thread only, with sigwaitinfo */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGQUIT);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (snap->main.worker_rlimit_nofile > 0) {
        struct rlimit rl = {(rlim_t)snap->main.worker_rlimit_nofile,
                            (rlim_t)snap->main.worker_rlimit_nofile};
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            log_write(LOG_WARN, "setrlimit(RLIMIT_NOFILE, %d) failed: %s",
                      snap->main.worker_rlimit_nofile, strerror(errno));
    } else {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
    }

    if (workers_probe_listens(NULL, 0, snap, err, sizeof(err)) < 0) {
        fprintf(stderr, "portico: [emerg] %s\n", err);
        snapshot_unref(snap);
        return 1;
    }
    if (apply_error_log(snap, err, sizeof(err)) < 0) {
        fprintf(stderr, "portico: [emerg] %s\n", err);
        snapshot_unref(snap);
        return 1;
    }
    int nworkers = worker_count(snap);
    struct worker *workers = NULL;
    if (workers_start(&workers, nworkers, snap) < 0) {
        fprintf(stderr, "portico: [emerg] could not start: see the error log\n");
        return 1;
    }
    write_pid(snap);
    if (drop_privileges(snap) < 0) {
        workers_stop(workers, nworkers);
        return 1;
    }
    workers_go();
    if (check_start(snap->groups, snap->ngroups) < 0)
        log_write(LOG_ALERT, "could not start the health checker: %s", strerror(errno));
    if (ups_resolve_start(snap->groups, snap->ngroups) < 0)
        log_write(LOG_ALERT, "could not start the resolver: %s", strerror(errno));
    cache_start_loaders();
    log_write(LOG_NOTICE, "portico %s started: %d worker(s), %zu listener(s)", PORTICO_VERSION,
              nworkers, snap->nlistens);

    int exit_code = 0;
    for (;;) {
        siginfo_t si;
        int s = sigwaitinfo(&set, &si);
        if (s < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (s == SIGHUP) {
            log_write(LOG_NOTICE, "reload: reading %s", conf);
            struct snapshot *cur = atomic_load(&current_snapshot);
            struct snapshot *next = conf_load(conf, cur, err, sizeof(err));
            if (!next) {
                log_write(LOG_ERR, "reload failed, keeping the running configuration: %s", err);
                continue;
            }
            if (workers_probe_listens(workers, nworkers, next, err, sizeof(err)) < 0) {
                log_write(LOG_ERR, "reload failed, keeping the running configuration: %s", err);
                snapshot_unref(next);
                continue;
            }
            if (apply_error_log(next, err, sizeof(err)) < 0) {
                log_write(LOG_ERR, "reload failed, keeping the running configuration: %s", err);
                snapshot_unref(next);
                continue;
            }
            check_reload(next->groups, next->ngroups); /* before traffic: state carried over */
            ups_resolve_reload(next->groups, next->ngroups);
            struct snapshot *old = workers_swap_snapshot(next);
            workers_reload(workers, nworkers);
            cache_start_loaders();
            snapshot_unref(old);
            log_write(LOG_NOTICE, "reload done: configuration generation %llu",
                      (unsigned long long)next->generation);
        } else if (s == SIGUSR1) {
            log_reopen();
            accesslog_reopen_all(atomic_load(&current_snapshot));
            workers_reopen(workers, nworkers);
            log_write(LOG_NOTICE, "reopened log files");
        } else {
            log_write(LOG_NOTICE, "signal %d received, shutting down gracefully", s);
            break;
        }
    }
    struct snapshot *last = atomic_load(&current_snapshot);
    const char *pidf = pid_path(last);
    char pid_copy[4096];
    snprintf(pid_copy, sizeof(pid_copy), "%s", pidf);
    check_stop();
    ups_resolve_stop();
    workers_stop(workers, nworkers);
    unlink(pid_copy);
    log_write(LOG_NOTICE, "exit");
    snapshot_unref(atomic_exchange(&current_snapshot, NULL));
    cache_shutdown();
    return exit_code;
}
