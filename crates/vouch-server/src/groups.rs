//! Node groups (SPIRE's node aliases): the admin API under `/v1/groups`, and which parents an agent
//! serves.
//!
//! A group is a SPIFFE ID in the reserved namespace `/vouch/group/<name>` with a set of node
//! selectors. An agent belongs to every group whose selectors are a subset of the node selectors its
//! last attestation recorded, and serves the entries parented to its own ID and to each of those
//! groups: it receives them on its sync stream and may sign and mint for them. Membership is decided
//! from the stored agent record and the stored groups on every sign or JWT request, so a change takes
//! effect at once; open sync streams get a fresh snapshot when their agent's membership changes.
//!
//! A group with entries parented to it cannot be deleted (409, nothing changed): deleting it would
//! take their identities from every workload on every member node at once, which should be an
//! explicit decision about those entries. Entries may be parented to a group ID before the group
//! exists (as to an agent ID before the agent attests), so registrations can be applied in any order.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use vouch_api::admin::{GroupInfo, GroupList};
use vouch_api::paths;
use vouch_core::{Entry, GroupName, NodeGroup, NodeGroupSpec, Selectors, SpiffeId};
use vouch_store::{AgentRecord, EntryFilter, StoreError};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::{AppState, Event};

type AppResult<T> = Result<T, ApiError>;

/// The node group routes (the caller must be an admin; `crate::routes` attaches the check).
pub(crate) fn admin_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(paths::GROUPS, post(create_group).get(list_groups))
        .route(paths::GROUP, get(show_group).delete(delete_group))
}

/// The IDs of the groups among `groups` that an agent with node selectors `node` belongs to.
pub(crate) fn member_ids<'a>(
    groups: impl IntoIterator<Item = &'a NodeGroup>,
    node: &Selectors,
) -> BTreeSet<SpiffeId> {
    groups.into_iter().filter(|g| g.admits(node)).map(|g| g.spiffe_id.clone()).collect()
}

/// What an agent may serve: entries parented to its own ID or to a group it belongs to.
pub(crate) struct Served {
    /// The agent.
    pub agent: SpiffeId,
    /// Its node selectors, as its last attestation recorded them.
    pub node: Selectors,
    /// Every group (for the reason of a refusal).
    groups: Vec<NodeGroup>,
    /// The IDs of the groups it belongs to.
    pub members: BTreeSet<SpiffeId>,
}

impl Served {
    /// Reads the agent's record and the groups.
    pub async fn load(state: &AppState, agent: &SpiffeId) -> AppResult<Self> {
        let record = state
            .store
            .get_agent(agent)
            .await?
            .ok_or_else(|| ApiError::from(StoreError::AgentNotFound(agent.to_string())))?;
        Self::of(state, &record).await
    }

    /// The groups of an agent whose record was just read.
    pub async fn of(state: &AppState, record: &AgentRecord) -> AppResult<Self> {
        let groups = state.store.list_groups().await?;
        let members = member_ids(&groups, &record.selectors);
        Ok(Self { agent: record.spiffe_id.clone(), node: record.selectors.clone(), groups, members })
    }

    /// Whether entries parented to `parent` are the agent's to serve.
    pub fn serves(&self, parent: &SpiffeId) -> bool {
        parent == &self.agent || self.members.contains(parent)
    }

    /// Why an entry parented to `parent` is not the agent's, naming the missing node selectors when
    /// the parent is a group.
    pub fn refusal(&self, entry: &Entry) -> ApiError {
        let (id, parent, agent) = (&entry.id, &entry.parent_id, &self.agent);
        if !vouch_core::group::is_group_namespace(parent) {
            return ApiError::forbidden(format!(
                "entry `{id}` is not parented to `{agent}` or to a node group it belongs to (its parent is `{parent}`)"
            ));
        }
        match self.groups.iter().find(|g| &g.spiffe_id == parent) {
            Some(g) => {
                let missing: Vec<String> = g.selectors.missing_from(&self.node).map(ToString::to_string).collect();
                ApiError::forbidden(format!(
                    "entry `{id}` is not parented to `{agent}` or to a node group it belongs to: it is parented to node group `{parent}`, and the agent's node selectors lack {}",
                    missing.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
                ))
            }
            None => ApiError::forbidden(format!(
                "entry `{id}` is not parented to `{agent}` or to a node group it belongs to: it is parented to node group `{parent}`, which does not exist"
            )),
        }
    }
}

/// The entries parented to `agent` or to one of `groups`, ordered by id.
pub(crate) async fn served_entries(
    state: &AppState,
    agent: &SpiffeId,
    groups: &BTreeSet<SpiffeId>,
) -> AppResult<Vec<Entry>> {
    let mut entries = Vec::new();
    for parent in std::iter::once(agent).chain(groups) {
        let filter = EntryFilter { parent_id: Some(parent.clone()), ..Default::default() };
        entries.extend(state.store.list_entries(&filter).await?);
    }
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(entries)
}

/// The group named in a request path.
fn group_id(state: &AppState, name: &str) -> AppResult<SpiffeId> {
    let name = GroupName::new(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(name.id(&state.config.trust_domain))
}

/// A group with its current members and entry count.
async fn info(state: &AppState, group: NodeGroup, agents: &[AgentRecord]) -> AppResult<GroupInfo> {
    let members = agents
        .iter()
        .filter(|a| !a.banned && group.admits(&a.selectors))
        .map(|a| a.spiffe_id.clone())
        .collect();
    let filter = EntryFilter { parent_id: Some(group.spiffe_id.clone()), ..Default::default() };
    let entries = u64::try_from(state.store.list_entries(&filter).await?.len()).unwrap_or(u64::MAX);
    Ok(GroupInfo { group, members, entries })
}

async fn create_group(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(spec): ApiJson<NodeGroupSpec>,
) -> AppResult<(StatusCode, Json<GroupInfo>)> {
    let group = NodeGroup::create(spec, &state.config.trust_domain, state.now_secs())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    state.store.create_group(&group).await?;
    state.publish(Event::GroupChanged {
        id: group.spiffe_id.clone(),
        selectors: Some(group.selectors.clone()),
    });
    let selectors: Vec<String> = group.selectors.iter().map(ToString::to_string).collect();
    tracing::info!(target: "vouch::audit", event = "group.create", %caller, group = %group.spiffe_id, selectors = ?selectors);
    let agents = state.store.list_agents().await?;
    Ok((StatusCode::CREATED, Json(info(&state, group, &agents).await?)))
}

async fn list_groups(State(state): State<Arc<AppState>>) -> AppResult<Json<GroupList>> {
    let agents = state.store.list_agents().await?;
    let mut groups = Vec::new();
    for g in state.store.list_groups().await? {
        groups.push(info(&state, g, &agents).await?);
    }
    Ok(Json(GroupList { groups }))
}

async fn show_group(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> AppResult<Json<GroupInfo>> {
    let id = group_id(&state, &name)?;
    let group = state
        .store
        .get_group(&id)
        .await?
        .ok_or_else(|| ApiError::from(StoreError::GroupNotFound(id.to_string())))?;
    let agents = state.store.list_agents().await?;
    Ok(Json(info(&state, group, &agents).await?))
}

async fn delete_group(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> AppResult<Json<NodeGroup>> {
    let id = group_id(&state, &name)?;
    let group = state.store.delete_group(&id).await?;
    state.publish(Event::GroupChanged { id: id.clone(), selectors: None });
    tracing::info!(target: "vouch::audit", event = "group.delete", %caller, group = %id);
    Ok(Json(group))
}
