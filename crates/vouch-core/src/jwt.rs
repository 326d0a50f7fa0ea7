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
