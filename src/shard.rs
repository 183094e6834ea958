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

thread_local! {
    /// How many of this thread's tasks wait on something only glommio's rings
    /// report: a job on the blocking pool, a socket turning writable.
    static ELSEWHERE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Held while a task of this shard waits on glommio for something other than a
/// request: the epoll pump then parks through glommio instead of waiting in
/// `epoll_pwait2`, which glommio's completions cannot interrupt
/// (config::DEFAULT_POLL_WAIT_US). Cheap enough to hold around every write: a
/// write that completes at once takes and drops it before the pump can look.
pub struct Elsewhere(());

impl Elsewhere {
    pub fn enter() -> Elsewhere {
        ELSEWHERE.with(|n| n.set(n.get() + 1));
        Elsewhere(())
    }
}

impl Drop for Elsewhere {
    fn drop(&mut self) {
        ELSEWHERE.with(|n| {
            assert!(n.get() > 0, "an Elsewhere dropped twice");
            n.set(n.get() - 1)
        });
    }
}

/// Whether any task of this shard holds an [`Elsewhere`].
pub fn waiting_elsewhere() -> bool {
    ELSEWHERE.with(|n| n.get() > 0)
}

/// Runs `work` on glommio's blocking pool, holding an [`Elsewhere`] until its
/// answer is back, so that the epoll pump does not sleep through the answer.
/// Every hand-off to another thread goes through here.
pub async fn offload<F, T>(work: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let _away = Elsewhere::enter();
    glommio::executor().spawn_blocking(work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offload_counts_as_elsewhere_until_its_answer_is_back() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                assert!(!waiting_elsewhere());
                let (tx, rx) = std::sync::mpsc::channel::<()>();
                let job = glommio::spawn_local(offload(move || rx.recv().is_ok()));
                // The job is out until the channel lets it finish.
                glommio::executor().yield_task_queue_now().await;
                assert!(waiting_elsewhere());
                tx.send(()).unwrap();
                assert!(job.await);
                assert!(!waiting_elsewhere());
                {
                    let _a = Elsewhere::enter();
                    let _b = Elsewhere::enter();
                    assert!(waiting_elsewhere());
                }
                assert!(!waiting_elsewhere());
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
