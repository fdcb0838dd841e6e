//! Redis servers for the tests: each test starts its own `redis-server` on a Unix socket in a
//! temporary directory, with the settings the engine requires, and kills it when dropped.
//!
//! Where `redis-server` is not installed the Redis tests say so on stderr and pass, unless
//! `IDEMSTORE_REQUIRE_REDIS=1` is set (CI sets it, after installing the server), which makes a
//! missing server a failure.
//!
//! The Valkey tests (a server with `WAITAOF`, which Debian 12's Redis 7.0 lacks) run the
//! `valkey-server` binary that `IDEMSTORE_VALKEY_SERVER` names; without it they say so and
//! pass, unless `IDEMSTORE_REQUIRE_VALKEY=1` is set (CI sets both).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The settings the engine requires (every write in the append-only file before it is
/// answered, no eviction), no snapshots, and quiet logs: every server the tests start.
const SAFE: [&str; 10] = [
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
    "--save",
    "",
    "--maxmemory-policy",
    "noeviction",
    "--loglevel",
    "warning",
];

/// A `redis-server` (or `valkey-server`) child process.
pub struct Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    /// The server's binary.
    program: PathBuf,
}

/// The `valkey-server` binary the Valkey tests run, if `IDEMSTORE_VALKEY_SERVER` names one
/// that starts; panics when one is required and missing.
fn valkey() -> Option<PathBuf> {
    let program = std::env::var_os("IDEMSTORE_VALKEY_SERVER").map(PathBuf::from);
    let found = program.filter(|p| {
        Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("IDEMSTORE_REQUIRE_VALKEY").is_none(),
            "IDEMSTORE_REQUIRE_VALKEY is set but IDEMSTORE_VALKEY_SERVER names no valkey-server \
             that runs"
        );
        eprintln!("IDEMSTORE_VALKEY_SERVER names no valkey-server: skipping this Valkey test");
    }
    found
}

/// Whether the tests can start a server; panics when one is required and missing.
fn available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("IDEMSTORE_REQUIRE_REDIS").is_none(),
            "IDEMSTORE_REQUIRE_REDIS is set but redis-server is not installed"
        );
        eprintln!("redis-server is not installed: skipping this Redis test");
    }
    found
}

impl Server {
    /// A server with `appendonly yes`, `appendfsync always` and `noeviction`, or `None` when
    /// `redis-server` is missing (see the module documentation).
    pub fn start() -> Option<Server> {
        Server::start_with(&[])
    }

    /// [`start`](Server::start) with more `--name value` settings.
    pub fn start_with(extra: &[&str]) -> Option<Server> {
        if !available() {
            return None;
        }
        Some(Server::spawned(PathBuf::from("redis-server"), extra))
    }

    /// A Valkey server (the binary `IDEMSTORE_VALKEY_SERVER` names) with the settings of
    /// [`start`](Server::start) and `extra`, or `None` when there is none (see the module
    /// documentation).
    pub fn start_valkey_with(extra: &[&str]) -> Option<Server> {
        let program = valkey()?;
        Some(Server::spawned(program, extra))
    }

    /// A primary and a replica of it on loopback, linked, started by `start` (`start_with`,
    /// or `start_valkey_with`); `None` where the binary is missing.
    pub fn replicated(start: fn(&[&str]) -> Option<Server>) -> Option<(Server, Server)> {
        let port = Server::free_port().to_string();
        let primary = start(&["--port", &port, "--repl-diskless-sync-delay", "0"])?;
        let replica = start(&["--replicaof", "127.0.0.1", &port])?;
        replica.wait_for_replication("master_link_status:up");
        primary.wait_for_replication("state=online");
        Some((primary, replica))
    }

    fn spawned(program: PathBuf, extra: &[&str]) -> Server {
        let mut server = Server {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            program,
        };
        server.spawn();
        server
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Makes the server require `password` and returns a URL that carries it. Set once the
    /// server runs: the readiness check speaks without a password.
    pub fn require_password(&self, password: &str) -> String {
        assert!(
            self.command(&["CONFIG", "SET", "requirepass", password])
                .starts_with("+OK")
        );
        format!("{}?pass={password}", self.url())
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new(&self.program)
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(self.dir.path())
            .args(SAFE)
            .args(["--daemonize", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_socket(&self.socket());
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends the server signal `sig` (`-STOP` pauses it, `-CONT` resumes it).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// A free loopback TCP port (for a server that replicas connect to).
    pub fn free_port() -> u16 {
        free_cluster_port()
    }

    /// Waits until `INFO replication` shows `line` (a readiness poll; gives up after 10 s).
    pub fn wait_for_replication(&self, line: &str) {
        let start = Instant::now();
        while !self.command(&["INFO", "replication"]).contains(line) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "replication never showed {line}"
            );
            std::thread::yield_now();
        }
    }

    /// Kills the server with SIGKILL (the append-only file keeps what it acknowledged).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same directory, socket and settings.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs one command on a connection of its own (RESP2, inline), returning the raw reply.
    pub fn command(&self, args: &[&str]) -> String {
        let mut s = UnixStream::connect(self.socket()).unwrap();
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(out.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until the server answers on `socket`.
fn wait_for_socket(socket: &Path) {
    wait_for_pong(&socket.display().to_string(), || {
        UnixStream::connect(socket)
            .ok()
            .map(|s| Box::new(s) as Box<dyn Stream>)
    });
}

/// A connection to a server, whatever its transport.
trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// Waits until a connection that `connect` makes answers `PING` with `+PONG` (a readiness
/// poll of a process the test started, not a timing assumption: it gives up after 10 s).
fn wait_for_pong(name: &str, connect: impl Fn() -> Option<Box<dyn Stream>>) {
    let start = Instant::now();
    loop {
        if let Some(mut s) = connect()
            && s.write_all(b"PING\r\n").is_ok()
        {
            let mut buf = [0u8; 16];
            if s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
            {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "redis-server did not start on {name}"
        );
        std::thread::yield_now();
    }
}

/// A TCP proxy in front of a server's socket that can throw away the server's replies:
/// the server applies a call, and the caller never hears of it.
pub struct LossyProxy {
    pub port: u16,
    /// Replies to drop, counting down: each drop closes the connection it came on.
    pub drop_replies: Arc<AtomicUsize>,
    /// Replies dropped so far.
    pub dropped: Arc<AtomicUsize>,
    /// Runs when a reply is dropped, before its connection is closed (so before the client
    /// can send anything again).
    pub on_drop: Hook,
    stop: Arc<AtomicBool>,
}

/// Something a proxy runs when it drops a reply.
pub type Hook = Arc<std::sync::Mutex<Option<Box<dyn Fn() + Send>>>>;

impl LossyProxy {
    pub fn start(upstream: PathBuf) -> LossyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let drop_replies = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let on_drop: Hook = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (d, n, h, st) = (
            Arc::clone(&drop_replies),
            Arc::clone(&dropped),
            Arc::clone(&on_drop),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = UnixStream::connect(&upstream) else {
                    continue;
                };
                let (c_read, s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump_requests(c_read, s_write));
                let (d, n, h) = (Arc::clone(&d), Arc::clone(&n), Arc::clone(&h));
                std::thread::spawn(move || pump_replies(server, client, d, n, h));
            }
        });
        LossyProxy {
            port,
            drop_replies,
            dropped,
            on_drop,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pump_requests(mut from: TcpStream, mut to: UnixStream) {
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

fn pump_replies(
    mut from: UnixStream,
    mut to: TcpStream,
    drop_replies: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
    on_drop: Hook,
) {
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        let drop_this = drop_replies
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1))
            .is_ok();
        if drop_this {
            dropped.fetch_add(1, Ordering::SeqCst);
            if let Some(hook) = on_drop.lock().unwrap().as_ref() {
                hook();
            }
            break;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// A TCP proxy in front of a server's socket that, once armed, keeps the next bytes a client
/// sends instead of forwarding them and closes that client's side: the engine sees its
/// connection break and sends the calls again on a new one, while the server-side connection
/// stays open, as a connection's bytes can stay in flight or in a proxy.
/// [`release`](HoldProxy::release) delivers them late.
pub struct HoldProxy {
    pub port: u16,
    pub arm: Arc<AtomicBool>,
    held: Arc<std::sync::Mutex<Vec<Held>>>,
}

/// Kept bytes, the server-side connection they were for, and what the server sent on it
/// after its client was gone (`None` until that connection closed).
struct Held {
    upstream: UnixStream,
    bytes: Vec<u8>,
    late: Arc<std::sync::Mutex<(Vec<u8>, bool)>>,
}

impl HoldProxy {
    pub fn start(upstream: PathBuf) -> HoldProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let arm = Arc::new(AtomicBool::new(false));
        let held: Arc<std::sync::Mutex<Vec<Held>>> = Arc::default();
        let (a, h) = (Arc::clone(&arm), Arc::clone(&held));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = UnixStream::connect(&upstream) else {
                    continue;
                };
                // What the server sends once the client is gone, and whether it has closed.
                let late: Arc<std::sync::Mutex<(Vec<u8>, bool)>> = Arc::default();
                let (mut from, mut to, l) = (
                    server.try_clone().unwrap(),
                    client.try_clone().unwrap(),
                    Arc::clone(&late),
                );
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut client_gone = false;
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        client_gone = client_gone || to.write_all(&buf[..n]).is_err();
                        if client_gone {
                            l.lock().unwrap().0.extend_from_slice(&buf[..n]);
                        }
                    }
                    l.lock().unwrap().1 = true;
                });
                let (a, h) = (Arc::clone(&a), Arc::clone(&h));
                let (mut from, mut to) = (client, server);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if a.swap(false, Ordering::SeqCst) {
                            h.lock().unwrap().push(Held {
                                upstream: to.try_clone().unwrap(),
                                bytes: buf[..n].to_vec(),
                                late,
                            });
                            let _ = from.shutdown(Shutdown::Both);
                            return;
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Both);
                });
            }
        });
        HoldProxy { port, arm, held }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// How many sends are held.
    pub fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    /// Delivers every held send on its old server-side connection, and returns what the
    /// server answered to each: `None` if it had closed that connection.
    pub fn release(&self) -> Vec<Option<String>> {
        let mut answers = Vec::new();
        for mut h in self.held.lock().unwrap().drain(..) {
            let _ = h.upstream.write_all(&h.bytes);
            let start = Instant::now();
            let answer = loop {
                let late = h.late.lock().unwrap();
                if !late.0.is_empty() {
                    break Some(String::from_utf8_lossy(&late.0).into_owned());
                }
                if late.1 {
                    break None;
                }
                drop(late);
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "the server neither answered nor closed"
                );
                std::thread::yield_now();
            };
            answers.push(answer);
        }
        answers
    }
}

/// A Redis Cluster of three primaries on loopback TCP ports, each node in its own directory,
/// killed when dropped.
pub struct Cluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

/// Ports handed out by [`free_cluster_port`] in this process, with their bus ports: a port
/// the kernel hands out again for port 0 is never given to two servers of one test run.
static HANDED_OUT: parking_lot::Mutex<BTreeSet<u16>> = parking_lot::Mutex::new(BTreeSet::new());

/// A port that is free, with its cluster bus port (+10000) free too, and neither handed out
/// before in this process.
fn free_cluster_port() -> u16 {
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        let mut handed = HANDED_OUT.lock();
        if (1024..55535).contains(&port)
            && !handed.contains(&port)
            && !handed.contains(&(port + 10000))
            && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok()
        {
            handed.insert(port);
            handed.insert(port + 10000);
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

impl Cluster {
    /// Three primaries holding every slot, or `None` when `redis-server` is missing.
    pub fn start() -> Option<Cluster> {
        if !available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut ports = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let (port, child) = start_cluster_node(&node_dir);
            ports.push(port);
            nodes.push(child);
        }
        let cluster = Cluster {
            nodes,
            ports,
            _dir: dir,
        };
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for &port in &cluster.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_until_ok();
        Some(cluster)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }

    /// Runs `redis-cli -p <port of node i>` with `args`; returns its standard output.
    pub fn cli(&self, node: usize, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.ports[node].to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Moves `slots` slots from node `from` to node `to` with `redis-cli --cluster reshard`.
    pub fn reshard(&self, from: usize, to: usize, slots: u32) {
        let id = |i: usize| self.cli(i, &["cluster", "myid"]).trim().to_owned();
        let out = Command::new("redis-cli")
            .args([
                "--cluster",
                "reshard",
                &format!("127.0.0.1:{}", self.ports[0]),
            ])
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "reshard: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The node whose keys include some in `slot`.
    pub fn holder_of(&self, slot: u16) -> Option<usize> {
        let s = slot.to_string();
        (0..self.ports.len()).find(|&i| {
            self.cli(i, &["cluster", "countkeysinslot", &s])
                .trim()
                .parse::<u64>()
                .is_ok_and(|n| n > 0)
        })
    }

    /// The slot of `key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        self.cli(0, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .unwrap()
    }

    /// Starts moving `slot` from node `from` to node `to` as a reshard does: the slot is
    /// importing on `to` and migrating on `from`, and its keys are moved, so that `from`
    /// answers `ASK` for them; [`finish_move`](Cluster::finish_move) ends the move.
    pub fn start_move(&self, slot: u16, from: usize, to: usize) {
        let s = slot.to_string();
        let ok = |out: String| assert!(out.contains("OK"), "{out}");
        ok(self.cli(to, &["cluster", "setslot", &s, "importing", &self.id(from)]));
        ok(self.cli(from, &["cluster", "setslot", &s, "migrating", &self.id(to)]));
        let keys = self.cli(from, &["cluster", "getkeysinslot", &s, "1000"]);
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if !keys.is_empty() {
            let port = self.ports[to].to_string();
            let mut migrate = vec!["migrate", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            migrate.extend(keys);
            ok(self.cli(from, &migrate));
        }
    }

    /// Gives `slot` to node `to` on every node (it first), ending a move: the other nodes
    /// answer `MOVED` for it from then on.
    pub fn finish_move(&self, slot: u16, to: usize) {
        let (s, id) = (slot.to_string(), self.id(to));
        let others = (0..self.ports.len()).filter(|&i| i != to);
        for node in std::iter::once(to).chain(others) {
            let out = self.cli(node, &["cluster", "setslot", &s, "node", &id]);
            assert!(out.contains("OK"), "{out}");
        }
    }

    /// Node `i`'s id.
    fn id(&self, i: usize) -> String {
        self.cli(i, &["cluster", "myid"]).trim().to_owned()
    }

    /// Waits until every node reports `cluster_state:ok` (a readiness poll; gives up after
    /// 30 s).
    fn wait_until_ok(&self) {
        let start = Instant::now();
        for node in 0..self.ports.len() {
            while !self
                .cli(node, &["cluster", "info"])
                .contains("cluster_state:ok")
            {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "the cluster did not come up"
                );
                std::thread::yield_now();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts a cluster node in `dir` on a free port pair. A free port can be taken
/// by another listener between the check and the server's bind (another test's proxy, a
/// `serve` process), and the server then exits: it is started again on other ports.
fn start_cluster_node(dir: &Path) -> (u16, Child) {
    for _ in 0..20 {
        let port = free_cluster_port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(dir)
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ])
            .args(SAFE)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if answers_on_tcp(&mut child, port) {
            return (port, child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("no cluster node would start");
}

/// Waits until `child` answers on `port`; false if it exits first (its port was taken). The
/// answer must come from `child` (`INFO server` names its process id): another listener that
/// took the port, a proxy in front of another server say, is not waited on past a second.
fn answers_on_tcp(child: &mut Child, port: u16) -> bool {
    let start = Instant::now();
    let own = format!("process_id:{}\r\n", child.id());
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            if s.write_all(b"INFO server\r\n").is_ok() {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    seen.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&seen).contains(&own) {
                        return true;
                    }
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "redis-server did not start on port {port}"
        );
        std::thread::yield_now();
    }
}

/// A TCP relay in front of a server's port, for a replica's link: once `cut` is set, nothing
/// more passes either way (the bytes are read and thrown away), as on a network partition.
pub struct Relay {
    pub port: u16,
    pub cut: Arc<AtomicBool>,
}

impl Relay {
    pub fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let c = Arc::clone(&cut);
        std::thread::spawn(move || {
            for down in listener.incoming() {
                let Ok(down) = down else { continue };
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let pairs = [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ];
                for (mut from, mut to) in pairs {
                    let c = Arc::clone(&c);
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 << 10];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            if !c.load(Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        });
        Relay { port, cut }
    }
}
