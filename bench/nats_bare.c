/* bench/nats_bare.c — the bare libnats JetStream publisher bench/clients.sh sets against the relay.
 *
 *   nats_bare URL setup STREAM SUBJECT          (re)create STREAM taking SUBJECT.> (file storage)
 *   nats_bare URL pub SUBJECT N SIZE INFLIGHT ID  N async publishes of SIZE bytes, each with a
 *                                               Nats-Msg-Id (ID-1 .. ID-N), at most INFLIGHT
 *                                               unacknowledged (0: the library's default), then
 *                                               js_PublishAsyncComplete; prints
 *                                               "run n= secs= rate= errors="
 *   nats_bare URL lat SUBJECT N SIZE ID         N publishes one at a time (js_Publish: send, wait
 *                                               for the stream's ack); prints "lat n= p50_us= p99_us="
 * Not a test: a yardstick. */
#include <nats/nats.h>
#include <stdatomic.h>
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

static void die(const char *what, natsStatus s)
{
    fprintf(stderr, "nats_bare: %s: %s (%s)\n", what, natsStatus_GetText(s), nats_GetLastError(NULL));
    exit(1);
}

static atomic_long acked, failed;

static void on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js, (void)pa, (void)closure;
    if (pae != NULL)
        atomic_fetch_add(&failed, 1);
    else
        atomic_fetch_add(&acked, 1);
    natsMsg_Destroy(msg);
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: nats_bare URL setup|pub|lat ...\n");
        return 2;
    }
    const char *url = argv[1], *mode = argv[2];
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsStatus s = natsConnection_ConnectTo(&nc, url);
    if (s != NATS_OK)
        die("connect", s);
    jsOptions jo;
    jsOptions_Init(&jo);
    if (strcmp(mode, "pub") == 0) {
        if (argc < 8)
            return 2;
        long inflight = atol(argv[6]);
        if (inflight > 0)
            jo.PublishAsync.MaxPending = inflight;
        jo.PublishAsync.StallWait = 30000;
        jo.PublishAsync.AckHandler = on_ack;
    }
    if ((s = natsConnection_JetStream(&js, nc, &jo)) != NATS_OK)
        die("jetstream", s);

    if (strcmp(mode, "setup") == 0) {
        char subj[256];
        snprintf(subj, sizeof subj, "%s.>", argv[4]);
        const char *subjects[] = { subj };
        jsStreamConfig sc;
        jsStreamConfig_Init(&sc);
        sc.Name = argv[3];
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Storage = js_FileStorage;
        jsErrCode jerr = 0;
        js_DeleteStream(js, argv[3], NULL, &jerr);
        jsStreamInfo *si = NULL;
        if ((s = js_AddStream(&si, js, &sc, NULL, &jerr)) != NATS_OK)
            die("add stream", s);
        jsStreamInfo_Destroy(si);
        printf("stream %s ready\n", argv[3]);
    } else if (strcmp(mode, "pub") == 0 || strcmp(mode, "lat") == 0) {
        int lat = strcmp(mode, "lat") == 0;
        if (argc < (lat ? 7 : 8))
            return 2;
        const char *subject = argv[3], *idp = argv[lat ? 6 : 7];
        long n = atol(argv[4]), size = atol(argv[5]);
        char *data = malloc(size + 1);
        memset(data, 'x', size);
        char id[128];
        double *lats = lat ? malloc(sizeof(double) * n) : NULL;
        double t0 = now();
        for (long i = 1; i <= n; i++) {
            jsPubOptions po;
            jsPubOptions_Init(&po);
            snprintf(id, sizeof id, "%s-%ld", idp, i);
            po.MsgId = id;
            if (lat) {
                jsPubAck *pa = NULL;
                jsErrCode jerr = 0;
                double a = now();
                if ((s = js_Publish(&pa, js, subject, data, (int)size, &po, &jerr)) != NATS_OK)
                    die("publish", s);
                lats[i - 1] = (now() - a) * 1e6;
                jsPubAck_Destroy(pa);
            } else if ((s = js_PublishAsync(js, subject, data, (int)size, &po)) != NATS_OK)
                die("publish async", s);
        }
        if (lat) {
            qsort(lats, n, sizeof(double), cmp);
            printf("lat n=%ld p50_us=%.0f p99_us=%.0f\n", n, lats[n / 2], lats[(long)(n * 0.99)]);
        } else {
            jsPubOptions po;
            jsPubOptions_Init(&po);
            po.MaxWait = 60000;
            if ((s = js_PublishAsyncComplete(js, &po)) != NATS_OK)
                die("publish async complete", s);
            double secs = now() - t0;
            /* the last ack handlers may still be running on cnats' thread */
            while (atomic_load(&acked) + atomic_load(&failed) < n)
                nats_Sleep(1);
            printf("run n=%ld secs=%.6f rate=%.0f errors=%ld\n", atomic_load(&acked), secs, n / secs,
                   atomic_load(&failed));
        }
        free(data);
        free(lats);
    } else {
        fprintf(stderr, "nats_bare: unknown mode %s\n", mode);
        return 2;
    }
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_Close();
    return 0;
}
