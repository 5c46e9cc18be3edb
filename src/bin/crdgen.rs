//! Prints the JobRetry CustomResourceDefinition as YAML:
//! `cargo run --bin crdgen > crds/jobretries.jobretry.io.yaml`; or, with `--markdown`, the API
//! reference generated from it: `cargo run --bin crdgen -- --markdown > docs/api-reference.md`.
#![forbid(unsafe_code)]

fn main() -> Result<(), serde_norway::Error> {
    if std::env::args().nth(1).as_deref() == Some("--markdown") {
        print!("{}", jobretry_operator::crd::reference::markdown());
        return Ok(());
    }
    print!("{}", jobretry_operator::crd::crd_yaml()?);
    Ok(())
}
