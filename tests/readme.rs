//! The README keeps up with the code: its operator flags table is generated from the
//! operator's own flag definitions and checked against `jobretry-operator --help`, and its
//! troubleshooting table has a row for every condition reason of the API. No cluster needed.
//!
//! After adding a flag: `JOBRETRY_UPDATE_README=1 cargo test --test readme` rewrites the table.

use std::process::Command;

use clap::CommandFactory;
use jobretry_operator::config::Config;

const BEGIN: &str = "<!-- operator-flags:begin -->\n";
const END: &str = "<!-- operator-flags:end -->";

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The flags table, one row per flag of the operator, from clap's definitions.
fn flags_table() -> String {
    let mut out = String::from(
        "| flag | environment variable | default | what it sets |\n| --- | --- | --- | --- |\n",
    );
    for arg in Config::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let env = arg
            .get_env()
            .map_or(String::new(), |e| format!("`{}`", e.to_string_lossy()));
        let defaults: Vec<String> = (arg.get_default_values().iter())
            .map(|d| format!("`{}`", d.to_string_lossy()))
            .collect();
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(ToString::to_string);
        let help = help
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        out.push_str(&format!(
            "| `--{long}` | {env} | {} | {} |\n",
            defaults.join(", "),
            help.replace('|', "\\|")
        ));
    }
    out
}

#[test]
fn the_flags_table_is_generated_from_the_operator_flags() {
    let text = readme();
    let start = text
        .find(BEGIN)
        .expect("README has no operator-flags:begin marker")
        + BEGIN.len();
    let end = text
        .find(END)
        .expect("README has no operator-flags:end marker");
    let want = flags_table();
    if std::env::var_os("JOBRETRY_UPDATE_README").is_some() {
        let updated = format!("{}{want}{}", &text[..start], &text[end..]);
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"), updated).unwrap();
        return;
    }
    assert!(
        text[start..end] == want,
        "README's operator flags table is stale: run `JOBRETRY_UPDATE_README=1 cargo test --test readme`"
    );
    // And what the binary itself says: every flag of `--help` has its row.
    let out = Command::new(env!("CARGO_BIN_EXE_jobretry-operator"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .filter_map(|l| l.split([' ', '=', '<']).next())
        .filter(|f| !matches!(*f, "help" | "version"))
        .collect();
    assert!(flags.len() >= 7, "too few flags found in --help:\n{help}");
    for flag in flags {
        assert!(
            want.contains(&format!("| `--{flag}` |")),
            "--{flag} of --help has no row"
        );
    }
}

/// Every reason the API defines (`crd::Reason`).
fn reasons() -> Vec<String> {
    use strum::IntoEnumIterator;
    jobretry_operator::crd::Reason::iter()
        .map(|r| r.as_str().to_string())
        .collect()
}

#[test]
fn troubleshooting_has_a_row_for_every_condition_reason() {
    let text = readme();
    let section = text
        .split("## Troubleshooting\n")
        .nth(1)
        .expect("README has a Troubleshooting section")
        .split("\n## ")
        .next()
        .unwrap();
    let all = reasons();
    assert!(
        all.len() >= 14 && all.contains(&"QueueBusy".to_string()),
        "{all:?}"
    );
    for reason in all {
        assert!(
            section.contains(&format!("\n| `{reason}` |")),
            "README's Troubleshooting has no row for reason {reason}"
        );
    }
}
