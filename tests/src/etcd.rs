//! etcd for the tests: Debian's etcd-server, one member or a cluster, TLS, grpc-proxy.

use super::*;

/// One etcd member (Debian's etcd-server) inside a test namespace.
pub struct EtcdMember {
    /// Member name.
    pub name: String,
    /// Its client URL (inside the namespace).
    pub url: String,
    args: Vec<String>,
    ns: String,
    /// The running process (None while stopped).
    pub proc: Option<Proc>,
    _data: TempDir,
}

impl EtcdMember {
    /// Starts (or restarts, keeping its data) the member.
    pub fn start(&mut self) {
        self.proc = Some(Proc::spawn(
            &self.ns,
            &self.name,
            Path::new("/usr/bin/etcd"),
            &self.args,
        ));
    }

    /// Kills the member (SIGKILL: no goodbye to its peers).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

/// openssl's flags for a new P-256 key (fast to make), unencrypted.
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// Certificates for TLS tests, made with openssl: a CA, a server certificate for 127.0.0.1 and
/// a client certificate (CN `root`).
pub struct Certs {
    /// Where the PEM files are.
    pub dir: TempDir,
}

impl Certs {
    /// Generates the CA, server and client certificates (P-256 keys: fast to make).
    pub fn new() -> Self {
        let dir = temp_dir("certs");
        let d = dir.path().to_str().unwrap().to_owned();
        let mut ca = vec![
            "openssl",
            "req",
            "-x509",
            "-days",
            "1",
            "-subj",
            "/CN=ambassador-test-ca",
        ];
        ca.extend_from_slice(&EC_KEY);
        let (ca_key, ca_crt) = (format!("{d}/ca.key"), format!("{d}/ca.crt"));
        ca.extend_from_slice(&["-keyout", &ca_key, "-out", &ca_crt]);
        sh(&ca);
        let certs = Self { dir };
        certs.issue("server", "etcd", "subjectAltName=IP:127.0.0.1");
        certs.client("client", "root");
        certs
    }

    /// Issues a client certificate `<name>.crt` (and `<name>.key`) with CN `cn`: to etcd with
    /// `--client-cert-auth`, the user `cn`.
    pub fn client(&self, name: &str, cn: &str) {
        self.issue(name, cn, "extendedKeyUsage=clientAuth");
    }

    fn issue(&self, name: &str, cn: &str, ext: &str) {
        let d = self.dir.path().to_str().unwrap().to_owned();
        let (ca_key, ca_crt) = (format!("{d}/ca.key"), format!("{d}/ca.crt"));
        let (key, csr, crt, extfile) = (
            format!("{d}/{name}.key"),
            format!("{d}/{name}.csr"),
            format!("{d}/{name}.crt"),
            format!("{d}/{name}.ext"),
        );
        std::fs::write(&extfile, format!("{ext}\n")).unwrap();
        let subj = format!("/CN={cn}");
        let mut req = vec![
            "openssl", "req", "-subj", &subj, "-keyout", &key, "-out", &csr,
        ];
        req.extend_from_slice(&EC_KEY);
        sh(&req);
        sh(&[
            "openssl",
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &crt,
            "-extfile",
            &extfile,
        ]);
    }

    /// Path of one PEM file (`ca.crt`, `server.key`, `client.crt`...).
    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).to_str().unwrap().to_owned()
    }
}

impl Default for Certs {
    fn default() -> Self {
        Self::new()
    }
}

/// `etcd grpc-proxy` (Debian's etcd-server) in front of a cluster, inside its namespace: it
/// coalesces identical watches, as a zone of hosts would run it. Stopped on drop.
pub struct EtcdProxy {
    /// Its client URL (inside the namespace).
    pub url: String,
    proc: Proc,
    _data: TempDir,
}

impl EtcdProxy {
    /// Starts a proxy in `ns` (etcd's namespace) for `etcd`'s members, listening at `listen`
    /// (`127.0.0.1:23790`, or `0.0.0.0:23790` for clients in other namespaces), once it
    /// accepts connections.
    pub fn start(ns: &NetNs, etcd: &Etcd, listen: &str) -> Self {
        let members: Vec<String> = etcd
            .members
            .iter()
            .map(|m| m.url.trim_start_matches("http://").to_owned())
            .collect();
        let data = temp_dir("grpc-proxy");
        let args = vec![
            "grpc-proxy".to_owned(),
            "start".to_owned(),
            format!("--endpoints={}", members.join(",")),
            format!("--listen-addr={listen}"),
            format!("--data-dir={}", data.path().display()),
        ];
        let proc = Proc::spawn(&ns.name, "grpc-proxy", Path::new("/usr/bin/etcd"), &args);
        let port = listen.rsplit(':').next().expect("ADDR:PORT");
        let local: SocketAddr = format!("127.0.0.1:{port}").parse().expect("a port");
        let up = ns.run(move || {
            wait_until(Duration::from_secs(15), || {
                TcpStream::connect_timeout(&local, Duration::from_millis(200)).is_ok()
            })
        });
        assert!(
            up,
            "etcd grpc-proxy did not listen on {listen}:\n{}",
            proc.log()
        );
        Self {
            url: format!("http://127.0.0.1:{port}"),
            proc,
            _data: data,
        }
    }

    /// The proxy's process id.
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }
}

/// etcd for a test: one member, or a cluster of members on 127.0.0.1 inside `ns` (clients in
/// other namespaces reach a single member on the namespace's addresses, port 2379).
pub struct Etcd {
    /// The members.
    pub members: Vec<EtcdMember>,
    ns: String,
    /// etcdctl's TLS flags, when the members serve TLS.
    tls_flags: Vec<String>,
}

impl Etcd {
    /// A single member listening on every address of `ns`, port 2379.
    pub fn single(ns: &NetNs) -> Self {
        Self::build(ns, 1, None, None)
    }

    /// A single member serving TLS and requiring client certificates signed by `certs`' CA.
    pub fn single_tls(ns: &NetNs, certs: &Certs) -> Self {
        Self::build(ns, 1, Some(certs), None)
    }

    /// A cluster of `n` members on 127.0.0.1 inside `ns`.
    pub fn cluster(ns: &NetNs, n: usize) -> Self {
        Self::build(ns, n, None, None)
    }

    /// A cluster of `n` members whose data directories are under `data_root` (`/dev/shm`: on
    /// tmpfs), not the system's temporary directory.
    pub fn cluster_in(ns: &NetNs, n: usize, data_root: &Path) -> Self {
        Self::build(ns, n, None, Some(data_root))
    }

    fn build(ns: &NetNs, n: usize, tls: Option<&Certs>, data_root: Option<&Path>) -> Self {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let cluster_token = unique("etcd-");
        let peers: Vec<(String, u16, u16)> = (0..n)
            .map(|i| {
                (
                    format!("m{i}"),
                    2379 + 10000 * i as u16,
                    2380 + 10000 * i as u16,
                )
            })
            .collect();
        let initial: Vec<String> = peers
            .iter()
            .map(|(name, _, peer)| format!("{name}=http://127.0.0.1:{peer}"))
            .collect();
        let members = peers
            .iter()
            .map(|(name, client, peer)| {
                let data = match data_root {
                    Some(root) => tempfile::Builder::new()
                        .prefix("etcd-data-")
                        .tempdir_in(root)
                        .expect("creating etcd's data directory"),
                    None => temp_dir("etcd-data"),
                };
                let listen = if n == 1 {
                    format!("{scheme}://0.0.0.0:{client}")
                } else {
                    format!("{scheme}://127.0.0.1:{client}")
                };
                let mut args = vec![
                    format!("--name={name}"),
                    format!("--data-dir={}", data.path().display()),
                    format!("--listen-client-urls={listen}"),
                    format!("--advertise-client-urls={scheme}://127.0.0.1:{client}"),
                    format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                    format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                    format!("--initial-cluster={}", initial.join(",")),
                    format!("--initial-cluster-token={cluster_token}"),
                    "--heartbeat-interval=50".into(),
                    "--election-timeout=500".into(),
                ];
                if let Some(c) = tls {
                    args.extend([
                        format!("--cert-file={}", c.path("server.crt")),
                        format!("--key-file={}", c.path("server.key")),
                        format!("--trusted-ca-file={}", c.path("ca.crt")),
                        "--client-cert-auth".to_owned(),
                    ]);
                }
                EtcdMember {
                    name: name.clone(),
                    url: format!("{scheme}://127.0.0.1:{client}"),
                    args,
                    ns: ns.name.clone(),
                    proc: None,
                    _data: data,
                }
            })
            .collect();
        let tls_flags = tls
            .map(|c| {
                vec![
                    format!("--cacert={}", c.path("ca.crt")),
                    format!("--cert={}", c.path("client.crt")),
                    format!("--key={}", c.path("client.key")),
                ]
            })
            .unwrap_or_default();
        let mut etcd = Self {
            members,
            ns: ns.name.clone(),
            tls_flags,
        };
        for m in &mut etcd.members {
            m.start();
        }
        etcd.wait_healthy(Duration::from_secs(15));
        etcd
    }

    /// The client URLs of the members, comma-separated.
    pub fn urls(&self) -> String {
        self.members
            .iter()
            .map(|m| m.url.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `etcdctl ARGS` against the running members, inside the namespace.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        let urls: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.proc.is_some())
            .map(|m| m.url.clone())
            .collect();
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .args([
                "etcdctl",
                "--command-timeout=3s",
                "--endpoints",
                &urls.join(","),
            ])
            .args(&self.tls_flags)
            .args(args)
            .output()
            .unwrap()
    }

    /// Waits until a quorum answers.
    pub fn wait_healthy(&self, timeout: Duration) {
        let ok = wait_until(timeout, || {
            self.ctl(&["put", "/health-probe", "ok"]).status.success()
        });
        if !ok {
            let logs: Vec<String> = self
                .members
                .iter()
                .filter_map(|m| m.proc.as_ref().map(|p| format!("{}:\n{}", m.name, p.log())))
                .collect();
            panic!("etcd not healthy after {timeout:?}:\n{}", logs.join("\n"));
        }
    }

    /// Index of the current leader.
    pub fn leader(&self) -> usize {
        let out = self.ctl(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("endpoint status json");
        let entries = v.as_array().expect("array");
        let leader_id = entries[0]["Status"]["leader"].as_u64().expect("leader id");
        let endpoint = entries
            .iter()
            .find(|e| e["Status"]["header"]["member_id"].as_u64() == Some(leader_id))
            .and_then(|e| e["Endpoint"].as_str())
            .expect("leader endpoint")
            .to_owned();
        self.members
            .iter()
            .position(|m| m.url == endpoint)
            .expect("leader is a member")
    }
}
