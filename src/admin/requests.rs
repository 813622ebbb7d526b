//! The ring of the last N inbound requests that started nothing (rejected
//! with an error, or ignored by the route's filter), so an operator can see
//! why a sender's webhooks do nothing. Route, time, status, error code and
//! reason only: never a body or a header. In memory, bounded, lost on
//! restart.

use super::view::{RequestFilter, RequestOutcome, RequestRecord};
use super::{AdminError, AdminResult};
use crate::time::Timestamp;
use std::collections::VecDeque;
use std::sync::Mutex;

/// Default and largest answer of `GET /requests`.
const DEFAULT_LIST: usize = 100;
/// Longest reason kept per record (a reason is our own error text).
const MAX_REASON: usize = 512;

/// A bounded ring of [`RequestRecord`]s, oldest dropped first.
pub struct RequestRing {
    cap: usize,
    ring: Mutex<VecDeque<RequestRecord>>,
}

impl RequestRing {
    /// A ring keeping the last `cap` records (at least one).
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        RequestRing {
            cap,
            ring: Mutex::new(VecDeque::with_capacity(cap.min(4096))),
        }
    }

    /// Records one request that started nothing. `error` is the answered
    /// error code (`None` for an ignored request).
    pub fn record(
        &self,
        route: &str,
        outcome: RequestOutcome,
        status: u16,
        error: Option<&str>,
        reason: &str,
    ) {
        let mut reason = reason.to_string();
        if reason.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        let rec = RequestRecord {
            at: Timestamp::now().to_string(),
            route: route.to_string(),
            outcome,
            status,
            error: error.map(str::to_string),
            reason,
        };
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() >= self.cap {
            ring.pop_front();
        }
        ring.push_back(rec);
    }

    /// Records matching `f`, newest first.
    pub fn list(&self, f: &RequestFilter) -> AdminResult<Vec<RequestRecord>> {
        let outcome = match f.outcome.as_deref() {
            None | Some("") => None,
            Some("rejected") => Some(RequestOutcome::Rejected),
            Some("ignored") => Some(RequestOutcome::Ignored),
            Some(o) => {
                return Err(AdminError::BadRequest(format!(
                    "outcome must be rejected or ignored; got {o:?}"
                )))
            }
        };
        let limit = match f.limit {
            None => DEFAULT_LIST,
            Some(n) if n >= 1 && n <= self.cap.max(DEFAULT_LIST) => n,
            Some(n) => {
                return Err(AdminError::BadRequest(format!(
                    "limit must be between 1 and {}; got {n}",
                    self.cap.max(DEFAULT_LIST)
                )))
            }
        };
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        Ok(ring
            .iter()
            .rev()
            .filter(|r| outcome.is_none_or(|o| r.outcome == o))
            .filter(|r| f.route.as_deref().is_none_or(|x| r.route == x))
            .take(limit)
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_n_newest_first_and_filters() {
        let ring = RequestRing::new(3);
        for i in 0..5 {
            let outcome = if i % 2 == 0 {
                RequestOutcome::Rejected
            } else {
                RequestOutcome::Ignored
            };
            ring.record("r", outcome, 401, Some("unauthorized"), &format!("n{i}"));
        }
        let all = ring.list(&RequestFilter::default()).unwrap();
        let reasons: Vec<&str> = all.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons, ["n4", "n3", "n2"]);
        let f = RequestFilter {
            outcome: Some("ignored".into()),
            ..Default::default()
        };
        assert_eq!(ring.list(&f).unwrap().len(), 1);
        let bad = RequestFilter {
            outcome: Some("x".into()),
            ..Default::default()
        };
        assert!(ring.list(&bad).is_err());
    }
}
