//! The jobretry-operator binary: parse settings, set up logging, serve health and metrics,
//! run the controller.
#![forbid(unsafe_code)]

use std::sync::Arc;

use clap::Parser;
use jobretry_operator::{config::Config, controller, http, metrics::Metrics, telemetry};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::parse();
    telemetry::init(config.log_format);
    let health = Arc::new(http::Health::new(Arc::new(Metrics::default())));
    let server = tokio::spawn(http::serve(config.http_addr, health.clone()));
    let client = kube::Client::try_default().await?;
    tokio::select! {
        () = controller::run(client, config, health) => {}
        res = server => {
            res??;
        }
    }
    Ok(())
}
