//! Prints the JobRetry CustomResourceDefinition as YAML: `cargo run --bin crdgen > crds/jobretries.jobretry.io.yaml`.
#![forbid(unsafe_code)]

fn main() -> Result<(), serde_yaml::Error> {
    print!("{}", jobretry_operator::crd::crd_yaml()?);
    Ok(())
}
