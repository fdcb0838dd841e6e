//! What the features `tracing` and `metrics` cost when compiled in but nothing is installed (no
//! subscriber, no recorder): the same work built twice and compared.
//!
//! ```sh
//! cargo bench --bench observability --features http -- [PAIRS]
//! cargo bench --bench observability --features http,tracing,metrics -- [PAIRS]
//! ```
//!
//! One thread, no disk: `PAIRS` (default 200 000) begin + complete + replay rounds on a memory
//! store, then `PAIRS / 10` guarded requests through the HTTP layer (each a first execution and
//! a replay) on a current-thread runtime. The work is the same from run to run, so besides the
//! times it prints, the two builds can be compared by instruction counts under
//! `valgrind --tool=callgrind`, which a busy machine does not disturb.

// A bench aborts on any failure: there is no result to report then.
#![allow(clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use idemstore::http::{Contract, IdempotencyLayer};
use idemstore::{Begin, Config, Durability, Fingerprint, Key, Response, Scope, Store};
use tower::{Layer, Service, ServiceExt};

fn main() {
    let pairs: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let features = [
        ("tracing", cfg!(feature = "tracing")),
        ("metrics", cfg!(feature = "metrics")),
    ];
    let on: Vec<&str> = features.iter().filter(|f| f.1).map(|f| f.0).collect();
    println!(
        "FEATURES {}",
        if on.is_empty() {
            "none".into()
        } else {
            on.join(",")
        }
    );

    let store = memory_store();
    let scope = Scope::new("acct").expect("scope");
    let started = Instant::now();
    for i in 0..pairs {
        let key = Key::new(format!("key-{i:010}")).expect("key");
        let fp = Fingerprint::of_bytes(&i.to_le_bytes());
        let Ok(Begin::Execute(r)) = store.begin(&scope, &key, &fp) else {
            panic!("a new key executes");
        };
        r.complete(Response::new(201, [("content-type", "text/plain")], "made"))
            .expect("complete");
        let Ok(Begin::Replay(_)) = store.begin(&scope, &key, &fp) else {
            panic!("a completed key replays");
        };
    }
    let took = started.elapsed();
    println!(
        "STORE {pairs} rounds: {:.0} ns a round (begin, complete, replay)",
        took.as_nanos() as f64 / pairs as f64
    );

    let requests = pairs / 10;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let took = runtime.block_on(http_rounds(requests));
    println!(
        "HTTP {requests} rounds: {:.0} ns a round (an execution and a replay)",
        took.as_nanos() as f64 / requests as f64
    );
}

fn memory_store() -> Store {
    let config = Config::builder()
        .durability(Durability::Memory)
        .max_records_per_scope(1 << 40)
        .build()
        .expect("config");
    Store::in_memory(config).expect("store")
}

async fn http_rounds(requests: u64) -> std::time::Duration {
    let store = memory_store();
    let scope = Scope::new("acct").expect("scope");
    let layer = IdempotencyLayer::new(store, Contract::default().constant_scope(scope))
        .expect("layer")
        .run_inline();
    let handler = tower::service_fn(|_req: http::Request<_>| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"made"))))
    });
    let mut service = layer.layer(handler);
    let started = Instant::now();
    for i in 0..requests {
        let key = format!("key-{i:010}");
        for _ in 0..2 {
            let request = http::Request::post("/v1/orders")
                .header("idempotency-key", key.as_str())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(b"{\"n\":1}")))
                .expect("request");
            let response = service
                .ready()
                .await
                .expect("ready")
                .call(request)
                .await
                .expect("answered");
            assert!(response.status().is_success());
        }
    }
    started.elapsed()
}
