//! JSON-RPC 2.0 framing: reading one message or a batch, and writing responses.
//!
//! Messages are parsed with borrowed raw values, so the id and params of a request
//! are never copied or built into a tree unless a handler needs them. Responses are
//! written straight into the connection's reusable output buffer.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Visitor};
use serde_json::value::RawValue;

pub const PARSE_ERROR: i32 = -32700;
pub const INVALID_REQUEST: i32 = -32600;
pub const METHOD_NOT_FOUND: i32 = -32601;
pub const INVALID_PARAMS: i32 = -32602;
pub const INTERNAL_ERROR: i32 = -32603;
/// 2026-07-28: an HTTP header disagrees with the body it travels with.
pub const HEADER_MISMATCH: i32 = -32020;
/// 2026-07-28: the requested protocol revision is not supported.
pub const UNSUPPORTED_VERSION: i32 = -32022;

/// One message as it arrived. `params` is kept raw by default, so that a body
/// whose params are malformed still yields its id for the error answer; a caller
/// that knows the params' shape may parse them in the same pass (`P`), and fall
/// back to the raw form when that fails.
#[derive(Debug, serde::Deserialize)]
#[serde(bound(deserialize = "P: Deserialize<'de>"))]
pub struct Message<'a, P = &'a RawValue> {
    #[serde(default, borrow)]
    pub jsonrpc: Option<&'a str>,
    /// `Some` whenever the key is present, even as `null`, so that a notification
    /// (no id) can be told from a request with a null id (invalid in MCP).
    #[serde(default, borrow, deserialize_with = "present")]
    pub id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "opt_cow_str")]
    pub method: Option<Cow<'a, str>>,
    #[serde(default)]
    pub params: Option<P>,
    #[serde(default, borrow)]
    pub result: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub error: Option<&'a RawValue>,
}

/// For `Option<&RawValue>` fields: `Some` whenever the key is present, `null`
/// included (serde's default maps `null` to `None`).
pub fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// A JSON string borrowed from the body when it has no escapes (nearly always),
/// unescaped into an owned copy only when it must be. serde's own
/// `Cow<str>` always copies, even under `#[serde(borrow)]` once it is wrapped in
/// an `Option`: three allocations per tools/call (method, tool name, revision).
pub struct CowStr<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> Visitor<'de> for Text {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Text)
    }
}

/// For `Option<Cow<str>>` fields: borrowed where it can be ([`CowStr`]); absent
/// or `null` is `None`, as with serde's default.
pub fn opt_cow_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Ok(Option::<CowStr<'de>>::deserialize(d)?.map(|s| s.0))
}

/// What kind of message this is, once it has been checked.
#[derive(Debug)]
pub enum Kind<'m> {
    Request {
        id: &'m RawValue,
        method: &'m str,
    },
    Notification {
        method: &'m str,
    },
    /// A response from the client (to a server request); acknowledged, not answered.
    Response,
}

impl<P> Message<'_, P> {
    /// Classifies the message, or says why it is not a valid JSON-RPC 2.0 message.
    pub fn kind(&self) -> Result<Kind<'_>, &'static str> {
        if self.jsonrpc != Some("2.0") {
            return Err("`jsonrpc` must be \"2.0\"");
        }
        match (&self.method, self.id) {
            (Some(method), Some(id)) => {
                if !is_valid_id(id) {
                    return Err("`id` must be a string or an integer");
                }
                Ok(Kind::Request { id, method })
            }
            (Some(method), None) => Ok(Kind::Notification { method }),
            (None, Some(_)) if self.result.is_some() || self.error.is_some() => Ok(Kind::Response),
            _ => Err("a message needs a `method` (request, notification) or a `result`/`error` (response)"),
        }
    }
}

fn is_valid_id(id: &RawValue) -> bool {
    let s = id.get().as_bytes();
    match s.first() {
        Some(b'"') => true,
        Some(b'-' | b'0'..=b'9') => s.iter().all(|b| b.is_ascii_digit() || *b == b'-'),
        _ => false,
    }
}

/// The body is a batch (array) or a single message.
pub enum Parsed<'a> {
    Single(Message<'a>),
    Batch(Vec<Message<'a>>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON, not UTF-8, or nested deeper than allowed: -32700.
    Json(String),
    /// JSON, but not the shape of a message: -32600.
    Shape(String),
}

/// Parses a body. Depth is bounded before serde sees it, so no input can exhaust
/// the stack whatever parser is underneath.
pub fn parse(body: &[u8], max_depth: usize) -> Result<Parsed<'_>, ParseError> {
    check_depth(body, max_depth).map_err(ParseError::Json)?;
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let items: Vec<&RawValue> =
            serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(parse_one(item.get().as_bytes()).map_err(ParseError::Shape)?);
        }
        return Ok(Parsed::Batch(out));
    }
    match serde_json::from_slice::<Message>(body) {
        Ok(m) => Ok(Parsed::Single(m)),
        Err(e) if e.is_data() => Err(ParseError::Shape(e.to_string())),
        Err(e) => Err(ParseError::Json(e.to_string())),
    }
}

fn parse_one(item: &[u8]) -> Result<Message<'_>, String> {
    serde_json::from_slice(item).map_err(|e| e.to_string())
}

/// Rejects nesting deeper than `max` with one pass over the bytes.
///
/// Most of a message's bytes are inside strings (keys, paths, SQL, text), so a
/// string is skipped with `memchr2` to its next quote or backslash instead of
/// being walked byte by byte: a quarter of the instructions of a plain loop on a
/// `tools/call` body. Malformed input (an unterminated string) is left for the
/// parser to report; this pass only bounds depth.
pub fn check_depth(body: &[u8], max: usize) -> Result<(), String> {
    // Depth never exceeds the number of opening brackets: a request with few
    // brackets (nearly all of them) needs no string-aware pass at all. Counted in
    // byte-wide lanes, which compile to a vector loop; memchr's iterator paid its
    // set-up at every bracket (~0.6k instructions on a 270-byte call).
    let opening: usize = body
        .chunks(u8::MAX as usize)
        .map(|chunk| {
            let n = chunk
                .iter()
                .fold(0u8, |n, &b| n + u8::from((b == b'[') | (b == b'{')));
            usize::from(n)
        })
        .sum();
    if opening <= max {
        return Ok(());
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &body[i..]) {
                        None => return Ok(()),
                        Some(k) if body[i + k] == b'\\' => {
                            if i + k + 2 > body.len() {
                                return Ok(());
                            }
                            i += k + 2
                        }
                        Some(k) => {
                            i += k + 1;
                            break;
                        }
                    }
                }
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(format!("JSON nested deeper than {max} levels"));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Writes `{"jsonrpc":"2.0","id":ID,"result":RESULT}`.
pub fn write_result(out: &mut Vec<u8>, id: &RawValue, result: &[u8]) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result);
    out.push(b'}');
}

/// Writes an error response; `id` is `null` when the request's id is unknown.
pub fn write_error(
    out: &mut Vec<u8>,
    id: Option<&RawValue>,
    code: i32,
    message: &str,
    data: Option<&serde_json::Value>,
) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.map_or("null", |i| i.get()).as_bytes());
    out.extend_from_slice(b",\"error\":{\"code\":");
    out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    out.extend_from_slice(b",\"message\":");
    serde_json::to_writer(&mut *out, message).expect("writing to a Vec cannot fail");
    if let Some(data) = data {
        out.extend_from_slice(b",\"data\":");
        serde_json::to_writer(&mut *out, data).expect("writing to a Vec cannot fail");
    }
    out.extend_from_slice(b"}}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_borrowed_unless_escaped() {
        let m = single(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#);
        assert!(matches!(m.method, Some(Cow::Borrowed("tools/call"))));
        let m = single(r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call"}"#);
        assert!(matches!(m.method.as_ref(), Some(Cow::Owned(s)) if s == "tools/call"));
        let m = single(r#"{"jsonrpc":"2.0","id":1,"method":null}"#);
        assert!(m.method.is_none());
        let e = serde_json::from_str::<CowStr>("7").err().unwrap();
        assert!(e.to_string().contains("expected a string"), "{e}");
    }

    fn single(body: &str) -> Message<'_> {
        match parse(body.as_bytes(), 64).unwrap() {
            Parsed::Single(m) => m,
            Parsed::Batch(_) => panic!("expected a single message"),
        }
    }

    #[test]
    fn classifies_requests_notifications_and_responses() {
        let m = single(r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#);
        assert!(matches!(m.kind(), Ok(Kind::Request { method: "ping", .. })));
        let m = single(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert!(matches!(m.kind(), Ok(Kind::Notification { .. })));
        let m = single(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#);
        assert!(matches!(m.kind(), Ok(Kind::Response)));
    }

    #[test]
    fn rejects_null_ids_wrong_version_and_shapeless_messages() {
        assert!(single(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#)
            .kind()
            .is_err());
        assert!(single(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#)
            .kind()
            .is_err());
        assert!(single(r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#)
            .kind()
            .is_err());
        assert!(single(r#"{"jsonrpc":"2.0"}"#).kind().is_err());
    }

    #[test]
    fn parse_errors_and_shape_errors_differ() {
        assert!(matches!(parse(b"{not json", 64), Err(ParseError::Json(_))));
        assert!(matches!(
            parse(b"\"just a string\"", 64),
            Err(ParseError::Shape(_))
        ));
        assert!(matches!(
            parse(b"{\"jsonrpc\":\"2.0\",\"method\":\"\xff\"}", 64),
            Err(ParseError::Json(_))
        ));
    }

    #[test]
    fn deep_nesting_is_a_parse_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(matches!(
            parse(deep.as_bytes(), 64),
            Err(ParseError::Json(_))
        ));
        let ok = format!("{}{}", "[".repeat(10), "]".repeat(10));
        assert!(check_depth(ok.as_bytes(), 64).is_ok());
        // Brackets inside strings do not count.
        assert!(check_depth(br#"{"a":"[[[[[[[[[[[[[[[[[[[[[[[[\"[["}"#, 4).is_ok());
        // An escaped backslash ends before the quote that closes the string.
        assert!(check_depth(br#"{"a":"\\","b":[[[[1]]]]}"#, 4).is_err());
        // Many brackets, few of them nested: the exact pass must still say yes.
        assert!(check_depth(br#"[[],[],[],[],[],[],{"a":"[[[[[["}]"#, 4).is_ok());
        assert!(check_depth(br#"{"a":"\\","b":[[[1]]]}"#, 4).is_ok());
        // A backslash as the last byte, and an unterminated string, are the
        // parser's to report.
        assert!(check_depth(br#"{"a":"\"#, 4).is_ok());
        assert!(check_depth(br#"["\"#, 4).is_ok());
        assert!(check_depth(br#"["abc"#, 4).is_ok());
    }

    #[test]
    fn writes_responses_with_the_raw_id() {
        let m = single(r#"{"jsonrpc":"2.0","id":"x-1","method":"ping"}"#);
        let mut out = Vec::new();
        write_result(&mut out, m.id.unwrap(), b"{}");
        assert_eq!(out, br#"{"jsonrpc":"2.0","id":"x-1","result":{}}"#);
        out.clear();
        write_error(&mut out, None, PARSE_ERROR, "bad \"json\"", None);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["code"], -32700);
        assert_eq!(v["id"], serde_json::Value::Null);
    }
}
