//! The fleet's report: Markdown tables and the JSON beside them.

use super::{
    charts::ETCD_MIB_PER_CLIENT,
    collect::{every_host, per_host, Outcome},
    Trial, REAL_HOSTS, SERVICES,
};
use crate::stats::pct;
use serde_json::json;

/// p50, p99 and max of `v` (ms), or "-" when empty.
fn dist(mut v: Vec<f64>) -> (String, [f64; 3]) {
    if v.is_empty() {
        return ("-".into(), [f64::NAN; 3]);
    }
    v.sort_by(f64::total_cmp);
    let q = [pct(&v, 0.5), pct(&v, 0.99), v[v.len() - 1]];
    (format!("{:.0} / {:.0} / {:.0}", q[0], q[1], q[2]), q)
}

pub(super) fn markdown(trials: &[Trial], events: usize, data: &str) -> String {
    let mut md = format!(
        "## Fleet: the control plane at scale\n\nSimulated hosts in one process, made of the product's cores: each client host is the daemon's core (its own etcd connection and watch, the policies and the reconcile plan into in-memory tables), each backend host the register's core (its own lease, keep-alives at the register's interval, synthetic containers). etcd: 3 members of Debian's etcd-server on loopback, their data {data}. `members`: each client host given the three members (as a daemon is; it follows one at a time); `grpc-proxy`: every client host through one `etcd grpc-proxy`; `3 grpc-proxies`: host h through proxy h mod 3, as the hosts of three zones would each use their zone's (backend hosts always to a member). Beside them, {REAL_HOSTS} real `ambassador run` daemons (BPF maps, the `tc` datapath) follow the same etcd the same way; at the end of each trial their maps hold exactly what every simulated host's tables hold (checked: the run fails otherwise). {SERVICES} services, two containers per backend host; {events} operator endpoint changes and {events} container starts per trial, one at a time; then a tenth of the backend hosts die at once. Times are from the etcd put (the container start) until a host's tables hold it: per event until **every** host has it (p50 / p99 / max over the events), and per host (p50 / p99 / max over every host and event).\n\n| hosts | via | backend hosts | cold start, every host listed, ms | change → every host, ms | change, per host, ms | container start → every host, ms | a tenth of backend hosts lost → gone everywhere, s (TTL) | memory per client host, KiB | etcd RSS (3 members), MiB |\n|---:|---|---:|---:|---|---|---|---|---:|---:|\n"
    );
    for t in trials {
        let (changes, missed_c) = every_host(&t.changes);
        let (starts, missed_s) = every_host(&t.starts);
        let missed = |n: usize| {
            if n == 0 {
                String::new()
            } else {
                format!(" ({n} events not everywhere in 20 s)")
            }
        };
        let loss = t
            .loss
            .all_ms()
            .map_or(format!("{} hosts still had them", t.loss.missing), |ms| {
                format!("{:.1} ({})", ms / 1e3, t.ttl)
            });
        md += &format!(
            "| {} | {} | {} | {} | {}{} | {} | {}{} | {} | {:.0} | {:.0} |\n",
            t.hosts,
            t.via.name(),
            t.backend_hosts,
            t.cold
                .all_ms()
                .map_or(format!("{} never", t.cold.missing), |ms| format!("{ms:.0}")),
            dist(changes).0,
            missed(missed_c),
            dist(per_host(&t.changes)).0,
            dist(starts).0,
            missed(missed_s),
            loss,
            t.host_kib,
            t.etcd_mib,
        );
    }
    md += "\netcd faults, after the events above. The leader is killed and an operator's change made at once (retried while etcd chooses a leader): time from the kill until every host has it. Then every member is killed and started again: time from the restart until every host has a change made once a quorum answers; what the reconnecting fleet cost etcd, from the members' own metrics since their start: list requests (Range) and bytes sent to clients; and the backend hosts' entries in etcd (their registers' keys, counted every 250 ms from the restart until back for twice the TTL): the fewest seen, and for how long there were fewer than before.\n\n| hosts | via | leader killed → change accepted, ms | → change everywhere, ms | per host, ms (p50 / p99 / max) | full restart → every host converged, s | Range requests after the restart, per host | bytes sent after the restart, per host | backend hosts' entries in etcd through the restart: fewest / before | time with fewer, s |\n|---:|---|---:|---:|---|---:|---:|---:|---|---:|\n";
    for t in trials {
        let all = |o: &Outcome| {
            o.all_ms()
                .map_or(format!("{} hosts never", o.missing), |ms| {
                    format!("{ms:.0}")
                })
        };
        let converged = t.restart.converged.all_ms().map_or(
            format!("{} hosts never", t.restart.converged.missing),
            |ms| format!("{:.1}", ms / 1e3),
        );
        md += &format!(
            "| {} | {} | {:.0} | {} | {} | {} | {:.1} | {:.0} | {} / {} | {:.1} |\n",
            t.hosts,
            t.via.name(),
            t.leader.accepted_ms.unwrap_or(f64::NAN),
            all(&t.leader),
            dist(t.leader.delays_ms.clone()).0,
            converged,
            t.restart.ranges / t.hosts as f64,
            t.restart.bytes / t.hosts as f64,
            t.restart.entries.lowest,
            t.restart.entries.expected,
            t.restart.entries.below_s,
        );
    }
    md + &costs(trials)
}

/// The cost of one change: CPU and bytes, and etcd's memory beside its published figure.
fn costs(trials: &[Trial]) -> String {
    let mut md = format!("\nWhat one operator change cost, averaged over the changes of each trial: CPU time of the 3 members, of the proxies in use and of this whole process (every simulated host, the backend hosts' registers and the operator: on real hosts, each host's share is its own), read from /proc before and after the changes; bytes the members sent to their clients (the hosts, or the proxies), from their metrics, per host; and the daemon's core per apply on one host (the policies, the fit, the plan and the in-memory tables; p50 / p99 over every apply). The memory is what the hosts added to the 3 members' RSS from before they connected until every host had listed, beside etcd's published watch cost (about 50 MB for 1,000 clients with one watch each: {:.1} KiB a client).\n\n| hosts | via | etcd CPU per change, ms | proxies' CPU per change, ms | simulator CPU per change, ms (per host, µs) | bytes the members sent per change, per host | the daemon's core per apply, µs (p50 / p99) | etcd memory the hosts added, MiB | per host, KiB | etcd's published cost for as many clients, MiB |\n|---:|---|---:|---:|---|---:|---|---:|---:|---:|\n", ETCD_MIB_PER_CLIENT * 1024.0);
    for t in trials {
        let c = &t.cost;
        md += &format!(
            "| {} | {} | {:.1} | {:.1} | {:.0} ({:.0}) | {:.0} | {:.0} / {:.0} | {:.0} | {:.1} | {:.0} |\n",
            t.hosts,
            t.via.name(),
            c.etcd_cpu_ms,
            c.proxy_cpu_ms,
            c.sim_cpu_ms,
            c.sim_cpu_ms * 1e3 / t.hosts as f64,
            c.bytes_per_host,
            c.apply_us[0],
            c.apply_us[1],
            t.etcd_growth_mib,
            t.etcd_growth_mib * 1024.0 / t.hosts as f64,
            ETCD_MIB_PER_CLIENT * t.hosts as f64,
        );
    }
    md
}

pub(super) fn json(trials: &[Trial], data: &str) -> serde_json::Value {
    let rows: Vec<_> = trials
        .iter()
        .map(|t| {
            json!({
                "hosts": t.hosts,
                "via": t.via.name(),
                "backend_hosts": t.backend_hosts,
                "ttl_s": t.ttl,
                "cold_start_ms": t.cold.all_ms(),
                "change_every_host_ms": every_host(&t.changes).0,
                "change_per_host_ms": dist(per_host(&t.changes)).1,
                "container_start_every_host_ms": every_host(&t.starts).0,
                "loss_gone_everywhere_ms": t.loss.all_ms(),
                "memory_per_client_host_kib": t.host_kib,
                "etcd_rss_mib": t.etcd_mib,
                "applies": t.applies,
                "leader_killed_every_host_ms": t.leader.all_ms(),
                "leader_killed_per_host_ms": dist(t.leader.delays_ms.clone()).1,
                "restart_converged_ms": t.restart.converged.all_ms(),
                "restart_range_requests": t.restart.ranges,
                "restart_bytes_sent": t.restart.bytes,
                "restart_entries": {
                    "before": t.restart.entries.expected,
                    "fewest": t.restart.entries.lowest,
                    "fewer_s": t.restart.entries.below_s,
                },
                "etcd_growth_mib": t.etcd_growth_mib,
                "per_change": {
                    "etcd_cpu_ms": t.cost.etcd_cpu_ms,
                    "proxy_cpu_ms": t.cost.proxy_cpu_ms,
                    "simulator_cpu_ms": t.cost.sim_cpu_ms,
                    "member_bytes_per_host": t.cost.bytes_per_host,
                    "apply_us_p50_p99": t.cost.apply_us,
                },
            })
        })
        .collect();
    json!({ "etcd_data": data, "trials": rows })
}
