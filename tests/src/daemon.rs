//! The daemon under test (`ambassador run`, or `register`) in a namespace, and what the tests
//! ask of it.

use super::*;

/// A running `ambassador` (run or register), stopped (SIGTERM, then SIGKILL) on drop. Its log
/// is printed when the test fails.
pub struct Daemon {
    proc: Proc,
}

impl Daemon {
    /// Starts `ambassador ARGS` inside `ns` (by nsenter: `ip netns exec` would hide bpffs).
    pub fn start(ns: &NetNs, args: &[&str]) -> Self {
        Self::start_env(ns, args, &[])
    }

    /// `ambassador run --iface IFACE --config CONFIG --pin-path PIN EXTRA...` inside `ns`
    /// (not waited for: call [`Daemon::wait_ready`] or [`Daemon::wait_exit`]).
    pub fn run_file(ns: &NetNs, iface: &str, config: &str, pin: &Path, extra: &[&str]) -> Self {
        Self::run_from(ns, iface, ["--config", config], pin, extra)
    }

    /// `ambassador run --iface IFACE --etcd URLS --pin-path PIN EXTRA...` inside `ns` (not
    /// waited for, like [`Daemon::run_file`]).
    pub fn run_etcd(ns: &NetNs, iface: &str, urls: &str, pin: &Path, extra: &[&str]) -> Self {
        Self::run_from(ns, iface, ["--etcd", urls], pin, extra)
    }

    fn run_from(ns: &NetNs, iface: &str, source: [&str; 2], pin: &Path, extra: &[&str]) -> Self {
        let mut args = Self::run_args(iface, source, pin);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start(ns, &args)
    }

    /// The arguments of [`Daemon::run_file`] without the extras, for running the binary some
    /// other way (another path, under setpriv).
    pub fn run_file_args(iface: &str, config: &str, pin: &Path) -> Vec<String> {
        Self::run_args(iface, ["--config", config], pin)
    }

    /// `run --iface IFACE SOURCE --pin-path PIN`, SOURCE being `--config FILE` or `--etcd URLS`.
    fn run_args(iface: &str, source: [&str; 2], pin: &Path) -> Vec<String> {
        let pin = pin.to_str().expect("UTF-8 pin path");
        [
            "run",
            "--iface",
            iface,
            source[0],
            source[1],
            "--pin-path",
            pin,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Like [`Daemon::start`], with extra environment variables.
    pub fn start_env(ns: &NetNs, args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_bin(ns, &ambassador_bin(), args, envs)
    }

    /// Like [`Daemon::start_env`], running the binary at `bin` (an upgrade, say).
    pub fn start_bin(ns: &NetNs, bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Self {
            proc: Proc::spawn_env(&ns.name, "ambassador", bin, &args, envs),
        }
    }

    /// The gateway's daemon (`c0`, plus `extra` flags) with one service, `web` at `vip` over
    /// `b1` and `b2`, ready; with its pin directory and configuration file, which outlive it.
    pub fn run_web(
        topo: &Topology,
        vip: &str,
        b1: &str,
        b2: &str,
        extra: &[&str],
    ) -> (PinDir, TempFile, Daemon) {
        let pin = PinDir::new();
        let cfg = TempFile::new(&format!(
            "[[service]]\nname = \"web\"\nfrontend = \"{vip}\"\nendpoints = [\"{b1}\", \"{b2}\"]\n",
        ));
        let mut d = Self::run_file(&topo.fwd, "c0", cfg.as_str(), &pin.path, extra);
        d.wait_ready();
        (pin, cfg, d)
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Waits until the process logs `ready`; panics with its log if it exits or times out.
    pub fn wait_ready(&mut self) {
        self.wait_log(" ready ", Duration::from_secs(10));
    }

    /// Waits until the log contains `needle`; panics with the log if it exits or times out.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let ok = wait_until(timeout, || {
            assert!(self.proc.running(), "ambassador exited:\n{}", self.log());
            self.log().contains(needle)
        });
        assert!(
            ok,
            "no {needle:?} in the log after {timeout:?}:\n{}",
            self.log()
        );
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        self.proc.signal(sig);
    }

    /// Waits for the process to exit by itself and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.proc.wait_exit(timeout)
    }

    /// Its pid (nsenter and setpriv exec, so this is ambassador's own).
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}
