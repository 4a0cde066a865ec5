/* np_wire.c: states as the replication wire carries them (replication/wire.py STATE).
 *
 * A bulk sync moves the whole table; doing it record by record through Python costs
 * ~24 us a state. Here a run of states goes from a cursor straight into wire-ready
 * 104-byte records (network byte order, pads zero), and a buffer of such records is
 * imported in one call, each record checked (pads, then np_core_import's own checks)
 * before it changes anything. Field order and offsets: the STATE struct of wire.py. */
#include <arpa/inet.h>
#include <string.h>

#include "np_internal.h"

_Static_assert(NP_WIRE_STATE_SIZE == 104, "the wire's STATE record is 104 bytes");

static inline void put16(uint8_t *p, uint16_t v) { v = htons(v); memcpy(p, &v, 2); }
static inline void put32(uint8_t *p, uint32_t v) { v = htonl(v); memcpy(p, &v, 4); }
static inline void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}
static inline uint16_t get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return ntohs(v); }
static inline uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return ntohl(v); }
static inline uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

enum {                          /* offsets in the 104-byte record */
    W_ID = 0, W_CREATOR = 8, W_PROTO = 12, W_TCP_STATE = 13, W_FLAGS = 14, W_PAD = 15,
    W_KEY = 16,                 /* 2 x 16: src, dst, sport, dport, proto, side, pad(2) */
    W_PEER = 48,                /* 2 x 12: seqlo, seqhi, max_win, wscale, flags */
    W_EXPIRE = 72, W_AGE = 76, W_BYTES = 80, W_PACKETS = 96,
};

static void rec_to_wire(const struct np_state_rec *r, uint8_t *w)
{
    memset(w, 0, NP_WIRE_STATE_SIZE);
    put64(w + W_ID, r->id);
    put32(w + W_CREATOR, r->creator);
    w[W_PROTO] = r->proto;
    w[W_TCP_STATE] = r->tcp_state;
    w[W_FLAGS] = r->flags;
    for (int d = 0; d < 2; d++) {
        uint8_t *k = w + W_KEY + 16 * d, *p = w + W_PEER + 12 * d;
        put32(k, r->key[d].src);
        put32(k + 4, r->key[d].dst);
        put16(k + 8, r->key[d].sport);
        put16(k + 10, r->key[d].dport);
        k[12] = r->key[d].proto;
        k[13] = r->key[d].side;
        put32(p, r->peer[d].seqlo);
        put32(p + 4, r->peer[d].seqhi);
        put16(p + 8, r->peer[d].max_win);
        p[10] = r->peer[d].wscale;
        p[11] = r->peer[d].flags;
        put64(w + W_BYTES + 8 * d, r->bytes[d]);
        put32(w + W_PACKETS + 4 * d, r->packets[d]);
    }
    put32(w + W_EXPIRE, r->expire_in_ms);
    put32(w + W_AGE, r->age_ms);
}

/* false when a pad is not zero (the wire's bad_record) */
static bool rec_from_wire(const uint8_t *w, struct np_state_rec *r)
{
    if (w[W_PAD] || get16(w + W_KEY + 14) || get16(w + W_KEY + 16 + 14))
        return false;
    memset(r, 0, sizeof(*r));
    r->id = get64(w + W_ID);
    r->creator = get32(w + W_CREATOR);
    r->proto = w[W_PROTO];
    r->tcp_state = w[W_TCP_STATE];
    r->flags = w[W_FLAGS];
    for (int d = 0; d < 2; d++) {
        const uint8_t *k = w + W_KEY + 16 * d, *p = w + W_PEER + 12 * d;
        r->key[d] = (struct np_key_rec){.src = get32(k), .dst = get32(k + 4), .sport = get16(k + 8),
                                        .dport = get16(k + 10), .proto = k[12], .side = k[13]};
        r->peer[d] = (struct np_peer_rec){.seqlo = get32(p), .seqhi = get32(p + 4),
                                          .max_win = get16(p + 8), .wscale = p[10], .flags = p[11]};
        r->bytes[d] = get64(w + W_BYTES + 8 * d);
        r->packets[d] = get32(w + W_PACKETS + 4 * d);
    }
    r->expire_in_ms = get32(w + W_EXPIRE);
    r->age_ms = get32(w + W_AGE);
    return true;
}

/* the replication's HTTP rule (replication/pair.py is_http): a TCP state whose service
 * port, before or after a destination NAT, is `port` */
static bool service_port_is(const struct np_state_rec *r, uint16_t port)
{
    return r->proto == 6 && (r->key[0].dport == port || r->key[1].sport == port);
}

uint32_t np_core_export_wire(struct np_core *c, uint32_t *cursor, uint8_t *out, uint32_t max,
                             uint16_t skip_port, uint32_t *skipped)
{
    struct np_state_rec r;
    uint32_t n = 0, i = *cursor;
    if (i == NP_CURSOR_END)
        return 0;
    for (; i < c->fresh && n < max; i++) {     /* beyond: slots never handed out */
        if (c->states[i].live != 1)
            continue;
        np_state_export(c, &c->states[i], &r);
        if (skip_port && service_port_is(&r, skip_port)) {
            if (skipped)
                (*skipped)++;
            continue;
        }
        rec_to_wire(&r, out + (size_t)n++ * NP_WIRE_STATE_SIZE);
    }
    *cursor = i < c->fresh ? i : NP_CURSOR_END;
    return n;
}

uint32_t np_core_import_wire_each(struct np_core *c, const uint8_t *buf, size_t len,
                                  struct np_import_result *res, int8_t *rc_out)
{
    struct np_state_rec r;
    uint32_t n = (uint32_t)(len / NP_WIRE_STATE_SIZE), ok = 0;
    memset(res, 0, sizeof(*res));
    for (uint32_t i = 0; i < n; i++) {
        int rc;
        if (!rec_from_wire(buf + (size_t)i * NP_WIRE_STATE_SIZE, &r)) {
            np_count(c, NP_CTR_IMPORT_INVALID);
            rc = NP_EINVAL;
        } else {
            rc = np_core_import(c, &r);
        }
        if (rc_out)
            rc_out[i] = (int8_t)rc;
        switch (rc) {
        case NP_OK: ok++; break;
        case NP_EINVAL: res->invalid++; break;
        case NP_ECONFLICT: res->conflict++; break;
        case NP_EFULL: res->full++; break;
        default: res->other++; break;
        }
    }
    res->imported = ok;
    if (len % NP_WIRE_STATE_SIZE) {     /* a torn tail record: refused, counted */
        np_count(c, NP_CTR_IMPORT_INVALID);
        res->invalid++;
    }
    return ok;
}

uint32_t np_core_import_wire(struct np_core *c, const uint8_t *buf, size_t len,
                             struct np_import_result *res)
{
    return np_core_import_wire_each(c, buf, len, res, NULL);
}

uint32_t np_core_import_delete_wire(struct np_core *c, const uint8_t *buf, size_t len,
                                    int8_t *rc_out)
{
    uint32_t n = (uint32_t)(len / NP_WIRE_DELETE_SIZE), ok = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *w = buf + (size_t)i * NP_WIRE_DELETE_SIZE;
        int rc;
        if (get32(w + 12)) {            /* the pad */
            np_count(c, NP_CTR_IMPORT_INVALID);
            rc = NP_EINVAL;
        } else {
            rc = np_core_import_delete(c, get32(w + 8), get64(w));
        }
        if (rc == NP_OK)
            ok++;
        rc_out[i] = (int8_t)rc;
    }
    return ok;
}

void np_wire_state_pack(const struct np_state_rec *r, uint8_t *out) { rec_to_wire(r, out); }

int np_wire_state_unpack(const uint8_t *in, struct np_state_rec *r)
{
    return rec_from_wire(in, r) ? NP_OK : NP_EINVAL;
}
