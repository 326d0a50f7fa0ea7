//! The SVIDs the agent holds for workloads: X509-SVIDs with their keys (generated on the node,
//! never sent anywhere), when a workload last received each, and JWT-SVIDs by entry and audience
//! set. Only bookkeeping: obtaining SVIDs from the server is [`crate::state::AgentState`]'s job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use vouch_core::{Entry, EntryId, SpiffeId};
use zeroize::Zeroizing;

/// Most JWT-SVIDs held at once. Each distinct audience set of each entry is one; without a bound
/// any local workload could grow the agent by asking for ever new audiences. When full, the one
/// closest to its renewal time goes (it would be replaced soonest anyway).
pub const MAX_CACHED_JWTS: usize = 1024;

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
    /// The leaf's serial number (lowercase hex), as delivery records name it.
    pub serial: String,
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

/// A JWT-SVID held for an entry and an audience set.
struct CachedJwt {
    token: String,
    renew_at: SystemTime,
    expires_at: SystemTime,
}

/// Key of the JWT cache: the entry and its sorted, deduplicated audiences.
type JwtKey = (EntryId, Vec<String>);

/// The SVIDs held for workloads.
#[derive(Default)]
pub struct SvidCache {
    x509: Mutex<HashMap<EntryId, Arc<CachedSvid>>>,
    /// When a workload last received each held X509-SVID; unused ones are dropped, not renewed.
    last_used: Mutex<HashMap<EntryId, SystemTime>>,
    jwts: Mutex<HashMap<JwtKey, CachedJwt>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The cache key of `audiences` for `entry`.
fn jwt_key(entry: &EntryId, audiences: &[String]) -> JwtKey {
    let mut aud = audiences.to_vec();
    aud.sort();
    aud.dedup();
    (entry.clone(), aud)
}

impl SvidCache {
    /// The entries among `entries` with no valid X509-SVID for their current revision at `now`.
    pub fn missing_x509(&self, entries: &[Entry], now: SystemTime) -> Vec<Entry> {
        let held = lock(&self.x509);
        entries
            .iter()
            .filter(|e| !held.get(&e.id).is_some_and(|s| s.revision == e.revision && s.not_after > now))
            .cloned()
            .collect()
    }

    /// The X509-SVIDs held for `entries` (in their order), recorded as received at `now`.
    pub fn take_x509(&self, entries: &[Entry], now: SystemTime) -> Vec<Arc<CachedSvid>> {
        let held = lock(&self.x509);
        let mut used = lock(&self.last_used);
        for e in entries {
            used.insert(e.id.clone(), now);
        }
        entries.iter().filter_map(|e| held.get(&e.id).cloned()).collect()
    }

    /// Holds `svid` for its entry, replacing the one before.
    pub fn insert_x509(&self, svid: CachedSvid) {
        lock(&self.x509).insert(svid.entry_id.clone(), Arc::new(svid));
    }

    /// Drops what was issued for entries no longer present or at another revision.
    pub fn retain_entries(&self, revisions: &HashMap<EntryId, u64>) {
        lock(&self.x509).retain(|id, s| revisions.get(id) == Some(&s.revision));
        lock(&self.last_used).retain(|id, _| revisions.contains_key(id));
        lock(&self.jwts).retain(|(id, _), _| revisions.contains_key(id));
    }

    /// Drops what was issued for entry `id` unless it was for `revision`.
    pub fn entry_changed(&self, id: &EntryId, revision: u64) {
        lock(&self.x509).retain(|e, s| e != id || s.revision == revision);
        lock(&self.jwts).retain(|(e, _), _| e != id);
    }

    /// Drops everything issued for entry `id`.
    pub fn entry_removed(&self, id: &EntryId) {
        lock(&self.x509).remove(id);
        lock(&self.last_used).remove(id);
        lock(&self.jwts).retain(|(e, _), _| e != id);
    }

    /// The ids of held X509-SVIDs due for renewal at `now`, after dropping (instead of renewing)
    /// those no workload received for a whole SVID lifetime: a workload that asked once and went
    /// away should not keep the server signing for it; one holding a stream receives every
    /// renewal, so its SVIDs never count as unused. Expired JWT-SVIDs are dropped too.
    pub fn due_x509(&self, now: SystemTime) -> Vec<EntryId> {
        lock(&self.jwts).retain(|_, j| j.expires_at > now);
        let mut held = lock(&self.x509);
        let mut used = lock(&self.last_used);
        held.retain(|id, s| {
            let lifetime = s.not_after.duration_since(s.not_before).unwrap_or_default();
            let idle = used.get(id).is_none_or(|t| now.duration_since(*t).is_ok_and(|d| d > lifetime));
            let keep = !(s.renew_at <= now && idle);
            if !keep {
                used.remove(id);
            }
            keep
        });
        held.values().filter(|s| s.renew_at <= now).map(|s| s.entry_id.clone()).collect()
    }

    /// How long until the earliest held X509-SVID is due, capped at `max`.
    pub fn next_due_in(&self, now: SystemTime, max: Duration) -> Duration {
        lock(&self.x509)
            .values()
            .map(|s| s.renew_at.duration_since(now).unwrap_or_default())
            .min()
            .unwrap_or(max)
            .min(max)
    }

    /// How many X509-SVIDs are held.
    pub fn x509_len(&self) -> usize {
        lock(&self.x509).len()
    }

    /// The JWT-SVID held for `entry` and `audiences`, while it is in the first half of its life.
    pub fn jwt(&self, entry: &EntryId, audiences: &[String], now: SystemTime) -> Option<String> {
        lock(&self.jwts)
            .get(&jwt_key(entry, audiences))
            .filter(|c| now < c.renew_at && now < c.expires_at)
            .map(|c| c.token.clone())
    }

    /// Holds a JWT-SVID minted at `now` for `entry` and `audiences`, expiring at `expires_at`; when
    /// `MAX_CACHED_JWTS` (1,024) are held, the one due soonest makes room.
    pub fn insert_jwt(
        &self,
        entry: &EntryId,
        audiences: &[String],
        token: String,
        now: SystemTime,
        expires_at: SystemTime,
    ) {
        let key = jwt_key(entry, audiences);
        let renew_at = vouch_core::ttl::renew_at(now, expires_at, 0.0);
        let mut jwts = lock(&self.jwts);
        if jwts.len() >= MAX_CACHED_JWTS && !jwts.contains_key(&key) {
            jwts.retain(|_, j| j.expires_at > now);
            if jwts.len() >= MAX_CACHED_JWTS {
                let soonest = jwts.iter().min_by_key(|(_, j)| j.renew_at).map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    jwts.remove(&k);
                }
            }
        }
        jwts.insert(key, CachedJwt { token, renew_at, expires_at });
    }

    /// How many JWT-SVIDs are held.
    pub fn jwt_len(&self) -> usize {
        lock(&self.jwts).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jwt_cache_is_bounded_and_keeps_the_freshest() {
        let cache = SvidCache::default();
        let entry = EntryId::new("e1").unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let exp = |i: usize| t0 + Duration::from_secs(600 + i as u64);
        for i in 0..MAX_CACHED_JWTS + 500 {
            cache.insert_jwt(&entry, &[format!("aud-{i}")], format!("token-{i}"), t0, exp(i));
            assert!(cache.jwt_len() <= MAX_CACHED_JWTS, "bounded at every step");
        }
        assert_eq!(cache.jwt_len(), MAX_CACHED_JWTS);
        assert_eq!(cache.jwt(&entry, &["aud-0".into()], t0), None, "the one due soonest went first");
        let last = MAX_CACHED_JWTS + 499;
        assert_eq!(cache.jwt(&entry, &[format!("aud-{last}")], t0), Some(format!("token-{last}")));
        // Audience order and repeats do not make a new key.
        cache.insert_jwt(&entry, &["b".into(), "a".into(), "a".into()], "ab".into(), t0, exp(9_999));
        assert_eq!(cache.jwt(&entry, &["a".into(), "b".into()], t0), Some("ab".into()));
        // Past half its life a token is not served from the cache.
        assert_eq!(cache.jwt(&entry, &["a".into(), "b".into()], exp(9_999) - Duration::from_secs(1)), None);
    }
}
