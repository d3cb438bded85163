//! `cargo xtask run`: the seed experiment, live. Builds the four-host testbed, moves the
//! database h2 -> h3 -> h4 under a steady client load, kills h2 without cleanup, prints what
//! happened, and tears everything down (unless `--keep`).

use std::{
    io::{IsTerminal as _, Write as _},
    path::Path,
    process::Command,
    time::Duration,
};

use ambassador_tests::{
    require_root,
    scenario::{self, Progress},
    testbed,
};
use anyhow::{bail, Result};

/// Lease TTL of the testbed's registers: bounds the hard failure's window.
const TTL: u32 = 3;

fn show(p: &Progress) {
    let line = format!(
        "[{:>5.1} s] {:<52} serving: {:<8} {:>3} req/s  requests {:>5}  failed {:>2}  long-lived: {}",
        p.elapsed.as_secs_f64(),
        p.phase,
        p.serving.join(","),
        p.rate,
        p.requests,
        p.failed,
        p.long.as_deref().unwrap_or("reconnecting")
    );
    if std::io::stdout().is_terminal() {
        print!("\r{line}\x1b[K");
        let _ = std::io::stdout().flush();
    } else {
        println!("{line}");
    }
}

/// Which etcd identity each host used, as its register's log confirms.
fn identities(tb: &testbed::Testbed) -> Result<String> {
    let mut out = String::from(
        "etcd identities (authentication on, trust mode hosts; set up by `ambassador auth`):\n",
    );
    for (host, run, register) in tb.identities() {
        let log = Command::new("/usr/bin/docker")
            .args(["-H", &tb.socket(host), "logs", "ambassador-register"])
            .output()?;
        let own = format!("/ambassador/v1/hosts/{host}/");
        let confined = String::from_utf8_lossy(&log.stderr)
            .lines()
            .any(|l| l.contains("trust=hosts") && l.contains(&own));
        if !confined {
            bail!("{host}'s register does not say it writes under {own} in trust mode hosts");
        }
        out.push_str(&format!(
            "  {host}: run as {run} (reads only); register as {register} (writes only {own})\n"
        ));
    }
    Ok(out)
}

pub fn run(bin: &Path, prefix: &str, keep: bool) -> Result<()> {
    if !require_root("cargo xtask run") {
        bail!("the demo needs root: it builds network namespaces, runs dockerd and loads eBPF programs");
    }
    println!("ambassador: the seed experiment (a database moves between hosts and clouds; the client never notices)\n");
    let tb = testbed::up(prefix, bin, TTL, &|m| println!("  {m}"));
    print!("\n{}", testbed::status(prefix));
    println!("\nclient container on h1 -> {} (an allocated frontend) -> db on h2, then h3, then h4 (behind NAT, advertised as 10.210.1.254)\n", testbed::DB_NAME);
    let report = scenario::run(&tb, bin, &show);
    if std::io::stdout().is_terminal() {
        println!();
    }
    println!("\n`ambassador status` on h1:");
    let st = Command::new(bin)
        .args(["status", "--pin-path", tb.pin("h1").to_str().unwrap()])
        .output()?;
    print!("{}", String::from_utf8_lossy(&st.stdout));
    println!("\n{}", scenario::render(&report));
    println!("{}", identities(&tb)?);
    if report.failed > 0 || report.rejoin_failed > 0 {
        for h in ["h2", "h3"] {
            let log = Command::new("/usr/bin/docker")
                .args(["-H", &tb.socket(h), "logs", "ambassador-register"])
                .output()?;
            let text = String::from_utf8_lossy(&log.stderr);
            let relevant: Vec<&str> = text.lines().filter(|l| !l.contains("exec_")).collect();
            println!(
                "---- {h} register log (last 40 lines) ----\n{}",
                relevant[relevant.len().saturating_sub(40)..].join("\n")
            );
        }
    }
    if keep {
        println!("the testbed stays up: `cargo xtask testbed status`, `{} status --pin-path {}`, then `cargo xtask testbed down`", bin.display(), tb.pin("h1").display());
    } else {
        testbed::down(prefix);
        println!("testbed removed");
    }
    let bound = Duration::from_secs(TTL as u64 + 2);
    if report.failed > 0 || report.rejoin_failed > 0 || report.hard.window > bound {
        bail!(
            "targets missed: {} failed requests during the graceful moves and {} while h2 rejoined (target 0 each); hard-failure window {:.1} s (bound {:.0} s)",
            report.failed,
            report.rejoin_failed,
            report.hard.window.as_secs_f64(),
            bound.as_secs_f64()
        );
    }
    println!(
        "targets met: 0 failed requests across both moves and h2's rejoining; the hard failure failed {} (the datapath leaves a dead backend at its first refusal), and any failure stayed within the lease TTL + 2 s",
        report.hard.failed
    );
    Ok(())
}
