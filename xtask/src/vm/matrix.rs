//! The kernel matrix: the tests that show each datapath loads and forwards, run inside VMs on
//! every kernel the image has (Debian's 5.10, 6.1 and 6.12), so a change an older verifier
//! refuses fails here. The test binaries and `ambassador` are the ones just built on this
//! machine, shared read-only with each VM at the same path (their compiled-in paths hold).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use ambassador_tests::{NO_SKIP_ENV, SLOWDOWN_ENV};
use anyhow::{bail, Context as _, Result};

use super::{
    image::Image,
    qemu::{Accel, Finished, Share, Vm},
    rows::{runs_on, Row, ROWS},
};

/// Longest a kernel's whole run may take (boot, every test, power-off) under emulation.
const TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How much of a kernel's failed tests' output `check` prints to the log.
const FAILURE_LINES: usize = 300;

/// Which part of the matrix to run: every row on every kernel once by default (as `cargo
/// xtask test` does); a developer chasing a flake narrows it to one kernel and one test and
/// repeats it (`cargo xtask kernels --only matrix --kernel 6.1 --test NAME --repeat 20`).
#[derive(Clone, Debug, clap::Args)]
pub struct Selection {
    /// Only the kernels whose version starts with this (`6.1` is 6.1.x, not 6.12).
    #[arg(long)]
    pub kernel: Option<String>,
    /// Only this test (a name of the matrix's table).
    #[arg(long)]
    pub test: Option<String>,
    /// Run each selected test this many times in a row in its VM.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub repeat: u32,
}

impl Default for Selection {
    fn default() -> Self {
        Self {
            kernel: None,
            test: None,
            repeat: 1,
        }
    }
}

impl Selection {
    /// The selected kernels of `all`; an error names the choices when none is selected.
    pub fn kernels<'a>(&self, all: &'a [String]) -> Result<Vec<&'a String>> {
        let chosen: Vec<&String> = all
            .iter()
            .filter(|k| {
                self.kernel
                    .as_ref()
                    .is_none_or(|want| same_version(k, want))
            })
            .collect();
        if chosen.is_empty() {
            bail!(
                "no kernel {:?} in the image (it has {})",
                self.kernel,
                all.join(", ")
            );
        }
        Ok(chosen)
    }

    /// The rows that run on `kernel`.
    fn rows<'a>(&'a self, kernel: &'a str) -> impl Iterator<Item = &'static Row> + 'a {
        ROWS.iter()
            .filter(move |r| runs_on(r, kernel) && self.test.as_ref().is_none_or(|t| r.test == t))
    }

    /// Fails when `--test` names no row of the matrix.
    pub fn check(&self) -> Result<()> {
        match &self.test {
            Some(t) if !ROWS.iter().any(|r| r.test == t) => bail!(
                "{t} is not a test of the kernel matrix (its tests: {})",
                ROWS.iter().map(|r| r.test).collect::<Vec<_>>().join(", ")
            ),
            _ => Ok(()),
        }
    }
}

/// Whether Debian's kernel `kernel` (`6.1.0-50-amd64`) is the version `want` (`6.1`, `6.1.0`):
/// the whole dotted components, so `6.1` is not `6.12`.
fn same_version(kernel: &str, want: &str) -> bool {
    kernel
        .strip_prefix(want)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '-', '+']))
}

/// The job a VM runs: mount the build, then each test binary with its tests of the matrix.
fn script(
    target: &Path,
    exes: &BTreeMap<String, PathBuf>,
    kernel: &str,
    accel: &Accel,
    sel: &Selection,
) -> Result<String> {
    let t = target.display();
    // Emulation runs these tests several times slower than a host: the waits are stretched.
    let slowdown = match accel {
        Accel::Kvm => 1,
        Accel::Tcg(_) => 5,
    };
    let mut s = format!(
        "set -u\n{}\n\
         export {NO_SKIP_ENV}=1 {SLOWDOWN_ENV}={slowdown} RUST_BACKTRACE=1 AMBASSADOR_BIN='{t}/debug/ambassador'\n\
         echo \"kernel $(uname -r)\"\ncd /tmp\nrc=0\n",
        Share::build(target).mount_command()
    );
    let mut by_binary: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for row in sel.rows(kernel) {
        by_binary.entry(row.binary).or_default().push(row.test);
    }
    if sel.repeat > 1 {
        writeln!(s, "for run in $(seq {}); do", sel.repeat)?;
    }
    for (binary, tests) in by_binary {
        let exe = exes
            .get(binary)
            .with_context(|| format!("no test binary {binary} was built"))?;
        writeln!(
            s,
            "'{}' --exact --test-threads=1 {} || rc=1",
            exe.display(),
            tests.join(" ")
        )?;
    }
    if sel.repeat > 1 {
        s.push_str("done\n");
    }
    s.push_str("exit $rc\n");
    Ok(s)
}

/// One kernel's outcome.
pub struct KernelRun {
    /// The kernel.
    pub kernel: String,
    /// The job's result, or why it never finished.
    pub finished: Result<Finished>,
}

impl KernelRun {
    /// What libtest said of `test` over its runs: `ok` when it passed every time (`ok (20 of
    /// 20)` when repeated), `FAILED (k of n)` when it failed any, `None` when it never reported.
    fn verdict(&self, test: &str) -> Option<String> {
        let out = &self.finished.as_ref().ok()?.output;
        let prefix = format!("test {test} ... ");
        let said: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(str::trim)
            .collect();
        let ok = said.iter().filter(|v| **v == "ok").count();
        Some(match (said.len(), ok) {
            (0, _) => return None,
            (1, 1) => "ok".to_owned(),
            (n, ok) if ok == n => format!("ok ({n} of {n})"),
            (1, _) => said[0].to_owned(),
            (n, ok) => format!("FAILED ({} of {n})", n - ok),
        })
    }

    /// libtest's account of the failures (each failed test's output, from its `failures:`
    /// section), at most `max_lines` lines of it; empty when nothing failed.
    fn failures(&self, max_lines: usize) -> String {
        let Ok(f) = &self.finished else {
            return String::new();
        };
        let mut out = Vec::new();
        let mut inside = false;
        for l in f.output.lines() {
            if l == "failures:" {
                inside = true;
            } else if l.starts_with("test result: ") {
                inside = false;
            }
            if inside && out.len() < max_lines {
                out.push(l);
            }
        }
        out.join("\n")
    }
}

/// Runs the selected part of the matrix on the selected kernels of `image`, at most
/// `parallel` VMs at once.
pub fn run(
    image: &Image,
    accel: &Accel,
    target: &Path,
    exes: &BTreeMap<String, PathBuf>,
    parallel: usize,
    sel: &Selection,
) -> Result<Vec<KernelRun>> {
    sel.check()?;
    let jobs = &target.join("vm/kernels");
    let mut runs = Vec::new();
    for wave in sel.kernels(image.kernels())?.chunks(parallel.max(1)) {
        let wave_runs = std::thread::scope(|scope| {
            let handles: Vec<_> = wave
                .iter()
                .map(|kernel| {
                    scope.spawn(move || KernelRun {
                        kernel: (*kernel).clone(),
                        finished: one(image, accel, target, exes, jobs, kernel, sel),
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a VM thread panicked"))
                .collect::<Vec<_>>()
        });
        runs.extend(wave_runs);
    }
    Ok(runs)
}

fn one(
    image: &Image,
    accel: &Accel,
    target: &Path,
    exes: &BTreeMap<String, PathBuf>,
    jobs: &Path,
    kernel: &str,
    sel: &Selection,
) -> Result<Finished> {
    let job = jobs.join(kernel);
    std::fs::create_dir_all(&job)?;
    std::fs::write(
        job.join("run.sh"),
        script(target, exes, kernel, accel, sel)?,
    )?;
    eprintln!("[xtask] kernel {kernel}: booting");
    let finished =
        Vm::boot(image, kernel, accel, &job, &[Share::build(target)], &[])?.wait(TIMEOUT)?;
    eprintln!(
        "[xtask] kernel {kernel}: done in {:.0} s (exit {})",
        finished.took.as_secs_f64(),
        finished.rc
    );
    Ok(finished)
}

/// The matrix as a Markdown table: a row per selected test, a column per kernel.
pub fn report(runs: &[KernelRun], accel: &Accel, sel: &Selection) -> String {
    let mut s = format!("Kernel matrix, VMs under {}\n\n", accel.describe());
    let _ = write!(s, "| datapath | what | test |");
    for r in runs {
        let _ = write!(s, " {} |", r.kernel);
    }
    s.push_str("\n|---|---|---|");
    s.push_str(&"---|".repeat(runs.len()));
    s.push('\n');
    for row in ROWS
        .iter()
        .filter(|r| sel.test.as_ref().is_none_or(|t| r.test == t))
    {
        let _ = write!(s, "| {} | {} | `{}` |", row.datapath, row.what, row.test);
        for r in runs {
            let cell = match (runs_on(row, &r.kernel), r.verdict(row.test)) {
                (false, _) => {
                    let (a, b) = row.needs.unwrap_or_default();
                    format!("not run (needs {a}.{b})")
                }
                (true, Some(v)) => v,
                (true, None) => "did not run".to_owned(),
            };
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    let _ = write!(s, "| | boot, tests, power-off | |");
    for r in runs {
        let cell = match &r.finished {
            Ok(f) => format!("{:.0} s", f.took.as_secs_f64()),
            Err(e) => format!("failed: {e:#}"),
        };
        let _ = write!(s, " {cell} |");
    }
    s.push('\n');
    s
}

/// Fails unless every selected test ran and passed, every time, on every kernel it runs on;
/// the failed tests' own output is printed first (CI's log is often all there is to read).
pub fn check(runs: &[KernelRun], sel: &Selection) -> Result<()> {
    let mut bad = Vec::new();
    for r in runs {
        match &r.finished {
            Err(e) => bad.push(format!("{}: {e:#}", r.kernel)),
            Ok(f) => {
                for row in sel.rows(&r.kernel) {
                    if !r.verdict(row.test).is_some_and(|v| v.starts_with("ok")) {
                        bad.push(format!("{}: {} did not pass", r.kernel, row.test));
                    }
                }
                let failures = r.failures(FAILURE_LINES);
                if !failures.is_empty() {
                    eprintln!("[xtask] kernel {}: what failed\n{failures}", r.kernel);
                }
                if f.rc != 0 && bad.is_empty() {
                    bad.push(format!("{}: the job exited {}", r.kernel, f.rc));
                }
            }
        }
    }
    if !bad.is_empty() {
        bail!(
            "kernel matrix: {} (outputs under target/vm/kernels/)",
            bad.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test binary under `/t` for every file the rows name.
    fn exes() -> BTreeMap<String, PathBuf> {
        ROWS.iter()
            .map(|r| {
                let b = r.binary;
                (b.to_owned(), PathBuf::from(format!("/t/debug/deps/{b}-0")))
            })
            .collect()
    }

    #[test]
    fn the_job_runs_each_binary_once_with_its_rows_and_stretches_waits_under_emulation() {
        let exes = exes();
        let tcg = Accel::Tcg("test".into());
        let all = Selection::default();
        let old = script(Path::new("/t"), &exes, "5.10.0-32-amd64", &tcg, &all).unwrap();
        assert!(old.contains("AMBASSADOR_TEST_SLOWDOWN=5"), "{old}");
        assert!(
            old.contains(
                "mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro target '/t'"
            ),
            "{old}"
        );
        assert_eq!(old.matches("/t/debug/deps/sock-0").count(), 1, "{old}");
        assert!(old.contains("sock_is_refused_by_version_where_the_kernel_lacks_its_hooks"));
        assert!(!old.contains("sock_real_clients"), "{old}");
        let new = script(
            Path::new("/t"),
            &exes,
            "6.12.95+deb12-amd64",
            &Accel::Kvm,
            &all,
        )
        .unwrap();
        assert!(new.contains("AMBASSADOR_TEST_SLOWDOWN=1"), "{new}");
        assert!(ROWS.iter().all(|r| new.contains(r.test)), "{new}");
        assert!(script(
            Path::new("/t"),
            &BTreeMap::new(),
            "6.1.0-50-amd64",
            &tcg,
            &all
        )
        .is_err());
    }

    #[test]
    fn a_selection_runs_one_test_on_one_kernel_as_many_times_as_asked() {
        let exes = exes();
        let test = "sock_real_clients_reach_frontends_see_the_vip_and_weights_spread";
        let sel = Selection {
            kernel: Some("6.1".into()),
            test: Some(test.into()),
            repeat: 20,
        };
        let kernels =
            ["5.10.0-32-amd64", "6.1.0-50-amd64", "6.12.95+deb12-amd64"].map(String::from);
        assert_eq!(sel.kernels(&kernels).unwrap(), [&kernels[1]]);
        let s = script(Path::new("/t"), &exes, &kernels[1], &Accel::Kvm, &sel).unwrap();
        assert!(s.contains("for run in $(seq 20); do\n"), "{s}");
        assert_eq!(s.matches("/t/debug/deps/").count(), 1, "{s}");
        assert!(
            s.contains(&format!("--test-threads=1 {test} || rc=1")),
            "{s}"
        );
        assert!(sel.check().is_ok());
        let wrong = Selection {
            kernel: Some("4.19".into()),
            test: Some("no_such_test".into()),
            repeat: 1,
        };
        assert!(wrong.check().is_err());
        assert!(wrong.kernels(&kernels).is_err());
    }

    #[test]
    fn a_repeated_test_passes_only_when_every_run_did_and_its_failures_are_kept() {
        let run = |output: &str| KernelRun {
            kernel: "6.1.0-50-amd64".into(),
            finished: Ok(Finished {
                rc: 0,
                output: output.into(),
                took: Duration::from_secs(1),
            }),
        };
        assert_eq!(run("test a ... ok\n").verdict("a").as_deref(), Some("ok"));
        assert_eq!(run("test a ... ok\n").verdict("b"), None);
        let three = "test a ... ok\ntest a ... ok\ntest a ... ok\n";
        assert_eq!(run(three).verdict("a").as_deref(), Some("ok (3 of 3)"));
        let failed = "test a ... ok\ntest a ... FAILED\n\nfailures:\n\n---- a stdout ----\n\
                      weights 3:1 gave 260:140\n\nfailures:\n    a\n\ntest result: FAILED.\n\
                      test a ... ok\n";
        let r = run(failed);
        assert_eq!(r.verdict("a").as_deref(), Some("FAILED (1 of 3)"));
        assert!(r.failures(100).contains("weights 3:1 gave 260:140"));
        assert!(!r.failures(100).contains("test result"));
        assert_eq!(r.failures(3).lines().count(), 3);
        assert_eq!(run(three).failures(100), "");
        let sel = Selection::default();
        assert!(check(&[r], &sel).is_err());
        let one_row = Selection {
            test: Some(ROWS[0].test.into()),
            ..sel
        };
        assert!(check(&[run(three)], &one_row).is_err(), "never reported");
        let passed = format!("test {0} ... ok\ntest {0} ... ok\n", ROWS[0].test);
        assert!(check(&[run(&passed)], &one_row).is_ok());
    }

    #[test]
    fn a_kernel_version_matches_whole_components() {
        assert!(same_version("6.1.0-50-amd64", "6.1"));
        assert!(same_version("6.1.0-50-amd64", "6.1.0-50-amd64"));
        assert!(!same_version("6.12.95+deb12-amd64", "6.1"));
        assert!(same_version("6.12.95+deb12-amd64", "6.12"));
    }
}
