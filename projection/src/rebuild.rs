//! Generations and rebuilds.
//!
//! A view version's documents live in one *generation*: generation 0 is the original bucket
//! `VIEW_<name>_v<version>` with the durable `view-<name>-v<version>`; a rebuild replays the
//! whole stream into generation `g + 1` (`VIEW_<name>_v<version>_g<g+1>`, consumer
//! `view-<name>-v<version>-g<g+1>`) while queries keep reading generation `g`. When the new
//! generation has caught up, the rebuild flips the pointer in `PROJECTION_GENERATIONS`; every
//! instance notices within half a second, serves queries from the new bucket and moves its
//! consumer loop to the new consumer. The old generation's consumer and buckets are removed
//! after a grace period. At no moment is there no caught-up bucket to read.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use serde::Serialize;

use crate::engine::{ConsumerSettings, Projector, StartError, ViewRuntime, bulk, ensure_consumer};
use crate::metrics::ViewMetrics;
use crate::store::{self, StoreError};
use crate::view::View;
use tokio_util::sync::CancellationToken;

/// How often instances look at the generation pointer.
const POINTER_POLL: Duration = Duration::from_millis(500);

/// A rebuild claim not renewed for this long is abandoned.
const CLAIM_EXPIRES: Duration = Duration::from_secs(60);

/// The live generation of one view version in this instance, swapped by a rebuild.
pub struct ViewSlot {
    current: RwLock<Arc<ViewRuntime>>,
    /// The last or running rebuild started from this instance.
    pub rebuild: Mutex<RebuildStatus>,
}

impl ViewSlot {
    /// A slot serving `rt`.
    pub fn new(rt: Arc<ViewRuntime>) -> Self {
        ViewSlot {
            current: RwLock::new(rt),
            rebuild: Mutex::new(RebuildStatus::default()),
        }
    }

    /// The generation queries read now.
    pub fn current(&self) -> Arc<ViewRuntime> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, rt: Arc<ViewRuntime>) {
        match self.current.write() {
            Ok(mut g) => *g = rt,
            Err(poisoned) => *poisoned.into_inner() = rt,
        }
    }
}

/// State of a rebuild, as the admin endpoint shows it.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct RebuildStatus {
    /// `idle`, `running`, `done` or `failed`.
    pub state: RebuildState,
    /// The generation being built (or built).
    pub generation: Option<u32>,
    /// Stream position the new generation has reached.
    pub done: u64,
    /// Stream position it must reach.
    pub total: u64,
    /// Events per second so far.
    pub rate: f64,
    /// Estimated seconds left.
    pub eta_secs: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Where the last rebuild started on this instance is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RebuildState {
    /// None started on this instance.
    #[default]
    Idle,
    /// Replaying the stream into a new generation.
    Running,
    /// Switched to the new generation.
    Done,
    /// Stopped with an error (see `error`).
    Failed,
}

/// Progress of a rebuild.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Position reached.
    pub done: u64,
    /// Position to reach.
    pub total: u64,
    /// Events per second.
    pub rate: f64,
    /// Estimated time left.
    pub eta: Option<Duration>,
}

impl Progress {
    /// Position `done` of `total`, a rebuild that started at `started`.
    fn at(done: u64, total: u64, started: Instant) -> Progress {
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let eta = (rate > 0.0 && total > done)
            .then(|| Duration::from_secs_f64((total - done) as f64 / rate));
        Progress {
            done,
            total,
            rate,
            eta,
        }
    }
}

/// Why a rebuild failed.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// Storage or NATS failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The new generation's consumer could not be set up.
    #[error("starting the new generation: {0}")]
    Start(StartError),
    /// Another instance holds the claim on the next generation.
    #[error(
        "generation {generation} of this view is being built by instance {instance} (last heard from {secs} s ago)"
    )]
    Running {
        /// The generation being built.
        generation: u32,
        /// The instance building it.
        instance: String,
        /// Seconds since that instance last renewed its claim.
        secs: u64,
    },
    /// The claim was taken over (it looked abandoned) or the pointer was changed by something
    /// else while this rebuild ran; it switched nothing and removed nothing.
    #[error(
        "this rebuild lost its claim on generation {0} (taken over, or the pointer was changed); nothing switched"
    )]
    ClaimLost(u32),
    /// The new generation made no progress for too long.
    #[error("the new generation made no progress for {0:?}")]
    Stalled(Duration),
}

impl RebuildError {
    /// Whether trying again cannot help (a consumer with another configuration is never
    /// overwritten), as opposed to NATS or JetStream being unavailable for now.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            RebuildError::Start(StartError::ConsumerMismatch { .. })
        )
    }
}

/// Everything needed to open generations of views.
#[derive(Clone)]
pub struct Generations {
    /// JetStream.
    pub js: jetstream::Context,
    /// The pointer bucket.
    pub pointers: kv::Store,
    /// Consumer settings.
    pub settings: ConsumerSettings,
    /// Metrics.
    pub metrics: ViewMetrics,
    /// This instance's id.
    pub instance: String,
    /// A rebuild claim not renewed for this long is abandoned (its instance died) and may be
    /// taken over; a running rebuild renews its claim four times as often.
    pub claim_expires: Duration,
}

/// The right to build the next generation of one view version, held in the view's pointer
/// ([`store::Pointer::rebuild`]) by compare-and-set on its revision: two instances asked to
/// rebuild the same view at once cannot both build (or delete) the same generation.
#[derive(Debug)]
pub struct Claim {
    revision: u64,
    /// The pointer as this claim wrote it: the live generation and the claimed one.
    pointer: store::Pointer,
}

impl Claim {
    /// The generation this claim builds.
    pub fn generation(&self) -> u32 {
        self.pointer.generation + 1
    }
}

impl Generations {
    /// Opens the pointer bucket.
    pub async fn open(
        js: &jetstream::Context,
        settings: ConsumerSettings,
        metrics: ViewMetrics,
        instance: &str,
    ) -> Result<Self, StoreError> {
        Ok(Generations {
            pointers: store::open_generations(js, settings.replicas).await?,
            js: js.clone(),
            settings,
            metrics,
            instance: instance.to_owned(),
            claim_expires: CLAIM_EXPIRES,
        })
    }

    /// Opens generation `g` of `view` and its consumer loop (creating buckets and consumer
    /// when missing, refusing a consumer with another configuration).
    pub async fn open_projector(
        &self,
        view: Arc<dyn View>,
        generation: u32,
    ) -> Result<Projector, RebuildError> {
        let rt = Arc::new(
            ViewRuntime::open(
                &self.js,
                view,
                self.metrics.clone(),
                self.settings.replicas,
                generation,
                &self.instance,
            )
            .await?,
        );
        Projector::new(&self.js, rt, self.settings)
            .await
            .map_err(RebuildError::Start)
    }

    /// The live generation of `view`.
    pub async fn live(&self, view: &dyn View) -> Result<u32, StoreError> {
        store::read_generation(&self.pointers, view).await
    }

    /// Runs the live generation's consumer loop until `shutdown`, moving to a new generation
    /// (and pointing `slot` at it) whenever a rebuild flips the pointer.
    pub async fn supervise(
        self,
        slot: Arc<ViewSlot>,
        mut projector: Projector,
        shutdown: CancellationToken,
    ) {
        loop {
            let rt = projector.runtime().clone();
            let generation = rt.generation;
            // this generation's tasks: cancelled by the service's shutdown, or by the watcher
            // when the pointer moves
            let child = shutdown.child_token();
            let watcher = tokio::spawn(watch_pointer(
                self.pointers.clone(),
                rt.view.clone(),
                generation,
                child.clone(),
            ));
            let lag = tokio::spawn(crate::engine::poll_lag(
                rt.clone(),
                projector.consumer().clone(),
                Duration::from_secs(5),
                child.clone(),
            ));
            let health = tokio::spawn(crate::engine::health::watch(
                rt.clone(),
                self.settings.stall_after,
                child.clone(),
            ));
            let retrier = tokio::spawn(crate::engine::retry_transient(rt.clone(), child.clone()));
            projector.run(child.clone()).await;
            watcher.abort();
            lag.abort();
            health.abort();
            retrier.abort();
            if shutdown.is_cancelled() {
                return;
            }
            // the pointer moved: open the new generation and switch queries to it
            projector = loop {
                let next = match self.live(&*rt.view).await {
                    Ok(g) => self.open_projector(rt.view.clone(), g).await,
                    Err(e) => Err(e.into()),
                };
                match next {
                    Ok(p) => break p,
                    Err(e) => {
                        tracing::warn!(view = %rt.view.name(), error = %e, "cannot open the new generation; retrying");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            };
            slot.set(projector.runtime().clone());
            tracing::info!(
                view = %rt.view.name(),
                from = generation,
                to = projector.runtime().generation,
                "switched to a rebuilt generation"
            );
        }
    }

    /// Claims the next generation of `view` for a rebuild by this instance; refused with
    /// [`RebuildError::Running`] while another instance holds an unexpired claim.
    pub async fn claim(&self, view: &dyn View) -> Result<Claim, RebuildError> {
        loop {
            let current = store::read_pointer(&self.pointers, view).await?;
            if let Some(other) = &current.pointer.rebuild {
                if current.age < self.claim_expires {
                    return Err(RebuildError::Running {
                        generation: other.generation,
                        instance: other.instance.clone(),
                        secs: current.age.as_secs(),
                    });
                }
                tracing::warn!(
                    view = %view.name(),
                    generation = other.generation,
                    instance = %other.instance,
                    silent_secs = current.age.as_secs(),
                    "taking over an abandoned rebuild claim"
                );
            }
            let old = current.pointer.generation;
            let pointer = store::Pointer {
                generation: old,
                rebuild: Some(store::RebuildClaim {
                    generation: old + 1,
                    instance: self.instance.clone(),
                }),
            };
            // another instance may claim (or switch) between the read and the write: read again
            if let Some(revision) =
                store::swap_pointer(&self.pointers, view, &pointer, current.revision).await?
            {
                return Ok(Claim { revision, pointer });
            }
        }
    }

    /// Replays the whole stream into the claimed generation, then makes it the live one and
    /// removes the old one. `on_progress` is called a few times a second. The claim is renewed
    /// while the rebuild runs; a rebuild that loses it stops and removes nothing.
    pub async fn rebuild(
        &self,
        view: Arc<dyn View>,
        mut claim: Claim,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<u32, RebuildError> {
        let (old, new) = (claim.pointer.generation, claim.generation());
        // a claim taken over since it was made (it expired) builds and removes nothing
        if !renew(&self.pointers, &*view, &mut claim).await? {
            return Err(RebuildError::ClaimLost(new));
        }
        let lost = CancellationToken::new();
        let keeper = ClaimKeeper::start(self, view.clone(), claim, lost.clone());
        // leftovers of an interrupted rebuild of the same generation start over
        remove_generation(&self.js, &*view, new).await;
        let started = Instant::now();
        let built = async {
            let projector = self
                .load(view.clone(), new, started, &mut on_progress)
                .await?;
            let rt = projector.runtime().clone();
            let stop = CancellationToken::new();
            let run = tokio::spawn(projector.run(stop.clone()));
            let followed = self.follow(&rt, started, &mut on_progress).await;
            stop.cancel();
            let _ = run.await;
            followed
        };
        let built = tokio::select! {
            r = built => r,
            () = lost.cancelled() => Err(RebuildError::ClaimLost(new)),
        };
        let mut claim = keeper.stop().await;
        let switched = match (built, claim.as_mut()) {
            (Ok(()), Some(claim)) => {
                let live = store::Pointer {
                    generation: new,
                    rebuild: None,
                };
                match store::swap_pointer(&self.pointers, &*view, &live, Some(claim.revision))
                    .await?
                {
                    Some(_) => Ok(new),
                    None => Err(RebuildError::ClaimLost(new)),
                }
            }
            (Ok(()), None) => Err(RebuildError::ClaimLost(new)),
            (Err(e), _) => Err(e),
        };
        match (&switched, claim) {
            (Ok(_), _) => {
                // let every instance notice the pointer (it polls every 500 ms) before the old
                // generation goes away
                tokio::time::sleep(POINTER_POLL * 6).await;
                remove_generation(&self.js, &*view, old).await;
                tracing::info!(view = %view.name(), generation = new, "rebuild switched");
            }
            (Err(_), Some(claim)) => {
                // still the claim's holder: nobody else writes into `new`, and the pointer does
                // not name it; remove it, then give the claim back
                remove_generation(&self.js, &*view, new).await;
                let free = store::Pointer {
                    generation: old,
                    rebuild: None,
                };
                if let Err(e) =
                    store::swap_pointer(&self.pointers, &*view, &free, Some(claim.revision)).await
                {
                    tracing::warn!(view = %view.name(), error = %e, "cannot release the rebuild claim; it expires by itself");
                }
            }
            (Err(e), None) => {
                tracing::warn!(view = %view.name(), generation = new, error = %e, "rebuild lost its claim; leaving the generation to its new holder");
            }
        }
        switched
    }

    /// The first phase of a rebuild: the backlog up to the stream's last sequence folded into
    /// generation `generation` in memory-bounded chunks ([`bulk::load`]), then the
    /// generation's durable consumer, starting after what was loaded.
    async fn load(
        &self,
        view: Arc<dyn View>,
        generation: u32,
        started: Instant,
        on_progress: &mut impl FnMut(&Progress),
    ) -> Result<Projector, RebuildError> {
        let rt = Arc::new(
            ViewRuntime::open(
                &self.js,
                view.clone(),
                self.metrics.clone(),
                self.settings.replicas,
                generation,
                &self.instance,
            )
            .await?,
        );
        let until = self.last_sequence().await?;
        let loaded = bulk::load(
            &self.js,
            &rt,
            until,
            self.settings.rebuild_chunk_bytes,
            |done| on_progress(&Progress::at(done, until, started)),
        )
        .await?;
        tracing::info!(
            view = %view.name(),
            generation,
            position = loaded.position,
            events = loaded.events,
            chunks = loaded.flushes,
            packs = loaded.packs,
            secs = started.elapsed().as_secs_f64(),
            stopped_early = loaded.stopped_early,
            "rebuild: backlog loaded in chunks; the generation's consumer goes on from there"
        );
        ensure_consumer(
            &self.js,
            &self
                .settings
                .consumer_config_after(&*view, generation, loaded.position),
        )
        .await
        .map_err(RebuildError::Start)?;
        Projector::new(&self.js, rt, self.settings)
            .await
            .map_err(RebuildError::Start)
    }

    /// Waits until `rt` has caught up with the stream's last sequence (re-read as it grows).
    async fn follow(
        &self,
        rt: &ViewRuntime,
        started: Instant,
        on_progress: &mut impl FnMut(&Progress),
    ) -> Result<(), RebuildError> {
        let mut last_move = Instant::now();
        let mut last_done = 0;
        let stall = (self.settings.ack_wait * 2).max(Duration::from_secs(60));
        loop {
            let total = self.last_sequence().await?;
            let done = rt.checkpoint().await?;
            on_progress(&Progress::at(done, total, started));
            if done >= total {
                return Ok(());
            }
            if done > last_done {
                last_done = done;
                last_move = Instant::now();
            } else if last_move.elapsed() > stall {
                return Err(RebuildError::Stalled(stall));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn last_sequence(&self) -> Result<u64, StoreError> {
        let mut stream = self
            .js
            .get_stream(shared::STREAM_NAME)
            .await
            .map_err(|e| StoreError::new("reading the stream", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| StoreError::new("reading the stream", e))?;
        Ok(info.state.last_sequence)
    }
}

/// Renews a [`Claim`] while its rebuild runs, cancelling `lost` when the pointer changed
/// under it.
struct ClaimKeeper {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Option<Claim>>,
}

impl ClaimKeeper {
    fn start(
        generations: &Generations,
        view: Arc<dyn View>,
        mut claim: Claim,
        lost: CancellationToken,
    ) -> Self {
        let stop = CancellationToken::new();
        let every = generations.claim_expires / 4;
        let pointers = generations.pointers.clone();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return Some(claim),
                        () = tokio::time::sleep(every) => {}
                    }
                    match renew(&pointers, &*view, &mut claim).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(view = %view.name(), generation = claim.generation(), "the rebuild claim was taken over; stopping this rebuild");
                            lost.cancel();
                            return None;
                        }
                        // NATS unavailable for now: the claim holds until it expires
                        Err(e) => {
                            tracing::warn!(view = %view.name(), error = %e, "cannot renew the rebuild claim");
                        }
                    }
                }
            }
        });
        ClaimKeeper { stop, task }
    }

    /// Stops renewing; the claim if it is still held.
    async fn stop(self) -> Option<Claim> {
        self.stop.cancel();
        self.task.await.ok().flatten()
    }
}

/// Writes `claim` again (compare-and-set), keeping its new revision: false when the pointer
/// changed since (the claim was taken over).
async fn renew(
    pointers: &kv::Store,
    view: &dyn View,
    claim: &mut Claim,
) -> Result<bool, StoreError> {
    let written = store::swap_pointer(pointers, view, &claim.pointer, Some(claim.revision)).await?;
    if let Some(revision) = written {
        claim.revision = revision;
    }
    Ok(written.is_some())
}

/// Cancels `generation` (a token of that generation's tasks) when the pointer leaves it; ends
/// when it is cancelled otherwise (the service shuts down).
async fn watch_pointer(
    pointers: kv::Store,
    view: Arc<dyn View>,
    generation: u32,
    tasks: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tasks.cancelled() => break,
            () = tokio::time::sleep(POINTER_POLL) => {
                if let Ok(g) = store::read_generation(&pointers, &*view).await
                    && g != generation
                {
                    break;
                }
            }
        }
    }
    tasks.cancel();
}

/// Deletes a generation's consumer and buckets (best effort).
async fn remove_generation(js: &jetstream::Context, view: &dyn View, generation: u32) {
    let consumer = shared::generation_consumer_name(&view.name(), view.version(), generation);
    if let Ok(stream) = js.get_stream(shared::STREAM_NAME).await {
        let _ = stream.delete_consumer(&consumer).await;
    }
    for bucket in [
        store::view_bucket(view, generation),
        store::parked_bucket(view, generation),
    ] {
        let _ = js.delete_key_value(&bucket).await;
    }
}
