//! Ethernet/IPv4 frames for BPF_PROG_TEST_RUN and for the flood generator's template, with
//! correct checksums (as a client's stack would send them).
use std::net::Ipv4Addr;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

fn sum16(bytes: &[u8], mut sum: u32) -> u32 {
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum = sum.wrapping_add(u32::from(word));
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    sum16(&dst.octets(), sum16(&src.octets(), 0)) + u32::from(proto) + len as u32
}

/// The frame's endpoints.
#[derive(Clone, Copy, Debug)]
pub struct Ends {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

/// A TCP segment (a SYN carries an MSS option, as a real client's does).
pub fn tcp(ends: Ends, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let options: &[u8] = if flags & TCP_SYN != 0 {
        &[2, 4, 0x05, 0xB4]
    } else {
        &[]
    };
    let header_len = 20 + options.len();
    let mut seg = Vec::with_capacity(header_len);
    seg.extend_from_slice(&sport.to_be_bytes());
    seg.extend_from_slice(&dport.to_be_bytes());
    seg.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    let ack: u32 = if flags & TCP_ACK != 0 { 0x0BAD_F00D } else { 0 };
    seg.extend_from_slice(&ack.to_be_bytes());
    seg.push(((header_len / 4) as u8) << 4);
    seg.push(flags);
    seg.extend_from_slice(&64_240u16.to_be_bytes());
    seg.extend_from_slice(&[0, 0, 0, 0]);
    seg.extend_from_slice(options);
    let checksum = fold(sum16(
        &seg,
        pseudo(ends.src, ends.dst, IPPROTO_TCP, seg.len()),
    ));
    seg[16..18].copy_from_slice(&checksum.to_be_bytes());
    ipv4(ends, IPPROTO_TCP, &seg)
}

/// A small UDP datagram (the non-TCP frame).
pub fn udp(ends: Ends, sport: u16, dport: u16) -> Vec<u8> {
    let payload = b"limiter bench";
    let mut seg = Vec::with_capacity(8 + payload.len());
    seg.extend_from_slice(&sport.to_be_bytes());
    seg.extend_from_slice(&dport.to_be_bytes());
    seg.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    seg.extend_from_slice(&[0, 0]);
    seg.extend_from_slice(payload);
    let checksum = fold(sum16(
        &seg,
        pseudo(ends.src, ends.dst, IPPROTO_UDP, seg.len()),
    ));
    seg[6..8].copy_from_slice(&checksum.to_be_bytes());
    ipv4(ends, IPPROTO_UDP, &seg)
}

fn ipv4(ends: Ends, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut ip = Vec::with_capacity(total);
    ip.push(0x45);
    ip.push(0);
    ip.extend_from_slice(&(total as u16).to_be_bytes());
    ip.extend_from_slice(&0x4242u16.to_be_bytes());
    ip.extend_from_slice(&0x4000u16.to_be_bytes()); // Don't fragment.
    ip.push(64);
    ip.push(proto);
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(&ends.src.octets());
    ip.extend_from_slice(&ends.dst.octets());
    let checksum = fold(sum16(&ip, 0));
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    ip.extend_from_slice(payload);
    let mut frame = Vec::with_capacity(14 + ip.len());
    frame.extend_from_slice(&ends.dst_mac);
    frame.extend_from_slice(&ends.src_mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends() -> Ends {
        Ends {
            src_mac: [2, 0, 0, 0, 0, 2],
            dst_mac: [2, 0, 0, 0, 0, 1],
            src: Ipv4Addr::new(198, 18, 0, 2),
            dst: Ipv4Addr::new(198, 18, 0, 1),
        }
    }

    #[test]
    fn checksums_verify() {
        let frame = tcp(ends(), 40000, 8000, TCP_SYN);
        assert_eq!(frame.len(), 14 + 20 + 24);
        // A correct header sums to 0xFFFF (folds to 0).
        assert_eq!(fold(sum16(&frame[14..34], 0)), 0);
        let seg = &frame[34..];
        let e = ends();
        assert_eq!(
            fold(sum16(seg, pseudo(e.src, e.dst, IPPROTO_TCP, seg.len()))),
            0
        );
        let frame = udp(ends(), 5353, 8000);
        let seg = &frame[34..];
        assert_eq!(
            fold(sum16(seg, pseudo(e.src, e.dst, IPPROTO_UDP, seg.len()))),
            0
        );
    }
}
