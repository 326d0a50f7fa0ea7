//! Forensics: which workloads held an identity at a given time.
//!
//! Agents report, in batches, each SVID their Workload API handed to a workload connection
//! (`POST /v1/agent/delivered`): SPIFFE ID, serial or `jti`, validity, pid, container id, image id
//! and, when attestation computed it, the executable's hash. Each record becomes an
//! `agent.delivered` event of the audit log, so it is hash-chained, searchable and exported with the
//! rest. The node of every record is the calling agent's SPIFFE ID from its mTLS SVID: a report
//! that names another node is refused whole, so no agent writes records in another's name.
//!
//! `GET /v1/audit/who` (admin) answers from those records: an SVID delivered at `t0` and valid until
//! `t1` was held over `[t0, t1]`; the holders are the records whose span meets the time or range
//! asked about.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest as _, Request, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use vouch_api::agent::{
    Delivery, DeliveryAccepted, DeliveryReport, SvidKind, MAX_DELIVERY_BATCH, MAX_DELIVERY_BODY,
    MAX_DELIVERY_TEXT,
};
use vouch_api::audit::{Holder, WhoAnswer, WhoQuery, MAX_WHO_HOLDERS, MAX_WHO_SCAN};
use vouch_api::paths;
use vouch_core::audit::{AuditRecord, AuditValue};
use vouch_core::SpiffeId;
use vouch_store::AuditQuery;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;

/// The audit event of one delivered SVID.
pub const DELIVERED_EVENT: &str = "agent.delivered";

/// How far the server's clock (which stamps records as they arrive) may be ahead of or behind an
/// agent's (which stamps deliveries), for the search of `who`.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);
/// How late after its delivery a report is still found by `who` (an agent keeps unsent records
/// while the server is unreachable).
const REPORT_DELAY: Duration = Duration::from_secs(24 * 3600);
/// Records read per page of the search.
const WHO_PAGE: u32 = 1000;

/// The agent route (behind `require_agent`), with its own body bound.
pub(crate) fn agent_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(paths::AGENT_DELIVERED, post(delivered))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_DELIVERY_BODY))
}

/// The admin route (behind `require_admin`).
pub(crate) fn admin_routes() -> Router<Arc<AppState>> {
    Router::new().route(paths::AUDIT_WHO, get(who))
}

/// Whether `s` is 1 to [`MAX_DELIVERY_TEXT`] visible ASCII characters (ids, digests, serials).
fn plain_text(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_DELIVERY_TEXT && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Checks one record of a report; the reason names it by its index.
fn check_delivery(i: usize, d: &Delivery, state: &AppState) -> Result<(), ApiError> {
    let bad = |why: String| Err(ApiError::bad_request(format!("records[{i}]: {why}")));
    if d.spiffe_id.trust_domain() != &state.config.trust_domain {
        return bad(format!(
            "spiffe_id `{}` is not in trust domain `{}`",
            d.spiffe_id, state.config.trust_domain
        ));
    }
    if !plain_text(&d.svid_id) {
        return bad(format!("svid_id: give 1 to {MAX_DELIVERY_TEXT} visible ASCII characters"));
    }
    for (name, v) in
        [("container_id", &d.container_id), ("image_id", &d.image_id), ("binary_sha256", &d.binary_sha256)]
    {
        if v.as_deref().is_some_and(|s| !plain_text(s)) {
            return bad(format!(
                "{name}: give 1 to {MAX_DELIVERY_TEXT} visible ASCII characters, or leave it out"
            ));
        }
    }
    if d.not_before > d.not_after {
        return bad(format!("not_before {} is after not_after {}", d.not_before, d.not_after));
    }
    if d.pid <= 0 {
        return bad(format!("pid {} is not a process id", d.pid));
    }
    if d.delivered_at_ms <= 0 {
        return bad(format!("delivered_at_ms {} is not a time", d.delivered_at_ms));
    }
    Ok(())
}

/// Checks a whole report from `caller` (every record, before any is recorded).
fn check_report(state: &AppState, caller: &SpiffeId, report: &DeliveryReport) -> Result<(), ApiError> {
    if &report.node != caller {
        return Err(ApiError::forbidden(format!(
            "node `{}` is not the calling agent `{caller}`: an agent reports only what it delivered itself",
            report.node
        )));
    }
    if report.records.is_empty() || report.records.len() > MAX_DELIVERY_BATCH {
        return Err(ApiError::bad_request(format!(
            "records: a report holds 1 to {MAX_DELIVERY_BATCH} records, not {}",
            report.records.len()
        )));
    }
    for (i, d) in report.records.iter().enumerate() {
        check_delivery(i, d, state)?;
    }
    Ok(())
}

/// `POST /v1/agent/delivered`: records each delivery under the calling agent's SPIFFE ID. A bad
/// report (another node, too many records or bytes, a bad record) is refused whole, so nothing of
/// it is recorded.
async fn delivered(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Result<Json<DeliveryAccepted>, ApiError> {
    let agent = crate::agent_api::agent_of(&caller)?;
    let refused = |e: ApiError| {
        crate::agent_api::log_refusal(&state, "agent.delivered: refused", |count| {
            tracing::warn!(target: "vouch::audit", event = "agent.delivered.refused", agent = %agent, reason = %e.message, count, "a delivery report was refused ({count} since the last line like this)");
        });
        e
    };
    let ApiJson(report) = ApiJson::<DeliveryReport>::from_request(req, &state).await.map_err(|e| {
        refused(ApiError::bad_request(format!(
            "delivery report: {} (at most {MAX_DELIVERY_BODY} bytes and {MAX_DELIVERY_BATCH} records)",
            e.message
        )))
    })?;
    check_report(&state, &agent, &report).map_err(refused)?;
    crate::agent_api::check_report_limit(
        &state,
        &agent,
        u32::try_from(report.records.len()).unwrap_or(u32::MAX),
    )?;
    if report.dropped > 0 {
        tracing::warn!(target: "vouch::audit", event = "agent.delivered.lost", agent = %agent, count = report.dropped, "an agent dropped delivery records (its queue was full)");
    }
    for d in &report.records {
        let (serial, jti) = match d.kind {
            SvidKind::X509 => (Some(d.svid_id.as_str()), None),
            SvidKind::Jwt => (None, Some(d.svid_id.as_str())),
        };
        tracing::info!(
            target: "vouch::audit",
            event = DELIVERED_EVENT,
            agent = %agent,
            spiffe_id = %d.spiffe_id,
            kind = d.kind.as_str(),
            serial,
            jti,
            not_before = d.not_before,
            not_after = d.not_after,
            delivered_at_ms = d.delivered_at_ms,
            pid = d.pid,
            container_id = d.container_id.as_deref(),
            image_id = d.image_id.as_deref(),
            binary_sha256 = d.binary_sha256.as_deref(),
        );
    }
    Ok(Json(DeliveryAccepted { accepted: report.records.len() }))
}

/// The range of a question, unix milliseconds, inclusive.
fn range_of(q: &WhoQuery) -> Result<(i64, i64), ApiError> {
    let time = |name: &str, v: &str| {
        vouch_core::ttl::parse_rfc3339_ms(v).map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
    };
    match (&q.at, &q.from, &q.to) {
        (Some(at), None, None) => time("at", at).map(|t| (t, t)),
        (None, Some(from), Some(to)) => {
            let (from, to) = (time("from", from)?, time("to", to)?);
            if from > to {
                return Err(ApiError::bad_request("from must not be after to"));
            }
            Ok((from, to))
        }
        _ => Err(ApiError::bad_request("give `at`, or both `from` and `to` (RFC 3339)")),
    }
}

/// A holder from a delivery record; `None` for a record that lacks a field (it was damaged).
fn holder_of(r: &AuditRecord) -> Option<Holder> {
    let text = |k: &str| r.fields.get(k).and_then(AuditValue::as_text).map(str::to_owned);
    let int = |k: &str| match r.fields.get(k) {
        Some(AuditValue::Int(i)) => Some(*i),
        _ => None,
    };
    Some(Holder {
        node: text("agent")?,
        kind: text("kind")?,
        svid_id: text("serial").or_else(|| text("jti"))?,
        not_before: int("not_before")?,
        not_after: int("not_after")?,
        delivered_at_ms: int("delivered_at_ms")?,
        pid: int("pid")?,
        container_id: text("container_id"),
        image_id: text("image_id"),
        binary_sha256: text("binary_sha256"),
        seq: r.seq,
    })
}

/// Whether `h` held its SVID at some time in `from..=to` (unix milliseconds): from its delivery
/// to its expiry.
fn held_during(h: &Holder, from: i64, to: i64) -> bool {
    h.delivered_at_ms <= to && h.not_after.saturating_mul(1000) >= from
}

/// `GET /v1/audit/who`: the workloads that held `spiffe_id` at `at` or during `from..=to`, from
/// the agents' delivery records. Reads at most [`MAX_WHO_SCAN`] records.
async fn who(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<WhoQuery>,
) -> Result<Json<WhoAnswer>, ApiError> {
    let spiffe_id = SpiffeId::parse(&q.spiffe_id).map_err(|e| {
        ApiError::bad_request(format!(
            "spiffe_id `{}`: {e}",
            q.spiffe_id.chars().take(256).collect::<String>()
        ))
    })?;
    let (from, to) = range_of(&q)?;
    // An SVID held at `from` was delivered at most its lifetime before; its record arrived after
    // its delivery, within the report delay. Clocks differ by up to the skew.
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let lifetime = ms(vouch_core::entry::MAX_X509_SVID_TTL.max(vouch_core::entry::MAX_JWT_SVID_TTL));
    let mut query = AuditQuery {
        spiffe_id: Some(spiffe_id.to_string()),
        event: Some(DELIVERED_EVENT.to_owned()),
        since_ms: Some(from.saturating_sub(lifetime).saturating_sub(ms(CLOCK_SKEW))),
        until_ms: Some(to.saturating_add(ms(REPORT_DELAY)).saturating_add(ms(CLOCK_SKEW))),
        limit: WHO_PAGE,
        ..Default::default()
    };
    let (mut holders, mut seen) = (Vec::new(), HashSet::new());
    let (mut scanned, mut truncated) = (0u64, false);
    loop {
        let page = state.store.audit_records(&query).await?;
        let full = page.len() == WHO_PAGE as usize;
        for r in &page {
            scanned += 1;
            let Some(h) = holder_of(r).filter(|h| held_during(h, from, to)) else { continue };
            // One workload connection may be reported more than once (an agent that resent a
            // batch the server had taken): one row per node, SVID, process and container.
            if seen.insert((h.node.clone(), h.svid_id.clone(), h.pid, h.container_id.clone())) {
                holders.push(h);
            }
        }
        query.after_seq = page.last().map_or(query.after_seq, |r| r.seq);
        if holders.len() > MAX_WHO_HOLDERS || (full && scanned >= MAX_WHO_SCAN) {
            truncated = true;
            break;
        }
        if !full {
            break;
        }
    }
    holders.sort_by_key(|h| (h.delivered_at_ms, h.seq));
    holders.truncate(MAX_WHO_HOLDERS);
    tracing::info!(target: "vouch::audit", event = "audit.who", %caller, subject = %spiffe_id, from_ms = from, to_ms = to, holders = holders.len(), truncated);
    Ok(Json(WhoAnswer {
        spiffe_id: spiffe_id.to_string(),
        from_ms: from,
        to_ms: to,
        holders,
        scanned,
        truncated,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(delivered_at_ms: i64, not_after: i64) -> Holder {
        Holder {
            node: "spiffe://example.org/agent/n".into(),
            kind: "x509".into(),
            svid_id: "01".into(),
            not_before: delivered_at_ms / 1000,
            not_after,
            delivered_at_ms,
            pid: 7,
            container_id: None,
            image_id: None,
            binary_sha256: None,
            seq: 1,
        }
    }

    #[test]
    fn an_svid_is_held_from_its_delivery_to_its_expiry() {
        // Delivered at 100 s, valid until 200 s.
        let h = holder(100_000, 200);
        for (from, to, held) in [
            (99_999, 99_999, false),  // just before delivery
            (100_000, 100_000, true), // at delivery
            (150_000, 150_000, true),
            (200_000, 200_000, true), // at expiry
            (200_001, 200_001, false),
            (0, 100_000, true), // a range that ends at delivery
            (200_000, 300_000, true),
            (0, 99_999, false),
        ] {
            assert_eq!(held_during(&h, from, to), held, "{from}..={to}");
        }
    }

    #[test]
    fn questions_give_an_instant_or_a_range() {
        let q = |at: Option<&str>, from: Option<&str>, to: Option<&str>| WhoQuery {
            spiffe_id: "spiffe://example.org/a".into(),
            at: at.map(Into::into),
            from: from.map(Into::into),
            to: to.map(Into::into),
        };
        let t = "2026-11-30T03:00:00Z";
        let ms = vouch_core::ttl::parse_rfc3339_ms(t).unwrap();
        assert_eq!(range_of(&q(Some(t), None, None)).unwrap(), (ms, ms));
        assert_eq!(range_of(&q(None, Some(t), Some(t))).unwrap(), (ms, ms));
        for bad in [
            q(None, None, None),
            q(Some(t), Some(t), None),
            q(None, Some(t), None),
            q(None, Some("2026-11-30T04:00:00Z"), Some(t)),
            q(Some("3 a.m."), None, None),
        ] {
            assert!(range_of(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn damaged_records_name_no_holder() {
        let mut fields = vouch_core::audit::AuditFields::new();
        fields.insert("agent".into(), AuditValue::Text("spiffe://example.org/agent/n".into()));
        fields.insert("kind".into(), AuditValue::Text("jwt".into()));
        fields.insert("jti".into(), AuditValue::Text("abc".into()));
        for k in ["not_before", "not_after", "delivered_at_ms", "pid"] {
            fields.insert(k.into(), AuditValue::Int(5));
        }
        let r =
            AuditRecord { seq: 9, time_ms: 0, event: DELIVERED_EVENT.into(), fields, hash: String::new() };
        assert_eq!(holder_of(&r).unwrap().svid_id, "abc");
        let mut damaged = r.clone();
        damaged.fields.insert("pid".into(), AuditValue::Text("five".into()));
        assert!(holder_of(&damaged).is_none());
    }
}
