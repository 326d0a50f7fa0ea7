//! The audit log's cryptography: the hash chain, the checkpoint key (Ed25519), and the verifier
//! that walks records and checkpoints and names the first place where the log was tampered with.
//!
//! The encodings are `vouch_core::audit`'s; this module only hashes and signs them. The verifier
//! is pure: it takes records and checkpoints (from the store or from an export file) and the
//! trusted public keys, and holds at most a few records at a time, so a log of any length is
//! walked in bounded memory.

use std::collections::{HashMap, VecDeque};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use vouch_core::audit::{
    canonical, checkpoint_bytes, AuditCheckpoint, AuditProblem, AuditProblemKind, AuditPublicKey,
    AuditRecord, AuditVerifyReport, GENESIS_HASH,
};
use zeroize::Zeroizing;

use crate::keys::{hex, sha256};
use crate::CaError;

/// The algorithm name of audit keys.
pub const ALGORITHM: &str = "Ed25519";

/// The hash of a record chained after `prev_hash`: `SHA-256(prev_hash || canonical(record))`,
/// `prev_hash` as its hex text, the result as lowercase hex.
pub fn chain_hash(
    prev_hash: &str,
    seq: u64,
    time_ms: i64,
    event: &str,
    fields: &vouch_core::audit::AuditFields,
) -> String {
    let body = canonical(seq, time_ms, event, fields);
    let mut input = Vec::with_capacity(prev_hash.len() + body.len());
    input.extend_from_slice(prev_hash.as_bytes());
    input.extend_from_slice(&body);
    hex(&sha256(&input))
}

fn record_hash(prev_hash: &str, r: &AuditRecord, seq: u64) -> String {
    chain_hash(prev_hash, seq, r.time_ms, &r.event, &r.fields)
}

/// The id of an audit key: `audit-` and the first 16 hex digits of SHA-256 of its public key.
pub fn key_id_of(public_key: &[u8]) -> String {
    format!("audit-{}", &hex(&sha256(public_key))[..16])
}

/// The key that signs checkpoints.
pub struct AuditSigner {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditSigner({})", self.key_id)
    }
}

impl AuditSigner {
    /// A new key and its PKCS#8 document (to be sealed before it is stored).
    pub fn generate() -> Result<(Self, Zeroizing<Vec<u8>>), CaError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| CaError::Crypto("Ed25519 key generation failed"))?;
        let pkcs8 = Zeroizing::new(doc.as_ref().to_vec());
        Ok((Self::from_pkcs8(&pkcs8)?, pkcs8))
    }

    /// The key from its PKCS#8 document.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, CaError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|_| CaError::InvalidKey("the audit key is not an Ed25519 PKCS#8 key".into()))?;
        let key_id = key_id_of(pair.public_key().as_ref());
        Ok(Self { pair, key_id })
    }

    /// The key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half, for verifiers.
    pub fn public_key(&self) -> AuditPublicKey {
        AuditPublicKey {
            key_id: self.key_id.clone(),
            algorithm: ALGORITHM.into(),
            public_key: STANDARD.encode(self.pair.public_key().as_ref()),
        }
    }

    /// A signed checkpoint of the head `(seq, hash)` at `time_ms`.
    pub fn checkpoint(&self, seq: u64, hash: &str, time_ms: i64) -> AuditCheckpoint {
        let sig = self.pair.sign(&checkpoint_bytes(&self.key_id, seq, hash, time_ms));
        AuditCheckpoint {
            seq,
            hash: hash.to_owned(),
            time_ms,
            key_id: self.key_id.clone(),
            signature: STANDARD.encode(sig.as_ref()),
        }
    }
}

/// Whether `cp` carries a valid signature by one of `keys` (by key id).
fn checkpoint_signed(keys: &HashMap<String, Vec<u8>>, cp: &AuditCheckpoint) -> Result<(), String> {
    let Some(public) = keys.get(&cp.key_id) else {
        return Err(format!("the checkpoint names key `{}`, which is not a trusted audit key", cp.key_id));
    };
    let sig =
        STANDARD.decode(cp.signature.as_bytes()).map_err(|_| "its signature is not base64".to_owned())?;
    UnparsedPublicKey::new(&ED25519, public).verify(&cp.signed_bytes(), &sig).map_err(|_| {
        format!(
            "its signature does not verify with audit key `{}`: the checkpoint was forged or altered",
            cp.key_id
        )
    })
}

/// How many records the verifier looks ahead to tell an edit from an insertion or a swap.
const LOOKAHEAD: usize = 2;

/// Walks records in sequence order (fed in pages) and the checkpoints, and stops at the first
/// problem.
#[derive(Debug)]
pub struct ChainVerifier {
    keys: HashMap<String, Vec<u8>>,
    checkpoints: VecDeque<AuditCheckpoint>,
    pending: VecDeque<AuditRecord>,
    prev_prev: String,
    prev: String,
    expected: u64,
    records: u64,
    checkpoints_ok: u64,
    last_checkpoint: u64,
    problem: Option<AuditProblem>,
}

impl ChainVerifier {
    /// A verifier trusting `keys`, with every checkpoint to check. A key that is not Ed25519 or
    /// not base64 is refused.
    pub fn new(keys: &[AuditPublicKey], mut checkpoints: Vec<AuditCheckpoint>) -> Result<Self, CaError> {
        let mut trusted = HashMap::new();
        for k in keys {
            if k.algorithm != ALGORITHM {
                return Err(CaError::InvalidKey(format!(
                    "audit key `{}` is `{}`, not Ed25519",
                    k.key_id, k.algorithm
                )));
            }
            let bytes = STANDARD.decode(k.public_key.as_bytes()).map_err(|_| {
                CaError::InvalidKey(format!("audit key `{}`: public_key is not base64", k.key_id))
            })?;
            trusted.insert(k.key_id.clone(), bytes);
        }
        checkpoints.sort_by_key(|c| c.seq);
        Ok(Self {
            keys: trusted,
            checkpoints: checkpoints.into(),
            pending: VecDeque::new(),
            prev_prev: GENESIS_HASH.to_owned(),
            prev: GENESIS_HASH.to_owned(),
            expected: 1,
            records: 0,
            checkpoints_ok: 0,
            last_checkpoint: 0,
            problem: None,
        })
    }

    /// Whether a problem was found (further records change nothing).
    pub fn failed(&self) -> bool {
        self.problem.is_some()
    }

    /// Takes the next records, in sequence order.
    pub fn feed(&mut self, records: impl IntoIterator<Item = AuditRecord>) {
        if self.failed() {
            return;
        }
        self.pending.extend(records);
        self.step(false);
    }

    /// Ends the walk: the report. `head` is the sequence number the store says the log has
    /// reached, when the caller knows it: records missing at the end are then found even after
    /// the last checkpoint.
    pub fn finish(mut self, head: Option<u64>) -> AuditVerifyReport {
        self.step(true);
        if self.problem.is_none() {
            let last = self.expected - 1;
            if let Some(cp) = self.checkpoints.pop_front() {
                self.problem = Some(match checkpoint_signed(&self.keys, &cp) {
                    Err(why) => problem(cp.seq, AuditProblemKind::BadCheckpoint, format!("checkpoint at seq {}: {why}", cp.seq)),
                    Ok(()) => problem(
                        last + 1,
                        AuditProblemKind::Truncated,
                        format!("a valid checkpoint covers seq {} but the log ends at seq {last}: records {}..={} were deleted", cp.seq, last + 1, cp.seq),
                    ),
                });
            } else if let Some(head) = head.filter(|h| *h > last) {
                self.problem = Some(problem(
                    last + 1,
                    AuditProblemKind::Truncated,
                    format!("the log's head is seq {head} but the records end at seq {last}: records {}..={head} were deleted", last + 1),
                ));
            }
        }
        AuditVerifyReport { records: self.records, checkpoints: self.checkpoints_ok, problem: self.problem }
    }

    fn step(&mut self, last: bool) {
        while self.problem.is_none() && (self.pending.len() > LOOKAHEAD || (last && !self.pending.is_empty()))
        {
            let Some(cur) = self.pending.front() else { return };
            let e = self.expected;
            if cur.seq != e {
                let later = self.pending.iter().find(|r| r.seq == e).map(|_| cur.seq);
                self.problem = Some(if let Some(seen) = later {
                    problem(
                        e,
                        AuditProblemKind::Reordered,
                        format!("record {e} comes after record {seen}: records are out of order"),
                    )
                } else if cur.seq > e {
                    let range = if cur.seq == e + 1 {
                        format!("record {e} is")
                    } else {
                        format!("records {e}..={} are", cur.seq - 1)
                    };
                    problem(
                        e,
                        AuditProblemKind::Deleted,
                        format!("{range} missing: deleted (the next record is seq {})", cur.seq),
                    )
                } else {
                    problem(
                        cur.seq,
                        AuditProblemKind::Reordered,
                        format!(
                            "record {} comes after record {}: records are out of order or repeated",
                            cur.seq,
                            e - 1
                        ),
                    )
                });
                return;
            }
            if record_hash(&self.prev, cur, e) != cur.hash {
                self.problem = Some(self.diagnose());
                return;
            }
            let Some(cur) = self.pending.pop_front() else { return };
            self.prev_prev = std::mem::replace(&mut self.prev, cur.hash.clone());
            self.expected += 1;
            self.records += 1;
            self.check_checkpoints(&cur);
        }
    }

    /// Checkpoints up to `cur` (which verified).
    fn check_checkpoints(&mut self, cur: &AuditRecord) {
        while self.problem.is_none() && self.checkpoints.front().is_some_and(|c| c.seq <= cur.seq) {
            let Some(cp) = self.checkpoints.pop_front() else { return };
            if let Err(why) = checkpoint_signed(&self.keys, &cp) {
                self.problem = Some(problem(
                    cp.seq,
                    AuditProblemKind::BadCheckpoint,
                    format!("checkpoint at seq {}: {why}", cp.seq),
                ));
            } else if cp.seq != cur.seq || cp.hash != cur.hash {
                let from = self.last_checkpoint + 1;
                self.problem = Some(problem(
                    cp.seq,
                    AuditProblemKind::Rewritten,
                    format!(
                        "the chain at seq {} is not what the checkpoint signed: records {from}..={} were rewritten and their hashes recomputed{}",
                        cp.seq,
                        cp.seq,
                        if self.last_checkpoint > 0 { format!(" (the checkpoint at seq {} still matches)", self.last_checkpoint) } else { String::new() }
                    ),
                ));
            } else {
                self.checkpoints_ok += 1;
                self.last_checkpoint = cp.seq;
            }
        }
    }

    /// What is wrong with the first pending record, whose hash does not follow.
    fn diagnose(&self) -> AuditProblem {
        let e = self.expected;
        let (cur, next) = (&self.pending[0], self.pending.get(1));
        // Its content changed under an unchanged hash: the next record still chains from it.
        if next.is_some_and(|n| record_hash(&cur.hash, n, e + 1) == n.hash) {
            return problem(e, AuditProblemKind::Edited, format!("record {e} was edited: its content no longer matches its hash (the record after it still chains from it)"));
        }
        // The previous record does not belong: this one chains from the one before it.
        if e > 1 && record_hash(&self.prev_prev, cur, e - 1) == cur.hash {
            return problem(e - 1, AuditProblemKind::Inserted, format!("record {} was inserted: record {e} chains from record {} (the records after it were renumbered)", e - 1, e - 2));
        }
        // A later record belongs here.
        for (j, cand) in self.pending.iter().enumerate().skip(1) {
            if record_hash(&self.prev, cand, e) == cand.hash {
                let seq = cand.seq;
                if j == 1 && record_hash(&cand.hash, cur, e + 1) == cur.hash {
                    return problem(
                        e,
                        AuditProblemKind::Reordered,
                        format!("records {e} and {seq} were swapped"),
                    );
                }
                if j == 1 {
                    return problem(e, AuditProblemKind::Inserted, format!("record {e} was inserted: the record stored as seq {seq} chains from record {} (the records after it were renumbered)", e - 1));
                }
                return problem(
                    e,
                    AuditProblemKind::Reordered,
                    format!("the record stored as seq {seq} belongs at seq {e}: records were reordered"),
                );
            }
        }
        problem(e, AuditProblemKind::Broken, format!("record {e} does not chain from record {}: it was edited and its hash recomputed, or a record before it was deleted and the rest renumbered", e - 1))
    }
}

fn problem(seq: u64, kind: AuditProblemKind, message: String) -> AuditProblem {
    AuditProblem { seq, kind, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vouch_core::audit::{AuditFields, AuditValue};

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let fields: AuditFields =
                    [("spiffe_id".to_owned(), AuditValue::Text(format!("spiffe://example.org/w{seq}")))]
                        .into();
                let hash = chain_hash(&prev, seq, 1000 + seq as i64, "entry.create", &fields);
                prev = hash.clone();
                AuditRecord { seq, time_ms: 1000 + seq as i64, event: "entry.create".into(), fields, hash }
            })
            .collect()
    }

    fn rehash(records: &mut [AuditRecord]) {
        let mut prev = GENESIS_HASH.to_owned();
        for r in records {
            r.hash = record_hash(&prev, r, r.seq);
            prev = r.hash.clone();
        }
    }

    fn verify(
        signer: &AuditSigner,
        records: Vec<AuditRecord>,
        cps: Vec<AuditCheckpoint>,
    ) -> AuditVerifyReport {
        let mut v = ChainVerifier::new(&[signer.public_key()], cps).unwrap();
        // In pages of 3, as the server reads them.
        let mut it = records.into_iter().peekable();
        while it.peek().is_some() {
            v.feed(it.by_ref().take(3).collect::<Vec<_>>());
        }
        v.finish(None)
    }

    fn kind(r: &AuditVerifyReport) -> Option<(u64, AuditProblemKind)> {
        r.problem.as_ref().map(|p| (p.seq, p.kind))
    }

    #[test]
    fn every_kind_of_tampering_is_found_where_it_happened() {
        let (signer, _) = AuditSigner::generate().unwrap();
        let good = chain(10);
        let cp = |recs: &[AuditRecord], seq: u64| signer.checkpoint(seq, &recs[seq as usize - 1].hash, 5);
        let cps = vec![cp(&good, 4), cp(&good, 8)];
        let ok = verify(&signer, good.clone(), cps.clone());
        assert_eq!((ok.records, ok.checkpoints, ok.problem.clone()), (10, 2, None), "{ok}");
        assert_eq!(ok.to_string(), "verified 10 records, 2 checkpoints");

        let mut edited = good.clone();
        edited[4].fields.insert("spiffe_id".into(), AuditValue::Text("spiffe://example.org/evil".into()));
        assert_eq!(kind(&verify(&signer, edited, cps.clone())), Some((5, AuditProblemKind::Edited)));

        let mut deleted = good.clone();
        deleted.remove(5);
        assert_eq!(kind(&verify(&signer, deleted, cps.clone())), Some((6, AuditProblemKind::Deleted)));

        // Out of order in a file (sequence numbers kept).
        let mut shuffled = good.clone();
        shuffled.swap(4, 5);
        let r = verify(&signer, shuffled, cps.clone());
        assert_eq!(kind(&r), Some((5, AuditProblemKind::Reordered)), "{r}");
        assert!(r.to_string().contains("out of order"), "{r}");

        let mut swapped = good.clone();
        swapped.swap(2, 3);
        (swapped[2].seq, swapped[3].seq) = (3, 4);
        let r = verify(&signer, swapped, cps.clone());
        assert_eq!(kind(&r), Some((3, AuditProblemKind::Reordered)), "{r}");
        assert!(r.to_string().contains("records 3 and 4 were swapped"), "{r}");

        // Inserted with a garbage hash, and with a hash chained by the attacker.
        for forge in [false, true] {
            let mut inserted = good.clone();
            let mut fake = inserted[6].clone();
            fake.event = "entry.delete".into();
            if forge {
                fake.hash = record_hash(&inserted[5].hash, &fake, 7);
            } else {
                fake.hash = "ab".repeat(32);
            }
            inserted.insert(6, fake);
            for (i, r) in inserted.iter_mut().enumerate() {
                r.seq = i as u64 + 1;
            }
            let r = verify(&signer, inserted, cps.clone());
            assert_eq!(kind(&r), Some((7, AuditProblemKind::Inserted)), "forge {forge}: {r}");
        }

        // The whole chain recomputed after an edit: only the checkpoint tells.
        let mut rewritten = good.clone();
        rewritten[5].fields.insert("spiffe_id".into(), AuditValue::Text("spiffe://example.org/evil".into()));
        rehash(&mut rewritten);
        let r = verify(&signer, rewritten.clone(), cps.clone());
        assert_eq!(kind(&r), Some((8, AuditProblemKind::Rewritten)), "{r}");
        assert!(r.to_string().contains("records 5..=8 were rewritten"), "{r}");
        // ... and a checkpoint re-signed with another key does not verify.
        let (mallory, _) = AuditSigner::generate().unwrap();
        let mut forged = cps.clone();
        forged[1] = AuditCheckpoint {
            key_id: signer.key_id().into(),
            ..mallory.checkpoint(8, &rewritten[7].hash, 5)
        };
        assert_eq!(kind(&verify(&signer, rewritten, forged)), Some((8, AuditProblemKind::BadCheckpoint)));

        // Truncated below a checkpoint.
        let r = verify(&signer, good[..6].to_vec(), cps.clone());
        assert_eq!(kind(&r), Some((7, AuditProblemKind::Truncated)), "{r}");
        // ... and past the last one, told by the head.
        let mut v = ChainVerifier::new(&[signer.public_key()], cps).unwrap();
        v.feed(good[..9].to_vec());
        assert_eq!(kind(&v.finish(Some(10))), Some((10, AuditProblemKind::Truncated)));
    }
}
