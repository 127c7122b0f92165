//! The kernel's socket table through NETLINK_SOCK_DIAG (what `ss` uses): destroying one TCP
//! socket (`SOCK_DESTROY`, what `ss -K` does), listing the listening TCP sockets of the agent's
//! network namespace, and listing its established connections with their cookies. Netlink
//! rather than /proc/net/tcp: a dump filtered by state costs the same whatever the number of
//! sockets in other states, and it carries the socket cookie the kernel programs key on.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use limiter_common::{FlowKey, family};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
/// `SOCK_DIAG_BY_FAMILY` and `SOCK_DESTROY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const TCP_LISTEN: u32 = 10;
/// The states between ESTABLISHED and CLOSE (include/net/tcp_states.h): ESTABLISHED, FIN_WAIT1,
/// FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING. TIME_WAIT sockets have been through CLOSE already.
const ESTABLISHED_UNTIL_CLOSE: u32 = 1 << 1 | 1 << 4 | 1 << 5 | 1 << 8 | 1 << 9 | 1 << 11;
/// `::ffff:0:0/96` in network order, as the third word of an IPv4-mapped IPv6 address.
const V4_MAPPED_PREFIX: u32 = u32::from_ne_bytes([0, 0, 0xFF, 0xFF]);
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// `struct inet_diag_sockid` (linux/inet_diag.h): ports and addresses in network order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`, after the netlink header.
#[repr(C)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
struct Request {
    header: libc::nlmsghdr,
    body: InetDiagReqV2,
}

/// The start of `struct inet_diag_msg`, as a dump answers.
#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
}

/// A listening TCP socket: its local address (unspecified for a wildcard) and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listening {
    pub addr: IpAddr,
    pub port: u16,
}

/// An established TCP connection: its 4-tuple from this side (as the kernel programs key it,
/// IPv4-mapped addresses folded back to IPv4) and its socket cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    pub flow: FlowKey,
    pub cookie: u64,
}

/// A NETLINK_SOCK_DIAG socket.
pub struct SockDiag(OwnedFd);

impl SockDiag {
    pub fn open() -> io::Result<SockDiag> {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        Ok(SockDiag(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn send(&self, request: &Request) -> io::Result<()> {
        // SAFETY: sending a plain struct of its own length on our socket.
        let sent = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                (&raw const *request).cast(),
                size_of::<Request>(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv<'a>(&self, buffer: &'a mut [u8]) -> io::Result<&'a [u8]> {
        // SAFETY: receiving into a buffer of the given length.
        let got = unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(&buffer[..got as usize])
    }

    /// Destroys the TCP socket of `flow` (the server's view: local = source) with `cookie`:
    /// the kernel sends the peer a RST and closes the socket. Waits for the kernel's answer.
    pub fn destroy(&self, flow: &FlowKey, cookie: u64) -> io::Result<()> {
        let (af, words) = match flow.family {
            family::V4 => (libc::AF_INET, 1),
            _ => (libc::AF_INET6, 4),
        };
        let mut id = InetDiagSockId {
            sport: flow.local_port.to_be_bytes(),
            dport: flow.remote_port.to_be_bytes(),
            cookie: [cookie as u32, (cookie >> 32) as u32],
            ..Default::default()
        };
        id.src[..words].copy_from_slice(&flow.local_addr[..words]);
        id.dst[..words].copy_from_slice(&flow.remote_addr[..words]);
        self.send(&request(SOCK_DESTROY, libc::NLM_F_ACK, af, u32::MAX, id))?;
        let mut answer = [0u8; 256];
        let answer = self.recv(&mut answer)?;
        // The ack: a nlmsghdr, then an nlmsgerr whose first field is 0 or -errno.
        let header = size_of::<libc::nlmsghdr>();
        let error = answer
            .get(header..header + 4)
            .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| io::Error::other("short sock_diag answer"))?;
        match error {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(-e)),
        }
    }

    /// Every listening TCP socket of this network namespace, both families.
    pub fn listening(&self) -> io::Result<Vec<Listening>> {
        Ok(self
            .dump(1 << TCP_LISTEN)?
            .iter()
            .map(listening_of)
            .collect())
    }

    /// Every TCP connection of this network namespace between ESTABLISHED and CLOSE, both
    /// families.
    pub fn connections(&self) -> io::Result<Vec<Connection>> {
        Ok(self
            .dump(ESTABLISHED_UNTIL_CLOSE)?
            .iter()
            .map(connection_of)
            .collect())
    }

    /// The TCP sockets in `states` (a bit per state), both families.
    fn dump(&self, states: u32) -> io::Result<Vec<InetDiagMsg>> {
        let mut found = Vec::new();
        for af in [libc::AF_INET, libc::AF_INET6] {
            self.send(&request(
                SOCK_DIAG_BY_FAMILY,
                libc::NLM_F_DUMP,
                af,
                states,
                InetDiagSockId::default(),
            ))?;
            let mut buffer = vec![0u8; 32 * 1024];
            'dump: loop {
                let batch = self.recv(&mut buffer)?;
                if batch.is_empty() {
                    break;
                }
                let mut at = 0;
                while at + size_of::<libc::nlmsghdr>() <= batch.len() {
                    // SAFETY: in bounds (checked above); read unaligned.
                    let header: libc::nlmsghdr =
                        unsafe { std::ptr::read_unaligned(batch[at..].as_ptr().cast()) };
                    let len = header.nlmsg_len as usize;
                    if len < size_of::<libc::nlmsghdr>() || at + len > batch.len() {
                        return Err(io::Error::other("malformed sock_diag dump"));
                    }
                    match header.nlmsg_type {
                        NLMSG_DONE => break 'dump,
                        NLMSG_ERROR => return Err(io::Error::other("sock_diag dump refused")),
                        SOCK_DIAG_BY_FAMILY => {
                            let body = &batch[at + size_of::<libc::nlmsghdr>()..at + len];
                            if body.len() >= size_of::<InetDiagMsg>() {
                                // SAFETY: long enough (checked); read unaligned.
                                found.push(unsafe {
                                    std::ptr::read_unaligned(body.as_ptr().cast())
                                });
                            }
                        }
                        _ => {}
                    }
                    // Messages are 4-byte aligned (NLMSG_ALIGN).
                    at += (len + 3) & !3;
                }
            }
        }
        Ok(found)
    }
}

fn request(
    kind: u16,
    flags: libc::c_int,
    af: libc::c_int,
    states: u32,
    id: InetDiagSockId,
) -> Request {
    Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: kind,
            nlmsg_flags: (libc::NLM_F_REQUEST | flags) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        body: InetDiagReqV2 {
            family: af as u8,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states,
            id,
        },
    }
}

fn listening_of(msg: &InetDiagMsg) -> Listening {
    let bytes = |words: &[u32]| -> Vec<u8> { words.iter().flat_map(|w| w.to_ne_bytes()).collect() };
    let addr = if msg.family == libc::AF_INET as u8 {
        let o: [u8; 4] = bytes(&msg.id.src[..1]).try_into().expect("4 bytes");
        IpAddr::V4(Ipv4Addr::from(o))
    } else {
        let o: [u8; 16] = bytes(&msg.id.src).try_into().expect("16 bytes");
        IpAddr::V6(Ipv6Addr::from(o))
    };
    Listening {
        addr,
        port: u16::from_be_bytes(msg.id.sport),
    }
}

fn connection_of(msg: &InetDiagMsg) -> Connection {
    let id = &msg.id;
    let is_mapped = |a: &[u32; 4]| a[0] == 0 && a[1] == 0 && a[2] == V4_MAPPED_PREFIX;
    let (addr_family, local_addr, remote_addr) = if msg.family == libc::AF_INET as u8 {
        (family::V4, [id.src[0], 0, 0, 0], [id.dst[0], 0, 0, 0])
    } else if is_mapped(&id.src) && is_mapped(&id.dst) {
        (family::V4, [id.src[3], 0, 0, 0], [id.dst[3], 0, 0, 0])
    } else {
        (family::V6, id.src, id.dst)
    };
    Connection {
        flow: FlowKey {
            local_addr,
            remote_addr,
            local_port: u16::from_be_bytes(id.sport),
            remote_port: u16::from_be_bytes(id.dport),
            family: addr_family,
            _pad: 0,
        },
        cookie: id.cookie[0] as u64 | (id.cookie[1] as u64) << 32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_what_the_kernel_reads() {
        // nlmsghdr (16) + inet_diag_req_v2 (56); inet_diag_msg starts with 4 bytes + the id.
        assert_eq!(size_of::<InetDiagReqV2>(), 56);
        assert_eq!(size_of::<Request>(), 72);
        assert_eq!(size_of::<InetDiagMsg>(), 52);
    }

    /// The dump works without privileges: a socket this test listens on is in it.
    #[test]
    fn a_listening_socket_is_listed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let found = SockDiag::open().unwrap().listening().unwrap();
        assert!(
            found.contains(&Listening {
                addr: "127.0.0.1".parse().unwrap(),
                port
            }),
            "{found:?}"
        );
    }

    /// Both ends of a loopback connection are listed, IPv4-mapped addresses folded to IPv4,
    /// with distinct cookies.
    #[test]
    fn established_connections_are_listed_with_cookies() {
        let listener = std::net::TcpListener::bind("[::]:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _server = listener.accept().unwrap();
        let client_port = client.local_addr().unwrap().port();
        let found = SockDiag::open().unwrap().connections().unwrap();
        let server_side = found
            .iter()
            .find(|c| c.flow.local_port == port && c.flow.remote_port == client_port)
            .unwrap_or_else(|| panic!("server side missing: {found:?}"));
        assert_eq!(server_side.flow.family, family::V4);
        assert_eq!(
            server_side.flow.remote_addr[0],
            u32::from_ne_bytes([127, 0, 0, 1])
        );
        let client_side = found
            .iter()
            .find(|c| c.flow.local_port == client_port && c.flow.remote_port == port)
            .unwrap_or_else(|| panic!("client side missing: {found:?}"));
        assert_ne!(server_side.cookie, client_side.cookie);
        assert_ne!(server_side.cookie, 0);
    }
}
