//! tmp
#![allow(clippy::unwrap_used, missing_docs)]
use crate::fingerprint::Fingerprint;
use crate::key::KeyHash;
use crate::record::{ExpiryKey, Hot, Record, State};
use crate::response::{self, Response};
#[test]
fn golden_dump() {
    let body = br#"{"event_type_id":"evt_1","start":"2026-05-20T15:00:00Z","attendee":{"email":"a@b.com"}}"#;
    let fp = Fingerprint::of_request("POST", "/v1/bookings", Some("application/json"), body);
    println!("fp {fp}");
    let resp = Response::new(
        201,
        [("content-type", "application/json")],
        r#"{"uid":"b1"}"#,
    );
    let blob = response::encode(&resp).unwrap();
    println!("blob {} {}", blob.len(), hex(&blob));
    let t0 = 1_767_225_600_000u64;
    let h = KeyHash::of_raw(b"acct_42", b"1f0a3b6e-7c1d-4a3e-9e91-9b6c0f8b18f4");
    println!("hash {}", hex(&h.0));
    let inf = Record {
        hot: Hot {
            state: State::InFlight,
            fingerprint: fp,
            status: 0,
            response_len: 0,
            created_at: t0,
            lease_deadline: t0 + 60_000,
            expires_at: t0 + 86_400_000,
            token: 1,
        },
        scope: "acct_42".into(),
        key: "1f0a3b6e-7c1d-4a3e-9e91-9b6c0f8b18f4".into(),
    };
    let e = inf.encode();
    println!("inflight {} {}", e.len(), hex(&e));
    let mut c = inf.clone();
    c.hot.state = State::Completed;
    c.hot.status = 201;
    c.hot.response_len = blob.len() as u32;
    c.hot.lease_deadline = 0;
    c.hot.expires_at = t0 + 250 + 86_400_000;
    let e = c.encode();
    println!("completed {} {}", e.len(), hex(&e));
    println!("expiry {}", hex(&ExpiryKey::new(c.hot.expires_at, &h).0));
    println!("t0 {}", hex(&t0.to_le_bytes()));
}
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
