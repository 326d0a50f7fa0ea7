//! Private keys at rest: sealed with AES-256-GCM under a key-encryption key (KEK).
//!
//! The sealed form is `version (1) || nonce (12) || ciphertext || tag (16)`. The key's id is the
//! associated data, so a sealed key cannot be moved to another record without detection.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::keys::random_bytes;
use crate::CaError;

const VERSION: u8 = 1;

/// The key-encryption key. Loaded from a file or an environment variable holding 32 random bytes in
/// base64 (`openssl rand -base64 32`), or generated on first start.
pub struct Kek {
    key: LessSafeKey,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// Builds a KEK from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CaError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| CaError::InvalidKey("the key-encryption key must be 32 bytes".into()))?;
        Ok(Self { key: LessSafeKey::new(unbound) })
    }

    /// Parses the text form: 32 bytes in base64, surrounding white space ignored.
    pub fn from_base64(text: &str) -> Result<Self, CaError> {
        let bytes = Zeroizing::new(STANDARD.decode(text.trim().as_bytes()).map_err(|_| {
            CaError::InvalidKey("the key-encryption key must be base64 (`openssl rand -base64 32`)".into())
        })?);
        Self::from_bytes(&bytes)
    }

    /// Generates a new KEK and returns it with its text form (to be written to a 0600 file).
    pub fn generate() -> Result<(Self, Zeroizing<String>), CaError> {
        let bytes = Zeroizing::new(random_bytes::<32>()?);
        let text = Zeroizing::new(STANDARD.encode(*bytes));
        Ok((Self::from_bytes(&*bytes)?, text))
    }

    /// Seals `plaintext`, binding it to `context` (for example a key id).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, CaError> {
        let nonce_bytes = random_bytes::<NONCE_LEN>()?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| CaError::Crypto("sealing failed"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens a sealed blob made for `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CaError> {
        let fail = || CaError::Unseal(context.to_owned());
        let (&version, rest) = sealed.split_first().ok_or_else(fail)?;
        if version != VERSION || rest.len() < NONCE_LEN + 16 {
            return Err(fail());
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail())?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let len =
            self.key.open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf).map_err(|_| fail())?.len();
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let (kek, text) = Kek::generate().unwrap();
        let sealed = kek.seal("key-1", b"secret key bytes").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(&*kek.open("key-1", &sealed).unwrap(), b"secret key bytes");
        assert!(kek.open("key-2", &sealed).is_err(), "bound to its context");
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(kek.open("key-1", &bad).is_err());
        assert!(kek.open("key-1", &[]).is_err());
        assert!(kek.open("key-1", &[1, 2, 3]).is_err());
        let again = Kek::from_base64(&text).unwrap();
        assert_eq!(&*again.open("key-1", &sealed).unwrap(), b"secret key bytes");
        let (other, _) = Kek::generate().unwrap();
        assert!(other.open("key-1", &sealed).is_err());
        assert!(Kek::from_base64("c2hvcnQ=").is_err());
        assert!(Kek::from_base64("not base64!").is_err());
    }
}
