//! What the server says this agent may serve: the entries and the trust bundle, kept current by
//! the sync stream ([`crate::sync`]), and a change counter that workload streams watch.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use vouch_ca::Bundle;
use vouch_core::{ttl, Entry, EntryId, Selectors, TrustDomain};

/// The bundles of federated trust domains, by trust domain.
pub type FederatedBundles = BTreeMap<TrustDomain, Bundle>;

/// The entries and bundle the agent serves.
pub struct Registry {
    entries: RwLock<HashMap<EntryId, Entry>>,
    bundle: RwLock<Arc<Bundle>>,
    /// The bundles of federated trust domains, as the server last sent them.
    federated: RwLock<Arc<FederatedBundles>>,
    /// Set by the first snapshot: until then "no entry matches" would be a guess, not an answer.
    synced: AtomicBool,
    /// Whether any entry has a `unix:sha256` selector: hashing callers' executables is skipped
    /// when none does.
    uses_exe_hash: AtomicBool,
    generation: tokio::sync::watch::Sender<u64>,
}

impl Registry {
    /// An empty registry trusting `bundle` (the one saved with the agent's identity).
    pub fn new(bundle: Bundle) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            bundle: RwLock::new(Arc::new(bundle)),
            federated: RwLock::default(),
            synced: AtomicBool::new(false),
            uses_exe_hash: AtomicBool::new(false),
            generation: tokio::sync::watch::channel(0).0,
        }
    }

    /// The current bundle.
    pub fn bundle(&self) -> Arc<Bundle> {
        self.bundle.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The bundles of federated trust domains.
    pub fn federated(&self) -> Arc<FederatedBundles> {
        self.federated.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a snapshot from the server has been applied since the agent started.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Whether any entry has a `unix:sha256` selector (so attestation must hash executables).
    pub fn uses_exe_hash(&self) -> bool {
        self.uses_exe_hash.load(Ordering::Acquire)
    }

    /// Recomputes [`Self::uses_exe_hash`]; called with the entries write-locked, after each change.
    fn note_selectors(&self, entries: &HashMap<EntryId, Entry>) {
        let any = entries
            .values()
            .any(|e| e.selectors.iter().any(|s| s.kind() == "unix" && s.value().starts_with("sha256:")));
        self.uses_exe_hash.store(any, Ordering::Release);
    }

    /// Changes whenever something a workload receives may have changed.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Tells the watchers that what workloads receive may have changed.
    pub fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Every entry, ordered by id.
    pub fn entries(&self) -> Vec<Entry> {
        let mut v: Vec<Entry> =
            self.entries.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry with `id`, if there is one.
    pub fn get(&self, id: &EntryId) -> Option<Entry> {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// The entries that apply to a workload with `selectors` at `now`, in a stable order (the first
    /// is the workload's default identity).
    pub fn matching(&self, selectors: &Selectors, now: SystemTime) -> Vec<Entry> {
        let now = ttl::unix_seconds(now);
        // Only the matches are copied: this runs on every Workload API call.
        let mut v: Vec<Entry> = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|e| e.matches(selectors, now))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Replaces every entry and, if given, the bundle (a snapshot), and marks the registry synced.
    /// Returns the new entry set so that caches can drop what no longer applies.
    pub(crate) fn replace(
        &self,
        entries: Vec<Entry>,
        bundles: Option<(Bundle, FederatedBundles)>,
    ) -> HashMap<EntryId, u64> {
        let map: HashMap<EntryId, Entry> = entries.into_iter().map(|e| (e.id.clone(), e)).collect();
        let revisions = map.iter().map(|(id, e)| (id.clone(), e.revision)).collect();
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        *entries = map;
        self.note_selectors(&entries);
        drop(entries);
        if let Some((bundle, federated)) = bundles {
            self.set_bundle(bundle, federated);
        }
        self.synced.store(true, Ordering::Release);
        revisions
    }

    /// Adds or replaces one entry.
    pub(crate) fn upsert(&self, entry: Entry) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.insert(entry.id.clone(), entry);
        self.note_selectors(&entries);
    }

    /// Removes one entry.
    pub(crate) fn remove(&self, id: &EntryId) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.remove(id);
        self.note_selectors(&entries);
    }

    /// Replaces the bundle and the federated bundles.
    pub(crate) fn set_bundle(&self, bundle: Bundle, federated: FederatedBundles) {
        *self.bundle.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(bundle);
        *self.federated.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(federated);
    }
}
