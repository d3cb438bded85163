//! Prometheus metrics: a page is built at each scrape into a `prometheus-client` registry and
//! encoded in the text format (version 0.0.4); a `hyper` HTTP/1.1 server answers
//! `GET /metrics` (and `GET /healthz`) and nothing else.
//!
//! The server keeps a misbehaving scraper from holding the daemon's resources: one request per
//! connection, a bounded request head, a deadline for it, and a cap on concurrent connections.
//! Rendering happens on a blocking thread (it reads BPF maps).

use std::{
    collections::HashMap, convert::Infallible, net::SocketAddr, sync::atomic::AtomicU64, sync::Arc,
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::prometheus_text,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};

/// A metric family's type.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Only goes up (resets when the process or the maps are recreated).
    Counter,
    /// Goes up and down.
    Gauge,
}

type Labels = Vec<(String, String)>;

enum Samples {
    Counter(Family<Labels, Counter<f64, AtomicU64>>),
    Gauge(Family<Labels, Gauge<f64, AtomicU64>>),
}

/// One scrape's page, built family by family.
#[derive(Default)]
pub struct Page {
    registry: Registry,
    families: HashMap<String, Samples>,
}

impl Page {
    /// Starts a family. A counter's name ends in `_total` (prometheus-client adds the suffix
    /// to what it is given, so it is given the name without it).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let help = registry_help(help);
        let samples = match kind {
            Kind::Counter => {
                let f = Family::default();
                let stem = name.strip_suffix("_total").unwrap_or(name);
                self.registry.register(stem, help, f.clone());
                Samples::Counter(f)
            }
            Kind::Gauge => {
                let f = Family::default();
                self.registry.register(name, help, f.clone());
                Samples::Gauge(f)
            }
        };
        self.families.insert(name.to_owned(), samples);
        self
    }

    /// One sample of the family `name` (started with [`Self::family`]) with its labels.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match self.families.get(name) {
            Some(Samples::Counter(f)) => {
                f.get_or_create(&labels).inc_by(value);
            }
            Some(Samples::Gauge(f)) => {
                f.get_or_create(&labels).set(value);
            }
            None => debug_assert!(false, "a sample of {name}, which has no family"),
        }
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// The page in the text format.
    pub fn finish(self) -> String {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}

/// prometheus-client ends every HELP text with a period of its own.
fn registry_help(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

/// A histogram of durations in seconds with fixed buckets, kept across scrapes.
#[derive(Clone, Debug)]
pub struct Histogram(histogram::Histogram);

/// Buckets for control-plane lag: 1 ms to 10 s.
pub const LAG_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

impl Histogram {
    /// An empty histogram with these upper bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self(histogram::Histogram::new(bounds.iter().copied()))
    }

    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }

    /// Adds the histogram to `page` as the family `name`.
    pub fn write(&self, page: &mut Page, name: &str, help: &str) {
        page.registry
            .register(name, registry_help(help), self.0.clone());
    }
}

/// Renders the current page; called on a blocking thread for every scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Longest request head accepted (hyper's smallest read buffer).
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head.
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once (a scraper retries).
const MAX_CONNECTIONS: usize = 64;
/// How long one connection may take, reading the request and writing the answer together:
/// a client that stops reading holds its slot no longer.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

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
        match listener.accept().await {
            Ok((stream, peer)) => {
                // A slot is taken after the accept, never before: a full server closes the
                // newcomer at once (it retries) rather than leave it queued behind clients
                // that may never finish; and every slot is free again within the deadline.
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    debug!(%peer, "metrics: every connection slot is taken; closing");
                    continue;
                };
                let render = render.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, render.clone()));
                    let served = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(READ_DEADLINE)
                        .max_buf_size(MAX_HEAD)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service);
                    match tokio::time::timeout(CONNECTION_DEADLINE, served).await {
                        Ok(Err(e)) => debug!(%peer, "metrics request: {e}"),
                        Err(_) => {
                            debug!(%peer, "metrics request: not done within {CONNECTION_DEADLINE:?}; closed")
                        }
                        Ok(Ok(())) => {}
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

/// Answers one request.
async fn answer(
    req: Request<Incoming>,
    render: Render,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => match tokio::task::spawn_blocking(move || render()).await {
            Ok(page) => (StatusCode::OK, prometheus_text::CONTENT_TYPE, page),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("rendering the metrics failed: {e}\n"),
            ),
        },
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics\n".to_owned(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_owned(),
        ),
    };
    Ok(Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response"))
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

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
            "# HELP x_total a\\nb.\n# TYPE x_total counter\nx_total{service=\"we\\\"b\\\\\\n\"} 3.0\n"
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
        assert!(
            ok.contains("content-type: text/plain; version=0.0.4"),
            "{ok}"
        );
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
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");
        task.abort();
    }

    /// Scrapers that ask and never read (the page is larger than their sockets hold) or never
    /// ask take no slot a real scraper needs: it is answered at once.
    #[tokio::test(flavor = "current_thread")]
    async fn stalled_scrapers_do_not_stop_a_real_one() {
        let page = "x".repeat(16 << 20);
        let render: Render = Arc::new(move || page.clone());
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), render).await.unwrap();
        let mut stalled = Vec::new();
        for i in 0..20 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 0 {
                s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
            }
            stalled.push(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = std::time::Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("answered while 20 scrapers stall")
            .unwrap();
        assert!(out.starts_with(b"HTTP/1.1 200 OK"));
        assert!(out.len() > 16 << 20);
        assert!(
            started.elapsed() < CONNECTION_DEADLINE,
            "{:?}",
            started.elapsed()
        );
        drop(stalled);
        task.abort();
    }
}
