//! A userspace TCP relay that holds every chunk for a fixed time before passing it on: packet
//! delay without netem (this kernel has no sch_netem, and nftables cannot delay).
//!
//! nftables NAT rules in a member's namespace (see `delay`) send that member's peer connections
//! to the relay's two listeners; the relay reads where each connection was going
//! (SO_ORIGINAL_DST), connects there itself and copies both ways, each chunk held `delay`
//! after it was read. Chunks are queued, not serialized: a stream keeps its throughput, only
//! its latency grows, as with a longer wire. An end of stream is delayed like data.
//!
//! The relay lives in the member's network namespace: it runs on a thread of its own that
//! entered the namespace (setns only moves the calling thread), with its own single-threaded
//! tokio runtime, so every socket it makes is made there. Stopping it drops the runtime, which
//! closes every relayed connection; their owners reconnect.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span};

use crate::error::ChaosError;
use crate::netns::enter_netns;

/// SO_MARK (asm-generic; the libc crate does not export it for linux-gnu): the relay marks its
/// own upstream connections so the redirect rules let them through instead of looping.
const SO_MARK: libc::c_int = 36;
/// Chunks one direction may hold in flight before the reader waits (back-pressure).
const QUEUED_CHUNKS: usize = 256;
const CHUNK: usize = 16 * 1024;

/// Counters a stopped relay reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub connections: u64,
    pub chunks: u64,
    pub bytes: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    chunks: AtomicU64,
    bytes: AtomicU64,
}

/// Where the relay listens and how it treats its connections.
#[derive(Clone, Copy, Debug)]
pub struct RelaySpec {
    /// Connections the member makes to its peers (redirected in its OUTPUT hook).
    pub outbound: SocketAddrV4,
    /// Connections its peers make to it (redirected in its PREROUTING hook).
    pub inbound: SocketAddrV4,
    /// How long each chunk is held, in each direction.
    pub delay: Duration,
    /// The mark on the relay's own upstream sockets (the rules skip marked traffic).
    pub mark: u32,
}

/// A running relay; `stop` ends it (dropping it ends it too, without the counters).
pub struct DelayRelay {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl DelayRelay {
    /// Starts the relay inside network namespace `netns` (a name under /run/netns); returns
    /// once both listeners are bound there.
    pub async fn start(netns: &str, spec: RelaySpec) -> Result<DelayRelay, ChaosError> {
        let counters = Arc::new(Counters::default());
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), ChaosError>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let ns = netns.to_string();
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name(format!("chaos-relay-{ns}"))
            .spawn(move || serve_in_netns(&ns, spec, thread_counters, ready_tx, stop_rx))
            .map_err(|e| ChaosError::Relay(format!("spawning the relay thread: {e}")))?;
        let mut relay = DelayRelay {
            stop: Some(stop_tx),
            thread: Some(thread),
            counters,
        };
        match ready_rx.await {
            Ok(Ok(())) => Ok(relay),
            Ok(Err(e)) => {
                relay.shutdown();
                Err(e)
            }
            Err(_) => {
                relay.shutdown();
                Err(ChaosError::Relay(
                    "the relay thread ended before it was ready".into(),
                ))
            }
        }
    }

    /// Stops the relay (closing every relayed connection) and reports what it carried.
    pub async fn stop(mut self) -> RelayStats {
        let thread = self.thread.take();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = thread {
            // Joining blocks: do it off the async worker.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        RelayStats {
            connections: self.counters.connections.load(Ordering::Relaxed),
            chunks: self.counters.chunks.load(Ordering::Relaxed),
            bytes: self.counters.bytes.load(Ordering::Relaxed),
        }
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        // Never leave a relay thread behind; the runtime it owns closes its sockets.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The relay thread: enter the namespace, bind, serve until told to stop.
fn serve_in_netns(
    ns: &str,
    spec: RelaySpec,
    counters: Arc<Counters>,
    ready: oneshot::Sender<Result<(), ChaosError>>,
    stop: oneshot::Receiver<()>,
) {
    if let Err(e) = enter_netns(ns) {
        let _ = ready.send(Err(e));
        return;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(ChaosError::Relay(format!("relay runtime: {e}"))));
            return;
        }
    };
    let span = info_span!(
        "delay_relay",
        netns = ns,
        delay_ms = spec.delay.as_millis() as u64
    );
    runtime.block_on(serve(spec, counters, ready, stop).instrument(span));
    // Dropping the runtime here cancels every connection task and closes its sockets.
}

async fn serve(
    spec: RelaySpec,
    counters: Arc<Counters>,
    ready: oneshot::Sender<Result<(), ChaosError>>,
    mut stop: oneshot::Receiver<()>,
) {
    let bind = |addr: SocketAddrV4| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| ChaosError::Relay(format!("binding {addr}: {e}")))
    };
    let (outbound, inbound) = match (bind(spec.outbound).await, bind(spec.inbound).await) {
        (Ok(o), Ok(i)) => (o, i),
        (Err(e), _) | (_, Err(e)) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    loop {
        let (accepted, upstream_mark) = tokio::select! {
            _ = &mut stop => return,
            a = outbound.accept() => (a, Some(spec.mark)),
            // Inbound connections go on to the member itself, which no rule redirects.
            a = inbound.accept() => (a, None),
        };
        let (stream, from) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "relay accept failed");
                continue;
            }
        };
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let counters = counters.clone();
        tokio::spawn(
            async move {
                if let Err(e) = relay_connection(stream, upstream_mark, spec.delay, counters).await
                {
                    debug!(error = %e, "relayed connection ended");
                }
            }
            .instrument(info_span!("relayed", %from)),
        );
    }
}

/// Where a redirected connection was going before NAT sent it here.
fn original_destination(stream: &TcpStream) -> io::Result<SocketAddrV4> {
    // SAFETY: sockaddr_in is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes into `addr`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

fn set_mark(socket: &TcpSocket, mark: u32) -> io::Result<()> {
    // SAFETY: setsockopt(2) reads exactly size_of::<u32>() bytes from `mark`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

async fn relay_connection(
    downstream: TcpStream,
    upstream_mark: Option<u32>,
    delay: Duration,
    counters: Arc<Counters>,
) -> io::Result<()> {
    let target = original_destination(&downstream)?;
    let socket = TcpSocket::new_v4()?;
    if let Some(mark) = upstream_mark {
        set_mark(&socket, mark)?;
    }
    let upstream = tokio::time::timeout(
        Duration::from_secs(3),
        socket.connect(SocketAddr::V4(target)),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting {target}")))??;
    downstream.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let (down_read, down_write) = downstream.into_split();
    let (up_read, up_write) = upstream.into_split();
    // Either direction failing ends both (the halves drop, closing the sockets).
    tokio::try_join!(
        delayed_copy(down_read, up_write, delay, &counters),
        delayed_copy(up_read, down_write, delay, &counters),
    )?;
    Ok(())
}

/// Copies one direction, each chunk (and the end of stream) written `delay` after it was
/// read. Reading goes on while earlier chunks wait, so the delay does not cut throughput.
async fn delayed_copy(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
    counters: &Counters,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(QUEUED_CHUNKS);
    let read = async move {
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let n = from.read(&mut chunk).await?;
            let due = Instant::now() + delay;
            let item = (n > 0).then(|| {
                chunk.truncate(n);
                chunk
            });
            let end = item.is_none();
            if tx.send((due, item)).await.is_err() || end {
                return Ok::<(), io::Error>(());
            }
        }
    };
    let write = async move {
        while let Some((due, item)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            match item {
                Some(chunk) => {
                    to.write_all(&chunk).await?;
                    counters.chunks.fetch_add(1, Ordering::Relaxed);
                    counters
                        .bytes
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                None => {
                    to.shutdown().await?;
                    return Ok::<(), io::Error>(());
                }
            }
        }
        Ok(())
    };
    tokio::try_join!(read, write)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copy holds data for the delay and keeps it in order; no namespace needed.
    #[tokio::test]
    async fn a_delayed_copy_holds_each_chunk_and_keeps_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"hello ").await.expect("write");
            s.write_all(b"world").await.expect("write");
            s.shutdown().await.expect("shutdown");
        });
        let (accepted, _) = listener.accept().await.expect("accept");
        let sink = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let sink_addr = sink.local_addr().expect("addr");
        let out = TcpStream::connect(sink_addr).await.expect("connect");
        let (mut received, _) = sink.accept().await.expect("accept");
        let (read_half, _keep) = accepted.into_split();
        let (_keep2, write_half) = out.into_split();
        let counters = Counters::default();
        let started = Instant::now();
        let delay = Duration::from_millis(60);
        let copy = delayed_copy(read_half, write_half, delay, &counters);
        let mut got = Vec::new();
        let (copied, read) = tokio::join!(copy, received.read_to_end(&mut got));
        copied.expect("copy");
        read.expect("read");
        client.await.expect("client");
        assert_eq!(got, b"hello world");
        assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
        assert_eq!(counters.bytes.load(Ordering::Relaxed), 11);
    }
}
