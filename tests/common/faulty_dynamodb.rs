//! A fault-injecting HTTP proxy in front of DynamoDB Local, which never throttles and never
//! returns UnprocessedItems. It listens on 127.0.0.1 (a free port) and, by a seeded plan:
//!
//! - answers some calls with `ThrottlingException` (400) or an internal error (500) without
//!   forwarding them;
//! - forwards part of a BatchWriteItem and returns the rest as `UnprocessedItems`;
//! - refuses, as a `ValidationException`, any BatchWriteItem holding an item whose `pk` ends
//!   with a chosen suffix (a "poisoned" item);
//! - counts the keys of every BatchGetItem it forwards.
//!
//! Everything else is forwarded as is, one upstream connection per request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What to inject, as shares of calls.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Calls answered with ThrottlingException.
    pub throttle: f64,
    /// Calls answered with a 500.
    pub server_error: f64,
    /// BatchWriteItem calls of several items that process only the first half.
    pub unprocessed: f64,
    /// Items whose `pk` ends with this are refused as invalid.
    pub poison_suffix: Option<String>,
}

/// What the proxy did.
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub throttled: AtomicU64,
    pub server_errors: AtomicU64,
    pub unprocessed_items: AtomicU64,
    pub poisoned_calls: AtomicU64,
    pub forwarded: AtomicU64,
    /// The keys of each BatchGetItem call forwarded, over all its tables.
    pub batch_get_keys: Mutex<Vec<usize>>,
}

impl FaultCounts {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

struct Proxy {
    upstream: SocketAddr,
    plan: FaultPlan,
    rng: Mutex<rand_chacha::ChaCha8Rng>,
    counts: Arc<FaultCounts>,
}

/// A running proxy; stops when dropped.
pub struct FaultyDynamo {
    pub url: String,
    pub counts: Arc<FaultCounts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyDynamo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultyDynamo {
    /// Starts a proxy to `upstream` (e.g. `http://127.0.0.1:8000`).
    pub async fn start(upstream: &str, plan: FaultPlan, seed: u64) -> FaultyDynamo {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse().unwrap();
        let counts = Arc::new(FaultCounts::default());
        let proxy = Arc::new(Proxy {
            upstream,
            plan,
            rng: Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)),
            counts: Arc::clone(&counts),
        });
        let app = axum::Router::new().fallback(handle).with_state(proxy);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FaultyDynamo {
            url: format!("http://{addr}"),
            counts,
            task,
        }
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.0")
        .body(Body::from(
            json!({"__type": format!("com.amazonaws.dynamodb.v20120810#{kind}"), "message": message})
                .to_string(),
        ))
        .unwrap()
}

async fn handle(State(proxy): State<Arc<Proxy>>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let writes = target.ends_with(".BatchWriteItem") || target.ends_with(".PutItem");
    if target.ends_with(".BatchGetItem") {
        let request: Value = serde_json::from_slice(&body).unwrap();
        let keys = request["RequestItems"]
            .as_object()
            .unwrap()
            .values()
            .map(|table| table["Keys"].as_array().map_or(0, Vec::len))
            .sum();
        proxy.counts.batch_get_keys.lock().unwrap().push(keys);
    }
    if !writes {
        return forward(&proxy, &headers, body.to_vec(), None).await;
    }
    let (roll, split_roll): (f64, f64) = {
        let mut rng = proxy.rng.lock().unwrap();
        (rng.random(), rng.random())
    };
    let plan = &proxy.plan;
    if roll < plan.throttle {
        proxy.counts.throttled.fetch_add(1, Ordering::Relaxed);
        return error(
            StatusCode::BAD_REQUEST,
            "ThrottlingException",
            "Rate of requests exceeds the allowed throughput.",
        );
    }
    if roll < plan.throttle + plan.server_error {
        proxy.counts.server_errors.fetch_add(1, Ordering::Relaxed);
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "injected by the test proxy",
        );
    }
    if !target.ends_with(".BatchWriteItem") {
        return forward(&proxy, &headers, body.to_vec(), None).await;
    }
    let mut request: Value = serde_json::from_slice(&body).unwrap();
    // Process the first half; hand the rest back as unprocessed.
    let mut unprocessed = None;
    if split_roll < plan.unprocessed {
        let tables = request["RequestItems"].as_object_mut().unwrap();
        let (table, requests) = tables.iter_mut().next().unwrap();
        let requests = requests.as_array_mut().unwrap();
        if requests.len() > 1 {
            let rest = requests.split_off(requests.len() / 2);
            unprocessed = Some((json!({ table.clone(): rest }), rest.len() as u64));
        }
    }
    if let Some(suffix) = &plan.poison_suffix {
        let poisoned = request["RequestItems"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|requests| requests.as_array().unwrap())
            .any(|r| {
                r["PutRequest"]["Item"]["pk"]["S"]
                    .as_str()
                    .is_some_and(|pk| pk.ends_with(suffix.as_str()))
            });
        if poisoned {
            proxy.counts.poisoned_calls.fetch_add(1, Ordering::Relaxed);
            return error(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                "One or more parameter values were invalid: poisoned by the test proxy",
            );
        }
    }
    let unprocessed = unprocessed.map(|(items, count)| {
        proxy
            .counts
            .unprocessed_items
            .fetch_add(count, Ordering::Relaxed);
        items
    });
    forward(
        &proxy,
        &headers,
        serde_json::to_vec(&request).unwrap(),
        unprocessed,
    )
    .await
}

/// Sends the request upstream; with `unprocessed`, puts it into the response.
async fn forward(
    proxy: &Proxy,
    headers: &HeaderMap,
    body: Vec<u8>,
    unprocessed: Option<Value>,
) -> Response {
    proxy.counts.forwarded.fetch_add(1, Ordering::Relaxed);
    let mut request = format!("POST / HTTP/1.1\r\nhost: {}\r\n", proxy.upstream);
    for (name, value) in headers {
        let name = name.as_str();
        if matches!(
            name,
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            continue;
        }
        request.push_str(&format!(
            "{name}: {}\r\n",
            value.to_str().unwrap_or_default()
        ));
    }
    request.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut stream = tokio::net::TcpStream::connect(proxy.upstream)
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let response_headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if response_headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    if let Some(unprocessed) = unprocessed {
        let mut answer: Value = serde_json::from_slice(&body).unwrap();
        answer["UnprocessedItems"] = unprocessed;
        body = serde_json::to_vec(&answer).unwrap();
    }
    let mut response = Response::builder().status(status);
    for (name, value) in response_headers {
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "x-amz-crc32"
        ) {
            continue;
        }
        response = response.header(name, value);
    }
    response.body(Body::from(body)).unwrap()
}

fn dechunk(mut chunked: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let end = chunked.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = String::from_utf8_lossy(&chunked[..end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        chunked = &chunked[end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&chunked[..size]);
        chunked = &chunked[size + 2..];
    }
}
