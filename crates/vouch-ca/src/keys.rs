//! Key pairs for CAs and JWT signers, and randomness. The only place that generates private keys.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{self, EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _};
use zeroize::Zeroizing;

use crate::CaError;

/// The key algorithms vouch generates for its own CAs and JWT signers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlg {
    /// ECDSA on P-256 with SHA-256 (ES256); the default.
    EcP256,
    /// ECDSA on P-384 with SHA-384 (ES384).
    EcP384,
    /// RSA with a 2048-bit modulus, PKCS#1 v1.5 signatures with SHA-256 (RS256): for JWT keys only,
    /// for relying parties that take no other algorithm. CAs are always ECDSA.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
}

impl KeyAlg {
    /// The JOSE `alg` name.
    pub fn jws_alg(self) -> &'static str {
        match self {
            KeyAlg::EcP256 => "ES256",
            KeyAlg::EcP384 => "ES384",
            KeyAlg::Rsa2048 => "RS256",
        }
    }

    /// The JWK `crv` name (EC keys; `None` for RSA).
    pub fn jwk_crv(self) -> Option<&'static str> {
        match self {
            KeyAlg::EcP256 => Some("P-256"),
            KeyAlg::EcP384 => Some("P-384"),
            KeyAlg::Rsa2048 => None,
        }
    }

    /// The ECDSA algorithm of `usage`: DER signatures for X.509, fixed-width for JWS; `None` for RSA.
    fn ecdsa(self, usage: KeyUse) -> Option<&'static EcdsaSigningAlgorithm> {
        match (self, usage) {
            (KeyAlg::EcP256, KeyUse::X509) => Some(&signature::ECDSA_P256_SHA256_ASN1_SIGNING),
            (KeyAlg::EcP384, KeyUse::X509) => Some(&signature::ECDSA_P384_SHA384_ASN1_SIGNING),
            (KeyAlg::EcP256, KeyUse::Jws) => Some(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
            (KeyAlg::EcP384, KeyUse::Jws) => Some(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
            (KeyAlg::Rsa2048, _) => None,
        }
    }

    fn rcgen_alg(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlg::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlg::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlg::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

/// RSA keys sign JWTs only: certificates and CSRs stay ECDSA, so one X.509 code path.
const RSA_JWT_ONLY: &str = "RSA keys sign JWT-SVIDs only; CA keys are ec-p256 or ec-p384";

/// The key pair behind a [`SigningKey`].
enum Pair {
    Ec(EcdsaKeyPair),
    Rsa(Box<aws_lc_rs::rsa::KeyPair>, Vec<u8>),
}

/// What a key signs; it fixes the signature encoding (DER for X.509, fixed-width for JWS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// Certificates: ASN.1 DER signatures.
    X509,
    /// JWS: fixed-width `r || s` signatures.
    Jws,
}

/// A private key with its algorithm. The PKCS#8 bytes live in zeroizing memory and are only exposed
/// to the sealing code.
pub struct SigningKey {
    alg: KeyAlg,
    pkcs8: Zeroizing<Vec<u8>>,
    pair: Pair,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey").field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a fresh key.
    pub fn generate(alg: KeyAlg, usage: KeyUse) -> Result<Self, CaError> {
        let Some(signing) = alg.ecdsa(usage) else {
            if usage != KeyUse::Jws {
                return Err(CaError::InvalidKey(RSA_JWT_ONLY.into()));
            }
            use aws_lc_rs::encoding::AsDer as _;
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|_| CaError::Crypto("key generation failed"))?;
            let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der<'_> =
                pair.as_der().map_err(|_| CaError::Crypto("key export failed"))?;
            return Self::from_pkcs8(alg, usage, Zeroizing::new(pkcs8.as_ref().to_vec()));
        };
        // Generated directly (not parsed back from PKCS#8), which saves a scalar multiplication.
        let pair = EcdsaKeyPair::generate(signing).map_err(|_| CaError::Crypto("key generation failed"))?;
        let pkcs8 = pair.to_pkcs8v1().map_err(|_| CaError::Crypto("key export failed"))?;
        Ok(Self {
            alg,
            pkcs8: Zeroizing::new(pkcs8.as_ref().to_vec()),
            pair: Pair::Ec(pair),
            rng: SystemRandom::new(),
        })
    }

    /// Loads a key from PKCS#8 DER.
    pub fn from_pkcs8(alg: KeyAlg, usage: KeyUse, pkcs8: Zeroizing<Vec<u8>>) -> Result<Self, CaError> {
        let wrong = |_| CaError::InvalidKey("not a PKCS#8 key of the expected algorithm".into());
        let pair = match alg.ecdsa(usage) {
            Some(signing) => Pair::Ec(EcdsaKeyPair::from_pkcs8(signing, &pkcs8).map_err(wrong)?),
            None if usage == KeyUse::Jws => {
                use aws_lc_rs::encoding::AsDer as _;
                let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(&pkcs8).map_err(wrong)?;
                if pair.public_modulus_len() != 256 {
                    return Err(CaError::InvalidKey("not an RSA-2048 key".into()));
                }
                let public: aws_lc_rs::encoding::PublicKeyX509Der<'_> =
                    pair.public_key().as_der().map_err(|_| CaError::Crypto("key export failed"))?;
                let public = public.as_ref().to_vec();
                Pair::Rsa(Box::new(pair), public)
            }
            None => return Err(CaError::InvalidKey(RSA_JWT_ONLY.into())),
        };
        Ok(Self { alg, pkcs8, pair, rng: SystemRandom::new() })
    }

    /// Loads a key from PEM (`PRIVATE KEY` PKCS#8, or `EC PRIVATE KEY` SEC1), guessing the curve.
    pub fn from_pem(pem_text: &str, usage: KeyUse) -> Result<Self, CaError> {
        let der = crate::pem::decode_one(pem_text, &["PRIVATE KEY", "EC PRIVATE KEY"])
            .ok_or_else(|| CaError::InvalidKey("no `PRIVATE KEY` PEM block found".into()))?;
        let der = Zeroizing::new(der);
        for alg in [KeyAlg::EcP256, KeyAlg::EcP384] {
            if let Ok(k) = Self::from_pkcs8(alg, usage, der.clone()) {
                return Ok(k);
            }
            // SEC1 keys: convert through aws-lc-rs' parser to PKCS#8.
            let Some(signing) = alg.ecdsa(KeyUse::X509) else { continue };
            if let Ok(pair) = EcdsaKeyPair::from_private_key_der(signing, &der) {
                let doc = pair.to_pkcs8v1().map_err(|_| CaError::Crypto("key export failed"))?;
                return Self::from_pkcs8(alg, usage, Zeroizing::new(doc.as_ref().to_vec()));
            }
        }
        Err(CaError::InvalidKey("only ECDSA P-256 and P-384 keys are supported".into()))
    }

    /// The algorithm.
    pub fn alg(&self) -> KeyAlg {
        self.alg
    }

    /// The public key: an uncompressed EC point, or for RSA its SubjectPublicKeyInfo (DER).
    pub fn public_point(&self) -> &[u8] {
        match &self.pair {
            Pair::Ec(pair) => pair.public_key().as_ref(),
            Pair::Rsa(_, spki) => spki,
        }
    }

    /// The public key as it is published for JWT validation.
    pub fn jwt_public_key(&self) -> crate::jwt::JwtPublicKey {
        match &self.pair {
            Pair::Ec(pair) => crate::jwt::JwtPublicKey::Ec {
                crv: self.alg.jwk_crv().unwrap_or_default().into(),
                point: pair.public_key().as_ref().to_vec(),
            },
            Pair::Rsa(pair, _) => crate::jwt::JwtPublicKey::Rsa {
                n: pair.public_key().modulus().big_endian_without_leading_zero().to_vec(),
                e: pair.public_key().exponent().big_endian_without_leading_zero().to_vec(),
            },
        }
    }

    /// The PKCS#8 encoding, for sealing.
    pub(crate) fn pkcs8(&self) -> &Zeroizing<Vec<u8>> {
        &self.pkcs8
    }

    /// Signs `msg` in the encoding chosen at load time.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CaError> {
        match &self.pair {
            Pair::Ec(pair) => {
                let sig = pair.sign(&self.rng, msg).map_err(|_| CaError::Crypto("signing failed"))?;
                Ok(sig.as_ref().to_vec())
            }
            Pair::Rsa(pair, _) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &self.rng, msg, &mut sig)
                    .map_err(|_| CaError::Crypto("signing failed"))?;
                Ok(sig)
            }
        }
    }
}

impl rcgen::PublicKeyData for SigningKey {
    fn der_bytes(&self) -> &[u8] {
        self.public_point()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg.rcgen_alg()
    }
}

impl rcgen::SigningKey for SigningKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        SigningKey::sign(self, msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// Fills a buffer with cryptographically secure random bytes.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CaError> {
    let mut buf = [0u8; N];
    SystemRandom::new().fill(&mut buf).map_err(|_| CaError::Crypto("random generator failed"))?;
    Ok(buf)
}

/// SHA-256 of everything `reader` yields, read in chunks (for files of any size).
pub fn sha256_reader(mut reader: impl std::io::Read) -> std::io::Result<[u8; 32]> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// A random identifier of 16 bytes as 32 hex characters (entry ids, key ids, JWT ids).
pub fn random_id() -> Result<String, CaError> {
    Ok(hex::encode(random_bytes::<16>()?))
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Bytes as lowercase hex (digests shown in selectors and fingerprints).
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// SHA-256 of `data` as 64 lowercase hex characters (stored join tokens, executable hashes).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha256(data))
}

/// A key generated for a workload that cannot make its own (admin minting): its public half for the
/// certificate and its PKCS#8 DER, which is handed out once and never stored.
pub struct WorkloadKey {
    /// The public key, ready for signing.
    pub public: crate::x509::CsrPublicKey,
    /// The private key, PKCS#8 DER.
    pub pkcs8: Zeroizing<Vec<u8>>,
}

impl WorkloadKey {
    /// Generates a P-256 key.
    pub fn generate() -> Result<Self, CaError> {
        let key = SigningKey::generate(KeyAlg::EcP256, KeyUse::X509)?;
        let public = crate::x509::CsrPublicKey::p256(key.public_point().to_vec());
        Ok(Self { public, pkcs8: key.pkcs8().clone() })
    }

    /// A PKCS#10 CSR (DER) signed by this key, with an empty subject and no extensions: vouch takes
    /// only the public key from a CSR.
    pub fn csr_der(&self) -> Result<Vec<u8>, CaError> {
        let key = SigningKey::from_pkcs8(KeyAlg::EcP256, KeyUse::X509, self.pkcs8.clone())?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        Ok(params.serialize_request(&key)?.der().to_vec())
    }

    /// The same CSR as PEM.
    pub fn csr_pem(&self) -> Result<String, CaError> {
        Ok(crate::pem::encode("CERTIFICATE REQUEST", &self.csr_der()?))
    }

    /// Loads a key from PKCS#8 PEM (a key this type wrote).
    pub fn from_pkcs8_pem(pem_text: &str) -> Result<Self, CaError> {
        let der = Zeroizing::new(
            crate::pem::decode_one(pem_text, &["PRIVATE KEY"])
                .ok_or_else(|| CaError::InvalidKey("no `PRIVATE KEY` PEM block".into()))?,
        );
        let key = SigningKey::from_pkcs8(KeyAlg::EcP256, KeyUse::X509, der)?;
        let public = crate::x509::CsrPublicKey::p256(key.public_point().to_vec());
        Ok(Self { public, pkcs8: key.pkcs8().clone() })
    }

    /// The private key as PEM (`PRIVATE KEY`).
    pub fn pkcs8_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(crate::pem::encode("PRIVATE KEY", &self.pkcs8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_sign_and_reload() {
        for alg in [KeyAlg::EcP256, KeyAlg::EcP384] {
            let k = SigningKey::generate(alg, KeyUse::Jws).unwrap();
            let sig = k.sign(b"msg").unwrap();
            assert_eq!(sig.len(), if alg == KeyAlg::EcP256 { 64 } else { 96 });
            let again = SigningKey::from_pkcs8(alg, KeyUse::X509, k.pkcs8().clone()).unwrap();
            assert_eq!(again.public_point(), k.public_point());
            assert!(again.sign(b"msg").unwrap()[0] == 0x30, "X.509 signatures are DER sequences");
            assert!(!format!("{k:?}").contains("pkcs8"));
        }
    }

    #[test]
    fn rsa_keys_sign_rs256_jwts_only_and_reload() {
        let k = SigningKey::generate(KeyAlg::Rsa2048, KeyUse::Jws).unwrap();
        assert_eq!(k.sign(b"msg").unwrap().len(), 256);
        let again = SigningKey::from_pkcs8(KeyAlg::Rsa2048, KeyUse::Jws, k.pkcs8().clone()).unwrap();
        assert_eq!(again.jwt_public_key(), k.jwt_public_key());
        assert!(matches!(k.jwt_public_key(), crate::jwt::JwtPublicKey::Rsa { ref n, .. } if n.len() == 256));
        assert!(SigningKey::generate(KeyAlg::Rsa2048, KeyUse::X509).is_err(), "no RSA CA");
        assert!(SigningKey::from_pkcs8(KeyAlg::EcP256, KeyUse::Jws, k.pkcs8().clone()).is_err());
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(random_id().unwrap(), random_id().unwrap());
        assert_eq!(random_id().unwrap().len(), 32);
    }
}
