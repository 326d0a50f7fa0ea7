//! Connection threads: every accepted connection is served, start to finish, on one of a few
//! single-threaded runtimes (four per CPU), chosen round-robin.
//!
//! Why: on a work-stealing runtime a request read on one worker is often finished on another, and
//! every such hand-off is a cross-CPU wake-up; in profiles of the issuance API those wake-ups (futex,
//! scheduler) cost about as much as HTTP and JSON together. Here a request is read, handled and
//! answered by the thread that owns its connection. Connections are long-lived (keep-alive, agent sync
//! streams), so distributing them round-robin balances the load.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

/// Work to start on a connection thread: it runs inside that thread's runtime, so it can register
/// sockets with it (`TcpStream::from_std`) and `tokio::spawn` onto it.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// The connection threads. Dropping this ends them (and the connections they still serve).
pub(crate) struct ConnectionThreads {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
}

impl ConnectionThreads {
    /// Starts `n` threads (at least one).
    pub(crate) fn start(n: usize) -> std::io::Result<Self> {
        let mut senders = Vec::new();
        for i in 0..n.max(1) {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            std::thread::Builder::new().name(format!("vouch-conn-{i}")).spawn(move || {
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

    /// Runs `job` on the next thread.
    pub(crate) fn run(&self, job: impl FnOnce() + Send + 'static) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        // A thread only stops when this set is dropped, so the send cannot fail while we hold it.
        let _ = self.senders[i].send(Box::new(job));
    }
}
