//! The protocol layer: JSON-RPC framing, the MCP eras, and sessions.

pub mod era;
pub mod jsonrpc;
pub mod session;
