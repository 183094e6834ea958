//! JSON on MCP-shaped messages: serde_json, simd-json and sonic-rs, each parsing
//! and serialising the same four messages.
//!
//! * `request`   — a small tools/call request (2026-07-28, with `_meta`), ~300 B
//! * `tools_list`— a tools/list result with six tools and their schemas, ~6 KiB
//! * `read_1mib` — a read_file result carrying 1 MiB of source text
//! * `rows_10k`  — a query_db result of 10,000 rows × 5 columns, ~0.9 MiB
//!
//! For each: `parse_dom` (each crate's own tree), `parse_typed` (serde into a
//! struct, borrowing strings where the crate allows) and `serialize` (serde from
//! the struct into a `Vec<u8>`). Plus `parse_raw/request`: what coremcp's hot path
//! does today (serde_json into `RawValue`s, then the params).
//!
//! `cargo bench --bench json`. sonic-rs picks SIMD at compile time: run with
//! `RUSTFLAGS="-C target-cpu=native"` to see it at its best.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde::{Deserialize, Serialize};

#[path = "fixture/mod.rs"]
mod fixture;

const REQUEST: &str = r#"{"jsonrpc":"2.0","id":17,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"src/mod07/file0107.rs","offset":1,"limit":200},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"bench","version":"1.0"}}}}"#;

#[derive(Serialize, Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    jsonrpc: Cow<'a, str>,
    id: u64,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    params: CallParams<'a>,
}

#[derive(Serialize, Deserialize)]
struct CallParams<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    arguments: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "_meta")]
    meta: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct Response<R> {
    jsonrpc: String,
    id: u64,
    result: R,
}

#[derive(Serialize, Deserialize)]
struct ToolsList {
    tools: Vec<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct Text {
    #[serde(rename = "type")]
    kind: String,
    text: String,
}

#[derive(Serialize, Deserialize)]
struct CallResult {
    content: Vec<Text>,
    #[serde(rename = "isError")]
    is_error: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Cell {
    Int(i64),
    Real(f64),
    Text(String),
}

#[derive(Serialize, Deserialize)]
struct Rows {
    columns: Vec<String>,
    rows: Vec<Vec<Cell>>,
    truncated: bool,
}

#[derive(Serialize, Deserialize)]
struct RowsResult {
    content: Vec<Text>,
    #[serde(rename = "structuredContent")]
    structured: Rows,
    #[serde(rename = "isError")]
    is_error: bool,
}

fn tools_list() -> Response<ToolsList> {
    let registry = coremcp::tools::Registry::builtin();
    Response {
        jsonrpc: "2.0".into(),
        id: 2,
        result: ToolsList {
            tools: registry.tools().map(|t| t.spec().to_json()).collect(),
        },
    }
}

fn read_1mib() -> Response<CallResult> {
    let mut rng = fixture::Rng::new(7);
    let mut text = fixture::text(&mut rng, 1 << 20, false);
    text.truncate(1 << 20);
    Response {
        jsonrpc: "2.0".into(),
        id: 3,
        result: CallResult {
            content: vec![Text {
                kind: "text".into(),
                text,
            }],
            is_error: false,
        },
    }
}

fn rows_10k() -> Response<RowsResult> {
    let mut rng = fixture::Rng::new(9);
    let rows: Vec<Vec<Cell>> = (1..=10_000i64)
        .map(|i| {
            vec![
                Cell::Int(i),
                Cell::Text(fixture::sku(i)),
                Cell::Text(format!("{} {} {}", rng.word(), rng.word(), rng.word())),
                Cell::Real(rng.below(100_000) as f64 / 100.0),
                Cell::Int(rng.below(500) as i64),
            ]
        })
        .collect();
    Response {
        jsonrpc: "2.0".into(),
        id: 4,
        result: RowsResult {
            content: vec![Text {
                kind: "text".into(),
                text: "(10000 row(s) from `bench`)".into(),
            }],
            structured: Rows {
                columns: ["id", "sku", "name", "price", "qty"]
                    .map(String::from)
                    .to_vec(),
                rows,
                truncated: false,
            },
            is_error: false,
        },
    }
}

/// Parse (DOM and typed) and serialise one message with all three crates.
fn case<T>(c: &mut Criterion, name: &str, value: &T)
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let bytes = serde_json::to_vec(value).unwrap();
    let mut g = c.benchmark_group(format!("json/{name}"));
    g.throughput(Throughput::Bytes(bytes.len() as u64));

    g.bench_function(BenchmarkId::new("parse_dom", "serde_json"), |b| {
        b.iter(|| black_box(serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()))
    });
    g.bench_function(BenchmarkId::new("parse_dom", "simd_json"), |b| {
        // simd-json parses in place: the copy is part of what a server pays.
        b.iter(|| {
            let mut buf = bytes.clone();
            black_box(simd_json::to_owned_value(&mut buf).unwrap());
        })
    });
    g.bench_function(BenchmarkId::new("parse_dom", "sonic_rs"), |b| {
        b.iter(|| black_box(sonic_rs::from_slice::<sonic_rs::Value>(&bytes).unwrap()))
    });

    g.bench_function(BenchmarkId::new("parse_typed", "serde_json"), |b| {
        b.iter(|| black_box(serde_json::from_slice::<T>(&bytes).unwrap()))
    });
    g.bench_function(BenchmarkId::new("parse_typed", "simd_json"), |b| {
        b.iter(|| {
            let mut buf = bytes.clone();
            black_box(simd_json::serde::from_slice::<T>(&mut buf).unwrap());
        })
    });
    g.bench_function(BenchmarkId::new("parse_typed", "sonic_rs"), |b| {
        b.iter(|| black_box(sonic_rs::from_slice::<T>(&bytes).unwrap()))
    });

    let mut out = Vec::with_capacity(bytes.len() * 2);
    g.bench_function(BenchmarkId::new("serialize", "serde_json"), |b| {
        b.iter(|| {
            out.clear();
            serde_json::to_writer(&mut out, value).unwrap();
            black_box(&out);
        })
    });
    g.bench_function(BenchmarkId::new("serialize", "simd_json"), |b| {
        b.iter(|| {
            out.clear();
            simd_json::serde::to_writer(&mut out, value).unwrap();
            black_box(&out);
        })
    });
    g.bench_function(BenchmarkId::new("serialize", "sonic_rs"), |b| {
        b.iter(|| {
            out.clear();
            sonic_rs::to_writer(&mut out, value).unwrap();
            black_box(&out);
        })
    });
    g.finish();
}

fn request(c: &mut Criterion) {
    let r: Request = serde_json::from_str(REQUEST).unwrap();
    // Typed parsing needs an owned `T` here; the borrowed struct is checked by
    // `parse_raw` below.
    let owned = serde_json::to_value(&r).unwrap();
    #[derive(Serialize, Deserialize)]
    struct Owned {
        jsonrpc: String,
        id: u64,
        method: String,
        params: OwnedParams,
    }
    #[derive(Serialize, Deserialize)]
    struct OwnedParams {
        name: String,
        arguments: BTreeMap<String, serde_json::Value>,
        #[serde(rename = "_meta")]
        meta: BTreeMap<String, serde_json::Value>,
    }
    let typed: Owned = serde_json::from_value(owned).unwrap();
    case(c, "request", &typed);

    // What coremcp does per request today: the envelope with borrowed raw values
    // (depth check included), then the params it reads.
    let mut g = c.benchmark_group("json/request");
    g.bench_function(BenchmarkId::new("parse_raw", "serde_json"), |b| {
        use coremcp::protocol::jsonrpc::{parse, Parsed};
        b.iter(|| {
            let Ok(Parsed::Single(m)) = parse(REQUEST.as_bytes(), 64) else {
                unreachable!()
            };
            let p: CallParams = serde_json::from_str(m.params.unwrap().get()).unwrap();
            black_box((m.id, p));
        })
    });
    g.finish();
}

fn large(c: &mut Criterion) {
    case(c, "tools_list", &tools_list());
    case(c, "read_1mib", &read_1mib());
    case(c, "rows_10k", &rows_10k());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = request, large
}
criterion_main!(benches);
