//! SPIFFE federation (SPIFFE Federation standard): relationships with other trust domains, whose
//! bundles the server fetches from their bundle endpoints and hands to the workloads whose entries
//! federate with them.

use serde::{Deserialize, Serialize};
use vouch_core::{SpiffeId, TrustDomain};

/// Most federation relationships one server keeps: each costs a fetch per refresh and its bundle is
/// sent to every agent.
pub const MAX_RELATIONSHIPS: usize = 64;

/// How a bundle endpoint is authenticated (SPIFFE Federation standard, section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// TLS with a web-PKI certificate naming the endpoint's host.
    HttpsWeb,
    /// TLS with an X509-SVID of the endpoint's trust domain, verified against that trust domain's
    /// bundle (the bootstrap bundle first, then each one fetched) and its configured SPIFFE ID.
    HttpsSpiffe,
}

impl Profile {
    /// The name as written in configuration and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpsWeb => "https_web",
            Self::HttpsSpiffe => "https_spiffe",
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "https_web" => Ok(Self::HttpsWeb),
            "https_spiffe" => Ok(Self::HttpsSpiffe),
            other => Err(format!("profile `{other}`: use `https_web` or `https_spiffe`")),
        }
    }
}

/// `POST /v1/federation`: a new relationship with another trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelationshipSpec {
    /// The other trust domain (not this server's own).
    pub trust_domain: TrustDomain,
    /// Its bundle endpoint, an `https://` URL.
    pub bundle_endpoint_url: String,
    /// How the endpoint is authenticated.
    pub profile: Profile,
    /// `https_spiffe`: the SPIFFE ID the endpoint presents (of the other trust domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_spiffe_id: Option<SpiffeId>,
    /// The other trust domain's bundle as it is now, as PEM certificates or a SPIFFE bundle (JWKS):
    /// required for `https_spiffe` (it authenticates the first fetch), optional for `https_web`
    /// (served to workloads until the first fetch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_bundle: Option<String>,
}

/// `PATCH /v1/federation/{trust_domain}`: changes the given fields and leaves the others. A new
/// bootstrap bundle replaces the stored bundle (an operator's repair after a lost trust chain).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelationshipPatch {
    /// New bundle endpoint URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_endpoint_url: Option<String>,
    /// New profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    /// New endpoint SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_spiffe_id: Option<SpiffeId>,
    /// New bootstrap bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_bundle: Option<String>,
}

/// A relationship and where its refresh stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relationship {
    /// The other trust domain.
    pub trust_domain: TrustDomain,
    /// Its bundle endpoint.
    pub bundle_endpoint_url: String,
    /// How the endpoint is authenticated.
    pub profile: Profile,
    /// `https_spiffe`: the SPIFFE ID the endpoint presents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_spiffe_id: Option<SpiffeId>,
    /// The refresh state.
    pub state: RefreshState,
}

/// Where the refresh of one relationship's bundle stands. Times are unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshState {
    /// The last successful fetch, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh: Option<i64>,
    /// When the next fetch is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh: Option<i64>,
    /// Why the last fetch failed, if it did (cleared by a success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the last fetch failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<i64>,
    /// The bundle served to workloads: its `spiffe_sequence`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_sequence: Option<u64>,
    /// Its X.509 authorities.
    pub x509_authorities: usize,
    /// Its JWT authorities.
    pub jwt_authorities: usize,
    /// The bundle served to workloads (SPIFFE bundle JWKS), if there is one yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<serde_json::Value>,
}

/// `GET /v1/federation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationshipList {
    /// Every relationship, ordered by trust domain.
    pub relationships: Vec<Relationship>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_snake_case_and_others_are_refused() {
        assert_eq!(serde_json::to_string(&Profile::HttpsSpiffe).unwrap(), r#""https_spiffe""#);
        assert_eq!("https_web".parse::<Profile>(), Ok(Profile::HttpsWeb));
        assert!("http".parse::<Profile>().unwrap_err().contains("https_web"));
        let err = serde_json::from_str::<RelationshipSpec>(
            r#"{"trust_domain":"b.org","bundle_endpoint_url":"https://b","profile":"https_web","x":1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `x`"), "{err}");
    }
}
