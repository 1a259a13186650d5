/*
 * turn_load.c - closed-loop TURN ChannelData load generator (Linux).
 *
 * Usage: turn_load DURATION_S WARMUP_S WINDOW TIMEOUT_S PAYLOAD PEER_FD FD:CHANNEL [FD:CHANNEL ...]
 *
 * The TURN allocations are made beforehand (by turn_relay.py, which passes
 * the sockets in): each FD is a UDP socket connected to the TURN server whose
 * allocation has CHANNEL bound to the address of PEER_FD, a UDP socket of this
 * process.  A round trip is
 *
 *   client socket --ChannelData--> server --UDP--> peer socket
 *   peer socket   --UDP (echo)---> server --ChannelData--> client socket
 *
 * so every round trip is two packets relayed by the server.  WINDOW round
 * trips are kept outstanding, spread over the clients; each answered or
 * timed-out one is replaced at once (closed loop).  Nothing is re-sent: a
 * round trip unanswered after TIMEOUT_S is counted lost and its slot reused.
 *
 * Payload (PAYLOAD bytes, at least 16): slot u32 | sequence u32 | send time
 * u64 (ns), then zeros.  Round trips begun during WARMUP_S are not measured;
 * those begun in the next DURATION_S are, then the generator waits at most
 * TIMEOUT_S for the ones in flight and prints one line of JSON:
 *
 *   round_trips   measured round trips completed
 *   relayed_pps   2 * round_trips / DURATION_S (packets the server relayed per second)
 *   lost, late, invalid, p50_ms, p99_ms, gen_cpu (CPU time / wall time)
 *
 * Client sends are batched per socket with sendmmsg, the peer's echoes too, and
 * receiving uses recvmmsg, so the generator stays cheaper than the servers.
 *
 * Build: gcc -O2 -Wall -o turn_load turn_load.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CLIENTS 256
#define MAX_WINDOW 65536
#define BATCH 64
#define BUF 2048
#define HIST_US 1000000 /* 1 us buckets up to 1 s */

static uint64_t hist[HIST_US + 1];

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

struct slot {
    uint32_t seq;
    uint64_t sent;
    int busy;
    int measured;
};

static struct slot slots[MAX_WINDOW];
static int client_fd[MAX_CLIENTS];
static uint16_t client_channel[MAX_CLIENTS];
static int nclients, window, payload;
static uint64_t t_measure, t_stop;
static uint64_t round_trips, lost, late, invalid, send_errors;

/* Sends are queued per client and leave in one sendmmsg per batch. */
static unsigned char outbuf[MAX_CLIENTS][BATCH][BUF];
static int queued[MAX_CLIENTS];

static void flush(int c)
{
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    int n = queued[c], done = 0;
    for (int i = 0; i < n; i++) {
        iov[i].iov_base = outbuf[c][i];
        iov[i].iov_len = 4 + payload;
        memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    while (done < n) {
        int sent = sendmmsg(client_fd[c], msgs + done, n - done, 0);
        if (sent <= 0) {
            send_errors += n - done;
            break;
        }
        done += sent;
    }
    queued[c] = 0;
}

static void send_slot(uint32_t index, uint64_t t)
{
    int c = index % nclients;
    if (queued[c] == BATCH)
        flush(c);
    unsigned char *buf = outbuf[c][queued[c]++];
    struct slot *s = &slots[index];
    s->seq++;
    s->sent = t;
    s->busy = 1;
    s->measured = t >= t_measure && t < t_stop;
    buf[0] = client_channel[c] >> 8;
    buf[1] = client_channel[c] & 0xff;
    buf[2] = payload >> 8;
    buf[3] = payload & 0xff;
    memset(buf + 4, 0, payload);
    memcpy(buf + 4, &index, 4);
    memcpy(buf + 8, &s->seq, 4);
    memcpy(buf + 12, &t, 8);
}

static void flush_all(void)
{
    for (int c = 0; c < nclients; c++)
        if (queued[c])
            flush(c);
}

static void finish_slot(uint32_t index, uint64_t t)
{
    struct slot *s = &slots[index];
    if (s->measured) {
        round_trips++;
        uint64_t us = (t - s->sent) / 1000;
        hist[us > HIST_US ? HIST_US : us]++;
    }
    s->busy = 0;
    if (t < t_stop)
        send_slot(index, t);
}

static double percentile(double p)
{
    uint64_t want = (uint64_t)(p * round_trips), seen = 0;
    for (int i = 0; i <= HIST_US; i++) {
        seen += hist[i];
        if (seen > want)
            return i / 1000.0;
    }
    return HIST_US / 1000.0;
}

int main(int argc, char **argv)
{
    if (argc < 8) {
        fprintf(stderr, "usage: turn_load DURATION WARMUP WINDOW TIMEOUT PAYLOAD PEER_FD FD:CHANNEL...\n");
        return 2;
    }
    double duration = atof(argv[1]), warmup = atof(argv[2]), timeout = atof(argv[4]);
    window = atoi(argv[3]);
    payload = atoi(argv[5]);
    int peer = atoi(argv[6]);
    for (int i = 7; i < argc && nclients < MAX_CLIENTS; i++) {
        client_fd[nclients] = atoi(argv[i]);
        char *colon = strchr(argv[i], ':');
        client_channel[nclients] = colon ? (uint16_t)strtol(colon + 1, NULL, 0) : 0x4000;
        nclients++;
    }
    if (window < 1 || window > MAX_WINDOW || payload < 16 || payload > BUF - 8 || duration <= 0) {
        fprintf(stderr, "turn_load: bad arguments\n");
        return 2;
    }
    uint64_t start = now_ns();
    t_measure = start + (uint64_t)(warmup * 1e9);
    t_stop = t_measure + (uint64_t)(duration * 1e9);
    uint64_t t_end = t_stop + (uint64_t)(timeout * 1e9);
    uint64_t timeout_ns = (uint64_t)(timeout * 1e9);
    double cpu0 = 0, cpu1 = 0;
    int cpu_started = 0;

    for (int i = 0; i < window; i++)
        send_slot(i, now_ns());
    flush_all();

    struct pollfd pfd[MAX_CLIENTS + 1];
    pfd[0].fd = peer;
    pfd[0].events = POLLIN;
    for (int c = 0; c < nclients; c++) {
        pfd[c + 1].fd = client_fd[c];
        pfd[c + 1].events = POLLIN;
    }
    struct mmsghdr msgs[BATCH], out[BATCH];
    struct iovec iov[BATCH], oiov[BATCH];
    struct sockaddr_storage from[BATCH];
    static unsigned char bufs[BATCH][BUF];
    uint64_t last_scan = start;

    for (;;) {
        uint64_t t = now_ns();
        if (!cpu_started && t >= t_measure) {
            cpu0 = cpu_seconds();
            cpu_started = 1;
        }
        if (t >= t_end)
            break;
        if (t >= t_stop) {
            int busy = 0;
            for (int i = 0; i < window && !busy; i++)
                busy = slots[i].busy && slots[i].measured;
            if (!busy)
                break;
        }
        if (t - last_scan > 5000000ull) { /* every 5 ms: time out lost round trips */
            last_scan = t;
            for (int i = 0; i < window; i++)
                if (slots[i].busy && t - slots[i].sent > timeout_ns) {
                    if (slots[i].measured)
                        lost++;
                    slots[i].busy = 0;
                    if (t < t_stop)
                        send_slot(i, t);
                }
            flush_all();
        }
        int ready = poll(pfd, nclients + 1, 5);
        if (ready <= 0)
            continue;
        if (pfd[0].revents & POLLIN) { /* the peer: echo everything back to where it came from */
            for (int i = 0; i < BATCH; i++) {
                iov[i].iov_base = bufs[i];
                iov[i].iov_len = BUF;
                memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
                msgs[i].msg_hdr.msg_iov = &iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
                msgs[i].msg_hdr.msg_name = &from[i];
                msgs[i].msg_hdr.msg_namelen = sizeof from[i];
            }
            int n = recvmmsg(peer, msgs, BATCH, MSG_DONTWAIT, NULL);
            for (int i = 0; i < n; i++) {
                oiov[i].iov_base = bufs[i];
                oiov[i].iov_len = msgs[i].msg_len;
                memset(&out[i].msg_hdr, 0, sizeof out[i].msg_hdr);
                out[i].msg_hdr.msg_iov = &oiov[i];
                out[i].msg_hdr.msg_iovlen = 1;
                out[i].msg_hdr.msg_name = &from[i];
                out[i].msg_hdr.msg_namelen = msgs[i].msg_hdr.msg_namelen;
            }
            if (n > 0 && sendmmsg(peer, out, n, 0) < 0)
                send_errors++;
        }
        for (int c = 0; c < nclients; c++) {
            if (!(pfd[c + 1].revents & POLLIN))
                continue;
            for (int i = 0; i < BATCH; i++) {
                iov[i].iov_base = bufs[i];
                iov[i].iov_len = BUF;
                memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
                msgs[i].msg_hdr.msg_iov = &iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            int n = recvmmsg(client_fd[c], msgs, BATCH, MSG_DONTWAIT, NULL);
            uint64_t tr = now_ns();
            for (int i = 0; i < n; i++) {
                unsigned char *b = bufs[i];
                if (msgs[i].msg_len < 4 + 16 || (b[0] & 0xc0) != 0x40) {
                    invalid++;
                    continue;
                }
                uint32_t index, seq;
                memcpy(&index, b + 4, 4);
                memcpy(&seq, b + 8, 4);
                if (index >= (uint32_t)window) {
                    invalid++;
                } else if (!slots[index].busy || slots[index].seq != seq) {
                    late++;
                } else {
                    finish_slot(index, tr);
                }
            }
            if (queued[c])
                flush(c);
        }
    }
    cpu1 = cpu_seconds();
    double measured_wall = (now_ns() - t_measure) / 1e9;
    printf("{\"round_trips\": %llu, \"relayed_pps\": %.1f, \"round_trips_per_s\": %.1f, \"lost\": %llu, "
           "\"late\": %llu, \"invalid\": %llu, \"send_errors\": %llu, \"p50_ms\": %.3f, \"p99_ms\": %.3f, "
           "\"gen_cpu\": %.3f, \"window\": %d, \"clients\": %d, \"payload\": %d}\n",
           (unsigned long long)round_trips, 2.0 * round_trips / duration, round_trips / duration,
           (unsigned long long)lost, (unsigned long long)late, (unsigned long long)invalid,
           (unsigned long long)send_errors, percentile(0.5), percentile(0.99),
           measured_wall > 0 ? (cpu1 - cpu0) / measured_wall : 0.0, window, nclients, payload);
    return 0;
}
