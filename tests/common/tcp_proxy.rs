//! A fault-injecting TCP proxy for any server (S3, a Kafka broker): it listens on a free
//! 127.0.0.1 port, forwards each connection to the server, and by a seeded plan, per chunk the
//! server answers with (clients keep connections alive, so faults are rolled per answer, not
//! per connection):
//!
//! - delays it (latency);
//! - resets the connection (RST, SO_LINGER 0) after forwarding part of it;
//! - truncates: forwards part of it, then closes cleanly (FIN), so the client reads a short
//!   response.
//!
//! Everything else is forwarded as is. Counts of each fault are kept for the report.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to inject, as shares of the chunks the server answers with. Each fault comes after a
/// random number of answers drawn anew each time, on average one in `1/share`, at most
/// `2/share` apart: a run of a few hundred answers is sure to see each kind.
#[derive(Debug, Clone, Default)]
pub struct TcpFaults {
    /// Chunks forwarded only after `latency`.
    pub slow: f64,
    pub latency: Duration,
    /// Chunks after part of which the connection is reset.
    pub reset: f64,
    /// Chunks after part of which the connection is closed.
    pub truncate: f64,
}

/// What the proxy did.
#[derive(Debug, Default)]
pub struct TcpFaultCounts {
    pub connections: AtomicU64,
    pub answers: AtomicU64,
    pub slowed: AtomicU64,
    pub reset: AtomicU64,
    pub truncated: AtomicU64,
}

/// A running proxy; stops accepting when dropped.
pub struct TcpProxy {
    pub addr: SocketAddr,
    pub counts: Arc<TcpFaultCounts>,
    plan: Arc<Plan>,
    task: tokio::task::JoinHandle<()>,
}

struct Plan {
    faults: Mutex<TcpFaults>,
    /// The generator, and per fault (slow, reset, truncate) the answers left until it.
    rng: Mutex<(StdRng, [u64; 3])>,
    counts: Arc<TcpFaultCounts>,
}

/// Answers until the next fault of `share`: uniform in 1..=2/share (never, for 0).
fn draw(rng: &mut StdRng, share: f64) -> u64 {
    if share <= 0.0 {
        return u64::MAX;
    }
    rng.random_range(1..=((2.0 / share) as u64).max(1))
}

enum Fault {
    None,
    Slow(Duration),
    /// Forward this share of the chunk, then reset.
    Reset(f64),
    /// Forward this share of the chunk, then close.
    Truncate(f64),
}

impl Plan {
    fn roll(&self) -> Fault {
        let faults = self.faults.lock().unwrap().clone();
        let shares = [faults.slow, faults.reset, faults.truncate];
        let mut guard = self.rng.lock().unwrap();
        let (rng, left) = &mut *guard;
        let counts = &self.counts;
        counts.answers.fetch_add(1, Ordering::Relaxed);
        // The first fault due wins; the others wait for a later answer.
        let mut due = None;
        for (kind, share) in shares.iter().enumerate() {
            if *share <= 0.0 {
                left[kind] = u64::MAX;
                continue;
            }
            if left[kind] == u64::MAX {
                left[kind] = draw(rng, *share);
            }
            left[kind] = left[kind].saturating_sub(1);
            if left[kind] == 0 && due.is_none() {
                due = Some(kind);
                left[kind] = draw(rng, *share);
            }
        }
        match due {
            Some(0) => {
                counts.slowed.fetch_add(1, Ordering::Relaxed);
                Fault::Slow(faults.latency)
            }
            Some(1) => {
                counts.reset.fetch_add(1, Ordering::Relaxed);
                Fault::Reset(rng.random_range(0.0..0.9))
            }
            Some(_) => {
                counts.truncated.fetch_add(1, Ordering::Relaxed);
                Fault::Truncate(rng.random_range(0.0..0.9))
            }
            None => Fault::None,
        }
    }
}

impl TcpProxy {
    /// Starts a proxy to `upstream` injecting `faults`, seeded by `seed`.
    pub async fn start(upstream: SocketAddr, faults: TcpFaults, seed: u64) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(TcpFaultCounts::default());
        let plan = Arc::new(Plan {
            faults: Mutex::new(faults),
            rng: Mutex::new((StdRng::seed_from_u64(seed), [u64::MAX; 3])),
            counts: Arc::clone(&counts),
        });
        let task = {
            let plan = Arc::clone(&plan);
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    plan.counts.connections.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(forward(client, upstream, Arc::clone(&plan)));
                }
            })
        };
        TcpProxy {
            addr,
            counts,
            plan,
            task,
        }
    }

    /// Injects `faults` from the next chunk on (`TcpFaults::default()`: none).
    pub fn set_faults(&self, faults: TcpFaults) {
        *self.plan.faults.lock().unwrap() = faults;
    }

    /// A line for the report.
    pub fn report(&self) -> String {
        let c = &self.counts;
        format!(
            "{} connections, {} answers: {} slowed, {} reset, {} truncated",
            c.connections.load(Ordering::Relaxed),
            c.answers.load(Ordering::Relaxed),
            c.slowed.load(Ordering::Relaxed),
            c.reset.load(Ordering::Relaxed),
            c.truncated.load(Ordering::Relaxed)
        )
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, plan: Arc<Plan>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return; // the client sees its connection closed, as with a server that is down
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, None);
    let down = pump(server_read, client_write, Some(plan));
    // Whichever way ends first (a close, a reset, a truncation) ends the connection.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Copies `from` into `to`; with a `plan` (the server's answers), rolling a fault per chunk.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    plan: Option<Arc<Plan>>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            let _ = to.shutdown().await;
            return;
        }
        let chunk = &buffer[..read];
        match plan.as_ref().map_or(Fault::None, |plan| plan.roll()) {
            Fault::None => {}
            Fault::Slow(latency) => tokio::time::sleep(latency).await,
            Fault::Reset(share) => {
                let _ = to.write_all(&chunk[..(read as f64 * share) as usize]).await;
                // SO_LINGER 0 on the client's socket: dropping it sends RST, not FIN.
                let _ = AsRef::<TcpStream>::as_ref(&to).set_zero_linger();
                return;
            }
            Fault::Truncate(share) => {
                let _ = to.write_all(&chunk[..(read as f64 * share) as usize]).await;
                let _ = to.shutdown().await;
                return;
            }
        }
        if to.write_all(chunk).await.is_err() {
            return;
        }
    }
}
