/*
 * stun_load.c - closed-loop STUN Binding load generator (Linux).
 *
 * Usage: stun_load HOST PORT WINDOW DURATION_S WARMUP_S [TIMEOUT_S [MAX_REQUESTS]]
 *
 * Keeps WINDOW Binding requests (RFC 8489, 20-byte header, no attributes)
 * outstanding on one connected UDP socket.  Every answered or timed-out
 * request is immediately replaced by a fresh one, so the offered load adapts
 * to the server (closed loop).  Nothing is ever re-sent: a request that is
 * unanswered after TIMEOUT_S (default 1 s) is counted lost and its slot reused.
 *
 * Transaction id (96 bits) = slot index (32) | sequence number (32) | random (32).
 * The slot index finds the send timestamp; the whole id is compared with the
 * one stored in the slot, so late answers to an already-replaced request are
 * counted as "late" and never as a latency sample.
 *
 * Requests sent during the first WARMUP_S seconds are not measured.  Requests
 * sent during the following DURATION_S seconds are measured; after that no new
 * request is sent and the generator waits (at most TIMEOUT_S) for the measured
 * requests still in flight, then prints one line of JSON and exits.
 * It also stops sending once MAX_REQUESTS (default 50,000,000) requests have
 * been sent in total, whatever the time.
 *
 *   sent      measured requests sent
 *   received  measured requests answered by a valid Binding success response
 *   lost      measured requests that timed out
 *   rps       received / DURATION_S
 *   p*_ms     latency percentiles of the received ones (log-linear histogram,
 *             < 0.8 % relative bucket error)
 *
 * Extra keys: errors (error responses), invalid (undecodable / foreign
 * datagrams), late, mean_ms, max_ms, gen_cpu (CPU time of this process divided
 * by wall time during the measured phase: near 1.0 means the generator was
 * busy all the time), capped (hit MAX_REQUESTS).
 *
 * Build: gcc -O2 -Wall -o stun_load stun_load.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define STUN_HDR 20
#define MAGIC_COOKIE 0x2112A442u
#define BATCH 64
#define RXBUF 1500
#define MAX_WINDOW 65536
#define SCAN_INTERVAL_NS 5000000ull /* timeout scan every 5 ms */

/* ---- latency histogram (log-linear, 64 sub-buckets per power of two) ---- */
#define SUB_BITS 6
#define SUB (1u << SUB_BITS)
#define NBUCKETS (2 * SUB + 58 * SUB)

static uint64_t hist[NBUCKETS];

static unsigned bucket_of(uint64_t v)
{
    if (v < 2 * SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - SUB_BITS;
    unsigned idx = 2 * SUB + (shift - 1) * SUB + (unsigned)((v >> shift) - SUB);
    return idx < NBUCKETS ? idx : NBUCKETS - 1;
}

static double bucket_mid(unsigned idx)
{
    if (idx < 2 * SUB)
        return (double)idx;
    unsigned shift = (idx - 2 * SUB) / SUB + 1;
    uint64_t base = ((uint64_t)((idx - 2 * SUB) % SUB) + SUB) << shift;
    return (double)base + (double)(1ull << shift) / 2.0;
}

static double percentile_ms(uint64_t total, double q)
{
    if (total == 0)
        return 0.0;
    uint64_t rank = (uint64_t)(q * (double)total + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > total)
        rank = total;
    uint64_t cum = 0;
    for (unsigned i = 0; i < NBUCKETS; i++) {
        cum += hist[i];
        if (cum >= rank)
            return bucket_mid(i) / 1e6;
    }
    return bucket_mid(NBUCKETS - 1) / 1e6;
}

/* ---- helpers ---- */
static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) * 1000000000ull +
           ((uint64_t)ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_usec) * 1000ull;
}

static uint64_t rng_state;
static inline uint32_t rng32(void)
{
    /* xorshift64* */
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void die(const char *msg)
{
    fprintf(stderr, "stun_load: %s\n", msg);
    exit(2);
}

static double parse_num(const char *s, const char *what, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "stun_load: bad %s '%s' (allowed %g..%g)\n", what, s, lo, hi);
        exit(2);
    }
    return v;
}

/* ---- slots ---- */
enum { SLOT_FREE = 0, SLOT_OUT = 1 };

struct slot {
    uint64_t sent_ns;
    uint32_t seq;
    uint32_t rnd;
    uint8_t state;
    uint8_t measured;
};

int main(int argc, char **argv)
{
    if (argc < 6 || argc > 8) {
        fprintf(stderr,
                "usage: %s HOST PORT WINDOW DURATION_S WARMUP_S [TIMEOUT_S [MAX_REQUESTS]]\n",
                argv[0]);
        return 2;
    }
    const char *host = argv[1];
    const char *port = argv[2];
    unsigned window = (unsigned)parse_num(argv[3], "window", 1, MAX_WINDOW);
    double duration_s = parse_num(argv[4], "duration", 0.1, 3600);
    double warmup_s = parse_num(argv[5], "warmup", 0, 600);
    double timeout_s = argc > 6 ? parse_num(argv[6], "timeout", 0.001, 60) : 1.0;
    uint64_t max_requests =
        argc > 7 ? (uint64_t)parse_num(argv[7], "max_requests", 1, 1e12) : 50000000ull;

    /* ---- socket ---- */
    struct addrinfo hints, *res;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        fprintf(stderr, "stun_load: %s:%s: %s\n", host, port, gai_strerror(gai));
        return 2;
    }
    int fd = socket(res->ai_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket failed");
    /* Big buffers so the generator's own socket never drops a response
     * (the *FORCE variants exceed net.core.[rw]mem_max when run as root). */
    int bufsz = 4 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bufsz, sizeof bufsz) != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof bufsz);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bufsz, sizeof bufsz) != 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsz, sizeof bufsz);
    if (connect(fd, res->ai_addr, res->ai_addrlen) != 0)
        die("connect failed");
    freeaddrinfo(res);

    uint64_t seed;
    if (getrandom(&seed, sizeof seed, 0) != sizeof seed)
        seed = now_ns() ^ ((uint64_t)getpid() << 32);
    rng_state = seed | 1;

    struct slot *slots = calloc(window, sizeof *slots);
    uint32_t *free_stack = malloc(window * sizeof *free_stack);
    if (!slots || !free_stack)
        die("out of memory");
    unsigned nfree = 0;
    for (unsigned i = window; i > 0; i--)
        free_stack[nfree++] = i - 1;

    /* tx/rx batches */
    static uint8_t txbuf[BATCH][STUN_HDR];
    static uint8_t rxbuf[BATCH][RXBUF];
    struct mmsghdr txm[BATCH], rxm[BATCH];
    struct iovec txv[BATCH], rxv[BATCH];
    uint32_t tx_slot[BATCH];
    memset(txm, 0, sizeof txm);
    memset(rxm, 0, sizeof rxm);
    for (int i = 0; i < BATCH; i++) {
        txv[i].iov_base = txbuf[i];
        txv[i].iov_len = STUN_HDR;
        txm[i].msg_hdr.msg_iov = &txv[i];
        txm[i].msg_hdr.msg_iovlen = 1;
        rxv[i].iov_base = rxbuf[i];
        rxv[i].iov_len = RXBUF;
        rxm[i].msg_hdr.msg_iov = &rxv[i];
        rxm[i].msg_hdr.msg_iovlen = 1;
    }

    /* ---- counters ---- */
    uint64_t total_sent = 0, seq = 0;
    uint64_t m_sent = 0, m_recv = 0, m_lost = 0, m_outstanding = 0;
    uint64_t errors = 0, invalid = 0, late = 0, timeouts_total = 0, sock_errors = 0;
    uint64_t lat_sum = 0, lat_max = 0;
    int capped = 0;

    const uint64_t t0 = now_ns();
    const uint64_t ms = t0 + (uint64_t)(warmup_s * 1e9);
    const uint64_t me = ms + (uint64_t)(duration_s * 1e9);
    const uint64_t tmo = (uint64_t)(timeout_s * 1e9);
    const uint64_t hard_end = me + tmo + 1000000000ull; /* absolute safety net */
    uint64_t cpu_at_ms = 0, cpu_at_me = 0, wall_at_ms = 0, wall_at_me = 0;
    int in_measure = 0, sending = 1;
    uint64_t next_scan = t0 + SCAN_INTERVAL_NS;
    uint64_t now = t0;

    for (uint64_t iter = 0; iter < 4000000000ull; iter++) {
        now = now_ns();
        if (!in_measure && now >= ms && sending) {
            in_measure = 1;
            cpu_at_ms = cpu_ns();
            wall_at_ms = now;
        }
        if (sending && now >= me) {
            sending = 0;
            if (in_measure) {
                cpu_at_me = cpu_ns();
                wall_at_me = now;
            }
        }
        if (!sending) {
            if (m_outstanding == 0 || now >= me + tmo || now >= hard_end)
                break;
        }
        if (now >= hard_end)
            break;

        /* ---- timeouts ---- */
        if (now >= next_scan) {
            next_scan = now + SCAN_INTERVAL_NS;
            for (unsigned i = 0; i < window; i++) {
                struct slot *s = &slots[i];
                if (s->state == SLOT_OUT && now - s->sent_ns >= tmo) {
                    s->state = SLOT_FREE;
                    timeouts_total++;
                    if (s->measured) {
                        m_lost++;
                        m_outstanding--;
                    }
                    free_stack[nfree++] = i;
                }
            }
        }

        /* ---- send: refill every free slot ---- */
        int want_pollout = 0, send_failed = 0;
        for (int guard = 0; sending && nfree > 0 && guard < (MAX_WINDOW / BATCH) + 1; guard++) {
            if (total_sent >= max_requests) {
                capped = 1;
                sending = 0;
                if (in_measure) {
                    cpu_at_me = cpu_ns();
                    wall_at_me = now_ns();
                }
                break;
            }
            uint64_t room = max_requests - total_sent;
            unsigned n = nfree < BATCH ? nfree : BATCH;
            if (n > room)
                n = (unsigned)room;
            for (unsigned k = 0; k < n; k++) {
                uint32_t si = free_stack[nfree - 1 - k];
                struct slot *s = &slots[si];
                uint8_t *b = txbuf[k];
                s->seq = (uint32_t)(++seq);
                s->rnd = rng32();
                b[0] = 0x00; /* Binding request 0x0001 */
                b[1] = 0x01;
                b[2] = 0x00; /* message length 0 */
                b[3] = 0x00;
                put32(b + 4, MAGIC_COOKIE);
                put32(b + 8, si);
                put32(b + 12, s->seq);
                put32(b + 16, s->rnd);
                tx_slot[k] = si;
            }
            uint64_t ts = now_ns();
            int r = sendmmsg(fd, txm, n, 0);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS))
                    want_pollout = 1;
                else {
                    sock_errors++; /* e.g. ECONNREFUSED from an ICMP error */
                    send_failed = 1;
                }
                break;
            }
            for (int k = 0; k < r; k++) {
                struct slot *s = &slots[tx_slot[k]];
                s->state = SLOT_OUT;
                s->sent_ns = ts;
                s->measured = (ts >= ms && ts < me);
                if (s->measured) {
                    m_sent++;
                    m_outstanding++;
                }
            }
            nfree -= (unsigned)r;
            total_sent += (uint64_t)r;
            if ((unsigned)r < n) {
                want_pollout = 1;
                break;
            }
        }

        /* ---- receive ---- */
        int got_any = 0;
        for (int guard = 0; guard < 16; guard++) {
            int r = recvmmsg(fd, rxm, BATCH, MSG_DONTWAIT, NULL);
            if (r <= 0) {
                if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                    sock_errors++;
                break;
            }
            got_any = 1;
            uint64_t ts = now_ns();
            for (int k = 0; k < r; k++) {
                const uint8_t *b = rxbuf[k];
                unsigned len = rxm[k].msg_len;
                if (len < STUN_HDR || (b[0] & 0xC0) != 0 || get32(b + 4) != MAGIC_COOKIE ||
                    (((unsigned)b[2] << 8) | b[3]) + STUN_HDR > len) {
                    invalid++;
                    continue;
                }
                uint16_t type = (uint16_t)(((unsigned)b[0] << 8) | b[1]);
                uint32_t si = get32(b + 8);
                if (si >= window) {
                    invalid++;
                    continue;
                }
                struct slot *s = &slots[si];
                if (s->state != SLOT_OUT || get32(b + 12) != s->seq || get32(b + 16) != s->rnd) {
                    late++;
                    continue;
                }
                if (type == 0x0101) {
                    if (s->measured) {
                        uint64_t lat = ts - s->sent_ns;
                        hist[bucket_of(lat)]++;
                        lat_sum += lat;
                        if (lat > lat_max)
                            lat_max = lat;
                        m_recv++;
                    }
                } else if (type == 0x0111) {
                    errors++;
                } else {
                    invalid++;
                    continue;
                }
                if (s->measured)
                    m_outstanding--;
                s->state = SLOT_FREE;
                free_stack[nfree++] = si;
            }
            if (r < BATCH)
                break;
        }

        /* ---- wait when there is nothing to do ---- */
        if (!got_any && (nfree == 0 || !sending || want_pollout || send_failed)) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN | (want_pollout ? POLLOUT : 0)};
            uint64_t t = now_ns();
            uint64_t deadline = next_scan;
            if (sending && me < deadline)
                deadline = me;
            if (!sending && me + tmo < deadline)
                deadline = me + tmo;
            int ms_wait = deadline > t ? (int)((deadline - t + 999999) / 1000000) : 0;
            if (ms_wait > 10)
                ms_wait = 10;
            poll(&pfd, 1, ms_wait);
        }
    }

    if (in_measure && wall_at_me == 0) {
        cpu_at_me = cpu_ns();
        wall_at_me = now_ns();
    }
    /* measured requests still outstanding at exit count as lost */
    m_lost += m_outstanding;

    double wall = wall_at_me > wall_at_ms ? (double)(wall_at_me - wall_at_ms) / 1e9 : 0.0;
    double gen_cpu = wall > 0 ? (double)(cpu_at_me - cpu_at_ms) / 1e9 / wall : 0.0;
    /* rps over the configured duration unless we stopped early (cap) */
    double denom = capped && wall > 0 ? wall : duration_s;
    printf("{\"sent\":%llu,\"received\":%llu,\"lost\":%llu,\"rps\":%.1f,"
           "\"p50_ms\":%.4f,\"p99_ms\":%.4f,\"p999_ms\":%.4f,"
           "\"mean_ms\":%.4f,\"max_ms\":%.4f,\"errors\":%llu,\"invalid\":%llu,"
           "\"late\":%llu,\"timeouts_total\":%llu,\"socket_errors\":%llu,"
           "\"window\":%u,\"duration_s\":%g,\"warmup_s\":%g,\"gen_cpu\":%.3f,"
           "\"capped\":%s}\n",
           (unsigned long long)m_sent, (unsigned long long)m_recv, (unsigned long long)m_lost,
           (double)m_recv / denom, percentile_ms(m_recv, 0.50), percentile_ms(m_recv, 0.99),
           percentile_ms(m_recv, 0.999), m_recv ? (double)lat_sum / (double)m_recv / 1e6 : 0.0,
           (double)lat_max / 1e6, (unsigned long long)errors, (unsigned long long)invalid,
           (unsigned long long)late, (unsigned long long)timeouts_total,
           (unsigned long long)sock_errors, window, duration_s, warmup_s, gen_cpu,
           capped ? "true" : "false");
    close(fd);
    free(slots);
    free(free_stack);
    return 0;
}
