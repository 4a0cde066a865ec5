/* stallprobe: the machine's own scheduling stalls, the control for `make soak` (--probe).
 *
 * One SCHED_FIFO thread per CPU, pinned, memory locked, wakes every 1 ms (absolute
 * clock_nanosleep on CLOCK_MONOTONIC) and measures how late it woke. A C program at a
 * realtime priority: what it sees late is the machine (kernel, hypervisor), not Python.
 * Per late wake (> 3 ms) one line "late <cpu> <monotonic ms> <late us> rundelay_us <us>":
 * run_delay (from /proc/self/task/<tid>/schedstat) is the time the thread was runnable but
 * not running; when it is about the whole lateness, the timer fired on time and the CPU
 * was held (a kernel path that does not preempt, or the vCPU taken by the hypervisor
 * with the thread already queued). At the end per CPU: the max and a histogram.
 *
 * usage: stallprobe SECONDS [PRIORITY (default 20)]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_CPUS 64
#define THRESH_US 3000
#define BUCKETS 8               /* < 1, 2, 5, 10, 20, 50, 100 ms, and more */

static int seconds, prio;
static long maxl[MAX_CPUS];
static long hist[MAX_CPUS][BUCKETS];
static const long edges_us[BUCKETS - 1] = {1000, 2000, 5000, 10000, 20000, 50000, 100000};

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static long long run_delay_ns(int fd)
{
    char b[128];
    long long on_cpu = 0, delay = 0;
    int n = pread(fd, b, sizeof b - 1, 0);
    if (n <= 0)
        return 0;
    b[n] = 0;
    sscanf(b, "%lld %lld", &on_cpu, &delay);
    return delay;
}

static void *run(void *arg)
{
    long cpu = (long)arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    struct sched_param sp = {.sched_priority = prio};
    if (pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp))
        fprintf(stderr, "stallprobe: cpu %ld: SCHED_FIFO refused\n", cpu);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%ld/schedstat", (long)syscall(SYS_gettid));
    int fd = open(path, O_RDONLY);
    long long rd0 = run_delay_ns(fd);
    long long next = now_ns(), end = next + seconds * 1000000000LL;
    while (next < end) {
        next += 1000000;
        struct timespec t = {next / 1000000000LL, next % 1000000000LL};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
        long long n = now_ns(), rd = run_delay_ns(fd);
        long late = (n - next) / 1000;
        int b = 0;
        while (b < BUCKETS - 1 && late >= edges_us[b])
            b++;
        hist[cpu][b]++;
        if (late > maxl[cpu])
            maxl[cpu] = late;
        if (late > THRESH_US) {
            printf("late %ld %lld %ld rundelay_us %lld\n", cpu, n / 1000000, late, (rd - rd0) / 1000);
            fflush(stdout);
        }
        rd0 = rd;
        if (n > next + 1000000)
            next = n;           /* no catch-up burst after a stall */
    }
    close(fd);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: stallprobe SECONDS [PRIORITY]\n");
        return 2;
    }
    seconds = atoi(argv[1]);
    prio = argc > 2 ? atoi(argv[2]) : 20;
    mlockall(MCL_CURRENT | MCL_FUTURE);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n > MAX_CPUS)
        n = MAX_CPUS;
    pthread_t th[MAX_CPUS];
    for (long i = 0; i < n; i++)
        pthread_create(&th[i], NULL, run, (void *)i);
    for (long i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    for (long i = 0; i < n; i++) {
        printf("cpu%ld max_us %ld hist(<1,<2,<5,<10,<20,<50,<100,>=100ms)", i, maxl[i]);
        for (int b = 0; b < BUCKETS; b++)
            printf(" %ld", hist[i][b]);
        printf("\n");
    }
    return 0;
}
