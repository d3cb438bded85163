//! One machine-readable record of each run, `target/bench/run.json`: when and where it ran
//! (date, commit, machine, kernel), how (quick or full, the groups asked for), and every
//! group's samples and settings as the group wrote them. Written at the start and after each
//! group, so a run cut short keeps what it measured (`finished` says whether it ended); a
//! finished run's record is also kept as `target/bench/runs/<date>-<mode>[-<group>].json`,
//! which the next run does not overwrite.

use std::{path::Path, process::Command, time::SystemTime};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

/// The record's file in the results folder.
const FILE: &str = "run.json";

/// What the machine is, for the record.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

/// The commit measured, and whether the tree had changes beside it (`None` outside git).
fn commit(repo: &Path) -> Value {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "HEAD"]) {
        Some(head) => json!({
            "id": head,
            "dirty": git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()),
        }),
        None => Value::Null,
    }
}

/// Starts the record of a run in `dir`.
pub fn start(dir: &Path, repo: &Path, mode: &str, only: Option<String>) -> Result<()> {
    let record = json!({
        "date": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        "commit": commit(repo),
        "machine": machine(),
        "mode": mode,
        "only": only,
        "finished": false,
        "groups": {},
    });
    save(dir, &record)
}

/// Adds group `name`'s results to the record in `dir`.
pub fn group(dir: &Path, name: &str, results: &Value) -> Result<()> {
    let mut record = load(dir)?;
    record["groups"][name] = results.clone();
    save(dir, &record)
}

/// Marks the record in `dir` finished, after `seconds` of measuring, and keeps a copy of its
/// own under `dir/runs/`: the path of that copy.
pub fn finish(dir: &Path, seconds: f64) -> Result<std::path::PathBuf> {
    let mut record = load(dir)?;
    record["finished"] = json!(true);
    record["seconds"] = json!(seconds.round());
    save(dir, &record)?;
    let mut name = record["date"]
        .as_str()
        .unwrap_or("undated")
        .replace(':', "");
    name += &format!("-{}", record["mode"].as_str().unwrap_or("run"));
    if let Some(only) = record["only"].as_str() {
        name += &format!("-{only}");
    }
    let kept = dir.join("runs").join(format!("{name}.json"));
    std::fs::create_dir_all(dir.join("runs"))?;
    std::fs::write(&kept, serde_json::to_string_pretty(&record)?)?;
    Ok(kept)
}

fn load(dir: &Path) -> Result<Value> {
    let path = dir.join(FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path:?}"))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {path:?}"))
}

fn save(dir: &Path, record: &Value) -> Result<()> {
    std::fs::write(dir.join(FILE), serde_json::to_string_pretty(record)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_recorded_with_where_and_when_and_each_group_as_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        start(dir.path(), repo, "quick", Some("scale".into())).unwrap();
        let r = load(dir.path()).unwrap();
        assert_eq!(r["finished"], false);
        assert_eq!(r["mode"], "quick");
        assert!(r["date"].as_str().unwrap().ends_with('Z'), "{r}");
        assert!(r["machine"]["cores"].as_u64().unwrap() >= 1);
        group(dir.path(), "scale", &json!({"reps": 1, "cells": [1.5]})).unwrap();
        group(dir.path(), "dns", &json!({"reps": 2})).unwrap();
        let kept = finish(dir.path(), 12.4).unwrap();
        let r = load(dir.path()).unwrap();
        assert_eq!(r["groups"]["scale"]["cells"][0], 1.5);
        assert_eq!(r["groups"]["dns"]["reps"], 2);
        assert_eq!(r["finished"], true);
        assert_eq!(r["seconds"], 12.0);
        // The kept copy is the same record, under a name the next run does not reuse.
        let name = kept.file_name().unwrap().to_str().unwrap();
        assert!(
            name.ends_with("Z-quick-scale.json") && !name.contains(':'),
            "{name}"
        );
        let copy: Value = serde_json::from_str(&std::fs::read_to_string(&kept).unwrap()).unwrap();
        assert_eq!(copy, r);
    }
}
