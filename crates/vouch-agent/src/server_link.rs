//! The agent's link to the server: its own identity (SVID and key), the mTLS client built from it,
//! and whether the sync stream is up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use vouch_client::AdminClient;
use vouch_core::SpiffeId;

use crate::identity::AgentIdentity;
use crate::AgentError;

/// The agent's identity and the client that presents it.
pub struct ServerLink {
    /// The server's mTLS address.
    server: String,
    identity: RwLock<Arc<AgentIdentity>>,
    client: RwLock<AdminClient>,
    connected: AtomicBool,
}

impl ServerLink {
    /// A link to `server` as `identity`.
    pub fn new(server: String, identity: AgentIdentity) -> Result<Self, AgentError> {
        let client = identity.client(&server)?;
        Ok(Self {
            server,
            identity: RwLock::new(Arc::new(identity)),
            client: RwLock::new(client),
            connected: AtomicBool::new(false),
        })
    }

    /// The server's mTLS address.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The agent's SPIFFE ID.
    pub fn agent_id(&self) -> SpiffeId {
        self.identity().spiffe_id.clone()
    }

    /// The agent's identity.
    pub fn identity(&self) -> Arc<AgentIdentity> {
        self.identity.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the agent identity (after renewal) and the client that presents it.
    pub fn set_identity(&self, identity: AgentIdentity) -> Result<(), AgentError> {
        let client = identity.client(&self.server)?;
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = client;
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(identity);
        Ok(())
    }

    /// A client of the server with the current agent SVID.
    pub fn client(&self) -> AdminClient {
        self.client.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the sync stream is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }
}
