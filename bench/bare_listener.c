/*
 * bench/bare_listener.c — the floor for `make bench`: a bare libpq listener.
 *
 *   bare_listener CONNINFO CHANNEL...
 *
 * LISTENs on the given channels (the ones sqlnotify's triggers notify), then loops on
 * poll, PQconsumeInput and PQnotifies. For every notification it does the least a
 * listener can do with the bench's payloads: find the "t0" value (microseconds since
 * the epoch, stamped by clock_timestamp() in the row) and take the time of arrival.
 *   t0 > 0   a measured event: latency = now - t0
 *   t0 == 0  end of a run: print "run <channel> n=<count> p50_us= p99_us= rate=" and reset
 *   t0 < 0   quit
 * The same protocol is spoken by bench/pg_watch.lua, so both report on the same events.
 */
#include <libpq-fe.h>

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_LAT 100000 /* latencies kept per run; events past this are only counted */

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double lat[MAX_LAT];
static long count, nlat;
static double first, last;

static void report(const char *channel)
{
    double p50 = 0, p99 = 0, rate = 0;
    if (nlat > 0) {
        qsort(lat, (size_t)nlat, sizeof lat[0], cmp_double);
        p50 = lat[(nlat - 1) * 50 / 100];
        p99 = lat[(nlat - 1) * 99 / 100];
    }
    if (count > 1 && last > first)
        rate = (double)(count - 1) / ((last - first) / 1e6);
    printf("run %s n=%ld p50_us=%.1f p99_us=%.1f rate=%.0f\n", channel, count, p50, p99, rate);
    fflush(stdout);
    count = nlat = 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s CONNINFO CHANNEL...\n", argv[0]);
        return 2;
    }
    PGconn *conn = PQconnectdb(argv[1]);
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "bare_listener: %s", PQerrorMessage(conn));
        return 1;
    }
    for (int i = 2; i < argc; i++) {
        char *id = PQescapeIdentifier(conn, argv[i], strlen(argv[i]));
        char sql[512];
        snprintf(sql, sizeof sql, "LISTEN %s", id);
        PQfreemem(id);
        PGresult *r = PQexec(conn, sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            fprintf(stderr, "bare_listener: %s", PQerrorMessage(conn));
            return 1;
        }
        PQclear(r);
    }
    printf("ready\n");
    fflush(stdout);

    struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};
    for (;;) {
        if (poll(&pfd, 1, -1) < 0)
            continue;
        if (!PQconsumeInput(conn)) {
            fprintf(stderr, "bare_listener: %s", PQerrorMessage(conn));
            return 1;
        }
        PGnotify *nt;
        while ((nt = PQnotifies(conn)) != NULL) {
            double t = now_us();
            const char *p = strstr(nt->extra, "\"t0\":");
            long long t0 = p ? strtoll(p + 5, NULL, 10) : 0;
            if (t0 > 0) {
                if (count == 0)
                    first = t;
                last = t;
                count++;
                if (nlat < MAX_LAT)
                    lat[nlat++] = t - (double)t0;
            } else if (t0 == 0) {
                report(nt->relname);
            } else {
                PQfreemem(nt);
                PQfinish(conn);
                return 0;
            }
            PQfreemem(nt);
        }
    }
}
