//! The `herald` binary: flags → [`Config`] → a running [`Node`] until SIGTERM.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use herald::config::{Config, Flags, LogFormat, SecretEnv};
use herald::server::{Node, StartError};

/// How long the runtime's remaining tasks get once the node has stopped (or its stop
/// bound passed), before the process exits regardless.
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_millis(200);

fn main() -> ExitCode {
    let flags = Flags::parse();
    let config = match Config::load(&flags, &SecretEnv::from_process())
        .and_then(herald::config::check_startup)
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(config));
    // Tasks still running (a stop cut short by its bound, a blocking file read) must
    // not hold the exit: dropping the runtime would wait for blocking tasks unbounded.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("herald: {e:#}");
            match e.downcast_ref::<StartError>() {
                Some(StartError::Config(_)) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    if config.insecure && !config.listen.ip().is_loopback() {
        // Loudly, and again every hour, so that nobody forgets it in production.
        let listen = config.listen;
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                every.tick().await;
                tracing::warn!(%listen, "--insecure: serving a public address without requiring API keys and a JWT key");
            }
        });
    }
    let node = Node::start(config).await?;
    tracing::info!(
        addr = %node.addr,
        node = %node.state.config.node_id,
        backplane = if node.state.config.redis_url.is_some() { "redis" } else { "memory" },
        "herald listening; demo at http://{}/",
        node.addr
    );
    herald::shutdown::signal().await;
    herald::shutdown::drain(&node.state).await;
    let bound = herald::shutdown::STOP_BOUND;
    if tokio::time::timeout(bound, node.stop()).await.is_err() {
        tracing::warn!(
            ?bound,
            "the node did not stop within its bound after the drain; exiting anyway"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

fn init_logging(format: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
