//! Real traffic between namespaces: echo servers and clients on threads that entered a
//! namespace. Every socket has a timeout and every server a deadline.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::sim::{in_netns, spawn_in_netns};
use anyhow::{Context, Result};

pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// An echo server (TCP and UDP on the same address) that stops when dropped or after
/// its lifetime.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub fn echo_server(ns: &str, addr: &str) -> Result<EchoServer> {
    serve(ns, addr, |msg, _| msg.to_vec())
}

/// A server that answers every TCP message and UDP datagram with the address it came
/// from (`ip:port`, as the server sees it): what source NAT made of the sender.
pub fn whoami_server(ns: &str, addr: &str) -> Result<EchoServer> {
    serve(ns, addr, |_, from| from.to_string().into_bytes())
}

/// TCP and UDP on `addr`, answering each message with `reply(message, sender)`.
fn serve(ns: &str, addr: &str, reply: fn(&[u8], SocketAddr) -> Vec<u8>) -> Result<EchoServer> {
    let addr: SocketAddr = addr.parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let s = stop.clone();
    spawn_in_netns(ns, move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let tcp = TcpListener::bind(addr);
        let udp = UdpSocket::bind(addr);
        let ok = tcp.is_ok() && udp.is_ok();
        let _ = tx.send(
            tcp.as_ref()
                .err()
                .or(udp.as_ref().err())
                .map(|e| e.to_string()),
        );
        if !ok {
            return;
        }
        let (tcp, udp) = (tcp.unwrap(), udp.unwrap());
        tcp.set_nonblocking(true).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut buf = vec![0u8; 65536];
        while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
            // Every pending connection, not one per pass: a pass also waits up to 20 ms on
            // UDP, and a backlog (128) left to fill drops SYNs, which a 2 s connect may not
            // outlast (one of 200 connections failed so in CI).
            while let Ok((mut c, from)) = tcp.accept() {
                let s2 = s.clone();
                std::thread::spawn(move || {
                    c.set_nonblocking(false).ok();
                    c.set_read_timeout(Some(Duration::from_millis(100))).ok();
                    let mut b = [0u8; 2048];
                    let end = Instant::now() + Duration::from_secs(120);
                    while !s2.load(Ordering::Relaxed) && Instant::now() < end {
                        match c.read(&mut b) {
                            Ok(0) => break,
                            Ok(n) => {
                                if c.write_all(&reply(&b[..n], from)).is_err() {
                                    break;
                                }
                            }
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        }
                    }
                });
            }
            if let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&reply(&buf[..n], from), from);
            }
        }
    })?;
    match rx
        .recv_timeout(Duration::from_secs(5))
        .context("echo server did not start")?
    {
        None => Ok(EchoServer { stop }),
        Some(e) => anyhow::bail!("echo server on {addr} in {ns}: {e}"),
    }
}

/// Connects and exchanges one message; Ok(true) when the echo came back.
pub fn tcp_echo(ns: &str, addr: &str) -> Result<bool> {
    let addr: SocketAddr = addr.parse()?;
    in_netns(ns, move || {
        let Ok(mut c) = TcpStream::connect_timeout(&addr, IO_TIMEOUT) else {
            return false;
        };
        exchange(&mut c)
    })
}

pub fn exchange(c: &mut TcpStream) -> bool {
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    if c.write_all(b"podsg").is_err() {
        return false;
    }
    let mut b = [0u8; 5];
    c.read_exact(&mut b).is_ok() && &b == b"podsg"
}

/// An open TCP connection made from inside a namespace.
pub fn tcp_connect(ns: &str, addr: &str) -> Result<TcpStream> {
    let addr: SocketAddr = addr.parse()?;
    in_netns(ns, move || TcpStream::connect_timeout(&addr, IO_TIMEOUT))?.context("connect")
}

/// One UDP datagram and its echo.
pub fn udp_echo(ns: &str, addr: &str) -> Result<bool> {
    udp_echo_sized(ns, addr, 5)
}

/// A UDP datagram of `size` bytes (over the MTU: IP fragments both ways) and its echo.
pub fn udp_echo_sized(ns: &str, addr: &str, size: usize) -> Result<bool> {
    let addr: SocketAddr = addr.parse()?;
    in_netns(ns, move || {
        let bind = if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let s = UdpSocket::bind(bind).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let msg: Vec<u8> = (0..size).map(|i| i as u8).collect();
        if s.send_to(&msg, addr).is_err() {
            return false;
        }
        let mut b = vec![0u8; 65536];
        matches!(s.recv_from(&mut b), Ok((n, _)) if n == size && b[..n] == msg[..])
    })
}

/// What a [`whoami_server`] says a TCP connection from `ns` came from.
pub fn tcp_whoami(ns: &str, addr: &str) -> Result<Option<String>> {
    let addr: SocketAddr = addr.parse()?;
    in_netns(ns, move || {
        let mut c = TcpStream::connect_timeout(&addr, IO_TIMEOUT).ok()?;
        ask(&mut c)
    })
}

/// One question on an open connection to a [`whoami_server`].
pub fn ask(c: &mut TcpStream) -> Option<String> {
    c.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    c.write_all(b"?").ok()?;
    let mut b = [0u8; 64];
    let n = c.read(&mut b).ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&b[..n]).into_owned())
}

/// What a [`whoami_server`] says a UDP datagram from `ns`, sent from local port
/// `port` (0: any), came from. Err(kind) when the socket reports an error instead
/// (an ICMP error came back: `ConnectionRefused` for port unreachable).
pub fn udp_whoami(ns: &str, port: u16, addr: &str) -> Result<Result<String, std::io::ErrorKind>> {
    let addr: SocketAddr = addr.parse()?;
    in_netns(ns, move || {
        let s = UdpSocket::bind(("0.0.0.0", port)).map_err(|e| e.kind())?;
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        // Connected: an ICMP error about the flow is reported on the socket.
        s.connect(addr).map_err(|e| e.kind())?;
        s.send(b"?").map_err(|e| e.kind())?;
        let mut b = [0u8; 64];
        let n = s.recv(&mut b).map_err(|e| e.kind())?;
        Ok(String::from_utf8_lossy(&b[..n]).into_owned())
    })
}
