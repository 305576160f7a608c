//! The HTTP JSON API.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use converge_crdt::VersionVector;
use converge_doc::PathChange;
use converge_sync::membership::is_system_object;
use futures_util::SinkExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::node::{Node, NodeError};
use crate::sync::{WsIn, max_ws_message};

/// Largest request body accepted: 16 MiB.
const MAX_BODY: usize = 16 << 20;

/// Read buffer of a sync WebSocket. tungstenite zero-fills its whole read
/// buffer on the first read, so its 128 KiB default made every open sync
/// session cost ~140 KiB of RSS (the `node` bench's `idle-sessions-10k`).
/// The buffer still grows to the frame being read, so large frames (catch-up
/// batches up to the 1 MiB frame limit) are read whole.
const SYNC_READ_BUFFER: usize = 8 << 10;

/// Largest document encoding `POST /v1/docs/{id}/import` accepts: 64 MiB.
const MAX_IMPORT_BODY: usize = 64 << 20;

#[derive(Clone)]
struct AppState {
    node: Arc<Node>,
    metrics: Option<PrometheusHandle>,
}

/// The HTTP API of `node`. `metrics` renders `/metrics` (Prometheus text);
/// without it the route answers 404.
pub fn router(node: Arc<Node>, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .route("/v1/status", get(status))
        .route("/v1/docs", get(list_docs))
        .route("/v1/docs/{id}", get(get_doc).delete(delete_doc))
        .route("/v1/docs/{id}/changes", post(post_changes))
        .route("/v1/docs/{id}/watch", get(watch_doc))
        .route("/v1/docs/{id}/export", get(export_doc))
        .route(
            "/v1/docs/{id}/import",
            post(import_doc).layer(DefaultBodyLimit::max(MAX_IMPORT_BODY)),
        )
        .route("/v1/sync", get(sync_socket))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route".into())
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(AppState { node, metrics })
}

/// Serves `node` on `listener` until `shutdown` completes, then finishes
/// in-flight requests and returns.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // One global recorder per process; a second node in the same process
    // (tests) serves without metrics.
    let metrics = PrometheusBuilder::new().install_recorder().ok();
    // Without TCP_NODELAY a small frame written while another is still
    // unacknowledged waits for the peer's delayed ACK (~40 ms on Linux):
    // that was the p50 of sync acks and of propagation to a peer.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let mut peers: Vec<_> = (0..node.config().peers.len())
        .map(|i| tokio::spawn(crate::sync::run_peer(node.clone(), i)))
        .collect();
    // Membership and gossip (when configured) run beside the peers.
    peers.push(tokio::spawn(crate::gossip::run_gossip(node.clone())));
    let stopping = node.clone();
    let served = axum::serve(listener, router(node, metrics))
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Leave the cluster first (durably), so the sessions push the
            // `left` entry to their peers before they close.
            crate::gossip::leave(&stopping).await;
            // Sync sessions are upgraded connections, which graceful
            // shutdown does not wait for: tell them to close.
            stopping.sync().stop();
        })
        .await;
    for p in peers {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), p).await;
    }
    served
}

/// A JSON error response: `{"error": {"code", "message"}}`.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: String) -> Self {
        Self {
            status,
            code,
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("converge_http_errors_total", "code" => self.code).increment(1);
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let (status, code) = match &e {
            NodeError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            NodeError::Deleted(_) => (StatusCode::GONE, "deleted"),
            NodeError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            NodeError::Doc(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_change"),
            NodeError::Storage(_) | NodeError::DataDir { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "storage")
            }
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        Self::new(status, code, e.to_string())
    }
}

fn vv_json(vv: &VersionVector) -> Value {
    Value::Object(
        vv.iter()
            .map(|(r, c)| (r.to_string(), Value::from(c)))
            .collect(),
    )
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(h) => ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are not enabled in this process".into(),
        )
        .into_response(),
    }
}

async fn status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let node = state.node.clone();
    let store = node.store().clone();
    let feed_head = tokio::task::spawn_blocking(move || store.feed_head())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError::from(NodeError::from(e)))?;
    Ok(Json(json!({
        "replica": node.replica().to_string(),
        "open_docs": node.open_docs(),
        "feed_head": feed_head,
        "sync": node.sync().status(),
        "membership": node.sync().members.status(node.sync().now()),
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_docs(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    // The node's own objects (membership) are not the user's documents:
    // they are left out, and pages are topped up past them so that a page
    // is short only at the end.
    let (mut ids, mut after) = (Vec::new(), q.after);
    let next = loop {
        let want = limit - ids.len();
        let page = state.node.list(q.prefix.clone(), after, want).await?;
        let full = page.len() == want;
        after = page.last().cloned();
        ids.extend(page.into_iter().filter(|id| !is_system_object(id)));
        if !full {
            break None;
        }
        if ids.len() == limit {
            break after;
        }
    };
    Ok(Json(json!({"docs": ids, "next_after": next})))
}

async fn get_doc(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.node.get(&id).await?))
}

async fn delete_doc(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let deleted = state.node.delete(&id).await?;
    Ok(Json(json!({"deleted": deleted})))
}

async fn post_changes(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<Vec<PathChange>>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(changes) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", e.body_text()))?;
    let vv = state.node.change(&id, &changes).await?;
    metrics::counter!("converge_http_changes_total").increment(1);
    Ok(Json(json!({"version": vv_json(&vv)})))
}

async fn watch_doc(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rx = state.node.watch(&id).await?;
    // The stream ends when the node stops, or graceful shutdown would wait
    // for the watcher to hang up.
    let mut stopping = state.node.sync().stopping();
    let stopped = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let stream = futures_util::StreamExt::take_until(BroadcastStream::new(rx), stopped);
    let stream = stream.filter_map(|batch| {
        // A watcher that falls behind skips what it missed (a lagged error);
        // it can re-read the document to resynchronise.
        let batch = batch.ok()?;
        let data = serde_json::to_string(&*batch).ok()?;
        Some(Ok::<_, Infallible>(
            Event::default().event("patches").data(data),
        ))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// `GET /v1/docs/{id}/export`: the document with its whole history in
/// converge-doc's canonical encoding (`application/octet-stream`).
async fn export_doc(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let bytes = state.node.export(&id).await?;
    metrics::counter!("converge_http_exports_total").increment(1);
    Ok(([("content-type", "application/octet-stream")], bytes).into_response())
}

/// `POST /v1/docs/{id}/import`: merges an encoding as `export` gives into
/// the document; answers with what it added once durable.
async fn import_doc(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let outcome = state.node.import(&id, body.to_vec()).await?;
    metrics::counter!("converge_http_imports_total").increment(1);
    Ok(Json(json!({
        "ops_added": outcome.ops_added,
        "entries": outcome.entries,
        "version": vv_json(&outcome.version),
    })))
}

/// `GET /v1/sync`: a WebSocket speaking the sync protocol, one frame per
/// binary message. Peers are trusted (authentication is future work).
async fn sync_socket(
    State(state): State<AppState>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let Some(permit) = state.node.sync().try_admit() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_sessions",
            "this node serves its most sync sessions already; retry later".into(),
        ));
    };
    let node = state.node.clone();
    Ok(ws
        .max_message_size(max_ws_message())
        .max_frame_size(max_ws_message())
        .read_buffer_size(SYNC_READ_BUFFER)
        .on_upgrade(move |socket| async move {
            crate::sync::serve_connection(node, server_socket(socket)).await;
            drop(permit);
        }))
}

/// Adapts axum's WebSocket to the sync driver's shape.
fn server_socket(
    socket: WebSocket,
) -> impl futures_util::Stream<Item = Result<WsIn, axum::Error>>
+ futures_util::Sink<Vec<u8>, Error = axum::Error>
+ Unpin {
    futures_util::StreamExt::map(socket, |m| {
        m.map(|m| match m {
            Message::Binary(b) => WsIn::Binary(b.into()),
            Message::Ping(_) | Message::Pong(_) => WsIn::Ignore,
            Message::Close(_) => WsIn::Close,
            Message::Text(_) => WsIn::Unexpected,
        })
    })
    .with(|frame: Vec<u8>| std::future::ready(Ok(Message::Binary(frame.into()))))
}
