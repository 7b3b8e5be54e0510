//! Byte-stream views of HBONE streams, so hyper and `copy_bidirectional` can run over them.
//!
//! [`H2Io`] turns one HTTP/2 stream (a CONNECT tunnel, either the one a caller opened to us or
//! one we opened to an endpoint) into `AsyncRead + AsyncWrite`. [`Prefixed`] replays bytes
//! consumed while sniffing the protocol before reading on from the stream.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use ambit_core::hbone::client::Tunnel;
use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().expect("is_io checked");
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

enum Streams {
    /// A tunnel a caller opened to us.
    Server(SendStream<Bytes>, RecvStream),
    /// A tunnel we opened to an endpoint (holds its pool slot).
    Client(Tunnel),
}

/// One HTTP/2 stream as a byte stream.
pub struct H2Io {
    streams: Streams,
    pending: Bytes,
    eof: bool,
    /// We sent END_STREAM.
    shut: bool,
}

impl H2Io {
    pub fn server(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self::new(Streams::Server(send, recv))
    }

    pub fn client(tunnel: Tunnel) -> Self {
        Self::new(Streams::Client(tunnel))
    }

    fn new(streams: Streams) -> Self {
        Self {
            streams,
            pending: Bytes::new(),
            eof: false,
            shut: false,
        }
    }

    fn send(&mut self) -> &mut SendStream<Bytes> {
        match &mut self.streams {
            Streams::Server(s, _) => s,
            Streams::Client(t) => &mut t.send,
        }
    }

    fn recv(&mut self) -> &mut RecvStream {
        match &mut self.streams {
            Streams::Server(_, r) => r,
            Streams::Client(t) => &mut t.recv,
        }
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv().poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let n = chunk.len();
                    self.recv()
                        .flow_control()
                        .release_capacity(n)
                        .map_err(h2_io)?;
                    self.pending = chunk;
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => self.eof = true,
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let want = buf.len().min(ambit_core::hbone::MAX_FRAME_SIZE as usize);
        loop {
            let have = self.send().capacity();
            if have > 0 {
                let n = have.min(want);
                self.send()
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(h2_io)?;
                return Poll::Ready(Ok(n));
            }
            self.send().reserve_capacity(want);
            match ready!(self.send().poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "HBONE stream closed by peer",
                    )))
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // END_STREAM is TCP's FIN; sending it twice is harmless to ignore.
        if !self.shut {
            self.shut = true;
            let _ = self.send().send_data(Bytes::new(), true);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for H2Io {
    fn drop(&mut self) {
        // A stream dropped before either side ended it was aborted: tell the peer.
        if !self.eof && !self.shut {
            self.send().send_reset(h2::Reason::CANCEL);
        }
    }
}

/// A stream with bytes put back in front of it.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
