//! The jobretry-operator binary: parse settings, set up logging, serve health and metrics,
//! run the controller.
#![forbid(unsafe_code)]

use std::sync::{Arc, atomic::AtomicBool};

use clap::Parser;
use jobretry_operator::{client, config::Config, controller, http, metrics::Metrics, telemetry};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::parse();
    telemetry::init(config.log_json);
    let health = Arc::new(http::Health {
        metrics: Arc::new(Metrics::default()),
        ready: AtomicBool::new(false),
    });
    let server = tokio::spawn(http::serve(config.http_addr, health.clone()));
    let client = client::kube_client(&config).await?;
    tokio::select! {
        () = controller::run(client, config, health) => {}
        res = server => {
            res??;
        }
    }
    Ok(())
}
