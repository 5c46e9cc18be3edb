//! Prints the JobRetry CustomResourceDefinition as YAML:
//! `cargo run --bin crdgen > crds/jobretries.jobretry.io.yaml`; with `--policy`, the
//! JobRetryPolicy one: `cargo run --bin crdgen -- --policy > crds/jobretrypolicies.jobretry.io.yaml`;
//! or, with `--markdown`, the API
//! reference generated from it: `cargo run --bin crdgen -- --markdown > docs/api-reference.md`.
#![forbid(unsafe_code)]

fn main() -> Result<(), serde_norway::Error> {
    match std::env::args().nth(1).as_deref() {
        Some("--markdown") => print!("{}", jobretry_operator::crd::reference::markdown()),
        Some("--policy") => print!("{}", jobretry_operator::crd::policy::crd_yaml()?),
        _ => print!("{}", jobretry_operator::crd::crd_yaml()?),
    }
    Ok(())
}
