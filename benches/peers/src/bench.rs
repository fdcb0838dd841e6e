//! `bench`: runs the matrix of cells, interleaved, and appends one CSV row per cell.
//!
//! Why: systems are compared cell by cell, so that every system of a round sees the same
//! machine noise (A B C A B C, the order rotated each round). Invariant: every system starts a
//! cell empty (a new file, `FLUSHALL`, `TRUNCATE`), its clients are connected before the clock
//! starts, and a row is written as soon as its cell ends (an interrupted run keeps its rows).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Args;
use crate::systems::{self, IdemSettings, System};
use crate::workload::{self, Cell, Tally, Workload};

/// The CSV header; `report` reads rows by these names.
pub const HEADER: &str = "round,workload,concurrency,system,seconds,requests,throughput,p50_us,p99_us,p999_us,replay_p50_us,replay_p99_us,replay_p999_us,executes,replays,in_progress,errors,load1,unix_time,note";

struct Plan {
    systems: Vec<System>,
    workloads: Vec<Workload>,
    concurrency: Vec<usize>,
    rounds: usize,
    duration: Duration,
    warmup: Duration,
    out: PathBuf,
    data_dir: PathBuf,
    redis: [Option<String>; 3],
    pg: Option<String>,
    idem: IdemSettings,
}

fn list<T>(
    s: Option<&str>,
    default: Vec<T>,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, String> {
    match s {
        None => Ok(default),
        Some(s) => s
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| parse(x).ok_or_else(|| format!("unknown value {x}")))
            .collect(),
    }
}

fn plan(args: &Args) -> Result<Plan, String> {
    args.check(&[
        "systems",
        "workloads",
        "concurrency",
        "rounds",
        "duration",
        "warmup",
        "out",
        "data-dir",
        "redis-always",
        "redis-everysec",
        "redis-none",
        "pg",
        "buffered-delay-ms",
    ])?;
    let systems = list(args.get("systems"), System::ALL.to_vec(), System::parse)?;
    let workloads = list(
        args.get("workloads"),
        vec![Workload::Flow, Workload::Storm, Workload::Replay90],
        Workload::parse,
    )?;
    let concurrency = list(args.get("concurrency"), vec![1, 16, 64, 256], |x| {
        x.parse().ok().filter(|&c: &usize| c > 0)
    })?;
    let p = Plan {
        systems,
        workloads,
        concurrency,
        rounds: args.num("rounds", 3)?,
        duration: Duration::from_secs_f64(args.num("duration", 5.0)?),
        warmup: Duration::from_secs_f64(args.num("warmup", 1.0)?),
        out: PathBuf::from(args.get("out").unwrap_or("results.csv")),
        data_dir: PathBuf::from(args.get("data-dir").map(str::to_owned).unwrap_or_else(|| {
            std::env::temp_dir()
                .join("idemstore-peers")
                .display()
                .to_string()
        })),
        redis: [
            args.get("redis-always").map(str::to_owned),
            args.get("redis-everysec").map(str::to_owned),
            args.get("redis-none").map(str::to_owned),
        ],
        pg: args.get("pg").map(str::to_owned),
        idem: IdemSettings {
            buffered_delay: Duration::from_millis(args.num("buffered-delay-ms", 1000)?),
        },
    };
    for s in &p.systems {
        let missing = match s {
            System::RedisAlways
            | System::IdemRedisAlways
            | System::IdemRedisAlwaysWait1
            | System::IdemRedisAlwaysWaitAof1 => p.redis[0].is_none(),
            System::RedisEverysec => p.redis[1].is_none(),
            System::RedisNone => p.redis[2].is_none(),
            System::PgOn | System::PgOff => p.pg.is_none(),
            _ => false,
        };
        if missing {
            return Err(format!(
                "{} needs its server's address (see --help)",
                s.name()
            ));
        }
    }
    Ok(p)
}

/// Reads the 1-minute load average.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Runs the `bench` command.
pub fn run(args: &Args) -> Result<(), String> {
    let p = plan(args)?;
    std::fs::create_dir_all(&p.data_dir).map_err(|e| e.to_string())?;
    let fresh = std::fs::metadata(&p.out)
        .map(|m| m.len() == 0)
        .unwrap_or(true);
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.out)
        .map_err(|e| format!("{}: {e}", p.out.display()))?;
    if fresh {
        writeln!(out, "{HEADER}").map_err(|e| e.to_string())?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let total = p.rounds * p.workloads.len() * p.concurrency.len() * p.systems.len();
    let mut done = 0usize;
    let started = Instant::now();
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for round in 1..=p.rounds {
        for &w in &p.workloads {
            for &c in &p.concurrency {
                // Rotate the order each round, so that no system always runs first.
                let n = p.systems.len();
                for i in 0..n {
                    let system = p.systems[(i + round - 1) % n];
                    done += 1;
                    let tag = format!("r{run_id}x{round}{}c{c}{}", w.name(), system.name());
                    let load = load1();
                    let label = format!(
                        "[{done}/{total} {:.0}s] round {round} {} c={c} {}",
                        started.elapsed().as_secs_f64(),
                        w.name(),
                        system.name()
                    );
                    let (tally, note) = match run_cell(&p, &rt, system, w, c, &tag, &label) {
                        Ok(x) => x,
                        Err(e) => {
                            eprintln!("{label}: FAILED: {e}");
                            (Tally::empty(), format!("failed: {e}"))
                        }
                    };
                    let row = row(round, w, c, system, p.duration, &tally, load, &note);
                    writeln!(out, "{row}").map_err(|e| e.to_string())?;
                    out.flush().map_err(|e| e.to_string())?;
                    eprintln!(
                        "{label}: {:.0} req/s p50 {:.0} us p99 {:.0} us p99.9 {:.0} us, {} errors{}{}",
                        tally.requests as f64 / p.duration.as_secs_f64(),
                        q(&tally.request, 0.5),
                        q(&tally.request, 0.99),
                        q(&tally.request, 0.999),
                        tally.errors,
                        tally
                            .first_error
                            .as_deref()
                            .map(|e| format!(" (first: {e})"))
                            .unwrap_or_default(),
                        if note.is_empty() {
                            String::new()
                        } else {
                            format!(" [{note}]")
                        }
                    );
                }
            }
        }
    }
    Ok(())
}

fn q(h: &hdrhistogram::Histogram<u64>, quantile: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        h.value_at_quantile(quantile) as f64 / 1000.0
    }
}

#[allow(clippy::too_many_arguments)]
fn row(
    round: usize,
    w: Workload,
    c: usize,
    system: System,
    duration: Duration,
    t: &Tally,
    load: f64,
    note: &str,
) -> String {
    let secs = duration.as_secs_f64();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{round},{},{c},{},{secs:.3},{},{:.1},{:.1},{:.1},{:.1},{:.2},{:.2},{:.2},{},{},{},{},{load:.2},{now},{}",
        w.name(),
        system.name(),
        t.requests,
        t.requests as f64 / secs,
        q(&t.request, 0.5),
        q(&t.request, 0.99),
        q(&t.request, 0.999),
        q(&t.replay, 0.5),
        q(&t.replay, 0.99),
        q(&t.replay, 0.999),
        t.executes,
        t.replays,
        t.in_progress,
        t.errors,
        note.replace([',', '\n'], ";")
    )
}

/// Prints progress every two seconds while a cell runs.
struct Progress {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(label: String, cell: &Cell) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, counter, deadline) = (stop.clone(), cell.progress.clone(), cell.deadline);
        let handle = std::thread::spawn(move || {
            let begun = Instant::now();
            let total = deadline.saturating_duration_since(begun);
            let mut last = (Instant::now(), 0u64);
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.0.elapsed() >= Duration::from_secs(2) && !s.load(Ordering::Relaxed) {
                    let n = counter.load(Ordering::Relaxed);
                    let rate = (n - last.1) as f64 / last.0.elapsed().as_secs_f64();
                    eprintln!(
                        "{label}: {:.0}/{:.0} s, {n} requests, {rate:.0}/s now",
                        begun.elapsed().as_secs_f64(),
                        total.as_secs_f64()
                    );
                    last = (Instant::now(), n);
                }
            }
        });
        Progress {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn new_cell(p: &Plan, w: Workload, tag: &str) -> Cell {
    let now = Instant::now();
    Cell {
        workload: w,
        prefix: tag.to_owned(),
        warm_end: now + p.warmup,
        deadline: now + p.warmup + p.duration,
        progress: Arc::new(AtomicU64::new(0)),
        storm_counter: Arc::new(AtomicU64::new(0)),
        body: Arc::new(workload::response_body()),
    }
}

fn run_threads<C: workload::BlockingClient>(clients: Vec<C>, cell: &Cell) -> Tally {
    let mut total = Tally::empty();
    std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                std::thread::Builder::new()
                    .stack_size(256 << 10)
                    .spawn_scoped(s, move || workload::run_blocking(&mut c, cell, i))
                    .expect("spawn client thread")
            })
            .collect();
        for h in handles {
            if let Ok(t) = h.join() {
                total.merge(&t);
            }
        }
    });
    total
}

fn run_tasks<C: workload::AsyncClient>(
    rt: &tokio::runtime::Runtime,
    clients: Vec<C>,
    cell: &Cell,
) -> Tally {
    rt.block_on(async {
        let handles: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, c)| tokio::spawn(workload::run_async(c, cell.clone(), i)))
            .collect();
        let mut total = Tally::empty();
        for h in handles {
            if let Ok(t) = h.await {
                total.merge(&t);
            }
        }
        total
    })
}

fn run_cell(
    p: &Plan,
    rt: &tokio::runtime::Runtime,
    system: System,
    w: Workload,
    c: usize,
    tag: &str,
    label: &str,
) -> Result<(Tally, String), String> {
    match system {
        System::IdemImmediate
        | System::IdemImmediateAsync
        | System::IdemImmediateNoLog
        | System::IdemDurableReservations
        | System::IdemCompleteWith
        | System::IdemBuffered
        | System::IdemMemory => {
            let dir = systems::cell_dir(&p.data_dir, "cell")?;
            let store = systems::open_idemstore(system, &dir, p.idem)?;
            let clients = (0..c)
                .map(|_| systems::IdemClient::new(store.clone(), system))
                .collect::<Result<Vec<_>, _>>()?;
            let cell = new_cell(p, w, tag);
            let progress = Progress::start(label.to_owned(), &cell);
            let tally = if system == System::IdemImmediateAsync {
                run_tasks(rt, clients, &cell)
            } else {
                run_threads(clients, &cell)
            };
            drop(progress);
            Ok((tally, close_idemstore(store, &dir)?))
        }
        System::IdemRedisAlways
        | System::IdemRedisAlwaysWait1
        | System::IdemRedisAlwaysWaitAof1 => {
            let url = p.redis[0].as_deref().unwrap_or_default();
            let store = systems::open_idemstore_redis(url, system)?;
            let clients = (0..c)
                .map(|_| systems::IdemClient::new(store.clone(), system))
                .collect::<Result<Vec<_>, _>>()?;
            let cell = new_cell(p, w, tag);
            let progress = Progress::start(label.to_owned(), &cell);
            let tally = run_threads(clients, &cell);
            drop(progress);
            let st = store.stats();
            let note = format!(
                "replays={} from_cache={} cached={}",
                st.replays, st.answered_from_index, st.index_entries
            );
            store.close().map_err(|e| e.to_string())?;
            Ok((tally, note))
        }
        System::RedbNaive => {
            let dir = systems::cell_dir(&p.data_dir, "cell")?;
            let db = systems::open_redb(&dir)?;
            let clients = (0..c)
                .map(|_| systems::RedbClient::new(db.clone()))
                .collect();
            let cell = new_cell(p, w, tag);
            let progress = Progress::start(label.to_owned(), &cell);
            let tally = run_threads::<systems::RedbClient>(clients, &cell);
            drop(progress);
            let note = format!("file_mib={:.1}", file_mib(&dir.join("naive.redb")));
            drop(db);
            let _ = std::fs::remove_dir_all(&dir);
            Ok((tally, note))
        }
        System::RedisAlways | System::RedisEverysec | System::RedisNone => {
            let url = match system {
                System::RedisAlways => &p.redis[0],
                System::RedisEverysec => &p.redis[1],
                _ => &p.redis[2],
            }
            .as_deref()
            .unwrap_or_default();
            let client = redis::Client::open(url).map_err(|e| e.to_string())?;
            let clients = rt.block_on(async {
                // No response timeout: emptying a server that holds a large database takes
                // longer than the crate's default 500 ms.
                let admin_config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
                let mut admin = client
                    .get_multiplexed_async_connection_with_config(&admin_config)
                    .await
                    .map_err(|e| e.to_string())?;
                let _: () = redis::cmd("FLUSHALL")
                    .query_async(&mut admin)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut v = Vec::with_capacity(c);
                for _ in 0..c {
                    v.push(systems::RedisClient::connect(&client).await?);
                }
                Ok::<_, String>(v)
            })?;
            let cell = new_cell(p, w, tag);
            let progress = Progress::start(label.to_owned(), &cell);
            let tally = run_tasks(rt, clients, &cell);
            drop(progress);
            Ok((tally, String::new()))
        }
        System::PgOn | System::PgOff => {
            let conninfo = p.pg.as_deref().unwrap_or_default();
            let clients = rt.block_on(async {
                let (admin, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                let driver = tokio::spawn(async move {
                    let _ = conn.await;
                });
                admin
                    .batch_execute(&format!("{}; TRUNCATE idem", systems::PG_SCHEMA))
                    .await
                    .map_err(|e| e.to_string())?;
                drop(admin);
                let _ = driver.await;
                let mut v = Vec::with_capacity(c);
                for _ in 0..c {
                    v.push(systems::PgClient::connect(conninfo, system == System::PgOn).await?);
                }
                Ok::<_, String>(v)
            })?;
            let cell = new_cell(p, w, tag);
            let progress = Progress::start(label.to_owned(), &cell);
            let tally = run_tasks(rt, clients, &cell);
            drop(progress);
            Ok((tally, String::new()))
        }
    }
}

/// The store's counters as a note for the results, after which the store is closed and its
/// directory removed.
fn close_idemstore(store: idemstore::Store, dir: &Path) -> Result<String, String> {
    let st = store.stats();
    let note = format!(
        "commits={} durable={} mean_batch={:.1} mean_commit_us={} checkpoints={} \
         checkpoint_max_ms={} log_full_waits={} file_mib={:.1}",
        st.commits,
        st.durable_commits,
        st.mean_batch(),
        st.mean_commit_latency().as_micros(),
        st.checkpoints,
        st.max_checkpoint_duration().as_millis(),
        st.log_full_waits,
        file_mib(&dir.join("idem.redb"))
    );
    store.close().map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(note)
}

fn file_mib(path: &Path) -> f64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0
}
