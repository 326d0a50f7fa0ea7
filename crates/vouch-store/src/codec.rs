//! How rows hold domain values, shared by every backend: entries and agents as JSON text (with the
//! queried fields also in their own indexed columns), and the bookkeeping of damaged entry rows.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use vouch_core::{Entry, NodeGroup, SpiffeId};

use crate::{AgentRecord, ChallengeUse, DamagedEntry, JoinTokenRecord, StoreError, TokenUse};

/// Damaged rows met by listings: a counter, and the ids already logged, so a row that every sync
/// and admin check meets is logged once, not once per listing (log lines are a bounded cost).
#[derive(Default)]
pub(crate) struct DamageLog {
    skipped: AtomicU64,
    logged: Mutex<HashSet<String>>,
}

impl DamageLog {
    pub(crate) fn skipped(&self, row: &DamagedEntry) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.insert(row.id.clone()) {
            tracing::warn!(entry_id = %row.id, reason = %row.reason, "skipping a damaged entry row: it is not served or listed until the database is restored or the row is removed");
        }
    }

    /// A deleted or rewritten row may be damaged again later and should be logged again then.
    pub(crate) fn forget(&self, id: &str) {
        self.logged.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// How many rows listings have skipped.
    pub(crate) fn count(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

/// Why an entry's stored JSON does not decode, by category and position only: serde's own message
/// can quote the stored value.
fn damage_reason(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax | Category::Eof => "data is not valid JSON",
        Category::Data => "data is not a valid entry",
        Category::Io => "data cannot be read",
    };
    format!("{what} (line {}, column {})", e.line(), e.column())
}

/// Decodes one entry row; the id column must agree with the data (sync and updates go by it).
pub(crate) fn decode_row(id: &str, data: &str) -> Result<Entry, DamagedEntry> {
    let damaged = |reason: String| DamagedEntry { id: id.to_owned(), reason };
    let entry: Entry = serde_json::from_str(data).map_err(|e| damaged(damage_reason(&e)))?;
    if entry.id.as_str() != id {
        return Err(damaged("the data's id differs from the row's id".into()));
    }
    Ok(entry)
}

/// Decodes the one entry a caller asked for: a damaged row is an error naming it.
pub(crate) fn decode_entry(id: &str, data: &str) -> Result<Entry, StoreError> {
    decode_row(id, data).map_err(|d| StoreError::DamagedEntry { id: d.id, reason: d.reason })
}

pub(crate) fn encode_entry(entry: &Entry) -> Result<String, StoreError> {
    serde_json::to_string(entry).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn encode_agent(agent: &AgentRecord) -> Result<String, StoreError> {
    serde_json::to_string(agent).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn decode_agent(data: &str) -> Result<AgentRecord, StoreError> {
    serde_json::from_str(data).map_err(|e| StoreError::Corrupt(format!("agent: {e}")))
}

pub(crate) fn encode_group(group: &NodeGroup) -> Result<String, StoreError> {
    serde_json::to_string(group).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Decodes one group row; a row that does not decode is logged (by key, never its content) and
/// skipped by listings, so one damaged group cannot stop every agent's sync.
pub(crate) fn decode_group(id: &str, data: &str) -> Option<NodeGroup> {
    match serde_json::from_str::<NodeGroup>(data) {
        Ok(g) if g.spiffe_id.to_string() == id => Some(g),
        Ok(_) => {
            tracing::warn!(group = %id, "skipping a damaged node group row: its data names another group");
            None
        }
        Err(e) => {
            tracing::warn!(group = %id, reason = %damage_reason(&e), "skipping a damaged node group row: restore the database or delete the group and create it again");
            None
        }
    }
}

/// Sorts a listing's rows into entries passing `accepts` and damaged rows (counted and logged).
pub(crate) fn sort_rows(
    rows: impl IntoIterator<Item = Result<Entry, DamagedEntry>>,
    accepts: impl Fn(&Entry) -> bool,
    damage: &DamageLog,
) -> crate::EntryListing {
    let mut listing = crate::EntryListing::default();
    for decoded in rows {
        match decoded {
            Ok(entry) if accepts(&entry) => listing.entries.push(entry),
            Ok(_) => {}
            Err(damaged) => {
                damage.skipped(&damaged);
                listing.damaged.push(damaged);
            }
        }
    }
    listing
}

/// The stored revision an update of `entry` must find (`entry.revision - 1`).
pub(crate) fn prior_revision(entry: &Entry) -> Result<u64, StoreError> {
    entry
        .revision
        .checked_sub(1)
        .ok_or_else(|| StoreError::RevisionConflict { id: entry.id.to_string(), expected: 0 })
}

/// The answer for a join token just marked used at `now`, from its stored columns.
/// A join token that may be used at `now` (created, expires, chosen agent id) from its row (created,
/// expires, agent id, used at), or why not.
/// A join token's row: created, expires, chosen agent id, used at, labels (JSON object text).
pub(crate) type TokenRow = (i64, i64, Option<String>, Option<i64>, Option<String>);

/// A usable token's row: created, expires, chosen agent id, labels.
pub(crate) type UsableToken = (i64, i64, Option<String>, Option<String>);

/// Whether a token's row may be consumed at `now`: its fields, or the refusal.
// The error side is only ever a refusal without data (unknown, expired, used), never the large
// `Consumed` variant, and it is built once per presented token, next to a database read.
#[allow(clippy::result_large_err)]
pub(crate) fn usable_token(row: Option<TokenRow>, now: i64) -> Result<UsableToken, TokenUse> {
    match row {
        None => Err(TokenUse::Unknown),
        Some((_, _, _, Some(_), _)) => Err(TokenUse::AlreadyUsed),
        Some((_, expires_at, _, None, _)) if expires_at <= now => Err(TokenUse::Expired),
        Some((created_at, expires_at, agent_id, None, labels)) => {
            Ok((created_at, expires_at, agent_id, labels))
        }
    }
}

/// A token's labels as stored: a JSON object, or NULL when there are none.
pub(crate) fn encode_labels(
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<Option<String>, StoreError> {
    if labels.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(labels).map(Some).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn consumed_token(
    hash: String,
    (created_at, expires_at, agent_id, labels): UsableToken,
    now: i64,
) -> Result<TokenUse, StoreError> {
    let agent_id = agent_id
        .map(|s| SpiffeId::parse(&s).map_err(|e| StoreError::Corrupt(format!("join token agent id: {e}"))))
        .transpose()?;
    let labels = labels
        .map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("join token labels: {e}"))))
        .transpose()?
        .unwrap_or_default();
    Ok(TokenUse::Consumed(JoinTokenRecord {
        hash,
        created_at,
        expires_at,
        agent_id,
        used_at: Some(now),
        labels,
    }))
}

/// An authority version as stored (a signed 64-bit column) as the version the store speaks of.
pub(crate) fn authority_version(stored: i64) -> Result<u64, StoreError> {
    u64::try_from(stored).map_err(|_| StoreError::Corrupt(format!("authority version {stored}")))
}

/// The answer to a challenge taken out of the store (`None`: there was none), at `now`.
pub(crate) fn used_challenge(taken: Option<(String, i64)>, now: i64) -> ChallengeUse {
    match taken {
        None => ChallengeUse::Unknown,
        Some((_, expires_at)) if expires_at <= now => ChallengeUse::Expired,
        Some((fingerprint, _)) => ChallengeUse::Consumed { fingerprint },
    }
}

/// A federation row from its columns; a trust domain that does not parse makes it corrupt.
pub(crate) fn decode_federation(
    trust_domain: &str,
    relationship: String,
    state: String,
    revision: i64,
) -> Result<crate::FederationRow, StoreError> {
    let td = vouch_core::TrustDomain::new(trust_domain)
        .map_err(|e| StoreError::Corrupt(format!("federation relationship `{trust_domain}`: {e}")))?;
    Ok(crate::FederationRow {
        trust_domain: td,
        relationship,
        state,
        revision: u64::try_from(revision).unwrap_or(0),
    })
}

/// A secret version number as a signed 64-bit column.
pub(crate) fn version_i64(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version)
        .map_err(|_| StoreError::Corrupt(format!("secret version {version} is out of range")))
}

/// A secrets row from its columns; a path that does not parse makes it corrupt.
pub(crate) fn decode_secret(
    path: &str,
    owner: String,
    purpose: String,
    rotation_due: Option<i64>,
    created_at: i64,
    updated_at: i64,
    current_version: i64,
) -> Result<crate::SecretRecord, StoreError> {
    let parsed = vouch_core::SecretPath::parse(path).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let current_version = u64::try_from(current_version)
        .map_err(|_| StoreError::Corrupt(format!("secret `{parsed}`: version {current_version}")))?;
    Ok(crate::SecretRecord {
        path: parsed,
        owner,
        purpose,
        rotation_due,
        created_at,
        updated_at,
        current_version,
    })
}

/// A secret_versions row from its columns.
pub(crate) fn decode_secret_version(
    version: i64,
    created_at: i64,
    deleted_at: Option<i64>,
    destroyed_at: Option<i64>,
) -> Result<crate::SecretVersionRecord, StoreError> {
    let version =
        u64::try_from(version).map_err(|_| StoreError::Corrupt(format!("secret version {version}")))?;
    Ok(crate::SecretVersionRecord { version, created_at, deleted_at, destroyed_at })
}

/// An audit record's fields as stored (JSON).
pub(crate) fn encode_audit_fields(fields: &vouch_core::audit::AuditFields) -> Result<String, StoreError> {
    serde_json::to_string(fields).map_err(|e| StoreError::Corrupt(format!("audit fields: {e}")))
}

/// An audit record's stored fields; text that does not read back becomes one `_unreadable` field
/// (a verification then reports the record as edited, instead of the read failing).
pub(crate) fn decode_audit_fields(text: String) -> vouch_core::audit::AuditFields {
    serde_json::from_str(&text).unwrap_or_else(|_| {
        [("_unreadable".to_owned(), vouch_core::audit::AuditValue::Text(text))].into_iter().collect()
    })
}

/// Checks that `records` follow `head` without a gap; the new head.
pub(crate) fn audit_numbering(
    head: &crate::AuditHead,
    records: &[vouch_core::audit::AuditRecord],
) -> Result<crate::AuditHead, StoreError> {
    for (i, r) in records.iter().enumerate() {
        if r.seq != head.seq + 1 + i as u64 {
            return Err(StoreError::Corrupt(format!(
                "audit record {} does not follow the head {} in order",
                r.seq, head.seq
            )));
        }
    }
    Ok(match records.last() {
        Some(last) => crate::AuditHead { seq: last.seq, hash: last.hash.clone() },
        None => head.clone(),
    })
}

/// The `LIKE` pattern matching text that starts with `prefix` (with `\` as the escape).
pub(crate) fn like_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}
