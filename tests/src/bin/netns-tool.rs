//! `netns-tool`: the servers and clients the namespace tests run inside their namespaces (under
//! `ip netns exec NS netns-tool ...`). Sockets have to live in the test's namespaces, so they
//! cannot be opened by the test process itself.
//!
//! Every subcommand is bounded in count and in time, prints its results as one JSON line on
//! stdout, and exits when its stdin closes, so a test that dies never leaves one running.
//!
//! ```text
//! echo-server ADDR [echo|close-on-data|count-after-eof]
//!                                         threaded TCP echo; prints `listening ADDR` when bound;
//!                                         count-after-eof reads to EOF, then writes back
//!                                         `received N` and closes (a half-close check)
//! hold N ADDR TIMEOUT_MS [SRC]            N concurrent connects (from source address SRC if
//!                                         given), prints {connected, refused, timed_out, other,
//!                                         ...}; then holds them; stdin lines: `ping` (echo
//!                                         check), `close`, `rst` (SO_LINGER 0)
//! churn TOTAL CONCURRENCY ADDR TIMEOUT_MS MAX_MS
//!                                         TOTAL connect/close cycles (failed connects retried);
//!                                         prints {succeeded, failed, ...}
//! raw-syn SRC SPORT DST DPORT COUNT [ip-options]  COUNT identical bare IPv4 SYNs from a raw
//!                                          socket (with 4 bytes of IP options if asked)
//! syn-flood DST DPORT RATE SECONDS        SYNs from forged sources (random in 198.19.0.0/16,
//!                                         random ports) at RATE per second for SECONDS;
//!                                         prints {sent}
//! probe ADDR INTERVAL_MS COUNT TIMEOUT_MS  COUNT connects, one every INTERVAL_MS, each closed
//!                                         at once; prints {ok, failed, p50_ms, p99_ms, errors}
//! udp-echo-server ADDR                    UDP echo; prints `listening ADDR`
//! udp-probe ADDR COUNT TIMEOUT_MS         COUNT datagrams, prints {sent, replied}
//! session ADDR TIMEOUT_MS                 one connection, driven line by line from stdin; prints
//!                                         {connected, connect_ms, error}; then `echo N`,
//!                                         `send N`, `shut-wr`, `read-eof TIMEOUT_MS`, `close`
//!                                         (see `session`)
//! connect-sockopts ADDR TIMEOUT_MS        a plain connect (no options set), then prints the
//!                                         socket's {keepalive, idle, intvl, cnt} and closes
//! ```
use std::{
    collections::BTreeMap,
    io::{self, BufRead, ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    process::exit,
    sync::{
        Arc, Barrier,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

/// Small stacks: `hold` may run hundreds of connecting threads at once.
const THREAD_STACK: usize = 128 * 1024;
/// How long a held connection waits for its echo in `ping`.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Upper bound on the connections `hold` and `churn` will open, whatever they are asked.
const MAX_CONNECTIONS: u64 = 100_000;
/// Upper bound on any single wait in `session` (and on `count-after-eof`'s wait for EOF).
const SESSION_MAX_WAIT: Duration = Duration::from_secs(120);
/// Upper bound on the bytes one `session` command sends.
const SESSION_MAX_BYTES: usize = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    let result = match args.first().map(String::as_str) {
        Some("echo-server") => echo_server(rest),
        Some("hold") => hold(rest),
        Some("churn") => churn(rest),
        Some("raw-syn") => raw_syn(rest),
        Some("syn-flood") => syn_flood(rest),
        Some("probe") => probe(rest),
        Some("udp-echo-server") => udp_echo_server(rest),
        Some("udp-probe") => udp_probe(rest),
        Some("session") => session(rest),
        Some("connect-sockopts") => connect_sockopts(rest),
        _ => Err(anyhow::anyhow!(
            "usage: netns-tool echo-server|hold|churn|raw-syn|syn-flood|probe|udp-echo-server|udp-probe|session|connect-sockopts ..."
        )),
    };
    if let Err(err) = result {
        eprintln!("netns-tool: {err:#}");
        exit(1);
    }
}

fn arg<'a>(args: &'a [String], index: usize, name: &str) -> Result<&'a str> {
    args.get(index)
        .map(String::as_str)
        .with_context(|| format!("missing argument {name}"))
}

fn parse<T: std::str::FromStr>(args: &[String], index: usize, name: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let text = arg(args, index, name)?;
    text.parse()
        .map_err(|err| anyhow::anyhow!("bad {name} {text:?}: {err}"))
}

fn say(line: impl std::fmt::Display) {
    let mut out = io::stdout().lock();
    // The test reads stdout line by line; flush so it sees each line at once.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Long-running servers exit when the test closes their stdin (or dies).
fn exit_when_stdin_closes() {
    thread::spawn(|| {
        wait_for_stdin_eof();
        exit(0);
    });
}

/// Reads and discards stdin until it closes (in fixed-size chunks: stdin may be anything).
fn wait_for_stdin_eof() {
    let mut buf = [0u8; 4096];
    let mut stdin = io::stdin().lock();
    while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
}

fn bind_listener(addr: SocketAddr) -> Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if let IpAddr::V6(ip) = addr.ip() {
        // `[::]` is dual-stack on purpose: IPv4 connections then arrive as IPv4-mapped
        // addresses, which the agent's accounting must fold back to IPv4.
        socket.set_only_v6(!ip.is_unspecified())?;
    }
    socket
        .bind(&addr.into())
        .with_context(|| format!("bind {addr}"))?;
    // Larger than any burst a test makes, so the accept queue never refuses a handshake the
    // agent admitted.
    socket.listen(4096)?;
    Ok(socket)
}

fn echo_server(args: &[String]) -> Result<()> {
    let addr: SocketAddr = parse(args, 0, "ADDR")?;
    let mode = match args.get(1).map(String::as_str) {
        None | Some("echo") => Mode::Echo,
        Some("close-on-data") => Mode::CloseOnData,
        Some("count-after-eof") => Mode::CountAfterEof,
        Some(other) => bail!("bad mode {other:?}"),
    };
    let listener: std::net::TcpListener = bind_listener(addr)?.into();
    exit_when_stdin_closes();
    say(format_args!("listening {addr}"));
    loop {
        let (stream, _) = match listener.accept() {
            Ok(conn) => conn,
            // E.g. ECONNABORTED for a connection reset in the accept queue: keep serving.
            Err(_) => continue,
        };
        let spawned = thread::Builder::new()
            .stack_size(THREAD_STACK)
            .spawn(move || match mode {
                Mode::Echo => serve(stream, false),
                Mode::CloseOnData => serve(stream, true),
                Mode::CountAfterEof => count_after_eof(stream),
            });
        // Out of threads: the connection is dropped (closed), which the test would see.
        drop(spawned);
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Echo,
    CloseOnData,
    CountAfterEof,
}

/// Reads until the client's FIN (its write half closed), then answers `received N` on the
/// still-open other direction and closes: what a proxy must let through after a half-close.
fn count_after_eof(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(SESSION_MAX_WAIT));
    let mut buf = [0u8; 4096];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            // No EOF in time, or a reset: no answer (the test sees it).
            Err(_) => return,
        }
    }
    let _ = stream.write_all(format!("received {total}").as_bytes());
    let _ = stream.shutdown(Shutdown::Both);
}

fn serve(mut stream: TcpStream, close_on_data: bool) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if close_on_data {
                    // "Server closes first": a FIN from this side while the client still holds
                    // its end.
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn error_name(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => format!("{:?} (os error {code})", err.kind()),
        None => format!("{:?}", err.kind()),
    }
}

/// A connect from `source` (any port), or from wherever the routes say.
fn connect_from(
    source: Option<IpAddr>,
    addr: &SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect_timeout(addr, timeout);
    };
    let socket = Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
    socket.connect_timeout(&SockAddr::from(*addr), timeout)?;
    Ok(socket.into())
}

fn hold(args: &[String]) -> Result<()> {
    let count: u64 = parse(args, 0, "N")?;
    let addr: SocketAddr = parse(args, 1, "ADDR")?;
    let timeout = Duration::from_millis(parse(args, 2, "TIMEOUT_MS")?);
    let source: Option<IpAddr> = match args.get(3) {
        Some(_) => Some(parse(args, 3, "SRC")?),
        None => None,
    };
    if count == 0 || count > MAX_CONNECTIONS {
        bail!("N must be 1..={MAX_CONNECTIONS}");
    }
    // All threads connect at once, as a burst of clients would.
    let barrier = Arc::new(Barrier::new(count as usize));
    let mut workers = Vec::new();
    for _ in 0..count {
        let barrier = barrier.clone();
        workers.push(
            thread::Builder::new()
                .stack_size(THREAD_STACK)
                .spawn(move || {
                    barrier.wait();
                    let started = Instant::now();
                    let result = connect_from(source, &addr, timeout);
                    (result, started.elapsed())
                })?,
        );
    }
    let mut streams = Vec::new();
    let (mut refused, mut timed_out, mut other) = (0u64, 0u64, 0u64);
    let mut max_refused_ms = 0u128;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for worker in workers {
        let (result, took) = worker.join().expect("connect thread panicked");
        match result {
            Ok(stream) => streams.push(stream),
            Err(err) => {
                *errors.entry(error_name(&err)).or_default() += 1;
                match err.kind() {
                    ErrorKind::ConnectionRefused => {
                        refused += 1;
                        max_refused_ms = max_refused_ms.max(took.as_millis());
                    }
                    ErrorKind::TimedOut => timed_out += 1,
                    _ => other += 1,
                }
            }
        }
    }
    say(json!({
        "connected": streams.len(),
        "refused": refused,
        "timed_out": timed_out,
        "other": other,
        "max_refused_ms": max_refused_ms as u64,
        "errors": errors,
    }));

    // Hold until told otherwise; stdin closing means the test is gone: close and exit.
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "ping" => {
                let (mut echoed, mut failed) = (0u64, 0u64);
                for stream in &mut streams {
                    if ping(stream).is_ok() {
                        echoed += 1;
                    } else {
                        failed += 1;
                    }
                }
                say(json!({ "echoed": echoed, "failed": failed }));
            }
            "close" => {
                streams.clear();
                say("closed");
                return Ok(());
            }
            "rst" => {
                for stream in &streams {
                    // SO_LINGER 0: close() sends a RST instead of a FIN.
                    SockRef::from(stream).set_linger(Some(Duration::ZERO))?;
                }
                streams.clear();
                say("closed");
                return Ok(());
            }
            other => say(format_args!("unknown command {other:?}")),
        }
    }
    Ok(())
}

fn ping(stream: &mut TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(PING_TIMEOUT))?;
    stream.write_all(b"p")?;
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply)?;
    if reply != *b"p" {
        return Err(io::Error::other("wrong echo"));
    }
    Ok(())
}

fn churn(args: &[String]) -> Result<()> {
    let total: u64 = parse(args, 0, "TOTAL")?;
    let concurrency: u64 = parse(args, 1, "CONCURRENCY")?;
    let addr: SocketAddr = parse(args, 2, "ADDR")?;
    let timeout = Duration::from_millis(parse(args, 3, "TIMEOUT_MS")?);
    let max_time = Duration::from_millis(parse(args, 4, "MAX_MS")?);
    if total > MAX_CONNECTIONS || concurrency == 0 || concurrency > 256 {
        bail!("TOTAL must be <= {MAX_CONNECTIONS}, CONCURRENCY 1..=256");
    }
    exit_when_stdin_closes();
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let succeeded = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, succeeded, failed) = (next.clone(), succeeded.clone(), failed.clone());
        workers.push(
            thread::Builder::new()
                .stack_size(THREAD_STACK)
                .spawn(move || {
                    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                    // One ticket per connection wanted; a refused attempt is retried (after
                    // 1 ms, so a full listener is not hammered) until it connects or time is up.
                    'tickets: while started.elapsed() < max_time
                        && next.fetch_add(1, Ordering::Relaxed) < total
                    {
                        while started.elapsed() < max_time {
                            match TcpStream::connect_timeout(&addr, timeout) {
                                // Connect, then close at once (client closes first).
                                Ok(stream) => {
                                    succeeded.fetch_add(1, Ordering::Relaxed);
                                    drop(stream);
                                    continue 'tickets;
                                }
                                Err(err) => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    *errors.entry(error_name(&err)).or_default() += 1;
                                    thread::sleep(Duration::from_millis(1));
                                }
                            }
                        }
                    }
                    errors
                })?,
        );
    }
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for worker in workers {
        for (name, n) in worker.join().expect("churn thread panicked") {
            *errors.entry(name).or_default() += n;
        }
    }
    let succeeded = succeeded.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    say(json!({
        "attempts": succeeded + failed,
        "succeeded": succeeded,
        "failed": failed,
        "elapsed_ms": started.elapsed().as_millis() as u64,
        "stopped_by_time": succeeded < total,
        "errors": errors,
    }));
    Ok(())
}

/// One's-complement sum of big-endian 16-bit words.
fn checksum_add(bytes: &[u8], mut sum: u32) -> u32 {
    for chunk in bytes.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    sum
}

fn checksum_fold(mut sum: u32) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends COUNT identical SYNs (same 4-tuple, same sequence number: a retransmission as far as
/// the server can tell) from a raw socket; the handshake is never completed.
///
/// The client kernel has no socket for SPORT, so it would answer the server's SYN-ACK with a
/// RST; the test harness installs an nftables rule in the client namespace that drops
/// everything arriving for SPORT first (see `TestBed::drop_incoming_tcp_port`).
fn raw_syn(args: &[String]) -> Result<()> {
    let src: Ipv4Addr = parse(args, 0, "SRC")?;
    let sport: u16 = parse(args, 1, "SPORT")?;
    let dst: Ipv4Addr = parse(args, 2, "DST")?;
    let dport: u16 = parse(args, 3, "DPORT")?;
    let count: u32 = parse(args, 4, "COUNT")?;
    if count == 0 || count > 100 {
        bail!("COUNT must be 1..=100");
    }
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))?;
    socket.bind(&SockAddr::from(SocketAddrV4::new(src, 0)))?;
    // `ip-options`: an IPv4 header with 4 bytes of options (NOP NOP NOP EOL), which limiter's
    // RST builder does not reflect.
    if args.get(5).map(String::as_str) == Some("ip-options") {
        use std::os::fd::AsRawFd as _;
        let options = [1u8, 1, 1, 0];
        // SAFETY: a valid socket and a buffer of the given length.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_OPTIONS,
                options.as_ptr().cast(),
                options.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            bail!(
                "setsockopt(IP_OPTIONS): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let tcp = tcp_syn(src, sport, dst, dport, 0x1000_0000);
    let to = SockAddr::from(SocketAddrV4::new(dst, 0));
    for _ in 0..count {
        socket.send_to(&tcp, &to).context("send SYN")?;
    }
    say(format_args!("sent {count}"));
    Ok(())
}

/// A forged-source SYN flood, as an attacker without a return path sends it: random sources in
/// 198.19.0.0/16 (the server routes them back to the client namespace, where nothing answers),
/// random source ports and sequence numbers, an MSS option. Paced in 1 ms ticks; bounded in
/// rate and time.
fn syn_flood(args: &[String]) -> Result<()> {
    let dst: Ipv4Addr = parse(args, 0, "DST")?;
    let dport: u16 = parse(args, 1, "DPORT")?;
    let rate: u64 = parse(args, 2, "RATE")?;
    let seconds: u64 = parse(args, 3, "SECONDS")?;
    if rate == 0 || rate > 200_000 || seconds == 0 || seconds > 30 {
        bail!("RATE must be 1..=200000 and SECONDS 1..=30");
    }
    // IPPROTO_RAW: we write the IP header (IP_HDRINCL), so the source can be any address; the
    // kernel fills in the total length, the checksum and the id.
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )?;
    let to = SockAddr::from(SocketAddrV4::new(dst, 0));
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let started = Instant::now();
    let deadline = Duration::from_secs(seconds);
    let mut sent: u64 = 0;
    let mut packet = [0u8; 44];
    while started.elapsed() < deadline {
        // Due by now: rate × elapsed.
        let due = (started.elapsed().as_micros() as u64 * rate / 1_000_000).max(sent);
        // A sender slower than the rate (a slow CPU, an emulated VM) never catches up: the
        // deadline is checked inside the batch too, or the loop would outlive it.
        while sent < due && (!sent.is_multiple_of(1024) || started.elapsed() < deadline) {
            let r = random();
            let src = Ipv4Addr::new(198, 19, (r >> 8) as u8, r as u8);
            let sport = 1024 + ((r >> 16) as u16 % 60_000);
            syn_packet(&mut packet, src, sport, dst, dport, (r >> 32) as u32);
            // ENOBUFS under load is a dropped packet, as on a wire; go on.
            if socket.send_to(&packet, &to).is_ok() {
                sent += 1;
            } else {
                break;
            }
        }
        thread::sleep(Duration::from_micros(500));
    }
    say(json!({ "sent": sent, "elapsed_ms": started.elapsed().as_millis() as u64 }));
    Ok(())
}

/// An IPv4 header and a TCP SYN with an MSS option ([`tcp_syn`]).
fn syn_packet(
    packet: &mut [u8; 44],
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    seq: u32,
) {
    packet.fill(0);
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&44u16.to_be_bytes());
    packet[8] = 64;
    packet[9] = 6;
    packet[12..16].copy_from_slice(&src.octets());
    packet[16..20].copy_from_slice(&dst.octets());
    packet[20..].copy_from_slice(&tcp_syn(src, sport, dst, dport, seq));
}

/// A TCP SYN header with one MSS option (kind 2, length 4, 1460), checksummed for `src` and
/// `dst`.
fn tcp_syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, seq: u32) -> [u8; 24] {
    let mut tcp = [0u8; 24];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = (24 / 4) << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xB4]);
    let mut sum = checksum_add(&src.octets(), 0);
    sum = checksum_add(&dst.octets(), sum);
    sum += 6 + tcp.len() as u32;
    let checksum = checksum_fold(checksum_add(&tcp, sum));
    tcp[16..18].copy_from_slice(&checksum.to_be_bytes());
    tcp
}

/// A real client during a flood: one connect every INTERVAL_MS (each with TIMEOUT_MS), closed
/// as soon as it is made.
fn probe(args: &[String]) -> Result<()> {
    let addr: SocketAddr = parse(args, 0, "ADDR")?;
    let interval = Duration::from_millis(parse(args, 1, "INTERVAL_MS")?);
    let count: u64 = parse(args, 2, "COUNT")?;
    let timeout = Duration::from_millis(parse(args, 3, "TIMEOUT_MS")?);
    if count == 0 || count > 10_000 {
        bail!("COUNT must be 1..=10000");
    }
    let started = Instant::now();
    let mut latencies_ms: Vec<f64> = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..count {
        let due = started + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let t0 = Instant::now();
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                latencies_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                drop(stream);
            }
            Err(err) => *errors.entry(error_name(&err)).or_default() += 1,
        }
    }
    latencies_ms.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        latencies_ms
            .get(((latencies_ms.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    say(json!({
        "ok": latencies_ms.len(),
        "failed": count - latencies_ms.len() as u64,
        "p50_ms": rank(0.5),
        "p99_ms": rank(0.99),
        "errors": errors,
    }));
    Ok(())
}

fn udp_echo_server(args: &[String]) -> Result<()> {
    let addr: SocketAddr = parse(args, 0, "ADDR")?;
    let socket = UdpSocket::bind(addr).with_context(|| format!("bind {addr}"))?;
    exit_when_stdin_closes();
    say(format_args!("listening {addr}"));
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    }
}

fn udp_probe(args: &[String]) -> Result<()> {
    let addr: SocketAddr = parse(args, 0, "ADDR")?;
    let count: u32 = parse(args, 1, "COUNT")?;
    let timeout = Duration::from_millis(parse(args, 2, "TIMEOUT_MS")?);
    if count > 10_000 {
        bail!("COUNT must be <= 10000");
    }
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(timeout))?;
    let mut replied = 0u32;
    let mut buf = [0u8; 64];
    for i in 0..count {
        let message = format!("probe {i}");
        socket.send(message.as_bytes())?;
        if let Ok(n) = socket.recv(&mut buf)
            && buf[..n] == *message.as_bytes()
        {
            replied += 1;
        }
    }
    say(json!({ "sent": count, "replied": replied }));
    Ok(())
}

/// How a read loop ended.
fn read_end(err: &io::Error) -> String {
    match err.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => "timeout".to_owned(),
        ErrorKind::ConnectionReset => "reset".to_owned(),
        _ => format!("error: {}", error_name(err)),
    }
}

/// One client connection driven line by line from stdin, so a test can act between steps
/// (cut a link, look at the stats) and time what the other end does:
///
/// - `echo N`: sends N bytes and reads N back (3 s); prints {echoed, received, error}
/// - `send N`: sends N bytes; prints {sent, error}
/// - `shut-wr`: shutdown(SHUT_WR), a half-close; prints {shut, error}
/// - `read-eof TIMEOUT_MS`: reads until EOF, an error or the timeout; prints {received, text,
///   end: eof|reset|timeout|error: ..., ms, since_connect_ms}
/// - `close`: closes and exits (as does stdin closing)
fn session(args: &[String]) -> Result<()> {
    let addr: SocketAddr = parse(args, 0, "ADDR")?;
    let timeout = Duration::from_millis(parse(args, 1, "TIMEOUT_MS")?);
    if timeout.is_zero() || timeout > SESSION_MAX_WAIT {
        bail!("TIMEOUT_MS must be 1..={}", SESSION_MAX_WAIT.as_millis());
    }
    let started = Instant::now();
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(stream) => stream,
        Err(err) => {
            say(json!({
                "connected": false,
                "connect_ms": started.elapsed().as_millis() as u64,
                "error": error_name(&err),
            }));
            return Ok(());
        }
    };
    let connected = Instant::now();
    // A write that cannot finish (nobody reads the other end) fails instead of hanging.
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    say(json!({
        "connected": true,
        "connect_ms": started.elapsed().as_millis() as u64,
        "error": null,
    }));
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["echo", n] => {
                let n: usize = n.parse().context("echo N")?;
                if n > SESSION_MAX_BYTES {
                    bail!("echo N must be <= {SESSION_MAX_BYTES}");
                }
                stream.set_read_timeout(Some(PING_TIMEOUT))?;
                let sent = vec![b'e'; n];
                let mut got = vec![0u8; n];
                let mut received = 0usize;
                let mut error = None;
                if let Err(err) = stream.write_all(&sent) {
                    error = Some(error_name(&err));
                }
                while error.is_none() && received < n {
                    match stream.read(&mut got[received..]) {
                        Ok(0) => error = Some("eof".to_owned()),
                        Ok(k) => received += k,
                        Err(err) => error = Some(read_end(&err)),
                    }
                }
                say(json!({
                    "echoed": error.is_none() && got == sent,
                    "received": received,
                    "error": error,
                }));
            }
            ["send", n] => {
                let n: usize = n.parse().context("send N")?;
                if n > SESSION_MAX_BYTES {
                    bail!("send N must be <= {SESSION_MAX_BYTES}");
                }
                let result = stream.write_all(&vec![b's'; n]);
                say(json!({
                    "sent": if result.is_ok() { n } else { 0 },
                    "error": result.err().map(|e| error_name(&e)),
                }));
            }
            ["shut-wr"] => {
                let result = stream.shutdown(Shutdown::Write);
                say(json!({
                    "shut": result.is_ok(),
                    "error": result.err().map(|e| error_name(&e)),
                }));
            }
            ["read-eof", ms] => {
                let wait = Duration::from_millis(ms.parse().context("read-eof TIMEOUT_MS")?);
                if wait.is_zero() || wait > SESSION_MAX_WAIT {
                    bail!(
                        "read-eof TIMEOUT_MS must be 1..={}",
                        SESSION_MAX_WAIT.as_millis()
                    );
                }
                let begun = Instant::now();
                let deadline = begun + wait;
                // The first bytes are kept for the report; all are counted.
                let mut head = Vec::new();
                let mut received = 0usize;
                let mut buf = [0u8; 4096];
                let end = loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break "timeout".to_owned();
                    }
                    stream.set_read_timeout(Some(left))?;
                    match stream.read(&mut buf) {
                        Ok(0) => break "eof".to_owned(),
                        Ok(k) => {
                            received += k;
                            let keep = k.min(200usize.saturating_sub(head.len()));
                            head.extend_from_slice(&buf[..keep]);
                        }
                        Err(err) => break read_end(&err),
                    }
                };
                say(json!({
                    "received": received,
                    "text": String::from_utf8_lossy(&head),
                    "end": end,
                    "ms": begun.elapsed().as_millis() as u64,
                    "since_connect_ms": connected.elapsed().as_millis() as u64,
                }));
            }
            ["close"] => {
                drop(stream);
                say("closed");
                return Ok(());
            }
            _ => say(format_args!("unknown command {line:?}")),
        }
    }
    Ok(())
}

/// A plain client: connects without setting any socket option and reports the keepalive
/// settings the socket ended up with (what `--keepalive-for` sets from the kernel).
fn connect_sockopts(args: &[String]) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let addr: SocketAddr = parse(args, 0, "ADDR")?;
    let timeout = Duration::from_millis(parse(args, 1, "TIMEOUT_MS")?);
    let stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    let get = |level: libc::c_int, name: libc::c_int| -> Result<i32> {
        let mut value: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket fd and out-pointers of the right size.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                level,
                name,
                (&raw mut value).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            bail!(
                "getsockopt({level}, {name}): {}",
                io::Error::last_os_error()
            );
        }
        Ok(value)
    };
    say(json!({
        "keepalive": get(libc::SOL_SOCKET, libc::SO_KEEPALIVE)?,
        "idle": get(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE)?,
        "intvl": get(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL)?,
        "cnt": get(libc::IPPROTO_TCP, libc::TCP_KEEPCNT)?,
    }));
    Ok(())
}
