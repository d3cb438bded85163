//! Forwarding to the host's upstream resolvers, over UDP and then TCP, and SERVFAIL when
//! none answers.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::Arc,
};

use hickory_proto::op::ResponseCode;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use super::{handler, read_message, stats::bump, DnsStats, Shared, UPSTREAM_TIMEOUT};

/// Hands a query for a name outside the domain to the runtime, which relays it upstream and
/// answers the client (SERVFAIL at once when too many are in flight).
pub(super) fn forward(
    socket: &UdpSocket,
    query: &[u8],
    from: SocketAddr,
    limit: usize,
    shared: &Arc<Shared>,
    runtime: &tokio::runtime::Handle,
) {
    let Ok(permit) = shared.forwards.try_acquire() else {
        return send_servfail(socket, query, from, &shared.stats);
    };
    permit.forget();
    let (query, shared) = (query.to_vec(), shared.clone());
    let Ok(socket) = socket.try_clone() else {
        return shared.forwards.add_permits(1);
    };
    runtime.spawn(async move {
        match forward_udp(&query, shared.upstreams()).await {
            Some(answer) => match handler::fit(&answer, limit) {
                Some(answer) => {
                    bump(&shared.stats.forwarded);
                    let _ = socket.send_to(&answer, from);
                }
                None => send_servfail(&socket, &query, from, &shared.stats),
            },
            None => send_servfail(&socket, &query, from, &shared.stats),
        }
        shared.forwards.add_permits(1);
    });
}

pub(super) fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let q = hickory_proto::op::Message::from_vec(query).ok()?;
    let mut m = hickory_proto::op::Message::error_msg(q.id, q.op_code, ResponseCode::ServFail);
    m.metadata.recursion_desired = q.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_queries(q.queries.iter().cloned());
    m.to_vec().ok()
}

pub(super) fn send_servfail(socket: &UdpSocket, query: &[u8], to: SocketAddr, stats: &DnsStats) {
    bump(&stats.forward_failures);
    if let Some(bytes) = servfail(query) {
        stats.answered(ResponseCode::ServFail, false, to);
        let _ = socket.send_to(&bytes, to);
    }
}

/// Relays `query` to the first upstream that answers it (same id) in time.
async fn forward_udp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let local: SocketAddr = if up.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(sock) = tokio::net::UdpSocket::bind(local).await else {
            continue;
        };
        if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65535];
        let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            if n >= 12 && buf[..2] == query[..2] {
                return Some(buf[..n].to_vec());
            }
        }
    }
    None
}

/// Relays `query` over TCP to the first upstream that answers it in time.
pub(super) async fn forward_tcp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let attempt = async {
            let mut s = TcpStream::connect(up).await?;
            s.write_all(&(query.len() as u16).to_be_bytes()).await?;
            s.write_all(query).await?;
            read_message(&mut s).await
        };
        if let Ok(Ok(Some(answer))) = tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            return Some(answer);
        }
    }
    None
}
