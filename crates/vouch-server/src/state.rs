//! The server's shared state: configuration, store, the authority under a lock, and the clock.
//!
//! Replicas on one store (PostgreSQL) share one authority. Exactly one of them, the holder of the
//! store's lead ([`Store::try_lead`]), advances key rotation and writes the result; every write
//! names the version it replaces, so a replica that lost the lead unawares writes nothing. The
//! others load the stored state when its version changes (told by the store's change notices, and
//! checked on every tick as a fallback), so every replica signs with the current keys and serves
//! the current bundle. A single server on SQLite is always the leader and never finds a version
//! it did not write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use vouch_ca::{Authority, AuthorityState, Ca, Kek, KeyUse, SigningKey, WorkloadKey};
use vouch_core::SpiffeId;
use vouch_store::{AuthorityWrite, Store, StoredAuthority};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::StartError;
use vouch_tls::{Anchors, ServerCert, SvidClientVerifier};

/// A change that connected agents must hear about at once.
#[derive(Debug, Clone)]
pub enum Event {
    /// An entry was created or updated (`previous_parent` is its parent before an update).
    EntryUpserted {
        /// The entry as it is now. Shared: with a deep copy per sync stream, one 1,000-entry batch
        /// reached 1,000 connected agents in 1.25 s, shared in 0.52 s (bench/scale, when every
        /// stream received every event).
        entry: Arc<vouch_core::Entry>,
        /// Its parent before the change, if it existed.
        previous_parent: Option<SpiffeId>,
    },
    /// An entry was deleted.
    EntryDeleted {
        /// Its id.
        id: vouch_core::EntryId,
        /// Its parent.
        parent: SpiffeId,
    },
    /// The trust bundle changed.
    BundleChanged,
    /// A node group was created (`selectors` is its selectors) or deleted (`None`): agents whose
    /// membership changes get a fresh snapshot.
    GroupChanged {
        /// The group's SPIFFE ID.
        id: SpiffeId,
        /// Its node selectors, or `None` once deleted.
        selectors: Option<vouch_core::Selectors>,
    },
    /// An agent attested (again) with these node selectors: its node groups are decided again.
    AgentAttested {
        /// The agent.
        agent: SpiffeId,
        /// Its node selectors now.
        selectors: vouch_core::Selectors,
    },
    /// An admin banned or evicted an agent: its open sync streams end.
    AgentRemoved {
        /// The agent.
        agent: SpiffeId,
        /// Banned or evicted.
        reason: vouch_api::agent::CloseReason,
    },
    /// A policy was written or deleted (here or through another replica): agents that sync
    /// policies get the new set.
    PoliciesChanged,
    /// A secret's versions changed (a write, a delete, an undelete, a destroy): its watches
    /// ([`crate::secret_watch`]) look again. No sync stream hears of it.
    SecretChanged {
        /// The secret.
        path: vouch_core::SecretPath,
    },
    /// Changes made through another replica may have been missed (the store's change channel was
    /// interrupted): every sync stream checks its agent again and sends a fresh snapshot.
    Resync,
}

/// How often a replica that does not lead asks for the lead and checks the stored authority's
/// version: the bound on how long a dead leader's rotation work waits for another replica, and
/// the fallback for a missed change notice.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(2);

/// How long a cached admin set is trusted without a local entry write.
pub const ADMIN_CACHE_TTL: Duration = Duration::from_secs(5);

/// The admin entries by SPIFFE ID: each entry's expiry (unix seconds) and the namespaces it
/// limits its SVID to.
type AdminSet = std::collections::HashMap<SpiffeId, Vec<(i64, vouch_core::NamespaceScope)>>;

/// Where the server reads the time. Time is a parameter so tests can control it.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    // The one place the server reads the system clock; everything else takes the time from here.
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Everything request handlers share.
pub struct AppState {
    /// Effective configuration.
    pub config: Config,
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// Counters and histograms.
    pub metrics: Metrics,
    /// The effective uid of the server process (may use the admin socket).
    pub own_uid: u32,
    authority: RwLock<Authority>,
    kek: Kek,
    clock: Arc<dyn Clock>,
    /// The server's own certificate for the mTLS listener.
    pub server_cert: Arc<ServerCert>,
    server_cert_renew_at: RwLock<SystemTime>,
    /// Admin SPIFFE IDs (with the latest expiry of their admin entries), cached for the mTLS check.
    admins: RwLock<Option<(SystemTime, Arc<AdminSet>)>>,
    /// The X.509 part of the bundle as PEM, refreshed on every tick; issuance answers carry it.
    bundle_pem: RwLock<Arc<str>>,
    /// Client certificate verification, following the bundle.
    pub client_verifier: Arc<SvidClientVerifier>,
    /// Changes pushed to connected agents, routed to the streams they concern.
    pub sync: Arc<crate::sync_hub::SyncHub>,
    /// Signing keys of the Kubernetes clusters whose tokens attest agents.
    pub psat_keys: crate::issuer_keys::PsatKeys,
    /// Rate limits per source and per agent, and the refusal log throttle.
    pub limits: crate::limits::Limits,
    /// The authority state served, as stored (its version tells whether another replica changed it).
    stored: std::sync::Mutex<StoredAuthority>,
    /// Held while the authority is advanced or reloaded, so that the two never interleave.
    authority_io: tokio::sync::Mutex<()>,
    /// Why this server cannot serve the stored authority (another replica stored a state this one
    /// cannot load: another key-encryption key, a damaged row): while set it signs nothing and is
    /// not ready, rather than go on with keys the trust domain may have rotated away from.
    authority_fault: std::sync::RwLock<Option<String>>,
    /// The compiled policy set of the decision API.
    pub policies: crate::policy::PolicyCache,
    /// What the policies know about principals, from their entries, by SPIFFE ID.
    pub principals: crate::policy::PrincipalCache,
    /// Whether this server held the lead at its last tick.
    leader: AtomicBool,
    /// The bundles of federated trust domains served to agents.
    pub federation: crate::federation::Federated,
    /// Open secret watches (long polls of agents for new versions).
    pub secret_waiters: crate::secret_watch::SecretWaiters,
    /// The keys that sign audit checkpoints.
    pub audit_keys: crate::audit::AuditKeys,
    /// Counters of the audit log's writer.
    pub audit_metrics: crate::audit::AuditMetrics,
    /// Connections to the databases short-lived credentials are made on.
    pub db_pools: crate::db_creds::Pools,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("trust_domain", &self.config.trust_domain).finish_non_exhaustive()
    }
}

/// The SPIFFE ID of the server itself (its mTLS certificate).
pub fn server_spiffe_id(config: &Config) -> SpiffeId {
    // "/vouch/server" is a valid path, so this cannot fail for a valid trust domain.
    config.trust_domain.id_with_path("/vouch/server").unwrap_or_else(|_| config.trust_domain.id())
}

/// An authority from its stored state.
fn import_authority(config: &Config, json: &str, kek: &Kek) -> Result<Authority, StartError> {
    let state: AuthorityState = serde_json::from_str(json)
        .map_err(|e| StartError::Store(format!("stored authority state is unreadable: {e}")))?;
    Ok(Authority::import(config.authority_config(), state, kek, load_upstream(config)?)?)
}

fn load_upstream(config: &Config) -> Result<Option<Ca>, StartError> {
    let Some((cert_path, key_path)) = &config.upstream else { return Ok(None) };
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map_err(|e| StartError::Config(format!("cannot read {}: {e}", p.display())))
    };
    let cert_pem = read(cert_path)?;
    let key_pem = zeroize::Zeroizing::new(read(key_path)?);
    let der = vouch_ca::pem::decode_one(&cert_pem, &["CERTIFICATE"])
        .ok_or_else(|| StartError::Config(format!("{} has no CERTIFICATE block", cert_path.display())))?;
    let key = SigningKey::from_pem(&key_pem, KeyUse::X509)
        .map_err(|e| StartError::Config(format!("{}: {e}", key_path.display())))?;
    let ca = Ca::from_parts(der, key).map_err(|e| StartError::Config(format!("upstream CA: {e}")))?;
    Ok(Some(ca))
}

impl AppState {
    /// Loads the authority from the store (or creates it on first start), brings its keys up to date
    /// and persists any change.
    pub async fn open(
        config: Config,
        store: Arc<dyn Store>,
        kek: Kek,
        clock: Arc<dyn Clock>,
        own_uid: u32,
    ) -> Result<Arc<Self>, StartError> {
        let (authority, stored) = match store.load_authority_versioned().await? {
            Some(stored) => (import_authority(&config, &stored.state, &kek)?, stored),
            None => Self::create_authority(&config, &*store, &kek, clock.now()).await?,
        };
        let psat_keys = crate::issuer_keys::PsatKeys::new(&config.psat_clusters);
        let limits = crate::limits::Limits::new(&config.limits);
        let audit_keys =
            crate::audit::AuditKeys::open(&*store, &kek, vouch_core::ttl::unix_seconds(clock.now())).await?;
        let db_pools = crate::db_creds::Pools::new(&config.databases)?;
        let state = Arc::new(Self {
            audit_keys,
            audit_metrics: Default::default(),
            db_pools,
            limits,
            psat_keys,
            config,
            store,
            metrics: Metrics::default(),
            own_uid,
            authority: RwLock::new(authority),
            kek,
            clock,
            server_cert: Arc::new(ServerCert::default()),
            server_cert_renew_at: RwLock::new(SystemTime::UNIX_EPOCH),
            bundle_pem: RwLock::new(Arc::from("")),
            admins: RwLock::new(None),
            policies: crate::policy::PolicyCache::default(),
            principals: crate::policy::PrincipalCache::default(),
            client_verifier: Arc::new(SvidClientVerifier::default()),
            sync: Arc::default(),
            stored: std::sync::Mutex::new(stored),
            authority_io: tokio::sync::Mutex::new(()),
            authority_fault: std::sync::RwLock::new(None),
            leader: AtomicBool::new(false),
            federation: crate::federation::Federated::default(),
            secret_waiters: crate::secret_watch::SecretWaiters::default(),
        });
        state.tick().await?;
        Ok(state)
    }

    /// The first authority of a trust domain: created here and stored unless another replica
    /// stored one first, in which case that one is used (replicas starting together on an empty
    /// database end with one root).
    async fn create_authority(
        config: &Config,
        store: &dyn Store,
        kek: &Kek,
        now: SystemTime,
    ) -> Result<(Authority, StoredAuthority), StartError> {
        let mut authority = Authority::new(config.authority_config(), load_upstream(config)?);
        authority.tick(now)?;
        let json =
            serde_json::to_string(&authority.export(kek)?).map_err(|e| StartError::Store(e.to_string()))?;
        match store.write_authority(None, &json).await? {
            AuthorityWrite::Written(version) => {
                tracing::info!(target: "vouch::audit", event = "authority.create", trust_domain = %config.trust_domain, "created the trust domain's authority");
                Ok((authority, StoredAuthority { version, state: json }))
            }
            AuthorityWrite::Conflict(Some(winner)) => {
                tracing::info!(trust_domain = %config.trust_domain, "another replica created the trust domain's authority first; using it");
                let authority = import_authority(config, &winner.state, kek).map_err(|e| {
                    StartError::Config(format!(
                        "another replica created the trust domain's authority first, and this replica cannot open it ({e}): \
                         every replica must use the same key-encryption key (set VOUCH_KEK to the same value everywhere, \
                         or copy the first replica's kek_file)"
                    ))
                })?;
                Ok((authority, winner))
            }
            AuthorityWrite::Conflict(None) => Err(StartError::Store(
                "the authority state vanished while it was being created; start again".into(),
            )),
        }
    }

    /// The key-encryption key (secret values are sealed under it, by envelope).
    pub(crate) fn kek(&self) -> &Kek {
        &self.kek
    }

    /// Whether this server led key rotation at its last tick (always, on SQLite).
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// The version of the stored authority state this server serves.
    pub fn authority_version(&self) -> u64 {
        self.stored.lock().unwrap_or_else(|p| p.into_inner()).version
    }

    /// Loads the stored authority if another replica changed it since this server loaded or wrote
    /// it (a cheap version read when nothing changed), and tells connected agents when the bundle
    /// changed. Returns whether it loaded a new state.
    pub async fn follow_authority(&self) -> Result<bool, StartError> {
        let _io = self.authority_io.lock().await;
        let known = self.authority_version();
        if self.store.authority_version().await?.is_none_or(|v| v == known) {
            return Ok(false);
        }
        let Some(stored) = self.store.load_authority_versioned().await? else { return Ok(false) };
        let version = stored.version;
        let bundle_changed = self.install(stored).inspect_err(|e| self.set_authority_fault(version, e))?;
        self.clear_authority_fault();
        tracing::info!(target: "vouch::audit", event = "authority.follow", version, bundle_changed, "loaded the authority state another replica stored");
        Ok(true)
    }

    /// Records that the stored authority of `version` cannot be served: this server stops signing.
    fn set_authority_fault(&self, version: u64, e: &StartError) {
        let why = format!("cannot load the authority state (version {version}) another replica stored: {e}");
        tracing::error!(version, error = %e, "cannot load the authority state another replica stored; this server signs nothing until it can (do all replicas have the same key-encryption key?)");
        *self.authority_fault.write().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    fn clear_authority_fault(&self) {
        let mut fault = self.authority_fault.write().unwrap_or_else(|p| p.into_inner());
        if fault.take().is_some() {
            tracing::info!("the stored authority state loads again; signing resumes");
        }
    }

    /// Why this server does not sign, if it does not: it cannot load the authority state another
    /// replica stored.
    pub fn authority_fault(&self) -> Option<String> {
        self.authority_fault.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs a signing operation (an SVID, a JWT) on the current authority, unless this server
    /// cannot serve the stored one ([`AppState::authority_fault`]): then `NotReady`.
    pub fn signing<R>(
        &self,
        f: impl FnOnce(&Authority) -> Result<R, vouch_ca::CaError>,
    ) -> Result<R, vouch_ca::CaError> {
        if self.authority_fault.read().unwrap_or_else(|p| p.into_inner()).is_some() {
            return Err(vouch_ca::CaError::NotReady(
                "this server cannot load the authority state another replica stored and signs nothing until it can; \
                 its log and /readyz say why",
            ));
        }
        self.with_authority(f)
    }

    /// Serves `stored` from now on; whether the bundle changed (then agents are told). The caller
    /// holds `authority_io`.
    fn install(&self, stored: StoredAuthority) -> Result<bool, StartError> {
        let authority = import_authority(&self.config, &stored.state, &self.kek)?;
        let bundle_changed = {
            let mut a = self.authority.write().unwrap_or_else(|p| p.into_inner());
            let changed = a.sequence() != authority.sequence();
            *a = authority;
            changed
        };
        *self.stored.lock().unwrap_or_else(|p| p.into_inner()) = stored;
        self.refresh_anchors();
        if bundle_changed {
            self.publish(Event::BundleChanged);
        }
        Ok(bundle_changed)
    }

    /// Advances key rotation (the leader's work) and stores the result if it changed; when next.
    /// A state that could not be stored is not served: the server goes back to the stored one
    /// (another replica's, after a conflict) and rotates again on a later tick.
    async fn advance_authority(&self, now: SystemTime) -> Result<Option<SystemTime>, StartError> {
        self.change_authority(|a| a.tick(now)).await
    }

    /// Prepares a successor of the root CA now (see [`vouch_ca::Authority::prepare_root`]) and
    /// stores it; whether one was prepared. Agents and federated trust domains get the new bundle.
    pub async fn prepare_root(&self) -> Result<bool, StartError> {
        let before = self.with_authority(|a| a.sequence());
        let now = self.now();
        self.change_authority(|a| a.prepare_root(now)).await?;
        Ok(self.with_authority(|a| a.sequence()) != before)
    }

    /// Applies `change` to the authority and stores the result if it changed; when the next tick
    /// is due.
    async fn change_authority(
        &self,
        change: impl FnOnce(&mut Authority) -> Result<bool, vouch_ca::CaError>,
    ) -> Result<Option<SystemTime>, StartError> {
        let _io = self.authority_io.lock().await;
        let exported = {
            let mut a = self.authority.write().unwrap_or_else(|p| p.into_inner());
            if change(&mut a)? {
                Some(a.export(&self.kek)?)
            } else {
                None
            }
        };
        let next = self.with_authority(|a| a.next_tick());
        let Some(state) = exported else { return Ok(next) };
        let json = serde_json::to_string(&state).map_err(|e| StartError::Store(e.to_string()))?;
        let known = self.stored.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match self.store.write_authority(Some(known.version), &json).await {
            Ok(AuthorityWrite::Written(version)) => {
                *self.stored.lock().unwrap_or_else(|p| p.into_inner()) =
                    StoredAuthority { version, state: json };
                tracing::info!(target: "vouch::audit", event = "authority.rotate", sequence = state.sequence, version, "trust bundle or signing keys changed");
                self.refresh_anchors();
                self.publish(Event::BundleChanged);
                Ok(next)
            }
            Ok(AuthorityWrite::Conflict(current)) => {
                tracing::warn!("another replica changed the authority since this one loaded it; serving its state instead of this rotation");
                let winner = current.unwrap_or_else(|| known.clone());
                let version = winner.version;
                if let Err(e) = self.install(winner) {
                    // Never keep serving the rotation that was not stored: back to the state this
                    // server loaded before, and no signing until the winner's state loads.
                    self.set_authority_fault(version, &e);
                    self.install(known)?;
                    return Err(e);
                }
                self.clear_authority_fault();
                Ok(None)
            }
            Err(e) => {
                self.install(known)?;
                Err(e.into())
            }
        }
    }

    /// Client certificate anchors and the bundle PEM, from the authority served.
    fn refresh_anchors(&self) {
        let roots = self.with_authority(|a| a.bundle().x509_authorities);
        self.client_verifier.set_anchors(Anchors::from_der(&roots));
        let pem: String = roots.iter().map(|d| vouch_ca::pem::encode("CERTIFICATE", d)).collect();
        *self.bundle_pem.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(pem);
    }

    /// The current time.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// The current time in unix seconds (entries, tokens and agents keep times so).
    pub fn now_secs(&self) -> i64 {
        vouch_core::ttl::unix_seconds(self.now())
    }

    /// Runs `f` with the authority (read access; signing needs no more).
    pub fn with_authority<R>(&self, f: impl FnOnce(&Authority) -> R) -> R {
        let guard = self.authority.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// What `id` may administer: `None` if no unexpired entry with `admin = true` names it, else
    /// the union of the namespaces of those entries (all, if any of them is unlimited). The set is
    /// cached: entry writes clear it at once ([`AppState::publish`] of an entry event, for writes
    /// through this server and, by the store's change notices, through another replica); a change
    /// whose notice was lost is seen within `ADMIN_CACHE_TTL`.
    pub async fn admin_scope(
        &self,
        id: &SpiffeId,
    ) -> Result<Option<vouch_core::NamespaceScope>, vouch_store::StoreError> {
        let now = self.now();
        let cached = self.admins.read().unwrap_or_else(|p| p.into_inner()).clone();
        let set = match cached {
            Some((built, set)) if now.duration_since(built).unwrap_or(Duration::MAX) < ADMIN_CACHE_TTL => set,
            _ => {
                let mut set = AdminSet::new();
                for e in self.store.list_entries(&vouch_store::EntryFilter::default()).await? {
                    if e.admin {
                        let until = e.expires_at.unwrap_or(i64::MAX);
                        let scope = vouch_core::NamespaceScope::from_list(&e.admin_namespaces);
                        set.entry(e.spiffe_id).or_default().push((until, scope));
                    }
                }
                let set = Arc::new(set);
                *self.admins.write().unwrap_or_else(|p| p.into_inner()) = Some((now, set.clone()));
                set
            }
        };
        let now_secs = vouch_core::ttl::unix_seconds(now);
        Ok(set.get(id).and_then(|grants| {
            grants
                .iter()
                .filter(|(until, _)| *until > now_secs)
                .map(|(_, scope)| scope.clone())
                .reduce(vouch_core::NamespaceScope::union)
        }))
    }

    /// Announces a change: drops cached facts derived from entries and pushes it to the agents it
    /// concerns.
    pub fn publish(&self, event: Event) {
        self.publish_all(vec![event]);
    }

    /// Announces several changes at once, in order: each sync stream they concern is woken once
    /// for all of them (a batch of entries written in one transaction).
    pub fn publish_all(&self, events: Vec<Event>) {
        if events
            .iter()
            .any(|e| matches!(e, Event::EntryUpserted { .. } | Event::EntryDeleted { .. } | Event::Resync))
        {
            *self.admins.write().unwrap_or_else(|p| p.into_inner()) = None;
            self.principals.invalidate();
        }
        let mut for_streams = Vec::with_capacity(events.len());
        for event in events {
            match event {
                Event::SecretChanged { path } => self.secret_waiters.changed(&path),
                // Every watch decides its grant and its agent's admission again.
                Event::PoliciesChanged | Event::AgentRemoved { .. } | Event::Resync => {
                    self.secret_waiters.wake_all();
                    for_streams.push(event);
                }
                other => for_streams.push(other),
            }
        }
        if !for_streams.is_empty() {
            self.sync.publish_all(for_streams);
        }
    }

    /// The bundle's X.509 authorities as PEM, as of the last tick.
    pub fn bundle_pem(&self) -> Arc<str> {
        self.bundle_pem.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Advances key rotation (the leader) or follows the stored authority (the others), refreshes
    /// TLS anchors and renews the server's own certificate when due: each replica keeps its own.
    /// Returns when the next tick is needed.
    pub async fn tick(&self) -> Result<SystemTime, StartError> {
        let now = self.now();
        let rotation = self.rotation_step(now).await;
        self.refresh_anchors();
        let renew_at = self.renew_server_cert_if_due(now)?;
        let next = rotation?.unwrap_or(now + Duration::from_secs(60));
        Ok(next.min(renew_at))
    }

    /// The authority's part of a tick: load what another replica stored, then rotate if this
    /// server leads; when next.
    async fn rotation_step(&self, now: SystemTime) -> Result<Option<SystemTime>, StartError> {
        let leader = match self.store.try_lead().await {
            Ok(leader) => leader,
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the store for the lead of key rotation; not rotating until it answers");
                false
            }
        };
        self.leader.store(leader, Ordering::Relaxed);
        // A new leader starts from what the previous one stored.
        self.follow_authority().await?;
        if !leader {
            return Ok(Some(now + FOLLOW_INTERVAL));
        }
        self.advance_authority(now).await
    }

    fn renew_server_cert_if_due(&self, now: SystemTime) -> Result<SystemTime, StartError> {
        let due = *self.server_cert_renew_at.read().unwrap_or_else(|p| p.into_inner());
        if now < due {
            return Ok(due);
        }
        let key = WorkloadKey::generate()?;
        let names: Vec<vouch_core::DnsName> =
            self.config.dns_names.iter().filter_map(|n| vouch_core::DnsName::new(n).ok()).collect();
        let id = server_spiffe_id(&self.config);
        let issued =
            self.signing(|a| a.mint_x509(&id, &names, &key.public, self.config.x509_svid_ttl, now))?;
        let mut chain = vec![issued.svid.cert_der.clone()];
        chain.extend(issued.intermediates);
        self.server_cert.set(chain, &key.pkcs8).map_err(|e| StartError::Tls(e.to_string()))?;
        let renew_at = vouch_core::ttl::renew_at(issued.svid.not_before, issued.svid.not_after, 0.0);
        *self.server_cert_renew_at.write().unwrap_or_else(|p| p.into_inner()) = renew_at;
        Ok(renew_at)
    }
}
