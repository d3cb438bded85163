//! The TC and XDP programs run by the kernel on crafted packets (BPF_PROG_TEST_RUN), Katran style: a
//! table of {description, program, input, expected verdict, expected output}. Every output
//! has its checksums verified by an independent implementation (etherparse).

use std::collections::BTreeMap;

use ambassador_common::program_names;
use ambassador_tests::{require_root, PinDir, FIXTURE_CONFIG};
use ambassador_user::{
    core::{config, tables},
    datapath::loader,
};
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp};
use etherparse::{
    icmpv4::{DestUnreachableHeader, TimeExceededCode},
    Icmpv4Type, IpNumber, Ipv4Header, Ipv4Options, NetHeaders, PacketBuilder, PacketHeaders,
    TcpHeader, TransportHeader, UdpHeader,
};

const NEXT: i32 = -1;
const SHOT: i32 = 2;

const CLIENT: [u8; 4] = [10, 0, 0, 2];
const VIP: [u8; 4] = [10, 96, 0, 10];
const VIP_EMPTY: [u8; 4] = [10, 96, 0, 11];
const BACKEND: [u8; 4] = [10, 0, 1, 2];
const OTHER: [u8; 4] = [192, 0, 2, 1];
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// Runs a program once on `input` (BPF_PROG_TEST_RUN); returns its verdict and the packet as
/// it left.
fn test_run(prog: &SchedClassifier, input: &[u8]) -> (i32, Vec<u8>) {
    let mut out = vec![0u8; 4096];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN ({} bytes): {e}", input.len()));
    out.truncate(result.data_size_out as usize);
    (result.return_value as i32, out)
}

fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, syn: bool, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64000);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// A UDP datagram whose sender did not compute a checksum (field zero).
fn udp_no_checksum(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = udp(src, sport, dst, dport, payload);
    v[14 + 20 + 6] = 0;
    v[14 + 20 + 7] = 0;
    v
}

/// An ICMP error from `src` to `dst` quoting `frame`'s IPv4 packet (without its Ethernet
/// header).
fn icmp(src: [u8; 4], dst: [u8; 4], kind: Icmpv4Type, frame: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .icmpv4(kind)
        .write(&mut v, &frame[14..])
        .unwrap();
    v
}

fn frag_needed() -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: 1280,
    })
}

/// A TCP SYN with 4 bytes of IPv4 options (ihl = 6).
fn tcp_with_ip_options(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut t = TcpHeader::new(sport, dport, 1000, 64000);
    t.syn = true;
    let mut ip = Ipv4Header::new(t.header_len() as u16, 64, IpNumber::TCP, src, dst).unwrap();
    ip.options = Ipv4Options::try_from(&[1u8, 1, 1, 0][..]).unwrap(); // NOP NOP NOP EOL
    ip.total_len = (ip.header_len() + t.header_len()) as u16;
    ip.header_checksum = ip.calc_header_checksum();
    t.checksum = t.calc_checksum_ipv4(&ip, &[]).unwrap();
    let mut v = Vec::new();
    v.extend_from_slice(&MAC_B);
    v.extend_from_slice(&MAC_A);
    v.extend_from_slice(&0x0800u16.to_be_bytes());
    ip.write(&mut v).unwrap();
    t.write(&mut v).unwrap();
    v
}

/// Sets IPv4 flags/fragment offset and fixes the header checksum.
fn fragment(mut frame: Vec<u8>, more: bool, offset_units: u16) -> Vec<u8> {
    let v = ((more as u16) << 13) | offset_units;
    frame[14 + 6..14 + 8].copy_from_slice(&v.to_be_bytes());
    frame[14 + 10] = 0;
    frame[14 + 11] = 0;
    let c = ambassador_common::csum::ipv4_header(&frame[14..34]);
    frame[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    frame
}

fn with_byte(mut frame: Vec<u8>, at: usize, value: u8) -> Vec<u8> {
    frame[at] = value;
    frame
}

fn truncated(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

/// An IPv4 address and port.
type Endpoint = ([u8; 4], u16);

/// What the output of a case must look like.
enum Expect {
    /// Byte for byte the input.
    Unchanged,
    /// Dropped (the output is not inspected).
    Dropped,
    /// Rewritten: these endpoints, valid checksums, everything else as in the input.
    Rewritten {
        src: ([u8; 4], u16),
        dst: ([u8; 4], u16),
    },
    /// An ICMP error translated: these outer addresses, this quoted packet's endpoints, and
    /// every checksum valid (outer IPv4, ICMP, the quoted IPv4 header and L4 checksum).
    IcmpTranslated {
        outer: ([u8; 4], [u8; 4]),
        src: Endpoint,
        dst: Endpoint,
    },
}

struct Case {
    what: &'static str,
    program: &'static str,
    input: Vec<u8>,
    verdict: i32,
    expect: Expect,
}

/// Endpoints and checksum validity of an IPv4 TCP/UDP frame, via etherparse.
fn inspect(frame: &[u8]) -> (Endpoint, Endpoint, Result<(), String>) {
    let p = PacketHeaders::from_ethernet_slice(frame).expect("output parses");
    let Some(NetHeaders::Ipv4(ip, _)) = &p.net else {
        panic!("output is not IPv4")
    };
    let payload = p.payload.slice();
    let mut ok = Ok(());
    if ip.calc_header_checksum() != ip.header_checksum {
        ok = Err(format!(
            "bad IPv4 header checksum {:#06x}",
            ip.header_checksum
        ));
    }
    let (sport, dport) = match &p.transport {
        Some(TransportHeader::Tcp(t)) => {
            let want = t.calc_checksum_ipv4(ip, payload).unwrap();
            if want != t.checksum {
                ok = Err(format!(
                    "bad TCP checksum {:#06x}, want {want:#06x}",
                    t.checksum
                ));
            }
            (t.source_port, t.destination_port)
        }
        Some(TransportHeader::Udp(u)) => {
            if u.checksum != 0 {
                let want =
                    UdpHeader::with_ipv4_checksum(u.source_port, u.destination_port, ip, payload)
                        .unwrap()
                        .checksum;
                if want != u.checksum {
                    ok = Err(format!(
                        "bad UDP checksum {:#06x}, want {want:#06x}",
                        u.checksum
                    ));
                }
            }
            (u.source_port, u.destination_port)
        }
        _ => panic!("output is not TCP or UDP"),
    };
    ((ip.source, sport), (ip.destination, dport), ok)
}

/// Checks an ICMP error: its outer addresses, its quoted packet's endpoints, and every
/// checksum, each recomputed by etherparse.
fn check_icmp(
    frame: &[u8],
    outer: ([u8; 4], [u8; 4]),
    src: Endpoint,
    dst: Endpoint,
) -> Result<(), String> {
    let p = PacketHeaders::from_ethernet_slice(frame).map_err(|e| e.to_string())?;
    let Some(NetHeaders::Ipv4(ip, _)) = &p.net else {
        return Err("not IPv4".into());
    };
    if (ip.source, ip.destination) != outer {
        return Err(format!(
            "outer {:?} -> {:?}, want {outer:?}",
            ip.source, ip.destination
        ));
    }
    if ip.calc_header_checksum() != ip.header_checksum {
        return Err("bad outer IPv4 header checksum".into());
    }
    let Some(TransportHeader::Icmpv4(icmp)) = &p.transport else {
        return Err("not ICMP".into());
    };
    let quoted = p.payload.slice();
    if icmp.icmp_type.calc_checksum(quoted) != icmp.checksum {
        return Err(format!("bad ICMP checksum {:#06x}", icmp.checksum));
    }
    // The quoted packet, framed again, through the same checks as any rewritten packet.
    let mut framed = frame[..14].to_vec();
    framed.extend_from_slice(quoted);
    let (got_src, got_dst, csums) = inspect(&framed);
    if (got_src, got_dst) != (src, dst) {
        return Err(format!(
            "quoted {got_src:?} -> {got_dst:?}, want {src:?} -> {dst:?}"
        ));
    }
    csums.map_err(|e| format!("quoted packet: {e}"))
}

#[test]
fn programs_handle_the_fixture_table() {
    if !require_root("programs_handle_the_fixture_table") {
        return;
    }
    let pin = PinDir::new();
    // The socket programs too, where the kernel has what they need: the verifier must accept
    // them (they run in the sock tests). An older kernel (the VM matrix boots 5.10) refuses
    // them by name and version before anything is loaded.
    let sock = match loader::check_sock_kernel() {
        Ok(()) => true,
        Err(e) => {
            let refused = loader::load(&pin.path, Default::default(), false, true, false)
                .err()
                .map(|e| e.to_string());
            assert_eq!(refused, Some(e.to_string()));
            assert!(refused.unwrap().contains("needs Linux 5.18"), "{e}");
            false
        }
    };
    let (ebpf, mut maps, _lock, _) =
        loader::load(&pin.path, Default::default(), false, sock, false).expect("load the datapath");
    let desired = config::parse("fixture.toml", FIXTURE_CONFIG).unwrap();
    let mut installed = maps.read_installed().unwrap();
    tables::converge(&mut maps, &mut installed, &desired).unwrap();
    let prog = |name: &str| -> &SchedClassifier {
        ebpf.program(name)
            .expect("in the object")
            .try_into()
            .expect("a TC program")
    };
    let cases = cases();

    let failures = check(
        &cases,
        |case| test_run(prog(case.program), &case.input),
        |v| v,
    );
    assert!(
        failures.is_empty(),
        "fixture failures:\n  {}",
        failures.join("\n  ")
    );

    // Every verdict was counted under its reason.
    assert_eq!(maps.reasons().unwrap(), table_reasons(3));
    let flows = maps.flows().unwrap();
    assert_eq!(flows.len(), 4, "{flows:?}");
}

/// The same table through the XDP program, which does both translations on one hook: its
/// verdicts are XDP's (`XDP_PASS` where TC goes on: the FIB has no answer for a test run's
/// frame, so a translated frame goes to the stack, as one whose next hop is unresolved does),
/// and ICMP errors are left to the stack (XDP translates TCP and UDP only).
#[test]
fn the_xdp_program_handles_the_fixture_table() {
    if !require_root("the_xdp_program_handles_the_fixture_table") {
        return;
    }
    const XDP_DROP: i32 = 1;
    const XDP_PASS: i32 = 2;
    let pin = PinDir::new();
    let (ebpf, mut maps, _lock, _) =
        loader::load(&pin.path, Default::default(), false, false, true).expect("load the datapath");
    let desired = config::parse("fixture.toml", FIXTURE_CONFIG).unwrap();
    let mut installed = maps.read_installed().unwrap();
    tables::converge(&mut maps, &mut installed, &desired).unwrap();
    let xdp: &Xdp = ebpf
        .program(program_names::XDP)
        .expect("in the object")
        .try_into()
        .expect("an XDP program");
    let cases: Vec<Case> = cases()
        .into_iter()
        .map(|c| match c.expect {
            Expect::IcmpTranslated { .. } => Case {
                expect: Expect::Unchanged,
                ..c
            },
            _ => c,
        })
        .collect();
    let run = |case: &Case| {
        let mut out = vec![0u8; 4096];
        let result = xdp
            .test_run(TestRunOptions {
                data_in: Some(&case.input),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
        out.truncate(result.data_size_out as usize);
        (result.return_value as i32, out)
    };
    let failures = check(&cases, run, |v| if v == SHOT { XDP_DROP } else { XDP_PASS });
    assert!(
        failures.is_empty(),
        "XDP fixture failures:\n  {}",
        failures.join("\n  ")
    );
    assert_eq!(maps.reasons().unwrap(), table_reasons(0));
}

/// The reasons the fixture table counts, with `icmp_errors` ICMP errors translated.
fn table_reasons(icmp_errors: u64) -> BTreeMap<&'static str, u64> {
    [
        ("forwarded", 5),
        ("reverse_nat", 2),
        ("no_backend", 1),
        ("fragment", 2),
        ("malformed", 2),
        ("ct_insert_failed", 0),
        ("backend_missing", 0),
        ("rewrite_failed", 0),
        ("failover", 0),
        ("icmp_error", icmp_errors),
    ]
    .into()
}

/// The fixture table: TC's programs (DNAT on ingress, reverse NAT on egress), in order (later
/// cases rely on the flows earlier ones created).
fn cases() -> Vec<Case> {
    let (dnat, rnat) = (program_names::TC_DNAT, program_names::TC_RNAT);

    let mut cases = vec![
        Case {
            what: "TCP SYN to a frontend goes to its backend",
            program: dnat,
            input: tcp(CLIENT, 40000, VIP, 80, true, b""),
            verdict: NEXT,
            expect: Expect::Rewritten {
                src: (CLIENT, 40000),
                dst: (BACKEND, 8080),
            },
        },
        Case {
            what: "a later segment of the same flow, with payload, follows it",
            program: dnat,
            input: tcp(CLIENT, 40000, VIP, 80, false, b"GET / HTTP/1.0\r\n\r\n"),
            verdict: NEXT,
            expect: Expect::Rewritten {
                src: (CLIENT, 40000),
                dst: (BACKEND, 8080),
            },
        },
        Case {
            what: "the backend's reply appears to come from the frontend",
            program: rnat,
            input: tcp(BACKEND, 8080, CLIENT, 40000, false, b"HTTP/1.0 200 OK\r\n"),
            verdict: NEXT,
            expect: Expect::Rewritten {
                src: (VIP, 80),
                dst: (CLIENT, 40000),
            },
        },
        Case {
            what: "UDP to a frontend goes to its backend",
            program: dnat,
            input: udp(CLIENT, 41000, VIP, 53, b"query"),
            verdict: NEXT,
            expect: Expect::Rewritten {
                src: (CLIENT, 41000),
                dst: (BACKEND, 5353),
            },
        },
        Case {
            what: "the UDP reply appears to come from the frontend",
            program: rnat,
            input: udp(BACKEND, 5353, CLIENT, 41000, b"answer"),
            verdict: NEXT,
            expect: Expect::Rewritten {
                src: (VIP, 53),
                dst: (CLIENT, 41000),
            },
        },
        Case {
            what: "UDP without a checksum keeps none",
            program: dnat,
            input: udp_no_checksum(CLIENT, 41001, VIP, 53, b"query"),
            verdict: NEXT,
            expect: Expect::Rewritten {
                src: (CLIENT, 41001),
                dst: (BACKEND, 5353),
            },
        },
        Case {
            what: "IPv4 options move the L4 header; the rewrite follows it",
            program: dnat,
            input: tcp_with_ip_options(CLIENT, 40001, VIP, 80),
            verdict: NEXT,
            expect: Expect::Rewritten {
                src: (CLIENT, 40001),
                dst: (BACKEND, 8080),
            },
        },
        Case {
            what: "another port of the frontend address is not a frontend",
            program: dnat,
            input: tcp(CLIENT, 40002, VIP, 81, true, b""),
            verdict: NEXT,
            expect: Expect::Unchanged,
        },
        Case {
            what: "traffic to other addresses passes untouched",
            program: dnat,
            input: tcp(CLIENT, 40003, OTHER, 80, true, b""),
            verdict: NEXT,
            expect: Expect::Unchanged,
        },
        Case {
            what: "a reply of an untracked flow passes untouched",
            program: rnat,
            input: tcp(BACKEND, 8080, CLIENT, 49999, false, b""),
            verdict: NEXT,
            expect: Expect::Unchanged,
        },
        Case {
            what: "ICMP to a frontend address passes (not a TCP/UDP frontend)",
            program: dnat,
            input: with_byte(fragment(udp(CLIENT, 1, VIP, 53, b"x"), false, 0), 14 + 9, 1),
            verdict: NEXT,
            expect: Expect::Unchanged,
        },
        Case {
            what: "a first fragment to a frontend address is dropped",
            program: dnat,
            input: fragment(udp(CLIENT, 41002, VIP, 53, b"part one"), true, 0),
            verdict: SHOT,
            expect: Expect::Dropped,
        },
        Case {
            what: "a later fragment to a frontend address is dropped",
            program: dnat,
            input: fragment(udp(CLIENT, 41002, VIP, 53, b"part two"), false, 185),
            verdict: SHOT,
            expect: Expect::Dropped,
        },
        Case {
            what: "a fragment to another address passes",
            program: dnat,
            input: fragment(udp(CLIENT, 41003, OTHER, 53, b"frag"), true, 0),
            verdict: NEXT,
            expect: Expect::Unchanged,
        },
        Case {
            what: "a truncated TCP header to a frontend is dropped",
            program: dnat,
            input: truncated(tcp(CLIENT, 40004, VIP, 80, true, b""), 14 + 20 + 10),
            verdict: SHOT,
            expect: Expect::Dropped,
        },
        // (BPF_PROG_TEST_RUN refuses frames shorter than an IPv4 header, so the shortest
        // truncation it can feed is a header whose options run past the frame.)
        Case {
            what: "an IPv4 header whose options run past the frame, to a frontend, is dropped",
            program: dnat,
            input: with_byte(tcp(CLIENT, 40005, VIP, 80, true, b""), 14, 0x4f),
            verdict: SHOT,
            expect: Expect::Dropped,
        },
        Case {
            what: "an IPv4 header length below 20 bytes passes",
            program: dnat,
            input: with_byte(tcp(CLIENT, 40006, VIP, 80, true, b""), 14, 0x44),
            verdict: NEXT,
            expect: Expect::Unchanged,
        },
        Case {
            what: "an IPv6 ethertype passes",
            program: dnat,
            input: with_byte(tcp(CLIENT, 40007, VIP, 80, true, b""), 12, 0x86),
            verdict: NEXT,
            expect: Expect::Unchanged,
        },
        Case {
            what: "a frontend without backends drops instead of leaking to the VIP",
            program: dnat,
            input: tcp(CLIENT, 40008, VIP_EMPTY, 80, true, b""),
            verdict: SHOT,
            expect: Expect::Dropped,
        },
    ];

    // ICMP errors about the flows above (TCP 40000 and UDP 41000), translated so that the
    // stack at the other end matches them to its socket.
    cases.extend([
        Case {
            what: "a router's fragmentation-needed about a client's segment, quoted as the backend saw it, is about the frontend",
            program: rnat,
            input: icmp(OTHER, CLIENT, frag_needed(), &tcp(CLIENT, 40000, BACKEND, 8080, false, b"")),
            verdict: NEXT,
            expect: Expect::IcmpTranslated {
                outer: (OTHER, CLIENT),
                src: (CLIENT, 40000),
                dst: (VIP, 80),
            },
        },
        Case {
            what: "the backend host's port unreachable about a datagram comes from the frontend",
            program: rnat,
            input: icmp(
                BACKEND,
                CLIENT,
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
                &udp(CLIENT, 41000, BACKEND, 5353, b"query"),
            ),
            verdict: NEXT,
            expect: Expect::IcmpTranslated {
                outer: (VIP, CLIENT),
                src: (CLIENT, 41000),
                dst: (VIP, 53),
            },
        },
        Case {
            what: "a client's fragmentation-needed about the frontend's reply goes to the backend, about the backend's packet",
            program: dnat,
            input: icmp(CLIENT, VIP, frag_needed(), &tcp(VIP, 80, CLIENT, 40000, false, b"data")),
            verdict: NEXT,
            expect: Expect::IcmpTranslated {
                outer: (CLIENT, BACKEND),
                src: (BACKEND, 8080),
                dst: (CLIENT, 40000),
            },
        },
        Case {
            what: "a time exceeded about a flow ambassador never saw passes untouched",
            program: rnat,
            input: icmp(
                OTHER,
                CLIENT,
                Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit),
                &udp(CLIENT, 41999, OTHER, 53, b"q"),
            ),
            verdict: NEXT,
            expect: Expect::Unchanged,
        },
        Case {
            what: "an echo reply passes untouched",
            program: rnat,
            input: icmp(
                OTHER,
                CLIENT,
                Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id: 1, seq: 1 }),
                &udp(CLIENT, 41000, BACKEND, 5353, b"ping"),
            ),
            verdict: NEXT,
            expect: Expect::Unchanged,
        },
    ]);
    cases
}

/// Runs every case with `run` and returns what went wrong; `verdict_of` maps a case's TC
/// verdict to the program's.
fn check(
    cases: &[Case],
    run: impl Fn(&Case) -> (i32, Vec<u8>),
    verdict_of: impl Fn(i32) -> i32,
) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let (verdict, out) = run(case);
        let want = verdict_of(case.verdict);
        if verdict != want {
            failures.push(format!("{}: verdict {verdict}, want {want}", case.what));
            continue;
        }
        match &case.expect {
            Expect::Dropped => {}
            Expect::Unchanged => {
                if out != case.input {
                    failures.push(format!("{}: packet was modified", case.what));
                }
            }
            Expect::Rewritten { src, dst } => {
                let (got_src, got_dst, csums) = inspect(&out);
                if (got_src, got_dst) != (*src, *dst) {
                    failures.push(format!(
                        "{}: {got_src:?} -> {got_dst:?}, want {src:?} -> {dst:?}",
                        case.what
                    ));
                }
                if let Err(e) = csums {
                    failures.push(format!("{}: {e}", case.what));
                }
                if out.len() != case.input.len() || out[..12] != case.input[..12] {
                    failures.push(format!("{}: length or MACs changed", case.what));
                }
                let l4 = 14 + ((case.input[14] & 0xf) as usize) * 4;
                let hdr = if case.input[14 + 9] == 6 { 20 } else { 8 };
                if out[l4 + hdr..] != case.input[l4 + hdr..] {
                    failures.push(format!("{}: payload changed", case.what));
                }
                if case.input[14 + 9] == 17
                    && case.input[l4 + 6..l4 + 8] == [0, 0]
                    && out[l4 + 6..l4 + 8] != [0, 0]
                {
                    failures.push(format!("{}: a zero UDP checksum was filled in", case.what));
                }
            }
            Expect::IcmpTranslated { outer, src, dst } => {
                if let Err(e) = check_icmp(&out, *outer, *src, *dst) {
                    failures.push(format!("{}: {e}", case.what));
                }
                if out.len() != case.input.len() {
                    failures.push(format!("{}: length changed", case.what));
                }
            }
        }
    }
    failures
}

const CLIENT6: [u8; 16] = [0xfd, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const VIP6: [u8; 16] = [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const BACKEND6: [u8; 16] = [0xfd, 0, 2, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

const CONFIG6: &str = r#"
[[service]]
name = "web6"
frontend = "[fd00:96::10]:80"
endpoints = ["[fd00:200:1::2]:8080"]

[[service]]
name = "dns6"
frontend = "[fd00:96::10]:53"
proto = "udp"
endpoints = ["[fd00:200:1::2]:5353"]
"#;

/// An IPv6 frame: TCP (`tcp`: SYN, SYN-ACK or ACK with payload) or UDP.
fn frame6(
    src: [u8; 16],
    sport: u16,
    dst: [u8; 16],
    dport: u16,
    tcp: Option<(bool, bool)>,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv6(src, dst, 64);
    let mut v = Vec::new();
    match tcp {
        Some((syn, ack)) => {
            let t = b.tcp(sport, dport, 1000, 64000);
            let t = if syn { t.syn() } else { t };
            let t = if ack { t.ack(1) } else { t };
            t.write(&mut v, payload).unwrap();
        }
        None => b.udp(sport, dport).write(&mut v, payload).unwrap(),
    }
    v
}

/// An IPv6 address and port.
type Endpoint6 = ([u8; 16], u16);

/// Endpoints and checksum validity of an IPv6 TCP/UDP frame, via etherparse.
fn inspect6(frame: &[u8]) -> (Endpoint6, Endpoint6, Result<(), String>) {
    let p = PacketHeaders::from_ethernet_slice(frame).expect("output parses");
    let Some(NetHeaders::Ipv6(ip, _)) = &p.net else {
        panic!("output is not IPv6")
    };
    let payload = p.payload.slice();
    let (sport, dport, ok) = match &p.transport {
        Some(TransportHeader::Tcp(t)) => {
            let want = t.calc_checksum_ipv6(ip, payload).unwrap();
            let ok = if want == t.checksum {
                Ok(())
            } else {
                Err(format!(
                    "bad TCP checksum {:#06x}, want {want:#06x}",
                    t.checksum
                ))
            };
            (t.source_port, t.destination_port, ok)
        }
        Some(TransportHeader::Udp(u)) => {
            let want =
                UdpHeader::with_ipv6_checksum(u.source_port, u.destination_port, ip, payload)
                    .unwrap()
                    .checksum;
            let ok = if want == u.checksum {
                Ok(())
            } else {
                Err(format!(
                    "bad UDP checksum {:#06x}, want {want:#06x}",
                    u.checksum
                ))
            };
            (u.source_port, u.destination_port, ok)
        }
        _ => panic!("output is not TCP or UDP"),
    };
    ((ip.source, sport), (ip.destination, dport), ok)
}

#[test]
fn ipv6_packets_are_translated_both_ways_with_valid_checksums() {
    if !require_root("ipv6_packets_are_translated_both_ways_with_valid_checksums") {
        return;
    }
    let pin = PinDir::new();
    let (ebpf, mut maps, _lock, _) =
        loader::load(&pin.path, Default::default(), false, false, false)
            .expect("load the datapath");
    let desired = config::parse("fixture6.toml", CONFIG6).unwrap();
    let mut installed = maps.read_installed().unwrap();
    tables::converge(&mut maps, &mut installed, &desired).unwrap();
    let prog = |name: &str| -> &SchedClassifier {
        ebpf.program(name)
            .expect("in the object")
            .try_into()
            .expect("a TC program")
    };
    let (dnat, rnat) = (prog(program_names::TC_DNAT), prog(program_names::TC_RNAT));
    let cases: Vec<(&str, &SchedClassifier, Vec<u8>, Endpoint6, Endpoint6)> = vec![
        (
            "a SYN to the IPv6 frontend goes to its backend",
            dnat,
            frame6(CLIENT6, 40000, VIP6, 80, Some((true, false)), b""),
            (CLIENT6, 40000),
            (BACKEND6, 8080),
        ),
        (
            "the backend's SYN-ACK comes from the frontend",
            rnat,
            frame6(BACKEND6, 8080, CLIENT6, 40000, Some((true, true)), b""),
            (VIP6, 80),
            (CLIENT6, 40000),
        ),
        (
            "a data segment follows the flow",
            dnat,
            frame6(CLIENT6, 40000, VIP6, 80, Some((false, true)), b"GET /"),
            (CLIENT6, 40000),
            (BACKEND6, 8080),
        ),
        (
            "UDP to the IPv6 frontend goes to its backend",
            dnat,
            frame6(CLIENT6, 41000, VIP6, 53, None, b"query"),
            (CLIENT6, 41000),
            (BACKEND6, 5353),
        ),
        (
            "the UDP answer comes from the frontend",
            rnat,
            frame6(BACKEND6, 5353, CLIENT6, 41000, None, b"answer"),
            (VIP6, 53),
            (CLIENT6, 41000),
        ),
    ];
    let mut failures = Vec::new();
    for (what, p, input, src, dst) in &cases {
        let (verdict, out) = test_run(p, input);
        if verdict != NEXT {
            failures.push(format!("{what}: verdict {verdict}"));
            continue;
        }
        let (s, d, csum) = inspect6(&out);
        if (s, d) != (*src, *dst) {
            failures.push(format!("{what}: {s:?} -> {d:?}, want {src:?} -> {dst:?}"));
        }
        if let Err(e) = csum {
            failures.push(format!("{what}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "IPv6 fixture failures:\n  {}",
        failures.join("\n  ")
    );
    // A router's "packet too big" about the client's segment, quoted as the backend saw it, is
    // about the frontend: the quoted destination and every checksum (the ICMPv6 one through
    // its pseudo header) recomputed by etherparse; a router's error keeps its source.
    const ROUTER6: [u8; 16] = [0xfd, 0, 2, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let quoted = frame6(CLIENT6, 40000, BACKEND6, 8080, Some((false, true)), b"data");
    let out = ptb_through(rnat, ROUTER6, CLIENT6, &quoted);
    check_ptb(&out, (ROUTER6, CLIENT6), ((CLIENT6, 40000), (VIP6, 80)));
    // The client's own "packet too big" about the frontend's reply goes to the backend, about
    // the backend's segment: the outer destination and the quoted source.
    let quoted = frame6(VIP6, 80, CLIENT6, 40000, Some((false, true)), b"reply");
    let out = ptb_through(dnat, CLIENT6, VIP6, &quoted);
    check_ptb(
        &out,
        (CLIENT6, BACKEND6),
        ((BACKEND6, 8080), (CLIENT6, 40000)),
    );
    let reasons = maps.reasons().unwrap();
    assert_eq!(reasons["forwarded"], 3, "{reasons:?}");
    assert_eq!(reasons["reverse_nat"], 2, "{reasons:?}");
    assert_eq!(reasons["icmp_error"], 2, "{reasons:?}");
}

/// A "packet too big" from `src` to `dst` quoting `quoted` (an Ethernet frame), run through
/// `prog`; the frame that comes out.
fn ptb_through(prog: &SchedClassifier, src: [u8; 16], dst: [u8; 16], quoted: &[u8]) -> Vec<u8> {
    let mut ptb = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(src, dst, 64)
        .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut ptb, &quoted[14..])
        .unwrap();
    let (verdict, out) = test_run(prog, &ptb);
    assert_eq!(verdict, NEXT);
    out
}

/// Checks an ICMPv6 error: its outer addresses, its checksum, the quoted packet's endpoints
/// and checksum.
fn check_ptb(out: &[u8], outer: ([u8; 16], [u8; 16]), quote: (Endpoint6, Endpoint6)) {
    let p = PacketHeaders::from_ethernet_slice(out).unwrap();
    let (Some(NetHeaders::Ipv6(ip, _)), Some(TransportHeader::Icmpv6(icmp))) =
        (&p.net, &p.transport)
    else {
        panic!("not ICMPv6")
    };
    assert_eq!((ip.source, ip.destination), outer, "outer addresses");
    let payload = p.payload.slice();
    assert_eq!(
        icmp.icmp_type
            .calc_checksum(ip.source, ip.destination, payload)
            .unwrap(),
        icmp.checksum,
        "ICMPv6 checksum"
    );
    let mut framed = out[..14].to_vec();
    framed.extend_from_slice(payload);
    let (s, d, csum) = inspect6(&framed);
    assert_eq!((s, d), quote, "the quoted packet's endpoints");
    csum.expect("the quoted segment's checksum");
}

/// The datapath's flow events for `ambassador monitor`: none while the switch is off (the
/// fixture-like packets run with nobody listening write nothing), one per new flow and per
/// drop once it is on (fields as the packet says), and a full ring loses events and counts
/// them instead of blocking or failing the packet.
#[test]
fn flow_events_are_written_only_while_a_monitor_listens_and_a_full_ring_counts_its_losses() {
    use ambassador_common::{
        map_names,
        monitor::{datapath, kind, FlowEvent},
    };
    use aya::maps::{MapData, RingBuf};
    if !require_root(
        "flow_events_are_written_only_while_a_monitor_listens_and_a_full_ring_counts_its_losses",
    ) {
        return;
    }
    let pin = PinDir::new();
    let (mut ebpf, mut maps, _lock, _) =
        loader::load(&pin.path, Default::default(), false, false, false).expect("load");
    let desired = config::parse("fixture.toml", FIXTURE_CONFIG).unwrap();
    let mut installed = maps.read_installed().unwrap();
    tables::converge(&mut maps, &mut installed, &desired).unwrap();
    let mut ring: RingBuf<MapData> =
        RingBuf::try_from(ebpf.take_map(map_names::EVENTS).expect("the event ring")).unwrap();
    let events = |ring: &mut RingBuf<MapData>| -> Vec<FlowEvent> {
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(item.len(), std::mem::size_of::<FlowEvent>());
            out.push(loader::ring_record::<FlowEvent>(&item).unwrap());
        }
        out
    };
    let prog: &SchedClassifier = ebpf
        .program(program_names::TC_DNAT)
        .unwrap()
        .try_into()
        .unwrap();
    let run = |input: &[u8], repeat: u32| {
        let mut out = vec![0u8; 4096];
        prog.test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .return_value as i32
    };
    let new_flow = |sport| tcp(CLIENT, sport, VIP, 80, true, b"");
    let dropped = tcp(CLIENT, 41000, VIP_EMPTY, 80, true, b"");

    // Off: a new flow and a drop write nothing.
    assert_eq!(run(&new_flow(40000), 1), NEXT);
    assert_eq!(run(&dropped, 1), SHOT);
    assert!(events(&mut ring).is_empty());

    // On: one event each, saying what happened.
    maps.set_monitor(true).unwrap();
    run(&new_flow(40001), 1);
    run(&tcp(CLIENT, 40001, VIP, 80, false, b"x"), 1); // the same flow: no event
    run(&dropped, 1);
    let got = events(&mut ring);
    assert_eq!(got.len(), 2, "{got:?}");
    let (flow, drop) = (&got[0], &got[1]);
    assert_eq!(
        (flow.kind, flow.datapath, flow.family),
        (kind::FLOW, datapath::TC, 4)
    );
    assert_eq!(&flow.client[..4], &CLIENT);
    assert_eq!(u16::from_be(flow.client_port_be), 40001);
    assert_eq!(&flow.frontend[..4], &VIP);
    assert_eq!(u16::from_be(flow.frontend_port_be), 80);
    assert_eq!(&flow.backend[..4], &BACKEND);
    assert_eq!(u16::from_be(flow.backend_port_be), 8080);
    assert_eq!(drop.kind, kind::DROP);
    assert_eq!(drop.reason, ambassador_common::Reason::NoBackend as u8);
    assert_eq!(&drop.frontend[..4], &VIP_EMPTY);

    // Nobody reads: the ring fills, the packets are still dropped as they should be, and the
    // events that did not fit are counted.
    assert_eq!(run(&dropped, 10_000), SHOT);
    let lost = maps.events_lost().unwrap();
    let kept = events(&mut ring).len() as u64;
    assert!(lost > 0, "nothing counted lost ({kept} kept)");
    assert_eq!(kept + lost, 10_000, "kept {kept}, lost {lost}");

    // Off again: nothing more.
    maps.set_monitor(false).unwrap();
    run(&dropped, 100);
    assert!(events(&mut ring).is_empty());
    assert_eq!(maps.events_lost().unwrap(), lost);
}
