/*
 * sdnotify.c — systemd's service notification protocol, without libsystemd: READY=1,
 * RELOADING=1, STOPPING=1, STATUS= and WATCHDOG=1, each one datagram to the unix socket
 * named by $NOTIFY_SOCKET (an abstract socket when the name starts with '@'). Only the
 * host (host.c) turns it on; the module loaded by plain lua5.4 sends nothing.
 *
 * Nothing here blocks the loop: the socket is non-blocking and a message systemd cannot
 * take at once is dropped, with one warning.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "dialect.h"
#include "sqlnotify.h"

enum { SD_OFF, SD_STARTING, SD_READY_PENDING, SD_READY };

static struct {
    int fd; /* -1: not under systemd, or its socket is unusable */
    struct sockaddr_un addr;
    socklen_t addrlen;
    char name[sizeof(((struct sockaddr_un *)0)->sun_path) + 1]; /* $NOTIFY_SOCKET, for the log */
    int phase;
    int stopping_sent;
    int send_failed; /* warned once; later failures go to debug */
    struct ev_loop *loop;
    ev_timer first;    /* READY=1 from the loop's first iteration */
    ev_timer watchdog; /* WATCHDOG=1 every WATCHDOG_USEC / 2 */
    char status[240];
} sd = {.fd = -1};

/* One datagram. 0 sent, -1 not (off, or the socket refused it: logged). */
static int sd_send(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sd_send(const char *fmt, ...)
{
    if (sd.fd < 0)
        return -1;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    if ((size_t)n >= sizeof msg) /* a long STATUS: cut, the message stays whole lines */
        n = (int)sizeof msg - 1, msg[n - 1] = '\n';
    ssize_t w;
    do
        w = sendto(sd.fd, msg, (size_t)n, MSG_NOSIGNAL, (struct sockaddr *)&sd.addr, sd.addrlen);
    while (w < 0 && errno == EINTR);
    if (w < 0) {
        sn_log(sd.send_failed ? SN_LOG_DEBUG : SN_LOG_WARN, "systemd: cannot notify %s: %s (%.*s)", sd.name,
               strerror(errno), (int)strcspn(msg, "\n"), msg);
        sd.send_failed = 1;
        return -1;
    }
    sn_log(SN_LOG_DEBUG, "systemd: sent %.*s", (int)strcspn(msg, "\n"), msg);
    return 0;
}

static void on_watchdog(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    sd_send("WATCHDOG=1\n");
}

static void on_first(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    sd.phase = SD_READY;
    sd_send("READY=1\nSTATUS=%s\n", sd.status);
}

/* The watchdog's period from $WATCHDOG_USEC and $WATCHDOG_PID (as sd_watchdog_enabled
 * reads them): 0 when it is not asked for, or asked of another process. */
static double watchdog_period(const char *usec, const char *pid)
{
    if (usec == NULL)
        return 0;
    char *end;
    errno = 0;
    unsigned long long u = strtoull(usec, &end, 10);
    if (errno || end == usec || *end != '\0' || u == 0 || usec[0] == '-') {
        sn_log(SN_LOG_WARN, "systemd: WATCHDOG_USEC=%s is not a number of microseconds: no watchdog pings", usec);
        return 0;
    }
    if (pid != NULL) {
        errno = 0;
        long p = strtol(pid, &end, 10);
        if (errno || end == pid || *end != '\0' || p <= 0) {
            sn_log(SN_LOG_WARN, "systemd: WATCHDOG_PID=%s is not a process id: no watchdog pings", pid);
            return 0;
        }
        if ((pid_t)p != getpid()) {
            sn_log(SN_LOG_DEBUG, "systemd: the watchdog is for process %ld, not this one", p);
            return 0;
        }
    }
    return (double)u / 2e6; /* ping twice per period, as sd_watchdog_enabled(3) advises */
}

void sn_sd_init(struct ev_loop *loop)
{
    const char *env = getenv("NOTIFY_SOCKET");
    const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    char copy_usec[32] = "", copy_pid[32] = "";
    if (usec)
        snprintf(copy_usec, sizeof copy_usec, "%s", usec);
    if (pid)
        snprintf(copy_pid, sizeof copy_pid, "%s", pid);
    int have_usec = usec != NULL, have_pid = pid != NULL;
    int have_env = env != NULL && env[0] != '\0';
    int too_long = have_env && strlen(env) >= sizeof sd.name;
    if (have_env)
        snprintf(sd.name, sizeof sd.name, "%s", env);
    /* As sd_notify(unset_environment=1): the script's child processes are not the service. */
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    if (!have_env)
        return;
    sd.loop = loop;

    size_t len = strlen(sd.name);
    if (too_long || (sd.name[0] != '/' && sd.name[0] != '@') || len < 2) {
        sn_log(SN_LOG_WARN, "systemd: NOTIFY_SOCKET=%s is not a unix socket path (absolute, or @ and an abstract "
                            "name): systemd is not notified", sd.name);
        return;
    }
    memset(&sd.addr, 0, sizeof sd.addr);
    sd.addr.sun_family = AF_UNIX;
    memcpy(sd.addr.sun_path, sd.name, len);
    if (sd.name[0] == '@') {
        sd.addr.sun_path[0] = '\0'; /* abstract: the name's bytes after the NUL, no terminator */
        sd.addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    } else {
        sd.addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    }
    sd.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (sd.fd < 0) {
        sn_log(SN_LOG_WARN, "systemd: cannot create a socket to notify %s: %s", sd.name, strerror(errno));
        return;
    }
    sd.phase = SD_STARTING;
    sn_log(SN_LOG_DEBUG, "systemd: notifying %s", sd.name);

    double period = watchdog_period(have_usec ? copy_usec : NULL, have_pid ? copy_pid : NULL);
    if (period > 0) {
        ev_timer_init(&sd.watchdog, on_watchdog, period, period);
        ev_timer_start(loop, &sd.watchdog);
        ev_unref(loop); /* the watchdog alone does not keep the program running */
        sn_log(SN_LOG_DEBUG, "systemd: watchdog pings every %g s", period);
    }
}

/* The status line: sqlnotify._status() of the state, when there is one. */
static void set_status(lua_State *L, const char *prefix)
{
    const char *what = NULL;
    int top = L ? lua_gettop(L) : 0;
    if (L && lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE) == LUA_TTABLE
        && lua_getfield(L, -1, "sqlnotify") == LUA_TTABLE && lua_getfield(L, -1, "_status") == LUA_TFUNCTION) {
        if (sn_pcall(L, 0, 1) == LUA_OK)
            what = lua_tostring(L, -1);
    }
    snprintf(sd.status, sizeof sd.status, "%s%s", prefix, what ? what : "running");
    /* one line: a newline would start another field */
    for (char *p = sd.status; *p; p++)
        if (*p == '\n')
            *p = ' ';
    if (L)
        lua_settop(L, top);
}

void sn_sd_ready(lua_State *L, const char *prefix)
{
    if (sd.phase == SD_OFF || sd.stopping_sent)
        return;
    set_status(L, prefix ? prefix : "");
    switch (sd.phase) {
    case SD_STARTING: /* the main chunk returned: READY once the loop turns */
        sd.phase = SD_READY_PENDING;
        ev_timer_init(&sd.first, on_first, 0., 0.);
        ev_timer_start(sd.loop, &sd.first);
        break;
    case SD_READY_PENDING: /* a reload before the first iteration: that one says READY */
        break;
    default:
        sd_send("READY=1\nSTATUS=%s\n", sd.status);
    }
}

void sn_sd_reloading(void)
{
    if (sd.phase != SD_READY || sd.stopping_sent)
        return;
    /* MONOTONIC_USEC: what Type=notify-reload (systemd 253) asks of RELOADING=1 */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    sd_send("RELOADING=1\nMONOTONIC_USEC=%" PRIu64 "\nSTATUS=reloading\n",
            (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u);
}

void sn_sd_stopping(const char *why)
{
    if (sd.phase == SD_OFF || sd.stopping_sent)
        return;
    sd.stopping_sent = 1;
    if (ev_is_active(&sd.first) || ev_is_pending(&sd.first)) /* never READY after STOPPING */
        ev_timer_stop(sd.loop, &sd.first);
    sd_send("STOPPING=1\nSTATUS=stopping (%s)\n", why);
}

void sn_sd_finish(void)
{
    if (sd.loop) {
        if (ev_is_active(&sd.watchdog)) {
            ev_ref(sd.loop);
            ev_timer_stop(sd.loop, &sd.watchdog);
        }
        ev_timer_stop(sd.loop, &sd.first);
    }
    if (sd.fd >= 0)
        close(sd.fd);
    sd.fd = -1;
    sd.phase = SD_OFF;
    sd.loop = NULL;
}
