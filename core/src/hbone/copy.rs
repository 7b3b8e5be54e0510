//! Moving bytes between a TCP socket and an HTTP/2 stream without extra copies: TCP reads
//! are handed to h2 as frozen buffers, and h2 DATA chunks are written straight to the socket.

use std::future::poll_fn;
use std::io;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads start small (cheap for request/response traffic and for the many idle tunnels, which
/// each hold a buffer while waiting) and double while the peer keeps filling them (bulk
/// transfers), up to one HTTP/2 frame.
const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = super::MAX_FRAME_SIZE as usize;

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().expect("is_io checked");
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

async fn tcp_to_h2<R: AsyncRead + Unpin>(
    mut rd: R,
    send: &mut SendStream<Bytes>,
    on_bytes: &(dyn Fn(usize) + Sync),
) -> io::Result<()> {
    let mut buf = BytesMut::new();
    let mut size = MIN_READ;
    loop {
        buf.reserve(size);
        let n = rd.read_buf(&mut buf).await?;
        if n == 0 {
            send.send_data(Bytes::new(), true).map_err(h2_io)?;
            return Ok(());
        }
        on_bytes(n);
        if n >= size && size < MAX_READ {
            size *= 2;
        }
        let mut chunk = buf.split().freeze();
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(h2_io(e)),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "HBONE stream closed by peer",
                    ))
                }
            };
            if granted == 0 {
                continue;
            }
            let part = chunk.split_to(granted.min(chunk.len()));
            send.send_data(part, false).map_err(h2_io)?;
        }
    }
}

async fn h2_to_tcp<W: AsyncWrite + Unpin>(
    recv: &mut RecvStream,
    mut wr: W,
    on_bytes: &(dyn Fn(usize) + Sync),
) -> io::Result<()> {
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(h2_io)?;
        let n = chunk.len();
        wr.write_all(&chunk).await?;
        on_bytes(n);
        recv.flow_control().release_capacity(n).map_err(h2_io)?;
    }
    // The peer half-closed: pass the FIN on and keep the other direction open.
    wr.shutdown().await
}

/// Proxies both directions until both sides have closed (or either fails).
/// `sent` counts bytes read from TCP into the tunnel, `received` bytes written out to TCP.
pub async fn splice(
    tcp: &mut TcpStream,
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
    sent: &(dyn Fn(usize) + Sync),
    received: &(dyn Fn(usize) + Sync),
) -> io::Result<()> {
    let (rd, wr) = tcp.split();
    let up = tcp_to_h2(rd, &mut send, sent);
    let down = h2_to_tcp(&mut recv, wr, received);
    let result = tokio::try_join!(up, down).map(|_| ());
    if result.is_err() {
        // Tell the far side this was an abort, not a clean end.
        send.send_reset(h2::Reason::CANCEL);
    }
    result
}
