//! What a process spent while a benchmark ran: CPU time and context switches, read from `/proc`.
//!
//! Why: throughput alone hides where a request's time goes. CPU time per request and context switches
//! per request are nearly machine-independent, so they say how a figure will move on a machine with
//! slower crypto or slower thread wake-ups (issue 9 §7: a 2-core VM where a cross-CPU wake-up cost
//! 60–75 µs turned a 10.4x ratio into 6.5x). The load generator's own cost is printed too, since it
//! shares the two CPUs with the server it measures.

use std::time::Duration;

/// CPU time and context switches of a process, summed over its live threads.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ProcStat {
    /// User + system CPU time.
    pub cpu: Duration,
    /// Voluntary context switches (a thread blocked: waiting for I/O, a lock, a wake-up).
    pub voluntary: u64,
    /// Involuntary context switches (a thread was preempted).
    pub involuntary: u64,
}

/// Clock ticks per second for `/proc/*/stat` times. Linux has reported times in USER_HZ = 100 on
/// every architecture vouch runs on; reading `sysconf` would need libc for nothing.
const TICKS_PER_SECOND: u64 = 100;

impl ProcStat {
    /// Reads process `pid` (`None`: this process). Missing or unreadable files count as zero: the
    /// figures are diagnostics, printed next to the measurement, never a reason to fail it.
    pub(crate) fn read(pid: Option<u32>) -> Self {
        let base = pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"));
        let mut out = ProcStat::default();
        // Fields 14 and 15 of stat (utime, stime) count the whole thread group, exited threads too.
        if let Ok(stat) = std::fs::read_to_string(format!("{base}/stat")) {
            // The command name (field 2) may contain spaces; the fields after it follow the last ')'.
            if let Some((_, rest)) = stat.rsplit_once(')') {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                // `rest` starts at field 3, so field n is at index n - 3.
                let ticks = tick(14 - 3) + tick(15 - 3);
                out.cpu = Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND);
            }
        }
        // Context switches are only reported per thread.
        if let Ok(tasks) = std::fs::read_dir(format!("{base}/task")) {
            for task in tasks.flatten() {
                let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
                for line in status.lines() {
                    let value =
                        |prefix: &str| line.strip_prefix(prefix).and_then(|v| v.trim().parse::<u64>().ok());
                    if let Some(v) = value("voluntary_ctxt_switches:") {
                        out.voluntary += v;
                    } else if let Some(v) = value("nonvoluntary_ctxt_switches:") {
                        out.involuntary += v;
                    }
                }
            }
        }
        out
    }

    /// What was spent between `self` (earlier) and `later`.
    pub(crate) fn until(&self, later: &ProcStat) -> ProcStat {
        ProcStat {
            cpu: later.cpu.saturating_sub(self.cpu),
            voluntary: later.voluntary.saturating_sub(self.voluntary),
            involuntary: later.involuntary.saturating_sub(self.involuntary),
        }
    }

    /// "cpu N us/req, M switches/req" for `requests` requests.
    pub(crate) fn per_request(&self, requests: usize) -> String {
        let n = requests.max(1) as f64;
        format!(
            "cpu {:>6.1} us/req, switches {:>5.2}/req ({:.2} voluntary)",
            self.cpu.as_secs_f64() * 1e6 / n,
            (self.voluntary + self.involuntary) as f64 / n,
            self.voluntary as f64 / n,
        )
    }
}

/// Snapshots of a server process and of this process (the load generator), taken together.
pub(crate) struct Costs {
    server_pid: Option<u32>,
    server: ProcStat,
    client: ProcStat,
}

impl Costs {
    /// Starts counting for `server_pid` (and always for this process).
    pub(crate) fn start(server_pid: Option<u32>) -> Self {
        Self {
            server_pid,
            server: server_pid.map(|p| ProcStat::read(Some(p))).unwrap_or_default(),
            client: ProcStat::read(None),
        }
    }

    /// What the server and the load generator spent since [`Costs::start`].
    pub(crate) fn finish(&self) -> (Option<ProcStat>, ProcStat) {
        let server = self.server_pid.map(|p| self.server.until(&ProcStat::read(Some(p))));
        (server, self.client.until(&ProcStat::read(None)))
    }
}
