//! What one caller may cost the server: token buckets per source address (node attestation, which
//! anyone may call) and per agent (signing and JWT minting), each map bounded in size, and a
//! throttle that turns a flood of refusals into one log line per interval with a count.
//!
//! Everything here is pure over the time it is given (`now`), so the arithmetic is unit-tested
//! with a stepped clock; the handlers pass the monotonic clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{LimitsConfig, Rate};

/// The address a request came from, set by the TCP listener (requests on the local admin socket
/// have none and are not limited: only admins can open it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub IpAddr);

/// The key of a source address: IPv4 addresses as they are, IPv6 addresses by their /64 prefix,
/// since one host is routinely given a whole /64 and could otherwise take a fresh bucket per request.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// One caller's token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
        self.at = now;
    }

    /// Takes `cost` tokens, or says how long until there are enough.
    fn take(&mut self, cost: u32, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        let cost = f64::from(cost);
        if self.tokens >= cost {
            self.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((cost - self.tokens) / rate.per_second))
        }
    }

    /// A full bucket is the same as a new one, so it can be forgotten.
    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * rate.per_second >= f64::from(rate.burst)
    }
}

/// Token buckets by key, at most `max_keys` of them. When the map is full, buckets that have
/// refilled are forgotten first (nothing is lost: a new bucket starts full); if that frees less than
/// half, the least recently used are forgotten down to half. So memory stays bounded and the cost of
/// making room is amortised over many requests; the price is that a caller forgotten while still in
/// debt starts afresh, which only a flood from more than `max_keys / 2` sources can cause.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    rate: Rate,
    max_keys: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter of `rate` per key, tracking at most `max_keys` keys (at least 2).
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Self { rate, max_keys: max_keys.max(2), buckets: Mutex::new(HashMap::new()) }
    }

    /// Charges `cost` to `key` at `now`; `Err(wait)` when over the limit (nothing is charged), with
    /// how long until the cost would be accepted. A limit with rate 0 is off.
    pub fn check(&self, key: &K, cost: u32, now: Instant) -> Result<(), Duration> {
        if self.rate.is_off() {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= self.max_keys {
            self.make_room(&mut buckets, now);
        }
        let full = Bucket { tokens: f64::from(self.rate.burst), at: now };
        buckets.entry(key.clone()).or_insert(full).take(cost, self.rate, now)
    }

    fn make_room(&self, buckets: &mut HashMap<K, Bucket>, now: Instant) {
        buckets.retain(|_, b| !b.is_full(self.rate, now));
        let keep = self.max_keys / 2;
        if buckets.len() > keep {
            let mut ages: Vec<Instant> = buckets.values().map(|b| b.at).collect();
            let cut = ages.len() - keep;
            let (_, newest_dropped, _) = ages.select_nth_unstable(cut - 1);
            let newest_dropped = *newest_dropped;
            buckets.retain(|_, b| b.at > newest_dropped);
        }
    }

    /// How many keys are tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// At most one log line per interval for each reason: the first event is logged at once, later
/// ones are counted, and the next line after the interval carries the count.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    reasons: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogThrottle {
    /// A throttle with one line per `interval` per reason.
    pub fn new(interval: Duration) -> Self {
        Self { interval, reasons: Mutex::new(HashMap::new()) }
    }

    /// Counts one event of `reason` (a fixed string, so the map stays small); `Some(n)` when a line
    /// is due now, `n` being the events since the last line, this one included.
    pub fn note(&self, reason: &'static str, now: Instant) -> Option<u64> {
        let mut reasons = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        match reasons.get_mut(reason) {
            Some((last, count)) if now.saturating_duration_since(*last) < self.interval => {
                *count += 1;
                None
            }
            Some((last, count)) => {
                let n = *count + 1;
                (*last, *count) = (now, 0);
                Some(n)
            }
            None => {
                reasons.insert(reason, (now, 0));
                Some(1)
            }
        }
    }
}

/// Like [`LogThrottle`], but one line per interval for each source address, so that one peer's
/// flood of refusals does not hide another peer's refusal behind its count. At most
/// `max_sources` addresses are tracked (the quiet ones are forgotten first); when that many are
/// all active, [`SourceThrottle::note`] says so, and the caller falls back to one line per kind.
#[derive(Debug)]
pub struct SourceThrottle {
    interval: Duration,
    max_sources: usize,
    sources: Mutex<HashMap<IpAddr, (Instant, u64)>>,
}

/// What [`SourceThrottle::note`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceNote {
    /// A line is due, with the refusals from this source since its last line (this one included).
    Due(u64),
    /// Counted for this source's next line.
    Counted,
    /// Too many sources are active: not tracked.
    Full,
}

impl SourceThrottle {
    /// One line per `interval` per source, for at most `max_sources` sources.
    pub fn new(interval: Duration, max_sources: usize) -> Self {
        Self { interval, max_sources, sources: Mutex::new(HashMap::new()) }
    }

    /// Counts one refusal from `source` (an IPv6 address by its /64: [`source_key`]).
    pub fn note(&self, source: IpAddr, now: Instant) -> SourceNote {
        let source = source_key(source);
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if !sources.contains_key(&source) && sources.len() >= self.max_sources {
            let interval = self.interval;
            sources.retain(|_, (last, _)| now.saturating_duration_since(*last) < interval);
            if sources.len() >= self.max_sources {
                return SourceNote::Full;
            }
        }
        match sources.get_mut(&source) {
            Some((last, count)) if now.saturating_duration_since(*last) < self.interval => {
                *count += 1;
                SourceNote::Counted
            }
            Some((last, count)) => {
                let n = *count + 1;
                (*last, *count) = (now, 0);
                SourceNote::Due(n)
            }
            None => {
                sources.insert(source, (now, 0));
                SourceNote::Due(1)
            }
        }
    }
}

/// The server's limiters.
#[derive(Debug)]
pub struct Limits {
    /// Node attestation requests per source address.
    pub attest: KeyedLimiter<IpAddr>,
    /// CSRs signed per agent.
    pub sign: KeyedLimiter<vouch_core::SpiffeId>,
    /// JWT-SVIDs minted per agent.
    pub jwt: KeyedLimiter<vouch_core::SpiffeId>,
    /// Delivery records reported per agent (at the signing rate: each record follows a delivery,
    /// and a workload connection is delivered an SVID about as often as one is signed).
    pub report: KeyedLimiter<vouch_core::SpiffeId>,
    /// Refusal log lines.
    pub log: LogThrottle,
    /// Refused TLS handshakes' lines, per source address.
    pub tls_refusals: SourceThrottle,
}

impl Limits {
    /// The limiters of a configuration.
    pub fn new(c: &LimitsConfig) -> Self {
        Self {
            attest: KeyedLimiter::new(c.attest, c.attest_sources),
            sign: KeyedLimiter::new(c.sign, c.agents),
            jwt: KeyedLimiter::new(c.jwt, c.agents),
            report: KeyedLimiter::new(c.sign, c.agents),
            log: LogThrottle::new(c.refusal_log_interval),
            // 1,024 sources of one line per interval each keep a flood from many addresses to
            // about 100 records a second at the default interval.
            tls_refusals: SourceThrottle::new(c.refusal_log_interval, 1024),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate { per_second: 10.0, burst: 20 };

    #[test]
    fn refusals_are_throttled_per_source_and_the_tracked_sources_are_bounded() {
        let t0 = Instant::now();
        let t = SourceThrottle::new(Duration::from_secs(10), 2);
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        assert_eq!(t.note(ip(1), t0), SourceNote::Due(1));
        for _ in 0..5 {
            assert_eq!(t.note(ip(1), t0), SourceNote::Counted);
        }
        // Another source is not hidden behind the first one's flood.
        assert_eq!(t.note(ip(2), t0), SourceNote::Due(1));
        assert_eq!(t.note(ip(3), t0), SourceNote::Full, "two sources at most");
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(t.note(ip(1), t1), SourceNote::Due(6), "the count since the last line");
        // Quiet sources are forgotten to make room.
        assert_eq!(t.note(ip(3), t1), SourceNote::Due(1));
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate_and_says_how_long_to_wait() {
        let t0 = Instant::now();
        let l = KeyedLimiter::new(RATE, 100);
        for _ in 0..20 {
            assert_eq!(l.check(&1, 1, t0), Ok(()));
        }
        let wait = l.check(&1, 1, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // Another key has its own bucket.
        assert_eq!(l.check(&2, 1, t0), Ok(()));
        // After 0.5 s, five more; a refused charge costs nothing.
        let t1 = t0 + Duration::from_millis(500);
        for _ in 0..5 {
            assert_eq!(l.check(&1, 1, t1), Ok(()));
        }
        assert!(l.check(&1, 1, t1).is_err());
        // A batch is charged whole, or not at all.
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(l.check(&1, 15, t2).unwrap_err(), Duration::from_millis(500));
        assert_eq!(l.check(&1, 10, t2), Ok(()));
    }

    #[test]
    fn rate_zero_is_off() {
        let l = KeyedLimiter::new(Rate { per_second: 0.0, burst: 1 }, 2);
        let t = Instant::now();
        for k in 0..1000 {
            assert_eq!(l.check(&k, 5, t), Ok(()));
        }
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn the_map_is_bounded_and_forgets_refilled_then_oldest_buckets() {
        let t0 = Instant::now();
        let l = KeyedLimiter::new(RATE, 1000);
        // A flood from many sources never holds more than the bound.
        for k in 0..50_000u32 {
            let _ = l.check(&k, 20, t0 + Duration::from_micros(u64::from(k)));
            assert!(l.tracked() <= 1000);
        }
        // The most recent callers are still remembered (their debt holds)...
        let late = t0 + Duration::from_micros(50_000);
        assert!(l.check(&49_999, 1, late).is_err());
        // ...and after they refill, room is made by forgetting full buckets first.
        let later = late + Duration::from_secs(5);
        assert_eq!(l.check(&1_000_000, 1, later), Ok(()));
        assert!(l.tracked() <= 1000);
    }

    #[test]
    fn ipv6_sources_are_keyed_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(source_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_log_throttle_writes_one_line_per_interval_with_a_count() {
        let t0 = Instant::now();
        let t = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(t.note("unknown token", t0), Some(1));
        for i in 1..1000 {
            assert_eq!(t.note("unknown token", t0 + Duration::from_millis(i)), None);
        }
        // Another reason has its own line.
        assert_eq!(t.note("expired token", t0), Some(1));
        assert_eq!(t.note("unknown token", t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(t.note("unknown token", t0 + Duration::from_secs(11)), None);
    }
}
