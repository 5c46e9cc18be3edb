use strum::IntoEnumIterator;

use super::*;
use crate::crd::ConnectionMode;

fn server(code: &str, detail: &str) -> redis::RedisError {
    // A reply as Redis sends it, parsed by the client as any server error is.
    let wire = format!("-{code} {detail}\r\n");
    match redis::parse_redis_value(wire.as_bytes()) {
        Ok(redis::Value::ServerError(e)) => e.into(),
        other => panic!("not a server error: {other:?}"),
    }
}

/// Errors as Redis and the client give them, with the category and verdict of each.
fn table() -> Vec<(redis::RedisError, &'static str, Verdict)> {
    use Verdict::*;
    let io: redis::RedisError =
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into();
    // A rediss:// handshake with a certificate no trusted CA signed, as redis returns it.
    let untrusted: redis::RedisError = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
    )
    .into();
    let servers = [
        ("LOADING", "Redis is loading", "unavailable", Transient),
        (
            "BUSY",
            "Redis is busy running a script",
            "unavailable",
            Transient,
        ),
        ("OOM", "command not allowed", "unavailable", Transient),
        (
            "READONLY",
            "You can't write against a read only replica.",
            "unavailable",
            Transient,
        ),
        (
            "ERR",
            "max number of clients reached",
            "unavailable",
            Transient,
        ),
        (
            "WRONGPASS",
            "invalid username-password pair",
            "auth",
            Stalled,
        ),
        ("NOAUTH", "Authentication required.", "auth", Stalled),
        (
            "NOPERM",
            "this user has no permissions",
            "permission",
            Stalled,
        ),
        (
            "ERR",
            "AUTH <password> called without any password configured",
            "auth",
            Stalled,
        ),
        (
            "ERR",
            "Error running script (call to f_1): @user_script:9",
            "refused",
            Permanent,
        ),
        ("ERR", "unknown command 'ZMSCORE'", "refused", Permanent),
        (
            "CROSSSLOT",
            "Keys in request don't hash to the same slot",
            "cross_slot",
            Permanent,
        ),
    ];
    let mut cases = vec![(io, "connection", Transient), (untrusted, "tls", Stalled)];
    for (code, detail, category, verdict) in servers {
        cases.push((server(code, detail), category, verdict));
    }
    cases
}

#[test]
fn only_passing_trouble_is_transient() {
    for (err, category, verdict) in table() {
        let (c, v) = classify(&err);
        assert_eq!((c.as_str(), v), (category, verdict), "{err}");
        assert!(c.is_redis(), "{category}");
        let e = Error::redis(err, &Redactor::default());
        assert_eq!((e.category().as_str(), e.verdict()), (category, verdict));
    }
}

#[test]
fn the_scripts_own_refusals_have_their_verdicts() {
    let e = Error::redis(server("JOBRETRY_DATA", "pc is abc"), &Redactor::default());
    assert!(
        matches!(&e, Error::QueueData(m) if m == "pc is abc"),
        "{e:?}"
    );
    assert_eq!(
        (e.category().as_str(), e.verdict()),
        ("queue_data", Verdict::Stalled)
    );
    assert!(!e.is_redis());
    let e = Error::redis(server("JOBRETRY", "wait is a string"), &Redactor::default());
    assert!(
        matches!(&e, Error::IncompatibleQueue(m) if m == "wait is a string"),
        "{e:?}"
    );
    assert_eq!(e.category(), Category::IncompatibleQueue);
    assert_eq!(e.verdict(), Verdict::Permanent);
    assert_eq!(e.to_string(), "wait is a string");
}

#[test]
fn categories_keep_their_labels() {
    let labels: Vec<&str> = Category::iter().map(Category::as_str).collect();
    assert_eq!(
        labels,
        [
            "connection",
            "tls",
            "auth",
            "permission",
            "unavailable",
            "cross_slot",
            "refused",
            "client",
            "incompatible_queue",
            "queue_data",
            "protocol",
            "invalid_url",
        ]
    );
    assert_eq!(Category::CrossSlot.as_ref(), "cross_slot");
    let redis: Vec<&str> = Category::iter()
        .filter(|c| c.is_redis())
        .map(Category::as_str)
        .collect();
    assert_eq!(redis, labels[..8]);
}

#[test]
fn no_error_made_with_a_target_shows_its_password() {
    let url = "redis://app:pa55word@redis.example:6379/0";
    let t = super::super::RedisTarget::new(url, ConnectionMode::Standalone, None).unwrap();
    let r = t.redactor();
    // Errors that echo the URL or its credentials, as a library might.
    let echo = format!("cannot use {url} (app:pa55word@redis.example)");
    let io: redis::RedisError = std::io::Error::other(echo.clone()).into();
    let made = [
        Error::redis(server("ERR", &echo), r),
        Error::connect(io, r),
        Error::connect(
            (
                redis::ErrorKind::Io,
                "Failed to create initial connections",
                format!("invalid peer certificate: UnknownIssuer at {url}"),
            )
                .into(),
            r,
        ),
    ];
    for e in &made {
        let shown = e.to_string();
        assert!(!shown.contains("pa55word"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }
    assert!(matches!(made[2], Error::Tls { .. }), "{:?}", made[2]);
    assert!(made[1].to_string().starts_with("cannot connect to Redis: "));
    // Without a redactor nothing is scrubbed: the test above can fail.
    let raw = Error::redis(server("ERR", &echo), &Redactor::default());
    assert!(raw.to_string().contains("pa55word"));
}
