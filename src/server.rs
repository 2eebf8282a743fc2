//! Wiring: builds the parts of a node from its [`Config`], the axum router with its
//! tower-http layers, and the listener. [`Node`] is what `main`, the integration
//! tests and the benchmarks start. The files served at `/` are [`static_files`]'.

mod static_files;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

use crate::api;
use crate::backplane::Backplane;
use crate::backplane::memory::MemoryBackplane;
use crate::backplane::redis::{RedisBackplane, RedisOptions, RedisTls, TlsFiles};
use crate::config::Config;
use crate::connection::rate::ConnectionRate;
use crate::gaps;
use crate::hub::Hub;
use crate::hub::coalesce::Coalescer;
use crate::inbound::NodeInbound;
use crate::metrics::Metrics;
use crate::relay::Relay;
use crate::state::{AppState, Services};
use crate::subscriptions::Subscriptions;
use crate::tokens::Tokens;
use crate::transports;
use crate::ws::upgrade::ws_handler;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("backplane: {0}")]
    Backplane(#[from] crate::error::BackplaneError),
}

/// A running node.
pub struct Node {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    redis: Option<Arc<RedisBackplane>>,
    /// The ingest readers, waited for at the stop so that they release their leases.
    ingest: Option<tokio_util::task::TaskTracker>,
}

/// Longest the stop waits for the ingest readers to release their leases and leave
/// their groups before it closes Redis (a takeover then waits for the lease to expire,
/// as after a crash).
const INGEST_STOP: Duration = Duration::from_secs(2);

impl Node {
    /// Builds every part, binds the listener and starts serving.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        // What each feature checks of its own settings, before anything starts.
        let tokens = Tokens::from_config(&config)?;
        let sources = crate::streams::ingest::validate(&config)?;
        let config = Arc::new(config);
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::new(&config.node_id));
        let hub = start_hub(&config, &metrics, &shutdown);
        let gap_report = Arc::new(gaps::GapReport::default());
        let relay = Relay::new(&config.node_id);
        let inbound = Arc::new(NodeInbound::new(
            hub.clone(),
            gap_report.clone(),
            relay.clone(),
        ));
        let (backplane, redis) = match start_backplane(&config, inbound, &metrics, &shutdown) {
            Ok(b) => b,
            Err(e) => {
                shutdown.cancel();
                return Err(e);
            }
        };
        relay.attach(backplane.clone());
        let subscriptions = Subscriptions::new(
            hub.clone(),
            backplane.clone(),
            config.unsubscribe_grace,
            metrics.clone(),
        );
        let state = Arc::new(AppState::new(
            Services {
                config: config.clone(),
                metrics: metrics.clone(),
                hub,
                backplane,
                subscriptions: subscriptions.clone(),
                tokens,
                relay,
            },
            ConnectionRate::new(config.limits.new_connections_per_sec),
        ));

        tokio::spawn(subscriptions.run(shutdown.clone()));
        tokio::spawn(gaps::run(state.clone(), gap_report, shutdown.clone()));
        tokio::spawn(upkeep(metrics, shutdown.clone()));
        tokio::spawn(crate::presence::Presence::run(
            state.clone(),
            shutdown.clone(),
        ));
        let ingest = redis.as_ref().map(|redis| {
            crate::streams::ingest::start(state.clone(), redis.clone(), sources, shutdown.clone())
        });
        let (addr, server) = match serve(&state, &shutdown).await {
            Ok(served) => served,
            Err(e) => {
                // Nothing serves: stop what was started rather than leave it running.
                shutdown.cancel();
                return Err(e);
            }
        };
        Ok(Node {
            addr,
            state,
            shutdown,
            server,
            redis,
            ingest,
        })
    }

    /// Drains (PROTOCOL §2.4, docs/ARCHITECTURE.md decision 9) and stops: not ready at once, new
    /// upgrades refused, sockets closed with 1001 spread over `drain_period`.
    pub async fn drain_and_stop(self) {
        crate::shutdown::drain(&self.state).await;
        self.stop().await;
    }

    /// Stops at once: open sessions are closed with 1001 without spreading.
    pub async fn stop(self) {
        self.state.start_draining();
        for control in self.state.session_controls() {
            control.close(crate::error::CloseReason::Draining);
        }
        self.state.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.state.tracker.wait()).await;
        self.shutdown.cancel();
        let _ = self.server.await;
        if let Some(readers) = &self.ingest
            && tokio::time::timeout(INGEST_STOP, readers.wait())
                .await
                .is_err()
        {
            tracing::warn!(timeout = ?INGEST_STOP, "ingest readers still stopping; closing Redis anyway");
        }
        if let Some(redis) = &self.redis {
            redis.quit().await;
        }
    }
}

/// The hub, and with write coalescing on, the task that runs its ticks.
fn start_hub(config: &Config, metrics: &Arc<Metrics>, shutdown: &CancellationToken) -> Arc<Hub> {
    if config.limits.write_coalesce.is_zero() {
        return Arc::new(Hub::new(metrics.clone()));
    }
    let coalescer = Arc::new(Coalescer::new(
        config.limits.write_coalesce,
        config.limits.outbox_messages,
    ));
    let hub = Arc::new(Hub::with_coalescer(metrics.clone(), coalescer));
    let stop = shutdown.clone();
    tokio::spawn({
        let hub = hub.clone();
        async move { hub.run_coalescing(stop).await }
    });
    hub
}

/// The node's backplane, and the Redis engine as itself when that is the one (ingest
/// reads through it, and the stop sends its `QUIT`).
type Engine = (Arc<dyn Backplane>, Option<Arc<RedisBackplane>>);

/// The configured engine: memory without a Redis URL, Redis with one.
fn start_backplane(
    config: &Config,
    inbound: Arc<NodeInbound>,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Result<Engine, StartError> {
    let Some(url) = &config.redis_url else {
        let memory = MemoryBackplane::new(inbound, &config.node_id);
        return Ok((Arc::new(memory), None));
    };
    // The engine reads its TLS files; one it cannot use is a configuration error.
    let t = &config.redis_tls;
    let tls = RedisTls::load(TlsFiles {
        ca_file: t.ca_file.as_deref(),
        cert_file: t.cert_file.as_deref(),
        key_file: t.key_file.as_deref(),
        server_name: t.server_name.as_deref(),
    })
    .map_err(|e| crate::config::ConfigError {
        source_name: "config".into(),
        key: e.key.into(),
        reason: e.reason,
    })?;
    let options = RedisOptions {
        url,
        prefix: &config.prefix,
        max_frame_bytes: config.limits.backplane_frame_bytes(),
        tls: tls.as_ref(),
        pubsub: config.redis_pubsub,
        node_id: &config.node_id,
    };
    let redis = RedisBackplane::start(options, inbound, metrics.clone(), shutdown.clone())?;
    Ok((redis.clone(), Some(redis)))
}

/// Binds the listen address and serves the router on it until `shutdown`.
async fn serve(
    state: &Arc<AppState>,
    shutdown: &CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), StartError> {
    let config = &state.config;
    let listen_error = |source| StartError::Listen {
        addr: config.listen,
        source,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    let limits = crate::listener::HttpLimits {
        header_read_timeout: config.header_read_timeout,
        max_connections: config.limits.max_http_connections,
    };
    let server = tokio::spawn(crate::listener::serve(
        listener,
        router(state.clone()),
        limits,
        state.metrics.http(),
        shutdown.clone(),
    ));
    Ok((addr, server))
}

fn router(state: Arc<AppState>) -> Router {
    let limits = &state.config.limits;
    let api_routes = Router::new()
        .route("/publish", post(api::publish))
        .route("/channels/{channel}/history", get(api::history))
        .route("/channels/{channel}/presence", get(api::presence))
        .route(
            "/channels/{channel}/presence_stats",
            get(api::presence_stats),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::require_api_key,
        ))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes));
    let mut router = Router::new()
        .route("/ws", get(ws_handler))
        .route("/sse", get(transports::stream::sse_handler))
        .route("/stream", post(transports::stream::http_stream_handler))
        .route(
            "/emulation",
            post(transports::emulation::emulation_handler)
                .layer(DefaultBodyLimit::max(limits.max_body_bytes)),
        )
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .nest("/api", api_routes)
        .fallback_service(static_files::service(&state.config.static_dir))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            state.config.http_timeout,
        ))
        // Every answer, API and files alike, is what its Content-Type says: browsers
        // must not guess (a JSON error echoing input must never run as a script).
        .layer(SetResponseHeaderLayer::if_not_present(
            axum::http::header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ));
    let origins: Vec<HeaderValue> = state
        .config
        .auth
        .allowed_origins
        .iter()
        .filter(|o| o.as_str() != "*")
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let allow_any = state.config.auth.allowed_origins.iter().any(|o| o == "*");
    if allow_any || !origins.is_empty() {
        let allow = if allow_any {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(origins)
        };
        router = router.layer(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([
                    axum::http::header::AUTHORIZATION,
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderName::from_static("idempotency-key"),
                ]),
        );
    }
    router.with_state(state)
}

/// The exporter's histograms need periodic upkeep when its recorder is not global.
async fn upkeep(metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => metrics.upkeep(),
        }
    }
}
