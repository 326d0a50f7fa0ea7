//! The agent's one reading of the system clock. Everything below the entry points (attestation,
//! caches, rotation arithmetic) takes `now` as a parameter, so tests can set it; only the tasks that
//! serve callers and rotate SVIDs ask here.

use std::time::SystemTime;

/// The current time.
#[allow(clippy::disallowed_methods)] // the one allowed place
pub fn now() -> SystemTime {
    SystemTime::now()
}
