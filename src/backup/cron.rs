//! When scheduled snapshots run: a small cron parser and "next fire time" in UTC.
//!
//! Accepted: five fields `minute hour day-of-month month day-of-week` with `*`, `*/n`, `a`,
//! `a-b`, `a-b/n` and comma lists (day-of-week 0-7, 0 and 7 both Sunday); `@yearly`,
//! `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`; and `@every <n>s|m|h`
//! (an extension, as robfig/cron has, for short intervals in tests). As in Vixie cron, when both
//! day-of-month and day-of-week are restricted a day matching either fires.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CronError {
    #[error("cron expression {expr:?}: {reason}")]
    Invalid { expr: String, reason: String },
}

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Fire every fixed interval (from the previous run).
    Every(Duration),
    Cron(CronFields),
}

/// Allowed values per field, as bit sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronFields {
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    days_of_week: u8,
    dom_restricted: bool,
    dow_restricted: bool,
}

/// How far ahead `next_after` looks before giving up (e.g. "0 0 31 2 *" never fires).
const MAX_LOOKAHEAD_DAYS: i64 = 366 * 5;

impl std::str::FromStr for Schedule {
    type Err = CronError;

    fn from_str(expr: &str) -> Result<Self, CronError> {
        let fail = |reason: &str| CronError::Invalid {
            expr: expr.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = expr.trim();
        if let Some(interval) = trimmed.strip_prefix("@every") {
            return parse_interval(interval.trim())
                .map(Schedule::Every)
                .ok_or_else(|| fail("@every needs a positive duration like 30s, 5m or 2h"));
        }
        let fields = match trimmed {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => return Err(fail("unknown @ shorthand")),
            other => other,
        };
        let parts: Vec<&str> = fields.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = parts.as_slice() else {
            return Err(fail(
                "expected 5 fields: minute hour day-of-month month day-of-week",
            ));
        };
        let field = |text: &str, name: &str, lo: u32, hi: u32| {
            parse_field(text, lo, hi).map_err(|reason| fail(&format!("{name} field: {reason}")))
        };
        let mut days_of_week = field(dow, "day-of-week", 0, 7)?;
        // 7 is Sunday too.
        if days_of_week & (1 << 7) != 0 {
            days_of_week |= 1;
        }
        Ok(Schedule::Cron(CronFields {
            minutes: field(minute, "minute", 0, 59)?,
            hours: field(hour, "hour", 0, 23)? as u32,
            days_of_month: field(dom, "day-of-month", 1, 31)? as u32,
            months: field(month, "month", 1, 12)? as u16,
            days_of_week: (days_of_week & 0x7f) as u8,
            dom_restricted: !dom.starts_with('*'),
            dow_restricted: !dow.starts_with('*'),
        }))
    }
}

fn parse_interval(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok().filter(|n| *n > 0)?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// One field into a bit set of allowed values in `lo..=hi`.
fn parse_field(text: &str, lo: u32, hi: u32) -> Result<u64, String> {
    let mut set = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("bad step {step:?}"))?;
                (range, step)
            }
            None => (item, 1),
        };
        let number = |s: &str| -> Result<u32, String> {
            s.parse::<u32>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| format!("{s:?} is not a number in {lo}-{hi}"))
        };
        let (start, end) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (number(a)?, number(b)?)
        } else {
            let n = number(range)?;
            // "5/15" means from 5 to the end in steps of 15.
            (n, if item.contains('/') { hi } else { n })
        };
        if start > end {
            return Err(format!("range {range:?} runs backwards"));
        }
        let mut v = start;
        while v <= end {
            set |= 1 << v;
            v += step;
        }
    }
    Ok(set)
}

impl Schedule {
    /// The first fire time strictly after `after` (seconds since the Unix epoch, UTC), or None
    /// when the expression never matches within five years.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        match self {
            Schedule::Every(d) => Some(after + d.as_secs().max(1) as i64),
            Schedule::Cron(fields) => fields.next_after(after),
        }
    }
}

impl CronFields {
    fn day_matches(&self, days: i64, day_of_month: u32) -> bool {
        // 1970-01-01 was a Thursday (4).
        let weekday = (days + 4).rem_euclid(7) as u32;
        let dom = self.days_of_month & (1 << day_of_month) != 0;
        let dow = self.days_of_week & (1 << weekday) != 0;
        match (self.dom_restricted, self.dow_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    fn next_after(&self, after: i64) -> Option<i64> {
        // Start at the next whole minute, then skip whole months, days and hours that cannot
        // match before stepping minute by minute.
        let mut t = (after.div_euclid(60) + 1) * 60;
        let limit = after + MAX_LOOKAHEAD_DAYS * 86_400;
        while t <= limit {
            let days = t.div_euclid(86_400);
            let secs_of_day = t.rem_euclid(86_400);
            let (year, month, day) = civil_from_days(days);
            if self.months & (1 << month) == 0 {
                let (y, m) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                t = days_from_civil(y, m, 1) * 86_400;
                continue;
            }
            if !self.day_matches(days, day) {
                t = (days + 1) * 86_400;
                continue;
            }
            let hour = (secs_of_day / 3600) as u32;
            if self.hours & (1 << hour) == 0 {
                t = days * 86_400 + (hour as i64 + 1) * 3600;
                continue;
            }
            let minute = ((secs_of_day % 3600) / 60) as u32;
            if self.minutes & (1 << minute) == 0 {
                t += 60;
                continue;
            }
            return Some(t);
        }
        None
    }
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Day count since 1970-01-01 of a civil date (inverse of `civil_from_days`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time in milliseconds.
pub fn format_utc(unix_ms: u64) -> String {
    let secs = (unix_ms / 1000) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        (s % 3600) / 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
        days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60
    }

    fn next(expr: &str, from: i64) -> i64 {
        expr.parse::<Schedule>()
            .expect("valid")
            .next_after(from)
            .expect("fires")
    }

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(
            days_from_civil(2000, 3, 1) - days_from_civil(2000, 2, 28),
            2
        );
        assert_eq!(format_utc(1_700_000_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn every_twelve_hours() {
        let from = at(2025, 6, 1, 5, 17);
        assert_eq!(next("0 */12 * * *", from), at(2025, 6, 1, 12, 0));
        assert_eq!(
            next("0 */12 * * *", at(2025, 6, 1, 12, 0)),
            at(2025, 6, 2, 0, 0)
        );
    }

    #[test]
    fn lists_ranges_and_steps() {
        let from = at(2025, 6, 1, 10, 0);
        assert_eq!(next("5,35 * * * *", from), at(2025, 6, 1, 10, 5));
        assert_eq!(
            next("5,35 * * * *", at(2025, 6, 1, 10, 5)),
            at(2025, 6, 1, 10, 35)
        );
        assert_eq!(next("0 9-17/4 * * *", from), at(2025, 6, 1, 13, 0));
        assert_eq!(next("10/20 * * * *", from), at(2025, 6, 1, 10, 10));
        assert_eq!(next("* * * * *", from), from + 60);
    }

    #[test]
    fn shorthands() {
        let from = at(2025, 6, 1, 10, 30);
        assert_eq!(next("@hourly", from), at(2025, 6, 1, 11, 0));
        assert_eq!(next("@daily", from), at(2025, 6, 2, 0, 0));
        assert_eq!(next("@monthly", from), at(2025, 7, 1, 0, 0));
        assert_eq!(next("@yearly", from), at(2026, 1, 1, 0, 0));
        assert_eq!(next("@every 2s", from), from + 2);
        assert_eq!(next("@every 5m", from), from + 300);
    }

    #[test]
    fn days_of_week_and_month() {
        // 2025-06-01 is a Sunday.
        let from = at(2025, 6, 1, 10, 0);
        assert_eq!(next("0 0 * * 1", from), at(2025, 6, 2, 0, 0));
        assert_eq!(next("0 0 * * 7", from), at(2025, 6, 8, 0, 0));
        assert_eq!(next("@weekly", from), at(2025, 6, 8, 0, 0));
        // Either restricted day field matches (Vixie semantics).
        assert_eq!(next("0 0 15 * 3", from), at(2025, 6, 4, 0, 0));
        assert_eq!(next("0 0 29 2 *", from), at(2028, 2, 29, 0, 0));
        assert_eq!(
            "0 0 31 2 *"
                .parse::<Schedule>()
                .expect("valid")
                .next_after(from),
            None
        );
    }

    #[test]
    fn rejects_bad_expressions() {
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "x * * * *",
            "@sometimes",
            "@every",
            "@every 0s",
            "@every 10d",
        ] {
            assert!(
                bad.parse::<Schedule>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
