//! Response rate limiting for UDP answers, the way authoritative servers do it (BIND, Knot and
//! NSD's RRL): identical answers (same question) to one client prefix (/24, /56) get a budget
//! per second; beyond it, every second one is "slipped" (sent truncated and empty, so a real
//! client retries over TCP, which cannot be spoofed) and the others are dropped. A reflection
//! attack repeats one question at a spoofed victim and meets the budget at once; a resolver
//! behind many clients caches its answers and never does.

use std::{
    collections::{hash_map::DefaultHasher, HashMap},
    hash::{Hash, Hasher},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Identical answers per second to one client prefix when `--dns-rate-limit` is not given.
pub const DEFAULT_RATE: u32 = 200;

/// Buckets kept at most; past it, idle ones go first (and in a flood of distinct sources,
/// everything: the limiter then fails open rather than grow).
const MAX_BUCKETS: usize = 1 << 16;

/// What to do with one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the budget: send it.
    Send,
    /// Over it: send it truncated and empty (the client retries over TCP).
    Slip,
    /// Over it: send nothing.
    Drop,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// Answers over the budget so far (every second one slips).
    over: u64,
}

/// The limiter: `rate` identical answers per second per client prefix (0: off).
#[derive(Debug)]
pub struct RateLimit {
    rate: u32,
    buckets: Mutex<HashMap<(IpAddr, u64), Bucket>>,
}

impl RateLimit {
    /// A limiter of `rate` answers per second (0 turns it off).
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The verdict for answering `query` (its bytes: the question is read from them) to
    /// `client` at `now`.
    pub fn check(&self, client: IpAddr, query: &[u8], now: Instant) -> Verdict {
        if self.rate == 0 {
            return Verdict::Send;
        }
        let key = (prefix(client), question_hash(query));
        let rate = f64::from(self.rate);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            buckets.retain(|_, b| now.saturating_duration_since(b.last) < Duration::from_secs(1));
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: rate,
            last: now,
            over: 0,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Verdict::Send;
        }
        b.over += 1;
        if b.over % 2 == 1 {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

/// The client's prefix: /24 for IPv4, /56 for IPv6 (what one site usually holds).
fn prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            IpAddr::from([o[0], o[1], o[2], 0])
        }
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[7..].fill(0);
            IpAddr::from(o)
        }
    }
}

/// A hash of the question (name, case-folded, type and class) as it is on the wire.
fn question_hash(query: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    let mut i = 12;
    while let Some(&len) = query.get(i) {
        if len == 0 || len & 0xc0 != 0 {
            break;
        }
        let end = (i + 1 + usize::from(len)).min(query.len());
        for b in &query[i + 1..end] {
            b.to_ascii_lowercase().hash(&mut h);
        }
        0xffu8.hash(&mut h);
        i = end;
    }
    query.get(i + 1..i + 5).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::RecordType;

    use super::*;
    use crate::services::dns::handler::query;

    #[test]
    fn identical_answers_over_the_budget_slip_and_drop_in_turn_and_others_pass() {
        let rl = RateLimit::new(10);
        let t0 = Instant::now();
        let q = query("web.ambassador.internal.", RecordType::A, None);
        let same_upper = query("WEB.ambassador.internal.", RecordType::A, None);
        let other = query("db.ambassador.internal.", RecordType::A, None);
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let neighbour: IpAddr = "192.0.2.200".parse().unwrap();
        let elsewhere: IpAddr = "198.51.100.1".parse().unwrap();
        let verdicts: Vec<Verdict> = (0..14).map(|_| rl.check(client, &q, t0)).collect();
        assert!(verdicts[..10].iter().all(|v| *v == Verdict::Send));
        assert_eq!(
            verdicts[10..],
            [Verdict::Slip, Verdict::Drop, Verdict::Slip, Verdict::Drop]
        );
        // The same question from the same /24, case-folded: limited too.
        assert_ne!(rl.check(neighbour, &same_upper, t0), Verdict::Send);
        // Another question, or another prefix: its own budget.
        assert_eq!(rl.check(client, &other, t0), Verdict::Send);
        assert_eq!(rl.check(elsewhere, &q, t0), Verdict::Send);
        // The budget refills with time.
        let later = t0 + Duration::from_millis(500);
        let refilled = (0..5).filter(|_| rl.check(client, &q, later) == Verdict::Send);
        assert_eq!(refilled.count(), 5);
        // Off.
        let off = RateLimit::new(0);
        assert!((0..1000).all(|_| off.check(client, &q, t0) == Verdict::Send));
    }

    #[test]
    fn ipv6_clients_share_a_slash_56() {
        assert_eq!(
            prefix("2001:db8:1:2ff:1::9".parse().unwrap()),
            "2001:db8:1:200::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            prefix("::ffff:10.1.2.3".parse().unwrap()),
            "10.1.2.0".parse::<IpAddr>().unwrap()
        );
    }
}
