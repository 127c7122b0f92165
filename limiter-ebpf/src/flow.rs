//! A connection's 4-tuple as XDP saw it, from its socket: from sock_ops' context (accounting,
//! keepalive) or from the socket itself (`close_watch`).
use aya_ebpf::programs::SockOpsContext;
use limiter_common::{FlowKey, family};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// `::ffff:0:0/96` in network order, as the third word of an IPv4-mapped IPv6 address.
const V4_MAPPED_PREFIX: u32 = u32::from_ne_bytes([0, 0, 0xFF, 0xFF]);

/// The connection's 4-tuple as XDP saw it. An IPv4 connection accepted by a dual-stack
/// (`[::]`) socket shows IPv4-mapped addresses here; it is folded back to IPv4.
#[inline(always)]
pub fn flow_of(ctx: &SockOpsContext) -> Option<FlowKey> {
    socket_flow(
        ctx.family(),
        || Some((ctx.local_ip4(), ctx.remote_ip4())),
        || Some((ctx.local_ip6(), ctx.remote_ip6())),
        || Some((ctx.local_port() as u16, remote_port(ctx.remote_port()))),
    )
}

/// A connection's 4-tuple from its socket's fields, however they are read (sock_ops' context,
/// or the socket itself in `close_watch`): the address family (AF_INET or AF_INET6), then, read
/// only for that family, (local, remote) addresses in network order, and (local, remote) ports
/// in host order. IPv4-mapped IPv6 addresses are folded back to IPv4, as XDP sees them.
#[inline(always)]
pub fn socket_flow(
    af: u32,
    v4: impl FnOnce() -> Option<(u32, u32)>,
    v6: impl FnOnce() -> Option<([u32; 4], [u32; 4])>,
    ports: impl FnOnce() -> Option<(u16, u16)>,
) -> Option<FlowKey> {
    let (addr_family, local_addr, remote_addr) = match af {
        AF_INET => {
            let (local, remote) = v4()?;
            (family::V4, [local, 0, 0, 0], [remote, 0, 0, 0])
        }
        AF_INET6 => {
            let (local, remote) = v6()?;
            if is_v4_mapped(&local) && is_v4_mapped(&remote) {
                (family::V4, [local[3], 0, 0, 0], [remote[3], 0, 0, 0])
            } else {
                (family::V6, local, remote)
            }
        }
        _ => return None,
    };
    let (local_port, remote_port) = ports()?;
    Some(FlowKey {
        local_addr,
        remote_addr,
        local_port,
        remote_port,
        family: addr_family,
        _pad: 0,
    })
}

#[inline(always)]
fn is_v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_PREFIX
}

/// `remote_port` is in network order; on little-endian kernels the 16-bit port sits in the
/// upper half of the word (kernel `sock_ops_convert_ctx_access` shifts it), on others it is
/// the lower half. A port is never 0, so the two layouts cannot be confused.
#[inline(always)]
fn remote_port(raw: u32) -> u16 {
    if raw > 0xFFFF {
        u32::from_be(raw) as u16
    } else {
        u16::from_be(raw as u16)
    }
}
