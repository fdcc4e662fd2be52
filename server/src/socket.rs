//! An accepted socket as hyper serves it, and the plain TCP socket taken back from
//! hyper once a connection is upgraded, so the WebSocket can run on it directly.
//!
//! Owns no policy: what runs on the socket is the caller's business.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use monoio_compat::hyper::MonoioIo;

/// The socket of an HTTP connection. hyper's upgrade machinery requires `Send` I/O,
/// though our connections never leave their shard: hyper's HTTP/1 server drives the
/// connection on the task that polls it and hands the upgraded stream back to that
/// same task, and our tasks are `!Send` monoio tasks pinned to this thread.
pub struct OnShard<T>(pub T);

// SAFETY: see the type's documentation. The value is created, used and dropped on
// the shard thread that accepted the socket; nothing ever moves it to another thread
// (monoio has no work stealing, and hyper spawns nothing for HTTP/1).
#[allow(unsafe_code)]
unsafe impl<T> Send for OnShard<T> {}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for OnShard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for OnShard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

/// A plain TCP connection as hyper serves it.
type Plain = OnShard<MonoioIo<TcpStreamPoll>>;

/// The plain TCP socket under an upgraded connection, with the bytes hyper had
/// already read past the upgrade request (the client's first frames may be among
/// them). A TLS connection is given back as it came.
pub fn take_plain(upgraded: Upgraded) -> Result<(TcpStreamPoll, Bytes), Upgraded> {
    let parts = upgraded.downcast::<Plain>()?;
    // The bytes are a view into hyper's read buffer, and even an empty view keeps all
    // of it (8 KiB or more) alive for as long as it is held.
    let early = if parts.read_buf.is_empty() {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(&parts.read_buf)
    };
    Ok((parts.io.0.inner(), early))
}
