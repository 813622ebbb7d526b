//! Wall-clock timestamps as stored and shown.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch. Stored and compared as an integer;
/// serialized as RFC 3339 so records and events read well.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Timestamp(ms)
    }

    /// The latest instant RFC 3339 can show (9999-12-31T23:59:59.999Z).
    /// Later timestamps still compare correctly but display as this one.
    pub const MAX_SHOWN: Timestamp = Timestamp(253_402_300_799_999);

    /// This instant plus a duration, saturating: no duration, however
    /// large, can wrap a deadline into the past or panic.
    pub fn plus(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// This instant minus a duration, saturating at the epoch (retention's
    /// cut-off can never wrap into the future).
    pub fn minus(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_sub(ms))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// Whole seconds since the epoch (Standard Webhooks timestamps).
    pub fn unix_seconds(self) -> i64 {
        (self.0 / 1000) as i64
    }

    /// Clamped to [`Timestamp::MAX_SHOWN`]: humantime refuses years past
    /// 9999, and a `Display` error would panic in `to_string` or fail a save.
    fn to_system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.min(Self::MAX_SHOWN.0))
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_millis(self.to_system()))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)?;
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map_err(serde::de::Error::custom)?
            .as_millis();
        let ms = u64::try_from(ms).unwrap_or(u64::MAX);
        Ok(Timestamp(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_as_rfc3339() {
        let t = Timestamp(1_700_000_000_123);
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(s, "\"2023-11-14T22:13:20.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&s).unwrap(), t);
    }

    #[test]
    fn far_future_saturates_and_still_displays() {
        let t = Timestamp(1_700_000_000_000);
        assert_eq!(t.plus(Duration::MAX), Timestamp(u64::MAX));
        let far = t.plus(Duration::from_secs(9000 * 365 * 86_400));
        assert_eq!(far.to_string(), "9999-12-31T23:59:59.999Z");
        assert_eq!(Timestamp(u64::MAX).to_string(), "9999-12-31T23:59:59.999Z");
        let s = serde_json::to_string(&Timestamp(u64::MAX)).unwrap();
        assert_eq!(
            serde_json::from_str::<Timestamp>(&s).unwrap(),
            Timestamp::MAX_SHOWN
        );
        assert_eq!(t.since(Timestamp(u64::MAX)), Duration::ZERO);
    }
}
