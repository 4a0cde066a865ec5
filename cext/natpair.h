/*
 * natpair.h: the one public header of the natpair connection/NAT core.
 *
 * The core takes IPv4 packets as bytes, finds (or creates) the connection
 * state they belong to, translates them in place and returns a verdict.
 * Everything the replication layer needs (identity, both keys, TCP windows,
 * timers) is visible through struct np_state_rec.
 *
 * Conventions of this API:
 *  - every address and port in an API struct is in HOST byte order;
 *  - time is a caller-driven clock in milliseconds (np_core_set_clock), so
 *    tests inject it and the daemon feeds CLOCK_MONOTONIC;
 *  - functions returning int return NP_OK (0) or a negative NP_E* code;
 *  - one core is used by one thread at a time (the daemon serialises).
 *
 * The text between the cffi markers is read verbatim by cext/build_ffi.py
 * as the cdef, so it stays in the subset cffi parses (no #include, only
 * integer #defines).
 */
#ifndef NATPAIR_H
#define NATPAIR_H

#include <stddef.h>
#include <stdint.h>

/* cffi:begin */
#define NP_OK 0
#define NP_EINVAL -1
#define NP_ENOMEM -2
#define NP_EEXIST -3
#define NP_ENOENT -4
#define NP_EFULL -5
#define NP_ECONFLICT -6
#define NP_ESYS -7              /* a system call failed: errno says why (the feed) */

#define NP_DROP 0
#define NP_ACCEPT 1

#define NP_SIDE_INSIDE 0
#define NP_SIDE_OUTSIDE 1
#define NP_SIDE_ANY 2

/* packet flags, as NFQUEUE reports them (NFQA_SKB_CSUMNOTREADY, NFQA_SKB_GSO) */
#define NP_PKT_CSUM_NOTREADY 1
#define NP_PKT_GSO 2

/* core flags (struct np_config.flags) */
#define NP_CFG_TCP_LOOSE 1      /* accept out-of-window, pick up mid-stream flows */
#define NP_CFG_NO_JOURNAL 2     /* do not journal changes (a standalone unit) */

#define NP_POOL_MAX 64
#define NP_BATCH_MAX 256

/* direction of a packet relative to its state: the initiator's or the responder's */
#define NP_DIR_ORIG 0
#define NP_DIR_REPLY 1

enum np_tcp_state {
    NP_TCPS_NONE = 0,
    NP_TCPS_SYN_SENT = 1,
    NP_TCPS_SYN_SENT2 = 2,      /* simultaneous open: SYNs crossed */
    NP_TCPS_SYN_RECV = 3,
    NP_TCPS_ESTABLISHED = 4,
    NP_TCPS_FIN_WAIT = 5,       /* first FIN seen, not yet acknowledged */
    NP_TCPS_CLOSE_WAIT = 6,     /* first FIN acknowledged, other side still open */
    NP_TCPS_LAST_ACK = 7,       /* both FINs seen, not all acknowledged */
    NP_TCPS_TIME_WAIT = 8,      /* both FINs acknowledged */
    NP_TCPS_CLOSED = 9,         /* RST seen */
    NP_TCPS_COUNT = 10
};

enum np_timeout {
    NP_TMO_TCP_EMBRYONIC = 0,   /* SYN_SENT, SYN_SENT2, SYN_RECV */
    NP_TMO_TCP_ESTABLISHED = 1,
    NP_TMO_TCP_CLOSING = 2,     /* FIN_WAIT, CLOSE_WAIT, LAST_ACK */
    NP_TMO_TCP_TIME_WAIT = 3,
    NP_TMO_TCP_CLOSED = 4,
    NP_TMO_UDP = 5,
    NP_TMO_ICMP = 6,
    NP_TMO_COUNT = 7
};

/* journal event kinds */
#define NP_EV_CREATE 1
#define NP_EV_UPDATE 2
#define NP_EV_DELETE 3

/* state record flags (np_state_rec.flags) */
#define NP_SF_STATIC 1          /* translation came from a static rule */
#define NP_SF_PICKUP 2          /* TCP picked up mid-stream (loose mode) */

struct np_config {
    uint32_t max_states;        /* pool size, preallocated */
    uint32_t creator_id;        /* this unit's identity in state ids */
    uint32_t flags;             /* NP_CFG_* */
    uint32_t journal_size;      /* events in the change ring (rounded up to a power of 2) */
    uint32_t pool_count;        /* NAT pool addresses in use */
    uint32_t pool[64];          /* NP_POOL_MAX outside addresses for dynamic PAT */
    uint16_t port_lo;           /* dynamic PAT port range, inclusive */
    uint16_t port_hi;
    uint32_t timeout_ms[7];     /* NP_TMO_COUNT timeouts */
    uint64_t hash_seed;         /* keyed hash against collision floods */
};

/* one static translation: proto 0 = whole address 1:1 (ports kept); else a port forward */
struct np_static {
    uint8_t proto;
    uint8_t pad[3];
    uint32_t inside_addr;
    uint32_t outside_addr;
    uint16_t inside_port;
    uint16_t outside_port;
};

/* one access rule; checked in order, first match wins, against the real
 * (inside) addresses: the source before SNAT, the destination after DNAT */
#define NP_RULE_DENY 0
#define NP_RULE_ALLOW 1
struct np_rule {
    uint8_t side;               /* where the new flow arrives: NP_SIDE_* */
    uint8_t proto;              /* 0 = any */
    uint8_t action;             /* NP_RULE_* */
    uint8_t src_len;            /* prefix lengths */
    uint8_t dst_len;
    uint8_t pad[3];
    uint32_t src;
    uint32_t dst;
    uint16_t dport_lo;          /* 0..65535 = any */
    uint16_t dport_hi;
};

/* a lookup key as a packet carries it on the wire where it is received */
struct np_key_rec {
    uint32_t src;
    uint32_t dst;
    uint16_t sport;             /* ICMP echo: the id, in both ports */
    uint16_t dport;
    uint8_t proto;
    uint8_t side;
    uint16_t pad;
};

/* one direction's TCP sequence window, pf style */
struct np_peer_rec {
    uint32_t seqlo;             /* highest sequence number sent + 1 */
    uint32_t seqhi;             /* highest the other side allows (its ack + window) */
    uint16_t max_win;           /* largest unscaled window seen */
    uint8_t wscale;             /* window scale, 0x80 = option seen */
    uint8_t flags;              /* 1 = FIN sent, 2 = FIN acknowledged, 4 = seen */
};

/* the exported/imported form of a state: everything the standby needs.
 * key[0] is the initiator's packet as received, key[1] the responder's.
 * A packet of direction d is rewritten to the reverse of key[1-d]. */
struct np_state_rec {
    uint64_t id;
    uint32_t creator;
    uint8_t proto;
    uint8_t tcp_state;          /* enum np_tcp_state */
    uint8_t flags;              /* NP_SF_* */
    uint8_t pad;
    struct np_key_rec key[2];
    struct np_peer_rec peer[2];
    uint32_t expire_in_ms;      /* relative, so clocks need not agree */
    uint32_t age_ms;
    uint64_t bytes[2];
    uint32_t packets[2];
};

struct np_change {
    uint8_t kind;               /* NP_EV_* */
    uint8_t pad[7];
    struct np_state_rec rec;    /* DELETE: only id and creator are set */
};

/* one packet of a batch: the caller fills data/len/flags/side */
struct np_pkt {
    uint8_t *data;
    uint32_t len;
    uint32_t flags;             /* NP_PKT_* */
    uint8_t side;               /* NP_SIDE_INSIDE or NP_SIDE_OUTSIDE */
    uint8_t verdict;            /* out: NP_ACCEPT / NP_DROP */
    uint8_t modified;           /* out: bytes were rewritten */
    uint8_t dir;                /* out: NP_DIR_* when a state matched */
    uint32_t reason;            /* out: the counter index of the drop, 0 if accepted */
};

struct np_core;

struct np_core *np_core_create(const struct np_config *cfg, int *err);
void np_core_destroy(struct np_core *c);
void np_core_set_clock(struct np_core *c, uint64_t now_ms);
int np_core_add_static(struct np_core *c, const struct np_static *s);
int np_core_add_rule(struct np_core *c, const struct np_rule *r);
void np_core_clear_rules(struct np_core *c);
void np_core_set_journal(struct np_core *c, int on);
/* after a takeover: for `ms` from now, TCP segments outside the (replicated, slightly old)
 * windows are accepted and re-teach them, as in loose mode (counted tcp_loose_accept) */
void np_core_set_tcp_grace(struct np_core *c, uint32_t ms);

int np_core_process(struct np_core *c, struct np_pkt *p);
void np_core_process_batch(struct np_core *c, struct np_pkt *pkts, uint32_t n);
uint32_t np_core_sweep(struct np_core *c, uint32_t max);

uint32_t np_core_export(struct np_core *c, uint32_t *cursor, struct np_state_rec *out, uint32_t max);
int np_core_get(struct np_core *c, uint32_t creator, uint64_t id, struct np_state_rec *out);
int np_core_import(struct np_core *c, const struct np_state_rec *rec);
int np_core_import_delete(struct np_core *c, uint32_t creator, uint64_t id);
int np_core_delete(struct np_core *c, uint32_t creator, uint64_t id);

/* ---- states in the replication wire's form (np_wire.c) ----
 * A 104-byte record in network byte order, field for field np_state_rec (replication/wire.py
 * STATE, pads zero). np_core_export_wire() writes up to `max` records of the states from
 * *cursor on (slot order, as np_core_export), leaving out TCP states whose service port is
 * skip_port (0: none; counted in *skipped if not NULL); *cursor becomes NP_CURSOR_END once
 * the table is exhausted. np_core_import_wire() imports len / 104 records, each checked
 * (pads, then np_core_import's checks) before it changes anything; a bad record is refused
 * and counted and the next one imported; returns the records imported, the outcome of
 * each in *res (a torn tail is one invalid record). np_core_import_wire_each() does the same
 * and, when rc_out is not NULL, writes each whole record's return code (NP_OK or the error,
 * all small negatives) to rc_out[i]: the standby's live INSERT/UPDATE runs, which count
 * every record apart. */
#define NP_WIRE_STATE_SIZE 104
#define NP_CURSOR_END 0xFFFFFFFF

struct np_import_result {
    uint32_t imported;
    uint32_t invalid;           /* bad pad or np_core_import's NP_EINVAL */
    uint32_t conflict;          /* NP_ECONFLICT: a key or NAT mapping already taken */
    uint32_t full;              /* NP_EFULL */
    uint32_t other;
};

uint32_t np_core_export_wire(struct np_core *c, uint32_t *cursor, uint8_t *out, uint32_t max,
                             uint16_t skip_port, uint32_t *skipped);
uint32_t np_core_import_wire(struct np_core *c, const uint8_t *buf, size_t len,
                             struct np_import_result *res);
uint32_t np_core_import_wire_each(struct np_core *c, const uint8_t *buf, size_t len,
                                  struct np_import_result *res, int8_t *rc_out);
/* len / 16 wire DELETE records (id u64, creator u32, pad u32 zero), each applied as
 * np_core_import_delete(); rc_out[i] gets each one's code (NP_EINVAL for a pad not zero,
 * NP_ENOENT for an unknown state); returns the states removed. */
#define NP_WIRE_DELETE_SIZE 16
uint32_t np_core_import_delete_wire(struct np_core *c, const uint8_t *buf, size_t len,
                                    int8_t *rc_out);
void np_wire_state_pack(const struct np_state_rec *r, uint8_t *out);
int np_wire_state_unpack(const uint8_t *in, struct np_state_rec *r);

uint32_t np_core_journal_drain(struct np_core *c, struct np_change *out, uint32_t max);
uint32_t np_core_journal_pending(struct np_core *c);

/* ---- the journal drained straight into the replication wire's form (np_journal.c) ----
 * np_core_journal_drain_wire() drains like np_core_journal_drain() but writes each change as
 * a wire record into the caller's buffers: a CREATE as a 104-byte INSERT record into
 * `inserts`, an UPDATE into `updates`, a DELETE as a 16-byte DELETE record into `deletes`
 * (each *_cap bytes long; a change whose record would not fit stays in the journal, the
 * drain stops there). The live stream sends the three runs deletes first: every state
 * deleted since the last drain is dead, every state written alive, so a DELETE never has
 * to follow a record of this drain (it can only free keys a written state now holds).
 * TCP states whose service port is skip_port (0: none) are drained but not written,
 * counted in `skipped` (replication/pair.py is_http). The written INSERT/UPDATE records
 * are counted by protocol (tcp, udp, icmp, other) and those carrying a translation in
 * xlate (replication/tables.py). Returns the records written. */
struct np_wire_drain {
    uint8_t *inserts;           /* in: buffers and their sizes in bytes */
    size_t inserts_cap;
    uint8_t *updates;
    size_t updates_cap;
    uint8_t *deletes;
    size_t deletes_cap;
    uint16_t skip_port;
    uint16_t pad;
    uint32_t n_inserts;         /* out: records written to each buffer */
    uint32_t n_updates;
    uint32_t n_deletes;
    uint32_t skipped;
    uint32_t tcp;
    uint32_t udp;
    uint32_t icmp;
    uint32_t other;
    uint32_t xlate;
};
uint32_t np_core_journal_drain_wire(struct np_core *c, struct np_wire_drain *d);
uint32_t np_core_resend_scan(struct np_core *c, uint32_t max);

uint32_t np_core_state_count(struct np_core *c);
uint32_t np_core_mapping_count(struct np_core *c);
size_t np_core_memory(struct np_core *c);
uint32_t np_counter_count(void);
const char *np_counter_name(uint32_t i);
void np_core_counters(struct np_core *c, uint64_t *out);
const char *np_tcp_state_name(uint32_t s);
/* ---- the fast feed (np_feed.c): an NFQUEUE reader driving a core ----
 * np_feed_run() receives up to max_pkts queued packets (waiting up to
 * timeout_ms for the first), processes them in one np_core_process_batch()
 * and sends all their verdicts; it returns the number of packets handled,
 * 0 on timeout, or a negative NP_E* (NP_ESYS: errno says why). Packets from
 * an interface that np_feed_set_side() did not name are dropped and counted.
 * np_feed_drain() is np_feed_run() and then more batches, not waiting, while
 * packets are queued and budget_us has not passed (the core's clock is not
 * advanced meanwhile); it returns the packets handled over all batches.
 * One feed is used by one thread at a time, with its core. */
#define NP_FEED_BATCH_MAX 256
#define NP_FEED_FAIL_OPEN 1     /* let the kernel accept packets when the queue is full: a leak */

struct np_feed_config {
    uint16_t queue;             /* NFQUEUE number */
    uint16_t pad;
    uint32_t batch;             /* receive slots of 64 KB, 1..NP_FEED_BATCH_MAX */
    uint32_t queue_maxlen;      /* kernel queue length, 0 = the kernel's default (1024) */
    uint32_t rcvbuf;            /* socket receive buffer in bytes, 0 = 8 MB */
    uint32_t flags;             /* NP_FEED_* */
};

struct np_feed;

struct np_feed *np_feed_open(const struct np_feed_config *cfg, int *err);
void np_feed_close(struct np_feed *f);
int np_feed_set_side(struct np_feed *f, uint32_t ifindex, uint8_t side);
int np_feed_run(struct np_feed *f, struct np_core *c, uint32_t max_pkts, int timeout_ms);
int np_feed_drain(struct np_feed *f, struct np_core *c, uint32_t max_pkts, int timeout_ms,
                  uint32_t budget_us);
int np_feed_fd(struct np_feed *f);
uint32_t np_feed_counter_count(void);
const char *np_feed_counter_name(uint32_t i);
void np_feed_counters(struct np_feed *f, uint64_t *out);
/* cffi:end */

#endif
