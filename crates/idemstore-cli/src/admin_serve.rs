//! `idemstore serve --admin ADDR`: the store's admin interface (`idemstore::admin`) on a
//! listener of its own, beside the bookings API.
//!
//! Why: while `serve` holds its store file, the operator commands reach the store through this
//! interface (`idemstore list --admin ADDR`). Invariants: it has no authentication, so it is
//! served only on a loopback address or a Unix socket (made mode 0600; an existing path is
//! refused, never replaced), and any other address is refused before anything is served; it
//! stops when the service stops, before the store is closed, and a Unix socket's file is
//! removed then.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use idemstore::Store;
use idemstore::admin::AdminService;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::remote::Address;

/// How long a request header may take to arrive.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; more wait in the listen backlog, unaccepted.
const MAX_CONNECTIONS: usize = 16;

/// A bound admin listener.
pub(crate) enum Listener {
    Tcp(tokio::net::TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener, PathBuf),
}

/// Binds `addr`: a loopback `IP:PORT` (port 0 picks one) or `unix:PATH`; anything else is
/// refused. Returns the listener and the address to print.
pub(crate) async fn bind(addr: &str) -> Result<(Listener, String), String> {
    match Address::parse(addr)? {
        Address::Tcp(hostport) => {
            let socket: std::net::SocketAddr = hostport.parse().map_err(|_| {
                format!("--admin {addr}: give a loopback IP address and port (127.0.0.1:9100, [::1]:9100) or unix:PATH")
            })?;
            if !socket.ip().is_loopback() {
                return Err(format!(
                    "--admin {addr}: the admin interface has no authentication; bind it to a loopback address or a Unix socket"
                ));
            }
            let listener = tokio::net::TcpListener::bind(socket)
                .await
                .map_err(|e| format!("--admin {addr}: {e}"))?;
            let bound = listener
                .local_addr()
                .map_err(|e| format!("--admin {addr}: {e}"))?;
            Ok((Listener::Tcp(listener), format!("http://{bound}")))
        }
        #[cfg(unix)]
        Address::Unix(path) => {
            if path.exists() {
                return Err(format!(
                    "--admin {addr}: {} exists; remove it first",
                    path.display()
                ));
            }
            let listener = bind_private(&path).map_err(|e| format!("--admin {addr}: {e}"))?;
            Ok((
                Listener::Unix(listener, path.clone()),
                format!("unix:{}", path.display()),
            ))
        }
        #[cfg(not(unix))]
        Address::Unix(_) => Err(format!(
            "--admin {addr}: Unix sockets are not available here"
        )),
    }
}

/// Binds a Unix socket at `path` that nobody but this user can ever connect to: it is bound
/// in a new directory of mode 0700 beside `path`, made mode 0600 there, and only then linked
/// to `path` (a link fails where a file exists, so nothing is replaced), whatever the umask.
#[cfg(unix)]
fn bind_private(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(std::io::Error::other)?;
    let private = parent.join(format!(
        ".idemstore-admin-{}",
        nonce.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("socket");
    let bound = tokio::net::UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::hard_link(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound
}

/// Serves the admin interface of `store` on `listener` until `stop` turns true; then drops
/// the connections still open (an admin request is short, and the store closes next).
pub(crate) async fn run(listener: Listener, store: Store, mut stop: watch::Receiver<bool>) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let http = Arc::new(http);
    let service = AdminService::new(store);
    let mut connections = JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            slot = Arc::clone(&slots).acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = accept(&listener) => accepted,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!(error = %e, "admin interface: accept failed");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let http = Arc::clone(&http);
        let service = TowerToHyperService::new(service.clone());
        connections.spawn(async move {
            if let Err(e) = http.serve_connection(io, service).await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
            drop(slot);
        });
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    #[cfg(unix)]
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
}

/// A connection of either kind, for hyper.
type Io = TokioIo<Box<dyn Stream>>;

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

async fn accept(listener: &Listener) -> std::io::Result<Io> {
    match listener {
        Listener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            Ok(TokioIo::new(Box::new(s) as Box<dyn Stream>))
        }
        #[cfg(unix)]
        Listener::Unix(l, _) => {
            let (s, _) = l.accept().await?;
            Ok(TokioIo::new(Box::new(s) as Box<dyn Stream>))
        }
    }
}
