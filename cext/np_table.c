/*
 * np_table.c: the state table. Owns the preallocated pool of struct
 * np_state, the key hash (two refs per state, one per direction, so a
 * packet of either direction finds its state in one lookup), the id hash
 * (creator + id, the name replication uses), and the timer wheel.
 *
 * Timer wheel: one slot per second, NP_WHEEL_SLOTS slots. Traffic only
 * moves a state's expire time forward; it does not touch the wheel. A slot
 * that comes due visits its states once: the expired are deleted, the
 * refreshed are moved to the slot of their new expire time. So a sweep
 * costs what expires plus what was refreshed since, never the table size.
 */
#include <stdlib.h>
#include <sys/mman.h>

#include "np_internal.h"

static uint32_t pow2_at_least(uint32_t n, uint32_t min)
{
    uint32_t p = min;
    while (p < n)
        p <<= 1;
    return p;
}

static void *zalloc(struct np_core *c, size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (p)
        c->mem += n * size;
    /* big tables are read at random on every packet: ask for transparent huge
     * pages (THP "madvise" mode), so a lookup does not also pay a TLB miss */
    const uintptr_t huge = 2u << 20;
    uintptr_t lo = ((uintptr_t)p + huge - 1) & ~(huge - 1), hi = ((uintptr_t)p + n * size) & ~(huge - 1);
    if (p && hi > lo)
        madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
    return p;
}

int np_table_init(struct np_core *c)
{
    uint32_t max = c->cfg.max_states;
    /* the pool starts on a 128-byte boundary: every state is one aligned pair of lines */
    c->states_raw = zalloc(c, 1, (size_t)max * sizeof(*c->states) + 128);
    c->states = (struct np_state *)(((uintptr_t)c->states_raw + 127) & ~(uintptr_t)127);
    c->sext = zalloc(c, max, sizeof(*c->sext));
    /* 4 buckets a state (2 refs): short chains, as the hit path walks them on every packet */
    uint32_t kb = pow2_at_least(4 * max, 1024);
    c->kbuckets = zalloc(c, kb, sizeof(uint32_t));
    /* half a bucket a state: the id hash is used only by replication, chains of 2 are fine */
    uint32_t ib = pow2_at_least(max / 2, 512);
    c->ibuckets = zalloc(c, ib, sizeof(uint32_t));
    if (!c->states_raw || !c->sext || !c->kbuckets || !c->ibuckets)
        return NP_ENOMEM;
    c->kmask = kb - 1;
    c->imask = ib - 1;
    /* no free list yet: slots are handed out from `fresh` up, lowest first, and only
     * released ones are threaded through tnext. calloc'd pages stay untouched until
     * a state lands in them (a free list written at init faulted in the whole pool:
     * 0.9 s at 1.5M states, paid by every start of a standby that joins) */
    c->free_head = 0;
    c->fresh = 0;
    c->wheel_done = c->now_s;
    return NP_OK;
}

void np_table_free(struct np_core *c)
{
    free(c->states_raw);
    free(c->sext);
    free(c->kbuckets);
    free(c->ibuckets);
}

static inline uint32_t id_bucket(struct np_core *c, uint32_t creator, uint64_t id)
{
    return (uint32_t)np_mix64(id ^ ((uint64_t)creator << 40) ^ c->cfg.hash_seed) & c->imask;
}

struct np_state *np_table_find_id(struct np_core *c, uint32_t creator, uint64_t id)
{
    uint32_t ref = c->ibuckets[id_bucket(c, creator, id)];
    while (ref) {
        struct np_state *s = &c->states[ref - 1];
        if (s->id == id && np_state_ext(c, s)->creator == creator)
            return s;
        ref = s->idnext;
    }
    return NULL;
}

struct np_state *np_table_alloc(struct np_core *c)
{
    struct np_state *s;
    if (c->free_head) {
        s = &c->states[c->free_head - 1];
        c->free_head = s->tnext;
    } else if (c->fresh < c->cfg.max_states) {
        s = &c->states[c->fresh++];
    } else {
        return NULL;
    }
    memset(s, 0, sizeof(*s));
    memset(np_state_ext(c, s), 0, sizeof(struct np_state_ext));
    c->nstates++;
    return s;
}

void np_table_insert(struct np_core *c, struct np_state *s)
{
    uint32_t slot = np_state_slot(c, s);
    for (uint32_t d = 0; d < 2; d++) {
        uint32_t b = (uint32_t)np_key_hash(&s->key[d], c->cfg.hash_seed) & c->kmask;
        s->hnext[d] = c->kbuckets[b];
        c->kbuckets[b] = (slot << 1 | d) + 1;
    }
    uint32_t ib = id_bucket(c, np_state_ext(c, s)->creator, s->id);
    s->idnext = c->ibuckets[ib];
    c->ibuckets[ib] = slot + 1;
    s->live = 1;
}

void np_table_unlink_keys(struct np_core *c, struct np_state *s)
{
    uint32_t slot = np_state_slot(c, s);
    for (uint32_t d = 0; d < 2; d++) {
        uint32_t want = (slot << 1 | d) + 1;
        uint32_t *link = &c->kbuckets[np_key_hash(&s->key[d], c->cfg.hash_seed) & c->kmask];
        while (*link && *link != want) {
            uint32_t r = *link - 1;
            link = &c->states[r >> 1].hnext[r & 1];
        }
        if (*link)
            *link = s->hnext[d];
        s->hnext[d] = 0;
    }
    uint32_t *link = &c->ibuckets[id_bucket(c, np_state_ext(c, s)->creator, s->id)];
    while (*link && *link != slot + 1)
        link = &c->states[*link - 1].idnext;
    if (*link)
        *link = s->idnext;
    s->idnext = 0;
    s->live = 2;                /* out of the hashes; the caller frees or keeps it as a zombie */
}

void np_table_release(struct np_core *c, struct np_state *s)
{
    s->live = 0;
    s->tnext = c->free_head;
    c->free_head = np_state_slot(c, s) + 1;
    c->nstates--;
}

/* ---- timer wheel ---- */

static inline uint32_t slot_due(struct np_core *c, uint32_t slot)
{
    return c->wheel_done + 1 + ((slot - (c->wheel_done + 1)) & (NP_WHEEL_SLOTS - 1));
}

static void wheel_link(struct np_core *c, struct np_state *s)
{
    uint32_t target = s->expire;
    if (target <= c->wheel_done)
        target = c->wheel_done + 1;
    if (target > c->wheel_done + NP_WHEEL_SLOTS)
        target = c->wheel_done + NP_WHEEL_SLOTS;    /* cascades: revisited then */
    uint32_t w = target & (NP_WHEEL_SLOTS - 1);
    uint32_t me = np_state_slot(c, s) + 1;
    s->wheel_slot = (uint16_t)w;
    s->tprev = 0;
    s->tnext = c->wheel[w];
    if (s->tnext)
        c->states[s->tnext - 1].tprev = me;
    c->wheel[w] = me;
}

void np_timer_unlink(struct np_core *c, struct np_state *s)
{
    if (s->tprev)
        c->states[s->tprev - 1].tnext = s->tnext;
    else if (c->wheel[s->wheel_slot] == np_state_slot(c, s) + 1)
        c->wheel[s->wheel_slot] = s->tnext;
    if (s->tnext)
        c->states[s->tnext - 1].tprev = s->tprev;
    s->tnext = s->tprev = 0;
}

/* set a state's expiry; only an earlier slot than the one it sits in needs a move */
void np_timer_set(struct np_core *c, struct np_state *s, uint32_t expire)
{
    bool linked = s->live == 1 && (s->tprev || c->wheel[s->wheel_slot] == np_state_slot(c, s) + 1);
    s->expire = expire;
    if (linked && slot_due(c, s->wheel_slot) <= expire)
        return;
    if (linked)
        np_timer_unlink(c, s);
    wheel_link(c, s);
}

/* a clock jump past a whole turn of the wheel: re-place every state once */
static uint32_t wheel_rebuild(struct np_core *c)
{
    uint32_t all = 0, expired = 0;
    for (uint32_t w = 0; w < NP_WHEEL_SLOTS; w++) {
        uint32_t ref = c->wheel[w];
        while (ref) {
            struct np_state *s = &c->states[ref - 1];
            uint32_t next = s->tnext;
            s->tnext = all;
            all = ref;
            ref = next;
        }
        c->wheel[w] = 0;
    }
    c->wheel_done = c->now_s;
    while (all) {
        struct np_state *s = &c->states[all - 1];
        all = s->tnext;
        s->tnext = s->tprev = 0;
        if (s->expire <= c->now_s) {
            np_state_delete(c, s, NP_CTR_STATE_EXPIRED);
            expired++;
        } else {
            wheel_link(c, s);
        }
    }
    return expired;
}

uint32_t np_timer_sweep(struct np_core *c, uint32_t max)
{
    uint32_t expired = 0, visited = 0;
    np_count(c, NP_CTR_SWEEP_RUNS);
    if (c->now_s > c->wheel_done + NP_WHEEL_SLOTS) {
        expired = wheel_rebuild(c);
        c->counters[NP_CTR_SWEEP_EXPIRED] += expired;
        return expired;
    }
    while (c->wheel_done < c->now_s) {
        if (visited >= max)
            break;              /* spent exactly at the end of the last slot */
        uint32_t t = c->wheel_done + 1;
        uint32_t w = t & (NP_WHEEL_SLOTS - 1);
        /* detach the slot so relinks that land in it (a cascade) wait a turn */
        uint32_t ref = c->wheel[w];
        c->wheel[w] = 0;
        while (ref) {
            struct np_state *s = &c->states[ref - 1];
            ref = s->tnext;
            s->tnext = s->tprev = 0;
            if (s->expire <= c->now_s) {
                np_state_delete(c, s, NP_CTR_STATE_EXPIRED);
                expired++;
            } else {
                /* wheel_done is still t - 1 here: the target is at least t + 1 */
                c->wheel_done = t;
                wheel_link(c, s);
                c->wheel_done = t - 1;
            }
            if (++visited >= max && ref) {
                /* budget spent: put the rest of this slot back, finish next time */
                uint32_t tail = ref;
                c->states[tail - 1].tprev = 0;
                while (c->states[tail - 1].tnext)
                    tail = c->states[tail - 1].tnext;
                if (c->wheel[w]) {
                    c->states[tail - 1].tnext = c->wheel[w];
                    c->states[c->wheel[w] - 1].tprev = tail;
                }
                c->wheel[w] = ref;
                c->counters[NP_CTR_SWEEP_EXPIRED] += expired;
                return expired;
            }
        }
        c->wheel_done = t;
    }
    c->counters[NP_CTR_SWEEP_EXPIRED] += expired;
    return expired;
}
