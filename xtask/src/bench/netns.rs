//! The test bed: a server and a client (generator) network namespace joined by a veth pair, as
//! the namespace tests and the demo build it, plus the sockets the bench opens inside them.
//! Dropping a [`TestBed`] deletes both namespaces, and with them the veth pair, every address,
//! route, nftables/iptables rule and XDP program in them.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd as _,
    path::Path,
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Protocol, Socket, Type};

use super::sys;
use crate::cmd::{self, command};

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The made-up next hop the server routes the flood's sources through (the generator veth).
pub const FLOOD_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// The flood's source addresses: 198.19.0.0/16 (inside 198.18.0.0/15).
pub const FLOOD_NET: &str = "198.19.0.0/16";
pub const SERVER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x12, 0x00, 0x01];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x12, 0x00, 0x02];

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub struct TestBed {
    pub server_ns: String,
    pub client_ns: String,
    pub server_veth: String,
    pub client_veth: String,
    /// Namespaces created so far (only these are deleted).
    namespaces: Vec<String>,
}

impl TestBed {
    /// Two namespaces, a veth pair with fixed MACs, 198.18.0.1/24 (server) and 198.18.0.2/24
    /// (client), TSO/GSO off on both ends, loopback up, and a route from the server back to the
    /// flood's sources through the generator veth (a permanent neighbour entry, so replies to
    /// them cost no ARP).
    pub fn create() -> Result<TestBed> {
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let mut bed = TestBed {
            server_ns: format!("lim-bench-srv-{pid}-{n}"),
            client_ns: format!("lim-bench-cli-{pid}-{n}"),
            // At most 15 bytes: "lbS" + pid (7 digits at most) + counter.
            server_veth: format!("lbS{pid}{n}"),
            client_veth: format!("lbC{pid}{n}"),
            namespaces: Vec::new(),
        };
        for ns in [bed.server_ns.clone(), bed.client_ns.clone()] {
            quiet(command("ip").args(["netns", "add", &ns]))?;
            bed.namespaces.push(ns);
        }
        quiet(command("ip").args([
            "-n",
            &bed.server_ns,
            "link",
            "add",
            &bed.server_veth,
            "address",
            &mac_text(SERVER_MAC),
            "type",
            "veth",
            "peer",
            "name",
            &bed.client_veth,
            "address",
            &mac_text(CLIENT_MAC),
            "netns",
            &bed.client_ns,
        ]))?;
        for (ns, veth, addr) in [
            (&bed.server_ns, &bed.server_veth, SERVER_IP),
            (&bed.client_ns, &bed.client_veth, CLIENT_IP),
        ] {
            quiet(command("ip").args([
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                veth,
            ]))?;
            quiet(command("ip").args(["-n", ns, "link", "set", veth, "up"]))?;
            quiet(command("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
            bed.exec(ns, &["ethtool", "-K", veth, "tso", "off", "gso", "off"])?;
        }
        quiet(command("ip").args([
            "-n",
            &bed.server_ns,
            "neigh",
            "replace",
            &FLOOD_GATEWAY.to_string(),
            "lladdr",
            &mac_text(CLIENT_MAC),
            "dev",
            &bed.server_veth,
            "nud",
            "permanent",
        ]))?;
        quiet(command("ip").args([
            "-n",
            &bed.server_ns,
            "route",
            "add",
            FLOOD_NET,
            "via",
            &FLOOD_GATEWAY.to_string(),
            "dev",
            &bed.server_veth,
        ]))?;
        // The client connects from many ports in the connection-rate part.
        bed.exec(
            &bed.client_ns.clone(),
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_local_port_range=1024 65535",
            ],
        )?;
        Ok(bed)
    }

    /// A veth pair `name`/`name`p in namespace `ns`, down, that nothing is sent through: an
    /// interface to attach an XDP program to, so that the kernel keeps the program in its XDP
    /// dispatcher (a BPF_PROG_TEST_RUN then costs microseconds, not the dispatcher's
    /// milliseconds of adding and removing it). At most 15 bytes with the `p`.
    pub fn add_spare_veth(&self, ns: &str, name: &str) -> Result<()> {
        let peer = format!("{name}p");
        self.exec(
            ns,
            &[
                "ip", "link", "add", name, "type", "veth", "peer", "name", &peer,
            ],
        )
        .map(|_| ())
    }

    /// Runs a command inside namespace `ns` (`ip netns exec`, which also gives it that
    /// namespace's /sys); fails with its stderr.
    /// iptables `connlimit` on the server: SYNs to `port` beyond `limit` connections (all
    /// sources together) are dropped.
    pub fn iptables_connlimit(&self, port: u16, limit: &str) -> Result<String> {
        let port = port.to_string();
        self.exec(
            &self.server_ns,
            &[
                "iptables",
                "-A",
                "INPUT",
                "-p",
                "tcp",
                "--syn",
                "--dport",
                &port,
                "-m",
                "connlimit",
                "--connlimit-above",
                limit,
                "--connlimit-mask",
                "0",
                "-j",
                "DROP",
            ],
        )
    }

    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<String> {
        cmd::output_quiet(command("ip").args(["netns", "exec", ns]).args(args))
    }

    /// Attaches an XDP object (section `xdp`) in native mode, replacing what was there.
    pub fn attach_xdp(&self, server_side: bool, object: &Path) -> Result<()> {
        self.attach_xdp_as(server_side, object, "xdpdrv")
    }

    /// `how`: `xdpdrv` (native) or `xdpgeneric`.
    pub fn attach_xdp_as(&self, server_side: bool, object: &Path, how: &str) -> Result<()> {
        let (ns, veth) = self.side(server_side);
        quiet(
            command("ip")
                .args(["-n", ns, "link", "set", "dev", veth, how, "obj"])
                .arg(object)
                .args(["sec", "xdp"]),
        )
        .with_context(|| format!("attaching {} to {veth}", object.display()))
    }

    pub fn detach_xdp(&self, server_side: bool) -> Result<()> {
        self.detach_xdp_as(server_side, "xdpdrv")
    }

    pub fn detach_xdp_as(&self, server_side: bool, how: &str) -> Result<()> {
        let (ns, veth) = self.side(server_side);
        quiet(command("ip").args(["-n", ns, "link", "set", "dev", veth, how, "off"]))
    }

    fn side(&self, server_side: bool) -> (&str, &str) {
        if server_side {
            (&self.server_ns, &self.server_veth)
        } else {
            (&self.client_ns, &self.client_veth)
        }
    }

    /// Threaded NAPI for a veth (it has NAPI only while it runs XDP): its receive work runs in
    /// kernel thread `napi/DEV-ID`, which can be pinned to a CPU and whose CPU time is exactly
    /// the cost of receiving on that veth. Returns the thread's pid, pinned to `cpu` and made
    /// SCHED_FIFO (see [`sys::realtime`]).
    pub fn threaded_napi(&self, server_side: bool, cpu: usize) -> Result<u32> {
        let (ns, veth) = self.side(server_side);
        self.exec(
            ns,
            &[
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{veth}/threaded"),
            ],
        )?;
        let pid = cmd::poll_until(
            &format!("the NAPI thread of {veth}"),
            Duration::from_secs(5),
            Duration::from_millis(20),
            || {
                Ok(match sys::napi_thread(veth) {
                    Some(pid) => cmd::Check::Done(pid),
                    None => cmd::Check::NotYet("no napi/ thread yet".into()),
                })
            },
        )?;
        sys::pin(pid as libc::pid_t, cpu)?;
        sys::realtime(pid)?;
        Ok(pid)
    }

    /// The server veth's per-queue XDP counters (`ethtool -S`): (name, value).
    pub fn veth_stats(&self, server_side: bool) -> Result<Vec<(String, u64)>> {
        let (ns, veth) = self.side(server_side);
        let text = self.exec(ns, &["ethtool", "-S", veth])?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_string(), v.trim().parse().ok()?))
            })
            .collect())
    }

    pub fn veth_stat(&self, server_side: bool, name: &str) -> Result<u64> {
        self.veth_stats(server_side)?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .with_context(|| format!("no `{name}` in ethtool -S"))
    }

    /// Runs an nft script (commands separated by newlines) in the server namespace.
    pub fn nft(&self, script: &str) -> Result<String> {
        self.exec(&self.server_ns.clone(), &["nft", script])
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = quiet(command("ip").args(["netns", "del", &ns])) {
                eprintln!("bench: cleanup: deleting namespace {ns}: {e:#}");
            }
        }
    }
}

fn quiet(cmd: &mut std::process::Command) -> Result<()> {
    cmd::output_quiet(cmd).map(|_| ())
}

/// What the server does with an accepted connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OnAccept {
    /// Keep it open until the server stops.
    Hold,
    /// Close it at once with a RST (SO_LINGER 0): no TIME_WAIT on either side, so a rate test
    /// never runs out of 4-tuples.
    Reset,
    /// Write [`GREETING`], then hold it. Through a proxy, a client that read the greeting knows
    /// the proxy connected it to this upstream (an accept followed by a close, which is also
    /// what a proxy that refuses or cannot reach its upstream does, would not tell).
    Greet,
}

/// The byte an [`OnAccept::Greet`] server writes on every connection.
pub const GREETING: u8 = b'g';

/// A TCP server in the server namespace: a thread accepting on `SERVER_IP:port`. A greeted
/// connection is closed with a RST (SO_LINGER 0) once the other end closes it, or when the
/// server stops: no side of it ends in TIME_WAIT, so rate tests (also through a proxy, on the
/// proxy's upstream side) do not run out of ports. A held one is closed the ordinary way when
/// the server stops (the burst part waits for exactly that close).
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

/// A server thread never outlives this, whatever happens to the bench.
const SERVER_LIFETIME: Duration = Duration::from_secs(15 * 60);

impl Server {
    pub fn start(ns: &str, port: u16, on_accept: OnAccept) -> Result<Server> {
        Server::start_on(ns, port, on_accept, None)
    }

    /// [`Server::start`] with its thread pinned to `cpu` (where it is part of the server side
    /// being measured).
    pub fn start_on(
        ns: &str,
        port: u16,
        on_accept: OnAccept,
        cpu: Option<usize>,
    ) -> Result<Server> {
        Server::start_at(ns, SERVER_IP, port, on_accept, cpu)
    }

    /// [`Server::start_on`] listening on `ip` (e.g. a pod's address) instead of the server's.
    pub fn start_at(
        ns: &str,
        ip: Ipv4Addr,
        port: u16,
        on_accept: OnAccept,
        cpu: Option<usize>,
    ) -> Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let ns_name = ns.to_string();
        let stop2 = Arc::clone(&stop);
        let thread = thread::spawn(move || -> Result<()> {
            let listener = (|| -> Result<Socket> {
                sys::enter_netns(&ns_name)?;
                if let Some(cpu) = cpu {
                    sys::pin_this_thread(cpu)?;
                }
                let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
                socket.set_reuse_address(true)?;
                socket.bind(&SocketAddr::V4(SocketAddrV4::new(ip, port)).into())?;
                socket.listen(4096)?;
                socket.set_nonblocking(true)?;
                Ok(socket)
            })();
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            serve(&listener, on_accept, &stop2)
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e).context(format!("listening on {SERVER_IP}:{port}")),
            Err(_) => bail!("the server thread did not start listening"),
        }
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops accepting and closes every held connection (and the listener).
    pub fn stop(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| bail!("the server thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            eprintln!("bench: cleanup: server: {e:#}");
        }
    }
}

/// The server's loop, until `stop` (or SERVER_LIFETIME): poll the listener and the greeted
/// connections, accept what is waiting, and close greeted connections the other end closed.
fn serve(listener: &Socket, on_accept: OnAccept, stop: &AtomicBool) -> Result<()> {
    let mut held: Vec<Socket> = Vec::new();
    let mut open: Vec<Socket> = Vec::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + SERVER_LIFETIME;
    while !stop.load(Ordering::SeqCst) && Instant::now() < end {
        let mut fds: Vec<libc::pollfd> = std::iter::once(listener)
            .chain(&open)
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of its length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        // Closed by the other end (EOF or error): close ours with a RST. Anything else it sent
        // is read and dropped.
        let mut keep = Vec::with_capacity(open.len());
        for (conn, fd) in open.drain(..).zip(&fds[1..]) {
            if fd.revents == 0 {
                keep.push(conn);
                continue;
            }
            match (&conn).read(&mut buf) {
                Ok(n) if n > 0 => keep.push(conn),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => keep.push(conn),
                _ => {
                    conn.set_linger(Some(Duration::ZERO)).ok();
                }
            }
        }
        open = keep;
        loop {
            match listener.accept() {
                Ok((conn, _)) => match on_accept {
                    OnAccept::Hold => held.push(conn),
                    OnAccept::Reset => {
                        conn.set_linger(Some(Duration::ZERO)).ok();
                    }
                    OnAccept::Greet => {
                        conn.set_nonblocking(true)?;
                        // One byte into an empty send buffer: never blocks.
                        if (&conn).write(&[GREETING]).is_ok() {
                            open.push(conn);
                        }
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // The client gave up before the accept (it reset a queued connection).
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
                Err(e) => return Err(e).context("accept"),
            }
        }
    }
    for conn in open {
        conn.set_linger(Some(Duration::ZERO)).ok();
    }
    drop(held);
    Ok(())
}

/// Opens `count` connections to `SERVER_IP:port` from the client namespace, all at once (every
/// SYN is sent before any handshake is waited for), split over `threads` threads pinned to
/// different CPUs and released together. Returns the connections that were established within
/// `timeout` (the others are closed).
pub fn connect_many(
    ns: &str,
    port: u16,
    count: usize,
    threads: usize,
    timeout: Duration,
) -> Result<Vec<Socket>> {
    connect_many_to(
        ns,
        SocketAddrV4::new(SERVER_IP, port),
        count,
        threads,
        timeout,
    )
}

/// [`connect_many`] to another address (one the server namespace routes to, e.g. a pod's).
pub fn connect_many_to(
    ns: &str,
    to: SocketAddrV4,
    count: usize,
    threads: usize,
    timeout: Duration,
) -> Result<Vec<Socket>> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let barrier = Barrier::new(threads);
    let target: socket2::SockAddr = SocketAddr::V4(to).into();
    let results: Vec<Result<Vec<Socket>>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let n = count / threads + usize::from(t < count % threads);
                let (barrier, target) = (&barrier, &target);
                scope.spawn(move || -> Result<Vec<Socket>> {
                    sys::enter_netns(ns)?;
                    sys::pin_this_thread(t % cpus)?;
                    let mut sockets = Vec::with_capacity(n);
                    for _ in 0..n {
                        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
                        s.set_nonblocking(true)?;
                        sockets.push(s);
                    }
                    barrier.wait();
                    for s in &sockets {
                        match s.connect(target) {
                            Ok(()) => {}
                            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                            Err(e) => return Err(e).context("connect"),
                        }
                    }
                    Ok(wait_connected(sockets, timeout))
                })
            })
            .collect();
        sys::join_all(handles)
    });
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    Ok(all)
}

/// Polls non-blocking connects until each has succeeded or failed, or `timeout` passes; keeps
/// the established ones.
fn wait_connected(sockets: Vec<Socket>, timeout: Duration) -> Vec<Socket> {
    let deadline = Instant::now() + timeout;
    let mut waiting = sockets;
    let mut done = Vec::new();
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || cmd::interrupted() {
            break;
        }
        let mut fds: Vec<libc::pollfd> = waiting
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        let ms = left.as_millis().clamp(1, 50) as libc::c_int;
        // SAFETY: `fds` is a valid array of its length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        let mut still = Vec::new();
        for (s, fd) in waiting.into_iter().zip(&fds) {
            if fd.revents == 0 {
                still.push(s);
            } else if matches!(s.take_error(), Ok(None)) && s.peer_addr().is_ok() {
                done.push(s);
            }
            // Otherwise refused or reset: dropped (closed).
        }
        waiting = still;
    }
    done
}

/// Established TCP sockets in the server namespace with local port `port` (server side only:
/// the client's sockets are in the other namespace), read from /proc/thread-self/net/tcp. Call
/// from a thread inside the server namespace.
pub fn established_here(port: u16) -> Result<usize> {
    tcp_sockets_here(port, "01")
}

/// Whether a socket in this thread's namespace listens on local port `port` (LISTEN): a server
/// started as a separate process is ready. Call from a thread inside that namespace.
pub fn listening_here(port: u16) -> Result<bool> {
    Ok(tcp_sockets_here(port, "0A")? > 0)
}

/// IPv4 TCP sockets with local port `port` in state `state` (hex, as /proc/net/tcp writes it)
/// in this thread's network namespace.
fn tcp_sockets_here(port: u16, state: &str) -> Result<usize> {
    let mut text = String::new();
    std::fs::File::open("/proc/thread-self/net/tcp")
        .context("opening /proc/thread-self/net/tcp")?
        .read_to_string(&mut text)?;
    let wanted = format!(":{port:04X}");
    Ok(text
        .lines()
        .skip(1)
        .filter(|l| {
            let mut f = l.split_whitespace();
            let local = f.nth(1).unwrap_or_default();
            let st = f.nth(1).unwrap_or_default();
            local.ends_with(&wanted) && st == state
        })
        .count())
}

/// Waits (at most `timeout`) until something listens on `port` in namespace `ns`; `tail` says
/// what the server wrote, for the error when it never does.
pub fn wait_listening(
    ns: &str,
    port: u16,
    what: &str,
    timeout: Duration,
    tail: impl Fn() -> String,
) -> Result<()> {
    cmd::poll_until(
        &format!("{what} to listen on port {port}"),
        timeout,
        Duration::from_millis(20),
        || {
            Ok(if sys::in_netns(ns, || listening_here(port))? {
                cmd::Check::Done(())
            } else {
                cmd::Check::NotYet(format!("not listening; it wrote:\n{}", tail()))
            })
        },
    )
}

/// Waits (up to 5 s) until `n` connections on local port `port` are established in namespace
/// `ns`.
pub fn wait_established(ns: &str, port: u16, n: usize) -> Result<()> {
    cmd::poll_until(
        &format!("{n} connections established on port {port}"),
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            let now = sys::in_netns(ns, || established_here(port))?;
            Ok(if now == n {
                cmd::Check::Done(())
            } else {
                cmd::Check::NotYet(format!("{now} established"))
            })
        },
    )
}

/// A churn's clients: how many threads, on which CPU (None: any), and what a completed
/// connection looks like, by what the server at the other end does with it.
#[derive(Clone, Copy)]
pub struct Churn {
    pub threads: usize,
    pub cpu: Option<usize>,
    /// [`OnAccept::Reset`]: the server's reset (or EOF) ends it. [`OnAccept::Greet`]: only the
    /// greeting does; through a proxy, a close or reset is also what a proxy that cannot reach
    /// its upstream produces.
    pub server: OnAccept,
}

/// Connection churn from the client namespace: each thread in a loop of connect, wait for what
/// ends a completed connection (see [`Churn::server`]), close with a RST (SO_LINGER 0: no
/// TIME_WAIT on any side), until `window` has passed. Connects and reads time out after 1 s.
/// Returns (completed, failed) connections; the first failure is printed.
pub fn churn(ns: &str, port: u16, clients: Churn, window: Duration) -> Result<(u64, u64)> {
    let target: socket2::SockAddr = SocketAddr::V4(SocketAddrV4::new(SERVER_IP, port)).into();
    let barrier = Barrier::new(clients.threads);
    let results: Vec<Result<(u64, u64)>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..clients.threads)
            .map(|_| {
                let (barrier, target) = (&barrier, &target);
                scope.spawn(move || -> Result<(u64, u64)> {
                    sys::enter_netns(ns)?;
                    if let Some(cpu) = clients.cpu {
                        sys::pin_this_thread(cpu)?;
                    }
                    barrier.wait();
                    let end = Instant::now() + window;
                    let (mut ok, mut failed) = (0u64, 0u64);
                    while Instant::now() < end && !cmd::interrupted() {
                        match one_connection(target, clients.server)? {
                            Ok(()) => ok += 1,
                            Err(why) => {
                                if failed == 0 {
                                    eprintln!("  a connection failed: {why}");
                                }
                                failed += 1;
                            }
                        }
                    }
                    Ok((ok, failed))
                })
            })
            .collect();
        sys::join_all(handles)
    });
    let (mut ok, mut failed) = (0, 0);
    for r in results {
        let (o, f) = r?;
        ok += o;
        failed += f;
    }
    Ok((ok, failed))
}

/// One churn connection: Ok(Ok) completed, Ok(Err(why)) failed, Err: no socket at all.
fn one_connection(
    target: &socket2::SockAddr,
    server: OnAccept,
) -> Result<std::result::Result<(), String>> {
    const TIMEOUT: Duration = Duration::from_secs(1);
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_linger(Some(Duration::ZERO))?;
    let reset = |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionReset;
    match s.connect_timeout(target, TIMEOUT) {
        Ok(()) => {}
        // Established, accepted and reset by the server before connect looked at the socket.
        Err(e) if reset(&e) && server == OnAccept::Reset => return Ok(Ok(())),
        Err(e) => return Ok(Err(format!("connect: {e}"))),
    }
    s.set_read_timeout(Some(TIMEOUT))?;
    let mut buf = [0u8; 1];
    Ok(match ((&s).read(&mut buf), server) {
        (Ok(0), OnAccept::Reset) => Ok(()),
        (Err(e), OnAccept::Reset) if reset(&e) => Ok(()),
        (Ok(1), OnAccept::Greet) if buf[0] == GREETING => Ok(()),
        (other, _) => Err(format!(
            "no {} but {other:?}",
            match server {
                OnAccept::Greet => "greeting",
                _ => "reset from the server",
            }
        )),
    })
}

impl TestBed {
    /// [`TestBed::threaded_napi`] after an XDP program was attached anew: the veth then has a
    /// new NAPI thread, and until the old one is gone the name finds either. Waits for a thread
    /// other than `previous`, pinned and SCHED_FIFO as there.
    pub fn threaded_napi_anew(
        &self,
        server_side: bool,
        cpu: usize,
        previous: Option<u32>,
    ) -> Result<u32> {
        cmd::poll_until(
            "a new NAPI thread",
            Duration::from_secs(5),
            Duration::from_millis(20),
            || {
                let pid = self.threaded_napi(server_side, cpu)?;
                Ok(if Some(pid) == previous {
                    cmd::Check::NotYet(format!("still the old thread {pid}"))
                } else {
                    cmd::Check::Done(pid)
                })
            },
        )
    }
}
