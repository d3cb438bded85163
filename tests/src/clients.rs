//! Real clients as a user runs them: HTTP, redis, dig, dnsmasq; the SOCKS door with curl and
//! Chromium through it; the monitor.

use super::*;

/// Sends an HTTP/1.0 GET from `ns` to `addr` and names who answered: the body of an HTTP
/// answer, or the greeting line of a [`TcpServer`].
pub fn identify(ns: &NetNs, addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut stream = ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf)?;
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if n == 0 || (!text.starts_with("HTTP/") && text.contains('\n')) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    Ok(match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/") => body.trim().to_owned(),
        _ => text.lines().next().unwrap_or("").trim().to_owned(),
    })
}

/// An HTTP/1.0 GET from `ns` to `addr`; returns the body.
pub fn http_get(ns: &NetNs, addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut stream = ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut resp = String::new();
    stream.read_to_string(&mut resp)?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok(body.trim().to_owned())
}

/// A redis-server in `ns` bound to `ip`:6379.
pub fn redis_server(ns: &NetNs, ip: &str) -> Proc {
    let args: Vec<String> = [
        "--bind",
        ip,
        "--port",
        "6379",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ]
    .map(str::to_owned)
    .to_vec();
    Proc::spawn(&ns.name, "redis", Path::new("redis-server"), &args)
}

/// Waits until something accepts TCP connections at `addr` inside `ns`; panics after 5 s.
pub fn wait_for_port(ns: &NetNs, addr: &str) {
    let target: std::net::SocketAddr = addr.parse().unwrap();
    let up = wait_until(Duration::from_secs(5), || {
        ns.run(move || {
            std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok()
        })
    });
    assert!(up, "nothing listens on {addr} in {}", ns.name);
}

/// `dig ARGS` inside `ns` (one try, 2 s): its whole output.
pub fn dig(ns: &NetNs, args: &[&str]) -> String {
    let mut full = vec!["dig", "+time=2", "+tries=1"];
    full.extend_from_slice(args);
    ns.exec(&full)
}

/// The `status:` of a dig output (NOERROR, NXDOMAIN, REFUSED...).
pub fn dig_status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig's output:\n{out}"))
}

/// The header flags of a dig output (`qr aa rd`...).
pub fn dig_flags(out: &str) -> Vec<&str> {
    out.split("flags: ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap_or_else(|| panic!("no flags in dig's output:\n{out}"))
        .split_whitespace()
        .collect()
}

/// `/etc/netns/NS/resolv.conf` (what `ip netns exec` shows a namespace as /etc/resolv.conf),
/// removed on drop.
pub struct NetnsResolvConf {
    dir: PathBuf,
}

impl NetnsResolvConf {
    /// Makes `nameserver` the resolver of processes started with `ip netns exec NS`.
    pub fn new(ns: &NetNs, nameserver: &str) -> Self {
        let dir = PathBuf::from("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:2 attempts:1\n"),
        )
        .unwrap();
        Self { dir }
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Debian's dnsmasq.
pub const DNSMASQ_BIN: &str = "/usr/sbin/dnsmasq";
/// How tests run dnsmasq: in the foreground, reading neither /etc/hosts nor resolv.conf nor
/// a configuration file, bound to the addresses it is given.
pub const DNSMASQ_ARGS: [&str; 7] = [
    "--keep-in-foreground",
    "--no-hosts",
    "--no-resolv",
    "--bind-interfaces",
    "--pid-file=",
    "--conf-file=/dev/null",
    "--user=root",
];

/// dnsmasq in `ns` ([`DNSMASQ_ARGS`]): `args` say what it does.
pub fn dnsmasq(ns: &NetNs, args: &[&str]) -> Proc {
    let mut all: Vec<String> = DNSMASQ_ARGS.map(str::to_owned).to_vec();
    all.extend(args.iter().map(|a| a.to_string()));
    Proc::spawn(&ns.name, "dnsmasq", Path::new(DNSMASQ_BIN), &all)
}

/// `ambassador socks` in a namespace: the SOCKS5 door for clients outside the fleet.
pub struct SocksDoor {
    /// The running door.
    pub proc: Proc,
    ns: String,
}

impl SocksDoor {
    /// Starts the door in `ns` listening at `listen` for `allow_client`, following etcd at
    /// `etcd`, with `extra` flags; returns once it has its names.
    pub fn start(ns: &NetNs, etcd: &str, listen: &str, allow_client: &str, extra: &[&str]) -> Self {
        Self::start_limited(ns, etcd, listen, allow_client, extra, None)
    }

    /// Like [`SocksDoor::start`], under `prlimit --nofile=NOFILE` (`SOFT:HARD`) when given.
    pub fn start_limited(
        ns: &NetNs,
        etcd: &str,
        listen: &str,
        allow_client: &str,
        extra: &[&str],
        nofile: Option<&str>,
    ) -> Self {
        let (program, mut args) = match nofile {
            Some(n) => {
                let door = ambassador_bin().display().to_string();
                let limit = vec![format!("--nofile={n}"), "--".into(), door];
                (PathBuf::from("/usr/bin/prlimit"), limit)
            }
            None => (ambassador_bin(), Vec::new()),
        };
        args.extend(
            [
                "socks",
                "--listen",
                listen,
                "--allow-client",
                allow_client,
                "--metrics-addr",
                "127.0.0.1:0",
                "--etcd",
                etcd,
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn(&ns.name, "socks", &program, &args);
        let ready = wait_until(Duration::from_secs(10), || {
            proc.log().contains("socks: ready")
        });
        assert!(ready, "the door never got ready:\n{}", proc.log());
        Self {
            proc,
            ns: ns.name.clone(),
        }
    }

    /// The value of the door's metric `name` with `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let page = metrics::scrape(&self.ns, &self.proc.log());
        metrics::value(&page, name, labels).unwrap_or_else(|| panic!("no {name} in\n{page}"))
    }
}

/// `curl --socks5-hostname DOOR URL` from `ns` (names resolved by the door): (exit code,
/// body).
pub fn curl_socks(ns: &NetNs, door: &str, url: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["netns", "exec", &ns.name, "curl", "-sS", "--max-time", "5"];
    args.extend_from_slice(&["--socks5-hostname", door]);
    args.extend_from_slice(extra);
    args.push(url);
    let out = Command::new("ip").args(&args).output().unwrap();
    let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.code().unwrap_or(-1), body)
}

/// `ambassador monitor --pin-path PIN --json EXTRA...` in `ns`, started once `daemon` (the one
/// whose maps are pinned there) has turned its datapath's flow events on for it.
pub fn monitor(ns: &NetNs, daemon: &mut Daemon, pin: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec!["monitor", "--pin-path", pin.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let m = Daemon::start(ns, &args);
    daemon.wait_log("flow events are on", Duration::from_secs(5));
    m
}

/// The events a `monitor --json` printed (its own log lines left out).
pub fn monitor_events(monitor: &Daemon) -> Vec<serde_json::Value> {
    monitor
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(serde_json::Value::is_object)
        .collect()
}

/// Debian's Chromium, headless, in `ns` with `--proxy-server=socks5://DOOR` (Chromium sends
/// every name to a SOCKS5 proxy): loads `url`, saves a screenshot at `screenshot`, and
/// returns the page's DOM as Chromium built it.
pub fn chromium_through_socks(ns: &NetNs, door: &str, url: &str, screenshot: &Path) -> String {
    chromium(
        ns,
        &[&format!("--proxy-server=socks5://{door}")],
        url,
        screenshot,
    )
}

/// Debian's Chromium, headless, in `ns`, with `args` added: loads `url`, saves a screenshot at
/// `screenshot`, then loads it again and returns the page's DOM as Chromium built it.
pub fn chromium(ns: &NetNs, args: &[&str], url: &str, screenshot: &Path) -> String {
    let profile = temp_dir("chromium");
    let shot = format!("--screenshot={}", screenshot.display());
    let dir = format!("--user-data-dir={}", profile.path().display());
    let run = |what: &[&str]| {
        let mut all = vec!["netns", "exec", &ns.name, "timeout", "60", "chromium"];
        all.extend_from_slice(&[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ]);
        all.extend_from_slice(&[&dir, "--window-size=800,300"]);
        all.extend_from_slice(args);
        all.extend_from_slice(what);
        all.push(url);
        let out = Command::new("ip").args(&all).output().unwrap();
        assert!(
            out.status.success(),
            "chromium {what:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&[&shot]);
    run(&["--dump-dom"])
}

/// Where tests save screenshots (`target/screenshots/NAME`, the folder made, the old file
/// gone).
pub fn screenshot_path(name: &str) -> PathBuf {
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join(name);
    let _ = std::fs::remove_file(&shot);
    shot
}
