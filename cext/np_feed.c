/*
 * np_feed.c: the fast feed, an NFQUEUE reader that hands packets to the core
 * in batches and returns their verdicts in as few sends as it can.
 *
 * One np_feed is one netlink socket bound to one queue. np_feed_run() does:
 *   recvmmsg (up to max_pkts messages, one packet each: the kernel sends one
 *   packet per netlink skb) -> parse -> one np_core_process_batch() call ->
 *   verdicts concatenated in one sendmsg (an iovec points at the rewritten
 *   payloads in place, nothing is copied); a run of consecutive unmodified
 *   packets with the same verdict becomes one NFQNL_MSG_VERDICT_BATCH.
 *
 * Queue settings: NFQNL_COPY_PACKET up to 0xffff bytes, NFQA_CFG_F_GSO (a
 * 64 KB GSO packet comes up whole instead of cut in 1500-byte pieces),
 * conntrack info off, and fail CLOSED unless NP_FEED_FAIL_OPEN is asked for.
 * NETLINK_NO_ENOBUFS: an overrun drops packets in the kernel (it counts them
 * in /proc/net/netfilter/nfnetlink_queue, user_dropped) and never fails our
 * recv.
 *
 * Names: a "slot" is one receive buffer of one netlink message; an "entry" is
 * one received packet in id order (its verdict); a "run" is a sequence of
 * consecutive entries that can share one batch verdict.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#include "natpair.h"

#define NP_FEED_SIDES_MAX 64
#define NP_FEED_RCVBUF_DEFAULT (8u << 20)
#define NP_FEED_SNDBUF (8u << 20)
#define NP_FEED_COPY_RANGE 0xffff
/* one netlink message: a whole 64 KB packet plus its attributes */
#define NP_FEED_SLOT_SIZE (NP_FEED_COPY_RANGE + 4096)
/* headers of one verdict message: nlmsghdr + nfgenmsg + verdict attr + payload attr header */
#define NP_FEED_VHDR_MAX 64
#define NP_FEED_IOV_MAX 1000

#define NP_FEED_COUNTERS(X) \
    X(RECEIVED) X(ACCEPTED) X(DROPPED) X(MODIFIED) X(GSO) X(CSUM_NOTREADY) \
    X(VERDICT_SENDS) X(VERDICT_MSGS) X(VERDICT_BATCHES) \
    X(RECV_ERRORS) X(SEND_ERRORS) X(ENOBUFS) X(VERDICT_ERRORS) \
    X(UNKNOWN_IFINDEX) X(TRUNCATED) X(MALFORMED) X(SEND_RETRIES)

enum np_feed_counter {
#define NP_FEED_CTR_ENUM(name) NP_FCTR_##name,
    NP_FEED_COUNTERS(NP_FEED_CTR_ENUM)
#undef NP_FEED_CTR_ENUM
    NP_FCTR_COUNT
};

static const char *const counter_names[NP_FCTR_COUNT] = {
#define NP_FEED_CTR_NAME(name) #name,
    NP_FEED_COUNTERS(NP_FEED_CTR_NAME)
#undef NP_FEED_CTR_NAME
};

struct side_entry {
    uint32_t ifindex;
    uint8_t side;
};

/* one received packet, in the order the kernel queued it */
struct entry {
    uint32_t id;
    uint32_t pkt;               /* index in pkts[], or UINT32_MAX: not given to the core */
    uint8_t verdict;            /* NP_ACCEPT / NP_DROP, filled after the core ran */
    uint8_t modified;
};

struct np_feed {
    struct mnl_socket *nl;
    uint32_t portid;
    uint32_t seq;
    uint16_t queue;
    uint32_t batch;
    uint32_t send_limit;        /* bytes per sendmsg the socket accepts */
    uint32_t nsides;
    struct side_entry sides[NP_FEED_SIDES_MAX];
    uint8_t *slots;             /* batch * NP_FEED_SLOT_SIZE */
    struct mmsghdr *mmsg;
    struct iovec *rx_iov;
    struct np_pkt *pkts;
    struct entry *ents;
    uint8_t *sbuf;              /* verdict headers */
    size_t sbuf_size;
    struct iovec *tx_iov;
    uint64_t ctr[NP_FCTR_COUNT];
};

uint32_t np_feed_counter_count(void) { return NP_FCTR_COUNT; }

const char *np_feed_counter_name(uint32_t i)
{
    return i < NP_FCTR_COUNT ? counter_names[i] : "?";
}

void np_feed_counters(struct np_feed *f, uint64_t *out)
{
    memcpy(out, f->ctr, sizeof(f->ctr));
}

int np_feed_fd(struct np_feed *f) { return mnl_socket_get_fd(f->nl); }

int np_feed_set_side(struct np_feed *f, uint32_t ifindex, uint8_t side)
{
    if (ifindex == 0 || side > NP_SIDE_OUTSIDE)
        return NP_EINVAL;
    for (uint32_t i = 0; i < f->nsides; i++) {
        if (f->sides[i].ifindex == ifindex) {
            f->sides[i].side = side;
            return NP_OK;
        }
    }
    if (f->nsides >= NP_FEED_SIDES_MAX)
        return NP_EFULL;
    f->sides[f->nsides++] = (struct side_entry){ .ifindex = ifindex, .side = side };
    return NP_OK;
}

static int side_of(const struct np_feed *f, uint32_t ifindex)
{
    for (uint32_t i = 0; i < f->nsides; i++)
        if (f->sides[i].ifindex == ifindex)
            return f->sides[i].side;
    return -1;
}

/* ---- configuration messages (each acknowledged) ---- */

static struct nlmsghdr *config_msg(struct np_feed *f, char *buf)
{
    struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, f->queue);
    nlh->nlmsg_flags |= NLM_F_ACK;
    nlh->nlmsg_seq = ++f->seq;
    return nlh;
}

static int drop_stray(const struct nlmsghdr *nlh, void *data);

/* send one config message and wait for its ack; packets that arrive in
 * between (the queue is live once bound) are dropped, fail closed */
static int config_send(struct np_feed *f, struct nlmsghdr *nlh)
{
    uint8_t *buf = f->slots;    /* big enough for a stray 64 KB packet */
    if (mnl_socket_sendto(f->nl, nlh, nlh->nlmsg_len) < 0)
        return NP_ESYS;
    for (;;) {
        ssize_t n = mnl_socket_recvfrom(f->nl, buf, NP_FEED_SLOT_SIZE);
        if (n < 0) {
            if (errno == ENOBUFS || errno == EINTR)
                continue;
            return NP_ESYS;
        }
        int rc = mnl_cb_run(buf, (size_t)n, nlh->nlmsg_seq, f->portid, drop_stray, f);
        if (rc == MNL_CB_ERROR)
            return NP_ESYS;     /* errno is the kernel's answer, e.g. EBUSY: queue taken */
        if (rc == MNL_CB_STOP)
            return NP_OK;       /* the ack */
    }
}

static int drop_stray(const struct nlmsghdr *nlh, void *data)
{
    struct np_feed *f = data;
    struct nlattr *attr[NFQA_MAX + 1] = { 0 };
    if (nfq_nlmsg_parse(nlh, attr) < 0 || !attr[NFQA_PACKET_HDR])
        return MNL_CB_OK;
    struct nfqnl_msg_packet_hdr *ph = mnl_attr_get_payload(attr[NFQA_PACKET_HDR]);
    char buf[NP_FEED_VHDR_MAX];
    struct nlmsghdr *v = nfq_nlmsg_put(buf, NFQNL_MSG_VERDICT, f->queue);
    nfq_nlmsg_verdict_put(v, (int)ntohl(ph->packet_id), NF_DROP);
    if (mnl_socket_sendto(f->nl, v, v->nlmsg_len) < 0)
        f->ctr[NP_FCTR_SEND_ERRORS]++;
    f->ctr[NP_FCTR_RECEIVED]++;
    f->ctr[NP_FCTR_DROPPED]++;
    return MNL_CB_OK;
}

static void set_buffer(int fd, int force_opt, int opt, int size)
{
    if (setsockopt(fd, SOL_SOCKET, force_opt, &size, sizeof(size)) < 0)
        setsockopt(fd, SOL_SOCKET, opt, &size, sizeof(size));   /* capped by rmem_max/wmem_max */
}

/* ---- open / close ---- */

void np_feed_close(struct np_feed *f)
{
    if (!f)
        return;
    if (f->nl) {
        if (f->portid) {        /* unbind: the kernel drops what is still queued */
            char buf[NP_FEED_VHDR_MAX];
            struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, f->queue);
            nfq_nlmsg_cfg_put_cmd(nlh, AF_UNSPEC, NFQNL_CFG_CMD_UNBIND);
            mnl_socket_sendto(f->nl, nlh, nlh->nlmsg_len);
        }
        mnl_socket_close(f->nl);
    }
    free(f->slots);
    free(f->mmsg);
    free(f->rx_iov);
    free(f->pkts);
    free(f->ents);
    free(f->sbuf);
    free(f->tx_iov);
    free(f);
}

struct np_feed *np_feed_open(const struct np_feed_config *cfg, int *err)
{
    int rc = NP_EINVAL, r, fd, one = 1, sndbuf = 0;
    socklen_t sl;
    uint32_t flags, mask;
    char buf[256];              /* one config message */
    struct nlmsghdr *nlh;
    struct np_feed *f = NULL;
    if (!cfg || cfg->batch == 0 || cfg->batch > NP_FEED_BATCH_MAX)
        goto fail;
    rc = NP_ENOMEM;
    f = calloc(1, sizeof(*f));
    if (!f)
        goto fail;
    f->queue = cfg->queue;
    f->batch = cfg->batch;
    f->slots = malloc((size_t)cfg->batch * NP_FEED_SLOT_SIZE);
    f->mmsg = calloc(cfg->batch, sizeof(*f->mmsg));
    f->rx_iov = calloc(cfg->batch, sizeof(*f->rx_iov));
    f->pkts = calloc(cfg->batch, sizeof(*f->pkts));
    f->ents = calloc(cfg->batch, sizeof(*f->ents));
    f->sbuf_size = (size_t)cfg->batch * NP_FEED_VHDR_MAX;
    f->sbuf = calloc(1, f->sbuf_size);
    f->tx_iov = calloc(NP_FEED_IOV_MAX, sizeof(*f->tx_iov));
    if (!f->slots || !f->mmsg || !f->rx_iov || !f->pkts || !f->ents || !f->sbuf || !f->tx_iov)
        goto fail;
    for (uint32_t i = 0; i < cfg->batch; i++) {
        f->rx_iov[i].iov_base = f->slots + (size_t)i * NP_FEED_SLOT_SIZE;
        f->rx_iov[i].iov_len = NP_FEED_SLOT_SIZE;
        f->mmsg[i].msg_hdr.msg_iov = &f->rx_iov[i];
        f->mmsg[i].msg_hdr.msg_iovlen = 1;
    }

    rc = NP_ESYS;
    f->nl = mnl_socket_open(NETLINK_NETFILTER);
    if (!f->nl)
        goto fail;
    if (mnl_socket_bind(f->nl, 0, MNL_SOCKET_AUTOPID) < 0)
        goto fail;
    fd = mnl_socket_get_fd(f->nl);
    /* an overrun is the kernel's drop (counted there), never a recv error */
    mnl_socket_setsockopt(f->nl, NETLINK_NO_ENOBUFS, &one, sizeof(one));
    /* an error answer to a verdict must not echo its 64 KB payload back */
    mnl_socket_setsockopt(f->nl, NETLINK_CAP_ACK, &one, sizeof(one));
    set_buffer(fd, SO_RCVBUFFORCE, SO_RCVBUF,
               (int)(cfg->rcvbuf ? cfg->rcvbuf : NP_FEED_RCVBUF_DEFAULT));
    set_buffer(fd, SO_SNDBUFFORCE, SO_SNDBUF, (int)NP_FEED_SNDBUF);
    sl = sizeof(sndbuf);
    if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &sl) < 0)
        goto fail;
    /* netlink refuses a message longer than sk_sndbuf - 32; keep a margin */
    f->send_limit = sndbuf > 8192 ? (uint32_t)sndbuf - 4096 : 4096;

    nlh = config_msg(f, buf);
    nfq_nlmsg_cfg_put_cmd(nlh, AF_UNSPEC, NFQNL_CFG_CMD_BIND);
    r = config_send(f, nlh);
    if (r != NP_OK)
        goto fail;
    f->portid = mnl_socket_get_portid(f->nl);   /* bound: close() unbinds */

    nlh = config_msg(f, buf);
    nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, NP_FEED_COPY_RANGE);
    flags = NFQA_CFG_F_GSO | ((cfg->flags & NP_FEED_FAIL_OPEN) ? NFQA_CFG_F_FAIL_OPEN : 0);
    mask = NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_CONNTRACK;
    mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(flags));
    mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(mask));
    if (cfg->queue_maxlen)
        nfq_nlmsg_cfg_put_qmaxlen(nlh, cfg->queue_maxlen);
    r = config_send(f, nlh);
    if (r != NP_OK)
        goto fail;
    *err = NP_OK;
    return f;

fail:
    {
        int saved = errno;
        np_feed_close(f);
        errno = saved;
    }
    *err = rc;
    return NULL;
}

/* ---- receive ---- */

/* parse one netlink message of a slot into entry/pkt; returns 1 if it was a packet */
static int parse_packet(struct np_feed *f, const struct nlmsghdr *nlh, uint32_t *nents, uint32_t *npkts)
{
    if (nlh->nlmsg_type == NLMSG_ERROR) {
        const struct nlmsgerr *e = mnl_nlmsg_get_payload(nlh);
        if (nlh->nlmsg_len >= mnl_nlmsg_size(sizeof(*e)) && e->error != 0)
            f->ctr[NP_FCTR_VERDICT_ERRORS]++;
        return 0;
    }
    if (nlh->nlmsg_type != ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET))
        return 0;
    struct nlattr *attr[NFQA_MAX + 1] = { 0 };
    if (nfq_nlmsg_parse(nlh, attr) < 0 || !attr[NFQA_PACKET_HDR]) {
        f->ctr[NP_FCTR_MALFORMED]++;    /* no id: nothing to answer */
        return 0;
    }
    struct nfqnl_msg_packet_hdr *ph = mnl_attr_get_payload(attr[NFQA_PACKET_HDR]);
    struct entry *e = &f->ents[(*nents)++];
    e->id = ntohl(ph->packet_id);
    e->pkt = UINT32_MAX;
    e->verdict = NP_DROP;
    e->modified = 0;
    f->ctr[NP_FCTR_RECEIVED]++;

    uint32_t info = attr[NFQA_SKB_INFO] ? ntohl(mnl_attr_get_u32(attr[NFQA_SKB_INFO])) : 0;
    uint32_t indev = attr[NFQA_IFINDEX_INDEV] ? ntohl(mnl_attr_get_u32(attr[NFQA_IFINDEX_INDEV])) : 0;
    if (!attr[NFQA_PAYLOAD]) {
        f->ctr[NP_FCTR_MALFORMED]++;
        return 1;
    }
    uint32_t len = mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]);
    if (attr[NFQA_CAP_LEN] && ntohl(mnl_attr_get_u32(attr[NFQA_CAP_LEN])) > len) {
        f->ctr[NP_FCTR_TRUNCATED]++;    /* a rewrite would cut it: drop */
        return 1;
    }
    int side = side_of(f, indev);
    if (side < 0) {
        f->ctr[NP_FCTR_UNKNOWN_IFINDEX]++;
        return 1;
    }
    struct np_pkt *p = &f->pkts[*npkts];
    e->pkt = (*npkts)++;
    p->data = mnl_attr_get_payload(attr[NFQA_PAYLOAD]);
    p->len = len;
    p->side = (uint8_t)side;
    p->flags = 0;
    if (info & NFQA_SKB_CSUMNOTREADY) {
        p->flags |= NP_PKT_CSUM_NOTREADY;
        f->ctr[NP_FCTR_CSUM_NOTREADY]++;
    }
    if (info & NFQA_SKB_GSO) {
        p->flags |= NP_PKT_GSO;
        f->ctr[NP_FCTR_GSO]++;
    }
    return 1;
}

/* ---- verdicts ---- */

struct tx {
    struct np_feed *f;
    size_t off;                 /* used bytes of sbuf */
    size_t seg;                 /* start of the sbuf bytes not yet in an iovec */
    uint32_t niov;
    uint32_t bytes;             /* bytes in the pending send */
    int err;
};

static void tx_close_seg(struct tx *t)
{
    if (t->off > t->seg) {
        t->f->tx_iov[t->niov++] = (struct iovec){ t->f->sbuf + t->seg, t->off - t->seg };
        t->seg = t->off;
    }
}

static void tx_flush(struct tx *t)
{
    tx_close_seg(t);
    if (t->niov == 0)
        return;
    struct sockaddr_nl sa = { .nl_family = AF_NETLINK };
    struct msghdr mh = { .msg_name = &sa, .msg_namelen = sizeof(sa),
                         .msg_iov = t->f->tx_iov, .msg_iovlen = t->niov };
    ssize_t n;
    int tries = 0;
    /* the kernel handles the verdicts inside sendmsg; a send refused for want of memory
     * handled none of them, and the packets would wait in the queue for ever: try again
     * a few times before counting it (the packets then stay queued: fail closed) */
    do
        n = sendmsg(mnl_socket_get_fd(t->f->nl), &mh, 0);
    while (n < 0 && (errno == EINTR ||
                     ((errno == ENOBUFS || errno == ENOMEM || errno == EAGAIN) && ++tries <= 3)));
    if (tries > 0 && n >= 0)
        t->f->ctr[NP_FCTR_SEND_RETRIES]++;
    if (n < 0) {
        t->f->ctr[NP_FCTR_SEND_ERRORS]++;
        t->err = errno;
    } else {
        t->f->ctr[NP_FCTR_VERDICT_SENDS]++;
    }
    t->off = t->seg = 0;
    t->niov = 0;
    t->bytes = 0;
}

/* room for one more message of msg_bytes needing up to iovs iovecs */
static void tx_reserve(struct tx *t, uint32_t msg_bytes, uint32_t iovs)
{
    if (t->niov + iovs + 1 > NP_FEED_IOV_MAX || t->off + NP_FEED_VHDR_MAX > t->f->sbuf_size ||
        (t->bytes && t->bytes + msg_bytes > t->f->send_limit))
        tx_flush(t);
}

static void put_verdict(struct tx *t, int type, uint32_t id, int verdict)
{
    tx_reserve(t, NP_FEED_VHDR_MAX, 1);
    struct nlmsghdr *nlh = nfq_nlmsg_put((char *)t->f->sbuf + t->off, type, t->f->queue);
    nfq_nlmsg_verdict_put(nlh, (int)id, verdict);
    t->off += nlh->nlmsg_len;
    t->bytes += nlh->nlmsg_len;
    t->f->ctr[NP_FCTR_VERDICT_MSGS]++;
    if (type == NFQNL_MSG_VERDICT_BATCH)
        t->f->ctr[NP_FCTR_VERDICT_BATCHES]++;
}

/* NF_ACCEPT with the rewritten bytes: the payload is an iovec into the slot */
static void put_verdict_payload(struct tx *t, uint32_t id, const uint8_t *data, uint32_t len)
{
    static const uint8_t zero[MNL_ALIGNTO];
    uint32_t alen = MNL_ALIGN(MNL_ATTR_HDRLEN + len);
    tx_reserve(t, NP_FEED_VHDR_MAX + alen, 3);
    struct nlmsghdr *nlh = nfq_nlmsg_put((char *)t->f->sbuf + t->off, NFQNL_MSG_VERDICT, t->f->queue);
    nfq_nlmsg_verdict_put(nlh, (int)id, NF_ACCEPT);
    struct nlattr *a = mnl_nlmsg_get_payload_tail(nlh);
    a->nla_type = NFQA_PAYLOAD;
    a->nla_len = (uint16_t)(MNL_ATTR_HDRLEN + len);
    t->off += nlh->nlmsg_len + MNL_ATTR_HDRLEN;
    nlh->nlmsg_len += alen;
    tx_close_seg(t);
    t->f->tx_iov[t->niov++] = (struct iovec){ (void *)data, len };
    if (alen - MNL_ATTR_HDRLEN > len)
        t->f->tx_iov[t->niov++] = (struct iovec){ (void *)zero, alen - MNL_ATTR_HDRLEN - len };
    t->bytes += nlh->nlmsg_len;
    t->f->ctr[NP_FCTR_VERDICT_MSGS]++;
}

static int nf_verdict(uint8_t v) { return v == NP_ACCEPT ? NF_ACCEPT : NF_DROP; }

static void flush_run(struct tx *t, const struct entry *first, const struct entry *last)
{
    if (!first)
        return;
    if (first == last)
        put_verdict(t, NFQNL_MSG_VERDICT, last->id, nf_verdict(last->verdict));
    else    /* every queued packet up to last->id: exactly this run, the earlier ones are answered */
        put_verdict(t, NFQNL_MSG_VERDICT_BATCH, last->id, nf_verdict(last->verdict));
}

static int send_verdicts(struct np_feed *f, uint32_t nents)
{
    struct tx t = { .f = f };
    const struct entry *first = NULL, *last = NULL;
    for (uint32_t i = 0; i < nents; i++) {
        const struct entry *e = &f->ents[i];
        if (e->verdict == NP_ACCEPT) {
            f->ctr[NP_FCTR_ACCEPTED]++;
        } else {
            f->ctr[NP_FCTR_DROPPED]++;
        }
        if (e->modified && e->verdict == NP_ACCEPT) {
            f->ctr[NP_FCTR_MODIFIED]++;
            flush_run(&t, first, last);
            first = last = NULL;
            const struct np_pkt *p = &f->pkts[e->pkt];
            put_verdict_payload(&t, e->id, p->data, p->len);
            continue;
        }
        if (first && (last->verdict != e->verdict || e->id != last->id + 1)) {
            flush_run(&t, first, last);
            first = NULL;
        }
        if (!first)
            first = e;
        last = e;
    }
    flush_run(&t, first, last);
    tx_flush(&t);
    if (t.err) {
        errno = t.err;
        return NP_ESYS;
    }
    return NP_OK;
}

/* ---- the loop body ---- */

int np_feed_run(struct np_feed *f, struct np_core *c, uint32_t max_pkts, int timeout_ms)
{
    if (!f || !c || max_pkts == 0)
        return NP_EINVAL;
    if (max_pkts > f->batch)
        max_pkts = f->batch;
    int fd = mnl_socket_get_fd(f->nl);
    /* under load the socket has data: try first, poll only when it is empty */
    int n = recvmmsg(fd, f->mmsg, max_pkts, MSG_DONTWAIT, NULL);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && timeout_ms != 0) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int pr = poll(&pfd, 1, timeout_ms);
        if (pr < 0)
            return errno == EINTR ? 0 : NP_ESYS;
        if (pr == 0)
            return 0;
        n = recvmmsg(fd, f->mmsg, max_pkts, MSG_DONTWAIT, NULL);
    }
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 0;
        if (errno == ENOBUFS) {
            f->ctr[NP_FCTR_ENOBUFS]++;
            return 0;
        }
        f->ctr[NP_FCTR_RECV_ERRORS]++;
        return NP_ESYS;
    }

    uint32_t nents = 0, npkts = 0;
    for (int i = 0; i < n; i++) {
        const struct nlmsghdr *nlh = f->rx_iov[i].iov_base;
        int len = (int)f->mmsg[i].msg_len;
        if (f->mmsg[i].msg_hdr.msg_flags & MSG_TRUNC)
            f->ctr[NP_FCTR_TRUNCATED]++;        /* cannot happen with a slot > copy range */
        f->mmsg[i].msg_hdr.msg_flags = 0;
        while (mnl_nlmsg_ok(nlh, len)) {
            if (nents < f->batch)
                parse_packet(f, nlh, &nents, &npkts);
            nlh = mnl_nlmsg_next(nlh, &len);
        }
    }
    if (npkts)
        np_core_process_batch(c, f->pkts, npkts);
    for (uint32_t i = 0; i < nents; i++) {
        struct entry *e = &f->ents[i];
        if (e->pkt != UINT32_MAX) {
            e->verdict = f->pkts[e->pkt].verdict;
            e->modified = f->pkts[e->pkt].modified;
        }
    }
    int rc = send_verdicts(f, nents);
    return rc != NP_OK ? rc : (int)nents;
}

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* np_feed_run() (waiting up to timeout_ms for the first packet), then more
 * batches without waiting while the socket has packets and budget_us has not
 * passed: one call from Python for a whole burst. */
int np_feed_drain(struct np_feed *f, struct np_core *c, uint32_t max_pkts, int timeout_ms,
                  uint32_t budget_us)
{
    int n = np_feed_run(f, c, max_pkts, timeout_ms);
    if (n <= 0)
        return n;
    long total = n;
    uint64_t end = mono_us() + budget_us;
    while (total < INT32_MAX - (long)NP_FEED_BATCH_MAX && mono_us() < end) {
        n = np_feed_run(f, c, max_pkts, 0);
        if (n < 0)
            return n;
        if (n == 0)
            break;
        total += n;
    }
    return (int)total;
}
