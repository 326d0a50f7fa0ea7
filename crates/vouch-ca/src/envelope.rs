//! Envelope encryption of secret values.
//!
//! Each secret version gets a fresh random 256-bit data key. The value is encrypted under the data
//! key with AES-256-GCM; the data key is sealed under the key-encryption key ([`Kek::seal`]). Both
//! carry the secret's path and version as associated data, so a sealed value moved to another
//! path or version (rows swapped in the database) does not open. Rotating the KEK re-seals data
//! keys only, never values. The data key lives in zeroizing memory and is dropped after use.
//!
//! The value's form is `format (1) || nonce (12) || ciphertext || tag (16)`.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use zeroize::Zeroizing;

use crate::keys::random_bytes;
use crate::{CaError, Kek};

const FORMAT: u8 = 1;
const TAG_LEN: usize = 16;

/// A secret version as stored: the sealed data key and the encrypted value. Neither holds the
/// plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedValue {
    /// The data key, sealed under the key-encryption key.
    pub sealed_key: Vec<u8>,
    /// The value, encrypted under the data key.
    pub ciphertext: Vec<u8>,
}

/// The associated data of a value: its path and version. Paths cannot hold `#` or NUL, so two
/// different (path, version) pairs never give the same text.
fn value_aad(path: &str, version: u64) -> String {
    format!("vouch-secret-value\0{path}#{version}")
}

/// The context the data key is sealed under.
fn key_context(path: &str, version: u64) -> String {
    format!("vouch-secret-key\0{path}#{version}")
}

fn data_key(bytes: &[u8]) -> Result<LessSafeKey, CaError> {
    let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| CaError::Crypto("bad data key"))?;
    Ok(LessSafeKey::new(unbound))
}

/// Encrypts `plaintext` as version `version` of secret `path`, under a fresh data key.
pub fn seal_value(kek: &Kek, path: &str, version: u64, plaintext: &[u8]) -> Result<SealedValue, CaError> {
    let key_bytes = Zeroizing::new(random_bytes::<32>()?);
    let key = data_key(&*key_bytes)?;
    let nonce = random_bytes::<NONCE_LEN>()?;
    let mut buf = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
    buf.push(FORMAT);
    buf.extend_from_slice(&nonce);
    let mut body = Zeroizing::new(plaintext.to_vec());
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(value_aad(path, version).as_bytes()),
        &mut *body,
    )
    .map_err(|_| CaError::Crypto("sealing a secret failed"))?;
    buf.extend_from_slice(&body);
    let sealed_key = kek.seal(&key_context(path, version), &*key_bytes)?;
    Ok(SealedValue { sealed_key, ciphertext: buf })
}

/// Decrypts version `version` of secret `path`. Refused ([`CaError::SecretUnreadable`]) when the
/// stored data was sealed for another path or version, was altered, or was sealed under another
/// key-encryption key.
pub fn open_value(
    kek: &Kek,
    path: &str,
    version: u64,
    sealed: &SealedValue,
) -> Result<Zeroizing<Vec<u8>>, CaError> {
    let fail = || CaError::SecretUnreadable { path: path.to_owned(), version };
    let key_bytes = kek.open(&key_context(path, version), &sealed.sealed_key).map_err(|_| fail())?;
    let key = data_key(&key_bytes).map_err(|_| fail())?;
    let (&format, rest) = sealed.ciphertext.split_first().ok_or_else(fail)?;
    if format != FORMAT || rest.len() < NONCE_LEN + TAG_LEN {
        return Err(fail());
    }
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail())?;
    let mut buf = Zeroizing::new(body.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(value_aad(path, version).as_bytes()), &mut buf)
        .map_err(|_| fail())?
        .len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_open_only_at_their_path_and_version() {
        let (kek, _) = Kek::generate().unwrap();
        let secret = b"correct horse battery staple";
        let a = seal_value(&kek, "app/db", 1, secret).unwrap();
        assert!(!a.ciphertext.windows(7).any(|w| w == b"correct"));
        assert!(!a.sealed_key.windows(7).any(|w| w == b"correct"));
        assert_eq!(&*open_value(&kek, "app/db", 1, &a).unwrap(), secret);

        let b = seal_value(&kek, "app/db", 2, b"other").unwrap();
        assert_ne!(a.sealed_key, b.sealed_key, "a fresh data key per version");
        for (path, version) in [("app/db", 2), ("app/dc", 1), ("app", 1)] {
            let err = open_value(&kek, path, version, &a).unwrap_err().to_string();
            assert!(err.contains(&format!("`{path}` version {version}")), "{err}");
            assert!(!err.contains("correct"), "{err}");
        }
        // A value with another version's data key, or the key of another value.
        let mixed = SealedValue { sealed_key: b.sealed_key.clone(), ciphertext: a.ciphertext.clone() };
        assert!(open_value(&kek, "app/db", 1, &mixed).is_err());
        assert!(open_value(&kek, "app/db", 2, &mixed).is_err());
        let mut bad = a.clone();
        let last = bad.ciphertext.len() - 1;
        bad.ciphertext[last] ^= 1;
        assert!(open_value(&kek, "app/db", 1, &bad).is_err());
        for ciphertext in [vec![], vec![1], vec![2; 40]] {
            let short = SealedValue { sealed_key: a.sealed_key.clone(), ciphertext };
            assert!(open_value(&kek, "app/db", 1, &short).is_err());
        }
        let (other, _) = Kek::generate().unwrap();
        assert!(open_value(&other, "app/db", 1, &a).is_err(), "another KEK");
        let empty = seal_value(&kek, "e", 1, b"").unwrap();
        assert!(open_value(&kek, "e", 1, &empty).unwrap().is_empty());
    }
}
