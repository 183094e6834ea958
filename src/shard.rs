//! A shard: one pinned glommio executor and everything it owns.
//!
//! Each shard builds its own [`Shard`] on its own thread. Nothing in it is shared
//! with another shard except the read-only [`Config`] and the session table, whose
//! hot path is a pair of uncontended atomic loads.

use std::sync::Arc;

use crate::config::Config;
use crate::dispatch::Inflight;
use crate::protocol::session::SessionTable;
use crate::storage::Storage;
use crate::tools::Registry;

pub struct Shard {
    pub id: usize,
    pub config: Arc<Config>,
    pub tools: Registry,
    pub storage: Storage,
    pub sessions: Arc<SessionTable>,
    /// Tool calls running on this shard, for cancellation.
    pub inflight: Inflight,
}

impl Shard {
    pub fn new(
        id: usize,
        config: Arc<Config>,
        sessions: Arc<SessionTable>,
    ) -> Result<Shard, String> {
        let storage = Storage::new(&config)?;
        Ok(Shard {
            id,
            config,
            tools: Registry::builtin(),
            storage,
            sessions,
            inflight: Inflight::default(),
        })
    }
}
