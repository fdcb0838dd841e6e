//! `scale`: memory per live key, open-to-first-answer time, and foreground latency while the
//! compactor removes expired records (idemstore alone).
//!
//! Why: the scale targets (bytes of RAM per key at 10M keys, open under 1 s with 10M
//! records, compaction raising p99 by under 2x) are properties of the store, not of a peer.
//! Invariant: loading and measuring happen in separate processes (`--phase load`, then
//! `--phase open`), so the resident memory measured at open is the index and the page cache of
//! a freshly opened store, not whatever the allocator kept from the load.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idemstore::{Begin, Config, Durability, Key, ManualClock, Response, Scope, Store};

use crate::Args;
use crate::bench::load1;
use crate::systems::{IdemClient, SCOPE, System};
use crate::workload::{self, Cell, Tally, Workload};

/// Records live an hour of the manual clock; the compaction phase moves the clock past it.
const TTL: Duration = Duration::from_secs(3600);
/// The manual clock's start (any fixed instant; records expire relative to it).
const CLOCK_START_MS: u64 = 1_780_000_000_000;
/// Page cache of the measured store: small, so that the memory figure is the index's.
const PAGE_CACHE: usize = 8 << 20;
/// Page cache while loading: the default, so that loading is not bound by page reads.
const LOAD_PAGE_CACHE: usize = 256 << 20;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

fn key_name(i: u64) -> String {
    format!("scale-{i:012}")
}

fn config(
    clock: &ManualClock,
    durability: Durability,
    keys: usize,
    page_cache: usize,
) -> Result<Config, String> {
    Config::builder()
        .durability(durability)
        .ttl(TTL)
        // Every key in one scope: no cap (C13) in the way of 10M keys.
        .max_records_per_scope(1 << 40)
        .clock(clock.clone())
        .response_cache_bytes(0)
        .page_cache_bytes(page_cache)
        .index_capacity(keys)
        .build()
        .map_err(|e| e.to_string())
}

/// Runs the `scale` command.
pub fn run(args: &Args) -> Result<(), String> {
    args.check(&[
        "phase",
        "keys",
        "dir",
        "out",
        "foreground-secs",
        "clients",
        "compact-max-secs",
    ])?;
    let keys: u64 = args.num("keys", 1_000_000)?;
    let dir = PathBuf::from(args.get("dir").ok_or("--dir is required")?);
    let out = args.get("out").map(PathBuf::from);
    match args.get("phase").unwrap_or("") {
        "load" => load(&dir, keys, out.as_deref()),
        "open" => open(
            &dir,
            keys,
            out.as_deref(),
            Duration::from_secs_f64(args.num("foreground-secs", 10.0)?),
            args.num("clients", 16)?,
            Duration::from_secs_f64(args.num("compact-max-secs", 300.0)?),
        ),
        other => Err(format!("--phase must be load or open, not {other:?}")),
    }
}

/// Loads `keys` completed records with ~300-byte responses, through the async API with many
/// operations outstanding (so that the writer's batches are full), into `dir/scale.redb`.
fn load(dir: &Path, keys: u64, out: Option<&Path>) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let path = dir.join("scale.redb");
    let _ = std::fs::remove_file(&path);
    let clock = ManualClock::new(CLOCK_START_MS);
    let mut m = Measured {
        keys,
        out: out.map(Path::to_path_buf),
    };
    m.put("load_load1_at_start", format!("{:.2}", load1()));
    let rss_before = rss_bytes();
    let store = Store::open(
        &path,
        config(
            &clock,
            Durability::Buffered {
                max_delay: Duration::from_secs(1),
            },
            keys as usize,
            LOAD_PAGE_CACHE,
        )?,
    )
    .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let scope = Scope::new(SCOPE).map_err(|e| e.to_string())?;
    let body = Arc::new(workload::response_body());
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: u64 = 1024;
    rt.block_on(async {
        let mut handles = Vec::new();
        for t in 0..tasks {
            let (store, scope, body, done, errors) = (
                store.clone(),
                scope.clone(),
                body.clone(),
                done.clone(),
                errors.clone(),
            );
            handles.push(tokio::spawn(async move {
                let mut i = t;
                while i < keys {
                    let name = key_name(i);
                    let ok = match Key::new(&name) {
                        Ok(key) => {
                            let fp = idemstore::Fingerprint::of_bytes(name.as_bytes());
                            match store.begin_async(&scope, &key, &fp).await {
                                Ok(Begin::Execute(r)) => r
                                    .complete_async(Response::new(
                                        201,
                                        [("content-type", "application/json")],
                                        body.as_slice().to_vec(),
                                    ))
                                    .await
                                    .is_ok(),
                                _ => false,
                            }
                        }
                        Err(_) => false,
                    };
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    i += tasks;
                }
            }));
        }
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if handles.iter().all(|h| h.is_finished()) {
                break;
            }
            if last.elapsed() >= Duration::from_secs(10) {
                last = Instant::now();
                let n = done.load(Ordering::Relaxed);
                eprintln!(
                    "load: {n}/{keys} records, {:.0}/s, load average {:.2}",
                    n as f64 / started.elapsed().as_secs_f64(),
                    load1()
                );
            }
        }
        for h in handles {
            let _ = h.await;
        }
    });
    store.flush().map_err(|e| e.to_string())?;
    let stats = store.stats();
    let rss_loaded = rss_bytes();
    store.close().map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    let errors = errors.load(Ordering::Relaxed);
    m.put("load_secs", format!("{secs:.1}"));
    m.put("load_pairs_per_s", format!("{:.0}", keys as f64 / secs));
    m.put("load_errors", errors);
    m.put("load_commits", stats.commits);
    m.put("load_mean_batch", format!("{:.1}", stats.mean_batch()));
    m.put("load_index_entries", stats.index_entries);
    m.put(
        "load_rss_growth_per_key_bytes",
        format!(
            "{:.1}",
            rss_loaded.saturating_sub(rss_before) as f64 / keys as f64
        ),
    );
    m.put("load_load1_at_end", format!("{:.2}", load1()));
    if errors > 0 {
        return Err(format!("{errors} records failed to load"));
    }
    Ok(())
}

/// Retries every loaded key once (each a replay the writer answers from the file and puts in
/// the hot index), with many retries outstanding, so that the index holds every live key.
fn touch_all(store: &Store, scope: &Scope, keys: u64) -> Result<Duration, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let tasks: u64 = 1024;
    let wrong = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let mut handles = Vec::new();
        for t in 0..tasks {
            let (store, scope, wrong) = (store.clone(), scope.clone(), wrong.clone());
            handles.push(tokio::spawn(async move {
                let mut i = t;
                while i < keys {
                    let name = key_name(i);
                    let replayed = match Key::new(&name) {
                        Ok(key) => matches!(
                            store
                                .begin_async(
                                    &scope,
                                    &key,
                                    &idemstore::Fingerprint::of_bytes(name.as_bytes())
                                )
                                .await,
                            Ok(Begin::Replay(_))
                        ),
                        Err(_) => false,
                    };
                    if !replayed {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    i += tasks;
                }
            }));
        }
        for h in handles {
            let _ = h.await;
        }
    });
    let wrong = wrong.load(Ordering::Relaxed);
    if wrong > 0 {
        return Err(format!("{wrong} loaded keys did not replay"));
    }
    Ok(started.elapsed())
}

/// Figures printed and appended to the CSV as they are measured, so that an interrupted run
/// keeps what it had.
struct Measured {
    keys: u64,
    out: Option<PathBuf>,
}

impl Measured {
    fn put(&mut self, name: &str, value: impl std::fmt::Display) {
        let v = value.to_string();
        println!("{name:<44} {v}");
        if let Some(out) = &self.out {
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(out)
                .and_then(|mut f| writeln!(f, "{},{name},{v}", self.keys));
            if let Err(e) = written {
                eprintln!("{}: {e}", out.display());
            }
        }
    }
}

fn foreground(
    store: &Store,
    prefix: &str,
    secs: Duration,
    clients: usize,
) -> Result<Tally, String> {
    let cell = Cell {
        workload: Workload::Flow,
        prefix: prefix.to_owned(),
        warm_end: Instant::now(),
        deadline: Instant::now() + secs,
        progress: Arc::new(AtomicU64::new(0)),
        storm_counter: Arc::new(AtomicU64::new(0)),
        body: Arc::new(workload::response_body()),
    };
    let mut total = Tally::empty();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let client = IdemClient::new(store.clone(), System::IdemImmediate);
                let cell = &cell;
                s.spawn(move || client.map(|mut c| workload::run_blocking(&mut c, cell, i)))
            })
            .collect();
        for h in handles {
            if let Ok(Ok(t)) = h.join() {
                total.merge(&t);
            }
        }
    });
    Ok(total)
}

fn us(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Opens the loaded store in a fresh process and measures.
fn open(
    dir: &Path,
    keys: u64,
    out: Option<&Path>,
    fg_secs: Duration,
    clients: usize,
    compact_max: Duration,
) -> Result<(), String> {
    let path = dir.join("scale.redb");
    let file = std::fs::metadata(&path)
        .map_err(|e| format!("{}: {e} (run --phase load first)", path.display()))?
        .len();
    let mut m = Measured {
        keys,
        out: out.map(Path::to_path_buf),
    };
    m.put("keys", keys);
    m.put("load1_at_start", format!("{:.2}", load1()));
    m.put(
        "file_bytes_per_key",
        format!("{:.0}", file as f64 / keys as f64),
    );
    let clock = ManualClock::new(CLOCK_START_MS);
    let scope = Scope::new(SCOPE).map_err(|e| e.to_string())?;
    let before = rss_bytes();
    let t0 = Instant::now();
    let store = Store::open(
        &path,
        config(&clock, Durability::Immediate, keys as usize, PAGE_CACHE)?,
    )
    .map_err(|e| e.to_string())?;
    let opened = t0.elapsed();
    let existing = Key::new(key_name(keys / 2)).map_err(|e| e.to_string())?;
    let replay = store
        .begin(
            &scope,
            &existing,
            &idemstore::Fingerprint::of_bytes(key_name(keys / 2).as_bytes()),
        )
        .map_err(|e| e.to_string())?;
    let first_replay = t0.elapsed();
    if !matches!(replay, Begin::Replay(_)) {
        return Err(format!(
            "key {} did not replay after reopen",
            key_name(keys / 2)
        ));
    }
    let fresh = Key::new("scale-new-after-open").map_err(|e| e.to_string())?;
    let t1 = Instant::now();
    match store
        .begin(&scope, &fresh, &idemstore::Fingerprint::of_bytes(b"new"))
        .map_err(|e| e.to_string())?
    {
        Begin::Execute(r) => drop(r),
        other => return Err(format!("a new key after open answered {other:?}")),
    }
    let first_execute = t1.elapsed();
    let after = rss_bytes();
    let stats = store.stats();
    m.put("index_entries", stats.index_entries);
    m.put("open_ms", format!("{:.1}", opened.as_secs_f64() * 1e3));
    m.put(
        "open_to_first_replay_ms",
        format!("{:.1}", first_replay.as_secs_f64() * 1e3),
    );
    m.put(
        "first_new_key_begin_ms",
        format!("{:.2}", first_execute.as_secs_f64() * 1e3),
    );
    m.put(
        "rss_before_open_mib",
        format!("{:.1}", before as f64 / 1048576.0),
    );
    m.put(
        "rss_after_open_mib",
        format!("{:.1}", after as f64 / 1048576.0),
    );
    m.put(
        "rss_per_key_bytes",
        format!("{:.1}", after.saturating_sub(before) as f64 / keys as f64),
    );
    m.put("page_cache_bytes_configured", PAGE_CACHE);
    let touched = touch_all(&store, &scope, keys)?;
    let warm = rss_bytes();
    m.put("warm_secs", format!("{:.1}", touched.as_secs_f64()));
    m.put("warm_index_entries", store.stats().index_entries);
    m.put("rss_warm_mib", format!("{:.1}", warm as f64 / 1048576.0));
    m.put(
        "rss_per_live_key_warm_bytes",
        format!("{:.1}", warm.saturating_sub(before) as f64 / keys as f64),
    );

    if fg_secs > Duration::ZERO {
        // Foreground alone, then while the compactor removes every loaded record.
        let base = foreground(&store, "fg-base", fg_secs, clients)?;
        m.put("fg_clients", clients);
        m.put(
            "fg_base_requests_per_s",
            format!("{:.0}", base.requests as f64 / fg_secs.as_secs_f64()),
        );
        m.put("fg_base_p50_us", format!("{:.0}", us(&base.request, 0.5)));
        m.put("fg_base_p99_us", format!("{:.0}", us(&base.request, 0.99)));
        m.put(
            "fg_base_p999_us",
            format!("{:.0}", us(&base.request, 0.999)),
        );
        m.put("fg_base_errors", base.errors);
        // Everything written so far expires: the loaded records and the baseline's own.
        // (The baseline's requests that finished after its deadline are not counted: the loop
        // may stop up to `clients` records early.)
        let (removed_before, target) = (store.stats().expired_removed, keys + base.executes);
        m.put("compaction_target_records", target);
        clock.advance(TTL + Duration::from_secs(1));
        let started = Instant::now();
        let mut during = Tally::empty();
        let mut chunk = 0;
        while store.stats().expired_removed - removed_before < target
            && started.elapsed() < compact_max
        {
            chunk += 1;
            let t = foreground(
                &store,
                &format!("fg-c{chunk}"),
                Duration::from_secs(2),
                clients,
            )?;
            during.merge(&t);
            eprintln!(
                "compaction: {} of {target} removed after {:.0} s, load average {:.2}",
                store.stats().expired_removed - removed_before,
                started.elapsed().as_secs_f64(),
                load1()
            );
        }
        let removed = store.stats().expired_removed - removed_before;
        let secs = started.elapsed().as_secs_f64();
        m.put("compaction_removed", removed);
        m.put("compaction_secs", format!("{secs:.1}"));
        m.put(
            "compaction_removed_per_s",
            format!("{:.0}", removed as f64 / secs),
        );
        m.put(
            "fg_during_requests_per_s",
            format!("{:.0}", during.requests as f64 / secs),
        );
        m.put(
            "fg_during_p50_us",
            format!("{:.0}", us(&during.request, 0.5)),
        );
        m.put(
            "fg_during_p99_us",
            format!("{:.0}", us(&during.request, 0.99)),
        );
        m.put(
            "fg_during_p999_us",
            format!("{:.0}", us(&during.request, 0.999)),
        );
        m.put("fg_during_errors", during.errors);
        m.put(
            "fg_p99_ratio_during_over_base",
            format!("{:.2}", us(&during.request, 0.99) / us(&base.request, 0.99)),
        );
    }
    store.close().map_err(|e| e.to_string())
}
