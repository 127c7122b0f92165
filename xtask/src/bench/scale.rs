//! Part 8: scale. Kernel map memory per tracked connection, per handshake in flight and per
//! listener (the maps' `memlock` as the kernel reports it for the agent's map fds, which for
//! maps allocated on demand grows with their entries), and the time from starting the agent to
//! `limiter: ready` with 10,000 listener limits in its config file against 1.
use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{
    Ctx,
    agent::Agent,
    flood::{self, Generator},
    idle::{self, Idle},
    netns::{self, OnAccept, Server, TestBed},
    report::{Part, Table, number, spread},
};
use crate::cmd::{self, command};

const LISTENERS: usize = 10_000;
const CONNECTIONS: usize = 1_000;
const HELD_PORT: u16 = 8300;

/// One BPF map of the agent, as the kernel reports it.
#[derive(Clone, Debug)]
pub(super) struct MapInfo {
    id: u64,
    name: String,
    kind: String,
    max_entries: u64,
    flags: u64,
    memlock: u64,
}

/// The agent's maps: ids from its open fds (/proc/PID/fdinfo), the rest from `bpftool map show`.
pub(super) fn agent_maps(pid: u32) -> Result<Vec<MapInfo>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    let mut maps = Vec::new();
    for id in ids {
        let text = cmd::output_quiet(command("bpftool").args([
            "-j",
            "map",
            "show",
            "id",
            &id.to_string(),
        ]))?;
        let v: Value = serde_json::from_str(&text).context("parsing bpftool map show")?;
        maps.push(MapInfo {
            id,
            name: v["name"].as_str().unwrap_or("?").to_string(),
            kind: v["type"].as_str().unwrap_or("?").to_string(),
            max_entries: v["max_entries"].as_u64().unwrap_or(0),
            flags: v["flags"].as_u64().unwrap_or(0),
            memlock: v["bytes_memlock"].as_u64().unwrap_or(0),
        });
    }
    maps.sort_by(|a, b| a.name.cmp(&b.name));
    if maps.is_empty() {
        bail!("no BPF maps among the agent's open files");
    }
    Ok(maps)
}

fn memlock(maps: &[MapInfo], name: &str) -> u64 {
    maps.iter()
        .find(|m| m.name == name)
        .map_or(0, |m| m.memlock)
}

pub(super) fn total(maps: &[MapInfo]) -> u64 {
    maps.iter().map(|m| m.memlock).sum()
}

/// The socket-local storage of the server's established sockets on `port`: the kernel charges
/// it to each socket (`sk_omem_alloc`, `ss -m`'s `o`), not to the map, whose `bytes_memlock`
/// stays fixed.
fn socket_storage_bytes(bed: &TestBed, port: u16) -> Result<u64> {
    let filter = format!("sport = :{port}");
    let text = bed.exec(
        &bed.server_ns,
        &["ss", "-tnmH", "state", "established", &filter],
    )?;
    text.split("skmem:(")
        .skip(1)
        .map(|mem| {
            mem.split([',', ')'])
                .find_map(|field| field.strip_prefix('o'))
                .and_then(|v| v.parse::<u64>().ok())
                .with_context(|| format!("no optmem (o) in ss's skmem: {mem}"))
        })
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn write_config(path: &Path, veth: &str, listeners: usize) -> Result<()> {
    let mut text = format!(
        "# {listeners} listener limits (written by cargo xtask bench)\ninterfaces: [{veth}]\nlisteners:\n"
    );
    for i in 0..listeners {
        let _ = writeln!(
            text,
            "  - listener: \"198.18.0.1:{}\"\n    connection: {{ connectionLimit: {{ value: 100 }} }}",
            10_000 + i
        );
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn start_with_config(ctx: &Ctx, bed: &TestBed, config: &Path) -> Result<Agent> {
    Agent::in_server_ns(
        ctx,
        bed,
        &[
            "--config".into(),
            config.display().to_string(),
            "--xdp-mode".into(),
            "native".into(),
        ],
    )
}

pub fn run(ctx: &Ctx) -> Result<Part> {
    let (_, reps) = ctx.windows(0);
    let bed = TestBed::create()?;
    let one = ctx.scratch.dir.join("listeners-1.yaml");
    let many = ctx.scratch.dir.join("listeners-10000.yaml");
    write_config(&one, &bed.server_veth, 1)?;
    write_config(&many, &bed.server_veth, LISTENERS)?;

    // Time to ready, and the maps with 1 and with 10,000 listeners.
    let mut ready_one = Vec::new();
    let mut ready_many = Vec::new();
    let (mut maps_one, mut maps_many) = (Vec::new(), Vec::new());
    let (mut rss_one, mut rss_many) = (0, 0);
    let mut idle_one = Idle::new("1 listener");
    let mut idle_many = Idle::new(format!("{LISTENERS} listeners"));
    for _ in 0..reps {
        for (config, times, maps, rss, idle, n) in [
            (
                &one,
                &mut ready_one,
                &mut maps_one,
                &mut rss_one,
                &mut idle_one,
                1usize,
            ),
            (
                &many,
                &mut ready_many,
                &mut maps_many,
                &mut rss_many,
                &mut idle_many,
                LISTENERS,
            ),
        ] {
            cmd::check_interrupted()?;
            let agent = start_with_config(ctx, &bed, config)?;
            times.push(agent.ready_after.as_secs_f64());
            let listed = agent.stats()?["listeners"].as_array().map_or(0, Vec::len);
            if listed != n {
                bail!("the agent lists {listed} listeners, the config file has {n}");
            }
            *maps = agent_maps(agent.pid())?;
            *rss = rss_kib(agent.pid());
            idle.look(&agent)?;
            agent.stop()?;
            println!(
                "  {n} listener(s): ready after {:.2} s",
                times.last().copied().unwrap_or(0.0)
            );
        }
    }

    // Memory per tracked connection and per handshake in flight.
    let server = Server::start(&bed.server_ns, HELD_PORT, OnAccept::Hold)?;
    let flood_server = Server::start(&bed.server_ns, flood::PORT, OnAccept::Hold)?;
    let agent = Agent::on_server_veth(
        ctx,
        &bed,
        &[
            "--limit".into(),
            format!("198.18.0.1:{HELD_PORT}=100000"),
            // Counts the held connections' source too: the memory of one tracked source.
            "--limit-per-source".into(),
            format!("198.18.0.1:{HELD_PORT}=100000"),
            "--limit".into(),
            format!("198.18.0.1:{}=100000", flood::PORT),
            "--handshake-timeout".into(),
            "120s".into(),
            "--xdp-mode".into(),
            "native".into(),
        ],
    )?;
    let before = agent_maps(agent.pid())?;
    let conns = netns::connect_many(
        &bed.client_ns,
        HELD_PORT,
        CONNECTIONS,
        2,
        Duration::from_secs(10),
    )?;
    if conns.len() != CONNECTIONS {
        bail!(
            "only {} of {CONNECTIONS} connections were established",
            conns.len()
        );
    }
    let held_listener = format!("198.18.0.1:{HELD_PORT}");
    cmd::poll_until(
        "limiter to count the connections",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let active = agent.counter(&held_listener, "active")?;
            Ok(if active == CONNECTIONS as u64 {
                cmd::Check::Done(())
            } else {
                cmd::Check::NotYet(format!("active {active}"))
            })
        },
    )?;
    let with_conns = agent_maps(agent.pid())?;
    let tags = socket_storage_bytes(&bed, HELD_PORT)?;
    // Handshakes that never complete: SYNs from the flood generator (their SYN-ACKs go nowhere),
    // each admitted and holding a reservation until the handshake timeout (120 s here).
    let generator = Generator::start(ctx, &bed, true)?;
    let sent = generator.run(Duration::from_millis(20), Some(100_000.0))?;
    drop(generator);
    let flood_listener = format!("198.18.0.1:{}", flood::PORT);
    let pending = cmd::poll_until(
        "limiter to admit the handshakes",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let pending = agent.counter(&flood_listener, "pending")?;
            Ok(if pending + 8 >= sent && pending > 0 {
                cmd::Check::Done(pending)
            } else {
                cmd::Check::NotYet(format!("pending {pending} of {sent} sent"))
            })
        },
    )?;
    let with_pending = agent_maps(agent.pid())?;
    drop(conns);
    agent.stop()?;
    server.stop()?;
    flood_server.stop()?;
    drop(bed);

    // Every held connection comes from the client's one address: one SOURCES entry, whose
    // growth is what a tracked source costs (an entry's size does not depend on how many there
    // are), and a thousandth of it is in the per-connection figure.
    let per_source = memlock(&with_conns, "SOURCES") as f64 - memlock(&before, "SOURCES") as f64;
    let per_conn = (total(&with_conns) as f64 - total(&before) as f64 - per_source + tags as f64)
        / CONNECTIONS as f64;
    let per_pending = (total(&with_pending) as f64 - total(&with_conns) as f64) / pending as f64;
    let per_listener =
        (total(&maps_many) as f64 - total(&maps_one) as f64) / (LISTENERS - 1) as f64;
    let listener_fixed: u64 = [
        "LISTENERS",
        "SLOT_LISTENERS",
        "SLOT_USAGE",
        "SLOT_STATS",
        "PORTS",
    ]
    .iter()
    .map(|n| memlock(&maps_one, n))
    .sum();

    let mut part = Part::new(
        "scale",
        "8. Scale: kernel memory and time to apply 10,000 limits",
    );
    part.method = vec![
        format!(
            "Memory: the agent's maps, found through its open file descriptors (/proc/PID/fdinfo) \
             and read with `bpftool map show` (`bytes_memlock`, the kernel's own accounting: fixed \
             for preallocated maps, growing with the entries for maps created with \
             BPF_F_NO_PREALLOC). Per tracked connection: the agent with one listener, then \
             {CONNECTIONS} real connections held open (limiter's `active` = {CONNECTIONS}); the \
             growth divided by {CONNECTIONS}, less the one source entry, plus each socket's tag, \
             which lives in the socket's own storage and is charged to the socket (`ss -m`'s \
             `o`, summed over the server's {CONNECTIONS} sockets). Per tracked source \
             (`--limit-per-source`): the growth of the SOURCES map when those connections' one \
             client address took its entry. Per handshake in flight: {sent} SYNs from random \
             sources sent by the flood generator to a second listener (limit 100000, handshake \
             timeout 120 s: the handshakes never complete and hold their reservations); the growth \
             divided by limiter's `pending` ({pending}). Per listener: the agent with 10,000 \
             listeners in its config file against 1."
        ),
        format!(
            "Time to apply: `limiter run --config FILE` with {LISTENERS} listeners \
             (`listener: \"198.18.0.1:PORT\"` with `connection.connectionLimit.value`, ports \
             10000–19999) against a file with 1, timed from starting the process to its `limiter: \
             ready` line (everything attached, every limit written, the control socket \
             listening); {reps} repetitions each, alternating. The bench checks that `limiter \
             stats` lists every listener."
        ),
    ];
    let mut mem = Table::new("Kernel map memory", &["what", "bytes"]);
    mem.row(vec![
        "per tracked (established) connection".into(),
        format!("**{}**", number(per_conn)),
    ]);
    mem.row(vec![
        "per tracked source (client address holding connections, `--limit-per-source`)".into(),
        format!("**{}**", number(per_source)),
    ]);
    mem.row(vec![
        "per handshake in flight (SYN admitted, no final ACK yet)".into(),
        format!("**{}**", number(per_pending)),
    ]);
    mem.row(vec![
        "per listener, measured (10,000 listeners against 1)".into(),
        format!("**{}**", number(per_listener)),
    ]);
    mem.row(vec![
        "listener tables, allocated up front for 16,384 listeners (LISTENERS, SLOT_LISTENERS, SLOT_USAGE, SLOT_STATS, PORTS)".into(),
        format!("{} ({:.1} MiB; {} per listener slot)", listener_fixed, listener_fixed as f64 / 1048576.0, number(listener_fixed as f64 / 16384.0)),
    ]);
    mem.row(vec![
        "all maps, agent just started (1 listener)".into(),
        format!(
            "{} ({:.1} MiB)",
            total(&maps_one),
            total(&maps_one) as f64 / 1048576.0
        ),
    ]);
    mem.row(vec![
        "agent process RSS, 1 listener / 10,000 listeners".into(),
        format!("{} KiB / {} KiB", rss_one, rss_many),
    ]);
    part.tables.push(mem);
    let mut maps_table = Table::new(
        "Per map (bytes_memlock): agent started with 1 listener, with 10,000, with 1,000 connections, with handshakes pending",
        &[
            "map",
            "type",
            "max entries",
            "flags",
            "1 listener",
            "10,000 listeners",
            "+1,000 connections",
            "+handshakes",
        ],
    );
    for m in &maps_one {
        let get = |maps: &[MapInfo]| memlock(maps, &m.name).to_string();
        maps_table.row(vec![
            m.name.clone(),
            m.kind.clone(),
            m.max_entries.to_string(),
            format!("{:#x}", m.flags),
            m.memlock.to_string(),
            get(&maps_many),
            get(&with_conns),
            get(&with_pending),
        ]);
    }
    part.tables.push(maps_table);
    let (a, b, c) = spread(&ready_one);
    let (d, e, f) = spread(&ready_many);
    let mut time = Table::new(
        "Time from start to `limiter: ready` (s; min / median / max)",
        &[
            "listeners in the config file",
            "time to ready",
            "× 1 listener",
        ],
    );
    time.row(vec![
        "1".into(),
        format!("{a:.3} / **{b:.3}** / {c:.3}"),
        "1.00".into(),
    ]);
    time.row(vec![
        LISTENERS.to_string(),
        format!("{d:.3} / **{e:.3}** / {f:.3}"),
        format!("{:.2}", e / b),
    ]);
    part.tables.push(time);
    part.notes.push(format!(
        "10,000 limits are ready {:.2} s after start ({:.2} s more than 1 limit: {:.0} µs per listener).",
        e,
        e - b,
        (e - b) / (LISTENERS - 1) as f64 * 1e6
    ));
    let idle = [idle_one, idle_many];
    part.tables.push(idle::table(&idle));
    let maps_json = |maps: &[MapInfo]| {
        maps.iter()
            .map(|m| json!({"id": m.id, "name": m.name, "type": m.kind, "max_entries": m.max_entries, "flags": m.flags, "bytes_memlock": m.memlock}))
            .collect::<Vec<_>>()
    };
    part.json = json!({
        "bytes_per_connection": per_conn,
        "bytes_per_pending_handshake": per_pending,
        "bytes_per_listener_measured": per_listener,
        "listener_tables_bytes_fixed": listener_fixed,
        "connections": CONNECTIONS, "handshakes_sent": sent, "handshakes_pending": pending,
        "agent_rss_kib": {"listeners_1": rss_one, "listeners_10000": rss_many},
        "ready_s": {"listeners_1": ready_one, "listeners_10000": ready_many},
        "idle": idle::json(&idle),
        "maps": {
            "listeners_1": maps_json(&maps_one), "listeners_10000": maps_json(&maps_many),
            "before_connections": maps_json(&before), "with_connections": maps_json(&with_conns),
            "with_pending": maps_json(&with_pending),
        },
    });
    Ok(part)
}
