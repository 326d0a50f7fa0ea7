//! Test support (feature `testing`): a JWT issuer with an RSA key, like a Kubernetes cluster's
//! service-account issuer, for tests of PSAT attestation. Not for production use.

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
