/*
 * np_parse.c: the packet parser. Reads an IPv4 packet and fills struct
 * np_parsed: header sizes, the lookup key as received, TCP fields, and for
 * ICMP errors the embedded datagram and the key of the flow it is about.
 *
 * Defined behaviour (README "Packets the core refuses"):
 *  - IP options are kept and passed, except source routes (LSRR, SSRR) and
 *    malformed option lists, dropped as DROP_IP_OPTIONS;
 *  - a non-first fragment has no L4 header: np_parse marks it and the core
 *    passes it only if the first fragment of the same datagram was tracked;
 *    a first fragment too short for its L4 header is DROP_FRAG_SHORT;
 *  - ICMP: echo request/reply and the errors destination-unreachable,
 *    time-exceeded and parameter-problem; an error must carry an inner IPv4
 *    header plus 8 bytes of TCP, UDP or ICMP echo; anything else is dropped
 *    with its own counter.
 * Checksums are never validated here (the kernel may not have finished them).
 */
#include "np_internal.h"

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint16_t raw16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t raw32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static bool icmp_is_error(uint8_t type) { return type == 3 || type == 11 || type == 12; }
static bool icmp_is_query(uint8_t type) { return type == 0 || type == 8; }

static enum np_counter parse_options(const uint8_t *opt, uint32_t len)
{
    uint32_t i = 0;
    while (i < len) {
        uint8_t type = opt[i];
        if (type == 0)          /* end of list */
            break;
        if (type == 1) {        /* no-op */
            i++;
            continue;
        }
        if (i + 1 >= len || opt[i + 1] < 2 || i + opt[i + 1] > len)
            return NP_CTR_DROP_IP_OPTIONS;
        if (type == 131 || type == 137)     /* loose / strict source route */
            return NP_CTR_DROP_IP_OPTIONS;
        i += opt[i + 1];
    }
    return NP_CTR_NONE;
}

static int8_t tcp_wscale_option(const uint8_t *opt, uint32_t len)
{
    uint32_t i = 0;
    while (i < len) {
        uint8_t kind = opt[i];
        if (kind == 0)
            break;
        if (kind == 1) {
            i++;
            continue;
        }
        if (i + 1 >= len || opt[i + 1] < 2 || i + opt[i + 1] > len)
            break;
        if (kind == 3 && opt[i + 1] == 3)
            return (int8_t)(opt[i + 2] > 14 ? 14 : opt[i + 2]);
        i += opt[i + 1];
    }
    return -1;
}

/* the embedded datagram of an ICMP error, and the key of the flow it is about */
static enum np_counter parse_inner(const uint8_t *pkt, struct np_parsed *pp)
{
    uint32_t off = pp->l4.off + 8u;
    uint32_t avail = pp->l4.len >= 8 ? pp->l4.len - 8u : 0;
    if (avail < 20)
        return NP_CTR_DROP_ICMP_INNER;
    const uint8_t *ip = pkt + off;
    uint32_t ihl = (ip[0] & 0x0f) * 4u;
    if ((ip[0] >> 4) != 4 || ihl < 20 || ihl + 8 > avail)
        return NP_CTR_DROP_ICMP_INNER;
    if (rd16(ip + 6) & 0x1fff)  /* about a non-first fragment: no ports to find */
        return NP_CTR_DROP_ICMP_INNER;
    const uint8_t *l4 = ip + ihl;
    uint8_t proto = ip[9];
    pp->inner_ip = (uint16_t)off;
    pp->inner_ihl = (uint16_t)ihl;
    pp->inner_l4.off = (uint16_t)(off + ihl);
    pp->inner_l4.len = (uint16_t)(avail - ihl);
    pp->inner_l4.proto = proto;
    /* the inner datagram went the other way: swap it to get the key the
     * flow's packets have in the error's own direction */
    pp->key.proto = proto;
    pp->key.src = raw32(ip + 16);
    pp->key.dst = raw32(ip + 12);
    pp->key.pad = 0;
    if (proto == 6 || proto == 17) {
        pp->key.sport = raw16(l4 + 2);
        pp->key.dport = raw16(l4);
    } else if (proto == 1) {
        pp->inner_icmp_type = l4[0];
        if (!icmp_is_query(l4[0]))
            return NP_CTR_DROP_ICMP_INNER;      /* no errors about errors */
        pp->key.sport = pp->key.dport = raw16(l4 + 4);
    } else {
        return NP_CTR_DROP_ICMP_INNER;
    }
    return NP_CTR_NONE;
}

int np_parse(struct np_core *c, const uint8_t *pkt, uint32_t len, struct np_parsed *pp)
{
    (void)c;
    if (len < 20)
        return NP_CTR_DROP_SHORT;
    if ((pkt[0] >> 4) != 4)
        return NP_CTR_DROP_VERSION;
    uint32_t ihl = (pkt[0] & 0x0f) * 4u;
    if (ihl < 20 || ihl > len)
        return NP_CTR_DROP_IHL;
    uint32_t totlen = rd16(pkt + 2);
    if (totlen < ihl || totlen > len)
        return NP_CTR_DROP_TOTLEN;
    if (ihl > 20) {
        enum np_counter why = parse_options(pkt + 20, ihl - 20);
        if (why)
            return why;
    }
    pp->ihl = (uint16_t)ihl;
    pp->totlen = (uint16_t)totlen;
    uint16_t frag = rd16(pkt + 6);
    pp->frag_off = frag & 0x1fff;
    pp->more_frags = (frag & 0x2000) != 0;
    pp->is_frag = pp->frag_off != 0 || pp->more_frags;
    pp->proto = pkt[9];
    pp->ip_id = raw16(pkt + 4);
    pp->key.src = raw32(pkt + 12);
    pp->key.dst = raw32(pkt + 16);
    pp->key.proto = pp->proto;
    pp->key.pad = 0;
    pp->key.sport = pp->key.dport = 0;
    pp->icmp_error = 0;
    pp->wscale = -1;
    pp->tcp_flags = 0;
    pp->payload = 0;
    if (pp->key.src == pp->key.dst)
        return NP_CTR_DROP_LAND;
    if (pp->proto != 6 && pp->proto != 17 && pp->proto != 1)
        return NP_CTR_DROP_PROTO;
    pp->l4.off = (uint16_t)ihl;
    pp->l4.len = (uint16_t)(totlen - ihl);
    pp->l4.proto = pp->proto;
    if (pp->frag_off)           /* a later fragment: the core looks it up by IP id */
        return NP_CTR_NONE;

    const uint8_t *l4 = pkt + ihl;
    uint32_t l4len = pp->l4.len;
    uint32_t need = pp->proto == 6 ? 20 : 8;
    if (l4len < need)
        return pp->more_frags ? NP_CTR_DROP_FRAG_SHORT : NP_CTR_DROP_L4_SHORT;

    switch (pp->proto) {
    case 6: {
        uint32_t hlen = (l4[12] >> 4) * 4u;
        if (hlen < 20 || hlen > l4len)
            return NP_CTR_DROP_TCP_DOFF;
        pp->tcp_hlen = (uint8_t)hlen;
        pp->tcp_flags = l4[13] & 0x3f;
        pp->seq = rd32(l4 + 4);
        pp->ack = rd32(l4 + 8);
        pp->win = rd16(l4 + 14);
        pp->payload = l4len - hlen;
        pp->key.sport = raw16(l4);
        pp->key.dport = raw16(l4 + 2);
        if ((pp->tcp_flags & 0x02) && hlen > 20)
            pp->wscale = tcp_wscale_option(l4 + 20, hlen - 20);
        if (!np_tcp_flags_valid(pp->tcp_flags))
            return NP_CTR_DROP_TCP_FLAGS;
        break;
    }
    case 17:
        pp->key.sport = raw16(l4);
        pp->key.dport = raw16(l4 + 2);
        pp->payload = l4len - 8;
        break;
    case 1:
        pp->icmp_type = l4[0];
        pp->icmp_code = l4[1];
        if (icmp_is_query(pp->icmp_type)) {
            pp->key.sport = pp->key.dport = raw16(l4 + 4);
        } else if (icmp_is_error(pp->icmp_type)) {
            if (pp->is_frag)
                return NP_CTR_DROP_ICMP_INNER;
            pp->icmp_error = 1;
            return parse_inner(pkt, pp);
        } else {
            return NP_CTR_DROP_ICMP_TYPE;
        }
        break;
    }
    return NP_CTR_NONE;
}
