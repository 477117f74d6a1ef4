//! `projection`: the read-side service. See the library docs and README.md.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = projection::Config::parse();
    platform::telemetry::init(config.service.log_format());
    if let Some(projection::Command::Rebuild { view }) = &config.command {
        let generation = projection::rebuild_cli(&config, view)
            .await
            .inspect_err(|e| {
                tracing::error!(error = format!("{e:#}"), "rebuild failed");
            })?;
        tracing::info!(view = %view, generation, "rebuild done");
        return Ok(());
    }
    let shutdown = platform::shutdown::on_signals();
    projection::run(config, shutdown).await.inspect_err(|e| {
        tracing::error!(error = format!("{e:#}"), "projection failed");
    })
}
