/*
 * loadgen: a task storm with a known ground truth, for the proctap benchmark (bench/run.py).
 *
 *   loadgen MODE N [-c CONCURRENCY] [-t TRUTH_FILE] [-w] [-r RATE]
 *   loadgen --child CODE [MARKER...]        (what exec mode runs: exit with CODE)
 *
 * MODE fork:   N times fork(); the child _exit(i % 256) at once.  Up to CONCURRENCY children are alive.
 * MODE exec:   N times fork() + execve(this program, "--child", i % 256, marker); the child exits with that code.
 * MODE thread: N times pthread_create() + join; threads return at once (exit status 0).
 *
 * -w waits for one byte (or EOF) on stdin before starting, so a monitor can subscribe first and the storm's
 * timing excludes the wait.  -r RATE paces the storm: task i starts at START + i / RATE seconds (an absolute
 * CLOCK_MONOTONIC schedule, so a late start is caught up, never drifts); without it tasks start as fast as they can.  The parent checks every wait status it reaps against the expected code.
 *
 * Ground truth (-t): a text file, first line "loadgen MODE N PID WALL_NS BAD_STATUSES", then one line per task:
 * "PID_OR_TID EXPECTED_WAIT_STATUS" in creation order (PIDs are reused when N exceeds pid_max).
 * The same first line is printed on stdout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MARKER "proctap-bench-child"

enum mode { MODE_FORK, MODE_EXEC, MODE_THREAD };

struct task {
    int32_t id;     /* pid (fork/exec) or tid (thread) */
    int32_t status; /* expected wait status: code << 8 */
};

static struct task *tasks;
static char self_path[4096];
static long bad_statuses;
static double rate; /* tasks per second; 0: as fast as possible */
static uint64_t start_ns;

static void die(const char *what) {
    perror(what);
    exit(111);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* With -r: sleep until task i's turn (START + i / RATE). */
static void pace(long i) {
    if (rate <= 0)
        return;
    uint64_t due = start_ns + (uint64_t)((double)i * 1e9 / rate);
    struct timespec ts = {(time_t)(due / 1000000000u), (long)(due % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static pid_t start_child(enum mode mode, long i) {
    int code = (int)(i % 256);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (mode == MODE_FORK)
            _exit(code);
        char codebuf[16];
        snprintf(codebuf, sizeof codebuf, "%d", code);
        char *argv[] = {self_path, "--child", codebuf, MARKER, NULL};
        char *envp[] = {NULL};
        execve(self_path, argv, envp);
        _exit(127);
    }
    return pid;
}

/* Reap one child; check its status against the expected one recorded at creation. */
static long reap_one(long started) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, 0)) < 0) {
        if (errno != EINTR)
            die("waitpid");
    }
    /* Children end in any order: find the newest task with this pid among the live window. */
    for (long j = started - 1; j >= 0; j--) {
        if (tasks[j].id == pid) {
            if (tasks[j].status != status)
                bad_statuses++;
            return j;
        }
    }
    bad_statuses++;
    return -1;
}

static void run_processes(enum mode mode, long n, long concurrency) {
    long alive = 0;
    for (long i = 0; i < n; i++) {
        if (alive >= concurrency) {
            reap_one(i);
            alive--;
        }
        pace(i);
        pid_t pid;
        while ((pid = start_child(mode, i)) < 0) {
            if (errno != EAGAIN || alive == 0)
                die("fork");
            reap_one(i);
            alive--;
        }
        tasks[i].id = pid;
        tasks[i].status = (int32_t)((i % 256) << 8);
        alive++;
    }
    while (alive-- > 0)
        reap_one(n);
}

struct thread_slot {
    pthread_t handle;
    long index;
};

static void *thread_body(void *arg) {
    struct thread_slot *slot = arg;
    tasks[slot->index].id = (int32_t)syscall(SYS_gettid);
    return NULL;
}

static void run_threads(long n, long concurrency) {
    struct thread_slot *slots = calloc((size_t)concurrency, sizeof *slots);
    pthread_attr_t attr;
    if (!slots)
        die("calloc");
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (long i = 0; i < n; i++) {
        struct thread_slot *slot = &slots[i % concurrency];
        if (i >= concurrency)
            pthread_join(slot->handle, NULL);
        slot->index = i;
        tasks[i].status = 0;
        pace(i);
        int err = pthread_create(&slot->handle, &attr, thread_body, slot);
        if (err) {
            errno = err;
            die("pthread_create");
        }
    }
    for (long i = (n > concurrency ? n - concurrency : 0); i < n; i++)
        pthread_join(slots[i % concurrency].handle, NULL);
    free(slots);
}

static void write_truth(const char *path, const char *header, long n) {
    FILE *f = fopen(path, "w");
    if (!f)
        die(path);
    fprintf(f, "%s\n", header);
    for (long i = 0; i < n; i++)
        fprintf(f, "%d %d\n", tasks[i].id, tasks[i].status);
    if (fclose(f) != 0)
        die(path);
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen fork|exec|thread N [-c CONCURRENCY] [-t TRUTH_FILE] [-w] [-r RATE]\n"
                    "       loadgen --child CODE [MARKER...]\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "--child") == 0)
        _exit(atoi(argv[2]));
    if (argc < 3)
        usage();

    enum mode mode;
    if (strcmp(argv[1], "fork") == 0)
        mode = MODE_FORK;
    else if (strcmp(argv[1], "exec") == 0)
        mode = MODE_EXEC;
    else if (strcmp(argv[1], "thread") == 0)
        mode = MODE_THREAD;
    else
        usage();
    long n = atol(argv[2]);
    long concurrency = 1;
    const char *truth_path = NULL;
    int wait_stdin = 0;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
            concurrency = atol(argv[++i]);
        else if (strcmp(argv[i], "-t") == 0 && i + 1 < argc)
            truth_path = argv[++i];
        else if (strcmp(argv[i], "-w") == 0)
            wait_stdin = 1;
        else if (strcmp(argv[i], "-r") == 0 && i + 1 < argc)
            rate = atof(argv[++i]);
        else
            usage();
    }
    if (n <= 0 || concurrency <= 0 || rate < 0)
        usage();

    ssize_t len = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
    if (len < 0)
        die("readlink /proc/self/exe");
    self_path[len] = '\0';
    tasks = calloc((size_t)n, sizeof *tasks);
    if (!tasks)
        die("calloc");

    if (wait_stdin) {
        char byte;
        while (read(0, &byte, 1) < 0 && errno == EINTR)
            ;
    }
    uint64_t start = start_ns = now_ns();
    if (mode == MODE_THREAD)
        run_threads(n, concurrency);
    else
        run_processes(mode, n, concurrency);
    uint64_t wall = now_ns() - start;

    char header[256];
    snprintf(header, sizeof header, "loadgen %s %ld %d %llu %ld", argv[1], n, (int)getpid(),
             (unsigned long long)wall, bad_statuses);
    if (truth_path)
        write_truth(truth_path, header, n);
    printf("%s\n", header);
    return bad_statuses ? 1 : 0;
}
