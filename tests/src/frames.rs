//! Crafted Ethernet frames for the program tests (BPF_PROG_TEST_RUN), a parser to check the
//! frames the program sends back, a broad reference reading of "could this be a SYN for a
//! listener" for the fuzz loop, and a small seeded PRNG.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// IPv4 "more fragments" flag in the flags/fragment-offset field.
pub const IPV4_MORE_FRAGMENTS: u16 = 0x2000;

/// The client's and the server's MAC addresses in crafted frames (locally administered).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x02];
pub const SERVER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];

/// One's-complement sum of big-endian 16-bit words (odd length padded with a zero byte).
pub fn sum16(bytes: &[u8], mut sum: u32) -> u32 {
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum = sum.wrapping_add(word as u32);
    }
    sum
}

pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// The pseudo-header sum for a transport checksum.
pub fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut sum = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum16(&d.octets(), sum16(&s.octets(), 0)),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum16(&d.octets(), sum16(&s.octets(), 0)),
        _ => panic!("mixed address families"),
    };
    sum += proto as u32 + len as u32;
    sum
}

/// A TCP segment to build.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Raw option bytes (padded to a multiple of 4 when built).
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Tcp {
    /// A client's SYN with an MSS option, as a real stack sends it.
    pub fn syn(sport: u16, dport: u16) -> Tcp {
        Tcp {
            sport,
            dport,
            seq: 0x1234_5678,
            ack: 0,
            flags: TCP_SYN,
            window: 64_240,
            options: vec![2, 4, 0x05, 0xB4],
            payload: Vec::new(),
        }
    }

    /// The same segment with other flags.
    pub fn with_flags(mut self, flags: u8) -> Tcp {
        self.flags = flags;
        if flags & TCP_ACK != 0 {
            self.ack = 0x0BAD_F00D;
        }
        self
    }

    /// The segment's bytes with a correct checksum for `src` → `dst`.
    pub fn build(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let mut options = self.options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0); // End of option list.
        }
        let header_len = 20 + options.len();
        let mut seg = Vec::with_capacity(header_len + self.payload.len());
        seg.extend_from_slice(&self.sport.to_be_bytes());
        seg.extend_from_slice(&self.dport.to_be_bytes());
        seg.extend_from_slice(&self.seq.to_be_bytes());
        seg.extend_from_slice(&self.ack.to_be_bytes());
        seg.push(((header_len / 4) as u8) << 4);
        seg.push(self.flags);
        seg.extend_from_slice(&self.window.to_be_bytes());
        seg.extend_from_slice(&[0, 0, 0, 0]); // Checksum, urgent pointer.
        seg.extend_from_slice(&options);
        seg.extend_from_slice(&self.payload);
        let checksum = fold(sum16(&seg, pseudo_header(src, dst, IPPROTO_TCP, seg.len())));
        seg[16..18].copy_from_slice(&checksum.to_be_bytes());
        seg
    }
}

/// An IPv4 packet: `options` (padded to 4 bytes) and the flags/fragment field as given.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    options: &[u8],
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut options = options.to_vec();
    while !options.len().is_multiple_of(4) {
        options.push(0);
    }
    let header_len = 20 + options.len();
    let total = header_len + payload.len();
    let mut pkt = Vec::with_capacity(total);
    pkt.push(0x40 | (header_len / 4) as u8);
    pkt.push(0);
    pkt.extend_from_slice(&(total as u16).to_be_bytes());
    pkt.extend_from_slice(&0x4242u16.to_be_bytes()); // Identification.
    pkt.extend_from_slice(&frag.to_be_bytes());
    pkt.push(64);
    pkt.push(proto);
    pkt.extend_from_slice(&[0, 0]);
    pkt.extend_from_slice(&src.octets());
    pkt.extend_from_slice(&dst.octets());
    pkt.extend_from_slice(&options);
    let checksum = fold(sum16(&pkt, 0));
    pkt[10..12].copy_from_slice(&checksum.to_be_bytes());
    pkt.extend_from_slice(payload);
    pkt
}

/// An IPv6 packet with the given extension headers (type, body; each padded to 8 bytes).
pub fn ipv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ext: &[(u8, Vec<u8>)],
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut chain = Vec::new();
    for (i, (_, body)) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(proto, |(kind, _)| *kind);
        let mut header = vec![next, 0];
        header.extend_from_slice(body);
        while header.len() < 8 || !header.len().is_multiple_of(8) {
            header.push(0); // Pad1 options.
        }
        header[1] = (header.len() / 8 - 1) as u8;
        chain.extend_from_slice(&header);
    }
    let first = ext.first().map_or(proto, |(kind, _)| *kind);
    let mut pkt = Vec::with_capacity(40 + chain.len() + payload.len());
    pkt.extend_from_slice(&[0x60, 0, 0, 0]);
    pkt.extend_from_slice(&((chain.len() + payload.len()) as u16).to_be_bytes());
    pkt.push(first);
    pkt.push(64);
    pkt.extend_from_slice(&src.octets());
    pkt.extend_from_slice(&dst.octets());
    pkt.extend_from_slice(&chain);
    pkt.extend_from_slice(payload);
    pkt
}

/// An Ethernet frame from the client to the server, with VLAN tags (outer first) given by
/// their TPIDs.
pub fn ethernet(vlan_tpids: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETH_HLEN + 4 * vlan_tpids.len() + payload.len());
    frame.extend_from_slice(&SERVER_MAC);
    frame.extend_from_slice(&CLIENT_MAC);
    for (i, tpid) in vlan_tpids.iter().enumerate() {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&(100 + i as u16).to_be_bytes()); // VLAN id.
    }
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A TCP frame over IPv4 without options or tags.
pub fn tcp_v4(src: Ipv4Addr, dst: Ipv4Addr, tcp: &Tcp) -> Vec<u8> {
    let seg = tcp.build(src.into(), dst.into());
    ethernet(&[], ETH_P_IP, &ipv4(src, dst, IPPROTO_TCP, &[], 0, &seg))
}

/// A TCP frame over IPv6 without extension headers or tags.
pub fn tcp_v6(src: Ipv6Addr, dst: Ipv6Addr, tcp: &Tcp) -> Vec<u8> {
    let seg = tcp.build(src.into(), dst.into());
    ethernet(&[], ETH_P_IPV6, &ipv6(src, dst, &[], IPPROTO_TCP, &seg))
}

/// A TCP frame as the program sent it back, with what its checksums say.
#[derive(Clone, Debug)]
pub struct ParsedTcp {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan_tpids: Vec<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The IP header's length field agrees with the frame.
    pub ip_length_ok: bool,
    /// IPv4 header checksum (always true for IPv6, which has none).
    pub ip_checksum_ok: bool,
    pub tcp_checksum_ok: bool,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub header_len: usize,
    pub payload_len: usize,
    pub frame_len: usize,
}

/// Parses an Ethernet / VLAN / IPv4-or-IPv6 (no extension headers) / TCP frame strictly.
pub fn parse_tcp_frame(frame: &[u8]) -> Result<ParsedTcp, String> {
    let get = |range: std::ops::Range<usize>| {
        frame
            .get(range.clone())
            .ok_or_else(|| format!("frame of {} bytes too short for {range:?}", frame.len()))
    };
    let dst_mac: [u8; 6] = get(0..6)?.try_into().unwrap();
    let src_mac: [u8; 6] = get(6..12)?.try_into().unwrap();
    let mut offset = 12;
    let mut vlan_tpids = Vec::new();
    let mut ethertype = u16::from_be_bytes(get(12..14)?.try_into().unwrap());
    while ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        vlan_tpids.push(ethertype);
        offset += 4;
        ethertype = u16::from_be_bytes(get(offset..offset + 2)?.try_into().unwrap());
    }
    let l3 = offset + 2;
    let (src, dst, l4, ip_length_ok, ip_checksum_ok) = match ethertype {
        ETH_P_IP => {
            let header = get(l3..l3 + 20)?;
            if header[0] != 0x45 {
                return Err(format!("IPv4 version/IHL byte {:#x}", header[0]));
            }
            if header[9] != IPPROTO_TCP {
                return Err(format!("IPv4 protocol {}", header[9]));
            }
            let total = u16::from_be_bytes([header[2], header[3]]) as usize;
            let src = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
            let dst = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
            let checksum_ok = fold(sum16(header, 0)) == 0;
            (
                IpAddr::V4(src),
                IpAddr::V4(dst),
                l3 + 20,
                l3 + total == frame.len(),
                checksum_ok,
            )
        }
        ETH_P_IPV6 => {
            let header = get(l3..l3 + 40)?;
            if header[0] >> 4 != 6 {
                return Err(format!("IPv6 version byte {:#x}", header[0]));
            }
            if header[6] != IPPROTO_TCP {
                return Err(format!("IPv6 next header {}", header[6]));
            }
            let payload = u16::from_be_bytes([header[4], header[5]]) as usize;
            let src: [u8; 16] = header[8..24].try_into().unwrap();
            let dst: [u8; 16] = header[24..40].try_into().unwrap();
            (
                IpAddr::V6(src.into()),
                IpAddr::V6(dst.into()),
                l3 + 40,
                l3 + 40 + payload == frame.len(),
                true,
            )
        }
        other => return Err(format!("ethertype {other:#06x}")),
    };
    let tcp = get(l4..l4 + 20)?;
    let header_len = ((tcp[12] >> 4) as usize) * 4;
    let segment = get(l4..frame.len())?;
    let tcp_checksum_ok = fold(sum16(
        segment,
        pseudo_header(src, dst, IPPROTO_TCP, segment.len()),
    )) == 0;
    Ok(ParsedTcp {
        dst_mac,
        src_mac,
        vlan_tpids,
        src,
        dst,
        ip_length_ok,
        ip_checksum_ok,
        tcp_checksum_ok,
        sport: u16::from_be_bytes([tcp[0], tcp[1]]),
        dport: u16::from_be_bytes([tcp[2], tcp[3]]),
        seq: u32::from_be_bytes(tcp[4..8].try_into().unwrap()),
        ack: u32::from_be_bytes(tcp[8..12].try_into().unwrap()),
        flags: tcp[13],
        header_len,
        payload_len: segment.len().saturating_sub(header_len),
        frame_len: frame.len(),
    })
}

/// A deliberately broad reading of a frame: true if ANY reasonable parser could take it for a
/// SYN (SYN set; ACK, RST, FIN clear) to a listener, judged by `is_listener(dst address,
/// dst port)`. Length fields and checksums are ignored, so that whatever the program's exact
/// rules, a frame this says `false` for is certainly not one the program may act on. The fuzz
/// loop only feeds frames for which this is false.
pub fn may_be_listener_syn(frame: &[u8], is_listener: &dyn Fn(IpAddr, u16) -> bool) -> bool {
    let be16 = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let Some(mut ethertype) = be16(12) else {
        return false;
    };
    let mut l3 = ETH_HLEN;
    // The program reads up to two tags; a broader reading accepts a few more.
    for _ in 0..4 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(next) = be16(l3 + 2) else {
            return false;
        };
        ethertype = next;
        l3 += 4;
    }
    let (dst, l4_candidates): (IpAddr, Vec<usize>) = match ethertype {
        ETH_P_IP => {
            let Some(header) = frame.get(l3..l3 + 20) else {
                return false;
            };
            let frag = u16::from_be_bytes([header[6], header[7]]);
            if header[9] != IPPROTO_TCP || frag & 0x3FFF != 0 {
                return false;
            }
            let dst = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
            // Whatever the IHL says, and also as if it said 5.
            let ihl = ((header[0] & 0x0F) as usize) * 4;
            (IpAddr::V4(dst), vec![l3 + ihl, l3 + 20])
        }
        ETH_P_IPV6 => {
            let Some(header) = frame.get(l3..l3 + 40) else {
                return false;
            };
            let dst: [u8; 16] = header[24..40].try_into().unwrap();
            let mut next = header[6];
            let mut l4 = l3 + 40;
            let mut candidates = Vec::new();
            for _ in 0..8 {
                if next == IPPROTO_TCP {
                    candidates.push(l4);
                    break;
                }
                if ![
                    IPPROTO_HOPOPTS,
                    IPPROTO_ROUTING,
                    IPPROTO_DSTOPTS,
                    IPPROTO_FRAGMENT,
                ]
                .contains(&next)
                {
                    break;
                }
                let Some(ext) = frame.get(l4..l4 + 2) else {
                    break;
                };
                next = ext[0];
                l4 += (ext[1] as usize + 1) * 8;
            }
            (IpAddr::V6(dst.into()), candidates)
        }
        _ => return false,
    };
    l4_candidates.into_iter().any(|l4| {
        let Some(tcp) = frame.get(l4..l4 + 14) else {
            return false;
        };
        let flags = tcp[13];
        let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
        flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN && is_listener(dst, dport)
    })
}

/// SplitMix64: tiny, seedable, good enough to drive a fuzz loop reproducibly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// Random bytes, a random number (`0..n`) of them.
    pub fn bytes_below(&mut self, n: u64) -> Vec<u8> {
        let len = self.below(n) as usize;
        self.bytes(len)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}
