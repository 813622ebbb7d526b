//! HTTPS in the daemon: HTTP/2 and HTTP/1.1 over rustls with a test
//! certificate, and a renewed certificate picked up by SIGHUP and served to
//! the next connection.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::*;

struct TestCert {
    pem: String,
    key: String,
    der: Vec<u8>,
}

fn cert() -> TestCert {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    TestCert {
        pem: c.cert.pem(),
        key: c.signing_key.serialize_pem(),
        der: c.cert.der().to_vec(),
    }
}

fn install(c: &TestCert, dir: &Path) {
    std::fs::write(dir.join("cert.pem"), &c.pem).unwrap();
    std::fs::write(dir.join("key.pem"), &c.key).unwrap();
}

/// A client trusting `trust`, on a fresh connection pool, resolving
/// `localhost` to the daemon.
fn client(trust: &[&TestCert], addr: SocketAddr, http1: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_info(true)
        .resolve("localhost", addr)
        .pool_max_idle_per_host(0);
    for c in trust {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(c.pem.as_bytes()).unwrap());
    }
    if http1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

/// The DER of the certificate the server presented.
async fn served_cert(http: &reqwest::Client, url: &str) -> (reqwest::Version, Vec<u8>) {
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let der = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(<[u8]>::to_vec)
        .expect("peer certificate");
    (r.version(), der)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http2_and_http1_and_a_certificate_renewed_by_sighup() {
    let slate = FakeSlate::start().await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok"));
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (cert(), cert());
    install(&a, dir.path());
    let text = format!(
        "{}\n[server.tls]\ncert = {}\nkey = {}\n",
        cfg.render(dir.path()),
        toml_str(&dir.path().join("cert.pem").to_string_lossy()),
        toml_str(&dir.path().join("key.pem").to_string_lossy()),
    );
    let d = Daemon::start_with_text(dir, &text).await;
    let url = format!("https://localhost:{}/healthz", d.addr.port());

    let (version, der) = served_cert(&client(&[&a, &b], d.addr, false), &url).await;
    assert_eq!(version, reqwest::Version::HTTP_2, "ALPN picks HTTP/2");
    assert_eq!(der, a.der);
    let (version, _) = served_cert(&client(&[&a, &b], d.addr, true), &url).await;
    assert_eq!(version, reqwest::Version::HTTP_11);
    let plain = d.http.get(d.url("/healthz")).send().await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "no plain HTTP on a TLS listener"
    );

    // A renewed certificate: SIGHUP, and the next connection gets it.
    install(&b, d.dir());
    d.signal("HUP").await;
    let http = client(&[&a, &b], d.addr, false);
    poll_until("the renewed certificate served", DEADLINE, || async {
        let (_, der) = served_cert(&http, &url).await;
        if der == b.der {
            Ok(())
        } else {
            Err("still the old certificate".to_string())
        }
    })
    .await;

    // A broken renewal is refused; the current certificate stays.
    std::fs::write(d.dir().join("key.pem"), "not a key").unwrap();
    d.signal("HUP").await;
    poll_until("the broken key refused", DEADLINE, || async {
        if d.stderr().contains("server.tls.key") {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    let (_, der) = served_cert(&client(&[&b], d.addr, false), &url).await;
    assert_eq!(der, b.der);
    assert!(
        !d.stderr().contains("not a key"),
        "the key file's text is never logged"
    );
}
