//! Trust bundles in the SPIFFE bundle format: a JWKS whose keys carry `use` = `x509-svid` (with the CA
//! certificate in `x5c`) or `jwt-svid` (with a `kid`), plus `spiffe_sequence` and
//! `spiffe_refresh_hint` (SPIFFE Trust Domain and Bundle standard, section 4).

use std::collections::BTreeMap;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use vouch_core::TrustDomain;
use x509_parser::prelude::FromDer;

use crate::jwt::JwtPublicKey;
use crate::x509::cert_info;
use crate::CaError;

/// The trust anchors of one trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// Whose anchors these are.
    pub trust_domain: TrustDomain,
    /// CA certificates (DER) that X509-SVIDs chain to.
    pub x509_authorities: Vec<Vec<u8>>,
    /// Keys (by `kid`) that sign JWT-SVIDs.
    pub jwt_authorities: BTreeMap<String, JwtPublicKey>,
    /// Increases on every change of the bundle.
    pub sequence: u64,
    /// How often, in seconds, consumers should re-fetch.
    pub refresh_hint: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct Jwks {
    keys: Vec<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
}

fn curve_name(oid: &str) -> Option<&'static str> {
    match oid {
        "1.2.840.10045.3.1.7" => Some("P-256"),
        "1.3.132.0.34" => Some("P-384"),
        "1.3.132.0.35" => Some("P-521"),
        _ => None,
    }
}

/// The JWK members (`kty`, `crv`/`x`/`y` or `n`/`e`) of a SubjectPublicKeyInfo.
fn jwk_params_of_spki(spki_der: &[u8]) -> Result<Map<String, Value>, CaError> {
    use x509_parser::public_key::PublicKey;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|_| CaError::InvalidCertificate("bad public key".into()))?;
    let mut m = Map::new();
    match spki.parsed() {
        Ok(PublicKey::EC(point)) => {
            let oid =
                spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
            let crv = oid
                .as_deref()
                .and_then(curve_name)
                .ok_or_else(|| CaError::InvalidCertificate("EC key on an unsupported curve".into()))?;
            let data = point.data();
            if data.first() != Some(&4) || data.len() % 2 != 1 {
                return Err(CaError::InvalidCertificate("EC point is not uncompressed".into()));
            }
            let half = (data.len() - 1) / 2;
            m.insert("kty".into(), json!("EC"));
            m.insert("crv".into(), json!(crv));
            m.insert("x".into(), json!(B64.encode(&data[1..1 + half])));
            m.insert("y".into(), json!(B64.encode(&data[1 + half..])));
        }
        Ok(PublicKey::RSA(rsa)) => {
            let trim = |b: &[u8]| b.iter().skip_while(|&&x| x == 0).copied().collect::<Vec<u8>>();
            m.insert("kty".into(), json!("RSA"));
            m.insert("n".into(), json!(B64.encode(trim(rsa.modulus))));
            m.insert("e".into(), json!(B64.encode(trim(rsa.exponent))));
        }
        _ => return Err(CaError::InvalidCertificate("unsupported public key type".into())),
    }
    Ok(m)
}

fn jwk_params_of_jwt_key(key: &JwtPublicKey) -> Map<String, Value> {
    let mut m = Map::new();
    match key {
        JwtPublicKey::Ec { crv, point } => {
            let half = point.len().saturating_sub(1) / 2;
            m.insert("kty".into(), json!("EC"));
            m.insert("crv".into(), json!(crv));
            m.insert("x".into(), json!(B64.encode(point.get(1..1 + half).unwrap_or_default())));
            m.insert("y".into(), json!(B64.encode(point.get(1 + half..).unwrap_or_default())));
        }
        JwtPublicKey::Rsa { n, e } => {
            m.insert("kty".into(), json!("RSA"));
            m.insert("n".into(), json!(B64.encode(n)));
            m.insert("e".into(), json!(B64.encode(e)));
        }
    }
    m
}

/// The JOSE algorithm a key of this type signs with in vouch: ECDSA with the curve's own hash, and
/// RS256 for RSA (the one RSA algorithm every relying party takes).
fn jose_alg(key: &JwtPublicKey) -> Option<&'static str> {
    match key {
        JwtPublicKey::Ec { crv, .. } => match crv.as_str() {
            "P-256" => Some("ES256"),
            "P-384" => Some("ES384"),
            "P-521" => Some("ES512"),
            _ => None,
        },
        JwtPublicKey::Rsa { .. } => Some("RS256"),
    }
}

fn str_member<'a>(m: &'a Map<String, Value>, name: &str) -> Result<&'a str, CaError> {
    m.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| CaError::InvalidBundle(format!("a key lacks the string member `{name}`")))
}

fn b64_member(m: &Map<String, Value>, name: &str) -> Result<Vec<u8>, CaError> {
    B64.decode(str_member(m, name)?.as_bytes())
        .map_err(|_| CaError::InvalidBundle(format!("member `{name}` is not base64url")))
}

fn jwt_key_of_jwk(m: &Map<String, Value>) -> Result<JwtPublicKey, CaError> {
    match str_member(m, "kty")? {
        "EC" => {
            let crv = str_member(m, "crv")?;
            let size = match crv {
                "P-256" => 32,
                "P-384" => 48,
                "P-521" => 66,
                other => return Err(CaError::InvalidBundle(format!("unsupported curve `{other}`"))),
            };
            let (x, y) = (b64_member(m, "x")?, b64_member(m, "y")?);
            if x.len() != size || y.len() != size {
                return Err(CaError::InvalidBundle(format!("EC coordinates of wrong length for {crv}")));
            }
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Ok(JwtPublicKey::Ec { crv: crv.to_owned(), point })
        }
        "RSA" => Ok(JwtPublicKey::Rsa { n: b64_member(m, "n")?, e: b64_member(m, "e")? }),
        other => Err(CaError::InvalidBundle(format!("unsupported key type `{other}`"))),
    }
}

impl Bundle {
    /// The bundle as SPIFFE bundle JWKS JSON.
    pub fn to_jwks(&self) -> Result<String, CaError> {
        let mut keys = Vec::new();
        for der in &self.x509_authorities {
            let info = cert_info(der)?;
            let mut m = jwk_params_of_spki(&info.spki_der)?;
            m.insert("use".into(), json!("x509-svid"));
            m.insert("x5c".into(), json!([STANDARD.encode(der)]));
            keys.push(m);
        }
        for (kid, key) in &self.jwt_authorities {
            let mut m = jwk_params_of_jwt_key(key);
            m.insert("use".into(), json!("jwt-svid"));
            m.insert("kid".into(), json!(kid));
            keys.push(m);
        }
        let jwks =
            Jwks { keys, spiffe_sequence: Some(self.sequence), spiffe_refresh_hint: self.refresh_hint };
        serde_json::to_string_pretty(&jwks).map_err(|_| CaError::Crypto("JSON encoding failed"))
    }

    /// Parses a SPIFFE bundle JWKS for `trust_domain`. Keys with an unknown `use` are skipped, as the
    /// standard asks; malformed keys are errors.
    pub fn from_jwks(trust_domain: TrustDomain, json_text: &str) -> Result<Self, CaError> {
        let jwks: Jwks = serde_json::from_str(json_text)
            .map_err(|e| CaError::InvalidBundle(format!("not a JWKS document: {e}")))?;
        let mut bundle = Bundle {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: BTreeMap::new(),
            sequence: jwks.spiffe_sequence.unwrap_or(0),
            refresh_hint: jwks.spiffe_refresh_hint,
        };
        for key in &jwks.keys {
            match key.get("use").and_then(Value::as_str) {
                Some("x509-svid") => {
                    let x5c = key.get("x5c").and_then(Value::as_array).filter(|a| a.len() == 1).ok_or_else(
                        || {
                            CaError::InvalidBundle(
                                "an x509-svid key must have exactly one `x5c` certificate".into(),
                            )
                        },
                    )?;
                    let der = x5c[0]
                        .as_str()
                        .and_then(|s| STANDARD.decode(s.as_bytes()).ok())
                        .ok_or_else(|| CaError::InvalidBundle("`x5c` is not base64".into()))?;
                    cert_info(&der)?;
                    bundle.x509_authorities.push(der);
                }
                Some("jwt-svid") => {
                    let kid = str_member(key, "kid")?;
                    if kid.is_empty() {
                        return Err(CaError::InvalidBundle("a jwt-svid key has an empty `kid`".into()));
                    }
                    bundle.jwt_authorities.insert(kid.to_owned(), jwt_key_of_jwk(key)?);
                }
                _ => {}
            }
        }
        Ok(bundle)
    }

    /// The JWT authorities alone as a plain JWKS (RFC 7517), for OIDC relying parties (OpenBao/Vault
    /// JWT auth, cloud workload identity federation): each key with `kid`, `use` = `sig` and its JOSE
    /// `alg`, public members only. Relying parties that are not SPIFFE-aware reject or ignore the
    /// SPIFFE `use` values and members, and have no use for the X.509 authorities.
    pub fn oidc_jwks(&self) -> Result<String, CaError> {
        let keys: Vec<Map<String, Value>> = self
            .jwt_authorities
            .iter()
            .map(|(kid, key)| {
                let mut m = jwk_params_of_jwt_key(key);
                m.insert("kid".into(), json!(kid));
                m.insert("use".into(), json!("sig"));
                if let Some(alg) = jose_alg(key) {
                    m.insert("alg".into(), json!(alg));
                }
                m
            })
            .collect();
        serde_json::to_string(&json!({ "keys": keys })).map_err(|_| CaError::Crypto("JSON encoding failed"))
    }

    /// The X.509 authorities as concatenated PEM certificates.
    pub fn x509_pem(&self) -> String {
        self.x509_authorities.iter().map(|d| crate::pem::encode("CERTIFICATE", d)).collect()
    }
}

/// The signing keys of a plain JWKS document (for example a Kubernetes cluster's service-account
/// issuer): every RSA or EC key with a `kid`, except keys marked `use: enc`.
pub fn jwks_keys(json_text: &str) -> Result<BTreeMap<String, JwtPublicKey>, CaError> {
    let jwks: Jwks = serde_json::from_str(json_text)
        .map_err(|e| CaError::InvalidBundle(format!("not a JWKS document: {e}")))?;
    let mut out = BTreeMap::new();
    for key in &jwks.keys {
        if key.get("use").and_then(Value::as_str) == Some("enc") {
            continue;
        }
        let kid = str_member(key, "kid")?;
        out.insert(kid.to_owned(), jwt_key_of_jwk(key)?);
    }
    if out.is_empty() {
        return Err(CaError::InvalidBundle("the JWKS has no signing keys".into()));
    }
    Ok(out)
}
