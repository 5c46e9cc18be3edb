//! TLS failures of a Redis connection (rediss://): found in a `redis` error and said as what
//! fixes them.
//!
//! Takes a [`redis::RedisError`]; gives the [`TlsFailure`] in it, if any. Guarantees: a
//! failure is found by type (the `rustls::Error` that `tokio-rustls` wraps in an I/O error),
//! and by rustls's own wording only where the `redis` crate kept just the text (a Cluster's
//! first connections); the message quotes only rustls's description, never the URL.

use std::{error::Error, io, sync::Arc};

use rustls::CertificateError;

/// Why a TLS connection to Redis could not be set up, by what fixes it. Neither passes by
/// itself: both wait for the user (the Secret, or the server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server's certificate could not be verified against the trusted CAs (the public
    /// roots and the Secret's `ca.crt`): an unknown CA, an expired certificate, ...
    Untrusted(String),
    /// The certificate is valid but not for the host the URL names.
    WrongName(String),
    /// The handshake failed otherwise: e.g. the port does not speak TLS.
    Handshake(String),
}

/// rustls's wording of a certificate it could not verify (`Display` of
/// `Error::InvalidCertificate` and `Error::NoCertificatesPresented`).
const UNTRUSTED_TEXT: [&str; 2] = ["invalid peer certificate", "peer sent no certificates"];
/// rustls's wording of other handshake failures.
const HANDSHAKE_TEXT: [&str; 5] = [
    "received corrupt message",
    "received fatal alert",
    "received unexpected",
    "peer is incompatible",
    "peer misbehaved",
];

impl TlsFailure {
    /// The TLS failure in `e`, if it is one.
    pub fn of(e: &redis::RedisError) -> Option<Self> {
        if let Some(tls) = rustls_error(e) {
            return Some(Self::from_rustls(tls));
        }
        let text = e.to_string();
        let has = |phrases: &[&str]| phrases.iter().any(|p| text.contains(p));
        if has(&UNTRUSTED_TEXT) {
            Some(Self::Untrusted(text))
        } else if has(&HANDSHAKE_TEXT) {
            Some(Self::Handshake(text))
        } else {
            None
        }
    }

    fn from_rustls(e: &rustls::Error) -> Self {
        let detail = e.to_string();
        match e {
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => Self::WrongName(detail),
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                Self::Untrusted(detail)
            }
            _ => Self::Handshake(detail),
        }
    }

    /// What happened and what to change, for a condition.
    pub fn message(&self) -> String {
        match self {
            Self::Untrusted(d) => format!(
                "cannot connect to Redis: the server's TLS certificate could not be verified ({d}); if a private CA signed it, add that CA's certificate (PEM) to the connection Secret under the key ca.crt"
            ),
            Self::WrongName(d) => format!(
                "cannot connect to Redis: the server's TLS certificate could not be verified ({d}); use a host name in the URL that the certificate names"
            ),
            Self::Handshake(d) => format!(
                "cannot connect to Redis: the TLS handshake failed ({d}); check that the URL's port serves TLS (rediss://), or use redis:// for a plain-text port"
            ),
        }
    }
}

/// The `rustls::Error` inside `e`: `redis` keeps the I/O error of the handshake (perhaps
/// behind an `Arc`), which holds the rustls error.
fn rustls_error(e: &redis::RedisError) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let shared = err.downcast_ref::<Arc<dyn Error + Send + Sync>>();
        let io = (err.downcast_ref::<io::Error>())
            .or_else(|| shared.and_then(|a| a.downcast_ref::<io::Error>()));
        if let Some(tls) = io
            .and_then(io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error `redis` returns for a failed handshake: tokio-rustls's I/O error holding
    /// the rustls error.
    fn handshake_error(e: rustls::Error) -> redis::RedisError {
        io::Error::new(io::ErrorKind::InvalidData, e).into()
    }

    #[test]
    fn an_unknown_ca_is_an_untrusted_certificate_fixed_by_ca_crt() {
        let e = handshake_error(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        let f = TlsFailure::of(&e).expect("a TLS failure");
        assert!(matches!(f, TlsFailure::Untrusted(_)), "{f:?}");
        let m = f.message();
        assert!(m.contains("certificate could not be verified"), "{m}");
        assert!(
            m.contains("UnknownIssuer") && m.contains("under the key ca.crt"),
            "{m}"
        );
        for e in [CertificateError::Expired, CertificateError::BadSignature] {
            let f = TlsFailure::of(&handshake_error(rustls::Error::InvalidCertificate(e)));
            assert!(matches!(f, Some(TlsFailure::Untrusted(_))), "{f:?}");
        }
    }

    #[test]
    fn a_certificate_for_another_name_says_so() {
        let e = handshake_error(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ));
        let m = TlsFailure::of(&e).unwrap().message();
        assert!(m.contains("certificate could not be verified") && m.contains("host name"));
    }

    #[test]
    fn a_plain_text_server_fails_the_handshake() {
        let e = handshake_error(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        let f = TlsFailure::of(&e).unwrap();
        assert!(matches!(f, TlsFailure::Handshake(_)), "{f:?}");
        assert!(f.message().contains("rediss://"), "{}", f.message());
    }

    #[test]
    fn rustls_wording_kept_only_as_text_is_recognised() {
        // A Cluster's first connections keep only the text of the node's error.
        for (tls, untrusted) in [
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                true,
            ),
            (rustls::Error::NoCertificatesPresented, true),
            (
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                false,
            ),
            (
                rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
                false,
            ),
        ] {
            let e: redis::RedisError = (
                redis::ErrorKind::Io,
                "Failed to create initial connections",
                handshake_error(tls).to_string(),
            )
                .into();
            let f = TlsFailure::of(&e);
            match untrusted {
                true => assert!(matches!(f, Some(TlsFailure::Untrusted(_))), "{e}: {f:?}"),
                false => assert!(matches!(f, Some(TlsFailure::Handshake(_))), "{e}: {f:?}"),
            }
        }
    }

    #[test]
    fn other_connection_errors_are_not_tls_failures() {
        let refused: redis::RedisError =
            io::Error::new(io::ErrorKind::ConnectionRefused, "Connection refused").into();
        assert_eq!(TlsFailure::of(&refused), None);
        let reset: redis::RedisError =
            io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer").into();
        assert_eq!(TlsFailure::of(&reset), None);
    }
}
