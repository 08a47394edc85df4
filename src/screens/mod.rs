//! The screen server: every studio's wall, live.
//!
//! `classpulse screens` reads every partition of the live topic ([`topic`]), or every shard of
//! the live stream by enhanced fan-out ([`stream`]), from `now - CLASSPULSE_SCREENS_LOOKBACK`,
//! keeps the newest record of every class on a
//! [`Board`], and serves each studio's walls ([`wall_routes`]); the embedded default serves the
//! same routes from `classpulse run`, its board filled by the aggregate stage.
//!
//! ```text
//! GET /studios/{studio}?k=TOKEN                     the wall page (wall.html)
//! GET /studios/{studio}/live?k=TOKEN                Server-Sent Events: each newer record of a class
//! GET /studios/{studio}/classes/{class}?k=TOKEN     the class's record now, JSON
//! ```
//!
//! A stream starts with the current record of each class of the studio, then sends every
//! newer one. Each event's id names the version of every class the wall has been sent, so a
//! wall reconnecting with `Last-Event-ID` (to this instance or another) gets only records
//! newer than those: intermediate ones superseded meanwhile are skipped, the newest always
//! comes. A wall more than [`WALL_QUEUE`](crate::live::board::WALL_QUEUE) records behind (a
//! burst) is sent each class's newest record instead; one whose connection takes nothing for
//! 10 s ([`listener`]) is cut and reconnects.

pub mod access;
pub mod listener;
pub mod stream;
pub mod topic;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::event::{Charset, CLASS_ID, STUDIO_ID};
use crate::health::Health;
use crate::live::board::{Board, Shown};
use crate::live::Version;
use crate::metrics;

pub use access::Access;

/// The wall page: one file, its style and script inside.
const WALL_PAGE: &str = include_str!("wall.html");
/// A comment on an idle stream this often keeps load balancers and proxies from closing it.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// How soon a wall's browser reconnects after its stream ends.
const RECONNECT_MS: Duration = Duration::from_millis(2_000);
/// The most classes a `Last-Event-ID` may name.
const MAX_CLASSES_IN_ID: usize = 64;

/// What the wall routes share.
#[derive(Clone)]
pub struct Walls {
    board: Board,
    access: Access,
    max_clients: usize,
    clients: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Walls {
    /// Walls of `board`, let in by `access`, at most `max_clients` streams at once; every
    /// stream ends when `stop` is cancelled.
    pub fn new(board: Board, access: Access, max_clients: usize, stop: CancellationToken) -> Walls {
        Walls {
            board,
            access,
            max_clients,
            clients: Arc::default(),
            stop,
        }
    }
}

/// The wall routes (GET only; any other method is 405).
pub fn wall_routes(walls: Walls) -> Router {
    Router::new()
        .route("/studios/{studio_id}", get(page))
        .route("/studios/{studio_id}/live", get(live))
        .route("/studios/{studio_id}/classes/{class_id}", get(class))
        .with_state(walls)
}

/// A refused request: its status and what it says.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, self.1 + "\n").into_response()
    }
}

fn refuse(status: StatusCode, text: impl Into<String>) -> Response {
    Refusal(status, text.into()).into_response()
}

/// Whether `value` is an id of the event contract (`[A-Za-z0-9_.-]`, 1 to 64 characters).
pub fn valid_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= crate::event::ID_LEN
        && value.chars().all(|c| Charset::Id.allows(c))
}

/// Checks an id of a request's path.
fn check_id(part: &str, value: &str) -> Result<(), Refusal> {
    if valid_id(value) {
        Ok(())
    } else {
        Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!(
                "{part}: expected 1 to {} characters of [A-Za-z0-9_.-]",
                crate::event::ID_LEN
            ),
        ))
    }
}

/// The `k` parameter of a query string.
fn token(query: &Option<String>) -> Option<&str> {
    query
        .as_deref()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("k="))
}

/// The path checked, then the token: a bad id is a 400 naming it, a bad token a 403 that says
/// nothing of the studio.
fn admit(walls: &Walls, studio_id: &str, query: &Option<String>) -> Result<(), Refusal> {
    check_id(STUDIO_ID.name, studio_id)?;
    if walls.access.allows(studio_id, token(query)) {
        Ok(())
    } else {
        Err(Refusal(
            StatusCode::FORBIDDEN,
            "forbidden: this wall's link carries its token (classpulse screens url STUDIO)".into(),
        ))
    }
}

async fn page(
    State(walls): State<Walls>,
    Path(studio_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(refused) = admit(&walls, &studio_id, &query) {
        return refused.into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        WALL_PAGE,
    )
        .into_response()
}

async fn class(
    State(walls): State<Walls>,
    Path((studio_id, class_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(refused) = admit(&walls, &studio_id, &query) {
        return refused.into_response();
    }
    if let Err(refused) = check_id(CLASS_ID.name, &class_id) {
        return refused.into_response();
    }
    match walls.board.current(&studio_id, &class_id) {
        Some(shown) => (
            [(header::CONTENT_TYPE, "application/json")],
            shown.json.clone(),
        )
            .into_response(),
        None => refuse(
            StatusCode::NOT_FOUND,
            format!("class {class_id} of studio {studio_id} is not on the board (not begun, or final for longer than the board keeps it)"),
        ),
    }
}

/// The versions a wall was sent, as an event id: `class=epoch.position,...`.
fn encode_sent(sent: &BTreeMap<Box<str>, Version>) -> String {
    let mut id = String::new();
    for (class_id, version) in sent {
        if !id.is_empty() {
            id.push(',');
        }
        id.push_str(class_id);
        id.push('=');
        id.push_str(&version.to_string());
    }
    id
}

/// Reads a `Last-Event-ID` written by [`encode_sent`].
fn decode_sent(id: &str) -> Result<BTreeMap<Box<str>, Version>, String> {
    let mut sent = BTreeMap::new();
    if id.is_empty() {
        return Ok(sent);
    }
    for item in id.split(',') {
        let (class_id, version) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not class=epoch.position"))?;
        check_id(CLASS_ID.name, class_id).map_err(|_| format!("{class_id:?} is not a class id"))?;
        let version: Version = version
            .parse()
            .map_err(|()| format!("{version:?} is not epoch.position"))?;
        sent.insert(class_id.into(), version);
    }
    if sent.len() > MAX_CLASSES_IN_ID {
        return Err(format!("names more than {MAX_CLASSES_IN_ID} classes"));
    }
    Ok(sent)
}

/// Holds a wall's place among the clients while its stream lives.
struct Seat {
    clients: Arc<AtomicUsize>,
    /// Whether the wall was admitted, and so counted in the metric.
    counted: bool,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.clients.fetch_sub(1, Ordering::AcqRel);
        if self.counted {
            metrics::add_screens_clients(-1);
        }
    }
}

/// One wall's stream.
struct Wall {
    board: Board,
    studio_id: String,
    queue: std::collections::VecDeque<Arc<Shown>>,
    receiver: tokio::sync::broadcast::Receiver<Arc<Shown>>,
    sent: BTreeMap<Box<str>, Version>,
    first: bool,
    stop: CancellationToken,
    _seat: Seat,
}

impl Wall {
    /// The next record newer than what the wall was sent; `None` ends the stream.
    async fn next(&mut self) -> Option<Arc<Shown>> {
        loop {
            if let Some(shown) = self.queue.pop_front() {
                if self
                    .sent
                    .get(&shown.class_id)
                    .is_some_and(|v| *v >= shown.version)
                {
                    continue;
                }
                self.sent.insert(shown.class_id.clone(), shown.version);
                return Some(shown);
            }
            tokio::select! {
                received = self.receiver.recv() => match received {
                    Ok(shown) => self.queue.push_back(shown),
                    // More records came at once than the channel holds (a burst after a
                    // reshard or a slow read): what the wall missed is each class's newest,
                    // which the board has.
                    Err(RecvError::Lagged(_)) => {
                        metrics::record_screens_wall_caught_up();
                        let (now, receiver) = self.board.watch(&self.studio_id);
                        self.receiver = receiver;
                        self.queue = now.into();
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = self.stop.cancelled() => return None,
            }
        }
    }

    fn event(&mut self, shown: &Shown) -> Event {
        let age_ms = chrono::Utc::now().timestamp_millis() - shown.published_ms;
        metrics::record_screens_event_sent(Duration::from_millis(age_ms.max(0) as u64));
        let text = std::str::from_utf8(&shown.json).unwrap_or_default();
        let mut event = Event::default().id(encode_sent(&self.sent)).data(text);
        if std::mem::take(&mut self.first) {
            event = event.retry(RECONNECT_MS);
        }
        event
    }
}

async fn live(
    State(walls): State<Walls>,
    Path(studio_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = admit(&walls, &studio_id, &query) {
        return refused.into_response();
    }
    let last = headers
        .get("last-event-id")
        .map(|value| value.to_str().map_err(|_| "not ASCII".to_owned()))
        .transpose()
        .and_then(|id| id.map(decode_sent).transpose());
    let sent = match last {
        Ok(sent) => sent.unwrap_or_default(),
        Err(why) => return refuse(StatusCode::BAD_REQUEST, format!("Last-Event-ID: {why}")),
    };
    let taken = walls.clients.fetch_add(1, Ordering::AcqRel);
    let mut seat = Seat {
        clients: Arc::clone(&walls.clients),
        counted: false,
    };
    if taken >= walls.max_clients {
        drop(seat);
        metrics::record_screens_client_cut("full");
        let mut refused = refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this server holds its most walls ({}); try again",
                walls.max_clients
            ),
        );
        refused
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return refused;
    }
    seat.counted = true;
    metrics::add_screens_clients(1);
    let (now, receiver) = walls.board.watch(&studio_id);
    let wall = Wall {
        board: walls.board.clone(),
        studio_id,
        queue: now.into(),
        receiver,
        sent,
        first: true,
        stop: walls.stop.clone(),
        _seat: seat,
    };
    let mut response = Sse::new(stream(wall))
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn stream(wall: Wall) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(wall, |mut wall| async move {
        let shown = wall.next().await?;
        let event = wall.event(&shown);
        Some((Ok(event), wall))
    })
}

/// How often finals kept past their time are forgotten.
const FORGET_EVERY: Duration = Duration::from_secs(10);

/// Forgets the board's old finals every few seconds until `stop`.
pub async fn forget_old(board: Board, stop: CancellationToken) {
    let mut tick = tokio::time::interval(FORGET_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => metrics::set_screens_classes(board.forget_old()),
            _ = stop.cancelled() => return,
        }
    }
}

/// Where a screen server reads live records from.
enum Source<'a> {
    Topic(&'a str),
    Stream(&'a str),
}

/// `classpulse screens`: reads the live topic or stream onto a board and serves its walls on
/// `CLASSPULSE_HTTP_ADDR` (with `/metrics`, `/healthz`, `/readyz`) until `shutdown`.
pub async fn serve(
    config: &crate::config::Config,
    metrics_handle: metrics_exporter_prometheus::PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let source = match (&config.live.topic, &config.live.stream) {
        (Some(topic), _) => Source::Topic(topic),
        (None, Some(stream)) => Source::Stream(stream),
        (None, None) => return Err(
            "classpulse screens reads CLASSPULSE_LIVE_TOPIC (on CLASSPULSE_KAFKA_BROKERS) or CLASSPULSE_LIVE_STREAM: set one".to_owned(),
        ),
    };
    let loopback = config.http_addr.ip().is_loopback();
    let access = Access::new(config.screens.key.as_deref(), loopback);
    if matches!(access, Access::Closed) {
        return Err(format!(
            "CLASSPULSE_SCREENS_KEY is unset and CLASSPULSE_HTTP_ADDR={} is not a loopback address: set the key (walls are health data)",
            config.http_addr
        ));
    }
    let health = Health::new();
    let lookback = config.screens.lookback;
    match source {
        Source::Topic(topic) => topic::not_ready_yet(&health, topic, lookback),
        Source::Stream(stream) => stream::not_ready_yet(&health, stream, lookback),
    }
    let board = Board::new(config.screens.keep_final);
    let stop = CancellationToken::new();
    let walls = Walls::new(
        board.clone(),
        access,
        config.screens.max_clients,
        stop.clone(),
    );
    let bound = crate::http::serve(
        config.http_addr,
        metrics_handle,
        health.clone(),
        stop.clone(),
        Some(wall_routes(walls)),
    )
    .await
    .map_err(|error| format!("binding CLASSPULSE_HTTP_ADDR={}: {error}", config.http_addr))?;
    tracing::info!(addr = %bound, "http endpoints listening");
    tokio::spawn(forget_old(board.clone(), stop.clone()));
    let read = match source {
        Source::Topic(topic) => {
            topic::read(&config.kafka, topic, lookback, board, health, shutdown).await
        }
        Source::Stream(stream) => {
            let sdk = crate::aws::sdk_config().await;
            let kinesis = crate::aws::kinesis(&sdk, config.aws.kinesis.as_ref());
            let consumer = stream::consumer_name();
            stream::read(
                kinesis, stream, &consumer, lookback, board, health, shutdown,
            )
            .await
        }
    };
    stop.cancel();
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_id_reads_back_and_a_bad_one_is_named() {
        let mut sent = BTreeMap::new();
        sent.insert(Box::from("20261130T0701-cycle"), Version(0, 1234));
        sent.insert(Box::from("c2"), Version(3, 0));
        let id = encode_sent(&sent);
        assert_eq!(id, "20261130T0701-cycle=0.1234,c2=3.0");
        assert_eq!(decode_sent(&id).unwrap(), sent);
        assert!(decode_sent("").unwrap().is_empty());
        for bad in ["c1", "c1=1", "c/1=0.1", "c1=0.1,", "=0.1"] {
            assert!(decode_sent(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_token_is_read_from_the_query() {
        assert_eq!(token(&Some("a=1&k=abc".into())), Some("abc"));
        assert_eq!(token(&Some("kk=1".into())), None);
        assert_eq!(token(&None), None);
    }
}
