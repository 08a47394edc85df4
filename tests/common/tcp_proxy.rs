//! A fault-injecting TCP proxy for any server (S3, DynamoDB, Kinesis, a Kafka broker): it
//! listens on a free 127.0.0.1 port, forwards each connection to the server, and by a seeded
//! plan, per answer the server sends (clients keep connections alive, so faults are rolled per
//! answer, not per connection):
//!
//! - delays it (latency);
//! - resets the connection (RST, SO_LINGER 0) after forwarding part of it;
//! - truncates: forwards part of it, then closes cleanly (FIN), so the client reads a short
//!   response.
//!
//! Everything else is forwarded as is. Counts of each fault are kept for the report.
//!
//! A run is reproducible from its seed: every connection has a generator of its own, seeded
//! from the proxy's seed and the connection's number, and an answer is a unit of the protocol
//! rather than whatever one `read()` returned ([`Framing`]), so neither the scheduler's
//! chunking nor the interleaving of connections decides which answers are hit. The tests print
//! the seed; `CLASSPULSE_TEST_PROXY_SEED` runs them again with it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// What to inject, as shares of the server's answers. Each fault comes after a random number
/// of answers on the same connection, drawn anew each time: on average one in `1/share`, at
/// most `2/share` apart, so a connection that lives a few hundred answers is sure to see each
/// kind.
#[derive(Debug, Clone, Default)]
pub struct TcpFaults {
    /// Answers forwarded only after `latency`.
    pub slow: f64,
    pub latency: Duration,
    /// Answers after part of which the connection is reset.
    pub reset: f64,
    /// Answers after part of which the connection is closed.
    pub truncate: f64,
}

/// What one answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A Kafka response: a 4-byte big-endian length, then that many bytes. A fetch answer of
    /// megabytes is one answer, as one lost TCP connection would lose it whole.
    Kafka,
    /// Whatever one read from the server returns (at most 16 KiB). The HTTP servers' answers
    /// (a lease write, a put) are mostly one chunk each; a large one is many.
    Chunks,
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
    /// The seed the run's faults follow.
    pub seed: u64,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// What every connection of one proxy reads.
struct Shared {
    faults: Mutex<TcpFaults>,
    framing: Framing,
    counts: Arc<TcpFaultCounts>,
}

/// One connection's plan: its generator, and per fault (slow, reset, truncate) the answers
/// left until it.
pub struct FaultPlan {
    rng: StdRng,
    left: [u64; 3],
}

/// Answers until the next fault of `share`: uniform in 1..=2/share (never, for 0).
fn draw(rng: &mut StdRng, share: f64) -> u64 {
    if share <= 0.0 {
        return u64::MAX;
    }
    rng.random_range(1..=((2.0 / share) as u64).max(1))
}

/// What happens to one answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    None,
    Slow(Duration),
    /// Forward this share of the answer, then reset.
    Reset(f64),
    /// Forward this share of the answer, then close.
    Truncate(f64),
}

impl FaultPlan {
    /// The plan of connection number `connection` (counted from 0 as the proxy accepts them).
    pub fn new(seed: u64, connection: u64) -> FaultPlan {
        // Connection numbers spread over the seed's bits, so neighbouring connections do not
        // draw from neighbouring seeds.
        let seed = seed ^ connection.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        FaultPlan {
            rng: StdRng::seed_from_u64(seed),
            left: [u64::MAX; 3],
        }
    }

    /// The fault for the next answer.
    pub fn roll(&mut self, faults: &TcpFaults) -> Fault {
        let shares = [faults.slow, faults.reset, faults.truncate];
        // The first fault due wins; the others wait for a later answer.
        let mut due = None;
        for (kind, share) in shares.iter().enumerate() {
            if *share <= 0.0 {
                self.left[kind] = u64::MAX;
                continue;
            }
            if self.left[kind] == u64::MAX {
                self.left[kind] = draw(&mut self.rng, *share);
            }
            self.left[kind] = self.left[kind].saturating_sub(1);
            if self.left[kind] == 0 && due.is_none() {
                due = Some(kind);
                self.left[kind] = draw(&mut self.rng, *share);
            }
        }
        match due {
            Some(0) => Fault::Slow(faults.latency),
            Some(1) => Fault::Reset(self.rng.random_range(0.0..0.9)),
            Some(_) => Fault::Truncate(self.rng.random_range(0.0..0.9)),
            None => Fault::None,
        }
    }
}

impl Shared {
    /// Rolls `plan` for the next answer under the faults in force, and counts what it drew.
    fn roll(&self, plan: &mut FaultPlan) -> Fault {
        let faults = self.faults.lock().unwrap().clone();
        let fault = plan.roll(&faults);
        let counts = &self.counts;
        counts.answers.fetch_add(1, Ordering::Relaxed);
        let counter = match fault {
            Fault::None => return fault,
            Fault::Slow(_) => &counts.slowed,
            Fault::Reset(_) => &counts.reset,
            Fault::Truncate(_) => &counts.truncated,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        fault
    }
}

/// The seed for a proxy: `CLASSPULSE_TEST_PROXY_SEED` when set (to run a failing seed
/// again), a random one otherwise. Printed either way.
pub fn seed() -> u64 {
    let seed = match std::env::var("CLASSPULSE_TEST_PROXY_SEED") {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("CLASSPULSE_TEST_PROXY_SEED={value:?} is not a u64")),
        Err(_) => rand::random(),
    };
    eprintln!("proxy seed {seed} (CLASSPULSE_TEST_PROXY_SEED={seed} runs it again)");
    seed
}

impl TcpProxy {
    /// Starts a proxy to `upstream` injecting `faults` into its answers as `framing` cuts
    /// them, seeded by `seed`.
    pub async fn start(
        upstream: SocketAddr,
        framing: Framing,
        faults: TcpFaults,
        seed: u64,
    ) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(TcpFaultCounts::default());
        let shared = Arc::new(Shared {
            faults: Mutex::new(faults),
            framing,
            counts: Arc::clone(&counts),
        });
        let task = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let connection = shared.counts.connections.fetch_add(1, Ordering::Relaxed);
                    let plan = FaultPlan::new(seed, connection);
                    tokio::spawn(forward(client, upstream, Arc::clone(&shared), plan));
                }
            })
        };
        TcpProxy {
            addr,
            counts,
            seed,
            shared,
            task,
        }
    }

    /// Injects `faults` from the next answer on (`TcpFaults::default()`: none).
    pub fn set_faults(&self, faults: TcpFaults) {
        *self.shared.faults.lock().unwrap() = faults;
    }

    /// A line for the report.
    pub fn report(&self) -> String {
        let c = &self.counts;
        format!(
            "seed {}: {} connections, {} answers: {} slowed, {} reset, {} truncated",
            self.seed,
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

async fn forward(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>, plan: FaultPlan) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return; // the client sees its connection closed, as with a server that is down
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = copy(client_read, server_write);
    let down = answers(server_read, client_write, &shared, plan);
    // Whichever way ends first (a close, a reset, a truncation) ends the connection.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Copies the client's requests to the server as they come.
async fn copy(mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.shutdown().await;
}

/// Forwards the server's answers to the client, rolling a fault per answer.
async fn answers(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    mut plan: FaultPlan,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let answer = match shared.framing {
            Framing::Chunks => match from.read(&mut buffer).await {
                Ok(0) | Err(_) => None,
                Ok(read) => Some(&buffer[..read]),
            },
            Framing::Kafka => read_kafka_frame(&mut from, &mut buffer).await,
        };
        let Some(answer) = answer else {
            let _ = to.shutdown().await;
            return;
        };
        let part = |share: f64| &answer[..(answer.len() as f64 * share) as usize];
        match shared.roll(&mut plan) {
            Fault::None => {}
            Fault::Slow(latency) => tokio::time::sleep(latency).await,
            Fault::Reset(share) => {
                let _ = to.write_all(part(share)).await;
                // SO_LINGER 0 on the client's socket: dropping it sends RST, not FIN.
                let _ = AsRef::<TcpStream>::as_ref(&to).set_zero_linger();
                return;
            }
            Fault::Truncate(share) => {
                let _ = to.write_all(part(share)).await;
                let _ = to.shutdown().await;
                return;
            }
        }
        if to.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// Reads one whole Kafka response (length prefix included) into `buffer`; `None` once the
/// server closed the connection or broke the framing.
async fn read_kafka_frame<'b>(
    from: &mut OwnedReadHalf,
    buffer: &'b mut Vec<u8>,
) -> Option<&'b [u8]> {
    let mut prefix = [0u8; 4];
    from.read_exact(&mut prefix).await.ok()?;
    let length = usize::try_from(i32::from_be_bytes(prefix)).ok()?;
    buffer.resize(4 + length, 0);
    buffer[..4].copy_from_slice(&prefix);
    from.read_exact(&mut buffer[4..]).await.ok()?;
    Some(&buffer[..])
}
