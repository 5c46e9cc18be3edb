//! The only code that talks to Redis: BullMQ key names, version detection, connections and
//! the batched retry engine with its Lua script.

pub mod connection;
pub mod engine;
pub mod keys;
pub mod select;
pub mod tls;
pub mod version;

pub use connection::{ConnectError, RedisConn, RedisTarget};
pub use engine::{BatchRequest, EngineError, JobOutcome, RetryEngine, Verdict};
pub use keys::QueueKeys;
pub use select::{Cursor, Page, PageOutcome, PageRequest, Selector};
pub use tls::TlsFailure;
pub use version::{QueueVersion, VersionError};
