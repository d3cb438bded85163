//! The fleet's report: the record of every trial, and the Markdown tables made from it alone.

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use super::{
    collect::{every_host, per_host, Outcome},
    storm, Trial, REAL_HOSTS, SERVICES,
};
use crate::stats::pct;

/// etcd's published watch cost: about 50 MB for 1,000 clients with one watch each (its watch
/// memory benchmark), in MiB per client.
pub const ETCD_MIB_PER_CLIENT: f64 = 50.0 / 1000.0 * 1e6 / (1 << 20) as f64;

/// p50, p99 and max of `v` (ms), or null when empty.
fn dist(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    json!([pct(&v, 0.5), pct(&v, 0.99), v[v.len() - 1]])
}

/// How a wait ended: ms until every host got there (null if some never did) and how many never.
fn outcome(o: &Outcome) -> Value {
    let first = o.delays_ms.iter().copied().reduce(f64::min);
    json!({ "all_ms": o.all_ms(), "first_ms": first, "missing": o.missing })
}

/// Per event, ms until every host had it (every event's), and how many events some host missed.
fn events(e: &[Outcome]) -> Value {
    let (all, missed) = every_host(e);
    json!({ "every_host_ms": all, "missed": missed })
}

/// The record: every trial's figures, and etcd's own client's watch cost measured beside them
/// (how many clients, KiB a member grew by per client).
pub(super) fn json(
    trials: &[Trial],
    data: &str,
    events_per_trial: usize,
    etcdctl: (usize, f64),
    storm: Value,
) -> Value {
    let rows: Vec<_> = trials
        .iter()
        .map(|t| {
            json!({
                "hosts": t.hosts,
                "via": t.via.name(),
                "backend_hosts": t.backend_hosts,
                "ttl_s": t.ttl,
                "cold_start": outcome(&t.cold),
                "changes": events(&t.changes),
                "change_per_host_ms": dist(per_host(&t.changes)),
                "container_starts": events(&t.starts),
                "loss": outcome(&t.loss),
                "memory_per_client_host_kib": t.host_kib,
                "etcd_rss_mib": t.etcd_mib,
                "applies": t.applies,
                "leader_killed": outcome(&t.leader),
                "leader_accepted_ms": t.leader.accepted_ms,
                "leader_killed_per_host_ms": dist(t.leader.delays_ms.clone()),
                "restart_converged": outcome(&t.restart.converged),
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
    json!({
        "etcd_data": data, "events": events_per_trial, "services": SERVICES,
        "real_hosts": REAL_HOSTS, "trials": rows,
        "etcdctl_watch": { "clients": etcdctl.0, "kib_per_client": etcdctl.1 },
        "relist_storm": storm,
    })
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// "p50 / p99 / max", or "-".
fn triple(v: &Value) -> String {
    match v.as_array() {
        Some(q) => format!("{:.0} / {:.0} / {:.0}", num(&q[0]), num(&q[1]), num(&q[2])),
        None => "-".into(),
    }
}

/// An outcome's time until every host got there, scaled by `div` with `digits` decimals, or
/// how many hosts never did.
fn all(o: &Value, div: f64, digits: usize, never: &str) -> String {
    match o["all_ms"].as_f64() {
        Some(ms) => format!("{:.digits$}", ms / div),
        None => format!("{} {never}", o["missing"]),
    }
}

/// Per event that reached every host, ms until it had (an `events` record).
fn every_host_ms(e: &Value) -> Vec<f64> {
    e["every_host_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// A trial's p99 over its changes of the time until every host had one (of the changes that
/// reached every host; none if none did).
pub fn change_p99(t: &Value) -> Option<f64> {
    let mut v = every_host_ms(&t["changes"]);
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| pct(&v, 0.99))
}

/// The events' distribution until every host had them, and how many some host missed.
fn every(e: &Value) -> String {
    let missed = e["missed"].as_u64().unwrap_or(0);
    let mut text = triple(&dist(every_host_ms(e)));
    if missed > 0 {
        text += &format!(" ({missed} events not everywhere in 20 s)");
    }
    text
}

/// The three tables, from the record.
pub fn table(json: &Value) -> Result<String> {
    let trials = json["trials"].as_array().context("trials")?;
    let (data, events) = (json["etcd_data"].as_str().unwrap_or("?"), &json["events"]);
    let (real, services) = (&json["real_hosts"], &json["services"]);
    // Records from 2026-12-06T09 on also say when the first host had it.
    let loss_from = if trials.iter().any(|t| t["loss"]["first_ms"].is_number()) {
        "from the first host / from every host"
    } else {
        "everywhere"
    };
    let mut md = format!(
        "Simulated hosts in one process, made of the product's cores: each client host is the daemon's core (its own etcd connection and watch, the policies and the reconcile plan into in-memory tables), each backend host the register's core (its own lease, keep-alives at the register's interval, synthetic containers). etcd: 3 members of Debian's etcd-server on loopback, their data {data}. `members`: each client host given the three members (as a daemon is; it follows one at a time); `grpc-proxy`: every client host through one `etcd grpc-proxy`; `3 grpc-proxies`: host h through proxy h mod 3, as the hosts of three zones would each use their zone's (backend hosts always to a member). Beside them, {real} real `ambassador run` daemons (BPF maps, the `tc` datapath) follow the same etcd the same way; at the end of each trial their maps hold exactly what every simulated host's tables hold (checked: the run fails otherwise). {services} services, two containers per backend host; {events} operator endpoint changes and {events} container starts per trial, one at a time; then a tenth of the backend hosts die at once. Times are from the etcd put (the container start) until a host's tables hold it: per event until **every** host has it (p50 / p99 / max over the events), and per host (p50 / p99 / max over every host and event).\n\n| hosts | via | backend hosts | cold start, every host listed, ms | change → every host, ms | change, per host, ms | container start → every host, ms | a tenth of backend hosts lost → gone {loss_from}, s (TTL) | memory per client host, KiB | etcd RSS (3 members), MiB |\n|---:|---|---:|---:|---|---|---|---|---:|---:|\n"
    );
    for t in trials {
        // The first host's time is etcd's (the lease expired and was revoked), the rest the
        // fan-out.
        let first = t["loss"]["first_ms"]
            .as_f64()
            .map_or(String::new(), |ms| format!("{:.1} / ", ms / 1e3));
        let loss = match t["loss"]["all_ms"].as_f64() {
            Some(ms) => format!("{first}{:.1} ({})", ms / 1e3, t["ttl_s"]),
            None => format!("{} hosts still had them", t["loss"]["missing"]),
        };
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {loss} | {:.0} | {:.0} |\n",
            t["hosts"],
            t["via"].as_str().unwrap_or("?"),
            t["backend_hosts"],
            all(&t["cold_start"], 1.0, 0, "never"),
            every(&t["changes"]),
            triple(&t["change_per_host_ms"]),
            every(&t["container_starts"]),
            num(&t["memory_per_client_host_kib"]),
            num(&t["etcd_rss_mib"]),
        );
    }
    md += "\netcd faults, after the events above. The leader is killed and an operator's change made at once (retried while etcd chooses a leader): time from the kill until every host has it. Then every member is killed and started again: time from the restart until every host has a change made once a quorum answers; what the reconnecting fleet cost etcd, from the members' own metrics since their start: list requests (Range) and bytes sent to clients; and the backend hosts' entries in etcd (their registers' keys, counted every 250 ms from the restart until back for twice the TTL): the fewest seen, and for how long there were fewer than before.\n\n| hosts | via | leader killed → change accepted, ms | → change everywhere, ms | per host, ms (p50 / p99 / max) | full restart → every host converged, s | Range requests after the restart, per host | bytes sent after the restart, per host | backend hosts' entries in etcd through the restart: fewest / before | time with fewer, s |\n|---:|---|---:|---:|---|---:|---:|---:|---|---:|\n";
    for t in trials {
        let hosts = num(&t["hosts"]);
        let e = &t["restart_entries"];
        md += &format!(
            "| {} | {} | {:.0} | {} | {} | {} | {:.1} | {:.0} | {} / {} | {:.1} |\n",
            t["hosts"],
            t["via"].as_str().unwrap_or("?"),
            num(&t["leader_accepted_ms"]),
            all(&t["leader_killed"], 1.0, 0, "hosts never"),
            triple(&t["leader_killed_per_host_ms"]),
            all(&t["restart_converged"], 1e3, 1, "hosts never"),
            num(&t["restart_range_requests"]) / hosts,
            num(&t["restart_bytes_sent"]) / hosts,
            e["fewest"],
            e["before"],
            num(&e["fewer_s"]),
        );
    }
    md += &format!(
        "\nWhat one operator change cost, averaged over the changes of each trial: CPU time of the 3 members, of the proxies in use and of this whole process (every simulated host, the backend hosts' registers and the operator: on real hosts, each host's share is its own), read from /proc before and after the changes; bytes the members sent to their clients (the hosts, or the proxies), from their metrics, per host; and the daemon's core per apply on one host (the policies, the fit, the plan and the in-memory tables; p50 / p99 over every apply). The memory is what the hosts added to the 3 members' RSS from before they connected until every host had listed, beside etcd's published watch cost (about 50 MB for 1,000 clients with one watch each: {:.1} KiB a client).\n\n| hosts | via | etcd CPU per change, ms | proxies' CPU per change, ms | simulator CPU per change, ms (per host, µs) | bytes the members sent per change, per host | the daemon's core per apply, µs (p50 / p99) | etcd memory the hosts added, MiB | per host, KiB | etcd's published cost for as many clients, MiB |\n|---:|---|---:|---:|---|---:|---|---:|---:|---:|\n",
        ETCD_MIB_PER_CLIENT * 1024.0);
    for t in trials {
        let (c, hosts) = (&t["per_change"], num(&t["hosts"]));
        let growth = num(&t["etcd_growth_mib"]);
        md += &format!(
            "| {} | {} | {:.1} | {:.1} | {:.0} ({:.0}) | {:.0} | {:.0} / {:.0} | {growth:.0} | {:.1} | {:.0} |\n",
            t["hosts"],
            t["via"].as_str().unwrap_or("?"),
            num(&c["etcd_cpu_ms"]),
            num(&c["proxy_cpu_ms"]),
            num(&c["simulator_cpu_ms"]),
            num(&c["simulator_cpu_ms"]) * 1e3 / hosts,
            num(&c["member_bytes_per_host"]),
            num(&c["apply_us_p50_p99"][0]),
            num(&c["apply_us_p50_p99"][1]),
            growth * 1024.0 / hosts,
            ETCD_MIB_PER_CLIENT * hosts,
        );
    }
    md += &etcdctl_anchor(json);
    md += &storm::table(&json["relist_storm"]);
    md += "\nThe fleet issue's goals (one trial each, not repetitions: no control, so each verdict is the figure against the goal as measured):\n\n";
    md += &goals(json)?;
    Ok(md)
}

/// What etcd's own client costs a member on this machine, beside the published figure and the
/// hosts' (none for a record without it).
fn etcdctl_anchor(json: &Value) -> String {
    let e = &json["etcdctl_watch"];
    let Some(kib) = e["kib_per_client"].as_f64() else {
        return String::new();
    };
    let published = ETCD_MIB_PER_CLIENT * 1024.0;
    let mut md = format!(
        "\netcd's own client on the same etcd: {} `etcdctl watch --prefix` processes (Go's client, one connection and one watch each, no listing) grew a fresh member by **{kib:.0} KiB per client**, {:.1}x the published {published:.0} KiB. ",
        e["clients"],
        kib / published,
    );
    let trials = json["trials"].as_array().map_or(&[][..], Vec::as_slice);
    if let Some(t) = trials
        .iter()
        .find(|t| t["hosts"].as_u64() == Some(1000) && t["via"] == "members")
    {
        let host = num(&t["etcd_growth_mib"]) * 1024.0 / 1000.0;
        md += &format!(
            "A simulated host given the members (its connection, its watch, and its listing, all 1,000 at once) added {host:.0} KiB, {:.1}x that.",
            host / kib
        );
    }
    md + "\n"
}

/// The fleet issue's goals, each judged on the trials it names (1,000 hosts given the
/// members, 5,000 through one grpc-proxy). Each trial is one run of many events, not
/// repetitions: there is no control, so a verdict is the figure against the goal as measured.
pub fn goals(json: &Value) -> Result<String> {
    let trials = json["trials"].as_array().context("trials")?;
    let verdict = |ok: bool| if ok { "**met**" } else { "**not met**" };
    let mut md = String::from("| trial | goal | measured | verdict |\n|---|---|---:|---|\n");
    for (hosts, via) in [(1000, "members"), (5000, "grpc-proxy")] {
        let trial = format!("{hosts} hosts, {via}");
        let Some(t) = trials
            .iter()
            .find(|t| t["hosts"].as_u64() == Some(hosts) && t["via"] == via)
        else {
            md += &format!("| {trial} | every goal | not run | - |\n");
            continue;
        };
        let missed = t["changes"]["missed"].as_u64().unwrap_or(0);
        let p99 = change_p99(t).filter(|_| missed == 0);
        let ttl = num(&t["ttl_s"]);
        let loss = t["loss"]["all_ms"].as_f64().map(|ms| ms / 1e3);
        let restart = t["restart_converged"]["all_ms"].as_f64().map(|ms| ms / 1e3);
        let kib = num(&t["etcd_growth_mib"]) * 1024.0 / hosts as f64;
        let kib_goal = 2.0 * ETCD_MIB_PER_CLIENT * 1024.0;
        let rows = [
            (
                "a change on every host within 1 s (p99)".to_owned(),
                p99.map_or("some host never had it".into(), |ms| format!("{ms:.0} ms")),
                p99.is_some_and(|ms| ms <= 1000.0),
            ),
            (
                format!("a tenth of the backend hosts lost, gone everywhere within the TTL + 2 s ({:.0} s)", ttl + 2.0),
                loss.map_or("some host kept them".into(), |s| format!("{s:.1} s")),
                loss.is_some_and(|s| s <= ttl + 2.0),
            ),
            (
                "a full etcd restart, every host converged within 30 s".to_owned(),
                restart.map_or("some host never".into(), |s| format!("{s:.1} s")),
                restart.is_some_and(|s| s <= 30.0),
            ),
            (
                format!("etcd memory per host within 2x etcd's published watch cost ({kib_goal:.0} KiB)"),
                format!("{kib:.0} KiB"),
                kib <= kib_goal,
            ),
        ];
        for (goal, measured, ok) in rows {
            md += &format!("| {trial} | {goal} | {measured} | {} |\n", verdict(ok));
        }
    }
    Ok(md)
}
