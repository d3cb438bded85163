//! UDP: one thread per listen address, blocking `recvmmsg`/`sendmmsg`, supervised (a panic
//! is caught, counted and the listener started again).

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use tracing::{error, warn};

use super::{
    forward::forward, handler, rrl, stats::bump, Reply, Shared, Transport, BATCH, MAX_QUERY,
};

/// One UDP listener: answer, or hand the query to the runtime to forward. Ends when the
/// [`Responder`] is dropped (it shuts the socket down).
/// Runs the UDP listener until the responder stops, restarting it should it ever panic
/// (counted and logged): UDP DNS never ends silently.
pub(super) fn supervise_udp(
    socket: &UdpSocket,
    shared: &Arc<Shared>,
    runtime: &tokio::runtime::Handle,
    addr: SocketAddr,
) {
    while !shared.stop.load(Ordering::Relaxed) {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serve_udp(socket, shared, runtime)
        }));
        if run.is_ok() {
            return;
        }
        bump(&shared.stats.panics);
        error!("DNS: the UDP listener on {addr} panicked; restarting it");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn serve_udp(socket: &UdpSocket, shared: &Arc<Shared>, runtime: &tokio::runtime::Handle) {
    use std::os::fd::AsRawFd as _;

    use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

    let fd = socket.as_raw_fd();
    let mut bufs = vec![[0u8; MAX_QUERY]; BATCH];
    let mut received = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut sending = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    while !shared.stop.load(Ordering::Relaxed) {
        // Every datagram waiting, up to BATCH, in one call (blocking for the first).
        let batch: Vec<(usize, SocketAddr)> = {
            let mut iovs: Vec<[io::IoSliceMut; 1]> =
                bufs.iter_mut().map(|b| [io::IoSliceMut::new(b)]).collect();
            match recvmmsg(
                fd,
                &mut received,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(msgs) => msgs
                    .filter_map(|m| Some((m.bytes, std_addr(&m.address?)?)))
                    .collect(),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!("DNS: receiving on UDP failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        };
        let mut answers: Vec<(Vec<u8>, SockaddrStorage)> = Vec::with_capacity(batch.len());
        let now = Instant::now();
        for (buf, (n, from)) in bufs.iter().zip(&batch) {
            let (query, from) = (&buf[..*n], *from);
            match shared.reply(query, Transport::Udp, from) {
                Reply::Answer { bytes, .. } => match shared.rrl.check(from.ip(), query, now) {
                    rrl::Verdict::Send => answers.push((bytes, SockaddrStorage::from(from))),
                    rrl::Verdict::Slip => {
                        bump(&shared.stats.rate_slipped);
                        if let Some(cut) = handler::truncate(&bytes) {
                            answers.push((cut, SockaddrStorage::from(from)));
                        }
                    }
                    rrl::Verdict::Drop => bump(&shared.stats.rate_dropped),
                },
                Reply::Drop => {}
                Reply::Forward { limit } => forward(socket, query, from, limit, shared, runtime),
            }
        }
        // Every answer in one call.
        if !answers.is_empty() {
            let iovs: Vec<[io::IoSlice; 1]> =
                answers.iter().map(|(a, _)| [io::IoSlice::new(a)]).collect();
            let to: Vec<Option<SockaddrStorage>> = answers.iter().map(|(_, t)| Some(*t)).collect();
            let _ = sendmmsg(fd, &mut sending, &iovs, &to, [], MsgFlags::empty());
        }
    }
}

/// The standard address of a received datagram's source.
fn std_addr(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}
