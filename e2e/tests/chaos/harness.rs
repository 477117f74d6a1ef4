//! The stack under test: `scripts/stack.sh up` or `cluster-up` in a temporary directory on free
//! ports, with the debug service binaries; `kill` / `start` one process through the same script
//! (its recorded command line); `down` on drop.

use e2e::target_profile_dir;
use std::path::PathBuf;

use std::time::Duration;

pub(crate) use e2e::{Stack, Topology};

/// Sizes, from the environment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scale {
    /// `CHAOS_SCALE`, default 1.
    pub(crate) factor: u32,
}

impl Scale {
    pub(crate) fn from_env() -> Scale {
        let factor = env_u32("CHAOS_SCALE", 1).max(1);
        Scale { factor }
    }

    /// Concurrent clients of a fault scenario.
    pub(crate) fn clients(self) -> usize {
        (8 + 8 * self.factor) as usize
    }

    /// Cold accounts per tenant (hot ones: 3 per tenant).
    pub(crate) fn cold_accounts(self) -> usize {
        (20 * self.factor) as usize
    }

    /// Load before the fault and after the recovery.
    pub(crate) fn phase(self) -> Duration {
        Duration::from_secs(u64::from(2 + self.factor))
    }
}

pub(crate) fn env_u32(name: &str, default: u32) -> u32 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// `target/reliability/`, where the scenario reports go.
pub(crate) fn reliability_dir() -> PathBuf {
    target_profile_dir()
        .parent()
        .expect("target")
        .join("reliability")
}
