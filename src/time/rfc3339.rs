//! A fast path for the common shape of event times: `YYYY-MM-DDTHH:MM:SS[.fraction]Z`.
//!
//! `AssignTimestamps` reads string timestamps with Arrow's cast (`string_to_datetime`), which
//! accepts many forms (offsets, a space separator, dates alone) and costs about as much as the
//! JSON decode of the field around it. Event streams almost always carry the one canonical UTC
//! form, so [`utc_millis`] reads exactly that form and nothing else; a column with any other
//! value goes to Arrow's cast whole, so the result never depends on which path ran. The date is
//! validated by chrono and reused while consecutive values share it; the time of day is read
//! digit by digit. Tests compare it with Arrow's cast value for value.

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::datatypes::DataType;
use chrono::NaiveDate;

/// Remembers the last date seen, so a run of values on one day validates it once.
#[derive(Default)]
struct DateCache {
    text: [u8; 10],
    /// Milliseconds from the epoch to the date's midnight; `None` until a date was read.
    midnight: Option<i64>,
}

impl DateCache {
    fn midnight(&mut self, date: &[u8]) -> Option<i64> {
        if let Some(ms) = self.midnight
            && date == self.text
        {
            return Some(ms);
        }
        if date[4] != b'-' || date[7] != b'-' {
            return None;
        }
        let year = digits(&date[0..4])?;
        let month = digits(&date[5..7])?;
        let day = digits(&date[8..10])?;
        let d = NaiveDate::from_ymd_opt(year as i32, month, day)?;
        let ms = d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis();
        self.text.copy_from_slice(date);
        self.midnight = Some(ms);
        Some(ms)
    }
}

/// The value of ASCII decimal digits, `None` if any byte is not a digit.
fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &c| {
        let d = c.wrapping_sub(b'0');
        (d < 10).then_some(acc * 10 + u32::from(d))
    })
}

/// Epoch milliseconds of `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, the fraction truncated to the
/// millisecond (as Arrow's cast to a millisecond timestamp does); `None` for any other text,
/// including valid RFC 3339 in other forms (offsets, `t`/`z`, a space), which Arrow then reads.
fn utc_millis_with(s: &[u8], dates: &mut DateCache) -> Option<i64> {
    if s.len() < 20 || s[10] != b'T' || s[13] != b':' || s[16] != b':' || s[s.len() - 1] != b'Z' {
        return None;
    }
    let midnight = dates.midnight(&s[0..10])?;
    let (h, m, sec) = (
        digits(&s[11..13])?,
        digits(&s[14..16])?,
        digits(&s[17..19])?,
    );
    if h > 23 || m > 59 || sec > 59 {
        return None;
    }
    let frac = &s[19..s.len() - 1];
    let ms = match frac {
        [] => 0,
        [b'.', f @ ..] if (1..=9).contains(&f.len()) => {
            let whole = digits(f)?;
            // Truncate to milliseconds: keep the first three digits, padded on the right.
            match f.len() {
                1 => whole * 100,
                2 => whole * 10,
                n => whole / 10u32.pow(n as u32 - 3),
            }
        }
        _ => return None,
    };
    Some(midnight + i64::from((h * 3600 + m * 60 + sec) * 1000 + ms))
}

/// Epoch milliseconds of one canonical UTC timestamp (see the module docs); `None` otherwise.
pub fn utc_millis(s: &str) -> Option<i64> {
    utc_millis_with(s.as_bytes(), &mut DateCache::default())
}

/// Epoch milliseconds of every value of a string column, nulls kept, if every non-null value
/// has the canonical form; `None` (read the column with Arrow's cast) otherwise.
pub fn column_millis(values: &ArrayRef) -> Option<Int64Array> {
    match values.data_type() {
        DataType::Utf8 => convert(values.as_string::<i32>().iter(), values),
        DataType::LargeUtf8 => convert(values.as_string::<i64>().iter(), values),
        DataType::Utf8View => convert(values.as_string_view().iter(), values),
        _ => None,
    }
}

fn convert<'a>(
    strings: impl Iterator<Item = Option<&'a str>>,
    values: &ArrayRef,
) -> Option<Int64Array> {
    let mut dates = DateCache::default();
    let mut out = Vec::with_capacity(values.len());
    for v in strings {
        out.push(match v {
            Some(s) => utc_millis_with(s.as_bytes(), &mut dates)?,
            None => 0,
        });
    }
    Some(Int64Array::new(out.into(), values.logical_nulls()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{StringArray, StringViewArray};
    use arrow::compute::cast;
    use arrow::datatypes::TimeUnit;

    use super::*;

    /// Arrow's reading of `s` as a UTC millisecond timestamp, as `AssignTimestamps` casts.
    fn arrow_millis(s: &str) -> Option<i64> {
        let a: ArrayRef = Arc::new(StringArray::from(vec![s]));
        let t = cast(
            &a,
            &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        )
        .ok()?;
        let i = cast(&t, &DataType::Int64).ok()?;
        let i = i.as_primitive::<arrow::datatypes::Int64Type>();
        i.is_valid(0).then(|| i.value(0))
    }

    #[test]
    fn canonical_values_read_as_arrow_reads_them() {
        let cases = [
            "2026-01-01T00:00:01.394Z",
            "2026-01-01T00:00:00Z",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999Z",
            "1900-02-28T12:34:56.7Z",
            "2000-02-29T23:59:59.12Z",
            "2024-02-29T01:02:03.123456789Z",
            "2026-12-31T23:59:59.9999Z",
            "0001-01-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
            "2026-06-15T08:09:10.000001Z",
        ];
        for s in cases {
            let fast = utc_millis(s);
            assert!(fast.is_some(), "{s} has the canonical form");
            assert_eq!(fast, arrow_millis(s), "{s}");
        }
    }

    #[test]
    fn every_second_of_a_leap_year_day_and_every_day_of_two_years_agree_with_arrow() {
        let mut day = NaiveDate::from_ymd_opt(2023, 1, 1).unwrap();
        while day < NaiveDate::from_ymd_opt(2025, 1, 1).unwrap() {
            let s = format!("{}T13:07:59.5Z", day.format("%Y-%m-%d"));
            assert_eq!(utc_millis(&s), arrow_millis(&s), "{s}");
            day = day.succ_opt().unwrap();
        }
        for sec in (0..86_400).step_by(7) {
            let s = format!(
                "2024-02-29T{:02}:{:02}:{:02}.{:03}Z",
                sec / 3600,
                sec / 60 % 60,
                sec % 60,
                sec % 1000
            );
            assert_eq!(utc_millis(&s), arrow_millis(&s), "{s}");
        }
    }

    #[test]
    fn other_forms_are_left_to_arrow() {
        for s in [
            "2026-01-01T00:00:01+00:00",
            "2026-01-01T00:00:01.5+02:00",
            "2026-01-01 00:00:01Z",
            "2026-01-01t00:00:01Z",
            "2026-01-01T00:00:01z",
            "2026-01-01",
            "2026-01-01T00:00:01",
            "2026-01-01T00:00:01.Z",
            "2026-01-01T00:00:01.1234567890Z",
            "2026-02-30T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T23:60:00Z",
            "2026-01-01T23:59:60Z",
            "2026-01-01T0a:00:00Z",
            "+2026-01-01T00:00:00Z",
            "2026-1-01T00:00:00Z",
            "",
            "now",
        ] {
            assert_eq!(utc_millis(s), None, "{s}");
        }
    }

    #[test]
    fn a_column_converts_only_when_every_value_is_canonical() {
        let a: ArrayRef = Arc::new(StringArray::from(vec![
            Some("2026-01-01T00:00:01.394Z"),
            None,
            Some("2026-01-02T00:00:00Z"),
        ]));
        let ms = column_millis(&a).unwrap();
        assert_eq!(
            ms.iter().collect::<Vec<_>>(),
            vec![Some(1_767_225_601_394), None, Some(1_767_312_000_000)]
        );
        let v: ArrayRef = Arc::new(StringViewArray::from(vec!["2026-01-01T00:00:00Z"]));
        assert_eq!(column_millis(&v).unwrap().value(0), 1_767_225_600_000);
        let mixed: ArrayRef = Arc::new(StringArray::from(vec![
            "2026-01-01T00:00:01Z",
            "2026-01-01T00:00:01+00:00",
        ]));
        assert!(column_millis(&mixed).is_none());
    }
}
