/* bench/http_sink.c — the HTTP server of bench/clients.sh: HTTP/1.1 keep-alive on 127.0.0.1:PORT,
 * one thread on epoll, answering every request (any method; a body by Content-Length) with
 * "200 OK" and an empty body. Prints "ready" once listening; at SIGTERM/SIGINT, "served n=".
 *
 *   http_sink PORT
 * Not a general server: no chunked bodies, no request over 64 kB. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 65536

typedef struct conn {
    int fd;
    size_t len;
    char buf[BUF];
} conn;

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

static const char OK[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

/* the whole request's length at the start of c->buf, 0 while incomplete, -1 when it is bad */
static long request_len(conn *c)
{
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (end == NULL)
        return c->len >= BUF ? -1 : 0;
    long head = end - c->buf + 4, body = 0;
    for (char *p = c->buf; p < end; p++) {
        if (*p == '\n' && strncasecmp(p + 1, "content-length:", 15) == 0) {
            body = strtol(p + 16, NULL, 10);
            break;
        }
    }
    if (head + body > BUF)
        return -1;
    return (long)c->len >= head + body ? head + body : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: http_sink PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 1024) != 0) {
        perror("http_sink: bind/listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event e = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &e);
    printf("ready\n");
    fflush(stdout);
    long served = 0;
    struct epoll_event evs[256];
    while (!stop) {
        int k = epoll_wait(ep, evs, 256, 500);
        for (int i = 0; i < k; i++) {
            conn *c = evs[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn *nc = malloc(sizeof *nc);
                    nc->fd = fd;
                    nc->len = 0;
                    struct epoll_event ce = { .events = EPOLLIN, .data.ptr = nc };
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ce);
                }
                continue;
            }
            int closed = 0;
            for (;;) {
                ssize_t r = read(c->fd, c->buf + c->len, BUF - c->len);
                if (r > 0) {
                    c->len += r;
                    if (c->len < BUF)
                        continue;
                } else if (r == 0 || errno != EAGAIN) {
                    closed = r == 0 || errno != EINTR;
                    if (!closed)
                        continue;
                }
                break;
            }
            /* answer every whole request in the buffer at once (pipelined ones too) */
            long rl, answers = 0;
            while (!closed && (rl = request_len(c)) > 0) {
                memmove(c->buf, c->buf + rl, c->len - rl);
                c->len -= rl;
                answers++;
            }
            if (!closed && request_len(c) < 0)
                closed = 1;
            if (answers > 0) {
                served += answers;
                char out[sizeof OK * 64];
                while (answers > 0 && !closed) {
                    long m = answers > 64 ? 64 : answers;
                    size_t len = 0;
                    for (long j = 0; j < m; j++, len += sizeof OK - 1)
                        memcpy(out + len, OK, sizeof OK - 1);
                    /* a short answer on loopback: written whole, or the peer is gone */
                    if (write(c->fd, out, len) != (ssize_t)len)
                        closed = 1;
                    answers -= m;
                }
            }
            if (closed) {
                close(c->fd);
                free(c);
            }
        }
    }
    printf("served n=%ld\n", served);
    return 0;
}
