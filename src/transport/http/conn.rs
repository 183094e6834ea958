//! One HTTP/1.1 connection: read requests, answer them in order, enforce the limits.
//!
//! Requests on a connection are served one after another, so pipelined responses
//! leave in request order by construction. Responses to requests that were already
//! buffered are gathered and written together, one syscall for a pipelined burst.
//! The read, write and body buffers live as long as the connection and are reused
//! by every request on it.

use std::future::Future;
use std::io::ErrorKind;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;

use super::deadlines::Registration;
use super::direct;
use super::frame::{self, ChunkError, Chunked, Head, HeadError};
use super::readiness::Watch;
use super::route::{self, Streaming};
use super::sse;
use crate::shard::Shard;

/// First size of a connection's read buffer; it grows only for large requests.
const INITIAL_READ_BUFFER: usize = 4 * 1024;
/// Smallest read attempted once the buffer has to grow.
const READ_CHUNK: usize = 16 * 1024;
/// Responses gathered before they are written even though more requests are
/// buffered: bounds the write buffer under a long pipelined burst.
const WRITE_FLUSH_BYTES: usize = 256 * 1024;
/// After refusing a body (413), how much of it is read and dropped, and for how
/// long, so that the client sees the response instead of a connection reset.
const DRAIN_MAX_BYTES: usize = 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

/// Bytes of a pipelined request read while a slow call runs (see [`answer_or_hangup`]).
const EARLY_READ: usize = 4 * 1024;

enum Watched<T> {
    /// The answer is written; `n` bytes of the next request arrived meanwhile.
    Answered(T, usize),
    /// The client closed the connection before the answer was ready.
    HungUp,
}

/// Takes whatever bytes the socket already holds, without waiting: `None` when
/// it holds none (the caller then waits for the shard's epoll set to report the
/// socket, [`super::readiness`]).
///
/// Why not glommio's read: after every read that does not fill the buffer, it
/// arms an io_uring poll for the next one, and the poll's completion is what
/// wakes the connection. That is one poll armed, completed and reaped per
/// request, even when the next request is already waiting. Measured on the
/// 2-vCPU VM (docs/performance.md, tuning item 26): reading directly first
/// took a cached read_file from ~106k to ~135k req/s in interleaved runs, with
/// ~1 µs less user and ~1 µs less system CPU per request.
///
/// A read that took everything the socket held (it left room in the buffer) is
/// not followed by one that would find nothing: the connection waits on the
/// set straight away ([`Conn::read_more`]). At a fixed 70k req/s that took
/// `recv` calls from 1.69 to 1.00 per request (docs/performance.md, item 39).
///
/// A shard whose connections all find requests waiting never drains its run
/// queue, and glommio polls its rings only when the queue drains or the
/// preemption slice ends: [`crate::config::DEFAULT_CONNECTION_LATENCY_MS`] keeps
/// that slice short.
fn recv_ready(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    use std::os::fd::AsRawFd;
    debug_assert!(!buf.is_empty());
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call,
    // and the descriptor is the stream's own, open while `stream` is borrowed.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let err = std::io::Error::last_os_error();
    match err.kind() {
        ErrorKind::WouldBlock | ErrorKind::Interrupted => Ok(None),
        _ => Err(err),
    }
}

/// Drives an answer to completion while noticing if the client hangs up.
///
/// A client that closes the connection will never read the answer: 2026-07-28
/// makes that the way to cancel a call, and for earlier revisions finishing work
/// nobody can receive (coremcp has no stream resumption) only wastes the shard. So a
/// hang-up drops the answer's future, which stops the tool. Answers that are ready
/// at once (nearly all) never start the watch, so the fast path pays nothing for it.
async fn answer_or_hangup<T, F: Future<Output = T>>(
    mut answer: Pin<&mut F>,
    stream: &mut TcpStream,
    early: &mut [u8],
) -> Watched<T> {
    if let Some(done) = futures_lite::future::poll_once(answer.as_mut()).await {
        return Watched::Answered(done, 0);
    }
    let arrived = {
        let mut read = pin!(stream.read(early));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(done) = answer.as_mut().poll(cx) {
                return Poll::Ready(Ok(done));
            }
            match read.as_mut().poll(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Err(0)),
                Poll::Ready(Ok(n)) => Poll::Ready(Err(n)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    };
    match arrived {
        Ok(done) => Watched::Answered(done, 0),
        Err(0) => Watched::HungUp,
        Err(n) => {
            // The next request began to arrive; the answer still comes first.
            Watched::Answered(answer.await, n)
        }
    }
}

/// Serves one connection until it closes; `deadline` is its slot in the shard's
/// table of read deadlines, `watch` its place in the shard's epoll set.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream, deadline: Registration, watch: Watch) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        limits_idle: shard.config.limits.idle_timeout,
        shard,
        watch,
        stream,
        deadline,
        rbuf: vec![0; INITIAL_READ_BUFFER],
        start: 0,
        end: 0,
        wbuf: Vec::with_capacity(INITIAL_READ_BUFFER),
        wstart: 0,
        body: Vec::new(),
        early: vec![0; EARLY_READ].into_boxed_slice(),
        pending: 0,
        drained: false,
    };
    let _ = conn.run().await;
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Requests whose answers never reached the socket no longer hold up a drain.
        self.shard.busy.set(self.shard.busy.get() - self.pending);
    }
}

struct Conn {
    shard: Rc<Shard>,
    limits_idle: Duration,
    /// The socket's place in the shard's epoll set; declared before `stream` so
    /// that it leaves the set before the socket closes.
    watch: Watch,
    stream: TcpStream,
    /// Ends a read that outlives its deadline (the idle, header and body
    /// timeouts), without a glommio timer per connection.
    deadline: Registration,
    /// Received bytes live in `rbuf[start..end]`.
    rbuf: Vec<u8>,
    start: usize,
    end: usize,
    /// Responses to write are `wbuf[wstart..]`: bytes before `wstart` are room
    /// an answer's head did not need (see `route::respond`).
    wbuf: Vec<u8>,
    wstart: usize,
    /// A chunked request's decoded body.
    body: Vec<u8>,
    /// Where a pipelined request that arrives while a call runs is read to; a
    /// field, not a local, so that it is zeroed once per connection, not per request.
    early: Box<[u8]>,
    /// Requests read (and counted in `shard.busy`) whose responses are not yet
    /// written to the socket.
    pending: usize,
    /// The last read took everything the socket held (it left room unused, or
    /// found nothing): bytes that arrive after it will be reported by the
    /// epoll set, so the next wait need not try the socket first.
    drained: bool,
}

enum Next {
    KeepGoing,
    Close,
}

impl Conn {
    async fn run(&mut self) -> std::io::Result<()> {
        self.stream.set_write_timeout(Some(self.limits_idle))?;
        loop {
            match self.one_request().await? {
                Next::KeepGoing => {}
                Next::Close => {
                    self.flush().await?;
                    return Ok(());
                }
            }
        }
    }

    async fn one_request(&mut self) -> std::io::Result<Next> {
        // The shard (and so its limits) outlives the request; one Rc increment
        // rather than a copy of every limit per request.
        let shard = self.shard.clone();
        let limits = &shard.config.limits;
        // The head.
        let mut head_started: Option<Instant> = None;
        let head = loop {
            match frame::parse_head(&self.rbuf[self.start..self.end], limits.max_headers) {
                Ok(Some(head)) if head.len <= limits.max_header_bytes => break head,
                Ok(Some(_)) => return self.refuse(431, "request headers are too large").await,
                Ok(None) => {
                    if self.end - self.start >= limits.max_header_bytes {
                        return self.refuse(431, "request headers are too large").await;
                    }
                    // Nothing more to parse: send what was gathered before waiting.
                    self.flush().await?;
                    let idle = self.start == self.end;
                    if idle && self.shard.draining.get() {
                        return Ok(Next::Close);
                    }
                    let deadline = if idle {
                        Instant::now() + limits.idle_timeout
                    } else {
                        *head_started.get_or_insert_with(Instant::now) + limits.header_timeout
                    };
                    match self.read_more(deadline, limits.max_header_bytes).await {
                        Ok(0) => return Ok(Next::Close),
                        Ok(_) => {
                            head_started.get_or_insert_with(Instant::now);
                        }
                        Err(e) if e.kind() == ErrorKind::TimedOut && !idle => {
                            return self
                                .refuse(408, "request headers did not arrive in time")
                                .await
                        }
                        Err(_) => return Ok(Next::Close),
                    }
                }
                Err(HeadError::TooManyHeaders) => {
                    return self.refuse(431, "too many request header fields").await
                }
                Err(HeadError::Malformed(why) | HeadError::BadFraming(why)) => {
                    return self.refuse(400, why).await
                }
                Err(HeadError::BadLength) => {
                    return self.refuse(400, "invalid Content-Length").await
                }
            }
        };

        // From here until its response is on the socket, the request holds up a
        // graceful shutdown.
        self.pending += 1;
        self.shard.busy.set(self.shard.busy.get() + 1);

        // The body.
        let body_deadline = Instant::now() + limits.header_timeout.max(limits.idle_timeout);
        let max_buffer = head.len + limits.max_body_bytes;
        let (body_in_rbuf, consumed) = if let Some(n) = head.content_length {
            if n > limits.max_body_bytes {
                return self.refuse_body(&head).await;
            }
            if head.expect_continue && self.end - self.start < head.len + n {
                self.send_continue().await?;
            }
            while self.end - self.start < head.len + n {
                if let Some(next) = self.read_body(body_deadline, max_buffer).await? {
                    return Ok(next);
                }
            }
            (true, head.len + n)
        } else if head.chunked {
            if head.expect_continue {
                self.send_continue().await?;
            }
            let mut decoder = Chunked::default();
            self.body.clear();
            let mut rel = head.len;
            loop {
                match decoder.feed(
                    &self.rbuf[self.start + rel..self.end],
                    &mut self.body,
                    limits.max_body_bytes,
                ) {
                    Ok(used) => rel += used,
                    Err(ChunkError::TooLarge) => return self.refuse_body(&head).await,
                    Err(ChunkError::Malformed) => {
                        return self.refuse(400, "malformed chunked body").await
                    }
                }
                if decoder.is_done() {
                    break;
                }
                // Decoded input is no longer needed: drop it so the buffer holds at
                // most one read of undecoded bytes whatever the body's size.
                self.rbuf
                    .copy_within(self.start + rel..self.end, self.start + head.len);
                self.end -= rel - head.len;
                rel = head.len;
                if let Some(next) = self
                    .read_body(body_deadline, head.len + READ_CHUNK * 4)
                    .await?
                {
                    return Ok(next);
                }
            }
            (false, rel)
        } else {
            (true, head.len)
        };

        // The answer.
        let buf = &self.rbuf[self.start..self.end];
        let body: &[u8] = if body_in_rbuf {
            &buf[head.len..consumed]
        } else {
            &self.body
        };
        let keep_alive = head.keep_alive && !self.shard.draining.get();
        let mark = self.wbuf.len();
        let mut skip = 0;
        let watched = {
            let answer = pin!(route::respond(
                &self.shard,
                buf,
                &head,
                body,
                keep_alive,
                &mut self.wbuf,
                &mut skip,
            ));
            answer_or_hangup(answer, &mut self.stream, &mut self.early).await
        };
        let (streaming, early_len) = match watched {
            Watched::Answered(streaming, n) => (streaming, n),
            // The client is gone: dropping the answer's future stopped the call.
            // Whatever it had begun to write goes too; earlier answers stay.
            Watched::HungUp => {
                self.wbuf.truncate(mark);
                return Ok(Next::Close);
            }
        };
        if skip > 0 {
            assert_eq!(mark, 0, "room is left only at the start of an empty buffer");
            self.wstart = skip;
        }
        count_status(&self.shard, &self.wbuf[mark.max(self.wstart)..]);
        self.start += consumed;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if early_len > 0 {
            let early = std::mem::take(&mut self.early);
            self.take_early(&early[..early_len]);
            self.early = early;
        }
        if let Some(job) = streaming {
            // Earlier pipelined answers go first, then the stream itself; the
            // request stays pending until its stream is written.
            self.write_queued().await?;
            let reusable = match job {
                Streaming::Ndjson(job) => {
                    direct::stream_ndjson(&self.shard, &mut self.stream, job, keep_alive).await
                }
                Streaming::Progress(job) => {
                    sse::stream_progress(&self.shard, &mut self.stream, job, keep_alive).await
                }
            };
            self.shard.busy.set(self.shard.busy.get() - self.pending);
            self.pending = 0;
            if !reusable? {
                return Ok(Next::Close);
            }
        }
        if !keep_alive || self.shard.draining.get() {
            return Ok(Next::Close);
        }
        // Answers to a pipelined burst are gathered into one write, up to a bound
        // in bytes and in answers (limits.max_pipelined).
        if self.wbuf.len() >= WRITE_FLUSH_BYTES
            || self.pending >= self.shard.config.limits.max_pipelined
        {
            self.flush().await?;
        }
        Ok(Next::KeepGoing)
    }

    /// The interim answer a client sending `Expect: 100-continue` waits for.
    async fn send_continue(&mut self) -> std::io::Result<()> {
        self.wbuf
            .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        self.flush().await
    }

    /// Reads more of a body. `Some(next)`: the request ended here (the client
    /// left, or was too slow and got 408) and the connection goes that way.
    async fn read_body(&mut self, deadline: Instant, cap: usize) -> std::io::Result<Option<Next>> {
        match self.read_more(deadline, cap).await {
            Ok(0) => Ok(Some(Next::Close)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::TimedOut => self
                .refuse(408, "request body did not arrive in time")
                .await
                .map(Some),
            Err(_) => Ok(Some(Next::Close)),
        }
    }

    /// Appends bytes read while a call ran (the client's next pipelined request).
    fn take_early(&mut self, bytes: &[u8]) {
        // Read through glommio: whether the socket holds more is not known.
        self.drained = false;
        if self.start > 0 {
            self.rbuf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.rbuf.len() < self.end + bytes.len() {
            self.rbuf.resize(self.end + bytes.len(), 0);
        }
        self.rbuf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Reads more bytes, growing the buffer up to `cap` bytes of pending data.
    async fn read_more(&mut self, deadline: Instant, cap: usize) -> std::io::Result<usize> {
        if self.end == self.rbuf.len() {
            if self.start > 0 {
                self.rbuf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.rbuf.len() {
                let want = (self.rbuf.len() * 2)
                    .max(self.end + READ_CHUNK)
                    .min(cap.max(self.end + 1));
                self.rbuf.resize(want, 0);
            }
        }
        if Instant::now() >= deadline {
            return Err(ErrorKind::TimedOut.into());
        }
        if self.start == self.end {
            if self.drained {
                // Nothing was left in the socket: wait for the set to report
                // the next request (at once if it already has).
                self.deadline
                    .within(deadline, async {
                        self.watch.readable().await;
                        Ok(())
                    })
                    .await?;
            } else {
                // Let the shard's other connections run first: the rest of
                // the request has usually arrived by the time this task comes
                // round again, and a direct recv then takes it.
                futures_lite::future::yield_now().await;
            }
        }
        loop {
            // Cleared before the read, so that bytes arriving after it are
            // reported again whatever the set said before.
            self.watch.clear();
            let room = self.rbuf.len() - self.end;
            if let Some(n) = recv_ready(&self.stream, &mut self.rbuf[self.end..])? {
                self.end += n;
                self.drained = n < room;
                return Ok(n);
            }
            self.drained = true;
            self.deadline
                .within(deadline, async {
                    self.watch.readable().await;
                    Ok(())
                })
                .await?;
        }
    }

    /// Writes the queued answers (`wbuf[wstart..]`) and empties the buffer.
    async fn write_queued(&mut self) -> std::io::Result<()> {
        let r = if self.wbuf.len() > self.wstart {
            super::send_all(&mut self.stream, &self.wbuf[self.wstart..]).await
        } else {
            Ok(())
        };
        self.wbuf.clear();
        self.wstart = 0;
        r
    }

    /// [`write_queued`](Self::write_queued), after which no request read so far
    /// holds up a graceful shutdown.
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            let r = self.write_queued().await;
            self.shard.busy.set(self.shard.busy.get() - self.pending);
            self.pending = 0;
            r?;
        }
        Ok(())
    }

    /// Answers with an error status and closes: the request could not be framed, so
    /// nothing after it on this connection can be trusted.
    async fn refuse(&mut self, status: u16, why: &str) -> std::io::Result<Next> {
        self.shard.m().status(status);
        route::write_plain_error(&mut self.wbuf, status, why, false, &[]);
        Ok(Next::Close)
    }

    /// 413 without reading the body: answer, stop sending, then drop a bounded
    /// amount of what the client is still sending so it can read the answer.
    async fn refuse_body(&mut self, head: &Head) -> std::io::Result<Next> {
        let max = self.shard.config.limits.max_body_bytes;
        let why = format!("request body is larger than {max} bytes (limits.max_body_bytes)");
        let _ = head;
        self.shard.m().status(413);
        route::write_plain_error(&mut self.wbuf, 413, &why, false, &[]);
        self.flush().await?;
        let _ = self.stream.shutdown(std::net::Shutdown::Write).await;
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut drained = 0;
        self.start = 0;
        self.end = 0;
        while drained < DRAIN_MAX_BYTES {
            match self.read_more(deadline, READ_CHUNK).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    drained += n;
                    self.start = 0;
                    self.end = 0;
                }
            }
        }
        Ok(Next::Close)
    }
}

/// Counts the status of a response just appended (`HTTP/1.1 NNN …`).
fn count_status(shard: &Shard, response: &[u8]) {
    if let Some(code) = response
        .get(9..12)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse::<u16>().ok())
    {
        shard.m().status(code);
    }
}
