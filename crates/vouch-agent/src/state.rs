//! What the agent knows and holds: the entries it may serve (pushed by the server), the bundle, and
//! the SVIDs it has obtained for workloads. X509-SVID keys are generated here and never leave the
//! node; SVIDs are obtained on first demand (not prefetched for entries nobody uses) and then
//! rotated at half life with jitter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use vouch_api::agent::{AgentJwtRequest, SignItem, SignOutcome, SignRequest, MAX_SIGN_BATCH};
use vouch_api::Der;
use vouch_ca::{Bundle, WorkloadKey};
use vouch_client::AdminClient;
use vouch_core::{ttl, Entry, EntryId, Selectors, SpiffeId};
use zeroize::Zeroizing;

use crate::attest::UnixAttestor;
use crate::config::AgentConfig;
use crate::identity::AgentIdentity;
use crate::AgentError;

/// An X509-SVID held for an entry.
pub struct CachedSvid {
    /// The entry it was issued for.
    pub entry_id: EntryId,
    /// The entry revision it was issued for; a changed entry gets a new SVID.
    pub revision: u64,
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The entry's hint.
    pub hint: String,
    /// DER chain, leaf first.
    pub chain_der: Vec<Vec<u8>>,
    /// PKCS#8 DER private key.
    pub key_der: Zeroizing<Vec<u8>>,
    /// Validity start.
    pub not_before: SystemTime,
    /// Validity end.
    pub not_after: SystemTime,
    /// When to replace it.
    pub renew_at: SystemTime,
}

struct CachedJwt {
    token: String,
    renew_at: SystemTime,
    expires_at: SystemTime,
}

/// The agent's shared state.
pub struct AgentState {
    /// Configuration.
    pub config: AgentConfig,
    /// The workload attestor.
    pub unix: UnixAttestor,
    /// The container runtime attestor.
    pub runtime: crate::attest::RuntimeAttestor,
    identity: RwLock<Arc<AgentIdentity>>,
    client: RwLock<AdminClient>,
    entries: RwLock<HashMap<EntryId, Entry>>,
    bundle: RwLock<Arc<Bundle>>,
    svids: Mutex<HashMap<EntryId, Arc<CachedSvid>>>,
    /// When a workload last received each held SVID; unused ones are dropped instead of renewed.
    last_used: Mutex<HashMap<EntryId, SystemTime>>,
    jwts: Mutex<HashMap<(EntryId, Vec<String>), CachedJwt>>,
    /// Serialises signing, so concurrent callers for one entry share one SVID.
    sign_lock: tokio::sync::Mutex<()>,
    generation: tokio::sync::watch::Sender<u64>,
    connected: AtomicBool,
    /// Counters and histograms for `/metrics`.
    pub metrics: crate::metrics::AgentMetrics,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState").field("socket", &self.config.socket).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        let client = identity.client(&config.server)?;
        let bundle = Arc::new(identity.bundle.clone());
        let mut runtime = crate::attest::RuntimeAttestor::new(
            config.docker_socket.clone(),
            config.podman_socket.clone(),
            config.containerd_socket.clone(),
        );
        if let Some(k) = &config.kubelet {
            let client = crate::attest::KubeletClient::new(k.clone())
                .map_err(|e| AgentError::Config(e.to_string()))?;
            runtime = runtime.with_kubelet(client);
        }
        Ok(Arc::new(Self {
            config,
            unix,
            runtime,
            identity: RwLock::new(Arc::new(identity)),
            client: RwLock::new(client),
            entries: RwLock::new(HashMap::new()),
            bundle: RwLock::new(bundle),
            svids: Mutex::new(HashMap::new()),
            last_used: Mutex::new(HashMap::new()),
            jwts: Mutex::new(HashMap::new()),
            sign_lock: tokio::sync::Mutex::new(()),
            generation: tokio::sync::watch::channel(0).0,
            connected: AtomicBool::new(false),
            metrics: Default::default(),
        }))
    }

    /// The agent's SPIFFE ID.
    pub fn agent_id(&self) -> SpiffeId {
        self.identity().spiffe_id.clone()
    }

    /// The agent's identity.
    pub fn identity(&self) -> Arc<AgentIdentity> {
        self.identity.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the agent identity (after renewal) and the client that uses it.
    pub fn set_identity(&self, identity: AgentIdentity) -> Result<(), AgentError> {
        let client = identity.client(&self.config.server)?;
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = client;
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(identity);
        Ok(())
    }

    /// A client of the server with the current agent SVID.
    pub fn client(&self) -> AdminClient {
        self.client.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current bundle.
    pub fn bundle(&self) -> Arc<Bundle> {
        self.bundle.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the sync stream is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// Changes whenever something a workload receives may have changed.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Every entry the agent may serve, by id.
    pub fn entries(&self) -> Vec<Entry> {
        let mut v: Vec<Entry> =
            self.entries.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The entries that apply to a workload with `selectors` at `now`, in a stable order (the first
    /// is the workload's default identity).
    pub fn matching(&self, selectors: &Selectors, now: SystemTime) -> Vec<Entry> {
        let now = ttl::unix_seconds(now);
        self.entries().into_iter().filter(|e| e.matches(selectors, now)).collect()
    }

    /// Replaces the entry set (a snapshot). SVIDs of entries that are unchanged are kept, so a
    /// reconnect causes no burst of re-issuance.
    pub fn apply_snapshot(&self, entries: Vec<Entry>, bundle: Option<Bundle>) {
        let map: HashMap<EntryId, Entry> = entries.into_iter().map(|e| (e.id.clone(), e)).collect();
        lock(&self.svids).retain(|id, s| map.get(id).is_some_and(|e| e.revision == s.revision));
        lock(&self.jwts).retain(|(id, _), _| map.contains_key(id));
        *self.entries.write().unwrap_or_else(|p| p.into_inner()) = map;
        if let Some(b) = bundle {
            *self.bundle.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(b);
        }
        self.bump();
    }

    /// Adds or replaces one entry.
    pub fn apply_upsert(&self, entry: Entry) {
        lock(&self.svids).retain(|id, s| id != &entry.id || s.revision == entry.revision);
        lock(&self.jwts).retain(|(id, _), _| id != &entry.id);
        self.entries.write().unwrap_or_else(|p| p.into_inner()).insert(entry.id.clone(), entry);
        self.bump();
    }

    /// Removes one entry and what was issued for it.
    pub fn apply_delete(&self, id: &EntryId) {
        lock(&self.svids).remove(id);
        lock(&self.jwts).retain(|(e, _), _| e != id);
        self.entries.write().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.bump();
    }

    /// Replaces the bundle.
    pub fn apply_bundle(&self, bundle: Bundle) {
        *self.bundle.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(bundle);
        self.bump();
    }

    /// The X509-SVIDs for `entries`, obtaining the missing or stale ones from the server in one
    /// batch. Fails only if an SVID is missing and the server cannot be reached.
    pub async fn x509_svids(
        &self,
        entries: &[Entry],
        now: SystemTime,
    ) -> Result<Vec<Arc<CachedSvid>>, AgentError> {
        let missing = |svids: &HashMap<EntryId, Arc<CachedSvid>>| -> Vec<Entry> {
            entries
                .iter()
                .filter(|e| !svids.get(&e.id).is_some_and(|s| s.revision == e.revision && s.not_after > now))
                .cloned()
                .collect()
        };
        if !missing(&lock(&self.svids)).is_empty() {
            let _guard = self.sign_lock.lock().await;
            // Another caller may have signed them while we waited.
            let todo = missing(&lock(&self.svids));
            if !todo.is_empty() {
                self.sign(&todo).await?;
            }
        }
        let svids = lock(&self.svids);
        let mut used = lock(&self.last_used);
        for e in entries {
            used.insert(e.id.clone(), now);
        }
        Ok(entries.iter().filter_map(|e| svids.get(&e.id).cloned()).collect())
    }

    /// Signs fresh keys for `entries` through the server, in batches the server accepts.
    async fn sign(&self, entries: &[Entry]) -> Result<(), AgentError> {
        for chunk in entries.chunks(MAX_SIGN_BATCH) {
            if let Err(e) = self.sign_batch(chunk).await {
                self.metrics.server_error(crate::metrics::ServerOp::Sign);
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
        let answer = self.client().sign(&SignRequest { requests }).await?;
        let mut svids = lock(&self.svids);
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
            svids.insert(
                e.id.clone(),
                Arc::new(CachedSvid {
                    entry_id: e.id.clone(),
                    revision: e.revision,
                    spiffe_id: e.spiffe_id.clone(),
                    hint: e.hint.clone(),
                    renew_at: ttl::renew_at(info.not_before, info.not_after, jitter()),
                    chain_der,
                    key_der: key.pkcs8.clone(),
                    not_before: info.not_before,
                    not_after: info.not_after,
                }),
            );
        }
        Ok(())
    }

    /// Replaces every held SVID whose renewal time has come. Returns how many were renewed.
    ///
    /// An SVID no workload has received for a whole SVID lifetime is dropped instead (a workload that
    /// asked once and went away should not keep the server signing for it); a workload holding a
    /// stream receives every renewal, so its SVIDs never count as unused. Expired JWT-SVIDs are
    /// dropped from their cache too.
    pub async fn rotate_due(&self, now: SystemTime) -> Result<usize, AgentError> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner()).clone();
        lock(&self.jwts).retain(|_, j| j.expires_at > now);
        let due: Vec<Entry> = {
            let mut svids = lock(&self.svids);
            let mut used = lock(&self.last_used);
            svids.retain(|id, s| {
                let lifetime = s.not_after.duration_since(s.not_before).unwrap_or_default();
                let idle = used.get(id).is_none_or(|t| now.duration_since(*t).is_ok_and(|d| d > lifetime));
                let keep = !(s.renew_at <= now && idle);
                if !keep {
                    used.remove(id);
                }
                keep
            });
            svids
                .values()
                .filter(|s| s.renew_at <= now)
                .filter_map(|s| entries.get(&s.entry_id).cloned())
                .collect()
        };
        if due.is_empty() {
            return Ok(0);
        }
        let _guard = self.sign_lock.lock().await;
        self.sign(&due).await?;
        self.metrics.rotated(due.len());
        self.bump();
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
        let mut aud = audiences.to_vec();
        aud.sort();
        aud.dedup();
        let key = (entry.id.clone(), aud);
        if let Some(c) = lock(&self.jwts).get(&key) {
            if now < c.renew_at && now < c.expires_at {
                return Ok(c.token.clone());
            }
        }
        let answer = self
            .client()
            .agent_jwt(&AgentJwtRequest { entry_id: entry.id.clone(), audience: audiences.to_vec() })
            .await
            .inspect_err(|_| self.metrics.server_error(crate::metrics::ServerOp::Jwt))?;
        let token = answer.token;
        let exp = ttl::from_unix_seconds(answer.expires_at);
        let renew_at = ttl::renew_at(now, exp, 0.0);
        lock(&self.jwts).insert(key, CachedJwt { token: token.clone(), renew_at, expires_at: exp });
        Ok(token)
    }

    /// When the agent's own SVID should be renewed.
    pub fn identity_renew_at(&self) -> SystemTime {
        let id = self.identity();
        ttl::renew_at(id.not_before, id.not_after, 0.0)
    }

    /// How long until the earliest held SVID is due, capped at `max`.
    pub fn next_rotation_in(&self, now: SystemTime, max: Duration) -> Duration {
        lock(&self.svids)
            .values()
            .map(|s| s.renew_at.duration_since(now).unwrap_or_default())
            .min()
            .unwrap_or(max)
            .min(max)
    }

    /// How many SVIDs are held (for metrics and memory reports).
    pub fn held_svids(&self) -> usize {
        lock(&self.svids).len()
    }
}
