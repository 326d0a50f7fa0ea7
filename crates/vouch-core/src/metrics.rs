//! Prometheus text exposition (format 0.0.4), written by hand: a latency histogram and helpers for
//! counters and gauges, shared by the server's and the agent's `/metrics` (no registry dependency).
//!
//! Observations are durations the caller measured; nothing here reads a clock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0];

/// A latency histogram with the [`BUCKETS`] bounds.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines of `name`. `labels` is empty or a list of
    /// `key="value",` pairs, each followed by a comma (`le` is appended to it).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            let _ =
                writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {}", bucket.load(Ordering::Relaxed));
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces =
            if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.trim_end_matches(',')) };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a metric family (`kind`: counter, gauge, histogram).
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes an unlabelled counter with its header.
pub fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

/// Writes an unlabelled gauge with its header.
pub fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_each_observation_in_every_bucket_at_or_above_it() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(2));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "rpc=\"a\",");
        assert!(out.contains("x_seconds_bucket{rpc=\"a\",le=\"0.0005\"} 0\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{rpc=\"a\",le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{rpc=\"a\",le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{rpc=\"a\",le=\"+Inf\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_sum{rpc=\"a\"} 2.0007\n"), "{out}");
        assert!(out.contains("x_seconds_count{rpc=\"a\"} 2\n"), "{out}");
        let mut bare = String::new();
        Histogram::default().render(&mut bare, "y", "");
        assert!(bare.contains("y_bucket{le=\"+Inf\"} 0\ny_sum 0\ny_count 0\n"), "{bare}");
    }

    #[test]
    fn counters_and_gauges_carry_help_and_type() {
        let mut out = String::new();
        counter(&mut out, "a_total", "As.", 3);
        gauge(&mut out, "b", "B.", 1.5);
        assert_eq!(
            out,
            "# HELP a_total As.\n# TYPE a_total counter\na_total 3\n# HELP b B.\n# TYPE b gauge\nb 1.5\n"
        );
    }
}
