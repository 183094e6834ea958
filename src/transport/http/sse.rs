//! Server-sent events for an MCP call that asked for progress.
//!
//! The answer is one SSE stream per request: rate-limited `notifications/progress`
//! events while the tool works, then the response event, and the stream ends. It
//! is sent with chunked transfer coding so the connection stays reusable.

use std::io;

use glommio::net::TcpStream;

use super::frame;
use crate::dispatch::{self, AsyncEmit, ProgressJob};
use crate::shard::Shard;

/// What frames one message as an SSE event: `event: message`, the JSON as its
/// data, and the blank line that ends the event.
pub const EVENT_PREFIX: &[u8] = b"event: message\ndata: ";
pub const EVENT_SUFFIX: &[u8] = b"\n\n";

/// Writes each message as one SSE event in its own chunk.
struct Events<'s> {
    stream: &'s mut TcpStream,
    frame: Vec<u8>,
}

impl AsyncEmit for Events<'_> {
    async fn emit(&mut self, message: &[u8]) -> io::Result<()> {
        let len = EVENT_PREFIX.len() + message.len() + EVENT_SUFFIX.len();
        self.frame.clear();
        self.frame
            .extend_from_slice(format!("{len:x}\r\n").as_bytes());
        self.frame.extend_from_slice(EVENT_PREFIX);
        self.frame.extend_from_slice(message);
        self.frame.extend_from_slice(EVENT_SUFFIX);
        self.frame.extend_from_slice(b"\r\n");
        super::send_all(self.stream, &self.frame).await
    }
}

/// Streams a progress-reporting call. `Ok(true)`: the connection can serve more.
pub async fn stream_progress(
    shard: &Shard,
    stream: &mut TcpStream,
    job: ProgressJob,
    keep_alive: bool,
) -> io::Result<bool> {
    let mut head = Vec::with_capacity(192);
    frame::write_stream_head(&mut head, "text/event-stream", keep_alive);
    shard.m().status(200);
    super::send_all(stream, &head).await?;
    let mut events = Events {
        stream,
        frame: Vec::new(),
    };
    dispatch::call_with_progress(shard, job, &mut events).await?;
    super::send_all(events.stream, frame::LAST_CHUNK).await?;
    Ok(keep_alive)
}
