//! NATS connection options and ownership of the events stream, the same for both services.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use shared::{Retention, Storage, StreamSpec};

use crate::differences::Differences;

/// How to reach NATS. Every field comes from a flag or its environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated for a cluster.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// A NATS credentials (.creds) file.
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// User name for user/password authentication.
    #[arg(long, env = "NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// Password for user/password authentication.
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// A PEM file of CA certificates to trust for TLS (enables TLS).
    #[arg(long, env = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Replicas of the events stream when this service creates it (3 on a 3-node cluster).
    #[arg(long, env = "STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// How long start-up keeps retrying while NATS or JetStream is not usable yet (server
    /// still starting, no meta leader, too slow to answer), in seconds.
    #[arg(long, env = "STARTUP_TIMEOUT_SECS", default_value_t = 60)]
    pub startup_timeout_secs: u64,
}

impl NatsArgs {
    /// The start-up deadline.
    pub fn startup_timeout(&self) -> Duration {
        Duration::from_secs(self.startup_timeout_secs)
    }
}

/// Why the events stream cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The stream exists with a configuration we cannot work with; we never rewrite it.
    #[error(
        "stream {name} exists with an incompatible configuration ({}); refusing to start. \
         Fix or remove the stream, or point this service at another NATS account",
        .differences.join("; ")
    )]
    Incompatible {
        /// The stream name.
        name: String,
        /// One entry per difference, e.g. `subjects: expected [..], found [..]`.
        differences: Vec<String>,
    },
    /// The server could not be asked.
    #[error("cannot read or create stream {name}: {source}")]
    Nats {
        /// The stream name.
        name: String,
        /// The client error.
        source: async_nats::Error,
    },
}

impl StreamError {
    /// Whether trying again cannot help: an incompatible stream stays incompatible.
    pub fn is_permanent(&self) -> bool {
        matches!(self, StreamError::Incompatible { .. })
    }
}

/// What [`retry_startup`] logs (WARN, after what it was doing) for each failed attempt.
pub const RETRYING: &str = "failed; retrying";

/// Runs a start-up `step` (stream, buckets, consumers: every step is get-or-create, so it can
/// run again) until it succeeds, a `permanent` error comes back, or `within` has passed.
/// A cluster that is still electing its meta leader, or a server that has not come up yet,
/// delays start-up instead of failing it. Each failed attempt is logged with its error;
/// giving up returns the last error with what was tried.
///
/// # Errors
/// The permanent error, or the last error once `within` has passed.
pub async fn retry_startup<T, F, Fut>(
    what: &str,
    within: Duration,
    permanent: impl Fn(&anyhow::Error) -> bool,
    mut step: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1u32;
    loop {
        // an attempt may hang on a server that does not answer: it gets what is left
        let left = within.saturating_sub(started.elapsed());
        let result = match tokio::time::timeout(left, step()).await {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!("no answer within {left:?}")),
        };
        match result {
            Ok(value) => {
                if attempt > 1 {
                    tracing::info!(
                        attempt,
                        waited_ms = started.elapsed().as_millis(),
                        "{what}: done"
                    );
                }
                return Ok(value);
            }
            Err(e) if permanent(&e) => return Err(e),
            Err(e) => {
                let waited = started.elapsed();
                if waited + delay >= within {
                    return Err(e.context(format!(
                        "{what}: still failing after {attempt} attempts in {:.1} s \
                         (the start-up timeout is {} s)",
                        waited.as_secs_f64(),
                        within.as_secs()
                    )));
                }
                tracing::warn!(
                    attempt,
                    error = format!("{e:#}"),
                    retry_in_ms = delay.as_millis(),
                    "{what} {RETRYING}"
                );
                tokio::time::sleep(delay).await;
                // 100 ms doubling to 2 s, with jitter so instances do not retry in lockstep
                let next = delay.saturating_mul(2).min(Duration::from_secs(2));
                delay = next / 2 + next.mul_f64(rand::random::<f64>() / 2.0);
                attempt += 1;
            }
        }
    }
}

/// Connects with reconnect-forever and back-off; the connection name is
/// `<service>-<instance>`, so `nats server report connections` shows who is who.
pub async fn connect(
    args: &NatsArgs,
    service: &str,
    instance: &str,
) -> Result<async_nats::Client, async_nats::Error> {
    let name = format!("{service}-{instance}");
    let mut opts = async_nats::ConnectOptions::new()
        .name(name.clone())
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempt| {
            // 50 ms doubling to 5 s, with jitter so instances do not reconnect in lockstep
            let base = 50u64.saturating_mul(1 << attempt.min(7)).min(5_000);
            Duration::from_millis(base / 2 + rand::random_range(0..=base / 2))
        })
        .event_callback(move |event| {
            let connection = name.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!(%connection, "nats connected");
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(%connection, "nats disconnected");
                    }
                    other => tracing::info!(%connection, event = %other, "nats event"),
                }
            }
        });
    if let Some(creds) = &args.nats_creds {
        opts = opts
            .credentials_file(creds)
            .await
            .map_err(|e| format!("reading the NATS credentials file {}: {e}", creds.display()))?;
    }
    if let (Some(user), Some(pass)) = (&args.nats_user, &args.nats_password) {
        opts = opts.user_and_password(user.clone(), pass.clone());
    }
    if let Some(ca) = &args.nats_tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    let urls: Vec<&str> = args.nats_url.split(',').map(str::trim).collect();
    Ok(opts.connect(urls).await?)
}

/// Fails fast, naming the servers, while the client has no connection: a start-up step
/// then retries quickly instead of waiting out a request timeout.
///
/// # Errors
/// When the client is not connected right now.
pub fn require_connected(client: &async_nats::Client, args: &NatsArgs) -> anyhow::Result<()> {
    if is_connected(client) {
        Ok(())
    } else {
        anyhow::bail!("not connected to NATS at {}", args.nats_url)
    }
}

/// Whether a JetStream publish error says the expected last (subject) sequence did not hold:
/// by kind, or by the server's error code (10071; 10164 is the same check reported for an
/// atomic batch, which the client maps to `Other`). Never by the message's text. The write
/// side's conditional append and the read side's compare-and-set commit both ask this.
pub fn is_wrong_last_sequence(e: &jetstream::context::PublishError) -> bool {
    e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|api| {
                matches!(
                    api.error_code(),
                    jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                        | jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
                )
            })
}

/// Whether the client is connected right now (readiness).
pub fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// The client configuration for a [`StreamSpec`].
pub fn stream_config(spec: &StreamSpec) -> stream::Config {
    stream::Config {
        name: spec.name.to_owned(),
        subjects: spec.subjects.clone(),
        retention: match spec.retention {
            Retention::Limits => stream::RetentionPolicy::Limits,
        },
        storage: match spec.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        num_replicas: spec.replicas,
        duplicate_window: spec.duplicate_window,
        allow_direct: spec.allow_direct,
        allow_atomic_publish: spec.allow_atomic,
        deny_delete: spec.deny_delete,
        discard: stream::DiscardPolicy::New,
        description: Some("Event store: one subject per aggregate".to_owned()),
        ..Default::default()
    }
}

/// What differs between the stream we need and the one the server has, in words. Replicas,
/// limits and the description are operator choices and are not compared.
pub fn incompatibilities(spec: &StreamSpec, found: &stream::Config) -> Vec<String> {
    let want = stream_config(spec);
    let mut diffs = Differences::new();
    let mut found_subjects = found.subjects.clone();
    found_subjects.sort();
    diffs.check(
        "subjects",
        found_subjects == want.subjects,
        format!("{:?}", want.subjects),
        format!("{:?}", found.subjects),
    );
    diffs.compare("retention", &want.retention, &found.retention);
    diffs.check("allow_direct", found.allow_direct, true, found.allow_direct);
    diffs.check(
        "max_msgs_per_subject",
        found.max_messages_per_subject <= 0,
        "unlimited",
        found.max_messages_per_subject,
    );
    diffs.check(
        "max_age",
        found.max_age.is_zero(),
        "unlimited",
        format!("{:?}", found.max_age),
    );
    diffs.check(
        "discard",
        found.discard == stream::DiscardPolicy::New,
        "New (never drop old events)",
        format!("{:?}", found.discard),
    );
    diffs.into_vec()
}

/// Makes sure the events stream exists and is compatible: creates it from the shared
/// definition when missing, accepts it when compatible, and refuses (never rewrites) it
/// otherwise. Returns the stream's info (its configuration says, e.g., whether atomic batch
/// publish is allowed).
pub async fn ensure_stream(
    js: &jetstream::Context,
    spec: &StreamSpec,
) -> Result<stream::Info, StreamError> {
    let nats_err = |source: async_nats::Error| StreamError::Nats {
        name: spec.name.to_owned(),
        source,
    };
    let info = match js.get_stream(spec.name).await {
        Ok(mut s) => s.info().await.map_err(|e| nats_err(e.into()))?.clone(),
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            match js.create_stream(stream_config(spec)).await {
                Ok(mut s) => {
                    tracing::info!(
                        stream = spec.name,
                        replicas = spec.replicas,
                        "created stream"
                    );
                    s.info().await.map_err(|e| nats_err(e.into()))?.clone()
                }
                Err(create_err) => {
                    // another instance may have created it in between
                    let mut s = js
                        .get_stream(spec.name)
                        .await
                        .map_err(|_| nats_err(create_err.into()))?;
                    s.info().await.map_err(|e| nats_err(e.into()))?.clone()
                }
            }
        }
        Err(e) => return Err(nats_err(e.into())),
    };
    let differences = incompatibilities(spec, &info.config);
    if !differences.is_empty() {
        return Err(StreamError::Incompatible {
            name: spec.name.to_owned(),
            differences,
        });
    }
    if !info.config.allow_atomic_publish {
        tracing::warn!(
            stream = spec.name,
            "stream does not allow atomic batch publish: multi-event commands will be refused"
        );
    }
    Ok(info)
}

/// One stored message as a batch direct get returns it.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// Its stream sequence.
    pub seq: u64,
    /// Its subject.
    pub subject: String,
    /// Its body.
    pub payload: bytes::Bytes,
}

/// How long one page of a batch direct get may take to arrive.
const DIRECT_PAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Up to `max` messages of `stream` on `filter`, from sequence `from` on, in stream order: one
/// batch direct get (ADR-31; the stream must allow direct gets). No consumer is created.
///
/// # Errors
/// What failed, in words (a request that could not be sent, a page that did not arrive, a
/// refusal by the stream).
pub async fn direct_batch(
    client: &async_nats::Client,
    stream: &str,
    from: u64,
    filter: &str,
    max: usize,
) -> Result<Vec<RawMessage>, &'static str> {
    use futures::StreamExt as _;
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|_| "cannot subscribe")?;
    let request = serde_json::json!({"seq": from, "next_by_subj": filter, "batch": max});
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            bytes::Bytes::from(request.to_string()),
        )
        .await
        .map_err(|_| "cannot request a page")?;
    let mut out = Vec::new();
    loop {
        let msg = match tokio::time::timeout(DIRECT_PAGE_TIMEOUT, sub.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err("page subscription closed"),
            Err(_) => return Err("a page did not arrive in time"),
        };
        if let Some(status) = msg.status {
            // 204 ends a batch; 404: nothing (more) on the subject
            return match status.as_u16() {
                204 | 404 => Ok(out),
                _ => Err("the stream refused a page"),
            };
        }
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let seq = header("Nats-Sequence")
            .and_then(|v| v.parse().ok())
            .ok_or("a page message without Nats-Sequence")?;
        let subject = header("Nats-Subject").unwrap_or_default();
        out.push(RawMessage {
            seq,
            subject,
            payload: msg.payload,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incompatible_stream_is_refused_with_every_difference_named() {
        let found = stream::Config {
            name: shared::STREAM_NAME.to_owned(),
            subjects: vec!["other.>".to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            allow_direct: false,
            max_messages_per_subject: 5,
            max_age: Duration::from_secs(60),
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        };
        assert_eq!(
            incompatibilities(&StreamSpec::events(1), &found),
            [
                "subjects: expected [\"tenant.*.aggregate.*.*\"], found [\"other.>\"]",
                "retention: expected Limits, found WorkQueue",
                "allow_direct: expected true, found false",
                "max_msgs_per_subject: expected unlimited, found 5",
                "max_age: expected unlimited, found 60s",
                "discard: expected New (never drop old events), found Old",
            ]
        );
    }

    #[test]
    fn operator_choices_are_not_differences() {
        let spec = StreamSpec::events(1);
        let mut found = stream_config(&spec);
        found.num_replicas = 3;
        found.max_bytes = 1 << 30;
        found.description = None;
        found.subjects = vec![shared::STREAM_FILTER.to_owned()];
        assert!(incompatibilities(&spec, &found).is_empty());
    }
}
