//! The listening sockets: one per shard, all on the same address with `SO_REUSEPORT`
//! so the kernel spreads connections over shards. Bound before the shards start, so
//! port 0 resolves to one port shared by all.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

pub fn bind(
    addr: SocketAddr,
    count: usize,
) -> std::io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    let first = socket(addr)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(socket(bound)?);
    }
    Ok((listeners, bound))
}

fn socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}
