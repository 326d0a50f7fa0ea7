//! Prometheus metrics, rendered by hand in the text exposition format (no registry dependency); the
//! histogram and the writers are `vouch_core::metrics`, shared with the agent.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

pub use vouch_core::metrics::Histogram;

/// The server's metrics.
#[derive(Default)]
pub struct Metrics {
    /// X509-SVIDs issued.
    pub x509_issued: AtomicU64,
    /// JWT-SVIDs issued.
    pub jwt_issued: AtomicU64,
    /// Issuance requests refused or failed.
    pub issuance_errors: AtomicU64,
    /// API requests answered with 4xx.
    pub client_errors: AtomicU64,
    /// API requests answered with 5xx.
    pub server_errors: AtomicU64,
    /// Requests refused by authentication or authorization.
    pub auth_denied: AtomicU64,
    /// Node attestations refused (bad evidence, banned, reserved ID), rate-limited ones not included.
    pub attest_refused: AtomicU64,
    /// Requests refused by a rate limit, by limit.
    pub rate_limited: [AtomicU64; 4],
    /// Refusal warnings not written because one for the same reason was written within the
    /// interval (they are counted in the next line).
    pub log_lines_suppressed: AtomicU64,
    /// Federated bundles fetched and accepted.
    pub federation_refreshes: AtomicU64,
    /// Fetches of federated bundles that failed (the last good bundle kept).
    pub federation_refresh_failures: AtomicU64,
    /// X509-SVID issuance latency.
    pub x509_latency: Histogram,
    /// JWT-SVID issuance latency.
    pub jwt_latency: Histogram,
}

impl Metrics {
    /// The text exposition; `damaged_rows_skipped` is the store's counter of entry rows that
    /// listings skipped as unreadable, `store_writes` its counter of writes.
    pub fn render(&self, bundle_sequence: u64, damaged_rows_skipped: u64, store_writes: u64) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            vouch_core::metrics::counter(out, name, help, v.load(Ordering::Relaxed));
        };
        counter(&mut out, "vouch_x509_svids_issued_total", "X509-SVIDs issued.", &self.x509_issued);
        counter(&mut out, "vouch_jwt_svids_issued_total", "JWT-SVIDs issued.", &self.jwt_issued);
        counter(
            &mut out,
            "vouch_issuance_errors_total",
            "Issuance requests refused or failed.",
            &self.issuance_errors,
        );
        counter(
            &mut out,
            "vouch_api_client_errors_total",
            "API answers with status 4xx.",
            &self.client_errors,
        );
        counter(
            &mut out,
            "vouch_api_server_errors_total",
            "API answers with status 5xx.",
            &self.server_errors,
        );
        counter(
            &mut out,
            "vouch_auth_denied_total",
            "Requests refused by authentication or authorization.",
            &self.auth_denied,
        );
        counter(
            &mut out,
            "vouch_attestations_refused_total",
            "Node attestations refused (bad evidence, banned agent, reserved ID).",
            &self.attest_refused,
        );
        vouch_core::metrics::header(
            &mut out,
            "vouch_rate_limited_total",
            "counter",
            "Requests refused by a rate limit (429 rate_limited), by limit.",
        );
        for (limit, v) in ["attest", "sign", "jwt", "report"].iter().zip(&self.rate_limited) {
            let _ =
                writeln!(out, "vouch_rate_limited_total{{limit=\"{limit}\"}} {}", v.load(Ordering::Relaxed));
        }
        counter(
            &mut out,
            "vouch_log_lines_suppressed_total",
            "Refusal warnings folded into the next line for the same reason (see [limits] refusal_log_interval).",
            &self.log_lines_suppressed,
        );
        counter(
            &mut out,
            "vouch_federation_refreshes_total",
            "Bundles of federated trust domains fetched and accepted.",
            &self.federation_refreshes,
        );
        counter(
            &mut out,
            "vouch_federation_refresh_failures_total",
            "Fetches of federated bundles that failed; the last good bundle is kept (see `vouch federation list`).",
            &self.federation_refresh_failures,
        );
        vouch_core::metrics::counter(
            &mut out,
            "vouch_store_write_transactions_total",
            "Writes started on the store (each takes the database's write lock).",
            store_writes,
        );
        vouch_core::metrics::counter(
            &mut out,
            "vouch_store_damaged_rows_skipped_total",
            "Entry rows skipped by listings because they cannot be read (see GET /v1/entries `damaged`).",
            damaged_rows_skipped,
        );
        let _ = writeln!(
            out,
            "# HELP vouch_issuance_seconds Issuance latency.\n# TYPE vouch_issuance_seconds histogram"
        );
        self.x509_latency.render(&mut out, "vouch_issuance_seconds", "kind=\"x509\",");
        self.jwt_latency.render(&mut out, "vouch_issuance_seconds", "kind=\"jwt\",");
        let _ = writeln!(
            out,
            "# HELP vouch_bundle_sequence Sequence number of the trust bundle.\n# TYPE vouch_bundle_sequence gauge\nvouch_bundle_sequence {bundle_sequence}"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.x509_issued.fetch_add(3, Ordering::Relaxed);
        m.x509_latency.observe(Duration::from_micros(700));
        m.rate_limited[1].fetch_add(4, Ordering::Relaxed);
        let text = m.render(7, 2, 9);
        assert!(text.contains("vouch_rate_limited_total{limit=\"sign\"} 4"));
        assert!(text.contains("vouch_store_write_transactions_total 9"));
        assert!(text.contains("vouch_x509_svids_issued_total 3"));
        assert!(text.contains("vouch_issuance_seconds_bucket{kind=\"x509\",le=\"0.0005\"} 0"));
        assert!(text.contains("vouch_issuance_seconds_bucket{kind=\"x509\",le=\"0.001\"} 1"));
        assert!(text.contains("vouch_issuance_seconds_count{kind=\"x509\"} 1"));
        assert!(text.contains("vouch_bundle_sequence 7"));
        assert!(text.contains("vouch_store_damaged_rows_skipped_total 2"));
        assert!(text.contains("vouch_federation_refresh_failures_total 0"));
    }
}
