//! Connection hygiene: our own accept loop over hyper, serving the axum
//! router with a header-read timeout, an idle keep-alive timeout, HTTP/1
//! header limits and a cap on open connections sized below the descriptor
//! limit. `axum::serve` has none of these, and about 20,000 idle
//! connections (1,000 at a 1,024 descriptor limit) stopped the daemon.
//!
//! At the cap, accept never fails: the oldest idle connection (waiting for
//! its first request's headers, or idle between keep-alive requests) is
//! closed to make room; when every connection has a request in flight, the
//! new one gets a canned JSON `503` and is closed.

use super::body::{Linger, LingerBody};
use super::error;
use crate::config::ServerSettings;
use crate::health::Health;
use crate::throttle::Throttle;
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Descriptors kept out of the connection cap: the store's files, outbound
/// calls to vendors and callback receivers, the 503 answers at the cap
/// ([`OVERLOAD_WRITERS`]), stdio and the listener.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// Connections answered `503` at once; beyond that a connection over the
/// cap is closed without an answer (each needs a descriptor while it lasts).
pub const OVERLOAD_WRITERS: usize = 32;

/// How long a `503` at the cap may take to write and linger.
const OVERLOAD_LINGER: Duration = Duration::from_secs(1);

/// The soft and hard `RLIMIT_NOFILE`, before and after the raise at start.
#[derive(Debug, Clone, Copy)]
pub struct DescriptorLimits {
    /// The soft limit the process was started with.
    pub soft_before: u64,
    /// The soft limit now (the hard one, unless raising failed).
    pub soft: u64,
    /// The hard limit, set by the operator (`LimitNOFILE=`, `ulimit -Hn`).
    pub hard: u64,
}

/// Raises the soft descriptor limit to the hard limit: the default soft
/// limit (often 1,024) is far below what a server needs, and the hard limit
/// is what the operator allowed.
pub fn raise_descriptor_limit() -> DescriptorLimits {
    let (soft_before, hard) = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
    let soft = match rlimit::increase_nofile_limit(hard) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the descriptor limit");
            soft_before
        }
    };
    DescriptorLimits {
        soft_before,
        soft,
        hard,
    }
}

/// The connection cap: the configured maximum, but always below the soft
/// descriptor limit by [`RESERVED_DESCRIPTORS`] (or half of it, when tiny).
pub fn connection_cap(soft: u64, configured: usize) -> usize {
    let reserve = RESERVED_DESCRIPTORS.min(soft / 2);
    let room = usize::try_from(soft.saturating_sub(reserve)).unwrap_or(usize::MAX);
    configured.min(room).max(1)
}

/// Limits the HTTP/1 parser enforces itself, above ours so that ours answer
/// first (with a JSON body) and hyper's only stop what is far beyond them.
pub fn hyper_backstops(server: &ServerSettings) -> (usize, usize) {
    let max_headers = server.max_headers.saturating_mul(2).saturating_add(16);
    let max_header_size = server
        .max_header_bytes
        .saturating_mul(2)
        .saturating_add(1024);
    (max_headers, max_header_size)
}

/// What one connection is doing, for timeouts and eviction.
struct ConnState {
    /// Requests in flight (accepted headers, response not yet fully written).
    inflight: u32,
    /// Requests answered so far.
    served: u64,
    /// Accept time, or when the last response finished.
    since: Instant,
    /// Chosen to make room at the cap; closes unless a request came first.
    evicted: bool,
}

struct Conn {
    state: Mutex<ConnState>,
    wake: Notify,
}

impl Conn {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When an idle connection is to be closed (none while busy).
    fn deadline(&self, t: &Timeouts) -> Option<Instant> {
        let s = self.lock();
        if s.inflight > 0 {
            None
        } else if s.served == 0 {
            Some(s.since + t.header_read)
        } else {
            Some(s.since + t.idle)
        }
    }

    fn should_close(&self, t: &Timeouts) -> bool {
        let evicted = {
            let s = self.lock();
            s.inflight == 0 && s.evicted
        };
        evicted || self.deadline(t).is_some_and(|d| d <= Instant::now())
    }
}

#[derive(Clone, Copy)]
struct Timeouts {
    header_read: Duration,
    idle: Duration,
}

/// Open connections, by accept order (ids only grow).
#[derive(Default)]
struct Registry {
    next: AtomicU64,
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection if there is room, making room by evicting
    /// the oldest idle connection (in accept order: usually the first one
    /// looked at, so a flood at the cap costs little) when at the cap.
    /// `None`: every connection has a request in flight.
    fn admit(&self, cap: usize) -> Option<(u64, Arc<Conn>)> {
        let mut conns = self.lock();
        if conns.len() >= cap {
            let victim = conns.iter().find_map(|(id, c)| {
                let s = c.lock();
                (s.inflight == 0 && !s.evicted).then_some(*id)
            })?;
            if let Some(c) = conns.remove(&victim) {
                c.lock().evicted = true;
                c.wake.notify_one();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            state: Mutex::new(ConnState {
                inflight: 0,
                served: 0,
                since: Instant::now(),
                evicted: false,
            }),
            wake: Notify::new(),
        });
        conns.insert(id, conn.clone());
        Some((id, conn))
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }
}

/// Pending connections the kernel may queue before we accept them (capped
/// by `net.core.somaxconn`): a burst of connects larger than the queue
/// waits a second for a SYN retransmit, so queue generously.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listener (with `SO_REUSEADDR`, like `TcpListener::bind`, and a
/// deeper accept queue than its 1,024), as a non-blocking std listener like
/// the one systemd socket activation passes.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

/// Everything the accept loop needs.
pub struct Edge {
    /// The axum router serving every request.
    pub router: Router,
    /// Timeouts, header limits and lingering close.
    pub server: ServerSettings,
    /// The connection cap, from [`connection_cap`].
    pub cap: usize,
    /// Where the connection gauge lives.
    pub health: Arc<Health>,
    /// HTTPS (HTTP/1.1 and HTTP/2 by ALPN) instead of plain HTTP/1.1.
    pub tls: Option<Arc<super::tls::TlsHandle>>,
}

/// Serves `listener` until `shutdown` fires, then stops accepting, lets
/// in-flight requests finish (idle connections close at once) and returns
/// once every connection is closed. The caller bounds the wait. `listener`
/// is a non-blocking std listener: bound by [`bind`] or passed by systemd.
pub async fn serve(listener: std::net::TcpListener, edge: Edge, shutdown: CancellationToken) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the listener");
            return;
        }
    };
    let edge = Arc::new(edge);
    let registry = Arc::new(Registry::default());
    let tracker = TaskTracker::new();
    let overload = Arc::new(Semaphore::new(OVERLOAD_WRITERS));
    let throttle = Throttle::new(Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning;
                // the pending connection waits in the backlog.
                if let Some(n) = throttle.allow("accept") {
                    tracing::warn!(error = %e, suppressed = n, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match registry.admit(edge.cap) {
            Some((id, conn)) => {
                tracker.spawn(serve_conn(
                    stream,
                    id,
                    conn,
                    edge.clone(),
                    registry.clone(),
                    shutdown.clone(),
                ));
            }
            None => {
                if let Some(n) = throttle.allow("at-capacity") {
                    tracing::warn!(
                        cap = edge.cap,
                        suppressed = n,
                        "every connection is busy; answering 503"
                    );
                }
                if let Ok(permit) = overload.clone().try_acquire_owned() {
                    tracker.spawn(async move {
                        answer_overloaded(stream).await;
                        drop(permit);
                    });
                }
            }
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Writes the canned `503`, then reads and discards briefly so the answer
/// is not lost to a reset.
async fn answer_overloaded(mut stream: TcpStream) {
    let body = error::at_capacity_body();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(OVERLOAD_LINGER, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut seen = 0usize;
        while seen < 256 * 1024 {
            match stream.read(&mut buf).await? {
                0 => break,
                n => seen += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Counts a connection in the gauge for as long as it lives.
struct Counted<'a>(&'a Health);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.edge.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_conn(
    stream: TcpStream,
    id: u64,
    conn: Arc<Conn>,
    edge: Arc<Edge>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    edge.health.edge.connections.fetch_add(1, Ordering::Relaxed);
    let _counted = Counted(&edge.health);
    let server = &edge.server;
    let timeouts = Timeouts {
        header_read: server.header_read_timeout,
        idle: server.idle_timeout,
    };
    let (max_headers, max_header_size) = hyper_backstops(server);
    let svc = ConnService {
        peer: stream.peer_addr().ok(),
        router: edge.router.clone(),
        conn: conn.clone(),
        linger: Linger {
            bytes: server.linger_bytes,
            timeout: server.linger_timeout,
        },
    };
    // A backstop only: our own deadlines in `drive` are tighter.
    let backstop = server.header_read_timeout.max(server.idle_timeout);
    match &edge.tls {
        None => {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(backstop)
                .max_headers(max_headers)
                .max_header_size(max_header_size)
                .max_buf_size(max_header_size.saturating_add(8192).max(16 * 1024))
                .keep_alive(true);
            let served = builder.serve_connection(TokioIo::new(stream), svc);
            drive(
                served,
                |c| c.graceful_shutdown(),
                &conn,
                timeouts,
                &shutdown,
            )
            .await;
        }
        Some(tls) => {
            // The handshake counts as reading the first request's headers.
            let acceptor = tls.acceptor();
            let tls_stream = tokio::select! {
                r = tokio::time::timeout(server.header_read_timeout, acceptor.accept(stream)) => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        registry.remove(id);
                        return;
                    }
                    Err(_) => {
                        registry.remove(id);
                        return;
                    }
                },
                _ = conn.wake.notified() => { registry.remove(id); return; }
                _ = shutdown.cancelled() => { registry.remove(id); return; }
            };
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(backstop)
                .max_headers(max_headers)
                .max_buf_size(max_header_size.saturating_add(8192).max(16 * 1024))
                .keep_alive(true);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(max_header_size).unwrap_or(u32::MAX))
                .max_concurrent_streams(100);
            let served = builder.serve_connection(TokioIo::new(tls_stream), svc);
            drive(
                served,
                |c| c.graceful_shutdown(),
                &conn,
                timeouts,
                &shutdown,
            )
            .await;
        }
    }
    registry.remove(id);
}

/// Runs one connection until it ends, closing it when idle past its
/// deadline, when evicted, or gracefully at shutdown.
async fn drive<F, E>(
    served: F,
    mut graceful: impl FnMut(Pin<&mut F>),
    conn: &Conn,
    timeouts: Timeouts,
    shutdown: &CancellationToken,
) where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(served);
    let mut closing = false;
    loop {
        if conn.should_close(&timeouts) {
            break;
        }
        let deadline = conn.deadline(&timeouts);
        let idle_timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = conn.wake.notified() => {}
            _ = idle_timer => {}
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                graceful(served.as_mut());
            }
        }
    }
}

/// The per-connection service: marks the connection busy while a request
/// is in flight, wraps the request body for lingering close, and runs the
/// router.
struct ConnService {
    /// The connection's peer, handed to handlers as `ConnectInfo` (an IP allow-list needs it).
    peer: Option<std::net::SocketAddr>,
    router: Router,
    conn: Arc<Conn>,
    linger: Linger,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for ConnService {
    type Response = hyper::Response<GuardBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let guard = InFlight::enter(self.conn.clone());
        let linger = self.linger;
        let mut req = req.map(|b| axum::body::Body::new(LingerBody::new(b, linger)));
        if let Some(peer) = self.peer {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
        }
        let router = self.router.clone();
        Box::pin(async move {
            let resp = match router.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok(resp.map(|inner| GuardBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

/// A request in flight on a connection, until its response is written.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn enter(conn: Arc<Conn>) -> Self {
        {
            let mut s = conn.lock();
            s.inflight += 1;
            s.evicted = false;
        }
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut s = self.0.lock();
            s.inflight = s.inflight.saturating_sub(1);
            if s.inflight == 0 {
                s.served += 1;
                s.since = Instant::now();
            }
        }
        self.0.wake.notify_one();
    }
}

/// A response body that keeps its request counted as in flight until hyper
/// has written it all (and dropped it).
struct GuardBody {
    inner: axum::body::Body,
    _guard: InFlight,
}

impl HttpBody for GuardBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_stays_below_the_descriptor_limit() {
        assert_eq!(connection_cap(1024, 10_000), 768);
        assert_eq!(connection_cap(20_000, 10_000), 10_000);
        assert_eq!(connection_cap(100, 10_000), 50);
        assert_eq!(connection_cap(0, 10_000), 1);
    }

    #[test]
    fn eviction_takes_the_oldest_idle_and_spares_busy_ones() {
        let r = Registry::default();
        let (a, ca) = r.admit(2).unwrap();
        let (_b, cb) = r.admit(2).unwrap();
        let _busy = InFlight::enter(ca.clone());
        // `a` is busy, so `b` goes.
        let (_c, _) = r.admit(2).unwrap();
        assert!(cb.lock().evicted);
        assert!(!ca.lock().evicted);
        assert!(r.lock().contains_key(&a));
        // Now `a` is busy and `c` idle: `c` goes, then nothing is idle.
        let (_d, cd) = r.admit(2).unwrap();
        let _busy_d = InFlight::enter(cd);
        assert!(r.admit(2).is_none(), "all busy: no room");
    }
}
