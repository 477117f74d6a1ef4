//! `GET /v1/admin/health` (admin): what one instance sees of NATS and of the events stream —
//! its connection state and server, and the stream's messages, bytes, consumers and, on a
//! cluster, leader and replicas. Both services serve it; the operator console asks every
//! instance through the gateway (`/instances/<name>/health`).

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::problem::Problem;

/// One instance's view of NATS and of the events stream.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AdminHealth {
    /// `aggregate` or `projection`.
    pub service: String,
    /// The instance id (`INSTANCE_ID`).
    pub instance: String,
    /// This instance's NATS connection.
    pub nats: NatsConnection,
    /// The events stream, as JetStream reports it now.
    pub stream: StreamHealth,
}

/// A NATS connection's state and the server it is connected to.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NatsConnection {
    /// `connected`, `disconnected` or `pending`.
    pub state: String,
    /// The server's name (`server_name`).
    pub server_name: String,
    /// The server's version.
    pub server_version: String,
}

/// The events stream's state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StreamHealth {
    /// Stream name.
    pub name: String,
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// First sequence still stored.
    pub first_seq: u64,
    /// Last sequence assigned.
    pub last_seq: u64,
    /// Consumers of the stream.
    pub consumers: usize,
    /// Configured replicas.
    pub replicas: usize,
    /// The stream's RAFT group on a cluster (absent on a single server).
    pub cluster: Option<StreamCluster>,
}

/// Leader and replicas of a clustered stream.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StreamCluster {
    /// The cluster's name.
    pub name: Option<String>,
    /// The server leading the stream's RAFT group.
    pub leader: Option<String>,
    /// The other peers of the group.
    pub replicas: Vec<StreamPeer>,
}

/// One follower of a clustered stream.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StreamPeer {
    /// Server name.
    pub name: String,
    /// Up to date with the leader.
    pub current: bool,
    /// Considered offline by the group.
    pub offline: bool,
    /// Milliseconds since the leader last heard from it.
    pub active_ms: u64,
    /// Operations behind the leader.
    pub lag: Option<u64>,
}

/// What [`admin_health`] needs: the instance's NATS client and names.
#[derive(Clone)]
pub struct HealthState {
    client: async_nats::Client,
    service: &'static str,
    instance: String,
}

/// The route `GET /v1/admin/health` (put it behind [`crate::auth::require_auth`], which keeps
/// `/v1/admin/` to admin tokens).
pub fn routes(client: async_nats::Client, service: &'static str, instance: String) -> Router {
    Router::new()
        .route("/v1/admin/health", get(admin_health))
        .with_state(HealthState {
            client,
            service,
            instance,
        })
}

fn connection_state(client: &async_nats::Client) -> &'static str {
    match client.connection_state() {
        async_nats::connection::State::Connected => "connected",
        async_nats::connection::State::Disconnected => "disconnected",
        async_nats::connection::State::Pending => "pending",
    }
}

/// This instance's NATS connection and the events stream's state (admin).
#[utoipa::path(
    get,
    path = "/v1/admin/health",
    responses(
        (status = 200, description = "The instance's NATS connection and the events stream's state", body = AdminHealth),
        crate::openapi::CommonProblems,
    )
)]
pub async fn admin_health(State(s): State<HealthState>) -> Result<Response, Problem> {
    let state = connection_state(&s.client);
    let unavailable = |what: String| {
        tracing::warn!(error = %what, "admin health: stream state unavailable");
        Problem::unavailable(format!(
            "the stream's state is unavailable (NATS connection {state}): {what}"
        ))
        .with("nats_state", state)
        .with("instance", &s.instance)
    };
    let js = async_nats::jetstream::new(s.client.clone());
    let mut stream = js
        .get_stream(shared::STREAM_NAME)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let info = stream
        .info()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let server = s.client.server_info();
    let cluster = info.cluster.as_ref().map(|c| StreamCluster {
        name: c.name.clone(),
        leader: c.leader.clone(),
        replicas: c
            .replicas
            .iter()
            .map(|p| StreamPeer {
                name: p.name.clone(),
                current: p.current,
                offline: p.offline,
                active_ms: u64::try_from(p.active.as_millis()).unwrap_or(u64::MAX),
                lag: p.lag,
            })
            .collect(),
    });
    Ok(axum::Json(AdminHealth {
        service: s.service.to_owned(),
        instance: s.instance.clone(),
        nats: NatsConnection {
            state: state.to_owned(),
            server_name: server.server_name,
            server_version: server.version,
        },
        stream: StreamHealth {
            name: info.config.name.clone(),
            messages: info.state.messages,
            bytes: info.state.bytes,
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
            consumers: info.state.consumer_count,
            replicas: info.config.num_replicas,
            cluster,
        },
    })
    .into_response())
}
