//! The rules of namespaces and governance for entry writes, apart from the handlers that apply
//! them (`crate::api`). See `docs/namespaces.md`.
//!
//! An admin limited to namespaces ([`AdminScope`]) may create, change, move and delete entries of
//! its namespaces only. It must not gain power through an entry, so it is refused:
//! - an admin entry whose `admin_namespaces` are not a non-empty subset of its own (an empty list
//!   means all namespaces);
//! - changing or deleting an admin entry it does not cover in the same sense;
//! - any entry (admin or not) for a SPIFFE ID that an admin entry it does not cover names: the
//!   admin API knows an admin by its SPIFFE ID, so a workload given that ID would be that admin.
//!
//! For every caller, an identity (SPIFFE ID) belongs to one namespace: entries of one SPIFFE ID in
//! two namespaces are refused, or a namespace admin could take over another namespace's identity
//! by registering it for its own workloads.

use vouch_core::{Entry, NamespaceScope};
use vouch_store::EntryFilter;

use crate::auth::AdminScope;
use crate::error::ApiError;
use crate::state::AppState;

type AppResult<T> = Result<T, ApiError>;

fn label(e: &Entry) -> String {
    format!("entry `{}`", e.id)
}

/// Whether `scope` may write `new` over `current` (`None`: a creation).
pub(crate) async fn check_entry_write(
    state: &AppState,
    scope: &AdminScope,
    current: Option<&Entry>,
    new: &Entry,
) -> AppResult<()> {
    if let Some(current) = current {
        check_entry_change(state, scope, current).await?;
    }
    scope.check(&new.namespace, &label(new))?;
    if new.admin {
        check_admin_covered(scope, new, &NamespaceScope::from_list(&new.admin_namespaces))?;
    }
    check_spiffe_id_covered(state, scope, new).await?;
    check_one_namespace(state, new).await
}

/// Whether `scope` may change or delete `entry` as it is.
pub(crate) async fn check_entry_change(state: &AppState, scope: &AdminScope, entry: &Entry) -> AppResult<()> {
    scope.check_hidden(&entry.namespace, &label(entry))?;
    if entry.admin {
        check_admin_covered(scope, entry, &NamespaceScope::from_list(&entry.admin_namespaces))?;
    }
    check_spiffe_id_covered(state, scope, entry).await
}

fn check_admin_covered(scope: &AdminScope, entry: &Entry, theirs: &NamespaceScope) -> AppResult<()> {
    if scope.scope.covers(theirs) {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "{} is an admin entry of {theirs}; admin `{}` may create, change or delete only admin entries limited to namespaces among {} (set admin_namespaces)",
        label(entry),
        scope.caller,
        scope.scope
    )))
}

/// An entry for the SPIFFE ID of an admin that `scope` does not cover would make its workload that
/// admin.
async fn check_spiffe_id_covered(state: &AppState, scope: &AdminScope, entry: &Entry) -> AppResult<()> {
    if scope.scope.is_all() {
        return Ok(());
    }
    match state.admin_scope(&entry.spiffe_id).await? {
        Some(theirs) if !scope.scope.covers(&theirs) => Err(ApiError::forbidden(format!(
            "spiffe_id `{}` is the identity of an admin of more than admin `{}` may manage ({}): an entry for it would hand that admin's rights to a workload",
            entry.spiffe_id, scope.caller, scope.scope
        ))),
        _ => Ok(()),
    }
}

/// An identity belongs to one namespace.
pub(crate) async fn check_one_namespace(state: &AppState, entry: &Entry) -> AppResult<()> {
    let filter = EntryFilter { spiffe_id: Some(entry.spiffe_id.clone()), ..Default::default() };
    let others = state.store.list_entries(&filter).await?;
    if others.iter().any(|o| o.id != entry.id && o.namespace != entry.namespace) {
        return Err(ApiError::conflict(format!(
            "spiffe_id `{}` is registered in another namespace; an identity belongs to one namespace: add the entry there, or move the other entries first",
            entry.spiffe_id
        )));
    }
    Ok(())
}

/// Within one batch: entries of one SPIFFE ID must share a namespace.
pub(crate) fn check_batch_namespaces(entries: &[Entry]) -> AppResult<()> {
    let mut seen = std::collections::HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(ns) = seen.insert(&e.spiffe_id, &e.namespace) {
            if ns != &e.namespace {
                return Err(ApiError::conflict(format!(
                    "entries[{i}]: spiffe_id `{}` is given in namespaces `{ns}` and `{}`; an identity belongs to one namespace",
                    e.spiffe_id, e.namespace
                )));
            }
        }
    }
    Ok(())
}

/// What a governance rule finds missing in `entry`, if the server has the rule
/// (`server.require_owner_and_purpose`).
pub(crate) fn governance_gap(state: &AppState, entry: &Entry) -> Option<&'static str> {
    if !state.config.require_owner_and_purpose {
        return None;
    }
    match (entry.owner.trim().is_empty(), entry.purpose.trim().is_empty()) {
        (true, true) => Some("owner and purpose"),
        (true, false) => Some("owner"),
        (false, true) => Some("purpose"),
        (false, false) => None,
    }
}

/// Refuses a write of `entry` that breaks the governance rule.
pub(crate) fn check_governance(state: &AppState, entry: &Entry) -> AppResult<()> {
    match governance_gap(state, entry) {
        None => Ok(()),
        Some(gap) => Err(ApiError::bad_request(format!(
            "{gap}: this server requires every entry to have an owner (who answers for the identity) and a purpose (why it exists) (server.require_owner_and_purpose); set {gap} (`vouch entry create --owner ... --purpose ...`)"
        ))),
    }
}
