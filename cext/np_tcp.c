/*
 * np_tcp.c: TCP connection tracking. Owns the connection state machine
 * (enum np_tcp_state: one table of transitions indexed by event and state,
 * applied by np_tcp_track, which refuses anything not in the table) and the
 * per-direction sequence windows, tracked as OpenBSD pf does
 * (pf_tcp_track_full): seqlo = highest sequence sent + 1, seqhi = highest
 * the peer allows (its ack + scaled window), max_win, window scale.
 *
 * Strict mode drops out-of-window packets (DROP_TCP_WINDOW); loose mode
 * (NP_CFG_TCP_LOOSE) accepts and counts them and picks up mid-stream flows.
 */
#include "np_internal.h"

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_ACK 0x10

#define SEQ_LT(a, b) ((int32_t)((a) - (b)) < 0)
#define SEQ_GT(a, b) ((int32_t)((a) - (b)) > 0)
#define SEQ_GEQ(a, b) ((int32_t)((a) - (b)) >= 0)
#define MAXACKWINDOW (0xffff + 1500)

enum np_tcp_event {
    EV_SYN_ORIG,        /* SYN from the initiator */
    EV_SYN_REPLY,       /* SYN without ACK from the responder: simultaneous open */
    EV_SYNACK_ORIG,     /* SYN|ACK from the initiator (simultaneous open) */
    EV_SYNACK_REPLY,
    EV_FIN,             /* the first FIN of the sending side */
    EV_FINACK,          /* an ACK after which every FIN sent so far is acknowledged */
    EV_ACK,             /* anything else */
    EV_RST,
    EV_COUNT
};

#define XX 0xff         /* not in the table: refused */
#define sNO NP_TCPS_NONE
#define sSS NP_TCPS_SYN_SENT
#define sS2 NP_TCPS_SYN_SENT2
#define sSR NP_TCPS_SYN_RECV
#define sES NP_TCPS_ESTABLISHED
#define sFW NP_TCPS_FIN_WAIT
#define sCW NP_TCPS_CLOSE_WAIT
#define sLA NP_TCPS_LAST_ACK
#define sTW NP_TCPS_TIME_WAIT
#define sCL NP_TCPS_CLOSED

/* next state = np_tcp_next[event][state] */
static const uint8_t np_tcp_next[EV_COUNT][NP_TCPS_COUNT] = {
    /*                  sNO  sSS  sS2  sSR  sES  sFW  sCW  sLA  sTW  sCL */
    [EV_SYN_ORIG]     = {sSS, sSS, sS2, sSR, XX,  XX,  XX,  XX,  XX,  XX },
    [EV_SYN_REPLY]    = {XX,  sS2, sS2, XX,  XX,  XX,  XX,  XX,  XX,  XX },
    [EV_SYNACK_ORIG]  = {XX,  XX,  sSR, sSR, sES, XX,  XX,  XX,  XX,  XX },
    [EV_SYNACK_REPLY] = {XX,  sSR, sSR, sSR, sES, XX,  XX,  XX,  XX,  XX },
    [EV_FIN]          = {XX,  XX,  XX,  sFW, sFW, sLA, sLA, sLA, XX,  sCL},
    [EV_FINACK]       = {XX,  XX,  XX,  XX,  XX,  sCW, sCW, sTW, sTW, sCL},
    [EV_ACK]          = {sES, XX,  XX,  sES, sES, sFW, sCW, sLA, sTW, sCL},
    [EV_RST]          = {XX,  sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL},
};

static const char *const state_names[NP_TCPS_COUNT] = {
    "none", "syn-sent", "syn-sent2", "syn-received", "established",
    "fin-wait", "close-wait", "last-ack", "time-wait", "closed",
};

const char *np_tcp_state_name(uint32_t s) { return s < NP_TCPS_COUNT ? state_names[s] : "?"; }

static inline uint32_t seg_end(const struct np_parsed *pp)
{
    return pp->seq + pp->payload + ((pp->tcp_flags & TH_SYN) ? 1 : 0) +
           ((pp->tcp_flags & TH_FIN) ? 1 : 0);
}

/* the packet that creates the state: the initiator's side is known, the other not yet */
void np_tcp_init(struct np_core *c, struct np_state *s, const struct np_parsed *pp, bool pickup)
{
    struct np_peer *src = &s->peer[0], *dst = &s->peer[1];
    uint32_t end = seg_end(pp);
    memset(s->peer, 0, sizeof(s->peer));
    src->seqlo = end;
    src->seqhi = end + 1;
    src->max_win = pp->win ? pp->win : 1;
    src->flags = NP_PEER_SEEN | ((pp->tcp_flags & TH_FIN) ? NP_PEER_FIN : 0);
    if ((pp->tcp_flags & TH_SYN) && pp->wscale >= 0) {
        src->wscale = (uint8_t)pp->wscale | NP_WSCALE_FLAG;
        /* a SYN's window is not scaled: keep max_win in scaled units (pf_create_state) */
        src->max_win = (uint16_t)(((uint32_t)src->max_win + (1u << pp->wscale) - 1) >> pp->wscale);
    }
    dst->seqhi = 1;
    dst->max_win = 1;
    if (pickup) {
        /* mid-stream: nothing is known of the scale; loose mode checks nothing */
        s->tcp_state = NP_TCPS_ESTABLISHED;
        s->sflags |= NP_SF_PICKUP;
        np_count(c, NP_CTR_TCP_PICKUP);
    } else {
        s->tcp_state = NP_TCPS_SYN_SENT;
    }
}

static enum np_tcp_event classify(const struct np_parsed *pp, int dir)
{
    uint8_t f = pp->tcp_flags;
    if (f & TH_RST)
        return EV_RST;
    if ((f & TH_SYN) && (f & TH_ACK))
        return dir == NP_DIR_ORIG ? EV_SYNACK_ORIG : EV_SYNACK_REPLY;
    if (f & TH_SYN)
        return dir == NP_DIR_ORIG ? EV_SYN_ORIG : EV_SYN_REPLY;
    return EV_ACK;              /* FIN and FINACK are refined once the window is known */
}

enum np_counter np_tcp_track(struct np_core *c, struct np_state *s, const struct np_parsed *pp,
                             int dir, bool *changed)
{
    struct np_peer *src = &s->peer[dir], *dst = &s->peer[1 - dir];
    uint8_t f = pp->tcp_flags;
    uint32_t seq = pp->seq, ack = pp->ack, win = pp->win;
    uint32_t sws = 0, dws = 0;
    bool loose = (c->cfg.flags & NP_CFG_TCP_LOOSE) || (s->sflags & NP_SF_PICKUP) ||
                 c->now_ms < c->tcp_grace_until_ms;

    /* the event, so that a refused transition changes nothing */
    enum np_tcp_event ev = classify(pp, dir);
    bool fin_new = (f & TH_FIN) && !(src->flags & NP_PEER_FIN);
    bool acks_fin = (f & TH_ACK) && (dst->flags & NP_PEER_FIN) && !(dst->flags & NP_PEER_FIN_ACKED) &&
                    SEQ_GEQ(ack, dst->seqlo);
    if (ev == EV_ACK) {
        if (fin_new)
            ev = EV_FIN;
        else if (acks_fin && (!(src->flags & NP_PEER_FIN) || (src->flags & NP_PEER_FIN_ACKED)))
            ev = EV_FINACK;
    }
    uint8_t next = np_tcp_next[ev][s->tcp_state];
    if (next == XX)
        return NP_CTR_DROP_TCP_TRANSITION;

    /* the window (pf_tcp_track_full); only a first packet from this end changes the
     * peers before the window check, so only it needs a copy to restore on a drop */
    struct np_peer osrc, odst;
    uint32_t end, data_end;
    bool first = !(src->flags & NP_PEER_SEEN);
    if (NP_UNLIKELY(first)) {
        osrc = *src;
        odst = *dst;
        /* first packet from this end: the responder's SYN|ACK (or SYN) */
        end = seq + pp->payload;
        if (f & TH_SYN) {
            end++;
            if (dst->wscale & NP_WSCALE_FLAG) {
                if (pp->wscale >= 0) {
                    src->wscale = (uint8_t)pp->wscale | NP_WSCALE_FLAG;
                    sws = src->wscale & NP_WSCALE_MASK;
                    win = (win + (1u << sws) - 1) >> sws;   /* SYN windows are not scaled */
                    dws = dst->wscale & NP_WSCALE_MASK;
                } else {
                    /* scaling needs both sides: the initiator's SYN window was real after all */
                    uint32_t w = (uint32_t)dst->max_win << (dst->wscale & NP_WSCALE_MASK);
                    dst->max_win = (uint16_t)(w > 0xffff ? 0xffff : w);
                    dst->wscale = 0;
                }
            }
        }
        data_end = end;
        if (f & TH_FIN)
            end++;
        src->seqlo = seq;
        src->flags |= NP_PEER_SEEN;
        uint32_t room = (uint32_t)dst->max_win << dws;
        if (src->seqhi == 1 || SEQ_GEQ(end + (room ? room : 1), src->seqhi))
            src->seqhi = end + (room ? room : 1);
        if (win > src->max_win)
            src->max_win = (uint16_t)win;
    } else {
        if ((src->wscale & NP_WSCALE_FLAG) && (dst->wscale & NP_WSCALE_FLAG)) {
            sws = src->wscale & NP_WSCALE_MASK;
            dws = dst->wscale & NP_WSCALE_MASK;
        }
        end = seq + pp->payload + ((f & TH_SYN) ? 1 : 0);
        data_end = end;
        if (f & TH_FIN)
            end++;
    }
    if (!(f & TH_ACK) || (ack == 0 && (f & TH_RST)) || !(dst->flags & NP_PEER_SEEN))
        ack = dst->seqlo;       /* no usable ack: let it pass the skew check */
    uint32_t orig_seq = seq;
    if (seq == end) {
        /* no data: ease the sequencing restrictions */
        seq = src->seqlo;
        data_end = end = seq;
    }
    int32_t ackskew = (int32_t)(dst->seqlo - ack);
    bool in_window =
        SEQ_GEQ(src->seqhi, data_end) &&
        SEQ_GEQ(seq, src->seqlo - ((uint32_t)dst->max_win << dws)) &&
        ackskew >= -MAXACKWINDOW && ackskew <= (MAXACKWINDOW << sws) &&
        (!(f & TH_RST) || orig_seq == src->seqlo || orig_seq == src->seqlo + 1 ||
         orig_seq + 1 == src->seqlo);
    if (!in_window) {
        if (!loose) {
            if (first) {
                *src = osrc;
                *dst = odst;
            }
            return NP_CTR_DROP_TCP_WINDOW;
        }
        np_count(c, NP_CTR_TCP_LOOSE_ACCEPT);
    }
    /* what changed, field by field (a first packet set NP_PEER_SEEN: a change) */
    bool chg = first || fin_new || acks_fin || next != s->tcp_state;
    if (win > src->max_win) {
        src->max_win = (uint16_t)win;
        chg = true;
    }
    if (SEQ_GT(end, src->seqlo)) {
        src->seqlo = end;
        chg = true;
    }
    uint32_t room = win << sws;
    if (SEQ_GEQ(ack + room, dst->seqhi)) {
        uint32_t hi = ack + (room ? room : 1);
        chg |= hi != dst->seqhi;
        dst->seqhi = hi;
    }

    if (fin_new)
        src->flags |= NP_PEER_FIN;
    if (acks_fin)
        dst->flags |= NP_PEER_FIN_ACKED;
    s->tcp_state = next;
    if (chg)
        *changed = true;
    return NP_CTR_NONE;
}
