/*
 * np_journal.c: the change journal. A bounded single-producer /
 * single-consumer ring of fixed-size events (create, update, delete) that
 * the replication layer drains (np_core_journal_drain). Events name a
 * state by slot and identity; the record itself is read when drained, so
 * a state changed many times between two drains is sent once, in its
 * latest version (NP_JF_PENDING marks a state whose event is queued).
 *
 * np_core_journal_drain_wire drains the same events into the replication wire's INSERT,
 * UPDATE and DELETE records (np_wire.c's layout), so the active's live stream hands Python
 * one buffer per drain instead of an object per change.
 *
 * A full ring loses nothing silently: the overflow is counted, a changed
 * state is marked NP_JF_RESEND, a deleted one stays as a zombie slot
 * (NP_JF_RESEND_DELETE), and np_core_resend_scan queues them again.
 */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "np_internal.h"

int np_journal_init(struct np_core *c, uint32_t size)
{
    uint32_t n = 64;
    while (n < size)
        n <<= 1;
    c->journal.ring = calloc(n, sizeof(struct np_event));
    if (!c->journal.ring)
        return NP_ENOMEM;
    c->mem += n * sizeof(struct np_event);
    c->journal.mask = n - 1;
    atomic_init(&c->journal.head, 0);
    atomic_init(&c->journal.tail, 0);
    return NP_OK;
}

void np_journal_free(struct np_core *c) { free(c->journal.ring); }

uint32_t np_journal_used(struct np_core *c)
{
    return atomic_load_explicit(&c->journal.head, memory_order_relaxed) -
           atomic_load_explicit(&c->journal.tail, memory_order_acquire);
}

static bool push(struct np_core *c, const struct np_state *s, uint8_t kind)
{
    struct np_journal *j = &c->journal;
    uint32_t head = atomic_load_explicit(&j->head, memory_order_relaxed);
    uint32_t tail = atomic_load_explicit(&j->tail, memory_order_acquire);
    if (head - tail > j->mask)
        return false;
    j->ring[head & j->mask] = (struct np_event){
        .id = s->id, .creator = np_state_ext(c, s)->creator, .slot = np_state_slot(c, s), .kind = kind};
    atomic_store_explicit(&j->head, head + 1, memory_order_release);
    np_count(c, NP_CTR_JOURNAL_EVENTS);
    return true;
}

/* queue a change; false only when a DELETE found the ring full (caller keeps a zombie) */
bool np_journal_note(struct np_core *c, struct np_state *s, uint8_t kind)
{
    if (!c->journal_on)
        return true;
    if (kind != NP_EV_DELETE) {
        s->jexpire = s->expire; /* the queued event is exported when drained: this or later */
        if (atomic_load_explicit(&s->jflags, memory_order_relaxed) & NP_JF_PENDING)
            return true;        /* coalesced into the queued event */
        if (c->zombies) {
            /* a DELETE waits for the ring: this state may sit on its keys, so it must not
             * reach the standby first (it would conflict there); resend_scan queues it after */
            np_count(c, NP_CTR_JOURNAL_OVERFLOW);
            atomic_fetch_or_explicit(&s->jflags, NP_JF_RESEND, memory_order_relaxed);
            return true;
        }
    }
    if (push(c, s, kind)) {
        if (kind != NP_EV_DELETE)
            atomic_fetch_or_explicit(&s->jflags, NP_JF_PENDING, memory_order_relaxed);
        return true;
    }
    np_count(c, NP_CTR_JOURNAL_OVERFLOW);
    c->resend_needed = true;
    if (kind != NP_EV_DELETE)
        atomic_fetch_or_explicit(&s->jflags, NP_JF_RESEND, memory_order_relaxed);
    else
        c->zombies++;
    return kind != NP_EV_DELETE;
}

uint32_t np_core_journal_pending(struct np_core *c) { return np_journal_used(c); }

uint32_t np_core_journal_drain(struct np_core *c, struct np_change *out, uint32_t max)
{
    struct np_journal *j = &c->journal;
    uint32_t tail = atomic_load_explicit(&j->tail, memory_order_relaxed);
    uint32_t head = atomic_load_explicit(&j->head, memory_order_acquire);
    uint32_t n = 0;
    while (tail != head && n < max) {
        const struct np_event ev = j->ring[tail & j->mask];
        tail++;
        if (ev.kind == NP_EV_DELETE) {
            memset(&out[n], 0, sizeof(out[n]));
            out[n].kind = NP_EV_DELETE;
            out[n].rec.id = ev.id;
            out[n].rec.creator = ev.creator;
            n++;
            continue;
        }
        struct np_state *s = &c->states[ev.slot];
        if (s->live != 1 || s->id != ev.id || np_state_ext(c, s)->creator != ev.creator)
            continue;           /* deleted since: its DELETE follows */
        atomic_fetch_and_explicit(&s->jflags, (uint8_t)~NP_JF_PENDING, memory_order_relaxed);
        out[n].kind = ev.kind;
        memset(out[n].pad, 0, sizeof(out[n].pad));
        np_state_export(c, s, &out[n].rec);
        n++;
    }
    atomic_store_explicit(&j->tail, tail, memory_order_release);
    return n;
}

/* the replication tables' "xlate" (tables.py translated): the keys are not each other's reverse */
static bool translated(const struct np_state_rec *r)
{
    const struct np_key_rec *a = &r->key[0], *b = &r->key[1];
    return a->src != b->dst || a->sport != b->dport || a->dst != b->src || a->dport != b->sport;
}

static void put_delete(uint8_t *w, uint64_t id, uint32_t creator)
{
    uint32_t v[4] = {htonl((uint32_t)(id >> 32)), htonl((uint32_t)id), htonl(creator), 0};
    memcpy(w, v, NP_WIRE_DELETE_SIZE);
}

_Static_assert(NP_WIRE_DELETE_SIZE == 16, "the wire's DELETE record is 16 bytes");

uint32_t np_core_journal_drain_wire(struct np_core *c, struct np_wire_drain *d)
{
    struct np_journal *j = &c->journal;
    uint32_t tail = atomic_load_explicit(&j->tail, memory_order_relaxed);
    uint32_t head = atomic_load_explicit(&j->head, memory_order_acquire);
    size_t room_ins = d->inserts ? d->inserts_cap / NP_WIRE_STATE_SIZE : 0;
    size_t room_upd = d->updates ? d->updates_cap / NP_WIRE_STATE_SIZE : 0;
    size_t room_del = d->deletes ? d->deletes_cap / NP_WIRE_DELETE_SIZE : 0;
    struct np_state_rec r;
    d->n_inserts = d->n_updates = d->n_deletes = 0;
    d->skipped = d->tcp = d->udp = d->icmp = d->other = d->xlate = 0;
    for (; tail != head; tail++) {
        const struct np_event ev = j->ring[tail & j->mask];
        if (ev.kind == NP_EV_DELETE) {
            if (d->n_deletes >= room_del)
                break;              /* stays queued: the next drain writes it */
            put_delete(d->deletes + (size_t)d->n_deletes++ * NP_WIRE_DELETE_SIZE, ev.id, ev.creator);
            continue;
        }
        struct np_state *s = &c->states[ev.slot];
        if (s->live != 1 || s->id != ev.id || np_state_ext(c, s)->creator != ev.creator)
            continue;               /* deleted since: its DELETE follows */
        bool insert = ev.kind == NP_EV_CREATE;
        if ((insert ? d->n_inserts >= room_ins : d->n_updates >= room_upd))
            break;
        atomic_fetch_and_explicit(&s->jflags, (uint8_t)~NP_JF_PENDING, memory_order_relaxed);
        np_state_export(c, s, &r);
        if (d->skip_port && r.proto == 6 &&
            (r.key[0].dport == d->skip_port || r.key[1].sport == d->skip_port)) {
            d->skipped++;
            continue;
        }
        uint8_t *w = insert ? d->inserts + (size_t)d->n_inserts++ * NP_WIRE_STATE_SIZE
                            : d->updates + (size_t)d->n_updates++ * NP_WIRE_STATE_SIZE;
        np_wire_state_pack(&r, w);
        switch (r.proto) {
        case 6: d->tcp++; break;
        case 17: d->udp++; break;
        case 1: d->icmp++; break;
        default: d->other++; break;
        }
        if (translated(&r))
            d->xlate++;
    }
    atomic_store_explicit(&j->tail, tail, memory_order_release);
    return d->n_inserts + d->n_updates + d->n_deletes;
}

uint32_t np_core_resend_scan(struct np_core *c, uint32_t max)
{
    /* only slots handed out at least once can hold a mark: a table sized for 1.5M states
     * that holds 10k is walked over its 10k, under the core lock */
    uint32_t queued = 0, total = c->fresh, seen;
    if (!c->resend_needed)
        return 0;
    if (total == 0) {
        c->resend_needed = false;
        return 0;
    }
    if (c->resend_cursor >= total)
        c->resend_cursor = 0;
    /* the zombies' DELETEs first: a state re-created on a zombie's keys goes after them */
    for (uint32_t i = 0; c->zombies && i < total; i++) {
        struct np_state *s = &c->states[i];
        if (s->live != 2 ||
            !(atomic_load_explicit(&s->jflags, memory_order_relaxed) & NP_JF_RESEND_DELETE))
            continue;
        if (queued >= max || !push(c, s, NP_EV_DELETE)) {
            c->counters[NP_CTR_JOURNAL_RESENT] += queued;
            return queued;
        }
        np_table_release(c, s);
        c->zombies--;
        queued++;
    }
    for (seen = 0; seen < total && queued < max; seen++) {
        struct np_state *s = &c->states[c->resend_cursor];
        uint8_t jf = atomic_load_explicit(&s->jflags, memory_order_relaxed);
        if (s->live == 2 && (jf & NP_JF_RESEND_DELETE)) {
            if (!push(c, s, NP_EV_DELETE))
                break;          /* ring full: resume here next time (and count what went) */
            np_table_release(c, s);
            c->zombies--;
            queued++;
        } else if (s->live == 1 && (jf & NP_JF_RESEND)) {
            if (!push(c, s, NP_EV_UPDATE))
                break;
            atomic_fetch_and_explicit(&s->jflags, (uint8_t)~NP_JF_RESEND, memory_order_relaxed);
            atomic_fetch_or_explicit(&s->jflags, NP_JF_PENDING, memory_order_relaxed);
            queued++;
        }
        c->resend_cursor = (c->resend_cursor + 1) % total;
    }
    c->counters[NP_CTR_JOURNAL_RESENT] += queued;
    if (seen == total)
        c->resend_needed = false;   /* a whole pass found every mark */
    return queued;
}
