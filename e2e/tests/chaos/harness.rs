//! The stack under test: `scripts/stack.sh up` or `cluster-up` in a temporary directory on free
//! ports, with the debug service binaries; `kill` / `start` one process through the same script
//! (its recorded command line); `down` on drop.

use e2e::target_profile_dir;
use std::path::PathBuf;

use std::time::{Duration, Instant};

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

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `within`.
pub(crate) async fn poll<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
