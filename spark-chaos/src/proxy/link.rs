//! The proxied connections: each one's two directions, and the toxics
//! applied to them.
//!
//! A proxy's toxics live in a `watch` channel that every connection
//! subscribes to, which is how a toxic reaches connections already open.
//! The connections a listener accepted are tasks in its `JoinSet`, so
//! stopping the listener stops them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::proxy::{ConnectionCounts, Toxic, ToxicKind, ToxicStream};

/// How long a new connection waits for its upstream.
const CONNECT_WAIT: Duration = Duration::from_secs(5);
/// The largest chunk read at once; latency applies per chunk.
const CHUNK: usize = 32 * 1024;
/// Chunks read ahead of the writer per direction. Enough that a delayed
/// chunk does not stop the next ones being read (and timestamped), few
/// enough that a stalled direction pushes back on its sender.
const CHUNKS_AHEAD: usize = 64;

/// A toxic as a proxy holds it.
#[derive(Debug, Clone)]
pub(super) struct ToxicDef {
    /// New on every add and update.
    pub(super) id: u64,
    /// When it was added or last updated: its timers and byte counts start
    /// from here for connections that were already open.
    pub(super) since: Instant,
    /// Its definition; the name is always set.
    pub(super) toxic: Toxic,
}

/// A proxy's connection counts, shared by its connections.
#[derive(Debug, Default)]
pub(super) struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    reset: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> ConnectionCounts {
        ConnectionCounts {
            accepted: self.accepted.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
            reset: self.reset.load(Ordering::Relaxed),
        }
    }
}

/// What every connection of a proxy needs.
#[derive(Debug, Clone)]
pub(super) struct LinkConfig {
    /// The upstream's addresses, all loopback, tried in order.
    pub(super) upstream: Arc<[SocketAddr]>,
    /// The proxy's toxics, as they change.
    pub(super) toxics: watch::Receiver<Arc<Vec<ToxicDef>>>,
    /// The proxy's counters.
    pub(super) counters: Arc<Counters>,
}

/// Accepts connections and carries each in a task of its own until told
/// to stop; then closes the listener and every connection and returns.
pub(super) async fn accept_loop(listener: TcpListener, config: LinkConfig, mut stop: oneshot::Receiver<()>) {
    let mut links = JoinSet::new();
    loop {
        tokio::select! {
            // A send or a dropped sender both mean stop.
            _ = &mut stop => break,
            Some(_) = links.join_next(), if !links.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    config.counters.accepted.fetch_add(1, Ordering::Relaxed);
                    links.spawn(link(client, config.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: back off rather
                    // than spin on accept.
                    tracing::warn!(error = %e, "fault proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    links.shutdown().await;
}

/// Counts a connection as open for as long as its task lives, aborts
/// included.
struct OpenGuard(Arc<Counters>);

impl OpenGuard {
    fn new(counters: &Arc<Counters>) -> OpenGuard {
        counters.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(Arc::clone(counters))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a direction, or the whole connection, ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The sender finished and the end of stream was passed on.
    Eof,
    /// Close both sides (a toxic, or an error).
    Close,
    /// Reset both sides: a `reset_peer` toxic fired.
    Reset,
    /// A side reset us: reset the other side too, as it would see
    /// without the proxy.
    PeerReset,
}

/// A connection's toxicity draws, by toxic id.
#[derive(Debug, Default)]
struct Draws(Mutex<HashMap<u64, bool>>);

impl Draws {
    /// Whether `toxic` applies to this connection, drawn the first time it
    /// is asked.
    fn applies(&self, toxic: &ToxicDef) -> bool {
        let mut draws = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *draws.entry(toxic.id).or_insert_with(|| fastrand::f32() < toxic.toxic.toxicity)
    }
}

/// A connection's view of its proxy's toxics.
struct Link {
    accepted: Instant,
    draws: Draws,
}

impl Link {
    /// The toxics in `toxics` that apply to this connection in `stream`
    /// (any stream when `None`), in order.
    fn active<'a>(
        &'a self,
        toxics: &'a [ToxicDef],
        stream: Option<ToxicStream>,
    ) -> impl Iterator<Item = &'a ToxicDef> + 'a {
        toxics.iter().filter(move |t| stream.is_none_or(|s| t.toxic.stream == s) && self.draws.applies(t))
    }

    /// When `toxic` started acting on this connection.
    fn start_of(&self, toxic: &ToxicDef) -> Instant {
        self.accepted.max(toxic.since)
    }
}

/// Waits for the next change to the toxics; never returns when the proxy
/// is gone (its connections are being stopped anyway).
async fn changed(toxics: &mut watch::Receiver<Arc<Vec<ToxicDef>>>) {
    if toxics.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Carries one client connection: connects to the upstream, carries both
/// directions, and closes (or resets) both sides once both directions have
/// ended, or as soon as an error or a toxic ends the connection.
async fn link(client: TcpStream, config: LinkConfig) {
    let _open = OpenGuard::new(&config.counters);
    let upstream = match tokio::time::timeout(CONNECT_WAIT, TcpStream::connect(&config.upstream[..])).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "fault proxy cannot reach its upstream; closing the client");
            return;
        }
        Err(_) => {
            tracing::debug!("fault proxy upstream did not answer within 5 s; closing the client");
            return;
        }
    };
    // The proxy adds delay only through its toxics, not through Nagle.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let link = Link { accepted: Instant::now(), draws: Draws::default() };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let end = {
        let up = pump(&mut client_read, &mut upstream_write, ToxicStream::Upstream, &link, config.toxics.clone());
        let down = pump(&mut upstream_read, &mut client_write, ToxicStream::Downstream, &link, config.toxics.clone());
        let timer = close_timer(&link, config.toxics.clone());
        tokio::pin!(up, down, timer);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            let end = tokio::select! {
                end = &mut up, if !up_done => { up_done = true; end }
                end = &mut down, if !down_done => { down_done = true; end }
                end = &mut timer => end,
            };
            if end != End::Eof {
                break end;
            }
            if up_done && down_done {
                break End::Eof;
            }
        }
    };
    if matches!(end, End::Reset | End::PeerReset) {
        if end == End::Reset {
            config.counters.reset.fetch_add(1, Ordering::Relaxed);
        }
        // A zero linger makes the close below send RST instead of FIN.
        let _ = client_read.as_ref().set_zero_linger();
        let _ = upstream_read.as_ref().set_zero_linger();
    }
    // Both halves of both sockets drop here, which closes them.
}

/// A chunk read from one side, stamped when it was read.
struct Chunk {
    read_at: Instant,
    data: Vec<u8>,
}

/// Carries one direction: a reader that stamps chunks and a writer that
/// applies the toxics, joined by a bounded channel so that a chunk held
/// back by latency does not stop the next ones being read.
async fn pump(
    src: &mut OwnedReadHalf,
    dst: &mut OwnedWriteHalf,
    stream: ToxicStream,
    link: &Link,
    toxics: watch::Receiver<Arc<Vec<ToxicDef>>>,
) -> End {
    let (tx, rx) = mpsc::channel::<Chunk>(CHUNKS_AHEAD);
    let reader = async move {
        let mut buf = vec![0; CHUNK];
        loop {
            match src.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    // Copied out at its size: a queue of small chunks should
                    // not hold a full buffer each.
                    let data = buf[..n].to_vec();
                    if tx.send(Chunk { read_at: Instant::now(), data }).await.is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return End::PeerReset,
                Err(_) => return End::Close,
            }
        }
        // End of stream: `tx` is dropped, and the writer finishes what is
        // queued and passes the end on; it decides when this direction ends.
        drop(tx);
        std::future::pending().await
    };
    let writer = write_side(rx, dst, stream, link, toxics);
    tokio::select! {
        end = reader => end,
        end = writer => end,
    }
}

/// The writing half of a direction: applies the toxics to each chunk, in
/// order, and writes what passes.
async fn write_side(
    mut rx: mpsc::Receiver<Chunk>,
    dst: &mut OwnedWriteHalf,
    stream: ToxicStream,
    link: &Link,
    mut toxics: watch::Receiver<Arc<Vec<ToxicDef>>>,
) -> End {
    // Bytes passed per limit_data toxic since it reached this connection.
    let mut sent: HashMap<u64, u64> = HashMap::new();
    while let Some(chunk) = rx.recv().await {
        // Latency: hold the chunk until its read time plus the delay,
        // looked at again whenever the toxics change, so that a toxic
        // added now delays it and one removed releases it.
        loop {
            let now = toxics.borrow_and_update().clone();
            let delay = link.active(&now, Some(stream)).fold(Duration::ZERO, |sum, t| match t.toxic.kind {
                ToxicKind::Latency { latency_ms, jitter_ms } => sum + jittered(latency_ms, jitter_ms),
                _ => sum,
            });
            let due = chunk.read_at + delay;
            if due <= Instant::now() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep_until(due) => break,
                () = changed(&mut toxics) => {}
            }
        }
        let now = toxics.borrow_and_update().clone();
        let mut data = &chunk.data[..];
        let mut limit_reached = false;
        let mut dropped = false;
        for toxic in link.active(&now, Some(stream)) {
            match toxic.toxic.kind {
                ToxicKind::Timeout { .. } => dropped = true,
                ToxicKind::ResetPeer { timeout_ms } => {
                    // As in Toxiproxy: the chunk that meets the toxic is
                    // dropped, and the reset follows after the timeout.
                    tokio::time::sleep(Duration::from_millis(timeout_ms)).await;
                    return End::Reset;
                }
                ToxicKind::LimitData { bytes } => {
                    let so_far = sent.get(&toxic.id).copied().unwrap_or(0);
                    let room = usize::try_from(bytes.saturating_sub(so_far)).unwrap_or(usize::MAX);
                    if room <= data.len() {
                        data = &data[..room];
                        limit_reached = true;
                    }
                }
                ToxicKind::Latency { .. } => {}
            }
        }
        if dropped {
            continue;
        }
        if !data.is_empty() && dst.write_all(data).await.is_err() {
            return End::Close;
        }
        for toxic in link.active(&now, Some(stream)) {
            if matches!(toxic.toxic.kind, ToxicKind::LimitData { .. }) {
                *sent.entry(toxic.id).or_insert(0) += data.len() as u64;
            }
        }
        if limit_reached {
            return End::Close;
        }
    }
    // The sender is done: pass the end of stream on and let the other
    // direction finish.
    let _ = dst.shutdown().await;
    End::Eof
}

/// `latency_ms` ± up to `jitter_ms`, drawn uniformly, never below zero.
fn jittered(latency_ms: u64, jitter_ms: u64) -> Duration {
    let ms = if jitter_ms == 0 {
        latency_ms
    } else {
        let offset = fastrand::u64(0..=jitter_ms.saturating_mul(2));
        latency_ms.saturating_add(offset).saturating_sub(jitter_ms)
    };
    Duration::from_millis(ms)
}

/// Closes the connection when a `timeout` toxic with a timeout runs out,
/// counted from when the toxic reached the connection.
async fn close_timer(link: &Link, mut toxics: watch::Receiver<Arc<Vec<ToxicDef>>>) -> End {
    loop {
        let now = toxics.borrow_and_update().clone();
        let due = link
            .active(&now, None)
            .filter_map(|t| match t.toxic.kind {
                ToxicKind::Timeout { timeout_ms } if timeout_ms > 0 => {
                    Some(link.start_of(t) + Duration::from_millis(timeout_ms))
                }
                _ => None,
            })
            .min();
        let Some(due) = due else {
            changed(&mut toxics).await;
            continue;
        };
        tokio::select! {
            () = tokio::time::sleep_until(due) => return End::Close,
            () = changed(&mut toxics) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::jittered;

    #[test]
    fn jitter_stays_in_bounds() {
        assert_eq!(jittered(200, 0), Duration::from_millis(200));
        for _ in 0..1000 {
            let d = jittered(100, 30);
            assert!((Duration::from_millis(70)..=Duration::from_millis(130)).contains(&d), "{d:?}");
            assert!(jittered(10, 50) <= Duration::from_millis(60));
        }
    }
}
