//! Taking a testbed down: its engines, whatever runs in its namespaces, its mounts,
//! namespaces, cgroups, pinned maps and files, found by its prefix even after a crash.

use std::{path::Path, process::Command, time::Duration};

use super::{Testbed, DOCKER, HOSTS};
use crate::wait_until;

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Removes `host`'s containers and stops its dockerd (by the pid in its pidfile).
fn stop_dockerd(tb: &Testbed, host: &str) {
    let dir = tb.dir().join(host);
    let Some(pid) = read_pid(&dir.join("docker.pid")).filter(|p| pid_alive(*p)) else {
        return;
    };
    let ids = Command::new(DOCKER)
        .args(["-H", &tb.socket(host), "ps", "-aq"])
        .output();
    if let Ok(out) = ids {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new(DOCKER)
                .args(["-H", &tb.socket(host), "rm", "-f"])
                .args(&ids)
                .output();
        }
    }
    // SAFETY: a dockerd this testbed started (its pidfile).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    if !wait_until(Duration::from_secs(15), || !pid_alive(pid)) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Removes everything of the testbed named `prefix`: containers, dockerds, processes left in
/// its namespaces, mounts, namespaces, pinned maps and files. Idempotent; works after a crash.
pub fn down(prefix: &str) {
    let tb = Testbed {
        prefix: prefix.to_owned(),
        ttl: 0,
    };
    // The engines stop in parallel: each takes a few seconds.
    std::thread::scope(|scope| {
        for h in HOSTS {
            let tb = &tb;
            scope.spawn(move || stop_dockerd(tb, h.name));
        }
    });
    // Whatever still runs inside the testbed's namespaces was started by it (a crashed dockerd's
    // containerd and shims, containers with host networking).
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let ours: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect();
    for ns in &ours {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: a process inside this testbed's own namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    // Mounts left under the testbed's directory (overlay layers, netns bind mounts), deepest first.
    let dir = tb.dir();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut ours_m: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| Path::new(m).starts_with(&dir))
        .collect();
    ours_m.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in ours_m {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
    for ns in &ours {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    let _ = std::fs::remove_dir_all(&dir);
    // The hosts' cgroups (their processes were killed with the namespaces').
    if let Some(root) = crate::cgroup2_root() {
        for h in HOSTS {
            let cg = root.join(format!("{prefix}-{}", h.name));
            if cg.exists() {
                let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                    // SAFETY: a process in this testbed's own cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                let _ = wait_until(Duration::from_secs(2), || std::fs::remove_dir(&cg).is_ok());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{prefix}-"))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
