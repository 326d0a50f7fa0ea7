//! Routing of [`Event`]s to the open sync streams they concern.
//!
//! Each open sync stream registers under the parents whose entries its agent serves: its own SPIFFE
//! ID and the node groups it belongs to. An entry change is queued only for the streams registered
//! under the entry's parent (and, when the entry moved, its previous parent); an event about one
//! agent (re-attestation, ban, eviction) only for that agent's streams. Events that may concern any
//! agent (a bundle change, a node group created or deleted, a resync after missed changes) go to
//! every stream.
//!
//! Why: the server used to publish every event on one broadcast channel that every stream task
//! read and filtered, so one change woke every stream. With 10,000 connected agents a batch of
//! 1,000 entry changes took 4.8 s to reach its 1,000 agents (100k entries, SQLite; 7.5 s at 1M
//! entries), nearly all of it spent waking streams the changes did not concern (bench/scale).
//!
//! Each stream has its own queue, bounded by [`QUEUE_BOUND`] events: a stream whose agent does not
//! keep up (its connection full) overflows, its queue is emptied, and it then sends a fresh
//! snapshot instead of the changes it missed, as a lagging broadcast receiver did. A stream takes
//! everything queued at once ([`Subscription::next`]), so a batch of changes costs one wake-up and
//! one write per stream, not one per change.
//!
//! Ordering: events are queued under one lock in the order they are published, so each stream sees
//! them in that order (an upsert before the delete that follows it). A stream registers before it
//! reads its snapshot, and re-registers before a fresh snapshot when its node groups change, so a
//! change is either queued for it or already in the store when the snapshot is read: there is no
//! gap between snapshot and changes. A stream still checks each event against its own agent and
//! groups; routing only spares it the events that cannot concern it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use vouch_core::SpiffeId;

use crate::state::Event;

/// Most events queued for one stream. Beyond it the stream is sent a fresh snapshot instead: a
/// queue holds shared events (a pointer each), so 10,000 stalled streams cost at most about
/// 330 MB even if every event concerned all of them; one full admin batch (1,000 entries) fits
/// several times over in the queue of a stream that keeps up.
pub const QUEUE_BOUND: usize = 4096;

/// The open sync streams, by the parents they serve.
#[derive(Default)]
pub struct SyncHub {
    registry: Mutex<Registry>,
    /// Events queued for streams, one per stream an event concerns (`vouch_sync_events_routed_total`).
    routed: AtomicU64,
    /// Queues that overflowed, each answered with a fresh snapshot (`vouch_sync_overflows_total`).
    overflows: AtomicU64,
}

impl std::fmt::Debug for SyncHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHub").field("streams", &self.lock().streams.len()).finish()
    }
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    /// Every open stream, with the keys it is registered under.
    streams: HashMap<u64, Registered>,
    /// Streams by parent (an agent's own ID, a node group's ID). Usually one stream per key for an
    /// agent; every member's stream for a group.
    by_parent: HashMap<SpiffeId, Vec<u64>>,
}

struct Registered {
    queue: Arc<Queue>,
    keys: Vec<SpiffeId>,
}

/// One stream's pending events.
#[derive(Default)]
struct Queue {
    pending: Mutex<Pending>,
    /// Woken when the queue goes from empty to not empty, or overflows.
    ready: Notify,
}

#[derive(Default)]
struct Pending {
    events: VecDeque<Arc<Event>>,
    /// The queue overflowed: what was in it is gone, and so is everything published until the
    /// stream takes this flag (the fresh snapshot it then reads covers all of it).
    overflowed: bool,
}

/// What a stream takes from its queue.
#[derive(Debug)]
pub enum Received {
    /// Events, in the order they were published.
    Events(Vec<Arc<Event>>),
    /// The queue overflowed: events were dropped, the stream must start over from a snapshot.
    Overflowed,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `event`; whether this overflowed the queue.
    fn push(&self, event: &Arc<Event>) -> bool {
        let mut p = self.lock();
        if p.overflowed {
            return false;
        }
        if p.events.len() >= QUEUE_BOUND {
            // Free the memory now, not when the stream gets round to it.
            p.events = VecDeque::new();
            p.overflowed = true;
            drop(p);
            self.ready.notify_one();
            return true;
        }
        let was_empty = p.events.is_empty();
        p.events.push_back(event.clone());
        drop(p);
        // A stream that found its queue not empty takes everything before it waits again, so one
        // wake-up per batch of events is enough.
        if was_empty {
            self.ready.notify_one();
        }
        false
    }

    fn take(&self, max: usize) -> Option<Received> {
        let mut p = self.lock();
        if p.overflowed {
            p.overflowed = false;
            p.events = VecDeque::new();
            return Some(Received::Overflowed);
        }
        if p.events.is_empty() {
            return None;
        }
        let n = p.events.len().min(max.max(1));
        Some(Received::Events(p.events.drain(..n).collect()))
    }

    fn len(&self) -> usize {
        self.lock().events.len()
    }
}

impl SyncHub {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new stream of `agent`, under the agent's own ID until [`Subscription::route`]
    /// says which node groups it serves. Events published from now on that concern it are queued.
    pub fn subscribe(self: &Arc<Self>, agent: &SpiffeId) -> Subscription {
        let queue = Arc::new(Queue::default());
        let mut r = self.lock();
        let id = r.next_id;
        r.next_id += 1;
        r.streams.insert(id, Registered { queue: queue.clone(), keys: Vec::new() });
        r.set_keys(id, vec![agent.clone()]);
        Subscription { hub: self.clone(), id, queue }
    }

    /// Queues `event` for every stream it concerns.
    pub fn publish(&self, event: Event) {
        self.publish_all(std::iter::once(event));
    }

    /// Queues each event for the streams it concerns, in order, under one lock: a batch of changes
    /// wakes each stream it concerns once.
    pub fn publish_all(&self, events: impl IntoIterator<Item = Event>) {
        let r = self.lock();
        let mut targets = Vec::new();
        for event in events {
            let event = Arc::new(event);
            targets.clear();
            match &*event {
                Event::EntryUpserted { entry, previous_parent } => {
                    r.streams_of(&entry.parent_id, &mut targets);
                    if let Some(previous) = previous_parent.as_ref().filter(|p| **p != entry.parent_id) {
                        r.streams_of(previous, &mut targets);
                        // A stream under both parents (its agent and one of its groups) hears once.
                        targets.sort_unstable();
                        targets.dedup();
                    }
                }
                Event::EntryDeleted { parent, .. } => r.streams_of(parent, &mut targets),
                Event::AgentAttested { agent, .. } | Event::AgentRemoved { agent, .. } => {
                    r.streams_of(agent, &mut targets)
                }
                // Membership of a group is decided by each stream from its agent's node selectors,
                // and bundle changes and resyncs concern everyone.
                Event::BundleChanged
                | Event::GroupChanged { .. }
                | Event::PoliciesChanged
                | Event::Resync => targets.extend(r.streams.keys().copied()),
                // Secret watches are woken by `AppState::publish_all`, never a sync stream.
                Event::SecretChanged { .. } => {}
            }
            for id in &targets {
                if let Some(s) = r.streams.get(id) {
                    if s.queue.push(&event) {
                        self.overflows.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            self.routed.fetch_add(targets.len() as u64, Ordering::Relaxed);
        }
    }

    /// The hub's metrics in the text exposition format.
    pub fn render_metrics(&self, out: &mut String) {
        use vouch_core::metrics::{counter, gauge};
        gauge(out, "vouch_sync_streams", "Open agent sync streams.", self.streams());
        counter(
            out,
            "vouch_sync_events_routed_total",
            "Changes queued for agent sync streams, one per stream a change concerns.",
            self.routed.load(Ordering::Relaxed),
        );
        counter(
            out,
            "vouch_sync_overflows_total",
            "Sync streams that fell too far behind and were sent a fresh snapshot instead.",
            self.overflows.load(Ordering::Relaxed),
        );
    }

    /// Open streams.
    pub fn streams(&self) -> usize {
        self.lock().streams.len()
    }

    /// Events queued and not yet taken, over all streams (bounded by [`QUEUE_BOUND`] per stream).
    pub fn queued(&self) -> usize {
        self.lock().streams.values().map(|s| s.queue.len()).sum()
    }
}

impl Registry {
    fn streams_of(&self, parent: &SpiffeId, out: &mut Vec<u64>) {
        if let Some(ids) = self.by_parent.get(parent) {
            out.extend_from_slice(ids);
        }
    }

    fn set_keys(&mut self, id: u64, keys: Vec<SpiffeId>) {
        let Some(registered) = self.streams.get_mut(&id) else { return };
        let old = std::mem::replace(&mut registered.keys, keys.clone());
        for key in old {
            if let Some(ids) = self.by_parent.get_mut(&key) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.by_parent.remove(&key);
                }
            }
        }
        for key in keys {
            let ids = self.by_parent.entry(key).or_default();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
}

/// One open stream's registration; dropping it unregisters the stream.
pub struct Subscription {
    hub: Arc<SyncHub>,
    id: u64,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Subscription {
    /// Registers the stream under `agent` and the node `groups` it serves (instead of what it was
    /// registered under). Call it before reading the snapshot that reflects these groups, so no
    /// change under a new group falls between the two.
    pub fn route<'a>(&self, agent: &'a SpiffeId, groups: impl IntoIterator<Item = &'a SpiffeId>) {
        let keys = std::iter::once(agent).chain(groups).cloned().collect();
        self.hub.lock().set_keys(self.id, keys);
    }

    /// Waits for queued events and takes up to `max` of them (or learns of an overflow).
    /// Cancel-safe: events are taken only when the call returns them.
    pub async fn next(&self, max: usize) -> Received {
        loop {
            if let Some(received) = self.queue.take(max) {
                return received;
            }
            // A push between the check above and this wait leaves a permit, so it is not missed.
            self.queue.ready.notified().await;
        }
    }

    /// What is queued now, without waiting (`None` when nothing is).
    pub fn try_next(&self, max: usize) -> Option<Received> {
        self.queue.take(max)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut r = self.hub.lock();
        r.set_keys(self.id, Vec::new());
        r.streams.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vouch_core::{Entry, EntryId};

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://example.org/{s}")).unwrap()
    }

    fn entry(name: &str, parent: &SpiffeId) -> Arc<Entry> {
        let spec: vouch_core::EntrySpec = serde_json::from_value(serde_json::json!({
            "id": name,
            "spiffe_id": format!("spiffe://example.org/{name}"),
            "parent_id": parent.to_string(),
            "selectors": ["unix:uid:1"],
        }))
        .unwrap();
        let td = vouch_core::TrustDomain::new("example.org").unwrap();
        Arc::new(Entry::create(spec, EntryId::new(name).unwrap(), &td, 0).unwrap())
    }

    fn upsert(name: &str, parent: &SpiffeId, previous: Option<&SpiffeId>) -> Event {
        Event::EntryUpserted { entry: entry(name, parent), previous_parent: previous.cloned() }
    }

    /// The ids of the entry events taken, in order ("-x" for a delete of x).
    fn taken(s: &Subscription) -> Vec<String> {
        match s.try_next(usize::MAX) {
            None => Vec::new(),
            Some(Received::Overflowed) => vec!["overflowed".into()],
            Some(Received::Events(events)) => events
                .iter()
                .map(|e| match &**e {
                    Event::EntryUpserted { entry, .. } => entry.id.to_string(),
                    Event::EntryDeleted { id, .. } => format!("-{id}"),
                    other => format!("{other:?}"),
                })
                .collect(),
        }
    }

    #[test]
    fn an_entry_change_is_queued_only_for_the_streams_of_its_parent() {
        let hub = Arc::new(SyncHub::default());
        let (a, b) = (id("agent/a"), id("agent/b"));
        let (sa, sb) = (hub.subscribe(&a), hub.subscribe(&b));
        hub.publish(upsert("x", &a, None));
        hub.publish(Event::EntryDeleted { id: EntryId::new("y").unwrap(), parent: a.clone() });
        assert_eq!(taken(&sa), ["x", "-y"]);
        assert!(taken(&sb).is_empty(), "another agent's stream is not even woken");
        // Events about one agent go to its streams only; bundle changes to all.
        hub.publish(Event::AgentRemoved { agent: b.clone(), reason: vouch_api::agent::CloseReason::Evicted });
        hub.publish(Event::BundleChanged);
        assert!(matches!(sa.try_next(10), Some(Received::Events(e)) if e.len() == 1));
        assert!(matches!(sb.try_next(10), Some(Received::Events(e)) if e.len() == 2));
    }

    #[test]
    fn a_moved_entry_reaches_its_old_and_new_parent_once_each() {
        let hub = Arc::new(SyncHub::default());
        let (a, b, g) = (id("agent/a"), id("agent/b"), id("vouch/group/g"));
        let (sa, sb) = (hub.subscribe(&a), hub.subscribe(&b));
        sa.route(&a, [&g]);
        hub.publish(upsert("x", &b, Some(&a)));
        assert_eq!((taken(&sa), taken(&sb)), (vec!["x".into()], vec!["x".into()]));
        // Moved between two parents of the same stream: queued once.
        hub.publish(upsert("x", &g, Some(&a)));
        assert_eq!(taken(&sa), ["x"]);
        assert!(taken(&sb).is_empty());
    }

    #[test]
    fn group_entries_reach_every_stream_routed_to_the_group_and_routes_follow_changes() {
        let hub = Arc::new(SyncHub::default());
        let g = id("vouch/group/g");
        let agents: Vec<SpiffeId> = (0..3).map(|i| id(&format!("agent/{i}"))).collect();
        let subs: Vec<Subscription> = agents.iter().map(|a| hub.subscribe(a)).collect();
        subs[0].route(&agents[0], [&g]);
        subs[1].route(&agents[1], [&g]);
        hub.publish(upsert("w", &g, None));
        assert_eq!(subs.iter().map(taken).collect::<Vec<_>>(), [vec!["w"], vec!["w"], vec![]]);
        // Leaving the group stops its changes; the agent's own still arrive.
        subs[1].route(&agents[1], []);
        hub.publish(upsert("w", &g, None));
        hub.publish(upsert("own", &agents[1], None));
        assert_eq!(subs.iter().map(taken).collect::<Vec<_>>(), [vec!["w"], vec!["own"], vec![]]);
        // A closed stream is forgotten.
        drop(subs);
        assert_eq!(hub.streams(), 0);
        assert!(hub.lock().by_parent.is_empty());
    }

    #[test]
    fn a_stream_that_does_not_keep_up_overflows_to_a_resync_and_holds_nothing() {
        let hub = Arc::new(SyncHub::default());
        let a = id("agent/a");
        let s = hub.subscribe(&a);
        for i in 0..QUEUE_BOUND {
            hub.publish(upsert(&format!("e{i}"), &a, None));
        }
        assert_eq!(hub.queued(), QUEUE_BOUND);
        // One more, and everything queued is dropped; later events too, until the stream takes
        // the overflow (its snapshot, read afterwards, covers them).
        for i in 0..10 {
            hub.publish(upsert(&format!("late{i}"), &a, None));
        }
        assert_eq!(hub.queued(), 0, "an overflowed queue holds nothing");
        assert_eq!(taken(&s), ["overflowed"]);
        hub.publish(upsert("after", &a, None));
        assert_eq!(taken(&s), ["after"]);
    }

    #[tokio::test]
    async fn a_batch_is_taken_in_one_wake_up_in_publish_order() {
        let hub = Arc::new(SyncHub::default());
        let a = id("agent/a");
        let s = hub.subscribe(&a);
        let waiting = tokio::spawn({
            let hub = hub.clone();
            let a = a.clone();
            async move {
                tokio::task::yield_now().await;
                hub.publish_all((0..100).map(|i| upsert(&format!("e{i}"), &a, None)));
            }
        });
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), s.next(1000)).await.unwrap();
        waiting.await.unwrap();
        let Received::Events(events) = got else { panic!("no overflow expected") };
        let ids: Vec<String> = events
            .iter()
            .map(|e| match &**e {
                Event::EntryUpserted { entry, .. } => entry.id.to_string(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(ids, (0..100).map(|i| format!("e{i}")).collect::<Vec<_>>());
        // `max` bounds one take.
        hub.publish_all((0..5).map(|i| upsert(&format!("f{i}"), &a, None)));
        assert!(matches!(s.try_next(2), Some(Received::Events(e)) if e.len() == 2));
        assert!(matches!(s.try_next(10), Some(Received::Events(e)) if e.len() == 3));
        assert!(s.try_next(10).is_none());
    }
}
