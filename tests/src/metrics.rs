//! Scraping the Prometheus endpoint of a daemon or register that runs in a namespace.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    time::Duration,
};

/// The address a process logged as "metrics served at http://ADDR/metrics".
pub fn served_at(log: &str) -> SocketAddr {
    let rest = log
        .split("metrics served at http://")
        .nth(1)
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));
    rest.split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("bad metrics address in the log:\n{log}"))
}

/// `GET path` from inside network namespace `ns`: (status line, body).
pub fn get(ns: &str, addr: SocketAddr, path: &str) -> (String, String) {
    try_get(ns, addr, path).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// [`get`], or why it failed: the server did not answer within 5 s to connect and 10 s to
/// read, or answered something other than HTTP.
pub fn try_get(ns: &str, addr: SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    let ns_path = format!("/run/netns/{ns}");
    let path = path.to_owned();
    std::thread::spawn(move || {
        let f = File::open(&ns_path)?;
        // SAFETY: a valid namespace descriptor; only this thread changes namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        // The server closes after the answer whatever it is (hyper, or Go's net/http for
        // etcd), so the body is everything up to the end.
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let (head, body) = out.split_once("\r\n\r\n").ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response")
        })?;
        Ok((
            head.lines().next().unwrap_or_default().to_owned(),
            body.to_owned(),
        ))
    })
    .join()
    .expect("scrape thread")
}

/// The metrics page of the process whose log is `log`, running in namespace `ns`.
pub fn scrape(ns: &str, log: &str) -> String {
    let (status, body) = get(ns, served_at(log), "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

/// The value of the sample `name` whose labels include all of `labels`.
pub fn value(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, v) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        if n != name {
            return None;
        }
        labels
            .iter()
            .all(|(k, val)| rest.contains(&format!("{k}=\"{val}\"")))
            .then(|| v.parse().ok())?
    })
}
