//! The operator subcommands against a file with known records, and against damaged and
//! missing files (a one-line error and a non-zero exit, never a panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use idemstore::{Config, Fingerprint, Key, ManualClock, Response, Scope, Store};

/// Runs an operator command on the store file `db`.
pub(crate) fn idemstore(args: &[&str], db: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idemstore"))
        .args(args)
        .arg("--db")
        .arg(db)
        .output()
        .unwrap()
}

/// Runs `cmd` to its end, or kills it and fails the test when it is still running after
/// `within` (a generous bound: a command that would hang fails instead of stalling the run).
pub(crate) fn output_within(cmd: &mut Command, within: Duration) -> Output {
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{cmd:?} still ran after {within:?}: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn one_line_error(o: &Output) -> String {
    assert!(!o.status.success());
    assert_eq!(o.status.code(), Some(1), "not a panic: {o:?}");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("idemstore: "), "{err:?}");
    err
}

/// The start of the day before today (UTC), in milliseconds since the epoch: records made
/// then with the longest TTL are live whenever the binary, on the system clock, reads them.
/// Read once, so that a run across midnight sees one day.
fn yesterday_ms() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        const DAY: u64 = 86_400_000;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        (now.as_millis() as u64 / DAY - 1) * DAY
    })
}

/// A store file holding, with a 366-day TTL from [`yesterday_ms`]: acct_a/k1 (completed,
/// 201), acct_a/k2 (in flight), acct_b/k1 (completed, 200); and, with a 1 s TTL, acct_a/old
/// (completed, expired a day ago).
fn known_file(dir: &Path) -> PathBuf {
    let path = dir.join("known.redb");
    let clock = ManualClock::new(yesterday_ms());
    let fp = |b: &str| {
        Fingerprint::of_request(
            "POST",
            "/v1/bookings",
            Some("application/json"),
            b.as_bytes(),
        )
    };
    let long = Config::builder()
        .clock(clock.clone())
        .ttl(Duration::from_secs(366 * 86_400))
        .build()
        .unwrap();
    let store = Store::open(&path, long).unwrap();
    let (a, b) = (Scope::new("acct_a").unwrap(), Scope::new("acct_b").unwrap());
    let k = |s: &str| Key::new(s).unwrap();
    let ok = |status, body: &str| {
        Response::new(
            status,
            [("content-type", "application/json")],
            body.to_owned(),
        )
    };
    crate::support::execute(store.begin(&a, &k("k1"), &fp("1")).unwrap())
        .complete(ok(201, r#"{"uid":"bk_1"}"#))
        .unwrap();
    let held = crate::support::execute(store.begin(&a, &k("k2"), &fp("2")).unwrap());
    crate::support::execute(store.begin(&b, &k("k1"), &fp("3")).unwrap())
        .complete(ok(200, r#"{"uid":"bk_2"}"#))
        .unwrap();
    held.abandon(); // stays in flight in the file
    store.close().unwrap();
    let short = Config::builder()
        .clock(clock)
        .release_in_flight_on_open(false)
        .ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    let store = Store::open(&path, short).unwrap();
    crate::support::execute(store.begin(&a, &k("old"), &fp("4")).unwrap())
        .complete(ok(201, "{}"))
        .unwrap();
    store.close().unwrap();
    path
}

#[test]
fn cli_list_get_stats_check_compact_purge_on_known_records() {
    let dir = tempfile::tempdir().unwrap();
    let db = known_file(dir.path());

    let list = idemstore(&["list"], &db);
    assert!(list.status.success(), "{list:?}");
    let text = stdout(&list);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "header and three live records: {text}");
    assert!(lines[0].starts_with("SCOPE"));
    // Aligned: every row has its KEY column where the header has it.
    let key_col = lines[0].find("KEY").unwrap();
    for l in &lines[1..] {
        assert_eq!(&l[key_col - 2..key_col], "  ", "{l}");
    }
    assert!(text.contains("in_flight") && text.contains("completed"));
    assert!(!text.contains("old"), "expired records are not listed");

    let json: serde_json::Value =
        serde_json::from_slice(&idemstore(&["list", "--json", "--scope", "acct_a"], &db).stdout)
            .unwrap();
    let keys: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&"k1") && keys.contains(&"k2"));
    let limited: serde_json::Value =
        serde_json::from_slice(&idemstore(&["list", "--json", "--limit", "1"], &db).stdout)
            .unwrap();
    assert_eq!(limited.as_array().unwrap().len(), 1);

    let get = idemstore(&["get", "--json", "--scope", "acct_a", "--key", "k1"], &db);
    assert!(get.status.success());
    let rec: serde_json::Value = serde_json::from_slice(&get.stdout).unwrap();
    assert_eq!(rec["state"], "completed");
    assert_eq!(rec["response"]["status"], 201);
    assert_eq!(rec["response"]["body"], r#"{"uid":"bk_1"}"#);
    assert_eq!(
        rec["created_at"],
        idemstore::admin::rfc3339(yesterday_ms()).as_str()
    );
    assert!(
        rec["created_at"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00.000Z")
    );
    let human = stdout(&idemstore(
        &["get", "--scope", "acct_a", "--key", "k2"],
        &db,
    ));
    assert!(
        human.contains("in_flight") && human.contains("lease_deadline"),
        "{human}"
    );
    let missing = idemstore(&["get", "--scope", "acct_a", "--key", "nope"], &db);
    assert_eq!(missing.status.code(), Some(1));

    let stats: serde_json::Value =
        serde_json::from_slice(&idemstore(&["stats", "--json"], &db).stdout).unwrap();
    assert_eq!(stats["records"], 4);
    assert_eq!(stats["live"], 3);
    assert_eq!(stats["in_flight"], 1);
    assert_eq!(stats["completed"], 3);
    assert_eq!(stats["expired_not_removed"], 1);
    assert!(stdout(&idemstore(&["stats"], &db)).starts_with("STAT"));

    let check = idemstore(&["check", "--json"], &db);
    assert!(check.status.success(), "{check:?}");
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(report["sound"], true);
    assert_eq!(report["records"], 4);
    assert_eq!(report["problems"].as_array().unwrap().len(), 0);

    let compact: serde_json::Value =
        serde_json::from_slice(&idemstore(&["compact", "--json"], &db).stdout).unwrap();
    assert_eq!(compact["removed"], 1);

    let purge = idemstore(&["purge", "--scope", "acct_b", "--key", "k1"], &db);
    assert!(purge.status.success(), "{purge:?}");
    let again = idemstore(&["purge", "--scope", "acct_b", "--key", "k1"], &db);
    assert_eq!(again.status.code(), Some(1), "nothing left to purge");
    let stats: serde_json::Value =
        serde_json::from_slice(&idemstore(&["stats", "--json"], &db).stdout).unwrap();
    assert_eq!(stats["records"], 2);
}

#[test]
fn cli_missing_file_is_a_one_line_error_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("absent.redb");
    for cmd in [
        &["stats"][..],
        &["list"],
        &["check"],
        &["compact"],
        &["get", "--scope", "s", "--key", "k"],
        &["purge", "--scope", "s", "--key", "k"],
    ] {
        let out = idemstore(cmd, &db);
        let err = one_line_error(&out);
        assert!(err.contains("no store file"), "{err}");
        assert!(!db.exists());
    }
}

#[test]
fn cli_damaged_and_foreign_files_are_one_line_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let good = known_file(dir.path());
    let mut bytes = std::fs::read(&good).unwrap();
    let (from, to) = (bytes.len() / 4, bytes.len() * 3 / 4);
    for b in &mut bytes[from..to] {
        *b ^= 0x5a;
    }
    let damaged = dir.path().join("damaged.redb");
    std::fs::write(&damaged, &bytes).unwrap();
    let foreign = dir.path().join("notes.txt");
    std::fs::write(&foreign, "not a database\n".repeat(1000)).unwrap();

    // `check` verifies every page: it must refuse the damaged file.
    one_line_error(&idemstore(
        &["check"],
        &std::fs::canonicalize(&damaged).unwrap(),
    ));
    let err = one_line_error(&idemstore(&["list"], &foreign));
    assert!(err.contains("cannot open"), "{err}");
    // Every subcommand on both files: success or a one-line error, never a panic.
    for db in [&damaged, &foreign] {
        for cmd in [
            &["stats"][..],
            &["list"],
            &["check", "--json"],
            &["compact"],
            &["get", "--scope", "acct_a", "--key", "k1"],
            &["purge", "--scope", "acct_a", "--key", "k1"],
        ] {
            let out = idemstore(cmd, db);
            assert_ne!(out.status.code(), Some(101), "panic on {cmd:?}: {out:?}");
            if !(out.status.success() || cmd[0] == "get" || cmd[0] == "purge")
                || !out.stderr.is_empty()
            {
                one_line_error(&out);
            }
        }
    }
}

/// The read-only subcommands (`export` to stdout), each in both output forms; `get` asks for `scope`/`key`.
fn read_only_commands(scope: &str, key: &str) -> Vec<Vec<String>> {
    let own = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let mut out = Vec::new();
    for json in [false, true] {
        for cmd in [
            own(&["stats"]),
            own(&["list"]),
            own(&["list", "--sort", "newest", "--older-than", "0ms"]),
            own(&["get", "--scope", scope, "--key", key]),
            own(&["check"]),
            own(&["export"]),
        ] {
            let mut cmd = cmd;
            if json {
                cmd.push("--json".to_owned());
            }
            out.push(cmd);
        }
    }
    out
}

fn run(cmd: &[String], db: &Path) -> Output {
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    idemstore(&args, db)
}

/// Runs every read-only subcommand on `db` and checks that the directory holding it (every
/// file's bytes and mode, and the list of files) is exactly as before.
fn run_read_only(db: &Path, scope: &str, key: &str) -> Vec<(Vec<String>, Output)> {
    let dir = db.parent().unwrap();
    let before = crate::files::snapshot(dir);
    read_only_commands(scope, key)
        .into_iter()
        .map(|cmd| {
            let out = run(&cmd, db);
            assert_ne!(out.status.code(), Some(101), "panic on {cmd:?}: {out:?}");
            assert_eq!(
                crate::files::snapshot(dir),
                before,
                "{cmd:?} changed the files"
            );
            (cmd, out)
        })
        .collect()
}

/// Checks what the read-only subcommands show of a crash image made by
/// `files::logged_crash_image(dir, _, 2, 3)`: the records in the file and the logged ones.
fn shows_the_logged_records(outputs: &[(Vec<String>, Output)]) {
    for (cmd, out) in outputs {
        assert!(out.status.success(), "{cmd:?}: {out:?}");
        let text = stdout(out);
        let json = cmd.iter().any(|a| a == "--json");
        match (cmd[0].as_str(), json) {
            ("list", false) => {
                for k in ["file-0", "file-1", "log-0", "log-1", "log-2", "held"] {
                    assert!(text.contains(k), "{k} is not listed: {text}");
                }
                assert_eq!(text.lines().count(), 7, "{text}");
            }
            ("list", true) => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v.as_array().unwrap().len(), 6, "{text}");
            }
            ("get", false) => assert!(text.contains(r#"{"n":1}"#), "{text}"),
            ("get", true) => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["response"]["body"], r#"{"n":1}"#, "{text}");
            }
            ("stats", false) => assert!(text.contains("log_entries_not_checkpointed"), "{text}"),
            ("stats", true) => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["records"], 6, "{text}");
                assert_eq!(v["in_flight"], 1, "{text}");
                assert!(v["log_entries_not_checkpointed"].as_u64().unwrap() >= 4);
            }
            ("export", _) => {
                assert_eq!(text.lines().count(), 6, "{text}");
                for line in text.lines() {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    assert!(v["fingerprint"].is_string(), "{line}");
                }
            }
            ("check", false) => assert!(text.contains("problems"), "{text}"),
            ("check", true) => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["sound"], true, "{text}");
                assert_eq!(v["records"], 6, "{text}");
            }
            _ => unreachable!(),
        }
    }
}

#[test]
fn o1_o2_cli_read_only_commands_show_a_crash_images_logged_records_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::files::logged_crash_image(dir.path(), "live.redb", 2, 3);
    shows_the_logged_records(&run_read_only(&db, "acct_a", "log-1"));
}

#[test]
fn o1_o2_cli_read_only_commands_work_on_files_without_write_permission() {
    use crate::files::chmod;
    let dir = tempfile::tempdir().unwrap();
    let db = crate::files::logged_crash_image(dir.path(), "ro.redb", 2, 3);
    chmod(&db, 0o444);
    chmod(&dir.path().join("ro.redb.wal"), 0o444);
    chmod(dir.path(), 0o555);
    let outputs =
        std::panic::catch_unwind(|| run_read_only(&db, "acct_a", "log-1")).map_err(|_| ());
    chmod(dir.path(), 0o755);
    shows_the_logged_records(&outputs.unwrap());
}

/// Each read-only subcommand refuses `db` with a one-line error naming it not an idemstore
/// file, and leaves it (and its directory) as it was.
fn refused_as_foreign(db: &Path) {
    for (cmd, out) in run_read_only(db, "acct_a", "k1") {
        let err = one_line_error(&out);
        assert!(err.contains("not an idemstore"), "{cmd:?}: {err}");
        assert!(!err.contains("damaged"), "{cmd:?}: {err}");
        assert!(out.stdout.is_empty(), "{cmd:?}: {out:?}");
    }
}

#[test]
fn o1_o3_cli_read_only_commands_refuse_an_empty_file_and_never_make_it_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("empty.redb");
    std::fs::write(&db, b"").unwrap();
    refused_as_foreign(&db);
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
}

#[test]
fn o1_o3_cli_read_only_commands_refuse_another_programs_redb_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bookings.redb");
    crate::files::foreign_redb(&db);
    refused_as_foreign(&db);
}

#[test]
fn o1_o3_cli_read_only_commands_refuse_a_file_that_is_not_redb_as_foreign_not_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a database\n".repeat(1000)).unwrap();
    refused_as_foreign(&text);
    let random = dir.path().join("random.bin");
    let mut rng = crate::sim_disk::Rng::new(11);
    let bytes: Vec<u8> = (0..20_000).map(|_| rng.next_u64() as u8).collect();
    std::fs::write(&random, bytes).unwrap();
    refused_as_foreign(&random);
}

/// redb value types with idemstore's type names, to write records the store's API would refuse
/// (a scope or key holding control characters), as a damaged or hostile file may hold them.
mod raw {
    use redb::{TypeName, Value};

    pub use crate::files::raw::Bytes;

    #[derive(Debug)]
    pub struct ExpiryKey;

    impl Value for ExpiryKey {
        type SelfType<'a>
            = [u8; 40]
        where
            Self: 'a;
        type AsBytes<'a>
            = [u8; 40]
        where
            Self: 'a;

        fn fixed_width() -> Option<usize> {
            Some(40)
        }

        fn from_bytes<'a>(data: &'a [u8]) -> [u8; 40]
        where
            Self: 'a,
        {
            data.try_into().unwrap()
        }

        fn as_bytes<'a, 'b: 'a>(value: &'a [u8; 40]) -> [u8; 40]
        where
            Self: 'b,
        {
            *value
        }

        fn type_name() -> TypeName {
            TypeName::new("idemstore::ExpiryKey")
        }
    }

    impl redb::Key for ExpiryKey {
        fn compare(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
            a.cmp(b)
        }
    }

    /// Writes an in-flight record of `scope` and `key` (any UTF-8) under key hash `hash`, with
    /// its expiry entry, into the closed store file at `path` (format 2, docs/format.md).
    pub fn in_flight(path: &std::path::Path, scope: &str, key: &str, hash: [u8; 32], now: u64) {
        let expires_at = now + 366 * 86_400_000;
        let mut record = vec![1u8, 1, 1, 0, 0, 0];
        record.extend_from_slice(&(scope.len() as u16).to_le_bytes());
        record.extend_from_slice(&(key.len() as u16).to_le_bytes());
        record.extend_from_slice(&[0; 6]);
        record.extend_from_slice(&[0x42; 32]);
        for v in [now, now + 86_400_000, expires_at, 99] {
            record.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(record.len(), 80);
        record.extend_from_slice(scope.as_bytes());
        record.extend_from_slice(key.as_bytes());
        let mut ek = [0u8; 40];
        ek[..8].copy_from_slice(&expires_at.to_be_bytes());
        ek[8..].copy_from_slice(&hash);
        let records: redb::TableDefinition<&[u8; 32], Bytes<false>> =
            redb::TableDefinition::new("idem_records");
        let expiry: redb::TableDefinition<ExpiryKey, Bytes<true>> =
            redb::TableDefinition::new("idem_expiry_responses");
        let db = redb::Database::open(path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(records)
            .unwrap()
            .insert(&hash, record.as_slice())
            .unwrap();
        txn.open_table(expiry).unwrap().insert(ek, &[][..]).unwrap();
        txn.commit().unwrap();
    }
}

/// Whether `c` would act on a terminal or not show: a control character (a line break aside,
/// which the output's own lines use), a bidi control or another invisible format character,
/// a line or paragraph separator.
fn acts_on_a_terminal(c: char) -> bool {
    (c.is_control() && c != '\n')
        || matches!(
            c,
            '\u{00ad}'
                | '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
                | '\u{e0000}'..='\u{e007f}'
        )
}

fn assert_printable(what: &str, out: &[u8]) {
    let text = std::str::from_utf8(out).unwrap_or_else(|e| panic!("{what}: not UTF-8: {e}"));
    if let Some(c) = text.chars().find(|&c| acts_on_a_terminal(c)) {
        panic!("{what}: prints U+{:04X} raw: {text:?}", u32::from(c));
    }
}

#[test]
fn o4_cli_output_escapes_terminal_controls_bidi_and_invisible_characters() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hostile.redb");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Through the API: a scope may hold a bidi override (it holds no control character), and
    // a response's headers and body may hold any bytes.
    let bidi_scope = "acct_\u{202e}exe.txt\u{2066}";
    let body: &[u8] =
        b"\x1b[2J\x1b[31mred\x1b[0m \x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\ \xe2\x80\xae \xc2\x9b31m \x7f \xff\xfe";
    let header_value: &[u8] = b"v\x1b]0;title\x07\xe2\x81\xa6x";
    {
        let config = Config::builder()
            .ttl(Duration::from_secs(366 * 86_400))
            .build()
            .unwrap();
        let store = Store::open(&db, config).unwrap();
        let r = crate::support::execute(
            store
                .begin(
                    &Scope::new(bidi_scope).unwrap(),
                    &Key::new("k1").unwrap(),
                    &crate::support::fp("x"),
                )
                .unwrap(),
        );
        r.complete(Response::new(
            200,
            [
                ("x-\u{1b}[1mheader\u{200b}", header_value.to_vec()),
                ("content-type", b"text/plain".to_vec()),
            ],
            body.to_vec(),
        ))
        .unwrap();
        store.close().unwrap();
    }
    // Written around the API: escape sequences in a scope and a key, stored under a wrong key
    // hash, so that `check` quotes them in a problem.
    let esc_scope = "acct_\u{1b}[2J\u{1b}[H\u{202d}";
    let esc_key = "k\u{1b}]8;;http://evil.example\u{7}\u{9b}\u{7f}";
    raw::in_flight(&db, esc_scope, esc_key, [7; 32], now);

    let mut outputs = Vec::new();
    for (cmd, out) in run_read_only(&db, bidi_scope, "k1") {
        let what = format!("{cmd:?}");
        assert_printable(&what, &out.stdout);
        assert_printable(&what, &out.stderr);
        outputs.push((cmd, out));
    }
    let find = |name: &str, json: bool| {
        outputs
            .iter()
            .find(|(c, _)| c[0] == name && c.iter().any(|a| a == "--json") == json)
            .map(|(_, o)| o)
            .unwrap()
    };

    // The human forms show the characters as visible escapes.
    let list = stdout(find("list", false));
    assert!(find("list", false).status.success());
    assert!(list.contains(r"acct_\u{1b}[2J\u{1b}[H\u{202d}"), "{list}");
    assert!(
        list.contains(r"k\u{1b}]8;;http://evil.example\u{7}\u{9b}\u{7f}"),
        "{list}"
    );
    assert!(list.contains(r"acct_\u{202e}exe.txt\u{2066}"), "{list}");
    let get = find("get", false);
    assert!(get.status.success(), "{get:?}");
    let get = stdout(get);
    assert!(get.contains(r"\u{1b}[2J\u{1b}[31mred"), "{get}");
    assert!(get.contains(r"\u{202e} \u{9b}31m \u{7f} \xff\xfe"), "{get}");
    assert!(get.contains("not UTF-8"), "{get}");
    assert!(get.contains(r"header x-\u{1b}[1mheader\u{200b}"), "{get}");
    assert!(get.contains(r"v\u{1b}]0;title\u{7}\u{2066}x"), "{get}");
    let check = find("check", false);
    assert_eq!(
        check.status.code(),
        Some(1),
        "the wrong key hash is a problem"
    );
    let check = stdout(check);
    assert!(
        check.contains(r"record acct_\u{1b}[2J\u{1b}[H\u{202d}/k\u{1b}]8;;"),
        "{check}"
    );

    // The JSON forms decode to the stored text exactly.
    let list: serde_json::Value = serde_json::from_slice(&find("list", true).stdout).unwrap();
    let scopes: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["scope"].as_str().unwrap())
        .collect();
    assert!(
        scopes.contains(&esc_scope) && scopes.contains(&bidi_scope),
        "{scopes:?}"
    );
    let keys: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&esc_key), "{keys:?}");
    let get: serde_json::Value = serde_json::from_slice(&find("get", true).stdout).unwrap();
    assert_eq!(get["scope"], bidi_scope);
    assert_eq!(
        get["response"]["headers"][0][0],
        "x-\u{1b}[1mheader\u{200b}"
    );
    assert_eq!(
        get["response"]["body"],
        String::from_utf8_lossy(body).into_owned()
    );
    let check: serde_json::Value = serde_json::from_slice(&find("check", true).stdout).unwrap();
    let problem = check["problems"][0].as_str().unwrap();
    assert!(
        problem.contains(esc_scope) && problem.contains(esc_key),
        "{problem}"
    );

    // An error quoting the operator's own input is escaped too.
    let missing = idemstore(&["get", "--scope", "acct_\u{202e}x", "--key", "none"], &db);
    assert_eq!(missing.status.code(), Some(1));
    assert_printable("get of a missing key", &missing.stdout);
    assert!(stdout(&missing).contains(r"acct_\u{202e}x"));
}

/// The operator subcommands with `--redis`: the looking ones (`export` among them) write
/// nothing to the server and refuse a prefix without a store; `purge` removes a record, or
/// those its filters select; `compact` has nothing to do.
#[test]
fn o1_cli_commands_on_a_redis_store() {
    let Some(server) = crate::redis_support::Server::start() else {
        return;
    };
    let url = server.url();
    let store = Store::open_redis(&url, Config::default()).unwrap();
    let (s, fp) = (Scope::new("acct_a").unwrap(), Fingerprint::of_bytes(b"r"));
    for k in ["k1", "k2"] {
        let idemstore::Begin::Execute(r) = store.begin(&s, &Key::new(k).unwrap(), &fp).unwrap()
        else {
            panic!("{k} is new");
        };
        r.complete(Response::new(201, [("content-type", "text/plain")], k))
            .unwrap();
    }
    store.close().unwrap();
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_idemstore"))
            .args(args)
            .args(["--redis", url.as_str()])
            .output()
            .unwrap()
    };
    let writes = || {
        let info = server.command(&["INFO", "persistence"]);
        info.lines()
            .find_map(|l| l.strip_prefix("rdb_changes_since_last_save:"))
            .map(|v| v.trim().to_owned())
            .unwrap()
    };
    let before = writes();
    let list = cli(&["list", "--json"]);
    assert!(list.status.success(), "{list:?}");
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    let got = cli(&["get", "--scope", "acct_a", "--key", "k1"]);
    assert!(stdout(&got).contains("201"), "{got:?}");
    assert!(cli(&["check"]).status.success());
    assert_eq!(stdout(&cli(&["export"])).lines().count(), 2);
    assert!(stdout(&cli(&["stats"])).contains("server"));
    let compact = cli(&["compact"]);
    assert!(
        stdout(&compact).contains("removes them itself"),
        "{compact:?}"
    );
    assert_eq!(writes(), before, "the looking commands wrote nothing");
    // Another prefix holds no store: a one-line error, and nothing is made there.
    let elsewhere = cli(&["list", "--prefix", "other:"]);
    assert!(one_line_error(&elsewhere).contains("no idemstore store"));
    assert_eq!(writes(), before);
    // `purge` changes the store.
    let purged = cli(&["purge", "--scope", "acct_a", "--key", "k1"]);
    assert!(purged.status.success(), "{purged:?}");
    let list = cli(&["list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    // And so does a bulk purge, after its dry run.
    let dry = cli(&["purge", "--json", "--scope", "acct_a", "--dry-run"]);
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(
        (dry["matched"].clone(), dry["purged"].clone()),
        (1.into(), 0.into())
    );
    let done = cli(&["purge", "--json", "--scope", "acct_a"]);
    let done: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(done["purged"], 1);
    let list = cli(&["list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(rows.as_array().unwrap().is_empty());
}

/// E6 and P1 for operators: `list --state` picks the records of one state, counting the limit
/// among them, and shows an unknown key's recovery point; listing writes nothing.
#[test]
fn cli_list_by_state_shows_outcome_unknown_keys_with_their_points() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idem.redb");
    let marking = || {
        Config::builder()
            .in_flight_at_open(idemstore::InFlightAtOpen::MarkUnknown)
            .build()
            .unwrap()
    };
    let store = Store::open(&path, marking()).unwrap();
    let s = Scope::new("acct_a").unwrap();
    let k = |s: &str| Key::new(s).unwrap();
    let fp = |b: &str| Fingerprint::of_bytes(b.as_bytes());
    let mut cut = crate::support::execute(store.begin(&s, &k("pay-1"), &fp("1")).unwrap());
    cut.save_point("sent", b"req-1").unwrap();
    cut.abandon();
    crate::support::execute(store.begin(&s, &k("done"), &fp("2")).unwrap())
        .complete(Response::new(201, [("a", "b")], "{}"))
        .unwrap();
    store.close().unwrap();
    // The open marks pay-1 unknown; then pay-2 is left in flight.
    let store = Store::open(&path, marking()).unwrap();
    crate::support::execute(store.begin(&s, &k("pay-2"), &fp("3")).unwrap()).abandon();
    store.close().unwrap();
    let before = std::fs::read(&path).unwrap();

    let listed = |state: &str| -> Vec<serde_json::Value> {
        let out = idemstore(&["list", "--json", "--state", state], &path);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let unknown = listed("outcome-unknown");
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert_eq!(unknown[0]["key"], "pay-1");
    assert_eq!(unknown[0]["state"], "outcome_unknown");
    assert_eq!(unknown[0]["recovery_point"]["name"], "sent");
    assert_eq!(unknown[0]["recovery_point"]["payload"], "req-1");
    let in_flight = listed("in-flight");
    assert_eq!(in_flight.len(), 1, "{in_flight:?}");
    assert_eq!(in_flight[0]["key"], "pay-2");
    assert_eq!(listed("completed").len(), 1);
    let text = stdout(&idemstore(&["list", "--state", "outcome-unknown"], &path));
    assert!(
        text.contains("outcome_unknown") && text.contains("pay-1"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "listing wrote to the file"
    );
}

#[test]
fn o7_o8_cli_release_and_bulk_purge_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = known_file(dir.path());

    // The held key is freed; a completed one is refused in one line.
    let released = idemstore(&["release", "--scope", "acct_a", "--key", "k2"], &db);
    assert!(released.status.success(), "{released:?}");
    assert!(stdout(&released).contains("can no longer complete"));
    let gone = idemstore(&["get", "--scope", "acct_a", "--key", "k2"], &db);
    assert_eq!(gone.status.code(), Some(1), "released to nothing: {gone:?}");
    let err = one_line_error(&idemstore(
        &["release", "--scope", "acct_a", "--key", "k1"],
        &db,
    ));
    assert!(err.contains("completed"), "{err}");

    // Bulk purge: a filter or --all is needed; a dry run changes nothing.
    one_line_error(&idemstore(&["purge"], &db));
    let dry: serde_json::Value = serde_json::from_slice(
        &idemstore(
            &["purge", "--json", "--state", "completed", "--dry-run"],
            &db,
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(
        (dry["matched"].clone(), dry["purged"].clone()),
        (2.into(), 0.into())
    );
    let listed: serde_json::Value =
        serde_json::from_slice(&idemstore(&["list", "--json"], &db).stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let done: serde_json::Value = serde_json::from_slice(
        &idemstore(&["purge", "--json", "--state", "completed"], &db).stdout,
    )
    .unwrap();
    assert_eq!(done["purged"], 2);
    let listed: serde_json::Value =
        serde_json::from_slice(&idemstore(&["list", "--json"], &db).stdout).unwrap();
    assert!(listed.as_array().unwrap().is_empty());
}

/// O1 and O8: `purge --dry-run` only looks. On a crash image (a file not closed cleanly, with
/// records in its log) it lists what a purge would remove, and the file, its log and their
/// directory are as before: no checkpoint, no repair, no lock, no migration.
#[test]
fn o1_o8_cli_dry_run_purge_on_a_file_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::files::logged_crash_image(dir.path(), "live.redb", 2, 3);
    let before = crate::files::snapshot(dir.path());
    let dry = idemstore(&["purge", "--json", "--scope", "acct_a", "--dry-run"], &db);
    assert!(dry.status.success(), "{dry:?}");
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(
        (
            dry["dry_run"].clone(),
            dry["matched"].clone(),
            dry["purged"].clone()
        ),
        (true.into(), 5.into(), 0.into()),
        "{dry}"
    );
    let text = idemstore(&["purge", "--all", "--dry-run"], &db);
    assert!(stdout(&text).contains("would purge 6 records"), "{text:?}");
    assert_eq!(
        crate::files::snapshot(dir.path()),
        before,
        "a dry run changed the files"
    );
}

/// O3: the commands that change a store refuse an empty file as the looking ones do (only
/// `import` makes a store of it): a one-line error, and the file stays empty, with no log.
#[test]
fn o3_cli_commands_that_change_a_store_refuse_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("empty.redb");
    std::fs::write(&db, b"").unwrap();
    for cmd in [
        &["compact"][..],
        &["purge", "--all"],
        &["purge", "--all", "--dry-run"],
        &["purge", "--scope", "s", "--key", "k"],
        &["release", "--scope", "s", "--key", "k"],
    ] {
        let err = one_line_error(&idemstore(cmd, &db));
        assert!(err.contains("not an idemstore database"), "{cmd:?}: {err}");
        assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "{cmd:?}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "{cmd:?} left a file beside the store"
        );
    }
    // `import` may: its purpose is to fill a store.
    let out = Command::new(env!("CARGO_BIN_EXE_idemstore"))
        .args(["import", "--db"])
        .arg(&db)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::metadata(&db).unwrap().len() > 0);
}

/// O1 and O8 on Redis: `purge --dry-run` reads through a read-only store, so the server sees
/// no write (no function loaded, no script run that writes).
#[test]
fn o1_o8_cli_dry_run_purge_on_redis_writes_nothing() {
    let Some(server) = crate::redis_support::Server::start() else {
        return;
    };
    let url = server.url();
    let store = Store::open_redis(&url, Config::default()).unwrap();
    let (s, fp) = (Scope::new("acct_a").unwrap(), Fingerprint::of_bytes(b"r"));
    let idemstore::Begin::Execute(r) = store.begin(&s, &Key::new("k1").unwrap(), &fp).unwrap()
    else {
        panic!("k1 is new");
    };
    r.complete(Response::new(201, [("content-type", "text/plain")], "k1"))
        .unwrap();
    store.close().unwrap();
    // A server that forgot its functions (a restart without them): a store opened for writing
    // loads them again, a read-only one does not.
    server.command(&["FUNCTION", "FLUSH"]);
    let writes = || {
        let info = server.command(&["INFO", "persistence"]);
        info.lines()
            .find_map(|l| l.strip_prefix("rdb_changes_since_last_save:"))
            .map(|v| v.trim().to_owned())
            .unwrap()
    };
    let before = writes();
    let dry = Command::new(env!("CARGO_BIN_EXE_idemstore"))
        .args(["purge", "--json", "--scope", "acct_a", "--dry-run"])
        .args(["--redis", url.as_str()])
        .output()
        .unwrap();
    assert!(dry.status.success(), "{dry:?}");
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(
        (dry["matched"].clone(), dry["purged"].clone()),
        (1.into(), 0.into())
    );
    assert_eq!(writes(), before, "a dry run wrote to the server");
    assert!(
        server.command(&["FUNCTION", "LIST"]).starts_with("*0"),
        "a dry run loaded the store's functions"
    );
}

/// O8: `purge --scope S --key K` removes one record whatever its state, so it refuses the bulk
/// filters (`--state`, `--older-than`, `--sort`) instead of ignoring them: an operator who adds
/// `--state in-flight` as a safety net must not see a completed record go.
#[test]
fn o8_cli_purge_of_one_key_refuses_the_bulk_filters_instead_of_ignoring_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = known_file(dir.path());
    for extra in [
        &["--state", "in-flight"][..],
        &["--older-than", "1000d"],
        &["--sort", "oldest"],
    ] {
        let mut cmd = vec!["purge", "--scope", "acct_a", "--key", "k1"];
        cmd.extend_from_slice(extra);
        let out = idemstore(&cmd, &db);
        assert!(!out.status.success(), "{cmd:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
            "{cmd:?}: {out:?}"
        );
        let get = idemstore(&["get", "--scope", "acct_a", "--key", "k1"], &db);
        assert!(get.status.success(), "{cmd:?} removed the record: {get:?}");
    }
}

/// Runs an operator command on `db` with its stdout on `out`.
fn idemstore_to(args: &[&str], db: &Path, out: std::process::Stdio) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idemstore"))
        .args(args)
        .arg("--db")
        .arg(db)
        .stdout(out)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap()
}

/// O9: output that cannot be written is a failure, so an export to a full disk never passes
/// for a backup; a reader that closes the pipe early (`| head`) is not.
#[test]
fn o9_cli_output_that_cannot_be_written_fails_but_a_closed_pipe_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let db = known_file(dir.path());
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
            .into()
    };
    for cmd in [
        &["export"][..],
        &["list", "--json"],
        &["stats"],
        &["stats", "--watch", "--count", "1"],
    ] {
        let out = idemstore_to(cmd, &db, full());
        let err = one_line_error(&out);
        assert!(err.contains("cannot write to stdout"), "{cmd:?}: {err}");
    }
    // The demo too, whose store is its own file.
    let demo_db = dir.path().join("demo.redb");
    let out = Command::new(env!("CARGO_BIN_EXE_idemstore"))
        .args(["demo", "--db"])
        .arg(&demo_db)
        .stdout(full())
        .output()
        .unwrap();
    let err = one_line_error(&out);
    assert!(err.contains("cannot write to stdout"), "demo: {err}");
    // A closed pipe: the reader took what it wanted.
    for cmd in [&["export"][..], &["stats", "--watch", "--count", "3"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_idemstore"))
            .args(cmd)
            .arg("--db")
            .arg(&db)
            .args(["--interval-ms", "1"].iter().filter(|_| cmd[0] == "stats"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {out:?}");
        assert!(out.stderr.is_empty(), "{cmd:?}: {out:?}");
    }
}

/// O11: a Redis URL's password is never printed: not in `stats` (table, JSON, `--watch`), not
/// in the error line of a wrong password, and a URL that does not parse is not echoed at all.
#[test]
fn o11_cli_never_prints_a_redis_urls_password() {
    const PASSWORD: &str = "s3cret-Pw-7781";
    let Some(server) = crate::redis_support::Server::start() else {
        return;
    };
    let url = server.require_password(PASSWORD);
    Store::open_redis(&url, Config::default())
        .unwrap()
        .close()
        .unwrap();
    let cli = |url: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_idemstore"))
            .args(args)
            .args(["--redis", url])
            .output()
            .unwrap()
    };
    let shown = format!("{}?pass=***", server.url());
    for args in [
        &["stats"][..],
        &["stats", "--json"],
        &["stats", "--watch", "--json", "--count", "1"],
    ] {
        let out = cli(&url, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        assert!(!text.contains(PASSWORD), "{args:?}: {text}");
        assert!(text.contains(&shown), "{args:?}: {text}");
    }
    let wrong = format!("{}?pass=wrong-{PASSWORD}", server.url());
    // One command is enough: every one opens the server through the same error line (and
    // the store retries a refused password until its deadline, 5 s).
    let err = one_line_error(&cli(&wrong, &["list"]));
    assert!(!err.contains(PASSWORD), "{err}");
    assert!(err.contains(&shown), "{err}");
    let unreadable = format!("redis://:{PASSWORD}@127.0.0.1:notaport");
    let err = one_line_error(&cli(&unreadable, &["list"]));
    assert!(!err.contains(PASSWORD), "{err}");
}

/// O9: `export --out` never writes onto the store it reads (its file under any name, or its
/// log), and replaces its target whole: a new file renamed into place, never the old one
/// truncated and rewritten, and nothing left beside it.
#[test]
fn o9_cli_export_refuses_the_store_and_its_log_as_out_and_replaces_its_target_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = known_file(dir.path());
    let wal = dir.path().join("known.redb.wal");
    assert!(wal.exists());
    let alias = dir.path().join("alias.redb");
    std::fs::hard_link(&db, &alias).unwrap();
    let before = crate::files::snapshot(dir.path());
    for out in [&db, &wal, &alias] {
        let err = one_line_error(&idemstore(&["export", "--out", out.to_str().unwrap()], &db));
        assert!(err.contains("refusing to export onto"), "{out:?}: {err}");
        assert_eq!(crate::files::snapshot(dir.path()), before, "{out:?}");
    }
    // An existing target is replaced, not rewritten in place: another name of the old file
    // keeps the old bytes.
    let target = dir.path().join("backup.jsonl");
    std::fs::write(&target, "old backup\n").unwrap();
    let kept = dir.path().join("backup-kept.jsonl");
    std::fs::hard_link(&target, &kept).unwrap();
    let out = idemstore(&["export", "--out", target.to_str().unwrap()], &db);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&target).unwrap().lines().count(), 3);
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "old backup\n");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "alias.redb",
            "backup-kept.jsonl",
            "backup.jsonl",
            "known.redb",
            "known.redb.wal"
        ]
    );
}

/// O9: `import` checks its whole input before it opens the store, so an input it refuses
/// into a file that does not exist creates nothing: no store file, no log.
#[test]
fn o9_cli_an_import_refused_for_its_input_creates_no_store() {
    let dir = tempfile::tempdir().unwrap();
    let source = known_file(dir.path());
    let export = dir.path().join("records.jsonl");
    let out = idemstore(&["export", "--out", export.to_str().unwrap()], &source);
    assert!(out.status.success(), "{out:?}");
    let mut lines = std::fs::read_to_string(&export).unwrap();
    lines.push_str("{\"not\": \"a record\"}\n");
    std::fs::write(&export, lines).unwrap();
    let before = crate::files::snapshot(dir.path());
    let fresh = dir.path().join("fresh.redb");
    let err = one_line_error(&idemstore(
        &["import", "--in", export.to_str().unwrap()],
        &fresh,
    ));
    assert!(err.contains("line 4"), "{err}");
    assert_eq!(
        crate::files::snapshot(dir.path()),
        before,
        "a refused import left files behind"
    );
}

/// O7 and O9: the commands take every key a store can hold, as `get` and `purge` do: an
/// export with keys longer than the default 255 bytes imports back, and such a key in flight
/// is released on a file.
#[test]
fn o7_o9_cli_import_and_release_take_keys_as_long_as_get_and_purge_do() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("long.redb");
    let (done, held) = ("d".repeat(1000), "h".repeat(4096));
    let config = || {
        Config::builder()
            .max_key_len(4096)
            .release_in_flight_on_open(false)
            .build()
            .unwrap()
    };
    let store = Store::open(&db, config()).unwrap();
    let s = Scope::new("acct_a").unwrap();
    let k = |k: &str| Key::with_max_len(k, 4096).unwrap();
    crate::support::execute(
        store
            .begin(&s, &k(&done), &Fingerprint::of_bytes(b"1"))
            .unwrap(),
    )
    .complete(Response::new(201, [("a", "b")], "done"))
    .unwrap();
    crate::support::execute(
        store
            .begin(&s, &k(&held), &Fingerprint::of_bytes(b"2"))
            .unwrap(),
    )
    .abandon();
    store.close().unwrap();

    let export = dir.path().join("records.jsonl");
    let out = idemstore(&["export", "--out", export.to_str().unwrap()], &db);
    assert!(out.status.success(), "{out:?}");
    let fresh = dir.path().join("fresh.redb");
    let imported = idemstore(
        &["import", "--json", "--in", export.to_str().unwrap()],
        &fresh,
    );
    assert!(imported.status.success(), "{imported:?}");
    let report: serde_json::Value = serde_json::from_slice(&imported.stdout).unwrap();
    assert_eq!(report["imported"], 1, "{report}");
    let got = idemstore(&["get", "--scope", "acct_a", "--key", &done], &fresh);
    assert!(got.status.success(), "{got:?}");

    let released = idemstore(&["release", "--scope", "acct_a", "--key", &held], &db);
    assert!(released.status.success(), "{released:?}");
    assert!(stdout(&released).contains("can no longer complete"));
}

/// O2: `--db` naming a symbolic link reads the log beside the link's target, and `compact`
/// through the link makes no log beside the link.
#[test]
fn o2_cli_a_symlinked_db_uses_the_log_beside_its_target() {
    let real = tempfile::tempdir().unwrap();
    let db = crate::files::logged_crash_image(real.path(), "live.redb", 2, 3);
    let elsewhere = tempfile::tempdir().unwrap();
    let link = elsewhere.path().join("link.redb");
    std::os::unix::fs::symlink(&db, &link).unwrap();
    let list = idemstore(&["list", "--json"], &link);
    assert!(list.status.success(), "{list:?}");
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 6);
    let compact = idemstore(&["compact"], &link);
    assert!(compact.status.success(), "{compact:?}");
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).unwrap().count(),
        1,
        "a log was made beside the link"
    );
}

/// Makes a FIFO at `path`.
pub(crate) fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success(), "mkfifo {path:?}");
}

/// O3: a FIFO where the store or its log should be is refused at once, in one line naming it,
/// by every command (none waits for a writer that never comes), and is left as it is.
#[test]
fn o3_cli_a_fifo_at_the_store_or_its_log_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.redb");
    mkfifo(&fifo);
    let logged = known_file(dir.path());
    let log = dir.path().join("known.redb.wal");
    std::fs::remove_file(&log).unwrap();
    mkfifo(&log);
    let input = dir.path().join("empty.jsonl");
    std::fs::write(&input, "").unwrap();
    for (db, named) in [(&fifo, &fifo), (&logged, &log)] {
        for cmd in [
            &["stats"][..],
            &["list"],
            &["get", "--scope", "acct_a", "--key", "k1"],
            &["check"],
            &["export"],
            &["compact"],
            &["purge", "--all"],
            &["purge", "--all", "--dry-run"],
            &["purge", "--scope", "acct_a", "--key", "k1"],
            &["release", "--scope", "acct_a", "--key", "k2"],
            &["import", "--in", input.to_str().unwrap()],
        ] {
            let out = output_within(
                Command::new(env!("CARGO_BIN_EXE_idemstore"))
                    .args(cmd)
                    .arg("--db")
                    .arg(db),
                Duration::from_secs(60),
            );
            let err = one_line_error(&out);
            assert!(
                err.contains("FIFO") && err.contains(named.to_str().unwrap()),
                "{cmd:?}: {err}"
            );
        }
    }
    use std::os::unix::fs::FileTypeExt;
    for f in [&fifo, &log] {
        assert!(std::fs::metadata(f).unwrap().file_type().is_fifo());
    }
}
