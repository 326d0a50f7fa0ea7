//! The SPIFFE Workload API on the agent's Unix socket (SPIFFE Workload API standard).
//!
//! Every request must carry the `workload.spiffe.io: true` metadata, else `InvalidArgument`. The
//! caller is attested on every call from the process pinned when it connected; a caller with no
//! matching entry gets `PermissionDenied` with the message "no identity issued", which clients key
//! on. Streams send the complete state first and again whenever it changes (rotation, entry or bundle
//! change).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status};
use vouch_api::agent::SvidKind;
use vouch_ca::Bundle;
use vouch_core::{Entry, SpiffeId, TrustDomain};
use vouch_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use vouch_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};

use crate::attest::{attest_full, AttestError, Attestation, ExeHash, PeerProcess};
use crate::conn_limits::ConnSlot;
use crate::deliveries::{jwt_facts, Delivered, Handed, Workload};
use crate::h2_authority_filter::Filter;
use crate::metrics::{Refusal, Rpc, RpcTimer};
use crate::state::AgentState;
use crate::workload_error::WorkloadError;

/// The pinned peer of a connection (or why it could not be pinned), and the SVIDs the connection
/// was given (so each is reported once: [`crate::deliveries`]).
#[derive(Clone)]
pub struct PeerInfo(pub Arc<Result<PeerProcess, AttestError>>, pub(crate) Arc<Delivered>);

impl PeerInfo {
    /// The peer of a new connection, which has been given nothing yet.
    pub fn new(peer: Result<PeerProcess, AttestError>) -> Self {
        Self(Arc::new(peer), Arc::default())
    }
}

/// A connection on the Workload API socket with its peer pinned at accept time. The gRPC server
/// reads it through a [`Filter`] (which lets gRPC C-core clients such as py-spiffe in) and writes
/// straight to the socket. The filter runs inside `poll_read`, in the connection's own task: no
/// task or pipe of its own, so a request costs no extra wake-up, and whatever ends the connection
/// (a clean close, a bad frame, a client that never sends a request) drops the socket, the pidfd and
/// the connection's slot together.
pub struct WorkloadConn {
    stream: UnixStream,
    peer: PeerInfo,
    filter: Filter,
    /// Bytes read but not yet filtered (at most one incomplete frame).
    input: Vec<u8>,
    /// Filtered bytes not yet handed to the server, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// Until the first complete request.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    state: Arc<AgentState>,
    _slot: ConnSlot,
}

/// How long a client has, once connected, to send its first complete request (the HTTP/2 preface
/// and one header block). A connection that sends nothing is closed then, instead of holding its
/// socket and pidfd for good.
pub const FIRST_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Bytes read from the socket at a time: one largest frame with its header.
const READ_CHUNK: usize = 9 + 16 * 1024;

impl WorkloadConn {
    /// Pins the peer of a freshly accepted connection; `slot` is held until the connection is
    /// dropped.
    pub fn new(stream: UnixStream, state: &Arc<AgentState>, slot: ConnSlot) -> Self {
        let peer = PeerProcess::of_socket(&stream, state.unix.proc_root());
        Self {
            stream,
            peer: PeerInfo::new(peer),
            filter: Filter::default(),
            input: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            deadline: Some(Box::pin(tokio::time::sleep(FIRST_REQUEST_TIMEOUT))),
            state: state.clone(),
            _slot: slot,
        }
    }
}

/// Serves gRPC over HTTP/2 on one Workload API connection, with its pinned peer attached to every
/// request, until the client closes it or the agent stops (then in-flight calls get
/// [`crate::SHUTDOWN_GRACE`] to finish).
///
/// Called on a connection thread ([`vouch_rt::ConnectionThreads`]): the connection, the tasks of
/// its HTTP/2 streams (spawned through the executor) and the tasks of its watch streams all run on
/// that one thread, so a call costs no cross-thread wake-up.
pub async fn serve_connection(
    conn: WorkloadConn,
    routes: tonic::service::Routes,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let peer = conn.peer.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        tower::ServiceExt::oneshot(routes.clone(), req)
    });
    let mut builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        // Stated, not left to defaults: the header filter in front bounds header lists to what the
        // server advertises here.
        .max_header_list_size(crate::h2_authority_filter::MAX_HEADER_LIST as u32)
        // A SPIFFE client holds a few streams per connection (one per watched stream, one per
        // call); without a bound one connection can open streams until the agent runs out of
        // memory (about 9 KB each, found by a review).
        .max_concurrent_streams(crate::MAX_STREAMS_PER_CONNECTION);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(conn), service);
    tokio::pin!(conn);
    if !*stopping.borrow() {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "workload connection ended with an error");
                }
                return;
            }
            _ = stopping.changed() => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(crate::SHUTDOWN_GRACE, conn).await;
}

impl AsyncRead for WorkloadConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.filter.request_seen() {
                this.deadline = None;
            } else if let Some(deadline) = &mut this.deadline {
                if std::future::Future::poll(deadline.as_mut(), cx).is_ready() {
                    this.state.metrics.refused(Refusal::SlowRequest);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete first request in time",
                    )));
                }
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The client closed its side; an incomplete frame goes with it.
                return Poll::Ready(Ok(()));
            }
            this.input.extend_from_slice(read.filled());
            this.filter.feed(&mut this.input, &mut this.out).inspect_err(|e| {
                tracing::debug!(error = %e, "workload connection dropped");
            })?;
        }
    }
}

impl AsyncWrite for WorkloadConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The Workload API service.
pub struct WorkloadApi {
    state: Arc<AgentState>,
    /// Becomes true when the agent stops: open streams end then, so that shutdown is not held up
    /// by workloads that never hang up.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl WorkloadApi {
    /// The service over `state`; its streams end when `stopping` becomes true.
    pub fn new(state: Arc<AgentState>, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { state, stopping }
    }
}

fn check_header<T>(state: &AgentState, req: &Request<T>) -> Result<(), WorkloadError> {
    match req.metadata().get(vouch_proto::SECURITY_HEADER).and_then(|v| v.to_str().ok()) {
        Some("true") => Ok(()),
        _ => {
            state.metrics.refused(Refusal::MissingHeader);
            Err(WorkloadError::MissingHeader)
        }
    }
}

fn peer_of<T>(req: &Request<T>) -> PeerInfo {
    req.extensions().get::<PeerInfo>().cloned().unwrap_or_else(|| {
        PeerInfo::new(Err(AttestError::Peer("no peer information on the connection".into())))
    })
}

/// Attests the caller and returns the entries it is entitled to; `NoIdentity` otherwise, and
/// `NotYetSynced` while the agent cannot know.
pub(crate) async fn entitled(
    state: &AgentState,
    peer: &PeerInfo,
    now: SystemTime,
) -> Result<Vec<Entry>, WorkloadError> {
    entitled_with(state, peer, now).await.map(|(entries, _)| entries)
}

/// [`entitled`], with what attestation learned about the caller.
async fn entitled_with(
    state: &AgentState,
    peer: &PeerInfo,
    now: SystemTime,
) -> Result<(Vec<Entry>, Attestation), WorkloadError> {
    let pinned = match &*peer.0 {
        Ok(p) => p,
        Err(e) => {
            state.metrics.refused(Refusal::PeerUnknown);
            tracing::info!(target: "vouch::audit", event = "workload.attest.failed", reason = %e);
            return Err(WorkloadError::NoIdentity);
        }
    };
    // Before attestation: an agent that has not synced cannot refuse anyone, only ask them to wait.
    if !state.registry.synced() {
        return Err(WorkloadError::NotYetSynced);
    }
    let hash = if state.registry.uses_exe_hash() { ExeHash::Compute } else { ExeHash::Skip };
    let attestation = attest_full(pinned, &state.unix, &state.runtime, hash).await.map_err(|e| {
        state.metrics.refused(Refusal::of(&e));
        if let AttestError::HashBusy(_) = e {
            // Not a decision about the caller, and as cheap to repeat as a call: counted, not
            // logged per call.
            return WorkloadError::HashBusy;
        }
        tracing::info!(target: "vouch::audit", event = "workload.attest.failed", pid = pinned.pid, reason = %e);
        WorkloadError::NoIdentity
    })?;
    let entries = state.registry.matching(&attestation.selectors, now);
    if entries.is_empty() {
        state.metrics.refused(Refusal::NoMatch);
        tracing::info!(target: "vouch::audit", event = "workload.no_identity", pid = pinned.pid, selectors = attestation.selectors.len());
        return Err(WorkloadError::NoIdentity);
    }
    Ok((entries, attestation))
}

fn concat(ders: &[Vec<u8>]) -> Vec<u8> {
    ders.concat()
}

fn td_key(state: &AgentState) -> String {
    state.config.trust_domain.id().to_string()
}

/// The bundles of the trust domains the caller's entries federate with (and that the server has a
/// bundle for), by trust domain: a workload gets no other trust domain's bundle.
fn federated_for(state: &AgentState, entries: &[Entry]) -> Vec<Bundle> {
    let all = state.registry.federated();
    let wanted: BTreeSet<&TrustDomain> = entries.iter().flat_map(|e| &e.federates_with).collect();
    wanted.into_iter().filter_map(|td| all.get(td).cloned()).collect()
}

/// A bundle's JWT authorities alone, as a SPIFFE bundle JWKS (what FetchJWTBundles carries).
fn jwt_jwks(bundle: &Bundle) -> Result<Vec<u8>, WorkloadError> {
    let mut jwt_only = bundle.clone();
    jwt_only.x509_authorities.clear();
    jwt_only
        .to_jwks()
        .map(String::into_bytes)
        .map_err(|_| WorkloadError::Internal("cannot encode the JWT bundle"))
}

async fn x509_response(state: &AgentState, peer: &PeerInfo) -> Result<X509svidResponse, Status> {
    let now = crate::clock::now();
    let (entries, attestation) = entitled_with(state, peer, now).await?;
    let svids = state
        .x509_svids(&entries, now)
        .await
        .map_err(|error| WorkloadError::Server { what: "an X509-SVID", error })?;
    let workload = Workload::of(&attestation);
    for s in &svids {
        let handed = Handed {
            spiffe_id: &s.spiffe_id,
            kind: SvidKind::X509,
            svid_id: &s.serial,
            not_before: s.not_before,
            not_after: s.not_after,
        };
        state.deliveries.record(&peer.1, &workload, handed, now);
    }
    let bundle = concat(&state.registry.bundle().x509_authorities);
    Ok(X509svidResponse {
        svids: svids
            .iter()
            .map(|s| X509svid {
                spiffe_id: s.spiffe_id.to_string(),
                x509_svid: concat(&s.chain_der),
                x509_svid_key: s.key_der.to_vec(),
                bundle: bundle.clone(),
                hint: s.hint.clone(),
            })
            .collect(),
        crl: Vec::new(),
        federated_bundles: federated_for(state, &entries)
            .iter()
            .map(|b| (b.trust_domain.id().to_string(), concat(&b.x509_authorities)))
            .collect(),
    })
}

async fn x509_bundles_response(state: &AgentState, peer: &PeerInfo) -> Result<X509BundlesResponse, Status> {
    let entries = entitled(state, peer, crate::clock::now()).await?;
    let mut bundles = HashMap::from([(td_key(state), concat(&state.registry.bundle().x509_authorities))]);
    for b in federated_for(state, &entries) {
        bundles.insert(b.trust_domain.id().to_string(), concat(&b.x509_authorities));
    }
    Ok(X509BundlesResponse { crl: Vec::new(), bundles })
}

async fn jwt_bundles_response(state: &AgentState, peer: &PeerInfo) -> Result<JwtBundlesResponse, Status> {
    let entries = entitled(state, peer, crate::clock::now()).await?;
    let mut bundles = HashMap::from([(td_key(state), jwt_jwks(&state.registry.bundle())?)]);
    for b in federated_for(state, &entries) {
        bundles.insert(b.trust_domain.id().to_string(), jwt_jwks(&b)?);
    }
    Ok(JwtBundlesResponse { bundles })
}

/// Opens a full-state stream: the header checked, the first answer built (and timed, as the RPC's
/// latency), then a new answer whenever the agent state changes.
async fn open_stream<Req, T, F, Fut>(
    api: &WorkloadApi,
    rpc: Rpc,
    req: &Request<Req>,
    build: F,
) -> Result<Response<StreamOf<T>>, Status>
where
    T: PartialEq + Clone + Send + 'static,
    F: Fn(Arc<AgentState>, PeerInfo) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, Status>> + Send,
{
    let state = &api.state;
    let _timer = RpcTimer::start(&state.metrics, rpc);
    check_header(state, req)?;
    let peer = peer_of(req);
    // Subscribed before the first answer, so no change can fall between the two.
    let changes = state.registry.watch();
    let first = build(state.clone(), peer.clone()).await?;
    let watch = Watch { state: state.clone(), peer, changes, stopping: api.stopping.clone() };
    Ok(Response::new(watch_stream(watch, first, build)))
}

/// What a full-state stream follows: the caller, the agent's changes, and its stopping.
struct Watch {
    state: Arc<AgentState>,
    peer: PeerInfo,
    /// Subscribed before the first answer was built, so that no change falls between the two.
    changes: tokio::sync::watch::Receiver<u64>,
    stopping: tokio::sync::watch::Receiver<bool>,
}

type StreamOf<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A stream that sends `first`, then `build()`'s answer again whenever the agent state changes and
/// the answer differs; an error answer ends the stream, and so does the agent stopping.
fn watch_stream<T, F, Fut>(watch: Watch, first: T, build: F) -> StreamOf<T>
where
    T: PartialEq + Clone + Send + 'static,
    F: Fn(Arc<AgentState>, PeerInfo) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, Status>> + Send,
{
    let Watch { state, peer, mut changes, mut stopping } = watch;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        if tx.send(Ok(first.clone())).await.is_err() {
            return;
        }
        let mut last = first;
        loop {
            if *stopping.borrow() {
                break;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = stopping.changed() => break,
                _ = tx.closed() => break,
            }
            match build(state.clone(), peer.clone()).await {
                Ok(next) if next == last => {}
                Ok(next) => {
                    if tx.send(Ok(next.clone())).await.is_err() {
                        break;
                    }
                    last = next;
                }
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    break;
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = StreamOf<X509svidResponse>;
    type FetchX509BundlesStream = StreamOf<X509BundlesResponse>;
    type FetchJWTBundlesStream = StreamOf<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        open_stream(self, Rpc::FetchX509Svid, &req, |s, p| async move { x509_response(&s, &p).await }).await
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        open_stream(
            self,
            Rpc::FetchX509Bundles,
            &req,
            |s, p| async move { x509_bundles_response(&s, &p).await },
        )
        .await
    }

    async fn fetch_jwtsvid(&self, req: Request<JwtsvidRequest>) -> Result<Response<JwtsvidResponse>, Status> {
        let _timer = RpcTimer::start(&self.state.metrics, Rpc::FetchJwtSvid);
        check_header(&self.state, &req)?;
        let peer = peer_of(&req);
        let body = req.into_inner();
        // The server would refuse the same; answered here without a round trip, as the caller's
        // mistake (a SPIFFE client retries UNAVAILABLE forever).
        vouch_core::jwt::check_audiences(&body.audience)
            .map_err(|e| WorkloadError::BadRequest(e.to_string()))?;
        let wanted = match body.spiffe_id.as_str() {
            "" => None,
            id => Some(SpiffeId::parse(id).map_err(|e| {
                WorkloadError::BadRequest(format!(
                    "spiffe_id `{}`: {e}",
                    id.chars().take(256).collect::<String>()
                ))
            })?),
        };
        let now = crate::clock::now();
        let (mut entries, attestation) = entitled_with(&self.state, &peer, now).await?;
        if let Some(wanted) = wanted {
            entries.retain(|e| e.spiffe_id == wanted);
            if entries.is_empty() {
                self.state.metrics.refused(Refusal::NoMatch);
                return Err(WorkloadError::NoIdentity.into());
            }
        }
        let mut svids = Vec::with_capacity(entries.len());
        let workload = Workload::of(&attestation);
        for e in &entries {
            let token = self
                .state
                .jwt(e, &body.audience, now)
                .await
                .map_err(|error| WorkloadError::Server { what: "a JWT-SVID", error })?;
            if let Some((jti, iat, exp)) = jwt_facts(&token) {
                let handed = Handed {
                    spiffe_id: &e.spiffe_id,
                    kind: SvidKind::Jwt,
                    svid_id: &jti,
                    not_before: vouch_core::ttl::from_unix_seconds(iat),
                    not_after: vouch_core::ttl::from_unix_seconds(exp),
                };
                self.state.deliveries.record(&peer.1, &workload, handed, now);
            }
            svids.push(Jwtsvid { spiffe_id: e.spiffe_id.to_string(), svid: token, hint: e.hint.clone() });
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        open_stream(
            self,
            Rpc::FetchJwtBundles,
            &req,
            |s, p| async move { jwt_bundles_response(&s, &p).await },
        )
        .await
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let _timer = RpcTimer::start(&self.state.metrics, Rpc::ValidateJwtSvid);
        check_header(&self.state, &req)?;
        let peer = peer_of(&req);
        let body = req.into_inner();
        if body.audience.is_empty() {
            return Err(WorkloadError::BadRequest("audience must be specified".into()).into());
        }
        if body.svid.is_empty() {
            return Err(WorkloadError::BadRequest("svid must be specified".into()).into());
        }
        // Only workloads with an identity may use the agent as a validator, as SPIRE's agent
        // requires: an anonymous process could otherwise probe tokens through it.
        let entries = entitled(&self.state, &peer, crate::clock::now()).await?;
        // The token's trust domain (from its unverified `sub`, only to choose the keys): this one,
        // or one the caller's entries federate with; any other is refused before any key is tried.
        let own = self.state.registry.bundle();
        let bundle = match token_trust_domain(&body.svid) {
            Some(td) if td == own.trust_domain => own,
            Some(td) => match federated_for(&self.state, &entries).into_iter().find(|b| b.trust_domain == td) {
                Some(b) => Arc::new(b),
                None => {
                    return Err(WorkloadError::InvalidToken(format!(
                        "the token's trust domain `{td}` is neither `{}` nor one the caller's entries federate with",
                        own.trust_domain
                    ))
                    .into())
                }
            },
            None => own,
        };
        let claims = vouch_ca::jwt::validate(
            &body.svid,
            &bundle.jwt_authorities,
            &bundle.trust_domain,
            &body.audience,
            crate::clock::now(),
        )
        .map_err(|e| WorkloadError::InvalidToken(e.to_string()))?;
        // Every claim of the (now verified) payload, SPIFFE-required or not.
        let payload = body.svid.split('.').nth(1).unwrap_or_default();
        let json: serde_json::Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let fields = match json {
            serde_json::Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), to_prost(v))).collect(),
            _ => BTreeMap::new(),
        };
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: claims.sub.to_string(),
            claims: Some(prost_types::Struct { fields }),
        }))
    }
}

/// The trust domain of a compact JWS's `sub` claim, read without verifying anything: it only
/// chooses whose keys verify the token (which then checks `sub` against that trust domain).
fn token_trust_domain(token: &str) -> Option<TrustDomain> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    SpiffeId::parse(claims.get("sub")?.as_str()?).ok().map(|id| id.trust_domain().clone())
}

fn to_prost(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => {
            Kind::ListValue(prost_types::ListValue { values: a.iter().map(to_prost).collect() })
        }
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), to_prost(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}
