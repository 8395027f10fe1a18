/*
 * host.c — the `sqlnotify-lua` program: runs a watcher script in a fresh Lua
 * state with the sqlnotify module built in, starts the notifiers the script did
 * not start, and runs the libev loop until SIGINT/SIGTERM or sqlnotify.stop().
 */
#include <dirent.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#ifdef __linux__
#include <sys/inotify.h>
#endif

#include "dialect.h"
#include "clients.h"
#include "sqlnotify.h"

static const char usage_text[] =
    "usage: sqlnotify-lua [options] script.lua [script args...]\n"
    "       sqlnotify-lua --list URL | --drop URL [table] [--yes] | --dead-letters URL [consumer] | --lua-path\n"
    "       sqlnotify-lua --consumers URL | --drop-consumer URL NAME | --uninstall URL [--yes]\n"
    "\n"
    "Run a Lua watcher script that reacts to INSERT, UPDATE and DELETE on database tables.\n"
    "\n"
    "options:\n"
    "  -r, --reload           re-run the script when it (or a Lua file beside it) changes\n"
    "  -l, --log-level LEVEL  error | warn | info | debug   (default info; env SQLNOTIFY_LOG_LEVEL)\n"
    "  --log-format FORMAT    text | json: one JSON object a line (default text; env SQLNOTIFY_LOG_FORMAT)\n"
    "  --metrics ADDR         serve /metrics (Prometheus), /health and /ready on ADDR\n"
    "                         (127.0.0.1:9464, or :9464 for every interface)\n"
    "  -v, --version          print the version and exit\n"
    "  -h, --help             print this help and exit\n"
    "\n"
    "tools:\n"
    "  --list URL             print every sqlnotify trigger in the database\n"
    "  --drop URL [table] [--yes]\n"
    "                         drop the sqlnotify triggers and functions on one table\n"
    "                         (\"schema.table\"), or in the whole database (--yes: even the capture\n"
    "                         of a durable consumer seen in the last minute)\n"
    "  --dead-letters URL [consumer]\n"
    "                         print the events whose handlers failed on every attempt\n"
    "  --consumers URL        print the durable consumers: lag, members, shares, dead letters\n"
    "  --drop-consumer URL NAME\n"
    "                         forget a consumer: release the journal rows only it held, drop its captures\n"
    "  --uninstall URL [--yes]\n"
    "                         print every object of sqlnotify's in the database; --yes drops them all\n"
    "                         (--yes twice: even while a durable consumer was seen in the last minute)\n"
    "  --lua-path             print the LUA_PATH and LUA_CPATH lines with which plain lua5.4\n"
    "                         finds this installation: eval \"$(sqlnotify-lua --lua-path)\"\n"
    "\n"
    "example:\n"
    "  sqlnotify-lua scripts/examples/postgresql.lua\n"
    "\n"
    "exit status: 0 clean stop, 1 the script failed at start-up, 2 usage error\n"
    "             (the tools: 0 done, 1 failed, 2 usage error)\n";

static int usage_error(const char *fmt, const char *what)
{
    if (sn_log_json()) { /* every line of a JSON log parses */
        char msg[512];
        snprintf(msg, sizeof msg, fmt, what);
        sn_log(SN_LOG_ERROR, "%s (try --help)", msg);
        return 2;
    }
    fprintf(stderr, "sqlnotify: ");
    fprintf(stderr, fmt, what);
    fprintf(stderr, " (try --help)\n");
    return 2;
}

/* A start-up failure as one line: from the first "sqlnotify: " on (a position before it
 * and repeated prefixes dropped), up to the first newline (no traceback). */
static void log_failure(const char *msg)
{
    static const char prefix[] = "sqlnotify: ";
    if (msg == NULL)
        msg = "(error object is not a string)";
    const char *p = strstr(msg, prefix);
    if (p)
        msg = p;
    while (strncmp(msg, prefix, sizeof prefix - 1) == 0)
        msg += sizeof prefix - 1;
    sn_log(SN_LOG_ERROR, "%.*s", (int)strcspn(msg, "\n"), msg);
}

/* Lua files installed beside the binary (PREFIX/bin -> PREFIX/share/lua/5.4), or the
 * source tree's lua/ when run from build/: no environment variable needed. */
static void set_paths(lua_State *L)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash == NULL)
        return;
    *slash = '\0';
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L,
                    "%s/../share/lua/5.4/?.lua;%s/../share/lua/5.4/?/init.lua;"
                    "%s/../lua/?.lua;%s/../lua/?/init.lua;%s",
                    exe, exe, exe, exe, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 1);
    lua_getfield(L, -1, "cpath");
    lua_pushfstring(L, "%s/../lib/lua/5.4/?.so;%s", exe, lua_tostring(L, -1));
    lua_setfield(L, -3, "cpath");
    lua_pop(L, 2);
}

/* The core is linked in: require "sqlnotify.core" finds it without a .so. */
static void preload_core(lua_State *L)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_sqlnotify_core);
    lua_setfield(L, -2, "sqlnotify.core");
    lua_pop(L, 1);
}

/* arg as lua.c sets it: arg[0] the script, arg[1..] its arguments, arg[-n] the host's. */
static void set_arg(lua_State *L, char **argv, int argc, int script)
{
    lua_createtable(L, argc - script - 1, script + 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - script);
    }
    lua_setglobal(L, "arg");
}

/* Load and run the script, then start what it created. 0 or 1 (message logged). */
static int run_script(lua_State *L, const char *path, char **argv, int argc, int script)
{
    set_arg(L, argv, argc, script);
    if (luaL_loadfile(L, path) != LUA_OK) {
        sn_log(SN_LOG_ERROR, "%s", lua_tostring(L, -1));
        return 1;
    }
    int nargs = argc - script - 1;
    luaL_checkstack(L, nargs, "too many script arguments");
    for (int i = script + 1; i < argc; i++)
        lua_pushstring(L, argv[i]);
    if (sn_pcall(L, nargs, 0) != LUA_OK) {
        sn_log(SN_LOG_ERROR, "%s", lua_tostring(L, -1));
        return 1;
    }
    /* Start every notifier the script created and did not start. A failure there is the
     * database's (no right to create a trigger, a table gone): one line, no traceback. */
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, "sqlnotify");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "_autostart");
        if (lua_isfunction(L, -1)) {
            if (lua_pcall(L, 0, 2, 0) != LUA_OK) {
                log_failure(lua_tostring(L, -1));
                return 1;
            }
            if (lua_isnil(L, -2) && !lua_isnil(L, -1)) { /* nil, message */
                log_failure(lua_tostring(L, -1));
                return 1;
            }
        }
    }
    lua_settop(L, 0);
    return 0;
}

/* ===== states and reload ===== */

static struct {
    char **argv;
    int argc, script;
    lua_State *L;          /* the state whose handlers run */
    ev_stat *files;        /* --reload: the script and the Lua files beside it */
    int nfiles;
    ev_timer settle;       /* a change starts this; the reload runs when it fires */
    ev_signal hup;
    int infd;              /* inotify on the script's directory, or -1 */
    ev_io inw;
} host = {.infd = -1};

/* A fresh state with the module built in, the script run and its notifiers started.
 * NULL when the script failed (already logged). */
static lua_State *new_state(void)
{
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        sn_log(SN_LOG_ERROR, "cannot create a Lua state: out of memory");
        return NULL;
    }
    luaL_openlibs(L);
    set_paths(L);
    preload_core(L);
    sn_set_loading(1);
    int failed = run_script(L, host.argv[host.script], host.argv, host.argc, host.script);
    sn_set_loading(0);
    if (failed) {
        lua_close(L);
        return NULL;
    }
    return L;
}

/* The state is about to close: let the module print what its rate limits held back. */
static void finish_state(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, -1, "sqlnotify") == LUA_TTABLE && lua_getfield(L, -1, "_finish") == LUA_TFUNCTION) {
        if (sn_pcall(L, 0, 0) != LUA_OK)
            sn_log(SN_LOG_ERROR, "%s", lua_tostring(L, -1));
    }
    lua_settop(L, 0);
}

/* Run the script again in a new state; swap only if it loaded. Events that arrive
 * meanwhile wait in the connections, which the new state adopts, and go to it. */
static void reload(const char *why)
{
    sn_log(SN_LOG_INFO, "reloading %s (%s)", host.argv[host.script], why);
    sn_sd_reloading();
    sn_reload_begin();
    lua_State *L = new_state();
    if (L == NULL) {
        sn_reload_rollback();
        sn_log(SN_LOG_ERROR, "reload failed; the previous handlers keep running");
        sn_sd_ready(host.L, "reload failed, the previous script runs: ");
        return;
    }
    sn_reload_commit();
    finish_state(host.L);
    lua_close(host.L);
    host.L = L;
    sn_log(SN_LOG_INFO, "reloaded %s", host.argv[host.script]);
    sn_sd_ready(host.L, "reloaded: ");
}

static void on_hup(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    reload("SIGHUP");
}

static void on_settled(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    reload("a file changed");
}

/* Editors write in several steps: wait until the files are quiet for a moment. */
static void on_file_change(struct ev_loop *loop, ev_stat *w, int revents)
{
    (void)w;
    (void)revents;
    ev_timer_stop(loop, &host.settle);
    ev_timer_set(&host.settle, 0.1, 0.);
    ev_timer_start(loop, &host.settle);
}

static int is_lua_file(const char *name)
{
    size_t n = strlen(name);
    return n > 4 && strcmp(name + n - 4, ".lua") == 0 && name[0] != '.';
}

#ifdef __linux__
static void on_inotify(struct ev_loop *loop, ev_io *w, int revents)
{
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n;
    int hit = 0;
    while ((n = read(w->fd, buf, sizeof buf)) > 0)
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *e = (const struct inotify_event *)p;
            if (e->len > 0 && is_lua_file(e->name))
                hit = 1;
            p += sizeof *e + e->len;
        }
    if (hit)
        on_file_change(loop, NULL, revents);
}

/* inotify on the directory sees every write to a Lua file in it. ev_stat compares
 * stat() data at one-second resolution and misses a same-size rewrite within a second. */
static int watch_dir_inotify(struct ev_loop *loop, const char *dir)
{
    host.infd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (host.infd < 0)
        return -1;
    if (inotify_add_watch(host.infd, dir, IN_CLOSE_WRITE | IN_MODIFY | IN_MOVED_TO | IN_CREATE | IN_DELETE) < 0) {
        close(host.infd);
        host.infd = -1;
        return -1;
    }
    ev_io_init(&host.inw, on_inotify, host.infd, EV_READ);
    ev_io_start(loop, &host.inw);
    ev_unref(loop); /* watching files alone does not keep the program running */
    sn_log(SN_LOG_INFO, "--reload: watching the Lua files in %s", dir);
    return 0;
}
#endif

/* Watch the script and every Lua file in its directory: inotify on Linux, else ev_stat
 * on each file and on the directory (so files replaced by rename are seen). */
static void watch_files(struct ev_loop *loop)
{
    const char *script = host.argv[host.script];
    char dir[PATH_MAX];
    const char *slash = strrchr(script, '/');
    if (slash)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - script), script);
    else
        snprintf(dir, sizeof dir, ".");
    if (dir[0] == '\0')
        snprintf(dir, sizeof dir, "/");
#ifdef __linux__
    if (watch_dir_inotify(loop, dir) == 0)
        return;
#endif

    int cap = 2;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL)
        cap += is_lua_file(e->d_name);
    if (d)
        rewinddir(d);
    host.files = calloc((size_t)cap, sizeof *host.files);
    char **paths = calloc((size_t)cap, sizeof *paths);
    if (host.files == NULL || paths == NULL) {
        sn_log(SN_LOG_ERROR, "out of memory: --reload is off");
        free(paths);
        if (d)
            closedir(d);
        return;
    }
    int n = 0;
    paths[n++] = strdup(script);
    paths[n++] = strdup(dir);
    while (d && (e = readdir(d)) != NULL && n < cap)
        if (is_lua_file(e->d_name) && asprintf(&paths[n], "%s/%s", dir, e->d_name) >= 0)
            n++;
    if (d)
        closedir(d);
    for (int i = 0; i < n; i++) {
        if (paths[i] == NULL)
            continue;
        ev_stat_init(&host.files[host.nfiles], on_file_change, paths[i], 0.);
        ev_stat_start(loop, &host.files[host.nfiles]);
        ev_unref(loop); /* watching files alone does not keep the program running */
        host.nfiles++;
    }
    free(paths); /* the strings now belong to the watchers */
    sn_log(SN_LOG_INFO, "--reload: watching %d file(s) in %s", host.nfiles - 1, dir);
}

static void unwatch_files(struct ev_loop *loop)
{
#ifdef __linux__
    if (host.infd >= 0) {
        ev_ref(loop);
        ev_io_stop(loop, &host.inw);
        close(host.infd);
        host.infd = -1;
    }
#endif
    for (int i = 0; i < host.nfiles; i++) {
        ev_ref(loop);
        ev_stat_stop(loop, &host.files[i]);
        free((char *)host.files[i].path);
    }
    free(host.files);
    host.files = NULL;
    host.nfiles = 0;
}

/* Stop what the host started, close the state, free the loop. */
static void quit(struct ev_loop *loop)
{
    unwatch_files(loop);
    ev_timer_stop(loop, &host.settle);
    ev_ref(loop);
    ev_signal_stop(loop, &host.hup);
    sn_sd_finish();
    if (host.L) {
        finish_state(host.L);
        lua_close(host.L);
    }
    host.L = NULL;
    sn_clients_shutdown();
    sn_metrics_close();
    sn_loop_destroy();
}

/* ===== tools: --lua-path, --list, --drop ===== */

/* export name='value', quoted for sh. */
static void print_export(const char *name, const char *value)
{
    printf("export %s='", name);
    for (const char *p = value; *p; p++)
        if (*p == '\'')
            fputs("'\\''", stdout);
        else
            putchar(*p);
    printf("'\n");
}

/* Where this binary's Lua files and module are: an install (PREFIX/bin beside
 * PREFIX/share/lua/5.4 and PREFIX/lib/lua/5.4) or the source tree (build/ beside lua/).
 * ";;" keeps Lua's default paths (lua-cjson) after ours. */
static int print_lua_path(void)
{
    char exe[PATH_MAX], root[PATH_MAX], probe[PATH_MAX + 64], path[3 * PATH_MAX], cpath[2 * PATH_MAX];
    if (realpath("/proc/self/exe", exe) == NULL) {
        sn_log(SN_LOG_ERROR, "cannot find where sqlnotify-lua is installed");
        return 1;
    }
    *strrchr(exe, '/') = '\0'; /* PREFIX/bin */
    snprintf(root, sizeof root, "%s", exe);
    *strrchr(root, '/') = '\0'; /* PREFIX, "" for / */
    snprintf(probe, sizeof probe, "%s/share/lua/5.4/sqlnotify/init.lua", root);
    if (access(probe, R_OK) == 0) {
        snprintf(path, sizeof path, "%s/share/lua/5.4/?.lua;%s/share/lua/5.4/?/init.lua;;", root, root);
        snprintf(cpath, sizeof cpath, "%s/lib/lua/5.4/?.so;;", root);
    } else {
        snprintf(probe, sizeof probe, "%s/lua/sqlnotify/init.lua", root);
        if (access(probe, R_OK) != 0) {
            sn_log(SN_LOG_ERROR, "no Lua files beside %s (looked in %s/share/lua/5.4)", exe, root);
            return 1;
        }
        /* run from the source tree's build directory */
        snprintf(path, sizeof path, "%s/lua/?.lua;%s/lua/?/init.lua;;", root, root);
        snprintf(cpath, sizeof cpath, "%s/?.so;;", exe);
    }
    print_export("LUA_PATH", path);
    print_export("LUA_CPATH", cpath);
    return 0;
}

/* --list URL / --drop URL [table] / ...: sqlnotify.cli's function, whose result is the exit
 * status; --uninstall gets how many times --yes was given instead of a second argument, --drop
 * whether it was given. */
static int run_tool(const char *fn, const char *url, const char *table, int yes)
{
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        sn_log(SN_LOG_ERROR, "cannot create a Lua state: out of memory");
        return 1;
    }
    luaL_openlibs(L);
    set_paths(L);
    preload_core(L);
    int status = 1;
    lua_getglobal(L, "require");
    lua_pushstring(L, "sqlnotify.cli");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        log_failure(lua_tostring(L, -1));
    } else {
        lua_getfield(L, -1, fn);
        lua_pushstring(L, url);
        int nargs = 2;
        if (strcmp(fn, "uninstall") == 0) {
            lua_pushinteger(L, yes);
        } else if (strcmp(fn, "drop") == 0) { /* drop(url, table, out, err, yes) */
            lua_pushstring(L, table);
            lua_pushnil(L);
            lua_pushnil(L);
            lua_pushboolean(L, yes > 0);
            nargs = 5;
        } else {
            lua_pushstring(L, table);
        }
        if (lua_pcall(L, nargs, 1, 0) != LUA_OK)
            log_failure(lua_tostring(L, -1));
        else
            status = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : lua_isnil(L, -1) ? 0 : 1;
    }
    fflush(stdout);
    lua_close(L);
    sn_loop_destroy();
    return status;
}

int main(int argc, char **argv)
{
    enum { OPT_LUA_PATH = 256, OPT_LIST, OPT_DROP, OPT_DEAD, OPT_CONSUMERS, OPT_DROP_CONSUMER, OPT_UNINSTALL, OPT_YES, OPT_LOG_FORMAT, OPT_METRICS };
    /* the tools, by option: sqlnotify.cli's function, and how many arguments follow the URL */
    static const struct { int opt; const char *name, *fn; int min, max; } tools[] = {
        {OPT_LIST, "list", "list", 0, 0},
        {OPT_DROP, "drop", "drop", 0, 1},
        {OPT_DEAD, "dead-letters", "dead_letters", 0, 1},
        {OPT_CONSUMERS, "consumers", "consumers", 0, 0},
        {OPT_DROP_CONSUMER, "drop-consumer", "drop_consumer", 1, 1},
        {OPT_UNINSTALL, "uninstall", "uninstall", 0, 0},
    };
    static const struct option longopts[] = {
        {"reload", no_argument, NULL, 'r'},
        {"log-level", required_argument, NULL, 'l'},
        {"log-format", required_argument, NULL, OPT_LOG_FORMAT},
        {"version", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"lua-path", no_argument, NULL, OPT_LUA_PATH},
        {"list", required_argument, NULL, OPT_LIST},
        {"drop", required_argument, NULL, OPT_DROP},
        {"dead-letters", required_argument, NULL, OPT_DEAD},
        {"consumers", required_argument, NULL, OPT_CONSUMERS},
        {"drop-consumer", required_argument, NULL, OPT_DROP_CONSUMER},
        {"uninstall", required_argument, NULL, OPT_UNINSTALL},
        {"yes", no_argument, NULL, OPT_YES},
        {"metrics", required_argument, NULL, OPT_METRICS},
        {NULL, 0, NULL, 0},
    };
    int reload_on_change = 0, lua_path = 0, yes = 0, tool = -1, log_opts = 0;
    const char *tool_url = NULL, *metrics = NULL;
    opterr = 0;
    sn_log_env(NULL, 0, 0); /* its format for the usage errors; checked after the options */
    int c;
    /* '+': options end at the script; what follows belongs to it. */
    while ((c = getopt_long(argc, argv, "+:rl:vh", longopts, NULL)) != -1) {
        switch (c) {
        case 'r': reload_on_change = 1; break;
        case 'l': {
            int level = sn_log_level_parse(optarg);
            if (level < 0)
                return usage_error("unknown log level \"%s\"; use error, warn, info or debug", optarg);
            sn_log_level_set(level);
            log_opts |= SN_LOG_ENV_LEVEL;
            break;
        }
        case OPT_LOG_FORMAT:
            if (sn_log_format_set(optarg) < 0)
                return usage_error("unknown log format \"%s\"; use text or json", optarg);
            log_opts |= SN_LOG_ENV_FORMAT;
            break;
        case 'v': printf("sqlnotify-lua %s (%s)\n", SQLNOTIFY_VERSION, LUA_RELEASE); return 0;
        case 'h': fputs(usage_text, stdout); return 0;
        case OPT_LUA_PATH: lua_path = 1; break;
        case OPT_YES: yes++; break;
        case OPT_METRICS: metrics = optarg; break;
        case OPT_LIST:
        case OPT_DROP:
        case OPT_DEAD:
        case OPT_CONSUMERS:
        case OPT_DROP_CONSUMER:
        case OPT_UNINSTALL:
            if (tool >= 0)
                return usage_error("%s", "give one of --list, --drop, --dead-letters, --consumers, --drop-consumer "
                                         "and --uninstall");
            for (tool = 0; tools[tool].opt != c; tool++)
                ;
            tool_url = optarg;
            break;
        case ':': return usage_error("option %s needs a value", argv[optind - 1]);
        default: return usage_error("unknown option %s", argv[optind - 1]);
        }
    }
    char env_err[160];
    if (sn_log_env(env_err, sizeof env_err, log_opts) < 0)
        return usage_error("%s", env_err);
    if (lua_path) {
        if (tool >= 0 || yes || optind < argc)
            return usage_error("%s", "--lua-path takes nothing else");
        return print_lua_path();
    }
    /* --drop URL table --yes: the table ends the options, so a --yes after it is counted here */
    if (tool >= 0 && tools[tool].opt == OPT_DROP && argc - optind == 2 && strcmp(argv[argc - 1], "--yes") == 0) {
        yes++;
        argc--;
    }
    if (yes && (tool < 0 || (tools[tool].opt != OPT_UNINSTALL && tools[tool].opt != OPT_DROP)))
        return usage_error("%s", "--yes goes with --uninstall and --drop only");
    if (tool >= 0) {
        if (argc - optind > tools[tool].max)
            return usage_error("unexpected argument \"%s\"", argv[optind + tools[tool].max]);
        if (argc - optind < tools[tool].min)
            return usage_error("--%s needs a consumer name after the URL", tools[tool].name);
        if (reload_on_change || metrics)
            return usage_error(reload_on_change ? "--reload does not go with --%s" : "--metrics does not go with --%s",
                               tools[tool].name);
        return run_tool(tools[tool].fn, tool_url, optind < argc ? argv[optind] : NULL, yes);
    }
    if (optind >= argc)
        return usage_error("%s", "no script given");
    /* The script's arguments are its own, as lua's are; one spelled like an option of ours
     * was meant for us more often than not: said, once, and left to the script. */
    for (int i = optind + 1; i < argc; i++) {
        const char *a = argv[i];
        for (size_t k = 0; longopts[k].name != NULL; k++) {
            size_t n = strlen(longopts[k].name);
            if (strncmp(a, "--", 2) == 0 && strncmp(a + 2, longopts[k].name, n) == 0 &&
                (a[2 + n] == '\0' || a[2 + n] == '=')) {
                fprintf(stderr,
                        "sqlnotify: warning: %s after the script's name is the script's argument (arg[%d]); "
                        "sqlnotify-lua's options go before the script\n",
                        a, i - optind);
                i = argc;
                break;
            }
        }
    }

    /* Events printed by a watcher are read by pipes and tails as they happen. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    sn_set_host_mode(1);
    host.argv = argv;
    host.argc = argc;
    host.script = optind;
    struct ev_loop *loop = sn_loop();
    sn_sd_init(loop); /* before the script runs: its child processes do not inherit NOTIFY_SOCKET */
    ev_timer_init(&host.settle, on_settled, 0.1, 0.);
    /* Before the first load: a SIGHUP while it runs must not kill the host (it reloads
     * once the loop runs), and an edit made meanwhile is not missed. */
    ev_signal_init(&host.hup, on_hup, SIGHUP);
    ev_signal_start(loop, &host.hup);
    ev_unref(loop);
    if (reload_on_change)
        watch_files(loop);
    char err[512];
    if (metrics && sn_metrics_listen(metrics, err, sizeof err) != 0) {
        fprintf(stderr, "sqlnotify: --metrics %s: %s\n", metrics, err);
        quit(loop);
        return 2;
    }
    host.L = new_state();
    if (host.L == NULL) {
        quit(loop);
        return 1;
    }
    sn_sd_ready(host.L, NULL); /* READY=1 from the loop's first iteration */

    sn_run_loop();
    sn_sd_stopping("the loop ended");

    fflush(stdout);
    quit(loop);
    return 0;
}
