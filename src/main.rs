//! The `herald` binary: flags → [`Config`] → a running [`Node`] until SIGTERM.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use herald::config::{Config, Flags, LogFormat, SecretEnv};
use herald::server::{Node, StartError};

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
    match runtime.block_on(run(config)) {
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
    node.drain_and_stop().await;
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
