//! MCP revisions and the two eras they fall into.
//!
//! Handshake era: `initialize` negotiates one of [`HANDSHAKE_VERSIONS`] and a
//! session carries it. Stateless era: every request names its revision in
//! `_meta` (and, over HTTP, in `MCP-Protocol-Version`), and there is no session.

/// Handshake-era revisions, oldest first. A session stores an index into this list.
pub const HANDSHAKE_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// The newest handshake revision: the answer to an `initialize` asking for one we
/// do not know.
pub const LATEST_HANDSHAKE: &str = "2025-11-25";
/// Stateless revisions.
pub const STATELESS_VERSIONS: [&str; 1] = ["2026-07-28"];
/// The `_meta` key that carries a stateless request's revision.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// The `_meta` key that carries a stateless request's client capabilities.
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// The `_meta` key of a stateless result that names the server.
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// The revision assumed for an HTTP request without `MCP-Protocol-Version` in a
/// session that negotiated one that predates the header (per 2025-06-18).
pub const HEADERLESS_DEFAULT: &str = "2025-03-26";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Era {
    Handshake(u8),
    Stateless,
}

pub fn handshake_index(version: &str) -> Option<u8> {
    HANDSHAKE_VERSIONS
        .iter()
        .position(|v| *v == version)
        .map(|i| i as u8)
}

pub fn is_stateless(version: &str) -> bool {
    STATELESS_VERSIONS.contains(&version)
}

/// Every revision this server speaks, newest first (the `supported` list of -32022).
pub fn all_versions() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = STATELESS_VERSIONS.to_vec();
    v.extend(HANDSHAKE_VERSIONS.iter().rev().copied());
    v
}

/// Revisions at or after 2025-03-26 accept JSON-RPC batches only in that revision.
pub fn allows_batches(index: u8) -> bool {
    HANDSHAKE_VERSIONS[index as usize] == "2025-03-26"
}
