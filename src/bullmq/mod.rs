//! The only code that talks to Redis: BullMQ key names, version detection, connections and
//! the batched retry engine with its Lua script.

pub mod connection;
pub mod engine;
pub mod keys;
pub mod version;

pub use connection::{RedisConn, RedisTarget};
pub use engine::{BatchRequest, JobOutcome, RetryEngine};
pub use keys::QueueKeys;
pub use version::{Family, QueueVersion};
