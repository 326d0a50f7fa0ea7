//! The agent's own identity: node attestation, renewal, and persistence (key 0600), so that a
//! restart does not need a new attestation while the SVID is valid.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use vouch_api::agent::{
    AgentSvid, JoinTokenAttestation, PsatAttestation, X509PopAttestation, X509PopChallengeRequest,
};
use vouch_api::Der;
use vouch_ca::{Bundle, WorkloadKey};
use vouch_client::AdminClient;
use vouch_core::{SpiffeId, TrustDomain};
use zeroize::Zeroizing;

use crate::AgentError;

/// The agent's SVID and key, and the bundle it trusts.
#[derive(Clone)]
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
    // Replaced atomically, so a crash never leaves half a key.
    vouch_fs::replace_private(path, data).map_err(|e| AgentError::Io(e.to_string()))
}

impl AgentIdentity {
    /// The identity a server's answer `svid` gives the holder of `key`.
    pub(crate) fn from_answer(
        svid: AgentSvid,
        key: &WorkloadKey,
        td: &TrustDomain,
    ) -> Result<Self, AgentError> {
        let leaf =
            svid.cert_chain.first().ok_or_else(|| AgentError::Protocol("empty certificate chain".into()))?;
        let info = vouch_ca::x509::cert_info(&leaf.0).map_err(|e| AgentError::Protocol(e.to_string()))?;
        let bundle = Bundle::from_jwks(td.clone(), &svid.bundle_jwks.to_string())
            .map_err(|e| AgentError::Protocol(format!("the bundle of the agent SVID answer: {e}")))?;
        // The chain is kept as PEM: it is written to agent.pem for operators and TLS reads it once.
        let chain_pem = svid.cert_chain.iter().map(|d| vouch_ca::pem::encode("CERTIFICATE", &d.0)).collect();
        Ok(Self {
            spiffe_id: svid.spiffe_id,
            chain_pem,
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
        let token = token.to_owned();
        Self::attest(server, td, bundle_pem, move |client, csr| async move {
            client.attest_join_token(&JoinTokenAttestation { token, csr }).await
        })
        .await
    }

    /// Attests with a Kubernetes projected service-account token of `cluster`.
    pub async fn attest_k8s_psat(
        server: &str,
        td: &TrustDomain,
        bundle_pem: &str,
        cluster: &str,
        token: &str,
    ) -> Result<Self, AgentError> {
        let (cluster, token) = (cluster.to_owned(), token.to_owned());
        Self::attest(server, td, bundle_pem, move |client, csr| async move {
            client.attest_k8s_psat(&PsatAttestation { cluster, token, csr }).await
        })
        .await
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
        let client = AdminClient::tls(server, td, bundle_pem, None)?
            .with_connect_timeout(crate::server_link::CONNECT_TIMEOUT);
        let cert_chain_pem = cert_chain_pem.to_owned();
        let challenge = client
            .x509pop_challenge(&X509PopChallengeRequest { cert_chain_pem: cert_chain_pem.clone() })
            .await?;
        let signature = node_key
            .sign(&vouch_api::agent::x509pop_message(&challenge.nonce))
            .map_err(|e| AgentError::Protocol(e.to_string()))?;
        let signature = base64::engine::general_purpose::STANDARD.encode(signature);
        Self::attest(server, td, bundle_pem, move |client, csr| async move {
            client
                .attest_x509pop(&X509PopAttestation {
                    cert_chain_pem,
                    nonce: challenge.nonce,
                    signature,
                    csr,
                })
                .await
        })
        .await
    }

    /// Generates the agent's key and sends its CSR with the evidence `send` adds to an attestation
    /// endpoint.
    async fn attest<F, Fut>(
        server: &str,
        td: &TrustDomain,
        bundle_pem: &str,
        send: F,
    ) -> Result<Self, AgentError>
    where
        F: FnOnce(AdminClient, Der) -> Fut,
        Fut: std::future::Future<Output = Result<AgentSvid, vouch_client::ClientError>>,
    {
        let key = WorkloadKey::generate().map_err(|e| AgentError::Protocol(e.to_string()))?;
        let csr = Der(key.csr_der().map_err(|e| AgentError::Protocol(e.to_string()))?);
        let client = AdminClient::tls(server, td, bundle_pem, None)?
            .with_connect_timeout(crate::server_link::CONNECT_TIMEOUT);
        let svid = send(client, csr).await?;
        Self::from_answer(svid, &key, td)
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
}
