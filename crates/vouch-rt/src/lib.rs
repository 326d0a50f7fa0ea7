//! Connection threads: every accepted connection is served, start to finish, on one of a few
//! single-threaded runtimes, chosen round-robin.
//!
//! Why: on a work-stealing runtime a request read on one worker is often finished on another, and
//! every such hand-off is a cross-CPU wake-up. In profiles of the server's issuance API those
//! wake-ups (futex, scheduler) cost about as much as HTTP and JSON together; in the agent's Workload
//! API a cached FetchX509SVID took ~8 context switches on the work-stealing runtime (the HTTP/2
//! connection task, the stream's task and the answer's task each woken on whichever worker was
//! free). On machines where a wake-up is expensive (one of this project's 2-core VMs measured
//! 60–75 µs per cross-CPU wake-up) that is most of a request's cost. Here a request is read,
//! handled and answered by the thread that owns its connection, and tasks a handler spawns
//! (`tokio::spawn`) stay on that thread too. Connections are long-lived (keep-alive, agent sync
//! streams, Workload API watch streams), so distributing them round-robin balances the load.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

/// Work to start on a connection thread: it runs inside that thread's runtime, so it can register
/// sockets with it (`TcpStream::from_std`) and `tokio::spawn` onto it.
pub type Job = Box<dyn FnOnce() + Send>;

/// The connection threads. Dropping this ends them (and the connections they still serve).
pub struct ConnectionThreads {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
}

impl ConnectionThreads {
    /// Starts `n` threads (at least one), named `{name}-{i}`.
    pub fn start(name: &str, n: usize) -> std::io::Result<Self> {
        let mut senders = Vec::new();
        for i in 0..n.max(1) {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || {
                runtime.block_on(async move {
                    while let Some(job) = rx.recv().await {
                        job();
                    }
                });
            })?;
            senders.push(tx);
        }
        Ok(Self { senders, next: AtomicUsize::new(0) })
    }

    /// How many threads there are.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Always false: there is at least one thread.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Runs `job` on the next thread.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        // A thread only stops when this set is dropped, so the send cannot fail while we hold it.
        let _ = self.senders[i].send(Box::new(job));
    }
}

/// `per_cpu` threads for each CPU this process may use, at most `max`: the count a daemon passes
/// to [`ConnectionThreads::start`].
pub fn threads_per_cpu(per_cpu: usize, max: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (per_cpu * cpus).clamp(1, max.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc as std_mpsc;
    use std::time::Duration;

    #[test]
    fn jobs_run_round_robin_and_their_tasks_stay_on_their_thread() {
        let threads = ConnectionThreads::start("test-conn", 2).expect("threads start");
        assert_eq!(threads.len(), 2);
        let (tx, rx) = std_mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            threads.run(move || {
                let outer = std::thread::current().name().map(str::to_owned);
                // A task spawned from a job runs on the same thread as the job.
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    let inner = std::thread::current().name().map(str::to_owned);
                    let _ = tx.send((outer, inner));
                });
            });
        }
        let mut names = Vec::new();
        for _ in 0..4 {
            let (outer, inner) = rx.recv_timeout(Duration::from_secs(10)).expect("job ran");
            assert_eq!(outer, inner, "a spawned task moved threads");
            names.push(outer.expect("named thread"));
        }
        names.sort();
        assert_eq!(names, ["test-conn-0", "test-conn-0", "test-conn-1", "test-conn-1"]);
    }

    #[test]
    fn thread_count_is_bounded() {
        assert_eq!(threads_per_cpu(0, 8), 1);
        assert!(threads_per_cpu(1000, 8) <= 8);
        assert!(threads_per_cpu(1, 1000) >= 1);
    }
}
