//! The local demo: one client, one forwarding host running `ambassador run`, two backends,
//! all in network namespaces. A steady stream of short connections and one long-lived
//! connection go through the VIP while a backend is taken out and brought back.

use std::{
    collections::BTreeMap,
    io::{BufReader, IsTerminal as _, Write as _},
    net::TcpStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use ambassador_tests::{
    require_root, service_status, tcp_connect, tcp_echo, Daemon, PinDir, TcpServer, TempFile,
    Topology,
};
use anyhow::{bail, Result};

const VIP: &str = "10.96.0.10:80";

fn config(backends: &[&str]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[service]]\nname = \"web\"\nfrontend = \"{VIP}\"\nproto = \"tcp\"\nendpoints = [{}]\n",
        list.join(", ")
    )
}

#[derive(Default)]
struct Phase {
    name: String,
    requests: u32,
    failures: u32,
    by_backend: BTreeMap<String, u32>,
    long_ok: u32,
    long_failed: u32,
}

/// Short connections for `secs`, with an echo on the long-lived stream every 100 ms.
fn drive(topo: &Topology, long: &mut BufReader<TcpStream>, name: &str, secs: u64) -> Phase {
    let mut phase = Phase {
        name: name.into(),
        ..Default::default()
    };
    let start = Instant::now();
    let (mut last_print, mut last_long) = (Instant::now(), Instant::now());
    while start.elapsed() < Duration::from_secs(secs) {
        match tcp_connect(&topo.client, VIP)
            .and_then(|(mut c, id)| tcp_echo(&mut c, "req").map(|_| id))
        {
            Ok(id) => *phase.by_backend.entry(id).or_default() += 1,
            Err(_) => phase.failures += 1,
        }
        phase.requests += 1;
        if last_long.elapsed() >= Duration::from_millis(100) {
            last_long = Instant::now();
            match tcp_echo(long, "keepalive") {
                Ok(s) if s == "keepalive" => phase.long_ok += 1,
                _ => phase.long_failed += 1,
            }
        }
        let tty = std::io::stdout().is_terminal();
        let every = Duration::from_millis(if tty { 250 } else { 1000 });
        if last_print.elapsed() >= every {
            last_print = Instant::now();
            let rate = phase.requests as f64 / start.elapsed().as_secs_f64();
            let line = format!(
                "  {:<28} {:>6.0} req/s  requests {:>5}  failed {:>3}  split {:?}",
                name, rate, phase.requests, phase.failures, phase.by_backend
            );
            if tty {
                print!("\r{line}    ");
                let _ = std::io::stdout().flush();
            } else {
                println!("{line}");
            }
        }
    }
    if std::io::stdout().is_terminal() {
        println!();
    }
    phase
}

pub fn run(bin: &Path) -> Result<()> {
    if !require_root("cargo xtask run") {
        bail!("the demo needs root: it builds network namespaces and loads eBPF programs");
    }
    std::env::set_var("AMBASSADOR_BIN", bin);
    println!("ambassador demo: client -> [forwarding host: ambassador, TC eBPF] -> backends");
    println!(
        "  building namespaces: client 10.200.0.2, backend-1 10.200.1.2, backend-2 10.200.2.2"
    );
    let topo = Topology::new(2);
    let b1 = Topology::backend_addr(1, 8080);
    let b2 = Topology::backend_addr(2, 8080);
    let _s1 = TcpServer::start(&topo.backends[0], &b1, "backend-1");
    let _s2 = TcpServer::start(&topo.backends[1], &b2, "backend-2");
    let pin = PinDir::new();
    let cfg = TempFile::new(&config(&[&b1, &b2]));
    let mut daemon = Daemon::start(
        &topo.fwd,
        &[
            "run",
            "--iface",
            "c0",
            "--config",
            cfg.as_str(),
            "--pin-path",
            pin.path.to_str().unwrap(),
        ],
    );
    daemon.wait_ready();
    println!("  ambassador is running; frontend {VIP} -> {b1}, {b2}\n");

    let (mut long, long_backend) = tcp_connect(&topo.client, VIP)?;
    println!("  a long-lived connection landed on {long_backend}");
    let (gone, stay) = if long_backend == "backend-1" {
        (&b1, &b2)
    } else {
        (&b2, &b1)
    };

    let mut phases = vec![drive(&topo, &mut long, "both backends", 3)];
    println!("  -> taking {long_backend} ({gone}) out of the service (SIGHUP)");
    cfg.write(&config(&[stay]));
    daemon.signal(libc::SIGHUP);
    phases.push(drive(
        &topo,
        &mut long,
        &format!("{long_backend} terminating"),
        3,
    ));
    println!("  -> bringing {gone} back");
    cfg.write(&config(&[&b1, &b2]));
    daemon.signal(libc::SIGHUP);
    phases.push(drive(&topo, &mut long, "both backends again", 3));

    println!("\n`ambassador status` on the forwarding host:");
    let out = Command::new(bin)
        .args(["status", "--pin-path", pin.path.to_str().unwrap()])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));

    println!(
        "\n{:<28} {:>9} {:>7} {:>22} {:>16}",
        "PHASE", "REQUESTS", "FAILED", "SPLIT", "LONG STREAM"
    );
    let (mut failed, mut long_failed) = (0, 0);
    for p in &phases {
        let split: Vec<String> = p
            .by_backend
            .iter()
            .map(|(k, v)| format!("{}={v}", &k[8..]))
            .collect();
        println!(
            "{:<28} {:>9} {:>7} {:>22} {:>16}",
            p.name,
            p.requests,
            p.failures,
            split.join(" "),
            format!("{} ok {} failed", p.long_ok, p.long_failed)
        );
        failed += p.failures;
        long_failed += p.long_failed;
    }
    let during = &phases[1];
    let leaked = during.by_backend.get(&long_backend).copied().unwrap_or(0);
    let web = service_status(&pin.path, "web");
    drop(daemon);
    println!();
    if failed > 0 || long_failed > 0 || leaked > 0 || web.is_none() {
        bail!(
            "targets missed: {failed} failed requests, {long_failed} failed echoes on the long stream, \
             {leaked} new connections to the terminating backend"
        );
    }
    println!("targets met: 0 failed requests, the long-lived connection never broke, and no new connection went to the terminating backend");
    Ok(())
}
