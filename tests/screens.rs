//! The live screens against the local broker and a real browser: every class's records reach
//! its studio's wall in version order and end with its final result, a wall resumes with
//! `Last-Event-ID` on another screen server without repeats, walls that stop reading are cut,
//! a full server says when to come back, and the wall page in headless Chromium shows the
//! newest record and moves.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use classpulse::live::Tiles;
use common::backends::*;
use common::walls::*;
use common::*;
use serde_json::{json, Value};

const TILE_KEY: &str = "test-tile-key-0123456789";
const SCREENS_KEY: &str = "test-screens-key-0123456789";

/// A screen server on `topic`, walls let in by [`SCREENS_KEY`].
fn screen_server(lake: &Path, topic: &str) -> Command {
    let mut command = classpulse(lake);
    command
        .arg("screens")
        .env("CLASSPULSE_KAFKA_BROKERS", KAFKA)
        .env("CLASSPULSE_LIVE_TOPIC", topic)
        .env("CLASSPULSE_SCREENS_KEY", SCREENS_KEY);
    command
}

/// The wall token of `studio_id`, as `classpulse screens url` prints it.
fn wall_url(lake: &Path, studio_id: &str) -> String {
    let output = screen_server(lake, "unused")
        .args(["url", studio_id, "--base", "http://walls"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn token(url: &str) -> String {
    url.split_once("?k=").unwrap().1.to_owned()
}

/// The final member results of every class of `studio_id` in the lake, by class.
fn final_members(lake: &Path, studio_id: &str) -> BTreeMap<String, Vec<Value>> {
    let mut classes = BTreeMap::new();
    for file in files_under(&lake.join("aggregates/members"), ".ndjson") {
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        let Some(class_id) = name.strip_prefix(&format!("{studio_id}-")) else {
            continue;
        };
        let members = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        classes.insert(class_id.to_owned(), members);
    }
    classes
}

fn version(record: &Value) -> (u64, u64) {
    (
        record["version"][0].as_u64().unwrap(),
        record["version"][1].as_u64().unwrap(),
    )
}

fn close(a: &Value, b: &Value, what: &str) {
    let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
    assert!((a - b).abs() <= 0.051, "{what}: {a} against {b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_class_reaches_its_wall_in_version_order_and_ends_with_its_result() {
    require(&format!("http://{KAFKA}"));
    let (_admin, topic) = create_topic(3).await;
    let lake = tempfile::tempdir().unwrap();
    let url = wall_url(lake.path(), "studio-0001");
    let token = token(&url);
    let first = Running::start(&mut screen_server(lake.path(), &topic));
    await_readiness(first.http, 200, "", Duration::from_secs(60)).await;

    // Who may look, and what a bad request is told.
    let live = format!("/studios/studio-0001/live?k={token}");
    assert_eq!(http_get(first.http, "/studios/studio-0001").0, 403);
    assert_eq!(http_get(first.http, "/studios/studio-0002/live?k=").0, 403);
    let (status, body) = http_get(first.http, &format!("/studios/studio-0002/live?k={token}"));
    assert_eq!(status, 403, "a token opens its own studio only");
    assert!(!body.contains("studio-0002"), "{body}");
    let (status, body) = http_get(first.http, "/studios/studio%200001/live");
    assert_eq!(status, 400);
    assert!(body.starts_with("studio_id:"), "{body}");
    let (status, body) = http_get(
        first.http,
        &format!("/studios/studio-0001/classes/no/such?k={token}"),
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = http_get(
        first.http,
        &format!("/studios/studio-0001/classes/nope?k={token}"),
    );
    assert_eq!(status, 404);
    assert!(
        body.contains("class nope of studio studio-0001 is not on the board"),
        "{body}"
    );
    assert_eq!(http_request(first.http, "POST", &live).0, 405);
    let (status, page) = http_get(first.http, &format!("/studios/studio-0001?k={token}"));
    assert_eq!(status, 200);
    assert!(page.contains("new EventSource("), "the wall page");
    let (status, body) = http_request_with(first.http, "GET", &live, "Last-Event-ID: c1=zero\r\n");
    assert_eq!(
        (status, body.starts_with("Last-Event-ID:")),
        (400, true),
        "{body}"
    );

    let wall = open_stream(first.http, &live, None);
    assert_eq!(wall.status, 200, "{}", wall.headers);
    assert!(
        wall.headers.contains("text/event-stream"),
        "{}",
        wall.headers
    );

    // A paced day of two studios, three classes each, published every 200 ms.
    let mut pipeline = classpulse(lake.path());
    pipeline
        .arg("run")
        .env("CLASSPULSE_LIVE_TOPIC", &topic)
        .env("CLASSPULSE_KAFKA_BROKERS", KAFKA)
        .env("CLASSPULSE_LIVE_TILE_KEY", TILE_KEY)
        .env("CLASSPULSE_LIVE_INTERVAL", "200ms")
        .env("CLASSPULSE_SIM_STUDIOS", "2")
        .env("CLASSPULSE_SIM_CLASS_MINUTES", "2")
        .env("CLASSPULSE_SIM_DURATION", "5m")
        .env("CLASSPULSE_SIM_SPEEDUP", "15");
    let stdout = tokio::task::spawn_blocking(move || run_to_end(&mut pipeline))
        .await
        .unwrap();
    assert!(
        !stdout.contains("watch:"),
        "with a live topic the run serves no walls: {stdout}"
    );
    let results = final_members(lake.path(), "studio-0001");
    assert!(
        results.len() >= 2,
        "classes of studio-0001: {:?}",
        results.keys()
    );

    let events = collect_until(
        &wall,
        Duration::from_secs(60),
        "every class's final record",
        |events| {
            let finals = events.iter().filter(|e| e.json()["final"] == true).count();
            finals == results.len()
        },
    );
    let tiles = Tiles::new(TILE_KEY.as_bytes());
    let mut by_class: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for event in &events {
        for member in results.values().flatten() {
            let id = member["member_id"].as_str().unwrap();
            assert!(
                !event.data.contains(id),
                "a member id on the wall: {}",
                event.data
            );
        }
        let record = event.json();
        assert_eq!(record["studio_id"], "studio-0001");
        by_class
            .entry(record["class_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(record);
    }
    assert_eq!(
        by_class.keys().collect::<Vec<_>>(),
        results.keys().collect::<Vec<_>>()
    );
    for (class_id, records) in &by_class {
        let versions: Vec<(u64, u64)> = records.iter().map(version).collect();
        assert!(
            versions.windows(2).all(|pair| pair[0] < pair[1]),
            "{class_id}: {versions:?}"
        );
        assert!(
            records.len() >= 3,
            "{class_id}: the wall moved during the class ({versions:?})"
        );
        let last = records.last().unwrap();
        assert_eq!(last["final"], true, "{class_id}: the last record is final");
        assert_eq!(
            version(last).1 % 2,
            1,
            "{class_id}: a final position is odd"
        );
        assert!(records[..records.len() - 1]
            .iter()
            .all(|r| r["final"] == false));
        assert_shows_result(&tiles, class_id, last, &results[class_id]);
    }

    // A second server rebuilds the board from the topic.
    let second = Running::start(&mut screen_server(lake.path(), &topic));
    await_readiness(second.http, 200, "", Duration::from_secs(60)).await;
    let classes: Vec<&String> = by_class.keys().collect();
    for class_id in &classes {
        let (status, body) = http_get(
            second.http,
            &format!("/studios/studio-0001/classes/{class_id}?k={token}"),
        );
        assert_eq!(status, 200, "{body}");
        let record: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(&record, by_class[*class_id].last().unwrap(), "{class_id}");
    }
    // Resumed there with the first class seen to its end and the second midway: no repeat,
    // the second's newest comes first, then the rest.
    let (done, midway) = (classes[0].as_str(), classes[1].as_str());
    let final_of_done = version(by_class[done].last().unwrap());
    let midway_record = &by_class[midway][by_class[midway].len() / 2];
    let resume = format!(
        "{done}={}.{},{midway}={}.{}",
        final_of_done.0,
        final_of_done.1,
        version(midway_record).0,
        version(midway_record).1
    );
    let resumed = open_stream(second.http, &live, Some(&resume));
    assert_eq!(resumed.status, 200);
    let expected = classes.len() - 1;
    let again = collect_until(
        &resumed,
        Duration::from_secs(30),
        "the classes not yet seen",
        |e| e.len() == expected,
    );
    let first_again = again[0].json();
    assert_eq!(first_again["class_id"], midway, "{:?}", again);
    assert_eq!(
        &first_again,
        by_class[midway].last().unwrap(),
        "the newest, intermediates skipped"
    );
    assert!(
        again.iter().all(|e| e.json()["class_id"] != done),
        "{done} not repeated"
    );
    let last_id = again.last().unwrap().id.clone().unwrap();
    for class_id in &classes {
        assert!(
            last_id.contains(class_id.as_str()),
            "{last_id} names {class_id}"
        );
    }
    drain(second).await;
    drain(first).await;
}

/// A record of class `c1` of `studio_id` at `position`, with `members` tiles of padding.
fn synthetic_record(studio_id: &str, position: u64, members: usize) -> String {
    let tiles: Vec<Value> = (0..members)
        .map(|i| {
            serde_json::json!({
                "tile": format!("{i:012x}"), "hr": 120.0, "hr_pct": 65.0, "zone": 2,
                "hr_pct_avg": 60.0, "effort": position as f64, "hr_max": 185,
                "hr_max_source": "default", "zone_seconds": [0.0, 1.0, 2.0, 3.0, 4.0],
                "distance_m": 0.0, "calories": 0.0
            })
        })
        .collect();
    serde_json::json!({
        "studio_id": studio_id, "class_id": "c1", "version": [0, position * 2],
        "final": false, "elapsed_s": 1.0, "watermark_ms": 0, "members": tiles,
        "leaderboards": {
            "effort": [], "work": [], "treadmill": [], "rower": [], "bike": [], "hidden": 0
        }
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_that_reads_nothing_is_cut_and_a_full_server_says_when_to_return() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    require(&format!("http://{KAFKA}"));
    let (_admin, topic) = create_topic(1).await;
    let lake = tempfile::tempdir().unwrap();
    let token = token(&wall_url(lake.path(), "studio-cut"));
    let other = token_of(lake.path(), "studio-calm");
    let server = Running::start(
        screen_server(lake.path(), &topic).env("CLASSPULSE_SCREENS_MAX_CLIENTS", "2"),
    );
    await_readiness(server.http, 200, "", Duration::from_secs(60)).await;

    // A wall that reads nothing, on a socket with a small receive buffer, and a calm one.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(server.http).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stalled,
        format!("GET /studios/studio-cut/live?k={token} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let calm = open_stream(
        server.http,
        &format!("/studios/studio-calm/live?k={other}"),
        None,
    );
    assert_eq!(calm.status, 200);
    wait_for_metric(
        server.http,
        "classpulse_screens_clients",
        2.0,
        Duration::from_secs(10),
    );
    let (status, body) = http_get(server.http, &format!("/studios/studio-calm/live?k={other}"));
    assert_eq!(status, 503, "{body}");
    let (_, headers) = {
        let full = open_stream(
            server.http,
            &format!("/studios/studio-calm/live?k={other}"),
            None,
        );
        (full.status, full.headers)
    };
    assert!(
        headers.to_ascii_lowercase().contains("retry-after: 5"),
        "{headers}"
    );

    // Records of 200 tiles (about 40 KB) until the stalled wall is cut.
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .create()
        .unwrap();
    let mut position = 1;
    wait_until_async(Duration::from_secs(90), "the stalled wall cut", || {
        let producer = producer.clone();
        let topic = topic.clone();
        let start = position;
        position += 50;
        async move {
            for p in start..start + 50 {
                let body = synthetic_record("studio-cut", p, 200);
                producer
                    .send(
                        FutureRecord::to(&topic).key("studio-cut:c1").payload(&body),
                        Duration::from_secs(5),
                    )
                    .await
                    .map_err(|(e, _)| e.to_string())?;
            }
            let (_, metrics) = http_get(server.http, "/metrics");
            let cut = metric_sum(
                &metrics,
                "classpulse_screens_clients_cut_total{reason=\"stalled\"}",
            );
            if cut >= 1.0 {
                Ok(())
            } else {
                Err(format!("cut {cut}"))
            }
        }
    })
    .await;
    // Its place is free again, and the calm wall was never cut.
    wait_for_metric_at_most(
        server.http,
        "classpulse_screens_clients",
        1.0,
        Duration::from_secs(15),
    );
    let newest_version = (0, (position - 1) * 2);
    wait_until(
        Duration::from_secs(30),
        "the board at the last record",
        || {
            let (_, body) = http_get(
                server.http,
                &format!("/studios/studio-cut/classes/c1?k={token}"),
            );
            let record: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            if version(&record) == newest_version {
                Ok(())
            } else {
                Err(body.chars().take(80).collect())
            }
        },
    );
    let again = open_stream(
        server.http,
        &format!("/studios/studio-cut/live?k={token}"),
        None,
    );
    assert_eq!(again.status, 200);
    let newest = collect_until(&again, Duration::from_secs(10), "the newest record", |e| {
        !e.is_empty()
    });
    assert_eq!(
        version(&newest[0].json()),
        newest_version,
        "the newest comes first"
    );
    drop(stalled);
    drain(server).await;
}

fn token_of(lake: &Path, studio_id: &str) -> String {
    token(&wall_url(lake, studio_id))
}

/// Waits until the metric `name` is at most `at_most`.
fn wait_for_metric_at_most(http: std::net::SocketAddr, name: &str, at_most: f64, within: Duration) {
    wait_until(within, &format!("{name} at most {at_most}"), || {
        let (_, metrics) = http_get(http, "/metrics");
        let value = metric_sum(&metrics, name);
        if value <= at_most {
            Ok(())
        } else {
            Err(format!("{name} is {value}"))
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wall_page_in_a_browser_shows_the_newest_record_and_moves() {
    let lake = tempfile::tempdir().unwrap();
    let mut run = classpulse(lake.path());
    run.arg("run")
        .env("CLASSPULSE_SIM_STUDIOS", "2")
        .env("CLASSPULSE_SIM_DURATION", "60m")
        .env("CLASSPULSE_SIM_SPEEDUP", "20");
    let running = Running::start(&mut run);
    let url = format!("http://{}/studios/studio-0001", running.http);
    let mut browser = Browser::open(&url);
    // What the page shows: the class's version, the status line, each tile and each board
    // (its places as read, numbers included), whether it fits the screen unscrolled, and the
    // tiles' lines that do not fit on one line of their tile (cut short or wrapped).
    let shown = "JSON.stringify({ status: document.getElementById('status').textContent, \
        fits: document.documentElement.scrollHeight <= window.innerHeight, \
        cut: [...document.querySelectorAll('.tile > div')].filter(d => d.scrollWidth > d.clientWidth \
          || d.getBoundingClientRect().height > 1.5 * parseFloat(getComputedStyle(d).lineHeight)).map(d => d.textContent), \
        lines: document.querySelectorAll('.tile > div').length, \
        classes: [...document.querySelectorAll('section.class')].map(s => ({ class: s.dataset.class, version: s.dataset.version, \
        tiles: [...s.querySelectorAll('.tile')].map(t => ({ tile: t.dataset.tile, hr: t.dataset.hr, zone: t.dataset.zone, \
        text: t.querySelector('.hr').textContent })), \
        boards: [...s.querySelectorAll('.board')].map(b => ({ title: b.querySelector('h3').textContent, \
        places: [...b.querySelectorAll('li')].map(li => li.innerText.replace(/\\s+/g, ' ')) })) })) })";
    // Null until the page has loaded.
    let read = |browser: &mut Browser| -> Value {
        match browser.evaluate(shown).as_str() {
            Some(text) => serde_json::from_str(text).unwrap(),
            None => Value::Null,
        }
    };
    let first = wait_until(Duration::from_secs(30), "tiles on the wall", || {
        let page = read(&mut browser);
        let tiles = page["classes"][0]["tiles"].as_array().map_or(0, Vec::len);
        if page["status"] == "live" && tiles > 0 {
            Ok(page)
        } else {
            Err(page.to_string())
        }
    });
    let class_id = first["classes"][0]["class"].as_str().unwrap().to_owned();
    let section = |page: &Value| -> Value {
        page["classes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["class"] == class_id.as_str())
            .cloned()
            .unwrap_or_default()
    };
    let version_of = |page: &Value| -> (u64, u64) {
        let text = section(page)["version"]
            .as_str()
            .unwrap_or("0.0")
            .to_owned();
        let (e, p) = text.split_once('.').unwrap();
        (e.parse().unwrap(), p.parse().unwrap())
    };
    // The page moves on, and shows the record the server holds, tile for tile.
    let (second, record) = wait_until(
        Duration::from_secs(30),
        "the wall shows a newer record",
        || {
            let (status, body) = http_get(
                running.http,
                &format!("/studios/studio-0001/classes/{class_id}"),
            );
            let record: Value = serde_json::from_str(&body).map_err(|e| format!("{status} {e}"))?;
            let page = read(&mut browser);
            if version_of(&page) > version_of(&first) && version_of(&page) == version(&record) {
                Ok((page, record))
            } else {
                Err(format!("{} against {:?}", page, version(&record)))
            }
        },
    );
    let shown = section(&second);
    let tiles = shown["tiles"].as_array().unwrap();
    assert_eq!(tiles.len(), record["members"].as_array().unwrap().len());
    for tile in tiles {
        let member = record["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["tile"] == tile["tile"])
            .unwrap();
        match member["hr"].as_f64() {
            Some(hr) => assert_eq!(tile["text"].as_str().unwrap(), format!("{hr:.0}bpm")),
            None => assert_eq!(tile["text"], "–bpm"),
        }
        assert_eq!(
            tile["zone"],
            member["zone"].as_u64().unwrap_or(0).to_string()
        );
    }
    // Every board of the record, place by place: its number, who (alias, else the tile's
    // start) and value.
    let boards = &record["leaderboards"];
    let mut expected = Vec::new();
    for (title, key, unit, digits) in [
        ("Effort", "effort", " pts", 1),
        ("Work", "work", " kJ", 0),
        ("Treadmill", "treadmill", " m", 0),
        ("Rower", "rower", " m", 0),
        ("Bike", "bike", " m", 0),
    ] {
        let places = boards[key].as_array().cloned().unwrap_or_default();
        if places.is_empty() && key != "effort" {
            continue;
        }
        let places: Vec<String> = places
            .iter()
            .enumerate()
            .map(|(i, place)| {
                let tile = place["tile"].as_str().unwrap();
                let name = place["name"].as_str().unwrap();
                let who = if name == tile {
                    format!("#{}", &tile[..4])
                } else {
                    name.to_owned()
                };
                // As the page's toFixed rounds: half away from zero (values are to 0.1).
                let scale = 10f64.powi(digits as i32);
                let value = (place["value"].as_f64().unwrap() * scale).round() / scale;
                format!("{}. {who} {value:.digits$}{unit}", i + 1)
            })
            .collect();
        expected.push(json!({ "title": title, "places": places }));
    }
    assert!(
        expected.len() > 1,
        "the simulator's class has machines: {boards}"
    );
    assert_eq!(shown["boards"], json!(expected));
    assert_eq!(
        second["fits"],
        true,
        "a class of {} members and its boards fit 1280 x 720 unscrolled",
        tiles.len()
    );
    assert!(second["lines"].as_u64().unwrap() >= 5 * tiles.len() as u64);
    assert_eq!(
        second["cut"],
        json!([]),
        "every line of every tile fits on one line"
    );
    if let Some(path) = std::env::var_os("CLASSPULSE_TEST_WALL_SCREENSHOT") {
        // Well into the class, so the figures have grown.
        wait_until(
            Duration::from_secs(120),
            "ten minutes into the class",
            || {
                let page = read(&mut browser);
                let (_, body) = http_get(
                    running.http,
                    &format!("/studios/studio-0001/classes/{class_id}"),
                );
                let record: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
                let elapsed = record["elapsed_s"].as_f64().unwrap_or(0.0);
                if elapsed >= 600.0 && version_of(&page) == version(&record) {
                    Ok(())
                } else {
                    Err(format!("{elapsed} s"))
                }
            },
        );
        std::fs::write(path, browser.screenshot()).unwrap();
    }
    drop(browser);
    drain(running).await;
}

/// A final record of a studio-0001 class shows its members' final results tile for tile.
fn assert_shows_result(tiles: &Tiles, class_id: &str, last: &Value, members: &[Value]) {
    assert_eq!(last["final"], true, "{class_id}: the record is final");
    assert_eq!(last["members"].as_array().unwrap().len(), members.len());
    for member in members {
        let tile = tiles.tile(
            "studio-0001",
            class_id,
            member["member_id"].as_str().unwrap(),
        );
        let shown = last["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tile"] == tile.as_str())
            .unwrap_or_else(|| panic!("{class_id}: no tile {tile}"));
        close(&shown["effort"], &member["effort_points"], "effort");
        close(&shown["distance_m"], &member["distance_m"], "distance");
        assert_eq!(shown["hr_max"], member["hr_max_used"]);
        assert_eq!(shown["hr_max_source"], member["hr_max_source"]);
        assert_eq!(shown["zone_seconds"], member["zone_seconds"]);
        assert_eq!(shown.get("alias"), member.get("alias"));
        assert!(
            shown["hr"].is_null(),
            "a final record has no current reading"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_and_replay_publish_no_other_values_under_a_version_and_the_wall_keeps_growing() {
    require(&format!("http://{KAFKA}"));
    let (_admin, topic) = create_topic(1).await;
    let lake = tempfile::tempdir().unwrap();
    let token = token(&wall_url(lake.path(), "studio-0001"));
    let screens = Running::start(&mut screen_server(lake.path(), &topic));
    await_readiness(screens.http, 200, "", Duration::from_secs(60)).await;
    let wall = open_stream(
        screens.http,
        &format!("/studios/studio-0001/live?k={token}"),
        None,
    );
    assert_eq!(wall.status, 200, "{}", wall.headers);

    // One stream (a seed and a start), run twice: killed after a class's final record, then
    // restored from its checkpoint (every 5 s, so the kill lands before the next one) and
    // replayed from the start to the end.
    let start = (chrono::Utc::now() - chrono::Duration::minutes(5))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let pipeline = || {
        let mut command = classpulse(lake.path());
        command
            .arg("run")
            .env("CLASSPULSE_LIVE_TOPIC", &topic)
            .env("CLASSPULSE_KAFKA_BROKERS", KAFKA)
            .env("CLASSPULSE_LIVE_TILE_KEY", TILE_KEY)
            .env("CLASSPULSE_LIVE_INTERVAL", "200ms")
            .env("CLASSPULSE_AGG_CHECKPOINT_INTERVAL", "5s")
            // Classes final a moment after their last event, so the first is final (and the
            // kill lands) while the run goes on, not at its end.
            .env("CLASSPULSE_CLASS_IDLE_TIMEOUT", "30s")
            .env("CLASSPULSE_SIM_SEED", "7")
            .env("CLASSPULSE_SIM_START", &start)
            .env("CLASSPULSE_SIM_STUDIOS", "2")
            .env("CLASSPULSE_SIM_CLASS_MINUTES", "2")
            .env("CLASSPULSE_SIM_DURATION", "5m")
            .env("CLASSPULSE_SIM_SPEEDUP", "15");
        command
    };
    let first = Running::start(&mut pipeline());
    let before = collect_until(
        &wall,
        Duration::from_secs(90),
        "a final record before the kill",
        |events| events.iter().any(|e| e.json()["final"] == true),
    );
    first.signal("KILL");
    let (code, _, _) = first.wait(Duration::from_secs(30));
    assert_ne!(code, Some(0), "killed");
    let killed_after = before
        .iter()
        .map(SseEvent::json)
        .find(|r| r["final"] == true)
        .unwrap();

    let mut again = pipeline();
    let stdout = tokio::task::spawn_blocking(move || run_to_end(&mut again))
        .await
        .unwrap();
    let results = final_members(lake.path(), "studio-0001");
    assert!(results.len() >= 2, "{stdout}");
    let after = collect_until(
        &wall,
        Duration::from_secs(60),
        "every class's final record",
        |events| {
            let mut finals: Vec<String> = before
                .iter()
                .chain(events)
                .map(SseEvent::json)
                .filter(|r| r["final"] == true)
                .map(|r| r["class_id"].as_str().unwrap().to_owned())
                .collect();
            finals.sort();
            finals.dedup();
            finals.len() == results.len()
        },
    );

    // The wall: per class strictly growing versions across the kill, none repeated, ending
    // with the final result.
    let tiles = Tiles::new(TILE_KEY.as_bytes());
    let by_class = in_version_order(before.iter().chain(&after).map(SseEvent::json), "the wall");
    for (class_id, records) in &by_class {
        assert_shows_result(
            &tiles,
            class_id,
            records.last().unwrap(),
            &results[class_id],
        );
    }

    // The topic: both runs' records; under one version, one set of values.
    let records = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || topic_records(KAFKA, &topic, 1)
    })
    .await
    .unwrap();
    type Key = (String, String, (u64, u64));
    let mut by_version: BTreeMap<Key, Vec<&Value>> = BTreeMap::new();
    for record in &records {
        let key = (
            record["studio_id"].as_str().unwrap().to_owned(),
            record["class_id"].as_str().unwrap().to_owned(),
            version(record),
        );
        by_version.entry(key).or_default().push(record);
    }
    let mut met = 0;
    for (key, same) in &by_version {
        assert!(
            same.iter().all(|r| r == &same[0]),
            "{key:?}: different values under one version: {same:?}"
        );
        met += usize::from(same.len() > 1);
    }
    eprintln!(
        "{} records, {} versions, {met} published more than once",
        records.len(),
        by_version.len()
    );
    // The final record the kill came after was published again after the restore, equal.
    let resent = &by_version[&(
        "studio-0001".to_owned(),
        killed_after["class_id"].as_str().unwrap().to_owned(),
        version(&killed_after),
    )];
    assert!(
        resent.len() >= 2,
        "the final record was re-sent after the restore"
    );
    assert_eq!(resent[0], &killed_after);
    drain(screens).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_broker_slows_nothing_and_the_walls_catch_up() {
    require(&format!("http://{KAFKA}"));
    let broker = PrivateKafka::start(&unique_name("live-broker")).await;
    let (_admin, topic) = create_topic_on(&broker.brokers, 1).await;
    let lake = tempfile::tempdir().unwrap();
    let mut run = classpulse(lake.path());
    run.arg("run")
        .env("CLASSPULSE_LIVE_TOPIC", &topic)
        .env("CLASSPULSE_KAFKA_BROKERS", &broker.brokers)
        .env("CLASSPULSE_LIVE_TILE_KEY", TILE_KEY)
        .env("CLASSPULSE_LIVE_INTERVAL", "200ms")
        .env("CLASSPULSE_SIM_STUDIOS", "2")
        .env("CLASSPULSE_SIM_DURATION", "10m")
        .env("CLASSPULSE_SIM_SPEEDUP", "20");
    let running = Running::start(&mut run);
    wait_for_metric(
        running.http,
        "classpulse_live_records_total{outcome=\"published\"}",
        5.0,
        Duration::from_secs(60),
    );
    broker.process.signal("STOP");
    let (_, metrics) = http_get(running.http, "/metrics");
    let paused_at = metric_sum(&metrics, "classpulse_events_in_total");
    // Away: the pipeline counts on at its pace, and newer records replace unsent ones.
    wait_for_metric(
        running.http,
        "classpulse_live_records_superseded_total",
        5.0,
        Duration::from_secs(30),
    );
    wait_for_metric(
        running.http,
        "classpulse_events_in_total",
        paused_at + 2_000.0,
        Duration::from_secs(20),
    );
    broker.process.signal("CONT");
    let (code, stdout, logs) =
        tokio::task::spawn_blocking(move || running.wait(Duration::from_secs(120)))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{stdout}\n{}", logs.join("\n"));
    // Back: every class's final record is on the topic, after its live ones.
    let classes: Vec<String> = files_under(&lake.path().join("aggregates/classes"), ".json")
        .iter()
        .map(|file| file.file_stem().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(classes.len(), 2, "{classes:?}");
    let records = tokio::task::spawn_blocking({
        let (brokers, topic) = (broker.brokers.clone(), topic.clone());
        move || topic_records(&brokers, &topic, 1)
    })
    .await
    .unwrap();
    for class in &classes {
        let of_class: Vec<&Value> = records
            .iter()
            .filter(|r| {
                format!(
                    "{}-{}",
                    r["studio_id"].as_str().unwrap(),
                    r["class_id"].as_str().unwrap()
                ) == *class
            })
            .collect();
        let last = of_class
            .last()
            .unwrap_or_else(|| panic!("{class}: no record"));
        assert_eq!(last["final"], true, "{class}: the final record came last");
        assert!(of_class.len() >= 2, "{class}: {} records", of_class.len());
    }
}

/// A screen server on the live stream `stream` of the fan-out server.
fn stream_screen_server(lake: &Path, stream: &str) -> Command {
    let mut command = classpulse(lake);
    with_local_kinesis(&mut command, KINESIS_EFO)
        .arg("screens")
        .env("CLASSPULSE_LIVE_STREAM", stream)
        .env("CLASSPULSE_SCREENS_KEY", SCREENS_KEY);
    command
}

/// `records` by class, each class's versions checked to only grow.
fn in_version_order(
    records: impl Iterator<Item = Value>,
    wall: &str,
) -> BTreeMap<String, Vec<Value>> {
    let mut by_class: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for record in records {
        by_class
            .entry(record["class_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(record);
    }
    for (class_id, records) in &by_class {
        let versions: Vec<(u64, u64)> = records.iter().map(version).collect();
        assert!(
            versions.windows(2).all(|pair| pair[0] < pair[1]),
            "{wall}, {class_id}: {versions:?}"
        );
    }
    by_class
}

fn finals(events: &[SseEvent]) -> usize {
    events.iter().filter(|e| e.json()["final"] == true).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_live_stream_two_screen_servers_show_every_class_in_order_through_a_reshard_and_a_restart(
) {
    require(KINESIS_EFO);
    let kinesis = kinesis_client(KINESIS_EFO).await;
    let stream = create_stream(&kinesis, 1).await;
    let lake = tempfile::tempdir().unwrap();
    let token = token(&wall_url(lake.path(), "studio-0001"));
    let live = format!("/studios/studio-0001/live?k={token}");
    let first = Running::start(&mut stream_screen_server(lake.path(), &stream));
    let second = Running::start(&mut stream_screen_server(lake.path(), &stream));
    await_readiness(first.http, 200, "", Duration::from_secs(60)).await;
    await_readiness(second.http, 200, "", Duration::from_secs(60)).await;
    let wall = open_stream(first.http, &live, None);
    assert_eq!(wall.status, 200, "{}", wall.headers);

    let mut pipeline = classpulse(lake.path());
    with_local_kinesis(&mut pipeline, KINESIS_EFO)
        .arg("run")
        .env("CLASSPULSE_LIVE_STREAM", &stream)
        .env("CLASSPULSE_LIVE_TILE_KEY", TILE_KEY)
        .env("CLASSPULSE_LIVE_INTERVAL", "200ms")
        .env("CLASSPULSE_SIM_STUDIOS", "2")
        .env("CLASSPULSE_SIM_CLASS_MINUTES", "2")
        .env("CLASSPULSE_SIM_DURATION", "5m")
        .env("CLASSPULSE_SIM_SPEEDUP", "10");
    let run = tokio::task::spawn_blocking(move || run_to_end(&mut pipeline));

    // Mid-class, the live stream's one shard is split in two: its records go on in the
    // children, read once the parent is read to its end.
    let mut seen = collect_until(
        &wall,
        Duration::from_secs(60),
        "records before the reshard",
        |e| e.len() >= 5,
    );
    split_first_shard(&kinesis, &stream).await;

    // The second server, restarted mid-class, catches up: its wall starts from each class's
    // record now and goes on with the first server's.
    let (_, logs) = drain(second).await;
    assert!(
        logs.iter()
            .any(|line| line.contains("live stream consumer deregistered")),
        "{}",
        logs.join("\n")
    );
    let second = Running::start(&mut stream_screen_server(lake.path(), &stream));
    await_readiness(second.http, 200, "", Duration::from_secs(60)).await;
    let restarted = open_stream(second.http, &live, None);
    assert_eq!(restarted.status, 200, "{}", restarted.headers);

    let stdout = run.await.unwrap();
    assert!(!stdout.contains("watch:"), "{stdout}");
    let results = final_members(lake.path(), "studio-0001");
    assert!(results.len() >= 2, "classes: {:?}", results.keys());
    let before = finals(&seen);
    seen.extend(collect_until(
        &wall,
        Duration::from_secs(60),
        "every class's final record on the first wall",
        |events| before + finals(events) == results.len(),
    ));
    let after_restart = collect_until(
        &restarted,
        Duration::from_secs(60),
        "every class's final record on the restarted server's wall",
        |events| finals(events) == results.len(),
    );
    let tiles = Tiles::new(TILE_KEY.as_bytes());
    let records = |events: &[SseEvent]| -> Vec<Value> {
        let records: Vec<Value> = events.iter().map(SseEvent::json).collect();
        for record in &records {
            assert_eq!(record["studio_id"], "studio-0001");
        }
        records
    };
    let first_wall = in_version_order(records(&seen).into_iter(), "first wall");
    let second_wall = in_version_order(records(&after_restart).into_iter(), "restarted wall");
    assert_eq!(
        first_wall.keys().collect::<Vec<_>>(),
        results.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        second_wall.keys().collect::<Vec<_>>(),
        results.keys().collect::<Vec<_>>()
    );
    for (class_id, records) in &first_wall {
        assert!(
            records.len() >= 3,
            "{class_id}: the wall moved during the class"
        );
        let last = records.last().unwrap();
        assert_shows_result(&tiles, class_id, last, &results[class_id]);
        assert_eq!(second_wall[class_id].last().unwrap(), last, "{class_id}");
    }
    let children = kinesis
        .list_shards()
        .stream_name(&stream)
        .send()
        .await
        .unwrap()
        .shards()
        .len();
    assert_eq!(children, 3, "the parent and its two children");

    drain(second).await;
    drain(first).await;
    // Each server deregistered its consumer as it stopped.
    let arn = kinesis
        .describe_stream_summary()
        .stream_name(&stream)
        .send()
        .await
        .unwrap()
        .stream_description_summary()
        .unwrap()
        .stream_arn()
        .to_owned();
    let consumers = kinesis
        .list_stream_consumers()
        .stream_arn(&arn)
        .send()
        .await
        .unwrap();
    assert!(
        consumers
            .consumers()
            .iter()
            .all(|c| c.consumer_status().as_str() != "ACTIVE"),
        "{:?}",
        consumers.consumers()
    );
    delete_stream(&kinesis, &stream).await;
}
