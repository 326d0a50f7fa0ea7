//! Waiters of secret watches (long polls on `POST /v1/agent/secret` with `known_version`).
//!
//! A watch waits for the secret's latest live version to change. Writes, deletes, undeletes and
//! destroys publish [`crate::state::Event::SecretChanged`], which wakes the waiters of that path
//! only (one write costs one store read per waiter of its path, not one per watch on the server);
//! a policy change or an agent's removal wakes every waiter, so each decides its grant and its
//! agent's admission again and a revoked grant is answered at once, not at the next version.
//!
//! Why a long poll rather than polling: a new version must reach a running workload's file in
//! under a second; polling every 500 ms would cost each watched secret two store reads a second
//! while nothing changes, whereas a waiter costs a task and a connection, and nothing until a
//! change concerns it.
//!
//! Bounds: at most [`MAX_WAITERS_PER_AGENT`] waiters per agent and [`MAX_WAITERS`] on the server
//! (beyond them a watch is refused with 429 and the bound named), each held at most
//! [`vouch_api::secrets::WATCH_WAIT_SECS`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use vouch_core::{SecretPath, SpiffeId};

/// Most watches one agent may hold open on this server at once.
pub const MAX_WAITERS_PER_AGENT: usize = 256;
/// Most watches this server holds open at once.
pub const MAX_WAITERS: usize = 10_000;

/// The open watches, by agent and by path.
#[derive(Default)]
pub struct SecretWaiters {
    inner: Mutex<Inner>,
    /// Bumped when every waiter must decide again (policies changed, an agent removed).
    epoch: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for SecretWaiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretWaiters").field("total", &self.lock().total).finish()
    }
}

#[derive(Default)]
struct Inner {
    total: usize,
    per_agent: HashMap<SpiffeId, usize>,
    /// Waiters of a path, and what wakes them.
    by_path: HashMap<SecretPath, (usize, Arc<Notify>)>,
}

/// Why a watch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The agent holds [`MAX_WAITERS_PER_AGENT`].
    Agent,
    /// The server holds [`MAX_WAITERS`].
    Server,
}

/// One open watch: counted until dropped.
pub struct Waiter<'a> {
    owner: &'a SecretWaiters,
    agent: SpiffeId,
    path: SecretPath,
    notify: Arc<Notify>,
    epoch: tokio::sync::watch::Receiver<u64>,
}

impl SecretWaiters {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a watch of `path` for `agent`, unless a bound is reached.
    pub fn enter(&self, agent: &SpiffeId, path: &SecretPath) -> Result<Waiter<'_>, Full> {
        let mut inner = self.lock();
        if inner.total >= MAX_WAITERS {
            return Err(Full::Server);
        }
        let count = inner.per_agent.entry(agent.clone()).or_default();
        if *count >= MAX_WAITERS_PER_AGENT {
            return Err(Full::Agent);
        }
        *count += 1;
        inner.total += 1;
        let slot = inner.by_path.entry(path.clone()).or_insert_with(|| (0, Arc::new(Notify::new())));
        slot.0 += 1;
        let notify = slot.1.clone();
        drop(inner);
        Ok(Waiter {
            owner: self,
            agent: agent.clone(),
            path: path.clone(),
            notify,
            epoch: self.epoch.subscribe(),
        })
    }

    /// Wakes the waiters of `path`.
    pub fn changed(&self, path: &SecretPath) {
        if let Some((_, notify)) = self.lock().by_path.get(path) {
            notify.notify_waiters();
        }
    }

    /// Wakes every waiter (to decide its grant and its agent's admission again).
    pub fn wake_all(&self) {
        self.epoch.send_modify(|e| *e = e.wrapping_add(1));
    }

    /// Open watches: in all, and of `agent`.
    pub fn count(&self, agent: &SpiffeId) -> (usize, usize) {
        let inner = self.lock();
        (inner.total, inner.per_agent.get(agent).copied().unwrap_or(0))
    }
}

impl Waiter<'_> {
    /// Arms the waiter, then runs `check`; if `check` finds nothing new, waits until a change may
    /// concern this watch or `deadline`. Arming first means a change made while `check` runs is
    /// not missed. Returns `check`'s answer, or `None` at the deadline.
    pub async fn until<T, E, F, Fut>(
        &mut self,
        deadline: tokio::time::Instant,
        mut check: F,
    ) -> Result<Option<T>, E>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, E>>,
    {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.epoch.borrow_and_update();
            if let Some(answer) = check().await? {
                return Ok(Some(answer));
            }
            tokio::select! {
                () = &mut notified => {}
                changed = self.epoch.changed() => {
                    // The sender lives as long as the state; if it were gone, nothing would wake
                    // this waiter but the deadline.
                    if changed.is_err() {
                        tokio::time::sleep_until(deadline).await;
                    }
                }
                () = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut inner = self.owner.lock();
        inner.total = inner.total.saturating_sub(1);
        if let Some(count) = inner.per_agent.get_mut(&self.agent) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                inner.per_agent.remove(&self.agent);
            }
        }
        if let Some(slot) = inner.by_path.get_mut(&self.path) {
            slot.0 = slot.0.saturating_sub(1);
            if slot.0 == 0 {
                inner.by_path.remove(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://example.org/{s}")).unwrap()
    }

    fn path(s: &str) -> SecretPath {
        SecretPath::parse(s).unwrap()
    }

    #[test]
    fn watches_are_bounded_per_agent_and_released_on_drop() {
        let w = SecretWaiters::default();
        let (a, b, p) = (id("agent/a"), id("agent/b"), path("app/db"));
        let held: Vec<_> = (0..MAX_WAITERS_PER_AGENT).map(|_| w.enter(&a, &p).unwrap()).collect();
        assert_eq!(w.enter(&a, &p).err(), Some(Full::Agent));
        let other = w.enter(&b, &p).unwrap();
        assert_eq!(w.count(&a), (MAX_WAITERS_PER_AGENT + 1, MAX_WAITERS_PER_AGENT));
        drop(held);
        drop(other);
        assert_eq!(w.count(&a), (0, 0));
        assert!(w.lock().by_path.is_empty() && w.lock().per_agent.is_empty(), "nothing left behind");
    }

    #[tokio::test]
    async fn a_change_of_its_path_or_a_wake_all_wakes_a_waiter_and_the_deadline_ends_it() {
        let w = SecretWaiters::default();
        let (a, p) = (id("agent/a"), path("app/db"));
        let checks = AtomicUsize::new(0);
        let far = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut waiter = w.enter(&a, &p).unwrap();
        let check = || async {
            // The third check finds the change: the first ran at once, the second after a wake.
            let n = checks.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>((n == 2).then_some(n))
        };
        let waiting = waiter.until(far, check);
        let poke = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            w.changed(&path("app/other"));
            w.changed(&p);
            tokio::time::sleep(Duration::from_millis(50)).await;
            w.wake_all();
        };
        let (answer, ()) =
            tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(waiting, poke) })
                .await
                .unwrap();
        assert_eq!(answer, Ok(Some(2)));

        let soon = tokio::time::Instant::now() + Duration::from_millis(100);
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            waiter.until(soon, || async { Ok::<Option<()>, ()>(None) }),
        )
        .await
        .unwrap();
        assert_eq!(answer, Ok(None));
    }
}
