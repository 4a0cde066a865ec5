/*
 * np_csum.c: full Internet checksums (RFC 1071).
 *
 * The incremental forms (RFC 1624) are inline in np_internal.h because they
 * run on every translated packet; this file owns the full sums, used only
 * where the kernel left a checksum unfinished on a packet that is not GSO
 * (design.md, case 4) and where no incremental form exists.
 */
#include "np_internal.h"

uint32_t np_csum_sum(const uint8_t *p, uint32_t len, uint32_t sum)
{
    uint64_t acc = sum;
    while (len >= 8) {
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + 4, 4);
        acc += a;
        acc += b;
        p += 8;
        len -= 8;
    }
    while (len >= 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        acc += w;
        p += 2;
        len -= 2;
    }
    if (len) {
        uint16_t w = 0;
        memcpy(&w, p, 1);       /* the odd byte is the high byte in network order */
        acc += w;
    }
    /* the sum above is in memory (network) order word-wise; fold to 16 bits */
    while (acc >> 16)
        acc = (acc & 0xffff) + (acc >> 16);
    return (uint32_t)acc;
}

/* the complete TCP/UDP checksum of an L4 segment, in network order as stored */
uint16_t np_csum_l4_full(const uint8_t *ip, const uint8_t *l4, uint32_t l4len, uint8_t proto)
{
    uint32_t sum = np_csum_sum(ip + 12, 8, 0);     /* source and destination address */
    uint16_t w;
    w = __builtin_bswap16((uint16_t)proto);
    sum += w;
    w = __builtin_bswap16((uint16_t)l4len);
    sum += w;
    sum = np_csum_sum(l4, l4len, sum);
    uint16_t r = (uint16_t)~np_csum_fold(sum);
    if (proto == 17 && r == 0)
        r = 0xffff;             /* UDP: a computed zero is sent as all ones */
    return r;
}
