/*
 * kafka_peer.c — the Kafka side of spec/31-kafka_spec.lua, on librdkafka's own mock cluster
 * (rdkafka_mock.h), so the spec never needs a broker of the machine's.
 *
 *   kafka_peer cluster N [TOPIC:PARTITIONS | APIKEY=ERROR*COUNT ...]
 *       runs a mock cluster of N brokers (with those topics made; the next COUNT requests of
 *       the protocol's APIKEY, 0 for Produce, answered with the error code ERROR) and prints
 *       "bootstrap HOST:PORT,..." once it listens. SIGUSR1 takes every broker down (their
 *       connections dropped, new ones refused), SIGUSR2 brings them up; SIGTERM ends it.
 *   kafka_peer consume BOOTSTRAP TOPIC
 *       prints every message of TOPIC, partition by partition in offset order, one a line:
 *       "PARTITION<TAB>OFFSET<TAB>KEY<TAB>VALUE<TAB>HEADERS", HEADERS as "name=value;..."
 *       in the order sent. A key or value that is absent is \N; a backslash, tab, newline,
 *       ';', '=' or byte outside printable ASCII is written \xNN. Exits 0 at the end of
 *       every partition, 1 after 10 s.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

static void put(FILE *f, const void *p, size_t len)
{
    if (p == NULL) {
        fputs("\\N", f);
        return;
    }
    const unsigned char *s = p;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < 0x20 || s[i] > 0x7e || s[i] == '\\' || s[i] == ';' || s[i] == '=')
            fprintf(f, "\\x%02x", s[i]);
        else
            fputc(s[i], f);
    }
}

static int cluster(int argc, char **argv)
{
    char err[512];
    int brokers = atoi(argv[2]);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* before librdkafka's threads: they inherit it */

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (rk == NULL) {
        fprintf(stderr, "kafka_peer: %s\n", err);
        return 1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers > 0 ? brokers : 1);
    if (mc == NULL) {
        fprintf(stderr, "kafka_peer: no mock cluster\n");
        return 1;
    }
    for (int i = 3; i < argc; i++) {
        int api, code, count;
        if (sscanf(argv[i], "%d=%d*%d", &api, &code, &count) == 3) {
            for (int n = 0; n < count; n++)
                rd_kafka_mock_push_request_errors(mc, (int16_t)api, 1, (rd_kafka_resp_err_t)code);
            continue;
        }
        char *colon = strrchr(argv[i], ':');
        if (colon == NULL)
            continue;
        *colon = '\0';
        rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, argv[i], atoi(colon + 1), 1);
        if (e) {
            fprintf(stderr, "kafka_peer: topic %s: %s\n", argv[i], rd_kafka_err2str(e));
            return 1;
        }
    }
    printf("bootstrap %s\n", rd_kafka_mock_cluster_bootstraps(mc));
    fflush(stdout);
    for (;;) {
        int sig = 0;
        sigwait(&set, &sig);
        if (sig == SIGUSR1 || sig == SIGUSR2) {
            for (int b = 1; b <= brokers; b++) {
                if (sig == SIGUSR1)
                    rd_kafka_mock_broker_set_down(mc, b);
                else
                    rd_kafka_mock_broker_set_up(mc, b);
            }
            printf("%s\n", sig == SIGUSR1 ? "down" : "up");
            fflush(stdout);
        } else {
            break;
        }
    }
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return 0;
}

static int consume(char **argv)
{
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", argv[2], err, sizeof err) ||
        rd_kafka_conf_set(conf, "group.id", "kafka_peer", err, sizeof err) ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err) ||
        rd_kafka_conf_set(conf, "enable.partition.eof", "true", err, sizeof err) ||
        rd_kafka_conf_set(conf, "fetch.wait.max.ms", "10", err, sizeof err) ||
        rd_kafka_conf_set(conf, "fetch.error.backoff.ms", "10", err, sizeof err) ||
        rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err)) {
        fprintf(stderr, "kafka_peer: %s\n", err);
        return 1;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (rk == NULL) {
        fprintf(stderr, "kafka_peer: %s\n", err);
        return 1;
    }
    time_t deadline = time(NULL) + 10;
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, argv[3], NULL);
    int parts = 0;
    while (time(NULL) < deadline) {
        if (rd_kafka_metadata(rk, 0, t, &md, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
            if (md->topic_cnt == 1 && md->topics[0].err == 0 && md->topics[0].partition_cnt > 0)
                parts = md->topics[0].partition_cnt;
            rd_kafka_metadata_destroy(md);
            if (parts > 0)
                break;
        }
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
    }
    rd_kafka_topic_destroy(t);
    if (parts == 0) {
        fprintf(stderr, "kafka_peer: no topic %s\n", argv[3]);
        return 1;
    }
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(parts);
    for (int p = 0; p < parts; p++)
        rd_kafka_topic_partition_list_add(list, argv[3], p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, list);
    rd_kafka_topic_partition_list_destroy(list);

    /* Each partition's messages, held until it reached its end, then printed in one go:
     * the lines come partition by partition. */
    char **text = calloc((size_t)parts, sizeof *text);
    size_t *len = calloc((size_t)parts, sizeof *len);
    int *eof = calloc((size_t)parts, sizeof *eof);
    int ended = 0, rc = 1;
    while (ended < parts && time(NULL) < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (m == NULL)
            continue;
        int p = m->partition;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            if (p >= 0 && p < parts && !eof[p]) {
                eof[p] = 1;
                ended++;
            }
        } else if (m->err) {
            fprintf(stderr, "kafka_peer: %s\n", rd_kafka_message_errstr(m));
        } else if (p >= 0 && p < parts) {
            char *buf = NULL;
            size_t blen = 0;
            FILE *f = open_memstream(&buf, &blen);
            fprintf(f, "%d\t%lld\t", p, (long long)m->offset);
            put(f, m->key, m->key_len);
            fputc('\t', f);
            put(f, m->payload, m->len);
            fputc('\t', f);
            rd_kafka_headers_t *hdrs = NULL;
            if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
                const char *name;
                const void *val;
                size_t vlen;
                for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &val, &vlen) == 0; i++) {
                    if (i > 0)
                        fputc(';', f);
                    put(f, name, strlen(name));
                    fputc('=', f);
                    put(f, val, vlen);
                }
            }
            fputc('\n', f);
            fclose(f);
            text[p] = realloc(text[p], len[p] + blen + 1);
            memcpy(text[p] + len[p], buf, blen + 1);
            len[p] += blen;
            free(buf);
        }
        rd_kafka_message_destroy(m);
    }
    if (ended == parts) {
        for (int p = 0; p < parts; p++)
            if (text[p] != NULL)
                fputs(text[p], stdout);
        rc = 0;
    } else {
        fprintf(stderr, "kafka_peer: %d of %d partitions read to their end within 10 s\n", ended, parts);
    }
    for (int p = 0; p < parts; p++)
        free(text[p]);
    free(text);
    free(len);
    free(eof);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "cluster") == 0)
        return cluster(argc, argv);
    if (argc == 4 && strcmp(argv[1], "consume") == 0)
        return consume(argv);
    fprintf(stderr, "usage: kafka_peer cluster N [TOPIC:PARTITIONS ...] | consume BOOTSTRAP TOPIC\n");
    return 2;
}
