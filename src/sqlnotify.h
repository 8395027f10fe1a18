/*
 * sqlnotify.h — what the host (host.c) and the Lua binding (core.c) share:
 * the log, the one way into Lua from callbacks, and the loop.
 */
#ifndef SQLNOTIFY_H
#define SQLNOTIFY_H

#include <lua.h>
#include <ev.h>

#define SQLNOTIFY_VERSION "0.1.0"

int luaopen_sqlnotify_core(lua_State *L);

/* Log a line on stderr (log.c): time, level, "sqlnotify: ", message, or one JSON object.
 * Lines above the current level are dropped. */
void sn_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int sn_log_level_get(void);
void sn_log_level_set(int level);
int sn_log_level_parse(const char *name); /* -1 when unknown */
extern const char *const sn_log_level_names[]; /* "error", "warn", "info", "debug", NULL */
/* The format: "text" (the default) or "json" (one object a line); -1 when unknown. */
int sn_log_format_set(const char *name);
int sn_log_json(void);
/* SQLNOTIFY_LOG_LEVEL and SQLNOTIFY_LOG_FORMAT, but those in skip (set by an option). -1 and
 * a message in err on a bad value. sn_log_env_read: whether it was called already. */
#define SN_LOG_ENV_LEVEL 1
#define SN_LOG_ENV_FORMAT 2
int sn_log_env(char *err, size_t errlen, int skip);
int sn_log_env_read(void);
/* A line with fields (key, value of len bytes): in the JSON format, each a member of the
 * object; in text, a "traceback" field follows the message on its lines, others are not shown. */
typedef struct {
    const char *key, *value;
    size_t len;
} sn_log_field;
void sn_log_fields(int level, const char *msg, size_t len, const sn_log_field *fields, int nfields);
/* From Lua: the message at msg_idx and the optional table of fields at fields_idx (checked
 * even when not printed). */
void sn_log_lua(lua_State *L, int level, int msg_idx, int fields_idx, int print);

/* The loop: our own (ev_loop_new), created on first use. */
struct ev_loop *sn_loop(void);
void sn_loop_destroy(void);

/* Call the function under nargs arguments with a traceback handler, on L.
 * Returns the lua_pcall status; on error the message (with traceback) is on top. */
int sn_pcall(lua_State *L, int nargs, int nresults);
/* From a loop callback: call the function under nargs arguments on L (a main thread) and
 * log a failure naming what; the loop goes on. */
void sn_callback(lua_State *L, int nargs, const char *what);

/* Host mode: sqlnotify.run() returns at once (the host runs the loop itself). */
void sn_set_host_mode(int on);
/* Host mode: the host is loading a script (a reload runs inside the loop), so run()
 * returns at once instead of refusing to nest. */
void sn_set_loading(int on);
/* Run the loop until sqlnotify.stop(), SIGINT or SIGTERM. */
void sn_run_loop(void);

/* Reload: begin before running the new script in a new state; commit when it loaded
 * (its notifiers receive from then on; close the old state after); rollback after
 * closing a new state that failed. A new notifier adopts the connection of the old
 * state's notifier with the same URL and position. */
void sn_reload_begin(void);
void sn_reload_commit(void);
void sn_reload_rollback(void);

/* systemd notification (sdnotify.c), when $NOTIFY_SOCKET is set; else each is a no-op.
 * init: read and unset NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID, start the watchdog
 * pings. ready: the script ran and its notifiers started (READY=1 from the loop's first
 * iteration, at once after a reload; STATUS= prefix and sqlnotify._status()). reloading:
 * RELOADING=1. stopping: STOPPING=1, once (why: "SIGTERM"). finish: stop and close. */
void sn_sd_init(struct ev_loop *loop);
void sn_sd_ready(lua_State *L, const char *prefix);
void sn_sd_reloading(void);
void sn_sd_stopping(const char *why);
void sn_sd_finish(void);

/* metrics.c: the HTTP server of --metrics ADDR and sqlnotify.metrics{listen = ADDR}
 * ("host:port", ":port"). listen: 0, or -1 and err (the address cannot be bound). */
int sn_metrics_listen(const char *addr, char *err, size_t errlen);
void sn_metrics_close(void);
/* core.c: fn runs when L's state closes, as the __gc of a
 * userdata kept in the registry under key, made once per key and state. */
void sn_at_close(lua_State *L, const char *key, lua_CFunction fn);
void sn_metrics_open(lua_State *L); /* core.metrics_listen, metrics_serving, metrics_hook, histogram */

#endif
