//! The console's sign-in state: sessions kept in memory (bounded, expiring),
//! each with the token it was opened with, its CSRF token, and a limiter on
//! failed sign-ins. No HTTP types here, so the rules are unit-tested alone.

use crate::secret::Secret;
use crate::signing::ct_eq;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most sessions kept at once; opening one more evicts the oldest, so a
/// flood of sign-ins cannot grow memory.
pub const MAX_SESSIONS: usize = 1024;
/// How long a session lives from sign-in (absolute, not sliding).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed sign-ins allowed per client address per [`FAIL_WINDOW`].
pub const MAX_FAILURES: u32 = 5;
/// The window over which failed sign-ins are counted.
pub const FAIL_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses tracked by the limiter at once (bounded like sessions).
const MAX_TRACKED: usize = 4096;

/// What a session may do; derived from the token's role in the admin
/// config, re-checked on every request (a revoked token ends its sessions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// One signed-in browser, as the handlers see it.
#[derive(Clone)]
pub struct Session {
    /// The token the operator signed in with (kept only in memory, so the
    /// role is checked again against the live config on every request).
    pub token: Secret,
    /// Every form of this session carries this value.
    pub csrf: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session { token: ***, csrf: *** }")
    }
}

impl Session {
    /// Whether `given` (a form's hidden field) is this session's CSRF
    /// token, compared in constant time.
    pub fn csrf_ok(&self, given: Option<&str>) -> bool {
        given.is_some_and(|g| ct_eq(g.as_bytes(), self.csrf.as_bytes()))
    }
}

struct Entry {
    session: Session,
    created: Instant,
}

/// The session table. Keys are SHA-256 digests of the cookie value, so
/// the table never holds a usable cookie and a lookup does not compare
/// secrets byte by byte.
pub struct Sessions {
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<[u8; 32], Entry>>,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new(SESSION_TTL, MAX_SESSIONS)
    }
}

/// 32 random bytes as 64 hex digits, from the thread's CSPRNG.
pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// A table whose sessions live `ttl` and that holds at most `max`.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Sessions {
            ttl,
            max: max.max(1),
            map: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a session for `token`: answers the cookie value (random, not
    /// derived from the token) and the session.
    pub fn open(&self, token: Secret) -> (String, Session) {
        self.open_at(token, Instant::now())
    }

    fn open_at(&self, token: Secret, now: Instant) -> (String, Session) {
        let id = random_token();
        let session = Session {
            token,
            csrf: random_token(),
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max {
            let ttl = self.ttl;
            map.retain(|_, e| now.duration_since(e.created) < ttl);
        }
        while map.len() >= self.max {
            let oldest = map.iter().min_by_key(|(_, e)| e.created).map(|(k, _)| *k);
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(
            key(&id),
            Entry {
                session: session.clone(),
                created: now,
            },
        );
        (id, session)
    }

    /// The live session behind a cookie value, if any (an expired one is
    /// dropped on the way).
    pub fn get(&self, id: &str) -> Option<Session> {
        self.get_at(id, Instant::now())
    }

    fn get_at(&self, id: &str, now: Instant) -> Option<Session> {
        let k = key(id);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.get(&k)?;
        if now.duration_since(e.created) >= self.ttl {
            map.remove(&k);
            return None;
        }
        Some(e.session.clone())
    }

    /// Ends a session (logout, or a token that no longer signs in).
    pub fn close(&self, id: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&key(id));
    }

    /// Sessions held now (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `Some(wait)` when `peer` has used up its failed sign-ins for now.
    pub fn limited(&self, peer: IpAddr) -> Option<Duration> {
        self.limited_at(peer, Instant::now())
    }

    fn limited_at(&self, peer: IpAddr, now: Instant) -> Option<Duration> {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let (since, n) = f.get(&peer)?;
        let elapsed = now.duration_since(*since);
        (elapsed < FAIL_WINDOW && *n >= MAX_FAILURES).then(|| FAIL_WINDOW - elapsed)
    }

    /// Counts a failed sign-in from `peer`.
    pub fn failed(&self, peer: IpAddr) {
        self.failed_at(peer, Instant::now())
    }

    fn failed_at(&self, peer: IpAddr, now: Instant) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() >= MAX_TRACKED && !f.contains_key(&peer) {
            f.retain(|_, (since, _)| now.duration_since(*since) < FAIL_WINDOW);
            if f.len() >= MAX_TRACKED {
                // Still full of fresh entries: forget the oldest one.
                if let Some(k) = f.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k) {
                    f.remove(&k);
                }
            }
        }
        let e = f.entry(peer).or_insert((now, 0));
        if now.duration_since(e.0) >= FAIL_WINDOW {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(s: &str) -> Secret {
        Secret::new(s)
    }

    #[test]
    fn a_session_is_found_by_its_cookie_and_only_by_it() {
        let s = Sessions::default();
        let (id, sess) = s.open(tok("t1"));
        assert_eq!(id.len(), 64);
        assert_ne!(id, sess.csrf, "cookie and CSRF token are independent");
        assert!(!id.contains("t1"));
        let got = s.get(&id).expect("session");
        assert_eq!(got.token.expose(), "t1");
        assert_eq!(got.csrf, sess.csrf);
        assert!(s.get("0".repeat(64).as_str()).is_none());
        assert!(s.get("").is_none());
        let (id2, sess2) = s.open(tok("t1"));
        assert_ne!(id, id2);
        assert_ne!(sess.csrf, sess2.csrf, "each session has its own CSRF token");
    }

    #[test]
    fn csrf_is_checked_exactly() {
        let s = Sessions::default();
        let (_, sess) = s.open(tok("t"));
        assert!(sess.csrf_ok(Some(&sess.csrf)));
        assert!(!sess.csrf_ok(None));
        assert!(!sess.csrf_ok(Some("")));
        assert!(!sess.csrf_ok(Some(&sess.csrf[..63])));
        assert!(!sess.csrf_ok(Some(&format!("{}0", sess.csrf))));
        assert!(!sess.csrf_ok(Some(&sess.csrf.to_uppercase())));
        let (_, other) = s.open(tok("t"));
        assert!(!sess.csrf_ok(Some(&other.csrf)), "another session's token");
    }

    #[test]
    fn sessions_expire_and_logout_ends_them() {
        let s = Sessions::new(Duration::from_secs(10), 8);
        let t0 = Instant::now();
        let (id, _) = s.open_at(tok("t"), t0);
        assert!(s.get_at(&id, t0 + Duration::from_secs(9)).is_some());
        assert!(s.get_at(&id, t0 + Duration::from_secs(10)).is_none());
        assert!(s.is_empty(), "an expired session is dropped when seen");
        let (id, _) = s.open(tok("t"));
        s.close(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_oldest() {
        let s = Sessions::new(Duration::from_secs(3600), 3);
        let t0 = Instant::now();
        let ids: Vec<String> = (0..5)
            .map(|i| s.open_at(tok("t"), t0 + Duration::from_secs(i)).0)
            .collect();
        assert_eq!(s.len(), 3);
        let now = t0 + Duration::from_secs(6);
        assert!(s.get_at(&ids[0], now).is_none());
        assert!(s.get_at(&ids[1], now).is_none());
        for id in &ids[2..] {
            assert!(s.get_at(id, now).is_some());
        }
    }

    #[test]
    fn failed_sign_ins_are_limited_per_address_for_a_window() {
        let s = Sessions::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            assert!(s.limited_at(a, t0).is_none(), "attempt {i}");
            s.failed_at(a, t0);
        }
        let wait = s
            .limited_at(a, t0 + Duration::from_secs(1))
            .expect("limited");
        assert!(wait <= FAIL_WINDOW - Duration::from_secs(1));
        assert!(s.limited_at(b, t0).is_none(), "other addresses are not");
        assert!(s.limited_at(a, t0 + FAIL_WINDOW).is_none(), "window over");
        s.failed_at(a, t0 + FAIL_WINDOW);
        assert!(
            s.limited_at(a, t0 + FAIL_WINDOW).is_none(),
            "count restarted"
        );
    }

    #[test]
    fn the_session_debug_output_hides_the_token() {
        let s = Sessions::default();
        let (_, sess) = s.open(tok("very_secret_token"));
        let shown = format!("{sess:?}");
        assert!(!shown.contains("very_secret_token"));
        assert!(!shown.contains(&sess.csrf));
    }
}
