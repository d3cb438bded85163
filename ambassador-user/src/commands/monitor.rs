//! `ambassador monitor`: connects to a running daemon's event socket and prints what it
//! streams, filtered by kind, service, backend and client; as lines for people or, with
//! `--json`, one JSON object a line.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
};

use tracing::warn;

use crate::{
    commands::cli::MonitorArgs,
    error::{Error, Result},
    services::monitor::{self, Event, Kind},
};

/// What to print.
#[derive(Debug, Default)]
pub struct Filter {
    /// Only these kinds (all when empty).
    pub kinds: Vec<Kind>,
    /// Only events of these services (all when empty).
    pub services: Vec<String>,
    /// Only events of this backend (`IP` or `IP:PORT`).
    pub backend: Option<String>,
    /// Only flows of this client (`IP` or `IP:PORT`).
    pub client: Option<String>,
}

impl Filter {
    /// Whether `e` passes. `lost` always does: a monitor must know when it missed some.
    pub fn admits(&self, e: &Event) -> bool {
        if e.kind == Kind::Lost {
            return true;
        }
        let addr = |want: &Option<String>, have: &Option<String>| {
            want.as_deref()
                .is_none_or(|w| have.as_deref().is_some_and(|h| same_address(h, w)))
        };
        (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && (self.services.is_empty()
                || e.service
                    .as_ref()
                    .is_some_and(|s| self.services.contains(s)))
            && addr(&self.backend, &e.backend)
            && addr(&self.client, &e.client)
    }
}

/// Whether the address `have` (`IP:PORT` or `[IP6]:PORT`) is `want`: the same `IP:PORT`, or
/// the same IP when `want` names no port.
fn same_address(have: &str, want: &str) -> bool {
    let host = |a: &str| -> String {
        match a.rsplit_once(':') {
            Some((h, p))
                if h.starts_with('[') || (!h.contains(':') && p.parse::<u16>().is_ok()) =>
            {
                h.trim_matches(['[', ']']).to_owned()
            }
            _ => a.trim_matches(['[', ']']).to_owned(),
        }
    };
    have == want || host(have) == want.trim_matches(['[', ']'])
}

/// Streams the events until the daemon goes, the output closes, or `--count` were printed.
pub fn run(args: MonitorArgs) -> Result<()> {
    let path = monitor::socket_path(&args.pin_path);
    let stream = UnixStream::connect(&path).map_err(|e| {
        Error::Usage(format!(
            "no daemon serves events at {} ({e}): is `ambassador run` running with --pin-path {}? (`docker exec` into its container, where it runs in one)",
            path.display(),
            args.pin_path.display()
        ))
    })?;
    let filter = Filter {
        kinds: args.kind,
        services: args.service,
        backend: args.backend,
        client: args.client,
    };
    let mut out = std::io::stdout().lock();
    let mut printed = 0;
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(Error::io("reading the daemon's events"))?;
        let event: Event = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(e) => {
                warn!("an event this monitor does not understand was skipped ({e}): {line}");
                continue;
            }
        };
        if !filter.admits(&event) {
            continue;
        }
        let written = if args.json {
            writeln!(out, "{line}")
        } else {
            writeln!(out, "{event}")
        };
        if written.and_then(|()| out.flush()).is_err() {
            return Ok(()); // the reader went (`| head`)
        }
        printed += 1;
        if args.count.is_some_and(|n| printed >= n) {
            return Ok(());
        }
    }
    eprintln!("ambassador: the daemon closed the event stream (it stopped)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(service: &str, client: &str, backend: &str) -> Event {
        let mut e = Event::new(Kind::Flow);
        e.service = Some(service.into());
        e.client = Some(client.into());
        e.backend = Some(backend.into());
        e
    }

    #[test]
    fn filters_by_kind_service_backend_and_client() {
        let e = flow("web", "10.0.0.2:4000", "10.1.0.2:80");
        assert!(Filter::default().admits(&e));
        let by = |f: Filter| f.admits(&e);
        assert!(by(Filter {
            kinds: vec![Kind::Flow, Kind::Drop],
            ..Default::default()
        }));
        assert!(!by(Filter {
            kinds: vec![Kind::Suspect],
            ..Default::default()
        }));
        assert!(by(Filter {
            services: vec!["db".into(), "web".into()],
            ..Default::default()
        }));
        assert!(!by(Filter {
            services: vec!["db".into()],
            ..Default::default()
        }));
        assert!(by(Filter {
            backend: Some("10.1.0.2".into()),
            ..Default::default()
        }));
        assert!(by(Filter {
            backend: Some("10.1.0.2:80".into()),
            ..Default::default()
        }));
        assert!(!by(Filter {
            backend: Some("10.1.0.2:81".into()),
            ..Default::default()
        }));
        assert!(!by(Filter {
            backend: Some("10.1.0.20".into()),
            ..Default::default()
        }));
        assert!(by(Filter {
            client: Some("10.0.0.2".into()),
            ..Default::default()
        }));
        assert!(!by(Filter {
            client: Some("10.0.0.3".into()),
            ..Default::default()
        }));
        // An applied state has no client: a client filter leaves it out, a lost one never.
        let only_client = Filter {
            client: Some("10.0.0.2".into()),
            ..Default::default()
        };
        assert!(!only_client.admits(&Event::new(Kind::Applied)));
        assert!(only_client.admits(&Event::new(Kind::Lost)));
    }

    #[test]
    fn ipv6_addresses_match_with_or_without_brackets_and_port() {
        assert!(same_address("[fd00::2]:8080", "fd00::2"));
        assert!(same_address("[fd00::2]:8080", "[fd00::2]"));
        assert!(same_address("[fd00::2]:8080", "[fd00::2]:8080"));
        assert!(!same_address("[fd00::2]:8080", "fd00::20"));
        assert!(same_address("fd00::2", "fd00::2"));
    }
}
