//! A write buffer under the WebSocket writer, so several queued frames leave in one `send` system
//! call. Profiling the doc fan-out benchmark showed three quarters of the server's CPU in per-frame
//! `send` calls (one TCP segment, one loopback wake-up per frame); the connection writer now writes
//! every frame already queued for the socket, then flushes once. Nothing waits for more frames, so
//! batching adds no latency: it only happens when frames queue up faster than they leave.
//!
//! The buffer grows on demand and is released after a large flush, so an idle socket holds no
//! buffer memory. Writes never go to the socket until `flush`: every write path must flush.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// Capacity kept after a flush; a larger buffer is freed (idle sockets stay small).
const KEEP: usize = 4096;

pub struct BatchWriter<W> {
    inner: W,
    buf: Vec<u8>,
    /// Bytes of `buf` already written to `inner`.
    pos: usize,
}

impl<W> BatchWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// Bytes buffered and not yet sent.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for BatchWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        while me.pos < me.buf.len() {
            match Pin::new(&mut me.inner).poll_write(cx, &me.buf[me.pos..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => me.pos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if me.buf.capacity() > KEEP {
            me.buf = Vec::new();
        } else {
            me.buf.clear();
        }
        me.pos = 0;
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.as_mut().poll_flush(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.get_mut().inner).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn nothing_leaves_before_flush_and_everything_after() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = BatchWriter::new(a);
        w.write_all(b"one ").await.expect("write");
        w.write_all(&[b'x'; 200]).await.expect("write");
        assert_eq!(w.pending(), 204);
        let mut probe = [0u8; 1];
        // Nothing readable yet.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), b.read(&mut probe))
                .await
                .is_err()
        );
        // The pipe holds 64 bytes: the flush completes only while the reader drains it.
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 204];
            b.read_exact(&mut got).await.expect("read");
            got
        });
        w.flush().await.expect("flush");
        assert_eq!(w.pending(), 0);
        let got = reader.await.expect("reader");
        assert_eq!(&got[..4], b"one ");
        assert!(got[4..].iter().all(|&c| c == b'x'));
    }

    #[tokio::test]
    async fn a_large_buffer_is_released_after_flush() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = BatchWriter::new(a);
        w.write_all(&vec![1u8; 100_000]).await.expect("write");
        w.flush().await.expect("flush");
        assert_eq!(w.buf.capacity(), 0);
        w.write_all(b"small").await.expect("write");
        w.flush().await.expect("flush");
        assert!(w.buf.capacity() <= KEEP);
        let mut got = vec![0u8; 100_005];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got[100_000..], b"small");
    }
}
