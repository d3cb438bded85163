//! What the DNS responder counts, for `/metrics`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use hickory_proto::op::ResponseCode;
use serde::Serialize;
use tracing::warn;

use crate::services::metrics::{Kind, Page};

/// What the responder counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct DnsStats {
    pub(super) noerror: AtomicU64,
    pub(super) nxdomain: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) formerr: AtomicU64,
    pub(super) servfail: AtomicU64,
    pub(super) other: AtomicU64,
    pub(super) truncated: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) forwarded: AtomicU64,
    pub(super) forward_failures: AtomicU64,
    /// UDP answers over the rate limit sent truncated (the client retries over TCP).
    pub(super) rate_slipped: AtomicU64,
    /// UDP answers over the rate limit not sent.
    pub(super) rate_dropped: AtomicU64,
    /// Queries whose handling panicked (dropped; the listener goes on).
    pub(super) panics: AtomicU64,
    /// TCP clients closed because every slot was taken by busy ones.
    pub(super) tcp_refused: AtomicU64,
    /// TCP clients closed because they did not read their answer in time.
    pub(super) tcp_stalled: AtomicU64,
    /// When a malformed query was last warned about (at most one warning a minute).
    pub(super) warned: Mutex<Option<Instant>>,
}

/// The responder's answers since the daemon started, for the status page.
#[derive(Debug, Serialize)]
pub struct DnsCounts {
    /// Answers sent, by response code (NOERROR, NXDOMAIN, REFUSED, FORMERR, SERVFAIL, other).
    pub answers: BTreeMap<&'static str, u64>,
    /// Queries for names outside the domain relayed upstream and answered.
    pub forwarded: u64,
    /// Forwarded queries no upstream answered in time.
    pub forward_failures: u64,
    /// Datagrams left unanswered: malformed, responses, or over the rate limit.
    pub dropped: u64,
}

/// Adds one.
pub(super) fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

impl DnsStats {
    pub(super) fn answered(&self, rcode: ResponseCode, truncated: bool, from: SocketAddr) {
        match rcode {
            ResponseCode::NoError => bump(&self.noerror),
            ResponseCode::NXDomain => bump(&self.nxdomain),
            ResponseCode::Refused => bump(&self.refused),
            ResponseCode::FormErr => {
                bump(&self.formerr);
                self.malformed(from);
            }
            ResponseCode::ServFail => bump(&self.servfail),
            _ => bump(&self.other),
        }
        if truncated {
            bump(&self.truncated);
        }
    }

    pub(super) fn dropped(&self, from: SocketAddr) {
        bump(&self.dropped);
        self.malformed(from);
    }

    pub(super) fn malformed(&self, from: SocketAddr) {
        let mut last = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            *last = Some(Instant::now());
            let total = self.formerr.load(Ordering::Relaxed) + self.dropped.load(Ordering::Relaxed);
            warn!(%from, total, "DNS: a malformed query (or a response sent to the responder) was skipped; ambassador_dns_answers_total{{rcode=\"FORMERR\"}} and ambassador_dns_dropped_total count them (said at most once a minute)");
        }
    }

    /// Writes the responder's counters.
    /// The answers sent, by response code.
    fn by_rcode(&self) -> [(&'static str, &AtomicU64); 6] {
        [
            ("NOERROR", &self.noerror),
            ("NXDOMAIN", &self.nxdomain),
            ("REFUSED", &self.refused),
            ("FORMERR", &self.formerr),
            ("SERVFAIL", &self.servfail),
            ("other", &self.other),
        ]
    }

    /// What the status page shows of the responder.
    pub fn counts(&self) -> DnsCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DnsCounts {
            answers: self
                .by_rcode()
                .into_iter()
                .map(|(r, a)| (r, get(a)))
                .collect(),
            forwarded: get(&self.forwarded),
            forward_failures: get(&self.forward_failures),
            dropped: get(&self.dropped) + get(&self.rate_dropped),
        }
    }

    pub fn write(&self, page: &mut Page) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let name = "ambassador_dns_answers_total";
        let f = page.family(
            name,
            Kind::Counter,
            "DNS answers the responder sent, by response code (forwarded answers are not counted here).",
        );
        for (rcode, a) in self.by_rcode() {
            f.sample(name, &[("rcode", rcode)], get(a));
        }
        page.single(
            "ambassador_dns_truncated_total",
            Kind::Counter,
            "DNS answers cut to what the query invited (TC set: the client retries over TCP).",
            get(&self.truncated),
        )
        .single(
            "ambassador_dns_dropped_total",
            Kind::Counter,
            "Datagrams left unanswered: too short to carry a DNS header, or responses.",
            get(&self.dropped),
        )
        .single(
            "ambassador_dns_forwarded_total",
            Kind::Counter,
            "Queries for names outside the domain relayed to an upstream resolver and answered.",
            get(&self.forwarded),
        )
        .single(
            "ambassador_dns_forward_failures_total",
            Kind::Counter,
            "Forwarded queries no upstream resolver answered in time (SERVFAIL sent).",
            get(&self.forward_failures),
        )
        .single(
            "ambassador_dns_rate_limited_slipped_total",
            Kind::Counter,
            "UDP answers over --dns-rate-limit (identical answers per second to one /24 or /56) sent truncated: a real client retries over TCP.",
            get(&self.rate_slipped),
        )
        .single(
            "ambassador_dns_rate_limited_dropped_total",
            Kind::Counter,
            "UDP answers over --dns-rate-limit not sent (a reflection attack's, typically).",
            get(&self.rate_dropped),
        )
        .single(
            "ambassador_dns_panics_total",
            Kind::Counter,
            "Queries whose handling panicked (a bug; the query is dropped and the responder goes on).",
            get(&self.panics),
        )
        .single(
            "ambassador_dns_tcp_refused_total",
            Kind::Counter,
            "TCP clients closed at once: every connection slot was busy (idle clients give theirs up first).",
            get(&self.tcp_refused),
        )
        .single(
            "ambassador_dns_tcp_stalled_total",
            Kind::Counter,
            "TCP clients closed because they did not read their answer within the write deadline.",
            get(&self.tcp_stalled),
        );
    }
}
