//! The server's router: every route group with its authorization attached where the group is
//! declared, not decided by matching path prefixes.

use std::sync::Arc;

use axum::middleware::from_fn_with_state;
use axum::Router;

use crate::state::AppState;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The API router, each group of routes with its authorization attached: public routes (probes, the
/// bundle, this API's description), node attestation (the evidence is the credential), agent routes
/// (an attested agent's SVID), entry and policy routes (an admin, perhaps limited to namespaces)
/// and the other admin routes (an admin of all namespaces).
pub fn router(state: Arc<AppState>) -> Router {
    let admin = crate::api::admin_routes()
        .merge(crate::agent_api::admin_routes())
        .merge(crate::groups::admin_routes())
        .merge(crate::federation::admin_routes())
        .merge(crate::secrets::admin_routes())
        .merge(crate::db_creds::admin_routes())
        .merge(crate::policy::admin_routes())
        .merge(crate::audit::admin_routes())
        .merge(crate::forensics::admin_routes())
        .route_layer(from_fn_with_state(state.clone(), crate::auth::require_admin));
    // Entries and policies belong to namespaces: an admin limited to some manages them there.
    let namespaced = crate::api::entry_routes()
        .merge(crate::policy::namespace_routes())
        .route_layer(from_fn_with_state(state.clone(), crate::auth::require_namespace_admin));
    let decisions = crate::policy::authorize_routes()
        .route_layer(from_fn_with_state(state.clone(), crate::policy::require_admin_or_agent));
    let agent = crate::agent_api::agent_routes()
        .merge(crate::secrets::agent_routes())
        .merge(crate::db_creds::agent_routes())
        .merge(crate::forensics::agent_routes())
        .route_layer(from_fn_with_state(state.clone(), crate::auth::require_agent));
    crate::api::public_routes()
        .merge(crate::agent_api::attestation_routes(state.clone()))
        .merge(agent)
        .merge(admin)
        .merge(namespaced)
        .merge(decisions)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
