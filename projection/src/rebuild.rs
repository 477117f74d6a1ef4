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
    /// Another rebuild switched the pointer first.
    #[error("another rebuild of this view finished first (generation {0}); nothing switched")]
    Raced(u32),
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
        Ok(store::read_generation(&self.pointers, view).await?.0)
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

    /// Replays the whole stream into a fresh generation, then makes it the live one and removes
    /// the old one. `on_progress` is called a few times a second.
    pub async fn rebuild(
        &self,
        view: Arc<dyn View>,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<u32, RebuildError> {
        let (old, revision) = store::read_generation(&self.pointers, &*view).await?;
        let new = old + 1;
        // leftovers of an interrupted rebuild of the same generation start over
        remove_generation(&self.js, &*view, new).await;
        let started = Instant::now();
        let projector = match self
            .load(view.clone(), new, started, &mut on_progress)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                remove_generation(&self.js, &*view, new).await;
                return Err(e);
            }
        };
        let rt = projector.runtime().clone();
        let stop = CancellationToken::new();
        let run = tokio::spawn(projector.run(stop.clone()));
        let result = self.follow(&rt, started, &mut on_progress).await;
        let switched = match result {
            Ok(()) => {
                let pointer = serde_json::to_vec(&serde_json::json!({ "generation": new }))
                    .unwrap_or_default();
                let key = store::generation_key(&*view);
                let put = match revision {
                    Some(rev) => self
                        .pointers
                        .update(&key, pointer.into(), rev)
                        .await
                        .map_err(|e| e.to_string()),
                    None => self
                        .pointers
                        .create(&key, pointer.into())
                        .await
                        .map_err(|e| e.to_string()),
                };
                match put {
                    Ok(_) => Ok(new),
                    Err(_) => Err(RebuildError::Raced(
                        store::read_generation(&self.pointers, &*view).await?.0,
                    )),
                }
            }
            Err(e) => Err(e),
        };
        stop.cancel();
        let _ = run.await;
        match &switched {
            Ok(_) => {
                // let every instance notice the pointer (it polls every 500 ms) before the old
                // generation goes away
                tokio::time::sleep(POINTER_POLL * 6).await;
                remove_generation(&self.js, &*view, old).await;
                tracing::info!(view = %view.name(), generation = new, "rebuild switched");
            }
            Err(_) => remove_generation(&self.js, &*view, new).await,
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
                if let Ok((g, _)) = store::read_generation(&pointers, &*view).await
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
