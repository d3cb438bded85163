//! Debian's Prometheus in a test's network namespace: scrapes targets there every second,
//! evaluates rule files, and answers queries through its HTTP API (asked with curl).

use std::path::Path;

use tempfile::TempDir;

use crate::{temp_dir, wait_until, NetNs, Proc};

/// Where Prometheus listens, inside the namespace.
const LISTEN: &str = "127.0.0.1:9090";

/// A running Prometheus, killed (and its data removed) on drop.
pub struct Prometheus {
    proc: Proc,
    ns: String,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus in `ns`, scraping `targets` as the job `job` every second and
    /// evaluating `rules` every second; waits until its API answers.
    pub fn start(ns: &NetNs, job: &str, targets: &[String], rules: &[&Path]) -> Self {
        let dir = temp_dir("prometheus");
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let rules: Vec<String> = rules
            .iter()
            .map(|r| format!("\"{}\"", r.display()))
            .collect();
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [{}]\n\
                 scrape_configs:\n  - job_name: {job}\n    static_configs: [{{targets: [{}]}}]\n",
                rules.join(", "),
                targets.join(", ")
            ),
        )
        .unwrap();
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={LISTEN}"),
        ];
        let proc = Proc::spawn(
            &ns.name,
            "prometheus",
            Path::new("/usr/bin/prometheus"),
            &args,
        );
        let p = Self {
            proc,
            ns: ns.name.clone(),
            _dir: dir,
        };
        assert!(
            wait_until(std::time::Duration::from_secs(30), || p
                .get("/-/ready", &[])
                .is_some_and(|r| r.contains("Ready"))),
            "Prometheus never became ready:\n{}",
            p.proc.log()
        );
        p
    }

    /// `GET path` with `params` (URL-encoded by curl): the body, or None if it failed.
    fn get(&self, path: &str, params: &[(&str, &str)]) -> Option<String> {
        let url = format!("http://{LISTEN}{path}");
        let mut args: Vec<String> = [
            "netns",
            "exec",
            &self.ns,
            "curl",
            "-sS",
            "-G",
            "--max-time",
            "10",
        ]
        .map(str::to_owned)
        .to_vec();
        for (k, v) in params {
            args.extend(["--data-urlencode".to_owned(), format!("{k}={v}")]);
        }
        args.push(url);
        let out = std::process::Command::new("ip").args(&args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An API call: its `data`, or the error Prometheus gave.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<serde_json::Value, String> {
        let body = self
            .get(path, params)
            .ok_or_else(|| format!("no answer to {path} {params:?}"))?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{path} {params:?}: {body}"));
        }
        Ok(v["data"].clone())
    }

    /// An instant query's result (a vector's series), or the error.
    pub fn query(&self, q: &str) -> Result<Vec<serde_json::Value>, String> {
        let data = self.api("/api/v1/query", &[("query", q)])?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }
}
