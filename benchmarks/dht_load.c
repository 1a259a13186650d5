/*
 * dht_load.c - closed-loop KRPC (BitTorrent DHT, BEP 5) query load generator (Linux).
 *
 * Usage: dht_load host=H port=P window=W duration=S warmup=S [timeout=S]
 *                 [max_requests=N] [sockets=N] [ping_pct=0..100]
 *                 [stored_pct=0..100] [stored=N]
 *
 * Keeps WINDOW queries outstanding, spread over SOCKETS connected UDP sockets
 * (several source ports: the server sees several querying nodes).  Each
 * query is a `ping` with probability PING_PCT %, else a `get_peers`; the
 * info-hash of a get_peers is, with probability STORED_PCT %, one of STORED
 * well-known info-hashes ("dhtbench-stored-" + u32 index, big-endian: the
 * benchmark announced peers on them beforehand), else 20 random bytes.  Every
 * answered or timed-out query is replaced at once by a new one (closed loop);
 * nothing is re-sent: a query unanswered after TIMEOUT (default 1 s) is lost.
 *
 * Queries are what a mainline node sends: sorted keys, a 20-byte `id` per
 * socket (random, fixed for the run), a 4-byte transaction id, a 4-byte
 * client version `v` ("ZB" 0 1):
 *   ping       67 bytes   d1:ad2:id20:<id>e1:q4:ping1:t4:<t>1:v4:ZB..1:y1:qe
 *   get_peers 106 bytes   d1:ad2:id20:<id>9:info_hash20:<ih>e1:q9:get_peers1:t4:<t>1:v4:ZB..1:y1:qe
 * Transaction id = slot index (u16) | per-slot sequence number (u16); slot i
 * belongs to socket i % SOCKETS.  An answer counts only if it arrives on the
 * socket of its slot with the slot's current transaction id.
 *
 * Every datagram received is parsed as strict bencoding (whole datagram one
 * dictionary, keys sorted, no leading zeros, depth <= 16).  A valid answer is
 * y = "r" with t = the query's id and r.id a 20-byte string; for get_peers
 * also a token and `nodes` (a multiple of 26 bytes) and/or `values` (a list
 * of 6-byte strings).  Queries from the server (y = "q": a node pinging us to
 * verify our address) are counted and not answered.
 *
 * Requests sent during the first WARMUP seconds are not measured; those sent
 * in the next DURATION seconds are; then the generator waits (at most TIMEOUT)
 * for the measured ones in flight and prints one line of JSON:
 *   sent, received (valid answers), lost, rps (= received / DURATION),
 *   p50/p99/p999/mean/max latency (ms, send to receive; log-linear histogram,
 *   < 0.8 % bucket error), errors (KRPC error answers), invalid (answers with
 *   our transaction id that are not a valid answer), bad_tid (a transaction id
 *   that is not one of ours, or on the wrong socket), late (ours, but already
 *   answered or timed out), garbage (not bencoding / not KRPC), server_queries,
 *   gen_cpu (this process's CPU time / wall time while measuring), and per
 *   method: received, answer bytes (mean, min, max), nodes and values per
 *   answer, answers carrying values, an `ip` field, a `v` field.
 * It also stops sending after MAX_REQUESTS (default 50,000,000) in total.
 *
 * Build: cc -O2 -Wall -o dht_load dht_load.c
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

#define BATCH 64
#define RXBUF 2048
#define QMAX 128
#define MAX_WINDOW 65535
#define MAX_SOCKETS 64
#define MAX_DEPTH 16
#define SCAN_INTERVAL_NS 5000000ull /* timeout scan every 5 ms */

enum { M_PING = 0, M_GET_PEERS = 1, NMETHODS = 2 };
static const char *METHOD_NAMES[NMETHODS] = {"ping", "get_peers"};

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

static void die(const char *msg)
{
    fprintf(stderr, "dht_load: %s\n", msg);
    exit(2);
}

static double parse_num(const char *s, const char *what, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "dht_load: bad %s '%s' (allowed %g..%g)\n", what, s, lo, hi);
        exit(2);
    }
    return v;
}

/* ---- strict bencoding ---- */

/* A string: its bytes in *s, *n; returns the end, or NULL. */
static const uint8_t *b_str(const uint8_t *p, const uint8_t *e, const uint8_t **s, size_t *n)
{
    if (p >= e || *p < '0' || *p > '9')
        return NULL;
    if (*p == '0' && p + 1 < e && p[1] != ':')
        return NULL; /* leading zero */
    size_t len = 0;
    int digits = 0;
    while (p < e && *p >= '0' && *p <= '9') {
        len = len * 10 + (size_t)(*p - '0');
        p++;
        if (++digits > 6)
            return NULL;
    }
    if (p >= e || *p != ':')
        return NULL;
    p++;
    if ((size_t)(e - p) < len)
        return NULL;
    *s = p;
    *n = len;
    return p + len;
}

static const uint8_t *b_int(const uint8_t *p, const uint8_t *e)
{
    if (p >= e || *p != 'i')
        return NULL;
    p++;
    int neg = 0;
    if (p < e && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= e || *p < '0' || *p > '9')
        return NULL;
    if (*p == '0' && (neg || (p + 1 < e && p[1] != 'e')))
        return NULL; /* -0 or a leading zero */
    int digits = 0;
    while (p < e && *p >= '0' && *p <= '9') {
        p++;
        if (++digits > 20)
            return NULL;
    }
    if (p >= e || *p != 'e')
        return NULL;
    return p + 1;
}

struct bfield {
    const char *name;
    const uint8_t *v; /* start of the value, NULL if absent */
    const uint8_t *ve;
};

static const uint8_t *b_dict(const uint8_t *p, const uint8_t *e, int depth, struct bfield *f, int nf);

static const uint8_t *b_skip(const uint8_t *p, const uint8_t *e, int depth)
{
    if (p >= e || depth > MAX_DEPTH)
        return NULL;
    if (*p == 'i')
        return b_int(p, e);
    if (*p == 'l') {
        p++;
        for (int guard = 0; guard < RXBUF; guard++) {
            if (p >= e)
                return NULL;
            if (*p == 'e')
                return p + 1;
            p = b_skip(p, e, depth + 1);
            if (!p)
                return NULL;
        }
        return NULL;
    }
    if (*p == 'd')
        return b_dict(p, e, depth, NULL, 0);
    const uint8_t *s;
    size_t n;
    return b_str(p, e, &s, &n);
}

/* A dictionary at p (keys strictly increasing); the values of the keys named
 * in f are located.  Returns the end, or NULL. */
static const uint8_t *b_dict(const uint8_t *p, const uint8_t *e, int depth, struct bfield *f, int nf)
{
    if (p >= e || *p != 'd' || depth > MAX_DEPTH)
        return NULL;
    p++;
    const uint8_t *prev = NULL;
    size_t prevn = 0;
    for (int i = 0; i < nf; i++)
        f[i].v = f[i].ve = NULL;
    for (int guard = 0; guard < RXBUF; guard++) {
        if (p >= e)
            return NULL;
        if (*p == 'e')
            return p + 1;
        const uint8_t *k;
        size_t kn;
        p = b_str(p, e, &k, &kn);
        if (!p)
            return NULL;
        if (prev) {
            size_t m = prevn < kn ? prevn : kn;
            int c = memcmp(prev, k, m);
            if (c > 0 || (c == 0 && prevn >= kn))
                return NULL; /* unsorted or duplicate key */
        }
        prev = k;
        prevn = kn;
        const uint8_t *v = p;
        p = b_skip(p, e, depth + 1);
        if (!p)
            return NULL;
        for (int i = 0; i < nf; i++) {
            if (strlen(f[i].name) == kn && memcmp(f[i].name, k, kn) == 0) {
                f[i].v = v;
                f[i].ve = p;
            }
        }
    }
    return NULL;
}

/* The value of a field as a string; 0 if absent or not a string. */
static int field_str(const struct bfield *f, const uint8_t **s, size_t *n)
{
    if (!f->v)
        return 0;
    const uint8_t *end = b_str(f->v, f->ve, s, n);
    return end == f->ve;
}

/* ---- slots ---- */
enum { SLOT_FREE = 0, SLOT_OUT = 1 };

struct slot {
    uint64_t sent_ns;
    uint16_t seq;
    uint8_t state;
    uint8_t measured;
    uint8_t method;
};

struct mstats {
    uint64_t sent, received, errors, invalid;
    uint64_t bytes, bytes_min, bytes_max;
    uint64_t nodes, values, with_values, with_ip, with_v, trimmed_nodes;
};

struct sock {
    int fd;
    uint8_t id[20];
    uint32_t *free_stack;
    unsigned nfree;
    int want_pollout;
};

static const uint8_t CLIENT_V[4] = {'Z', 'B', 0, 1};

/* The query of `method` for slot si, into b; returns its length. */
static size_t build_query(uint8_t *b, int method, const uint8_t *id, uint16_t si, uint16_t seq,
                          const uint8_t *info_hash)
{
    uint8_t *p = b;
#define PUT(str) (memcpy(p, str, sizeof(str) - 1), p += sizeof(str) - 1)
    PUT("d1:ad2:id20:");
    memcpy(p, id, 20);
    p += 20;
    if (method == M_PING) {
        PUT("e1:q4:ping1:t4:");
    } else {
        PUT("9:info_hash20:");
        memcpy(p, info_hash, 20);
        p += 20;
        PUT("e1:q9:get_peers1:t4:");
    }
    *p++ = (uint8_t)(si >> 8);
    *p++ = (uint8_t)si;
    *p++ = (uint8_t)(seq >> 8);
    *p++ = (uint8_t)seq;
    PUT("1:v4:");
    memcpy(p, CLIENT_V, 4);
    p += 4;
    PUT("1:y1:qe");
#undef PUT
    return (size_t)(p - b);
}

/* Whether r (the body of an answer to `method`) is valid; fills the stats' shape counters. */
static int check_body(const uint8_t *v, const uint8_t *ve, int method, uint64_t *nodes, uint64_t *values)
{
    struct bfield rf[] = {{"id", 0, 0}, {"nodes", 0, 0}, {"token", 0, 0}, {"values", 0, 0}};
    if (b_dict(v, ve, 1, rf, 4) != ve)
        return 0;
    const uint8_t *s;
    size_t n;
    if (!field_str(&rf[0], &s, &n) || n != 20)
        return 0;
    *nodes = *values = 0;
    if (method == M_PING)
        return 1;
    if (!field_str(&rf[2], &s, &n) || n == 0 || n > 128)
        return 0;
    int has = 0;
    if (rf[1].v) {
        if (!field_str(&rf[1], &s, &n) || n % 26)
            return 0;
        *nodes = n / 26;
        has = 1;
    }
    if (rf[3].v) {
        const uint8_t *p = rf[3].v;
        if (*p != 'l')
            return 0;
        p++;
        for (int guard = 0; guard < RXBUF; guard++) {
            if (p >= rf[3].ve)
                return 0;
            if (*p == 'e')
                break;
            p = b_str(p, rf[3].ve, &s, &n);
            if (!p || n != 6)
                return 0;
            (*values)++;
        }
        has = 1;
    }
    return has;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *port = NULL;
    unsigned window = 64, nsock = 8;
    double duration_s = -1, warmup_s = 1.0, timeout_s = 1.0;
    double ping_pct = 50, stored_pct = 0;
    unsigned nstored = 0;
    uint64_t max_requests = 50000000ull;
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "dht_load: arguments are key=value, got '%s'\n", argv[i]);
            return 2;
        }
        *eq = 0;
        const char *k = argv[i], *v = eq + 1;
        if (!strcmp(k, "host"))
            host = v;
        else if (!strcmp(k, "port"))
            port = v;
        else if (!strcmp(k, "window"))
            window = (unsigned)parse_num(v, k, 1, MAX_WINDOW);
        else if (!strcmp(k, "duration"))
            duration_s = parse_num(v, k, 0.1, 3600);
        else if (!strcmp(k, "warmup"))
            warmup_s = parse_num(v, k, 0, 600);
        else if (!strcmp(k, "timeout"))
            timeout_s = parse_num(v, k, 0.001, 60);
        else if (!strcmp(k, "max_requests"))
            max_requests = (uint64_t)parse_num(v, k, 1, 1e12);
        else if (!strcmp(k, "sockets"))
            nsock = (unsigned)parse_num(v, k, 1, MAX_SOCKETS);
        else if (!strcmp(k, "ping_pct"))
            ping_pct = parse_num(v, k, 0, 100);
        else if (!strcmp(k, "stored_pct"))
            stored_pct = parse_num(v, k, 0, 100);
        else if (!strcmp(k, "stored"))
            nstored = (unsigned)parse_num(v, k, 0, 1e6);
        else {
            fprintf(stderr, "dht_load: unknown argument '%s'\n", k);
            return 2;
        }
    }
    if (!port || duration_s < 0)
        die("port= and duration= are required");
    if (nsock > window)
        nsock = window;
    if (nstored == 0)
        stored_pct = 0;

    uint64_t seed;
    if (getrandom(&seed, sizeof seed, 0) != sizeof seed)
        seed = now_ns() ^ ((uint64_t)getpid() << 32);
    rng_state = seed | 1;

    /* ---- sockets ---- */
    struct addrinfo hints, *res;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        fprintf(stderr, "dht_load: %s:%s: %s\n", host, port, gai_strerror(gai));
        return 2;
    }
    static struct sock socks[MAX_SOCKETS];
    for (unsigned k = 0; k < nsock; k++) {
        int fd = socket(res->ai_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            die("socket failed");
        int bufsz = 1 << 20;
        if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bufsz, sizeof bufsz) != 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof bufsz);
        if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bufsz, sizeof bufsz) != 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsz, sizeof bufsz);
        if (connect(fd, res->ai_addr, res->ai_addrlen) != 0)
            die("connect failed");
        socks[k].fd = fd;
        for (int j = 0; j < 20; j += 4) {
            uint32_t r = rng32();
            memcpy(socks[k].id + j, &r, 4);
        }
        socks[k].free_stack = malloc(window * sizeof(uint32_t));
        if (!socks[k].free_stack)
            die("out of memory");
        socks[k].nfree = 0;
    }
    freeaddrinfo(res);

    struct slot *slots = calloc(window, sizeof *slots);
    if (!slots)
        die("out of memory");
    for (unsigned i = window; i > 0; i--) {
        struct sock *s = &socks[(i - 1) % nsock];
        s->free_stack[s->nfree++] = i - 1;
        slots[i - 1].seq = (uint16_t)rng32();
    }

    static uint8_t txbuf[BATCH][QMAX];
    static uint8_t rxbuf[BATCH][RXBUF];
    struct mmsghdr txm[BATCH], rxm[BATCH];
    struct iovec txv[BATCH], rxv[BATCH];
    uint32_t tx_slot[BATCH];
    memset(txm, 0, sizeof txm);
    memset(rxm, 0, sizeof rxm);
    for (int i = 0; i < BATCH; i++) {
        txv[i].iov_base = txbuf[i];
        txm[i].msg_hdr.msg_iov = &txv[i];
        txm[i].msg_hdr.msg_iovlen = 1;
        rxv[i].iov_base = rxbuf[i];
        rxv[i].iov_len = RXBUF;
        rxm[i].msg_hdr.msg_iov = &rxv[i];
        rxm[i].msg_hdr.msg_iovlen = 1;
    }
    uint32_t ping_threshold = (uint32_t)(ping_pct / 100.0 * 4294967295.0);
    uint32_t stored_threshold = (uint32_t)(stored_pct / 100.0 * 4294967295.0);

    /* ---- counters ---- */
    struct mstats ms[NMETHODS];
    memset(ms, 0, sizeof ms);
    for (int m = 0; m < NMETHODS; m++)
        ms[m].bytes_min = UINT64_MAX;
    uint64_t total_sent = 0, m_sent = 0, m_recv = 0, m_lost = 0, m_outstanding = 0;
    uint64_t bad_tid = 0, late = 0, garbage = 0, server_queries = 0, timeouts_total = 0;
    uint64_t sock_errors = 0, lat_sum = 0, lat_max = 0;
    int capped = 0;

    const uint64_t t0 = now_ns();
    const uint64_t mstart = t0 + (uint64_t)(warmup_s * 1e9);
    const uint64_t mend = mstart + (uint64_t)(duration_s * 1e9);
    const uint64_t tmo = (uint64_t)(timeout_s * 1e9);
    const uint64_t hard_end = mend + tmo + 1000000000ull; /* absolute safety net */
    uint64_t cpu_at_ms = 0, cpu_at_me = 0, wall_at_ms = 0, wall_at_me = 0;
    int in_measure = 0, sending = 1;
    uint64_t next_scan = t0 + SCAN_INTERVAL_NS;
    uint64_t now = t0;
    uint8_t info_hash[20];

    for (uint64_t iter = 0; iter < 4000000000ull; iter++) {
        now = now_ns();
        if (!in_measure && now >= mstart && sending) {
            in_measure = 1;
            cpu_at_ms = cpu_ns();
            wall_at_ms = now;
        }
        if (sending && now >= mend) {
            sending = 0;
            if (in_measure) {
                cpu_at_me = cpu_ns();
                wall_at_me = now;
            }
        }
        if (!sending && (m_outstanding == 0 || now >= mend + tmo))
            break;
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
                    struct sock *k = &socks[i % nsock];
                    k->free_stack[k->nfree++] = i;
                }
            }
        }

        /* ---- send: refill every free slot, socket by socket ---- */
        int want_pollout = 0, send_failed = 0;
        for (unsigned si = 0; si < nsock && sending; si++) {
            struct sock *sk = &socks[si];
            for (int guard = 0; sk->nfree > 0 && guard < (MAX_WINDOW / BATCH) + 1; guard++) {
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
                unsigned n = sk->nfree < BATCH ? sk->nfree : BATCH;
                if (n > room)
                    n = (unsigned)room;
                for (unsigned k = 0; k < n; k++) {
                    uint32_t idx = sk->free_stack[sk->nfree - 1 - k];
                    struct slot *s = &slots[idx];
                    s->seq++;
                    int method = rng32() < ping_threshold || ping_pct >= 100 ? M_PING : M_GET_PEERS;
                    if (method == M_GET_PEERS) {
                        if (stored_threshold && rng32() < stored_threshold) {
                            memcpy(info_hash, "dhtbench-stored-", 16);
                            uint32_t j = rng32() % nstored;
                            info_hash[16] = (uint8_t)(j >> 24);
                            info_hash[17] = (uint8_t)(j >> 16);
                            info_hash[18] = (uint8_t)(j >> 8);
                            info_hash[19] = (uint8_t)j;
                        } else {
                            for (int j = 0; j < 20; j += 4) {
                                uint32_t r = rng32();
                                memcpy(info_hash + j, &r, 4);
                            }
                        }
                    }
                    s->method = (uint8_t)method;
                    txv[k].iov_len = build_query(txbuf[k], method, sk->id, (uint16_t)idx, s->seq, info_hash);
                    tx_slot[k] = idx;
                }
                uint64_t ts = now_ns();
                int r = sendmmsg(sk->fd, txm, n, 0);
                if (r <= 0) {
                    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS))
                        want_pollout = sk->want_pollout = 1;
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
                    s->measured = (ts >= mstart && ts < mend);
                    if (s->measured) {
                        m_sent++;
                        m_outstanding++;
                        ms[s->method].sent++;
                    }
                }
                sk->nfree -= (unsigned)r;
                total_sent += (uint64_t)r;
                if ((unsigned)r < n) {
                    want_pollout = sk->want_pollout = 1;
                    break;
                }
            }
        }

        /* ---- wait for answers: one poll over every socket, blocking only when
         * every slot is out (or sending is over or blocked) ---- */
        unsigned nfree_all = 0;
        for (unsigned si = 0; si < nsock; si++)
            nfree_all += socks[si].nfree;
        struct pollfd pfd[MAX_SOCKETS];
        for (unsigned si = 0; si < nsock; si++) {
            pfd[si].fd = socks[si].fd;
            pfd[si].events = POLLIN | (socks[si].want_pollout ? POLLOUT : 0);
            pfd[si].revents = 0;
            socks[si].want_pollout = 0;
        }
        int ms_wait = 0;
        if (nfree_all == 0 || !sending || want_pollout || send_failed) {
            uint64_t t = now_ns();
            uint64_t deadline = next_scan;
            if (sending && mend < deadline)
                deadline = mend;
            if (!sending && mend + tmo < deadline)
                deadline = mend + tmo;
            ms_wait = deadline > t ? (int)((deadline - t + 999999) / 1000000) : 0;
            if (ms_wait > 10)
                ms_wait = 10;
        }
        if (poll(pfd, nsock, ms_wait) <= 0)
            continue;

        /* ---- receive ---- */
        for (unsigned si = 0; si < nsock; si++) {
            struct sock *sk = &socks[si];
            if (!(pfd[si].revents & (POLLIN | POLLERR)))
                continue;
            for (int guard = 0; guard < 16; guard++) {
                int r = recvmmsg(sk->fd, rxm, BATCH, MSG_DONTWAIT, NULL);
                if (r <= 0) {
                    if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                        sock_errors++;
                    break;
                }
                uint64_t ts = now_ns();
                for (int k = 0; k < r; k++) {
                    const uint8_t *b = rxbuf[k];
                    unsigned len = rxm[k].msg_len;
                    struct bfield tf[] = {{"ip", 0, 0}, {"r", 0, 0}, {"t", 0, 0}, {"v", 0, 0}, {"y", 0, 0}};
                    const uint8_t *tid, *y;
                    size_t tidn, yn;
                    if (len >= RXBUF || b_dict(b, b + len, 0, tf, 5) != b + len || !field_str(&tf[2], &tid, &tidn) ||
                        !field_str(&tf[4], &y, &yn) || yn != 1) {
                        garbage++;
                        continue;
                    }
                    if (y[0] == 'q') {
                        server_queries++;
                        continue;
                    }
                    if (tidn != 4) {
                        bad_tid++;
                        continue;
                    }
                    unsigned idx = ((unsigned)tid[0] << 8) | tid[1];
                    uint16_t seq = (uint16_t)(((unsigned)tid[2] << 8) | tid[3]);
                    if (idx >= window || idx % nsock != si) {
                        bad_tid++;
                        continue;
                    }
                    struct slot *s = &slots[idx];
                    if (s->state != SLOT_OUT || s->seq != seq) {
                        late++;
                        continue;
                    }
                    struct mstats *m = &ms[s->method];
                    uint64_t nodes = 0, values = 0;
                    if (y[0] == 'e') {
                        if (s->measured)
                            m->errors++;
                    } else if (y[0] != 'r' || !tf[1].v || !check_body(tf[1].v, tf[1].ve, s->method, &nodes, &values)) {
                        if (s->measured)
                            m->invalid++;
                    } else if (s->measured) {
                        uint64_t lat = ts - s->sent_ns;
                        hist[bucket_of(lat)]++;
                        lat_sum += lat;
                        if (lat > lat_max)
                            lat_max = lat;
                        m_recv++;
                        m->received++;
                        m->bytes += len;
                        if (len < m->bytes_min)
                            m->bytes_min = len;
                        if (len > m->bytes_max)
                            m->bytes_max = len;
                        m->nodes += nodes;
                        m->values += values;
                        if (values)
                            m->with_values++;
                        else if (s->method == M_GET_PEERS && nodes < 8)
                            m->trimmed_nodes++;
                        if (tf[0].v)
                            m->with_ip++;
                        if (tf[3].v)
                            m->with_v++;
                    }
                    if (s->measured)
                        m_outstanding--;
                    s->state = SLOT_FREE;
                    sk->free_stack[sk->nfree++] = idx;
                }
                if (r < BATCH)
                    break;
            }
        }
    }

    if (in_measure && wall_at_me == 0) {
        cpu_at_me = cpu_ns();
        wall_at_me = now_ns();
    }
    m_lost += m_outstanding; /* measured queries still outstanding at exit count as lost */

    double wall = wall_at_me > wall_at_ms ? (double)(wall_at_me - wall_at_ms) / 1e9 : 0.0;
    double gen_cpu = wall > 0 ? (double)(cpu_at_me - cpu_at_ms) / 1e9 / wall : 0.0;
    double denom = capped && wall > 0 ? wall : duration_s;
    uint64_t errors = 0, invalid = 0;
    for (int m = 0; m < NMETHODS; m++) {
        errors += ms[m].errors;
        invalid += ms[m].invalid;
    }
    printf("{\"sent\":%llu,\"received\":%llu,\"lost\":%llu,\"rps\":%.1f,"
           "\"p50_ms\":%.4f,\"p99_ms\":%.4f,\"p999_ms\":%.4f,\"mean_ms\":%.4f,\"max_ms\":%.4f,"
           "\"errors\":%llu,\"invalid\":%llu,\"bad_tid\":%llu,\"late\":%llu,\"garbage\":%llu,"
           "\"server_queries\":%llu,\"timeouts_total\":%llu,\"socket_errors\":%llu,"
           "\"window\":%u,\"sockets\":%u,\"duration_s\":%g,\"warmup_s\":%g,\"gen_cpu\":%.3f,"
           "\"capped\":%s,\"methods\":{",
           (unsigned long long)m_sent, (unsigned long long)m_recv, (unsigned long long)m_lost,
           (double)m_recv / denom, percentile_ms(m_recv, 0.50), percentile_ms(m_recv, 0.99),
           percentile_ms(m_recv, 0.999), m_recv ? (double)lat_sum / (double)m_recv / 1e6 : 0.0,
           (double)lat_max / 1e6, (unsigned long long)errors, (unsigned long long)invalid,
           (unsigned long long)bad_tid, (unsigned long long)late, (unsigned long long)garbage,
           (unsigned long long)server_queries, (unsigned long long)timeouts_total,
           (unsigned long long)sock_errors, window, nsock, duration_s, warmup_s, gen_cpu,
           capped ? "true" : "false");
    for (int m = 0; m < NMETHODS; m++) {
        struct mstats *s = &ms[m];
        double rcv = s->received ? (double)s->received : 1.0;
        printf("%s\"%s\":{\"sent\":%llu,\"received\":%llu,\"errors\":%llu,\"invalid\":%llu,"
               "\"bytes_mean\":%.1f,\"bytes_min\":%llu,\"bytes_max\":%llu,\"nodes_mean\":%.2f,"
               "\"values_mean\":%.2f,\"with_values\":%llu,\"fewer_than_8_nodes\":%llu,"
               "\"with_ip\":%llu,\"with_v\":%llu}",
               m ? "," : "", METHOD_NAMES[m], (unsigned long long)s->sent, (unsigned long long)s->received,
               (unsigned long long)s->errors, (unsigned long long)s->invalid, (double)s->bytes / rcv,
               (unsigned long long)(s->received ? s->bytes_min : 0), (unsigned long long)s->bytes_max,
               (double)s->nodes / rcv, (double)s->values / rcv, (unsigned long long)s->with_values,
               (unsigned long long)s->trimmed_nodes, (unsigned long long)s->with_ip,
               (unsigned long long)s->with_v);
    }
    printf("}}\n");
    for (unsigned k = 0; k < nsock; k++) {
        close(socks[k].fd);
        free(socks[k].free_stack);
    }
    free(slots);
    return 0;
}
