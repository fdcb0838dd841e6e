//! The HTTP layer's request path against a model (rules H2-H5, H7, H13, H14): a sequence of
//! requests, each built from the input (credentials, key header, method, path, query, content
//! type, body, and whether the handler succeeds), goes through `IdempotencyLayer` over a
//! memory store, one after the other. The model knows which requests are the same operation
//! (same scope, same parsed key, same upper-cased method, path, query, media type, and body,
//! JSON bodies compared as values) and checks every answer: the handler runs exactly when the
//! key has no stored response, a replay is the stored answer of an equivalent request, and a
//! different request under a used key is a conflict. Never a panic.
#![no_main]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use idemstore::http::{Contract, IdempotencyLayer, RequestBody};
use idemstore::{Config, Store};
use libfuzzer_sys::fuzz_target;
use tower_layer::Layer;
use tower_service::Service;

/// Drives a future that the memory store and an inline layer never leave pending for long.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}

/// The handler: counts its runs and answers `run N`, or `500` when asked to fail.
#[derive(Clone)]
struct Handler(Arc<Mutex<u64>>);

impl Service<Request<RequestBody<Full<Bytes>>>> for Handler {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody<Full<Bytes>>>) -> Self::Future {
        let n = {
            let mut runs = self.0.lock().unwrap();
            *runs += 1;
            *runs
        };
        let fail = req.headers().contains_key("x-fail");
        Box::pin(async move {
            let mut r = Response::new(Full::new(Bytes::from(format!("run {n}"))));
            *r.status_mut() = if fail {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::CREATED
            };
            Ok(r)
        })
    }
}

/// Reads the input a byte at a time; past its end, zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *first
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = usize::from(self.byte()) % (max + 1);
        (0..n).map(|_| self.byte()).collect()
    }
}

const AUTH: [Option<(&str, &str)>; 4] = [
    Some(("Bearer a", "a")),
    Some(("bearer   a", "a")),
    Some(("Bearer b", "b")),
    None,
];
const METHODS: [&str; 5] = ["POST", "post", "PATCH", "GET", "PUT"];
const PATHS: [&str; 3] = ["/a", "/b", "/a/b"];
const QUERIES: [Option<&str>; 3] = [None, Some("x=1"), Some("x=2")];
const TYPES: [Option<&str>; 5] = [
    Some("application/json"),
    Some("Application/JSON; charset=utf-8"),
    Some("text/plain"),
    Some("application/merge-patch+json"),
    None,
];
/// JSON bodies: the first two are one value.
const BODIES: [&str; 3] = [r#"{"a":1,"b":2}"#, r#"{ "b": 2, "a": 1 }"#, r#"{"a":1}"#];

fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|t| t.to_ascii_lowercase().contains("json"))
}

/// What makes two requests one operation, as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Operation {
    method: String,
    path: String,
    query: String,
    media: Option<String>,
    body: Vec<u8>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(store) = Store::in_memory(Config::default()) else {
        return;
    };
    let Ok(layer) = IdempotencyLayer::new(store, Contract::default()) else {
        return;
    };
    let layer = layer.run_inline();
    let runs = Arc::new(Mutex::new(0u64));
    let mut service = layer.layer(Handler(runs.clone()));
    // (scope, key) → the stored operation and the body it answered.
    let mut stored: HashMap<(String, String), (Operation, Bytes)> = HashMap::new();
    let mut input = Input(data);
    for _ in 0..32 {
        if input.0.is_empty() {
            break;
        }
        let auth = AUTH[usize::from(input.byte()) % AUTH.len()];
        let method = METHODS[usize::from(input.byte()) % METHODS.len()];
        let path = PATHS[usize::from(input.byte()) % PATHS.len()];
        let query = QUERIES[usize::from(input.byte()) % QUERIES.len()];
        let content_type = TYPES[usize::from(input.byte()) % TYPES.len()];
        let body_choice = input.byte();
        let body: Vec<u8> = match usize::from(body_choice) % 4 {
            i @ 0..=2 => BODIES[i].as_bytes().to_vec(),
            // Never valid JSON: compared byte for byte whatever the media type.
            _ => [&[0u8][..], &input.bytes(8)].concat(),
        };
        let key_choice = input.byte();
        // The key as sent, and as the layer must parse it (`None`: refused).
        let (key_header, key): (Vec<u8>, Option<String>) = match key_choice % 5 {
            0 => (b"k1".to_vec(), Some("k1".into())),
            1 => (br#""k1""#.to_vec(), Some("k1".into())),
            2 => (b"k2".to_vec(), Some("k2".into())),
            3 => (Vec::new(), None),
            _ => {
                let raw = [&b"z"[..], &input.bytes(6)].concat();
                let valid = raw.iter().all(|b| (0x21..=0x7e).contains(b));
                let parsed = valid.then(|| String::from_utf8_lossy(&raw).into_owned());
                (raw, parsed)
            }
        };
        let fail = input.byte() % 4 == 0;

        let uri = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        let mut builder = Request::builder().method(method).uri(&uri);
        if let Some((value, _)) = auth {
            builder = builder.header("authorization", value);
        }
        if !key_header.is_empty() {
            let Ok(value) = http::HeaderValue::from_bytes(&key_header) else {
                continue;
            };
            builder = builder.header("idempotency-key", value);
        }
        if let Some(t) = content_type {
            builder = builder.header("content-type", t);
        }
        if fail {
            builder = builder.header("x-fail", "1");
        }
        let Ok(request) = builder.body(Full::new(Bytes::from(body.clone()))) else {
            continue;
        };

        let runs_before = *runs.lock().unwrap();
        let Ok(response) = block_on(service.call(request));
        let status = response.status();
        let replayed = response.headers().contains_key("idempotent-replay");
        let answer = block_on(response.into_body().collect())
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let ran = *runs.lock().unwrap() > runs_before;

        let guarded = matches!(method, "POST" | "post" | "PATCH");
        if !guarded {
            assert!(ran && !replayed, "{method} is not guarded");
            continue;
        }
        let Some((_, scope)) = auth else {
            assert!(!ran, "no credentials, yet the handler ran");
            continue;
        };
        let Some(key) = key else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{key_header:?}");
            assert!(!ran);
            continue;
        };
        let json = is_json(content_type) && body_choice % 4 < 2;
        let op = Operation {
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
            query: query.unwrap_or("").to_owned(),
            media: content_type.map(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            }),
            // Two spellings of one JSON value are one body.
            body: if json { b"ab".to_vec() } else { body.clone() },
        };
        let slot = (scope.to_owned(), key.clone());
        match stored.get(&slot) {
            None => {
                assert!(ran && !replayed, "a fresh key must run: {status}");
                if !fail {
                    assert_eq!(status, StatusCode::CREATED);
                    stored.insert(slot, (op, answer));
                }
            }
            Some((first, first_answer)) if *first == op => {
                assert!(!ran, "an operation ran twice: {op:?}");
                assert!(replayed, "a retry was not replayed: {status}");
                assert_eq!(&answer, first_answer, "a replay of another answer");
            }
            Some((first, _)) => {
                assert!(!ran && !replayed, "{op:?} took the answer of {first:?}");
                assert_eq!(status, StatusCode::CONFLICT);
            }
        }
    }
});
