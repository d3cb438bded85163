//! Small servers and clients of the tests: a TCP server that names itself and echoes, a UDP one.

use super::*;

/// A TCP server that greets each connection with its identity line, then echoes.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Listens on `addr` inside `ns`.
    pub fn start(ns: &NetNs, addr: &str, ident: &str) -> Self {
        let addr: SocketAddr = addr.parse().unwrap();
        let listener = ns.run(move || TcpListener::bind(addr).unwrap());
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let ident = ident.to_owned();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let ident = ident.clone();
                        std::thread::spawn(move || {
                            conn.set_nonblocking(false).unwrap();
                            let _ = writeln!(conn, "{ident}");
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = conn.read(&mut buf) {
                                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `ns` to `addr` and reads the server's identity line.
pub fn tcp_connect(ns: &NetNs, addr: &str) -> std::io::Result<(BufReader<TcpStream>, String)> {
    let addr: SocketAddr = addr.parse().unwrap();
    let stream = ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?;
    read_ident(stream, Duration::from_secs(2))
}

/// Connects from the calling thread's namespace (inside [`NetNs::run`] or [`NetNs::spawn`])
/// and reads the server's identity line; `timeout` bounds the connect and each read.
pub fn tcp_connect_here(
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<(BufReader<TcpStream>, String)> {
    read_ident(TcpStream::connect_timeout(&addr, timeout)?, timeout)
}

fn read_ident(
    stream: TcpStream,
    timeout: Duration,
) -> std::io::Result<(BufReader<TcpStream>, String)> {
    stream.set_read_timeout(Some(timeout))?;
    let mut reader = BufReader::new(stream);
    let mut ident = String::new();
    reader.read_line(&mut ident)?;
    Ok((reader, ident.trim().to_owned()))
}

/// Sends a line on an open connection and reads its echo.
pub fn tcp_echo(conn: &mut BufReader<TcpStream>, line: &str) -> std::io::Result<String> {
    writeln!(conn.get_mut(), "{line}")?;
    let mut back = String::new();
    conn.read_line(&mut back)?;
    Ok(back.trim().to_owned())
}

/// A UDP server that answers each datagram with `ident:` and the datagram.
pub struct UdpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    received: Arc<AtomicU32>,
}

impl UdpServer {
    /// Binds `addr` inside `ns`.
    pub fn start(ns: &NetNs, addr: &str, ident: &str) -> Self {
        let addr: SocketAddr = addr.parse().unwrap();
        let sock = ns.run(move || UdpSocket::bind(addr).unwrap());
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU32::new(0));
        let (stop2, received2, ident) = (stop.clone(), received.clone(), ident.to_owned());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    received2.fetch_add(1, Ordering::Relaxed);
                    let mut reply = format!("{ident}:").into_bytes();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
            received,
        }
    }

    /// Datagrams received so far.
    pub fn received(&self) -> u32 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP client socket in `ns`, connected to `addr`.
pub fn udp_client(ns: &NetNs, addr: &str) -> UdpSocket {
    let addr: SocketAddr = addr.parse().unwrap();
    let sock = ns.run(move || {
        let any = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let s = UdpSocket::bind(any).unwrap();
        s.connect(addr).unwrap();
        s
    });
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock
}
