//! Test support (feature `testing`): JWT issuers with an RSA key (like a Kubernetes cluster's
//! service-account issuer, for tests of PSAT attestation) or a P-256 key (like a CI system's OIDC
//! tokens, for tests of token exchange). Not for production use.

// Test support panics on failure like the tests that use it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_lc_rs::signature::KeyPair as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;

/// An RS256 token issuer with its JWKS.
pub struct RsaJwtIssuer {
    key: aws_lc_rs::rsa::KeyPair,
    kid: String,
}

impl RsaJwtIssuer {
    /// A new 2048-bit issuer whose key id is `kid`.
    pub fn new(kid: &str) -> Self {
        let key =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key generation");
        Self { key, kid: kid.into() }
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> String {
        let pk = self.key.public_key();
        serde_json::json!({"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
            "n": B64.encode(pk.modulus().big_endian_without_leading_zero()),
            "e": B64.encode(pk.exponent().big_endian_without_leading_zero())}]})
        .to_string()
    }

    /// An RS256 token with these claims.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"alg": "RS256", "kid": self.kid});
        let body = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                body.as_bytes(),
                &mut sig,
            )
            .expect("RSA signing");
        format!("{body}.{}", B64.encode(sig))
    }
}

/// An ES256 token issuer with its JWKS.
pub struct EcJwtIssuer {
    key: aws_lc_rs::signature::EcdsaKeyPair,
    kid: String,
}

impl EcJwtIssuer {
    /// A new P-256 issuer whose key id is `kid`.
    pub fn new(kid: &str) -> Self {
        let key = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        )
        .expect("P-256 key generation");
        Self { key, kid: kid.into() }
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> String {
        let point = self.key.public_key().as_ref();
        let (x, y) = point[1..].split_at(32);
        serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256",
            "kid": self.kid, "x": B64.encode(x), "y": B64.encode(y)}]})
        .to_string()
    }

    /// The public key as PEM (SubjectPublicKeyInfo), as OpenBao's `jwt_validation_pubkeys` takes it.
    pub fn public_pem(&self) -> String {
        // The DER prefix of a P-256 SubjectPublicKeyInfo, followed by the uncompressed point.
        const SPKI_P256: [u8; 26] = [
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
            0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        let mut der = SPKI_P256.to_vec();
        der.extend_from_slice(self.key.public_key().as_ref());
        crate::pem::encode("PUBLIC KEY", &der)
    }

    /// A token with this header (`kid` added) and these claims, signed ES256 whatever the header says.
    pub fn sign_with_header(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let mut header = header.clone();
        header["kid"] = self.kid.clone().into();
        let body = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
        let sig =
            self.key.sign(&aws_lc_rs::rand::SystemRandom::new(), body.as_bytes()).expect("ECDSA signing");
        format!("{body}.{}", B64.encode(sig.as_ref()))
    }

    /// An ES256 token with these claims.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        self.sign_with_header(&serde_json::json!({"alg": "ES256", "typ": "JWT"}), claims)
    }
}
