//! A shard: one pinned glommio executor and everything it owns.
//!
//! Each shard builds its own [`Shard`] on its own thread. Nothing in it is shared
//! with another shard except the read-only [`Config`] and the session table, whose
//! hot path is a pair of uncontended atomic loads.

use std::sync::Arc;

use crate::config::Config;
use crate::dispatch::Inflight;
use crate::metrics::{Metrics, ShardMetrics};
use crate::protocol::session::SessionTable;
use crate::storage::Storage;
use crate::tools::Registry;

/// A cancellation passed to the other shards: (session namespace, request id).
pub type CancelMsg = (u64, String);
/// Cancellations queued to one peer shard before further ones are dropped; a
/// cancellation is advisory, so dropping one under a flood is safe.
pub const CANCEL_QUEUE: usize = 256;

pub struct Shard {
    pub id: usize,
    pub config: Arc<Config>,
    pub tools: Registry,
    pub storage: Storage,
    pub sessions: Arc<SessionTable>,
    /// Tool calls running on this shard, for cancellation.
    pub inflight: Inflight,
    /// Channels to the other shards, for a `notifications/cancelled` that arrives
    /// on a shard other than the one running the call. Used only on that path.
    pub peers: Option<glommio::channels::channel_mesh::Senders<CancelMsg>>,
    /// The process's metrics; this shard writes only its own block.
    pub metrics: Arc<Metrics>,
    /// Shutting down: finish what is in flight, take nothing new.
    pub draining: std::cell::Cell<bool>,
    /// Requests read whose responses are not yet written to their sockets; the
    /// shard exits on shutdown once this is 0 (or the deadline passes).
    pub busy: std::cell::Cell<usize>,
    /// `tools/list` answers, rendered on first use.
    pub tool_pages: std::cell::OnceCell<crate::dispatch::ToolPages>,
}

impl Shard {
    pub fn new(
        id: usize,
        config: Arc<Config>,
        sessions: Arc<SessionTable>,
        peers: Option<glommio::channels::channel_mesh::Senders<CancelMsg>>,
        metrics: Arc<Metrics>,
    ) -> Result<Shard, String> {
        let storage = Storage::new(&config)?;
        if !storage.snapshots.watcher().available() || !storage.dbs.results.watching() {
            crate::log!(
                Warn,
                "inotify is unavailable: search snapshots, kept read resolutions or query_db answers are off on this shard; raise fs.inotify.max_user_instances (tuning/BARE-METAL.md)",
                shard = id,
            );
        }
        let tools = Registry::configured(&config);
        Ok(Shard {
            id,
            config,
            tools,
            storage,
            sessions,
            inflight: Inflight::default(),
            peers,
            metrics,
            draining: std::cell::Cell::new(false),
            busy: std::cell::Cell::new(0),
            tool_pages: std::cell::OnceCell::new(),
        })
    }

    /// This shard's metrics block (written only here).
    #[inline]
    pub fn m(&self) -> &ShardMetrics {
        self.metrics.shard(self.id)
    }

    /// Cancels a call here, or asks the other shards to.
    pub fn cancel(&self, ns: u64, id: &str) {
        if self.inflight.cancel(ns, id) {
            return;
        }
        if let Some(peers) = &self.peers {
            for peer in 0..peers.nr_consumers() {
                if peer != peers.peer_id() {
                    let _ = peers.try_send_to(peer, (ns, id.to_string()));
                }
            }
        }
    }
}
