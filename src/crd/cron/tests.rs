use super::*;

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn tz(name: &str) -> TimeZone {
    TimeZone::get(name).unwrap()
}

/// The next `n` ticks after `from` in `zone`, as UTC instants.
fn ticks(expr: &str, zone: &str, from: &str, n: usize) -> Vec<String> {
    let s: Schedule = expr.parse().unwrap();
    let z = tz(zone);
    let mut t = at(from);
    (0..n)
        .map(|_| {
            t = s.next_after(t, &z).unwrap();
            t.to_string()
        })
        .collect()
}

#[test]
fn what_parses_and_what_does_not() {
    let good = [
        "* * * * *",
        "*/15 9-17 * * mon-fri",
        "0 0 1,15 jan,JUL 0,7",
        "5/10 * ? * ?",
        "@hourly",
        "@Daily",
        "0 12 * * SUN",
    ];
    for g in good {
        assert!(g.parse::<Schedule>().is_ok(), "{g}");
    }
    let bad = [
        ("* * * *", CronError::FieldCount(4)),
        ("* * * * * *", CronError::FieldCount(6)),
        (
            "60 * * * *",
            CronError::Range {
                field: "minute",
                value: 60,
                min: 0,
                max: 59,
            },
        ),
        (
            "* 24 * * *",
            CronError::Range {
                field: "hour",
                value: 24,
                min: 0,
                max: 23,
            },
        ),
        (
            "* * 0 * *",
            CronError::Range {
                field: "day of month",
                value: 0,
                min: 1,
                max: 31,
            },
        ),
        (
            "* * * 13 *",
            CronError::Range {
                field: "month",
                value: 13,
                min: 1,
                max: 12,
            },
        ),
        (
            "* * * * 8",
            CronError::Range {
                field: "day of week",
                value: 8,
                min: 0,
                max: 7,
            },
        ),
        (
            "5-2 * * * *",
            CronError::Reversed {
                field: "minute",
                from: 5,
                to: 2,
            },
        ),
        ("*/0 * * * *", CronError::Step { field: "minute" }),
        (
            "x * * * *",
            CronError::Value {
                field: "minute",
                value: "x".into(),
            },
        ),
        ("@every 5m", CronError::Macro("@every 5m".into())),
    ];
    for (b, err) in bad {
        assert_eq!(b.parse::<Schedule>(), Err(err), "{b}");
    }
}

#[test]
fn ticks_in_utc_with_steps_ranges_and_names() {
    assert_eq!(
        ticks("*/20 * * * *", "UTC", "2026-12-06T12:15:30Z", 3),
        [
            "2026-12-06T12:20:00Z",
            "2026-12-06T12:40:00Z",
            "2026-12-06T13:00:00Z"
        ]
    );
    // Weekdays only: Friday evening to Monday morning.
    assert_eq!(
        ticks("0 9 * * mon-fri", "UTC", "2026-12-04T10:00:00Z", 2),
        ["2026-12-07T09:00:00Z", "2026-12-08T09:00:00Z"]
    );
    // 7 is Sunday.
    assert_eq!(
        ticks("0 0 * * 7", "UTC", "2026-12-06T00:00:00Z", 1),
        ["2026-12-13T00:00:00Z"]
    );
    // Strictly after: a tick at `from` itself is not next.
    assert_eq!(
        ticks("0 * * * *", "UTC", "2026-12-06T12:00:00Z", 1),
        ["2026-12-06T13:00:00Z"]
    );
}

#[test]
fn both_day_fields_restricted_means_either() {
    // The 13th, or any Friday: Fri 2026-11-13, then the Fridays 11-20, 11-27, 12-04, 12-11.
    assert_eq!(
        ticks("0 0 13 * fri", "UTC", "2026-11-12T00:00:00Z", 5),
        [
            "2026-11-13T00:00:00Z",
            "2026-11-20T00:00:00Z",
            "2026-11-27T00:00:00Z",
            "2026-12-04T00:00:00Z",
            "2026-12-11T00:00:00Z"
        ]
    );
    // One of them `*`: only the other counts.
    assert_eq!(
        ticks("0 0 13 * *", "UTC", "2026-11-14T00:00:00Z", 1),
        ["2026-12-13T00:00:00Z"]
    );
}

#[test]
fn a_schedule_that_never_fires_ends_the_search() {
    let s: Schedule = "0 0 30 2 *".parse().unwrap();
    assert_eq!(s.next_after(at("2026-01-01T00:00:00Z"), &tz("UTC")), None);
}

#[test]
fn daylight_saving_in_europe_berlin() {
    // Spring forward, 2026-03-29: 02:00 CET becomes 03:00 CEST. 02:30 does not exist and
    // fires once at 03:30 CEST (01:30 UTC); the days around it at 02:30 local.
    assert_eq!(
        ticks("30 2 * * *", "Europe/Berlin", "2026-03-28T00:00:00Z", 3),
        [
            "2026-03-28T01:30:00Z",
            "2026-03-29T01:30:00Z",
            "2026-03-30T00:30:00Z"
        ]
    );
    // Fall back, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice and fires
    // once, at the first (00:30 UTC); the next day at 02:30 CET (01:30 UTC).
    assert_eq!(
        ticks("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    );
    // Hourly across the repeated hour: 02:00 fires once; 03:00 CET is two hours after it.
    assert_eq!(
        ticks("0 * * * *", "Europe/Berlin", "2026-10-24T23:30:00Z", 3),
        [
            "2026-10-25T00:00:00Z",
            "2026-10-25T02:00:00Z",
            "2026-10-25T03:00:00Z"
        ]
    );
}

#[test]
fn daylight_saving_in_america_new_york() {
    // Spring forward, 2026-03-08 02:00 EST -> 03:00 EDT: 02:15 fires at 03:15 EDT (07:15 UTC).
    assert_eq!(
        ticks("15 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", 2),
        ["2026-03-08T07:15:00Z", "2026-03-09T06:15:00Z"]
    );
    // Fall back, 2026-11-01 02:00 EDT -> 01:00 EST: 01:30 fires once, at 01:30 EDT (05:30 UTC).
    assert_eq!(
        ticks("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
        ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
    );
}

#[test]
fn the_cel_pattern_refuses_what_it_can_see_and_passes_what_parses() {
    let re = regex::Regex::new(&cel_pattern()).unwrap();
    for ok in [
        "* * * * *",
        "*/15 9-17 1,15 jan-jun 0,7",
        "@daily",
        "30 2 * * SUN",
        "5/10 * ? * ?",
        "0 0 1 1 *",
    ] {
        assert!(re.is_match(ok), "{ok}");
        assert!(ok.parse::<Schedule>().is_ok(), "{ok}");
    }
    for bad in [
        "61 * * * *",
        "* 24 * * *",
        "* * 32 * *",
        "* * * 13 *",
        "* * * * 8",
        "* * * *",
        "* * * * * *",
        "@every 1m",
        "* * * * funday",
    ] {
        assert!(!re.is_match(bad), "{bad}");
        assert!(bad.parse::<Schedule>().is_err(), "{bad}");
    }
}

#[test]
fn the_bundled_time_zone_database_knows_the_usual_names() {
    let names = time_zone_names();
    for n in [
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Asia/Kolkata",
        "Australia/Lord_Howe",
    ] {
        assert!(
            names.iter().any(|x| x == n),
            "{n} missing of {}",
            names.len()
        );
    }
    assert!(names.len() > 300, "{}", names.len());
}
