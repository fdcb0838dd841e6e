//! `report`: medians, paired ratios and plots from the rows `bench` wrote.
//!
//! Why: single runs on a shared machine vary by several times; the report states medians over
//! rounds, and ratios taken within a round (both systems saw the same noise) before taking
//! their median. Invariant: a cell with errors or a failed run is shown as such, never silently
//! folded into a median.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use crate::Args;
use crate::svg;

/// One CSV row, the fields the report uses.
#[derive(Debug, Clone)]
pub struct Row {
    /// Round number.
    pub round: usize,
    /// Workload name.
    pub workload: String,
    /// Clients.
    pub concurrency: usize,
    /// System name.
    pub system: String,
    /// Requests per second.
    pub throughput: f64,
    /// Request latency quantiles, µs.
    pub p50: f64,
    /// p99, µs.
    pub p99: f64,
    /// p99.9, µs.
    pub p999: f64,
    /// Replaying-begin latency median, µs.
    pub replay_p50: f64,
    /// Replaying-begin p99, µs.
    pub replay_p99: f64,
    /// Errors.
    pub errors: u64,
    /// Load average at the start.
    pub load1: f64,
    /// Whether the cell failed outright.
    pub failed: bool,
}

/// Reads a results file.
pub fn read(path: &std::path::Path) -> Result<Vec<Row>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or("empty results file")?
        .split(',')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("results file has no column {name}"))
    };
    let (round, workload, conc, system, tp, p50, p99, p999, rp50, rp99, errors, load1, note) = (
        col("round")?,
        col("workload")?,
        col("concurrency")?,
        col("system")?,
        col("throughput")?,
        col("p50_us")?,
        col("p99_us")?,
        col("p999_us")?,
        col("replay_p50_us")?,
        col("replay_p99_us")?,
        col("errors")?,
        col("load1")?,
        col("note")?,
    );
    let mut rows = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty() && !l.starts_with("round,")) {
        let f: Vec<&str> = line.split(',').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("");
        let num = |i: usize| get(i).parse::<f64>().unwrap_or(f64::NAN);
        rows.push(Row {
            round: get(round).parse().unwrap_or(0),
            workload: get(workload).to_owned(),
            concurrency: get(conc).parse().unwrap_or(0),
            system: get(system).to_owned(),
            throughput: num(tp),
            p50: num(p50),
            p99: num(p99),
            p999: num(p999),
            replay_p50: num(rp50),
            replay_p99: num(rp99),
            errors: get(errors).parse().unwrap_or(0),
            load1: num(load1),
            failed: get(note).starts_with("failed"),
        });
    }
    Ok(rows)
}

/// The median of the finite values (NaN if none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians of one (workload, concurrency, system) over its rounds.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Rounds that ran without failing.
    pub rounds: usize,
    /// Median throughput.
    pub throughput: f64,
    /// Lowest and highest throughput.
    pub range: (f64, f64),
    /// Median p50, p99, p99.9 of request latency, µs.
    pub lat: (f64, f64, f64),
    /// Median replay p50 and p99, µs.
    pub replay: (f64, f64),
    /// Errors over all rounds.
    pub errors: u64,
    /// Highest load average at a cell start.
    pub max_load: f64,
}

type CellKey = (String, usize, String);

fn summarize(rows: &[Row]) -> BTreeMap<CellKey, Summary> {
    let mut groups: BTreeMap<CellKey, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        groups
            .entry((r.workload.clone(), r.concurrency, r.system.clone()))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|(k, rs)| {
            let ok: Vec<&&Row> = rs.iter().filter(|r| !r.failed).collect();
            let tp: Vec<f64> = ok.iter().map(|r| r.throughput).collect();
            let lo = tp.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = tp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let s = Summary {
                rounds: ok.len(),
                throughput: median(tp),
                range: (lo, hi),
                lat: (
                    median(ok.iter().map(|r| r.p50).collect()),
                    median(ok.iter().map(|r| r.p99).collect()),
                    median(ok.iter().map(|r| r.p999).collect()),
                ),
                replay: (
                    median(ok.iter().map(|r| r.replay_p50).collect()),
                    median(ok.iter().map(|r| r.replay_p99).collect()),
                ),
                errors: rs.iter().map(|r| r.errors).sum(),
                max_load: rs.iter().map(|r| r.load1).fold(0.0, f64::max),
            };
            (k, s)
        })
        .collect()
}

/// The ratios the issue asks for: each idemstore mode against the peers of like durability.
pub const PAIRS: [(&str, &str); 8] = [
    ("idemstore-immediate", "redis-always"),
    ("idemstore-redis-always", "redis-always"),
    ("idemstore-redis-always-wait1", "idemstore-redis-always"),
    ("idemstore-immediate", "pg-sync-on"),
    ("idemstore-immediate", "redb-naive"),
    ("idemstore-buffered", "redis-everysec"),
    ("idemstore-buffered", "pg-sync-off"),
    ("idemstore-memory", "redis-none"),
];

/// The median over rounds of (a's throughput / b's throughput) in the same round.
fn paired_ratio(rows: &[Row], workload: &str, c: usize, a: &str, b: &str) -> f64 {
    let find = |sys: &str, round: usize| {
        rows.iter()
            .find(|r| {
                r.workload == workload
                    && r.concurrency == c
                    && r.system == sys
                    && r.round == round
                    && !r.failed
            })
            .map(|r| r.throughput)
    };
    let mut rounds: Vec<usize> = rows.iter().map(|r| r.round).collect();
    rounds.sort_unstable();
    rounds.dedup();
    median(
        rounds
            .into_iter()
            .filter_map(|round| match (find(a, round), find(b, round)) {
                (Some(x), Some(y)) if y > 0.0 => Some(x / y),
                _ => None,
            })
            .collect(),
    )
}

fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let v = x.round() as i64;
    let s = v.abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0 { format!("-{out}") } else { out }
}

fn fmt_us(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn fmt_ratio(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x >= 10.0 {
        format!("{x:.0}×")
    } else {
        format!("{x:.2}×")
    }
}

/// Builds the markdown report.
pub fn markdown(rows: &[Row]) -> String {
    let sums = summarize(rows);
    let mut workloads: Vec<String> = rows.iter().map(|r| r.workload.clone()).collect();
    workloads.sort();
    workloads.dedup();
    let mut concs: Vec<usize> = rows.iter().map(|r| r.concurrency).collect();
    concs.sort_unstable();
    concs.dedup();
    let mut systems: Vec<String> = Vec::new();
    for r in rows {
        if !systems.contains(&r.system) {
            systems.push(r.system.clone());
        }
    }
    systems.sort_by_key(|s| {
        crate::systems::System::parse(s)
            .map(|x| x as usize)
            .unwrap_or(99)
    });
    let rounds = rows.iter().map(|r| r.round).max().unwrap_or(0);
    let max_load = rows.iter().map(|r| r.load1).fold(0.0, f64::max);
    let min_load = rows.iter().map(|r| r.load1).fold(f64::INFINITY, f64::min);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{} cells, {rounds} rounds; load average at cell starts {min_load:.2}–{max_load:.2}{}.\n",
        rows.len(),
        if max_load > 1.0 {
            " (above 1: **preliminary**, the machine was shared)"
        } else {
            ""
        }
    );
    let pairs: Vec<(&str, &str)> = PAIRS
        .iter()
        .copied()
        .filter(|(a, b)| systems.iter().any(|s| s == a) && systems.iter().any(|s| s == b))
        .collect();
    if !pairs.is_empty() {
        let _ = writeln!(
            md,
            "### Throughput ratios, idemstore / peer (median of per-round ratios)\n"
        );
        let _ = write!(md, "| workload | clients |");
        for (a, b) in &pairs {
            // The file modes read well short (`immediate / redis-always`); the Redis engine's
            // name keeps its prefix, or it would read as the peer's.
            let short = a.trim_start_matches("idemstore-");
            let label = if short.starts_with("redis") { a } else { short };
            let _ = write!(md, " {label} / {b} |");
        }
        let _ = write!(md, "\n|---|---:|");
        for _ in &pairs {
            let _ = write!(md, "---:|");
        }
        md.push('\n');
        for w in &workloads {
            for &c in &concs {
                let _ = write!(md, "| {w} | {c} |");
                for (a, b) in &pairs {
                    let _ = write!(md, " {} |", fmt_ratio(paired_ratio(rows, w, c, a, b)));
                }
                md.push('\n');
            }
        }
        md.push('\n');
    }
    let c1 = concs.first().copied().unwrap_or(1);
    if workloads.iter().any(|w| w == "replay90") {
        let base = sums
            .get(&("replay90".to_owned(), c1, "idemstore-immediate".to_owned()))
            .map(|x| x.replay.0)
            .unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "### Replay latency at {c1} client (`replay90`, the replaying `begin` alone)\n\n| system | p50 µs | p99 µs | p50 / idemstore-immediate's p50 |\n|---|---:|---:|---:|"
        );
        for s in &systems {
            if let Some(x) = sums.get(&("replay90".to_owned(), c1, s.clone())) {
                let _ = writeln!(
                    md,
                    "| {s} | {} | {} | {} |",
                    fmt_us(x.replay.0),
                    fmt_us(x.replay.1),
                    fmt_ratio(x.replay.0 / base)
                );
            }
        }
        md.push('\n');
    }
    for w in &workloads {
        let _ = writeln!(md, "### `{w}`: requests/s, median over rounds\n");
        let _ = write!(md, "| system |");
        for c in &concs {
            let _ = write!(md, " {c} |");
        }
        let _ = write!(md, "\n|---|");
        for _ in &concs {
            let _ = write!(md, "---:|");
        }
        md.push('\n');
        for s in &systems {
            let _ = write!(md, "| {s} |");
            for &c in &concs {
                let cell = sums
                    .get(&(w.clone(), c, s.clone()))
                    .map(|x| fmt_num(x.throughput))
                    .unwrap_or_else(|| "–".into());
                let _ = write!(md, " {cell} |");
            }
            md.push('\n');
        }
        md.push('\n');
    }
    for w in &workloads {
        let _ = writeln!(
            md,
            "### `{w}`: requests/s (median, min–max) and request latency p50 / p99 / p99.9 (µs)\n"
        );
        let _ = writeln!(
            md,
            "| system | clients | requests/s | min–max | p50 | p99 | p99.9 | replay p50 / p99 | errors | max load |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for s in &systems {
            for &c in &concs {
                if let Some(x) = sums.get(&(w.clone(), c, s.clone())) {
                    let _ = writeln!(
                        md,
                        "| {s} | {c} | **{}** | {}–{} | {} | {} | {} | {} / {} | {} | {:.1} |",
                        fmt_num(x.throughput),
                        fmt_num(x.range.0),
                        fmt_num(x.range.1),
                        fmt_us(x.lat.0),
                        fmt_us(x.lat.1),
                        fmt_us(x.lat.2),
                        fmt_us(x.replay.0),
                        fmt_us(x.replay.1),
                        if x.rounds == 0 {
                            "failed".to_owned()
                        } else {
                            x.errors.to_string()
                        },
                        x.max_load
                    );
                }
            }
        }
        md.push('\n');
    }
    md
}

/// Runs the `report` command.
pub fn run(args: &Args) -> Result<(), String> {
    args.check(&["in", "md", "svg-dir"])?;
    let input = PathBuf::from(args.get("in").unwrap_or("results.csv"));
    let rows = read(&input)?;
    if rows.is_empty() {
        return Err(format!("{}: no rows", input.display()));
    }
    let md = markdown(&rows);
    println!("{md}");
    if let Some(path) = args.get("md") {
        std::fs::write(path, &md).map_err(|e| format!("{path}: {e}"))?;
    }
    if let Some(dir) = args.get("svg-dir") {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let sums = summarize(&rows);
        let mut workloads: Vec<String> = rows.iter().map(|r| r.workload.clone()).collect();
        workloads.sort();
        workloads.dedup();
        for w in workloads {
            let mut series: Vec<svg::Series> = Vec::new();
            for ((sw, c, s), x) in &sums {
                if *sw != w || !x.throughput.is_finite() || x.throughput <= 0.0 {
                    continue;
                }
                match series.iter_mut().find(|ser| ser.name == *s) {
                    Some(ser) => ser.points.push((*c as f64, x.throughput)),
                    None => series.push(svg::Series {
                        name: s.clone(),
                        points: vec![(*c as f64, x.throughput)],
                    }),
                }
            }
            series.sort_by_key(|s| {
                crate::systems::System::parse(&s.name)
                    .map(|x| x as usize)
                    .unwrap_or(99)
            });
            for s in &mut series {
                s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
            let title = format!("{w}: requests per second against clients (median of rounds)");
            let path = PathBuf::from(dir).join(format!("peers-{w}.svg"));
            let (lo, hi) = rows
                .iter()
                .map(|r| r.load1)
                .fold((f64::INFINITY, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
            let rounds = rows.iter().map(|r| r.round).max().unwrap_or(0);
            let subtitle = format!(
                "{rounds} rounds; load average {lo:.1}–{hi:.1}{}",
                if hi > 1.0 {
                    " (shared machine: preliminary)"
                } else {
                    ""
                }
            );
            std::fs::write(&path, svg::plot(&title, &subtitle, &series))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
