//! The tamper-evident audit log: every `vouch::audit` event of the server, appended to the store
//! as a hash chain (`vouch_core::audit`, `vouch_ca::audit`) with periodic checkpoints signed by a
//! key of its own, and the admin routes that search, export and verify it.
//!
//! Capture: [`layer`] is a `tracing` layer that takes the `vouch::audit` events (whatever the log
//! level) into a bounded queue, without waiting: a request never blocks on the audit log. The
//! server's [`writer`] drains the queue in batches into the store. When the queue is full (the
//! store is down or far slower than the event rate), an event is dropped and counted
//! (`vouch_audit_dropped_total`), and the next append records an `audit.lost` event with the
//! count, so a gap is itself on the record. The queue has lanes ([`Lane`]) with room of their
//! own, so that refusals anyone can cause never crowd out an admin's change or an issuance. Text
//! fields are cut at [`MAX_FIELD_TEXT`] bytes and JWTs in them redacted. Memory stays bounded: the
//! lanes, and one batch being retried.
//!
//! One process has one queue: in a process running several servers (tests), the first server
//! started drains it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tracing::field::{Field, Visit};
use vouch_api::audit::{
    AuditCheckpointList, AuditKeyList, AuditPage, AuditSearch, DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE,
};
use vouch_api::paths;
use vouch_ca::audit::{chain_hash, AuditSigner, ChainVerifier};
use vouch_ca::Kek;
use vouch_core::audit::{
    AuditEvent, AuditFields, AuditPublicKey, AuditRecord, AuditValue, AuditVerifyReport,
};
use vouch_store::{AuditHead, AuditKeyRecord, AuditQuery, Store};

use crate::config::{pick_setting, ConfigError, EnvLookup, HumanDuration};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::{AppState, Clock};
use crate::StartError;

/// The target of audit events.
pub const AUDIT_TARGET: &str = "vouch::audit";

/// The `[audit]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Whether events are recorded (the log and its routes exist either way).
    pub enabled: bool,
    /// Events waiting to be written, at most; more are dropped and counted.
    pub queue: usize,
    /// Records appended in one transaction, at most.
    pub batch: usize,
    /// A checkpoint after this many records...
    pub checkpoint_records: u64,
    /// ... or after this long, whichever comes first (when there are new records).
    pub checkpoint_interval: Duration,
}

impl Default for AuditConfig {
    /// A queue of 8,192 events (about 4 MB) rides out a store pause of seconds at thousands of
    /// issuances per second; batches of 512 keep one append under a few milliseconds; a
    /// checkpoint every 1,000 records or minute bounds what an attacker with the database could
    /// rewrite unnoticed to the records since the last one.
    fn default() -> Self {
        Self {
            enabled: true,
            queue: 8192,
            batch: 512,
            checkpoint_records: 1000,
            checkpoint_interval: Duration::from_secs(60),
        }
    }
}

/// `[audit]` as written in the file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileAudit {
    enabled: Option<bool>,
    queue: Option<usize>,
    batch: Option<usize>,
    checkpoint_records: Option<u64>,
    checkpoint_interval: Option<HumanDuration>,
}

impl AuditConfig {
    pub(crate) fn build(f: FileAudit, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let interval = pick_setting(
            env,
            "audit",
            "checkpoint_interval",
            f.checkpoint_interval,
            HumanDuration(d.checkpoint_interval),
        )?
        .0;
        let c = Self {
            enabled: pick_setting(env, "audit", "enabled", f.enabled, d.enabled)?,
            queue: pick_setting(env, "audit", "queue", f.queue, d.queue)?,
            batch: pick_setting(env, "audit", "batch", f.batch, d.batch)?,
            checkpoint_records: pick_setting(
                env,
                "audit",
                "checkpoint_records",
                f.checkpoint_records,
                d.checkpoint_records,
            )?,
            checkpoint_interval: interval,
        };
        if !(16..=1_048_576).contains(&c.queue) {
            return Err(ConfigError::Invalid("audit.queue must be 16..=1048576 events".into()));
        }
        if !(1..=10_000).contains(&c.batch) {
            return Err(ConfigError::Invalid("audit.batch must be 1..=10000 records".into()));
        }
        if c.checkpoint_records == 0 {
            return Err(ConfigError::Invalid("audit.checkpoint_records must be at least 1".into()));
        }
        if c.checkpoint_interval < Duration::from_secs(1) {
            return Err(ConfigError::Invalid("audit.checkpoint_interval must be at least 1s".into()));
        }
        Ok(c)
    }
}

/// Which budget of the queue an event takes. Each lane has room of its own, so a flood in one
/// never crowds out another: anyone who can reach the TLS port can cause refusals, an agent (and a
/// workload through it) can cause issuance, but only an admin can change what the server decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Events of authenticated admin requests (changes, and what an admin issues): `queue / 4`
    /// (at least 16) of room, which no one else can use.
    Admin = 0,
    /// Issuance, attestation, decisions and the server's own events: `queue`.
    Main = 1,
    /// Refusals and denials (`*.refused`, `*.denied`, `rate_limited`), which unauthenticated
    /// peers and low-privilege callers can cause at will: `queue / 4` (at least 16).
    Refusal = 2,
}

impl Lane {
    const ALL: [Lane; 3] = [Lane::Admin, Lane::Main, Lane::Refusal];

    /// The lane of `event` emitted now (in the current task).
    fn of(event: &str) -> Lane {
        if ADMIN_REQUEST.try_with(|_| ()).is_ok() {
            Lane::Admin
        } else if is_refusal(event) {
            Lane::Refusal
        } else {
            Lane::Main
        }
    }

    /// Its field in `audit.lost`.
    fn name(self) -> &'static str {
        match self {
            Lane::Admin => "admin",
            Lane::Main => "other",
            Lane::Refusal => "refusals",
        }
    }

    /// Its room in a queue of `queue`.
    fn room(self, queue: usize) -> usize {
        match self {
            Lane::Main => queue.max(1),
            Lane::Admin | Lane::Refusal => (queue / 4).max(16),
        }
    }
}

/// Whether `event` is a refusal or a denial: something a caller without privilege can cause.
fn is_refusal(event: &str) -> bool {
    event.ends_with(".refused") || event.ends_with(".denied") || event == "rate_limited"
}

tokio::task_local! {
    /// Set while an authenticated admin request is handled ([`as_admin`]).
    static ADMIN_REQUEST: ();
}

/// Runs `f` (an admin request that passed authentication) so that its audit events take the
/// admin lane of the queue.
pub(crate) async fn as_admin<F: std::future::Future>(f: F) -> F::Output {
    ADMIN_REQUEST.scope((), f).await
}

/// One lane's count of queued events and of the events it dropped.
#[derive(Default)]
struct LaneCount {
    room: usize,
    queued: std::sync::atomic::AtomicUsize,
    dropped: AtomicU64,
}

/// The process's audit queue: one channel (so that records keep the order of events), whose
/// length each lane bounds for its own events.
struct Hub {
    tx: mpsc::UnboundedSender<(Lane, AuditEvent)>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<(Lane, AuditEvent)>>>,
    lanes: [LaneCount; 3],
    dropped_total: AtomicU64,
}

impl Hub {
    fn new(queue: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let count = |lane: Lane| LaneCount { room: lane.room(queue), ..Default::default() };
        Hub { tx, rx: Mutex::new(Some(rx)), lanes: Lane::ALL.map(count), dropped_total: AtomicU64::new(0) }
    }

    fn lane(&self, lane: Lane) -> &LaneCount {
        &self.lanes[lane as usize]
    }

    /// Queues `ev` if its lane has room; counts it as dropped otherwise.
    fn offer(&self, lane: Lane, ev: AuditEvent) {
        let l = self.lane(lane);
        let reserved =
            l.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| (q < l.room).then_some(q + 1));
        if reserved.is_err() || self.tx.send((lane, ev)).is_err() {
            if reserved.is_ok() {
                l.queued.fetch_sub(1, Ordering::AcqRel);
            }
            l.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An event taken off the queue.
    fn taken(&self, (lane, ev): (Lane, AuditEvent)) -> AuditEvent {
        self.lane(lane).queued.fetch_sub(1, Ordering::AcqRel);
        ev
    }

    /// The events dropped since the last call, by lane; `None` when none were.
    fn lost(&self, now_ms: i64) -> Option<AuditEvent> {
        let mut fields = AuditFields::new();
        let mut total = 0u64;
        for lane in Lane::ALL {
            let n = self.lane(lane).dropped.swap(0, Ordering::Relaxed);
            if n > 0 {
                total = total.saturating_add(n);
                fields.insert(lane.name().to_owned(), AuditValue::from_u64(n));
            }
        }
        (total > 0).then(|| {
            fields.insert("count".to_owned(), AuditValue::from_u64(total));
            AuditEvent { time_ms: now_ms, event: "audit.lost".into(), fields }
        })
    }
}

static HUB: OnceLock<Hub> = OnceLock::new();

/// The capturing layer (see the module documentation); [`layer`] builds it with its filter.
pub struct AuditLayer {
    clock: Arc<dyn Clock>,
}

/// The layer that captures `vouch::audit` events into a queue of `queue` events (and the admin
/// and refusal lanes beside it: [`Lane`]), stamped with `clock`'s time; install it beside the log
/// output (its own filter lets audit events through whatever the log level). The first call in a
/// process sets the queue.
pub fn layer<S>(
    clock: Arc<dyn Clock>,
    queue: usize,
) -> tracing_subscriber::filter::Filtered<AuditLayer, tracing_subscriber::filter::Targets, S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    HUB.get_or_init(|| Hub::new(queue));
    AuditLayer { clock }.with_filter(
        tracing_subscriber::filter::Targets::new().with_target(AUDIT_TARGET, tracing::Level::TRACE),
    )
}

/// The queue's receiving end, once per process (the first server started takes it).
fn take_receiver() -> Option<mpsc::UnboundedReceiver<(Lane, AuditEvent)>> {
    HUB.get().and_then(|h| h.rx.lock().ok()?.take())
}

/// Events dropped because the queue was full, since the process started.
pub fn dropped_total() -> u64 {
    HUB.get().map_or(0, |h| h.dropped_total.load(Ordering::Relaxed))
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AuditLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let Some(hub) = HUB.get() else { return };
        let mut v = Capture::default();
        event.record(&mut v);
        let time_ms = unix_ms(self.clock.now());
        let captured =
            AuditEvent { time_ms, event: v.event.unwrap_or_else(|| "unnamed".into()), fields: v.fields };
        hub.offer(Lane::of(&captured.event), captured);
    }
}

/// Field names whose values are never recorded, whatever a call site passes: a defence in depth
/// behind the rule that no call site logs a secret.
const SECRET_FIELDS: &[&str] = &[
    "password",
    "token",
    "jwt",
    "secret",
    "value",
    "private_key",
    "key",
    "kek",
    "client_secret",
    "subject_token",
];

/// The longest text recorded for one field, in bytes. Refusal reasons echo what a peer sent (a
/// cluster name, an audience, a CSR's error) and a workload chooses its audiences: without a
/// bound, one request could make a record (and the log, and every verification) as large as the
/// request body. Longer text is cut at a character boundary and says how much was cut.
pub const MAX_FIELD_TEXT: usize = 1024;

/// Text that holds a JWT: a run of base64url characters and dots that starts with `eyJ` (a JSON
/// header) and has at least one dot (so a JWT cut short is caught too) is replaced with
/// `[redacted]`, wherever it stands in the text (an error message may quote a token).
fn redact_jwts(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains("eyJ") {
        return s.into();
    }
    let jwt_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("eyJ") {
        let starts_run = rest[..i].chars().next_back().is_none_or(|c| !jwt_char(c));
        let end = rest[i..].find(|c: char| !jwt_char(c)).map_or(rest.len(), |n| i + n);
        let run = &rest[i..end];
        out.push_str(&rest[..i]);
        if starts_run && run.contains('.') && run.len() > 20 {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out.into()
}

/// A `fmt::Write` that keeps the first [`MAX_FIELD_TEXT`] bytes and counts the rest, so that a
/// huge `Debug` value is never held whole.
#[derive(Default)]
struct Bounded {
    text: String,
    cut: usize,
}

impl std::fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        // Once text was cut, nothing more is kept: what is kept stays a prefix.
        if self.cut > 0 {
            self.cut += s.len();
            return Ok(());
        }
        let room = MAX_FIELD_TEXT.saturating_sub(self.text.len());
        let mut n = room.min(s.len());
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.text.push_str(&s[..n]);
        self.cut += s.len() - n;
        Ok(())
    }
}

impl Bounded {
    fn of(value: std::fmt::Arguments<'_>) -> String {
        let mut b = Bounded::default();
        let _ = std::fmt::Write::write_fmt(&mut b, value);
        b.finish()
    }

    fn finish(self) -> String {
        let mut text = redact_jwts(&self.text).into_owned();
        if self.cut > 0 {
            text.push_str(&format!("… [{} more bytes not recorded]", self.cut));
        }
        text
    }
}

#[derive(Default)]
struct Capture {
    event: Option<String>,
    fields: AuditFields,
}

impl Capture {
    fn put(&mut self, field: &Field, value: AuditValue) {
        let name = field.name();
        let value = match value {
            _ if SECRET_FIELDS.contains(&name) => AuditValue::Text("[redacted]".into()),
            v => v,
        };
        if name == "event" {
            self.event = Some(value.to_string());
        } else {
            self.fields.insert(name.to_owned(), value);
        }
    }
}

impl Visit for Capture {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, AuditValue::Text(Bounded::of(format_args!("{value:?}"))));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, AuditValue::Text(Bounded::of(format_args!("{value}"))));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, AuditValue::Int(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, AuditValue::from_u64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, AuditValue::Bool(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, AuditValue::Text(value.to_string()));
    }
}

/// The checkpoint keys: the current signer, and every key's public half (derived from the sealed
/// private keys, never from a column an attacker could rewrite).
pub struct AuditKeys {
    signer: AuditSigner,
    public: Vec<AuditPublicKey>,
}

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKeys").field("current", &self.signer.key_id()).finish()
    }
}

impl AuditKeys {
    /// Loads the keys, creating the first one (sealed under `kek`) on the first start.
    pub(crate) async fn open(store: &dyn Store, kek: &Kek, now_secs: i64) -> Result<Self, StartError> {
        let (candidate, pkcs8) = AuditSigner::generate()?;
        let record = AuditKeyRecord {
            id: candidate.key_id().to_owned(),
            algorithm: vouch_ca::audit::ALGORITHM.into(),
            public_key: candidate.public_key().public_key,
            sealed_key: kek.seal(candidate.key_id(), &pkcs8)?,
            created_at: now_secs,
        };
        let mut signer = None;
        let mut public = Vec::new();
        for k in store.audit_keys(&record).await? {
            let pkcs8 = kek.open(&k.id, &k.sealed_key)?;
            let s = AuditSigner::from_pkcs8(&pkcs8)?;
            if s.key_id() != k.id {
                return Err(StartError::Store(format!(
                    "audit key `{}` holds another key (`{}`): the row was altered; restore the database from a backup",
                    k.id,
                    s.key_id()
                )));
            }
            public.push(s.public_key());
            signer = Some(s);
        }
        let signer = signer.ok_or_else(|| StartError::Store("the store kept no audit key".into()))?;
        Ok(Self { signer, public })
    }

    /// The public keys, the current one last.
    pub fn public_keys(&self) -> &[AuditPublicKey] {
        &self.public
    }
}

/// Counters of the writer.
#[derive(Debug, Default)]
pub struct AuditMetrics {
    records: AtomicU64,
    checkpoints: AtomicU64,
    append_failures: AtomicU64,
}

/// Writes the Prometheus lines of the audit log.
pub(crate) fn render_metrics(state: &AppState, out: &mut String) {
    let m = &state.audit_metrics;
    let c =
        |out: &mut String, name: &str, help: &str, v: u64| vouch_core::metrics::counter(out, name, help, v);
    c(
        out,
        "vouch_audit_records_total",
        "Audit records appended by this server.",
        m.records.load(Ordering::Relaxed),
    );
    c(
        out,
        "vouch_audit_checkpoints_total",
        "Audit checkpoints signed by this server.",
        m.checkpoints.load(Ordering::Relaxed),
    );
    c(
        out,
        "vouch_audit_append_failures_total",
        "Appends to the audit log that failed (retried).",
        m.append_failures.load(Ordering::Relaxed),
    );
    c(
        out,
        "vouch_audit_dropped_total",
        "Audit events dropped because the queue was full (each gap is recorded as audit.lost).",
        dropped_total(),
    );
}

/// Numbers and chains `events` after `head`.
fn seal(events: Vec<AuditEvent>, head: &AuditHead) -> Vec<AuditRecord> {
    let mut prev = head.hash.clone();
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.into_iter().enumerate() {
        let seq = head.seq + 1 + i as u64;
        let hash = chain_hash(&prev, seq, e.time_ms, &e.event, &e.fields);
        prev.clone_from(&hash);
        out.push(AuditRecord { seq, time_ms: e.time_ms, event: e.event, fields: e.fields, hash });
    }
    out
}

/// Unix milliseconds of `t`.
fn unix_ms(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// How long the writer waits after an event for more to append in the same transaction: short
/// enough that a record is searchable at once for a person, long enough to gather hundreds of
/// events at thousands of issuances per second.
const LINGER: Duration = Duration::from_millis(10);

/// Drains the queue into the store until shutdown, then writes what is queued and a final
/// checkpoint.
pub(crate) async fn writer(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let cfg = state.config.audit.clone();
    let mut rx = if cfg.enabled { take_receiver() } else { None };
    let mut last_checkpoint = match state.store.audit_checkpoints().await {
        Ok(cps) => cps.last().map_or(0, |c| c.seq),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the audit checkpoints; the next checkpoint is made at once");
            0
        }
    };
    let mut batch: Vec<AuditEvent> = Vec::new();
    if rx.is_some() {
        batch.extend(resume_record(&state, last_checkpoint).await);
    }
    let mut tick = tokio::time::interval(cfg.checkpoint_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut stopping = false;
    loop {
        if batch.is_empty() && !stopping {
            tokio::select! {
                ev = async { match rx.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => match ev {
                    Some(ev) => batch.push(hub_taken(ev)),
                    None => rx = None,
                },
                _ = tick.tick() => {
                    checkpoint(&state, &mut last_checkpoint, 1).await;
                    continue;
                }
                _ = shutdown.changed() => stopping = true,
            }
        }
        if let Some(rx) = rx.as_mut() {
            // Events that follow within LINGER go into the same transaction. Without the wait,
            // a writer that keeps up takes events one by one: one commit (and one wake-up) per
            // record was most of the log's cost on issuance (0.71 of the rate without it).
            if !stopping && rx.len() + batch.len() < cfg.batch {
                tokio::select! {
                    _ = tokio::time::sleep(LINGER) => {}
                    _ = shutdown.changed() => stopping = true,
                }
            }
            while batch.len() < cfg.batch {
                match rx.try_recv() {
                    Ok(ev) => batch.push(hub_taken(ev)),
                    Err(_) => break,
                }
            }
        }
        if let Some(lost) = HUB.get().and_then(|h| h.lost(unix_ms(state.now()))) {
            match batch.last_mut() {
                Some(last) if last.event == "audit.lost" => {
                    for (k, v) in lost.fields {
                        match (last.fields.get_mut(&k), v) {
                            (Some(AuditValue::Int(n)), AuditValue::Int(m)) => *n = n.saturating_add(m),
                            (_, v) => {
                                last.fields.insert(k, v);
                            }
                        }
                    }
                }
                _ => batch.push(lost),
            }
        }
        if !batch.is_empty() {
            let events = batch.clone();
            let n = events.len() as u64;
            match state.store.append_audit(Box::new(move |head: &AuditHead| seal(events, head))).await {
                Ok(head) => {
                    batch.clear();
                    state.audit_metrics.records.fetch_add(n, Ordering::Relaxed);
                    if head.seq >= last_checkpoint + cfg.checkpoint_records {
                        checkpoint(&state, &mut last_checkpoint, cfg.checkpoint_records).await;
                    }
                }
                Err(e) => {
                    state.audit_metrics.append_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, events = n, "cannot append to the audit log; retrying in 1 s (events arriving meanwhile wait in the queue, or are dropped and counted when it is full)");
                    if stopping {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => stopping = true,
                    }
                    continue;
                }
            }
        }
        let drained = rx.as_ref().is_none_or(|rx| rx.is_empty());
        if stopping && drained {
            checkpoint(&state, &mut last_checkpoint, 1).await;
            return;
        }
    }
}

/// The record that says a server stopped without its final checkpoint, when the log's head is
/// past the last checkpoint at start: the server was killed (`kill -9`, power loss) or another
/// replica is running. A killed server's queued events were never written and could not be
/// counted; this record puts that possible gap on the record (the chain itself has no gap: it
/// continues from the stored head).
async fn resume_record(state: &AppState, last_checkpoint: u64) -> Option<AuditEvent> {
    let head = state.store.audit_head().await.ok()?;
    (head.seq > last_checkpoint).then(|| AuditEvent {
        time_ms: unix_ms(state.now()),
        event: "audit.resume".into(),
        fields: [
            ("head".to_owned(), AuditValue::from_u64(head.seq)),
            ("last_checkpoint".to_owned(), AuditValue::from_u64(last_checkpoint)),
            (
                "message".to_owned(),
                AuditValue::Text(
                    "records after the last checkpoint at start: a server stopped without its final checkpoint (killed, or another replica is running); events it had queued may be missing".into(),
                ),
            ),
        ]
        .into(),
    })
}

/// An event taken off the queue, its lane's room given back.
fn hub_taken(ev: (Lane, AuditEvent)) -> AuditEvent {
    match HUB.get() {
        Some(hub) => hub.taken(ev),
        None => ev.1,
    }
}

/// Signs a checkpoint of the head when at least `min_new` records followed the last one.
async fn checkpoint(state: &AppState, last: &mut u64, min_new: u64) {
    let head = match state.store.audit_head().await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the audit log's head for a checkpoint");
            return;
        }
    };
    if head.seq < *last + min_new || head.seq == 0 {
        return;
    }
    let cp = state.audit_keys.signer.checkpoint(head.seq, &head.hash, unix_ms(state.now()));
    match state.store.add_audit_checkpoint(&cp).await {
        Ok(_) => {
            *last = head.seq;
            state.audit_metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(error = %e, seq = head.seq, "cannot store an audit checkpoint"),
    }
}

/// Walks the whole log in pages against the checkpoints and the server's audit keys.
pub async fn verify(state: &AppState) -> Result<AuditVerifyReport, ApiError> {
    let head = state.store.audit_head().await?;
    let checkpoints = state.store.audit_checkpoints().await?;
    let mut v = ChainVerifier::new(state.audit_keys.public_keys(), checkpoints)
        .map_err(|e| ApiError::internal("audit keys", e))?;
    let mut after = 0;
    loop {
        let page = state
            .store
            .audit_records(&AuditQuery { after_seq: after, limit: 5000, ..Default::default() })
            .await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let full = page.len() == 5000;
        v.feed(page);
        if v.failed() || !full {
            break;
        }
    }
    Ok(v.finish(Some(head.seq)))
}

pub(crate) fn admin_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(paths::AUDIT_RECORDS, get(records))
        .route(paths::AUDIT_CHECKPOINTS, get(checkpoints))
        .route(paths::AUDIT_KEYS, get(keys))
        .route(paths::AUDIT_VERIFY, get(verify_route))
}

/// The store query of a search, every parameter checked.
fn query_of(q: AuditSearch) -> Result<AuditQuery, ApiError> {
    let time = |name: &str, v: Option<String>| {
        v.map(|t| {
            vouch_core::ttl::parse_rfc3339_ms(&t).map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
        })
        .transpose()
    };
    let limit = q.limit.unwrap_or(DEFAULT_AUDIT_PAGE);
    if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit: {limit} is outside 1..={MAX_AUDIT_PAGE}")));
    }
    let (since_ms, until_ms) = (time("since", q.since)?, time("until", q.until)?);
    if let (Some(s), Some(u)) = (since_ms, until_ms) {
        if s >= u {
            return Err(ApiError::bad_request("since must be before until"));
        }
    }
    let nonempty = |name: &str, v: Option<String>| match v {
        Some(t) if t.is_empty() || t.len() > 2048 => {
            Err(ApiError::bad_request(format!("{name}: give 1 to 2048 characters, or leave it out")))
        }
        other => Ok(other),
    };
    Ok(AuditQuery {
        spiffe_id: nonempty("spiffe_id", q.spiffe_id)?,
        node: nonempty("node", q.node)?,
        event: nonempty("event", q.event)?,
        since_ms,
        until_ms,
        after_seq: q.after.unwrap_or(0),
        limit,
    })
}

async fn records(
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<AuditSearch>,
) -> Result<Json<AuditPage>, ApiError> {
    let query = query_of(q)?;
    let records = state.store.audit_records(&query).await?;
    let next_after = (records.len() == query.limit as usize).then(|| records.last().map(|r| r.seq)).flatten();
    Ok(Json(AuditPage { records, next_after }))
}

async fn checkpoints(State(state): State<Arc<AppState>>) -> Result<Json<AuditCheckpointList>, ApiError> {
    Ok(Json(AuditCheckpointList { checkpoints: state.store.audit_checkpoints().await? }))
}

async fn keys(State(state): State<Arc<AppState>>) -> Json<AuditKeyList> {
    Json(AuditKeyList { keys: state.audit_keys.public_keys().to_vec() })
}

async fn verify_route(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
) -> Result<Json<AuditVerifyReport>, ApiError> {
    let report = verify(&state).await?;
    let problem_seq = report.problem.as_ref().map(|p| p.seq);
    tracing::info!(target: "vouch::audit", event = "audit.verify", %caller, records = report.records, checkpoints = report.checkpoints, ok = report.ok(), problem_seq);
    Ok(Json(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_a_record() {
        let mut c = Capture::default();
        let [e, p, path, note] = test_fields(&["event", "password", "path", "note"]);
        c.record_str(&e, "secret.put");
        c.record_str(&p, "hunter2");
        c.record_str(&path, "db/pw");
        c.record_str(&note, "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln");
        assert_eq!(c.event.as_deref(), Some("secret.put"));
        assert_eq!(c.fields.get("password"), Some(&AuditValue::Text("[redacted]".into())));
        assert_eq!(c.fields.get("path"), Some(&AuditValue::Text("db/pw".into())));
        assert_eq!(
            c.fields.get("note"),
            Some(&AuditValue::Text("[redacted]".into())),
            "a JWT is never recorded"
        );
    }

    #[test]
    fn peer_text_is_bounded_and_quoted_tokens_are_redacted() {
        let mut c = Capture::default();
        let [reason, audience, note, short] = test_fields(&["reason", "audience", "note", "short"]);
        // A peer's cluster name of 1 MB, echoed into a refusal reason.
        let huge = format!("unknown cluster `{}`", "é".repeat(500_000));
        c.record_str(&reason, &huge);
        // A workload's 100,000 audiences, recorded with `?`.
        let audiences: Vec<String> = (0..100_000).map(|i| format!("aud-{i}")).collect();
        c.record_debug(&audience, &audiences);
        // A token quoted inside an error message, and one cut short by the bound.
        c.record_str(&note, "subject_token `eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln` expired");
        c.record_str(&short, &format!("{}eyJhbGciOiJFUzI1NiJ9.{}", "x ".repeat(500), "A".repeat(5000)));
        let text = |k: &str| match c.fields.get(k) {
            Some(AuditValue::Text(t)) => t.clone(),
            other => panic!("{k}: {other:?}"),
        };
        let (r, a) = (text("reason"), text("audience"));
        assert!(r.len() < MAX_FIELD_TEXT + 64 && r.starts_with("unknown cluster `é"), "{}", r.len());
        assert!(
            r.ends_with(&format!("… [{} more bytes not recorded]", huge.len() - MAX_FIELD_TEXT + 1)),
            "{r}"
        );
        assert!(a.len() < MAX_FIELD_TEXT + 64 && a.starts_with("[\"aud-0\", "), "{a}");
        assert_eq!(text("note"), "subject_token `[redacted]` expired");
        let s = text("short");
        assert!(!s.contains("eyJ") && s.contains("[redacted]"), "{s}");
        assert!(!redact_jwts("keyJar.x.y is no token").contains("redacted"));
    }

    #[tokio::test]
    async fn floods_in_one_lane_never_take_an_admins_room() {
        let hub = Hub::new(64);
        let ev = |name: &str| AuditEvent { time_ms: 0, event: name.into(), fields: AuditFields::new() };
        assert_eq!(Lane::of("tls.refused"), Lane::Refusal);
        assert_eq!(Lane::of("secret.read.denied"), Lane::Refusal);
        assert_eq!(Lane::of("svid.jwt.mint"), Lane::Main);
        // Anyone's refusals and an agent's issuance, far beyond the room of their lanes.
        for _ in 0..1000 {
            hub.offer(Lane::of("tls.refused"), ev("tls.refused"));
            hub.offer(Lane::of("svid.jwt.mint"), ev("svid.jwt.mint"));
        }
        // An admin's change still has room.
        let lane = as_admin(async { Lane::of("entry.create") }).await;
        assert_eq!(lane, Lane::Admin);
        hub.offer(lane, ev("entry.create"));
        let lost = hub.lost(0).unwrap();
        assert_eq!(lost.fields.get("refusals"), Some(&AuditValue::Int(1000 - 16)));
        assert_eq!(lost.fields.get("other"), Some(&AuditValue::Int(1000 - 64)));
        assert_eq!(lost.fields.get("count"), Some(&AuditValue::Int(2000 - 80)));
        assert_eq!(lost.fields.get("admin"), None, "{lost:?}");
        let mut rx = hub.rx.lock().unwrap().take().unwrap();
        let mut got = Vec::new();
        while let Ok(e) = rx.try_recv() {
            got.push(hub.taken(e).event);
        }
        assert_eq!(got.len(), 81);
        assert_eq!(got.last().map(String::as_str), Some("entry.create"));
        // Taking events gives their room back.
        hub.offer(Lane::Refusal, ev("tls.refused"));
        assert!(hub.lost(0).is_none());
    }

    /// The fields `names` of a test callsite.
    fn test_fields(names: &'static [&'static str; 4]) -> [Field; 4] {
        let set = tracing::field::FieldSet::new(names, tracing::callsite::Identifier(&CALLSITE));
        let fields: Vec<Field> = set.iter().collect();
        fields.try_into().unwrap()
    }

    struct Cs;
    impl tracing::callsite::Callsite for Cs {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unimplemented!()
        }
    }
    static CALLSITE: Cs = Cs;

    #[test]
    fn config_defaults_and_bounds() {
        let none = |_: &str| None;
        let d = AuditConfig::build(FileAudit::default(), &none).unwrap();
        assert_eq!(d, AuditConfig::default());
        let env = |k: &str| (k == "VOUCH_AUDIT_CHECKPOINT_RECORDS").then(|| "5".to_owned());
        assert_eq!(AuditConfig::build(FileAudit::default(), &env).unwrap().checkpoint_records, 5);
        let bad = |k: &str| (k == "VOUCH_AUDIT_QUEUE").then(|| "3".to_owned());
        assert!(AuditConfig::build(FileAudit::default(), &bad)
            .unwrap_err()
            .to_string()
            .contains("audit.queue"));
        let bad = |k: &str| (k == "VOUCH_AUDIT_ENABLED").then(|| "maybe".to_owned());
        assert!(AuditConfig::build(FileAudit::default(), &bad)
            .unwrap_err()
            .to_string()
            .contains("VOUCH_AUDIT_ENABLED"));
    }

    #[test]
    fn searches_are_checked() {
        let q = |s: AuditSearch| query_of(s).map_err(|e| e.detail().message);
        assert_eq!(q(AuditSearch::default()).unwrap().limit, DEFAULT_AUDIT_PAGE);
        assert!(q(AuditSearch { limit: Some(0), ..Default::default() }).unwrap_err().contains("limit"));
        assert!(q(AuditSearch { limit: Some(5000), ..Default::default() }).unwrap_err().contains("1..=1000"));
        let err = q(AuditSearch { since: Some("yesterday".into()), ..Default::default() }).unwrap_err();
        assert!(err.starts_with("since:") && err.contains("RFC 3339"), "{err}");
        let err = q(AuditSearch {
            since: Some("2026-01-02T00:00:00Z".into()),
            until: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("before"), "{err}");
        assert!(q(AuditSearch { event: Some(String::new()), ..Default::default() }).is_err());
    }
}
