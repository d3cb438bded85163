//! TCP: a bounded number of connections, deadlines on every read and write, idle clients
//! giving their slot up under load, and the listener supervised.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use hickory_proto::op::ResponseCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::error;

use super::{
    forward::{forward_tcp, servfail},
    stats::bump,
    Reply, Shared, Transport, MAX_TCP, TCP_BUSY_IDLE, TCP_IDLE, TCP_SLOT_WAIT, TCP_WRITE,
};

/// Reads one length-prefixed DNS message (RFC 1035, 4.2.2); `None` at a clean end of stream.
/// Generic over the stream so that the fuzz target drives it with any bytes.
pub async fn read_message<R: tokio::io::AsyncRead + Unpin>(
    s: &mut R,
) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

/// Runs the TCP listener, restarting it should it ever panic (counted and logged). Aborting
/// this task (the responder stopping) aborts the listener too.
pub(super) async fn supervise_tcp(listener: TcpListener, shared: Arc<Shared>, addr: SocketAddr) {
    let listener = Arc::new(listener);
    loop {
        let task = tokio::spawn(serve_tcp(listener.clone(), shared.clone()));
        let _guard = crate::task::AbortOnDrop(task.abort_handle());
        match task.await {
            Err(e) if e.is_panic() => {
                bump(&shared.stats.panics);
                error!("DNS: the TCP listener on {addr} panicked; restarting it");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => return,
        }
    }
}

async fn serve_tcp(listener: Arc<TcpListener>, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(MAX_TCP));
    // Rung when every slot is taken: idle connections give theirs up (RFC 7766, 6.2.3).
    let busy = Arc::new(tokio::sync::Notify::new());
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let permit = match connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                busy.notify_waiters();
                let wait = connections.clone().acquire_owned();
                match tokio::time::timeout(TCP_SLOT_WAIT, wait).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        bump(&shared.stats.tcp_refused);
                        continue; // dropped: closed at once
                    }
                }
            }
        };
        let (shared, busy) = (shared.clone(), busy.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _ = serve_connection(stream, from, &shared, &busy).await;
        });
    }
}

/// Waits for the next query: `None` when the client is done, has been idle for [`TCP_IDLE`],
/// or for [`TCP_BUSY_IDLE`] while another client waits for a slot.
async fn next_query(s: &mut TcpStream, busy: &tokio::sync::Notify) -> Option<Vec<u8>> {
    let since = tokio::time::Instant::now();
    let read = read_message(s);
    tokio::pin!(read);
    let idle = tokio::time::sleep(TCP_IDLE);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            r = &mut read => return r.ok().flatten(),
            _ = &mut idle => return None,
            _ = busy.notified() => {
                if since.elapsed() >= TCP_BUSY_IDLE {
                    return None;
                }
            }
        }
    }
}

async fn serve_connection(
    mut s: TcpStream,
    from: SocketAddr,
    shared: &Shared,
    busy: &tokio::sync::Notify,
) -> io::Result<()> {
    while let Some(query) = next_query(&mut s, busy).await {
        let answer = match shared.reply(&query, Transport::Tcp, from) {
            Reply::Answer { bytes, .. } => bytes,
            Reply::Drop => return Ok(()),
            Reply::Forward { .. } => match forward_tcp(&query, shared.upstreams()).await {
                Some(a) => {
                    bump(&shared.stats.forwarded);
                    a
                }
                None => {
                    bump(&shared.stats.forward_failures);
                    shared.stats.answered(ResponseCode::ServFail, false, from);
                    servfail(&query).unwrap_or_default()
                }
            },
        };
        // A client that does not read its answers holds its slot no longer than this.
        let write = async {
            s.write_all(&(answer.len() as u16).to_be_bytes()).await?;
            s.write_all(&answer).await
        };
        match tokio::time::timeout(TCP_WRITE, write).await {
            Ok(r) => r?,
            Err(_) => {
                bump(&shared.stats.tcp_stalled);
                return Ok(());
            }
        }
    }
    Ok(())
}
