/*
 * np_frag.c: the fragment cache. A first fragment is tracked like any
 * packet; its (source, destination, IP id, protocol) as received is
 * remembered here with its state, so the later fragments of the same
 * datagram, which carry no ports, get the same address translation. A
 * later fragment whose first was not seen (or was forgotten: the cache is
 * direct-mapped, 10 s) is dropped as DROP_FRAG_UNTRACKED.
 */
#include "np_internal.h"

#define FRAG_TTL_S 10

static uint32_t frag_index(struct np_core *c, uint32_t src, uint32_t dst, uint16_t id, uint8_t proto)
{
    uint64_t w = (uint64_t)src << 32 | dst;
    return (uint32_t)np_mix64(w ^ ((uint64_t)id << 8 | proto) ^ c->cfg.hash_seed) &
           (NP_FRAG_SLOTS - 1);
}

void np_frag_remember(struct np_core *c, const uint8_t *ip, const struct np_parsed *pp,
                      struct np_state *s, int dir)
{
    uint32_t src, dst;
    memcpy(&src, ip + 12, 4);
    memcpy(&dst, ip + 16, 4);
    struct np_frag *f = &c->frags[frag_index(c, src, dst, pp->ip_id, pp->proto)];
    *f = (struct np_frag){.src = src, .dst = dst, .ip_id = pp->ip_id, .proto = pp->proto,
                          .dir = (uint8_t)dir, .slot = np_state_slot(c, s) + 1, .state_id = s->id,
                          .expire = c->now_s + FRAG_TTL_S};
    np_count(c, NP_CTR_FRAG_FIRST);
}

struct np_state *np_frag_find(struct np_core *c, const uint8_t *ip, const struct np_parsed *pp,
                              int *dir)
{
    uint32_t src, dst;
    memcpy(&src, ip + 12, 4);
    memcpy(&dst, ip + 16, 4);
    struct np_frag *f = &c->frags[frag_index(c, src, dst, pp->ip_id, pp->proto)];
    if (!f->slot || f->src != src || f->dst != dst || f->ip_id != pp->ip_id ||
        f->proto != pp->proto || f->expire < c->now_s)
        return NULL;
    struct np_state *s = &c->states[f->slot - 1];
    if (s->live != 1 || s->id != f->state_id)
        return NULL;
    *dir = f->dir;
    return s;
}
