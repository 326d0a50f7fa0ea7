//! The agent's shared state, made of three parts with one job each: the [`Registry`] (entries and
//! bundle from the server), the [`SvidCache`] (SVIDs held for workloads) and the [`ServerLink`]
//! (the agent's own identity and client). What joins them lives here: obtaining X509-SVIDs on first
//! demand (not prefetched for entries nobody uses) and rotating them at half life with jitter,
//! minting JWT-SVIDs, and applying sync lines to the registry and the cache together.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use vouch_api::agent::{AgentJwtRequest, SignItem, SignOutcome, SignRequest, MAX_SIGN_BATCH};
use vouch_api::Der;
use vouch_ca::{Bundle, WorkloadKey};
use vouch_core::{ttl, Entry, EntryId};

use crate::attest::{RuntimeAttestor, UnixAttestor};
use crate::config::AgentConfig;
use crate::identity::AgentIdentity;
use crate::registry::FederatedBundles;
pub use crate::registry::Registry;
pub use crate::server_link::{Endpoint, ServerLink};
pub use crate::svid_cache::{CachedSvid, SvidCache};
use crate::AgentError;

/// The agent's shared state.
pub struct AgentState {
    /// Configuration.
    pub config: AgentConfig,
    /// The workload attestor.
    pub unix: UnixAttestor,
    /// The container runtime attestor.
    pub runtime: RuntimeAttestor,
    /// Entries and bundle.
    pub registry: Registry,
    /// SVIDs held for workloads.
    pub cache: SvidCache,
    /// The agent's identity and server client.
    pub link: ServerLink,
    /// Serialises signing, so concurrent callers for one entry share one SVID.
    sign_lock: tokio::sync::Mutex<()>,
    /// How long the server asked the agent to wait before signing again (429 `Retry-After`).
    sign_backoff: Backoff,
    /// The same for JWT minting.
    jwt_backoff: Backoff,
    /// Counters and histograms for `/metrics`.
    pub metrics: crate::metrics::AgentMetrics,
    /// The policy set synced from the server, for local decisions.
    pub policies: crate::grants::LocalPolicies,
    /// What the Workload API delivered to whom, waiting to be reported to the server.
    pub deliveries: crate::deliveries::Deliveries,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState").field("socket", &self.config.socket).finish_non_exhaustive()
    }
}

/// A wait the server asked for by a 429 `rate_limited` answer: until it is over, the operation
/// fails at once without calling the server (workloads keep what is cached, and ask again), so
/// an agent over its limit does not keep hammering the server with retries.
#[derive(Debug, Default)]
struct Backoff(std::sync::Mutex<Option<tokio::time::Instant>>);

impl Backoff {
    /// `Err` while a wait is running, with what is left of it.
    fn check(&self, what: &str) -> Result<(), AgentError> {
        let until = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        match until.map(|u| u.saturating_duration_since(tokio::time::Instant::now())) {
            Some(left) if !left.is_zero() => {
                Err(AgentError::Server(vouch_client::ClientError::RateLimited {
                    retry_after: left,
                    message: format!(
                        "the server rate-limited {what} by this agent; not asking again for {left:?}"
                    ),
                }))
            }
            _ => Ok(()),
        }
    }

    /// Starts the wait the server asked for, if `error` is its rate-limit refusal; whether it was.
    fn note(&self, error: &AgentError) -> bool {
        let AgentError::Server(e) = error else { return false };
        let Some(wait) = e.retry_after() else { return false };
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now() + wait);
        tracing::warn!(retry_in = ?wait, error = %e, "the server's rate limit refused this agent; waiting as told");
        true
    }
}

/// A jitter fraction in `0..1` from fresh randomness.
fn jitter() -> f64 {
    let b = vouch_ca::keys::random_bytes::<2>().unwrap_or([0, 0]);
    f64::from(u16::from_le_bytes(b)) / 65536.0
}

impl AgentState {
    /// State for an agent with `identity`.
    pub fn new(
        config: AgentConfig,
        identity: AgentIdentity,
        unix: UnixAttestor,
    ) -> Result<Arc<Self>, AgentError> {
        let mut runtime = RuntimeAttestor::new(
            config.docker_socket.clone(),
            config.podman_socket.clone(),
            config.containerd_socket.clone(),
        );
        if let Some(k) = &config.kubelet {
            let client = crate::attest::KubeletClient::new(k.clone())
                .map_err(|e| AgentError::Config(e.to_string()))?;
            runtime = runtime.with_kubelet(client);
        }
        let registry = Registry::new(identity.bundle.clone());
        let link = ServerLink::new(config.servers.clone(), config.server_order, identity)?;
        Ok(Arc::new(Self {
            config,
            unix,
            runtime,
            registry,
            cache: SvidCache::default(),
            link,
            sign_lock: tokio::sync::Mutex::new(()),
            sign_backoff: Backoff::default(),
            jwt_backoff: Backoff::default(),
            metrics: Default::default(),
            policies: Default::default(),
            deliveries: Default::default(),
        }))
    }

    /// Replaces the entry set (a snapshot). SVIDs of entries that are unchanged are kept, so a
    /// reconnect causes no burst of re-issuance.
    pub fn apply_snapshot(&self, entries: Vec<Entry>, bundles: Option<(Bundle, FederatedBundles)>) {
        let revisions = self.registry.replace(entries, bundles);
        self.cache.retain_entries(&revisions);
        self.registry.bump();
    }

    /// Adds or replaces one entry.
    pub fn apply_upsert(&self, entry: Entry) {
        self.cache.entry_changed(&entry.id, entry.revision);
        self.registry.upsert(entry);
        self.registry.bump();
    }

    /// Removes one entry and what was issued for it.
    pub fn apply_delete(&self, id: &EntryId) {
        self.cache.entry_removed(id);
        self.registry.remove(id);
        self.registry.bump();
    }

    /// Replaces the bundle and the federated bundles.
    pub fn apply_bundle(&self, bundle: Bundle, federated: FederatedBundles) {
        self.registry.set_bundle(bundle, federated);
        self.registry.bump();
    }

    /// The X509-SVIDs for `entries`, obtaining the missing or stale ones from the server in one
    /// batch. Fails only if an SVID is missing and the server cannot be reached.
    pub async fn x509_svids(
        &self,
        entries: &[Entry],
        now: SystemTime,
    ) -> Result<Vec<Arc<CachedSvid>>, AgentError> {
        if !self.cache.missing_x509(entries, now).is_empty() {
            let _guard = self.sign_lock.lock().await;
            // Another caller may have signed them while we waited.
            let todo = self.cache.missing_x509(entries, now);
            if !todo.is_empty() {
                self.sign(&todo).await?;
            }
        }
        Ok(self.cache.take_x509(entries, now))
    }

    /// Signs fresh keys for `entries` through the server, in batches the server accepts.
    async fn sign(&self, entries: &[Entry]) -> Result<(), AgentError> {
        self.sign_backoff.check("signing")?;
        for chunk in entries.chunks(MAX_SIGN_BATCH) {
            if let Err(e) = self.sign_batch(chunk).await {
                self.metrics.server_error(crate::metrics::ServerOp::Sign);
                if self.sign_backoff.note(&e) {
                    self.metrics.rate_limited(crate::metrics::ServerOp::Sign);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Signs one batch and caches the SVIDs. Items stand alone: one the server refuses (an entry
    /// deleted since the last sync line, say) is logged and left out, the others are cached.
    async fn sign_batch(&self, entries: &[Entry]) -> Result<(), AgentError> {
        let mut keys = Vec::with_capacity(entries.len());
        let mut requests = Vec::with_capacity(entries.len());
        for e in entries {
            let key = WorkloadKey::generate().map_err(|err| AgentError::Protocol(err.to_string()))?;
            let csr = Der(key.csr_der().map_err(|err| AgentError::Protocol(err.to_string()))?);
            requests.push(SignItem { entry_id: e.id.clone(), csr });
            keys.push(key);
        }
        let request = &SignRequest { requests };
        let answer = self.link.call("signing", |c| async move { c.sign(request).await }).await?;
        for ((e, key), result) in entries.iter().zip(keys).zip(answer.results) {
            if result.entry_id != e.id {
                return Err(AgentError::Protocol(format!(
                    "the server answered for entry `{}` where `{}` was asked",
                    result.entry_id, e.id
                )));
            }
            let signed = match result.outcome {
                SignOutcome::Svid(s) => s,
                SignOutcome::Error(err) => {
                    tracing::warn!(entry_id = %e.id, spiffe_id = %e.spiffe_id, code = %err.code, reason = %err.message, "the server refused to sign an SVID");
                    continue;
                }
            };
            let chain_der: Vec<Vec<u8>> = signed.cert_chain.into_iter().map(|d| d.0).collect();
            let leaf = chain_der.first().ok_or_else(|| AgentError::Protocol("empty chain".into()))?;
            let info =
                vouch_ca::x509::cert_info(leaf).map_err(|err| AgentError::Protocol(err.to_string()))?;
            self.cache.insert_x509(CachedSvid {
                entry_id: e.id.clone(),
                revision: e.revision,
                spiffe_id: e.spiffe_id.clone(),
                hint: e.hint.clone(),
                renew_at: ttl::renew_at(info.not_before, info.not_after, jitter()),
                serial: info.serial,
                chain_der,
                key_der: key.pkcs8.clone(),
                not_before: info.not_before,
                not_after: info.not_after,
            });
        }
        Ok(())
    }

    /// Replaces every held SVID whose renewal time has come (see [`SvidCache::due_x509`] for
    /// what is dropped instead). Returns how many were renewed.
    pub async fn rotate_due(&self, now: SystemTime) -> Result<usize, AgentError> {
        let due: Vec<Entry> =
            self.cache.due_x509(now).iter().filter_map(|id| self.registry.get(id)).collect();
        if due.is_empty() {
            return Ok(0);
        }
        let _guard = self.sign_lock.lock().await;
        self.sign(&due).await?;
        self.metrics.rotated(due.len());
        self.registry.bump();
        Ok(due.len())
    }

    /// A JWT-SVID for `entry` and `audiences`, from the cache while it is in the first half of its
    /// life, else from the server.
    pub async fn jwt(
        &self,
        entry: &Entry,
        audiences: &[String],
        now: SystemTime,
    ) -> Result<String, AgentError> {
        if let Some(token) = self.cache.jwt(&entry.id, audiences, now) {
            return Ok(token);
        }
        self.jwt_backoff.check("JWT minting")?;
        let request = &AgentJwtRequest { entry_id: entry.id.clone(), audience: audiences.to_vec() };
        let answer =
            self.link.call("JWT minting", |c| async move { c.agent_jwt(request).await }).await.inspect_err(
                |e| {
                    self.metrics.server_error(crate::metrics::ServerOp::Jwt);
                    if self.jwt_backoff.note(e) {
                        self.metrics.rate_limited(crate::metrics::ServerOp::Jwt);
                    }
                },
            )?;
        let exp = ttl::from_unix_seconds(answer.expires_at);
        self.cache.insert_jwt(&entry.id, audiences, answer.token.clone(), now, exp);
        Ok(answer.token)
    }

    /// When the agent's own SVID should be renewed.
    pub fn identity_renew_at(&self) -> SystemTime {
        let id = self.link.identity();
        ttl::renew_at(id.not_before, id.not_after, 0.0)
    }

    /// How long until the earliest held SVID is due, capped at `max`.
    pub fn next_rotation_in(&self, now: SystemTime, max: Duration) -> Duration {
        self.cache.next_due_in(now, max)
    }
}
