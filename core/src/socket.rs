//! Socket options the mesh depends on.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::sys::socket::{getsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

/// Mark on every socket the mesh itself opens, so redirection never loops it back.
pub const MESH_MARK: u32 = 0x539;

/// The destination a connection had before nat REDIRECT sent it to us.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    match local {
        SocketAddr::V4(_) => {
            let sa = getsockopt(stream, sockopt::OriginalDst)?;
            let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
            Ok(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sa.sin_port),
            )))
        }
        SocketAddr::V6(_) => {
            let sa = getsockopt(stream, sockopt::Ip6tOriginalDst)?;
            let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
            Ok(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sa.sin6_port),
                0,
                0,
            )))
        }
    }
}

/// A marked, non-blocking TCP socket for `dst`'s family, created in the caller's namespace.
/// With `spoof_source`, it binds to a foreign address (IP_TRANSPARENT) so the local app sees
/// the real client address.
pub fn mesh_socket(dst: SocketAddr, spoof_source: Option<IpAddr>) -> io::Result<TcpSocket> {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    socket.set_mark(MESH_MARK)?;
    socket.set_nodelay(true)?;
    if let Some(src) = spoof_source {
        // IP_TRANSPARENT lives at SOL_IP but Linux honours it on IPv6 sockets too.
        socket.set_ip_transparent(true)?;
        // Port 0 with IP_BIND_ADDRESS_NO_PORT: the port is picked at connect() by the whole
        // 4-tuple. Without it bind() reserves a port unique for the source address alone,
        // scanning past every TIME_WAIT socket of that client: with clients that open a
        // connection per request, bind() took ~5 ms and throughput collapsed.
        nix::sys::socket::setsockopt(&socket, sockopt::IpBindAddressNoPort, &true)
            .map_err(io::Error::from)?;
        socket.bind(&SocketAddr::new(src, 0).into())?;
    }
    Ok(TcpSocket::from_std_stream(socket.into()))
}

/// A listener on `addr` with the options every mesh listener wants.
pub fn mesh_listener(addr: SocketAddr, transparent: bool) -> io::Result<tokio::net::TcpListener> {
    listener(addr, transparent, false)
}

/// A mesh listener inside a pod's network namespace, with SO_REUSEPORT: during an upgrade
/// the new ztunnel opens its listeners beside the old one's, the kernel spreads new
/// connections over both, and the old one closes its own when it leaves; the pod never
/// sees a moment without a listener.
pub fn inpod_listener(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    listener(addr, false, true)
}

fn listener(
    addr: SocketAddr,
    transparent: bool,
    reuse_port: bool,
) -> io::Result<tokio::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nodelay(true)?;
    if transparent {
        socket.set_ip_transparent(true)?;
    }
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("binding listener on {addr}: {e}")))?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root only (IP_TRANSPARENT needs CAP_NET_ADMIN), like CI.
    #[tokio::test]
    async fn a_spoofing_socket_gets_its_port_at_connect_not_at_bind() {
        let listener = mesh_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let dst = listener.local_addr().unwrap();
        let socket = mesh_socket(dst, Some("127.0.0.1".parse().unwrap())).unwrap();
        assert!(getsockopt(&socket, sockopt::IpBindAddressNoPort).unwrap());
        // Bound to the address only: no port reserved yet.
        assert_eq!(socket.local_addr().unwrap().port(), 0);
        let stream = socket.connect(dst).await.unwrap();
        let local = stream.local_addr().unwrap();
        assert_eq!(local.ip().to_string(), "127.0.0.1");
        assert_ne!(local.port(), 0);
    }

    #[tokio::test]
    async fn two_inpod_listeners_share_a_port_and_either_accepts() {
        let first = inpod_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let second = inpod_listener(addr).unwrap();
        // A plain mesh listener may not join the group.
        assert!(mesh_listener(addr, false).is_err());
        // The first leaves: every new connection reaches the second.
        drop(first);
        for _ in 0..8 {
            let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
            second.accept().await.unwrap();
        }
    }
}
