//! Lifetime and rotation arithmetic. Time is always a parameter, never read from a clock here.

use std::time::{Duration, SystemTime};

/// Default X509-SVID lifetime.
pub const DEFAULT_X509_SVID_TTL: Duration = Duration::from_secs(3600);
/// Default JWT-SVID lifetime.
pub const DEFAULT_JWT_SVID_TTL: Duration = Duration::from_secs(300);
/// Default signing CA lifetime.
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(24 * 3600);
/// A CA must live at least this many times the longest SVID it signs, so that it can sign full-length
/// SVIDs for most of its life and rotate well before they would be cut short.
pub const CA_TTL_TO_SVID_TTL: u32 = 6;
/// How far NotBefore is back-dated, to tolerate clock skew between nodes.
pub const BACKDATE: Duration = Duration::from_secs(30);

/// The lifetime a credential actually gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Start of validity (back-dated by [`BACKDATE`]).
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Whether the issuer's remaining life cut the requested lifetime short.
    pub capped: bool,
}

/// The lifetime of a credential requested at `now` for `ttl`, capped by the issuer's `issuer_not_after`.
/// Returns `None` when the issuer has already expired.
pub fn lifetime(now: SystemTime, ttl: Duration, issuer_not_after: SystemTime) -> Option<Lifetime> {
    if issuer_not_after <= now {
        return None;
    }
    let wanted = now + ttl;
    let not_after = wanted.min(issuer_not_after);
    Some(Lifetime {
        not_before: now.checked_sub(BACKDATE).unwrap_or(now),
        not_after,
        capped: not_after < wanted,
    })
}

/// When a credential valid from `not_before` to `not_after` should be replaced: at half its life,
/// moved earlier by `jitter` (a fraction in `0.0..=1.0` of a tenth of the life) so that a fleet does not
/// renew in lock step.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    let half = life / 2;
    let spread = life.mul_f64(jitter.clamp(0.0, 1.0) / 10.0);
    not_before + half.saturating_sub(spread)
}

/// Whether a credential should be renewed at `now`.
pub fn should_renew(not_before: SystemTime, not_after: SystemTime, jitter: f64, now: SystemTime) -> bool {
    now >= renew_at(not_before, not_after, jitter)
}

/// Unix seconds of a time (negative before 1970).
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The time at unix seconds `secs` (clamped at the epoch for negative values).
pub fn from_unix_seconds(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// Unix seconds as an RFC 3339 UTC timestamp (`2026-11-29T03:18:06Z`), for people. Civil date from
/// days since the epoch by the proleptic Gregorian rule (H. Hinnant's `civil_from_days`).
pub fn rfc3339(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Days since the epoch of a civil date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 3339 timestamp (`2026-11-29T03:18:06Z`, `2026-11-29T04:18:06.250+01:00`; `t`,
/// `z` and a space for `T` accepted) into unix milliseconds. The error says what is wrong.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    let bad = |why: &str| format!("`{text}` is not an RFC 3339 time like 2026-11-29T03:18:06Z: {why}");
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let part = b.get(from..from + len).ok_or_else(|| bad("too short"))?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad("a digit is missing"));
        }
        Ok(part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, want: &[u8]| -> Result<(), String> {
        match b.get(at) {
            Some(c) if want.contains(c) => Ok(()),
            _ => Err(bad("wrong separator")),
        }
    };
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    sep(4, b"-")?;
    sep(7, b"-")?;
    sep(10, b"Tt ")?;
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    sep(13, b":")?;
    sep(16, b":")?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad("the month is not 01..12")),
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return Err(bad("a date or time part is out of range"));
    }
    let mut at = 19;
    let mut millis = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return Err(bad("no digits after the decimal point"));
        }
        let frac = &b[start..at.min(start + 3)];
        millis =
            frac.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')) * 10i64.pow(3 - frac.len() as u32);
    }
    let offset = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if at + 6 == b.len() => {
            sep(at + 3, b":")?;
            let (h, m) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if h > 23 || m > 59 {
                return Err(bad("the offset is out of range"));
            }
            let o = h * 3600 + m * 60;
            if *sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return Err(bad("it must end with Z or an offset like +01:00")),
    };
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset;
    Ok(secs * 1000 + millis)
}

/// Where a CA or JWT key is in its rotation (prepare -> activate -> retire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Generated and (for roots and JWT keys) published, not yet used to sign.
    Prepared,
    /// Signs now.
    Active,
    /// Replaced; kept published until its end so what it signed still validates.
    Retired,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn lifetime_is_capped_by_issuer_and_says_so() {
        let l = lifetime(t(1000), Duration::from_secs(3600), t(100_000)).unwrap();
        assert_eq!((l.not_before, l.not_after, l.capped), (t(970), t(4600), false));
        let l = lifetime(t(1000), Duration::from_secs(3600), t(2000)).unwrap();
        assert_eq!((l.not_after, l.capped), (t(2000), true));
        assert!(lifetime(t(1000), Duration::from_secs(1), t(1000)).is_none());
    }

    #[test]
    fn renewal_at_half_life_with_jitter() {
        assert_eq!(renew_at(t(0), t(3600), 0.0), t(1800));
        assert_eq!(renew_at(t(0), t(3600), 1.0), t(1440));
        assert_eq!(renew_at(t(0), t(3600), 7.0), t(1440), "jitter is clamped");
        assert!(!should_renew(t(0), t(3600), 0.0, t(1799)));
        assert!(should_renew(t(0), t(3600), 0.0, t(1800)));
        assert_eq!(renew_at(t(10), t(5), 0.0), t(10), "an inverted range renews at once");
    }

    #[test]
    fn unix_seconds_round_trip() {
        assert_eq!(unix_seconds(t(42)), 42);
        assert_eq!(from_unix_seconds(42), t(42));
        assert_eq!(from_unix_seconds(-5), t(0));
    }

    #[test]
    fn rfc3339_times_are_parsed_strictly() {
        assert_eq!(parse_rfc3339_ms("2026-11-28T03:18:06Z"), Ok(1_795_835_886_000));
        assert_eq!(parse_rfc3339_ms("2000-02-29T00:00:00.25Z"), Ok(951_782_400_250));
        assert_eq!(parse_rfc3339_ms("2026-11-28T04:18:06+01:00"), Ok(1_795_835_886_000));
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59Z"), Ok(-1000));
        for bad in [
            "",
            "yesterday",
            "2026-11-28",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-28T03:18:06",
            "2026-11-28T03:18:06.Z",
            "2026-11-28T03:18:06+1:00",
            "2026-11-28T25:00:00Z",
        ] {
            let err = parse_rfc3339_ms(bad).unwrap_err();
            assert!(err.contains("RFC 3339") && err.contains(&format!("`{bad}`")), "{err}");
        }
        for secs in [0, 951_782_400, 1_795_835_886, 4_102_444_799] {
            assert_eq!(parse_rfc3339_ms(&rfc3339(secs)), Ok(secs * 1000));
        }
    }

    #[test]
    fn rfc3339_times_for_people() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_835_886), "2026-11-28T03:18:06Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
