//! Minimal PEM encoding and decoding (RFC 7468), enough for certificates, CSRs and keys.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Encodes DER as one PEM block with the given label.
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// All PEM blocks in `text`, as (label, DER). Blocks whose base64 is broken are skipped.
pub fn decode_all(text: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let Some(label_end) = after.find("-----") else { break };
        let label = &after[..label_end];
        let body_start = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let Some(body_end) = body_start.find(&end_marker) else { break };
        let body: String = body_start[..body_end].chars().filter(|c| !c.is_whitespace()).collect();
        if let Ok(der) = STANDARD.decode(body.as_bytes()) {
            out.push((label.to_owned(), der));
        }
        rest = &body_start[body_end + end_marker.len()..];
    }
    out
}

/// The DER of the first block whose label is one of `labels`.
pub fn decode_one(text: &str, labels: &[&str]) -> Option<Vec<u8>> {
    decode_all(text).into_iter().find(|(l, _)| labels.contains(&l.as_str())).map(|(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let der: Vec<u8> = (0..200u8).collect();
        let text = encode("CERTIFICATE", &der) + &encode("X", b"y");
        let all = decode_all(&text);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], ("CERTIFICATE".to_string(), der));
        assert!(decode_all("-----BEGIN A-----\n!!!\n-----END A-----").is_empty());
        assert!(decode_all("-----BEGIN A-----\nAAAA").is_empty());
        assert!(decode_one("nothing", &["CERTIFICATE"]).is_none());
    }
}
