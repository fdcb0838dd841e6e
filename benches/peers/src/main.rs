//! Load generator: the idempotency workload on idemstore, Redis, PostgreSQL and naive redb.
//!
//! Why: a user choosing idemstore compares it with what they would otherwise run; the only
//! fair comparison runs the same requests at the same concurrency, interleaved on the same
//! machine. `bench` measures and appends one CSV row per (round, workload, concurrency,
//! system); `report` turns the rows into medians, ratio tables and SVG plots; `scale` measures
//! memory per live key, open time and compaction interference of idemstore alone.
//! `benches/peers/run.sh` starts the servers and runs all of it with one command.

// A benchmark tool aborts on setup failures: there is no result to report then.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod bench;
mod report;
mod scale;
mod svg;
mod systems;
mod workload;

use std::process::ExitCode;

const USAGE: &str = "usage:
  idemstore-peers bench  [--systems a,b] [--workloads flow,storm,replay90] [--concurrency 1,16,64,256]
                         [--rounds 3] [--duration 5] [--warmup 1] [--out results.csv] [--data-dir DIR]
                         [--redis-always URL] [--redis-everysec URL] [--redis-none URL] [--pg CONNINFO]
                         [--buffered-delay-ms 1000]
  idemstore-peers report --in results.csv [--md report.md] [--svg-dir DIR]
  idemstore-peers scale  --phase load|open --dir DIR [--keys 1000000] [--out scale.csv] [--foreground-secs 10] [--clients 16] [--compact-max-secs 300]
systems: idemstore-immediate idemstore-buffered idemstore-memory redb-naive idemstore-immediate-nolog
         idemstore-immediate-async idemstore-redis-always idemstore-redis-always-wait1 redis-always redis-everysec redis-none pg-sync-on pg-sync-off";

/// Command-line options as (name, value) pairs after the subcommand.
pub struct Args(Vec<(String, String)>);

impl Args {
    fn parse(raw: &[String]) -> Result<Args, String> {
        let mut out = Vec::new();
        let mut it = raw.iter();
        while let Some(a) = it.next() {
            let name = a
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {a}"))?;
            let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            out.push((name.to_owned(), value.clone()));
        }
        Ok(Args(out))
    }

    /// The value of `--name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `--name` parsed, or `default`.
    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{name}: bad value {v}")),
        }
    }

    /// The names given to any option, to refuse unknown ones.
    pub fn check(&self, known: &[&str]) -> Result<(), String> {
        for (n, _) in &self.0 {
            if !known.contains(&n.as_str()) {
                return Err(format!("unknown option --{n}"));
            }
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = raw.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = Args::parse(rest).and_then(|args| match cmd.as_str() {
        "bench" => bench::run(&args),
        "report" => report::run(&args),
        "scale" => scale::run(&args),
        _ => Err(format!("unknown command {cmd}\n{USAGE}")),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
