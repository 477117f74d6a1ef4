//! What the runtime holds of an aggregate between commands, and what a snapshot restores.

use shared::Version;

use crate::domain::AnyState;

/// A loaded aggregate.
#[derive(Clone)]
pub struct Loaded {
    /// State after its last event.
    pub state: AnyState,
    /// Number of events.
    pub version: Version,
    /// Stream sequence of the last event (0 if none).
    pub last_seq: u64,
    /// The version of the newest snapshot known to cover this aggregate (written or read by
    /// this instance; 0 if none): the next one is due `snapshot_every` events after it.
    pub snapshot_at: Version,
}
