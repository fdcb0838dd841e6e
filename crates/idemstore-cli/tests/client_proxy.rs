//! A fault-injecting TCP proxy on loopback, for the client's tests: per connection it
//! forwards, drops the answer (the request reaches the server, which does the work, and the
//! connection is closed before the answer comes back), resets the connection before the
//! request reaches the server, abandons it while the server works (closes at once after
//! forwarding it), delays the answer, or stalls it (holds it until the client gives up). Faults come from a script, one per connection in order, so a run is the same
//! every time: what differs between runs is timing, never which fault a connection gets.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Pass everything through.
    Forward,
    /// Forward the request, wait for the first bytes of the answer (the server has done the
    /// work and stored its response by then), and close the client's connection without
    /// sending them.
    DropAnswer,
    /// Read the request and reset the connection (RST) without forwarding it.
    Reset,
    /// Forward the request and close the client's connection at once, while the server may
    /// still be working on it: a retry can arrive while the first attempt runs.
    Abandon,
    /// Forward the request, hold the answer for this long, then pass everything through.
    Delay(Duration),
    /// Forward the request and never send the answer: hold the connection until the client
    /// closes it.
    Stall,
}

/// A running proxy: its address, and the faults it applied so far, in connection order.
pub struct Proxy {
    pub addr: SocketAddr,
    applied: Arc<Mutex<Vec<Fault>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// The faults applied, one per accepted connection.
    pub fn applied(&self) -> Vec<Fault> {
        self.applied.lock().unwrap().clone()
    }
}

/// A script of `n` faults drawn from `seed` (SplitMix64), with roughly two connections in
/// five forwarded and the rest spread over the four faults; `stall` (the slow one: it costs
/// the client an attempt timeout) is drawn one time in twenty.
pub fn seeded_script(seed: u64, n: usize) -> Vec<Fault> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..n)
        .map(|_| match next() % 20 {
            0..=7 => Fault::Forward,
            8..=11 => Fault::DropAnswer,
            12..=15 => Fault::Reset,
            16..=18 => Fault::Delay(Duration::from_millis(30)),
            _ => Fault::Stall,
        })
        .collect()
}

/// Starts a proxy to `upstream` that applies `script` to its connections in order, then
/// forwards every connection after the script's end.
pub async fn start(upstream: SocketAddr, script: Vec<Fault>) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let applied = Arc::new(Mutex::new(Vec::new()));
    let log = applied.clone();
    let task = tokio::spawn(async move {
        let mut script = script.into_iter();
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let fault = script.next().unwrap_or(Fault::Forward);
            log.lock().unwrap().push(fault);
            tokio::spawn(async move {
                let _ = connection(client, upstream, fault).await;
            });
        }
    });
    Proxy {
        addr,
        applied,
        task,
    }
}

async fn connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    fault: Fault,
) -> std::io::Result<()> {
    if fault == Fault::Forward {
        let mut server = TcpStream::connect(upstream).await?;
        tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        return Ok(());
    }
    let Some(request) = read_request(&mut client).await? else {
        return Ok(());
    };
    if fault == Fault::Reset {
        // SO_LINGER 0: close sends RST instead of FIN. (Deprecated because a non-zero linger
        // blocks the thread on drop; a zero one returns at once.)
        #[allow(deprecated)]
        client.set_linger(Some(Duration::ZERO))?;
        drop(client);
        return Ok(());
    }
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&request).await?;
    if fault == Fault::Abandon {
        drop(client);
        // Keep the server's side open until it answers, so the request is not cut short.
        let mut sink = [0u8; 1024];
        let _ = server.read(&mut sink).await;
        return Ok(());
    }
    let mut first = vec![0u8; 64 * 1024];
    let n = server.read(&mut first).await?;
    match fault {
        Fault::DropAnswer => Ok(()),
        Fault::Stall => {
            // Hold the connection until the client closes it (its attempt timed out).
            let mut sink = [0u8; 1024];
            while client.read(&mut sink).await? > 0 {}
            Ok(())
        }
        Fault::Delay(by) => {
            tokio::time::sleep(by).await;
            client.write_all(&first[..n]).await?;
            tokio::io::copy_bidirectional(&mut client, &mut server).await?;
            Ok(())
        }
        Fault::Forward | Fault::Reset | Fault::Abandon => Ok(()),
    }
}

/// One whole HTTP/1.1 request (its head, and a body of `content-length` bytes), or `None`
/// if the client closed first.
async fn read_request(client: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(buf))
}
