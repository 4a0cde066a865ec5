/*
 * np_policy.c: the access rules. An ordered list, first match wins,
 * consulted only when a packet would create a new state. Rules match the
 * real addresses (the source before SNAT, the destination after DNAT), as
 * an ASA's ACLs do. With no matching rule the core's default applies:
 * inside -> outside allowed, outside -> inside only through a static
 * translation.
 */
#include <arpa/inet.h>

#include "np_internal.h"

static uint32_t prefix_mask(uint8_t len)
{
    return len == 0 ? 0 : htonl(0xffffffffu << (32 - len));
}

int np_policy_add(struct np_core *c, const struct np_rule *r)
{
    if (c->nrules >= NP_RULES_MAX)
        return NP_EFULL;
    if (r->side > NP_SIDE_ANY || r->action > NP_RULE_ALLOW || r->src_len > 32 ||
        r->dst_len > 32 || r->dport_lo > r->dport_hi)
        return NP_EINVAL;
    if (r->proto != 0 && r->proto != 1 && r->proto != 6 && r->proto != 17)
        return NP_EINVAL;
    struct np_rule n = *r;
    n.src = htonl(r->src) & prefix_mask(r->src_len);
    n.dst = htonl(r->dst) & prefix_mask(r->dst_len);
    c->rules[c->nrules++] = n;
    return NP_OK;
}

void np_core_clear_rules(struct np_core *c) { c->nrules = 0; }

int np_policy_check(struct np_core *c, uint8_t side, uint8_t proto, uint32_t src, uint32_t dst,
                    uint16_t dport)
{
    uint16_t port = ntohs(dport);
    for (uint32_t i = 0; i < c->nrules; i++) {
        const struct np_rule *r = &c->rules[i];
        if (r->side != NP_SIDE_ANY && r->side != side)
            continue;
        if (r->proto && r->proto != proto)
            continue;
        if ((src & prefix_mask(r->src_len)) != r->src || (dst & prefix_mask(r->dst_len)) != r->dst)
            continue;
        if (proto != 1 && (port < r->dport_lo || port > r->dport_hi))
            continue;
        return r->action;
    }
    return -1;
}
