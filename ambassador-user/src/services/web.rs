//! The HTTP listener of the daemon, the register and the door: `GET /metrics` for
//! Prometheus, `GET /healthz`, and the pages each adds (the daemon's status page `/` and
//! `/status.json`). Read-only: nothing but GET is answered, and nothing changes state.
//!
//! The server keeps a misbehaving client from holding the process's resources: one request
//! per connection, a bounded request head, a deadline for it, and a cap on concurrent
//! connections. Rendering happens on a blocking thread (pages read BPF maps). Every answer
//! carries a Content-Security-Policy that allows only this origin's own script and style, so
//! a name from etcd that slipped past the page's escaping still could not run.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{
        HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
    },
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, info, warn};

use crate::{
    error::{Error, Result},
    services::metrics,
};

/// Renders one page, or says why it cannot (answered as 503); called on a blocking thread
/// for every request.
pub type Render = Arc<dyn Fn() -> std::result::Result<String, String> + Send + Sync>;

/// One page: where, what it is, how it is made.
struct Page {
    path: &'static str,
    content_type: &'static str,
    render: Render,
}

/// The pages a listener serves, besides `/healthz`.
#[derive(Clone, Default)]
pub struct Site {
    pages: Vec<Arc<Page>>,
}

impl Site {
    /// A site with the metrics page `render` makes at `/metrics`.
    pub fn metrics(render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        Self::default().page("/metrics", metrics::CONTENT_TYPE, move || Ok(render()))
    }

    /// Adds a page at `path`.
    pub fn page(
        mut self,
        path: &'static str,
        content_type: &'static str,
        render: impl Fn() -> std::result::Result<String, String> + Send + Sync + 'static,
    ) -> Self {
        self.pages.push(Arc::new(Page {
            path,
            content_type,
            render: Arc::new(render),
        }));
        self
    }

    /// Adds a page that never changes.
    pub fn fixed(self, path: &'static str, content_type: &'static str, body: &'static str) -> Self {
        self.page(path, content_type, move || Ok(body.to_owned()))
    }

    fn find(&self, path: &str) -> Option<Arc<Page>> {
        self.pages.iter().find(|p| p.path == path).cloned()
    }

    fn paths(&self) -> String {
        let mut paths: Vec<&str> = self.pages.iter().map(|p| p.path).collect();
        paths.push("/healthz");
        paths.join(" ")
    }
}

/// What every answer may load: this origin's script and style, its own JSON, nothing else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

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
    site: Site,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(Error::io(format!("listening for metrics on {addr}")))?;
    let local = listener
        .local_addr()
        .map_err(Error::io("reading the metrics address"))?;
    info!(addr = %local, "metrics served at http://{local}/metrics");
    if site.find("/").is_some() {
        info!(addr = %local, "status page at http://{local}/ (and /status.json)");
    }
    let task = tokio::spawn(accept_loop(listener, site));
    Ok((local, task))
}

async fn accept_loop(listener: TcpListener, site: Site) {
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
                let site = site.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, site.clone()));
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
    site: Site,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let text = "text/plain; charset=utf-8";
    let (status, content_type, body) = match (req.method(), site.find(req.uri().path())) {
        (&Method::GET, Some(page)) => {
            let render = page.render.clone();
            match tokio::task::spawn_blocking(move || render()).await {
                Ok(Ok(body)) => (StatusCode::OK, page.content_type, body),
                Ok(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, text, format!("{why}\n")),
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    text,
                    format!("rendering {} failed: {e}\n", page.path),
                ),
            }
        }
        (&Method::GET, None) if req.uri().path() == "/healthz" => {
            (StatusCode::OK, text, "ok\n".to_owned())
        }
        (&Method::GET, None) => (
            StatusCode::NOT_FOUND,
            text,
            format!("try {}\n", site.paths()),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            text,
            "only GET\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in [
        (CONTENT_TYPE, content_type),
        (CONTENT_SECURITY_POLICY, CSP),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn serves_metrics_and_refuses_everything_else() {
        let site = Site::metrics(|| "up 1\n".to_owned()).page("/broken", "text/plain", || {
            Err("the maps are gone".to_owned())
        });
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), site).await.unwrap();
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
        assert!(
            ok.contains("content-security-policy: default-src 'none'"),
            "{ok}"
        );
        let missing = get("GET / HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert!(
            missing.ends_with("try /metrics /broken /healthz\n"),
            "{missing}"
        );
        let broken = get("GET /broken HTTP/1.1\r\n\r\n").await;
        assert!(broken.starts_with("HTTP/1.1 503"), "{broken}");
        assert!(broken.ends_with("the maps are gone\n"), "{broken}");
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
        let site = Site::metrics(move || page.clone());
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), site).await.unwrap();
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
