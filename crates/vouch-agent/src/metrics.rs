//! The agent's Prometheus metrics: what it holds, how fast and how often the Workload API answers,
//! why it refuses workloads, and how its link to the server fares. Rendered as text by
//! [`AgentMetrics::render`], answered on the admin socket (`vouch agent metrics`) and, when
//! `metrics_listen` is set, on `GET /metrics` over plain HTTP ([`serve_http`]).
//!
//! Every label has a fixed set of values (an RPC name, a refusal reason, a server operation), so a
//! caller cannot grow the number of series: nothing from a request or a workload becomes a label.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use vouch_core::metrics::{counter, gauge, header, Histogram};

use crate::attest::AttestError;
use crate::state::AgentState;

/// A Workload API method, as the `rpc` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// `FetchX509SVID`.
    FetchX509Svid,
    /// `FetchX509Bundles`.
    FetchX509Bundles,
    /// `FetchJWTSVID`.
    FetchJwtSvid,
    /// `FetchJWTBundles`.
    FetchJwtBundles,
    /// `ValidateJWTSVID`.
    ValidateJwtSvid,
}

impl Rpc {
    /// Every method, in label order.
    pub const ALL: [Self; 5] = [
        Self::FetchX509Svid,
        Self::FetchX509Bundles,
        Self::FetchJwtSvid,
        Self::FetchJwtBundles,
        Self::ValidateJwtSvid,
    ];

    /// The method's name in the SPIFFE Workload API.
    pub fn label(self) -> &'static str {
        match self {
            Self::FetchX509Svid => "FetchX509SVID",
            Self::FetchX509Bundles => "FetchX509Bundles",
            Self::FetchJwtSvid => "FetchJWTSVID",
            Self::FetchJwtBundles => "FetchJWTBundles",
            Self::ValidateJwtSvid => "ValidateJWTSVID",
        }
    }
}

/// Why a workload was refused an identity, as the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request lacked the `workload.spiffe.io: true` metadata.
    MissingHeader,
    /// The caller's process could not be pinned when it connected.
    PeerUnknown,
    /// The caller exited (or its pid was reused) during attestation.
    ProcessGone,
    /// `/proc` or the cgroup could not be read.
    AttestationFailed,
    /// The container runtime (or kubelet) could not confirm the caller's container.
    RuntimeUnconfirmed,
    /// Attested, but no entry matches its selectors.
    NoMatch,
    /// The caller executed another program since it connected.
    ExecChanged,
    /// The connection was closed at once: the agent or the caller's uid held its connection bound.
    ConnectionLimit,
    /// The caller did not send a complete first request in time after connecting.
    SlowRequest,
    /// The caller's uid already had an executable hash waiting or running.
    HashBusy,
}

impl Refusal {
    /// Every reason, in label order.
    pub const ALL: [Self; 10] = [
        Self::MissingHeader,
        Self::PeerUnknown,
        Self::ProcessGone,
        Self::AttestationFailed,
        Self::RuntimeUnconfirmed,
        Self::NoMatch,
        Self::ExecChanged,
        Self::ConnectionLimit,
        Self::SlowRequest,
        Self::HashBusy,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::MissingHeader => "missing_header",
            Self::PeerUnknown => "peer_unknown",
            Self::ProcessGone => "process_gone",
            Self::AttestationFailed => "attestation_failed",
            Self::RuntimeUnconfirmed => "runtime_unconfirmed",
            Self::NoMatch => "no_match",
            Self::ExecChanged => "exec_changed",
            Self::ConnectionLimit => "connection_limit",
            Self::SlowRequest => "slow_request",
            Self::HashBusy => "hash_busy",
        }
    }

    /// The reason for an attestation error.
    pub fn of(error: &AttestError) -> Self {
        match error {
            AttestError::Peer(_) => Self::PeerUnknown,
            AttestError::ProcessGone(_) | AttestError::PidReused(_) => Self::ProcessGone,
            AttestError::ExecChanged(_) => Self::ExecChanged,
            AttestError::Proc { .. } | AttestError::Cgroup { .. } => Self::AttestationFailed,
            AttestError::Runtime(_) => Self::RuntimeUnconfirmed,
            AttestError::HashBusy(_) => Self::HashBusy,
        }
    }
}

/// What the agent asked the server for when it failed, as the `op` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerOp {
    /// The sync stream failed or could not be opened.
    Sync,
    /// Signing X509-SVIDs (first issue or rotation).
    Sign,
    /// A JWT-SVID.
    Jwt,
    /// Renewing the agent's own SVID.
    Renew,
}

impl ServerOp {
    /// Every operation, in label order.
    pub const ALL: [Self; 4] = [Self::Sync, Self::Sign, Self::Jwt, Self::Renew];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Sign => "sign",
            Self::Jwt => "jwt",
            Self::Renew => "renew",
        }
    }
}

/// The agent's counters and histograms. Gauges that the state already knows (SVIDs held,
/// connected) are read from it at render time, see [`Gauges`].
#[derive(Debug, Default)]
pub struct AgentMetrics {
    rpc_latency: [Histogram; Rpc::ALL.len()],
    refusals: [AtomicU64; Refusal::ALL.len()],
    server_errors: [AtomicU64; ServerOp::ALL.len()],
    rate_limited: [AtomicU64; ServerOp::ALL.len()],
    reconnects: AtomicU64,
    rotations: AtomicU64,
    /// Unix seconds of the last sync line; 0 before the first.
    last_sync_line: AtomicI64,
    workload_api_up: AtomicBool,
}

/// The gauges read from the agent's state when rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    /// Workload X509-SVIDs held.
    pub svids_held: u64,
    /// Entries the agent may serve.
    pub entries: u64,
    /// Whether the sync stream is up.
    pub connected: bool,
    /// When the agent's own SVID expires (unix seconds).
    pub agent_svid_expires_at: i64,
    /// Times a server address was found down and set aside (a counter the server link keeps).
    pub server_failovers: u64,
}

impl AgentMetrics {
    /// Records how long a Workload API call took (to its answer, or to the first message of a stream).
    pub fn observe_rpc(&self, rpc: Rpc, took: Duration) {
        self.rpc_latency[rpc as usize].observe(took);
    }

    /// How many calls of `rpc` were recorded.
    pub fn rpc_count(&self, rpc: Rpc) -> u64 {
        self.rpc_latency[rpc as usize].count()
    }

    /// Counts a refused workload.
    pub fn refused(&self, reason: Refusal) {
        self.refusals[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many workloads were refused for `reason`.
    pub fn refusals(&self, reason: Refusal) -> u64 {
        self.refusals[reason as usize].load(Ordering::Relaxed)
    }

    /// Counts a failed request to the server.
    pub fn server_error(&self, op: ServerOp) {
        self.server_errors[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refusal by the server's rate limit (429 `rate_limited`; the agent then waits).
    pub fn rate_limited(&self, op: ServerOp) {
        self.rate_limited[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many times the server refused `op` by its rate limit.
    pub fn rate_limited_count(&self, op: ServerOp) -> u64 {
        self.rate_limited[op as usize].load(Ordering::Relaxed)
    }

    /// Counts a reconnection of the sync stream.
    pub fn reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts rotated SVIDs.
    pub fn rotated(&self, n: usize) {
        self.rotations.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Notes that a sync line arrived at `at`.
    pub fn sync_line(&self, at: SystemTime) {
        self.last_sync_line.store(vouch_core::ttl::unix_seconds(at), Ordering::Relaxed);
    }

    /// When the last sync line arrived (unix seconds).
    pub fn last_sync_at(&self) -> Option<i64> {
        Some(self.last_sync_line.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// Notes whether the Workload API server is running.
    pub fn set_workload_api_up(&self, up: bool) {
        self.workload_api_up.store(up, Ordering::Relaxed);
    }

    /// Whether the Workload API server is running.
    pub fn workload_api_up(&self) -> bool {
        self.workload_api_up.load(Ordering::Relaxed)
    }

    /// The text exposition.
    pub fn render(&self, g: Gauges) -> String {
        let mut out = String::new();
        gauge(&mut out, "vouch_agent_svids_held", "Workload X509-SVIDs the agent holds.", g.svids_held);
        gauge(&mut out, "vouch_agent_entries", "Registration entries the agent may serve.", g.entries);
        gauge(
            &mut out,
            "vouch_agent_workload_api_up",
            "1 while the Workload API socket is served.",
            u8::from(self.workload_api_up()),
        );
        gauge(
            &mut out,
            "vouch_agent_svid_expiry_timestamp_seconds",
            "When the agent's own SVID expires (unix seconds).",
            g.agent_svid_expires_at,
        );
        header(
            &mut out,
            "vouch_agent_workload_api_request_seconds",
            "histogram",
            "Workload API latency per method, to the answer or a stream's first message.",
        );
        for rpc in Rpc::ALL {
            let labels = format!("rpc=\"{}\",", rpc.label());
            self.rpc_latency[rpc as usize].render(
                &mut out,
                "vouch_agent_workload_api_request_seconds",
                &labels,
            );
        }
        header(
            &mut out,
            "vouch_agent_workload_refusals_total",
            "counter",
            "Workloads refused an identity, by reason.",
        );
        for r in Refusal::ALL {
            let _ = writeln!(
                out,
                "vouch_agent_workload_refusals_total{{reason=\"{}\"}} {}",
                r.label(),
                self.refusals(r)
            );
        }
        gauge(
            &mut out,
            "vouch_agent_sync_connected",
            "1 while the sync stream from the server is up.",
            u8::from(g.connected),
        );
        gauge(
            &mut out,
            "vouch_agent_sync_last_line_timestamp_seconds",
            "When the last sync line (or ping) arrived from the server (unix seconds; 0: never).",
            self.last_sync_at().unwrap_or(0),
        );
        counter(
            &mut out,
            "vouch_agent_sync_reconnects_total",
            "Attempts to open the sync stream again after it ended or failed.",
            self.reconnects.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "vouch_agent_server_failovers_total",
            "Times a server address was found down (refused, reset, timed out, 5xx, silent stream) and set aside for a cooldown; calls and the sync stream use the other addresses meanwhile.",
            g.server_failovers,
        );
        counter(
            &mut out,
            "vouch_agent_svid_rotations_total",
            "Workload X509-SVIDs replaced at their renewal time.",
            self.rotations.load(Ordering::Relaxed),
        );
        for (name, help, counts) in [
            (
                "vouch_agent_server_errors_total",
                "Failed requests to the server, by operation.",
                &self.server_errors,
            ),
            (
                "vouch_agent_server_rate_limited_total",
                "Requests the server refused by its rate limit (the agent waited as told), by operation.",
                &self.rate_limited,
            ),
        ] {
            header(&mut out, name, "counter", help);
            for op in ServerOp::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{op=\"{}\"}} {}",
                    op.label(),
                    counts[op as usize].load(Ordering::Relaxed)
                );
            }
        }
        out
    }
}

/// Records a Workload API call's latency when dropped, whichever way the call returns.
#[derive(Debug)]
pub struct RpcTimer<'a> {
    metrics: &'a AgentMetrics,
    rpc: Rpc,
    started: Instant,
}

impl<'a> RpcTimer<'a> {
    /// Starts timing a call of `rpc`.
    pub fn start(metrics: &'a AgentMetrics, rpc: Rpc) -> Self {
        Self { metrics, rpc, started: Instant::now() }
    }
}

impl Drop for RpcTimer<'_> {
    fn drop(&mut self) {
        self.metrics.observe_rpc(self.rpc, self.started.elapsed());
    }
}

/// The metrics of a running agent.
pub fn render(state: &AgentState) -> String {
    let id = state.link.identity();
    let mut out = state.metrics.render(Gauges {
        svids_held: u64::try_from(state.cache.x509_len()).unwrap_or(u64::MAX),
        entries: u64::try_from(state.registry.entries().len()).unwrap_or(u64::MAX),
        connected: state.link.connected(),
        agent_svid_expires_at: vouch_core::ttl::unix_seconds(id.not_after),
        server_failovers: state.link.failovers(),
    });
    let d = &state.deliveries;
    counter(
        &mut out,
        "vouch_agent_deliveries_reported_total",
        "Records of SVIDs delivered to workloads that the server accepted (forensics, `vouch audit who`).",
        d.reported_total(),
    );
    counter(
        &mut out,
        "vouch_agent_deliveries_dropped_total",
        "Delivery records dropped: the queue was full (the server unreachable for long) or the server refused a batch. The count is reported to the server with the next batch.",
        d.dropped_total(),
    );
    gauge(
        &mut out,
        "vouch_agent_deliveries_queued",
        "Delivery records waiting to be reported.",
        u64::try_from(d.queued()).unwrap_or(u64::MAX),
    );
    out
}

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// Largest request head read (hyper's smallest buffer); a larger one is answered 431 and closed.
pub const MAX_REQUEST_HEAD: usize = 8192;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may last in all.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` on `listener` until the task is dropped: one request per connection, at
/// most [`MAX_CONNECTIONS`] at a time, heads of at most [`MAX_REQUEST_HEAD`] bytes, bodies never
/// read; every other path is 404, every other method 405.
pub async fn serve_http(listener: TcpListener, state: Arc<AgentState>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = answer(&req, &state);
                async move { Ok::<_, Infallible>(response) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .max_buf_size(MAX_REQUEST_HEAD)
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                tracing::debug!(error = %e, "metrics connection failed");
            }
        });
    }
}

fn answer<B>(req: &Request<B>, state: &AgentState) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut r = text(StatusCode::OK, render(state));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            r
        }
        (_, "/metrics") => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics\n".into());
            r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found: this listener serves only GET /metrics\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_value_is_rendered_and_counts_land_on_their_own_series() {
        let m = AgentMetrics::default();
        m.observe_rpc(Rpc::FetchJwtSvid, Duration::from_millis(3));
        m.refused(Refusal::NoMatch);
        m.refused(Refusal::NoMatch);
        m.refused(Refusal::MissingHeader);
        m.server_error(ServerOp::Sign);
        m.rate_limited(ServerOp::Jwt);
        m.reconnect();
        m.rotated(3);
        m.sync_line(vouch_core::ttl::from_unix_seconds(1_700_000_000));
        m.set_workload_api_up(true);
        let text = m.render(Gauges {
            svids_held: 2,
            entries: 5,
            connected: true,
            agent_svid_expires_at: 1_700_003_600,
            server_failovers: 4,
        });
        for line in [
            "vouch_agent_svids_held 2\n",
            "vouch_agent_entries 5\n",
            "vouch_agent_workload_api_up 1\n",
            "vouch_agent_svid_expiry_timestamp_seconds 1700003600\n",
            "vouch_agent_workload_api_request_seconds_count{rpc=\"FetchJWTSVID\"} 1\n",
            "vouch_agent_workload_api_request_seconds_bucket{rpc=\"FetchJWTSVID\",le=\"0.0025\"} 0\n",
            "vouch_agent_workload_api_request_seconds_bucket{rpc=\"FetchJWTSVID\",le=\"0.005\"} 1\n",
            "vouch_agent_workload_api_request_seconds_count{rpc=\"FetchX509SVID\"} 0\n",
            "vouch_agent_workload_refusals_total{reason=\"no_match\"} 2\n",
            "vouch_agent_workload_refusals_total{reason=\"missing_header\"} 1\n",
            "vouch_agent_workload_refusals_total{reason=\"runtime_unconfirmed\"} 0\n",
            "vouch_agent_sync_connected 1\n",
            "vouch_agent_sync_last_line_timestamp_seconds 1700000000\n",
            "vouch_agent_sync_reconnects_total 1\n",
            "vouch_agent_svid_rotations_total 3\n",
            "vouch_agent_server_failovers_total 4\n",
            "vouch_agent_server_errors_total{op=\"sign\"} 1\n",
            "vouch_agent_server_errors_total{op=\"renew\"} 0\n",
            "vouch_agent_server_rate_limited_total{op=\"jwt\"} 1\n",
            "vouch_agent_server_rate_limited_total{op=\"sign\"} 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // Every family has one HELP and one TYPE line.
        let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(families, text.lines().filter(|l| l.starts_with("# HELP ")).count());
        assert_eq!(families, 13);
    }

    #[test]
    fn attestation_errors_map_to_fixed_reasons() {
        let cases = [
            (AttestError::Peer("x".into()), "peer_unknown"),
            (AttestError::ProcessGone(4), "process_gone"),
            (AttestError::PidReused(4), "process_gone"),
            (AttestError::ExecChanged(4), "exec_changed"),
            (AttestError::Proc { pid: 4, what: "status" }, "attestation_failed"),
            (AttestError::Runtime("docker does not know container `abc`".into()), "runtime_unconfirmed"),
            (AttestError::HashBusy(1000), "hash_busy"),
        ];
        for (error, label) in cases {
            assert_eq!(Refusal::of(&error).label(), label, "{error}");
        }
    }
}
