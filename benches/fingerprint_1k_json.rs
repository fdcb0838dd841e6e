//! `fingerprint_1k_json`: `Fingerprint::of_request` over a 1 KiB JSON body, and the same bytes
//! as `text/plain`. `benches/common/mod.rs` gives the environment; `docs/benchmarks.md` the
//! results.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use idemstore::Fingerprint;

/// A ~1 KiB JSON request body with nesting, arrays, numbers, escapes and unicode.
fn json_body() -> Vec<u8> {
    let mut items = String::new();
    for i in 0..6 {
        if i > 0 {
            items.push(',');
        }
        items.push_str(&format!(
            r#"{{"sku":"SKU-{i:05}","qty":{q},"unit_price":{p}.{c:02},"tags":["a","b\u00e9",null,true],"meta":{{"z":1,"a":[1.0,2e3,-0.5]}}}}"#,
            q = i + 1,
            p = 10 + i * 7,
            c = i * 13 % 100
        ));
    }
    let body = format!(
        r#"{{"customer":{{"id":"cus_8f2k1x","email":"ann.o\"neil@example.com","name":"Ann O'Neil"}},"currency":"EUR","items":[{items}],"shipping":{{"method":"express","address":{{"line1":"12 Rue de l\u2019Église","city":"Lyon","zip":"69002","country":"FR"}}}},"start":"2026-05-20T15:00:00Z","notes":"leave at door \t thanks"}}"#
    );
    body.into_bytes()
}

fn fingerprint_1k_json(c: &mut Criterion) {
    let body = json_body();
    // The JSON row must time canonicalisation, not the fallback for a body that does not parse.
    assert!(
        idemstore::canonicalize(&body).is_some(),
        "the body must parse"
    );
    println!("fingerprint_1k_json: body is {} bytes", body.len());
    let mut group = c.benchmark_group("fingerprint_1k_json");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(body.len() as u64));
    for (name, content_type) in [("json", "application/json"), ("text_plain", "text/plain")] {
        group.bench_function(name, |b| {
            b.iter(|| {
                Fingerprint::of_request(
                    black_box("POST"),
                    black_box("/v1/bookings"),
                    Some(black_box(content_type)),
                    black_box(&body),
                )
            });
        });
    }
    group.finish();
}

fn main() {
    common::main("fingerprint_1k_json", |c, _| fingerprint_1k_json(c));
}
