//! The web console in a real browser: headless Chromium (Debian's
//! `chromium` and `chromium-driver`, installed by `.ci/run`) driven over
//! WebDriver against the real daemon. Signs in, sees a run appear with its
//! status, redelivers a dead delivery (same `webhook-id` at the receiver),
//! and checks the read-only and CSRF refusals.
//!
//! With `RUNBRIDGE_SCREENSHOTS=docs` the test also writes the screenshots
//! used by the README (`docs/console-*.png`); CI leaves them alone.

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

/// `cfg` as TOML with [`READ_TOKEN`] added as a read token.
fn with_read_token(cfg: &Config, dir: &std::path::Path) -> String {
    format!(
        "{}\n[[admin.tokens]]\ntoken = \"{READ_TOKEN}\"\nrole = \"read\"\n",
        cfg.render(dir)
    )
}

/// A client that shows redirects instead of following them.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .expect("reqwest client")
}

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
                         "--disable-dev-shm-usage", "--window-size=1280,1000",
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
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&dir).expect("docs/");
        let path = dir.join(name);
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
    let resp = raw_client()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_console_sets_a_strict_cookie_and_headers_and_limits_failed_sign_ins() {
    let slate = FakeSlate::start().await;
    let cfg = Config::new(&slate).route(RouteCfg::new("gh", "wf_ok"));
    let dir = tempfile::tempdir().expect("tempdir");
    let text = with_read_token(&cfg, dir.path());
    let d = Daemon::start_with_text(dir, &text).await;
    let http = raw_client();
    let read_cookie = sign_in_raw(&d, READ_TOKEN).await;
    let resp = http
        .post(d.url("/ui/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(resp.headers()["location"], "/ui/runs");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP here: {cookie}");
    assert!(!cookie.contains(ADMIN_TOKEN), "{cookie}");
    let value = cookie
        .split(';')
        .next()
        .and_then(|c| c.split_once('='))
        .map(|(_, v)| v.to_string())
        .unwrap();
    let resp = http
        .get(d.url("/ui/runs"))
        .header("cookie", format!("runbridge_session={value}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let h = resp.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["cache-control"], "no-store");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = resp.text().await.unwrap();
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external references"
    );
    // Nothing inline for the CSP to block: no script, no style attribute.
    assert!(
        !page.contains("<script") && !page.contains("style="),
        "{page}"
    );
    assert!(cookie.contains("Max-Age=43200"), "{cookie}");

    // Unknown console pages are HTML 404s, not the API's JSON.
    let resp = http.get(d.url("/ui/nope")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));

    // Wrong tokens: 401 with the form, then 429 once the address used up its tries.
    let mut codes = Vec::new();
    for _ in 0..7 {
        let resp = http
            .post(d.url("/ui/login"))
            .form(&[("token", "wrong")])
            .send()
            .await
            .unwrap();
        codes.push(resp.status().as_u16());
        assert!(resp.text().await.unwrap().contains("id=\"token\""));
    }
    assert_eq!(codes, [401, 401, 401, 401, 401, 429, 429]);
    // Even the right token waits out the window (no oracle while limited).
    let resp = http
        .post(d.url("/ui/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);

    // A token removed from the config (and reloaded) ends its sessions.
    let page = |cookie: String| {
        let http = http.clone();
        let url = d.url("/ui/runs");
        async move {
            http.get(url)
                .header("cookie", format!("runbridge_session={cookie}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(page(read_cookie.clone()).await, 200);
    std::fs::write(&d.config_path, cfg.render(d.dir())).expect("rewrite config");
    let resp = http
        .post(d.url("/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "{}",
        resp.text().await.unwrap()
    );
    assert_eq!(
        page(read_cookie).await,
        303,
        "the read token's session ended"
    );
    assert_eq!(page(value).await, 200, "the write token's session goes on");
}

/// Signs in over plain HTTP; answers the session cookie's value.
async fn sign_in_raw(d: &Daemon, token: &str) -> String {
    let resp = raw_client()
        .post(d.url("/ui/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    cookie
        .split(';')
        .next()
        .and_then(|c| c.split_once('='))
        .map(|(_, v)| v.to_string())
        .expect("a session cookie")
}

/// The receiver's `webhook-id` for a run's first callback.
fn first_webhook_id(rx: &Receiver, run: &str) -> String {
    rx.for_run(run)
        .first()
        .map(|r| r.webhook_id.clone())
        .unwrap_or_else(|| panic!("no callback for {run}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_console_shows_runs_and_redelivers_dead_deliveries() {
    let slate = FakeSlate::start().await;
    let mut rx = Receiver::start(CALLBACK_SECRET).await;
    rx.set_mode(Mode::Failing).await;
    // Two attempts, then dead.
    let cfg = Config::new(&slate)
        .schedule(&["0s", "100ms"])
        .route(RouteCfg::new("gh", "wf_ok").callback(&rx.url()))
        .route(RouteCfg::new("deploy", "wf_fail"));
    let dir = tempfile::tempdir().expect("tempdir");
    let text = with_read_token(&cfg, dir.path());
    let d = Daemon::start_with_text(dir, &text).await;
    let base = d.base.clone();
    let b = Browser::start().await;
    b.sign_in(&base, ADMIN_TOKEN).await;
    assert_eq!(b.wait_for("#role").await.text().await.unwrap(), "write");

    // Runs triggered now appear with their status.
    let run1 = d.trigger("gh", "delivery-1", "octo/one").await;
    let run2 = d.trigger("gh", "delivery-2", "octo/two").await;
    let runs_url = format!("{base}/ui/runs");
    for id in [&run1, &run2] {
        let css = format!("tr[data-run='{id}'] td.status");
        b.wait_text(&runs_url, &css, "the run's status", |t| t == "succeeded")
            .await;
        d.wait_run(id, "its delivery dead", |r| {
            r["deliveries"][0]["state"] == "dead"
        })
        .await;
    }
    let id1 = first_webhook_id(&rx, &run1);
    let id2 = first_webhook_id(&rx, &run2);

    // The dead deliveries are listed, with buttons for a write session.
    let deliveries_url = format!("{base}/ui/deliveries?state=dead");
    b.goto(&deliveries_url).await;
    for id in [&run1, &run2] {
        b.wait_for(&format!("tr[data-delivery='{id}/0'] button.redeliver"))
            .await;
    }
    b.screenshot("console-deliveries.png").await;

    // A read-only session sees the same rows and no button; a forged POST
    // (with its own valid CSRF token) is refused.
    b.sign_out().await;
    b.sign_in(&base, READ_TOKEN).await;
    assert_eq!(b.wait_for("#role").await.text().await.unwrap(), "read only");
    b.goto(&deliveries_url).await;
    b.wait_for(&format!("tr[data-delivery='{run1}/0']")).await;
    assert!(!b.has("button.redeliver").await, "{}", b.source().await);
    b.goto(&format!("{base}/ui/runs/{run1}")).await;
    b.wait_for("section.delivery[data-state='dead']").await;
    assert!(!b.has("button.redeliver").await);
    assert!(!b.has("form.redeliver").await);
    assert!(!b.has("button#replay").await);
    assert!(!b.has("form[method=post] button:not(#logout)").await);
    let (cookie, csrf) = b.session().await;
    let path = format!("/ui/runs/{run1}/deliveries/0/redeliver");
    let (status, page) = form_post(&d, &path, &cookie, &[("csrf", &csrf)]).await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("read-only"), "{page}");
    b.sign_out().await;

    // A write session: no CSRF token, no redelivery.
    b.sign_in(&base, ADMIN_TOKEN).await;
    b.wait_for("#role").await;
    let (cookie, _) = b.session().await;
    let (status, _) = form_post(&d, &path, &cookie, &[]).await;
    assert_eq!(status, 403);
    let before = rx.for_run(&run1).len();

    // The receiver is back; the button on the run's page redelivers.
    rx.set_mode(Mode::Healthy).await;
    b.goto(&format!("{base}/ui/runs/{run1}")).await;
    b.wait_for("section.delivery[data-index='0'] button.redeliver")
        .await
        .click()
        .await
        .expect("click redeliver");
    b.wait_for("#notice").await;
    let got = rx.wait_delivered(&run1).await;
    assert_eq!(got.webhook_id, id1, "a redelivery keeps the webhook-id");
    assert!(got.signature_valid);
    assert_eq!(rx.for_run(&run1).len(), before + 1);
    b.wait_text(
        &format!("{base}/ui/runs/{run1}"),
        "section.delivery[data-index='0'] .badge",
        "the delivery delivered",
        |t| t == "delivered",
    )
    .await;
    b.screenshot("console-run.png").await;

    // Replay: a new linked run; the same form sent twice acts once.
    b.wait_for("button#replay")
        .await
        .click()
        .await
        .expect("replay");
    b.wait_for("#notice").await;
    let link = b.wait_for("a.replay-of").await.text().await.unwrap();
    assert_eq!(link, run1);
    let (cookie, csrf) = b.session().await;
    let path = format!("/ui/runs/{run1}/replay");
    let fields = [("csrf", csrf.as_str()), ("once", "double-click")];
    let first = raw_client()
        .post(d.url(&path))
        .header("cookie", format!("runbridge_session={cookie}"))
        .form(&fields)
        .send()
        .await
        .unwrap();
    let again = raw_client()
        .post(d.url(&path))
        .header("cookie", format!("runbridge_session={cookie}"))
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 303);
    assert_eq!(again.status().as_u16(), 303);
    assert_eq!(first.headers()["location"], again.headers()["location"]);
    let replays = d.get_run(&run1).await["replays"].as_array().unwrap().len();
    assert_eq!(replays, 2, "one from the button, one from the doubled form");

    // And the button on the deliveries page.
    b.goto(&deliveries_url).await;
    b.wait_for(&format!("tr[data-delivery='{run2}/0'] button.redeliver"))
        .await
        .click()
        .await
        .expect("click redeliver");
    b.wait_for("#notice").await;
    let got = rx.wait_delivered(&run2).await;
    assert_eq!(got.webhook_id, id2);

    // A third run, delivered at once, for the runs page as it usually looks.
    let run3 = d.trigger("gh", "delivery-3", "octo/three").await;
    rx.wait_delivered(&run3).await;
    let css = format!("tr[data-run='{run3}'] td.status");
    b.wait_text(&runs_url, &css, "the third run", |t| t == "succeeded")
        .await;
    // A failed run of another route; the status filter shows only it.
    let failed = d.trigger("deploy", "delivery-4", "octo/four").await;
    let css = format!("tr[data-run='{failed}'] td.status");
    b.wait_text(&runs_url, &css, "the failed run", |t| t == "failed")
        .await;
    b.screenshot("console-runs.png").await;
    b.goto(&format!("{base}/ui/runs?status=failed")).await;
    b.wait_for(&format!("tr[data-run='{failed}']")).await;
    assert!(!b.has(&format!("tr[data-run='{run3}']")).await);
    b.goto(&format!("{base}/ui/runs?route=gh")).await;
    b.wait_for(&format!("tr[data-run='{run3}']")).await;
    assert!(!b.has(&format!("tr[data-run='{failed}']")).await);
    b.goto(&format!("{base}/ui/routes")).await;
    b.wait_for("div.card[data-route='gh']").await;
    b.close().await;
}
