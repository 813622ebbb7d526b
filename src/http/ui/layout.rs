//! The console's frame: page layout, sign-in form, error pages, badges.
//! Templates are `maud` macros, compiled in and escaping every value.

use super::session::Access;
use maud::{html, Markup, PreEscaped, DOCTYPE};

/// The sections of the top bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Runs,
    Deliveries,
    Routes,
}

/// Who is signed in, for the top bar and the forms of a page.
pub struct Viewer<'a> {
    pub access: Access,
    pub csrf: &'a str,
}

impl Viewer<'_> {
    /// Whether this session may act (sees buttons).
    pub fn can_write(&self) -> bool {
        self.access == Access::Write
    }

    /// The hidden CSRF field every form of the page carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }

    /// The hidden fields of an action form: the CSRF token and a fresh
    /// one-time key, so a double-clicked button acts once.
    pub fn action_fields(&self) -> Markup {
        html! {
            (self.csrf_field())
            input type="hidden" name="once" value=(super::session::random_token());
        }
    }
}

fn head(title: &str, refresh: Option<u32>) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="no-referrer";
            @if let Some(s) = refresh {
                meta http-equiv="refresh" content=(s);
            }
            title { (title) " · runbridge" }
            link rel="stylesheet" href="/ui/assets/console.css";
        }
    }
}

/// A signed-in page: top bar with the sections, the role, sign-out.
/// `refresh` reloads the page every so many seconds (live status with
/// no script).
pub fn page(title: &str, nav: Nav, viewer: &Viewer, refresh: Option<u32>, body: Markup) -> Markup {
    let item = |n: Nav, href: &str, label: &str| {
        html! { a href=(href) class=[(n == nav).then_some("on")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, refresh))
            body {
                header.top {
                    a.brand href="/ui/runs" { "run" span { "bridge" } }
                    nav.nav {
                        (item(Nav::Runs, "/ui/runs", "Runs"))
                        (item(Nav::Deliveries, "/ui/deliveries", "Deliveries"))
                        (item(Nav::Routes, "/ui/routes", "Routes"))
                    }
                    div.who {
                        span.badge.(if viewer.can_write() { "b-info" } else { "" }) id="role" {
                            @if viewer.can_write() { "write" } @else { "read only" }
                        }
                        form.inline method="post" action="/ui/logout" {
                            (viewer.csrf_field())
                            button.ghost.small type="submit" id="logout" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The sign-in form, with an optional problem shown above it.
pub fn login(problem: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in", None))
            body {
                div.login {
                    h1 { "run" span.accent { "bridge" } }
                    @if let Some(p) = problem {
                        div.notice.bad id="problem" { (p) }
                    }
                    div.panel {
                        form method="post" action="/ui/login" {
                            label {
                                "Admin token"
                                input type="password" name="token" id="token" autocomplete="current-password" required autofocus;
                            }
                            button type="submit" id="sign-in" { "Sign in" }
                        }
                    }
                    p.sub.center {
                        "A token from " code { "[[admin.tokens]]" } " or " code { "server.admin_token" } "."
                    }
                }
            }
        }
    }
}

/// A page for an error, signed in or not: the status and what to do.
pub fn error(status: u16, message: &str, signed_in: bool) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Error", None))
            body {
                div.login {
                    h1 { (status) }
                    div.notice.bad id="problem" { (message) }
                    p.center {
                        @if signed_in { a href="/ui/runs" { "Back to runs" } }
                        @else { a href="/ui/login" { "Sign in" } }
                    }
                }
            }
        }
    }
}

/// A status or state as a coloured badge (the class is chosen from a fixed
/// list, the text is escaped).
pub fn badge(value: &str) -> Markup {
    let class = match value {
        "succeeded" | "delivered" | "done" => "b-ok",
        "failed" | "dead" | "refused" | "gone" | "timed_out" | "rejected" => "b-bad",
        "failing" | "canceled" | "cancelled" | "unknown" | "paused" => "b-warn",
        "running" | "queued" | "pending" | "accepted" | "started" | "waiting" => "b-info",
        _ => "",
    };
    html! { span.badge.(class) data-status=(value) { (value) } }
}

/// A timestamp as shown: `2026-11-24 15:03:59` (UTC; the full RFC 3339
/// value with milliseconds in the `title` and `datetime`).
pub fn when(ts: &str) -> Markup {
    let shown: String = ts.replacen('T', " ", 1).chars().take(19).collect();
    html! { time datetime=(ts) title=(ts) { (shown) } }
}

/// A dash for a missing value.
pub fn dash() -> Markup {
    PreEscaped("&ndash;".to_string())
}
