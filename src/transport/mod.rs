//! Transports: how bytes become MCP messages and back.
//!
//! - [`http`]: Streamable HTTP on every shard, SO_REUSEPORT spreading connections.
//! - [`stdio`]: newline-delimited messages on stdin/stdout for a single client.

pub mod http;
pub mod stdio;
