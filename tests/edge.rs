//! The HTTP edge under hostile and odd clients: descriptor limits and idle
//! connections, slow header senders, unauthenticated bodies against the
//! body buffer bound, early answers read by blocking clients (lingering
//! close), the 408 race against the store, and odd requests answered in
//! the JSON error shape (except the answers hyper gives itself, named in
//! the README).

mod common;
#[path = "common/raw.rs"]
mod raw;

use common::{github_signature, poll_until, scrub_env, toml_str, DEADLINE};
use raw::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

/// Lets this test process hold thousands of sockets.
fn raise_own_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

fn assert_json_error(r: &RawResp, status: u16, code: &str, case: &str) {
    assert_eq!(r.status, status, "{case}: {r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{case}: the answer must be JSON: {r:?}"
    );
    assert_eq!(r.json["error"], json!(code), "{case}: {r:?}");
    assert!(
        r.json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}: a message is required: {r:?}"
    );
}

async fn exchange_async(addr: SocketAddr, req: Vec<u8>) -> std::io::Result<RawResp> {
    tokio::task::spawn_blocking(move || exchange(addr, &req))
        .await
        .expect("join")
}

// ---------------------------------------------------------------------------
// Odd requests
// ---------------------------------------------------------------------------

/// What the answer must be: our JSON shape with a code, or one of the bare
/// answers hyper's parser gives itself (README, "What the HTTP stack answers
/// itself").
enum Want {
    Json(u16, &'static str),
    Bare(&'static [u16]),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_requests_are_answered_in_the_json_error_shape() {
    let d = EdgeDaemon::start(&EdgeCfg::default(), None).await;
    let admin = format!("authorization: Bearer {ADMIN}");
    let token = format!("authorization: Bearer {HOOK_TOKEN}");
    let get = |path: &str, extra: &[String]| {
        let mut s = format!("GET {path} HTTP/1.1\r\nhost: x\r\n");
        for h in extra {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    };
    let many = |n: usize| (0..n).map(|i| format!("x-h{i}: v")).collect::<Vec<_>>();
    let mut ct_bad_utf8 = post("/hooks/tok", std::slice::from_ref(&token), b"{}");
    // Splice a raw 0xFF into a Content-Type header.
    let at = ct_bad_utf8
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head end");
    let mut tail = ct_bad_utf8.split_off(at);
    ct_bad_utf8.extend_from_slice(b"\r\ncontent-type: application/json\xff");
    ct_bad_utf8.append(&mut tail);
    let mut ct_bad_utf8_open = ct_bad_utf8.clone();
    // Same on the unverified route, where the check runs after the body.
    let pos = ct_bad_utf8_open
        .windows(9)
        .position(|w| w == b"hooks/tok")
        .expect("path");
    ct_bad_utf8_open.splice(pos..pos + 9, b"hooks/open".iter().copied());

    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        (
            "bad URL encoding in a hook path",
            post("/hooks/%FF", &[], b"{}"),
            Want::Json(400, "bad_request"),
        ),
        (
            "bad URL encoding in a run path",
            get("/runs/%FF", std::slice::from_ref(&admin)),
            Want::Json(400, "bad_request"),
        ),
        (
            "a query the admin API rejects",
            get("/runs?limit=lots", std::slice::from_ref(&admin)),
            Want::Json(400, "bad_request"),
        ),
        (
            "wrong method on a hook",
            get("/hooks/gh", &[]),
            Want::Json(405, "method_not_allowed"),
        ),
        (
            "wrong method on healthz",
            post("/healthz", &[], b""),
            Want::Json(405, "method_not_allowed"),
        ),
        (
            "unknown path",
            get("/nope", &[]),
            Want::Json(404, "not_found"),
        ),
        (
            "unknown route",
            post("/hooks/nope", &[], b"{}"),
            Want::Json(404, "route_not_found"),
        ),
        (
            "text/plain on a token route",
            post(
                "/hooks/tok",
                &[token.clone(), "content-type: text/plain".into()],
                b"{}",
            ),
            Want::Json(415, "unsupported_media_type"),
        ),
        (
            "a content type that is not a MIME type",
            post(
                "/hooks/open",
                &["content-type: json".into()],
                br#"{"id":"x"}"#,
            ),
            Want::Json(415, "unsupported_media_type"),
        ),
        (
            "invalid UTF-8 content type (token route, before the body)",
            ct_bad_utf8,
            Want::Json(415, "unsupported_media_type"),
        ),
        (
            "invalid UTF-8 content type (unverified route)",
            ct_bad_utf8_open,
            Want::Json(415, "unsupported_media_type"),
        ),
        (
            "more header fields than server.max_headers",
            get("/healthz", &many(40)),
            Want::Json(431, "headers_too_large"),
        ),
        (
            "headers over server.max_header_bytes",
            get("/healthz", &[format!("x-big: {}", "a".repeat(10_000))]),
            Want::Json(431, "headers_too_large"),
        ),
        (
            "a request target over 8 KiB",
            get(&format!("/healthz?{}", "q".repeat(9_000)), &[]),
            Want::Json(414, "uri_too_long"),
        ),
        (
            "far more header fields than the parser allows",
            get("/healthz", &many(200)),
            Want::Bare(&[431]),
        ),
        (
            "headers far over the parser's size limit",
            get("/healthz", &[format!("x-big: {}", "a".repeat(40_000))]),
            Want::Bare(&[431]),
        ),
        (
            "a huge request target",
            get(&format!("/healthz?{}", "q".repeat(70_000)), &[]),
            Want::Bare(&[414, 431]),
        ),
        (
            "a malformed request line",
            b"GARBAGE\r\n\r\n".to_vec(),
            Want::Bare(&[400]),
        ),
        (
            "a malformed header line",
            b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
            Want::Bare(&[400]),
        ),
    ];
    let mut failures = Vec::new();
    for (case, req, want) in cases {
        let r = match exchange_async(d.addr, req).await {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{case}: no answer: {e}"));
                continue;
            }
        };
        match want {
            Want::Json(status, code) => {
                let ok = r.status == status
                    && r.header("content-type")
                        .is_some_and(|c| c.starts_with("application/json"))
                    && r.json["error"] == json!(code)
                    && r.json["message"].as_str().is_some_and(|m| !m.is_empty());
                if !ok {
                    failures.push(format!("{case}: want {status} {code}, got {r:?}"));
                }
                if status == 405 && r.header("allow").is_none() {
                    failures.push(format!("{case}: a 405 needs Allow: {r:?}"));
                }
            }
            Want::Bare(statuses) => {
                if !statuses.contains(&r.status) || !r.body.is_empty() {
                    failures.push(format!("{case}: want hyper's bare {statuses:?}, got {r:?}"));
                }
            }
        }
    }
    // Nothing odd was stored.
    let (status, runs) = d.admin_get("/runs").await;
    assert_eq!(status, 200, "{runs}");
    assert_eq!(runs["runs"], json!([]), "odd requests stored runs");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    d.terminate().await;
}

// ---------------------------------------------------------------------------
// Early answers reach blocking clients
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_early_answers_reach_a_client_that_writes_its_whole_body_first() {
    let d = EdgeDaemon::start(&EdgeCfg::default(), None).await;
    let body = Arc::new(vec![b'x'; 3 * MIB]);
    let t0 = Instant::now();
    let cases = [
        (
            "/hooks/gh",
            "x-hub-signature-256: sha256=00".to_string(),
            413,
            "payload_too_large",
        ),
        (
            "/hooks/tok",
            "authorization: Bearer wrong".to_string(),
            401,
            "unauthorized",
        ),
    ];
    for (path, header, status, code) in cases {
        let addr = d.addr;
        let body = body.clone();
        let results = tokio::task::spawn_blocking(move || {
            (0..50)
                .map(|_| exchange(addr, &post(path, std::slice::from_ref(&header), &body)))
                .collect::<Vec<_>>()
        })
        .await
        .expect("join");
        let mut bad = Vec::new();
        for (i, r) in results.iter().enumerate() {
            match r {
                Ok(r) if r.status == status && r.json["error"] == json!(code) => {}
                other => bad.push(format!("#{i}: {other:?}")),
            }
        }
        assert!(
            bad.is_empty(),
            "{path}: {} of 50 blocking clients did not read the {status}: {}",
            bad.len(),
            bad.join("; ")
        );
        if let Ok(r) = &results[0] {
            assert_json_error(r, status, code, path);
        }
    }
    // Refused before a body byte was buffered: declared length over the
    // limit, token checked before the body.
    let ready = d.readyz().await;
    assert_eq!(
        ready["edge"]["body_bytes_buffered_peak"],
        json!(0),
        "{ready}"
    );
    // A chunked body (no declared length) is cut off at the limit as it
    // arrives, and the sender still reads the 413.
    let mut chunked =
        b"POST /hooks/gh HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(format!("{:x}\r\n", MIB).as_bytes());
        chunked.extend_from_slice(&body[..MIB]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    for i in 0..10 {
        let r = exchange_async(d.addr, chunked.clone())
            .await
            .unwrap_or_else(|e| panic!("chunked #{i}: {e}"));
        assert_json_error(&r, 413, "payload_too_large", "chunked");
    }
    eprintln!("100 early answers to 3 MiB bodies in {:?}", t0.elapsed());
    // The chunked ones held at most a limit's worth (plus one chunk).
    let ready = d.readyz().await;
    let peak = ready["edge"]["body_bytes_buffered_peak"].as_u64();
    assert!(
        peak.is_some_and(|p| p > 0 && p <= 2 * MIB as u64),
        "{ready}"
    );
    assert_eq!(ready["edge"]["body_bytes_buffered"], json!(0), "{ready}");
    d.terminate().await;
}

// ---------------------------------------------------------------------------
// Descriptors, idle connections, slow headers
// ---------------------------------------------------------------------------

/// Sends a request head one byte a second; returns how long until the
/// server closed the connection.
async fn slow_header_sender(addr: SocketAddr, give_up: Duration) -> Option<Duration> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let t0 = Instant::now();
    let head = b"POST /hooks/gh HTTP/1.1\r\nhost: x\r\nx-padding: ";
    let mut i = 0usize;
    let mut buf = [0u8; 1024];
    while t0.elapsed() < give_up {
        let byte = head.get(i).copied().unwrap_or(b'a');
        i += 1;
        if s.write_all(&[byte]).await.is_err() {
            return Some(t0.elapsed());
        }
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => return Some(t0.elapsed()),
            Err(_) => {}
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_idle_connections_and_slow_headers_under_a_1024_descriptor_limit() {
    raise_own_limit();
    for hard in [20_000u64, 1024] {
        let t0 = Instant::now();
        let d = EdgeDaemon::start(&EdgeCfg::default(), Some((1024, hard))).await;
        let log = d.stderr();
        let expect_cap = if hard == 1024 { 768 } else { 10_000 };
        assert!(
            log.contains(&format!("soft={hard}"))
                && log.contains(&format!("max_connections={expect_cap}")),
            "hard limit {hard}: startup should log the raised limit and cap {expect_cap}:\n{log}"
        );

        // A slow header sender is cut off by header_read_timeout (5s).
        let cut = slow_header_sender(d.addr, Duration::from_secs(20)).await;
        let cut = cut.expect("the slow header sender was never cut off");
        assert!(
            cut >= Duration::from_secs(4) && cut < Duration::from_secs(9),
            "hard {hard}: slow header sender cut after {cut:?}, expected about 5s"
        );

        // 2,000 idle connections.
        let mut conns = Vec::with_capacity(2000);
        let mut slowest = (Duration::ZERO, 0usize);
        for i in 0..2000 {
            let tc = Instant::now();
            let c = TcpStream::connect(d.addr).await;
            if tc.elapsed() > slowest.0 {
                slowest = (tc.elapsed(), i);
            }
            match c {
                Ok(s) => conns.push(s),
                Err(e) => panic!("hard {hard}: connect #{} failed: {e}", conns.len()),
            }
        }
        let t_conn = t0.elapsed();
        eprintln!("slowest connect {slowest:?}");
        let r = exchange_async(
            d.addr,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
        )
        .await
        .unwrap_or_else(|e| panic!("hard {hard}: /healthz with 2,000 idle connections: {e}"));
        assert_eq!(r.status, 200, "{r:?}");
        let t_health = t0.elapsed();
        let ready = d.readyz().await;
        let open = ready["edge"]["connections"].as_u64().unwrap_or(0);
        if hard == 1024 {
            // Evicted connections leave the gauge when their task ends.
            poll_until(
                "at most the cap of 768 connections open",
                DEADLINE,
                || async {
                    let ready = d.readyz().await;
                    match ready["edge"]["connections"].as_u64() {
                        Some(n) if n <= 768 + 8 => Ok(n),
                        _ => Err(format!("{ready}")),
                    }
                },
            )
            .await;
            // The oldest idle connections were closed to make room.
            let closed = poll_until("evicted idle connections", DEADLINE, || {
                let mut n = 0;
                let mut buf = [0u8; 64];
                for c in &conns {
                    if let Ok(0) = c.try_read(&mut buf) {
                        n += 1;
                    }
                }
                let want = 2000 - 768;
                async move {
                    if n >= want {
                        Ok(n)
                    } else {
                        Err(format!("{n} closed, want {want}"))
                    }
                }
            })
            .await;
            eprintln!(
                "hard 1024: {closed} idle connections evicted, {open} open; connected by {t_conn:?}, healthz by {t_health:?}, evictions seen by {:?}",
                t0.elapsed()
            );
        } else {
            // connect() returns once the kernel completed the handshake; the
            // daemon accepts from its backlog a moment later.
            poll_until("all 2,000 idle connections held", DEADLINE, || async {
                let ready = d.readyz().await;
                match ready["edge"]["connections"].as_u64() {
                    Some(n) if n >= 2000 => Ok(n),
                    _ => Err(format!("{ready}")),
                }
            })
            .await;
        }
        drop(conns);
        for l in d
            .stderr()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(5)
        {
            eprintln!("daemon: {l}");
        }
        eprintln!(
            "hard limit {hard}: slow sender cut after {cut:?}; whole case {:?}",
            t0.elapsed()
        );
        d.terminate().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_with_every_connection_busy_a_new_one_gets_a_json_503() {
    let cfg = EdgeCfg {
        max_connections: 4,
        ..EdgeCfg::default()
    };
    let d = EdgeDaemon::start(&cfg, None).await;
    // Four requests in flight: headers sent, body only half written. Each
    // asks `Expect: 100-continue`, and hyper sends `100 Continue` only once
    // the handler runs and reads the body: reading it proves the request is
    // in flight (not merely a connection with unparsed headers, which would
    // be idle and evictable), however slow the machine.
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(d.addr).await.expect("connect");
        s.write_all(
            b"POST /hooks/open HTTP/1.1\r\nhost: x\r\ncontent-length: 20\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .expect("write");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(DEADLINE, s.read(&mut byte))
                .await
                .expect("100 Continue in time")
                .expect("read");
            assert_eq!(n, 1, "closed before 100 Continue: {head:?}");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 100"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        s.write_all(b"{\"id\":").await.expect("write");
        busy.push(s);
    }
    let r = poll_until("a 503 at the connection cap", DEADLINE, || async {
        let r = exchange_async(d.addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n".to_vec())
            .await
            .map_err(|e| e.to_string())?;
        if r.status == 503 {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await;
    assert_json_error(&r, 503, "too_many_connections", "at the cap");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"), "{r:?}");
    // The busy requests still complete once their bodies arrive.
    for (i, mut s) in busy.into_iter().enumerate() {
        let rest = format!("\"b{i}\"}}");
        let pad = 20 - 6 - rest.len();
        s.write_all(format!("{rest}{}", " ".repeat(pad)).as_bytes())
            .await
            .expect("finish body");
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let mut chunk = [0u8; 4096];
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                if parse_response(&buf).is_some_and(|r| !r.body.is_empty()) {
                    break;
                }
            }
        })
        .await;
        let r = parse_response(&buf).expect("an answer to the busy request");
        assert_eq!(r.status, 202, "busy request #{i}: {r:?}");
    }
    d.terminate().await;
}

/// Reads from `s` until the server closes it; returns how long that took.
async fn until_closed(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_closes_and_shutdown_lets_in_flight_requests_finish() {
    let cfg = EdgeCfg {
        idle_timeout: "1s",
        ..EdgeCfg::default()
    };
    let mut d = EdgeDaemon::start(&cfg, None).await;

    // A keep-alive connection idle after its answer is closed after ~1s.
    let mut ka = TcpStream::connect(d.addr).await.expect("connect");
    ka.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = ka.read(&mut buf).await.expect("answer");
    assert!(parse_response(&buf[..n]).is_some_and(|r| r.status == 200));
    let idle = until_closed(&mut ka, Duration::from_secs(10))
        .await
        .expect("the idle keep-alive connection was never closed");
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(4),
        "closed after {idle:?}, expected about idle_timeout = 1s"
    );

    // Shutdown: an idle connection closes at once, a request in flight
    // (body half sent) still completes, then the daemon exits 0.
    let mut idle_conn = TcpStream::connect(d.addr).await.expect("connect");
    let mut busy = TcpStream::connect(d.addr).await.expect("connect");
    busy.write_all(b"POST /hooks/open HTTP/1.1\r\nhost: x\r\ncontent-length: 16\r\n\r\n{\"id\":")
        .await
        .expect("write");
    // Wait until the daemon counts the busy request's connection.
    poll_until("two connections open", DEADLINE, || async {
        let r = d.readyz().await;
        let n = r["edge"]["connections"].as_u64().unwrap_or(0);
        if n >= 3 {
            Ok(())
        } else {
            Err(r.to_string())
        }
    })
    .await;
    d.sigterm().await;
    let closed = until_closed(&mut idle_conn, Duration::from_secs(4)).await;
    assert!(closed.is_some(), "an idle connection closes at shutdown");
    busy.write_all(b"\"sd\"}     ").await.expect("finish body");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(4), busy.read_to_end(&mut out)).await;
    let r = parse_response(&out).expect("the in-flight request is answered");
    assert_eq!(r.status, 202, "{r:?}");
    let status = d.wait_exit(Duration::from_secs(8)).await.expect("exits");
    assert!(status.success(), "{status:?}");
}

// ---------------------------------------------------------------------------
// Unauthenticated bodies and the body buffer bound
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_badly_signed_bodies_stay_within_the_body_buffer_bound() {
    raise_own_limit();
    const BOUND: u64 = 8 * MIB as u64;
    const RSS_BOUND_KIB: u64 = 200 * 1024;
    let d = EdgeDaemon::start(&EdgeCfg::default(), Some((1024, 20_000))).await;
    let rss_before = d.rss_kib();
    let body = Arc::new(vec![b'{'; MIB]);
    let sig = github_signature("not-the-secret", &body);
    let head = Arc::new(
        format!(
            "POST /hooks/gh HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-hub-signature-256: {sig}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes(),
    );
    let peak_rss = Arc::new(AtomicU64::new(rss_before));
    let pid = d.pid();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let peak = peak_rss.clone();
        let on = sampling.clone();
        tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..400 {
        let (addr, head, body) = (d.addr, head.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            s.write_all(&head).await.map_err(|e| e.to_string())?;
            s.write_all(&body).await.map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf)).await;
            parse_response(&buf)
                .ok_or_else(|| format!("no answer: {:?}", String::from_utf8_lossy(&buf)))
        }));
    }
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        let key = match t.await.expect("join") {
            Ok(r) if r.status == 401 && r.json["error"] == json!("unauthorized") => "401".into(),
            Ok(r) => format!("{} {}", r.status, r.json),
            Err(e) => e,
        };
        *statuses.entry(key).or_default() += 1;
    }
    let took = t0.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let ready = d.readyz().await;
    let peak = ready["edge"]["body_bytes_buffered_peak"]
        .as_u64()
        .unwrap_or(u64::MAX);
    let rss_peak = peak_rss.load(Ordering::Relaxed);
    eprintln!(
        "400 x 1 MiB badly signed: {statuses:?} in {took:?}; body bytes peak {peak} (bound {BOUND}); RSS {rss_before} KiB before, peak {rss_peak} KiB"
    );
    assert_eq!(
        statuses.get("401"),
        Some(&400),
        "every one gets 401: {statuses:?}"
    );
    assert!(peak <= BOUND, "peak {peak} over the bound {BOUND}: {ready}");
    assert!(peak >= MIB as u64, "the gauge saw the bodies: {ready}");
    assert_eq!(ready["edge"]["body_bytes_buffered"], json!(0), "{ready}");
    assert!(
        rss_peak < RSS_BOUND_KIB,
        "RSS peaked at {rss_peak} KiB, over {RSS_BOUND_KIB} KiB"
    );
    d.terminate().await;
}

// ---------------------------------------------------------------------------
// The 408 race: answers match the store
// ---------------------------------------------------------------------------

/// Fires `n` hook requests, `conc` at a time; returns (id, status, run id).
async fn fire(
    addr: SocketAddr,
    round: usize,
    n: usize,
    pad: usize,
) -> Vec<(String, u16, Option<String>)> {
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for i in 0..n {
        let id = format!("r{round}-{i}");
        let body = serde_json::to_vec(&json!({ "id": id, "pad": "p".repeat(pad) })).expect("json");
        let req = post(
            "/hooks/open",
            &["content-type: application/json".into()],
            &body,
        );
        let permit = sem.clone().acquire_owned().await.expect("sem");
        tasks.push(tokio::spawn(async move {
            let r = exchange_async(addr, req).await;
            drop(permit);
            match r {
                Ok(r) => {
                    let run = r.json["run_id"].as_str().map(str::to_string);
                    (id, r.status, run)
                }
                Err(e) => panic!("{id}: no answer: {e}"),
            }
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("join"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_408_race_every_answer_matches_the_store() {
    let mut timeout_us: u64 = 3000;
    let mut both_seen = false;
    let mut log = Vec::new();
    for round in 0..10 {
        let cfg = EdgeCfg {
            request_timeout: format!("{timeout_us}us"),
            ..EdgeCfg::default()
        };
        let d = EdgeDaemon::start(&cfg, None).await;
        let results = fire(d.addr, round, 64, 900_000).await;
        let ok: Vec<_> = results.iter().filter(|r| r.1 / 100 == 2).collect();
        let timed_out = results.iter().filter(|r| r.1 == 408).count();
        let other: Vec<_> = results
            .iter()
            .filter(|r| r.1 / 100 != 2 && r.1 != 408)
            .collect();
        assert!(other.is_empty(), "only 2xx and 408 expected: {other:?}");
        log.push(format!("{timeout_us}us: {} 2xx, {timed_out} 408", ok.len()));

        // Every request's fate in the store matches its answer (read back
        // with a usable request_timeout on the same store).
        let d = d.restart_with(&EdgeCfg::default()).await;
        let (status, runs) = d.admin_get("/runs?route=open&limit=1000").await;
        assert_eq!(status, 200, "{runs}");
        // A list row has no inputs: read each run whole.
        let mut stored: BTreeMap<String, String> = BTreeMap::new();
        for r in runs["runs"].as_array().expect("runs") {
            let id = r["id"].as_str().unwrap_or_default().to_string();
            let (status, run) = d.admin_get(&format!("/runs/{id}")).await;
            assert_eq!(status, 200, "{run}");
            stored.insert(
                run["inputs"]["id"].as_str().unwrap_or_default().to_string(),
                id,
            );
        }
        let answered_2xx: BTreeSet<&String> = ok.iter().map(|r| &r.0).collect();
        let stored_ids: BTreeSet<&String> = stored.keys().collect();
        assert_eq!(
            stored_ids, answered_2xx,
            "runs stored must be exactly the requests answered 2xx ({timeout_us}us)"
        );
        for (id, _, run) in &ok {
            assert_eq!(
                stored.get(id),
                run.as_ref(),
                "{id}: the 2xx run id is the stored one"
            );
        }
        d.terminate().await;

        if !ok.is_empty() && timed_out > 0 {
            both_seen = true;
            break;
        }
        timeout_us = if ok.is_empty() {
            timeout_us * 2
        } else {
            (timeout_us / 2).max(10)
        };
    }
    eprintln!("408 race: {}", log.join("; "));
    assert!(both_seen, "never saw both 2xx and 408: {}", log.join("; "));
}
