//! Connections that take nothing are closed: a wall whose socket accepts no bytes for
//! [`STALL_LIMIT`] while the server has some to send is cut, so a wall that stopped reading
//! holds neither a slot nor memory. (Hyper stops polling a response body while the socket is
//! full, so the body alone cannot notice.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

use crate::metrics;

/// How long a write may wait on a full socket.
pub const STALL_LIMIT: Duration = Duration::from_secs(10);

/// A listener whose connections fail a write stalled for longer than the limit.
pub struct StallingListener {
    inner: TcpListener,
    limit: Duration,
}

impl StallingListener {
    /// Wraps `inner`.
    pub fn new(inner: TcpListener, limit: Duration) -> StallingListener {
        StallingListener { inner, limit }
    }
}

impl axum::serve::Listener for StallingListener {
    type Io = Stalling;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Stalling, std::net::SocketAddr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let _ = stream.set_nodelay(true);
        (
            Stalling {
                inner: stream,
                limit: self.limit,
                stalled: None,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection that fails a write stalled for longer than its limit.
pub struct Stalling {
    inner: TcpStream,
    limit: Duration,
    /// Since the socket last refused bytes.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Stalling {
    /// `Pending` while the stall is shorter than the limit, then an error.
    fn stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                metrics::record_screens_client_cut("stalled");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client took nothing for the stall limit",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Stalling {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stalling {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.stall(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.stall(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.stall(cx).map_ok(|_| ()),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
