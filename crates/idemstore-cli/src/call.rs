//! `idemstore call`: a curl-like command whose writes are safe to retry, for shell scripts.
//!
//! Why: a script that retries `curl` by hand mints a new key per run or forgets it between
//! runs. This command takes the operation's key from a key journal file (minted and made
//! durable before the first byte is sent, the same key on every attempt and every later run
//! of the same `--op`), retries under the client's policy, prints the response body on
//! stdout and one status line on stderr. Invariant: a run that gives up leaves the operation
//! pending in the journal, so the same command run again resumes with the same key; a
//! conflict, a `400` or a `422` exits non-zero with one line and is not retried.
//! Plain `http://` only: the binary links no TLS stack.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use idemstore::client::{
    JournalConfig, KeyJournal, Operation, RetryError, RetryLayer, RetryPolicy, RetryReport,
};
use tower_layer::Layer;
use tower_service::Service;

use crate::escape;
use crate::ops::chain;

/// The arguments of `idemstore call`.
#[derive(Debug, clap::Args)]
pub(crate) struct CallArgs {
    /// The method: POST, PATCH, PUT or DELETE.
    method: String,
    /// The URL, `http://` only.
    url: String,
    /// The request body (sent as `application/json` unless a `Content-Type` header is given).
    #[arg(long, default_value = "")]
    data: String,
    /// The logical operation: its idempotency key is journaled under this id, so running the
    /// same command again (after a crash, a timeout, a give-up) sends the same key.
    #[arg(long)]
    op: String,
    /// Derive the key from this stable id (a queue message's, a webhook event's) instead of
    /// minting a UUID.
    #[arg(long)]
    key_from: Option<String>,
    /// The key journal file.
    #[arg(long, default_value = "idemstore-journal.redb")]
    journal: PathBuf,
    /// A request header, `Name: value`; may be repeated.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Attempts in all, the first included.
    #[arg(long, default_value_t = 8)]
    max_attempts: u32,
    /// How long the call may take in all, in seconds.
    #[arg(long, default_value_t = 60)]
    deadline_secs: u64,
    /// How long one attempt may take, in seconds.
    #[arg(long, default_value_t = 30)]
    attempt_timeout_secs: u64,
}

/// Runs the call; the exit status is 0 for a final answer below 400, 1 otherwise.
pub(crate) fn run(args: CallArgs) -> ExitCode {
    match call(args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("idemstore call: {}", escape::text(&message));
            ExitCode::FAILURE
        }
    }
}

fn call(args: CallArgs) -> Result<ExitCode, String> {
    let request = request(&args)?;
    let journal = KeyJournal::open(&args.journal, JournalConfig::default())
        .map_err(|e| format!("{}: {}", args.journal.display(), chain(&e)))?;
    if let Some(stable) = &args.key_from {
        journal.key_from(&args.op, stable).map_err(|e| chain(&e))?;
    }
    let policy = RetryPolicy::default()
        .max_attempts(args.max_attempts)
        .deadline(Duration::from_secs(args.deadline_secs))
        .attempt_timeout(Duration::from_secs(args.attempt_timeout_secs));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let answer = runtime.block_on(async {
        // One connection per attempt: a connection the last attempt saw fail is never reused.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http::<Full<Bytes>>();
        let mut service = RetryLayer::new(policy)
            .journal(journal.clone())
            .layer(client);
        std::future::poll_fn(|cx| Service::<Request<Full<Bytes>>>::poll_ready(&mut service, cx))
            .await?;
        service.call(request).await
    });
    // An answer after attempts whose fate is unknown settles the operation only if it is a
    // success or a replay (K4): a `401` or a `404` then leaves it pending.
    let left_pending = journal
        .pending()
        .is_ok_and(|entries| entries.iter().any(|e| e.operation() == args.op));
    let closed = journal.close();
    let code = match answer {
        Ok(response) => {
            let status = response.status();
            let report = response.extensions().get::<RetryReport>().cloned();
            let body = runtime
                .block_on(response.into_body().collect())
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let written = crate::to_stdout(&body);
            let (attempts, replayed) = report.map_or((1, false), |r| (r.attempts, r.replayed));
            let mut line = format!(
                "idemstore call: {} {}, {attempts} attempt{}, {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                if attempts == 1 { "" } else { "s" },
                if replayed { "replayed" } else { "executed" }
            );
            if left_pending {
                line.push_str(&stays_pending(
                    &args,
                    "an earlier attempt may have run, so run the same command again to resume \
                     with its key",
                ));
            }
            if let Err(e) = written {
                // The answer came, so the operation is settled, but the caller never saw its
                // body: a failure, said on the one status line.
                line.push_str(&format!("; its body could not be written to stdout: {e}"));
                eprintln!("{}", escape::text(&line));
                closed.map_err(|e| chain(&e))?;
                return Ok(ExitCode::FAILURE);
            }
            eprintln!("{}", escape::text(&line));
            if status.as_u16() < 400 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            let then = match e {
                RetryError::Exhausted { .. } | RetryError::Deadline { .. } => {
                    "run the same command again to resume with its key"
                }
                RetryError::OutcomeUnknown { .. } => {
                    "the server does not know whether it ran; once someone there has settled \
                     its key, run the same command again to get its answer"
                }
                _ => return Err(chain(&e)),
            };
            return Err(format!("{}{}", chain(&e), stays_pending(&args, then)));
        }
    };
    closed.map_err(|e| chain(&e))?;
    Ok(code)
}

/// The end of a status line whose operation stays pending in the journal: where, and what to
/// do next.
fn stays_pending(args: &CallArgs, then: &str) -> String {
    format!(
        "; operation {} stays pending in {}: {then}",
        args.op,
        args.journal.display()
    )
}

/// The request the arguments describe, with the operation as an extension.
fn request(args: &CallArgs) -> Result<Request<Full<Bytes>>, String> {
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("invalid method {:?}", args.method))?;
    if !args.url.starts_with("http://") {
        return Err(format!(
            "only http:// URLs are supported, not {:?}",
            args.url
        ));
    }
    let mut request = Request::builder()
        .method(method)
        .uri(&args.url)
        .body(Full::new(Bytes::from(args.data.clone())))
        .map_err(|e| format!("invalid URL {:?}: {e}", args.url))?;
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("a header is `Name: value`, not {header:?}"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("invalid header name in {header:?}"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("invalid header value in {header:?}"))?;
        request.headers_mut().append(name, value);
    }
    if !args.data.is_empty() && !request.headers().contains_key(http::header::CONTENT_TYPE) {
        request.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    request
        .extensions_mut()
        .insert(Operation::new(args.op.clone()));
    Ok(request)
}
