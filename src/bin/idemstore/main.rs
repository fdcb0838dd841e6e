//! `idemstore`: the bookings demo service, the store walkthrough, and the operator tool.
//!
//! * `idemstore serve [--db PATH] [--addr ADDR] [--handler-delay-ms N]` serves the bookings
//!   API of the README behind the idempotency layer;
//! * `idemstore demo [--db PATH]` walks through the store's answers without HTTP;
//! * `idemstore stats|list|get|purge|compact|check [--db PATH] [--json]` inspect and maintain a
//!   store file.
//!
//! Every failure is one line on stderr and a non-zero exit status.

mod bookings;
mod demo;
mod escape;
mod ops;
mod serve;
mod server;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Count the records in a store file.
    Stats(ops::Target),
    /// List live records.
    List {
        #[command(flatten)]
        target: ops::Target,
        /// Only this scope's records.
        #[arg(long)]
        scope: Option<String>,
        /// Only the records in this state.
        #[arg(long, value_enum)]
        state: Option<ops::StateArg>,
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
    /// Remove one record, whatever its state (exit status 1 if there was none).
    Purge {
        #[command(flatten)]
        target: ops::Target,
        /// The record's scope.
        #[arg(long)]
        scope: String,
        /// The record's key.
        #[arg(long)]
        key: String,
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
        Command::Stats(t) => ops::stats(&t),
        Command::List {
            target,
            scope,
            state,
            limit,
        } => ops::list(&target, scope.as_deref(), state, limit),
        Command::Get { target, scope, key } => ops::get(&target, &scope, &key),
        Command::Purge { target, scope, key } => ops::purge(&target, &scope, &key),
        Command::Compact(t) => ops::compact(&t),
        Command::Check(t) => ops::check(&t),
    };
    match result {
        Ok(out) => {
            // A closed stdout (`idemstore list | head`) is not an error worth a message.
            let _ = writeln!(std::io::stdout(), "{}", out.text);
            if out.success {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => fail(&e),
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
