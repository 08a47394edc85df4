//! The walls from outside: a Server-Sent Events client over plain HTTP/1.0, and a headless
//! Chromium driven through the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
//! messages ended by NUL on file descriptors 3 and 4).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

/// One event of a stream.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// Its `id:` field.
    pub id: Option<String>,
    /// Its `data:` lines, joined.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// An open stream: its status, headers and a channel of its events (closed when it ends).
pub struct Stream {
    pub status: u16,
    pub headers: String,
    pub events: mpsc::Receiver<SseEvent>,
}

/// Opens `path` on `addr` as an event stream, with `Last-Event-ID` if given.
pub fn open_stream(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> Stream {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    let last = last_event_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{last}\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut headers = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        headers.push_str(&line);
    }
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let (sender, events) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut id, mut data) = (None, Vec::new());
        for line in reader.lines().map_while(Result::ok) {
            if line.is_empty() {
                if !data.is_empty() {
                    let event = SseEvent {
                        id: id.take(),
                        data: data.join("\n"),
                    };
                    data.clear();
                    if sender.send(event).is_err() {
                        return;
                    }
                }
            } else if let Some(value) = line.strip_prefix("id: ") {
                id = Some(value.to_owned());
            } else if let Some(value) = line.strip_prefix("data: ") {
                data.push(value.to_owned());
            }
        }
    });
    Stream {
        status,
        headers,
        events,
    }
}

/// A headless Chromium on a page, driven over the DevTools protocol.
pub struct Browser {
    child: Child,
    to_browser: std::fs::File,
    from_browser: BufReader<std::fs::File>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    /// Chromium (Debian's `chromium`) opened on `url`, 1280 x 720.
    pub fn open(url: &str) -> Browser {
        use std::os::fd::AsRawFd;
        let profile = tempfile::tempdir().unwrap();
        // The browser reads commands on fd 3 and writes answers on fd 4.
        let (commands_read, commands_write) = pipe();
        let (answers_read, answers_write) = pipe();
        let (read_fd, write_fd) = (commands_read.as_raw_fd(), answers_write.as_raw_fd());
        let mut command = Command::new("chromium");
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-pipe",
                "--window-size=1280,720",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        unsafe {
            command.pre_exec(move || {
                // Moved above 4 first, so that neither lands on the other's place.
                let read = libc::fcntl(read_fd, libc::F_DUPFD, 10);
                let write = libc::fcntl(write_fd, libc::F_DUPFD, 10);
                if read < 0 || write < 0 || libc::dup2(read, 3) < 0 || libc::dup2(write, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .expect("chromium runs (Debian's chromium package; scripts/test installs it)");
        drop(commands_read);
        drop(answers_write);
        let mut browser = Browser {
            child,
            to_browser: std::fs::File::from(commands_write),
            from_browser: BufReader::new(std::fs::File::from(answers_read)),
            session: String::new(),
            next_id: 1,
            _profile: profile,
        };
        let target = browser.call(None, "Target.createTarget", json!({ "url": url }));
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = browser.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser
    }

    /// Sends a command and returns its result (events in between are skipped).
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to_browser.write_all(&bytes).unwrap();
        loop {
            let mut answer = Vec::new();
            let read = self.from_browser.read_until(0, &mut answer).unwrap();
            assert!(read > 0, "chromium closed its pipe");
            answer.pop();
            let answer: Value = serde_json::from_slice(&answer).unwrap();
            if answer["id"] == json!(id) {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page; returns its value.
    pub fn evaluate(&mut self, expression: &str) -> Value {
        let session = self.session.clone();
        let result = self.call(
            Some(&session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        result["result"]["value"].clone()
    }

    /// A PNG of the page.
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let session = self.session.clone();
        let shot = self.call(
            Some(&session),
            "Page.captureScreenshot",
            json!({ "format": "png" }),
        );
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap()
    }
}

/// Reads what a stream sends within `within`, until `done` says enough.
pub fn collect_until(
    stream: &Stream,
    within: Duration,
    what: &str,
    mut done: impl FnMut(&[SseEvent]) -> bool,
) -> Vec<SseEvent> {
    let deadline = std::time::Instant::now() + within;
    let mut events = Vec::new();
    while !done(&events) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match stream.events.recv_timeout(left) {
            Ok(event) => events.push(event),
            Err(error) => panic!(
                "{what}: not within {within:?} ({error}); {} events",
                events.len()
            ),
        }
    }
    events
}

/// Every record on `topic` of `brokers`, read from the start to the end of each partition.
pub fn topic_records(brokers: &str, topic: &str, partitions: i32) -> Vec<Value> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", super::backends::unique_name("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let mut ended = std::collections::BTreeSet::new();
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ended.len() < partitions as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "{topic} not read to its end"
        );
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                records.push(serde_json::from_slice(message.payload().unwrap()).unwrap())
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition);
            }
            _ => {}
        }
    }
    records
}
