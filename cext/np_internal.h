/*
 * np_internal.h: the core's private types, shared by the cext/np_*.c files.
 *
 * Names: a "key" is one lookup tuple of a state (struct np_key, 16 bytes,
 * two 64-bit words, network byte order); a "ref" names one key of one state
 * as (slot << 1 | dir) + 1, 0 meaning none; a "mapping" is one NAT binding
 * inside endpoint <-> outside endpoint, shared by every state of that
 * endpoint (endpoint-independent mapping).
 */
#ifndef NP_INTERNAL_H
#define NP_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "natpair.h"

#define NP_LIKELY(x) __builtin_expect(!!(x), 1)
#define NP_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* ---- counters: one per drop reason and per outcome ---- */
#define NP_COUNTERS(X) \
    X(NONE) \
    X(PKT_IN) X(PKT_ACCEPT) X(PKT_DROP) X(PKT_TRANSLATED) \
    X(DROP_SHORT) X(DROP_VERSION) X(DROP_IHL) X(DROP_TOTLEN) X(DROP_IP_OPTIONS) \
    X(DROP_PROTO) X(DROP_L4_SHORT) X(DROP_TCP_DOFF) X(DROP_TCP_FLAGS) \
    X(DROP_FRAG_UNTRACKED) X(DROP_FRAG_SHORT) \
    X(DROP_ICMP_TYPE) X(DROP_ICMP_INNER) X(DROP_ICMP_NO_STATE) X(DROP_ICMP_DIR) \
    X(DROP_NO_STATE) X(DROP_POLICY) X(DROP_TABLE_FULL) X(DROP_NAT_EXHAUSTED) \
    X(DROP_TCP_WINDOW) X(DROP_TCP_TRANSITION) X(DROP_LAND) X(DROP_KEY_CLASH) \
    X(STATE_CREATED) X(STATE_EXPIRED) X(STATE_DELETED) X(STATE_REUSED) \
    X(TCP_PICKUP) X(TCP_LOOSE_ACCEPT) \
    X(MAPPING_CREATED) X(MAPPING_FREED) \
    X(FRAG_FIRST) X(FRAG_TRANSLATED) \
    X(JOURNAL_EVENTS) X(JOURNAL_OVERFLOW) X(JOURNAL_RESENT) \
    X(IMPORT_INSERT) X(IMPORT_UPDATE) X(IMPORT_DELETE) X(IMPORT_INVALID) \
    X(IMPORT_CONFLICT) X(IMPORT_TABLE_FULL) X(IMPORT_NOT_FOUND) \
    X(SWEEP_RUNS) X(SWEEP_EXPIRED)

enum np_counter {
#define NP_CTR_ENUM(name) NP_CTR_##name,
    NP_COUNTERS(NP_CTR_ENUM)
#undef NP_CTR_ENUM
    NP_CTR_COUNT
};

/* ---- keys ---- */
struct np_key {
    uint32_t src, dst;          /* network order */
    uint16_t sport, dport;      /* network order */
    uint8_t proto, side;
    uint16_t pad;               /* always 0: keys compare as two words */
};
_Static_assert(sizeof(struct np_key) == 16, "np_key is two 64-bit words");

static inline bool np_key_eq(const struct np_key *a, const struct np_key *b)
{
    uint64_t a0, a1, b0, b1;
    memcpy(&a0, a, 8); memcpy(&a1, (const uint8_t *)a + 8, 8);
    memcpy(&b0, b, 8); memcpy(&b1, (const uint8_t *)b + 8, 8);
    return ((a0 ^ b0) | (a1 ^ b1)) == 0;
}

static inline uint64_t np_mix64(uint64_t h)
{
    h ^= h >> 33; h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* the key's two words, each keyed by the seed, multiplied 64 x 64 -> 128 and the
 * halves folded (wyhash's "mum"): every output bit depends on every input bit,
 * in one multiply instead of the four of two np_mix64 */
static inline uint64_t np_key_hash(const struct np_key *k, uint64_t seed)
{
    uint64_t w0, w1;
    memcpy(&w0, k, 8); memcpy(&w1, (const uint8_t *)k + 8, 8);
    unsigned __int128 p = (unsigned __int128)(w0 ^ seed ^ 0xa0761d6478bd642fULL) *
                          (w1 ^ ((seed << 32) | (seed >> 32)) ^ 0xe7037ed1a0b428dbULL);
    return (uint64_t)p ^ (uint64_t)(p >> 64);
}

/* ---- TCP peer (one direction's window) ---- */
#define NP_PEER_FIN 1
#define NP_PEER_FIN_ACKED 2
#define NP_PEER_SEEN 4
#define NP_WSCALE_FLAG 0x80
#define NP_WSCALE_MASK 0x0f

struct np_peer {
    uint32_t seqlo, seqhi;
    uint16_t max_win;
    uint8_t wscale, flags;
};

/* ---- state ---- */
#define NP_JF_PENDING 1         /* an event for this state sits in the ring */
#define NP_JF_RESEND 2          /* lost to a full ring: resend CREATE/UPDATE */
#define NP_JF_RESEND_DELETE 4   /* deleted while the ring was full: zombie slot */

struct np_state {
    /* hot: read or written by every packet of an established flow (bytes 0..103,
     * inside the two cache lines of the record) */
    struct np_key key[2];       /* [0] initiator's packets, [1] responder's */
    uint32_t hnext[2];          /* key hash chains (refs) */
    uint32_t expire;            /* core seconds */
    uint32_t jexpire;           /* expire as last journaled: idle timers replicate too */
    struct np_peer peer[2];
    uint8_t tcp_state;
    uint8_t tmo;                /* enum np_timeout */
    uint8_t sflags;             /* NP_SF_* */
    _Atomic uint8_t jflags;     /* NP_JF_* */
    uint32_t packets[2];
    uint32_t mapping;           /* mapping index + 1, 0 = none */
    uint64_t bytes[2];
    /* cold: new flows, deletion, timers, replication */
    uint64_t id;
    uint32_t idnext;            /* id hash chain (slot + 1) */
    uint32_t tnext, tprev;      /* timer wheel list (slot + 1) */
    uint16_t wheel_slot;
    uint8_t live;
    uint8_t pad;
};
#define NP_STATE_HOT_END offsetof(struct np_state, id)
/* 128 bytes in a 128-byte aligned pool: the hot part of every slot is two cache
 * lines, one aligned pair (the adjacent-line prefetcher's unit), never three */
_Static_assert(sizeof(struct np_state) == 128, "state record budget");
_Static_assert(NP_STATE_HOT_END <= 128, "hot fields of a state");

/* the coldest fields of a state, beside the pool (c->sext[slot]): read by
 * replication and export only, so they do not push the record past 128 bytes */
struct np_state_ext {
    uint32_t creator;
    uint32_t created;           /* core seconds */
};

/* ---- NAT mapping (endpoint-independent) ---- */
struct np_mapping {
    uint32_t in_addr, out_addr; /* network order */
    uint16_t in_port, out_port; /* network order */
    uint8_t proto, is_static;
    uint16_t pad;
    uint32_t refs;
    uint32_t next_in, next_out; /* hash chains (index + 1) */
};
_Static_assert(sizeof(struct np_mapping) == 28, "mapping budget");

/* ---- journal ring (single producer, single consumer) ---- */
struct np_event {
    uint64_t id;
    uint32_t creator;
    uint32_t slot;
    uint8_t kind;
    uint8_t pad[7];
};
_Static_assert(sizeof(struct np_event) == 24, "journal event size");

struct np_journal {
    struct np_event *ring;
    uint32_t mask;
    _Atomic uint32_t head;      /* producer writes */
    _Atomic uint32_t tail;      /* consumer writes */
};

/* ---- parsed packet ---- */
struct np_l4 {
    uint16_t off;               /* offset of the L4 header in the buffer */
    uint16_t len;               /* L4 bytes present (header + data) */
    uint8_t proto;
};

struct np_parsed {
    uint16_t ihl;               /* IP header bytes */
    uint16_t totlen;            /* IP total length used */
    uint16_t frag_off;          /* fragment offset in 8-byte units */
    uint8_t more_frags;
    uint8_t is_frag;            /* offset != 0 or MF */
    uint8_t proto;
    uint8_t tcp_flags;
    uint8_t tcp_hlen;
    uint8_t icmp_type, icmp_code;
    uint8_t icmp_error;         /* an ICMP error carrying an inner datagram */
    int8_t wscale;              /* -1 if no window scale option */
    uint8_t pad;
    uint16_t win;
    uint16_t ip_id;
    uint32_t seq, ack;
    uint32_t payload;           /* TCP/UDP data bytes */
    struct np_l4 l4;
    struct np_key key;          /* as received; side filled by the caller */
    /* ICMP error: the embedded datagram */
    uint16_t inner_ip;          /* offset of the inner IP header */
    uint16_t inner_ihl;
    struct np_l4 inner_l4;      /* len may be as short as 8 */
    uint8_t inner_icmp_type;
};

/* ---- fragment cache: first fragment's state, for the later fragments ---- */
#define NP_FRAG_SLOTS 1024
struct np_frag {
    uint32_t src, dst;
    uint16_t ip_id;
    uint8_t proto, dir;
    uint32_t slot;              /* state slot + 1 */
    uint64_t state_id;
    uint32_t expire;            /* core seconds */
};

/* ---- access rules ---- */
#define NP_RULES_MAX 1024
#define NP_STATICS_MAX 1024

/* ---- timer wheel ---- */
#define NP_WHEEL_SLOTS 4096     /* one slot per second: 68 minutes, longer timers cascade */

struct np_core {
    struct np_config cfg;
    uint64_t now_ms;
    uint32_t now_s;
    uint64_t counters[NP_CTR_COUNT];

    /* state pool */
    struct np_state *states;    /* 128-byte aligned, inside states_raw */
    void *states_raw;
    struct np_state_ext *sext;  /* [slot]: creator, created */
    uint32_t nstates;           /* live + zombie */
    uint32_t free_head;         /* slot + 1: the released slots, last released first */
    uint32_t fresh;             /* slots [0, fresh) were handed out once; the rest never
                                 * touched (no page of the pool is written before a state
                                 * needs it: a start does not cost max_states) */
    uint64_t next_id;

    /* key hash: 2 refs per state */
    uint32_t *kbuckets;
    uint32_t kmask;
    /* id hash */
    uint32_t *ibuckets;
    uint32_t imask;

    /* timer wheel */
    uint32_t wheel[NP_WHEEL_SLOTS];     /* slot + 1 of list head */
    uint32_t wheel_done;                /* last second swept */

    /* NAT */
    struct np_mapping *maps;
    uint32_t nmaps, maps_cap, map_free;  /* map_free: index + 1 */
    uint32_t maps_fresh;        /* maps [0, maps_fresh) were handed out once (as fresh) */
    uint32_t *min_buckets, *mout_buckets;
    uint32_t mmask;
    uint64_t *port_bits[3][NP_POOL_MAX];  /* [tcp, udp, icmp][pool addr] used ports */
    uint32_t port_rng;
    struct np_static statics[NP_STATICS_MAX];   /* network order */
    uint32_t nstatics;

    struct np_rule rules[NP_RULES_MAX];         /* network order */
    uint32_t nrules;

    struct np_frag frags[NP_FRAG_SLOTS];

    struct np_journal journal;
    bool journal_on;
    uint64_t tcp_grace_until_ms;   /* np_core_set_tcp_grace: loose TCP windows until then */
    bool resend_needed;
    uint32_t resend_cursor;
    uint32_t zombies;           /* states whose DELETE waits for room in the ring */
    uint32_t tmo_s[NP_TMO_COUNT];

    size_t mem;
};

static inline void np_count(struct np_core *c, enum np_counter k) { c->counters[k]++; }

static inline struct np_state *np_slot_state(struct np_core *c, uint32_t slot) { return &c->states[slot]; }
static inline uint32_t np_state_slot(struct np_core *c, const struct np_state *s)
{
    return (uint32_t)(s - c->states);
}
static inline struct np_state_ext *np_state_ext(struct np_core *c, const struct np_state *s)
{
    return &c->sext[s - c->states];
}

/* ---- np_csum.c (RFC 1071 / RFC 1624) ---- */
static inline uint32_t np_csum_add16(uint32_t sum, uint16_t from, uint16_t to)
{
    return sum + (uint16_t)~from + to;
}
static inline uint32_t np_csum_add32(uint32_t sum, uint32_t from, uint32_t to)
{
    return sum + (uint16_t)~(from >> 16) + (uint16_t)~(from & 0xffff) + (to >> 16) + (to & 0xffff);
}
static inline uint16_t np_csum_fold(uint32_t sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}
/* finished checksum: new = ~fold(~old + sum of (~from + to)) */
static inline uint16_t np_csum_patch(uint16_t old, uint32_t delta)
{
    return (uint16_t)~np_csum_fold((uint16_t)~old + delta);
}
/* partial (pseudo-header) checksum left for the kernel: new = fold(old + delta) */
static inline uint16_t np_csum_patch_partial(uint16_t old, uint32_t delta)
{
    return np_csum_fold((uint32_t)old + delta);
}
uint32_t np_csum_sum(const uint8_t *p, uint32_t len, uint32_t sum);
uint16_t np_csum_l4_full(const uint8_t *ip, const uint8_t *l4, uint32_t l4len, uint8_t proto);

/* ---- np_parse.c ---- */
int np_parse(struct np_core *c, const uint8_t *pkt, uint32_t len, struct np_parsed *pp);

/* ---- np_table.c ---- */
int np_table_init(struct np_core *c);
void np_table_free(struct np_core *c);
static inline struct np_state *np_table_lookup(struct np_core *c, const struct np_key *k, uint64_t hash, int *dir)
{
    uint32_t ref = c->kbuckets[hash & c->kmask];
    while (ref) {
        uint32_t slot = (ref - 1) >> 1, d = (ref - 1) & 1;
        struct np_state *s = &c->states[slot];
        if (np_key_eq(&s->key[d], k)) {
            *dir = (int)d;
            return s;
        }
        ref = s->hnext[d];
    }
    return NULL;
}
struct np_state *np_table_alloc(struct np_core *c);
static inline bool np_table_full(const struct np_core *c)
{
    return !c->free_head && c->fresh >= c->cfg.max_states;
}
void np_table_insert(struct np_core *c, struct np_state *s);
void np_table_unlink_keys(struct np_core *c, struct np_state *s);
void np_table_release(struct np_core *c, struct np_state *s);
struct np_state *np_table_find_id(struct np_core *c, uint32_t creator, uint64_t id);
void np_timer_set(struct np_core *c, struct np_state *s, uint32_t expire);
void np_timer_unlink(struct np_core *c, struct np_state *s);
uint32_t np_timer_sweep(struct np_core *c, uint32_t max);

/* ---- np_nat.c ---- */
int np_nat_init(struct np_core *c);
void np_nat_free(struct np_core *c);
int np_nat_add_static(struct np_core *c, const struct np_static *s);
enum np_xlate { NP_XLATE_NONE, NP_XLATE_STATIC, NP_XLATE_DYNAMIC, NP_XLATE_FAIL };
/* outbound: the outside endpoint for an inside source. DYNAMIC sets *map
 * (index + 1) with a reference taken; FAIL sets *why */
enum np_xlate np_nat_map_outbound(struct np_core *c, uint8_t proto, uint32_t addr, uint16_t port,
                                  uint32_t *out_addr, uint16_t *out_port, uint32_t *map,
                                  enum np_counter *why);
/* inbound: a static translation of an outside destination; true if one applies */
bool np_nat_static_inbound(struct np_core *c, uint8_t proto, uint32_t addr, uint16_t port,
                           uint32_t *in_addr, uint16_t *in_port);
/* the mapping that owns an outside endpoint (hairpinning), index + 1 or 0 */
uint32_t np_nat_find_outside(struct np_core *c, uint8_t proto, uint32_t addr, uint16_t port);
/* true if this inside -> outside translation is one of the static rules */
bool np_nat_is_static(struct np_core *c, uint8_t proto, uint32_t in_addr, uint16_t in_port,
                      uint32_t out_addr, uint16_t out_port);
/* take (or make) the mapping of an imported state; index + 1, 0 on conflict */
uint32_t np_nat_map_import(struct np_core *c, uint8_t proto, uint32_t in_addr, uint16_t in_port,
                           uint32_t out_addr, uint16_t out_port);
void np_nat_ref(struct np_core *c, uint32_t m);
void np_nat_unref(struct np_core *c, uint32_t m);
bool np_nat_is_pool_addr(struct np_core *c, uint32_t addr);

/* ---- np_policy.c ---- */
int np_policy_add(struct np_core *c, const struct np_rule *r);
/* returns NP_RULE_ALLOW / NP_RULE_DENY, or -1 when no rule matched */
int np_policy_check(struct np_core *c, uint8_t side, uint8_t proto, uint32_t src, uint32_t dst,
                    uint16_t dport);

/* ---- np_tcp.c ---- */
void np_tcp_init(struct np_core *c, struct np_state *s, const struct np_parsed *pp, bool pickup);
/* returns 0 (accept) or the counter of the drop reason */
enum np_counter np_tcp_track(struct np_core *c, struct np_state *s, const struct np_parsed *pp,
                             int dir, bool *changed);

/* np_tcp_track's answer for the common packet, inline: a plain ACK (no SYN, FIN
 * or RST) of an ESTABLISHED connection whose ends were both seen, the receiving
 * end with no FIN, and in the window. The same arithmetic as np_tcp_track's for
 * that case; true if it accepted the packet (and updated the window), false if
 * the caller must ask np_tcp_track (nothing has been changed then). */
static inline bool np_tcp_track_fast(struct np_state *s, const struct np_parsed *pp, int dir,
                                     bool *changed)
{
    struct np_peer *src = &s->peer[dir], *dst = &s->peer[1 - dir];
    if ((pp->tcp_flags & (0x01 | 0x02 | 0x04 | 0x10)) != 0x10 ||     /* FIN SYN RST / ACK */
        s->tcp_state != NP_TCPS_ESTABLISHED || !(src->flags & NP_PEER_SEEN) ||
        (dst->flags & (NP_PEER_SEEN | NP_PEER_FIN)) != NP_PEER_SEEN)
        return false;
    uint32_t sws = 0, dws = 0;
    if ((src->wscale & NP_WSCALE_FLAG) && (dst->wscale & NP_WSCALE_FLAG)) {
        sws = src->wscale & NP_WSCALE_MASK;
        dws = dst->wscale & NP_WSCALE_MASK;
    }
    uint32_t seq = pp->seq, ack = pp->ack, win = pp->win;
    uint32_t end = seq + pp->payload;
    if (seq == end)
        seq = end = src->seqlo;         /* no data: ease the sequencing restrictions */
    int32_t ackskew = (int32_t)(dst->seqlo - ack);
    const int32_t maxack = 0xffff + 1500;   /* MAXACKWINDOW */
    if (!((int32_t)(src->seqhi - end) >= 0 &&
          (int32_t)(seq - (src->seqlo - ((uint32_t)dst->max_win << dws))) >= 0 &&
          ackskew >= -maxack && ackskew <= (maxack << sws)))
        return false;
    bool chg = false;
    if (win > src->max_win) {
        src->max_win = (uint16_t)win;
        chg = true;
    }
    if ((int32_t)(end - src->seqlo) > 0) {
        src->seqlo = end;
        chg = true;
    }
    uint32_t room = win << sws;
    if ((int32_t)(ack + room - dst->seqhi) >= 0) {
        uint32_t hi = ack + (room ? room : 1);
        chg |= hi != dst->seqhi;
        dst->seqhi = hi;
    }
    if (chg)
        *changed = true;
    return true;
}
/* inline: the hit path asks it for every TCP packet */
static inline enum np_timeout np_tcp_timeout(uint8_t st)
{
    switch (st) {
    case NP_TCPS_ESTABLISHED: return NP_TMO_TCP_ESTABLISHED;
    case NP_TCPS_FIN_WAIT:
    case NP_TCPS_CLOSE_WAIT:
    case NP_TCPS_LAST_ACK: return NP_TMO_TCP_CLOSING;
    case NP_TCPS_TIME_WAIT: return NP_TMO_TCP_TIME_WAIT;
    case NP_TCPS_CLOSED: return NP_TMO_TCP_CLOSED;
    default: return NP_TMO_TCP_EMBRYONIC;
    }
}
static inline bool np_tcp_flags_valid(uint8_t f)
{
    /* 0x01 FIN, 0x02 SYN, 0x04 RST, 0x10 ACK */
    if (!(f & (0x02 | 0x04 | 0x10)))
        return false;           /* no flags, FIN alone, PSH/URG alone */
    if ((f & 0x02) && (f & (0x01 | 0x04)))
        return false;
    if ((f & 0x01) && !(f & 0x10))
        return false;
    return true;
}

/* ---- np_journal.c ---- */
int np_journal_init(struct np_core *c, uint32_t size);
void np_journal_free(struct np_core *c);
bool np_journal_note(struct np_core *c, struct np_state *s, uint8_t kind);
uint32_t np_journal_used(struct np_core *c);

/* ---- np_frag.c ---- */
void np_frag_remember(struct np_core *c, const uint8_t *ip, const struct np_parsed *pp,
                      struct np_state *s, int dir);
struct np_state *np_frag_find(struct np_core *c, const uint8_t *ip, const struct np_parsed *pp,
                              int *dir);

/* ---- np_core.c ---- */
void np_state_delete(struct np_core *c, struct np_state *s, enum np_counter why);
void np_state_export(struct np_core *c, const struct np_state *s, struct np_state_rec *r);

#endif
