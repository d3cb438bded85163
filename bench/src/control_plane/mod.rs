//! The control plane: etcd and Docker to the maps and to the first connection, and loading
//! 10,000 services from etcd.

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ambassador_tests::{ambassador_ok, Cgroup, Daemon, Dockerd, Etcd, PinDir, Topology};
use ambassador_user::datapath::maps::Maps;
use anyhow::{bail, Context as _, Result};

mod report;

pub use report::table;

struct Series {
    name: &'static str,
    samples_ms: Vec<f64>,
}

impl Series {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "name": self.name, "samples_ms": self.samples_ms })
    }
}

/// Waits until the backend map holds `addr`, polling the pinned maps; returns when it does.
fn wait_for_backend(maps: &Maps, addr: &str, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let inst = maps.read_installed()?;
        if inst
            .backends
            .values()
            .any(|b| !b.terminating && b.addr.to_string() == addr)
        {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{addr} never reached the maps");
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// etcd put -> map updated, `n` times (the put's round trip included).
fn etcd_to_map(topo: &Topology, etcd_url: String, pin: &Path, n: usize) -> Result<Series> {
    let pin = pin.to_owned();
    let samples = topo.fwd.run(move || -> Result<Vec<f64>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut client = etcd_client::Client::connect([etcd_url], None).await?;
            let maps = Maps::open_pinned(&pin)?;
            let mut out = Vec::new();
            for i in 0..n {
                let addr = format!("10.200.2.2:{}", 20000 + i);
                let key = format!("/ambassador/v1/endpoints/web/bench-{i}");
                let t0 = Instant::now();
                client.put(key.clone(), addr.clone(), None).await?;
                let seen = wait_for_backend(&maps, &addr, Duration::from_secs(5))?;
                out.push((seen - t0).as_secs_f64() * 1000.0);
                client.delete(key, None).await?;
            }
            Ok(out)
        })
    })?;
    Ok(Series {
        name: "etcd put -> map updated",
        samples_ms: samples,
    })
}

/// Container start (Docker's StartedAt) -> map updated on the forwarding host, `n` times.
fn docker_to_map(dockerd: &Dockerd, pin: &Path, n: usize) -> Result<Series> {
    let maps = Maps::open_pinned(pin)?;
    let mut out = Vec::new();
    for i in 0..n {
        let name = format!("bench{i}");
        let id = dockerd.run_web(
            IMAGE,
            &name,
            &["--label", "ambassador.service=web", "-p", "8080"],
        );
        let port = dockerd.docker(&["port", &id, "8080/tcp"]);
        let port = port
            .lines()
            .next()
            .and_then(|l| l.rsplit(':').next())
            .context("no published port")?;
        wait_for_backend(
            &maps,
            &format!("10.200.1.2:{port}"),
            Duration::from_secs(10),
        )?;
        let seen = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as i128;
        let started = dockerd.docker(&["inspect", "-f", "{{.State.StartedAt}}", &id]);
        let started = parse_rfc3339_ns(&started).with_context(|| format!("parsing {started:?}"))?;
        out.push((seen - started) as f64 / 1e6);
        dockerd.docker(&["rm", "-f", &id]);
    }
    Ok(Series {
        name: "docker start -> map updated (other host)",
        samples_ms: out,
    })
}

/// Parses Docker's `2026-11-22T23:26:31.820151184Z` into Unix nanoseconds.
fn parse_rfc3339_ns(s: &str) -> Option<i128> {
    let s = s.trim().strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let frac_ns: i128 = format!("{frac:0<9}")[..9].parse().ok()?;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) as i128) * 1_000_000_000 + frac_ns)
}

/// Writes `services` services with `per` endpoints each under `prefix`, in transactions of
/// 128 operations (etcd's default limit); returns the revision of the last write.
async fn fill_etcd(
    client: &mut etcd_client::Client,
    prefix: &str,
    services: usize,
    per: usize,
) -> Result<i64> {
    use ambassador_user::core::contract::{endpoint_key, service_key};
    use etcd_client::{Txn, TxnOp};
    let mut ops = Vec::new();
    for s in 0..services {
        ops.push(TxnOp::put(
            service_key(prefix, &format!("s{s}")),
            format!(
                "{{\"frontend\":\"10.98.{}.{}:80\",\"proto\":\"tcp\"}}",
                s / 250,
                s % 250 + 1
            ),
            None,
        ));
        for e in 0..per {
            ops.push(TxnOp::put(
                endpoint_key(prefix, &format!("s{s}"), &format!("e{e}")),
                format!("10.{}.{}.{}:8080", 100 + e, s / 250, s % 250 + 1),
                None,
            ));
        }
    }
    let mut rev = 0;
    let mut rest = ops.as_slice();
    while !rest.is_empty() {
        let (now, later) = rest.split_at(rest.len().min(128));
        let resp = client.txn(Txn::new().and_then(now.to_vec())).await?;
        rev = resp.header().map_or(rev, |h| h.revision());
        rest = later;
    }
    Ok(rev)
}

/// Waits until the daemon pinned at `pin` has applied etcd revision `rev`.
fn wait_applied(pin: &Path, rev: i64, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(maps) = Maps::open_pinned(pin) {
            if let Ok(info) = maps.info() {
                if info.etcd_revision >= rev as u64 && info.applied_unix_ms > 0 {
                    return Ok(Instant::now());
                }
            }
        }
        if Instant::now() > deadline {
            bail!("revision {rev} never applied");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Bytes per pinned map, by name.
type MapMemory = Vec<(String, u64)>;

/// Memory the kernel charges for the maps pinned in `pin` (bpftool's bytes_memlock), in bytes.
fn map_memory(pin: &Path) -> Result<MapMemory> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(pin)? {
        let path = entry?.path();
        let o = std::process::Command::new("bpftool")
            .args(["map", "show", "pinned"])
            .arg(&path)
            .arg("-j")
            .output()?;
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) {
            if let Some(b) = v["bytes_memlock"].as_u64() {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                out.push((name.into_owned(), b));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `ambassador run` on the forwarding host's `c0`, following `etcd` under `prefix` (not waited
/// for).
fn run_on_etcd(topo: &Topology, etcd: &Etcd, prefix: &str, pin: &PinDir) -> Daemon {
    let mut args = vec!["--prefix", prefix];
    args.extend_from_slice(&crate::CAPACITY_10K);
    Daemon::run_etcd(&topo.fwd, "c0", &etcd.urls(), &pin.path, &args)
}

/// Loading 10,000 services x 4 endpoints from etcd: into a daemon that starts with them already
/// in etcd (list), and into a running daemon as they are written (watch); then the map memory.
fn load_from_etcd(
    topo: &Topology,
    etcd: &Etcd,
    services: usize,
) -> Result<(Vec<Series>, MapMemory)> {
    let url = etcd.members[0].url.clone();
    let per = 4;
    let fill = |prefix: &'static str| -> Result<i64> {
        let url = url.clone();
        topo.fwd.run(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let mut c = etcd_client::Client::connect([url], None).await?;
                    fill_etcd(&mut c, prefix, services, per).await
                })
        })
    };
    let start = |prefix: &str, pin: &PinDir| run_on_etcd(topo, etcd, prefix, pin);
    let count = |pin: &PinDir| -> Result<usize> {
        Ok(Maps::open_pinned(&pin.path)?
            .read_installed()?
            .backends
            .len())
    };

    let rev = fill("/amb-load-list")?;
    let pin = PinDir::new();
    let t0 = Instant::now();
    let d = start("/amb-load-list", &pin);
    let done = wait_applied(&pin.path, rev, Duration::from_secs(120))?;
    let list_ms = (done - t0).as_secs_f64() * 1000.0;
    let n = count(&pin)?;
    if n != services * per {
        bail!(
            "list: {n} backends in the maps, expected {}",
            services * per
        );
    }
    let memory = map_memory(&pin.path)?;
    // One datapath per interface: this one goes (daemon, then its pinned links) before the
    // next starts.
    drop(d);
    drop(pin);

    let pin2 = PinDir::new();
    let mut d2 = start("/amb-load-watch", &pin2);
    d2.wait_ready();
    let t0 = Instant::now();
    let rev = fill("/amb-load-watch")?;
    let done = wait_applied(&pin2.path, rev, Duration::from_secs(120))?;
    let watch_ms = (done - t0).as_secs_f64() * 1000.0;
    let n = count(&pin2)?;
    if n != services * per {
        bail!(
            "watch: {n} backends in the maps, expected {}",
            services * per
        );
    }
    let series = vec![
        Series {
            name: "10,000 services x 4 in etcd -> daemon start -> all in maps",
            samples_ms: vec![list_ms],
        },
        Series {
            name: "10,000 services x 4 written to etcd -> all in maps (running daemon)",
            samples_ms: vec![watch_ms],
        },
    ];
    Ok((series, memory))
}

/// etcd put -> the first new connection that lands on the new backend, `n` times: the service
/// moves between two identifying servers with one transaction (put the new, delete the old);
/// the client dials the VIP in a loop until the new one answers.
fn etcd_to_conn(topo: &Topology, n: usize, name: &'static str) -> Result<Series> {
    use ambassador_tests::{tcp_connect_here, TcpServer};
    use ambassador_user::core::contract::{endpoint_key, service_key};
    use etcd_client::{Txn, TxnOp};
    let _servers = [
        TcpServer::start(&topo.backends[0], "10.200.1.2:7000", "b1"),
        TcpServer::start(&topo.backends[1], "10.200.2.2:7000", "b2"),
    ];
    let vip: std::net::SocketAddr = "10.96.0.11:7000".parse()?;
    // Runs in the client's namespace: connect, read the server's identity line.
    let ident = move || tcp_connect_here(vip, Duration::from_millis(500)).map(|(_, who)| who);
    let samples = topo.client.run(move || -> Result<Vec<f64>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut etcd = etcd_client::Client::connect(["http://10.200.0.1:2379"], None).await?;
            let p = "/ambassador";
            etcd.put(
                service_key(p, "move"),
                "{\"frontend\":\"10.96.0.11:7000\",\"proto\":\"tcp\"}",
                None,
            )
            .await?;
            let mut out = Vec::new();
            for i in 0..=n {
                let (new, old) = if i % 2 == 0 {
                    ("b1", "b2")
                } else {
                    ("b2", "b1")
                };
                let addr = if new == "b1" {
                    "10.200.1.2:7000"
                } else {
                    "10.200.2.2:7000"
                };
                let t0 = Instant::now();
                etcd.txn(Txn::new().and_then([
                    TxnOp::put(endpoint_key(p, "move", new), addr, None),
                    TxnOp::delete(endpoint_key(p, "move", old), None),
                ]))
                .await?;
                loop {
                    if ident().is_ok_and(|who| who == new) {
                        break;
                    }
                    if t0.elapsed() > Duration::from_secs(5) {
                        bail!("{new} never answered on the VIP");
                    }
                }
                // The first round only sets the service up.
                if i > 0 {
                    out.push(t0.elapsed().as_secs_f64() * 1000.0);
                }
            }
            Ok(out)
        })
    })?;
    Ok(Series {
        name,
        samples_ms: samples,
    })
}

const IMAGE: &str = "amb-bench/busybox:1";

/// The control plane: etcd and Docker to the maps and to the first connection, and loading
/// 10,000 services from etcd.
pub fn control_plane(dir: &Path, quick: bool) -> Result<()> {
    let (n_etcd, n_docker) = if quick { (20, 3) } else { (200, 20) };
    println!("control plane: building the testbed (etcd, dockerd, ambassador run and register)");
    let topo = Topology::new(2);
    let etcd = Etcd::single(&topo.fwd);
    println!("  loading 10,000 services x 4 endpoints from etcd");
    let (load, memory) = load_from_etcd(&topo, &etcd, 10_000)?;
    let dockerd = Dockerd::start(&topo.backends[0], "10.250.1.1/24");
    dockerd.import_busybox(IMAGE);
    let pin = PinDir::new();
    let mut daemon = run_on_etcd(&topo, &etcd, "/ambassador", &pin);
    daemon.wait_ready();
    ambassador_ok(
        &topo.fwd,
        &[
            "service",
            "set",
            "web",
            "--frontend",
            "10.96.0.10:80",
            "--etcd",
            &etcd.urls(),
        ],
    );
    let mut register = Daemon::start(
        &topo.backends[0],
        &[
            "register",
            "--docker",
            &dockerd.socket,
            "--advertise-ip",
            "10.200.1.2",
            "--host-id",
            "h2",
            "--etcd",
            "http://10.200.1.1:2379",
        ],
    );
    register.wait_log("following Docker events", Duration::from_secs(15));

    println!("  etcd put -> map updated, {n_etcd} times");
    let a = etcd_to_map(&topo, etcd.members[0].url.clone(), &pin.path, n_etcd)?;
    println!("  etcd put -> first new connection on the new backend, {n_etcd} times");
    let b = etcd_to_conn(
        &topo,
        n_etcd,
        "etcd put -> first new connection on the new backend (tc)",
    )?;
    println!("  the same through the sock datapath, {n_etcd} times");
    let b_sock = {
        // This process joins a cgroup of its own, where a second daemon following the same
        // etcd attaches the socket programs: the client's connect() is translated there,
        // before any packet reaches the first daemon's tc programs.
        let mut cgroup = Cgroup::new();
        cgroup.join();
        let pin = PinDir::new();
        let pin_arg = pin.path.to_str().context("UTF-8 pin path")?;
        let urls = etcd.urls();
        let mut sock = Daemon::start(
            &topo.fwd,
            &[
                "run",
                "--datapath",
                "sock",
                "--cgroup-path",
                cgroup.arg(),
                "--etcd",
                &urls,
                "--pin-path",
                pin_arg,
                "--max-services",
                crate::CAPACITY_10K[1],
                "--max-backends",
                crate::CAPACITY_10K[3],
            ],
        );
        sock.wait_ready();
        etcd_to_conn(
            &topo,
            n_etcd,
            "etcd put -> first new connection on the new backend (sock)",
        )?
    };
    println!("  docker start -> map updated, {n_docker} times");
    let c = docker_to_map(&dockerd, &pin.path, n_docker)?;

    let all = [&a, &b, &b_sock, &c, &load[0], &load[1]];
    let mem: Vec<_> = memory
        .iter()
        .map(|(n, b)| serde_json::json!({"map": n, "bytes": b}))
        .collect();
    let json = serde_json::json!({
        "quick": quick,
        "series": all.iter().map(|s| s.json()).collect::<Vec<_>>(),
        "map_memory": mem,
    });
    crate::write(dir, "control-plane", &table(&json)?, &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_nanoseconds() {
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ns("1970-01-01T00:00:01.5Z"),
            Some(1_500_000_000)
        );
        // date -u -d 2026-11-22T23:26:31Z +%s == 1795389991
        assert_eq!(
            parse_rfc3339_ns("2026-11-22T23:26:31.820151184Z"),
            Some(1_795_389_991_820_151_184)
        );
        assert_eq!(parse_rfc3339_ns("garbage"), None);
    }
}
