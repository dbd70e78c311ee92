//! Write coalescing for a served connection: many small HTTP/2 frames go
//! out in one TLS write and one system call instead of one each.
//!
//! A watch event reaches each of its watchers' streams from a different
//! task, and hyper's connection task wakes and flushes after each one: with
//! 10,000 watchers over 100 connections, one event cost 10,000 `writev`
//! calls (and as many TLS records), half of the server's CPU. [`Coalesce`]
//! copies writes into a buffer and, the first time it is asked to flush a
//! non-empty buffer, yields once: the connection task goes to the back of
//! the run queue, the other streams' tasks add their frames meanwhile, and
//! the next flush sends them all. The cost is one trip through the
//! scheduler per flush, a few microseconds when nothing else is waiting.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffered bytes past which a write first sends what is buffered.
const HIGH_WATER: usize = 256 * 1024;

/// See the module docs.
pub struct Coalesce<T> {
    inner: T,
    buf: Vec<u8>,
    /// How much of `buf` the inner writer has taken.
    sent: usize,
    /// The current flush has yielded once already.
    yielded: bool,
}

impl<T> Coalesce<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Coalesce<T> {
        Coalesce {
            inner,
            buf: Vec::new(),
            sent: 0,
            yielded: false,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Hands everything buffered to the inner writer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        // A large response (a big list over HTTP/1) must not leave its
        // whole size allocated for the rest of a keep-alive connection.
        self.buf.shrink_to(HIGH_WATER);
        Poll::Ready(Ok(()))
    }

    /// Makes room before buffering more: drains once past the high-water mark.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.len() >= HIGH_WATER {
            self.poll_drain(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_room(cx))?;
        let mut n = 0;
        for b in bufs {
            this.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.sent < this.buf.len() && !this.yielded {
            // Let the tasks that are about to write to this connection do
            // so first (see the module docs).
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes are held until a flush, which yields once, then sends them
    /// all in order; shutdown sends what is left.
    #[tokio::test]
    async fn writes_go_out_on_flush_in_order() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = Coalesce::new(a);
        w.write_all(b"one ").await.expect("write");
        let n = w
            .write_vectored(&[io::IoSlice::new(b"two "), io::IoSlice::new(b"three ")])
            .await
            .expect("write");
        assert_eq!(n, 10);
        let mut got = [0u8; 64];
        // Nothing went out before the flush.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), b.read(&mut got))
                .await
                .is_err()
        );
        w.flush().await.expect("flush");
        let n = b.read(&mut got).await.expect("read");
        assert_eq!(&got[..n], b"one two three ");
        w.write_all(b"four").await.expect("write");
        w.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest, b"four");
    }

    /// Past the high-water mark a write drains first, so a writer that
    /// never flushes does not grow the buffer without bound, and a slow
    /// reader holds it up; a drained buffer keeps at most the high-water
    /// mark allocated.
    #[tokio::test]
    async fn a_full_buffer_drains_before_taking_more() {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let mut w = Coalesce::new(a);
        let chunk = vec![7u8; 64 * 1024];
        let writer = tokio::spawn(async move {
            for _ in 0..16 {
                w.write_all(&chunk).await.expect("write");
            }
            w.flush().await.expect("flush");
            w.buf.capacity()
        });
        let mut total = 0;
        let mut got = vec![0u8; 128 * 1024];
        while total < 16 * 64 * 1024 {
            let n = b.read(&mut got).await.expect("read");
            assert!(got[..n].iter().all(|&x| x == 7));
            total += n;
        }
        let cap = writer.await.expect("writer");
        assert!(cap <= HIGH_WATER, "buffer kept {cap} bytes");
    }
}
