//! Retry delays shared by provider calls and callback delivery.

use rand::Rng;
use std::time::Duration;

/// Exponential backoff: `base * 2^(attempt-1)` capped at `max`, then spread
/// by `jitter` (0.2 = +-20 %) so retries of many runs do not align.
pub fn exponential(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let raw = base.saturating_mul(1u32 << exp).min(max);
    spread(raw, jitter)
}

/// Applies +-`jitter` random spread to a delay. Never panics: a NaN or
/// out-of-range jitter is clamped, and a product past `Duration::MAX`
/// saturates (`Duration::mul_f64` would panic).
pub fn spread(d: Duration, jitter: f64) -> Duration {
    if jitter.is_nan() || jitter <= 0.0 || d.is_zero() {
        return d;
    }
    let j = jitter.min(1.0);
    let factor = rand::rng().random_range((1.0 - j)..=(1.0 + j));
    mul_saturating(d, factor)
}

/// `d * factor` for a non-negative factor, saturating at `Duration::MAX`.
pub fn mul_saturating(d: Duration, factor: f64) -> Duration {
    if factor.is_nan() || factor <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// The poll interval of a run of `age`: `interval` at first, growing
/// linearly with age past `slowdown_after`, capped at `max`. Pure and
/// overflow-free for any inputs (a zero `slowdown_after` means no growth).
pub fn poll_interval(
    age: Duration,
    interval: Duration,
    slowdown_after: Duration,
    max: Duration,
) -> Duration {
    if slowdown_after.is_zero() {
        return interval.min(max);
    }
    let factor = (age.as_secs_f64() / slowdown_after.as_secs_f64()).max(1.0);
    mul_saturating(interval, factor).min(max)
}

/// The delay to use when the server also sent `Retry-After`: never sooner
/// than the server asked (up to `cap`), never sooner than our own backoff.
pub fn honour_retry_after(
    ours: Duration,
    retry_after: Option<Duration>,
    cap: Duration,
) -> Duration {
    match retry_after {
        Some(ra) => ours.max(ra.min(cap)),
        None => ours,
    }
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate_parse(v)?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn httpdate_parse(v: &str) -> Option<std::time::SystemTime> {
    // IMF-fixdate, e.g. "Wed, 21 Oct 2015 07:28:00 GMT": humantime parses the
    // RFC 3339 form, so rebuild it.
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let month = match parts[2] {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let day: u32 = parts[1].parse().ok()?;
    let year: u32 = parts[3].parse().ok()?;
    let s = format!("{year:04}-{month:02}-{day:02}T{}Z", parts[4]);
    humantime::parse_rfc3339(&s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let b = Duration::from_secs(1);
        let m = Duration::from_secs(10);
        assert_eq!(exponential(1, b, m, 0.0), Duration::from_secs(1));
        assert_eq!(exponential(3, b, m, 0.0), Duration::from_secs(4));
        assert_eq!(exponential(40, b, m, 0.0), m);
        let j = exponential(2, b, m, 0.2);
        assert!(j >= Duration::from_millis(1600) && j <= Duration::from_millis(2400));
    }

    #[test]
    fn huge_values_saturate() {
        assert!(spread(Duration::MAX, 1.0) <= Duration::MAX);
        assert_eq!(
            spread(Duration::from_secs(1), f64::NAN),
            Duration::from_secs(1)
        );
        assert!(exponential(u32::MAX, Duration::MAX, Duration::MAX, 1.0) > Duration::ZERO);
        let m = Duration::from_secs(60);
        assert_eq!(
            poll_interval(Duration::MAX, Duration::MAX, Duration::from_nanos(1), m),
            m
        );
        assert_eq!(
            poll_interval(
                Duration::from_secs(10),
                Duration::from_secs(5),
                Duration::ZERO,
                m
            ),
            Duration::from_secs(5)
        );
        assert_eq!(
            poll_interval(
                Duration::from_secs(240),
                Duration::from_secs(5),
                Duration::from_secs(120),
                m
            ),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        let capped = honour_retry_after(
            Duration::from_secs(1),
            Some(Duration::from_secs(99)),
            Duration::from_secs(5),
        );
        assert_eq!(capped, Duration::from_secs(5));
    }
}
