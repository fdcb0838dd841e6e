//! `idemstore`: the bookings demo service, the store walkthrough, and the operator tool.
//!
//! * `idemstore serve [--db PATH] [--addr ADDR] [--handler-delay-ms N]` serves the bookings
//!   API of the README behind the idempotency layer;
//! * `idemstore demo [--db PATH]` walks through the store's answers without HTTP;
//! * `idemstore call METHOD URL --data JSON --op ID [--journal PATH] [--header ...]` sends a
//!   write with a journaled idempotency key and retries it safely;
//! * `idemstore stats|list|get|purge|release|export|import|compact|check [--db PATH |
//!   --redis URL | --admin ADDR] [--json]` inspect and maintain a store: a file, a Redis
//!   server, or a running service's admin interface.
//!
//! Every failure is one line on stderr and a non-zero exit status.

mod admin_serve;
mod bookings;
mod call;
mod demo;
mod escape;
mod ops;
mod redact;
mod remote;
mod serve;
mod server;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "idemstore",
    version,
    about = "Idempotency keys on an embedded store: the bookings demo service and the operator tool"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the bookings API, guarded by the idempotency layer.
    Serve(serve::ServeArgs),
    /// Walk through the store's answers (execute, in progress, replay, conflict) without HTTP.
    Demo {
        /// The store file.
        #[arg(long, default_value = "idemstore-demo.redb")]
        db: PathBuf,
    },
    /// Send a write with a journaled idempotency key, retrying it safely (http:// only).
    Call(call::CallArgs),
    /// Count the records in a store (with `--admin`, the service's counters too).
    Stats {
        #[command(flatten)]
        target: ops::Target,
        /// Print a line of counts every interval, until stopped (or `--count` lines).
        #[arg(long)]
        watch: bool,
        /// With `--watch`: the interval, in ms.
        #[arg(long, default_value_t = 2000, value_name = "N", requires = "watch")]
        #[arg(value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
        interval_ms: u64,
        /// With `--watch`: stop after this many lines.
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
    },
    /// List live records; says on stderr when more match than the limit.
    List {
        #[command(flatten)]
        target: ops::Target,
        #[command(flatten)]
        filters: ops::Filters,
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one record, with its stored response.
    Get {
        #[command(flatten)]
        target: ops::Target,
        /// The record's scope.
        #[arg(long)]
        scope: String,
        /// The record's key.
        #[arg(long)]
        key: String,
    },
    /// Remove one record (`--scope S --key K`; exit status 1 if there was none), or every
    /// record the filters select (`--dry-run` lists them without removing anything).
    Purge {
        #[command(flatten)]
        target: ops::Target,
        #[command(flatten)]
        filters: ops::Filters,
        /// The record's key (with `--scope`): remove this one record, whatever its state.
        // The bulk filters would not apply to the one record: refused rather than ignored, so
        // that `--state in-flight` added as a safety net never lets a completed record go.
        #[arg(long, requires = "scope", conflicts_with_all = ["state", "older_than", "sort"])]
        key: Option<String>,
        /// Without `--key`: only say which records would be removed.
        #[arg(long, conflicts_with = "key")]
        dry_run: bool,
        /// Without `--key` and without a filter: every live record.
        #[arg(long, conflicts_with = "key")]
        all: bool,
        /// Without `--key`: at most this many records.
        #[arg(long, conflicts_with = "key")]
        limit: Option<usize>,
    },
    /// Free a key in flight now, so its next attempt runs; its holder can no longer complete.
    Release {
        #[command(flatten)]
        target: ops::Target,
        /// The record's scope.
        #[arg(long)]
        scope: String,
        /// The record's key.
        #[arg(long)]
        key: String,
        /// For a key whose outcome is unknown: its operation did not have its effect, so the
        /// next attempt runs it again.
        #[arg(long)]
        not_applied: bool,
    },
    /// Write every live record as JSON Lines (stdout, or `--out`).
    Export {
        #[command(flatten)]
        target: ops::Target,
        /// The file to write.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Re-create the completed records of an export (stdin, or `--in`); a file that does not
    /// exist becomes a new store.
    Import {
        #[command(flatten)]
        target: ops::Target,
        /// The export to read.
        #[arg(long = "in", value_name = "FILE")]
        input: Option<PathBuf>,
    },
    /// Remove every expired record now.
    Compact(ops::Target),
    /// Check every page checksum and that records, responses and the expiry index agree.
    Check(ops::Target),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The store turns a panic of its storage engine on a damaged page into an error; the
    // default hook would still print it, with a backtrace. Keep the last message instead, and
    // report a panic that does reach `main` as one line.
    let serving = matches!(cli.command, Command::Serve(_));
    std::panic::set_hook(Box::new(move |info| {
        let text = info.to_string().replace(['\n', '\r'], " ");
        if serving {
            tracing::error!(panic = %text, "a task panicked");
        }
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = Some(text);
        }
    }));
    match std::panic::catch_unwind(move || run(cli)) {
        Ok(code) => code,
        Err(_) => {
            let last = LAST_PANIC
                .lock()
                .ok()
                .and_then(|mut l| l.take())
                .unwrap_or_default();
            fail(&format!("internal error: {last}"));
            ExitCode::from(2)
        }
    }
}

static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => {
            return match serve::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&ops::chain(&*e)),
            };
        }
        Command::Demo { db } => {
            return match demo::run(&db.to_string_lossy()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&ops::chain(&*e)),
            };
        }
        Command::Call(args) => return call::run(args),
        Command::Stats {
            target,
            watch,
            interval_ms,
            count,
        } => {
            if watch {
                ops::watch(&target, Duration::from_millis(interval_ms), count)
            } else {
                ops::stats(&target)
            }
        }
        Command::List {
            target,
            filters,
            limit,
        } => ops::list(&target, &filters, limit),
        Command::Get { target, scope, key } => ops::get(&target, &scope, &key),
        Command::Purge {
            target,
            filters,
            key,
            dry_run,
            all,
            limit,
        } => match (&filters.scope, key) {
            (Some(scope), Some(key)) => ops::purge(&target, scope, &key),
            _ => ops::purge_matching(&target, &filters, limit, dry_run, all),
        },
        Command::Release {
            target,
            scope,
            key,
            not_applied,
        } => ops::release(&target, &scope, &key, not_applied),
        Command::Export { target, out } => ops::export(&target, out.as_deref()),
        Command::Import { target, input } => ops::import(&target, input.as_deref()),
        Command::Compact(t) => ops::compact(&t),
        Command::Check(t) => ops::check(&t),
    };
    match result {
        Ok(out) => {
            if !out.text.is_empty()
                && let Err(e) = to_stdout(format!("{}\n", out.text).as_bytes())
            {
                return fail(&format!("cannot write to stdout: {e}"));
            }
            if let Some(note) = &out.note {
                eprintln!("idemstore: {}", escape::text(note));
            }
            if out.success {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => fail(&e),
    }
}

/// Writes `bytes` to stdout and flushes them. `Ok(false)` when the reader has gone (a closed
/// pipe: `idemstore list | head`), which is no error worth a message: the reader took what it
/// wanted. Any other failure (a full disk, `> /dev/full`) is an error, since the output (an
/// export kept as a backup, a listing a script reads) would otherwise be lost without a word.
pub(crate) fn to_stdout(bytes: &[u8]) -> std::io::Result<bool> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}

fn fail(msg: &str) -> ExitCode {
    // An error may quote the file's contents (a damaged record's scope, a foreign table's
    // name): it is escaped like everything else printed from the file.
    eprintln!(
        "idemstore: {}",
        escape::text(&msg.replace(['\n', '\r'], " "))
    );
    ExitCode::FAILURE
}
