//! Frame parsing for admission: Ethernet, up to two VLAN tags, IPv4 (with options, never a
//! fragment) or IPv6 (through hop-by-hop, routing and destination-options headers), then TCP.
//! Every read is bounds-checked against the frame (IPv4's fixed header once, as a whole). The
//! TCP flags are read as soon as the TCP header is found: a segment that is not a plain SYN is
//! `NotSyn` from there (the common case, kept short); a frame cut short before that point, or a
//! SYN whose headers are short or inconsistent, is `Malformed`. Both are passed untouched.
//!
//! Header layouts, lengths and protocol numbers come from network-types; each field is read
//! where its struct puts it (`offset_of!`), one field at a time, so that a frame is read only as
//! far as the decision needs, and values are compared raw (network order) rather than through
//! network-types' enum conversions.
use core::mem::{offset_of, size_of};

use aya_ebpf::programs::XdpContext;
use limiter_common::{FlowKey, family};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    vlan::VlanHdr,
};

/// EtherTypes as they sit in the frame (network-types declares them in network order).
const ETH_P_IP: u16 = EtherType::Ipv4 as u16;
const ETH_P_IPV6: u16 = EtherType::Ipv6 as u16;
const ETH_P_8021Q: u16 = EtherType::Ieee8021q as u16;
const ETH_P_8021AD: u16 = EtherType::Ieee8021ad as u16;
const MAX_VLAN_TAGS: usize = 2;

const IPPROTO_TCP: u8 = IpProto::Tcp as u8;
const IPV4_MF_AND_OFFSET: u16 = 0x3FFF;
const IPV6_HOP_BY_HOP: u8 = IpProto::HopOpt as u8;
const IPV6_ROUTING: u8 = IpProto::Ipv6Route as u8;
const IPV6_DEST_OPTS: u8 = IpProto::Ipv6Opts as u8;
/// Extension headers walked before giving up (and passing the frame).
const MAX_IPV6_EXT_HEADERS: usize = 4;

/// The TCP header without options; its data offset and flags are the two bytes of
/// network-types' bitfield.
const TCP_MIN_HLEN: usize = TcpHdr::LEN;
const TCP_OFFSET_AND_FLAGS: usize = offset_of!(TcpHdr, _bitfield_1);
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// A connection-opening SYN (SYN set; ACK, RST and FIN clear).
pub struct Syn {
    pub flow: FlowKey,
    /// Offset of the IP header in the frame.
    pub l3: usize,
    /// Offset of the TCP header in the frame.
    pub l4: usize,
    /// The segment's sequence number and how much sequence space it uses (SYN + payload), so a
    /// RST can acknowledge it.
    pub seq: u32,
    pub seq_len: u32,
    /// IPv4 without options or IPv6 without extension headers: the RST builder can reply.
    pub plain_ip: bool,
}

pub enum Frame {
    NotSyn,
    Malformed,
    Syn(Syn),
}

#[inline(always)]
pub fn load<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: bounds-checked just above against the end of the frame.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}

#[inline(always)]
fn load_be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    load::<u16>(ctx, offset).map(u16::from_be)
}

/// The address of a `len`-byte header at `offset`, if the frame holds all of it: one bounds
/// check for every field then read with [`field`].
#[inline(always)]
fn header(ctx: &XdpContext, offset: usize, len: usize) -> Option<usize> {
    let start = ctx.data() + offset;
    (start + len <= ctx.data_end()).then_some(start)
}

/// A field at `offset` in a header [`header`] checked.
#[inline(always)]
fn field<T: Copy>(header: usize, offset: usize) -> T {
    // SAFETY: `header` was bounds-checked for the whole header, which holds the field.
    unsafe { core::ptr::read_unaligned((header + offset) as *const T) }
}

macro_rules! or_malformed {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return Frame::Malformed,
        }
    };
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Frame {
    let mut ether_type: u16 = or_malformed!(load(ctx, offset_of!(EthHdr, ether_type)));
    let mut l3 = EthHdr::LEN;
    // Untagged IPv4 first: most frames, and one comparison for them.
    if ether_type == ETH_P_IP {
        return parse_ipv4(ctx, l3);
    }
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        // A tag takes the EtherType's place: the next EtherType ends the tag.
        ether_type = or_malformed!(load(ctx, l3 + offset_of!(VlanHdr, ether_type)));
        l3 += VlanHdr::LEN;
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(ctx, l3),
        ETH_P_IPV6 => parse_ipv6(ctx, l3),
        // Non-IP, or a third VLAN tag.
        _ => Frame::NotSyn,
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Frame {
    // The fixed header, checked once for the fields the decision needs.
    let ip = or_malformed!(header(ctx, l3, Ipv4Hdr::LEN));
    let version_ihl: u8 = field(ip, offset_of!(Ipv4Hdr, vihl));
    let header_len = ((version_ihl & 0x0F) as usize) * 4;
    if version_ihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
        return Frame::Malformed;
    }
    let fragment = u16::from_be(field(ip, offset_of!(Ipv4Hdr, frags)));
    let protocol: u8 = field(ip, offset_of!(Ipv4Hdr, proto));
    if protocol != IPPROTO_TCP || fragment & IPV4_MF_AND_OFFSET != 0 {
        return Frame::NotSyn;
    }
    let l4 = l3 + header_len;
    let Some(offset_byte) = or_malformed!(syn_data_offset(ctx, l4)) else {
        return Frame::NotSyn;
    };
    let total_len = u16::from_be(field(ip, offset_of!(Ipv4Hdr, tot_len))) as usize;
    let [src, dst]: [u32; 2] = field(ip, offset_of!(Ipv4Hdr, src_addr));
    if total_len < header_len + TCP_MIN_HLEN {
        return Frame::Malformed;
    }
    let payload_len = total_len - header_len;
    parse_tcp(
        ctx,
        l3,
        l4,
        offset_byte,
        l3 + total_len,
        payload_len,
        family::V4,
        [src, 0, 0, 0],
        [dst, 0, 0, 0],
        header_len == Ipv4Hdr::LEN,
    )
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize) -> Frame {
    let version: u8 = or_malformed!(load(ctx, l3 + offset_of!(Ipv6Hdr, vcf)));
    if version >> 4 != 6 {
        return Frame::Malformed;
    }
    let payload_len = or_malformed!(load_be16(ctx, l3 + offset_of!(Ipv6Hdr, payload_len))) as usize;
    let mut next_header: u8 = or_malformed!(load(ctx, l3 + offset_of!(Ipv6Hdr, next_hdr)));
    let mut l4 = l3 + Ipv6Hdr::LEN;
    let mut ext_len = 0usize;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if next_header != IPV6_HOP_BY_HOP
            && next_header != IPV6_ROUTING
            && next_header != IPV6_DEST_OPTS
        {
            break;
        }
        let hdr: [u8; 2] = or_malformed!(load(ctx, l4));
        let len = (hdr[1] as usize + 1) * 8;
        next_header = hdr[0];
        l4 += len;
        ext_len += len;
    }
    // Fragments, ESP, too many extension headers, other protocols: not a SYN to look at.
    if next_header != IPPROTO_TCP {
        return Frame::NotSyn;
    }
    let Some(offset_byte) = or_malformed!(syn_data_offset(ctx, l4)) else {
        return Frame::NotSyn;
    };
    let [src, dst]: [[u32; 4]; 2] =
        or_malformed!(load(ctx, addresses_at(l3 + offset_of!(Ipv6Hdr, src_addr))));
    if payload_len < ext_len + TCP_MIN_HLEN {
        return Frame::Malformed;
    }
    parse_tcp(
        ctx,
        l3,
        l4,
        offset_byte,
        l3 + Ipv6Hdr::LEN + payload_len,
        payload_len - ext_len,
        family::V6,
        src,
        dst,
        ext_len == 0,
    )
}

/// The TCP header's data-offset byte if the segment at `l4` opens a connection (SYN set; ACK,
/// RST and FIN clear), Some(None) if it does not, None if the frame ends before its flags. Read
/// before anything else about the segment or its addresses: most TCP segments are not
/// connection-opening SYNs, and those are passed at once, whatever else is wrong with them (it
/// is the kernel's to judge). One load for both bytes: a second, identical bounds check would be
/// folded away by LLVM in a form the verifier cannot follow.
#[inline(always)]
fn syn_data_offset(ctx: &XdpContext, l4: usize) -> Option<Option<u8>> {
    let [offset_byte, flags]: [u8; 2] = load(ctx, l4 + TCP_OFFSET_AND_FLAGS)?;
    Some((flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN).then_some(offset_byte))
}

/// The offset of the source and destination addresses, read after the TCP flags. Their bounds
/// check is implied by the flags' (the TCP header lies beyond them), and LLVM would drop it, but
/// the verifier cannot see the implication: [`opaque`] keeps the check.
#[inline(always)]
fn addresses_at(offset: usize) -> usize {
    opaque(offset)
}

/// Every offset into a frame is below this (the largest IP datagram, behind an Ethernet header,
/// two VLAN tags and an IPv6 header): a mask to it changes no offset that can occur.
const FRAME_OFFSET_MASK: usize = 0x1_FFFF;

/// `offset`, hidden from LLVM (`black_box`) so that it keeps a bounds check another one implies,
/// and masked right before it is added to the frame pointer: the verifiers of Linux 6.1 and 6.12
/// do not keep the offset's bounds on its way there (through the byte swap of the IP header's
/// length, and `black_box`'s stack spill), and refuse the addition ("math between pkt pointer
/// and register with unbounded min value"); the mask bounds it again where the addition is
/// checked, whatever the kernel. (The comparison it feeds only rejects a frame; every load
/// after it has its own bounds check.)
#[inline(always)]
fn opaque(offset: usize) -> usize {
    core::hint::black_box(offset) & FRAME_OFFSET_MASK
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn parse_tcp(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
    offset_byte: u8,
    ip_end: usize,
    segment_len: usize,
    addr_family: u16,
    src: [u32; 4],
    dst: [u32; 4],
    plain_ip: bool,
) -> Frame {
    // The caller has seen a SYN (`syn_data_offset`); now its header must be whole and
    // consistent.
    let data_offset = ((offset_byte >> 4) as usize) * 4;
    if ctx.data() + l4 + TCP_MIN_HLEN > ctx.data_end()
        || data_offset < TCP_MIN_HLEN
        || data_offset > segment_len
    {
        return Frame::Malformed;
    }
    // Cut short of what the IP header announces (e.g. inside the TCP options): the kernel drops
    // it, so it must not take a slot. [`opaque`] keeps LLVM from using this check to drop the
    // bounds check of the header load above (it implies it), which the verifier needs.
    if ctx.data() + opaque(ip_end) > ctx.data_end() {
        return Frame::Malformed;
    }
    let ports: [u16; 2] = or_malformed!(load(ctx, l4 + offset_of!(TcpHdr, source)));
    let seq: u32 = or_malformed!(load(ctx, l4 + offset_of!(TcpHdr, seq)));
    let (src_port, dst_port) = (u16::from_be(ports[0]), u16::from_be(ports[1]));
    Frame::Syn(Syn {
        flow: FlowKey {
            local_addr: dst,
            remote_addr: src,
            local_port: dst_port,
            remote_port: src_port,
            family: addr_family,
            _pad: 0,
        },
        l3,
        l4,
        seq: u32::from_be(seq),
        seq_len: (segment_len - data_offset) as u32 + 1,
        plain_ip,
    })
}
