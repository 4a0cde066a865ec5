/*
 * fuzz_core.c: the libFuzzer target of the natpair core (cext/).
 *
 * One active core and one standby core live across inputs (created lazily,
 * recreated when the clock gets old or FUZZ_FRESH=1 asks for it per input, to
 * replay a crash). The active core is small on purpose: 4096 states, two pool
 * addresses in 198.18.0.0/15 with a 64-port range (NAT exhaustion), a static
 * 1:1, port forwards, a few rules and a 64-event journal (overflow, resend).
 *
 * An input is a sequence of records [op:1][len:2 little-endian][len bytes];
 * the low nibble of op picks the operation, the high nibble carries its
 * flags (names: OP_*):
 *
 *   RAW       bytes as a packet (side, CSUM_NOTREADY, GSO from the flags),
 *             copied to a malloc of exactly len bytes so ASan sees over-reads
 *   TEMPLATE  bytes fill the fields of a well-formed IPv4 TCP / UDP / ICMP
 *             echo / ICMP error (inner TCP, UDP, echo) / fragment, addresses
 *             and ports from small tables so flows meet again
 *   STATE     a packet of a tracked flow (either direction, sequence numbers
 *             near its windows) or an ICMP error about it
 *   BATCH     several TEMPLATE / STATE packets through np_core_process_batch
 *   CLOCK     advance the clock (sometimes past a whole turn of the wheel)
 *   SWEEP     np_core_sweep with a budget
 *   DRAIN     drain the journal and apply it to the standby (flag 1: as wire records,
 *             np_core_journal_drain_wire, into buffers of the sizes the bytes say)
 *   RESEND    np_core_resend_scan
 *   BULK      export everything into a freshly created standby
 *   IMPORT    a raw np_state_rec from the bytes (optionally made plausible)
 *   DELETE    delete / import_delete / get by id
 *   RULES     add a rule from the bytes, or reset the rule list
 *   JOURNAL   journal on / off
 *   EXPORT    partial export from a cursor, compared with np_core_get; with flag
 *             WIRE_EXPORT the same in the replication wire's form (np_core_export_wire,
 *             read back with np_wire_state_unpack), WIRE_IMPORT: the bytes as wire
 *             records into np_core_import_wire (standby, or active with flag 8),
 *             WIRE_BULK: a bulk sync into a fresh standby through wire records
 *
 * Oracles besides ASan/UBSan: after every input the table's structure is
 * checked (free list, key and id hash chains, timer wheel, mapping
 * references, port bitmaps); translated well-formed packets must carry valid
 * checksums; every record the active core emits must be importable; a bulk
 * sync into a fresh standby must take every state (also through wire records, whose
 * import must account for every record: imported or refused, never both).
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>

#include "np_internal.h"

/* ---- configuration (host order) ---- */
#define IP(a, b, c, d) ((uint32_t)(a) << 24 | (uint32_t)(b) << 16 | (uint32_t)(c) << 8 | (uint32_t)(d))
#define MAX_STATES 4096
#define ACTIVE_ID 7
#define STANDBY_ID 8
#define CLOCK_RESET_MS (1ull << 36)     /* about two years: far from the 32-bit seconds wrap */

static const uint32_t addrs[16] = {
    IP(10, 0, 0, 1), IP(10, 0, 0, 2), IP(10, 0, 0, 3), IP(10, 0, 1, 5),
    IP(10, 0, 0, 10), IP(10, 0, 0, 20), IP(10, 0, 0, 21),
    IP(198, 18, 0, 1), IP(198, 18, 0, 2), IP(198, 18, 1, 10), IP(198, 18, 1, 20),
    IP(198, 19, 0, 1), IP(198, 19, 0, 2), IP(203, 0, 113, 5), IP(8, 8, 8, 8), IP(198, 19, 9, 9),
};
static const uint16_t ports[16] = {80, 443, 8080, 53, 1024, 1025, 1030, 1087,
                                   1088, 40000, 40001, 22, 0, 65535, 1, 5353};

struct fz {
    struct np_core *a, *b;      /* active, standby */
    uint64_t now_ms;
    uint32_t nrules;
    uint64_t inputs;
    bool fresh;                 /* FUZZ_FRESH: new cores for every input */
};
static struct fz F;

static const uint8_t *dump_before, *dump_after;
static size_t dump_len;
static void dump_packets(void)
{
    if (!dump_after)
        return;
    fprintf(stderr, "packet before / after (%zu bytes):\n", dump_len);
    for (int k = 0; k < 2; k++) {
        const uint8_t *b = k ? dump_after : dump_before;
        for (size_t i = 0; i < dump_len; i++)
            fprintf(stderr, "%02x%s", b[i], i % 32 == 31 ? "\n" : " ");
        fputc('\n', stderr);
    }
}
#define FAIL(...) do { dump_packets(); fprintf(stderr, "fuzz_core invariant: " __VA_ARGS__); fputc('\n', stderr); abort(); } while (0)
#define CHECK(cond, ...) do { if (!(cond)) FAIL(__VA_ARGS__); } while (0)

static void default_rules(struct np_core *c)
{
    static const struct np_rule rules[] = {
        {.side = NP_SIDE_INSIDE, .proto = 17, .action = NP_RULE_DENY, .dst = IP(203, 0, 113, 0),
         .dst_len = 24, .dport_lo = 53, .dport_hi = 53},
        {.side = NP_SIDE_OUTSIDE, .proto = 6, .action = NP_RULE_ALLOW, .dst = IP(10, 0, 0, 3),
         .dst_len = 32, .dport_lo = 22, .dport_hi = 22},
        {.side = NP_SIDE_ANY, .proto = 1, .action = NP_RULE_DENY, .src = IP(198, 19, 0, 2),
         .src_len = 32, .dport_lo = 0, .dport_hi = 65535},
    };
    np_core_clear_rules(c);
    for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++)
        if (np_core_add_rule(c, &rules[i]) != NP_OK)
            abort();
}

static struct np_core *make_core(uint32_t creator)
{
    struct np_config cfg = {.max_states = MAX_STATES, .creator_id = creator, .journal_size = 64,
                            .pool_count = 2, .pool = {IP(198, 18, 0, 1), IP(198, 18, 0, 2)},
                            .port_lo = 1024, .port_hi = 1087,
                            .timeout_ms = {5000, 300000, 30000, 10000, 5000, 30000, 10000},
                            .hash_seed = 0x5eed5eed1234abcdull};
    int err = 0;
    struct np_core *c = np_core_create(&cfg, &err);
    if (!c)
        abort();
    static const struct np_static st[] = {
        {.proto = 0, .inside_addr = IP(10, 0, 0, 10), .outside_addr = IP(198, 18, 1, 10)},
        {.proto = 6, .inside_addr = IP(10, 0, 0, 20), .outside_addr = IP(198, 18, 1, 20),
         .inside_port = 80, .outside_port = 8080},
        {.proto = 17, .inside_addr = IP(10, 0, 0, 20), .outside_addr = IP(198, 18, 0, 1),
         .inside_port = 53, .outside_port = 53},
        {.proto = 6, .inside_addr = IP(10, 0, 0, 21), .outside_addr = IP(198, 18, 0, 2),
         .inside_port = 22, .outside_port = 1030},
    };
    for (size_t i = 0; i < sizeof(st) / sizeof(st[0]); i++)
        if (np_core_add_static(c, &st[i]) != NP_OK)
            abort();
    default_rules(c);
    np_core_set_clock(c, F.now_ms);
    return c;
}

static void reset_cores(void)
{
    np_core_destroy(F.a);
    np_core_destroy(F.b);
    F.now_ms = 1000000;
    F.nrules = 3;
    F.a = make_core(ACTIVE_ID);
    F.b = make_core(STANDBY_ID);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    const char *e = getenv("FUZZ_FRESH");
    F.fresh = e && *e == '1';
    reset_cores();
    return 0;
}

/* ---- input reader: zeros once exhausted ---- */
struct rd { const uint8_t *p; size_t n; };
static uint8_t u8(struct rd *r) { if (!r->n) return 0; r->n--; return *r->p++; }
static uint16_t u16(struct rd *r) { uint16_t v = u8(r); return (uint16_t)(v | u8(r) << 8); }
static uint32_t u32(struct rd *r) { uint32_t v = u16(r); return v | (uint32_t)u16(r) << 16; }
static uint32_t addr_of(struct rd *r) { uint8_t b = u8(r); return b & 0x80 ? u32(r) : addrs[b & 15]; }
static uint16_t port_of(struct rd *r) { uint8_t b = u8(r); return b & 0x80 ? u16(r) : ports[b & 15]; }

/* ---- checksums ---- */
static uint32_t sum16(const uint8_t *p, size_t n, uint32_t s)
{
    for (; n > 1; p += 2, n -= 2)
        s += (uint32_t)p[0] << 8 | p[1];
    if (n)
        s += (uint32_t)p[0] << 8;
    return s;
}
static uint16_t fold(uint32_t s)
{
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}
static uint32_t pseudo(const uint8_t *ip, uint8_t proto, size_t l4len)
{
    return sum16(ip + 12, 8, 0) + proto + (uint32_t)l4len;
}
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

/* ---- packet building ---- */
enum { K_TCP, K_UDP, K_ECHO, K_ERR_TCP, K_ERR_UDP, K_ERR_ECHO, K_LATER_FRAG, K_FIRST_FRAG };

struct spec {
    uint8_t kind, side, pflags;
    uint32_t src, dst;
    uint16_t sport, dport;      /* echo: id in sport */
    uint8_t tcp_flags, wscale_opt, wscale, optsel, icmp_type, icmp_code;
    uint32_t seq, ack;
    uint16_t win, ip_id, frag;
    uint8_t payload;
    bool udp_zero;
    bool ftcp;                  /* first fragment: TCP (else UDP) */
    /* ICMP error: the quoted datagram */
    uint32_t isrc, idst;
    uint16_t isport, idport;
    uint8_t itype, itrunc;      /* itrunc: inner L4 bytes quoted beyond 8 */
    uint8_t len_tweak;          /* 0: exact; else totlen / buffer mismatch */
};

/* writes an IPv4 header with options; returns its length */
static size_t ip_header(uint8_t *b, const struct spec *s, uint8_t proto, uint32_t src, uint32_t dst,
                        uint8_t optsel, uint16_t frag)
{
    static const uint8_t opts[][12] = {
        {0},
        {1, 1, 1, 0},                               /* NOPs, end of list */
        {7, 7, 4, 0, 0, 0, 0, 0},                   /* record route */
        {131, 7, 4, 1, 2, 3, 4, 0},                 /* LSRR: refused */
        {1, 1, 7, 1},                               /* malformed length */
        {68, 12, 5, 0, 0, 0, 0, 1, 0, 0, 0, 2},     /* timestamp */
    };
    static const uint8_t olen[] = {0, 4, 8, 8, 4, 12};
    uint8_t o = optsel % 6;
    size_t ihl = 20 + olen[o];
    memset(b, 0, ihl);
    b[0] = (uint8_t)(0x40 | ihl / 4);
    put16(b + 4, s->ip_id);
    put16(b + 6, frag);
    b[8] = 64;
    b[9] = proto;
    put32(b + 12, src);
    put32(b + 16, dst);
    memcpy(b + 20, opts[o], olen[o]);
    return ihl;
}

static void ip_finish(uint8_t *b, size_t ihl, size_t totlen)
{
    put16(b + 2, (uint16_t)totlen);
    put16(b + 10, 0);
    put16(b + 10, (uint16_t)~fold(sum16(b, ihl, 0)));
}

static size_t l4_tcp(uint8_t *l, uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack,
                     uint8_t flags, uint16_t win, bool wsopt, uint8_t ws, size_t payload)
{
    size_t hl = wsopt ? 24 : 20;
    memset(l, 0, hl + payload);
    put16(l, sport);
    put16(l + 2, dport);
    put32(l + 4, seq);
    put32(l + 8, ack);
    l[12] = (uint8_t)(hl / 4 << 4);
    l[13] = flags;
    put16(l + 14, win);
    if (wsopt) {
        l[20] = 3; l[21] = 3; l[22] = ws; l[23] = 1;
    }
    for (size_t i = 0; i < payload; i++)
        l[hl + i] = (uint8_t)i;
    return hl + payload;
}

static void l4_csum(const uint8_t *ip, uint8_t *l, size_t l4len, uint8_t proto, bool udp_zero)
{
    if (proto == 1) {
        put16(l + 2, 0);
        put16(l + 2, (uint16_t)~fold(sum16(l, l4len, 0)));
        return;
    }
    uint8_t *ck = l + (proto == 6 ? 16 : 6);
    if (proto == 6 && l4len < 18)
        return;
    put16(ck, 0);
    if (proto == 17 && udp_zero)
        return;
    uint16_t v = (uint16_t)~fold(sum16(l, l4len, pseudo(ip, proto, l4len)));
    put16(ck, proto == 17 && v == 0 ? 0xffff : v);
}

/* builds the packet into b (>= 1600 bytes); returns its length */
static size_t build(uint8_t *b, const struct spec *s)
{
    size_t ihl, l4len = 0;
    uint8_t *l;
    switch (s->kind) {
    case K_TCP:
    case K_FIRST_FRAG:
        if (s->kind == K_TCP || s->ftcp) {
            ihl = ip_header(b, s, 6, s->src, s->dst, s->optsel, s->kind == K_TCP ? s->frag & 0x4000 : 0x2000);
            l = b + ihl;
            l4len = l4_tcp(l, s->sport, s->dport, s->seq, s->ack, s->tcp_flags, s->win,
                           s->wscale_opt, s->wscale, s->payload);
            l4_csum(b, l, l4len, 6, false);
        } else {
            ihl = ip_header(b, s, 17, s->src, s->dst, s->optsel, 0x2000);
            l = b + ihl;
            l4len = 8 + s->payload;
            memset(l, 0xab, l4len);
            put16(l, s->sport);
            put16(l + 2, s->dport);
            put16(l + 4, (uint16_t)(l4len + 64));   /* the whole datagram is longer */
            l4_csum(b, l, l4len, 17, s->udp_zero);
        }
        break;
    case K_UDP:
        ihl = ip_header(b, s, 17, s->src, s->dst, s->optsel, s->frag & 0x4000);
        l = b + ihl;
        l4len = 8 + s->payload;
        memset(l, 0x5a, l4len);
        put16(l, s->sport);
        put16(l + 2, s->dport);
        put16(l + 4, (uint16_t)l4len);
        l4_csum(b, l, l4len, 17, s->udp_zero);
        break;
    case K_ECHO:
        ihl = ip_header(b, s, 1, s->src, s->dst, s->optsel, s->frag & 0x4000);
        l = b + ihl;
        l4len = 8 + s->payload;
        memset(l, 0x11, l4len);
        l[0] = s->icmp_type;
        l[1] = s->icmp_code;
        put16(l + 4, s->sport);
        put16(l + 6, (uint16_t)s->seq);
        l4_csum(b, l, l4len, 1, false);
        break;
    case K_ERR_TCP:
    case K_ERR_UDP:
    case K_ERR_ECHO: {
        ihl = ip_header(b, s, 1, s->src, s->dst, s->optsel, s->frag & 0x4000);
        l = b + ihl;
        memset(l, 0, 8);
        l[0] = s->icmp_type;
        l[1] = s->icmp_code;
        uint8_t *in = l + 8;
        uint8_t ip = s->kind == K_ERR_TCP ? 6 : s->kind == K_ERR_UDP ? 17 : 1;
        struct spec is = *s;
        is.ip_id = (uint16_t)(s->ip_id ^ 0x5555);
        size_t iihl = ip_header(in, &is, ip, s->isrc, s->idst, s->optsel >> 4 & 1, 0);
        uint8_t *il = in + iihl;
        size_t ilen;
        if (ip == 6) {
            ilen = l4_tcp(il, s->isport, s->idport, s->seq, s->ack, 0x10, s->win, false, 0, 0);
        } else if (ip == 17) {
            ilen = 8;
            put16(il, s->isport);
            put16(il + 2, s->idport);
            put16(il + 4, 8 + 100);
            put16(il + 6, 0);
        } else {
            ilen = 8;
            memset(il, 0, 8);
            il[0] = s->itype;
            put16(il + 4, s->isport);
        }
        if (ip != 6) {
            size_t extra = s->itrunc % 24;
            memset(il + 8, 0x33, extra);
            ilen += extra;
        }
        ip_finish(in, iihl, iihl + ilen + (ip == 17 ? 100 : 0));
        l4_csum(in, il, ilen, ip, s->udp_zero);
        if (ip == 6 && s->itrunc % 3 == 1)
            ilen = 8;           /* only the first 8 bytes quoted (RFC 792 minimum) */
        l4len = 8 + iihl + ilen;
        l4_csum(b, l, l4len, 1, false);
        break;
    }
    case K_LATER_FRAG:
    default: {
        uint8_t proto = s->ftcp ? 6 : 17;
        ihl = ip_header(b, s, proto, s->src, s->dst, s->optsel, (uint16_t)((s->frag % 185 + 1) | (s->frag & 0x2000)));
        l4len = 8 * (size_t)(s->payload % 16) + 8;
        memset(b + ihl, 0x77, l4len);
        break;
    }
    }
    ip_finish(b, ihl, ihl + l4len);
    return ihl + l4len;
}

/* the checksums a translated well-formed packet must still have */
static void verify(const struct spec *s, const uint8_t *b, size_t len, const struct np_pkt *p)
{
    if (p->verdict != NP_ACCEPT || !p->modified || s->len_tweak)
        return;
    CHECK(fold(sum16(b, (b[0] & 15) * 4u, 0)) == 0xffff, "IP header checksum broken by translation");
    bool pseudo_only = (p->flags & NP_PKT_CSUM_NOTREADY) && (p->flags & NP_PKT_GSO);
    if (s->kind == K_LATER_FRAG || s->kind == K_FIRST_FRAG)
        return;
    size_t ihl = (b[0] & 15) * 4u, l4len = len - ihl;
    const uint8_t *l = b + ihl;
    uint8_t proto = b[9];
    if (proto == 1) {
        CHECK(fold(sum16(l, l4len, 0)) == 0xffff, "ICMP checksum broken (kind %d flags %u)", s->kind, p->flags);
        if (s->kind >= K_ERR_TCP && s->kind <= K_ERR_ECHO) {
            const uint8_t *in = l + 8;
            size_t iihl = (in[0] & 15) * 4u;
            CHECK(fold(sum16(in, iihl, 0)) == 0xffff, "inner IP checksum broken");
            const uint8_t *il = in + iihl;
            size_t ilen = l4len - 8 - iihl;
            uint8_t ip = in[9];
            if (ip == 1 || (ip == 17 && get16(il + 6) != 0) || (ip == 6 && ilen >= 18 && s->itrunc % 3 != 1))
                CHECK(fold(sum16(il, ilen, ip == 1 ? 0 : pseudo(in, ip, ilen))) == 0xffff,
                      "inner L4 checksum broken (proto %u)", ip);
        }
        return;
    }
    if (pseudo_only)
        return;
    if (proto == 17 && get16(l + 6) == 0) {
        CHECK(s->udp_zero, "UDP checksum became zero");
        return;
    }
    CHECK(fold(sum16(l, l4len, pseudo(b, proto, l4len))) == 0xffff,
          "L4 checksum broken (proto %u flags %u)", proto, p->flags);
}

/* a template packet: every field from the bytes, addresses and ports from the tables */
static void spec_template(struct rd *r, struct spec *s)
{
    uint8_t k = u8(r);
    memset(s, 0, sizeof(*s));
    s->kind = k & 7;
    s->side = k >> 3 & 1;
    s->pflags = k >> 4 & 3;
    s->len_tweak = (k & 0xc0) == 0xc0 ? u8(r) : 0;
    s->src = addr_of(r);
    s->dst = addr_of(r);
    s->sport = port_of(r);
    s->dport = port_of(r);
    uint8_t f = u8(r);
    static const uint8_t tflags[8] = {0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x19};
    s->tcp_flags = f & 0x80 ? (f & 0x3f) : tflags[f & 7];
    s->wscale_opt = (f & 0x48) == 0x08;
    s->wscale = (uint8_t)(u8(r) % 18);
    s->optsel = u8(r);
    s->seq = u32(r);
    s->ack = u32(r);
    s->win = u16(r);
    s->ip_id = u16(r);
    s->frag = u16(r);
    s->payload = u8(r) % 64;
    s->udp_zero = f & 0x40;
    s->ftcp = s->optsel & 0x40;
    s->icmp_type = (uint8_t[]){8, 0, 3, 11, 12, 5, 13, 8}[u8(r) & 7];
    s->icmp_code = u8(r) & 3;
    if (s->kind >= K_ERR_TCP && s->kind <= K_ERR_ECHO) {
        s->icmp_type = (uint8_t[]){3, 11, 12, 3}[s->icmp_type & 3];
        s->isrc = addr_of(r);
        s->idst = addr_of(r);
        s->isport = port_of(r);
        s->idport = port_of(r);
        s->itype = u8(r) & 1 ? 0 : 8;
        s->itrunc = u8(r);
        if (s->kind == K_ERR_ECHO)
            s->idport = s->isport;
    }
    if (s->kind == K_ECHO && s->icmp_type > 8)
        s->icmp_type = 8;
}

/* a packet of a tracked flow, or an ICMP error about it, from a state the core exports */
static bool spec_state(struct np_core *c, struct rd *r, struct spec *s)
{
    uint32_t cursor = u16(r) % MAX_STATES;
    struct np_state_rec rec;
    if (!np_core_export(c, &cursor, &rec, 1)) {
        cursor = 0;
        if (!np_core_export(c, &cursor, &rec, 1))
            return false;
    }
    uint8_t m = u8(r);
    int d = m & 1;
    bool err = (m & 6) == 6;
    const struct np_key_rec *k = &rec.key[d];
    memset(s, 0, sizeof(*s));
    s->side = k->side;
    s->pflags = m >> 3 & 3;
    s->optsel = m & 0x20 ? u8(r) : 0;
    s->ip_id = u16(r);
    s->payload = u8(r) % 48;
    s->frag = m & 0x40 ? 0x4000 : 0;
    s->win = u16(r);
    s->wscale_opt = m & 0x80;
    s->wscale = u8(r) % 15;
    int16_t dseq = (int16_t)u16(r), dack = (int16_t)u16(r);
    s->seq = rec.peer[d].seqlo + (uint32_t)(int32_t)dseq;
    s->ack = rec.peer[1 - d].seqlo + (uint32_t)(int32_t)dack;
    uint8_t f = u8(r);
    static const uint8_t tflags[8] = {0x10, 0x18, 0x11, 0x19, 0x12, 0x04, 0x14, 0x02};
    s->tcp_flags = f & 0x80 ? (f & 0x3f) : tflags[f & 7];
    s->udp_zero = f & 0x40;
    if (!err) {
        s->kind = rec.proto == 6 ? K_TCP : rec.proto == 17 ? K_UDP : K_ECHO;
        s->src = k->src;
        s->dst = k->dst;
        s->sport = k->sport;
        s->dport = k->dport;
        s->icmp_type = f & 0x20 ? (uint8_t)(8 - 8 * d) : (uint8_t)(8 * d);  /* right or wrong way */
        if (rec.proto == 6 && (f & 0x30) == 0x30)
            s->kind = K_FIRST_FRAG, s->ftcp = true;
        return true;
    }
    /* an ICMP error in direction d quotes a packet that went the other way */
    s->kind = rec.proto == 6 ? K_ERR_TCP : rec.proto == 17 ? K_ERR_UDP : K_ERR_ECHO;
    s->src = f & 0x20 ? k->src : addrs[f & 15];
    s->dst = k->dst;
    s->icmp_type = (uint8_t[]){3, 11, 12, 3}[f >> 2 & 3];
    s->icmp_code = f & 3;
    s->isrc = k->dst;
    s->idst = k->src;
    s->isport = k->dport;
    s->idport = k->sport;
    s->itype = f & 0x10 ? 0 : 8;
    s->itrunc = u8(r);
    return true;
}

/* ---- running packets ---- */
static void run_spec(struct np_core *c, const struct spec *s)
{
    uint8_t tmp[1600];
    size_t n = build(tmp, s);
    size_t len = n;
    if (s->len_tweak) {
        uint8_t t = s->len_tweak;
        if (t & 0x80)
            len = n - (t & 0x7f) % (n + 1);  /* truncated buffer */
        else
            len = n + (t & 0x3f);           /* trailing bytes past totlen */
        if (t & 0x40)
            put16(tmp + 2, (uint16_t)(get16(tmp + 2) + (t & 7) - 4));
    }
    uint8_t *buf = malloc(len ? len : 1);
    memcpy(buf, tmp, len < n ? len : n);
    if (len > n)
        memset(buf + n, 0xee, len - n);
    struct np_pkt p = {.data = buf, .len = (uint32_t)len, .side = s->side,
                       .flags = (s->pflags & 1 ? NP_PKT_CSUM_NOTREADY : 0) | (s->pflags & 2 ? NP_PKT_GSO : 0)};
    np_core_process(c, &p);
    dump_before = tmp, dump_after = buf, dump_len = len < n ? len : n;
    verify(s, buf, len, &p);
    dump_after = NULL;
    free(buf);
}

static void op_raw(struct np_core *c, uint8_t fl, const uint8_t *d, size_t n)
{
    uint8_t *buf = malloc(n);   /* exactly n bytes: an over-read is an ASan report */
    if (n)
        memcpy(buf, d, n);
    struct np_pkt p = {.data = buf, .len = (uint32_t)n, .side = fl & 1,
                       .flags = (fl & 2 ? NP_PKT_CSUM_NOTREADY : 0) | (fl & 4 ? NP_PKT_GSO : 0)};
    if (fl & 8)
        np_core_process_batch(c, &p, 1);
    else
        np_core_process(c, &p);
    CHECK(p.verdict == NP_ACCEPT || p.reason != 0, "a drop without a reason");
    free(buf);
}

static void op_batch(struct np_core *c, struct rd *r)
{
    struct np_pkt pk[NP_BATCH_MAX];
    struct spec sp[48];
    uint8_t *bufs[48];
    size_t lens[48];
    uint32_t n = 0;
    while (r->n && n < 48) {
        uint8_t sel = u8(r);
        uint8_t sub = u8(r);
        struct rd sr = {r->p, sub < r->n ? sub : r->n};
        r->p += sr.n;
        r->n -= sr.n;
        if (!(sel & 1) || !spec_state(c, &sr, &sp[n]))
            spec_template(&sr, &sp[n]);
        sp[n].len_tweak = 0;
        uint8_t tmp[1600];
        lens[n] = build(tmp, &sp[n]);
        bufs[n] = malloc(lens[n]);
        memcpy(bufs[n], tmp, lens[n]);
        pk[n] = (struct np_pkt){.data = bufs[n], .len = (uint32_t)lens[n], .side = sp[n].side,
                                .flags = (sp[n].pflags & 1 ? NP_PKT_CSUM_NOTREADY : 0) |
                                         (sp[n].pflags & 2 ? NP_PKT_GSO : 0)};
        n++;
    }
    np_core_process_batch(c, pk, n);
    for (uint32_t i = 0; i < n; i++) {
        verify(&sp[i], bufs[i], lens[i], &pk[i]);
        free(bufs[i]);
    }
}

/* ---- replication ---- */
static void print_rec(const char *what, const struct np_state_rec *r)
{
    fprintf(stderr, "%s: id %llu creator %u proto %u tcp_state %u flags %u expire_in %u\n", what,
            (unsigned long long)r->id, r->creator, r->proto, r->tcp_state, r->flags, r->expire_in_ms);
    for (int d = 0; d < 2; d++)
        fprintf(stderr, "  key[%d] %u.%u.%u.%u:%u -> %u.%u.%u.%u:%u proto %u side %u\n", d,
                r->key[d].src >> 24, r->key[d].src >> 16 & 255, r->key[d].src >> 8 & 255, r->key[d].src & 255,
                r->key[d].sport, r->key[d].dst >> 24, r->key[d].dst >> 16 & 255, r->key[d].dst >> 8 & 255,
                r->key[d].dst & 255, r->key[d].dport, r->key[d].proto, r->key[d].side);
}

static void import_checked(struct np_core *to, const struct np_state_rec *rec, const char *what)
{
    int rc = np_core_import(to, rec);
    if (rc == NP_EINVAL) {
        print_rec(what, rec);
        FAIL("%s: the core emitted a record it refuses to import", what);
    }
}

/* flag 1: drained into wire records (np_core_journal_drain_wire) through buffers of exactly
 * the sizes the input asks for (ASan sees a write past them), then imported as the standby
 * does: the deletes first, then the inserts and updates */
static void op_drain_wire(struct rd *r)
{
    size_t caps[3] = {u16(r) % (8 * NP_WIRE_STATE_SIZE + 1), u16(r) % (8 * NP_WIRE_STATE_SIZE + 1),
                      u16(r) % (8 * NP_WIRE_DELETE_SIZE + 1)};
    uint8_t *bufs[3];
    for (int i = 0; i < 3; i++)
        bufs[i] = malloc(caps[i] ? caps[i] : 1);
    struct np_wire_drain d = {.inserts = bufs[0], .inserts_cap = caps[0], .updates = bufs[1],
                              .updates_cap = caps[1], .deletes = bufs[2], .deletes_cap = caps[2],
                              .skip_port = u8(r) & 1 ? 80 : 0};
    uint32_t before = np_core_journal_pending(F.a);
    uint32_t n = np_core_journal_drain_wire(F.a, &d);
    CHECK(n == d.n_inserts + d.n_updates + d.n_deletes, "drain_wire miscounted");
    CHECK(d.n_inserts <= caps[0] / NP_WIRE_STATE_SIZE && d.n_updates <= caps[1] / NP_WIRE_STATE_SIZE &&
          d.n_deletes <= caps[2] / NP_WIRE_DELETE_SIZE, "drain_wire wrote more than fits");
    CHECK(d.tcp + d.udp + d.icmp + d.other == d.n_inserts + d.n_updates && d.xlate <= d.tcp + d.udp +
          d.icmp + d.other, "drain_wire counted records it did not write");
    CHECK(np_core_journal_pending(F.a) <= before, "drain_wire grew the journal");
    int8_t rc[8];
    np_core_import_delete_wire(F.b, bufs[2], (size_t)d.n_deletes * NP_WIRE_DELETE_SIZE, rc);
    for (int k = 0; k < 2; k++) {
        uint32_t m = k ? d.n_updates : d.n_inserts;
        struct np_import_result res;
        np_core_import_wire_each(F.b, bufs[k], (size_t)m * NP_WIRE_STATE_SIZE, &res, rc);
        for (uint32_t i = 0; i < m; i++) {
            struct np_state_rec w;
            CHECK(np_wire_state_unpack(bufs[k] + i * NP_WIRE_STATE_SIZE, &w) == NP_OK,
                  "drain_wire wrote a record it cannot read");
            CHECK(rc[i] != NP_EINVAL, "the core drained a wire record it refuses to import");
            CHECK(!d.skip_port || w.proto != 6 || (w.key[0].dport != 80 && w.key[1].sport != 80),
                  "a skipped service port was drained");
        }
    }
    for (int i = 0; i < 3; i++)
        free(bufs[i]);
}

static void op_drain(struct rd *r)
{
    struct np_change ch[64];
    uint32_t max = u8(r) % 65;
    uint32_t n = np_core_journal_drain(F.a, ch, max ? max : 64);
    CHECK(n <= (max ? max : 64), "drain returned more than asked");
    for (uint32_t i = 0; i < n; i++) {
        if (ch[i].kind == NP_EV_DELETE)
            np_core_import_delete(F.b, ch[i].rec.creator, ch[i].rec.id);
        else {
            CHECK(ch[i].kind == NP_EV_CREATE || ch[i].kind == NP_EV_UPDATE, "bad change kind");
            import_checked(F.b, &ch[i].rec, "journal");
        }
    }
}

static void op_bulk(void)
{
    np_core_destroy(F.b);
    F.b = make_core(STANDBY_ID);
    static struct np_state_rec recs[256];
    uint32_t cursor = 0, n, total = 0;
    while ((n = np_core_export(F.a, &cursor, recs, 256)) > 0) {
        for (uint32_t i = 0; i < n; i++) {
            int rc = np_core_import(F.b, &recs[i]);
            if (rc != NP_OK)
                print_rec("bulk", &recs[i]);
            CHECK(rc == NP_OK, "bulk sync: import into a fresh standby failed with %d (id %llu "
                  "creator %u)", rc, (unsigned long long)recs[i].id, recs[i].creator);
        }
        total += n;
    }
    if (np_core_state_count(F.b) != total) {
        cursor = 0;
        while ((n = np_core_export(F.a, &cursor, recs, 256)) > 0)
            for (uint32_t i = 0; i < n; i++)
                print_rec("exported", &recs[i]);
    }
    CHECK(np_core_state_count(F.b) == total, "bulk sync: %u states exported, standby holds %u",
          total, np_core_state_count(F.b));
    /* the standby's copy reads back the same (timers to the second) */
    cursor = 0;
    while ((n = np_core_export(F.a, &cursor, recs, 64)) > 0)
        for (uint32_t i = 0; i < n; i++) {
            struct np_state_rec back;
            CHECK(np_core_get(F.b, recs[i].creator, recs[i].id, &back) == NP_OK, "bulk: state missing");
            CHECK(back.proto == recs[i].proto && back.tcp_state == recs[i].tcp_state &&
                  !memcmp(back.key, recs[i].key, sizeof(back.key)) &&
                  !memcmp(back.peer, recs[i].peer, sizeof(back.peer)) &&
                  back.bytes[0] == recs[i].bytes[0] && back.packets[1] == recs[i].packets[1],
                  "bulk: the standby's state differs");
        }
}

static void op_import(struct np_core *c, uint8_t fl, struct rd *r)
{
    struct np_state_rec rec;
    uint8_t raw[sizeof(rec)];
    for (size_t i = 0; i < sizeof(raw); i++)
        raw[i] = u8(r);
    memcpy(&rec, raw, sizeof(rec));
    if (fl & 1) {
        /* plausible: valid enums, addresses and ports from the tables */
        static const uint8_t protos[4] = {6, 17, 1, 6};
        rec.proto = protos[rec.proto & 3];
        rec.id = (rec.id % 5000) + 1;
        rec.creator = fl & 2 ? ACTIVE_ID : (fl & 4 ? STANDBY_ID : 3);
        rec.tcp_state = rec.proto == 6 ? (uint8_t)(rec.tcp_state % (NP_TCPS_COUNT - 1) + 1) : 0;
        rec.flags &= NP_SF_STATIC | NP_SF_PICKUP;
        rec.expire_in_ms %= 600000;
        for (int d = 0; d < 2; d++) {
            struct np_key_rec *k = &rec.key[d];
            k->proto = rec.proto;
            k->side &= 1;
            k->src = addrs[k->src & 15];
            k->dst = addrs[k->dst & 15];
            k->sport = ports[k->sport & 15];
            k->dport = ports[k->dport & 15];
            if (rec.proto == 1)
                k->dport = k->sport;
            rec.peer[d].flags &= 7;
            rec.peer[d].wscale &= 0x8f;
            if ((rec.peer[d].wscale & 15) > 14)
                rec.peer[d].wscale = 0x8e;
            if (rec.proto != 6)
                rec.peer[d].seqlo = rec.peer[d].seqhi = rec.peer[d].flags = 0;
        }
        if (fl & 8) {
            /* the mirror of key[0], as a translation would make it */
            rec.key[1] = (struct np_key_rec){.src = rec.key[0].dst, .dst = rec.key[1].dst,
                                             .sport = rec.key[0].dport, .dport = rec.key[1].dport,
                                             .proto = rec.proto, .side = (uint8_t)(rec.key[0].side ^ 1)};
            if (rec.proto == 1)
                rec.key[1].dport = rec.key[1].sport;
        }
    }
    np_core_import(c, &rec);
}

static void op_delete(uint8_t fl, struct rd *r)
{
    uint64_t id = u16(r) % 6000;
    uint32_t creator = fl & 1 ? ACTIVE_ID : fl & 2 ? 3 : STANDBY_ID;
    struct np_state_rec rec;
    switch (fl >> 2 & 3) {
    case 0: np_core_delete(F.a, creator, id); break;
    case 1: np_core_import_delete(F.a, creator, id); break;
    case 2: np_core_import_delete(F.b, creator, id); break;
    default:
        if (np_core_get(F.a, creator, id, &rec) == NP_OK)
            CHECK(rec.id == id && rec.creator == creator, "get returned another state");
    }
}

static void op_rules(uint8_t fl, struct rd *r)
{
    if (fl & 1 || F.nrules >= 24) {
        default_rules(F.a);
        F.nrules = 3;
        return;
    }
    struct np_rule ru = {.side = u8(r) % 4, .proto = (uint8_t[]){0, 1, 6, 17, 2}[u8(r) % 5],
                         .action = u8(r) % 3, .src = addr_of(r), .src_len = u8(r) % 34,
                         .dst = addr_of(r), .dst_len = u8(r) % 34};
    ru.dport_lo = u16(r);
    ru.dport_hi = u16(r);
    if (np_core_add_rule(F.a, &ru) == NP_OK)
        F.nrules++;
}

static void op_export(struct rd *r)
{
    struct np_state_rec recs[8];
    uint32_t cursor = u16(r) % (MAX_STATES + 8), start = cursor;
    uint32_t max = u8(r) % 9;
    uint32_t n = np_core_export(F.a, &cursor, recs, max);
    CHECK(n <= max && cursor >= start, "export cursor went backwards");
    for (uint32_t i = 0; i < n; i++) {
        struct np_state_rec g;
        CHECK(np_core_get(F.a, recs[i].creator, recs[i].id, &g) == NP_OK, "exported state not found by id");
    }
}

#define WIRE_EXPORT 1
#define WIRE_IMPORT 2
#define WIRE_BULK 4
#define WIRE_ACTIVE 8

static void wire_export(struct rd *r, uint8_t fl)
{
    static uint8_t buf[8 * NP_WIRE_STATE_SIZE];
    uint32_t cursor = u16(r) % (MAX_STATES + 8), start = cursor, skipped = 0;
    uint32_t max = u8(r) % 9;
    uint16_t skip = fl & WIRE_ACTIVE ? 80 : 0;
    uint32_t n = np_core_export_wire(F.a, &cursor, buf, max, skip, &skipped);
    CHECK(n <= max && (cursor == NP_CURSOR_END || cursor >= start), "wire export cursor went backwards");
    for (uint32_t i = 0; i < n; i++) {
        struct np_state_rec w, g;
        CHECK(np_wire_state_unpack(buf + i * NP_WIRE_STATE_SIZE, &w) == NP_OK,
              "the core wrote a wire record it cannot read");
        CHECK(np_core_get(F.a, w.creator, w.id, &g) == NP_OK, "wire-exported state not found by id");
        CHECK(!memcmp(w.key, g.key, sizeof(w.key)) && !memcmp(w.peer, g.peer, sizeof(w.peer)) &&
              w.proto == g.proto && w.tcp_state == g.tcp_state && w.flags == g.flags &&
              w.bytes[0] == g.bytes[0] && w.bytes[1] == g.bytes[1] &&
              w.packets[0] == g.packets[0] && w.packets[1] == g.packets[1],
              "the wire record differs from the state");
        CHECK(!skip || w.proto != 6 || (w.key[0].dport != skip && w.key[1].sport != skip),
              "a skipped service port was exported");
    }
    if (cursor == NP_CURSOR_END)
        CHECK(np_core_export_wire(F.a, &cursor, buf, 8, 0, NULL) == 0, "export after the end");
}

static void wire_import(struct rd *r, uint8_t fl)
{
    struct np_import_result res;
    size_t len = r->n;
    uint8_t *copy = malloc(len ? len : 1);  /* exactly len bytes: ASan sees over-reads */
    memcpy(copy, r->p, len);
    r->p += len;
    r->n = 0;
    uint32_t n = (uint32_t)(len / NP_WIRE_STATE_SIZE);
    uint32_t ok = np_core_import_wire(fl & WIRE_ACTIVE ? F.a : F.b, copy, len, &res);
    free(copy);
    CHECK(ok == res.imported && ok <= n, "wire import counted %u of %u", ok, n);
    CHECK(res.imported + res.invalid + res.conflict + res.full + res.other ==
          n + (len % NP_WIRE_STATE_SIZE ? 1 : 0), "wire import lost count of a record");
}

static void wire_bulk(void)
{
    static uint8_t buf[85 * NP_WIRE_STATE_SIZE];
    np_core_destroy(F.b);
    F.b = make_core(STANDBY_ID);
    uint32_t cursor = 0, total = 0, n;
    while ((n = np_core_export_wire(F.a, &cursor, buf, 85, 0, NULL)) > 0) {
        struct np_import_result res;
        CHECK(np_core_import_wire(F.b, buf, (size_t)n * NP_WIRE_STATE_SIZE, &res) == n,
              "wire bulk: %u of %u imported (invalid %u conflict %u full %u)", res.imported, n,
              res.invalid, res.conflict, res.full);
        total += n;
    }
    CHECK(cursor == NP_CURSOR_END, "wire bulk: export stopped early");
    /* the active's count includes zombies (deleted, not yet journaled): never exported */
    CHECK(total <= np_core_state_count(F.a) && np_core_state_count(F.b) == total,
          "wire bulk: %u exported of %u, standby holds %u", total, np_core_state_count(F.a),
          np_core_state_count(F.b));
}

static void advance(uint64_t ms)
{
    F.now_ms += ms;
    np_core_set_clock(F.a, F.now_ms);
    np_core_set_clock(F.b, F.now_ms);
}

/* after a full sweep nothing expired may stay in the table */
__attribute__((no_sanitize("coverage")))
static void check_swept(struct np_core *c)
{
    for (uint32_t i = 0; i < c->cfg.max_states; i++) {
        const struct np_state *s = &c->states[i];
        /* a state due this very second may wait for the next one (the wheel slot after
         * wheel_done); lookups already treat it as expired */
        CHECK(s->live != 1 || s->expire >= c->now_s, "a full sweep left expired state slot %u "
              "(expire %u now %u wheel_done %u wheel_slot %u)", i, s->expire, c->now_s,
              c->wheel_done, s->wheel_slot);
    }
}

/* ---- structural invariants of one core ---- */
__attribute__((no_sanitize("coverage", "address", "undefined")))
static void check_core(struct np_core *c)
{
    uint32_t max = c->cfg.max_states, live = 0, zombies = 0, freecount = 0;
    static uint8_t mark[MAX_STATES];
    static uint32_t refs[MAX_STATES];
    memset(mark, 0, sizeof(mark));
    memset(refs, 0, sizeof(refs));
    for (uint32_t f = c->free_head; f; f = c->states[f - 1].tnext) {
        CHECK(f <= c->fresh && !mark[f - 1], "free list broken at %u (fresh %u)", f, c->fresh);
        CHECK(c->states[f - 1].live == 0, "a used slot %u on the free list", f - 1);
        mark[f - 1] = 1;
        freecount++;
    }
    for (uint32_t i = 0; i < max; i++) {
        const struct np_state *s = &c->states[i];
        if (s->live == 1)
            live++;
        else if (s->live == 2)
            zombies++;
        else if (i >= c->fresh)     /* never handed out: neither used nor on the free list */
            CHECK(s->live == 0 && !mark[i], "slot %u beyond fresh %u (live %u)", i, c->fresh, s->live);
        else
            CHECK(s->live == 0 && mark[i], "slot %u neither used nor free (live %u)", i, s->live);
        CHECK(s->live == 0 || i < c->fresh, "a used slot %u beyond fresh %u", i, c->fresh);
    }
    CHECK(c->fresh <= max, "fresh %u beyond %u slots", c->fresh, max);
    CHECK(live + zombies == c->nstates, "nstates %u, live %u + zombies %u", c->nstates, live, zombies);
    CHECK(freecount + c->nstates == c->fresh, "free %u + used %u != fresh %u", freecount, c->nstates,
          c->fresh);
    /* key hash: every chain ends, every ref is a live state's key in its bucket */
    uint32_t kseen = 0;
    for (uint32_t b = 0; b <= c->kmask; b++) {
        uint32_t steps = 0;
        for (uint32_t ref = c->kbuckets[b]; ref; ) {
            uint32_t slot = (ref - 1) >> 1, d = (ref - 1) & 1;
            CHECK(slot < max && ++steps <= 2 * max, "key chain %u broken", b);
            const struct np_state *s = &c->states[slot];
            CHECK(s->live == 1, "key chain %u holds slot %u (live %u)", b, slot, s->live);
            CHECK((np_key_hash(&s->key[d], c->cfg.hash_seed) & c->kmask) == b, "key in the wrong bucket");
            kseen++;
            ref = s->hnext[d];
        }
    }
    CHECK(kseen == 2 * live, "key hash holds %u refs for %u live states", kseen, live);
    uint32_t iseen = 0;
    for (uint32_t b = 0; b <= c->imask; b++) {
        uint32_t steps = 0;
        for (uint32_t ref = c->ibuckets[b]; ref; ref = c->states[ref - 1].idnext) {
            CHECK(ref <= max && ++steps <= max, "id chain %u broken", b);
            CHECK(c->states[ref - 1].live == 1, "id chain holds a dead slot");
            iseen++;
        }
    }
    CHECK(iseen == live, "id hash holds %u for %u live states", iseen, live);
    /* timer wheel: every live state exactly once, links consistent, never due after its expiry */
    uint32_t wseen = 0;
    memset(mark, 0, sizeof(mark));
    for (uint32_t w = 0; w < NP_WHEEL_SLOTS; w++) {
        uint32_t prev = 0;
        for (uint32_t ref = c->wheel[w]; ref; ref = c->states[ref - 1].tnext) {
            CHECK(ref <= max && !mark[ref - 1], "wheel slot %u broken or cyclic", w);
            const struct np_state *s = &c->states[ref - 1];
            mark[ref - 1] = 1;
            CHECK(s->live == 1, "wheel holds slot %u with live %u", ref - 1, s->live);
            CHECK(s->tprev == prev && s->wheel_slot == w, "wheel links of slot %u wrong", ref - 1);
            uint32_t due = c->wheel_done + 1 + ((w - (c->wheel_done + 1)) & (NP_WHEEL_SLOTS - 1));
            uint32_t latest = s->expire > c->wheel_done + 1 ? s->expire : c->wheel_done + 1;
            CHECK(due <= latest, "slot %u sits in wheel slot %u due %u after its expiry %u",
                  ref - 1, w, due, s->expire);
            prev = ref;
            wseen++;
        }
    }
    CHECK(wseen == live, "wheel holds %u of %u live states", wseen, live);
    /* mappings: references, chains, port bits */
    static uint8_t mfree[MAX_STATES];
    memset(mfree, 0, sizeof(mfree));
    uint32_t nfree = 0;
    for (uint32_t m = c->map_free; m; m = c->maps[m - 1].next_in) {
        CHECK(m <= c->maps_fresh && !mfree[m - 1], "mapping free list broken");
        mfree[m - 1] = 1;
        nfree++;
    }
    CHECK(c->maps_fresh <= c->maps_cap, "maps_fresh %u beyond %u", c->maps_fresh, c->maps_cap);
    CHECK(nfree + c->nmaps == c->maps_fresh, "mappings: %u free + %u used != fresh %u", nfree,
          c->nmaps, c->maps_fresh);
    for (uint32_t i = 0; i < max; i++) {
        const struct np_state *s = &c->states[i];
        if (s->live != 1) {
            CHECK(s->mapping == 0, "a dead slot %u keeps a mapping", i);
            continue;
        }
        if (s->mapping) {
            CHECK(s->mapping <= c->maps_cap && !mfree[s->mapping - 1], "state %u refers to a free mapping", i);
            const struct np_mapping *mp = &c->maps[s->mapping - 1];
            refs[s->mapping - 1]++;
            CHECK(mp->in_addr == s->key[0].src && mp->in_port == s->key[0].sport &&
                  mp->out_addr == s->key[1].dst && mp->out_port == s->key[1].dport &&
                  mp->proto == s->key[0].proto, "state %u and its mapping disagree", i);
        }
    }
    uint64_t want_bits[3][2][1024];
    memset(want_bits, 0, sizeof(want_bits));
    for (uint32_t i = 0; i < c->nstatics; i++) {
        const struct np_static *st = &c->statics[i];
        int p = st->proto == 6 ? 0 : st->proto == 17 ? 1 : st->proto == 1 ? 2 : -1;
        for (uint32_t a = 0; a < c->cfg.pool_count && p >= 0; a++)
            if (c->cfg.pool[a] == st->outside_addr) {
                uint16_t port = ntohs(st->outside_port);
                want_bits[p][a][port >> 6] |= 1ull << (port & 63);
            }
    }
    for (uint32_t m = 0; m < c->maps_fresh; m++) {   /* beyond: never handed out */
        if (mfree[m])
            continue;
        const struct np_mapping *mp = &c->maps[m];
        CHECK(mp->refs == refs[m], "mapping %u has %u refs, %u states use it", m, mp->refs, refs[m]);
        bool in_found = false, out_found = false;
        uint32_t h;
        uint64_t w = (uint64_t)mp->in_addr << 32 | (uint64_t)mp->in_port << 8 | mp->proto;
        h = (uint32_t)np_mix64(w ^ c->cfg.hash_seed) & c->mmask;
        for (uint32_t ref = c->min_buckets[h], n = 0; ref && n <= c->maps_cap; ref = c->maps[ref - 1].next_in, n++)
            in_found |= ref == m + 1;
        w = (uint64_t)mp->out_addr << 32 | (uint64_t)mp->out_port << 8 | mp->proto;
        h = (uint32_t)np_mix64(w ^ c->cfg.hash_seed) & c->mmask;
        for (uint32_t ref = c->mout_buckets[h], n = 0; ref && n <= c->maps_cap; ref = c->maps[ref - 1].next_out, n++)
            out_found |= ref == m + 1;
        CHECK(in_found && out_found, "mapping %u missing from its hash chains", m);
        int p = mp->proto == 6 ? 0 : mp->proto == 17 ? 1 : mp->proto == 1 ? 2 : -1;
        for (uint32_t a = 0; a < c->cfg.pool_count && p >= 0; a++)
            if (c->cfg.pool[a] == mp->out_addr) {
                uint16_t port = ntohs(mp->out_port);
                CHECK(!(want_bits[p][a][port >> 6] >> (port & 63) & 1), "two owners of one pool port");
                want_bits[p][a][port >> 6] |= 1ull << (port & 63);
            }
    }
    for (int p = 0; p < 3; p++)
        for (uint32_t a = 0; a < c->cfg.pool_count; a++)
            CHECK(!memcmp(want_bits[p][a], c->port_bits[p][a], sizeof(want_bits[p][a])),
                  "port bitmap of pool address %u proto %d differs from the mappings (leak or double use)", a, p);
}

/* ---- the target ---- */
enum { OP_RAW, OP_TEMPLATE, OP_STATE, OP_BATCH, OP_CLOCK, OP_SWEEP, OP_DRAIN, OP_RESEND,
       OP_BULK, OP_IMPORT, OP_DELETE, OP_RULES, OP_JOURNAL, OP_EXPORT, OP_TEMPLATE2, OP_STATE2 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (F.fresh || F.now_ms > CLOCK_RESET_MS || ++F.inputs % 100000 == 0)
        reset_cores();
    while (size >= 3) {
        uint8_t op = data[0];
        size_t len = data[1] | (size_t)data[2] << 8;
        data += 3;
        size -= 3;
        if (len > size)
            len = size;
        struct rd r = {data, len};
        uint8_t fl = op >> 4;
        struct spec s;
        switch (op & 15) {
        case OP_RAW:
            op_raw(F.a, fl, data, len);
            break;
        case OP_TEMPLATE:
        case OP_TEMPLATE2:
            spec_template(&r, &s);
            run_spec(F.a, &s);
            break;
        case OP_STATE:
        case OP_STATE2:
            if (spec_state(F.a, &r, &s))
                run_spec(F.a, &s);
            break;
        case OP_BATCH:
            op_batch(F.a, &r);
            break;
        case OP_CLOCK: {
            uint32_t v = u32(&r);
            uint64_t ms = fl & 8 ? (uint64_t)(v % 8192) * 1000 : fl & 4 ? v % 600000 : v % 5000;
            advance(ms);
            if (fl & 1) {
                np_core_sweep(F.a, 0);
                check_swept(F.a);
            }
            break;
        }
        case OP_SWEEP: {
            uint32_t max = u16(&r);
            np_core_sweep(fl & 1 ? F.b : F.a, max % 64);
            if (max % 64 == 0)
                check_swept(fl & 1 ? F.b : F.a);
            break;
        }
        case OP_DRAIN:
            if (fl & 1)
                op_drain_wire(&r);
            else
                op_drain(&r);
            break;
        case OP_RESEND:
            np_core_resend_scan(F.a, fl ? fl : u16(&r));
            break;
        case OP_BULK:
            op_bulk();
            break;
        case OP_IMPORT:
            op_import(F.a, fl, &r);
            break;
        case OP_DELETE:
            op_delete(fl, &r);
            break;
        case OP_RULES:
            op_rules(fl, &r);
            break;
        case OP_JOURNAL:
            np_core_set_journal(F.a, !(fl & 1));
            break;
        case OP_EXPORT:
            if (fl & WIRE_EXPORT)
                wire_export(&r, fl);
            else if (fl & WIRE_IMPORT)
                wire_import(&r, fl);
            else if (fl & WIRE_BULK)
                wire_bulk();
            else
                op_export(&r);
            break;
        }
        data += len;
        size -= len;
    }
    np_core_set_journal(F.a, 1);
    check_core(F.a);
    check_core(F.b);
    return 0;
}
