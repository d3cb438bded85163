//! Prometheus metrics: the text exposition format (version 0.0.4) and a small HTTP/1.1 server
//! that answers `GET /metrics` (and `GET /healthz`) and nothing else.
//!
//! The server is deliberately minimal: one request per connection, a bounded request head, a
//! read deadline and a cap on concurrent connections, so a scraper that misbehaves cannot hold
//! the daemon's resources. Rendering happens on a blocking thread (it reads BPF maps).

use std::{fmt::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};

/// A metric family's type.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Only goes up (resets when the process or the maps are recreated).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in cumulative buckets.
    Histogram,
}

/// A page in the text exposition format, built family by family.
#[derive(Default)]
pub struct Page {
    text: String,
}

impl Page {
    /// Starts a family: its HELP and TYPE lines. Samples of it follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        self
    }

    /// One sample with its labels.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// The page.
    pub fn finish(self) -> String {
        self.text
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label values come from outside (service names from etcd): escape what the format needs.
fn escape_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A histogram of durations in seconds with fixed buckets.
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Buckets for control-plane lag: 1 ms to 10 s.
pub const LAG_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

impl Histogram {
    /// An empty histogram with these upper bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        let v = d.as_secs_f64();
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    /// Writes the family's `_bucket`, `_sum` and `_count` samples.
    pub fn write(&self, page: &mut Page, name: &str, help: &str) {
        page.family(name, Kind::Histogram, help);
        let bucket = format!("{name}_bucket");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            page.sample(&bucket, &[("le", &number(*b))], *c as f64);
        }
        page.sample(&bucket, &[("le", "+Inf")], self.count as f64);
        page.sample(&format!("{name}_sum"), &[], self.sum);
        page.sample(&format!("{name}_count"), &[], self.count as f64);
    }
}

/// Renders the current page; called on a blocking thread for every scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Longest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request.
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Scrapes served at once; more wait for a free one.
const MAX_CONNECTIONS: usize = 16;

/// Binds `addr` (failing clearly if it cannot), then serves in the background. Returns the
/// bound address (useful with port 0) and the serving task.
pub async fn serve(
    addr: SocketAddr,
    render: Render,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(Error::io(format!("listening for metrics on {addr}")))?;
    let local = listener
        .local_addr()
        .map_err(Error::io("reading the metrics address"))?;
    info!(addr = %local, "metrics served at http://{local}/metrics");
    let task = tokio::spawn(accept_loop(listener, render));
    Ok((local, task))
}

async fn accept_loop(listener: TcpListener, render: Render) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let render = render.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, render).await {
                        debug!(%peer, "metrics request: {e}");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                warn!("accepting a metrics connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request head and writes one response.
async fn answer(mut stream: TcpStream, render: Render) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let complete = tokio::time::timeout(READ_DEADLINE, async {
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
        }
    })
    .await;
    let (status, content_type, body) = match complete {
        Ok(Ok(true)) => route(&head, render).await,
        Ok(Ok(false)) => ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
        Ok(Err(e)) => return Err(e),
        Err(_) => (
            "408 Request Timeout",
            "text/plain",
            "request timeout\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

async fn route(head: &[u8], render: Render) -> (&'static str, &'static str, String) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => match tokio::task::spawn_blocking(move || render()).await {
            Ok(page) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", page),
            Err(e) => (
                "500 Internal Server Error",
                "text/plain",
                format!("rendering the metrics failed: {e}\n"),
            ),
        },
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_from_outside_are_escaped() {
        let mut p = Page::default();
        p.family("x_total", Kind::Counter, "a\nb").sample(
            "x_total",
            &[("service", "we\"b\\\n")],
            3.0,
        );
        let text = p.finish();
        assert_eq!(
            text,
            "# HELP x_total a\\nb\n# TYPE x_total counter\nx_total{service=\"we\\\"b\\\\\\n\"} 3\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[0.01, 0.1]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(1));
        let mut p = Page::default();
        h.write(&mut p, "lag_seconds", "lag");
        let text = p.finish();
        assert!(
            text.contains("lag_seconds_bucket{le=\"0.01\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lag_seconds_bucket{le=\"0.1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("lag_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("lag_seconds_count 3\n"), "{text}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn serves_metrics_and_refuses_everything_else() {
        let render: Render = Arc::new(|| "up 1\n".to_owned());
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), render).await.unwrap();
        let get = |req: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nup 1\n"), "{ok}");
        assert!(get("GET / HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        assert!(get("POST /metrics HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405"));
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD + 10));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(long.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        task.abort();
    }
}
