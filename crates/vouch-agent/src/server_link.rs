//! The agent's link to the server: its own identity (SVID and key), the mTLS clients built from it,
//! which of the server's replicas it talks to, and whether the sync stream is up.
//!
//! Replicas: every configured address, and every address a configured name resolves to, is an
//! [`Endpoint`]. A call goes first to the endpoint the sync stream is on (known to be up), then to
//! the others: in configured order with `server_order = "listed"`; by default (`spread`) the list
//! is rotated by an offset each agent draws at start, so a fleet sharing one configuration does
//! not all sync with the first replica. An endpoint that fails (no connection, reset, timeout, a 5xx)
//! goes to the back of the order for a cooldown (1 s doubling to 30 s, with jitter): a dead
//! replica costs one failed attempt, not one per call, and is tried again when its cooldown is
//! over. Every replica presents `spiffe://<trust domain>/vouch/server`, checked alike for each.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use vouch_api::agent::{AgentSvid, RenewRequest};
use vouch_api::Der;
use vouch_ca::WorkloadKey;
use vouch_client::{AdminClient, ClientError, SyncStream};
use vouch_core::SpiffeId;

use crate::config::{ServerAddr, ServerOrder};
use crate::identity::AgentIdentity;
use crate::AgentError;

/// Longest wait for a TCP connection and TLS handshake to one replica: a host that does not answer
/// (down, partitioned, stopped) is given up on this soon, so the next one is tried well within the
/// call's own timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often names are resolved again (a replica set behind a DNS name may change).
const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// First cooldown of a failed endpoint; doubles with each further failure.
const COOLDOWN_MIN: Duration = Duration::from_secs(1);
/// Longest cooldown of a failed endpoint.
const COOLDOWN_MAX: Duration = Duration::from_secs(30);

/// One address of one replica: the configured server and one socket address it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As configured.
    pub server: ServerAddr,
    /// Where it is reached (the configured IP, or one the name resolved to).
    pub addr: SocketAddr,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.server.host().parse::<IpAddr>().is_ok() {
            write!(f, "{}", self.server)
        } else {
            write!(f, "{} ({})", self.server, self.addr)
        }
    }
}

struct Tracked {
    endpoint: Endpoint,
    failures: u32,
    down_until: Option<Instant>,
}

/// What the agent knows of its endpoints' health: decisions only (time and jitter are
/// parameters), so they are tested without sockets.
#[derive(Default)]
struct Failover {
    endpoints: Vec<Tracked>,
    /// The endpoint the sync stream is on.
    current: Option<Endpoint>,
    /// The endpoint the sync stream was last on, and why it left it.
    left: Option<(Endpoint, String)>,
    /// How far the list of live endpoints is rotated before it is tried (0: as configured).
    spread: usize,
}

impl Failover {
    /// Replaces the endpoint list (after resolving), keeping what is known of the ones that stay.
    fn set_endpoints(&mut self, endpoints: Vec<Endpoint>) {
        let mut old = std::mem::take(&mut self.endpoints);
        self.endpoints = endpoints
            .into_iter()
            .map(|endpoint| match old.iter().position(|t| t.endpoint == endpoint) {
                Some(i) => old.swap_remove(i),
                None => Tracked { endpoint, failures: 0, down_until: None },
            })
            .collect();
    }

    /// The order to try endpoints in at `now`: the sync stream's first, then the others that are
    /// not cooling down (configured order, rotated by `spread`), then those cooling down, the
    /// soonest done first.
    fn order(&self, now: Instant) -> Vec<Endpoint> {
        let up = |t: &&Tracked| t.down_until.is_none_or(|u| u <= now);
        let mut live: Vec<&Tracked> = self.endpoints.iter().filter(up).collect();
        if !live.is_empty() {
            let by = self.spread % live.len();
            live.rotate_left(by);
        }
        if let Some(i) = live.iter().position(|t| Some(&t.endpoint) == self.current.as_ref()) {
            let current = live.remove(i);
            live.insert(0, current);
        }
        let mut down: Vec<&Tracked> = self.endpoints.iter().filter(|t| !up(t)).collect();
        down.sort_by_key(|t| t.down_until);
        live.into_iter().chain(down).map(|t| t.endpoint.clone()).collect()
    }

    /// Records a failure of `endpoint` at `now`; its cooldown, and whether it was up before (so
    /// the change is logged once, not at every retry).
    fn failed(&mut self, endpoint: &Endpoint, now: Instant, jitter: f64) -> Option<(Duration, bool)> {
        let t = self.endpoints.iter_mut().find(|t| &t.endpoint == endpoint)?;
        let was_up = t.failures == 0;
        t.failures = t.failures.saturating_add(1);
        let base = COOLDOWN_MIN.saturating_mul(1 << (t.failures - 1).min(5)).min(COOLDOWN_MAX);
        // Jitter (up to half again): agents that lost the same replica do not all retry it at once.
        let cooldown = base + base.mul_f64(jitter.clamp(0.0, 1.0) / 2.0);
        t.down_until = Some(now + cooldown);
        if self.current.as_ref() == Some(endpoint) {
            self.current = None;
        }
        Some((cooldown, was_up))
    }

    /// Records an answer from `endpoint`.
    fn succeeded(&mut self, endpoint: &Endpoint) {
        if let Some(t) = self.endpoints.iter_mut().find(|t| &t.endpoint == endpoint) {
            t.failures = 0;
            t.down_until = None;
        }
    }
}

/// Whether a failed call says nothing about the request, only about the replica (it could not be
/// reached, the connection broke, it timed out, or it failed inside), so another replica may
/// answer. An answered refusal (4xx, a rate limit) is the same on every replica: not retried.
pub(crate) fn unreachable(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } | ClientError::Timeout { .. } | ClientError::Protocol(_) => true,
        ClientError::Api { status, .. } => *status >= 500,
        ClientError::RateLimited { .. } | ClientError::Tls(_) => false,
    }
}

/// The rotation of the endpoint list for `order`: random (drawn once per agent) or none.
fn spread(order: ServerOrder) -> usize {
    match order {
        ServerOrder::Listed => 0,
        ServerOrder::Spread => {
            usize::from(u16::from_le_bytes(vouch_ca::keys::random_bytes::<2>().unwrap_or([0, 0])))
        }
    }
}

/// A jitter fraction in `0..1` from fresh randomness.
fn jitter() -> f64 {
    let b = vouch_ca::keys::random_bytes::<2>().unwrap_or([0, 0]);
    f64::from(u16::from_le_bytes(b)) / 65536.0
}

/// The agent's identity and the clients that present it, to each of the server's replicas.
pub struct ServerLink {
    /// The configured server addresses.
    servers: Vec<ServerAddr>,
    identity: RwLock<Arc<AgentIdentity>>,
    /// One client per configured server, same order.
    clients: RwLock<Vec<AdminClient>>,
    failover: Mutex<Failover>,
    resolved_at: Mutex<Option<Instant>>,
    connected: AtomicBool,
    /// Times an endpoint that was up was found down.
    failovers: AtomicU64,
}

fn clients(servers: &[ServerAddr], identity: &AgentIdentity) -> Result<Vec<AdminClient>, AgentError> {
    servers
        .iter()
        .map(|s| Ok(identity.client(&s.to_string())?.with_connect_timeout(CONNECT_TIMEOUT)))
        .collect()
}

impl ServerLink {
    /// A link to `servers` (at least one) as `identity`, tried first in `order`.
    pub fn new(
        servers: Vec<ServerAddr>,
        order: ServerOrder,
        identity: AgentIdentity,
    ) -> Result<Self, AgentError> {
        if servers.is_empty() {
            return Err(AgentError::Config("no server address is configured".into()));
        }
        let clients = clients(&servers, &identity)?;
        Ok(Self {
            servers,
            identity: RwLock::new(Arc::new(identity)),
            clients: RwLock::new(clients),
            failover: Mutex::new(Failover { spread: spread(order), ..Failover::default() }),
            resolved_at: Mutex::default(),
            connected: AtomicBool::new(false),
            failovers: AtomicU64::new(0),
        })
    }

    /// The configured server addresses.
    pub fn servers(&self) -> &[ServerAddr] {
        &self.servers
    }

    /// The endpoint the sync stream is on, if it is up.
    pub fn server(&self) -> Option<Endpoint> {
        self.lock().current.clone()
    }

    /// The agent's SPIFFE ID.
    pub fn agent_id(&self) -> SpiffeId {
        self.identity().spiffe_id.clone()
    }

    /// The agent's identity.
    pub fn identity(&self) -> Arc<AgentIdentity> {
        self.identity.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the agent identity (after renewal) and the clients that present it.
    pub fn set_identity(&self, identity: AgentIdentity) -> Result<(), AgentError> {
        let clients = clients(&self.servers, &identity)?;
        *self.clients.write().unwrap_or_else(|p| p.into_inner()) = clients;
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(identity);
        Ok(())
    }

    /// Whether the sync stream is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// Times an endpoint that was up was found down and set aside (`vouch_agent_server_failovers_total`).
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Failover> {
        self.failover.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client for `endpoint`, with the current agent SVID.
    fn client_for(&self, endpoint: &Endpoint) -> Result<AdminClient, AgentError> {
        let clients = self.clients.read().unwrap_or_else(|p| p.into_inner());
        let i = self
            .servers
            .iter()
            .position(|s| s == &endpoint.server)
            .ok_or_else(|| AgentError::Config(format!("{endpoint} is not a configured server")))?;
        let client = clients.get(i).ok_or_else(|| AgentError::Config(format!("no client for {endpoint}")))?;
        Ok(client.clone().connecting_to(endpoint.addr))
    }

    /// The endpoints in the order to try them, resolving names when the last resolution is old.
    async fn endpoints(&self) -> Result<Vec<Endpoint>, AgentError> {
        let now = Instant::now();
        let fresh = self
            .resolved_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| now.saturating_duration_since(at) < RESOLVE_EVERY);
        if !fresh {
            let mut found: Vec<Endpoint> = Vec::new();
            let mut errors = Vec::new();
            for server in &self.servers {
                match resolve(server).await {
                    Ok(addrs) => {
                        for addr in addrs {
                            let e = Endpoint { server: server.clone(), addr };
                            if !found.contains(&e) {
                                found.push(e);
                            }
                        }
                    }
                    Err(why) => {
                        // A name that does not resolve now keeps the addresses it had: DNS may
                        // be down while the replicas are not.
                        let kept: Vec<Endpoint> = self
                            .lock()
                            .endpoints
                            .iter()
                            .filter(|t| &t.endpoint.server == server)
                            .map(|t| t.endpoint.clone())
                            .collect();
                        tracing::warn!(server = %server, error = %why, kept = kept.len(), "cannot resolve a server name");
                        errors.push(format!("{server}: {why}"));
                        found.extend(kept);
                    }
                }
            }
            if found.is_empty() {
                return Err(AgentError::Server(ClientError::Connect {
                    target: self.describe_servers(),
                    reason: errors.join("; "),
                }));
            }
            self.lock().set_endpoints(found);
            *self.resolved_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
        }
        Ok(self.lock().order(now))
    }

    fn describe_servers(&self) -> String {
        self.servers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }

    /// Notes that `endpoint` failed with `error` during `op`, logging when it was up before.
    fn failed(&self, endpoint: &Endpoint, op: &'static str, error: &ClientError) {
        let noted = self.lock().failed(endpoint, Instant::now(), jitter());
        if let Some((cooldown, true)) = noted {
            self.failovers.fetch_add(1, Ordering::Relaxed);
            if self.servers.len() > 1 || self.lock().endpoints.len() > 1 {
                tracing::warn!(server = %endpoint, op, %error, retry_after = ?cooldown, "a server is unreachable; using the other servers, and trying it again later");
            }
        }
    }

    /// Runs `op` against the endpoints in turn until one answers (success or a refusal that
    /// another replica would repeat); the endpoint that answered, and the answer.
    async fn call_on<T, F, Fut>(&self, what: &'static str, op: F) -> Result<(Endpoint, T), AgentError>
    where
        F: Fn(AdminClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut failures: Vec<(Endpoint, ClientError)> = Vec::new();
        for endpoint in self.endpoints().await? {
            match op(self.client_for(&endpoint)?).await {
                Ok(answer) => {
                    self.lock().succeeded(&endpoint);
                    return Ok((endpoint, answer));
                }
                Err(e) if unreachable(&e) => {
                    self.failed(&endpoint, what, &e);
                    failures.push((endpoint, e));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(AgentError::Server(if failures.len() == 1 {
            failures.remove(0).1
        } else {
            ClientError::Connect {
                target: format!("any of {}", self.describe_servers()),
                reason: failures.iter().map(|(s, e)| format!("{s}: {e}")).collect::<Vec<_>>().join("; "),
            }
        }))
    }

    /// Runs `op` (a signing, minting or renewal request) against a live replica.
    pub(crate) async fn call<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, AgentError>
    where
        F: Fn(AdminClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        self.call_on(what, op).await.map(|(_, answer)| answer)
    }

    /// Opens the sync stream on the first replica that accepts it, and marks that one as the
    /// stream's.
    pub(crate) async fn open_sync(&self) -> Result<(Endpoint, SyncStream), AgentError> {
        let (endpoint, stream) = self.call_on("sync", |c| async move { c.sync_with(true).await }).await?;
        self.lock().current = Some(endpoint.clone());
        Ok((endpoint, stream))
    }

    /// The endpoint the sync stream left last, and why; taken (reported once).
    pub(crate) fn take_left(&self) -> Option<(Endpoint, String)> {
        self.lock().left.take()
    }

    /// The sync stream on `endpoint` ended: `why` when the replica failed (it then cools down,
    /// so the stream reconnects to another one), None when it ended for the agent's own reasons.
    pub(crate) fn stream_ended(&self, endpoint: &Endpoint, why: Option<String>) {
        match why {
            Some(why) => {
                // Logged by the sync loop, which says what it does next.
                if let Some((_, true)) = self.lock().failed(endpoint, Instant::now(), jitter()) {
                    self.failovers.fetch_add(1, Ordering::Relaxed);
                }
                self.lock().left = Some((endpoint.clone(), why));
            }
            None => {
                let mut f = self.lock();
                if f.current.as_ref() == Some(endpoint) {
                    f.current = None;
                }
            }
        }
    }

    /// A new SVID for a new key, from a live replica. The current SVID stays valid until the new
    /// one is first used, so a renewal retried on another replica after a broken connection works.
    pub async fn renew(&self) -> Result<AgentIdentity, AgentError> {
        let id = self.identity();
        let key = WorkloadKey::generate().map_err(|e| AgentError::Protocol(e.to_string()))?;
        let csr = Der(key.csr_der().map_err(|e| AgentError::Protocol(e.to_string()))?);
        let request = &RenewRequest { csr };
        let svid: AgentSvid = self.call("renewal", |c| async move { c.renew(request).await }).await?;
        AgentIdentity::from_answer(svid, &key, &id.bundle.trust_domain)
    }
}

/// The socket addresses of `server`: the address itself, or what its name resolves to now.
async fn resolve(server: &ServerAddr) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = server.host().parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, server.port())]);
    }
    let lookup = tokio::net::lookup_host((server.host(), server.port()));
    match tokio::time::timeout(CONNECT_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err("the name resolves to no address".into())
            } else {
                Ok(addrs)
            }
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer from the resolver within {} s", CONNECT_TIMEOUT.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        let server: ServerAddr = format!("127.0.0.1:{port}").parse().unwrap();
        Endpoint { addr: SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port), server }
    }

    fn ports(order: &[Endpoint]) -> Vec<u16> {
        order.iter().map(|e| e.addr.port()).collect()
    }

    #[test]
    fn spread_agents_start_at_different_replicas_and_keep_the_rest_of_the_rules() {
        let t0 = Instant::now();
        let firsts: std::collections::BTreeSet<u16> = (0..3)
            .map(|spread| {
                let mut f = Failover { spread, ..Failover::default() };
                f.set_endpoints(vec![ep(1), ep(2), ep(3)]);
                ports(&f.order(t0))[0]
            })
            .collect();
        assert_eq!(firsts, [1, 2, 3].into(), "three offsets start at three replicas");
        let mut f = Failover { spread: 1, ..Failover::default() };
        f.set_endpoints(vec![ep(1), ep(2), ep(3)]);
        assert_eq!(ports(&f.order(t0)), [2, 3, 1], "rotated, not shuffled");
        // The stream's endpoint still goes first, and a failed one still goes last.
        f.current = Some(ep(1));
        assert_eq!(ports(&f.order(t0)), [1, 2, 3]);
        f.failed(&ep(1), t0, 0.0);
        assert_eq!(ports(&f.order(t0)), [3, 2, 1], "the live two rotated by one, the failed last");
        assert_eq!(spread(ServerOrder::Listed), 0);
    }

    #[test]
    fn a_failed_replica_waits_at_the_back_and_comes_back_after_its_cooldown() {
        let t0 = Instant::now();
        let mut f = Failover::default();
        f.set_endpoints(vec![ep(1), ep(2), ep(3)]);
        assert_eq!(ports(&f.order(t0)), [1, 2, 3], "configured order");
        // The stream's endpoint goes first: it is known to be up.
        f.current = Some(ep(2));
        assert_eq!(ports(&f.order(t0)), [2, 1, 3]);
        // It fails: the others first, it last, and the stream is on none.
        assert_eq!(f.failed(&ep(2), t0, 0.0), Some((Duration::from_secs(1), true)));
        assert_eq!(f.current, None);
        assert_eq!(ports(&f.order(t0)), [1, 3, 2]);
        // Failing again doubles the cooldown (capped), and is not news.
        assert_eq!(f.failed(&ep(2), t0, 0.0), Some((Duration::from_secs(2), false)));
        for _ in 0..10 {
            f.failed(&ep(2), t0, 0.0);
        }
        assert_eq!(f.failed(&ep(2), t0, 0.0), Some((COOLDOWN_MAX, false)));
        assert_eq!(f.failed(&ep(2), t0, 1.0).map(|c| c.0), Some(COOLDOWN_MAX + COOLDOWN_MAX / 2), "jitter");
        // All down: still all tried, the soonest back first (a single server is always tried).
        f.failed(&ep(1), t0, 0.0);
        f.failed(&ep(3), t0, 0.5);
        assert_eq!(ports(&f.order(t0)), [1, 3, 2]);
        // After its cooldown an endpoint is live again; an answer clears its count.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(ports(&f.order(later)), [1, 3, 2]);
        f.succeeded(&ep(2));
        assert_eq!(ports(&f.order(later)), [1, 2, 3]);
        assert_eq!(f.failed(&ep(2), later, 0.0), Some((Duration::from_secs(1), true)));
        // A new resolution keeps what is known of the endpoints that stay.
        f.set_endpoints(vec![ep(4), ep(2)]);
        assert_eq!(ports(&f.order(later)), [4, 2]);
        assert_eq!(f.failed(&ep(9), later, 0.0), None, "unknown endpoints are ignored");
    }

    #[test]
    fn only_failures_of_the_replica_move_a_call_to_another() {
        let connect = ClientError::Connect { target: "x".into(), reason: "refused".into() };
        let timeout = ClientError::Timeout { target: "x".into(), after: Duration::from_secs(1) };
        let api = |status| ClientError::Api { status, code: "c".into(), message: "m".into() };
        for e in [connect, timeout, ClientError::Protocol("reset".into()), api(503), api(500)] {
            assert!(unreachable(&e), "{e}");
        }
        let limited = ClientError::RateLimited { retry_after: Duration::from_secs(1), message: "m".into() };
        for e in [api(403), api(400), api(404), limited, ClientError::Tls("bad key".into())] {
            assert!(!unreachable(&e), "{e}");
        }
    }

    #[test]
    fn endpoints_name_the_configured_server_and_the_resolved_address() {
        let named = Endpoint {
            server: "vouch.example.org:8443".parse().unwrap(),
            addr: "10.0.0.5:8443".parse().unwrap(),
        };
        assert_eq!(named.to_string(), "vouch.example.org:8443 (10.0.0.5:8443)");
        assert_eq!(ep(8443).to_string(), "127.0.0.1:8443");
    }

    #[tokio::test]
    async fn a_name_stands_for_every_address_it_resolves_to() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let localhost = resolve(&"localhost:8443".parse().unwrap()).await.unwrap();
        assert!(localhost.contains(&addr("127.0.0.1:8443")), "{localhost:?}");
        // An address is taken as it is, without asking a resolver.
        assert_eq!(resolve(&"10.1.2.3:1".parse().unwrap()).await.unwrap(), [addr("10.1.2.3:1")]);
        assert_eq!(resolve(&"[fd00::5]:2".parse().unwrap()).await.unwrap(), [addr("[fd00::5]:2")]);
        // A name that does not resolve is an error naming why (bounded by CONNECT_TIMEOUT).
        assert!(resolve(&"no-such-host.invalid:1".parse().unwrap()).await.is_err());
    }
}
