//! Turns a refused SYN into the RST the kernel would send for a closed port (RFC 9293 3.10.7.1:
//! `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`), in place, so the client fails at once with
//! "connection refused". Addresses and ports are swapped, the frame is cut to the bare TCP
//! header, and both checksums are computed afresh.
use aya_ebpf::{helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext};
use limiter_common::family;

use network_types::{
    eth::EthHdr,
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

use crate::packet::{Syn, load};

/// The RST has no options and replies only to IP headers without options or extensions.
const TCP_HLEN: usize = TcpHdr::LEN;
const IPV4_HLEN: usize = Ipv4Hdr::LEN;
const IPV6_HLEN: usize = Ipv6Hdr::LEN;
/// Both MAC addresses, swapped in one read and one write.
const MACS_LEN: usize = 2 * size_of::<[u8; 6]>();
const TCP_RST_ACK: u8 = 0x14;
const IPPROTO_TCP: u32 = IpProto::Tcp as u32;
const TTL: u8 = 64;
const IPV4_DONT_FRAGMENT: u16 = 0x4000;

/// Rewrites the frame into a RST; false if it cannot (IP options or IPv6 extension headers are
/// not reflected; the caller drops instead).
#[inline(always)]
pub fn reply(ctx: &XdpContext, syn: &Syn) -> bool {
    if !syn.plain_ip {
        return false;
    }
    let new_len = syn.l4 + TCP_HLEN;
    let cur_len = ctx.data_end() - ctx.data();
    if cur_len > new_len {
        // SAFETY: shrinking the frame to a length the parser proved is inside it.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((cur_len - new_len) as i32)) } != 0 {
            return false;
        }
    }
    swap_macs(ctx) && rewrite_ip(ctx, syn) && write_tcp(ctx, syn)
}

#[inline(always)]
fn store<T>(ctx: &XdpContext, offset: usize, value: T) -> bool {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return false;
    }
    // SAFETY: bounds-checked just above against the end of the frame.
    unsafe { core::ptr::write_unaligned((start + offset) as *mut T, value) };
    true
}

#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> bool {
    const _: () = assert!(core::mem::offset_of!(EthHdr, src_addr) == MACS_LEN / 2);
    let Some(macs) = load::<[u8; MACS_LEN]>(ctx, core::mem::offset_of!(EthHdr, dst_addr)) else {
        return false;
    };
    let mut swapped = [0u8; MACS_LEN];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    store(ctx, 0, swapped)
}

#[inline(always)]
fn rewrite_ip(ctx: &XdpContext, syn: &Syn) -> bool {
    let l3 = syn.l3;
    if syn.flow.family == family::V4 {
        let Some(mut ip) = load::<[u8; IPV4_HLEN]>(ctx, l3) else {
            return false;
        };
        ip[2..4].copy_from_slice(&((IPV4_HLEN + TCP_HLEN) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&[0, 0]);
        ip[6..8].copy_from_slice(&IPV4_DONT_FRAGMENT.to_be_bytes());
        ip[8] = TTL;
        ip[10..12].copy_from_slice(&[0, 0]);
        ip[12..16].copy_from_slice(&syn.flow.local_addr[0].to_ne_bytes());
        ip[16..20].copy_from_slice(&syn.flow.remote_addr[0].to_ne_bytes());
        let checksum = fold(sum_be16(&ip, 0));
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        store(ctx, l3, ip)
    } else {
        let Some(mut ip) = load::<[u8; IPV6_HLEN]>(ctx, l3) else {
            return false;
        };
        ip[4..6].copy_from_slice(&(TCP_HLEN as u16).to_be_bytes());
        ip[7] = TTL;
        ip[8..24].copy_from_slice(&words_to_bytes(&syn.flow.local_addr));
        ip[24..40].copy_from_slice(&words_to_bytes(&syn.flow.remote_addr));
        store(ctx, l3, ip)
    }
}

#[inline(always)]
fn write_tcp(ctx: &XdpContext, syn: &Syn) -> bool {
    let flow = &syn.flow;
    let mut tcp = [0u8; TCP_HLEN];
    tcp[0..2].copy_from_slice(&flow.local_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&flow.remote_port.to_be_bytes());
    // SEQ = 0; ACK = SEG.SEQ + SEG.LEN.
    tcp[8..12].copy_from_slice(&syn.seq.wrapping_add(syn.seq_len).to_be_bytes());
    tcp[12] = ((TCP_HLEN / 4) as u8) << 4;
    tcp[13] = TCP_RST_ACK;
    let mut sum = IPPROTO_TCP + TCP_HLEN as u32;
    if flow.family == family::V4 {
        sum = sum_be16(&flow.local_addr[0].to_ne_bytes(), sum);
        sum = sum_be16(&flow.remote_addr[0].to_ne_bytes(), sum);
    } else {
        sum = sum_be16(&words_to_bytes(&flow.local_addr), sum);
        sum = sum_be16(&words_to_bytes(&flow.remote_addr), sum);
    }
    let checksum = fold(sum_be16(&tcp, sum));
    tcp[16..18].copy_from_slice(&checksum.to_be_bytes());
    store(ctx, syn.l4, tcp)
}

#[inline(always)]
fn words_to_bytes(words: &[u32; 4]) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    for (i, word) in words.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    bytes
}

/// One's-complement sum of big-endian 16-bit words (even-length input).
#[inline(always)]
fn sum_be16(bytes: &[u8], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    !(sum as u16)
}
