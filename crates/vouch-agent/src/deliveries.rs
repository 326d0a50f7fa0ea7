//! What the Workload API delivered to whom, reported to the server for forensics ("which workloads
//! held this identity at 3 a.m.").
//!
//! Each SVID handed to a workload connection (every X509-SVID a FetchX509SVID stream sends,
//! rotations included, and every JWT-SVID) becomes one [`Delivery`] record: one per connection and
//! SVID, not one per stream message ([`Delivered`] remembers what a connection was given). Records
//! wait in a bounded queue ([`MAX_QUEUED`]); when it is full a record is dropped and counted
//! (`vouch_agent_deliveries_dropped_total`), and the count goes with the next report so the server
//! records the gap. The queue is flushed every [`FLUSH_EVERY`], or as soon as it holds
//! [`MAX_DELIVERY_BATCH`] records, by one `POST /v1/agent/delivered` per batch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use tokio::sync::{watch, Notify};
use vouch_api::agent::{Delivery, DeliveryReport, SvidKind, MAX_DELIVERY_BATCH};
use vouch_core::{Selectors, SpiffeId};

use crate::attest::Attestation;
use crate::state::AgentState;
use crate::AgentError;

/// Most records waiting to be reported; more are dropped and counted.
pub const MAX_QUEUED: usize = 8 * MAX_DELIVERY_BATCH;
/// How often waiting records are reported.
pub const FLUSH_EVERY: Duration = Duration::from_secs(3);
/// How many SVIDs a connection is remembered to have received; beyond, the oldest is forgotten
/// (a connection that outlives this many rotations may then be reported twice for an old SVID,
/// never missed).
const REMEMBERED_PER_CONNECTION: usize = 64;
/// Longest wait for the last report when the agent stops.
const FINAL_REPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// The SVIDs one workload connection has been given (their serials or `jti`s), most recent last.
#[derive(Debug, Default)]
pub struct Delivered(Mutex<VecDeque<String>>);

impl Delivered {
    /// Whether `svid_id` is new to this connection (and remembers it).
    fn first_time(&self, svid_id: &str) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.iter().any(|s| s == svid_id) {
            return false;
        }
        if seen.len() >= REMEMBERED_PER_CONNECTION {
            seen.pop_front();
        }
        seen.push_back(svid_id.to_owned());
        true
    }
}

/// The workload facts of a record, from its attestation: the container id from the cgroup, the
/// image id the runtime (or kubelet) named, and the executable's hash only if attestation computed
/// it (it is never computed for this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pid: i32,
    container_id: Option<String>,
    image_id: Option<String>,
    binary_sha256: Option<String>,
}

/// The value of the first selector of `kind` whose value starts with `prefix`, without the prefix.
fn selector_value(selectors: &Selectors, kind: &str, prefix: &str) -> Option<String> {
    selectors
        .iter()
        .find_map(|s| (s.kind() == kind).then(|| s.value().strip_prefix(prefix)).flatten().map(str::to_owned))
}

impl Workload {
    /// What an attestation says about the caller.
    pub fn of(a: &Attestation) -> Self {
        let image_id = selector_value(&a.selectors, "container", "image-id:")
            .or_else(|| selector_value(&a.selectors, "k8s", "container-image-id:"));
        Self {
            pid: a.pid,
            container_id: a.container.as_ref().map(|c| c.id.clone()),
            image_id,
            binary_sha256: selector_value(&a.selectors, "unix", "sha256:"),
        }
    }
}

/// The facts of a JWT-SVID the server minted: its `jti`, `iat` and `exp` (read, not verified: the
/// agent got it from the server over mTLS a moment ago).
pub fn jwt_facts(token: &str) -> Option<(String, i64, i64)> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_i64()?;
    let iat = claims.get("iat").and_then(serde_json::Value::as_i64).unwrap_or(exp);
    Some((claims.get("jti")?.as_str()?.to_owned(), iat, exp))
}

/// One SVID handed over: what [`Deliveries::record`] needs of it.
pub struct Handed<'a> {
    /// Its SPIFFE ID.
    pub spiffe_id: &'a SpiffeId,
    /// X.509 or JWT.
    pub kind: SvidKind,
    /// Serial or `jti`.
    pub svid_id: &'a str,
    /// Validity start.
    pub not_before: SystemTime,
    /// Validity end.
    pub not_after: SystemTime,
}

/// The queue of records waiting to be reported.
#[derive(Debug, Default)]
pub struct Deliveries {
    queue: Mutex<VecDeque<Delivery>>,
    /// Dropped since the last accepted report (sent with the next one).
    dropped_unreported: AtomicU64,
    /// Dropped since the agent started.
    dropped_total: AtomicU64,
    /// Accepted by the server since the agent started.
    reported_total: AtomicU64,
    /// Woken when a batch is full.
    full: Notify,
}

impl Deliveries {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Delivery>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dropped(&self, n: u64) {
        self.dropped_unreported.fetch_add(n, Ordering::Relaxed);
        self.dropped_total.fetch_add(n, Ordering::Relaxed);
    }

    /// Records that the connection of `delivered` was handed `svid` at `now`, unless it was
    /// before.
    pub fn record(&self, delivered: &Delivered, workload: &Workload, svid: Handed<'_>, now: SystemTime) {
        if !delivered.first_time(svid.svid_id) {
            return;
        }
        let record = Delivery {
            spiffe_id: svid.spiffe_id.clone(),
            kind: svid.kind,
            svid_id: svid.svid_id.to_owned(),
            not_before: vouch_core::ttl::unix_seconds(svid.not_before),
            not_after: vouch_core::ttl::unix_seconds(svid.not_after),
            delivered_at_ms: unix_ms(now),
            pid: workload.pid,
            container_id: workload.container_id.clone(),
            image_id: workload.image_id.clone(),
            binary_sha256: workload.binary_sha256.clone(),
        };
        let mut queue = self.lock();
        if queue.len() >= MAX_QUEUED {
            drop(queue);
            self.dropped(1);
            return;
        }
        queue.push_back(record);
        if queue.len() >= MAX_DELIVERY_BATCH {
            self.full.notify_one();
        }
    }

    /// Records waiting.
    pub fn queued(&self) -> usize {
        self.lock().len()
    }

    /// Records dropped since the agent started.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// Records the server accepted since the agent started.
    pub fn reported_total(&self) -> u64 {
        self.reported_total.load(Ordering::Relaxed)
    }

    /// Puts a batch the server did not take back at the front, as far as there is room.
    fn put_back(&self, batch: Vec<Delivery>) {
        let mut queue = self.lock();
        let room = MAX_QUEUED.saturating_sub(queue.len());
        let lost = batch.len().saturating_sub(room);
        for d in batch.into_iter().take(room).rev() {
            queue.push_front(d);
        }
        drop(queue);
        if lost > 0 {
            self.dropped(u64::try_from(lost).unwrap_or(u64::MAX));
        }
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Sends the waiting records in batches until the queue is empty or the server cannot take them.
async fn flush(state: &AgentState) -> Result<(), AgentError> {
    let d = &state.deliveries;
    loop {
        let batch: Vec<Delivery> = {
            let mut queue = d.lock();
            let n = queue.len().min(MAX_DELIVERY_BATCH);
            queue.drain(..n).collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let dropped = d.dropped_unreported.load(Ordering::Relaxed);
        let report = &DeliveryReport { node: state.link.agent_id(), dropped, records: batch };
        match state.link.call("delivery report", |c| async move { c.report_delivered(report).await }).await {
            Ok(_) => {
                d.dropped_unreported.fetch_sub(dropped, Ordering::Relaxed);
                d.reported_total.fetch_add(report.records.len() as u64, Ordering::Relaxed);
            }
            // A refusal that another try would repeat (the server found the batch bad): the batch
            // is dropped and counted, rather than sent again forever.
            Err(AgentError::Server(e))
                if !crate::server_link::unreachable(&e) && e.retry_after().is_none() =>
            {
                d.dropped(report.records.len() as u64);
                return Err(AgentError::Server(e));
            }
            Err(e) => {
                d.put_back(report.records.clone());
                return Err(e);
            }
        }
    }
}

/// Reports waiting records every [`FLUSH_EVERY`] or when a batch is full, until the agent stops;
/// then once more, briefly.
pub(crate) async fn run(state: Arc<AgentState>, mut shutdown: watch::Receiver<bool>) {
    let mut said = crate::conn_limits::Throttle::new(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FLUSH_EVERY) => {}
            _ = state.deliveries.full.notified() => {}
            _ = shutdown.changed() => {
                let _ = tokio::time::timeout(FINAL_REPORT_TIMEOUT, flush(&state)).await;
                return;
            }
        }
        if let Err(e) = flush(&state).await {
            if said.tick().is_some() {
                tracing::warn!(error = %e, queued = state.deliveries.queued(), "cannot report deliveries to the server; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://example.org/w").unwrap()
    }

    fn handed<'a>(spiffe_id: &'a SpiffeId, svid_id: &'a str) -> Handed<'a> {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        Handed {
            spiffe_id,
            kind: SvidKind::X509,
            svid_id,
            not_before: t,
            not_after: t + Duration::from_secs(60),
        }
    }

    const WORKLOAD: Workload = Workload { pid: 42, container_id: None, image_id: None, binary_sha256: None };

    #[test]
    fn one_record_per_connection_and_svid() {
        let d = Deliveries::default();
        let (conn_a, conn_b) = (Delivered::default(), Delivered::default());
        let (spiffe_id, now) = (id(), SystemTime::UNIX_EPOCH + Duration::from_secs(5000));
        // The stream re-sends the same SVID (a bundle change), then a rotation.
        for serial in ["01", "01", "01", "02"] {
            d.record(&conn_a, &WORKLOAD, handed(&spiffe_id, serial), now);
        }
        // Another connection of the same process is another record.
        d.record(&conn_b, &WORKLOAD, handed(&spiffe_id, "01"), now);
        let ids: Vec<String> = d.lock().iter().map(|r| r.svid_id.clone()).collect();
        assert_eq!(ids, ["01", "02", "01"]);
    }

    #[test]
    fn the_queue_is_bounded_and_drops_are_counted() {
        let d = Deliveries::default();
        let spiffe_id = id();
        for i in 0..MAX_QUEUED + 10 {
            // A fresh connection each time, so none is deduplicated.
            d.record(
                &Delivered::default(),
                &WORKLOAD,
                handed(&spiffe_id, &i.to_string()),
                SystemTime::UNIX_EPOCH + Duration::from_secs(5000),
            );
        }
        assert_eq!(d.queued(), MAX_QUEUED);
        assert_eq!(d.dropped_total(), 10);
        // A batch put back when the queue filled meanwhile: what does not fit is counted.
        let batch: Vec<Delivery> = d.lock().drain(..5).collect();
        d.record(
            &Delivered::default(),
            &WORKLOAD,
            handed(&spiffe_id, "x"),
            SystemTime::UNIX_EPOCH + Duration::from_secs(5000),
        );
        d.record(
            &Delivered::default(),
            &WORKLOAD,
            handed(&spiffe_id, "y"),
            SystemTime::UNIX_EPOCH + Duration::from_secs(5000),
        );
        d.put_back(batch);
        assert_eq!(d.queued(), MAX_QUEUED);
        assert_eq!(d.dropped_total(), 12);
        assert_eq!(d.lock().front().map(|r| r.svid_id.as_str()), Some("0"), "put back in order");
    }

    #[test]
    fn facts_of_a_jwt() {
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
        };
        let claims = serde_json::json!({"sub": "spiffe://example.org/w", "jti": "abc", "iat": 10, "exp": 70});
        let token = format!("{}.{}.sig", b64(&serde_json::json!({"alg": "ES256"})), b64(&claims));
        assert_eq!(jwt_facts(&token), Some(("abc".into(), 10, 70)));
        assert_eq!(jwt_facts("not a token"), None);
    }
}
