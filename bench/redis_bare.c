/* bench/redis_bare.c — the bare hiredis client bench/clients.sh sets against the relay.
 *
 *   redis_bare PORT pub N SIZE INFLIGHT PREFIX   N pipelined "SET PREFIX:i <SIZE bytes>", at most
 *                                               INFLIGHT unanswered (0: all written before any
 *                                               reply is read); prints "run n= secs= rate= errors="
 *   redis_bare PORT lat N SIZE PREFIX            N SETs one at a time; prints "lat n= p50_us= p99_us="
 * Not a test: a yardstick. */
#include <hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static long errors;

static void reply(redisContext *c)
{
    redisReply *r = NULL;
    if (redisGetReply(c, (void **)&r) != REDIS_OK) {
        fprintf(stderr, "redis_bare: %s\n", c->errstr);
        exit(1);
    }
    if (r->type == REDIS_REPLY_ERROR)
        errors++;
    freeReplyObject(r);
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: redis_bare PORT pub|lat N SIZE [INFLIGHT] PREFIX\n");
        return 2;
    }
    redisContext *c = redisConnect("127.0.0.1", atoi(argv[1]));
    if (c == NULL || c->err) {
        fprintf(stderr, "redis_bare: connect: %s\n", c ? c->errstr : "out of memory");
        return 1;
    }
    int lat = strcmp(argv[2], "lat") == 0;
    long n = atol(argv[3]), size = atol(argv[4]);
    long inflight = lat ? 1 : atol(argv[5]);
    const char *prefix = argv[lat ? 5 : 6];
    char *data = malloc(size + 1);
    memset(data, 'x', size);
    char key[128];
    double *lats = lat ? malloc(sizeof(double) * n) : NULL;
    double t0 = now();
    long sent = 0, got = 0;
    for (long i = 1; i <= n; i++) {
        snprintf(key, sizeof key, "%s:%ld", prefix, i);
        double a = now();
        redisAppendCommand(c, "SET %s %b", key, data, (size_t)size);
        sent++;
        if (inflight > 0 && sent - got >= inflight) {
            reply(c);
            got++;
            if (lat)
                lats[i - 1] = (now() - a) * 1e6;
        }
    }
    while (got < sent) {
        reply(c);
        got++;
    }
    double secs = now() - t0;
    if (lat) {
        qsort(lats, n, sizeof(double), cmp);
        printf("lat n=%ld p50_us=%.0f p99_us=%.0f\n", n, lats[n / 2], lats[(long)(n * 0.99)]);
    } else
        printf("run n=%ld secs=%.6f rate=%.0f errors=%ld\n", got, secs, n / secs, errors);
    free(data);
    free(lats);
    redisFree(c);
    return 0;
}
