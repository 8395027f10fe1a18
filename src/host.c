/*
 * host.c — the `sqlnotify-lua` program: runs a watcher script in a fresh Lua
 * state with the sqlnotify module built in, starts the notifiers the script did
 * not start, and runs the libev loop until SIGINT/SIGTERM or sqlnotify.stop().
 */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "dialect.h"
#include "sqlnotify.h"

static const char usage_text[] =
    "usage: sqlnotify-lua [options] script.lua [script args...]\n"
    "\n"
    "Run a Lua watcher script that reacts to INSERT, UPDATE and DELETE on database tables.\n"
    "\n"
    "options:\n"
    "  -r, --reload           re-run the script when it (or a Lua file beside it) changes\n"
    "  -l, --log-level LEVEL  error | warn | info | debug   (default info)\n"
    "  -v, --version          print the version and exit\n"
    "  -h, --help             print this help and exit\n"
    "\n"
    "example:\n"
    "  sqlnotify-lua scripts/examples/postgresql.lua\n"
    "\n"
    "exit status: 0 clean stop, 1 the script failed at start-up, 2 usage error\n";

static int usage_error(const char *fmt, const char *what)
{
    fprintf(stderr, "sqlnotify: ");
    fprintf(stderr, fmt, what);
    fprintf(stderr, " (try --help)\n");
    return 2;
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
    /* Start every notifier the script created and did not start. */
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, "sqlnotify");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "_autostart");
        if (lua_isfunction(L, -1) && sn_pcall(L, 0, 0) != LUA_OK) {
            sn_log(SN_LOG_ERROR, "%s", lua_tostring(L, -1));
            return 1;
        }
    }
    lua_settop(L, 0);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"reload", no_argument, NULL, 'r'},
        {"log-level", required_argument, NULL, 'l'},
        {"version", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int reload = 0;
    opterr = 0;
    int c;
    /* '+': options end at the script; what follows belongs to it. */
    while ((c = getopt_long(argc, argv, "+:rl:vh", longopts, NULL)) != -1) {
        switch (c) {
        case 'r': reload = 1; break;
        case 'l': {
            int level = sn_log_level_parse(optarg);
            if (level < 0)
                return usage_error("unknown log level \"%s\"; use error, warn, info or debug", optarg);
            sn_log_level_set(level);
            break;
        }
        case 'v': printf("sqlnotify-lua %s (%s)\n", SQLNOTIFY_VERSION, LUA_RELEASE); return 0;
        case 'h': fputs(usage_text, stdout); return 0;
        case ':': return usage_error("option %s needs a value", argv[optind - 1]);
        default: return usage_error("unknown option %s", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        return usage_error("%s", "no script given");
    (void)reload;

    lua_State *L = luaL_newstate();
    if (L == NULL) {
        sn_log(SN_LOG_ERROR, "cannot create a Lua state: out of memory");
        return 1;
    }
    /* Events printed by a watcher are read by pipes and tails as they happen. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    luaL_openlibs(L);
    set_paths(L);
    preload_core(L);
    sn_set_host_mode(1);

    int status = run_script(L, argv[optind], argv, argc, optind);
    if (status == 0)
        sn_run_loop();
    fflush(stdout);
    lua_close(L);
    ev_loop_destroy(sn_loop());
    return status;
}
