//! DER bytes in JSON: standard base64 with padding.

use base64::Engine as _;

/// DER bytes (a certificate or a CSR); base64 (standard alphabet, padded) in JSON.
#[derive(Clone, PartialEq, Eq)]
pub struct Der(pub Vec<u8>);

impl std::fmt::Debug for Der {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Der({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for Der {
    fn from(v: Vec<u8>) -> Self {
        Self(v)
    }
}

impl AsRef<[u8]> for Der {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl serde::Serialize for Der {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> serde::Deserialize<'de> for Der {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Der;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("base64 DER")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Der, E> {
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map(Der)
                    .map_err(|e| E::custom(format!("not base64 DER: {e}")))
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::Der;

    #[test]
    fn der_is_padded_standard_base64_both_ways() {
        let der = Der(vec![0x30, 0x03, 0x02, 0x01, 0xff]);
        let text = serde_json::to_string(&der).unwrap();
        assert_eq!(text, "\"MAMCAf8=\"");
        assert_eq!(serde_json::from_str::<Der>(&text).unwrap(), der);
        let err = serde_json::from_str::<Der>("\"not base64!\"").unwrap_err().to_string();
        assert!(err.contains("not base64 DER"), "{err}");
    }
}
