//! The agent's own identity: node attestation, renewal, and persistence (key 0600), so that a
//! restart does not need a new attestation while the SVID is valid.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{json, Value};
use vouch_ca::{Bundle, WorkloadKey};
use vouch_client::AdminClient;
use vouch_core::{SpiffeId, TrustDomain};
use zeroize::Zeroizing;

use crate::AgentError;

/// The agent's SVID and key, and the bundle it trusts.
pub struct AgentIdentity {
    /// The agent's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Certificate chain, PEM.
    pub chain_pem: String,
    /// Private key, PKCS#8 PEM.
    pub key_pem: Zeroizing<String>,
    /// End of the SVID's validity.
    pub not_after: SystemTime,
    /// Start of the SVID's validity.
    pub not_before: SystemTime,
    /// The trust bundle.
    pub bundle: Bundle,
}

impl std::fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentIdentity").field("spiffe_id", &self.spiffe_id).finish_non_exhaustive()
    }
}

fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (dir.join("agent.key"), dir.join("agent.pem"), dir.join("bundle.json"))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), AgentError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| AgentError::Io(format!("cannot create {}: {e}", tmp.display())))?;
    f.write_all(data).map_err(|e| AgentError::Io(format!("cannot write {}: {e}", tmp.display())))?;
    // Replace atomically, so a crash never leaves half a key.
    std::fs::rename(&tmp, path).map_err(|e| AgentError::Io(format!("cannot write {}: {e}", path.display())))
}

impl AgentIdentity {
    fn from_answer(v: &Value, key: &WorkloadKey, td: &TrustDomain) -> Result<Self, AgentError> {
        let chain_pem =
            v["cert_chain_pem"].as_str().ok_or_else(|| AgentError::Protocol("no cert_chain_pem".into()))?;
        let leaf = vouch_ca::pem::decode_one(chain_pem, &["CERTIFICATE"])
            .ok_or_else(|| AgentError::Protocol("empty certificate chain".into()))?;
        let info = vouch_ca::x509::cert_info(&leaf).map_err(|e| AgentError::Protocol(e.to_string()))?;
        let spiffe_id = SpiffeId::parse(v["spiffe_id"].as_str().unwrap_or_default())
            .map_err(|e| AgentError::Protocol(format!("agent SPIFFE ID: {e}")))?;
        let bundle = Bundle::from_jwks(td.clone(), &v["bundle_jwks"].to_string())
            .map_err(|e| AgentError::Protocol(e.to_string()))?;
        Ok(Self {
            spiffe_id,
            chain_pem: chain_pem.to_owned(),
            key_pem: key.pkcs8_pem(),
            not_after: info.not_after,
            not_before: info.not_before,
            bundle,
        })
    }

    /// Saves key (0600), certificate and bundle in `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), AgentError> {
        let (key, cert, bundle) = paths(dir);
        write_private(&key, self.key_pem.as_bytes())?;
        write_private(&cert, self.chain_pem.as_bytes())?;
        let jwks = self.bundle.to_jwks().map_err(|e| AgentError::Protocol(e.to_string()))?;
        write_private(&bundle, jwks.as_bytes())
    }

    /// Loads a saved identity if there is one and it is still valid at `now`.
    pub fn load(dir: &Path, td: &TrustDomain, now: SystemTime) -> Result<Option<Self>, AgentError> {
        let (key, cert, bundle) = paths(dir);
        let (Ok(key_pem), Ok(chain_pem), Ok(jwks)) =
            (std::fs::read_to_string(&key), std::fs::read_to_string(&cert), std::fs::read_to_string(&bundle))
        else {
            return Ok(None);
        };
        let key_pem = Zeroizing::new(key_pem);
        let leaf = vouch_ca::pem::decode_one(&chain_pem, &["CERTIFICATE"])
            .ok_or_else(|| AgentError::Io(format!("{} holds no certificate", cert.display())))?;
        let info = vouch_ca::x509::cert_info(&leaf)
            .map_err(|e| AgentError::Io(format!("{}: {e}", cert.display())))?;
        if info.not_after <= now {
            return Ok(None);
        }
        let spiffe_id = info
            .uris
            .first()
            .and_then(|u| SpiffeId::parse(u).ok())
            .ok_or_else(|| AgentError::Io(format!("{} is not an X509-SVID", cert.display())))?;
        let bundle = Bundle::from_jwks(td.clone(), &jwks)
            .map_err(|e| AgentError::Io(format!("{}: {e}", bundle.display())))?;
        Ok(Some(Self {
            spiffe_id,
            chain_pem,
            key_pem,
            not_after: info.not_after,
            not_before: info.not_before,
            bundle,
        }))
    }

    /// Attests with a join token over TLS that trusts `bundle_pem`.
    pub async fn attest_join_token(
        server: &str,
        td: &TrustDomain,
        bundle_pem: &str,
        token: &str,
    ) -> Result<Self, AgentError> {
        Self::attest(server, td, bundle_pem, "/v1/agent/attest/join-token", json!({"token": token})).await
    }

    /// Attests with a Kubernetes projected service-account token of `cluster`.
    pub async fn attest_k8s_psat(
        server: &str,
        td: &TrustDomain,
        bundle_pem: &str,
        cluster: &str,
        token: &str,
    ) -> Result<Self, AgentError> {
        let evidence = json!({"cluster": cluster, "token": token});
        Self::attest(server, td, bundle_pem, "/v1/agent/attest/k8s-psat", evidence).await
    }

    /// Attests by proof of possession of a node key: asks for a challenge for the certificate, signs
    /// it with the node key, and answers it.
    pub async fn attest_x509pop(
        server: &str,
        td: &TrustDomain,
        bundle_pem: &str,
        cert_chain_pem: &str,
        node_key_pem: &str,
    ) -> Result<Self, AgentError> {
        use base64::Engine as _;
        let node_key = vouch_ca::SigningKey::from_pem(node_key_pem, vouch_ca::KeyUse::X509)
            .map_err(|e| AgentError::Config(format!("x509pop key: {e}")))?;
        let client = AdminClient::tls(server, td, bundle_pem, None)?;
        let challenge: Value = client
            .call(
                "POST",
                "/v1/agent/attest/x509pop/challenge",
                Some(&json!({"cert_chain_pem": cert_chain_pem})),
            )
            .await?;
        let nonce = challenge["nonce"].as_str().ok_or_else(|| AgentError::Protocol("no nonce".into()))?;
        let signature = node_key
            .sign(&vouch_client::x509pop_message(nonce))
            .map_err(|e| AgentError::Protocol(e.to_string()))?;
        let evidence = json!({"cert_chain_pem": cert_chain_pem, "nonce": nonce,
            "signature": base64::engine::general_purpose::STANDARD.encode(signature)});
        Self::attest(server, td, bundle_pem, "/v1/agent/attest/x509pop", evidence).await
    }

    /// Sends `evidence` plus a CSR for a fresh key to an attestation endpoint.
    async fn attest(
        server: &str,
        td: &TrustDomain,
        bundle_pem: &str,
        path: &str,
        mut evidence: Value,
    ) -> Result<Self, AgentError> {
        let key = WorkloadKey::generate().map_err(|e| AgentError::Protocol(e.to_string()))?;
        evidence["csr"] = json!(key.csr_pem().map_err(|e| AgentError::Protocol(e.to_string()))?);
        let client = AdminClient::tls(server, td, bundle_pem, None)?;
        let v: Value = client.call("POST", path, Some(&evidence)).await?;
        Self::from_answer(&v, &key, td)
    }

    /// A client of the server authenticated with this identity.
    pub fn client(&self, server: &str) -> Result<AdminClient, AgentError> {
        Ok(AdminClient::tls(
            server,
            &self.bundle.trust_domain,
            &self.bundle.x509_pem(),
            Some((&self.chain_pem, &self.key_pem)),
        )?)
    }

    /// A new SVID for a new key, from the server.
    pub async fn renew(&self, server: &str) -> Result<Self, AgentError> {
        let key = WorkloadKey::generate().map_err(|e| AgentError::Protocol(e.to_string()))?;
        let csr = key.csr_pem().map_err(|e| AgentError::Protocol(e.to_string()))?;
        let v: Value =
            self.client(server)?.call("POST", "/v1/agent/renew", Some(&json!({"csr": csr}))).await?;
        Self::from_answer(&v, &key, &self.bundle.trust_domain)
    }
}
