//! Files and processes the tests start, each removed or ended on drop.

use super::*;

/// A temporary file, removed on drop.
pub struct TempFile {
    /// Its path.
    pub path: PathBuf,
}

impl TempFile {
    /// Creates it with `contents`.
    pub fn new(contents: &str) -> Self {
        let path = std::env::temp_dir().join(unique("ambassador-test-"));
        std::fs::write(&path, contents).unwrap();
        Self { path }
    }

    /// Replaces its contents (atomically, as an editor or config manager would).
    pub fn write(&self, contents: &str) {
        let tmp = self.path.with_extension("new");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    /// Its path as a string.
    pub fn as_str(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A process started inside a namespace (by nsenter), killed on drop. Its output goes to a
/// log file, printed when the test fails.
pub struct Proc {
    child: Child,
    log: PathBuf,
    what: String,
}

impl Proc {
    /// Starts `program ARGS` in the namespace named `ns`.
    pub fn spawn(ns: &str, what: &str, program: &Path, args: &[String]) -> Self {
        Self::spawn_env(ns, what, program, args, &[])
    }

    /// Like [`Proc::spawn`], with extra environment variables.
    pub fn spawn_env(
        ns: &str,
        what: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .arg(program)
            .args(args)
            .env("AMBASSADOR_LOG", "debug")
            .envs(envs.iter().copied());
        Self::start(what, cmd)
    }

    /// Starts `cmd` with its output going to a log file (read with [`Proc::log`]).
    pub fn start(what: &str, mut cmd: Command) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", unique(&format!("{what}-"))));
        let file = File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        Self {
            child,
            log,
            what: what.to_owned(),
        }
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself; its exit code, or None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM, then SIGKILL after `grace`; returns the exit code if it exited by itself.
    pub fn stop(&mut self, grace: Duration) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let code = self.wait_exit(grace);
        if code.is_none() {
            self.kill();
        }
        code
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}\n---- end ----", self.what, self.log());
        }
        if self.running() {
            self.stop(Duration::from_secs(3));
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
