/*
 * np_core.c: the core object and the packet path. Owns np_core_create /
 * destroy, the per-packet decision (parse -> lookup -> new state: policy,
 * NAT -> TCP tracking -> timers -> journal -> rewrite), the rewrite itself
 * with the checksum rules of design.md, ICMP error translation (RFC 5508),
 * and export / import of states by identity.
 *
 * Rewrite rule: a packet of direction d matched key[d]; it leaves as the
 * reverse of key[1-d] (source = key[1-d].dst, destination = key[1-d].src).
 */
#include <arpa/inet.h>
#include <stdlib.h>

#include "np_internal.h"

#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_ACK 0x10

static const uint32_t default_timeout_ms[NP_TMO_COUNT] = {
    [NP_TMO_TCP_EMBRYONIC] = 30000,
    [NP_TMO_TCP_ESTABLISHED] = 3600000,
    [NP_TMO_TCP_CLOSING] = 120000,
    [NP_TMO_TCP_TIME_WAIT] = 60000,
    [NP_TMO_TCP_CLOSED] = 10000,
    [NP_TMO_UDP] = 120000,      /* RFC 4787 REQ-5: at least 2 minutes */
    [NP_TMO_ICMP] = 60000,
};

static const char *const counter_names[NP_CTR_COUNT] = {
#define NP_CTR_NAME(name) #name,
    NP_COUNTERS(NP_CTR_NAME)
#undef NP_CTR_NAME
};

uint32_t np_counter_count(void) { return NP_CTR_COUNT; }
const char *np_counter_name(uint32_t i) { return i < NP_CTR_COUNT ? counter_names[i] : NULL; }

void np_core_counters(struct np_core *c, uint64_t *out)
{
    memcpy(out, c->counters, sizeof(c->counters));
}

uint32_t np_core_state_count(struct np_core *c) { return c->nstates; }
uint32_t np_core_mapping_count(struct np_core *c) { return c->nmaps; }
size_t np_core_memory(struct np_core *c) { return c->mem; }
void np_core_set_journal(struct np_core *c, int on) { c->journal_on = on != 0; }
void np_core_set_tcp_grace(struct np_core *c, uint32_t ms) { c->tcp_grace_until_ms = c->now_ms + ms; }
int np_core_add_static(struct np_core *c, const struct np_static *s) { return np_nat_add_static(c, s); }
int np_core_add_rule(struct np_core *c, const struct np_rule *r) { return np_policy_add(c, r); }

/* ---- life cycle ---- */

static int check_config(const struct np_config *cfg)
{
    if (cfg->max_states == 0 || cfg->max_states > (1u << 27))
        return NP_EINVAL;
    if (cfg->pool_count > NP_POOL_MAX)
        return NP_EINVAL;
    if (cfg->pool_count && (cfg->port_lo == 0 || cfg->port_lo > cfg->port_hi))
        return NP_EINVAL;
    for (uint32_t i = 0; i < cfg->pool_count; i++)
        for (uint32_t j = 0; j < i; j++)
            if (cfg->pool[i] == cfg->pool[j])
                return NP_EINVAL;
    return NP_OK;
}

void np_core_destroy(struct np_core *c)
{
    if (!c)
        return;
    np_table_free(c);
    np_nat_free(c);
    np_journal_free(c);
    free(c);
}

struct np_core *np_core_create(const struct np_config *cfg, int *err)
{
    int rc = check_config(cfg);
    struct np_core *c = NULL;
    if (rc)
        goto fail;
    rc = NP_ENOMEM;
    c = calloc(1, sizeof(*c));
    if (!c)
        goto fail;
    c->mem = sizeof(*c);
    c->cfg = *cfg;
    for (uint32_t i = 0; i < cfg->pool_count; i++)
        c->cfg.pool[i] = htonl(cfg->pool[i]);
    for (int k = 0; k < NP_TMO_COUNT; k++) {
        uint32_t ms = cfg->timeout_ms[k] ? cfg->timeout_ms[k] : default_timeout_ms[k];
        c->cfg.timeout_ms[k] = ms;
        c->tmo_s[k] = (ms + 999) / 1000;
    }
    c->next_id = 1;
    c->journal_on = !(cfg->flags & NP_CFG_NO_JOURNAL);
    rc = np_journal_init(c, cfg->journal_size ? cfg->journal_size : 65536);
    if (rc)
        goto fail;
    rc = np_table_init(c);
    if (rc)
        goto fail;
    rc = np_nat_init(c);
    if (rc)
        goto fail;
    if (err)
        *err = NP_OK;
    return c;
fail:
    np_core_destroy(c);
    if (err)
        *err = rc;
    return NULL;
}

void np_core_set_clock(struct np_core *c, uint64_t now_ms)
{
    if (now_ms < c->now_ms)
        return;                 /* the clock is monotonic */
    c->now_ms = now_ms;
    c->now_s = (uint32_t)(now_ms / 1000);
    if (c->nstates == 0)
        c->wheel_done = c->now_s;
}

uint32_t np_core_sweep(struct np_core *c, uint32_t max)
{
    return np_timer_sweep(c, max ? max : UINT32_MAX);
}

/* ---- removal ---- */

static void state_remove(struct np_core *c, struct np_state *s, enum np_counter why, bool journal)
{
    np_timer_unlink(c, s);
    np_table_unlink_keys(c, s);
    if (s->mapping)
        np_nat_unref(c, s->mapping);
    s->mapping = 0;
    np_count(c, why);
    if (journal && !np_journal_note(c, s, NP_EV_DELETE)) {
        /* the ring is full: keep the slot until the DELETE is queued */
        atomic_fetch_or_explicit(&s->jflags, NP_JF_RESEND_DELETE, memory_order_relaxed);
        return;
    }
    np_table_release(c, s);
}

void np_state_delete(struct np_core *c, struct np_state *s, enum np_counter why)
{
    state_remove(c, s, why, true);
}

/* ---- rewrite ---- */

static inline uint16_t ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline void st16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

/* new addresses into an IP header, its checksum patched; returns the delta for pseudo-headers */
static inline uint32_t rewrite_ip(uint8_t *ip, uint32_t src, uint32_t dst)
{
    uint32_t delta = np_csum_add32(0, ld32(ip + 12), src) + np_csum_add32(0, ld32(ip + 16), dst);
    st32(ip + 12, src);
    st32(ip + 16, dst);
    st16(ip + 10, np_csum_patch(ld16(ip + 10), delta));
    return delta;
}

static void translate(struct np_core *c, struct np_pkt *p, const struct np_parsed *pp,
                      const struct np_state *s, int dir)
{
    const struct np_key *o = &s->key[1 - dir];
    const struct np_key *k = &pp->key;
    /* a later fragment carries no ports (its key has 0): only the addresses count */
    if (o->dst == k->src && o->src == k->dst &&
        (pp->frag_off || (o->dport == k->sport && o->sport == k->dport)))
        return;                 /* nothing to translate in this direction */
    uint8_t *ip = p->data;
    uint8_t *l4 = ip + pp->ihl;
    uint32_t pseudo = rewrite_ip(ip, o->dst, o->src);
    p->modified = 1;
    np_count(c, NP_CTR_PKT_TRANSLATED);
    if (pp->frag_off)
        return;                 /* a later fragment: its L4 header went with the first */
    bool notready = p->flags & NP_PKT_CSUM_NOTREADY, gso = p->flags & NP_PKT_GSO;
    if (pp->proto == 1) {
        uint32_t delta = np_csum_add16(0, ld16(l4 + 4), o->dport);
        st16(l4 + 4, o->dport);
        if (notready && !gso) {
            st16(l4 + 2, 0);
            st16(l4 + 2, (uint16_t)~np_csum_fold(np_csum_sum(l4, pp->l4.len, 0)));
        } else {
            st16(l4 + 2, np_csum_patch(ld16(l4 + 2), delta));
        }
        return;
    }
    uint32_t ports = np_csum_add16(0, ld16(l4), o->dport) + np_csum_add16(0, ld16(l4 + 2), o->sport);
    st16(l4, o->dport);
    st16(l4 + 2, o->sport);
    uint8_t *check = l4 + (pp->proto == 6 ? 16 : 6);
    if (notready && gso) {
        /* the kernel finishes it per segment: only the pseudo-header moved (design.md case 3) */
        st16(check, np_csum_patch_partial(ld16(check), pseudo));
    } else if (notready) {
        /* not GSO and unfinished: only a complete checksum is right (case 4) */
        st16(check, 0);
        st16(check, np_csum_l4_full(ip, l4, pp->l4.len, pp->proto));
    } else if (pp->proto == 17 && ld16(check) == 0) {
        /* UDP without a checksum stays without one */
    } else {
        uint16_t v = np_csum_patch(ld16(check), pseudo + ports);
        if (pp->proto == 17 && v == 0)
            v = 0xffff;
        st16(check, v);
    }
}

/* an ICMP error about a tracked flow, travelling in direction dir (RFC 5508) */
static void translate_icmp_error(struct np_core *c, struct np_pkt *p, const struct np_parsed *pp,
                                 const struct np_state *s, int dir)
{
    const struct np_key *k = &s->key[dir], *o = &s->key[1 - dir];
    uint8_t *ip = p->data;
    uint8_t *icmp = ip + pp->ihl;
    uint8_t *in = ip + pp->inner_ip;
    uint8_t *il4 = ip + pp->inner_l4.off;
    uint32_t osrc = ld32(ip + 12), odst = ld32(ip + 16);
    /* outer: to the pre-translation sender of the inner packet; a source on the
     * translated side (the endpoint itself or a router near it) is hidden too */
    uint32_t nsrc = (osrc == k->src || k->src != o->dst) ? o->dst : osrc;
    uint32_t ndst = odst == k->dst ? o->src : odst;
    /* inner: the quoted packet was key[1-dir] before translation */
    uint32_t delta = 0;                       /* of the bytes the ICMP checksum covers */
    uint32_t ipd = np_csum_add32(0, ld32(in + 12), o->src) + np_csum_add32(0, ld32(in + 16), o->dst);
    uint16_t ic_old = ld16(in + 10), ic_new = np_csum_patch(ic_old, ipd);
    delta += ipd + np_csum_add16(0, ic_old, ic_new);
    st32(in + 12, o->src);
    st32(in + 16, o->dst);
    st16(in + 10, ic_new);
    uint32_t ilen = pp->inner_l4.len;
    if (pp->inner_l4.proto == 1) {
        uint32_t idd = np_csum_add16(0, ld16(il4 + 4), o->sport);
        uint16_t old = ld16(il4 + 2), nw = np_csum_patch(old, idd);
        delta += idd + np_csum_add16(0, old, nw);
        st16(il4 + 4, o->sport);
        st16(il4 + 2, nw);
    } else {
        uint32_t pd = np_csum_add16(0, ld16(il4), o->sport) + np_csum_add16(0, ld16(il4 + 2), o->dport);
        delta += pd;
        st16(il4, o->sport);
        st16(il4 + 2, o->dport);
        uint32_t coff = pp->inner_l4.proto == 6 ? 16 : 6;
        if (ilen >= coff + 2 && !(pp->inner_l4.proto == 17 && ld16(il4 + coff) == 0)) {
            uint16_t old = ld16(il4 + coff), nw = np_csum_patch(old, ipd + pd);
            if (pp->inner_l4.proto == 17 && nw == 0)
                nw = 0xffff;
            delta += np_csum_add16(0, old, nw);
            st16(il4 + coff, nw);
        }
    }
    if ((p->flags & NP_PKT_CSUM_NOTREADY) && !(p->flags & NP_PKT_GSO)) {
        st16(icmp + 2, 0);
        st16(icmp + 2, (uint16_t)~np_csum_fold(np_csum_sum(icmp, pp->l4.len, 0)));
    } else {
        st16(icmp + 2, np_csum_patch(ld16(icmp + 2), delta));
    }
    rewrite_ip(ip, nsrc, ndst);
    p->modified = 1;
    np_count(c, NP_CTR_PKT_TRANSLATED);
}

/* ---- new states ---- */

static inline enum np_timeout state_timeout(const struct np_state *s, uint8_t proto)
{
    return proto == 6 ? np_tcp_timeout(s->tcp_state) : proto == 17 ? NP_TMO_UDP : NP_TMO_ICMP;
}

/* the clock has whole seconds: one more, so no state lives less than its timeout */
static inline uint32_t expire_after(const struct np_core *c, enum np_timeout tmo)
{
    return c->now_s + c->tmo_s[tmo] + 1;
}

static struct np_state *create_state(struct np_core *c, const struct np_pkt *p,
                                     const struct np_parsed *pp, enum np_counter *why)
{
    const struct np_key *k0 = &pp->key;
    uint8_t proto = pp->proto;
    bool pickup = false;
    if (proto == 6 && (pp->tcp_flags & (TH_SYN | TH_ACK | TH_RST)) != TH_SYN) {
        if (!(c->cfg.flags & NP_CFG_TCP_LOOSE) || (pp->tcp_flags & (TH_SYN | TH_RST))) {
            *why = NP_CTR_DROP_NO_STATE;
            return NULL;
        }
        pickup = true;
    }
    if (proto == 1 && pp->icmp_type != 8) {
        *why = NP_CTR_DROP_NO_STATE;
        return NULL;
    }
    uint32_t nsrc = k0->src, ndst = k0->dst;
    uint16_t nsport = k0->sport, ndport = k0->dport;
    uint8_t sflags = 0, responder_side = p->side ^ 1;
    bool dnat_static = false;
    /* DNAT: a static translation of the destination, or hairpinning to a dynamic mapping */
    if (np_nat_static_inbound(c, proto, k0->dst, k0->dport, &ndst, &ndport)) {
        dnat_static = true;
        sflags |= NP_SF_STATIC;
        responder_side = NP_SIDE_INSIDE;
    } else if (p->side == NP_SIDE_INSIDE && proto != 1) {
        uint32_t m = np_nat_find_outside(c, proto, k0->dst, k0->dport);
        if (m) {
            ndst = c->maps[m - 1].in_addr;
            ndport = c->maps[m - 1].in_port;
            responder_side = NP_SIDE_INSIDE;
        }
    }
    int verdict = np_policy_check(c, p->side, proto, k0->src, ndst, ndport);
    bool allowed = verdict >= 0 ? verdict == NP_RULE_ALLOW : (p->side == NP_SIDE_INSIDE || dnat_static);
    if (!allowed) {
        *why = NP_CTR_DROP_POLICY;
        return NULL;
    }
    if (np_table_full(c)) {
        *why = NP_CTR_DROP_TABLE_FULL;
        return NULL;
    }
    uint32_t map = 0;
    if (p->side == NP_SIDE_INSIDE) {
        switch (np_nat_map_outbound(c, proto, k0->src, k0->sport, &nsrc, &nsport, &map, why)) {
        case NP_XLATE_FAIL:
            return NULL;
        case NP_XLATE_STATIC:
            sflags |= NP_SF_STATIC;
            break;
        default:
            break;
        }
    }
    if (proto == 1)
        ndport = nsport;        /* echo: one id in both "ports" */
    struct np_key k1 = {.src = ndst, .dst = nsrc, .sport = ndport, .dport = nsport,
                        .proto = proto, .side = responder_side};
    int d;
    if (k1.src == k1.dst || np_key_eq(&k1, k0)) {
        /* translated into a packet to itself (to a pool address without a
         * mapping, or hairpinned to its own mapping): a land the peer would refuse */
        if (map)
            np_nat_unref(c, map);
        *why = NP_CTR_DROP_LAND;
        return NULL;
    }
    if (np_table_lookup(c, &k1, np_key_hash(&k1, c->cfg.hash_seed), &d)) {
        if (map)
            np_nat_unref(c, map);
        *why = NP_CTR_DROP_KEY_CLASH;
        return NULL;
    }
    struct np_state *s = np_table_alloc(c);
    s->key[0] = *k0;
    s->key[1] = k1;
    s->id = c->next_id++;
    np_state_ext(c, s)->creator = c->cfg.creator_id;
    s->mapping = map;
    s->sflags = sflags;
    np_state_ext(c, s)->created = c->now_s;
    if (proto == 6)
        np_tcp_init(c, s, pp, pickup);
    s->tmo = (uint8_t)state_timeout(s, proto);
    np_table_insert(c, s);
    np_timer_set(c, s, expire_after(c, (enum np_timeout)s->tmo));
    np_count(c, NP_CTR_STATE_CREATED);
    np_journal_note(c, s, NP_EV_CREATE);
    return s;
}

/* ---- the packet path ---- */

static int drop(struct np_core *c, struct np_pkt *p, enum np_counter why)
{
    np_count(c, why);
    np_count(c, NP_CTR_PKT_DROP);
    p->verdict = NP_DROP;
    p->reason = why;
    return NP_DROP;
}

static int pass(struct np_core *c, struct np_pkt *p)
{
    np_count(c, NP_CTR_PKT_ACCEPT);
    p->verdict = NP_ACCEPT;
    p->reason = 0;
    return NP_ACCEPT;
}

static int process_parsed(struct np_core *c, struct np_pkt *p, struct np_parsed *pp, uint64_t hash)
{
    int dir = 0;
    struct np_state *s;
    if (pp->frag_off) {
        s = np_frag_find(c, p->data, pp, &dir);
        if (!s)
            return drop(c, p, NP_CTR_DROP_FRAG_UNTRACKED);
        translate(c, p, pp, s, dir);
        np_count(c, NP_CTR_FRAG_TRANSLATED);
        return pass(c, p);
    }
    s = np_table_lookup(c, &pp->key, hash, &dir);
    if (s && s->expire <= c->now_s) {
        np_state_delete(c, s, NP_CTR_STATE_EXPIRED);    /* lazily, before the sweep gets to it */
        s = NULL;
    }
    if (pp->icmp_error) {
        if (!s)
            return drop(c, p, NP_CTR_DROP_ICMP_NO_STATE);
        translate_icmp_error(c, p, pp, s, dir);
        p->dir = (uint8_t)dir;
        return pass(c, p);
    }
    uint8_t proto = pp->proto;
    uint32_t held = 0;          /* a reused state's mapping, kept for its successor (EIM) */
    if (s && proto == 6 && dir == NP_DIR_ORIG &&
        (pp->tcp_flags & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN &&
        (s->tcp_state == NP_TCPS_TIME_WAIT || s->tcp_state == NP_TCPS_CLOSED)) {
        held = s->mapping;
        if (held)
            np_nat_ref(c, held);
        np_state_delete(c, s, NP_CTR_STATE_REUSED);     /* a new connection on the same ports */
        s = NULL;
    }
    if (!s) {
        enum np_counter why = NP_CTR_NONE;
        s = create_state(c, p, pp, &why);
        if (held)
            np_nat_unref(c, held);
        if (!s)
            return drop(c, p, why);
        dir = NP_DIR_ORIG;
    } else {
        bool changed = false;
        if (proto == 1 && pp->icmp_type != (dir == NP_DIR_ORIG ? 8 : 0))
            return drop(c, p, NP_CTR_DROP_ICMP_DIR);
        if (proto == 6 && !np_tcp_track_fast(s, pp, dir, &changed)) {
            enum np_counter why = np_tcp_track(c, s, pp, dir, &changed);
            if (why)
                return drop(c, p, why);
        }
        enum np_timeout tmo = state_timeout(s, proto);
        uint32_t expire = expire_after(c, tmo);
        if (tmo != s->tmo || expire < s->expire) {
            s->tmo = (uint8_t)tmo;
            np_timer_set(c, s, expire);
        } else {
            s->expire = expire;     /* later is always safe: the wheel re-slots it */
        }
        /* an idle timer refreshed by a quarter of its length is news for the standby */
        if (c->journal_on && (changed || expire - s->jexpire >= c->tmo_s[tmo] / 4 + 1))
            np_journal_note(c, s, NP_EV_UPDATE);
    }
    s->packets[dir]++;
    s->bytes[dir] += pp->totlen;
    /* remembered by the addresses as received, before the rewrite: the later
     * fragments are looked up by what they carry, untranslated */
    if (pp->more_frags)
        np_frag_remember(c, p->data, pp, s, dir);
    translate(c, p, pp, s, dir);
    p->dir = (uint8_t)dir;
    return pass(c, p);
}

int np_core_process(struct np_core *c, struct np_pkt *p)
{
    struct np_parsed pp;
    np_count(c, NP_CTR_PKT_IN);
    p->modified = 0;
    p->dir = 0;
    if (p->side > NP_SIDE_OUTSIDE || !p->data)
        return drop(c, p, NP_CTR_DROP_SHORT);
    enum np_counter why = np_parse(c, p->data, p->len, &pp);
    if (why)
        return drop(c, p, why);
    pp.key.side = p->side;
    return process_parsed(c, p, &pp, np_key_hash(&pp.key, c->cfg.hash_seed));
}

/* a batch in three passes so the memory of one packet is fetched while the
 * others are worked on: parse + hash + prefetch bucket, prefetch state, process */
#define NP_CHUNK 16
void np_core_process_batch(struct np_core *c, struct np_pkt *pkts, uint32_t n)
{
    struct np_parsed pp[NP_CHUNK];
    uint64_t hash[NP_CHUNK];
    uint8_t bad[NP_CHUNK];
    for (uint32_t base = 0; base < n; base += NP_CHUNK) {
        uint32_t m = n - base < NP_CHUNK ? n - base : NP_CHUNK;
        for (uint32_t i = 0; i < m; i++) {
            struct np_pkt *p = &pkts[base + i];
            p->modified = 0;
            p->dir = 0;
            bad[i] = (p->side > NP_SIDE_OUTSIDE || !p->data) ? NP_CTR_DROP_SHORT
                     : (uint8_t)np_parse(c, p->data, p->len, &pp[i]);
            if (bad[i])
                continue;
            pp[i].key.side = p->side;
            hash[i] = np_key_hash(&pp[i].key, c->cfg.hash_seed);
            __builtin_prefetch(&c->kbuckets[hash[i] & c->kmask]);
        }
        for (uint32_t i = 0; i < m; i++) {
            if (bad[i])
                continue;
            uint32_t ref = c->kbuckets[hash[i] & c->kmask];
            if (ref) {
                /* the hot part of a state: its two cache lines */
                const char *st = (const char *)&c->states[(ref - 1) >> 1];
                __builtin_prefetch(st);
                __builtin_prefetch(st + 64);
            }
        }
        /* a chain holds 1.5 states on average at a full table: the second hop's
         * miss is overlapped here too, instead of one after another below */
        for (uint32_t i = 0; i < m; i++) {
            uint32_t ref = bad[i] ? 0 : c->kbuckets[hash[i] & c->kmask];
            if (!ref)
                continue;
            const struct np_state *s = &c->states[(ref - 1) >> 1];
            uint32_t next = s->hnext[(ref - 1) & 1];
            if (next && !np_key_eq(&s->key[(ref - 1) & 1], &pp[i].key)) {
                const char *st = (const char *)&c->states[(next - 1) >> 1];
                __builtin_prefetch(st);
                __builtin_prefetch(st + 64);
            }
        }
        for (uint32_t i = 0; i < m; i++) {
            struct np_pkt *p = &pkts[base + i];
            np_count(c, NP_CTR_PKT_IN);
            if (bad[i])
                drop(c, p, bad[i]);
            else
                process_parsed(c, p, &pp[i], hash[i]);
        }
    }
}

/* ---- export / import ---- */

static void key_to_rec(const struct np_key *k, struct np_key_rec *r)
{
    *r = (struct np_key_rec){.src = ntohl(k->src), .dst = ntohl(k->dst), .sport = ntohs(k->sport),
                             .dport = ntohs(k->dport), .proto = k->proto, .side = k->side};
}

static void key_from_rec(const struct np_key_rec *r, struct np_key *k)
{
    *k = (struct np_key){.src = htonl(r->src), .dst = htonl(r->dst), .sport = htons(r->sport),
                         .dport = htons(r->dport), .proto = r->proto, .side = r->side};
}

void np_state_export(struct np_core *c, const struct np_state *s, struct np_state_rec *r)
{
    memset(r, 0, sizeof(*r));
    r->id = s->id;
    r->creator = np_state_ext(c, s)->creator;
    r->proto = s->key[0].proto;
    r->tcp_state = s->tcp_state;
    r->flags = s->sflags;
    for (int d = 0; d < 2; d++) {
        key_to_rec(&s->key[d], &r->key[d]);
        r->peer[d] = (struct np_peer_rec){.seqlo = s->peer[d].seqlo, .seqhi = s->peer[d].seqhi,
                                          .max_win = s->peer[d].max_win,
                                          .wscale = s->peer[d].wscale, .flags = s->peer[d].flags};
        r->bytes[d] = s->bytes[d];
        r->packets[d] = s->packets[d];
    }
    uint64_t exp_ms = (uint64_t)s->expire * 1000;
    r->expire_in_ms = exp_ms > c->now_ms ? (uint32_t)(exp_ms - c->now_ms) : 0;
    uint64_t born_ms = (uint64_t)np_state_ext(c, s)->created * 1000;
    r->age_ms = c->now_ms > born_ms ? (uint32_t)(c->now_ms - born_ms) : 0;
}

uint32_t np_core_export(struct np_core *c, uint32_t *cursor, struct np_state_rec *out, uint32_t max)
{
    uint32_t n = 0, i = *cursor;
    for (; i < c->fresh && n < max; i++)           /* no state beyond fresh */
        if (c->states[i].live == 1)
            np_state_export(c, &c->states[i], &out[n++]);
    *cursor = i;
    return n;
}

int np_core_get(struct np_core *c, uint32_t creator, uint64_t id, struct np_state_rec *out)
{
    struct np_state *s = np_table_find_id(c, creator, id);
    if (!s)
        return NP_ENOENT;
    np_state_export(c, s, out);
    return NP_OK;
}

static bool rec_valid(const struct np_state_rec *r)
{
    if (r->id == 0 || (r->proto != 6 && r->proto != 17 && r->proto != 1))
        return false;
    if (r->flags & ~(NP_SF_STATIC | NP_SF_PICKUP))
        return false;
    if (r->proto == 6 ? (r->tcp_state == NP_TCPS_NONE || r->tcp_state >= NP_TCPS_COUNT)
                      : r->tcp_state != NP_TCPS_NONE)
        return false;
    for (int d = 0; d < 2; d++) {
        const struct np_key_rec *k = &r->key[d];
        if (k->proto != r->proto || k->side > NP_SIDE_OUTSIDE || k->src == k->dst)
            return false;
        if (r->proto == 1 && k->sport != k->dport)
            return false;
        if (r->peer[d].flags & ~(NP_PEER_FIN | NP_PEER_FIN_ACKED | NP_PEER_SEEN))
            return false;
        if ((r->peer[d].wscale & ~(NP_WSCALE_FLAG | NP_WSCALE_MASK)) ||
            (r->peer[d].wscale & NP_WSCALE_MASK) > 14)
            return false;
        if (r->proto != 6 && (r->peer[d].seqlo || r->peer[d].seqhi || r->peer[d].flags))
            return false;
    }
    const struct np_key_rec *a = &r->key[0], *b = &r->key[1];
    if (a->src == b->src && a->dst == b->dst && a->sport == b->sport && a->dport == b->dport &&
        a->side == b->side)
        return false;
    return r->expire_in_ms <= 7u * 24 * 3600 * 1000;
}

static void apply_rec(struct np_core *c, struct np_state *s, const struct np_state_rec *r)
{
    s->tcp_state = r->tcp_state;
    s->sflags = r->flags;
    for (int d = 0; d < 2; d++) {
        s->peer[d] = (struct np_peer){.seqlo = r->peer[d].seqlo, .seqhi = r->peer[d].seqhi,
                                      .max_win = r->peer[d].max_win, .wscale = r->peer[d].wscale,
                                      .flags = r->peer[d].flags};
        s->bytes[d] = r->bytes[d];
        s->packets[d] = r->packets[d];
    }
    s->tmo = (uint8_t)state_timeout(s, r->proto);
    uint32_t expire = (uint32_t)((c->now_ms + r->expire_in_ms + 999) / 1000);
    np_timer_set(c, s, expire);
}

static bool keys_same(const struct np_state *s, const struct np_key *k)
{
    return np_key_eq(&s->key[0], &k[0]) && np_key_eq(&s->key[1], &k[1]);
}

int np_core_import(struct np_core *c, const struct np_state_rec *r)
{
    if (!rec_valid(r)) {
        np_count(c, NP_CTR_IMPORT_INVALID);
        return NP_EINVAL;
    }
    /* one of our own states coming back (a restarted unit's bulk sync):
     * never hand its id out again to a new state */
    if (r->creator == c->cfg.creator_id && r->id >= c->next_id)
        c->next_id = r->id + 1;
    struct np_key k[2];
    key_from_rec(&r->key[0], &k[0]);
    key_from_rec(&r->key[1], &k[1]);
    struct np_state *old = np_table_find_id(c, r->creator, r->id);
    if (old && keys_same(old, k)) {
        apply_rec(c, old, r);
        np_count(c, NP_CTR_IMPORT_UPDATE);
        return NP_OK;
    }
    /* a new state (or one whose keys changed): its keys must be free */
    for (int d = 0; d < 2; d++) {
        int dd;
        struct np_state *other = np_table_lookup(c, &k[d], np_key_hash(&k[d], c->cfg.hash_seed), &dd);
        if (other && other != old) {
            np_count(c, NP_CTR_IMPORT_CONFLICT);
            return NP_ECONFLICT;
        }
    }
    if (!old && np_table_full(c)) {
        np_count(c, NP_CTR_IMPORT_TABLE_FULL);
        return NP_EFULL;
    }
    /* the source translation: static, or a dynamic mapping shared by the endpoint */
    uint32_t map = 0;
    uint8_t sflags = r->flags;
    bool snat = k[0].src != k[1].dst || k[0].sport != k[1].dport;
    if (snat) {
        if (np_nat_is_static(c, r->proto, k[0].src, k[0].sport, k[1].dst, k[1].dport)) {
            sflags |= NP_SF_STATIC;
        } else {
            map = np_nat_map_import(c, r->proto, k[0].src, k[0].sport, k[1].dst, k[1].dport);
            if (!map) {
                np_count(c, NP_CTR_IMPORT_CONFLICT);
                return NP_ECONFLICT;
            }
        }
    }
    struct np_state *s;
    if (old) {
        state_remove(c, old, NP_CTR_IMPORT_UPDATE, false);
        c->counters[NP_CTR_IMPORT_UPDATE]--;    /* counted once below */
    }
    s = np_table_alloc(c);
    s->key[0] = k[0];
    s->key[1] = k[1];
    s->id = r->id;
    np_state_ext(c, s)->creator = r->creator;
    s->mapping = map;
    np_state_ext(c, s)->created = r->age_ms / 1000 <= c->now_s ? c->now_s - r->age_ms / 1000 : 0;
    np_table_insert(c, s);
    apply_rec(c, s, r);
    s->sflags = sflags;
    np_count(c, old ? NP_CTR_IMPORT_UPDATE : NP_CTR_IMPORT_INSERT);
    return NP_OK;
}

int np_core_import_delete(struct np_core *c, uint32_t creator, uint64_t id)
{
    struct np_state *s = np_table_find_id(c, creator, id);
    if (!s) {
        np_count(c, NP_CTR_IMPORT_NOT_FOUND);
        return NP_ENOENT;
    }
    state_remove(c, s, NP_CTR_IMPORT_DELETE, false);
    return NP_OK;
}

int np_core_delete(struct np_core *c, uint32_t creator, uint64_t id)
{
    struct np_state *s = np_table_find_id(c, creator, id);
    if (!s)
        return NP_ENOENT;
    np_state_delete(c, s, NP_CTR_STATE_DELETED);
    return NP_OK;
}
