//! The page around the charts: escaping, times, the style sheet.

use std::time::{SystemTime, UNIX_EPOCH};

/// `text` safe inside HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// A time on the report's axis: `+12.3 s`, or `+4:05.2` from a minute on.
pub fn seconds(t: f64) -> String {
    if t < 60.0 {
        format!("+{t:.1} s")
    } else {
        let whole = t as u64;
        format!("+{}:{:04.1}", whole / 60, t - (whole / 60 * 60) as f64)
    }
}

/// A length: `8.4 s`, `10 min 0 s`.
pub fn duration(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        let whole = s.round() as u64;
        format!("{} min {} s", whole / 60, whole % 60)
    }
}

/// `2026-11-27 19:48:51 UTC`.
pub fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm), for dates from 1970.
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The style sheet: readable on screen, one server per printed page run.
pub const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; color: #222;
  max-width: 1040px; margin: 1.5em auto; padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { font-size: 1.3em; border-bottom: 2px solid #1f77b4; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin: 1.4em 0 .4em; }
.meta, .note { color: #555; }
.warn { background: #fff4e5; border-left: 4px solid #ff7f0e; padding: .4em .8em; }
table { border-collapse: collapse; font-size: .92em; }
td, th { padding: .2em .8em .2em 0; text-align: left; vertical-align: top; }
pre.summary { font-size: .9em; background: #f6f6f6; padding: .6em .8em; overflow-x: auto; }
table.events th { border-bottom: 1px solid #999; }
table.events td:first-child { white-space: nowrap; font-variant-numeric: tabular-nums; }
.diagnosis p { margin: .3em 0; padding: .3em .6em; background: #fdecea; border-left: 4px solid #d62728; }
figure.chart { margin: 1.2em 0; break-inside: avoid; }
figure.chart figcaption { font-weight: 600; }
figure.chart svg { width: 100%; height: auto; display: block; }
.legend { margin: .1em 0 0 64px; font-size: .9em; }
.legend span { margin-right: 1em; white-space: nowrap; }
.legend i { display: inline-block; width: 1.6em; height: .35em; vertical-align: middle; margin-right: .35em; }
.legend i.stall { background: rgba(214, 39, 40, .15); height: .9em; }
.legend i.mark { background: #444; width: 2px; height: .9em; }
line.ev { stroke: #444; stroke-width: 1; stroke-dasharray: 3 3; }
path.ev { fill: #444; }
line.hit { stroke: #000; stroke-opacity: 0; stroke-width: 9; }
g.events g:hover line.ev { stroke: #000; stroke-dasharray: none; }
@media print {
  body { max-width: none; margin: 0; }
  section.server { break-before: page; }
  section.server:first-of-type { break-before: auto; }
}
";

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn words_and_times() {
        assert_eq!(
            escape("GET /x?a=1&b=<2>\"'"),
            "GET /x?a=1&amp;b=&lt;2&gt;&quot;&#39;"
        );
        assert_eq!(escape("a\u{1b}b"), "a\\u{1b}b");
        assert_eq!(seconds(12.34), "+12.3 s");
        assert_eq!(seconds(245.2), "+4:05.2");
        assert_eq!(duration(600.0), "10 min 0 s");
        assert_eq!(duration(8.44), "8.4 s");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_808_931);
        assert_eq!(utc(t), "2026-11-27 19:48:51 UTC");
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
    }
}
