//! What of a Redis target is secret, and how a text is scrubbed of it.

use std::fmt;

use percent_encoding::percent_decode_str;
use secrecy::{ExposeSecret, SecretString};

/// The forms in which a text could carry a target's secret: the URL, or its credentials as
/// they stand in a URL. Never the bare password: replacing a short password wherever its
/// letters occur would mangle every message (`conn***ct`) and so reveal it. Messages are
/// built without the URL in the first place; this only guards what a library might echo.
/// The default redacts nothing (a connection made outside this module).
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first.
    forms: Vec<SecretString>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} forms)", self.forms.len())
    }
}

impl Redactor {
    /// The forms of `url`, parsed as `parsed`.
    pub(super) fn of(url: &str, parsed: &url::Url) -> Self {
        let mut forms = vec![url.to_string()];
        if let Some(pw) = parsed.password().filter(|p| !p.is_empty()) {
            let user = parsed.username();
            let mut passwords = vec![pw.to_string()];
            if let Ok(decoded) = percent_decode_str(pw).decode_utf8() {
                passwords.push(decoded.into_owned());
            }
            for form in passwords {
                forms.push(format!("{user}:{form}@"));
                forms.push(format!(":{form}@"));
            }
        }
        forms.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self {
            forms: forms.into_iter().map(SecretString::from).collect(),
        }
    }

    /// Replaces every occurrence of the URL or password in `text` with `***`.
    pub fn redact(&self, text: &str) -> String {
        self.forms.iter().fold(text.to_string(), |acc, s| {
            acc.replace(s.expose_secret(), "***")
        })
    }
}
