//! A fault-injecting TCP proxy: one per network link of the test cluster
//! (client→master, master→slave, slave→master), the way etcd's robustness
//! tests inject network faults without `tc netem` or root.
//!
//! A member is pointed at the proxy instead of its peer (a slave's
//! `--advertise`, its `--master`/`--backup`, a client's endpoints, a master's
//! `--advertise` for the leader hints it gives). The proxy forwards bytes
//! both ways in [`Mode::Pass`], and can be switched at runtime to:
//! - [`Mode::Blackhole`]: connections are accepted but nothing is forwarded
//!   in either direction (bytes stay queued, as TCP would keep retransmitting
//!   them) until the mode changes: a partition;
//! - [`Mode::Delay`]: every chunk is forwarded that much later (order kept);
//! - [`Mode::Drop`]: every connection, open or new, is closed (FIN);
//! - [`Mode::Reset`]: every connection, open or new, is reset (RST).
//!
//! Every task of a proxy ends when it is [`stop`](Proxy::stop)ped or dropped.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long the proxy waits to connect to its target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest chunk read at once.
const CHUNK: usize = 16 * 1024;
/// Chunks queued per direction (backpressure beyond that).
const QUEUE: usize = 64;

/// What a proxy does with its link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Accept, forward nothing, until the mode changes.
    Blackhole,
    /// Forward everything this much later.
    Delay(Duration),
    /// Close every connection (FIN).
    Drop,
    /// Reset every connection (RST).
    Reset,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Pass => write!(f, "pass"),
            Mode::Blackhole => write!(f, "blackhole"),
            Mode::Delay(d) => write!(f, "delay {}ms", d.as_millis()),
            Mode::Drop => write!(f, "drop"),
            Mode::Reset => write!(f, "reset"),
        }
    }
}

/// A running proxy from a loopback port to a target address.
pub struct Proxy {
    /// Name of the link, for reports (`client->master`, …).
    name: String,
    /// Where the proxy listens.
    address: SocketAddr,
    /// Current mode; every connection task watches it.
    mode: watch::Sender<Mode>,
    /// Ends the accept loop and every connection.
    cancel: CancellationToken,
}

impl Proxy {
    /// Starts a proxy on a free 127.0.0.1 port forwarding to `target`.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start(name: &str, target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Pass);
        let cancel = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            target,
            mode.subscribe(),
            cancel.clone(),
        ));
        Ok(Proxy {
            name: name.to_string(),
            address,
            mode,
            cancel,
        })
    }

    /// The address to give members instead of the target's.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The link's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Switches the mode; open connections follow at once.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Stops accepting and closes every connection.
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, target, mode.clone(), cancel.clone()));
            }
            Err(e) => {
                // Out of file descriptors or similar: back off, keep going.
                tracing::debug!(error = %e, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Waits while the mode is `Blackhole`; returns the first other mode.
async fn past_blackhole(mode: &mut watch::Receiver<Mode>) -> Mode {
    loop {
        let current = *mode.borrow_and_update();
        if current != Mode::Blackhole {
            return current;
        }
        if mode.changed().await.is_err() {
            return Mode::Drop;
        }
    }
}

/// Resolves when the mode becomes `Drop` or `Reset`, with that mode.
async fn until_closed(mut mode: watch::Receiver<Mode>) -> Mode {
    loop {
        let current = *mode.borrow_and_update();
        if matches!(current, Mode::Drop | Mode::Reset) {
            return current;
        }
        if mode.changed().await.is_err() {
            return Mode::Drop;
        }
    }
}

/// Closes `stream`: gracefully, or with a RST for [`Mode::Reset`].
fn close(stream: &TcpStream, mode: Mode) {
    if mode == Mode::Reset {
        let _ = stream.set_zero_linger();
    }
}

async fn connection(
    client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    cancel: CancellationToken,
) {
    // A connection that arrives during a blackhole waits, as a SYN would be
    // retransmitted; once the mode changes it proceeds or is closed.
    let first = tokio::select! {
        _ = cancel.cancelled() => return,
        m = past_blackhole(&mut mode) => m,
    };
    if matches!(first, Mode::Drop | Mode::Reset) {
        close(&client, first);
        return;
    }
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        // The target is down: refuse the way a closed port does.
        _ => {
            close(&client, Mode::Reset);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let outcome = tokio::select! {
        _ = cancel.cancelled() => Mode::Drop,
        m = until_closed(mode.clone()) => m,
        _ = async {
            tokio::join!(
                pump(&mut client_read, &mut upstream_write, mode.clone()),
                pump(&mut upstream_read, &mut client_write, mode.clone()),
            )
        } => Mode::Pass,
    };
    close(client_read.as_ref(), outcome);
    close(upstream_read.as_ref(), outcome);
    if outcome == Mode::Reset {
        // Dropping a write half would send a FIN first; the socket must go
        // straight to RST when the read half is dropped.
        client_write.forget();
        upstream_write.forget();
    }
}

/// Copies `from` to `to` following the mode, until EOF or an error; then
/// passes the EOF on.
async fn pump(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf, mode: watch::Receiver<Mode>) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(QUEUE);
    let mut read_mode = mode.clone();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let current = past_blackhole(&mut read_mode).await;
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let delay = match current {
                Mode::Delay(d) => d,
                _ => Duration::ZERO,
            };
            let chunk = Bytes::copy_from_slice(&buf[..n]);
            if tx.send((Instant::now() + delay, chunk)).await.is_err() {
                break;
            }
        }
    };
    let mut write_mode = mode;
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            past_blackhole(&mut write_mode).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    /// An echo server; returns its address.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        address
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    }

    async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("proxy test took too long")
    }

    #[tokio::test]
    async fn passes_bytes_both_ways() {
        bounded(async {
            let proxy = Proxy::start("t", echo().await).await.unwrap();
            let mut s = TcpStream::connect(proxy.address()).await.unwrap();
            assert_eq!(roundtrip(&mut s, b"hello").await.unwrap(), b"hello");
            assert_eq!(proxy.mode(), Mode::Pass);
        })
        .await
    }

    #[tokio::test]
    async fn delay_adds_latency_each_way() {
        bounded(async {
            let proxy = Proxy::start("t", echo().await).await.unwrap();
            proxy.set(Mode::Delay(Duration::from_millis(150)));
            let mut s = TcpStream::connect(proxy.address()).await.unwrap();
            let started = std::time::Instant::now();
            assert_eq!(roundtrip(&mut s, b"x").await.unwrap(), b"x");
            assert!(started.elapsed() >= Duration::from_millis(300));
        })
        .await
    }

    #[tokio::test]
    async fn blackhole_stalls_then_heals() {
        bounded(async {
            let proxy = Proxy::start("t", echo().await).await.unwrap();
            let mut s = TcpStream::connect(proxy.address()).await.unwrap();
            assert_eq!(roundtrip(&mut s, b"a").await.unwrap(), b"a");
            proxy.set(Mode::Blackhole);
            let stalled =
                tokio::time::timeout(Duration::from_millis(300), roundtrip(&mut s, b"b")).await;
            assert!(stalled.is_err(), "bytes crossed a blackhole");
            proxy.set(Mode::Pass);
            // The queued byte arrives once healed.
            let mut buf = [0u8; 1];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"b");
            // New connections during a blackhole wait, then work.
            proxy.set(Mode::Blackhole);
            let mut late = TcpStream::connect(proxy.address()).await.unwrap();
            let stalled =
                tokio::time::timeout(Duration::from_millis(200), roundtrip(&mut late, b"c")).await;
            assert!(stalled.is_err());
            proxy.set(Mode::Pass);
            let mut buf = [0u8; 1];
            late.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"c");
        })
        .await
    }

    #[tokio::test]
    async fn drop_closes_open_and_new_connections() {
        bounded(async {
            let proxy = Proxy::start("t", echo().await).await.unwrap();
            let mut s = TcpStream::connect(proxy.address()).await.unwrap();
            assert_eq!(roundtrip(&mut s, b"a").await.unwrap(), b"a");
            proxy.set(Mode::Drop);
            let mut buf = [0u8; 1];
            assert_eq!(s.read(&mut buf).await.unwrap_or(0), 0, "expected EOF");
            let mut new = TcpStream::connect(proxy.address()).await.unwrap();
            assert_eq!(new.read(&mut buf).await.unwrap_or(0), 0, "expected EOF");
            proxy.set(Mode::Pass);
            let mut s = TcpStream::connect(proxy.address()).await.unwrap();
            assert_eq!(roundtrip(&mut s, b"z").await.unwrap(), b"z");
        })
        .await
    }

    #[tokio::test]
    async fn reset_resets_connections() {
        bounded(async {
            let proxy = Proxy::start("t", echo().await).await.unwrap();
            let mut s = TcpStream::connect(proxy.address()).await.unwrap();
            assert_eq!(roundtrip(&mut s, b"a").await.unwrap(), b"a");
            proxy.set(Mode::Reset);
            let mut buf = [0u8; 1];
            let err = s.read(&mut buf).await.expect_err("expected a reset");
            assert_eq!(err.kind(), ErrorKind::ConnectionReset);
        })
        .await
    }

    #[tokio::test]
    async fn unreachable_target_is_refused_and_stop_ends_the_proxy() {
        bounded(async {
            let closed = {
                let l = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
                l.local_addr().unwrap()
            };
            let proxy = Proxy::start("t", closed).await.unwrap();
            let mut s = TcpStream::connect(proxy.address()).await.unwrap();
            let mut buf = [0u8; 1];
            assert!(matches!(s.read(&mut buf).await, Ok(0) | Err(_)));
            let address = proxy.address();
            proxy.stop();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(TcpStream::connect(address).await.is_err());
        })
        .await
    }
}
