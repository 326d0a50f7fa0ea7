//! The authority of one trust domain: its root CA(s), signing CA(s) and JWT keys, their rotation, the
//! bundle they publish, and the minting of SVIDs.
//!
//! Rotation follows prepare -> publish -> activate -> retire. A key is prepared at half its life and
//! published in the bundle at once (roots and JWT keys; signing CAs are not in the bundle, only in
//! chains); it becomes active at five sixths of its predecessor's life, so validators have known it
//! for a third of a life before anything it signs appears; the predecessor is retired and stays in the
//! bundle until its own end, because everything it signed is capped to end by then.
//!
//! Everything here is a pure function of its inputs and `now`: the server owns the clock and storage.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use vouch_core::{ttl, CommonName, DnsName, SpiffeId, TrustDomain};
use zeroize::Zeroizing;

use crate::bundle::Bundle;
use crate::jwt::{self, JwtError, JwtPublicKey, JwtSvidClaims, MintedJwt};
use crate::keys::{random_id, sha256, KeyAlg, KeyUse, SigningKey};
use crate::seal::Kek;
use crate::x509::{Ca, CsrPublicKey, X509Svid};
use crate::CaError;
use crate::RequestError;

/// Settings of an authority.
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Algorithm of every key vouch generates.
    pub key_alg: KeyAlg,
    /// Lifetime of a self-signed root CA.
    pub root_ttl: Duration,
    /// Lifetime of a signing (intermediate) CA.
    pub ca_ttl: Duration,
    /// Lifetime of a JWT signing key.
    pub jwt_key_ttl: Duration,
    /// Algorithm of JWT signing keys, when not `key_alg` (RSA-2048 for RS256).
    pub jwt_key_alg: Option<KeyAlg>,
    /// `iss` claim of JWT-SVIDs, when set.
    pub jwt_issuer: Option<String>,
    /// `spiffe_refresh_hint` of the bundle.
    pub refresh_hint: Duration,
}

impl AuthorityConfig {
    /// Defaults for `trust_domain`: P-256, root 1 year, signing CA 24 h, JWT keys 24 h.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            key_alg: KeyAlg::EcP256,
            root_ttl: Duration::from_secs(365 * 24 * 3600),
            ca_ttl: ttl::DEFAULT_CA_TTL,
            jwt_key_ttl: ttl::DEFAULT_CA_TTL,
            jwt_key_alg: None,
            jwt_issuer: None,
            refresh_hint: Duration::from_secs(300),
        }
    }
}

pub use vouch_core::ttl::KeyState;

struct RootSlot {
    id: String,
    state: KeyState,
    ca: Ca,
    upstream: bool,
}

struct IntermediateSlot {
    id: String,
    state: KeyState,
    ca: Ca,
    root_id: String,
}

struct JwtSlot {
    kid: String,
    state: KeyState,
    key: SigningKey,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// An X509-SVID with the chain to present with it.
#[derive(Debug, Clone)]
pub struct IssuedX509 {
    /// The leaf.
    pub svid: X509Svid,
    /// Intermediates between the leaf and a bundle root (DER), leaf not included.
    pub intermediates: Vec<Vec<u8>>,
    /// The same intermediates as PEM, encoded once per signing CA rather than per SVID.
    pub intermediates_pem: std::sync::Arc<str>,
}

impl IssuedX509 {
    /// The chain as PEM, leaf first: what a workload presents.
    pub fn chain_pem(&self) -> String {
        let mut pem = crate::pem::encode("CERTIFICATE", &self.svid.cert_der);
        pem.push_str(&self.intermediates_pem);
        pem
    }

    /// The chain as DER certificates, leaf first: what vouch's own parts exchange.
    pub fn chain_der(&self) -> Vec<Vec<u8>> {
        std::iter::once(self.svid.cert_der.clone()).chain(self.intermediates.iter().cloned()).collect()
    }
}

/// A summary of one key, for listings (no key material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeySummary {
    /// `root`, `intermediate` or `jwt`.
    pub kind: &'static str,
    /// Key id.
    pub id: String,
    /// Life-cycle state.
    pub state: KeyState,
    /// Start of validity (unix seconds).
    pub not_before: i64,
    /// End of validity (unix seconds).
    pub not_after: i64,
}

/// The authority of a trust domain.
pub struct Authority {
    config: AuthorityConfig,
    roots: Vec<RootSlot>,
    intermediates: Vec<IntermediateSlot>,
    jwt_keys: Vec<JwtSlot>,
    sequence: u64,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("trust_domain", &self.config.trust_domain).finish_non_exhaustive()
    }
}

fn phase(not_before: SystemTime, not_after: SystemTime, num: u32, den: u32) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    not_before + life / den * num
}

fn prepare_at(nb: SystemTime, na: SystemTime) -> SystemTime {
    phase(nb, na, 1, 2)
}

fn activate_at(nb: SystemTime, na: SystemTime) -> SystemTime {
    phase(nb, na, 5, 6)
}

/// A key in rotation: roots, signing CAs and JWT keys all move prepared -> active -> retired.
trait Rotating {
    fn state(&self) -> KeyState;
    fn set_state(&mut self, state: KeyState);
    /// Not before, not after.
    fn validity(&self) -> (SystemTime, SystemTime);
}

/// A CA slot rotates by its certificate's validity.
macro_rules! rotating_ca_slot {
    ($slot:ty) => {
        impl Rotating for $slot {
            fn state(&self) -> KeyState {
                self.state
            }
            fn set_state(&mut self, state: KeyState) {
                self.state = state;
            }
            fn validity(&self) -> (SystemTime, SystemTime) {
                (self.ca.not_before(), self.ca.not_after())
            }
        }
    };
}
rotating_ca_slot!(RootSlot);
rotating_ca_slot!(IntermediateSlot);

impl Rotating for JwtSlot {
    fn state(&self) -> KeyState {
        self.state
    }
    fn set_state(&mut self, state: KeyState) {
        self.state = state;
    }
    fn validity(&self) -> (SystemTime, SystemTime) {
        (self.not_before, self.not_after)
    }
}

/// One rotation step of a set of keys, the same for every kind: with no active key, a prepared one
/// becomes active (or a new one is made active at once); from half of the active key's life a
/// successor is prepared (published for roots and JWT keys, so relying parties learn it before it
/// signs); from five sixths it takes over and the old one retires. Returns whether anything changed.
/// Pruning expired or retired keys is the caller's, as it differs by kind.
fn rotate<S: Rotating>(
    slots: &mut Vec<S>,
    now: SystemTime,
    make: impl FnOnce() -> Result<S, CaError>,
) -> Result<bool, CaError> {
    let prepared = slots.iter().position(|s| s.state() == KeyState::Prepared);
    let Some(active) = slots.iter().position(|s| s.state() == KeyState::Active) else {
        match prepared {
            Some(p) => slots[p].set_state(KeyState::Active),
            None => {
                let mut slot = make()?;
                slot.set_state(KeyState::Active);
                slots.push(slot);
            }
        }
        return Ok(true);
    };
    let (nb, na) = slots[active].validity();
    match prepared {
        None if now >= prepare_at(nb, na) => {
            slots.push(make()?);
            Ok(true)
        }
        Some(p) if now >= activate_at(nb, na) => {
            slots[active].set_state(KeyState::Retired);
            slots[p].set_state(KeyState::Active);
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn upstream_id(ca: &Ca) -> String {
    format!("upstream-{}", hex::encode(&sha256(ca.der())[..8]))
}

impl Authority {
    /// A new authority with no keys yet; [`Authority::tick`] creates them. With `upstream`, that CA is
    /// the root and is never rotated by vouch.
    pub fn new(config: AuthorityConfig, upstream: Option<Ca>) -> Self {
        let roots = upstream
            .map(|ca| vec![RootSlot { id: upstream_id(&ca), state: KeyState::Active, ca, upstream: true }])
            .unwrap_or_default();
        Self { config, roots, intermediates: Vec::new(), jwt_keys: Vec::new(), sequence: 0 }
    }

    /// The configuration.
    pub fn config(&self) -> &AuthorityConfig {
        &self.config
    }

    /// Creates missing keys and advances rotation as of `now`. Returns whether anything changed (the
    /// caller then persists the state).
    pub fn tick(&mut self, now: SystemTime) -> Result<bool, CaError> {
        let published_before = self.published_ids();
        let mut changed = self.tick_roots(now)?;
        changed |= self.tick_intermediates(now)?;
        changed |= self.tick_jwt(now)?;
        if self.published_ids() != published_before {
            self.sequence += 1;
            changed = true;
        }
        Ok(changed)
    }

    fn published_ids(&self) -> Vec<String> {
        self.roots.iter().map(|r| r.id.clone()).chain(self.jwt_keys.iter().map(|k| k.kid.clone())).collect()
    }

    fn new_root(&self, now: SystemTime) -> Result<RootSlot, CaError> {
        let id = random_id()?;
        let key = SigningKey::generate(self.config.key_alg, KeyUse::X509)?;
        let ca = Ca::self_signed_root(
            &self.config.trust_domain,
            key,
            &id[..8],
            backdated(now),
            now + self.config.root_ttl,
        )?;
        Ok(RootSlot { id, state: KeyState::Prepared, ca, upstream: false })
    }

    fn tick_roots(&mut self, now: SystemTime) -> Result<bool, CaError> {
        let before = self.roots.len();
        self.roots.retain(|r| r.ca.not_after() > now || r.upstream);
        let pruned = self.roots.len() != before;
        // An upstream root is the operator's to rotate.
        if self.roots.iter().any(|r| r.upstream) {
            return Ok(pruned);
        }
        let mut roots = std::mem::take(&mut self.roots);
        let rotated = rotate(&mut roots, now, || self.new_root(now));
        self.roots = roots;
        Ok(rotated? || pruned)
    }

    fn new_intermediate(&self, now: SystemTime) -> Result<IntermediateSlot, CaError> {
        let root = self
            .roots
            .iter()
            .find(|r| r.state == KeyState::Active)
            .ok_or_else(|| CaError::Refused("no active root CA".into()))?;
        if root.ca.not_after() <= now {
            return Err(CaError::Refused("the upstream root CA has expired; install a new one".into()));
        }
        let id = random_id()?;
        let key = SigningKey::generate(self.config.key_alg, KeyUse::X509)?;
        let ca = root.ca.sign_intermediate(
            &self.config.trust_domain,
            key,
            &id[..8],
            backdated(now),
            now + self.config.ca_ttl,
        )?;
        Ok(IntermediateSlot { id, state: KeyState::Prepared, ca, root_id: root.id.clone() })
    }

    fn tick_intermediates(&mut self, now: SystemTime) -> Result<bool, CaError> {
        let roots: Vec<&str> = self.roots.iter().map(|r| r.id.as_str()).collect();
        let before = self.intermediates.len();
        // Signing CAs are never published, so a replaced one can go at once; an expired one, or one
        // whose root is gone, is useless.
        self.intermediates.retain(|i| {
            i.state != KeyState::Retired && i.ca.not_after() > now && roots.contains(&i.root_id.as_str())
        });
        let pruned = self.intermediates.len() != before;
        let mut intermediates = std::mem::take(&mut self.intermediates);
        let rotated = rotate(&mut intermediates, now, || self.new_intermediate(now));
        // A signing CA retired by this step goes at once too.
        intermediates.retain(|i| i.state != KeyState::Retired);
        self.intermediates = intermediates;
        Ok(rotated? || pruned)
    }

    fn new_jwt_key(&self, now: SystemTime) -> Result<JwtSlot, CaError> {
        Ok(JwtSlot {
            kid: random_id()?,
            state: KeyState::Prepared,
            key: SigningKey::generate(self.config.jwt_key_alg.unwrap_or(self.config.key_alg), KeyUse::Jws)?,
            not_before: x509_seconds(now),
            not_after: x509_seconds(now + self.config.jwt_key_ttl),
        })
    }

    fn tick_jwt(&mut self, now: SystemTime) -> Result<bool, CaError> {
        let before = self.jwt_keys.len();
        self.jwt_keys.retain(|k| k.not_after > now);
        let pruned = self.jwt_keys.len() != before;
        let mut keys = std::mem::take(&mut self.jwt_keys);
        let rotated = rotate(&mut keys, now, || self.new_jwt_key(now));
        self.jwt_keys = keys;
        Ok(rotated? || pruned)
    }

    /// Prepares a successor of the root CA now, ahead of schedule (SPIRE's `localauthority x509
    /// prepare`): it is published in the bundle at once, so relying parties and federated trust
    /// domains learn it, and takes over at the usual point of the active root's life. Returns
    /// whether a root was prepared: not when one already is, nor when the root is an upstream CA
    /// (the operator's to rotate).
    pub fn prepare_root(&mut self, now: SystemTime) -> Result<bool, CaError> {
        if self.roots.iter().any(|r| r.upstream || r.state == KeyState::Prepared) {
            return Ok(false);
        }
        let root = self.new_root(now)?;
        self.roots.push(root);
        self.sequence += 1;
        Ok(true)
    }

    /// When [`Authority::tick`] next has something to do: the earliest prepare, activate or expiry
    /// time of any key.
    pub fn next_tick(&self) -> Option<SystemTime> {
        let mut times = Vec::new();
        let mut add = |nb: SystemTime, na: SystemTime, state: KeyState| {
            match state {
                KeyState::Active => {
                    times.push(prepare_at(nb, na));
                    times.push(activate_at(nb, na));
                }
                KeyState::Prepared | KeyState::Retired => {}
            }
            times.push(na);
        };
        for r in self.roots.iter().filter(|r| !r.upstream) {
            add(r.ca.not_before(), r.ca.not_after(), r.state);
        }
        for i in &self.intermediates {
            add(i.ca.not_before(), i.ca.not_after(), i.state);
        }
        for k in &self.jwt_keys {
            add(k.not_before, k.not_after, k.state);
        }
        times.into_iter().min()
    }

    /// The bundle: every root and JWT key that is prepared, active or retired but not yet expired.
    pub fn bundle(&self) -> Bundle {
        Bundle {
            trust_domain: self.config.trust_domain.clone(),
            x509_authorities: self.roots.iter().map(|r| r.ca.der().to_vec()).collect(),
            jwt_authorities: self.jwt_public_keys(),
            sequence: self.sequence,
            refresh_hint: Some(self.config.refresh_hint.as_secs()),
        }
    }

    fn jwt_public_keys(&self) -> BTreeMap<String, JwtPublicKey> {
        self.jwt_keys.iter().map(|k| (k.kid.clone(), k.key.jwt_public_key())).collect()
    }

    /// The bundle's sequence number.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Signs an X509-SVID with the active signing CA.
    pub fn mint_x509(
        &self,
        spiffe_id: &SpiffeId,
        dns_names: &[DnsName],
        public_key: &CsrPublicKey,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<IssuedX509, CaError> {
        self.mint_x509_with_common_name(spiffe_id, dns_names, None, public_key, ttl, now)
    }

    /// Signs an X509-SVID with the active signing CA, with `common_name` (when given) in its
    /// subject beside the SPIFFE ID's URI SAN, for relying parties that map the CN to a user.
    pub fn mint_x509_with_common_name(
        &self,
        spiffe_id: &SpiffeId,
        dns_names: &[DnsName],
        common_name: Option<&CommonName>,
        public_key: &CsrPublicKey,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<IssuedX509, CaError> {
        self.check_domain(spiffe_id)?;
        let ca = self
            .intermediates
            .iter()
            .find(|i| i.state == KeyState::Active)
            .ok_or(CaError::NotReady("no active signing CA"))?;
        let svid = ca.ca.sign_svid(spiffe_id, dns_names, common_name, public_key, ttl, now)?;
        Ok(IssuedX509 {
            svid,
            intermediates: vec![ca.ca.der().to_vec()],
            intermediates_pem: ca.ca.pem().clone(),
        })
    }

    /// Signs a JWT-SVID with the active JWT key.
    pub fn mint_jwt(
        &self,
        spiffe_id: &SpiffeId,
        audiences: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<MintedJwt, CaError> {
        self.check_domain(spiffe_id)?;
        if spiffe_id.is_trust_domain_id() {
            return Err(RequestError::NotAWorkload(spiffe_id.clone()).into());
        }
        let key = self
            .jwt_keys
            .iter()
            .find(|k| k.state == KeyState::Active)
            .ok_or(CaError::NotReady("no active JWT key"))?;
        jwt::mint(
            &key.key,
            &key.kid,
            spiffe_id,
            audiences,
            self.config.jwt_issuer.as_deref(),
            ttl,
            key.not_after,
            now,
        )
    }

    /// Validates a JWT-SVID of this trust domain against the current bundle.
    pub fn validate_jwt(
        &self,
        token: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<JwtSvidClaims, JwtError> {
        jwt::validate(token, &self.jwt_public_keys(), &self.config.trust_domain, audience, now)
    }

    fn check_domain(&self, id: &SpiffeId) -> Result<(), CaError> {
        if id.trust_domain() != &self.config.trust_domain {
            return Err(RequestError::ForeignTrustDomain {
                id: id.clone(),
                trust_domain: self.config.trust_domain.clone(),
            }
            .into());
        }
        Ok(())
    }

    /// Every key with its state, for listings.
    pub fn keys(&self) -> Vec<KeySummary> {
        let s = ttl::unix_seconds;
        let roots = self.roots.iter().map(|r| KeySummary {
            kind: "root",
            id: r.id.clone(),
            state: r.state,
            not_before: s(r.ca.not_before()),
            not_after: s(r.ca.not_after()),
        });
        let ints = self.intermediates.iter().map(|i| KeySummary {
            kind: "intermediate",
            id: i.id.clone(),
            state: i.state,
            not_before: s(i.ca.not_before()),
            not_after: s(i.ca.not_after()),
        });
        let jwts = self.jwt_keys.iter().map(|k| KeySummary {
            kind: "jwt",
            id: k.kid.clone(),
            state: k.state,
            not_before: s(k.not_before),
            not_after: s(k.not_after),
        });
        roots.chain(ints).chain(jwts).collect()
    }

    /// The state to persist: certificates and public facts in clear, private keys sealed with `kek`
    /// (the record id is the sealing context). An upstream root is not exported: it is loaded from its
    /// files at every start.
    pub fn export(&self, kek: &Kek) -> Result<AuthorityState, CaError> {
        let seal = |id: &str, key: &SigningKey| -> Result<String, CaError> {
            Ok(STANDARD.encode(kek.seal(id, key.pkcs8())?))
        };
        let mut keys = Vec::new();
        for r in self.roots.iter().filter(|r| !r.upstream) {
            keys.push(KeyRecord {
                kind: RecordKind::Root,
                id: r.id.clone(),
                state: r.state,
                alg: r.ca.key().alg(),
                cert: Some(STANDARD.encode(r.ca.der())),
                parent: None,
                not_before: ttl::unix_seconds(r.ca.not_before()),
                not_after: ttl::unix_seconds(r.ca.not_after()),
                sealed_key: seal(&r.id, r.ca.key())?,
            });
        }
        for i in &self.intermediates {
            keys.push(KeyRecord {
                kind: RecordKind::Intermediate,
                id: i.id.clone(),
                state: i.state,
                alg: i.ca.key().alg(),
                cert: Some(STANDARD.encode(i.ca.der())),
                parent: Some(i.root_id.clone()),
                not_before: ttl::unix_seconds(i.ca.not_before()),
                not_after: ttl::unix_seconds(i.ca.not_after()),
                sealed_key: seal(&i.id, i.ca.key())?,
            });
        }
        for k in &self.jwt_keys {
            keys.push(KeyRecord {
                kind: RecordKind::Jwt,
                id: k.kid.clone(),
                state: k.state,
                alg: k.key.alg(),
                cert: None,
                parent: None,
                not_before: ttl::unix_seconds(k.not_before),
                not_after: ttl::unix_seconds(k.not_after),
                sealed_key: seal(&k.kid, &k.key)?,
            });
        }
        Ok(AuthorityState { trust_domain: self.config.trust_domain.clone(), sequence: self.sequence, keys })
    }

    /// Rebuilds an authority from persisted state, opening the keys with `kek`.
    pub fn import(
        config: AuthorityConfig,
        state: AuthorityState,
        kek: &Kek,
        upstream: Option<Ca>,
    ) -> Result<Self, CaError> {
        if state.trust_domain != config.trust_domain {
            return Err(CaError::InvalidState(format!(
                "the stored keys belong to trust domain `{}`, but the configuration says `{}`",
                state.trust_domain, config.trust_domain
            )));
        }
        let mut authority = Self::new(config, upstream);
        authority.sequence = state.sequence;
        for rec in state.keys {
            let sealed = STANDARD
                .decode(rec.sealed_key.as_bytes())
                .map_err(|_| CaError::InvalidState(format!("key `{}` is not base64", rec.id)))?;
            let pkcs8: Zeroizing<Vec<u8>> = kek.open(&rec.id, &sealed)?;
            let cert = || -> Result<Vec<u8>, CaError> {
                let text = rec.cert.as_deref().ok_or_else(|| {
                    CaError::InvalidState(format!("key `{}` lacks its certificate", rec.id))
                })?;
                STANDARD
                    .decode(text.as_bytes())
                    .map_err(|_| CaError::InvalidState(format!("certificate of `{}` is not base64", rec.id)))
            };
            match rec.kind {
                RecordKind::Root => {
                    let key = SigningKey::from_pkcs8(rec.alg, KeyUse::X509, pkcs8)?;
                    let ca = Ca::from_parts(cert()?, key)?;
                    authority.roots.push(RootSlot { id: rec.id, state: rec.state, ca, upstream: false });
                }
                RecordKind::Intermediate => {
                    let key = SigningKey::from_pkcs8(rec.alg, KeyUse::X509, pkcs8)?;
                    let ca = Ca::from_parts(cert()?, key)?;
                    let root_id = rec.parent.unwrap_or_default();
                    authority.intermediates.push(IntermediateSlot {
                        id: rec.id,
                        state: rec.state,
                        ca,
                        root_id,
                    });
                }
                RecordKind::Jwt => {
                    let key = SigningKey::from_pkcs8(rec.alg, KeyUse::Jws, pkcs8)?;
                    authority.jwt_keys.push(JwtSlot {
                        kid: rec.id,
                        state: rec.state,
                        key,
                        not_before: ttl::from_unix_seconds(rec.not_before),
                        not_after: ttl::from_unix_seconds(rec.not_after),
                    });
                }
            }
        }
        Ok(authority)
    }
}

/// CA certificates are back-dated like SVIDs, so an SVID's back-dated start lies within its CA's life.
fn backdated(now: SystemTime) -> SystemTime {
    now.checked_sub(ttl::BACKDATE).unwrap_or(now)
}

fn x509_seconds(t: SystemTime) -> SystemTime {
    crate::x509::whole_seconds(t)
}

/// What kind of key a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A self-signed root CA.
    Root,
    /// A signing CA under a root.
    Intermediate,
    /// A JWT signing key.
    Jwt,
}

/// One persisted key. The private key is sealed; nothing else here is secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Kind.
    pub kind: RecordKind,
    /// Id (the `kid` for JWT keys).
    pub id: String,
    /// Life-cycle state.
    pub state: KeyState,
    /// Algorithm.
    pub alg: KeyAlg,
    /// The certificate (base64 DER) of a CA.
    pub cert: Option<String>,
    /// The root id of a signing CA.
    pub parent: Option<String>,
    /// Start of validity (unix seconds).
    pub not_before: i64,
    /// End of validity (unix seconds).
    pub not_after: i64,
    /// The PKCS#8 private key sealed under the KEK (base64).
    pub sealed_key: String,
}

/// Everything an authority persists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityState {
    /// The trust domain the keys belong to.
    pub trust_domain: TrustDomain,
    /// Bundle sequence number.
    pub sequence: u64,
    /// The keys.
    pub keys: Vec<KeyRecord>,
}
