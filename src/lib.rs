//! coremcp: a thread-per-core MCP tool server on io_uring.
//!
//! The modules follow the path a request takes: [`transport`] (HTTP, stdio) →
//! [`protocol`] (JSON-RPC, MCP eras, sessions) → [`dispatch`] → [`tools`] →
//! shard-local [`storage`].

pub mod config;
pub mod dispatch;
pub mod log;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod shard;
pub mod storage;
pub mod tools;
pub mod transport;
