//! The operator commands' client of a running service's admin interface (`--admin ADDR`).
//!
//! Why: while a service holds its store file, the operator commands cannot open it; they ask
//! the service's admin interface (`idemstore::admin`) instead, and print its answers as they
//! print a file's. Invariants: one request a connection, on a runtime of the command's own;
//! an address is `HOST:PORT` (optionally `http://HOST:PORT`) or `unix:PATH`; an answer that
//! is not a success becomes one error line naming the interface and the reason it gave; and
//! the whole exchange (connecting, sending, the answer's head and body) has a deadline, so a
//! listener that accepts and never answers (a wrong address, a stuck service) ends the command
//! with an error instead of hanging it.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a whole exchange may take by default: a request that reads or changes a few
/// records (a `stats` or a bulk `purge` reads every record, still well within it).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The default for an export or an import, which move every record (up to
/// `admin::MAX_IMPORT_BYTES` in one import).
pub(crate) const BULK_TIMEOUT: Duration = Duration::from_secs(600);

/// An admin interface to ask, and how long an exchange with it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Admin {
    pub(crate) addr: Address,
    /// `None`: [`DEFAULT_TIMEOUT`], or [`BULK_TIMEOUT`] for an export or an import.
    pub(crate) timeout: Option<Duration>,
}

impl Admin {
    /// The deadline of a request to `path`.
    fn timeout(&self, path: &str) -> Duration {
        self.timeout.unwrap_or_else(|| {
            if path.starts_with("/v1/export") || path.starts_with("/v1/import") {
                BULK_TIMEOUT
            } else {
                DEFAULT_TIMEOUT
            }
        })
    }
}

impl std::fmt::Display for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// Where an admin interface listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Address {
    /// `HOST:PORT`.
    Tcp(String),
    /// `unix:PATH`: a Unix domain socket.
    Unix(std::path::PathBuf),
}

impl Address {
    /// Reads `HOST:PORT`, `http://HOST:PORT[/]` or `unix:PATH`.
    pub(crate) fn parse(addr: &str) -> Result<Address, String> {
        if let Some(path) = addr.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("--admin unix: needs a socket path".into());
            }
            return Ok(Address::Unix(path.into()));
        }
        let hostport = addr.strip_prefix("http://").unwrap_or(addr);
        let hostport = hostport.trim_end_matches('/');
        if hostport.is_empty() || hostport.contains('/') || !hostport.contains(':') {
            return Err(format!(
                "bad --admin address \"{addr}\": give HOST:PORT or unix:PATH"
            ));
        }
        Ok(Address::Tcp(hostport.to_owned()))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "http://{a}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// An answer of the admin interface.
pub(crate) enum Reply {
    /// `200`, with its body.
    Ok(Vec<u8>),
    /// Anything else, with the error's code and message.
    Refused {
        status: u16,
        code: String,
        message: String,
    },
}

/// Sends one request (`path` with its query string) and reads the whole answer, within the
/// interface's deadline.
pub(crate) fn call(
    admin: &Admin,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<Reply, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let addr = &admin.addr;
    let unreachable = |e: String| format!("cannot reach the admin interface at {addr}: {e}");
    let timeout = admin.timeout(path);
    runtime
        .block_on(async {
            tokio::time::timeout(timeout, exchange(addr, method, path, body))
                .await
                .map_err(|_| {
                    format!(
                        "no whole answer within {} s (--timeout-secs sets the limit)",
                        timeout.as_secs_f64()
                    )
                })?
        })
        .map_err(unreachable)
}

async fn exchange(
    addr: &Address,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<Reply, String> {
    let connect = async {
        match addr {
            Address::Tcp(a) => tokio::net::TcpStream::connect(a.as_str())
                .await
                .map(|s| Box::new(TokioIo::new(s)) as Box<dyn Io>),
            #[cfg(unix)]
            Address::Unix(p) => tokio::net::UnixStream::connect(p)
                .await
                .map(|s| Box::new(TokioIo::new(s)) as Box<dyn Io>),
            #[cfg(not(unix))]
            Address::Unix(_) => Err(std::io::Error::other("Unix sockets are not available here")),
        }
    };
    let io = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| "connecting timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "localhost")
        .header(idemstore::admin::ADMIN_HEADER, "1")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    driver.abort();
    if status == 200 {
        return Ok(Reply::Ok(bytes));
    }
    let error: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let field = |f: &str| {
        error["error"][f]
            .as_str()
            .map_or_else(|| format!("status {status}"), str::to_owned)
    };
    Ok(Reply::Refused {
        status,
        code: field("code"),
        message: field("message"),
    })
}

/// What a connection is: a TCP or a Unix stream, for hyper.
trait Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send {}

impl<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send> Io for T {}

/// A request whose answer must be a JSON success; a refusal is an error line.
pub(crate) fn json(
    addr: &Admin,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<Value, String> {
    match call(addr, method, path, body)? {
        Reply::Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            format!("the admin interface at {addr} answered something else than JSON: {e}")
        }),
        Reply::Refused { code, message, .. } => {
            Err(format!("the admin interface at {addr}: {message} ({code})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("127.0.0.1:9100"),
            Ok(Address::Tcp("127.0.0.1:9100".into()))
        );
        assert_eq!(
            Address::parse("http://[::1]:9100/"),
            Ok(Address::Tcp("[::1]:9100".into()))
        );
        assert_eq!(
            Address::parse("unix:/run/idem.sock"),
            Ok(Address::Unix("/run/idem.sock".into()))
        );
        assert!(Address::parse("unix:").is_err());
        assert!(Address::parse("localhost").is_err());
        assert!(Address::parse("http://h:1/admin").is_err());
    }
}
