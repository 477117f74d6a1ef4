//! `aggregate`: the write-side service. See the library docs and README.md.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = aggregate::Config::parse();
    platform::telemetry::init(config.service.log_format());
    let shutdown = platform::shutdown::on_signals();
    aggregate::run(config, shutdown).await.inspect_err(|e| {
        tracing::error!(error = format!("{e:#}"), "aggregate failed");
    })
}
