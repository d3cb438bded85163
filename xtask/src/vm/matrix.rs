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
};

/// One test of the matrix.
struct Row {
    /// What it shows, for the report.
    what: &'static str,
    /// The datapath it exercises.
    datapath: &'static str,
    /// Its test binary (a file of `tests/tests/`).
    binary: &'static str,
    /// Its name.
    test: &'static str,
    /// The oldest kernel it can run on, when that is newer than the project's minimum (5.10).
    /// The socket datapath needs 5.18 (`loader::check_sock_kernel`); on older kernels the
    /// matrix runs the test that shows it is refused with that version instead.
    needs: Option<(u32, u32)>,
}

const SOCK: Option<(u32, u32)> = Some((5, 18));

const ROWS: &[Row] = &[
    Row {
        what: "fixture table (BPF_PROG_TEST_RUN), every TC and sock program",
        datapath: "tc",
        binary: "datapath",
        test: "programs_handle_the_fixture_table",
        needs: None,
    },
    Row {
        what: "fixture table (BPF_PROG_TEST_RUN)",
        datapath: "xdp",
        binary: "datapath",
        test: "the_xdp_program_handles_the_fixture_table",
        needs: None,
    },
    Row {
        what: "monitor: flow events only while one listens, a full ring's losses counted",
        datapath: "tc",
        binary: "datapath",
        test:
            "flow_events_are_written_only_while_a_monitor_listens_and_a_full_ring_counts_its_losses",
        needs: None,
    },
    Row {
        what: "IPv6 both ways, checksums (BPF_PROG_TEST_RUN)",
        datapath: "tc",
        binary: "datapath",
        test: "ipv6_packets_are_translated_both_ways_with_valid_checksums",
        needs: None,
    },
    Row {
        what: "TCP and UDP through a frontend, reverse NAT",
        datapath: "tc",
        binary: "netns",
        test: "tcp_and_udp_spread_over_backends_with_valid_checksums_and_exact_counters",
        needs: None,
    },
    Row {
        what: "clsact attachment",
        datapath: "tc",
        binary: "netns",
        test: "clsact_attachment_forwards_like_tcx",
        needs: None,
    },
    Row {
        what: "IPv6 TCP and UDP through a frontend",
        datapath: "tc",
        binary: "netns",
        test: "ipv6_tcp_and_udp_spread_over_backends_with_valid_checksums",
        needs: None,
    },
    Row {
        what: "failover: a backend's process died",
        datapath: "tc",
        binary: "failover",
        test: "a_backend_whose_process_died_is_left_with_no_failed_connection",
        needs: None,
    },
    Row {
        what: "failover: ICMPv6 unreachable",
        datapath: "tc",
        binary: "failover",
        test: "an_ipv6_backend_answering_icmpv6_unreachable_is_left_with_no_failed_connection",
        needs: None,
    },
    Row {
        what: "TCP and UDP forwarded before the stack",
        datapath: "xdp",
        binary: "xdp",
        test: "xdp_gateway_translates_and_forwards_tcp_and_udp_before_the_stack",
        needs: None,
    },
    Row {
        what: "IPv6 forwarded before the stack",
        datapath: "xdp",
        binary: "xdp",
        test: "xdp_gateway_forwards_ipv6_before_the_stack",
        needs: None,
    },
    Row {
        what: "refused with the version it needs, or starts",
        datapath: "sock",
        binary: "sock",
        test: "sock_is_refused_by_version_where_the_kernel_lacks_its_hooks",
        needs: None,
    },
    Row {
        what: "real clients (curl, redis-cli), TCP and UDP, weights",
        datapath: "sock",
        binary: "sock",
        test: "sock_real_clients_reach_frontends_see_the_vip_and_weights_spread",
        needs: SOCK,
    },
    Row {
        what: "IPv6 sockets, IPv4-mapped addresses",
        datapath: "sock",
        binary: "sock",
        test: "sock_ipv6_sockets_and_ipv4_mapped_addresses_are_translated",
        needs: SOCK,
    },
    Row {
        what: "failover: a backend TC found dead",
        datapath: "sock",
        binary: "failover",
        test: "the_sock_datapath_avoids_a_backend_tc_found_dead",
        needs: SOCK,
    },
];

/// Longest a kernel's whole run may take (boot, every test, power-off) under emulation.
const TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// `5.10.0-32-amd64` -> (5, 10).
fn version(kernel: &str) -> Option<(u32, u32)> {
    let mut parts = kernel.split(['.', '-', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn runs_on(row: &Row, kernel: &str) -> bool {
    match (row.needs, version(kernel)) {
        (None, _) => true,
        (Some(needs), Some(v)) => v >= needs,
        (Some(_), None) => true,
    }
}

/// The job a VM runs: mount the build, then each test binary with its tests of the matrix.
fn script(
    target: &Path,
    exes: &BTreeMap<String, PathBuf>,
    kernel: &str,
    accel: &Accel,
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
    for row in ROWS.iter().filter(|r| runs_on(r, kernel)) {
        by_binary.entry(row.binary).or_default().push(row.test);
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
    /// What libtest said of `test`: `ok`, `FAILED`, or `None` when it did not report it.
    fn verdict(&self, test: &str) -> Option<&str> {
        let out = &self.finished.as_ref().ok()?.output;
        let prefix = format!("test {test} ... ");
        out.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::trim)
    }
}

/// Runs the matrix on every kernel of `image`, at most `parallel` VMs at once.
pub fn run(
    image: &Image,
    accel: &Accel,
    target: &Path,
    exes: &BTreeMap<String, PathBuf>,
    parallel: usize,
) -> Result<Vec<KernelRun>> {
    let jobs = &target.join("vm/kernels");
    let mut runs = Vec::new();
    for wave in image.kernels().chunks(parallel.max(1)) {
        let wave_runs = std::thread::scope(|scope| {
            let handles: Vec<_> = wave
                .iter()
                .map(|kernel| {
                    scope.spawn(move || KernelRun {
                        kernel: kernel.clone(),
                        finished: one(image, accel, target, exes, jobs, kernel),
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
) -> Result<Finished> {
    let job = jobs.join(kernel);
    std::fs::create_dir_all(&job)?;
    std::fs::write(job.join("run.sh"), script(target, exes, kernel, accel)?)?;
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

/// The matrix as a Markdown table: a row per test, a column per kernel.
pub fn report(runs: &[KernelRun], accel: &Accel) -> String {
    let mut s = format!("Kernel matrix, VMs under {}\n\n", accel.describe());
    let _ = write!(s, "| datapath | what | test |");
    for r in runs {
        let _ = write!(s, " {} |", r.kernel);
    }
    s.push_str("\n|---|---|---|");
    s.push_str(&"---|".repeat(runs.len()));
    s.push('\n');
    for row in ROWS {
        let _ = write!(s, "| {} | {} | `{}` |", row.datapath, row.what, row.test);
        for r in runs {
            let cell = match (runs_on(row, &r.kernel), r.verdict(row.test)) {
                (false, _) => {
                    let (a, b) = row.needs.unwrap_or_default();
                    format!("not run (needs {a}.{b})")
                }
                (true, Some(v)) => v.to_owned(),
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

/// Fails unless every test of the matrix ran and passed on every kernel it runs on.
pub fn check(runs: &[KernelRun]) -> Result<()> {
    let mut bad = Vec::new();
    for r in runs {
        match &r.finished {
            Err(e) => bad.push(format!("{}: {e:#}", r.kernel)),
            Ok(f) => {
                for row in ROWS.iter().filter(|row| runs_on(row, &r.kernel)) {
                    if r.verdict(row.test) != Some("ok") {
                        bad.push(format!("{}: {} did not pass", r.kernel, row.test));
                    }
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

    #[test]
    fn versions_are_read_from_debian_kernel_names() {
        assert_eq!(version("5.10.0-32-amd64"), Some((5, 10)));
        assert_eq!(version("6.12.95+deb12-amd64"), Some((6, 12)));
        assert_eq!(version("6.1.0-50-amd64"), Some((6, 1)));
        assert_eq!(version("amd64"), None);
    }

    #[test]
    fn the_job_runs_each_binary_once_with_its_rows_and_stretches_waits_under_emulation() {
        let exes: BTreeMap<String, PathBuf> = ["datapath", "netns", "failover", "xdp", "sock"]
            .map(|b| (b.to_owned(), PathBuf::from(format!("/t/debug/deps/{b}-0"))))
            .into_iter()
            .collect();
        let tcg = Accel::Tcg("test".into());
        let old = script(Path::new("/t"), &exes, "5.10.0-32-amd64", &tcg).unwrap();
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
        let new = script(Path::new("/t"), &exes, "6.12.95+deb12-amd64", &Accel::Kvm).unwrap();
        assert!(new.contains("AMBASSADOR_TEST_SLOWDOWN=1"), "{new}");
        assert!(ROWS.iter().all(|r| new.contains(r.test)), "{new}");
        assert!(script(Path::new("/t"), &BTreeMap::new(), "6.1.0-50-amd64", &tcg).is_err());
    }

    /// A renamed test would only show as "did not run" after minutes of VMs: caught here.
    #[test]
    fn every_row_names_a_test_of_its_binary() {
        for row in ROWS {
            let file = crate::root().join(format!("tests/tests/{}.rs", row.binary));
            let source = std::fs::read_to_string(&file).unwrap();
            assert!(
                source.contains(&format!("fn {}()", row.test)),
                "{} has no test {}",
                file.display(),
                row.test
            );
        }
    }

    #[test]
    fn the_socket_rows_run_only_where_the_kernel_has_its_hooks() {
        let sock_rows = |k: &str| {
            ROWS.iter()
                .filter(|r| r.datapath == "sock" && runs_on(r, k))
                .count()
        };
        assert_eq!(sock_rows("5.10.0-32-amd64"), 1, "only the refusal");
        assert_eq!(sock_rows("6.1.0-50-amd64"), 4);
        assert!(ROWS.iter().all(|r| runs_on(r, "6.12.95+deb12-amd64")));
    }
}
