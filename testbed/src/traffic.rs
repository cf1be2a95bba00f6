//! Bounded traffic between the VMs of a testbed: `ping`, a TCP transfer
//! whose received bytes are checked against the sent ones (SHA-256), and a
//! UDP sender with a receiver that counts (and optionally answers, like DNS).
//!
//! TCP and UDP endpoints are plain std sockets opened by threads that joined
//! the VM's namespace (see [`crate::netns::in_netns`]): no external tools.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::netns::spawn_in_netns;
use crate::testbed::Testbed;

/// Result of a `ping` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingReport {
    pub transmitted: u32,
    pub received: u32,
}

/// Result of a TCP transfer.
#[derive(Debug, Clone)]
pub struct TcpReport {
    pub bytes_sent: usize,
    pub bytes_received: usize,
    pub sent_sha256: String,
    pub received_sha256: String,
    /// Client-side (ephemeral) source port.
    pub client_port: u16,
    pub elapsed: Duration,
}

impl TcpReport {
    pub fn intact(&self) -> bool {
        self.bytes_sent == self.bytes_received && self.sent_sha256 == self.received_sha256
    }
}

/// Result of a UDP exchange.
#[derive(Debug, Clone, Copy)]
pub struct UdpReport {
    pub sent: u32,
    pub received: u32,
    /// Replies received back by the sender (when the receiver echoes).
    pub replies: u32,
    pub client_port: u16,
}

/// UDP exchange parameters.
#[derive(Debug, Clone, Copy)]
pub struct Udp {
    pub from: usize,
    pub to: usize,
    pub port: u16,
    pub count: u32,
    pub size: usize,
    pub ipv6: bool,
    /// Receiver sends each datagram back (a DNS-like request/response).
    /// To port 53 the datagrams are real DNS queries (size is ignored) and
    /// the echo is flagged as a response.
    pub echo: bool,
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_ping(out: &str) -> Option<PingReport> {
    // "5 packets transmitted, 5 received, 0% packet loss, time 41ms"
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let mut it = line.split(',');
    let t = it.next()?.split_whitespace().next()?.parse().ok()?;
    let r = it.next()?.split_whitespace().next()?.parse().ok()?;
    Some(PingReport {
        transmitted: t,
        received: r,
    })
}

/// A DNS query (A record, recursion desired) for `name` with id `id`.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

impl Testbed {
    /// `ping -c count -i 0.01` from VM `from` to `to` (any address, e.g. an
    /// IPv6 one). Does not fail on loss: check the report.
    pub fn ping_addr(&self, from: usize, to: IpAddr, count: u32) -> Result<PingReport> {
        let deadline = (count as u64 / 50 + 5).to_string();
        let count_s = count.to_string();
        let to_s = to.to_string();
        let fam = if to.is_ipv6() { "-6" } else { "-4" };
        let mut c = crate::cmd::ns_command(&self.vm(from).ns, "ping");
        c.args([
            fam, "-n", "-q", "-c", &count_s, "-i", "0.01", "-W", "1", "-w", &deadline, &to_s,
        ]);
        let out = crate::cmd::run(&mut c, Duration::from_secs(count as u64 / 50 + 15))?;
        parse_ping(&out.stdout)
            .ok_or_else(|| anyhow!("cannot parse ping output: {} {}", out.stdout, out.stderr))
    }

    /// `ping` VM `to` from VM `from` over IPv4 or IPv6.
    pub fn ping(&self, from: usize, to: usize, count: u32, ipv6: bool) -> Result<PingReport> {
        self.ping_addr(from, self.addr(to, ipv6), count)
    }

    /// Sends `bytes` of random data over TCP from VM `from` to VM `to`:`port`
    /// and checks what the server received (length and SHA-256). Bounded by
    /// `timeout` overall.
    pub fn tcp_transfer(
        &self,
        from: usize,
        to: usize,
        port: u16,
        bytes: usize,
        ipv6: bool,
        timeout: Duration,
    ) -> Result<TcpReport> {
        let dst = SocketAddr::new(self.addr(to, ipv6), port);
        let deadline = Instant::now() + timeout;
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let server = spawn_in_netns(&self.vm(to).ns, move || -> Result<(usize, String)> {
            let l = TcpListener::bind(dst).with_context(|| format!("bind {dst}"))?;
            l.set_nonblocking(true)?;
            let _ = ready_tx.send(());
            let (mut s, _) = loop {
                match l.accept() {
                    Ok(x) => break x,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            bail!("no TCP connection on {dst} before the deadline");
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            s.set_nonblocking(false)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut h = Sha256::new();
            let mut n = 0usize;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                if Instant::now() > deadline {
                    bail!("TCP receive on {dst} did not finish before the deadline ({n} bytes)");
                }
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => {
                        h.update(&buf[..k]);
                        n += k;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(
                            anyhow!(e).context(format!("TCP read on {dst} after {n} bytes"))
                        );
                    }
                }
            }
            Ok((n, hex(&h.finalize())))
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("TCP server on {dst} did not start"))?;

        let mut data = vec![0u8; bytes];
        rand::rngs::StdRng::seed_from_u64(bytes as u64 ^ port as u64).fill_bytes(&mut data);
        let sent_sha256 = hex(&Sha256::digest(&data));
        let started = Instant::now();
        let client = spawn_in_netns(&self.vm(from).ns, move || -> Result<u16> {
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
                .with_context(|| format!("connect {dst}"))?;
            let port = s.local_addr()?.port();
            s.set_write_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(&data)
                .with_context(|| format!("TCP write to {dst}"))?;
            s.shutdown(Shutdown::Write)?;
            // Wait for the server to close: the transfer is complete then.
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut b = [0u8; 64];
            let _ = s.read(&mut b);
            Ok(port)
        })?;
        let client_port = client
            .join()
            .map_err(|_| anyhow!("TCP client panicked"))??;
        let (bytes_received, received_sha256) = server
            .join()
            .map_err(|_| anyhow!("TCP server panicked"))??;
        Ok(TcpReport {
            bytes_sent: bytes,
            bytes_received,
            sent_sha256,
            received_sha256,
            client_port,
            elapsed: started.elapsed(),
        })
    }

    /// Sends `count` UDP datagrams of `size` bytes, 1 ms apart, to a receiver
    /// in VM `to` (so no ICMP port-unreachable comes back).
    pub fn udp(&self, u: Udp) -> Result<UdpReport> {
        let dst = SocketAddr::new(self.addr(u.to, u.ipv6), u.port);
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let count = u.count;
        let echo = u.echo;
        let server = spawn_in_netns(&self.vm(u.to).ns, move || -> Result<u32> {
            let s = UdpSocket::bind(dst).with_context(|| format!("bind udp {dst}"))?;
            s.set_read_timeout(Some(Duration::from_millis(1000)))?;
            let _ = ready_tx.send(());
            let mut n = 0;
            let mut buf = vec![0u8; 65536];
            while n < count {
                match s.recv_from(&mut buf) {
                    Ok((k, peer)) => {
                        n += 1;
                        if echo {
                            if dst.port() == 53 && k >= 12 {
                                buf[2] |= 0x80; // QR: a (empty) DNS response
                            }
                            s.send_to(&buf[..k], peer)?;
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(n)
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("UDP receiver on {dst} did not start"))?;
        let bind: SocketAddr = if u.ipv6 {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let client = spawn_in_netns(&self.vm(u.from).ns, move || -> Result<(u32, u32, u16)> {
            let s = UdpSocket::bind(bind)?;
            s.connect(dst)?;
            let port = s.local_addr()?.port();
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            let mut replies = 0;
            let mut buf = vec![0u8; 65536];
            for i in 0..u.count {
                let payload = if dst.port() == 53 {
                    dns_query(i as u16, "vtap-testbed.example")
                } else {
                    vec![0x5au8; u.size]
                };
                s.send(&payload)?;
                if echo && s.recv(&mut buf).is_ok() {
                    replies += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok((u.count, replies, port))
        })?;
        let (sent, replies, client_port) = client
            .join()
            .map_err(|_| anyhow!("UDP sender panicked"))??;
        let received = server
            .join()
            .map_err(|_| anyhow!("UDP receiver panicked"))??;
        Ok(UdpReport {
            sent,
            received,
            replies,
            client_port,
        })
    }
}

/// A bounded, paced UDP flow (64-byte datagrams) from VM `from` to a
/// receiver bound in VM `to` (so no ICMP port-unreachable comes back), one
/// datagram every `every`, until [`UdpFlow::stop`] or `max_time`. A sender
/// that falls behind does not burst to catch up.
pub struct UdpFlow {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sender: std::thread::JoinHandle<Result<u64>>,
    receiver: std::thread::JoinHandle<Result<u64>>,
}

impl UdpFlow {
    /// Starts the receiver, then the sender.
    pub fn start(
        tb: &Testbed,
        from: usize,
        to: usize,
        port: u16,
        every: Duration,
        max_time: Duration,
    ) -> Result<UdpFlow> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dst = SocketAddr::new(tb.addr(to, false), port);
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + max_time;
        let max_count = (max_time.as_secs_f64() / every.as_secs_f64()).ceil() as u64 + 1;
        let (tx, rx) = mpsc::channel();
        let st = stop.clone();
        let receiver = spawn_in_netns(&tb.vm(to).ns, move || -> Result<u64> {
            let s = UdpSocket::bind(dst).with_context(|| format!("bind {dst}"))?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            let _ = tx.send(());
            let mut n = 0;
            let mut buf = [0u8; 2048];
            loop {
                match s.recv(&mut buf) {
                    Ok(_) => n += 1,
                    Err(_) if st.load(Ordering::Relaxed) || Instant::now() > deadline => {
                        return Ok(n);
                    }
                    Err(_) => {}
                }
            }
        })?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("UDP receiver on {dst} did not start"))?;
        let st = stop.clone();
        let sender = spawn_in_netns(&tb.vm(from).ns, move || -> Result<u64> {
            // Precise pacing: the default 50 µs timer slack would stretch
            // short sleeps.
            // SAFETY: prctl on the calling thread with a plain integer.
            unsafe {
                libc::prctl(libc::PR_SET_TIMERSLACK, 1u64);
            }
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(dst)?;
            let payload = [0x5au8; 64];
            let mut n = 0u64;
            let mut next = Instant::now();
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline && n < max_count {
                s.send(&payload)?;
                n += 1;
                next += every;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else if now - next > Duration::from_millis(50) {
                    next = now;
                }
            }
            Ok(n)
        })?;
        Ok(UdpFlow {
            stop,
            sender,
            receiver,
        })
    }

    /// Stops the flow; returns (sent, received).
    pub fn stop(self) -> Result<(u64, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = self
            .sender
            .join()
            .map_err(|_| anyhow!("UDP sender panicked"))??;
        let received = self
            .receiver
            .join()
            .map_err(|_| anyhow!("UDP receiver panicked"))??;
        Ok((sent, received))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_summary() {
        let out = "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n\n--- 10.0.0.2 ping statistics ---\n\
                   5 packets transmitted, 4 received, 20% packet loss, time 41ms\nrtt min/avg/max/mdev = 0.030/0.040/0.050/0.010 ms\n";
        assert_eq!(
            parse_ping(out),
            Some(PingReport {
                transmitted: 5,
                received: 4
            })
        );
        assert_eq!(parse_ping("garbage"), None);
    }
}
