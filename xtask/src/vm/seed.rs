//! The seed experiment on the Vagrant testbed's VMs, driven from here over ssh: a client
//! container on h1 asks the database `db` by name every 200 ms (a new connection and a name
//! lookup each time, through h1's responder and datapath), while the database moves from h2
//! to h4, in another subnet behind the NAT router, in the seed's order (start the new one,
//! then stop the old one). Then the hard failure: h2 serves again beside h4, and its register
//! and database are killed without cleanup. The same phases as `cargo xtask run` on the
//! namespace testbed (tests/src/scenario.rs), with h3's stop left out and a slower client:
//! under emulation each request starts a process in an emulated VM.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ambassador_tests::{
    image,
    testbed::{db_name, db_run_args, DB_FRONTEND_PORT, DB_NAME, DB_PORT},
};
use anyhow::{bail, ensure, Context as _, Result};

/// h1's `run` answers DNS on its docker0 (the Vagrantfile's DNS_LISTEN).
const RESOLVER: &str = "172.17.0.1";
/// The etcd h1 runs (the Vagrantfile's ETCD).
const ETCD: &str = "http://10.210.1.11:2379";
/// The registers' lease TTL (the Vagrantfile's TTL).
const TTL: Duration = Duration::from_secs(5);
/// How long anything may take to show under emulation.
const WAIT: Duration = Duration::from_secs(180);
/// Where the client writes its log on h1 (and in its container, `/out/log`).
const CLIENT_DIR: &str = "/tmp/ambassador-client";

/// The client: one `redis-cli` a request, by name, given 5 s; each line `UPTIME ANSWER`
/// (busybox's shell runs its own `timeout` and `tr`).
fn client_loop() -> String {
    format!(
        "while :; do read up _ < /proc/uptime; \
         r=$(timeout 5 redis-cli -h {DB_NAME} -p {DB_FRONTEND_PORT} GET host 2>&1 | tr '\\n' ' '); \
         echo \"$up $r\" >> /out/log; sleep 0.2; done"
    )
}

/// The VMs, over plain ssh with one connection per host kept open (closed when dropped).
pub struct Hosts {
    config: PathBuf,
    control: PathBuf,
    names: Vec<String>,
}

impl Hosts {
    /// `names`, with `vagrant ssh-config`'s output at `config`, and a folder for ssh's
    /// sockets.
    pub fn new(names: &[&str], config: &Path, control: &Path) -> Result<Self> {
        std::fs::create_dir_all(control)?;
        Ok(Self {
            config: config.to_owned(),
            control: control.to_owned(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        })
    }

    fn ssh(&self) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F")
            .arg(&self.config)
            .args(["-o", "ControlMaster=auto", "-o", "ControlPersist=300"])
            .arg("-o")
            .arg(format!("ControlPath={}/%h", self.control.display()))
            .args(["-o", "LogLevel=ERROR"])
            .stdin(Stdio::null());
        cmd
    }

    /// Runs shell `command` as root on `host`: its output, or why it failed.
    pub fn sh(&self, host: &str, command: &str) -> Result<String> {
        let out = self
            .ssh()
            .args([host, "sudo", "sh", "-c"])
            .arg(shlex::try_quote(command)?.as_ref())
            .output()
            .context("running ssh")?;
        ensure!(
            out.status.success(),
            "on {host}: {command}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `docker ARGS` on `host`.
    pub fn docker<S: AsRef<str>>(&self, host: &str, args: &[S]) -> Result<String> {
        let words = std::iter::once("docker").chain(args.iter().map(AsRef::as_ref));
        self.sh(host, &shlex::try_join(words)?)
    }

    /// What each host runs, and the end of its containers' logs: for a failure's message.
    pub fn diagnose(&self) -> String {
        let mut out = String::new();
        for host in self.names.iter().filter(|h| h.starts_with('h')) {
            let what = self
                .sh(
                    host,
                    "docker ps -a --format '{{.Names}} {{.Status}}'; \
                     for c in ambassador-run ambassador-register; do \
                     echo \"-- $c\"; docker logs --tail 10 $c 2>&1; done",
                )
                .unwrap_or_else(|e| e.to_string());
            out.push_str(&format!("---- {host}\n{what}"));
        }
        let client = self
            .sh("h1", &format!("tail -5 {CLIENT_DIR}/log"))
            .unwrap_or_else(|e| e.to_string());
        out.push_str(&format!(
            "---- the client's last requests (h1's uptime, answer)\n{client}"
        ));
        out
    }

    /// `host`'s uptime: the clock the client's log is written in (on h1).
    fn uptime(&self, host: &str) -> Result<f64> {
        let up = self.sh(host, "cat /proc/uptime")?;
        up.split_whitespace()
            .next()
            .and_then(|u| u.parse().ok())
            .with_context(|| format!("uptime {up:?}"))
    }

    /// Waits until `cond` holds (checked every 500 ms), or fails after [`WAIT`] naming `what`,
    /// or at once when the run is interrupted.
    fn wait(&self, what: &str, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < WAIT {
            super::vagrant::interrupted()?;
            if cond().unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        bail!("no {what} within {} s", WAIT.as_secs())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in &self.names {
            let _ = self
                .ssh()
                .args(["-O", "exit", host])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// One request of the client.
struct Request {
    /// h1's uptime when it started.
    at: f64,
    /// Which host answered, or what the client said.
    answer: Result<String, String>,
}

fn requests(hosts: &Hosts) -> Result<Vec<Request>> {
    let log = hosts.sh("h1", &format!("cat {CLIENT_DIR}/log 2>/dev/null || true"))?;
    Ok(parse(&log))
}

/// The client's log: a line per request, `UPTIME ANSWER` (a host's name, or what `redis-cli`
/// said); a line cut short by a read in the middle of its write is left out.
fn parse(log: &str) -> Vec<Request> {
    log.lines()
        .filter_map(|l| {
            let (at, answer) = l.split_once(' ')?;
            let answer = answer.trim();
            Some(Request {
                at: at.parse().ok()?,
                answer: if ["h1", "h2", "h4"].contains(&answer) {
                    Ok(answer.to_owned())
                } else if answer.is_empty() {
                    Err("no answer within 5 s".to_owned())
                } else {
                    Err(answer.to_owned())
                },
            })
        })
        .collect()
}

/// When `host` first answered at or after `after` (h1's uptime).
fn first_answer(hosts: &Hosts, host: &str, after: f64) -> Result<Option<f64>> {
    Ok(requests(hosts)?
        .iter()
        .find(|r| r.at >= after && r.answer.as_deref() == Ok(host))
        .map(|r| r.at))
}

/// What the run saw.
pub struct Report {
    /// Requests (and failed ones) while the database moved, and while h2 rejoined.
    pub graceful: (usize, usize),
    /// Answers from each host during the move: h2, then h4.
    pub answered: (usize, usize),
    /// From starting h4's database to its first answer, and from stopping h2's to its last.
    pub takeover: f64,
    /// See `takeover`.
    pub drain: f64,
    /// Requests after the kill, those that failed, and over how long.
    pub hard: (usize, usize, f64),
    /// Failures before the kill: when (s from the start) and what the client said.
    pub failures: Vec<(f64, String)>,
    /// The frontend address the name gave (the client container's `nslookup`), or `-`.
    pub frontend: String,
}

/// `ambassador ARGS` in h1's `run` container.
fn ambassador(hosts: &Hosts, args: &[&str]) -> Result<String> {
    let exec = ["exec", "ambassador-run", "/usr/local/bin/ambassador"];
    hosts.docker("h1", &[&exec[..], args].concat())
}

/// When each phase began, in h1's uptime (the client log's clock).
struct Times {
    /// The client's start.
    start: f64,
    /// h4's database started, and its first answer.
    h4_started: f64,
    /// See `h4_started`.
    h4_answered: f64,
    /// h2's database stopped.
    h2_stopped: f64,
    /// h2's database started again.
    h2_again: f64,
    /// h2's register and database killed.
    killed: f64,
}

/// Runs the experiment on the hosts that are up.
pub fn run(hosts: &Hosts) -> Result<Report> {
    hosts.wait("ambassador run ready on h1", || {
        Ok(ambassador(hosts, &["status"]).is_ok())
    })?;
    let port = DB_FRONTEND_PORT.to_string();
    ambassador(
        hosts,
        &["service", "set", "db", "--port", &port, "--etcd", ETCD],
    )?;
    hosts.docker("h2", &db_run_args("h2"))?;
    hosts.wait("h2's database in h1's datapath", || {
        Ok(ambassador(hosts, &["status"])?.contains(&format!("10.210.1.12:{DB_PORT}")))
    })?;
    hosts.sh(
        "h1",
        &format!("rm -rf {CLIENT_DIR} && mkdir -p {CLIENT_DIR}"),
    )?;
    let out = format!("{CLIENT_DIR}:/out");
    let client = client_loop();
    hosts.docker(
        "h1",
        &[
            "run",
            "-d",
            "--name",
            "client",
            "--dns",
            RESOLVER,
            "-v",
            &out,
            image::REDIS,
            "sh",
            "-c",
            &client,
        ],
    )?;
    let start = hosts.uptime("h1")?;
    hosts.wait("answer from h2", || {
        Ok(first_answer(hosts, "h2", start)?.is_some())
    })?;
    let lookup = format!("nslookup {DB_NAME} {RESOLVER}");
    let frontend = hosts
        .docker("h1", &["exec", "client", "sh", "-c", &lookup])
        .unwrap_or_default();
    let times = phases(hosts, start)?;
    hosts.docker("h1", &["rm", "-f", "client"])?;
    Ok(summarize(&requests(hosts)?, &times, &frontend))
}

/// The move, then the hard failure, while the client runs.
fn phases(hosts: &Hosts, start: f64) -> Result<Times> {
    eprintln!("[seed] moving h2 -> h4 (behind the NAT): the database starts on h4");
    let h4_started = hosts.uptime("h1")?;
    hosts.docker("h4", &db_run_args("h4"))?;
    hosts.wait("answer from h4", || {
        Ok(first_answer(hosts, "h4", h4_started)?.is_some())
    })?;
    let h4_answered = first_answer(hosts, "h4", h4_started)?.context("h4 answered")?;
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("[seed] moving h2 -> h4: the database stops on h2");
    let h2_stopped = hosts.uptime("h1")?;
    hosts.docker("h2", &["stop", &db_name("h2")])?;
    std::thread::sleep(Duration::from_secs(3));

    eprintln!("[seed] hard failure: the database back on h2 beside h4");
    hosts.docker("h2", &["rm", "-f", &db_name("h2")])?;
    let h2_again = hosts.uptime("h1")?;
    hosts.docker("h2", &db_run_args("h2"))?;
    hosts.wait("answer from h2 again", || {
        Ok(first_answer(hosts, "h2", h2_again)?.is_some())
    })?;
    std::thread::sleep(Duration::from_secs(2));
    eprintln!("[seed] hard failure: h2's register and database killed (SIGKILL)");
    let killed = hosts.uptime("h1")?;
    hosts.docker("h2", &["kill", "ambassador-register", &db_name("h2")])?;
    std::thread::sleep(TTL + Duration::from_secs(5));
    Ok(Times {
        start,
        h4_started,
        h4_answered,
        h2_stopped,
        h2_again,
        killed,
    })
}

/// What the client's requests say about each phase; `lookup` is what `nslookup` printed.
fn summarize(all: &[Request], t: &Times, lookup: &str) -> Report {
    let before_kill: Vec<&Request> = all
        .iter()
        .filter(|r| r.at >= t.start && r.at < t.killed)
        .collect();
    let moving = || before_kill.iter().filter(|r| r.at < t.h2_again);
    let by = |host: &str| moving().filter(|r| r.answer.as_deref() == Ok(host)).count();
    let after: Vec<&Request> = all.iter().filter(|r| r.at >= t.killed).collect();
    let hard_failed: Vec<&&Request> = after.iter().filter(|r| r.answer.is_err()).collect();
    let last_h2 = moving()
        .filter(|r| r.answer.as_deref() == Ok("h2"))
        .map(|r| r.at)
        .fold(t.h2_stopped, f64::max);
    Report {
        graceful: (
            before_kill.len(),
            before_kill.iter().filter(|r| r.answer.is_err()).count(),
        ),
        answered: (by("h2"), by("h4")),
        takeover: t.h4_answered - t.h4_started,
        drain: last_h2 - t.h2_stopped,
        hard: (
            after.len(),
            hard_failed.len(),
            hard_failed.last().map_or(0.0, |r| r.at - t.killed),
        ),
        failures: before_kill
            .iter()
            .filter_map(|r| r.answer.clone().err().map(|e| (r.at - t.start, e)))
            .collect(),
        frontend: lookup
            .lines()
            .skip_while(|l| !l.contains(DB_NAME))
            .find_map(|l| l.strip_prefix("Address: "))
            .unwrap_or("-")
            .trim()
            .to_owned(),
    }
}

/// The report for people, and whether it passes: every request before the kill answered,
/// by h2 and then h4.
pub fn render(r: &Report, accel: &str) -> (String, bool) {
    let mut out = format!(
        "name: {DB_NAME} -> {}:{DB_FRONTEND_PORT} (asked for every request, from the client container's resolver: the responder on h1's docker0)\n",
        r.frontend
    );
    out.push_str(&format!(
        "move h2 -> h4 (behind the NAT), and h2 rejoining: {} requests through the frontend, {} failed ({} answered by h2, {} by h4 during the move)\n",
        r.graceful.0, r.graceful.1, r.answered.0, r.answered.1
    ));
    for (at, e) in &r.failures {
        out.push_str(&format!("  failed at {at:.1} s: {e}\n"));
    }
    out.push_str(&format!(
        "MOVE       NEW ANSWERS IN  OLD DRAINED IN\nh2 -> h4   {:>11.0} ms  {:>11.0} ms\n",
        r.takeover * 1000.0,
        r.drain * 1000.0
    ));
    out.push_str(&format!(
        "hard failure (h2's register and backend SIGKILLed): {} requests, {} failed{} while h2 stayed registered (lease TTL {} s)\n",
        r.hard.0,
        r.hard.1,
        if r.hard.1 > 0 { format!(" over {:.1} s", r.hard.2) } else { String::new() },
        TTL.as_secs()
    ));
    out.push_str(&format!(
        "timings under {accel}: an emulated VM is several times slower than a host\n"
    ));
    let pass = r.graceful.1 == 0 && r.answered.0 > 0 && r.answered.1 > 0;
    (out, pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_log_gives_each_request_its_time_and_answer() {
        let log = "12.50 h2\n12.75 Could not connect to Redis at db.ambassador.internal:6379: Connection refused \n13.00 h4\n13.10  \n13.2";
        let r = parse(log);
        assert_eq!(r.len(), 4, "the cut line is left out");
        assert_eq!(r[3].answer, Err("no answer within 5 s".to_owned()));
        assert!((r[0].at - 12.5).abs() < 1e-9);
        assert_eq!(r[0].answer.as_deref(), Ok("h2"));
        assert!(r[1]
            .answer
            .as_ref()
            .unwrap_err()
            .contains("Connection refused"));
        assert_eq!(r[2].answer.as_deref(), Ok("h4"));
    }

    #[test]
    fn each_request_is_counted_in_its_phase() {
        let t = Times {
            start: 10.0,
            h4_started: 20.0,
            h4_answered: 22.0,
            h2_stopped: 25.0,
            h2_again: 30.0,
            killed: 40.0,
        };
        let log = "9.0 h2\n11.0 h2\n21.0 h2\n22.0 h4\n26.0 h2\n27.0 h4\n31.0 h2\n35.0 refused\n41.0 refused\n43.0 h4\n";
        let lookup = "Server:\t\t172.17.0.1\nAddress:\t172.17.0.1:53\n\nName:\tdb.ambassador.internal\nAddress: 10.96.0.1\n";
        let r = summarize(&parse(log), &t, lookup);
        assert_eq!(
            r.graceful,
            (7, 1),
            "from the start to the kill; the one before is not"
        );
        assert_eq!(r.answered, (3, 2), "answers before h2 came back");
        assert!((r.takeover - 2.0).abs() < 1e-9);
        assert!(
            (r.drain - 1.0).abs() < 1e-9,
            "h2's last answer 1 s after its stop"
        );
        assert_eq!((r.hard.0, r.hard.1), (2, 1));
        assert!((r.hard.2 - 1.0).abs() < 1e-9);
        assert_eq!(r.failures, [(25.0, "refused".to_owned())]);
        assert_eq!(r.frontend, "10.96.0.1");
    }

    #[test]
    fn a_run_passes_only_when_nothing_failed_before_the_kill_and_both_hosts_answered() {
        let report = |failed, h2, h4| Report {
            graceful: (100, failed),
            answered: (h2, h4),
            takeover: 0.5,
            drain: 0.2,
            hard: (50, 3, 1.5),
            failures: Vec::new(),
            frontend: "10.96.0.1".into(),
        };
        assert!(render(&report(0, 40, 40), "TCG").1);
        assert!(!render(&report(1, 40, 40), "TCG").1);
        assert!(!render(&report(0, 0, 40), "TCG").1);
        assert!(!render(&report(0, 40, 0), "TCG").1);
        let (text, _) = render(&report(0, 40, 40), "TCG");
        assert!(text.contains("3 failed over 1.5 s"), "{text}");
    }
}
