//! Five-field cron schedules as a Kubernetes CronJob takes them (robfig/cron's standard
//! parser), evaluated in an IANA time zone. Written here rather than taken from a crate: the
//! cron crates either bring a second time crate (chrono) or use Quartz rules (a seconds
//! field, day-of-month AND day-of-week) that would read a user's CronJob schedule
//! differently.
//!
//! Grammar: `minute hour day-of-month month day-of-week`; each field a list of `*`, `n`,
//! `a-b`, with an optional step `/s` (`*/15`, `1-30/2`, `5/10` = 5 to the end by 10); month
//! names jan-dec and weekday names sun-sat in any case; weekday 0 and 7 are Sunday; `?` is
//! `*` in the day fields. When both day fields are restricted a day matches if either does
//! (Vixie cron's rule); when one is `*` only the other counts. Macros: @yearly (@annually),
//! @monthly, @weekly, @daily (@midnight), @hourly.
//!
//! Daylight saving: ticks are wall-clock times in the zone. A wall time that does not exist
//! (the hour skipped in spring) fires once, shifted forward by the gap (02:30 becomes 03:30),
//! as Go's time package (and so CronJob) resolves it; a wall time that happens twice (the
//! hour repeated in autumn) fires once, at its first occurrence.

use std::str::FromStr;

use k8s_openapi::jiff::{Timestamp, civil, tz::TimeZone};

/// A parsed schedule: the set of each field's values, as bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Day of month (resp. week) given as `*` or `?`: only the other day field counts.
    any_day: bool,
    any_weekday: bool,
}

/// Why a schedule does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("expected 5 fields (minute hour day-of-month month day-of-week) or a macro, found {0}")]
    FieldCount(usize),
    #[error("unknown macro {0}")]
    Macro(String),
    #[error("{field}: {value:?} is not a number or name")]
    Value { field: &'static str, value: String },
    #[error("{field}: {value} is outside {min}-{max}")]
    Range {
        field: &'static str,
        value: u32,
        min: u32,
        max: u32,
    },
    #[error("{field}: the range {from}-{to} ends before it starts")]
    Reversed {
        field: &'static str,
        from: u32,
        to: u32,
    },
    #[error("{field}: a step must be at least 1")]
    Step { field: &'static str },
}

/// One field's bounds and names.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const WEEKDAY: Field = Field {
    name: "day of week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// How far ahead a next tick is looked for (a schedule such as `0 0 30 2 *` never fires).
const SEARCH_DAYS: i32 = 5 * 366;

impl FromStr for Schedule {
    type Err = CronError;

    fn from_str(text: &str) -> Result<Self, CronError> {
        let text = text.trim();
        let expanded = match text.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            m if m.starts_with('@') => return Err(CronError::Macro(text.to_string())),
            _ => text,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(CronError::FieldCount(fields.len()));
        };
        let weekdays = parse(weekday, &WEEKDAY)?;
        Ok(Schedule {
            minutes: parse(minute, &MINUTE)?,
            hours: parse(hour, &HOUR)? as u32,
            days: parse(day, &DAY)? as u32,
            months: parse(month, &MONTH)? as u16,
            // 7 is Sunday too.
            weekdays: ((weekdays | (weekdays >> 7)) & 0x7f) as u8,
            any_day: matches!(day, "*" | "?"),
            any_weekday: matches!(weekday, "*" | "?"),
        })
    }
}

/// The bits of a field's values.
fn parse(text: &str, f: &Field) -> Result<u64, CronError> {
    text.split(',')
        .try_fold(0u64, |bits, item| Ok(bits | item_bits(item, f)?))
}

/// One list item: `*` or `?`, `n`, `a-b`, each with an optional `/step`.
fn item_bits(item: &str, f: &Field) -> Result<u64, CronError> {
    let (range, step) = match item.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (item, None),
    };
    let step = match step {
        Some(s) => number(s, f)?,
        None => 1,
    };
    if step == 0 {
        return Err(CronError::Step { field: f.name });
    }
    let (from, to) = match range {
        "*" | "?" => (f.min, f.max),
        r => match r.split_once('-') {
            Some((a, b)) => (value(a, f)?, value(b, f)?),
            // `a/s` runs from a to the end of the field.
            None if step > 1 || item.contains('/') => (value(r, f)?, f.max),
            None => (value(r, f)?, value(r, f)?),
        },
    };
    if from > to {
        return Err(CronError::Reversed {
            field: f.name,
            from,
            to,
        });
    }
    Ok((from..=to)
        .step_by(step as usize)
        .fold(0, |bits, v| bits | 1 << v))
}

/// A value of the field: a number in its range, or one of its names.
fn value(text: &str, f: &Field) -> Result<u32, CronError> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = f.names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + f.min);
    }
    let v = number(text, f)?;
    if v < f.min || v > f.max {
        return Err(CronError::Range {
            field: f.name,
            value: v,
            min: f.min,
            max: f.max,
        });
    }
    Ok(v)
}

fn number(text: &str, f: &Field) -> Result<u32, CronError> {
    let bad = || CronError::Value {
        field: f.name,
        value: text.to_string(),
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse().map_err(|_| bad())
}

impl Schedule {
    /// Whether the schedule fires on `date`.
    fn on(&self, date: civil::Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let by_day = self.days & (1 << date.day()) != 0;
        let by_weekday = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        match (self.any_day, self.any_weekday) {
            (false, false) => by_day || by_weekday,
            _ => by_day && by_weekday,
        }
    }

    /// The first tick strictly after `after`, in zone `tz`; None when none comes within
    /// about five years.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone()).datetime();
        let mut date = start.date();
        for _ in 0..SEARCH_DAYS {
            if self.on(date)
                && let Some(t) = self.first_on(date, start, after, tz)
            {
                return Some(t);
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// The first tick on `date` whose instant is after `after` (wall times before `start`'s
    /// on its own date are not looked at).
    fn first_on(
        &self,
        date: civil::Date,
        start: civil::DateTime,
        after: Timestamp,
        tz: &TimeZone,
    ) -> Option<Timestamp> {
        for hour in (0..24).filter(|h| self.hours & (1 << h) != 0) {
            for minute in (0..60).filter(|m| self.minutes & (1 << m) != 0) {
                let wall = date.at(hour as i8, minute as i8, 0, 0);
                if wall < start.with().second(0).subsec_nanosecond(0).build().ok()? {
                    continue;
                }
                let t = tz.to_ambiguous_zoned(wall).compatible().ok()?.timestamp();
                if t > after {
                    return Some(t);
                }
            }
        }
        None
    }
}

/// An RE2 pattern (for the API server's CEL `matches()`) that a schedule must match: five
/// fields of the right characters and ranges, or a macro. It refuses what it can see (61 in
/// the minute field, a sixth field, an unknown name); a reversed range still passes it and
/// shows as the policy's `ScheduleInvalid` condition.
pub fn cel_pattern() -> String {
    let month_names = MONTH.names.join("|");
    let day_names = WEEKDAY.names.join("|");
    let fields = [
        "[0-5]?[0-9]".to_string(),
        "[01]?[0-9]|2[0-3]".to_string(),
        "0?[1-9]|[12][0-9]|3[01]".to_string(),
        format!("0?[1-9]|1[0-2]|{month_names}"),
        format!("[0-7]|{day_names}"),
    ];
    let field = |v: &str| {
        let item = format!(r"(\*|\?|({v})(-({v}))?)(/[1-9][0-9]?)?");
        format!("{item}(,{item})*")
    };
    let five: Vec<String> = fields.iter().map(|v| field(v)).collect();
    format!(
        r"(?i)^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|{})$",
        five.join(r"\s+")
    )
}

/// The IANA time zone names the operator's bundled database knows, sorted.
pub fn time_zone_names() -> Vec<String> {
    let mut names: Vec<String> = k8s_openapi::jiff::tz::db()
        .available()
        .map(|n| n.to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests;
