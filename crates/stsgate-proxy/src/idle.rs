//! Connection idleness: a connection whose first request has not begun
//! `limits.header_read_timeout` after it opened (silent, or stalled in a TLS
//! or HTTP/2 preamble), or that sits with no request in flight and nothing
//! read for `limits.idle_timeout`, is closed. The
//! socket is wrapped to note when bytes last arrived; a watchdog per
//! connection does the rest. Requests in flight (a slow STS) never count as
//! idleness.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What the watchdog knows about one connection.
pub struct Activity {
    opened: Instant,
    /// Milliseconds after `opened` of the last read that brought bytes; 0: none yet.
    last_read_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// A request has begun on this connection.
    spoke: AtomicBool,
}

impl Activity {
    /// A connection opened now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            spoke: AtomicBool::new(false),
        })
    }

    fn read_happened(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_read_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Marks a request in flight until the guard drops.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.spoke.store(true, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves when the connection is idle: no request begun `first` after
    /// it opened, or, once one did, nothing read for `idle` with no request
    /// in flight.
    pub async fn idle(&self, first: Duration, idle: Duration) {
        loop {
            let (since, limit) = if self.spoke.load(Ordering::Relaxed) {
                (
                    self.opened + Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed)),
                    idle,
                )
            } else {
                (self.opened, first)
            };
            let deadline = since + limit;
            if Instant::now() >= deadline {
                if self.in_flight.load(Ordering::Relaxed) == 0 {
                    return;
                }
                // Busy: look again a little later.
                tokio::time::sleep(limit.min(Duration::from_secs(1))).await;
            } else {
                tokio::time::sleep_until(deadline).await;
            }
        }
    }
}

/// A request in flight on a connection.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that reports reads to its [`Activity`].
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_happened();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silent_then_idle_then_busy() {
        let a = Activity::new();
        let first = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        // never spoke: idle after `first`
        let started = Instant::now();
        a.idle(first, idle).await;
        assert_eq!(started.elapsed(), first);
        // bytes alone (a preamble) do not count as speaking
        a.read_happened();
        let started = Instant::now();
        a.idle(first, idle).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        // after a request: idle after `idle` from the last read
        drop(a.request());
        a.read_happened();
        let started = Instant::now();
        a.idle(first, idle).await;
        assert!(started.elapsed() >= idle - Duration::from_millis(1));
        // a request in flight keeps it open past the limit
        a.read_happened();
        let guard = a.request();
        let waiting = tokio::spawn({
            let a = a.clone();
            async move { a.idle(first, idle).await }
        });
        tokio::time::sleep(idle * 2).await;
        assert!(!waiting.is_finished());
        drop(guard);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(waiting.is_finished());
    }
}
