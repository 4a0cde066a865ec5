/*
 * np_nat.c: the NAT translation table. Owns the dynamic PAT mappings (one
 * inside endpoint -> one outside endpoint whatever the destination, RFC 4787
 * REQ-1 / RFC 5382 REQ-1, shared by all states of that endpoint and freed
 * with the last of them), the per-address port bitmaps of the outside pool
 * (no port overloading: one outside port belongs to one inside endpoint),
 * and the static translations (1:1 address and port forwards).
 *
 * Addresses and ports here are in network byte order, as in the keys.
 * Pool choice is paired (RFC 4787 REQ-2): an inside address always gets the
 * same pool address while that address has a free port.
 */
#include <arpa/inet.h>
#include <stdlib.h>

#include "np_internal.h"

#define PORT_WORDS (65536 / 64)

static int proto_index(uint8_t proto)
{
    return proto == 6 ? 0 : proto == 17 ? 1 : proto == 1 ? 2 : -1;
}

static uint32_t map_hash(struct np_core *c, uint8_t proto, uint32_t addr, uint16_t port)
{
    uint64_t w = (uint64_t)addr << 32 | (uint64_t)port << 8 | proto;
    return (uint32_t)np_mix64(w ^ c->cfg.hash_seed) & c->mmask;
}

int np_nat_init(struct np_core *c)
{
    uint32_t cap = c->cfg.max_states;
    uint32_t b = 512;           /* half a bucket a mapping each way: used only by new flows */
    while (b < cap / 2)
        b <<= 1;
    c->maps = calloc(cap, sizeof(*c->maps));
    c->min_buckets = calloc(b, sizeof(uint32_t));
    c->mout_buckets = calloc(b, sizeof(uint32_t));
    if (!c->maps || !c->min_buckets || !c->mout_buckets)
        return NP_ENOMEM;
    c->mem += cap * sizeof(*c->maps) + 2 * b * sizeof(uint32_t);
    c->maps_cap = cap;
    c->mmask = b - 1;
    c->map_free = 0;            /* released mappings only; new ones from maps_fresh up */
    c->maps_fresh = 0;
    for (int p = 0; p < 3; p++)
        for (uint32_t a = 0; a < c->cfg.pool_count; a++) {
            c->port_bits[p][a] = calloc(PORT_WORDS, sizeof(uint64_t));
            if (!c->port_bits[p][a])
                return NP_ENOMEM;
            c->mem += PORT_WORDS * sizeof(uint64_t);
        }
    c->port_rng = (uint32_t)(c->cfg.hash_seed | 1);
    return NP_OK;
}

void np_nat_free(struct np_core *c)
{
    free(c->maps);
    free(c->min_buckets);
    free(c->mout_buckets);
    for (int p = 0; p < 3; p++)
        for (uint32_t a = 0; a < NP_POOL_MAX; a++)
            free(c->port_bits[p][a]);
}

static int pool_index(struct np_core *c, uint32_t addr)
{
    for (uint32_t i = 0; i < c->cfg.pool_count; i++)
        if (c->cfg.pool[i] == addr)
            return (int)i;
    return -1;
}

bool np_nat_is_pool_addr(struct np_core *c, uint32_t addr) { return pool_index(c, addr) >= 0; }

static inline bool bit_get(const uint64_t *bits, uint16_t port)
{
    return bits[port >> 6] >> (port & 63) & 1;
}
static inline void bit_set(uint64_t *bits, uint16_t port, bool on)
{
    if (on)
        bits[port >> 6] |= 1ULL << (port & 63);
    else
        bits[port >> 6] &= ~(1ULL << (port & 63));
}

/* reserve a (network order) port on a pool address; false if taken */
static bool port_take(struct np_core *c, uint8_t proto, uint32_t addr, uint16_t nport)
{
    int a = pool_index(c, addr), p = proto_index(proto);
    if (a < 0 || p < 0)
        return true;            /* not a pool address: nothing to reserve */
    uint64_t *bits = c->port_bits[p][a];
    uint16_t port = ntohs(nport);
    if (bit_get(bits, port))
        return false;
    bit_set(bits, port, true);
    return true;
}

static void port_give(struct np_core *c, uint8_t proto, uint32_t addr, uint16_t nport)
{
    int a = pool_index(c, addr), p = proto_index(proto);
    if (a >= 0 && p >= 0)
        bit_set(c->port_bits[p][a], ntohs(nport), false);
}

int np_nat_add_static(struct np_core *c, const struct np_static *s)
{
    if (c->nstatics >= NP_STATICS_MAX)
        return NP_EFULL;
    if (s->proto != 0 && proto_index(s->proto) < 0)
        return NP_EINVAL;
    if (s->proto != 0 && (s->inside_port == 0 || s->outside_port == 0))
        return NP_EINVAL;
    struct np_static n = *s;
    n.inside_addr = htonl(s->inside_addr);
    n.outside_addr = htonl(s->outside_addr);
    n.inside_port = htons(s->inside_port);
    n.outside_port = htons(s->outside_port);
    for (uint32_t i = 0; i < c->nstatics; i++) {
        const struct np_static *o = &c->statics[i];
        if (o->outside_addr == n.outside_addr && (o->proto == 0 || n.proto == 0 ||
            (o->proto == n.proto && o->outside_port == n.outside_port)))
            return NP_EEXIST;
    }
    if (n.proto == 0 && pool_index(c, n.outside_addr) >= 0)
        return NP_ECONFLICT;    /* a 1:1 address cannot also be a PAT pool address */
    if (n.proto != 0 && !port_take(c, n.proto, n.outside_addr, n.outside_port))
        return NP_ECONFLICT;
    c->statics[c->nstatics++] = n;
    return NP_OK;
}

static const struct np_static *static_by_inside(struct np_core *c, uint8_t proto, uint32_t addr,
                                                uint16_t port)
{
    const struct np_static *one_to_one = NULL;
    for (uint32_t i = 0; i < c->nstatics; i++) {
        const struct np_static *s = &c->statics[i];
        if (s->inside_addr != addr)
            continue;
        if (s->proto == proto && s->inside_port == port)
            return s;
        if (s->proto == 0 && !one_to_one)
            one_to_one = s;
    }
    return one_to_one;
}

static const struct np_static *static_by_outside(struct np_core *c, uint8_t proto, uint32_t addr,
                                                 uint16_t port)
{
    const struct np_static *one_to_one = NULL;
    for (uint32_t i = 0; i < c->nstatics; i++) {
        const struct np_static *s = &c->statics[i];
        if (s->outside_addr != addr)
            continue;
        if (s->proto == proto && s->outside_port == port)
            return s;
        if (s->proto == 0 && !one_to_one)
            one_to_one = s;
    }
    return one_to_one;
}

bool np_nat_static_inbound(struct np_core *c, uint8_t proto, uint32_t addr, uint16_t port,
                           uint32_t *in_addr, uint16_t *in_port)
{
    const struct np_static *s = static_by_outside(c, proto, addr, port);
    if (!s)
        return false;
    *in_addr = s->inside_addr;
    *in_port = s->proto ? s->inside_port : port;
    return true;
}

bool np_nat_is_static(struct np_core *c, uint8_t proto, uint32_t in_addr, uint16_t in_port,
                      uint32_t out_addr, uint16_t out_port)
{
    const struct np_static *s = static_by_inside(c, proto, in_addr, in_port);
    if (!s || s->outside_addr != out_addr)
        return false;
    return s->proto ? s->outside_port == out_port : in_port == out_port;
}

static uint32_t find_inside(struct np_core *c, uint8_t proto, uint32_t addr, uint16_t port)
{
    uint32_t ref = c->min_buckets[map_hash(c, proto, addr, port)];
    while (ref) {
        const struct np_mapping *m = &c->maps[ref - 1];
        if (m->in_addr == addr && m->in_port == port && m->proto == proto)
            return ref;
        ref = m->next_in;
    }
    return 0;
}

uint32_t np_nat_find_outside(struct np_core *c, uint8_t proto, uint32_t addr, uint16_t port)
{
    uint32_t ref = c->mout_buckets[map_hash(c, proto, addr, port)];
    while (ref) {
        const struct np_mapping *m = &c->maps[ref - 1];
        if (m->out_addr == addr && m->out_port == port && m->proto == proto)
            return ref;
        ref = m->next_out;
    }
    return 0;
}

static uint32_t map_new(struct np_core *c, uint8_t proto, uint32_t in_addr, uint16_t in_port,
                        uint32_t out_addr, uint16_t out_port)
{
    uint32_t ref = c->map_free;
    if (ref)
        c->map_free = c->maps[ref - 1].next_in;
    else if (c->maps_fresh < c->maps_cap)
        ref = ++c->maps_fresh;
    else
        return 0;
    struct np_mapping *m = &c->maps[ref - 1];
    *m = (struct np_mapping){.in_addr = in_addr, .out_addr = out_addr, .in_port = in_port,
                             .out_port = out_port, .proto = proto, .refs = 1};
    uint32_t hi = map_hash(c, proto, in_addr, in_port), ho = map_hash(c, proto, out_addr, out_port);
    m->next_in = c->min_buckets[hi];
    c->min_buckets[hi] = ref;
    m->next_out = c->mout_buckets[ho];
    c->mout_buckets[ho] = ref;
    c->nmaps++;
    np_count(c, NP_CTR_MAPPING_CREATED);
    return ref;
}

static inline uint32_t rng_next(struct np_core *c)
{
    uint32_t x = c->port_rng;
    x ^= x << 13; x ^= x >> 17; x ^= x << 5;
    return c->port_rng = x;
}

/* a free port on pool address a: the inside port if free (port preservation), else random */
static bool port_alloc(struct np_core *c, int p, uint32_t a, uint16_t want, uint16_t *got)
{
    uint64_t *bits = c->port_bits[p][a];
    uint32_t lo = c->cfg.port_lo, hi = c->cfg.port_hi, span = hi - lo + 1;
    if (want >= lo && want <= hi && !bit_get(bits, want)) {
        bit_set(bits, want, true);
        *got = want;
        return true;
    }
    uint32_t start = lo + rng_next(c) % span;
    for (uint32_t i = 0; i < span; ) {
        uint32_t port = lo + (start - lo + i) % span;
        uint64_t word = bits[port >> 6];
        if (word == ~0ULL && (port & 63) == 0 && port + 63 <= hi) {
            i += 64;            /* a full word: skip it whole */
            continue;
        }
        if (!(word >> (port & 63) & 1)) {
            bit_set(bits, (uint16_t)port, true);
            *got = (uint16_t)port;
            return true;
        }
        i++;
    }
    return false;
}

enum np_xlate np_nat_map_outbound(struct np_core *c, uint8_t proto, uint32_t addr, uint16_t port,
                                  uint32_t *out_addr, uint16_t *out_port, uint32_t *map,
                                  enum np_counter *why)
{
    const struct np_static *s = static_by_inside(c, proto, addr, port);
    if (s) {
        *out_addr = s->outside_addr;
        *out_port = s->proto ? s->outside_port : port;
        return NP_XLATE_STATIC;
    }
    if (c->cfg.pool_count == 0)
        return NP_XLATE_NONE;
    uint32_t m = find_inside(c, proto, addr, port);
    if (m) {
        c->maps[m - 1].refs++;
        *out_addr = c->maps[m - 1].out_addr;
        *out_port = c->maps[m - 1].out_port;
        *map = m;
        return NP_XLATE_DYNAMIC;
    }
    int p = proto_index(proto);
    uint32_t n = c->cfg.pool_count;
    uint32_t first = (uint32_t)np_mix64(addr ^ c->cfg.hash_seed) % n;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t a = (first + i) % n;
        uint16_t got;
        if (!port_alloc(c, p, a, ntohs(port), &got))
            continue;
        m = map_new(c, proto, addr, port, c->cfg.pool[a], htons(got));
        if (!m) {
            bit_set(c->port_bits[p][a], got, false);
            *why = NP_CTR_DROP_TABLE_FULL;
            return NP_XLATE_FAIL;
        }
        *out_addr = c->cfg.pool[a];
        *out_port = htons(got);
        *map = m;
        return NP_XLATE_DYNAMIC;
    }
    *why = NP_CTR_DROP_NAT_EXHAUSTED;
    return NP_XLATE_FAIL;
}

uint32_t np_nat_map_import(struct np_core *c, uint8_t proto, uint32_t in_addr, uint16_t in_port,
                           uint32_t out_addr, uint16_t out_port)
{
    uint32_t m = find_inside(c, proto, in_addr, in_port);
    if (m) {
        struct np_mapping *mp = &c->maps[m - 1];
        if (mp->out_addr != out_addr || mp->out_port != out_port)
            return 0;
        mp->refs++;
        return m;
    }
    if (np_nat_find_outside(c, proto, out_addr, out_port))
        return 0;
    if (!port_take(c, proto, out_addr, out_port))
        return 0;
    m = map_new(c, proto, in_addr, in_port, out_addr, out_port);
    if (!m)
        port_give(c, proto, out_addr, out_port);
    return m;
}

void np_nat_ref(struct np_core *c, uint32_t m) { c->maps[m - 1].refs++; }

void np_nat_unref(struct np_core *c, uint32_t m)
{
    struct np_mapping *mp = &c->maps[m - 1];
    if (--mp->refs)
        return;
    uint32_t *link = &c->min_buckets[map_hash(c, mp->proto, mp->in_addr, mp->in_port)];
    while (*link && *link != m)
        link = &c->maps[*link - 1].next_in;
    if (*link)
        *link = mp->next_in;
    link = &c->mout_buckets[map_hash(c, mp->proto, mp->out_addr, mp->out_port)];
    while (*link && *link != m)
        link = &c->maps[*link - 1].next_out;
    if (*link)
        *link = mp->next_out;
    port_give(c, mp->proto, mp->out_addr, mp->out_port);
    mp->next_in = c->map_free;
    c->map_free = m;
    c->nmaps--;
    np_count(c, NP_CTR_MAPPING_FREED);
}
