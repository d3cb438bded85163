//! The DNS responder with real clients: `dig` for every record type and error case, programs
//! in a namespace whose resolver is the responder reaching services by name (redis-cli,
//! getent, busybox nc), Debian's dnsmasq forwarding the domain to it, and forwarding of other
//! names to an upstream (a dnsmasq) for allowed clients only.

use std::{net::UdpSocket, path::Path, time::Duration};

use ambassador_tests::*;

const RESPONDER: &str = "10.200.0.1";
const UPSTREAM: &str = "10.200.2.2";

/// `web` (TCP, b1 weight 3, b2 weight 1), `dns` (UDP), `redis` (redis-server on b2), `big`
/// (40 endpoints: an answer larger than 512 bytes).
fn config(extra: &str) -> String {
    let big: Vec<String> = (1..=40).map(|i| format!("\"10.201.0.{i}:8000\"")).collect();
    format!(
        "[[service]]\nname = \"web\"\nfrontend = \"10.96.0.10:80\"\nendpoints = [{{ addr = \"{}\", weight = 3 }}, {{ addr = \"{}\", weight = 1 }}]\n\n\
         [[service]]\nname = \"dns\"\nfrontend = \"10.96.0.11:53\"\nproto = \"udp\"\nendpoints = [\"{}\"]\n\n\
         [[service]]\nname = \"redis\"\nfrontend = \"10.96.0.12:6379\"\nendpoints = [\"{}\"]\n\n\
         [[service]]\nname = \"big\"\nfrontend = \"10.96.0.13:80\"\nendpoints = [{}]\n{extra}",
        Topology::backend_addr(1, 8080),
        Topology::backend_addr(2, 8080),
        Topology::backend_addr(1, 5353),
        Topology::backend_addr(2, 6379),
        big.join(", "),
    )
}

/// The topology, a responder on the forwarding host (client side only) and an upstream
/// dnsmasq on b2 that knows `example.test`.
struct Bed {
    topo: Topology,
    config: TempFile,
    daemon: Daemon,
    _upstream: Proc,
    _pin: PinDir,
}

impl Bed {
    fn new(extra: &[&str]) -> Self {
        let topo = Topology::new(2);
        let upstream = dnsmasq(
            &topo.backends[1],
            &[
                &format!("--listen-address={UPSTREAM}"),
                "--address=/example.test/192.0.2.7",
            ],
        );
        let config = TempFile::new(&config(""));
        let pin = PinDir::new();
        let listen = format!("{RESPONDER}:53");
        let mut args = vec![
            "--dns-listen",
            &listen,
            "--dns-upstream",
            UPSTREAM,
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let mut daemon = Daemon::run_file(&topo.fwd, "c0", config.as_str(), &pin.path, &args);
        daemon.wait_ready();
        assert!(daemon.log().contains("DNS responder serving"));
        Self {
            topo,
            config,
            daemon,
            _upstream: upstream,
            _pin: pin,
        }
    }

    /// `dig @RESPONDER ARGS` from the client.
    fn dig(&self, args: &[&str]) -> String {
        let at = format!("@{RESPONDER}");
        let mut all = vec![at.as_str()];
        all.extend_from_slice(args);
        dig(&self.topo.client, &all)
    }

    /// The answer lines (`+short`).
    fn short(&self, args: &[&str]) -> Vec<String> {
        let mut all = args.to_vec();
        all.push("+short");
        self.dig(&all).lines().map(str::to_owned).collect()
    }
}

#[test]
fn dig_gets_every_record_type_and_error_case_and_sees_changes_at_once() {
    if !require_root("dig_gets_every_record_type_and_error_case_and_sees_changes_at_once") {
        return;
    }
    let bed = Bed::new(&[]);
    let d = "ambassador.internal";

    // A: the frontend, authoritative, any case.
    let out = bed.dig(&["WEB.Ambassador.Internal", "A"]);
    assert_eq!(dig_status(&out), "NOERROR", "{out}");
    assert!(dig_flags(&out).contains(&"aa"), "{out}");
    assert!(out.contains("300\tIN\tA\t10.96.0.10"), "{out}");
    // SRV: frontend port, target with its address as additional.
    let out = bed.dig(&[&format!("_web._tcp.{d}"), "SRV"]);
    assert!(out.contains(&format!("SRV\t0 0 80 web.{d}.")), "{out}");
    assert!(out.contains("ADDITIONAL SECTION"), "{out}");
    assert_eq!(
        bed.short(&[&format!("_dns._udp.{d}"), "SRV"]),
        [format!("0 0 53 dns.{d}.")]
    );
    // Endpoints for clients without ambassador: advertised address, port and weight.
    let mut eps = bed.short(&[&format!("_web._tcp.endpoints.{d}"), "SRV"]);
    eps.sort();
    assert_eq!(
        eps,
        [
            format!("0 1 8080 10-200-2-2.endpoints.{d}."),
            format!("0 3 8080 10-200-1-2.endpoints.{d}."),
        ]
    );
    assert_eq!(
        bed.short(&[&format!("10-200-1-2.endpoints.{d}"), "A"]),
        ["10.200.1.2"]
    );
    // SOA and NS with glue, for delegation.
    let soa = bed.short(&[d, "SOA"]);
    assert!(
        soa[0].starts_with(&format!("ns.dns.{d}. hostmaster.{d}.")),
        "{soa:?}"
    );
    let out = bed.dig(&[d, "NS"]);
    assert!(out.contains(&format!("NS\tns.dns.{d}.")), "{out}");
    let glue = out.split("ADDITIONAL SECTION:").nth(1).unwrap_or_default();
    assert!(
        glue.contains(&format!("ns.dns.{d}.")) && glue.contains(&format!("IN\tA\t{RESPONDER}")),
        "{out}"
    );
    // NXDOMAIN and NODATA, both with the SOA (negative TTL 5 s).
    let out = bed.dig(&[&format!("nope.{d}"), "A"]);
    assert_eq!(dig_status(&out), "NXDOMAIN", "{out}");
    assert!(out.contains("AUTHORITY SECTION"), "{out}");
    assert!(out.contains("5\tIN\tSOA"), "{out}");
    let out = bed.dig(&[&format!("web.{d}"), "AAAA"]);
    assert_eq!(dig_status(&out), "NOERROR", "{out}");
    assert!(out.contains("ANSWER: 0"), "{out}");
    let out = bed.dig(&[&format!("_tcp.{d}"), "A"]);
    assert_eq!(dig_status(&out), "NOERROR", "an empty non-terminal: {out}");
    let out = bed.dig(&[&format!("_web._udp.{d}"), "SRV"]);
    assert_eq!(dig_status(&out), "NXDOMAIN", "{out}");
    // TCP.
    assert_eq!(
        bed.short(&["+tcp", &format!("redis.{d}"), "A"]),
        ["10.96.0.12"]
    );
    // Truncation: no EDNS0, 512 bytes at most, TC set; TCP has all 40; EDNS0 4096 is capped.
    let big = format!("_big._tcp.endpoints.{d}");
    let out = bed.dig(&["+ignore", "+noedns", &big, "SRV"]);
    assert!(dig_flags(&out).contains(&"tc"), "{out}");
    let out = bed.dig(&["+ignore", "+bufsize=4096", &big, "SRV"]);
    assert!(
        dig_flags(&out).contains(&"tc"),
        "capped at 1232 bytes: {out}"
    );
    assert!(out.contains("udp: 1232"), "{out}");
    assert_eq!(bed.short(&["+tcp", &big, "SRV"]).len(), 40);
    // Zone transfers are refused.
    let out = bed.dig(&[d, "AXFR"]);
    assert!(
        out.contains("Transfer failed") || out.contains("REFUSED"),
        "{out}"
    );

    // Forwarding: an allowed client (the listen address's subnet) gets the upstream's answer.
    let out = bed.dig(&["example.test", "A"]);
    assert_eq!(dig_status(&out), "NOERROR", "{out}");
    assert!(out.contains("192.0.2.7"), "{out}");
    assert!(dig_flags(&out).contains(&"ra"), "{out}");
    assert_eq!(bed.short(&["+tcp", "example.test", "A"]), ["192.0.2.7"]);
    // A client from another subnet: the domain is answered, other names are refused.
    let at = format!("@{RESPONDER}");
    let out = dig(&bed.topo.backends[0], &[&at, "example.test", "A"]);
    assert_eq!(dig_status(&out), "REFUSED", "not an open resolver: {out}");
    let out = dig(&bed.topo.backends[0], &[&at, &format!("web.{d}"), "A"]);
    assert!(out.contains("10.96.0.10"), "{out}");

    // Malformed datagrams: FORMERR with the query's id, or nothing; counted.
    let reply = bed.topo.client.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(
            b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff",
            (RESPONDER, 53),
        )
        .unwrap();
        s.send_to(b"\x01", (RESPONDER, 53)).unwrap();
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf).expect("an answer to the malformed query");
        buf[..n].to_vec()
    });
    assert_eq!(&reply[..2], b"\xab\xcd");
    assert_eq!(reply[3] & 0x0f, 1, "FORMERR");
    // The responder still answers.
    assert_eq!(bed.short(&[&format!("web.{d}"), "A"]), ["10.96.0.10"]);
    let page = metrics::scrape(&bed.topo.fwd.name, &bed.daemon.log());
    let v = |rcode| metrics::value(&page, "ambassador_dns_answers_total", &[("rcode", rcode)]);
    assert_eq!(v("FORMERR"), Some(1.0), "{page}");
    assert!(v("NXDOMAIN").unwrap() >= 2.0, "{page}");
    assert!(v("REFUSED").unwrap() >= 1.0, "{page}");
    assert_eq!(
        metrics::value(&page, "ambassador_dns_dropped_total", &[]),
        Some(1.0)
    );
    assert!(metrics::value(&page, "ambassador_dns_forwarded_total", &[]).unwrap() >= 2.0);
    assert!(metrics::value(&page, "ambassador_dns_truncated_total", &[]).unwrap() >= 2.0);
    assert!(bed.daemon.log().contains("malformed query"));

    // A new service is answered as soon as it is applied.
    bed.config.write(&config(
        "\n[[service]]\nname = \"late\"\nfrontend = \"10.96.0.20:80\"\nendpoints = []\n",
    ));
    bed.daemon.signal(libc::SIGHUP);
    let name = format!("late.{d}");
    assert!(
        wait_until(Duration::from_secs(3), || bed.short(&[&name, "A"])
            == ["10.96.0.20"]),
        "{}",
        bed.daemon.log()
    );
}

#[test]
fn programs_whose_resolver_is_the_responder_or_a_dnsmasq_in_front_of_it_connect_by_name() {
    if !require_root(
        "programs_whose_resolver_is_the_responder_or_a_dnsmasq_in_front_of_it_connect_by_name",
    ) {
        return;
    }
    let bed = Bed::new(&[]);
    let _web = [1, 2].map(|i| {
        TcpServer::start(
            &bed.topo.backends[i - 1],
            &Topology::backend_addr(i, 8080),
            &format!("b{i}"),
        )
    });
    let _redis = redis_server(&bed.topo.backends[1], "10.200.2.2");
    wait_for_port(&bed.topo.backends[1], "10.200.2.2:6379");
    let client = &bed.topo.client;

    let check = |how: &str| {
        // glibc's resolver (getaddrinfo), as every dynamically linked program uses it.
        let hosts = client.exec(&["getent", "hosts", "web.ambassador.internal"]);
        assert!(hosts.starts_with("10.96.0.10"), "{how}: {hosts}");
        let pong = client.exec(&["redis-cli", "-h", "redis.ambassador.internal", "PING"]);
        assert_eq!(pong.trim(), "PONG", "{how}");
        let set = client.exec(&[
            "redis-cli",
            "-h",
            "redis.ambassador.internal",
            "SET",
            "k",
            how,
        ]);
        assert_eq!(set.trim(), "OK", "{how}");
        // busybox's own resolver, as static binaries and small images use it.
        let ident = client.exec(&["busybox", "nc", "-w", "2", "web.ambassador.internal", "80"]);
        assert!(
            ident.starts_with("b1") || ident.starts_with("b2"),
            "{how}: {ident:?}"
        );
        // Names outside the domain still resolve (forwarded to the upstream).
        let other = client.exec(&["getent", "hosts", "example.test"]);
        assert!(other.starts_with("192.0.2.7"), "{how}: {other}");
    };

    {
        let _conf = NetnsResolvConf::new(client, RESPONDER);
        check("the responder as the resolver");
    }
    // A local dnsmasq that sends the domain to the responder and the rest upstream: how an
    // existing resolver hands a subdomain to it.
    let _local = dnsmasq(
        client,
        &[
            "--listen-address=127.0.0.1",
            &format!("--server=/ambassador.internal/{RESPONDER}"),
            &format!("--server={UPSTREAM}"),
        ],
    );
    let _conf = NetnsResolvConf::new(client, "127.0.0.1");
    assert!(wait_until(Duration::from_secs(5), || {
        dig(client, &["@127.0.0.1", "+short", "web.ambassador.internal"]).trim() == "10.96.0.10"
    }));
    check("dnsmasq forwarding the domain to the responder");
    let srv = dig(
        client,
        &[
            "@127.0.0.1",
            "+short",
            "_redis._tcp.ambassador.internal",
            "SRV",
        ],
    );
    assert_eq!(srv.trim(), "0 0 6379 redis.ambassador.internal.");
}

#[test]
fn bad_dns_flags_are_usage_errors_and_a_busy_address_is_named() {
    if !require_root("bad_dns_flags_are_usage_errors_and_a_busy_address_is_named") {
        return;
    }
    let lo = ["run", "--iface", "lo", "--config", "/dev/null"];
    let long_domain = format!("{0}.{0}.{1}", "a".repeat(63), "b".repeat(62));
    for (extra, says) in [
        (&["--dns-upstream", "10.0.0.1"][..], "add --dns-listen"),
        (
            &["--dns-listen", "127.0.0.1:53", "--dns-domain", "a..b"],
            "a..b",
        ),
        (
            &[
                "--dns-listen",
                "127.0.0.1:53",
                "--dns-no-forward",
                "--dns-upstream",
                "10.0.0.1",
            ],
            "cannot be used with",
        ),
        (
            &["--dns-listen", "127.0.0.1:53", "--dns-allow", "nope"],
            "nope",
        ),
        // Every name of the zone must fit 255 bytes: a domain of 190 characters is refused.
        (
            &["--dns-listen", "127.0.0.1:53", "--dns-domain", &long_domain],
            "at most 189 characters",
        ),
    ] {
        let args: Vec<&str> = lo.iter().chain(extra).copied().collect();
        let out = ambassador(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // An address another server holds: the start fails before the kernel is touched.
    let ns = NetNs::new("d");
    let _busy = dnsmasq(&ns, &["--listen-address=127.0.0.1", "--port=5353"]);
    wait_until(Duration::from_secs(3), || {
        ns.exec(&["ss", "-Hlun", "sport = :5353"])
            .contains("127.0.0.1")
    });
    let pin = PinDir::new();
    let config = TempFile::new(&config(""));
    let mut d = Daemon::run_file(
        &ns,
        "lo",
        config.as_str(),
        &pin.path,
        &["--dns-listen", "127.0.0.1:5353"],
    );
    let code = d.wait_exit(Duration::from_secs(10));
    assert_ne!(code, Some(0), "{}", d.log());
    assert!(
        d.log().contains("listening for DNS on 127.0.0.1:5353"),
        "{}",
        d.log()
    );
    assert!(
        !Path::new(&pin.path).join("links").exists()
            || std::fs::read_dir(pin.path.join("links"))
                .unwrap()
                .next()
                .is_none(),
        "nothing attached"
    );
}

/// A query for web.ambassador.internal A, as on the wire.
fn web_a_query() -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["web", "ambassador", "internal"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// 300 TCP clients that send a query and never read their answers (nor send another), then a
/// new client: answered, because idle clients give their slots up when one is needed; and
/// the stalled ones are counted.
#[test]
fn tcp_clients_that_never_read_do_not_stop_a_new_one() {
    if !require_root("tcp_clients_that_never_read_do_not_stop_a_new_one") {
        return;
    }
    let bed = Bed::new(&[]);
    // The query, length-prefixed for TCP.
    let query: Vec<u8> = {
        let q = web_a_query();
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend(q);
        framed
    };
    let held = bed.topo.client.run(move || {
        use std::io::Write as _;
        let mut held = Vec::new();
        for _ in 0..300 {
            match std::net::TcpStream::connect((RESPONDER, 53)) {
                Ok(mut s) => {
                    let _ = s.write_all(&query);
                    held.push(s);
                }
                Err(e) => panic!("connecting: {e}"),
            }
        }
        held
    });
    std::thread::sleep(Duration::from_millis(500));
    // dig's own limit (one try, 1 s) is the assertion: answered, or it says "timed out".
    let out = bed.dig(&[
        "+tcp",
        "+tries=1",
        "+time=1",
        "+short",
        "web.ambassador.internal",
    ]);
    assert_eq!(out.trim(), "10.96.0.10", "{out}");
    drop(held);
    let page = metrics::scrape(&bed.topo.fwd.name, &bed.daemon.log());
    assert!(page.contains("ambassador_dns_tcp_refused_total"), "{page}");
}

/// Response rate limiting: a flood of one question from one source gets its budget of full
/// answers, then every second answer truncated (a real client would retry over TCP) and the
/// rest nothing; another source, in another /24, is answered all the while.
#[test]
fn a_flood_from_one_source_is_limited_while_another_source_is_answered() {
    if !require_root("a_flood_from_one_source_is_limited_while_another_source_is_answered") {
        return;
    }
    let bed = Bed::new(&["--dns-rate-limit", "50"]);
    let (full, truncated) = bed.topo.client.run(|| {
        let query = web_a_query();
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect((RESPONDER, 53)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        for _ in 0..1000 {
            let _ = s.send(&query);
        }
        let (mut full, mut truncated) = (0, 0);
        let mut buf = [0u8; 1500];
        while let Ok(n) = s.recv(&mut buf) {
            // TC is bit 1 of the third byte; ANCOUNT the seventh and eighth.
            if buf[2] & 0x02 != 0 && buf[6..8] == [0, 0] {
                truncated += 1;
            } else if n > 12 {
                full += 1;
            }
        }
        (full, truncated)
    });
    assert!((50..200).contains(&full), "full answers: {full}");
    assert!(truncated > 100, "truncated answers: {truncated}");
    // Another source in another /24 (backend 1, 10.200.1.2) is answered.
    let other = dig(
        &bed.topo.backends[0],
        &[
            &format!("@{RESPONDER}"),
            "+short",
            "+tries=1",
            "+time=1",
            "web.ambassador.internal",
        ],
    );
    assert_eq!(other.trim(), "10.96.0.10", "{other}");
    let page = metrics::scrape(&bed.topo.fwd.name, &bed.daemon.log());
    let slipped = metrics::value(&page, "ambassador_dns_rate_limited_slipped_total", &[]);
    let dropped = metrics::value(&page, "ambassador_dns_rate_limited_dropped_total", &[]);
    assert!(
        slipped.unwrap_or(0.0) > 100.0 && dropped.unwrap_or(0.0) > 100.0,
        "{page}"
    );
}
