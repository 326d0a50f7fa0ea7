//! The vouch node agent.
//!
//! Public, for the CLI, tests and fuzzing: [`Agent`] and its [`AgentConfig`]; [`attest`] (workload
//! attestation: the caller pinned with a pidfd, `/proc`, cgroup, `unix:` selectors, and what the
//! container runtime and the kubelet say about its container); [`state`] (what the agent knows
//! and holds); [`admin`] (the private admin socket: explain, health, metrics); [`secret_api`] (the
//! secret socket beside the Workload API: secrets read by identity); [`conn_limits`]
//! (Workload API connection bounds); [`h2_authority_filter`] (the HTTP/2 header filter in front of
//! the Workload API, for gRPC C-core clients).
//!
//! Private: `identity` (the agent's own SVID: node attestation by join token, PSAT or x509pop,
//! renewal, kept on disk 0600), `sync` (the push stream of entries from the server), `registry`,
//! `svid_cache` and `server_link` (the three parts of [`state::AgentState`]), `workload_api` and
//! `workload_error` (the SPIFFE Workload API and its one mapping to gRPC status), `deliveries` (what
//! the Workload API handed to which workload, reported to the server for forensics), `explain`,
//! `metrics`, and `clock` (the one reading of the system clock).

pub mod admin;
pub mod attest;
mod clock;
pub mod config;
pub mod conn_limits;
mod deliveries;
mod explain;
pub mod grants;
pub mod h2_authority_filter;
pub mod hpack;
mod identity;
mod metrics;
mod registry;
pub mod secret_api;
mod server_link;
pub mod state;
mod svid_cache;
mod sync;
mod workload_api;
mod workload_error;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use vouch_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;

pub use crate::config::{AgentConfig, NodeAttestation, ServerOrder};
pub use crate::identity::AgentIdentity;
pub use crate::metrics::{Refusal, ServerOp};
use crate::state::AgentState;
use crate::workload_api::{WorkloadApi, WorkloadConn};

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Configuration or start-up problem, with what to do.
    #[error("{0}")]
    Config(String),
    /// A file or socket problem.
    #[error("{0}")]
    Io(String),
    /// The server answered something unexpected.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The server refused or could not be reached.
    #[error("{0}")]
    Server(#[from] vouch_client::ClientError),
}

/// A running agent.
pub struct Agent {
    /// Shared state.
    pub state: Arc<AgentState>,
    /// The Workload API socket.
    pub socket: PathBuf,
    /// Where `GET /metrics` is served, if it is (the bound address, so port 0 works).
    pub metrics_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("socket", &self.socket).finish_non_exhaustive()
    }
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), AgentError> {
    vouch_fs::create_dir(dir, mode).map_err(|e| AgentError::Io(e.to_string()))
}

async fn obtain_identity(config: &AgentConfig) -> Result<AgentIdentity, AgentError> {
    if let Some(id) = AgentIdentity::load(&config.data_dir, &config.trust_domain, crate::clock::now())? {
        tracing::info!(agent = %id.spiffe_id, "reusing the saved agent SVID; no attestation needed");
        return Ok(id);
    }
    if matches!(config.node_attestation, NodeAttestation::SavedOnly) {
        return Err(AgentError::Config(
            "no valid agent SVID is saved and no join token was given: create one with `vouch token create` and pass --join-token (or use --k8s-psat-token in Kubernetes, or --x509pop-cert and --x509pop-key)".into(),
        ));
    }
    let path = config.bundle.as_ref().ok_or_else(|| {
        AgentError::Config("the first attestation needs the server's bundle to trust it: pass --bundle (from `vouch bundle show`)".into())
    })?;
    let bundle_pem = read_config_file(path, "bundle")?;
    let id = attest_node(config, &bundle_pem).await?;
    tracing::info!(agent = %id.spiffe_id, method = config.node_attestation.name(), "attested");
    Ok(id)
}

fn read_config_file(p: &Path, what: &str) -> Result<String, AgentError> {
    std::fs::read_to_string(p)
        .map_err(|e| AgentError::Config(format!("cannot read {what} {}: {e}", p.display())))
}

/// Attests the node by the configured method, trusting the server through `bundle_pem`: at the
/// configured servers in turn, until one answers (a refusal is the same from every replica, since
/// they share one registry).
async fn attest_node(config: &AgentConfig, bundle_pem: &str) -> Result<AgentIdentity, AgentError> {
    let mut failures = Vec::new();
    for server in &config.servers {
        match attest_at(config, &server.to_string(), bundle_pem).await {
            Err(AgentError::Server(e)) if server_link::unreachable(&e) => {
                tracing::warn!(server = %server, error = %e, "cannot attest at this server; trying the next");
                failures.push(e);
            }
            answered => return answered,
        }
    }
    Err(AgentError::Server(match failures.len() {
        1 => failures.remove(0),
        _ => vouch_client::ClientError::Connect {
            target: format!(
                "any of {}",
                config.servers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
            reason: failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        },
    }))
}

/// Attests the node by the configured method at `server`.
async fn attest_at(
    config: &AgentConfig,
    server: &str,
    bundle_pem: &str,
) -> Result<AgentIdentity, AgentError> {
    let td = &config.trust_domain;
    match &config.node_attestation {
        NodeAttestation::SavedOnly => {
            Err(AgentError::Config("no node attestation method is configured".into()))
        }
        NodeAttestation::JoinToken(token) => {
            AgentIdentity::attest_join_token(server, td, bundle_pem, token).await
        }
        NodeAttestation::K8sPsat { token_file, cluster } => {
            // Read at attestation time: the kubelet rotates the projected token file.
            let token = zeroize::Zeroizing::new(read_config_file(token_file, "the service-account token")?);
            AgentIdentity::attest_k8s_psat(server, td, bundle_pem, cluster, token.trim()).await
        }
        NodeAttestation::X509Pop { cert, key } => {
            let key_pem = zeroize::Zeroizing::new(read_config_file(key, "the node key")?);
            let cert_pem = read_config_file(cert, "the node certificate")?;
            AgentIdentity::attest_x509pop(server, td, bundle_pem, &cert_pem, &key_pem).await
        }
    }
}

/// Whether the agent can obtain a new SVID by itself once its own has expired (a long outage of
/// the server): PSAT and x509pop attest again with what the node still has; a join token was
/// single use.
pub(crate) fn can_reattest(method: &NodeAttestation) -> bool {
    matches!(method, NodeAttestation::K8sPsat { .. } | NodeAttestation::X509Pop { .. })
}

/// After the agent's own SVID expired: attests again where the method allows, else says what the
/// operator must do.
async fn recover_identity(state: &AgentState, said: &mut conn_limits::Throttle) {
    let id = state.link.identity();
    if !can_reattest(&state.config.node_attestation) {
        if said.tick().is_some() {
            tracing::error!(
                agent = %id.spiffe_id,
                expired_at = %vouch_core::ttl::rfc3339(vouch_core::ttl::unix_seconds(id.not_after)),
                "the agent SVID expired while the server could not renew it, and a join token is single use: \
                 create a new one (`vouch token create --agent-id {}`) and restart the agent with --join-token \
                 (PSAT and x509pop agents attest again by themselves)",
                id.spiffe_id
            );
        }
        return;
    }
    match reattest(state).await {
        Ok(()) => tracing::info!(
            method = state.config.node_attestation.name(),
            "the agent SVID had expired; attested again"
        ),
        Err(e) => {
            state.metrics.server_error(metrics::ServerOp::Renew);
            if said.tick().is_some() {
                tracing::warn!(error = %e, "the agent SVID expired and attesting again failed; retrying");
            }
        }
    }
}

/// Attests the node again (PSAT or x509pop) and takes the new SVID into use and onto disk. Trusts
/// the bundle the agent holds now: the file given at first start may predate a root rotation.
pub(crate) async fn reattest(state: &AgentState) -> Result<(), AgentError> {
    let bundle = state.registry.bundle();
    let bundle_pem: String =
        bundle.x509_authorities.iter().map(|der| vouch_ca::pem::encode("CERTIFICATE", der)).collect();
    let fresh = attest_node(&state.config, &bundle_pem).await?;
    fresh.save(&state.config.data_dir)?;
    state.link.set_identity(fresh)
}

impl Agent {
    /// Starts the agent: identity (saved or attested), sync, rotation, and the Workload API socket.
    pub async fn start(config: AgentConfig) -> Result<Self, AgentError> {
        create_dir(&config.data_dir, 0o700)?;
        let identity = obtain_identity(&config).await?;
        identity.save(&config.data_dir)?;
        let state = AgentState::new(config.clone(), identity, attest::UnixAttestor::default())?;
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(sync::run(state.clone(), rx.clone()))];
        tasks.push(tokio::spawn(maintenance(state.clone(), rx.clone())));
        tasks.push(tokio::spawn(deliveries::run(state.clone(), rx.clone())));

        // World-connectable on purpose: attestation, not file modes, decides who gets what.
        let listener = vouch_fs::bind_unix_socket(&config.socket, 0o777)
            .await
            .map_err(|e| AgentError::Io(e.to_string()))?;
        // Raised here, once, before the bounds are read from it: a process-wide change belongs to
        // the start of the agent, not to reading its configuration.
        conn_limits::raise_nofile();
        let limits = conn_limits::ConnLimits::new(config.connection_limits());
        tracing::info!(
            total = limits.limits().total,
            per_uid = limits.limits().per_uid,
            reserve = limits.limits().reserve(),
            "Workload API connection bounds"
        );
        let service = SpiffeWorkloadApiServer::new(WorkloadApi::new(state.clone(), rx.clone()));
        // gRPC health on the same socket: NOT_SERVING until the first sync (until then the agent
        // cannot tell a workload whether it has an identity), then SERVING for good: cached SVIDs
        // are served even while the server is unreachable, so the agent stays healthy then.
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_not_serving::<SpiffeWorkloadApiServer<WorkloadApi>>().await;
        let routes = tonic::service::Routes::new(service).add_service(health_service).prepare();
        // Two per CPU, at most 8: a Workload API call is short (the answer is cached), and an agent
        // shares its node with the workloads it serves.
        let conns = vouch_rt::ConnectionThreads::start("vouch-workload", vouch_rt::threads_per_cpu(2, 8))
            .map_err(|e| AgentError::Io(format!("cannot start the Workload API threads: {e}")))?;
        let accept_state = state.clone();
        let mut accept_shutdown = rx.clone();
        let conn_shutdown = rx.clone();
        tasks.push(tokio::spawn(async move {
            accept_state.metrics.set_workload_api_up(true);
            // Refusals and accept failures are logged at most once per interval, with a count: a
            // flood must not turn into a flood of log lines.
            let mut refused = conn_limits::Throttle::new(Duration::from_secs(10));
            let mut failed = conn_limits::Throttle::new(Duration::from_secs(10));
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            let uid = conn_limits::peer_uid(&stream);
                            match limits.admit(uid) {
                                Ok(slot) => {
                                    // Re-registered with the connection thread's runtime, which
                                    // serves it from now on; the peer is pinned there, at once.
                                    let Ok(stream) = stream.into_std() else { continue };
                                    let (state, routes, stopping) = (accept_state.clone(), routes.clone(), conn_shutdown.clone());
                                    conns.run(move || match tokio::net::UnixStream::from_std(stream) {
                                        Ok(stream) => {
                                            let conn = WorkloadConn::new(stream, &state, slot);
                                            tokio::spawn(workload_api::serve_connection(conn, routes, stopping));
                                        }
                                        Err(e) => tracing::debug!(error = %e, "cannot take a workload connection into a connection thread"),
                                    });
                                }
                                Err(why) => {
                                    accept_state.metrics.refused(metrics::Refusal::ConnectionLimit);
                                    if let Some(n) = refused.tick() {
                                        tracing::warn!(uid, bound = ?why, refused = n, "Workload API connections refused: connection bound reached");
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            if let Some(n) = failed.tick() {
                                tracing::warn!(error = %e, failures = n, "workload socket accept failed");
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    _ = accept_shutdown.changed() => break,
                }
            }
            accept_state.metrics.set_workload_api_up(false);
            // Dropping the connection threads ends whatever they still serve: first give open
            // connections the grace period to finish their calls (each has been told to stop).
            let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
            while limits.open(0).0 > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            drop(conns);
        }));
        let admin_path = config.data_dir.join("admin.sock");
        let admin = vouch_fs::bind_unix_socket(&admin_path, 0o600)
            .await
            .map_err(|e| AgentError::Io(e.to_string()))?;
        let admin_state = state.clone();
        let mut admin_shutdown = rx.clone();
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = admin::serve(admin, admin_state) => {}
                _ = admin_shutdown.changed() => {}
            }
        }));
        // Beside the Workload API socket and world-connectable like it: attestation decides.
        let secrets_path = secret_api::socket_path(&config.socket);
        let secrets = vouch_fs::bind_unix_socket(&secrets_path, 0o777)
            .await
            .map_err(|e| AgentError::Io(e.to_string()))?;
        let secrets_state = state.clone();
        let mut secrets_shutdown = rx.clone();
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = secret_api::serve(secrets, secrets_state) => {}
                _ = secrets_shutdown.changed() => {}
            }
        }));
        let metrics_addr = match config.metrics_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    AgentError::Io(format!("cannot bind the metrics listener {addr}: {e} (metrics_listen)"))
                })?;
                let bound = listener
                    .local_addr()
                    .map_err(|e| AgentError::Io(format!("metrics listener {addr}: {e}")))?;
                let metrics_state = state.clone();
                let mut metrics_shutdown = rx.clone();
                tasks.push(tokio::spawn(async move {
                    tokio::select! {
                        _ = metrics::serve_http(listener, metrics_state) => {}
                        _ = metrics_shutdown.changed() => {}
                    }
                }));
                tracing::info!(address = %bound, "serving GET /metrics");
                Some(bound)
            }
            None => None,
        };
        let health_state = state.clone();
        let mut health_shutdown = rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut changes = health_state.registry.watch();
            while !health_state.registry.synced() {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = health_shutdown.changed() => return,
                }
            }
            health.set_serving::<SpiffeWorkloadApiServer<WorkloadApi>>().await;
        }));
        tracing::info!(agent = %state.link.agent_id(), socket = %config.socket.display(), "vouch agent ready");
        Ok(Self { state, socket: config.socket, metrics_addr, shutdown, tasks })
    }

    /// Stops the agent and removes its socket. Open Workload API streams are ended; whatever has
    /// not stopped after [`SHUTDOWN_GRACE`] (a workload that keeps its connection open) is cut off, so
    /// the agent always exits.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for mut t in self.tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
            }
        }
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(secret_api::socket_path(&self.socket));
    }
}

/// Most concurrent HTTP/2 streams on one Workload API connection (advertised to the client).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 32;

/// Longest wait for the agent's tasks to stop at shutdown, as the server's.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long after a failed renewal or re-attestation of the agent's own SVID it is tried again.
const IDENTITY_RETRY: Duration = Duration::from_secs(2);

/// Rotates workload SVIDs at their renewal times and renews the agent's own SVID at half life.
async fn maintenance(state: Arc<AgentState>, mut shutdown: watch::Receiver<bool>) {
    let mut said = conn_limits::Throttle::new(Duration::from_secs(60));
    loop {
        let now = crate::clock::now();
        if let Err(e) = state.rotate_due(now).await {
            tracing::warn!(error = %e, "SVID rotation failed; retrying (cached SVIDs stay in use until they expire)");
        }
        // A failed renewal or re-attestation is retried after IDENTITY_RETRY, not at once: the
        // server may be down for a while, and an agent fleet retrying in a tight loop is a flood.
        let mut shortest = Duration::from_millis(200);
        if now >= state.link.identity().not_after {
            recover_identity(&state, &mut said).await;
            shortest = IDENTITY_RETRY;
        } else if now >= state.identity_renew_at() {
            match state.link.renew().await {
                Ok(id) => {
                    let saved = id.save(&state.config.data_dir);
                    match saved.and_then(|()| state.link.set_identity(id)) {
                        Ok(()) => tracing::info!("renewed the agent SVID"),
                        Err(e) => tracing::warn!(error = %e, "cannot store the renewed agent SVID"),
                    }
                }
                Err(e) => {
                    state.metrics.server_error(metrics::ServerOp::Renew);
                    shortest = IDENTITY_RETRY;
                    if said.tick().is_some() {
                        tracing::warn!(error = %e, "agent SVID renewal failed; retrying");
                    }
                }
            }
        }
        let until_identity = state.identity_renew_at().duration_since(now).unwrap_or_default();
        let wait = state.next_rotation_in(now, Duration::from_secs(5)).min(until_identity).max(shortest);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_methods_with_lasting_proof_reattest() {
        assert!(can_reattest(&NodeAttestation::K8sPsat { token_file: "/t".into(), cluster: "c".into() }));
        assert!(can_reattest(&NodeAttestation::X509Pop { cert: "/c".into(), key: "/k".into() }));
        assert!(!can_reattest(&NodeAttestation::JoinToken(zeroize::Zeroizing::new("used".into()))));
        assert!(!can_reattest(&NodeAttestation::SavedOnly));
    }
}
