//! The only code that talks to Redis: BullMQ key names, version detection, connections,
//! the call contract of our Lua scripts, the batched retry engine and selector pages, and the
//! one error type of all of it.

pub mod connection;
pub mod count;
pub mod engine;
pub mod error;
pub mod keys;
pub mod redact;
pub mod scripts;
pub mod select;
pub mod tls;
pub mod version;

pub use connection::{Connection, RedisConn, RedisTarget};
pub use engine::{JobOutcome, RetryEngine};
pub use error::{Category, Error, UrlError, Verdict};
pub use keys::QueueKeys;
pub use redact::Redactor;
pub use scripts::{AuditRun, BatchRequest, Cursor, Ledger, PolicyGuard};
pub use select::{Page, PageOutcome, PageRequest, Selector};
pub use tls::TlsFailure;
pub use version::{QueueVersion, VersionError};
