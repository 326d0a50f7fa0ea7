//! JWT-SVIDs (SPIFFE JWT-SVID standard): compact JWS, minted with the server's key and validated
//! against the JWT authorities of a bundle.
//!
//! Validation is strict on purpose: `alg` must be one of RS/ES/PS 256/384/512 and match the key's
//! type; `none` and HMAC are refused outright (an HMAC "signature" made with a public key is the
//! classic JWT forgery); `kid` must name a known key; `typ`, when present, must be `JWT` or `JOSE`;
//! neither the header nor the claims may repeat a key (parsers disagree on which copy wins, so a
//! repeated `sub` could mean one identity to vouch and another to the relying party); `sub` must be
//! a workload's SPIFFE ID (not the bare trust-domain ID); `aud` must contain the expected audience;
//! `exp` must be in the future and `nbf`, when present, not. Neither check has a clock-skew leeway:
//! the server mints without `nbf` and with `iat` = now, so only foreign tokens carry one.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use vouch_core::{ttl, SpiffeId};

use crate::keys::{random_id, SigningKey};
use crate::{CaError, RequestError};

pub use vouch_core::jwt::{check_audiences, AudienceError, MAX_AUDIENCES, MAX_AUDIENCE_BYTES};

/// Largest token accepted for validation, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a JWT-SVID was rejected. Each reason is its own variant so callers and tests can tell them
/// apart; messages never include the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts with JSON header and claims.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// `alg: none`.
    #[error("unsigned tokens (alg `none`) are not accepted")]
    AlgNone,
    /// `alg: HS*`.
    #[error("HMAC algorithm `{0}` is not accepted: JWT-SVIDs are signed with asymmetric keys")]
    AlgHmac(String),
    /// Any other unknown `alg`.
    #[error("algorithm `{0}` is not supported (RS/ES/PS 256/384/512 are)")]
    UnsupportedAlg(String),
    /// No `kid` header.
    #[error("token has no `kid` header")]
    MissingKid,
    /// `kid` not in the bundle.
    #[error("key id `{0}` is not in the trust bundle")]
    UnknownKid(String),
    /// The header's alg does not fit the key's type or curve.
    #[error("algorithm `{alg}` does not match key `{kid}`")]
    AlgKeyMismatch {
        /// The header's alg.
        alg: String,
        /// The key id.
        kid: String,
    },
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// `typ` is present and is neither `JWT` nor `JOSE`.
    #[error("header `typ` is `{0}`; a JWT-SVID has `JWT` or `JOSE`")]
    WrongTyp(String),
    /// The header lists critical extensions vouch does not understand.
    #[error("header has `crit` extensions, which are not supported")]
    Crit,
    /// `exp` is not after the validation time.
    #[error("token expired at {0} (unix seconds)")]
    Expired(i64),
    /// `nbf` is after the validation time.
    #[error("token is not valid before {0} (unix seconds)")]
    NotYetValid(i64),
    /// The header repeats a key (its name, cut to 64 characters).
    #[error("header key `{0}` appears more than once")]
    DuplicateHeader(String),
    /// The claims repeat a key (its name, cut to 64 characters).
    #[error("claim `{0}` appears more than once")]
    DuplicateClaim(String),
    /// `aud` does not contain the expected audience.
    #[error("audience `{0}` is not among the token's audiences")]
    WrongAudience(String),
    /// A required claim is missing.
    #[error("claim `{0}` is missing")]
    MissingClaim(&'static str),
    /// `sub` is not a SPIFFE ID.
    #[error("claim `sub` is not a valid SPIFFE ID: {0}")]
    BadSubject(String),
    /// `sub` is the trust domain's own ID (`spiffe://<td>`, no path): it names no workload, and
    /// vouch never mints such a token.
    #[error("claim `sub` is the trust-domain ID `{0}`; a JWT-SVID's subject is a workload ID with a path")]
    TrustDomainSubject(String),
    /// The subject belongs to another trust domain than the bundle's.
    #[error("subject `{sub}` is not in trust domain `{trust_domain}`")]
    ForeignSubject {
        /// The subject.
        sub: String,
        /// The bundle's trust domain.
        trust_domain: String,
    },
}

/// A JWS algorithm vouch can validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwsAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256/384/512.
    Rs256,
    #[allow(missing_docs)]
    Rs384,
    #[allow(missing_docs)]
    Rs512,
    /// ECDSA P-256 / P-384 / P-521.
    Es256,
    #[allow(missing_docs)]
    Es384,
    #[allow(missing_docs)]
    Es512,
    /// RSASSA-PSS with SHA-256/384/512.
    Ps256,
    #[allow(missing_docs)]
    Ps384,
    #[allow(missing_docs)]
    Ps512,
}

impl JwsAlg {
    /// Parses a header `alg`, with the specific refusals for `none` and HMAC.
    pub fn parse(alg: &str) -> Result<Self, JwtError> {
        Ok(match alg {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "ES512" => Self::Es512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            a if a.eq_ignore_ascii_case("none") => return Err(JwtError::AlgNone),
            a if a.starts_with("HS") => return Err(JwtError::AlgHmac(a.chars().take(16).collect())),
            a => return Err(JwtError::UnsupportedAlg(a.chars().take(16).collect())),
        })
    }
}

/// A public key that may validate JWT-SVIDs, as published in a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtPublicKey {
    /// An EC key: curve name (`P-256`, `P-384`, `P-521`) and uncompressed point.
    Ec {
        /// JWK `crv`.
        crv: String,
        /// `04 || x || y`.
        point: Vec<u8>,
    },
    /// An RSA key: big-endian modulus and exponent.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
}

impl JwtPublicKey {
    fn verify(&self, alg: JwsAlg, kid: &str, msg: &[u8], sig: &[u8]) -> Result<(), JwtError> {
        let mismatch =
            || JwtError::AlgKeyMismatch { alg: format!("{alg:?}").to_uppercase(), kid: kid.to_owned() };
        match self {
            JwtPublicKey::Ec { crv, point } => {
                let v: &'static signature::EcdsaVerificationAlgorithm = match (alg, crv.as_str()) {
                    (JwsAlg::Es256, "P-256") => &signature::ECDSA_P256_SHA256_FIXED,
                    (JwsAlg::Es384, "P-384") => &signature::ECDSA_P384_SHA384_FIXED,
                    (JwsAlg::Es512, "P-521") => &signature::ECDSA_P521_SHA512_FIXED,
                    _ => return Err(mismatch()),
                };
                UnparsedPublicKey::new(v, point).verify(msg, sig).map_err(|_| JwtError::BadSignature)
            }
            JwtPublicKey::Rsa { n, e } => {
                let v: &'static signature::RsaParameters = match alg {
                    JwsAlg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    JwsAlg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    JwsAlg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    JwsAlg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                    JwsAlg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                    JwsAlg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return Err(mismatch()),
                };
                RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }
                    .verify(v, msg, sig)
                    .map_err(|_| JwtError::BadSignature)
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crit: Option<serde_json::Value>,
}

/// `aud` may be one string or a list (RFC 7519 section 4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Serialize, Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
}

pub use vouch_core::JwtSvidClaims;

/// A freshly minted JWT-SVID.
#[derive(Debug, Clone)]
pub struct MintedJwt {
    /// The compact JWS.
    pub token: String,
    /// Expiry, unix seconds.
    pub expires_at: i64,
    /// Whether the signing key's remaining life cut the lifetime short.
    pub capped: bool,
}

/// Mints a JWT-SVID for `sub` with `key` (its `kid` given), valid for `ttl` from `now` but never past
/// `key_not_after`.
#[allow(clippy::too_many_arguments)] // each is a distinct claim or bound; a struct would only rename them
pub fn mint(
    key: &SigningKey,
    kid: &str,
    sub: &SpiffeId,
    aud: &[String],
    issuer: Option<&str>,
    ttl: Duration,
    key_not_after: SystemTime,
    now: SystemTime,
) -> Result<MintedJwt, CaError> {
    check_audiences(aud).map_err(RequestError::from)?;
    let life =
        ttl::lifetime(now, ttl, key_not_after).ok_or(CaError::NotReady("the JWT signing key has expired"))?;
    let header = Header {
        alg: key.alg().jws_alg().into(),
        kid: Some(kid.into()),
        typ: Some("JWT".into()),
        crit: None,
    };
    let exp = ttl::unix_seconds(life.not_after);
    let claims = RawClaims {
        sub: Some(sub.to_string()),
        aud: Some(if aud.len() == 1 { Audience::One(aud[0].clone()) } else { Audience::Many(aud.to_vec()) }),
        exp: Some(exp),
        nbf: None,
        iat: Some(ttl::unix_seconds(now)),
        iss: issuer.map(str::to_owned),
        jti: Some(random_id()?),
    };
    let mut token = format!("{}.{}", b64_json(&header)?, b64_json(&claims)?);
    let sig = key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&B64.encode(sig));
    Ok(MintedJwt { token, expires_at: exp, capped: life.capped })
}

fn b64_json<T: Serialize>(value: &T) -> Result<String, CaError> {
    let json = serde_json::to_vec(value).map_err(|_| CaError::Crypto("JSON encoding failed"))?;
    Ok(B64.encode(json))
}

/// A JSON object read with its first repeated key noted. serde_json (like many parsers) keeps the
/// last of repeated keys and others keep the first, so a signed object with two `sub`s means
/// different things to different readers: such an object is refused, never interpreted.
struct UniqueKeys {
    map: serde_json::Map<String, serde_json::Value>,
    repeated: Option<String>,
}

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueKeys, A::Error> {
                let mut map = serde_json::Map::new();
                let mut repeated = None;
                while let Some((key, value)) = access.next_entry::<String, serde_json::Value>()? {
                    if map.contains_key(&key) {
                        repeated.get_or_insert_with(|| key.chars().take(64).collect());
                    } else {
                        map.insert(key, value);
                    }
                }
                Ok(UniqueKeys { map, repeated })
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

/// Decodes a base64url JSON object; `repeated` makes the error for a repeated key.
fn decode_object(
    part: &str,
    what: &'static str,
    repeated: fn(String) -> JwtError,
) -> Result<serde_json::Value, JwtError> {
    let bytes = B64.decode(part.as_bytes()).map_err(|_| JwtError::Malformed(what))?;
    let object: UniqueKeys = serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed(what))?;
    match object.repeated {
        Some(key) => Err(repeated(key)),
        None => Ok(serde_json::Value::Object(object.map)),
    }
}

fn decode_header(part: &str) -> Result<Header, JwtError> {
    const WHAT: &str = "header is not base64url JSON";
    let value = decode_object(part, WHAT, JwtError::DuplicateHeader)?;
    serde_json::from_value(value).map_err(|_| JwtError::Malformed(WHAT))
}

/// Reads the `kid` of a token without checking anything (to say which key a caller needs).
pub fn peek_kid(token: &str) -> Option<String> {
    decode_header(token.split('.').next()?).ok()?.kid
}

/// Reads the `alg` of a token's header without checking anything (to hold it to a per-issuer list
/// once the signature is verified).
pub fn peek_alg(token: &str) -> Option<String> {
    Some(decode_header(token.split('.').next()?).ok()?.alg)
}

/// Reads the `iss` claim of a token without checking anything (to choose the issuer whose keys
/// must verify it); `None` if the token is not three parts with a JSON claims object naming one.
pub fn peek_issuer(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (Some(_), Some(c), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let claims = decode_object(c, "claims are not base64url JSON", JwtError::DuplicateClaim).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

/// Verifies a compact JWS against `keys` (kid -> key) with the same algorithm rules as JWT-SVIDs
/// (no `none`, no HMAC, key type must fit `alg`, no `crit`, `typ` JWT/JOSE if present) and returns
/// the `kid` and the claims. Checks nothing about the claims: callers do.
pub fn verify_jws(
    token: &str,
    keys: &BTreeMap<String, JwtPublicKey>,
) -> Result<(String, serde_json::Value), JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed("a JWS has three dot-separated parts"));
    };
    let header = decode_header(h)?;
    let alg = JwsAlg::parse(&header.alg)?;
    if header.crit.is_some() {
        return Err(JwtError::Crit);
    }
    if let Some(typ) = &header.typ {
        if typ != "JWT" && typ != "JOSE" {
            return Err(JwtError::WrongTyp(typ.chars().take(32).collect()));
        }
    }
    let kid = header.kid.ok_or(JwtError::MissingKid)?;
    let key = keys.get(&kid).ok_or_else(|| JwtError::UnknownKid(kid.chars().take(64).collect()))?;
    let sig = B64.decode(s.as_bytes()).map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    let signed = &token[..h.len() + 1 + c.len()];
    key.verify(alg, &kid, signed.as_bytes(), &sig)?;
    let claims = decode_object(c, "claims are not base64url JSON", JwtError::DuplicateClaim)?;
    Ok((kid, claims))
}

/// Validates a JWT-SVID against `keys` (kid -> key, from the bundle of `trust_domain`) for
/// `audience` at `now`.
pub fn validate(
    token: &str,
    keys: &BTreeMap<String, JwtPublicKey>,
    trust_domain: &vouch_core::TrustDomain,
    audience: &str,
    now: SystemTime,
) -> Result<JwtSvidClaims, JwtError> {
    let (kid, claims) = verify_jws(token, keys)?;
    let claims: RawClaims =
        serde_json::from_value(claims).map_err(|_| JwtError::Malformed("claims are not JWT claims"))?;
    let sub_text = claims.sub.ok_or(JwtError::MissingClaim("sub"))?;
    let sub = SpiffeId::parse(&sub_text).map_err(|e| JwtError::BadSubject(e.to_string()))?;
    if sub.trust_domain() != trust_domain {
        return Err(JwtError::ForeignSubject {
            sub: sub.to_string(),
            trust_domain: trust_domain.to_string(),
        });
    }
    if sub.is_trust_domain_id() {
        return Err(JwtError::TrustDomainSubject(sub.to_string()));
    }
    let now = ttl::unix_seconds(now);
    let exp = claims.exp.ok_or(JwtError::MissingClaim("exp"))?;
    if now >= exp {
        return Err(JwtError::Expired(exp));
    }
    if let Some(nbf) = claims.nbf.filter(|nbf| now < *nbf) {
        return Err(JwtError::NotYetValid(nbf));
    }
    let aud = match claims.aud.ok_or(JwtError::MissingClaim("aud"))? {
        Audience::One(a) => vec![a],
        Audience::Many(v) => v,
    };
    if !aud.iter().any(|a| a == audience) {
        return Err(JwtError::WrongAudience(audience.chars().take(256).collect()));
    }
    Ok(JwtSvidClaims { sub, aud, exp, iat: claims.iat, iss: claims.iss, jti: claims.jti, kid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyAlg, KeyUse};
    use vouch_core::TrustDomain;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    struct Fixture {
        key: SigningKey,
        keys: BTreeMap<String, JwtPublicKey>,
        td: TrustDomain,
        sub: SpiffeId,
    }

    fn fixture() -> Fixture {
        let key = SigningKey::generate(KeyAlg::EcP256, KeyUse::Jws).unwrap();
        let mut keys = BTreeMap::new();
        keys.insert(
            "k1".to_string(),
            JwtPublicKey::Ec { crv: "P-256".into(), point: key.public_point().to_vec() },
        );
        Fixture {
            key,
            keys,
            td: TrustDomain::new("example.org").unwrap(),
            sub: SpiffeId::parse("spiffe://example.org/web").unwrap(),
        }
    }

    fn mint_at(f: &Fixture, now: u64) -> MintedJwt {
        mint(
            &f.key,
            "k1",
            &f.sub,
            &["db".into(), "cache".into()],
            Some("https://vouch.example"),
            Duration::from_secs(300),
            t(10_000),
            t(now),
        )
        .unwrap()
    }

    /// Builds a token with arbitrary header and claims, signed by `key`.
    fn forge(key: &SigningKey, header: serde_json::Value, claims: serde_json::Value) -> String {
        let body = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
        let sig = key.sign(body.as_bytes()).unwrap();
        format!("{body}.{}", B64.encode(sig))
    }

    fn claims(exp: i64) -> serde_json::Value {
        serde_json::json!({"sub": "spiffe://example.org/web", "aud": "db", "exp": exp, "iat": 1000})
    }

    #[test]
    fn round_trip() {
        let f = fixture();
        let m = mint_at(&f, 1000);
        assert_eq!(m.expires_at, 1300);
        assert!(!m.capped);
        let c = validate(&m.token, &f.keys, &f.td, "cache", t(1299)).unwrap();
        assert_eq!(c.sub, f.sub);
        assert_eq!(c.aud, ["db", "cache"]);
        assert_eq!((c.exp, c.iat, c.kid.as_str()), (1300, Some(1000), "k1"));
        assert_eq!(c.iss.as_deref(), Some("https://vouch.example"));
        assert_eq!(c.jti.as_ref().map(String::len), Some(32));
        let header =
            decode_object(m.token.split('.').next().unwrap(), "h", JwtError::DuplicateHeader).unwrap();
        assert_eq!(header, serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}));
    }

    #[test]
    fn lifetime_capped_by_key() {
        let f = fixture();
        let m = mint(&f.key, "k1", &f.sub, &["a".into()], None, Duration::from_secs(300), t(1100), t(1000))
            .unwrap();
        assert_eq!((m.expires_at, m.capped), (1100, true));
        assert!(mint(&f.key, "k1", &f.sub, &["a".into()], None, Duration::from_secs(300), t(900), t(1000))
            .is_err());
        assert!(mint(&f.key, "k1", &f.sub, &[], None, Duration::from_secs(300), t(9000), t(1000)).is_err());
    }

    #[test]
    fn rejects_expired() {
        let f = fixture();
        let m = mint_at(&f, 1000);
        assert_eq!(validate(&m.token, &f.keys, &f.td, "db", t(1300)), Err(JwtError::Expired(1300)));
    }

    #[test]
    fn rejects_wrong_audience() {
        let f = fixture();
        let m = mint_at(&f, 1000);
        assert_eq!(
            validate(&m.token, &f.keys, &f.td, "web", t(1000)),
            Err(JwtError::WrongAudience("web".into()))
        );
    }

    #[test]
    fn rejects_alg_none() {
        let f = fixture();
        let body = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none","kid":"k1","typ":"JWT"}"#),
            B64.encode(claims(2000).to_string())
        );
        assert_eq!(validate(&body, &f.keys, &f.td, "db", t(1000)), Err(JwtError::AlgNone));
    }

    #[test]
    fn rejects_hmac() {
        let f = fixture();
        // The classic forgery: HMAC keyed with the (public) key bytes.
        let tok = forge(&f.key, serde_json::json!({"alg": "HS256", "kid": "k1", "typ": "JWT"}), claims(2000));
        assert_eq!(validate(&tok, &f.keys, &f.td, "db", t(1000)), Err(JwtError::AlgHmac("HS256".into())));
    }

    #[test]
    fn rejects_unknown_kid() {
        let f = fixture();
        let tok = forge(&f.key, serde_json::json!({"alg": "ES256", "kid": "k9", "typ": "JWT"}), claims(2000));
        assert_eq!(validate(&tok, &f.keys, &f.td, "db", t(1000)), Err(JwtError::UnknownKid("k9".into())));
        let tok = forge(&f.key, serde_json::json!({"alg": "ES256", "typ": "JWT"}), claims(2000));
        assert_eq!(validate(&tok, &f.keys, &f.td, "db", t(1000)), Err(JwtError::MissingKid));
    }

    #[test]
    fn rejects_wrong_typ() {
        let f = fixture();
        let tok =
            forge(&f.key, serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt"}), claims(2000));
        assert_eq!(validate(&tok, &f.keys, &f.td, "db", t(1000)), Err(JwtError::WrongTyp("at+jwt".into())));
        let ok = forge(&f.key, serde_json::json!({"alg": "ES256", "kid": "k1"}), claims(2000));
        assert!(validate(&ok, &f.keys, &f.td, "db", t(1000)).is_ok(), "typ is optional");
    }

    #[test]
    fn rejects_sub_that_is_not_a_spiffe_id() {
        let f = fixture();
        let h = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
        let tok = forge(&f.key, h.clone(), serde_json::json!({"sub": "web", "aud": "db", "exp": 2000}));
        assert!(matches!(validate(&tok, &f.keys, &f.td, "db", t(1000)), Err(JwtError::BadSubject(_))));
        let tok = forge(
            &f.key,
            h.clone(),
            serde_json::json!({"sub": "spiffe://other.org/web", "aud": "db", "exp": 2000}),
        );
        assert!(matches!(
            validate(&tok, &f.keys, &f.td, "db", t(1000)),
            Err(JwtError::ForeignSubject { .. })
        ));
        let tok = forge(&f.key, h, serde_json::json!({"aud": "db", "exp": 2000}));
        assert_eq!(validate(&tok, &f.keys, &f.td, "db", t(1000)), Err(JwtError::MissingClaim("sub")));
    }

    #[test]
    fn not_before_is_checked() {
        let f = fixture();
        let h = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
        let with_nbf = |nbf: i64| {
            let c =
                serde_json::json!({"sub": "spiffe://example.org/web", "aud": "db", "exp": 2000, "nbf": nbf});
            forge(&f.key, h.clone(), c)
        };
        assert_eq!(
            validate(&with_nbf(1001), &f.keys, &f.td, "db", t(1000)),
            Err(JwtError::NotYetValid(1001))
        );
        assert_eq!(
            validate(&with_nbf(1500), &f.keys, &f.td, "db", t(1000)),
            Err(JwtError::NotYetValid(1500))
        );
        // Valid from `nbf` on, inclusive (RFC 7519 section 4.1.5), and `nbf` is optional.
        assert!(validate(&with_nbf(1000), &f.keys, &f.td, "db", t(1000)).is_ok());
        assert!(validate(&with_nbf(999), &f.keys, &f.td, "db", t(1000)).is_ok());
        assert!(validate(&forge(&f.key, h, claims(2000)), &f.keys, &f.td, "db", t(1000)).is_ok());
        // A minted token carries no `nbf`.
        let payload = mint_at(&f, 1000).token.split('.').nth(1).unwrap().to_owned();
        let minted: serde_json::Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
        assert!(minted.get("nbf").is_none(), "{minted}");
    }

    #[test]
    fn rejects_the_trust_domain_as_subject() {
        let f = fixture();
        let h = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
        let tok = forge(
            &f.key,
            h.clone(),
            serde_json::json!({"sub": "spiffe://example.org", "aud": "db", "exp": 2000}),
        );
        assert_eq!(
            validate(&tok, &f.keys, &f.td, "db", t(1000)),
            Err(JwtError::TrustDomainSubject("spiffe://example.org".into()))
        );
        let tok =
            forge(&f.key, h, serde_json::json!({"sub": "spiffe://example.org/a", "aud": "db", "exp": 2000}));
        assert!(validate(&tok, &f.keys, &f.td, "db", t(1000)).is_ok());
    }

    /// Signs raw header and claims text, so keys can repeat (a JSON value cannot hold that).
    fn forge_raw(key: &SigningKey, header: &str, claims: &str) -> String {
        let body = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let sig = key.sign(body.as_bytes()).unwrap();
        format!("{body}.{}", B64.encode(sig))
    }

    #[test]
    fn rejects_repeated_keys() {
        let f = fixture();
        let h = r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#;
        // Signed by the real key: a parser keeping the last `sub` would accept it as `admin`.
        let two_subs =
            r#"{"sub":"spiffe://example.org/web","aud":"db","exp":2000,"sub":"spiffe://example.org/admin"}"#;
        let tok = forge_raw(&f.key, h, two_subs);
        assert_eq!(
            validate(&tok, &f.keys, &f.td, "db", t(1000)),
            Err(JwtError::DuplicateClaim("sub".into()))
        );
        let two_exps = r#"{"sub":"spiffe://example.org/web","aud":"db","exp":2000,"exp":9999}"#;
        let tok = forge_raw(&f.key, h, two_exps);
        assert_eq!(
            validate(&tok, &f.keys, &f.td, "db", t(1000)),
            Err(JwtError::DuplicateClaim("exp".into()))
        );
        // Also a claim vouch does not read: the relying party may.
        let two_x = r#"{"sub":"spiffe://example.org/web","aud":"db","exp":2000,"x":1,"x":2}"#;
        let tok = forge_raw(&f.key, h, two_x);
        assert_eq!(validate(&tok, &f.keys, &f.td, "db", t(1000)), Err(JwtError::DuplicateClaim("x".into())));
        // The same in the header, known key or not.
        let claims = r#"{"sub":"spiffe://example.org/web","aud":"db","exp":2000}"#;
        for (header, key) in [
            (r#"{"alg":"ES256","kid":"k1","kid":"k9"}"#, "kid"),
            (r#"{"alg":"ES256","kid":"k1","zip":"a","zip":"b"}"#, "zip"),
        ] {
            let tok = forge_raw(&f.key, header, claims);
            assert_eq!(
                validate(&tok, &f.keys, &f.td, "db", t(1000)),
                Err(JwtError::DuplicateHeader(key.into()))
            );
        }
        // Nested objects may repeat nothing we read, and distinct keys pass.
        assert!(validate(&forge_raw(&f.key, h, claims), &f.keys, &f.td, "db", t(1000)).is_ok());
        // The message names the key, not the token.
        let long = format!(
            r#"{{"sub":"spiffe://example.org/web","aud":"db","exp":2000,"{k}":1,"{k}":2}}"#,
            k = "k".repeat(500)
        );
        let err = validate(&forge_raw(&f.key, h, &long), &f.keys, &f.td, "db", t(1000)).unwrap_err();
        assert_eq!(err, JwtError::DuplicateClaim("k".repeat(64)));
    }

    #[test]
    fn minting_refuses_caller_mistakes_as_invalid_requests() {
        let f = fixture();
        let mint_for = |aud: Vec<String>| {
            mint(&f.key, "k1", &f.sub, &aud, None, Duration::from_secs(300), t(9000), t(1000))
        };
        let cases = [
            (vec![], AudienceError::Missing),
            (vec!["a".to_string(); 33], AudienceError::TooMany(33)),
            (vec!["db".into(), String::new()], AudienceError::Empty(1)),
            (vec!["db\r\nx".to_string()], AudienceError::ControlCharacter(0)),
        ];
        for (aud, want) in cases {
            match mint_for(aud) {
                Err(CaError::InvalidRequest(RequestError::Audience(got))) => assert_eq!(got, want),
                other => panic!("{want:?}: {other:?}"),
            }
        }
        assert!(mint_for(vec!["a".to_string(); 32]).is_ok());
        // An expired key is the server's state, not the caller's mistake.
        let expired =
            mint(&f.key, "k1", &f.sub, &["a".into()], None, Duration::from_secs(300), t(900), t(1000));
        assert!(matches!(expired, Err(CaError::NotReady(_))), "{expired:?}");
    }

    #[test]
    fn rejects_tampering_and_other_keys() {
        let f = fixture();
        let m = mint_at(&f, 1000);
        let mut parts: Vec<&str> = m.token.split('.').collect();
        let evil = B64.encode(
            serde_json::json!({"sub": "spiffe://example.org/admin", "aud": "db", "exp": 9999}).to_string(),
        );
        parts[1] = &evil;
        assert_eq!(validate(&parts.join("."), &f.keys, &f.td, "db", t(1000)), Err(JwtError::BadSignature));
        let other = SigningKey::generate(KeyAlg::EcP256, KeyUse::Jws).unwrap();
        let tok = forge(&other, serde_json::json!({"alg": "ES256", "kid": "k1"}), claims(2000));
        assert_eq!(validate(&tok, &f.keys, &f.td, "db", t(1000)), Err(JwtError::BadSignature));
        let tok = forge(&f.key, serde_json::json!({"alg": "ES384", "kid": "k1"}), claims(2000));
        assert!(matches!(
            validate(&tok, &f.keys, &f.td, "db", t(1000)),
            Err(JwtError::AlgKeyMismatch { .. })
        ));
        let tok =
            forge(&f.key, serde_json::json!({"alg": "ES256", "kid": "k1", "crit": ["b64"]}), claims(2000));
        assert_eq!(validate(&tok, &f.keys, &f.td, "db", t(1000)), Err(JwtError::Crit));
    }

    #[test]
    fn malformed_input_never_panics() {
        let f = fixture();
        for tok in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b.c.d",
            "!!!.@@@.###",
            &"a".repeat(MAX_TOKEN_BYTES + 1),
            "e30.e30.",
            "eyJhbGciOiJFUzI1NiJ9.e30.AA",
        ] {
            assert!(validate(tok, &f.keys, &f.td, "db", t(1000)).is_err(), "{tok:.20}");
        }
        assert_eq!(peek_kid(&mint_at(&f, 1000).token).as_deref(), Some("k1"));
        assert_eq!(peek_kid("garbage"), None);
    }
}
