//! The operator commands against a running `idemstore serve` through its admin interface
//! (`--admin`), end to end: bookings made over HTTP, then `stats`, `list` with each filter and
//! order and its truncation note, `get`, `release` of a held key (whose holder is fenced and
//! whose retry runs), bulk `purge` with and without `--dry-run`, `export` then `import` into a
//! fresh file, `stats --watch`; a Unix socket; the refusal of an address that is not loopback;
//! and the store's operator release itself (rules O5-O10). Waits are upper bounds on polls.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use http::StatusCode;
use idemstore::{Begin, Config, Fingerprint, InFlightAtOpen, ReleaseError, Scope, State, Store};
use serde_json::Value;

use crate::http_support::send;
use crate::serve::{BODY, Server, booking, serve, stop};

/// Runs an operator command with `--admin ADDR`.
fn admin(server: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idemstore"))
        .args(args)
        .arg("--admin")
        .arg(server.admin.as_deref().unwrap())
        .output()
        .unwrap()
}

/// Runs an operator command on a store file.
fn on_file(db: &Path, args: &[&str]) -> Output {
    crate::cli::idemstore(args, db)
}

/// The stdout of a command that must succeed.
fn out(o: Output) -> String {
    assert!(o.status.success(), "{o:?}");
    String::from_utf8(o.stdout).unwrap()
}

fn json(o: Output) -> Value {
    serde_json::from_str(&out(o)).unwrap()
}

fn records(v: &Value) -> &Vec<Value> {
    v.as_array().unwrap()
}

/// Books `keys` one after the other with the demo's token `tok`.
async fn book(server: &Server, token: &str, keys: &[&str]) {
    for k in keys {
        let mut req = booking("POST", "/v1/bookings", Some(k), BODY);
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let r = send(server.addr, req).await.unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }
}

fn start(dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--admin", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    serve(&dir.join("idem.redb"), &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o5_o6_o10_cli_over_admin_lists_filters_sorts_notes_truncation_and_watches() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    book(&server, "tok_demo", &["k1", "k2", "k3"]).await;

    let stats = json(admin(&server, &["stats", "--json"]));
    assert_eq!(stats["records"], 3);
    assert_eq!(stats["completed"], 3);
    assert_eq!(
        stats["counters"]["executes"], 3,
        "the running store's counters"
    );
    assert!(out(admin(&server, &["stats"])).starts_with("STAT"));

    let all = json(admin(&server, &["list", "--json"]));
    assert_eq!(records(&all).len(), 3);
    let scope = all[0]["scope"].as_str().unwrap().to_owned();
    for r in records(&all) {
        let token = r["token"].as_u64().unwrap();
        assert_eq!(
            r["token_readable"],
            format!("{}.{}", token >> 32, token & 0xffff_ffff)
        );
        assert_eq!(r["state"], "completed");
        assert_eq!(r["lease_deadline"], Value::Null);
    }

    // The limit, and the note that says it cut the listing.
    let cut = admin(&server, &["list", "--limit", "2"]);
    assert_eq!(
        out(cut.clone()).lines().count(),
        3,
        "the header and two records"
    );
    let note = String::from_utf8_lossy(&cut.stderr);
    assert!(note.contains("raise --limit"), "{note}");
    let whole = admin(&server, &["list", "--limit", "3"]);
    assert!(whole.stderr.is_empty(), "{whole:?}");
    let cut = admin(
        &server,
        &["list", "--json", "--limit", "1", "--sort", "oldest"],
    );
    assert!(String::from_utf8_lossy(&cut.stderr).contains("raise --limit"));
    assert_eq!(records(&json(cut)).len(), 1);

    // Orders.
    let created = |sort: &str| -> Vec<String> {
        records(&json(admin(&server, &["list", "--json", "--sort", sort])))
            .iter()
            .map(|r| r["created_at"].as_str().unwrap().to_owned())
            .collect()
    };
    let oldest = created("oldest");
    assert!(oldest.windows(2).all(|w| w[0] <= w[1]), "{oldest:?}");
    let newest = created("newest");
    assert!(newest.windows(2).all(|w| w[0] >= w[1]), "{newest:?}");
    let by_scope = json(admin(&server, &["list", "--json", "--sort", "scope"]));
    let keys: Vec<&str> = records(&by_scope)
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["k1", "k2", "k3"]);

    // Filters.
    let count = |args: &[&str]| {
        let mut a = vec!["list", "--json"];
        a.extend_from_slice(args);
        records(&json(admin(&server, &a))).len()
    };
    assert_eq!(count(&["--scope", &scope]), 3);
    assert_eq!(count(&["--scope", "acct_nobody"]), 0);
    assert_eq!(count(&["--state", "completed"]), 3);
    assert_eq!(count(&["--state", "in-flight"]), 0);
    assert_eq!(count(&["--older-than", "0ms"]), 3);
    assert_eq!(count(&["--older-than", "1d"]), 0);

    // `get`: the record as `list` gives it; none for a key without one.
    let got = json(admin(
        &server,
        &["get", "--json", "--scope", &scope, "--key", "k2"],
    ));
    let listed = records(&by_scope)[1].clone();
    assert_eq!(got, listed, "one shape");
    assert!(out(admin(&server, &["get", "--scope", &scope, "--key", "k2"])).contains("201"));
    let missing = admin(&server, &["get", "--scope", &scope, "--key", "nope"]);
    assert_eq!(missing.status.code(), Some(1));

    // `stats --watch`: a line an interval, stopped by --count.
    let watched = out(admin(
        &server,
        &["stats", "--watch", "--interval-ms", "10", "--count", "2"],
    ));
    let lines: Vec<&str> = watched.lines().collect();
    assert_eq!(lines.len(), 2, "{watched}");
    for l in &lines {
        assert!(l.starts_with("20") && l.contains(" records=3 "), "{l}");
    }
    let watched = out(admin(
        &server,
        &[
            "stats",
            "--json",
            "--watch",
            "--interval-ms",
            "10",
            "--count",
            "2",
        ],
    ));
    for l in watched.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["records"], 3);
    }

    // The same records, in the same shape, from the file once the service has stopped.
    stop(server);
    let db = dir.path().join("idem.redb");
    let from_file = json(on_file(&db, &["list", "--json", "--sort", "scope"]));
    assert_eq!(from_file, by_scope);
}

/// Polls (for at most 30 s) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "not within 30 s: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o7_release_over_admin_frees_a_held_key_fences_its_holder_and_the_retry_runs() {
    let dir = tempfile::tempdir().unwrap();
    // Guarded handlers are held 4 s: long enough to release the key while its first attempt
    // runs.
    let server = start(dir.path(), &["--handler-delay-ms", "4000"]);
    let addr = server.addr;
    let first = tokio::spawn(send(
        addr,
        booking("POST", "/v1/bookings", Some("held"), BODY),
    ));
    let mut held = Value::Null;
    eventually("the key in flight", || {
        let l = json(admin(&server, &["list", "--json", "--state", "in-flight"]));
        held = l[0].clone();
        !held.is_null()
    });
    let scope = held["scope"].as_str().unwrap().to_owned();
    assert!(held["lease_deadline"].is_string(), "{held}");
    let shown = out(admin(&server, &["list", "--state", "in-flight"]));
    assert!(
        shown.contains(held["lease_deadline"].as_str().unwrap())
            && shown.contains(held["token_readable"].as_str().unwrap()),
        "the table shows the lease deadline and the readable token: {shown}"
    );

    let released = json(admin(
        &server,
        &["release", "--json", "--scope", &scope, "--key", "held"],
    ));
    assert_eq!(released["released"], true);
    assert_eq!(released["token"], held["token"]);

    // The retry runs (it takes the key over at once and resumes the create under its id);
    // the first attempt, fenced, stores nothing.
    let retry = send(addr, booking("POST", "/v1/bookings", Some("held"), BODY))
        .await
        .unwrap();
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text());
    assert!(!retry.replayed());
    let first = first.await.unwrap().unwrap();
    assert_eq!(
        first.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        first.text()
    );
    let stats = json(admin(&server, &["stats", "--json"]));
    assert!(
        stats["counters"]["fenced"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    let again = send(addr, booking("POST", "/v1/bookings", Some("held"), BODY))
        .await
        .unwrap();
    assert!(again.replayed());
    assert_eq!(again.body, retry.body);

    // A completed record is never released; a key without a record is not either.
    let refused = admin(&server, &["release", "--scope", &scope, "--key", "held"]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("completed"), "{err}");
    let none = admin(&server, &["release", "--scope", &scope, "--key", "nope"]);
    assert_eq!(none.status.code(), Some(1));
    stop(server);
}

#[test]
fn o7_release_frees_in_flight_keys_and_unknown_ones_only_when_told_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idem.redb");
    let config = || {
        Config::builder()
            .in_flight_at_open(InFlightAtOpen::MarkUnknown)
            .build()
            .unwrap()
    };
    let (scope, fp) = (Scope::new("acct_1").unwrap(), Fingerprint::of_bytes(b"x"));
    let store = Store::open(&path, config()).unwrap();
    let key = store.key("k1").unwrap();
    let Begin::Execute(r) = store.begin(&scope, &key, &fp).unwrap() else {
        panic!("a first attempt executes")
    };
    r.abandon();
    store.close().unwrap();

    let store = Store::open(&path, config()).unwrap();
    assert!(matches!(
        store.release_held(&scope, &key),
        Err(ReleaseError::WrongState {
            state: State::OutcomeUnknown
        })
    ));
    assert!(matches!(
        store.begin(&scope, &key, &fp).unwrap(),
        Begin::OutcomeUnknown
    ));
    store.release_unknown(&scope, &key).unwrap();
    let Begin::Execute(r) = store.begin(&scope, &key, &fp).unwrap() else {
        panic!("the key runs again once released as not applied")
    };
    assert!(matches!(
        store.release_unknown(&scope, &key),
        Err(ReleaseError::WrongState {
            state: State::InFlight
        })
    ));
    r.complete(idemstore::Response::without_headers(201, "ok"))
        .unwrap();
    assert!(matches!(
        store.release_held(&scope, &key),
        Err(ReleaseError::WrongState {
            state: State::Completed
        })
    ));
    let other = store.key("k2").unwrap();
    assert!(matches!(
        store.release_held(&scope, &other),
        Err(ReleaseError::NotFound)
    ));
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o8_bulk_purge_over_admin_lists_with_dry_run_then_purges_what_it_selects() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    book(&server, "tok_a", &["k1", "k2", "k3"]).await;
    book(&server, "tok_b", &["k1"]).await;
    let all = json(admin(&server, &["list", "--json", "--sort", "scope"]));
    let scope_of = |key_count: usize| {
        records(&all)
            .iter()
            .map(|r| r["scope"].as_str().unwrap())
            .find(|s| records(&all).iter().filter(|r| r["scope"] == *s).count() == key_count)
            .unwrap()
            .to_owned()
    };
    let a = scope_of(3);

    let unfiltered = admin(&server, &["purge"]);
    assert_eq!(
        unfiltered.status.code(),
        Some(1),
        "a filter or --all is needed"
    );

    let dry = json(admin(
        &server,
        &["purge", "--json", "--scope", &a, "--dry-run"],
    ));
    assert_eq!(
        (dry["dry_run"].clone(), dry["matched"].clone()),
        (true.into(), 3.into())
    );
    assert_eq!(dry["purged"], 0);
    assert_eq!(records(&json(admin(&server, &["list", "--json"]))).len(), 4);
    let text = out(admin(&server, &["purge", "--scope", &a, "--dry-run"]));
    assert!(text.contains("would purge 3"), "{text}");

    let done = json(admin(&server, &["purge", "--json", "--scope", &a]));
    assert_eq!(done["purged"], 3);
    assert_eq!(done["records"], dry["records"], "what the dry run listed");
    let left = json(admin(&server, &["list", "--json"]));
    assert_eq!(records(&left).len(), 1);
    assert_ne!(left[0]["scope"], a.as_str());

    // The single-record form still works.
    let b = left[0]["scope"].as_str().unwrap().to_owned();
    let one = json(admin(
        &server,
        &["purge", "--json", "--scope", &b, "--key", "k1"],
    ));
    assert_eq!(one["purged"], true);
    let all_gone = json(admin(&server, &["purge", "--json", "--all"]));
    assert_eq!(all_gone["matched"], 0);
    stop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o9_export_over_admin_then_import_into_a_fresh_file_gives_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    // Two hours, against the day the fresh file's store would give an imported record.
    let server = start(dir.path(), &["--ttl-secs", "7200"]);
    book(&server, "tok_demo", &["k1", "k2", "k3"]).await;
    let export = dir.path().join("export.jsonl");
    let said = out(admin(
        &server,
        &["export", "--out", export.to_str().unwrap()],
    ));
    assert!(said.contains("exported 3 records"), "{said}");
    let lines = std::fs::read_to_string(&export).unwrap();
    assert_eq!(lines.lines().count(), 3);
    let to_stdout = out(admin(&server, &["export"]));
    assert_eq!(to_stdout, lines, "the same lines on stdout");

    let fresh = dir.path().join("fresh.redb");
    let imported = json(on_file(
        &fresh,
        &["import", "--json", "--in", export.to_str().unwrap()],
    ));
    assert_eq!(imported["imported"], 3);
    let again = json(on_file(
        &fresh,
        &["import", "--json", "--in", export.to_str().unwrap()],
    ));
    assert_eq!(
        (again["imported"].clone(), again["existing"].clone()),
        (0.into(), 3.into())
    );
    // Into the running service: every key has its record already, and is left alone.
    let into_service = json(admin(
        &server,
        &["import", "--json", "--in", export.to_str().unwrap()],
    ));
    assert_eq!(into_service["existing"], 3);

    let compare = |v: &Value| -> Vec<Value> {
        records(v)
            .iter()
            .map(|r| {
                serde_json::json!([
                    r["scope"],
                    r["key"],
                    r["state"],
                    r["fingerprint"],
                    r["response"]
                ])
            })
            .collect()
    };
    let served = json(admin(&server, &["list", "--json", "--sort", "scope"]));
    let copied = json(on_file(&fresh, &["list", "--json", "--sort", "scope"]));
    assert_eq!(compare(&copied), compare(&served));
    // Each record keeps the expiry it had (to the second the import took), not a fresh TTL.
    let expiries = |v: &Value| -> Vec<i64> {
        records(v)
            .iter()
            .map(|r| seconds(r["expires_at"].as_str().unwrap()))
            .collect()
    };
    for (copied, served) in expiries(&copied).into_iter().zip(expiries(&served)) {
        assert!((copied - served).abs() <= 10, "{copied} against {served}");
    }
    stop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o5_serve_admin_on_a_unix_socket_of_mode_0600_removed_at_stop() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let spec = format!("unix:{}", socket.display());
    let server = serve(&dir.path().join("idem.redb"), &["--admin", &spec]);
    assert_eq!(server.admin.as_deref(), Some(spec.as_str()));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    book(&server, "tok_demo", &["k1"]).await;
    let stats = json(admin(&server, &["stats", "--json"]));
    assert_eq!(stats["records"], 1);
    stop(server);
    assert!(!socket.exists(), "the socket is removed with the service");
}

#[test]
fn o5_serve_refuses_an_admin_address_that_is_not_loopback() {
    let dir = tempfile::tempdir().unwrap();
    for addr in ["0.0.0.0:0", "[::]:0", "example.com:9100"] {
        let o = Command::new(env!("CARGO_BIN_EXE_idemstore"))
            .args(["serve", "--addr", "127.0.0.1:0", "--admin", addr, "--db"])
            .arg(dir.path().join("idem.redb"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{addr}: {o:?}");
        assert!(o.stdout.is_empty(), "nothing served: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("loopback"), "{addr}: {err}");
    }
}

/// Asks `admin` one request; the status and the JSON answer.
async fn ask(admin: &idemstore::admin::AdminService, method: &str, uri: &str) -> (u16, Value) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(idemstore::admin::ADMIN_HEADER, "1")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let answer = admin.clone().oneshot(req).await.unwrap();
    let status = answer.status().as_u16();
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn o5_the_admin_service_answers_errors_in_one_shape_and_changes_only_on_post() {
    let store = Store::in_memory(Config::default()).unwrap();
    let (scope, fp) = (Scope::new("acct 1/é").unwrap(), Fingerprint::of_bytes(b"x"));
    let key = store.key("k/1").unwrap();
    let Begin::Execute(r) = store.begin(&scope, &key, &fp).unwrap() else {
        panic!("a first attempt executes")
    };
    r.complete(idemstore::Response::without_headers(201, "ok"))
        .unwrap();
    let admin = idemstore::admin::service(store.clone());
    let one = idemstore::admin::record_query("acct 1/é", "k/1");

    let (status, record) = ask(&admin, "GET", &format!("/v1/record?{one}")).await;
    assert_eq!(status, 200);
    assert_eq!(record["key"], "k/1", "scope and key travel percent-encoded");
    assert_eq!(record["response"]["status"], 201);

    for (method, uri, want, code) in [
        ("GET", "/v1/nothing".to_owned(), 404, "not_found"),
        ("GET", "/v1/purge".to_owned(), 405, "method_not_allowed"),
        ("POST", "/v1/records".to_owned(), 405, "method_not_allowed"),
        (
            "GET",
            "/v1/records?sort=sideways".to_owned(),
            400,
            "bad_request",
        ),
        ("GET", "/v1/record?scope=a".to_owned(), 400, "bad_request"),
        (
            "GET",
            "/v1/record?scope=a&key=b".to_owned(),
            404,
            "not_found",
        ),
        ("POST", format!("/v1/release?{one}"), 409, "release_refused"),
    ] {
        let (status, body) = ask(&admin, method, &uri).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (want, Some(code)),
            "{method} {uri}"
        );
        assert!(body["error"]["message"].is_string());
    }
    assert!(
        store.get(&scope, &key).unwrap().is_some(),
        "nothing changed"
    );
    let (status, purged) = ask(&admin, "POST", &format!("/v1/purge?{one}")).await;
    assert_eq!((status, purged), (200, serde_json::json!({"purged": true})));
    assert!(store.get(&scope, &key).unwrap().is_none());
}

/// Seconds since the epoch of an RFC 3339 time `YYYY-MM-DDTHH:MM:SS...Z`, for comparisons.
fn seconds(rfc3339: &str) -> i64 {
    let n = |range: std::ops::Range<usize>| rfc3339[range].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from the civil date (the inverse of the one the tool prints with).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

/// A request body that is empty, or never arrives (a client that sends a header and stops).
enum TestBody {
    Empty,
    NeverSent,
}

impl http_body::Body for TestBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        match *self {
            TestBody::Empty => std::task::Poll::Ready(None),
            TestBody::NeverSent => std::task::Poll::Pending,
        }
    }
}

/// O5: what a web page on the operator's machine could make a browser send is refused (no
/// admin header, an `Origin`, a rebound `Host`); parameters are strict (an unknown one, a flag
/// that is not true or false, a bulk purge without a filter or `all=true`: nothing purged);
/// one import or export at a time.
#[tokio::test]
async fn o5_o8_the_admin_service_refuses_browsers_loose_parameters_and_a_second_import() {
    use tower::ServiceExt;
    let store = Store::in_memory(Config::default()).unwrap();
    let fp = Fingerprint::of_bytes(b"x");
    for k in ["k1", "k2"] {
        let Begin::Execute(r) = store
            .begin(&Scope::new("a").unwrap(), &store.key(k).unwrap(), &fp)
            .unwrap()
        else {
            panic!("a first attempt executes")
        };
        r.complete(idemstore::Response::without_headers(201, "ok"))
            .unwrap();
    }
    let admin = idemstore::admin::service(store.clone());
    let send = |headers: &[(&str, &str)]| {
        let mut req = http::Request::post("/v1/purge-matching?all=true");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        admin.clone().oneshot(
            req.body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
    };
    for headers in [
        &[][..],
        &[("x-idemstore-admin", "yes")][..],
        &[
            ("x-idemstore-admin", "1"),
            ("origin", "http://evil.example"),
        ][..],
        &[("x-idemstore-admin", "1"), ("host", "evil.example:9100")][..],
        &[
            ("x-idemstore-admin", "1"),
            ("host", "127.0.0.1.evil.example"),
        ][..],
    ] {
        let answer = send(headers).await.unwrap();
        assert_eq!(answer.status().as_u16(), 403, "{headers:?}");
    }
    for uri in [
        "/v1/purge-matching?dry_run=yes&all=true",
        "/v1/purge-matching?stat=in_flight",
        "/v1/purge-matching",
        "/v1/purge-matching?limit=1000",
        "/v1/release?scope=a&key=k1&not_applied=on",
        "/v1/stats?verbose=1",
    ] {
        let (status, body) = ask(&admin, "POST", uri).await;
        let want = if uri.starts_with("/v1/stats") {
            405
        } else {
            400
        };
        assert_eq!(status, want, "{uri}: {body}");
    }
    assert_eq!(store.records(None, 10).unwrap().len(), 2, "nothing purged");
    for host in [
        "localhost:9100",
        "127.0.0.1:9100",
        "[::1]:9100",
        "LOCALHOST",
    ] {
        let req = http::Request::post("/v1/purge-matching?all=true&dry_run=true")
            .header("x-idemstore-admin", "1")
            .header("host", host)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let answer = admin.clone().oneshot(req).await.unwrap();
        assert_eq!(answer.status().as_u16(), 200, "{host}");
    }
    assert_eq!(store.records(None, 10).unwrap().len(), 2, "a dry run");

    // An import whose body never comes holds the one heavy request; a second is refused
    // until the first is gone.
    let import = |body| {
        let req = http::Request::post("/v1/import")
            .header("x-idemstore-admin", "1")
            .body(body)
            .unwrap();
        admin.clone().oneshot(req)
    };
    let stalled = tokio::spawn(import(TestBody::NeverSent));
    tokio::task::yield_now().await;
    let second = import(TestBody::Empty).await.unwrap();
    assert_eq!(second.status().as_u16(), 429);
    stalled.abort();
    let _ = stalled.await;
    let third = import(TestBody::Empty).await.unwrap();
    assert_eq!(third.status().as_u16(), 200);
}

/// A listener on loopback that is not an admin interface: to each connection it accepts it
/// sends `answer` once the request's head has arrived (nothing at all when `answer` is
/// `None`), then waits for the client to close. Serves `connections` connections.
fn impostor(answer: Option<&'static str>, connections: usize) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for _ in 0..connections {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    if let Some(answer) = answer {
                        let _ = conn.write_all(answer.as_bytes());
                    }
                    // Held open until the client gives up or has read the answer.
                    while conn.read(&mut buf).is_ok_and(|n| n > 0) {}
                    break;
                }
            }
        }
    });
    addr
}

/// O5: only the admin interface's own `404 not_found` means there is no such record; a `404`
/// from another service (a wrong address) is an unexpected answer, not "no record".
#[test]
fn o5_cli_get_over_admin_tells_another_services_404_from_no_record() {
    for answer in [
        "HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot found",
        "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 28\r\n\
         connection: close\r\n\r\n{\"error\":{\"code\":\"no_page\"}}",
    ] {
        let addr = impostor(Some(answer), 1);
        let out = Command::new(env!("CARGO_BIN_EXE_idemstore"))
            .args(["get", "--scope", "acct_a", "--key", "k1", "--admin", &addr])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unexpected answer"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

/// O5: a listener that accepts and never answers ends each command with a one-line error
/// once the exchange's deadline (`--timeout-secs`) has passed, instead of hanging it.
#[test]
fn o5_cli_over_admin_gives_up_on_a_listener_that_never_answers() {
    for cmd in [
        &["stats"][..],
        &["get", "--scope", "acct_a", "--key", "k1"],
        &["export"],
    ] {
        let addr = impostor(None, 1);
        let started = Instant::now();
        let out = crate::cli::output_within(
            Command::new(env!("CARGO_BIN_EXE_idemstore"))
                .args(cmd)
                .args(["--admin", &addr, "--timeout-secs", "1"]),
            Duration::from_secs(60),
        );
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no whole answer within 1 s"), "{cmd:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(started.elapsed() >= Duration::from_secs(1), "{cmd:?}");
    }
}
