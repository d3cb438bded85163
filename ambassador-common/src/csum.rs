//! Internet checksum arithmetic (RFC 1071) and incremental update (RFC 1624).
//!
//! All values are the numeric values of big-endian wire fields (as `u16::from_be_bytes` gives
//! them). The TC datapath updates the IPv4 header checksum with [`replace4`] (an IPv4 header
//! checksum is always complete in an skb, unlike an L4 checksum that may be CHECKSUM_PARTIAL,
//! which is why L4 updates go through the kernel's `bpf_l4_csum_replace`). The functions are
//! property-tested on the host against an independent implementation (etherparse).

/// Folds a 32-bit one's complement accumulator into 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New checksum after one 16-bit word of the covered data changed from `old` to `new`
/// (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
#[inline(always)]
pub const fn replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}

/// New checksum after a 32-bit field (an IPv4 address) changed from `old` to `new`.
#[inline(always)]
pub const fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check) as u32
        + (!(old >> 16) as u16) as u32
        + (!(old as u16)) as u32
        + (new >> 16)
        + (new & 0xffff);
    !fold(sum)
}

/// One's complement sum of `data` as big-endian 16-bit words (odd length padded with zero).
pub fn sum_be_words(data: &[u8]) -> u32 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for word in &mut chunks {
        sum = sum.wrapping_add(u16::from_be_bytes([word[0], word[1]]) as u32);
        // Keep the accumulator from overflowing on long inputs.
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    sum
}

/// Checksum of an IPv4 header whose checksum field is zero.
pub fn ipv4_header(header: &[u8]) -> u16 {
    !fold(sum_be_words(header))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use etherparse::{Ipv4Header, TcpHeader, UdpHeader};
    use proptest::prelude::*;

    use super::*;

    fn ipv4(src: [u8; 4], dst: [u8; 4], ttl: u8, id: u16, payload: u16) -> Ipv4Header {
        let mut h = Ipv4Header::new(payload, ttl, etherparse::IpNumber::TCP, src, dst).unwrap();
        h.identification = id;
        h.header_checksum = h.calc_header_checksum();
        h
    }

    #[test]
    fn rfc1624_example() {
        // RFC 1624 section 4: HC = 0xDD2F, m = 0x5555 -> m' = 0x3285 gives HC' = 0x0000.
        assert_eq!(replace2(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn header_checksum_matches_known_value() {
        // The classic example header from Wikipedia's IPv4 article.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&hdr), 0xb861);
    }

    proptest! {
        #[test]
        fn full_ipv4_checksum_matches_etherparse(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), ttl in any::<u8>(),
            id in any::<u16>(), len in 0u16..1400,
        ) {
            let h = ipv4(src, dst, ttl, id, len);
            let mut bytes = h.to_bytes().to_vec();
            bytes[10] = 0;
            bytes[11] = 0;
            prop_assert_eq!(ipv4_header(&bytes), h.header_checksum);
        }

        #[test]
        fn address_rewrite_matches_recomputed_ipv4_checksum(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), new_dst in any::<[u8; 4]>(),
            ttl in any::<u8>(), id in any::<u16>(), len in 0u16..1400,
        ) {
            let before = ipv4(src, dst, ttl, id, len);
            let after = ipv4(src, new_dst, ttl, id, len);
            let updated = replace4(
                before.header_checksum,
                u32::from_be_bytes(dst),
                u32::from_be_bytes(new_dst),
            );
            prop_assert_eq!(updated, after.header_checksum);
        }

        #[test]
        fn tcp_nat_rewrite_matches_recomputed_l4_checksum(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), new_dst in any::<[u8; 4]>(),
            sport in any::<u16>(), dport in any::<u16>(), new_dport in any::<u16>(),
            seq in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut tcp = TcpHeader::new(sport, dport, seq, 1024);
            tcp.syn = true;
            let before = tcp.calc_checksum_ipv4_raw(src, dst, &payload).unwrap();
            tcp.destination_port = new_dport;
            let after = tcp.calc_checksum_ipv4_raw(src, new_dst, &payload).unwrap();
            // The same two updates the datapath makes: the pseudo-header address, then the port.
            let updated = replace2(
                replace4(before, u32::from_be_bytes(dst), u32::from_be_bytes(new_dst)),
                dport,
                new_dport,
            );
            prop_assert_eq!(updated, after);
        }

        #[test]
        fn udp_reverse_nat_rewrite_matches_recomputed_l4_checksum(
            src in any::<[u8; 4]>(), new_src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
            sport in any::<u16>(), new_sport in any::<u16>(), dport in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let udp = UdpHeader::with_ipv4_checksum(sport, dport, &Ipv4Header::new(
                8 + payload.len() as u16, 64, etherparse::IpNumber::UDP, src, dst).unwrap(),
                &payload).unwrap();
            let udp_after = UdpHeader::with_ipv4_checksum(new_sport, dport, &Ipv4Header::new(
                8 + payload.len() as u16, 64, etherparse::IpNumber::UDP, new_src, dst).unwrap(),
                &payload).unwrap();
            let updated = replace2(
                replace4(udp.checksum, u32::from_be_bytes(src), u32::from_be_bytes(new_src)),
                sport,
                new_sport,
            );
            // UDP transmits a computed zero as 0xffff (RFC 768); both encode the same sum.
            let norm = |c: u16| if c == 0 { 0xffff } else { c };
            prop_assert_eq!(norm(updated), norm(udp_after.checksum));
        }

        #[test]
        fn sum_is_order_independent_over_words(words in proptest::collection::vec(any::<u16>(), 0..40)) {
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            let rev: Vec<u8> = words.iter().rev().flat_map(|w| w.to_be_bytes()).collect();
            prop_assert_eq!(fold(sum_be_words(&bytes)), fold(sum_be_words(&rev)));
        }
    }
}
