//! A hostile client against the store and the layer: inputs crafted to break a promise rather
//! than to use the API. Each test names the rule of `docs/contract.md` it defends and fails on
//! the code that had the hole.

use std::io::BufRead;
use std::process::{Command, Stdio};

use idemstore::{Begin, Config, Store};

use crate::support::fp;

/// The child's store file.
const DB: &str = "IDEMSTORE_ADVERSARIAL_DB";
const SCOPE: &str = "tenant-1";
/// Keys ground so the low 17 bits of their digests agree: the default index's buckets.
const GROUND_BITS: u32 = 17;
const GROUND_KEYS: usize = 100;
/// The child's address space, so a runaway allocation fails the child, not the machine.
const CHILD_ADDRESS_SPACE_KIB: u64 = 4 << 20;
/// The child's resident memory at its peak may not pass this.
const MAX_PEAK_RSS_KIB: u64 = 512 << 10;

/// Keys whose unkeyed record digests (`docs/format.md`: BLAKE3 over the length-framed scope
/// and key) share their low `bits` bits, found as a client finds them: by trying.
fn ground_keys(scope: &str, bits: u32, count: usize) -> Vec<String> {
    let mask = (1u64 << bits) - 1;
    let mut keys = Vec::with_capacity(count);
    let mut buf = String::new();
    for i in 0u64.. {
        if keys.len() == count {
            break;
        }
        buf.clear();
        std::fmt::Write::write_fmt(&mut buf, format_args!("k{i}")).unwrap();
        let mut h = blake3::Hasher::new();
        h.update(&(scope.len() as u32).to_le_bytes());
        h.update(scope.as_bytes());
        h.update(&(buf.len() as u32).to_le_bytes());
        h.update(buf.as_bytes());
        let digest = h.finalize();
        let low = u64::from_le_bytes(digest.as_bytes()[..8].try_into().unwrap());
        if low & mask == 0 {
            keys.push(buf.clone());
        }
    }
    keys
}

/// Peak resident memory of this process, in KiB (Linux).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The child of `h10_...`: reserves every ground key on a file store with the default
/// settings, then prints its peak resident memory.
#[test]
#[ignore = "run by h10_ground_keys_leave_memory_bounded in a child process"]
fn h10_child_reserves_ground_keys() {
    let Ok(path) = std::env::var(DB) else { return };
    let config = Config::builder().log_capacity(1 << 20).build().unwrap();
    let store = Store::open(&path, config).unwrap();
    let scope = idemstore::Scope::new(SCOPE).unwrap();
    let mut held = Vec::new();
    for key in ground_keys(SCOPE, GROUND_BITS, GROUND_KEYS) {
        let key = store.key(&key).unwrap();
        match store.begin(&scope, &key, &fp("ground")).unwrap() {
            Begin::Execute(r) => held.push(r),
            other => panic!("a new key was answered {other:?}"),
        }
    }
    println!("PEAK_RSS_KIB {}", peak_rss_kib());
    drop(held);
    store.close().unwrap();
}

/// H10: keys a client grinds so their record digests share a map's bucket bits cannot make
/// the store's memory grow: every in-memory map hashes with a secret seed. Before the seed,
/// 90 such keys drove the hot index into resizing to the same capacity again and again, and
/// the process died of memory exhaustion.
#[test]
fn h10_ground_keys_leave_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ground.redb");
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "ulimit -v {CHILD_ADDRESS_SPACE_KIB} && exec \"$0\" --ignored --exact \
         adversarial::h10_child_reserves_ground_keys --nocapture"
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .arg(&exe)
        .env(DB, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let peak = out.stdout.lines().map_while(Result::ok).find_map(|l| {
        l.strip_prefix("PEAK_RSS_KIB ")
            .and_then(|v| v.parse::<u64>().ok())
    });
    let Some(peak) = peak else {
        panic!(
            "the child died ({}) before reporting: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    assert!(out.status.success(), "child: {}", out.status);
    assert!(
        peak <= MAX_PEAK_RSS_KIB,
        "{GROUND_KEYS} ground keys took the child to {peak} KiB"
    );
}
