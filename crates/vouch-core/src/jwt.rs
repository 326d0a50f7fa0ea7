//! What a validated JWT-SVID says (SPIFFE JWT-SVID standard, section 3): the domain's view of the
//! claims, produced by `vouch-ca`'s validator and answered by the server's validation API.

use serde::{Deserialize, Serialize};

use crate::SpiffeId;

/// The claims of a JWT-SVID that passed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtSvidClaims {
    /// The SPIFFE ID it proves.
    pub sub: SpiffeId,
    /// Its audiences.
    pub aud: Vec<String>,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Issue time, unix seconds, when present.
    pub iat: Option<i64>,
    /// Issuer, when present.
    pub iss: Option<String>,
    /// Token id, when present.
    pub jti: Option<String>,
    /// The `kid` that signed it.
    pub kid: String,
}

/// Most audiences in one JWT-SVID. SPIFFE sets no limit; one keeps a token (and each mint's cost)
/// bounded.
pub const MAX_AUDIENCES: usize = 32;
/// Longest audience value, in bytes.
pub const MAX_AUDIENCE_BYTES: usize = 256;

/// Why a list of audiences cannot go into a JWT-SVID. Every variant is the caller's mistake:
/// retrying the same request can never succeed, so front ends answer it as an invalid argument
/// (HTTP 400 `invalid_request`, gRPC `INVALID_ARGUMENT`), never as "unavailable, retry".
/// Messages name positions, not values, so nothing the caller sent is echoed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudienceError {
    /// The list is empty.
    #[error("at least one audience is required")]
    Missing,
    /// More than [`MAX_AUDIENCES`] values.
    #[error("{0} audiences given; at most {MAX_AUDIENCES} are allowed")]
    TooMany(usize),
    /// A value is the empty string.
    #[error("audience {0} (counting from 0) is empty")]
    Empty(usize),
    /// A value is longer than [`MAX_AUDIENCE_BYTES`].
    #[error("audience {0} (counting from 0) is longer than {MAX_AUDIENCE_BYTES} bytes")]
    TooLong(usize),
    /// A value contains a control character (a newline could forge a log line or a header).
    #[error("audience {0} (counting from 0) contains a control character")]
    ControlCharacter(usize),
}

/// Checks an audience list for minting: 1 to [`MAX_AUDIENCES`] values, each 1 to
/// [`MAX_AUDIENCE_BYTES`] bytes without control characters. The first fault found is reported.
pub fn check_audiences(aud: &[String]) -> Result<(), AudienceError> {
    if aud.is_empty() {
        return Err(AudienceError::Missing);
    }
    if aud.len() > MAX_AUDIENCES {
        return Err(AudienceError::TooMany(aud.len()));
    }
    for (i, a) in aud.iter().enumerate() {
        if a.is_empty() {
            return Err(AudienceError::Empty(i));
        }
        if a.len() > MAX_AUDIENCE_BYTES {
            return Err(AudienceError::TooLong(i));
        }
        if a.chars().any(char::is_control) {
            return Err(AudienceError::ControlCharacter(i));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auds(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn audiences_accepted_at_the_limits() {
        assert_eq!(check_audiences(&auds(&["db"])), Ok(()));
        assert_eq!(check_audiences(&vec!["a".to_string(); MAX_AUDIENCES]), Ok(()));
        assert_eq!(check_audiences(&["x".repeat(MAX_AUDIENCE_BYTES)]), Ok(()));
        assert_eq!(check_audiences(&auds(&["https://sts.example.com", "spiffe://td/x", "ünïcode"])), Ok(()));
    }

    #[test]
    fn audience_mistakes_are_typed() {
        let table: &[(Vec<String>, AudienceError)] = &[
            (vec![], AudienceError::Missing),
            (vec!["a".to_string(); MAX_AUDIENCES + 1], AudienceError::TooMany(33)),
            (auds(&["db", ""]), AudienceError::Empty(1)),
            (vec!["x".repeat(MAX_AUDIENCE_BYTES + 1)], AudienceError::TooLong(0)),
            (auds(&["db", "a\nb"]), AudienceError::ControlCharacter(1)),
            (auds(&["\u{0}"]), AudienceError::ControlCharacter(0)),
            (auds(&["tab\there"]), AudienceError::ControlCharacter(0)),
            (auds(&["del\u{7f}"]), AudienceError::ControlCharacter(0)),
        ];
        for (aud, want) in table {
            assert_eq!(check_audiences(aud).as_ref(), Err(want), "{aud:?}");
        }
        // The message names the position, never the value.
        let msg = check_audiences(&auds(&["secret\u{1b}[31m"])).unwrap_err().to_string();
        assert!(!msg.contains("secret"), "{msg}");
    }
}
