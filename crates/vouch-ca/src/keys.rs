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
}

impl KeyAlg {
    /// The JOSE `alg` name.
    pub fn jws_alg(self) -> &'static str {
        match self {
            KeyAlg::EcP256 => "ES256",
            KeyAlg::EcP384 => "ES384",
        }
    }

    /// The JWK `crv` name.
    pub fn jwk_crv(self) -> &'static str {
        match self {
            KeyAlg::EcP256 => "P-256",
            KeyAlg::EcP384 => "P-384",
        }
    }

    fn x509_signing(self) -> &'static EcdsaSigningAlgorithm {
        match self {
            KeyAlg::EcP256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            KeyAlg::EcP384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        }
    }

    fn jws_signing(self) -> &'static EcdsaSigningAlgorithm {
        match self {
            KeyAlg::EcP256 => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            KeyAlg::EcP384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        }
    }

    fn rcgen_alg(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlg::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlg::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }
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
    pair: EcdsaKeyPair,
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
        let signing = match usage {
            KeyUse::X509 => alg.x509_signing(),
            KeyUse::Jws => alg.jws_signing(),
        };
        // Generated directly (not parsed back from PKCS#8), which saves a scalar multiplication.
        let pair = EcdsaKeyPair::generate(signing).map_err(|_| CaError::Crypto("key generation failed"))?;
        let pkcs8 = pair.to_pkcs8v1().map_err(|_| CaError::Crypto("key export failed"))?;
        Ok(Self { alg, pkcs8: Zeroizing::new(pkcs8.as_ref().to_vec()), pair, rng: SystemRandom::new() })
    }

    /// Loads a key from PKCS#8 DER.
    pub fn from_pkcs8(alg: KeyAlg, usage: KeyUse, pkcs8: Zeroizing<Vec<u8>>) -> Result<Self, CaError> {
        let signing = match usage {
            KeyUse::X509 => alg.x509_signing(),
            KeyUse::Jws => alg.jws_signing(),
        };
        let pair = EcdsaKeyPair::from_pkcs8(signing, &pkcs8)
            .map_err(|_| CaError::InvalidKey("not a PKCS#8 key of the expected algorithm".into()))?;
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
            if let Ok(pair) = EcdsaKeyPair::from_private_key_der(alg.x509_signing(), &der) {
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

    /// The public key as an uncompressed EC point.
    pub fn public_point(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The PKCS#8 encoding, for sealing.
    pub(crate) fn pkcs8(&self) -> &Zeroizing<Vec<u8>> {
        &self.pkcs8
    }

    /// Signs `msg` in the encoding chosen at load time.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CaError> {
        let sig = self.pair.sign(&self.rng, msg).map_err(|_| CaError::Crypto("signing failed"))?;
        Ok(sig.as_ref().to_vec())
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
    fn random_ids_differ() {
        assert_ne!(random_id().unwrap(), random_id().unwrap());
        assert_eq!(random_id().unwrap().len(), 32);
    }
}
