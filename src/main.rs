//! The jobretry-operator binary: parse settings, set up logging, run the controller.
#![forbid(unsafe_code)]

use clap::Parser;
use jobretry_operator::{config::Config, controller, telemetry};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::parse();
    telemetry::init(config.log_json);
    let client = kube::Client::try_default().await?;
    controller::run(client, config).await;
    Ok(())
}
