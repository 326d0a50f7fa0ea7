//! Typed calls of the server's API: every request and answer is a `vouch-api` type, so the compiler
//! checks each message the CLI, the agent, the tests and the benchmarks exchange with the server.

use serde::de::DeserializeOwned;
use serde::Serialize;
use vouch_api::admin::{
    AgentList, AgentRef, AuthorityKeys, Banned, BatchCreateRequest, EntryList, EntryPatch, EntryQuery,
    Evicted, GroupInfo, GroupList, JoinTokenRequest, JoinTokenResponse, JwtSvidClaims, MintJwtRequest,
    MintJwtResponse, MintX509Request, MintX509Response, ValidateJwtRequest,
};
use vouch_api::agent::{
    AgentJwtRequest, AgentJwtResponse, AgentSvid, JoinTokenAttestation, PsatAttestation, RenewRequest,
    SignRequest, SignResponse, SyncLine, X509PopAttestation, X509PopChallenge, X509PopChallengeRequest,
};
use vouch_api::federation::{Relationship, RelationshipList, RelationshipPatch, RelationshipSpec};
use vouch_api::policy::{
    AccessRequest, AuthorizeResponse, PolicyHistory, PolicyInfo, PolicyList, PolicyPut, PolicyTest,
    ValidationReport,
};
use vouch_api::secrets::{
    AgentSecretRequest, AgentSecretResponse, SecretList, SecretPut, SecretValue, SecretVersions,
    SecretWritten, VersionsChanged, VersionsRequest,
};
use vouch_api::{paths, Entry, EntrySpec, NodeGroup, NodeGroupSpec, SpiffeId};

use crate::client::{api_error, api_error_after, decode, json_bytes, LineStream};
use crate::{AdminClient, ClientError, Connection};

impl AdminClient {
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.request_answer("GET", path, None).await?.decode()
    }

    async fn send_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.request_answer(method, path, Some(json_bytes(body)?)).await?.decode()
    }

    async fn text(&self, path: &str) -> Result<String, ClientError> {
        let (status, bytes) = self.request_bytes("GET", path, None).await?;
        if !(200..300).contains(&status) {
            return Err(api_error(status, &bytes));
        }
        String::from_utf8(bytes.to_vec())
            .map_err(|_| ClientError::Protocol(format!("{path}: the answer is not UTF-8")))
    }

    /// `GET /readyz`: `Ok(true)` when ready, `Ok(false)` with the reason when not.
    pub async fn ready(&self) -> Result<(bool, String), ClientError> {
        let (status, bytes) = self.request_bytes("GET", paths::READYZ, None).await?;
        Ok((status == 200, String::from_utf8_lossy(&bytes).trim().to_owned()))
    }

    /// The trust bundle's certificates, PEM.
    pub async fn bundle_pem(&self) -> Result<String, ClientError> {
        self.text(&format!("{}?format=pem", paths::BUNDLE)).await
    }

    /// The trust bundle as a SPIFFE bundle JWKS (the text as served).
    pub async fn bundle_jwks(&self) -> Result<String, ClientError> {
        self.text(&format!("{}?format=jwks", paths::BUNDLE)).await
    }

    /// The authority's keys and their states.
    pub async fn authority_keys(&self) -> Result<AuthorityKeys, ClientError> {
        self.get(paths::AUTHORITY_KEYS).await
    }

    /// Publishes a successor root now (it takes over on the usual schedule); the keys after.
    pub async fn prepare_root(&self) -> Result<AuthorityKeys, ClientError> {
        self.request_answer("POST", paths::AUTHORITY_PREPARE_ROOT, None).await?.decode()
    }

    /// The entry operations.
    pub fn entries(&self) -> Entries<'_> {
        Entries { client: self }
    }

    /// The node group operations.
    pub fn groups(&self) -> Groups<'_> {
        Groups { client: self }
    }

    /// The policy operations.
    pub fn policies(&self) -> Policies<'_> {
        Policies { client: self }
    }

    /// `POST /v1/authorize`: may this workload do this action to this resource? (An admin asks
    /// about any workload, an agent about the workloads it serves.)
    pub async fn authorize(&self, req: &AccessRequest) -> Result<AuthorizeResponse, ClientError> {
        self.send_json("POST", paths::AUTHORIZE, req).await
    }

    /// The federation relationship operations.
    pub fn federation(&self) -> Federations<'_> {
        Federations { client: self }
    }

    /// Short-lived database credentials and their leases.
    pub fn db(&self) -> Db<'_> {
        Db { client: self }
    }

    /// The tamper-evident audit log.
    pub fn audit(&self) -> Audit<'_> {
        Audit { client: self }
    }

    /// The secret store's operations.
    pub fn secrets(&self) -> Secrets<'_> {
        Secrets { client: self }
    }

    /// Creates a single-use join token.
    pub async fn create_join_token(&self, req: &JoinTokenRequest) -> Result<JoinTokenResponse, ClientError> {
        self.send_json("POST", paths::JOIN_TOKENS, req).await
    }

    /// Mints an X509-SVID (admin).
    pub async fn mint_x509(&self, req: &MintX509Request) -> Result<MintX509Response, ClientError> {
        self.send_json("POST", paths::MINT_X509, req).await
    }

    /// Mints a JWT-SVID (admin).
    pub async fn mint_jwt(&self, req: &MintJwtRequest) -> Result<MintJwtResponse, ClientError> {
        self.send_json("POST", paths::MINT_JWT, req).await
    }

    /// Validates a JWT-SVID.
    pub async fn validate_jwt(&self, req: &ValidateJwtRequest) -> Result<JwtSvidClaims, ClientError> {
        self.send_json("POST", paths::VALIDATE_JWT, req).await
    }

    /// The agents known to the server.
    pub async fn agents(&self) -> Result<AgentList, ClientError> {
        self.get(paths::AGENTS).await
    }

    /// Evicts an agent: it must attest again.
    pub async fn evict_agent(&self, id: &SpiffeId) -> Result<Evicted, ClientError> {
        self.send_json("POST", paths::AGENTS_EVICT, &AgentRef { spiffe_id: id.clone() }).await
    }

    /// Bans an agent: it may not attest again.
    pub async fn ban_agent(&self, id: &SpiffeId) -> Result<Banned, ClientError> {
        self.send_json("POST", paths::AGENTS_BAN, &AgentRef { spiffe_id: id.clone() }).await
    }

    /// Node attestation with a join token.
    pub async fn attest_join_token(&self, req: &JoinTokenAttestation) -> Result<AgentSvid, ClientError> {
        self.send_json("POST", paths::ATTEST_JOIN_TOKEN, req).await
    }

    /// Node attestation with a Kubernetes projected service-account token.
    pub async fn attest_k8s_psat(&self, req: &PsatAttestation) -> Result<AgentSvid, ClientError> {
        self.send_json("POST", paths::ATTEST_K8S_PSAT, req).await
    }

    /// x509pop: a challenge for a node certificate.
    pub async fn x509pop_challenge(
        &self,
        req: &X509PopChallengeRequest,
    ) -> Result<X509PopChallenge, ClientError> {
        self.send_json("POST", paths::ATTEST_X509POP_CHALLENGE, req).await
    }

    /// x509pop: the signed challenge.
    pub async fn attest_x509pop(&self, req: &X509PopAttestation) -> Result<AgentSvid, ClientError> {
        self.send_json("POST", paths::ATTEST_X509POP, req).await
    }

    /// A new agent SVID (caller: an attested agent).
    pub async fn renew(&self, req: &RenewRequest) -> Result<AgentSvid, ClientError> {
        self.send_json("POST", paths::AGENT_RENEW, req).await
    }

    /// X509-SVIDs for a batch of CSRs; each item answers on its own.
    pub async fn sign(&self, req: &SignRequest) -> Result<SignResponse, ClientError> {
        let resp: SignResponse = self.send_json("POST", paths::AGENT_SIGN, req).await?;
        if resp.results.len() != req.requests.len() {
            return Err(ClientError::Protocol(format!(
                "the server answered {} results to {} signing requests",
                resp.results.len(),
                req.requests.len()
            )));
        }
        Ok(resp)
    }

    /// Reports what the calling agent's Workload API delivered to which workload (a batch).
    pub async fn report_delivered(
        &self,
        req: &vouch_api::agent::DeliveryReport,
    ) -> Result<vouch_api::agent::DeliveryAccepted, ClientError> {
        self.send_json("POST", paths::AGENT_DELIVERED, req).await
    }

    /// A JWT-SVID for an entry of the calling agent.
    pub async fn agent_jwt(&self, req: &AgentJwtRequest) -> Result<AgentJwtResponse, ClientError> {
        self.send_json("POST", paths::AGENT_JWT, req).await
    }

    /// A secret read for a workload of the calling agent, named by its entry.
    pub async fn agent_secret(&self, req: &AgentSecretRequest) -> Result<AgentSecretResponse, ClientError> {
        self.send_json("POST", paths::AGENT_SECRET, req).await
    }

    /// `POST /v1/agent/db/creds`: database credentials for a workload the agent attested.
    pub async fn agent_db_creds(
        &self,
        req: &vouch_api::db::AgentDbCredsRequest,
    ) -> Result<vouch_api::db::DbCreds, ClientError> {
        self.send_json("POST", paths::AGENT_DB_CREDS, req).await
    }

    /// A watch of a secret for a workload of the calling agent (`req.known_version` set): the
    /// latest live version once it is another than the known one, or `None` when the server's
    /// wait ([`vouch_api::secrets::WATCH_WAIT_SECS`]) ended without a change (ask again).
    pub async fn agent_secret_watch(
        &self,
        req: &AgentSecretRequest,
    ) -> Result<Option<AgentSecretResponse>, ClientError> {
        let answer = self.request_answer("POST", paths::AGENT_SECRET, Some(json_bytes(req)?)).await?;
        if answer.status == 204 {
            return Ok(None);
        }
        answer.decode().map(Some)
    }

    /// Opens the sync stream: a snapshot, then changes as they happen.
    /// Opening is bounded by the client's timeout (a server that accepts but never answers is an
    /// error, not a hang); the stream itself lives as long as the server keeps it (it pings).
    pub async fn sync(&self) -> Result<SyncStream, ClientError> {
        self.sync_with(false).await
    }

    /// [`AdminClient::sync`], with the policy set (`?policies=true`) when `policies` is set. A
    /// server that predates policies ignores the query and sends none.
    pub async fn sync_with(&self, policies: bool) -> Result<SyncStream, ClientError> {
        let path = if policies {
            format!("{}?policies=true", paths::AGENT_SYNC)
        } else {
            paths::AGENT_SYNC.to_owned()
        };
        let open = async {
            let mut conn = self.connect_unbounded().await?;
            let (status, mut lines) = conn.stream("GET", &path).await?;
            if status != 200 {
                // The error body is short; read it whole (bounded by the line reader's limit).
                let mut body = String::new();
                while let Some(Ok(l)) = lines.next_line().await {
                    body.push_str(&l);
                }
                return Err(api_error_after(status, lines.retry_after, body.as_bytes()));
            }
            Ok(SyncStream { _conn: conn, lines })
        };
        tokio::time::timeout(self.timeout(), open).await.map_err(|_| self.timed_out())?
    }
}

/// The agent's sync stream.
pub struct SyncStream {
    /// Kept so the connection lives as long as the stream.
    _conn: Connection,
    lines: LineStream,
}

impl SyncStream {
    /// The same stream, failing [`SyncStream::next`] when nothing at all arrives for `limit` (the
    /// server pings, so silence means it or the path to it is gone even if the connection is
    /// still open).
    pub fn with_idle_limit(mut self, limit: std::time::Duration) -> Self {
        self.lines.idle = Some(limit);
        self
    }

    /// The next line; `None` when the server ends the stream. A line that is not a valid
    /// [`SyncLine`] is an error (the caller reconnects), never skipped.
    pub async fn next(&mut self) -> Option<Result<SyncLine<'static>, ClientError>> {
        let line = match self.lines.next_line().await? {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        Some(serde_json::from_str(&line).map_err(|e| ClientError::Protocol(format!("sync line: {e}"))))
    }
}

/// Entry operations of the admin API.
pub struct Entries<'a> {
    client: &'a AdminClient,
}

impl Entries<'_> {
    /// Creates an entry.
    pub async fn create(&self, spec: &EntrySpec) -> Result<Entry, ClientError> {
        self.client.send_json("POST", paths::ENTRIES, spec).await
    }

    /// Creates 1 to 1000 entries in one transaction: all or none.
    pub async fn create_batch(&self, req: &BatchCreateRequest) -> Result<EntryList, ClientError> {
        self.client.send_json("POST", paths::ENTRIES_BATCH, req).await
    }

    /// Lists entries.
    pub async fn list(&self, q: &EntryQuery) -> Result<EntryList, ClientError> {
        let path = paths::with_query(
            paths::ENTRIES,
            &[
                ("spiffe_id", q.spiffe_id.as_deref()),
                ("parent_id", q.parent_id.as_deref()),
                ("selector", q.selector.as_deref()),
                ("namespace", q.namespace.as_deref()),
            ],
        );
        self.client.get(&path).await
    }

    /// One entry.
    pub async fn get(&self, id: &str) -> Result<Entry, ClientError> {
        self.client.get(&paths::entry(id)).await
    }

    /// Changes the fields the patch names, if the entry is still at `patch.expected_revision`; a
    /// concurrent change is a 409 `revision_conflict` and changes nothing.
    pub async fn update(&self, id: &str, patch: &EntryPatch) -> Result<Entry, ClientError> {
        self.client.send_json("PATCH", &paths::entry(id), patch).await
    }

    /// Replaces every settable field of the entry.
    pub async fn replace(&self, id: &str, spec: &EntrySpec) -> Result<Entry, ClientError> {
        self.client.send_json("PUT", &paths::entry(id), spec).await
    }

    /// Deletes an entry; answers what it was.
    pub async fn delete(&self, id: &str) -> Result<Entry, ClientError> {
        let (status, bytes) = self.client.request_bytes("DELETE", &paths::entry(id), None).await?;
        decode(status, &bytes)
    }
}

/// Node group operations of the admin API.
pub struct Groups<'a> {
    client: &'a AdminClient,
}

impl Groups<'_> {
    /// Creates a node group; answers it with its current members.
    pub async fn create(&self, spec: &NodeGroupSpec) -> Result<GroupInfo, ClientError> {
        self.client.send_json("POST", paths::GROUPS, spec).await
    }

    /// Every node group with its members.
    pub async fn list(&self) -> Result<GroupList, ClientError> {
        self.client.get(paths::GROUPS).await
    }

    /// One node group by name (the last segment of its SPIFFE ID).
    pub async fn get(&self, name: &str) -> Result<GroupInfo, ClientError> {
        self.client.get(&paths::group(name)).await
    }

    /// Deletes a node group; refused (409) while entries are parented to it.
    pub async fn delete(&self, name: &str) -> Result<NodeGroup, ClientError> {
        let (status, bytes) = self.client.request_bytes("DELETE", &paths::group(name), None).await?;
        decode(status, &bytes)
    }
}

/// Federation relationships with other trust domains (`/v1/federation`).
pub struct Federations<'a> {
    client: &'a AdminClient,
}

impl Federations<'_> {
    /// Creates a relationship; answers it with its refresh state.
    pub async fn create(&self, spec: &RelationshipSpec) -> Result<Relationship, ClientError> {
        self.client.send_json("POST", paths::FEDERATION, spec).await
    }

    /// Every relationship.
    pub async fn list(&self) -> Result<RelationshipList, ClientError> {
        self.client.get(paths::FEDERATION).await
    }

    /// One relationship by trust domain.
    pub async fn get(&self, trust_domain: &str) -> Result<Relationship, ClientError> {
        self.client.get(&paths::federation(trust_domain)).await
    }

    /// Changes the given fields of a relationship.
    pub async fn update(
        &self,
        trust_domain: &str,
        patch: &RelationshipPatch,
    ) -> Result<Relationship, ClientError> {
        self.client.send_json("PATCH", &paths::federation(trust_domain), patch).await
    }

    /// Deletes a relationship; answers it as it was.
    pub async fn delete(&self, trust_domain: &str) -> Result<Relationship, ClientError> {
        let (status, bytes) =
            self.client.request_bytes("DELETE", &paths::federation(trust_domain), None).await?;
        decode(status, &bytes)
    }
}

/// The secret store (`/v1/secrets`).
pub struct Secrets<'a> {
    client: &'a AdminClient,
}

impl Secrets<'_> {
    /// Writes a new version of the secret at `path` (see [`SecretPut`]).
    pub async fn put(&self, path: &str, put: &SecretPut) -> Result<SecretWritten, ClientError> {
        self.client.send_json("PUT", &paths::secret(path, None), put).await
    }

    /// Reads a version's value (the latest live one when `version` is `None`).
    pub async fn get(&self, path: &str, version: Option<u64>) -> Result<SecretValue, ClientError> {
        let version = version.map(|v| v.to_string());
        self.client
            .get(&paths::with_query(&paths::secret(path, None), &[("version", version.as_deref())]))
            .await
    }

    /// Every secret's metadata, at or under `prefix` if given.
    pub async fn list(&self, prefix: Option<&str>) -> Result<SecretList, ClientError> {
        self.client.get(&paths::with_query(paths::SECRETS, &[("prefix", prefix)])).await
    }

    /// A secret's metadata and versions.
    pub async fn versions(&self, path: &str) -> Result<SecretVersions, ClientError> {
        self.client.get(&paths::secret(path, Some("versions"))).await
    }

    /// Soft-deletes versions (the latest when `versions` is empty).
    pub async fn delete(&self, path: &str, versions: &[u64]) -> Result<VersionsChanged, ClientError> {
        self.change(path, "delete", versions).await
    }

    /// Undoes soft deletes.
    pub async fn undelete(&self, path: &str, versions: &[u64]) -> Result<VersionsChanged, ClientError> {
        self.change(path, "undelete", versions).await
    }

    /// Destroys versions: their sealed values are removed for good.
    pub async fn destroy(&self, path: &str, versions: &[u64]) -> Result<VersionsChanged, ClientError> {
        self.change(path, "destroy", versions).await
    }

    async fn change(&self, path: &str, what: &str, versions: &[u64]) -> Result<VersionsChanged, ClientError> {
        let req = VersionsRequest { versions: versions.to_vec() };
        self.client.send_json("POST", &paths::secret(path, Some(what)), &req).await
    }
}

/// Grants as Cedar policies (`/v1/policies`).
pub struct Policies<'a> {
    client: &'a AdminClient,
}

impl Policies<'_> {
    /// Writes a new version of policy `id`, in `namespace` (when `None`: where the policy is, or
    /// `default` for a new one).
    pub async fn put(
        &self,
        id: &str,
        text: &str,
        namespace: Option<&vouch_core::Namespace>,
    ) -> Result<PolicyInfo, ClientError> {
        let body = PolicyPut { text: text.to_owned(), namespace: namespace.cloned() };
        self.client.send_json("PUT", &paths::policy(id), &body).await
    }

    /// The current version of every policy.
    pub async fn list(&self) -> Result<PolicyList, ClientError> {
        self.client.get(paths::POLICIES).await
    }

    /// A policy's current version and history.
    pub async fn get(&self, id: &str) -> Result<PolicyHistory, ClientError> {
        self.client.get(&paths::policy(id)).await
    }

    /// Deletes a policy; answers the deletion's version.
    pub async fn delete(&self, id: &str) -> Result<PolicyInfo, ClientError> {
        let (status, bytes) = self.client.request_bytes("DELETE", &paths::policy(id), None).await?;
        decode(status, &bytes)
    }

    /// Checks a policy against the schema without storing it.
    pub async fn validate(&self, text: &str) -> Result<ValidationReport, ClientError> {
        self.client
            .send_json(
                "POST",
                paths::POLICIES_VALIDATE,
                &PolicyPut { text: text.to_owned(), namespace: None },
            )
            .await
    }

    /// Decides a what-if request without storing anything.
    pub async fn test(&self, test: &PolicyTest) -> Result<AuthorizeResponse, ClientError> {
        self.client.send_json("POST", paths::POLICIES_TEST, test).await
    }
}

/// The audit log (`/v1/audit`).
pub struct Audit<'a> {
    client: &'a AdminClient,
}

impl Audit<'_> {
    /// One page of records passing the search's filters.
    pub async fn search(
        &self,
        q: &vouch_api::audit::AuditSearch,
    ) -> Result<vouch_api::audit::AuditPage, ClientError> {
        let (after, limit) = (q.after.map(|a| a.to_string()), q.limit.map(|l| l.to_string()));
        let path = paths::with_query(
            paths::AUDIT_RECORDS,
            &[
                ("spiffe_id", q.spiffe_id.as_deref()),
                ("node", q.node.as_deref()),
                ("event", q.event.as_deref()),
                ("since", q.since.as_deref()),
                ("until", q.until.as_deref()),
                ("after", after.as_deref()),
                ("limit", limit.as_deref()),
            ],
        );
        self.client.get(&path).await
    }

    /// Every signed checkpoint.
    pub async fn checkpoints(&self) -> Result<vouch_api::audit::AuditCheckpointList, ClientError> {
        self.client.get(paths::AUDIT_CHECKPOINTS).await
    }

    /// The public keys that sign checkpoints.
    pub async fn keys(&self) -> Result<vouch_api::audit::AuditKeyList, ClientError> {
        self.client.get(paths::AUDIT_KEYS).await
    }

    /// The server's walk of its own log.
    pub async fn verify(&self) -> Result<vouch_api::audit::AuditVerifyReport, ClientError> {
        self.client.get(paths::AUDIT_VERIFY).await
    }

    /// Forensics: the workloads that held a SPIFFE ID at a time or over a range.
    pub async fn who(
        &self,
        q: &vouch_api::audit::WhoQuery,
    ) -> Result<vouch_api::audit::WhoAnswer, ClientError> {
        let path = paths::with_query(
            paths::AUDIT_WHO,
            &[
                ("spiffe_id", Some(q.spiffe_id.as_str())),
                ("at", q.at.as_deref()),
                ("from", q.from.as_deref()),
                ("to", q.to.as_deref()),
            ],
        );
        self.client.get(&path).await
    }
}

/// Short-lived database credentials (`/v1/db`).
pub struct Db<'a> {
    client: &'a AdminClient,
}

impl Db<'_> {
    /// Issues credentials for `role` (`<connection>/<template>`); the answer holds the password.
    pub async fn creds(&self, role: &str, ttl: Option<u64>) -> Result<vouch_api::db::DbCreds, ClientError> {
        let req = vouch_api::db::DbCredsRequest { role: role.to_owned(), ttl };
        self.client.send_json("POST", paths::DB_CREDS, &req).await
    }

    /// Every lease.
    pub async fn leases(&self) -> Result<vouch_api::db::DbLeaseList, ClientError> {
        self.client.get(paths::DB_LEASES).await
    }

    /// Extends a lease (to `ttl` seconds from now, or the template's default; never past its max).
    pub async fn renew(&self, id: &str, ttl: Option<u64>) -> Result<vouch_api::db::DbLeaseView, ClientError> {
        self.client
            .send_json("POST", &paths::db_lease_renew(id), &vouch_api::db::DbRenewRequest { ttl })
            .await
    }

    /// Revokes a lease: its role's sessions are ended and the role is dropped.
    pub async fn revoke(&self, id: &str) -> Result<vouch_api::db::DbLeaseView, ClientError> {
        self.client.send_json("POST", &paths::db_lease_revoke(id), &serde_json::json!({})).await
    }
}
