//! Program tests: the real XDP admission program from the agent's embedded object, run on
//! crafted frames with BPF_PROG_TEST_RUN (no interface, no agent), checking verdicts, the
//! frames it sends back, and its maps. Needs root (loading BPF programs).
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use limiter_common::{
    ListenerConfig, NO_LIMIT, SlotStats, SlotUsage, SourceKey, action, admission_mode, family,
    packet_stat,
};
use limiter_tests::{
    frames::{
        self, CLIENT_MAC, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6,
        IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6,
        IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, IPV4_MORE_FRAGMENTS, Rng, SERVER_MAC, TCP_ACK,
        TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, Tcp, ethernet, ipv4, ipv6, tcp_v4, tcp_v6,
    },
    program::{
        AdmissionProgram, Run, XDP_DROP, XDP_PASS, XDP_TX, listener_port, listener_v4, listener_v6,
        v4_words, v6_words, verdict_name,
    },
};

const PORT: u16 = 8000;
const SERVER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x1e, 0x57, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x1e, 0x57, 0, 0, 0, 0, 2);

fn syn4(sport: u16) -> Vec<u8> {
    tcp_v4(CLIENT4, SERVER4, &Tcp::syn(sport, PORT))
}

fn syn6(sport: u16) -> Vec<u8> {
    tcp_v6(CLIENT6, SERVER6, &Tcp::syn(sport, PORT))
}

/// The program with one listener in slot 0.
fn program_with(key: limiter_common::ListenerKey, limit: u64, action: u32) -> AdmissionProgram {
    let mut program = AdmissionProgram::load();
    program.add_listener(key, 0, limit, action);
    program
}

/// Runs `frame`, expecting `verdict`; a passed frame must come back byte for byte.
fn expect(program: &AdmissionProgram, frame: &[u8], verdict: u32, what: &str) -> Run {
    let run = program.run(frame);
    assert_eq!(
        verdict_name(run.verdict),
        verdict_name(verdict),
        "{what}: frame {}",
        hex(frame)
    );
    if verdict == XDP_PASS {
        assert_eq!(run.out, frame, "{what}: a passed frame must be untouched");
    }
    run
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn reserved(program: &AdmissionProgram) -> u64 {
    program.usage(0).reserved
}

/// Checks that `run` is the RST a closed port would send for `syn` (RFC 9293: SEQ 0,
/// ACK = SEG.SEQ + SEG.LEN, RST|ACK), from the server back to the client.
fn assert_rst(run: &Run, syn_frame: &[u8], client: IpAddr, server: IpAddr, sport: u16, syn: &Tcp) {
    assert_eq!(verdict_name(run.verdict), "XDP_TX");
    let rst = frames::parse_tcp_frame(&run.out)
        .unwrap_or_else(|err| panic!("RST unparsable ({err}): {}", hex(&run.out)));
    let request = frames::parse_tcp_frame(syn_frame).unwrap();
    assert_eq!(rst.dst_mac, CLIENT_MAC, "{rst:?}");
    assert_eq!(rst.src_mac, SERVER_MAC, "{rst:?}");
    assert_eq!(
        rst.vlan_tpids, request.vlan_tpids,
        "VLAN tags kept: {rst:?}"
    );
    assert_eq!(
        (rst.src, rst.dst),
        (server, client),
        "addresses swapped: {rst:?}"
    );
    assert_eq!(
        (rst.sport, rst.dport),
        (PORT, sport),
        "ports swapped: {rst:?}"
    );
    assert_eq!(rst.flags, TCP_RST | TCP_ACK, "{rst:?}");
    assert_eq!(rst.seq, 0, "{rst:?}");
    let seg_len = syn.payload.len() as u32 + 1;
    assert_eq!(
        rst.ack,
        syn.seq.wrapping_add(seg_len),
        "ACK = SEQ + LEN: {rst:?}"
    );
    assert_eq!(
        (rst.header_len, rst.payload_len),
        (20, 0),
        "bare TCP header: {rst:?}"
    );
    assert!(rst.ip_length_ok, "IP length matches the frame: {rst:?}");
    assert!(
        rst.ip_checksum_ok,
        "IPv4 header checksum: {rst:?} {}",
        hex(&run.out)
    );
    assert!(
        rst.tcp_checksum_ok,
        "TCP checksum: {rst:?} {}",
        hex(&run.out)
    );
    let ip_len = if client.is_ipv4() { 20 } else { 40 };
    assert_eq!(
        rst.frame_len,
        ETH_HLEN + 4 * rst.vlan_tpids.len() + ip_len + 20,
        "{rst:?}"
    );
}

#[test]
fn root_ipv4_syn_admitted_retransmitted_then_dropped() {
    let program = program_with(listener_v4(SERVER4, PORT), 2, action::DROP);
    expect(&program, &syn4(40_000), XDP_PASS, "first SYN");
    assert_eq!(
        program.usage(0),
        SlotUsage {
            reserved: 1,
            active: 0,
            mode: admission_mode::RESERVE,
        }
    );
    let pending = program.pending();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let (flow, reservation) = pending[0];
    assert_eq!(flow.local_addr, v4_words(SERVER4));
    assert_eq!(flow.remote_addr, v4_words(CLIENT4));
    assert_eq!(
        (flow.local_port, flow.remote_port, flow.family),
        (PORT, 40_000, family::V4)
    );
    assert_eq!(reservation.slot, 0);

    expect(&program, &syn4(40_000), XDP_PASS, "retransmitted SYN");
    assert_eq!(reserved(&program), 1, "a retransmit takes no second slot");
    expect(&program, &syn4(40_001), XDP_PASS, "second client");
    assert_eq!(reserved(&program), 2);
    expect(
        &program,
        &syn4(40_002),
        XDP_DROP,
        "third client over limit 2",
    );
    expect(
        &program,
        &syn4(40_000),
        XDP_PASS,
        "a retransmit holding a slot passes at the limit",
    );
    assert_eq!(reserved(&program), 2);

    let stats = program.slot_stats(0);
    assert_eq!(
        stats,
        SlotStats {
            syn_admitted: 2,
            syn_retransmitted: 2,
            refused_drop: 1,
            ..SlotStats::default()
        }
    );
    let packets = program.packets();
    assert_eq!(packets.counted(), 5);
    assert_eq!(packets.get(packet_stat::SYN_PASSED), 4);
    assert_eq!(packets.get(packet_stat::SYN_REFUSED), 1);
}

/// Flood mode: a SYN takes no slot and leaves no state; a full listener still refuses it at
/// XDP with its action (drop here, then reset), and the count is untouched either way.
#[test]
fn root_flood_mode_syn_takes_nothing_and_a_full_listener_still_refuses() {
    let mut program = program_with(listener_v4(SERVER4, PORT), 2, action::DROP);
    let free = SlotUsage {
        reserved: 1,
        active: 1,
        mode: admission_mode::FLOOD,
    };
    program.set_usage(0, free);
    for port in [40_000, 40_001, 40_002, 40_000] {
        expect(
            &program,
            &syn4(port),
            XDP_PASS,
            "flood-mode SYN below the limit",
        );
    }
    assert_eq!(
        program.usage(0),
        free,
        "a flood-mode SYN must reserve nothing"
    );
    assert!(program.pending().is_empty(), "{:?}", program.pending());
    assert_eq!(program.slot_stats(0).proven_syn_passed, 4);
    assert_eq!(program.slot_stats(0).syn_admitted, 0);

    let full = SlotUsage {
        reserved: 2,
        active: 2,
        mode: admission_mode::FLOOD,
    };
    program.set_usage(0, full);
    expect(
        &program,
        &syn4(40_003),
        XDP_DROP,
        "flood-mode SYN at the limit",
    );
    assert_eq!(program.usage(0), full);
    assert_eq!(program.slot_stats(0).refused_drop, 1);

    let program = {
        let mut reset = program_with(listener_v4(SERVER4, PORT), 2, action::RESET);
        reset.set_usage(0, full);
        reset
    };
    expect(
        &program,
        &syn4(40_004),
        XDP_TX,
        "flood-mode SYN at the limit, reset",
    );
    assert_eq!(program.slot_stats(0).refused_reset, 1);
    assert!(program.pending().is_empty());
}

/// A listener held at its limit by established connections (no handshake in flight) refuses
/// every SYN; the retransmit check only looks for a held slot while handshakes are in flight.
#[test]
fn root_syn_refused_at_a_limit_of_established_connections() {
    let mut program = program_with(listener_v4(SERVER4, PORT), 2, action::DROP);
    let full = SlotUsage {
        reserved: 2,
        active: 2,
        mode: admission_mode::RESERVE,
    };
    program.set_usage(0, full);
    let before = program.packets();
    for port in [40_000, 40_001, 40_000] {
        expect(
            &program,
            &syn4(port),
            XDP_DROP,
            "SYN at a limit of established",
        );
    }
    assert_eq!(program.usage(0), full);
    assert!(program.pending().is_empty());
    let delta = program.packets().since(&before);
    assert_eq!(
        (delta.counted(), delta.get(packet_stat::SYN_REFUSED)),
        (3, 3),
        "{delta:?}"
    );
    assert_eq!(program.slot_stats(0).refused_drop, 3);

    // One connection closes: the next SYN takes its slot and is a handshake in flight; at the
    // limit again, its retransmit passes and another client is refused.
    program.set_usage(
        0,
        SlotUsage {
            reserved: 1,
            active: 1,
            mode: admission_mode::RESERVE,
        },
    );
    expect(&program, &syn4(40_002), XDP_PASS, "SYN into the freed slot");
    expect(
        &program,
        &syn4(40_002),
        XDP_PASS,
        "its retransmit at the limit",
    );
    expect(
        &program,
        &syn4(40_003),
        XDP_DROP,
        "another client at the limit",
    );
    assert_eq!(
        program.usage(0),
        SlotUsage {
            reserved: 2,
            active: 1,
            mode: admission_mode::RESERVE,
        }
    );
}

/// `dry-run`: a SYN at the limit (reserve and flood mode alike) passes, takes no slot and is
/// counted as would-have-been-refused; nothing is counted as refused.
#[test]
fn root_dry_run_passes_what_it_would_refuse() {
    let mut program = program_with(listener_v4(SERVER4, PORT), 2, action::DRY_RUN);
    for mode in [admission_mode::RESERVE, admission_mode::FLOOD] {
        let full = SlotUsage {
            reserved: 2,
            active: 2,
            mode,
        };
        program.set_usage(0, full);
        let before = program.packets();
        let would_before = program.slot_stats(0).dry_run_would_refuse;
        for port in [41_000, 41_001] {
            expect(&program, &syn4(port), XDP_PASS, "dry run at the limit");
        }
        assert_eq!(program.usage(0), full, "no slot taken");
        assert!(program.pending().is_empty());
        let delta = program.packets().since(&before);
        assert_eq!(
            (
                delta.get(packet_stat::SYN_PASSED),
                delta.get(packet_stat::SYN_REFUSED)
            ),
            (2, 0),
            "{delta:?}"
        );
        assert_eq!(program.slot_stats(0).dry_run_would_refuse - would_before, 2);
        assert_eq!(program.slot_stats(0).refused_drop, 0);
    }
}

/// Per-source limits at XDP: a SYN from a source holding its limit is refused with the
/// per-source action, statelessly (no slot, no PENDING entry); another source, and the same
/// source below its limit, go on to the listener's own limit. IPv6 sources are /64s.
#[test]
fn root_per_source_refusal_at_the_syn() {
    let mut program = AdmissionProgram::load();
    let config = |limit, source_action| ListenerConfig {
        limit,
        slot: 0,
        action: action::DROP,
        source_limit: 2,
        source_action,
    };
    program.add_listener_config(listener_port(PORT), config(NO_LIMIT, action::DROP));
    let source4 = |addr: Ipv4Addr| SourceKey {
        slot: 0,
        family: family::V4,
        _pad: 0,
        addr: [v4_words(addr)[0], 0],
    };
    program.set_source(source4(CLIENT4), 2);
    expect(&program, &syn4(41_000), XDP_DROP, "a source at its limit");
    assert!(program.pending().is_empty(), "no state for a refusal");
    assert_eq!(reserved(&program), 0, "no slot for a refusal");
    let stats = program.slot_stats(0);
    assert_eq!((stats.refused_per_source, stats.refused_drop), (1, 1));

    // Another source, and the same one below its limit, pass; with no limit of its own the
    // listener reserves nothing for them (only established connections count per source).
    let other = tcp_v4(
        Ipv4Addr::new(198, 18, 0, 3),
        SERVER4,
        &Tcp::syn(41_001, PORT),
    );
    expect(&program, &other, XDP_PASS, "another source");
    program.set_source(source4(CLIENT4), 1);
    expect(&program, &syn4(41_002), XDP_PASS, "below its limit");
    assert_eq!(reserved(&program), 0);
    assert!(program.pending().is_empty());

    // A source being deleted (its last close) does not refuse.
    program.set_source(source4(CLIENT4), limiter_common::SOURCE_DYING);
    expect(&program, &syn4(41_003), XDP_PASS, "an entry on its way out");

    // IPv6: the /64 is the source, whatever the low 64 bits; reset answers with a RST.
    let mut program = AdmissionProgram::load();
    program.add_listener_config(listener_port(PORT), config(NO_LIMIT, action::RESET));
    let words = v6_words(CLIENT6);
    program.set_source(
        SourceKey {
            slot: 0,
            family: family::V6,
            _pad: 0,
            addr: [words[0], words[1]],
        },
        2,
    );
    let neighbour = Ipv6Addr::new(0xfd00, 0x1e, 0x57, 0, 0xaaaa, 0xbbbb, 0xcccc, 0xdddd);
    for client in [CLIENT6, neighbour] {
        let frame = tcp_v6(client, SERVER6, &Tcp::syn(41_004, PORT));
        expect(&program, &frame, XDP_TX, "a /64 at its limit, reset");
    }
    let elsewhere = Ipv6Addr::new(0xfd00, 0x1e, 0x57, 1, 0, 0, 0, 2);
    let frame = tcp_v6(elsewhere, SERVER6, &Tcp::syn(41_005, PORT));
    expect(&program, &frame, XDP_PASS, "another /64");
    let stats = program.slot_stats(0);
    assert_eq!((stats.refused_per_source, stats.refused_reset), (2, 2));

    // Dry run per source: counted, and on to the listener's own limit (10): a slot, passed.
    let mut program = AdmissionProgram::load();
    program.add_listener_config(listener_port(PORT), config(10, action::DRY_RUN));
    program.set_source(source4(CLIENT4), 5);
    expect(&program, &syn4(41_006), XDP_PASS, "dry run per source");
    let stats = program.slot_stats(0);
    assert_eq!(
        (stats.dry_run_would_refuse, stats.refused_per_source),
        (1, 0)
    );
    assert_eq!(
        reserved(&program),
        1,
        "the listener's slot is taken as usual"
    );
    assert_eq!(
        program.pending()[0].1.per_source,
        1,
        "the reservation says the listener is limited per source (accounting looks it up then)"
    );
}

#[test]
fn root_ipv6_syn_admitted_then_dropped() {
    let program = program_with(listener_v6(SERVER6, PORT), 1, action::DROP);
    expect(&program, &syn6(40_000), XDP_PASS, "first SYN");
    let pending = program.pending();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let (flow, _) = pending[0];
    assert_eq!(
        (flow.local_addr, flow.remote_addr),
        (v6_words(SERVER6), v6_words(CLIENT6))
    );
    assert_eq!(
        (flow.local_port, flow.remote_port, flow.family),
        (PORT, 40_000, family::V6)
    );
    expect(&program, &syn6(40_001), XDP_DROP, "over limit 1");
    // An IPv4 SYN to the same port is not this listener's.
    expect(
        &program,
        &syn4(40_002),
        XDP_PASS,
        "IPv4 SYN to an IPv6 listener's port",
    );
    assert_eq!(reserved(&program), 1);
    assert_eq!(program.slot_stats(0).refused_drop, 1);
}

/// A port with one listener is found by index (PORTS names its slot), not by hash: it must
/// match exactly what the hash lookup would, for each kind of listener alone on its port.
#[test]
fn root_single_listener_on_a_port_matches_like_the_hash_lookup() {
    let other4 = Ipv4Addr::new(198, 18, 0, 5);
    let to_other4 = tcp_v4(CLIENT4, other4, &Tcp::syn(40_001, PORT));
    let wildcard4 = limiter_common::ListenerKey {
        addr: [0; 4],
        port: PORT,
        family: family::V4,
    };
    // (listener, [SYN to SERVER4, SYN to another IPv4 address, SYN to SERVER6]: ours?)
    let cases = [
        (
            "exact IPv4",
            listener_v4(SERVER4, PORT),
            [true, false, false],
        ),
        ("IPv4 wildcard", wildcard4, [true, true, false]),
        (
            "exact IPv6",
            listener_v6(SERVER6, PORT),
            [false, false, true],
        ),
        ("bare port", listener_port(PORT), [true, true, true]),
    ];
    for (name, key, ours) in cases {
        // Limit 0: a SYN that is the listener's is refused, one that is not passes.
        let program = program_with(key, 0, action::DROP);
        for (frame, ours, to) in [
            (syn4(40_000), ours[0], "SERVER4"),
            (to_other4.clone(), ours[1], "another IPv4 address"),
            (syn6(40_002), ours[2], "SERVER6"),
        ] {
            let want = if ours { XDP_DROP } else { XDP_PASS };
            expect(
                &program,
                &frame,
                want,
                &format!("{name} listener, SYN to {to}"),
            );
        }
        // A SYN to another port is never ours, and counted as such.
        let before = program.packets();
        expect(
            &program,
            &tcp_v4(CLIENT4, SERVER4, &Tcp::syn(40_003, PORT + 1)),
            XDP_PASS,
            &format!("{name} listener, SYN to another port"),
        );
        let delta = program.packets().since(&before);
        assert_eq!(
            (delta.counted(), delta.get(packet_stat::SYN_NOT_LIMITED)),
            (1, 1),
            "{name}: {delta:?}"
        );
        let refused = ours.iter().filter(|o| **o).count() as u64;
        assert_eq!(program.slot_stats(0).refused_drop, refused, "{name}");
    }
}

#[test]
fn root_listener_lookup_exact_wildcard_bare() {
    let mut program = AdmissionProgram::load();
    program.add_listener(listener_v4(SERVER4, PORT), 0, 1, action::DROP);
    program.add_listener(
        limiter_common::ListenerKey {
            addr: [0; 4],
            port: PORT,
            family: family::V4,
        },
        1,
        1,
        action::DROP,
    );
    program.add_listener(listener_port(PORT), 2, 1, action::DROP);
    let other4 = Ipv4Addr::new(198, 18, 0, 5);
    expect(&program, &syn4(40_000), XDP_PASS, "exact");
    expect(
        &program,
        &tcp_v4(CLIENT4, other4, &Tcp::syn(40_001, PORT)),
        XDP_PASS,
        "wildcard",
    );
    expect(&program, &syn6(40_002), XDP_PASS, "bare port (IPv6)");
    assert_eq!(
        (
            program.usage(0).reserved,
            program.usage(1).reserved,
            program.usage(2).reserved
        ),
        (1, 1, 1)
    );
    // Each is full now, independently.
    expect(&program, &syn4(40_003), XDP_DROP, "exact full");
    expect(
        &program,
        &tcp_v4(CLIENT4, other4, &Tcp::syn(40_004, PORT)),
        XDP_DROP,
        "wildcard full",
    );
    expect(&program, &syn6(40_005), XDP_DROP, "bare port full");
}

#[test]
fn root_reset_answers_with_a_valid_rst_ipv4() {
    let program = program_with(listener_v4(SERVER4, PORT), 1, action::RESET);
    expect(&program, &syn4(40_000), XDP_PASS, "first SYN");
    let syn = Tcp::syn(40_001, PORT);
    let frame = tcp_v4(CLIENT4, SERVER4, &syn);
    let run = expect(&program, &frame, XDP_TX, "over limit, reset");
    assert_rst(&run, &frame, CLIENT4.into(), SERVER4.into(), 40_001, &syn);
    // A SYN carrying data (e.g. TCP Fast Open): the RST acknowledges the data too.
    let mut with_data = Tcp::syn(40_002, PORT);
    with_data.payload = b"hello, fast open".to_vec();
    with_data.seq = u32::MAX - 3; // Wraps.
    let frame = tcp_v4(CLIENT4, SERVER4, &with_data);
    let run = expect(&program, &frame, XDP_TX, "SYN with data over limit");
    assert_rst(
        &run,
        &frame,
        CLIENT4.into(),
        SERVER4.into(),
        40_002,
        &with_data,
    );
    let stats = program.slot_stats(0);
    assert_eq!(
        (stats.refused_reset, stats.refused_drop),
        (2, 0),
        "{stats:?}"
    );
    assert_eq!(reserved(&program), 1);
}

#[test]
fn root_reset_answers_with_a_valid_rst_ipv6() {
    let program = program_with(listener_v6(SERVER6, PORT), 1, action::RESET);
    expect(&program, &syn6(40_000), XDP_PASS, "first SYN");
    let syn = Tcp::syn(40_001, PORT);
    let frame = tcp_v6(CLIENT6, SERVER6, &syn);
    let run = expect(&program, &frame, XDP_TX, "over limit, reset");
    assert_rst(&run, &frame, CLIENT6.into(), SERVER6.into(), 40_001, &syn);
    assert_eq!(program.slot_stats(0).refused_reset, 1);
}

#[test]
fn root_reset_keeps_vlan_tags() {
    let program = program_with(listener_v4(SERVER4, PORT), 1, action::RESET);
    expect(&program, &syn4(40_000), XDP_PASS, "first SYN");
    for (sport, tags) in [
        (40_001u16, vec![ETH_P_8021Q]),
        (40_002, vec![ETH_P_8021AD, ETH_P_8021Q]),
    ] {
        let syn = Tcp::syn(sport, PORT);
        let frame = ethernet(
            &tags,
            ETH_P_IP,
            &ipv4(
                CLIENT4,
                SERVER4,
                IPPROTO_TCP,
                &[],
                0,
                &syn.build(CLIENT4.into(), SERVER4.into()),
            ),
        );
        let run = expect(&program, &frame, XDP_TX, "tagged SYN over limit");
        assert_rst(&run, &frame, CLIENT4.into(), SERVER4.into(), sport, &syn);
    }
}

/// IPv4 options or IPv6 extension headers are not reflected into a RST: the refusal falls back
/// to a drop, and says so in a counter.
#[test]
fn root_reset_falls_back_to_drop_with_ip_options() {
    let program = program_with(listener_port(PORT), 1, action::RESET);
    expect(&program, &syn4(40_000), XDP_PASS, "first SYN");
    let syn = Tcp::syn(40_001, PORT);
    let with_options = ethernet(
        &[],
        ETH_P_IP,
        &ipv4(
            CLIENT4,
            SERVER4,
            IPPROTO_TCP,
            &[1, 1, 1, 1],
            0,
            &syn.build(CLIENT4.into(), SERVER4.into()),
        ),
    );
    expect(&program, &with_options, XDP_DROP, "IPv4 options over limit");
    let syn = Tcp::syn(40_002, PORT);
    let with_hbh = ethernet(
        &[],
        ETH_P_IPV6,
        &ipv6(
            CLIENT6,
            SERVER6,
            &[(IPPROTO_HOPOPTS, vec![])],
            IPPROTO_TCP,
            &syn.build(CLIENT6.into(), SERVER6.into()),
        ),
    );
    expect(&program, &with_hbh, XDP_DROP, "IPv6 hop-by-hop over limit");
    let stats = program.slot_stats(0);
    assert_eq!(
        (stats.refused_drop, stats.refused_reset),
        (2, 0),
        "{stats:?}"
    );
    assert_eq!(
        program.packets().get(packet_stat::RESET_FELL_BACK_TO_DROP),
        2
    );
}

/// Segments other than a connection-opening SYN pass untouched, even at the limit.
#[test]
fn root_non_syn_segments_pass() {
    let program = program_with(listener_port(PORT), 1, action::RESET);
    expect(
        &program,
        &syn4(40_000),
        XDP_PASS,
        "first SYN fills the slot",
    );
    let before = program.packets();
    let flag_sets = [
        ("SYN-ACK", TCP_SYN | TCP_ACK),
        ("ACK", TCP_ACK),
        ("RST", TCP_RST),
        ("RST-ACK", TCP_RST | TCP_ACK),
        ("FIN", TCP_FIN),
        ("FIN-ACK", TCP_FIN | TCP_ACK),
        ("PSH-ACK", TCP_PSH | TCP_ACK),
        ("SYN-FIN", TCP_SYN | TCP_FIN),
        ("SYN-RST", TCP_SYN | TCP_RST),
        ("no flags", 0),
    ];
    for (name, flags) in flag_sets {
        let seg = Tcp::syn(40_001, PORT).with_flags(flags);
        expect(&program, &tcp_v4(CLIENT4, SERVER4, &seg), XDP_PASS, name);
        expect(&program, &tcp_v6(CLIENT6, SERVER6, &seg), XDP_PASS, name);
    }
    // Passed on the uncounted path: not one outcome counter moved.
    let delta = program.packets().since(&before);
    assert_eq!(delta.counted(), 0, "{delta:?}");
    assert_eq!(reserved(&program), 1);
    assert_eq!(
        program.slot_stats(0),
        SlotStats {
            syn_admitted: 1,
            ..SlotStats::default()
        }
    );
}

#[test]
fn root_vlan_and_qinq_syns_are_ours() {
    let program = program_with(listener_v4(SERVER4, PORT), 10, action::DROP);
    let seg = |sport| Tcp::syn(sport, PORT).build(CLIENT4.into(), SERVER4.into());
    let tagged = |tags: &[u16], sport| {
        ethernet(
            tags,
            ETH_P_IP,
            &ipv4(CLIENT4, SERVER4, IPPROTO_TCP, &[], 0, &seg(sport)),
        )
    };
    expect(
        &program,
        &tagged(&[ETH_P_8021Q], 40_000),
        XDP_PASS,
        "802.1Q",
    );
    assert_eq!(reserved(&program), 1, "802.1Q SYN counted");
    expect(
        &program,
        &tagged(&[ETH_P_8021AD, ETH_P_8021Q], 40_001),
        XDP_PASS,
        "QinQ",
    );
    assert_eq!(reserved(&program), 2, "QinQ SYN counted");
    expect(
        &program,
        &tagged(&[ETH_P_8021Q, ETH_P_8021Q], 40_002),
        XDP_PASS,
        "double 802.1Q",
    );
    assert_eq!(reserved(&program), 3, "double-tagged SYN counted");
    // Three tags are beyond what the program parses: passed, not counted.
    expect(
        &program,
        &tagged(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q], 40_003),
        XDP_PASS,
        "three tags",
    );
    assert_eq!(
        reserved(&program),
        3,
        "a triple-tagged frame is not read as a SYN"
    );
    let v6 = ethernet(
        &[ETH_P_8021Q],
        ETH_P_IPV6,
        &ipv6(
            CLIENT6,
            SERVER6,
            &[],
            IPPROTO_TCP,
            &Tcp::syn(40_004, PORT).build(CLIENT6.into(), SERVER6.into()),
        ),
    );
    expect(&program, &v6, XDP_PASS, "802.1Q IPv6 to an IPv4 listener");
    assert_eq!(reserved(&program), 3);
}

#[test]
fn root_ipv4_fragments_pass_uncounted() {
    let program = program_with(listener_port(PORT), 1, action::DROP);
    let seg = Tcp::syn(40_000, PORT).build(CLIENT4.into(), SERVER4.into());
    let first = ethernet(
        &[],
        ETH_P_IP,
        &ipv4(
            CLIENT4,
            SERVER4,
            IPPROTO_TCP,
            &[],
            IPV4_MORE_FRAGMENTS,
            &seg,
        ),
    );
    let later = ethernet(
        &[],
        ETH_P_IP,
        &ipv4(CLIENT4, SERVER4, IPPROTO_TCP, &[], 185, &seg),
    );
    let last_df = ethernet(
        &[],
        ETH_P_IP,
        &ipv4(CLIENT4, SERVER4, IPPROTO_TCP, &[], 0x4000 | 3, &seg),
    );
    let before = program.packets();
    for (name, frame) in [
        ("first fragment", &first),
        ("later fragment", &later),
        ("DF with offset", &last_df),
    ] {
        for _ in 0..3 {
            expect(&program, frame, XDP_PASS, name);
        }
    }
    assert_eq!(reserved(&program), 0, "fragments are never counted");
    // Not SYNs to the program (it cannot see their TCP header whole): passed uncounted.
    let delta = program.packets().since(&before);
    assert_eq!(delta.counted(), 0, "{delta:?}");
    // The Don't Fragment bit alone is not a fragment: counted.
    let df = ethernet(
        &[],
        ETH_P_IP,
        &ipv4(CLIENT4, SERVER4, IPPROTO_TCP, &[], 0x4000, &seg),
    );
    expect(&program, &df, XDP_PASS, "DF SYN");
    assert_eq!(reserved(&program), 1);
}

#[test]
fn root_ipv4_options_syn_is_ours() {
    let program = program_with(listener_v4(SERVER4, PORT), 5, action::DROP);
    // NOPs, then a 40-byte maximum (IHL 15).
    for (sport, options) in [(40_000u16, vec![1u8; 4]), (40_001, vec![1u8; 40])] {
        let frame = ethernet(
            &[],
            ETH_P_IP,
            &ipv4(
                CLIENT4,
                SERVER4,
                IPPROTO_TCP,
                &options,
                0,
                &Tcp::syn(sport, PORT).build(CLIENT4.into(), SERVER4.into()),
            ),
        );
        expect(&program, &frame, XDP_PASS, "SYN with IPv4 options");
    }
    let mut ports: Vec<u16> = program
        .pending()
        .iter()
        .map(|(flow, _)| flow.remote_port)
        .collect();
    ports.sort();
    assert_eq!(ports, vec![40_000, 40_001], "ports read after the options");
}

#[test]
fn root_ipv6_extension_headers() {
    let program = program_with(listener_v6(SERVER6, PORT), 10, action::DROP);
    let seg = |sport| Tcp::syn(sport, PORT).build(CLIENT6.into(), SERVER6.into());
    let with_ext = |ext: &[(u8, Vec<u8>)], sport| {
        ethernet(
            &[],
            ETH_P_IPV6,
            &ipv6(CLIENT6, SERVER6, ext, IPPROTO_TCP, &seg(sport)),
        )
    };
    expect(
        &program,
        &with_ext(&[(IPPROTO_HOPOPTS, vec![])], 40_000),
        XDP_PASS,
        "hop-by-hop",
    );
    expect(
        &program,
        &with_ext(
            &[(IPPROTO_HOPOPTS, vec![0; 14]), (IPPROTO_DSTOPTS, vec![])],
            40_001,
        ),
        XDP_PASS,
        "hop-by-hop + destination options",
    );
    expect(
        &program,
        &with_ext(&[(IPPROTO_ROUTING, vec![0; 6])], 40_002),
        XDP_PASS,
        "routing",
    );
    let mut ports: Vec<u16> = program
        .pending()
        .iter()
        .map(|(flow, _)| flow.remote_port)
        .collect();
    ports.sort();
    assert_eq!(
        ports,
        vec![40_000, 40_001, 40_002],
        "SYNs behind extension headers are read correctly"
    );
    // A fragment header: the TCP header may not even be in this fragment; passed uncounted.
    expect(
        &program,
        &with_ext(&[(IPPROTO_FRAGMENT, vec![0; 6])], 40_003),
        XDP_PASS,
        "fragment header",
    );
    // More extension headers than the program walks: passed (whether read or not, never
    // misread as another port).
    let many: Vec<(u8, Vec<u8>)> = (0..6).map(|_| (IPPROTO_DSTOPTS, vec![])).collect();
    expect(
        &program,
        &with_ext(&many, 40_004),
        XDP_PASS,
        "six extension headers",
    );
    let pending = program.pending();
    assert!(
        pending
            .iter()
            .all(|(flow, _)| flow.local_port == PORT && flow.remote_port != 40_003),
        "{pending:?}"
    );
}

/// Every truncation of a SYN to the listener passes, is counted as malformed, and takes no
/// slot. (Frames shorter than an Ethernet header cannot be fed: the kernel refuses them, as no
/// device delivers them.)
#[test]
fn root_truncated_frames_pass_as_malformed() {
    let program = program_with(listener_port(PORT), 1_000, action::RESET);
    // Distinct source ports: each full frame must take its own slot at the end.
    let bare_syn = |sport| Tcp {
        options: vec![],
        ..Tcp::syn(sport, PORT)
    };
    let bases: Vec<(&str, Vec<u8>)> = vec![
        ("IPv4 SYN", tcp_v4(CLIENT4, SERVER4, &bare_syn(40_000))),
        ("IPv4 SYN with MSS option", syn4(40_001)),
        ("IPv6 SYN", tcp_v6(CLIENT6, SERVER6, &bare_syn(40_002))),
        (
            "QinQ IPv4 SYN",
            ethernet(
                &[ETH_P_8021AD, ETH_P_8021Q],
                ETH_P_IP,
                &ipv4(
                    CLIENT4,
                    SERVER4,
                    IPPROTO_TCP,
                    &[],
                    0,
                    &bare_syn(40_003).build(CLIENT4.into(), SERVER4.into()),
                ),
            ),
        ),
        (
            "IPv6 hop-by-hop SYN",
            ethernet(
                &[],
                ETH_P_IPV6,
                &ipv6(
                    CLIENT6,
                    SERVER6,
                    &[(IPPROTO_HOPOPTS, vec![])],
                    IPPROTO_TCP,
                    &bare_syn(40_004).build(CLIENT6.into(), SERVER6.into()),
                ),
            ),
        ),
    ];
    let mut failures = Vec::new();
    for (name, full) in &bases {
        for len in ETH_HLEN..full.len() {
            let frame = &full[..len];
            let before = (program.packets(), program.usage(0));
            let run = program.run(frame);
            let (packets, usage) = (program.packets().since(&before.0), program.usage(0));
            if run.verdict != XDP_PASS || run.out != frame {
                failures.push(format!(
                    "{name} cut to {len}: {} (out {})",
                    verdict_name(run.verdict),
                    hex(&run.out)
                ));
            } else if packets.get(packet_stat::MALFORMED) != 1 {
                failures.push(format!(
                    "{name} cut to {len}: not counted as malformed: {packets:?}"
                ));
            } else if usage != before.1 {
                failures.push(format!("{name} cut to {len}: took a slot: {usage:?}"));
            }
        }
        // The whole frame is a SYN: admitted (proves the bases are right).
        expect(&program, full, XDP_PASS, name);
    }
    assert_eq!(
        reserved(&program),
        bases.len() as u64,
        "each full SYN admitted once"
    );
    assert!(
        failures.is_empty(),
        "{} truncations mishandled:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn root_non_tcp_passes() {
    let program = program_with(listener_port(PORT), 1, action::RESET);
    expect(
        &program,
        &syn4(40_000),
        XDP_PASS,
        "first SYN fills the slot",
    );
    // A UDP datagram to the listener's port whose payload looks like TCP flags.
    let udp = || {
        let mut dgram = Vec::new();
        dgram.extend_from_slice(&40_001u16.to_be_bytes());
        dgram.extend_from_slice(&PORT.to_be_bytes());
        dgram.extend_from_slice(&12u16.to_be_bytes());
        dgram.extend_from_slice(&[0, 0]);
        dgram.extend_from_slice(&[TCP_SYN; 4]);
        dgram
    };
    let frames: Vec<(&str, Vec<u8>)> = vec![
        (
            "UDP/IPv4",
            ethernet(
                &[],
                ETH_P_IP,
                &ipv4(CLIENT4, SERVER4, IPPROTO_UDP, &[], 0, &udp()),
            ),
        ),
        (
            "UDP/IPv6",
            ethernet(
                &[],
                ETH_P_IPV6,
                &ipv6(CLIENT6, SERVER6, &[], IPPROTO_UDP, &udp()),
            ),
        ),
        (
            "ICMP echo",
            ethernet(
                &[],
                ETH_P_IP,
                &ipv4(
                    CLIENT4,
                    SERVER4,
                    IPPROTO_ICMP,
                    &[],
                    0,
                    &[8, 0, 0xf7, 0xff, 0, 0, 0, 0],
                ),
            ),
        ),
        (
            "ICMPv6 echo",
            ethernet(
                &[],
                ETH_P_IPV6,
                &ipv6(
                    CLIENT6,
                    SERVER6,
                    &[],
                    IPPROTO_ICMPV6,
                    &[128, 0, 0, 0, 0, 0, 0, 0],
                ),
            ),
        ),
        ("ARP", ethernet(&[], ETH_P_ARP, &[0u8; 28])),
        (
            "802.1Q ARP",
            ethernet(&[ETH_P_8021Q], ETH_P_ARP, &[0u8; 28]),
        ),
    ];
    let before = program.packets();
    for (name, frame) in &frames {
        expect(&program, frame, XDP_PASS, name);
    }
    let delta = program.packets().since(&before);
    assert_eq!(delta.counted(), 0, "{delta:?}");
    assert_eq!(reserved(&program), 1);
}

/// Seeded fuzz (one listener reserving, one in flood mode): at least 100,000 random and mutated
/// frames that are not SYNs for a listener
/// (by a deliberately broad reading, `frames::may_be_listener_syn`): every one passes
/// untouched, and no slot counter moves.
#[test]
fn root_fuzz_frames_not_ours_always_pass() {
    const FRAMES: u64 = 100_000;
    const SEED: u64 = 0x11D1_7E55_0000_2025;
    const TIME_LIMIT: Duration = Duration::from_secs(300);
    let listener2 = 8001u16;
    let mut program = AdmissionProgram::load();
    program.add_listener(listener_port(PORT), 0, 1, action::RESET);
    program.add_listener(listener_v4(SERVER4, listener2), 1, 1, action::RESET);
    // The second listener in flood mode: its path, too, must never see a frame that is not one
    // of its SYNs.
    program.set_usage(
        1,
        SlotUsage {
            reserved: 0,
            active: 0,
            mode: admission_mode::FLOOD,
        },
    );
    let is_listener =
        |dst: IpAddr, port: u16| port == PORT || (port == listener2 && dst == IpAddr::V4(SERVER4));

    let mut rng = Rng::new(SEED);
    let started = Instant::now();
    let before = program.packets();
    let mut last = before;
    let (usage0, usage1) = (program.usage(0), program.usage(1));
    let (stats0, stats1) = (program.slot_stats(0), program.slot_stats(1));
    let (mut fed, mut skipped, mut generated) = (0u64, 0u64, 0u64);
    let mut failures: Vec<String> = Vec::new();
    // Bounded: at most 4x the frames generated (skips included) and TIME_LIMIT.
    while fed < FRAMES && generated < 4 * FRAMES && started.elapsed() < TIME_LIMIT {
        generated += 1;
        let frame = fuzz_frame(&mut rng, listener2);
        if frame.len() < ETH_HLEN
            || frame.len() > 1500
            || frames::may_be_listener_syn(&frame, &is_listener)
        {
            skipped += 1;
            continue;
        }
        fed += 1;
        let run = program.run(&frame);
        if run.verdict != XDP_PASS || run.out != frame {
            failures.push(format!(
                "#{generated}: {} for {}",
                verdict_name(run.verdict),
                hex(&frame)
            ));
        }
        // A frame ends in at most one outcome counter (none if it is not a SYN at all).
        let now = program.packets();
        let counted = now.since(&last);
        last = now;
        if counted.counted() > 1 {
            failures.push(format!(
                "#{generated}: counted more than once: {counted:?} for {}",
                hex(&frame)
            ));
        }
        if program.usage(0) != usage0 || program.usage(1) != usage1 {
            failures.push(format!(
                "#{generated}: slot usage moved after {}: {:?} {:?}",
                hex(&frame),
                program.usage(0),
                program.usage(1)
            ));
        }
        if fed % 1_000 == 0 && (program.slot_stats(0) != stats0 || program.slot_stats(1) != stats1)
        {
            failures.push(format!(
                "slot stats moved by frames up to #{generated}: {:?} {:?}",
                program.slot_stats(0),
                program.slot_stats(1)
            ));
        }
        if failures.len() >= 20 {
            break;
        }
    }
    let delta = program.packets().since(&before);
    println!(
        "fuzz: seed {SEED:#x}, {fed} frames fed, {skipped} skipped as possible listener SYNs, {:?}; {delta:?}",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "fuzz failures (seed {SEED:#x}):\n{}",
        failures.join("\n")
    );
    assert_eq!(
        fed,
        FRAMES,
        "fed {fed} frames in {:?} (skipped {skipped})",
        started.elapsed()
    );
    assert_eq!(
        (program.slot_stats(0), program.slot_stats(1)),
        (stats0, stats1)
    );
    // None took a listener's path; only SYNs to other ports and malformed frames are counted.
    assert_eq!(
        (
            delta.get(packet_stat::SYN_PASSED),
            delta.get(packet_stat::SYN_REFUSED)
        ),
        (0, 0),
        "{delta:?}"
    );
    assert!(delta.counted() <= fed, "{delta:?}");
    assert!(program.pending().is_empty());
}

/// One fuzz frame: a valid frame that is not a listener SYN (SYN to another port or address,
/// other segments, UDP), then mutated (bytes flipped or set, cut, extended), or pure noise.
fn fuzz_frame(rng: &mut Rng, listener2: u16) -> Vec<u8> {
    let kind = rng.below(10);
    if kind == 0 {
        // Pure noise behind a plausible or random EtherType.
        let len = ETH_HLEN + rng.below(120) as usize;
        let mut frame = rng.bytes(len);
        let types = [
            ETH_P_IP,
            ETH_P_IPV6,
            ETH_P_8021Q,
            ETH_P_8021AD,
            rng.next_u64() as u16,
        ];
        let ethertype = types[rng.below(types.len() as u64) as usize];
        frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        return frame;
    }
    let v6 = rng.chance(1, 2);
    let mut tcp = Tcp::syn(1024 + rng.below(60_000) as u16, PORT);
    tcp.seq = rng.next_u64() as u32;
    match rng.below(4) {
        // A SYN to another port (near the listeners' ports half of the time).
        0 => {
            let near = [
                PORT - 1,
                PORT + 2,
                listener2 + 1,
                PORT ^ 0x100,
                PORT.swap_bytes(),
            ];
            tcp.dport = if rng.chance(1, 2) {
                near[rng.below(near.len() as u64) as usize]
            } else {
                rng.next_u64() as u16
            };
            if tcp.dport == PORT || tcp.dport == listener2 {
                tcp.dport = 9;
            }
        }
        // The second listener's port on another address (IPv4) or family.
        1 => tcp.dport = listener2,
        // Any other segment to the listener's port.
        _ => {
            let others = [
                TCP_ACK,
                TCP_SYN | TCP_ACK,
                TCP_RST,
                TCP_RST | TCP_ACK,
                TCP_FIN | TCP_ACK,
                TCP_PSH | TCP_ACK,
                TCP_SYN | TCP_FIN,
                TCP_SYN | TCP_RST,
            ];
            tcp.flags = others[rng.below(others.len() as u64) as usize];
            tcp.dport = if rng.chance(1, 2) { PORT } else { listener2 };
        }
    }
    if rng.chance(1, 4) {
        tcp.payload = rng.bytes_below(64);
    }
    if rng.chance(1, 4) {
        tcp.options = rng.bytes_below(41);
    }
    let other4 = Ipv4Addr::new(198, 18, 0, 9);
    let proto = if rng.chance(1, 10) {
        IPPROTO_UDP
    } else {
        IPPROTO_TCP
    };
    let (ethertype, packet) = if v6 {
        let ext_kinds = [
            IPPROTO_HOPOPTS,
            IPPROTO_DSTOPTS,
            IPPROTO_ROUTING,
            IPPROTO_FRAGMENT,
        ];
        let ext: Vec<(u8, Vec<u8>)> = (0..rng.below(3))
            .map(|_| (ext_kinds[rng.below(4) as usize], rng.bytes_below(14)))
            .collect();
        let seg = tcp.build(CLIENT6.into(), SERVER6.into());
        (ETH_P_IPV6, ipv6(CLIENT6, SERVER6, &ext, proto, &seg))
    } else {
        let dst = if tcp.dport == listener2 && tcp.flags == TCP_SYN {
            other4
        } else {
            SERVER4
        };
        let options = if rng.chance(1, 5) {
            rng.bytes_below(41)
        } else {
            vec![]
        };
        let frag = if rng.chance(1, 8) {
            IPV4_MORE_FRAGMENTS | rng.below(8) as u16
        } else {
            0
        };
        let seg = tcp.build(CLIENT4.into(), dst.into());
        (ETH_P_IP, ipv4(CLIENT4, dst, proto, &options, frag, &seg))
    };
    let tag_choices: [&[u16]; 4] = [
        &[],
        &[ETH_P_8021Q],
        &[ETH_P_8021AD, ETH_P_8021Q],
        &[ETH_P_8021Q, ETH_P_8021Q, ETH_P_8021Q],
    ];
    let tags = tag_choices[rng.below(4) as usize];
    let mut frame = ethernet(tags, ethertype, &packet);
    // Mutations.
    for _ in 0..rng.below(5) {
        let at = rng.below(frame.len() as u64) as usize;
        match rng.below(3) {
            0 => frame[at] ^= 1 << rng.below(8),
            1 => frame[at] = rng.byte(),
            _ => frame[at] = [0, 0xff, 0x45, 0x60, 0x06, 0x02][rng.below(6) as usize],
        }
    }
    match rng.below(6) {
        0 => frame.truncate(ETH_HLEN + rng.below(frame.len() as u64) as usize),
        1 => frame.extend(rng.bytes_below(32)),
        _ => {}
    }
    frame
}
