/*
 * udpfill.c: fill a firewall's connection table with real UDP states, fast, for
 * scripts/bench_failover.py.
 *
 *   udpfill ADDR SPORT_BASE DPORT_BASE DPORTS FIRST LAST PPS
 *
 * Flow f (FIRST <= f < LAST) is one UDP packet from source port SPORT_BASE + f / DPORTS
 * to ADDR:(DPORT_BASE + f % DPORTS): every flow is a distinct 5-tuple, so every flow is
 * one state in a stateful NAT on the way. One socket per source port (bound to it), each
 * sends its packets with sendmmsg in batches, paced to at most PPS packets a second (0:
 * no pacing) so that the firewall's queue is not overrun. Flows that already exist only
 * refresh their state, so a second run over the same range tops up what was dropped.
 * Prints one line: "sent N seconds S".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 256

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int usage(void)
{
    fprintf(stderr, "usage: udpfill ADDR SPORT_BASE DPORT_BASE DPORTS FIRST LAST PPS\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc != 8)
        return usage();
    struct in_addr dst;
    if (inet_pton(AF_INET, argv[1], &dst) != 1)
        return usage();
    long sbase = atol(argv[2]), dbase = atol(argv[3]), dports = atol(argv[4]);
    long first = atol(argv[5]), last = atol(argv[6]);
    double pps = atof(argv[7]);
    if (dports < 1 || first < 0 || last < first || sbase < 1 || dbase < 1 ||
        dbase + dports > 65536 || sbase + (last > 0 ? (last - 1) / dports : 0) > 65535)
        return usage();

    static struct sockaddr_in names[BATCH];
    static struct mmsghdr msgs[BATCH];
    static struct iovec iov[BATCH];
    static char payload[8] = "npfill";
    double start = now_s();
    long sent = 0;
    long f = first;
    while (f < last) {
        long sport = sbase + f / dports;
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        int one = 1;
        struct sockaddr_in me = { .sin_family = AF_INET, .sin_port = htons((uint16_t)sport) };
        if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
            bind(fd, (struct sockaddr *)&me, sizeof(me)) < 0) {
            fprintf(stderr, "udpfill: source port %ld: %s\n", sport, strerror(errno));
            return 1;
        }
        /* this socket's flows: f up to the next source port or LAST */
        long end = (f / dports + 1) * dports;
        if (end > last)
            end = last;
        while (f < end) {
            int n = 0;
            for (; n < BATCH && f < end; n++, f++) {
                names[n] = (struct sockaddr_in){ .sin_family = AF_INET, .sin_addr = dst,
                    .sin_port = htons((uint16_t)(dbase + f % dports)) };
                iov[n] = (struct iovec){ .iov_base = payload, .iov_len = sizeof(payload) };
                msgs[n].msg_hdr = (struct msghdr){ .msg_name = &names[n],
                    .msg_namelen = sizeof(names[n]), .msg_iov = &iov[n], .msg_iovlen = 1 };
            }
            int off = 0;
            while (off < n) {
                int r = sendmmsg(fd, msgs + off, (unsigned)(n - off), 0);
                if (r < 0) {
                    if (errno == EINTR || errno == ENOBUFS || errno == EAGAIN ||
                        errno == ECONNREFUSED || errno == EPERM) {
                        /* a full queue or an ICMP error of an earlier packet: skip one */
                        off++;
                        continue;
                    }
                    fprintf(stderr, "udpfill: sendmmsg: %s\n", strerror(errno));
                    return 1;
                }
                off += r;
                sent += r;
            }
            if (pps > 0) {
                double due = start + sent / pps;
                double wait = due - now_s();
                if (wait > 0) {
                    struct timespec ts = { (time_t)wait, (long)((wait - (time_t)wait) * 1e9) };
                    nanosleep(&ts, NULL);
                }
            }
        }
        close(fd);
    }
    printf("sent %ld seconds %.3f\n", sent, now_s() - start);
    return 0;
}
