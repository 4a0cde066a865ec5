/*
 * connrate.c: new TCP connections per second, for scripts/bench_unit.py.
 *
 *   connrate server ADDR PORT THREADS
 *       listen on ADDR:PORT; THREADS threads accept and close at once (the
 *       server closes first, so the TIME_WAIT is the server's and the client's
 *       ephemeral ports are free again as soon as the close completes)
 *   connrate client ADDR PORT THREADS SECONDS
 *       THREADS threads, each in a loop until SECONDS have passed: socket,
 *       connect, read until the server's FIN, close. A connection counts when
 *       connect succeeded and the read saw the FIN. Prints one line:
 *       "connections N errors E seconds S"
 *
 * Every connect and read is bounded by the time left (SO_SNDTIMEO/SO_RCVTIMEO),
 * so a lost SYN cannot stretch the run past SECONDS + 1. Built by the bench
 * with gcc -O2 -pthread into .build/.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in target;
static double deadline;
static atomic_ulong done, errors;
static int listen_fd;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void set_timeout(int fd, double s)
{
    if (s < 0.01)
        s = 0.01;
    struct timeval tv = { .tv_sec = (time_t)s, .tv_usec = (suseconds_t)((s - (time_t)s) * 1e6) };
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

static void *client_thread(void *arg)
{
    (void)arg;
    char buf[64];
    for (;;) {
        double left = deadline - now_s();
        if (left <= 0)
            break;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            atomic_fetch_add(&errors, 1);
            continue;
        }
        set_timeout(fd, left + 1.0);
        int ok = connect(fd, (struct sockaddr *)&target, sizeof(target)) == 0;
        if (ok) {
            ssize_t n;
            do
                n = read(fd, buf, sizeof(buf));
            while (n > 0 || (n < 0 && errno == EINTR));
            ok = n == 0;
        }
        close(fd);
        atomic_fetch_add(ok ? &done : &errors, 1);
    }
    return NULL;
}

static void *server_thread(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0)
            close(fd);
        else if (errno != EINTR && errno != ECONNABORTED && errno != EMFILE && errno != ENFILE)
            return NULL;
    }
}

static int usage(void)
{
    fprintf(stderr, "usage: connrate server ADDR PORT THREADS\n"
                    "       connrate client ADDR PORT THREADS SECONDS\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 5)
        return usage();
    int server = strcmp(argv[1], "server") == 0;
    if (!server && (strcmp(argv[1], "client") != 0 || argc < 6))
        return usage();
    int nthreads = atoi(argv[4]);
    if (nthreads < 1 || nthreads > 256)
        return usage();
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &target.sin_addr) != 1)
        return usage();
    pthread_t *th = calloc((size_t)nthreads, sizeof(*th));
    if (!th)
        return 1;

    if (server) {
        int one = 1;
        listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (listen_fd < 0 || setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
            bind(listen_fd, (struct sockaddr *)&target, sizeof(target)) < 0 ||
            listen(listen_fd, 4096) < 0) {
            perror("connrate server");
            return 1;
        }
        printf("listening\n");
        fflush(stdout);
        for (int i = 0; i < nthreads; i++)
            pthread_create(&th[i], NULL, server_thread, NULL);
        for (int i = 0; i < nthreads; i++)
            pthread_join(th[i], NULL);
        perror("connrate server: accept");
        return 1;
    }

    double seconds = atof(argv[5]);
    if (seconds <= 0)
        return usage();
    double start = now_s();
    deadline = start + seconds;
    for (int i = 0; i < nthreads; i++)
        pthread_create(&th[i], NULL, client_thread, NULL);
    for (int i = 0; i < nthreads; i++)
        pthread_join(th[i], NULL);
    printf("connections %lu errors %lu seconds %.3f\n", (unsigned long)atomic_load(&done),
           (unsigned long)atomic_load(&errors), now_s() - start);
    return 0;
}
