/*
 * bench/sse_client.c — many Server-Sent Events clients in one process, for the live
 * example's spec (spec/17-live_spec.lua) and its bench (bench/live.sh).
 *
 *   sse_client PORT CLIENTS EVENTS [options]
 *     --last-id ID   send Last-Event-ID: ID
 *     --dump FILE    write client 0's events to FILE, one "id<TAB>data" line each
 *     --stamp KEY    latency: now minus the number after "KEY": in each event's data,
 *                    taken as microseconds since the epoch; and, from client 0, the
 *                    number after "at": (the host's receive time, in seconds) minus it
 *     --timeout S    give up after S seconds (default 120)
 *
 * Connects CLIENTS times to 127.0.0.1:PORT, GET /events; prints "ready N" once every
 * response's headers arrived, then reads until each client has EVENTS events and closes
 * it. Prints one line per client (event count, "event: reset" count, first and last id,
 * whether the ids' counters were consecutive, a hash of the ids and data in order), then
 * the latency figures if asked (handler_us: commit to the host's handler, client_us:
 * commit to every client), then "done K/N" (K clients got all their events).
 * Exit status 0 when all did.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

typedef struct client {
    int fd;
    int headers_done;
    int done;
    char *buf;
    size_t len, cap;
    char id[128], first[128], last[128];
    char *data;
    int reset_event; /* the event being read is "event: reset" */
    long events, resets;
    long long prev_n;
    int order_ok;
    unsigned long long hash;
} client;

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void die(const char *what)
{
    fprintf(stderr, "sse_client: %s: %s\n", what, strerror(errno));
    exit(2);
}

static unsigned long long fnv(unsigned long long h, const char *s)
{
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return (h ^ '\n') * 1099511628211ULL;
}

typedef struct samples {
    long long *v;
    size_t n, cap;
} samples;

static samples lat, handler_lat;
static const char *stamp_key;
static FILE *dump;

static void add(samples *s, long long v)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        if (!(s->v = realloc(s->v, s->cap * sizeof *s->v)))
            die("realloc");
    }
    s->v[s->n++] = v;
}

/* The text after "key": in a JSON object, or NULL. */
static const char *after_key(const char *data, const char *key)
{
    char pat[160];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(data, pat);
    if (!p)
        return NULL;
    p += strlen(pat);
    return *p == '"' ? p + 1 : p;
}

static void record_latency(const char *data, int index)
{
    const char *p = after_key(data, stamp_key);
    long long t0 = p ? strtoll(p, NULL, 10) : 0;
    if (t0 <= 0)
        return;
    add(&lat, now_us() - t0);
    if (index == 0 && (p = after_key(data, "at")))
        add(&handler_lat, (long long)(strtod(p, NULL) * 1e6) - t0);
}

/* One complete event: count it, check its counter follows the previous one. */
static void dispatch(client *c, int index)
{
    if (c->reset_event) {
        c->resets++;
    } else if (c->data) {
        c->events++;
        const char *dash = strrchr(c->id, '-');
        long long n = dash ? strtoll(dash + 1, NULL, 10) : -1;
        if (c->events == 1)
            snprintf(c->first, sizeof c->first, "%s", c->id);
        else if (n != c->prev_n + 1)
            c->order_ok = 0;
        c->prev_n = n;
        snprintf(c->last, sizeof c->last, "%s", c->id);
        c->hash = fnv(fnv(c->hash, c->id), c->data);
        if (index == 0 && dump)
            fprintf(dump, "%s\t%s\n", c->id, c->data);
        if (stamp_key)
            record_latency(c->data, index);
    }
    free(c->data);
    c->data = NULL;
    c->reset_event = 0;
}

static void line(client *c, char *s, int index)
{
    if (*s == '\0')
        dispatch(c, index);
    else if (strncmp(s, "id: ", 4) == 0)
        snprintf(c->id, sizeof c->id, "%s", s + 4);
    else if (strncmp(s, "data: ", 6) == 0) {
        free(c->data);
        c->data = strdup(s + 6);
    } else if (strcmp(s, "event: reset") == 0)
        c->reset_event = 1;
}

static int cmp(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: sse_client PORT CLIENTS EVENTS [--last-id ID] [--dump FILE] "
                        "[--stamp KEY] [--timeout S]\n");
        return 2;
    }
    int port = atoi(argv[1]), n = atoi(argv[2]);
    long want = atol(argv[3]);
    const char *last_id = NULL;
    double timeout = 120;
    for (int i = 4; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--last-id") == 0)
            last_id = argv[i + 1];
        else if (strcmp(argv[i], "--dump") == 0) {
            if (!(dump = fopen(argv[i + 1], "w")))
                die(argv[i + 1]);
        } else if (strcmp(argv[i], "--stamp") == 0)
            stamp_key = argv[i + 1];
        else if (strcmp(argv[i], "--timeout") == 0)
            timeout = atof(argv[i + 1]);
    }

    client *cs = calloc((size_t)n, sizeof *cs);
    struct pollfd *pfd = calloc((size_t)n, sizeof *pfd);
    int *of = calloc((size_t)n, sizeof *of); /* pfd[j] belongs to client of[j] */
    if (!cs || !pfd || !of)
        die("calloc");
    char request[512];
    snprintf(request, sizeof request, "GET /events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept: text/event-stream\r\n%s%s%s\r\n",
             port, last_id ? "Last-Event-ID: " : "", last_id ? last_id : "", last_id ? "\r\n" : "");
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < n; i++) {
        client *c = &cs[i];
        c->order_ok = 1;
        c->hash = 14695981039346656037ULL;
        if ((c->fd = socket(AF_INET, SOCK_STREAM, 0)) < 0)
            die("socket");
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0)
            die("connect");
        if (write(c->fd, request, strlen(request)) != (ssize_t)strlen(request))
            die("write");
    }

    long long deadline = now_us() + (long long)(timeout * 1e6);
    int ready = 0, finished = 0;
    while (finished < n && now_us() < deadline) {
        int m = 0;
        for (int i = 0; i < n; i++)
            if (!cs[i].done) {
                of[m] = i;
                pfd[m++] = (struct pollfd){.fd = cs[i].fd, .events = POLLIN};
            }
        if (poll(pfd, (nfds_t)m, 100) < 0 && errno != EINTR)
            die("poll");
        for (int j = 0; j < m; j++) {
            if (pfd[j].revents == 0)
                continue;
            int i = of[j];
            client *c = &cs[i];
            if (c->cap - c->len < 65536) {
                c->cap = c->cap ? c->cap * 2 : 131072;
                if (!(c->buf = realloc(c->buf, c->cap)))
                    die("realloc");
            }
            ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len - 1, MSG_DONTWAIT);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0) { /* closed before it got everything */
                c->done = 1;
                finished++;
                continue;
            }
            c->len += (size_t)r;
            c->buf[c->len] = '\0';
            char *p = c->buf;
            if (!c->headers_done) {
                char *end = strstr(p, "\r\n\r\n");
                if (!end)
                    continue;
                if (strncmp(p, "HTTP/1.1 200 ", 13) != 0) {
                    fprintf(stderr, "sse_client: client %d: %.*s\n", i, (int)strcspn(p, "\r"), p);
                    return 2;
                }
                c->headers_done = 1;
                p = end + 4;
                if (++ready == n) {
                    printf("ready %d\n", n);
                    fflush(stdout);
                }
            }
            char *nl;
            while (!c->done && (nl = memchr(p, '\n', (size_t)(c->buf + c->len - p)))) {
                *nl = '\0';
                line(c, p, i);
                p = nl + 1;
                if (c->events >= want) {
                    c->done = 1;
                    finished++;
                }
            }
            c->len -= (size_t)(p - c->buf);
            memmove(c->buf, p, c->len);
        }
    }

    int complete = 0;
    for (int i = 0; i < n; i++) {
        client *c = &cs[i];
        close(c->fd);
        complete += c->events == want;
        printf("client %d events=%ld resets=%ld first=%s last=%s order=%s hash=%016llx\n", i, c->events, c->resets,
               c->first[0] ? c->first : "-", c->last[0] ? c->last : "-", c->order_ok ? "ok" : "bad", c->hash);
        free(c->buf);
        free(c->data);
    }
    samples *all[] = {&handler_lat, &lat};
    const char *names[] = {"handler_us", "client_us"};
    for (int k = 0; k < 2; k++) {
        samples *s = all[k];
        if (s->n == 0)
            continue;
        qsort(s->v, s->n, sizeof *s->v, cmp);
        printf("%s n=%zu p50=%lld p90=%lld p99=%lld max=%lld\n", names[k], s->n, s->v[s->n / 2],
               s->v[s->n * 9 / 10], s->v[s->n * 99 / 100], s->v[s->n - 1]);
        free(s->v);
    }
    printf("done %d/%d\n", complete, n);
    if (dump)
        fclose(dump);
    free(cs);
    free(pfd);
    free(of);
    return complete == n ? 0 : 1;
}
