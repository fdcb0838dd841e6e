//! Golden bytes: the on-disk layouts of `docs/format.md`, pinned.
//!
//! Every constant here is copied into `docs/format.md` as its worked example. If a test fails,
//! the file format changed: either restore the layout, or introduce a new format version as
//! `docs/format.md` ("Changing the format") describes and update both places together.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableHandle, Value};

use crate::backend::Completion;
use crate::backend::{Backend, Claim};
use crate::clock::ManualClock;
use crate::config::Config;
use crate::format::blob::{self, RESPONSE_VERSION};
use crate::format::record::{
    Blob, EXPIRY, ExpiryKey, ExpiryValue, FIXED_LEN, FORMAT_VERSION, META, META_FORMAT,
    META_NEXT_TOKEN, RECORD_VERSION, RECORDS, Record, RecordBytes, State, V1_EXPIRY, V1_RESPONSES,
};
use crate::rules::fingerprint::Fingerprint;
use crate::rules::key::{Key, KeyHash, Scope};
use crate::rules::response::Response;
use crate::store::Store;

/// The example's scope.
const SCOPE: &str = "acct_42";
/// The example's idempotency key.
const KEY: &str = "1f0a3b6e-7c1d-4a3e-9e91-9b6c0f8b18f4";
/// The example request body (`POST /v1/bookings`, `application/json`).
const BODY: &[u8] =
    br#"{"event_type_id":"evt_1","start":"2026-05-20T15:00:00Z","attendee":{"email":"a@b.com"}}"#;
/// The example response body.
const RESPONSE_BODY: &str = r#"{"uid":"b1"}"#;

/// 2026-01-01T00:00:00Z in milliseconds since the Unix epoch: the reservation's `created_at`.
const T0: u64 = 1_767_225_600_000;
/// The completion comes 250 ms after the reservation.
const COMPLETED_AT: u64 = T0 + 250;
/// Default lease (60 s) and TTL (24 h), in milliseconds.
const LEASE_MS: u64 = 60_000;
const TTL_MS: u64 = 86_400_000;

/// `blake3(u32le(7) ‖ "acct_42" ‖ u32le(36) ‖ KEY)`.
const KEY_HASH: &str = "d9e51bdbb494cd2052542661b70b67fa78f4bd69b8e806207bbf09076facf146";

/// Fingerprint (version 1) of `POST /v1/bookings` with [`BODY`] as JSON.
const FINGERPRINT: &str = "fa51e65991fec6f9a3fc251df1ceb060ddcae005ad39d616b052785d0f20aa53";

/// The record while in flight (token 1, lease until `T0 + 60 s`, expiry `T0 + 24 h`).
const RECORD_IN_FLIGHT: &str = concat!(
    "01010100",                         // version 1, state in flight, fingerprint v1, flags 0
    "0000",                             // status 0 (none yet)
    "0700",                             // scope length 7
    "2400",                             // key length 36
    "0000",                             // reserved
    "00000000",                         // response length 0 (none yet)
    "fa51e65991fec6f9a3fc251df1ceb060", // fingerprint digest, bytes 0-15
    "ddcae005ad39d616b052785d0f20aa53", // fingerprint digest, bytes 16-31
    "00a8da769b010000",                 // created_at     = T0
    "6092db769b010000",                 // lease_deadline = T0 + 60 000
    "0004017c9b010000",                 // expires_at     = T0 + 86 400 000
    "0100000000000000",                 // token 1
    "616363745f3432",                   // "acct_42"
    "31663061336236652d376331642d346133652d396539312d396236633066386231386634", // KEY
);

/// The same record once completed with [`response_example`] at `COMPLETED_AT`.
const RECORD_COMPLETED: &str = concat!(
    "01020100",                         // version 1, state completed, fingerprint v1, flags 0
    "c900",                             // status 201
    "0700",                             // scope length 7
    "2400",                             // key length 36
    "0000",                             // reserved
    "37000000",                         // response length 55 (the blob below)
    "fa51e65991fec6f9a3fc251df1ceb060", // fingerprint digest, bytes 0-15
    "ddcae005ad39d616b052785d0f20aa53", // fingerprint digest, bytes 16-31
    "00a8da769b010000",                 // created_at     = T0
    "0000000000000000",                 // lease_deadline = 0 (completed)
    "fa04017c9b010000",                 // expires_at     = T0 + 250 + 86 400 000
    "0100000000000000",                 // token 1
    "616363745f3432",                   // "acct_42"
    "31663061336236652d376331642d346133652d396539312d396236633066386231386634", // KEY
);

/// The response blob of `201`, `content-type: application/json`, `{"uid":"b1"}`.
const RESPONSE_BLOB: &str = concat!(
    "01",                               // blob version 1
    "c900",                             // status 201
    "0100",                             // 1 header
    "0c00",                             // name length 12
    "636f6e74656e742d74797065",         // "content-type"
    "10000000",                         // value length 16
    "6170706c69636174696f6e2f6a736f6e", // "application/json"
    "0c000000",                         // body length 12
    "7b22756964223a226231227d",         // {"uid":"b1"}
);

/// The smallest blob: `204`, no headers, empty body.
const RESPONSE_BLOB_EMPTY: &str = "01cc00000000000000";

/// Expiry index key of the in-flight record: `u64be(T0 + 24 h) ‖ key hash`.
const EXPIRY_KEY_IN_FLIGHT: &str =
    "0000019b7c010400d9e51bdbb494cd2052542661b70b67fa78f4bd69b8e806207bbf09076facf146";

/// Expiry index key of the completed record: `u64be(T0 + 250 + 24 h) ‖ key hash`.
const EXPIRY_KEY_COMPLETED: &str =
    "0000019b7c0104fad9e51bdbb494cd2052542661b70b67fa78f4bd69b8e806207bbf09076facf146";

/// Decodes lowercase hex; the constants above are well formed.
fn unhex(s: &str) -> Vec<u8> {
    assert_eq!(s.len() % 2, 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_bytes() -> [u8; 32] {
    unhex(KEY_HASH).try_into().unwrap()
}

fn fingerprint() -> Fingerprint {
    Fingerprint::of_request("POST", "/v1/bookings", Some("application/json"), BODY)
}

fn response_example() -> Response {
    Response::new(201, [("content-type", "application/json")], RESPONSE_BODY)
}

fn record_in_flight() -> Record {
    Record {
        hot: crate::format::record::Hot {
            state: State::InFlight,
            fingerprint: fingerprint(),
            status: 0,
            response_len: 0,
            created_at: T0,
            lease_deadline: T0 + LEASE_MS,
            expires_at: crate::rules::machine::in_flight_expiry(T0, T0 + LEASE_MS, TTL_MS),
            token: 1,
        },
        scope: SCOPE.to_owned(),
        key: KEY.to_owned(),
    }
}

fn record_completed() -> Record {
    let mut r = record_in_flight();
    r.hot.state = State::Completed;
    r.hot.status = 201;
    r.hot.response_len = 55;
    r.hot.lease_deadline = 0;
    r.hot.expires_at = COMPLETED_AT + TTL_MS;
    r
}

#[test]
fn golden_constants() {
    assert_eq!(FORMAT_VERSION, 4);
    assert_eq!(crate::format::point::POINT_VERSION, 1);
    assert_eq!(crate::format::record::META_IN_FLIGHT, "in_flight_records");
    assert_eq!(RECORD_VERSION, 1);
    assert_eq!(RESPONSE_VERSION, 1);
    assert_eq!(Fingerprint::CURRENT_VERSION, 1);
    assert_eq!(FIXED_LEN, 80);
    assert_eq!(META_FORMAT, "format_version");
    assert_eq!(META_NEXT_TOKEN, "next_token");
    assert_eq!(crate::format::record::META_CLEAN, "clean_shutdown");
    assert_eq!(crate::format::record::TOKEN_SKIP_AFTER_CRASH, 1 << 32);
}

#[test]
fn golden_table_definitions() {
    assert_eq!(RECORDS.name(), "idem_records");
    assert_eq!(EXPIRY.name(), "idem_expiry_responses");
    assert_eq!(META.name(), "idem_meta");
    assert_eq!(
        crate::format::record::SCOPE_COUNTS.name(),
        "idem_scope_counts"
    );
    assert_eq!(RecordBytes::type_name().name(), "idemstore::Record");
    assert_eq!(RecordBytes::fixed_width(), None);
    assert_eq!(ExpiryValue::type_name().name(), "idemstore::ResponseOrNone");
    assert_eq!(ExpiryValue::fixed_width(), None);
    // Format 1's tables, which the migration reads.
    assert_eq!(V1_RESPONSES.name(), "idem_responses");
    assert_eq!(V1_EXPIRY.name(), "idem_expiry");
    assert_eq!(Blob::type_name().name(), "idemstore::ResponseBlob");
    assert_eq!(Blob::fixed_width(), None);
    assert_eq!(ExpiryKey::type_name().name(), "idemstore::ExpiryKey");
    assert_eq!(ExpiryKey::fixed_width(), Some(40));
    assert_eq!(<&[u8; 32]>::type_name().name(), "[u8;32]");
    assert_eq!(<&[u8; 32]>::fixed_width(), Some(32));
}

#[test]
fn golden_key_hash() {
    let raw = KeyHash::of_raw(SCOPE.as_bytes(), KEY.as_bytes());
    assert_eq!(hex(&raw.0), KEY_HASH);
    let typed = KeyHash::of(&Scope::new(SCOPE).unwrap(), &Key::new(KEY).unwrap());
    assert_eq!(typed, raw);
    // The documented framing, rebuilt by hand.
    let mut framed = Vec::new();
    framed.extend_from_slice(&7u32.to_le_bytes());
    framed.extend_from_slice(SCOPE.as_bytes());
    framed.extend_from_slice(&36u32.to_le_bytes());
    framed.extend_from_slice(KEY.as_bytes());
    assert_eq!(hex(blake3::hash(&framed).as_bytes()), KEY_HASH);
}

#[test]
fn golden_fingerprint_of_the_example() {
    let fp = fingerprint();
    assert_eq!(fp.version(), 1);
    assert_eq!(hex(fp.digest()), FINGERPRINT);
    // Key order and whitespace do not change it.
    let reordered = br#"{ "attendee": {"email": "a@b.com"}, "start": "2026-05-20T15:00:00Z", "event_type_id": "evt_1" }"#;
    let retry =
        Fingerprint::of_request("POST", "/v1/bookings", Some("application/json"), reordered);
    assert_eq!(retry, fp);
}

#[test]
fn golden_record_in_flight() {
    let record = record_in_flight();
    let bytes = unhex(RECORD_IN_FLIGHT);
    assert_eq!(bytes.len(), FIXED_LEN + SCOPE.len() + KEY.len());
    assert_eq!(hex(&record.encode()), RECORD_IN_FLIGHT);
    assert_eq!(Record::decode(&bytes).unwrap(), record);
    assert_eq!(
        crate::format::record::Hot::decode(&bytes).unwrap(),
        record.hot
    );
}

/// The in-flight record with a recovery point: flag bit 0 set, and the point's length where a
/// completed record keeps its response's.
const RECORD_WITH_POINT_HEAD: &str = concat!(
    "01010101", // version 1, state in flight, fingerprint v1, flags 0x01 (a recovery point)
    "0000",     // status 0 (none yet)
    "0700",     // scope length 7
    "2400",     // key length 36
    "0000",     // reserved
    "0f000000", // response length 15: the point's encoded length
);
/// The point it carries, in its expiry entry: version 1, name length 7, "charged", "ch_123".
const POINT_CHARGED: &str = "0107636861726765646368" /* "...ch" */;

#[test]
fn golden_record_with_point_and_outcome_unknown() {
    let point = crate::rules::point::RecoveryPoint::new("charged", b"ch_123").unwrap();
    let encoded = crate::format::point::encode(&point);
    assert_eq!(hex(&encoded), format!("{POINT_CHARGED}5f313233"));
    let mut record = record_in_flight();
    record.hot.response_len = encoded.len() as u32;
    let bytes = record.encode();
    assert_eq!(hex(&bytes[..16]), RECORD_WITH_POINT_HEAD);
    assert_eq!(hex(&bytes[16..]), &RECORD_IN_FLIGHT[32..]);
    assert_eq!(Record::decode(&bytes).unwrap(), record);
    // A flag that disagrees with the state and the length is damage.
    let mut no_flag = bytes.clone();
    no_flag[3] = 0;
    assert!(Record::decode(&no_flag).is_err());
    let mut stray = unhex(RECORD_IN_FLIGHT);
    stray[3] = 1;
    assert!(Record::decode(&stray).is_err());
    // Outcome unknown: state byte 3, no lease; the point stays.
    record.hot = crate::rules::machine::outcome_unknown(record.hot);
    let bytes = record.encode();
    assert_eq!(hex(&bytes[..4]), "01030101");
    assert_eq!(hex(&bytes[56..64]), "0000000000000000", "lease_deadline");
    assert_eq!(Record::decode(&bytes).unwrap(), record);
}

#[test]
fn golden_record_completed() {
    let record = record_completed();
    let bytes = unhex(RECORD_COMPLETED);
    assert_eq!(bytes.len(), 123);
    assert_eq!(hex(&record.encode()), RECORD_COMPLETED);
    assert_eq!(Record::decode(&bytes).unwrap(), record);
    assert_eq!(
        crate::format::record::Hot::decode(&bytes).unwrap(),
        record.hot
    );
    // The record's response length is the blob's length.
    assert_eq!(record.hot.response_len as usize, unhex(RESPONSE_BLOB).len());
}

#[test]
fn golden_record_field_offsets() {
    let b = unhex(RECORD_COMPLETED);
    let u16le = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u64le = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    assert_eq!(b[0], 1, "record version at 0");
    assert_eq!(b[1], 2, "state at 1 (2 = completed)");
    assert_eq!(b[2], 1, "fingerprint version at 2");
    assert_eq!(b[3], 0, "flags at 3");
    assert_eq!(u16le(4), 201, "status at 4");
    assert_eq!(u16le(6), 7, "scope length at 6");
    assert_eq!(u16le(8), 36, "key length at 8");
    assert_eq!(u16le(10), 0, "reserved at 10");
    assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 55);
    assert_eq!(hex(&b[16..48]), FINGERPRINT, "fingerprint digest at 16");
    assert_eq!(u64le(48), T0, "created_at at 48");
    assert_eq!(u64le(56), 0, "lease_deadline at 56");
    assert_eq!(u64le(64), COMPLETED_AT + TTL_MS, "expires_at at 64");
    assert_eq!(u64le(72), 1, "token at 72");
    assert_eq!(&b[80..87], SCOPE.as_bytes(), "scope at 80");
    assert_eq!(&b[87..], KEY.as_bytes(), "key after the scope");
}

#[test]
fn golden_record_refusals() {
    let good = unhex(RECORD_COMPLETED);
    let with = |at: usize, value: u8| {
        let mut b = good.clone();
        b[at] = value;
        b
    };
    // Unknown layout version, unknown state, unknown flags.
    assert!(Record::decode(&with(0, 0)).is_err());
    assert!(Record::decode(&with(0, 2)).is_err());
    assert!(Record::decode(&with(1, 0)).is_err());
    assert!(Record::decode(&with(1, 3)).is_err());
    assert!(Record::decode(&with(3, 1)).is_err());
    // Shorter than the fixed part, or lengths that do not add up.
    assert!(Record::decode(&good[..FIXED_LEN - 1]).is_err());
    assert!(Record::decode(&good[..good.len() - 1]).is_err());
    let mut long = good.clone();
    long.push(b'x');
    assert!(Record::decode(&long).is_err());
    assert!(Record::decode(&with(6, 8)).is_err());
    // Scope or key bytes that are not UTF-8.
    assert!(Record::decode(&with(80, 0xff)).is_err());
    // Version 1 readers ignore the reserved bytes and accept any fingerprint version (which
    // then never equals a current fingerprint).
    assert!(Record::decode(&with(10, 0xaa)).is_ok());
    assert_eq!(
        Record::decode(&with(2, 2))
            .unwrap()
            .hot
            .fingerprint
            .version(),
        2
    );
}

#[test]
fn golden_response_blob() {
    let response = response_example();
    let bytes = unhex(RESPONSE_BLOB);
    assert_eq!(bytes.len(), 55);
    assert_eq!(response.encoded_len(), 55);
    assert_eq!(hex(&blob::encode(&response).unwrap()), RESPONSE_BLOB);
    let decoded = blob::decode(&bytes).unwrap();
    assert_eq!(decoded, response);
    assert_eq!(decoded.status(), 201);
    assert_eq!(decoded.body(), RESPONSE_BODY.as_bytes());

    let empty = Response::new(204, Vec::<(String, Vec<u8>)>::new(), Vec::new());
    assert_eq!(empty.encoded_len(), 9);
    assert_eq!(hex(&blob::encode(&empty).unwrap()), RESPONSE_BLOB_EMPTY);
    assert_eq!(blob::decode(&unhex(RESPONSE_BLOB_EMPTY)).unwrap(), empty);
}

#[test]
fn golden_response_refusals() {
    let good = unhex(RESPONSE_BLOB);
    let with = |at: usize, value: u8| {
        let mut b = good.clone();
        b[at] = value;
        b
    };
    assert!(blob::decode(&with(0, 0)).is_err(), "version 0");
    assert!(blob::decode(&with(0, 2)).is_err(), "version 2");
    for n in 0..good.len() {
        assert!(blob::decode(&good[..n]).is_err(), "truncated to {n}");
    }
    let mut long = good.clone();
    long.push(0);
    assert!(blob::decode(&long).is_err(), "trailing byte");
    assert!(
        blob::decode(&with(7, 0xff)).is_err(),
        "header name not UTF-8"
    );
    // Header values and the body are bytes: anything goes.
    assert!(blob::decode(&with(23, 0xff)).is_ok());
    assert!(blob::decode(&with(54, 0xff)).is_ok());
}

#[test]
fn golden_expiry_key() {
    let hash = KeyHash(hash_bytes());
    let in_flight = ExpiryKey::new(T0 + TTL_MS, &hash);
    assert_eq!(hex(&in_flight.0), EXPIRY_KEY_IN_FLIGHT);
    let completed = ExpiryKey::new(COMPLETED_AT + TTL_MS, &hash);
    assert_eq!(hex(&completed.0), EXPIRY_KEY_COMPLETED);
    assert_eq!(completed.expires_at(), COMPLETED_AT + TTL_MS);
    assert_eq!(completed.hash(), hash);
    assert_eq!(
        ExpiryKey::from_bytes(&unhex(EXPIRY_KEY_COMPLETED)),
        completed
    );
    // Byte order is time order.
    assert!(in_flight.0 < completed.0);
    assert_eq!(
        hex(&ExpiryKey::upper(COMPLETED_AT + TTL_MS).0),
        format!("0000019b7c0104fa{}", "ff".repeat(32))
    );
}

/// What the file holds, read with redb directly.
struct FileView {
    record: Vec<u8>,
    /// Each expiry entry: its key and its value, in hex.
    expiry: Vec<(String, String)>,
    format_version: Option<u64>,
    next_token: Option<u64>,
    /// Each scope's live records, and the records in flight.
    scope_counts: Vec<(String, u64)>,
    in_flight: Option<u64>,
}

fn read_file(path: &std::path::Path) -> FileView {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let hash = hash_bytes();
    let records = txn.open_table(RECORDS).unwrap();
    let expiry = txn.open_table(EXPIRY).unwrap();
    let meta = txn.open_table(META).unwrap();
    let view = FileView {
        record: records.get(&hash).unwrap().unwrap().value().to_vec(),
        expiry: expiry
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (hex(&k.value().0), hex(v.value()))
            })
            .collect(),
        format_version: meta.get(META_FORMAT).unwrap().map(|g| g.value()),
        next_token: meta.get(META_NEXT_TOKEN).unwrap().map(|g| g.value()),
        scope_counts: txn
            .open_table(crate::format::record::SCOPE_COUNTS)
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().to_owned(), v.value())
            })
            .collect(),
        in_flight: meta
            .get(crate::format::record::META_IN_FLIGHT)
            .unwrap()
            .map(|g| g.value()),
    };
    assert_eq!(records.len().unwrap(), 1);
    view
}

/// The store writes exactly the documented bytes: an in-flight record that survives a
/// restart, then the completed record, its response blob and its expiry entry.
#[test]
fn golden_file_written_by_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("golden.redb");
    let clock = ManualClock::new(T0);
    let config = || {
        Config::builder()
            .clock(clock.clone())
            .compactor_interval(Duration::from_secs(3600))
            .release_in_flight_on_open(false)
            .build()
            .unwrap()
    };
    let scope = Scope::new(SCOPE).unwrap();
    let key = Key::new(KEY).unwrap();

    let store = Store::open(&path, config()).unwrap();
    let token = match Backend::claim(&store, &scope, &key, &fingerprint()).unwrap() {
        Claim::Execute { token, .. } => token,
        other => panic!("expected Execute, got {other:?}"),
    };
    assert_eq!(token, 1);
    store.close().unwrap();

    let file = read_file(&path);
    assert_eq!(hex(&file.record), RECORD_IN_FLIGHT);
    // In flight: the expiry entry holds no response.
    assert_eq!(
        file.expiry,
        [(EXPIRY_KEY_IN_FLIGHT.to_owned(), String::new())]
    );
    assert_eq!(file.format_version, Some(4));
    assert_eq!(file.next_token, Some(2));
    assert_eq!(file.scope_counts, [(SCOPE.to_owned(), 1)]);
    assert_eq!(file.in_flight, Some(1));

    let store = Store::open(&path, config()).unwrap();
    clock.advance(Duration::from_millis(COMPLETED_AT - T0));
    let done = Backend::complete(&store, &scope, &key, token, response_example()).unwrap();
    assert_eq!(done, Completion::Stored);
    store.close().unwrap();

    let file = read_file(&path);
    assert_eq!(hex(&file.record), RECORD_COMPLETED);
    assert_eq!(
        file.expiry,
        [(EXPIRY_KEY_COMPLETED.to_owned(), RESPONSE_BLOB.to_owned())]
    );
    assert_eq!(file.format_version, Some(4));
    assert_eq!(file.next_token, Some(2));
    assert_eq!(file.scope_counts, [(SCOPE.to_owned(), 1)]);
    assert_eq!(file.in_flight, Some(0));
}
