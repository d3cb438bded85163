//! The byte copy between a client and its destination, closing a connection with no byte
//! either way for the idle timeout (a download with a silent upload is not idle). Two ways to
//! copy, the same contract: tokio's bidirectional copy through 64 KiB buffers (the default),
//! or `splice(2)` through a pipe per direction (tokio-splice2; the bytes never enter user
//! space).

use std::{
    future::{poll_fn, Future},
    io,
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_splice2::{SpliceBidiIo, SpliceIoCtx};
use tracing::warn;

use super::{stats::Stats, Ended};

/// How the door copies bytes (`socks --copy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
///
/// Read-write is the default: on the benchmark's path (`cargo xtask bench --only socks`), a
/// stream spliced moved 0.84-1.04x the bytes per second of one copied (six runs, never
/// ahead); splice saved the door's CPU (0.59-0.73x per GB), but the receiving side paid more,
/// for as much CPU per GB on both CPUs together.
pub enum CopyMode {
    /// `splice(2)`: socket to pipe to socket, in the kernel.
    Splice,
    /// `read(2)` and `write(2)` through a 64 KiB buffer each way (tokio's bidirectional copy).
    #[default]
    ReadWrite,
}

impl CopyMode {
    /// Its name on the command line.
    pub fn name(self) -> String {
        use clap::ValueEnum as _;
        self.to_possible_value()
            .expect("no mode is hidden from the command line")
            .get_name()
            .to_owned()
    }
}

/// Each direction's buffer: tokio's default (8 KiB) costs a system call per 8 KiB of a
/// stream; 64 KiB took the door's one stream from 5.6 to 10.3-11.1 Gbit/s (a debug build,
/// `cargo xtask bench --only socks --quick`, 2026-12-05).
const BUFFER: usize = 64 * 1024;

/// What both sides share: when either last read a byte (ms from `start`).
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A stream that counts the bytes read from it and notes the time.
struct Counted<S> {
    inner: S,
    read: u64,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.read += n;
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies both ways until both sides are done, an error, or `idle` without a byte.
pub(super) async fn copy(
    mode: CopyMode,
    client: TcpStream,
    upstream: TcpStream,
    idle: Duration,
    stats: &Stats,
) -> Result<(), Ended> {
    match mode {
        CopyMode::Splice => splice(client, upstream, idle, stats).await,
        CopyMode::ReadWrite => read_write(client, upstream, idle, stats).await,
    }
}

/// `splice(2)` both ways, through a pipe each way of up to 1 MiB (tokio-splice2 asks for the
/// kernel's `pipe-max-size`; 64 KiB pipes saved less CPU per GB, 0.80x of read-write against
/// 0.56x). A poll that moved bytes puts the idle deadline off. Without the pipes (out of
/// descriptors), the connection is copied through buffers instead, and counted.
async fn splice(
    mut client: TcpStream,
    mut upstream: TcpStream,
    idle: Duration,
    stats: &Stats,
) -> Result<(), Ended> {
    let pipes = SpliceIoCtx::prepare().and_then(|up| Ok((up, SpliceIoCtx::prepare()?)));
    let (up, down) = match pipes {
        Ok(pipes) => pipes,
        Err(e) => {
            if stats.splice_fallbacks.fetch_add(1, Relaxed) == 0 {
                warn!("socks: no pipe for splice(2) ({e}): copying through buffers instead (ambassador_socks_splice_fallbacks_total counts each connection)");
            }
            return read_write(client, upstream, idle, stats).await;
        }
    };
    let mut both = pin!(SpliceBidiIo {
        io_sl2sr: up.into_io(),
        io_sr2sl: down.into_io(),
    });
    let mut deadline = pin!(tokio::time::sleep(idle));
    let mut moved = 0;
    let result = poll_fn(|cx| {
        let polled = both
            .as_mut()
            .poll_execute(cx, Pin::new(&mut client), Pin::new(&mut upstream));
        if let Poll::Ready(done) = polled {
            return Poll::Ready(done.map_err(Ended::Io));
        }
        let now = both.io_sl2sr.has_read() + both.io_sr2sl.has_read();
        if now != moved {
            moved = now;
            deadline.as_mut().reset(tokio::time::Instant::now() + idle);
        }
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                stats.idle_timeouts.fetch_add(1, Relaxed);
                Poll::Ready(Err(Ended::Idle(idle)))
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    stats
        .bytes_up
        .fetch_add(both.io_sl2sr.has_read() as u64, Relaxed);
    stats
        .bytes_down
        .fetch_add(both.io_sr2sl.has_read() as u64, Relaxed);
    result
}

/// tokio's bidirectional copy, each side wrapped to count what it reads and when.
async fn read_write<C, U>(
    client: C,
    upstream: U,
    idle: Duration,
    stats: &Stats,
) -> Result<(), Ended>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let mut client = Counted {
        inner: client,
        read: 0,
        activity: activity.clone(),
    };
    let mut upstream = Counted {
        inner: upstream,
        read: 0,
        activity: activity.clone(),
    };
    let watch = async {
        loop {
            let left = idle.saturating_sub(activity.idle());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    };
    let result = tokio::select! {
        copied = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER) => copied.map(|_| ()).map_err(Ended::Io),
        () = watch => {
            stats.idle_timeouts.fetch_add(1, Relaxed);
            Err(Ended::Idle(idle))
        }
    };
    stats.bytes_up.fetch_add(client.read, Relaxed);
    stats.bytes_down.fetch_add(upstream.read, Relaxed);
    result
}
