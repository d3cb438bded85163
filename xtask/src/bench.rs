//! `cargo xtask bench`: measurements, written to `target/bench/`. For now the control plane:
//! etcd put -> BPF map updated, and Docker container start -> BPF map updated on another host.

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ambassador_tests::{ambassador_ok, require_root, Daemon, Dockerd, Etcd, PinDir, Topology};
use ambassador_user::maps::Maps;
use anyhow::{bail, Context as _, Result};

/// Percentile of sorted samples.
fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Series {
    name: &'static str,
    samples_ms: Vec<f64>,
}

impl Series {
    fn row(&self) -> String {
        let mut s = self.samples_ms.clone();
        s.sort_by(f64::total_cmp);
        format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            self.name,
            s.len(),
            pct(&s, 0.0),
            pct(&s, 0.5),
            pct(&s, 0.99),
            pct(&s, 1.0)
        )
    }

    fn json(&self) -> serde_json::Value {
        let mut s = self.samples_ms.clone();
        s.sort_by(f64::total_cmp);
        serde_json::json!({
            "name": self.name, "n": s.len(), "min_ms": pct(&s, 0.0), "p50_ms": pct(&s, 0.5),
            "p99_ms": pct(&s, 0.99), "max_ms": pct(&s, 1.0), "samples_ms": s,
        })
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

const IMAGE: &str = "amb-bench/busybox:1";

/// Which benchmarks to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// direct / ambassador-tc / socat / haproxy / iptables side by side.
    Datapath,
    /// etcd and Docker to the maps.
    ControlPlane,
}

pub fn run(bin: &Path, quick: bool, only: Option<Only>) -> Result<()> {
    if !require_root("cargo xtask bench") {
        bail!("benchmarks need root: they build network namespaces and load eBPF programs");
    }
    std::env::set_var("AMBASSADOR_BIN", bin);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    if only != Some(Only::ControlPlane) {
        println!("datapath: client -> forwarding host -> backend, every mode, interleaved");
        let (md, json) = crate::bench_datapath::run(quick)?;
        println!("\n{md}");
        std::fs::write(dir.join("datapath.md"), &md)?;
        std::fs::write(
            dir.join("datapath.json"),
            serde_json::to_string_pretty(&json)?,
        )?;
        println!("written to target/bench/datapath.{{md,json}}\n");
    }
    if only == Some(Only::Datapath) {
        return Ok(());
    }
    let (n_etcd, n_docker) = if quick { (20, 3) } else { (200, 20) };
    println!("control plane: building the testbed (etcd, dockerd, ambassador run and register)");
    let topo = Topology::new(2);
    let etcd = Etcd::single(&topo.fwd);
    let dockerd = Dockerd::start(&topo.backends[0], "10.250.1.1/24");
    dockerd.import_busybox(IMAGE);
    let pin = PinDir::new();
    let mut daemon = Daemon::start(
        &topo.fwd,
        &[
            "run",
            "--iface",
            "c0",
            "--etcd",
            &etcd.urls(),
            "--pin-path",
            pin.path.to_str().unwrap(),
        ],
    );
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
    println!("  docker start -> map updated, {n_docker} times");
    let b = docker_to_map(&dockerd, &pin.path, n_docker)?;

    let mut md = String::from(
        "| measurement | n | min ms | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n",
    );
    for s in [&a, &b] {
        let _ = writeln!(md, "{}", s.row());
    }
    println!("\n{md}");
    std::fs::write(dir.join("control-plane.md"), &md)?;
    std::fs::write(
        dir.join("control-plane.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({ "quick": quick, "series": [a.json(), b.json()] }),
        )?,
    )?;
    println!("written to target/bench/control-plane.{{md,json}}");
    Ok(())
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
