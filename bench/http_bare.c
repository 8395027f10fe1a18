/* bench/http_bare.c — the bare libcurl multi client bench/clients.sh sets against the relay.
 *
 *   http_bare URL pub N SIZE INFLIGHT   N POSTs of SIZE bytes (Content-Type: application/json),
 *                                       INFLIGHT at a time on one multi handle (HTTP/1.1 keep-alive:
 *                                       as many connections); prints "run n= secs= rate= errors="
 *   http_bare URL lat N SIZE            N POSTs one at a time; prints "lat n= p50_us= p99_us="
 * A transfer whose status is not 2xx counts as an error. Not a test: a yardstick. */
#include <curl/curl.h>
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

static size_t sink(char *p, size_t sz, size_t n, void *u)
{
    (void)p, (void)u;
    return sz * n;
}

static char *data;
static long size;
static struct curl_slist *hdrs;

static CURL *easy(const char *url)
{
    CURL *e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, data);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)size);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    return e;
}

static int bad(CURL *e, CURLcode rc)
{
    long st = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &st);
    return rc != CURLE_OK || st < 200 || st > 299;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: http_bare URL pub|lat N SIZE [INFLIGHT]\n");
        return 2;
    }
    const char *url = argv[1];
    int lat = strcmp(argv[2], "lat") == 0;
    long n = atol(argv[3]), inflight = lat ? 1 : atol(argc > 5 ? argv[5] : "64");
    size = atol(argv[4]);
    data = malloc(size + 1);
    memset(data, 'x', size);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    long errors = 0;
    if (lat) {
        CURL *e = easy(url);
        double *lats = malloc(sizeof(double) * n);
        for (long i = 0; i < n; i++) {
            double a = now();
            errors += bad(e, curl_easy_perform(e));
            lats[i] = (now() - a) * 1e6;
        }
        qsort(lats, n, sizeof(double), cmp);
        printf("lat n=%ld p50_us=%.0f p99_us=%.0f errors=%ld\n", n, lats[n / 2], lats[(long)(n * 0.99)], errors);
        curl_easy_cleanup(e);
        return 0;
    }
    CURLM *m = curl_multi_init();
    curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, inflight);
    long started = 0, done = 0;
    double t0 = now();
    for (long i = 0; i < inflight && started < n; i++, started++)
        curl_multi_add_handle(m, easy(url));
    while (done < n) {
        int running = 0, left = 0;
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        while ((msg = curl_multi_info_read(m, &left)) != NULL) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            CURL *e = msg->easy_handle;
            errors += bad(e, msg->data.result);
            done++;
            curl_multi_remove_handle(m, e);
            if (started < n) {
                started++;
                curl_multi_add_handle(m, e); /* again, on the connection it had */
            } else
                curl_easy_cleanup(e);
        }
        if (done < n)
            curl_multi_poll(m, NULL, 0, 1000, NULL);
    }
    double secs = now() - t0;
    printf("run n=%ld secs=%.6f rate=%.0f errors=%ld\n", done, secs, n / secs, errors);
    curl_multi_cleanup(m);
    curl_slist_free_all(hdrs);
    curl_global_cleanup();
    free(data);
    return 0;
}
