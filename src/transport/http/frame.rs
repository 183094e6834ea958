//! HTTP/1.1 framing: request heads in, bodies (Content-Length or chunked) in, and
//! response heads out. The only place that knows the wire format.
//!
//! Heads are parsed with httparse into byte ranges of the connection's read buffer,
//! so no header is copied; only the headers MCP cares about are kept.

use std::ops::Range;

/// Methods the server routes; anything else is a 405 on a known path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
    Options,
    Other,
}

/// A parsed request head. Header values are ranges into the buffer it came from.
#[derive(Debug, Default, Clone)]
pub struct Head {
    pub method: Option<Method>,
    pub path: Range<usize>,
    pub http10: bool,
    pub keep_alive: bool,
    pub content_length: Option<usize>,
    pub chunked: bool,
    pub expect_continue: bool,
    pub host: Option<Range<usize>>,
    pub origin: Option<Range<usize>>,
    pub accept: Option<Range<usize>>,
    pub content_type: Option<Range<usize>>,
    pub protocol_version: Option<Range<usize>>,
    pub session_id: Option<Range<usize>>,
    pub mcp_method: Option<Range<usize>>,
    pub mcp_name: Option<Range<usize>>,
    /// Length of the head in bytes, including the blank line.
    pub len: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Malformed request line or header: 400.
    Malformed(&'static str),
    /// More header fields than allowed: 431.
    TooManyHeaders,
    /// Both Content-Length and chunked, or an unsupported transfer coding: 400.
    BadFraming(&'static str),
    /// A Content-Length that is not a number: 400.
    BadLength,
}

/// Parses a head from the start of `buf`. `Ok(None)`: not complete yet.
pub fn parse_head(buf: &[u8], max_headers: usize) -> Result<Option<Head>, HeadError> {
    const STACK_HEADERS: usize = 64;
    let mut storage = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap;
    let headers: &mut [httparse::Header] = if max_headers <= STACK_HEADERS {
        &mut storage[..max_headers]
    } else {
        heap = vec![httparse::EMPTY_HEADER; max_headers];
        &mut heap
    };
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed("malformed request line or header")),
    };
    let base = buf.as_ptr() as usize;
    let range_of = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let version = req.version.unwrap_or(1);
    let mut head = Head {
        method: Some(match req.method.unwrap_or("") {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }),
        path: range_of(req.path.unwrap_or("").as_bytes()),
        http10: version == 0,
        keep_alive: version == 1,
        len,
        ..Head::default()
    };
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim(h.value);
        let range = range_of(value);
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or(HeadError::BadLength)?;
            if head.content_length.is_some_and(|m| m != n) {
                return Err(HeadError::BadLength);
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if value.eq_ignore_ascii_case(b"chunked") {
                head.chunked = true;
            } else {
                return Err(HeadError::BadFraming(
                    "only the chunked transfer coding is supported",
                ));
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            if contains_token(value, b"close") {
                head.keep_alive = false;
            } else if contains_token(value, b"keep-alive") {
                head.keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            head.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case(b"host") {
            head.host = Some(range);
        } else if name.eq_ignore_ascii_case(b"origin") {
            head.origin = Some(range);
        } else if name.eq_ignore_ascii_case(b"accept") {
            head.accept = Some(range);
        } else if name.eq_ignore_ascii_case(b"content-type") {
            head.content_type = Some(range);
        } else if name.eq_ignore_ascii_case(b"mcp-protocol-version") {
            head.protocol_version = Some(range);
        } else if name.eq_ignore_ascii_case(b"mcp-session-id") {
            head.session_id = Some(range);
        } else if name.eq_ignore_ascii_case(b"mcp-method") {
            head.mcp_method = Some(range);
        } else if name.eq_ignore_ascii_case(b"mcp-name") {
            head.mcp_name = Some(range);
        }
    }
    if head.chunked && head.content_length.is_some() {
        // RFC 9112 §6.1: a sender must not send both; accepting it invites smuggling.
        return Err(HeadError::BadFraming(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    Ok(Some(head))
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// True when a comma-separated header value lists `token` (case-insensitive).
pub fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|part| trim(part).eq_ignore_ascii_case(token))
}

/// True when an `Accept` value admits `mime` (type/subtype, `type/*` or `*/*`).
pub fn accepts(accept: &[u8], mime: &[u8]) -> bool {
    let major = mime.split(|b| *b == b'/').next().unwrap_or(b"");
    accept.split(|b| *b == b',').any(|part| {
        let range = trim(part.split(|b| *b == b';').next().unwrap_or(b""));
        range.eq_ignore_ascii_case(mime)
            || range == b"*/*"
            || (range.len() == major.len() + 2
                && range[..major.len()].eq_ignore_ascii_case(major)
                && &range[major.len()..] == b"/*")
    })
}

/// Incremental decoder of a chunked body, fed as bytes arrive.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Trailers,
    Done,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ChunkError {
    Malformed,
    /// The decoded body would pass the limit: 413.
    TooLarge,
}

/// A chunk-size line longer than this is malformed (hex digits plus extensions).
const MAX_CHUNK_LINE: usize = 1024;

impl Chunked {
    /// Decodes what it can of `input` into `body`. Returns the bytes consumed; the
    /// caller keeps the rest and calls again with more. `is_done` says when the
    /// last chunk and trailers have been read.
    pub fn feed(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        max: usize,
    ) -> Result<usize, ChunkError> {
        let mut pos = 0;
        loop {
            match self.state {
                ChunkState::Done => return Ok(pos),
                ChunkState::Size | ChunkState::Trailers => {
                    let Some(nl) = memchr::memchr(b'\n', &input[pos..]) else {
                        if input.len() - pos > MAX_CHUNK_LINE {
                            return Err(ChunkError::Malformed);
                        }
                        return Ok(pos);
                    };
                    let line = &input[pos..pos + nl];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    pos += nl + 1;
                    if self.state == ChunkState::Trailers {
                        if line.is_empty() {
                            self.state = ChunkState::Done;
                        }
                        continue;
                    }
                    let digits = line.split(|b| *b == b';').next().unwrap_or(b"");
                    let digits = trim(digits);
                    if digits.is_empty() || digits.len() > 15 {
                        return Err(ChunkError::Malformed);
                    }
                    let size = std::str::from_utf8(digits)
                        .ok()
                        .and_then(|s| usize::from_str_radix(s, 16).ok())
                        .ok_or(ChunkError::Malformed)?;
                    if size == 0 {
                        self.state = ChunkState::Trailers;
                    } else if body.len() + size > max {
                        return Err(ChunkError::TooLarge);
                    } else {
                        self.state = ChunkState::Data(size);
                    }
                }
                ChunkState::Data(left) => {
                    let take = left.min(input.len() - pos);
                    if take == 0 {
                        return Ok(pos);
                    }
                    body.extend_from_slice(&input[pos..pos + take]);
                    pos += take;
                    self.state = if take == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::DataEnd => {
                    let rest = &input[pos..];
                    if rest.len() < 2 {
                        if rest.first().is_some_and(|b| *b != b'\r') {
                            return Err(ChunkError::Malformed);
                        }
                        return Ok(pos);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ChunkError::Malformed);
                    }
                    pos += 2;
                    self.state = ChunkState::Size;
                }
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// The reason phrase of the statuses this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Appends a response head. `extra` is pre-formatted `Name: value\r\n` lines.
pub fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: Option<&str>,
    body_len: usize,
    keep_alive: bool,
    extra: &[u8],
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(ct) = content_type {
        out.extend_from_slice(b"content-type: ");
        out.extend_from_slice(ct.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
    out.extend_from_slice(b"\r\n");
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
}

/// Appends the head of a 200 response whose body follows in chunks.
pub fn write_stream_head(out: &mut Vec<u8>, content_type: &str, keep_alive: bool) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: ");
    out.extend_from_slice(content_type.as_bytes());
    // no-store: a stream is one answer to one request; x-accel-buffering: a proxy
    // passes each chunk on as it comes.
    out.extend_from_slice(
        b"\r\ncache-control: no-store\r\nx-accel-buffering: no\r\ntransfer-encoding: chunked\r\n",
    );
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one chunk of a chunked body holding `parts` back to back.
pub fn write_chunk(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    assert!(len > 0, "an empty chunk would end the body");
    out.extend_from_slice(format!("{len:x}\r\n").as_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(b"\r\n");
}

/// The chunk that ends a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// True when a `Content-Type` value is `application/json` (parameters allowed).
pub fn is_json(content_type: &[u8]) -> bool {
    let mime = content_type.split(|b| *b == b';').next().unwrap_or(b"");
    mime.trim_ascii().eq_ignore_ascii_case(b"application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_headers_mcp_needs() {
        let raw = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:7411\r\nContent-Length: 5\r\nMcp-Session-Id:  abc \r\nAccept: application/json, text/event-stream\r\n\r\nhello";
        let h = parse_head(raw, 64).unwrap().unwrap();
        assert_eq!(h.method, Some(Method::Post));
        assert_eq!(&raw[h.path.clone()], b"/mcp");
        assert_eq!(h.content_length, Some(5));
        assert_eq!(&raw[h.session_id.clone().unwrap()], b"abc");
        assert_eq!(&raw[h.len..], b"hello");
        assert!(h.keep_alive);
        assert!(accepts(
            &raw[h.accept.clone().unwrap()],
            b"text/event-stream"
        ));
    }

    #[test]
    fn partial_heads_wait_and_bad_ones_fail() {
        assert_eq!(
            parse_head(b"POST /mcp HTTP/1.1\r\nHost: x\r\n", 64)
                .unwrap()
                .map(|h| h.len),
            None
        );
        assert!(matches!(
            parse_head(b"\x01\x02 / HTTP/1.1\r\n\r\n", 64),
            Err(HeadError::Malformed(_))
        ));
        let many: String = (0..10).map(|i| format!("X-{i}: y\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse_head(raw.as_bytes(), 4).unwrap_err(),
            HeadError::TooManyHeaders
        );
        let both = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            parse_head(both, 64),
            Err(HeadError::BadFraming(_))
        ));
        let conflicting = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(
            parse_head(conflicting, 64).unwrap_err(),
            HeadError::BadLength
        );
    }

    #[test]
    fn every_status_the_server_counts_has_its_reason_phrase() {
        for status in crate::metrics::STATUSES {
            assert_ne!(reason(status), "Unknown", "{status}");
        }
    }

    #[test]
    fn accept_ranges() {
        assert!(accepts(b"application/json", b"application/json"));
        assert!(accepts(b"*/*", b"application/json"));
        assert!(accepts(b"application/*;q=0.5", b"application/json"));
        assert!(!accepts(b"text/html", b"application/json"));
        assert!(!accepts(b"text/event-stream", b"application/json"));
    }

    #[test]
    fn chunked_bodies_decode_across_arbitrary_splits() {
        let wire = b"4\r\nWiki\r\n6;ext=1\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for split in 0..wire.len() {
            let mut d = Chunked::default();
            let mut body = Vec::new();
            let mut buf = wire[..split].to_vec();
            let used = d.feed(&buf, &mut body, 1024).unwrap();
            buf.drain(..used);
            buf.extend_from_slice(&wire[split..]);
            let used = d.feed(&buf, &mut body, 1024).unwrap();
            assert!(d.is_done(), "split at {split}");
            assert_eq!(body, b"Wikipedia in \r\n\r\nchunks.");
            assert_eq!(&buf[used..], b"NEXT");
        }
    }

    #[test]
    fn chunked_limits_and_garbage() {
        let mut body = Vec::new();
        assert_eq!(
            Chunked::default().feed(b"10\r\n", &mut body, 8),
            Err(ChunkError::TooLarge)
        );
        assert_eq!(
            Chunked::default().feed(b"zz\r\n", &mut body, 8),
            Err(ChunkError::Malformed)
        );
        assert_eq!(
            Chunked::default().feed(b"2\r\nabXY", &mut body, 8),
            Err(ChunkError::Malformed)
        );
    }
}
