//! Structured log lines on stderr: `ts=… level=info msg="…" key=value …`.
//!
//! One line per event, logfmt-style, so that `grep`, `journalctl` and log shippers
//! read them without a schema. The level is process-wide (an atomic read on each
//! call site, nothing more when the line is filtered out). stdout is never written
//! here: in stdio mode it carries MCP messages only.

use std::fmt::{Display, Write as _};
use std::io::Write as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable that sets the level when `--log-level` is not given.
pub const LOG_ENV: &str = "COREMCP_LOG";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Level, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "error" => Ok(Level::Error),
            "warn" | "warning" => Ok(Level::Warn),
            "info" => Ok(Level::Info),
            "debug" => Ok(Level::Debug),
            _ => Err(format!(
                "unknown log level {s:?}; use error, warn, info or debug"
            )),
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one line if `level` is enabled.
pub fn emit(level: Level, msg: &str, fields: &[(&str, &dyn Display)]) {
    if !enabled(level) {
        return;
    }
    let line = format_line(SystemTime::now(), level, msg, fields);
    // One write of the whole line, so lines from different shards never interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `ts=… level=… msg=… k=v…\n`.
pub fn format_line(
    now: SystemTime,
    level: Level,
    msg: &str,
    fields: &[(&str, &dyn Display)],
) -> String {
    let mut line = String::with_capacity(96 + msg.len());
    line.push_str("ts=");
    push_timestamp(&mut line, now);
    line.push_str(" level=");
    line.push_str(level.as_str());
    line.push_str(" msg=");
    push_value(&mut line, msg);
    let mut value = String::new();
    for (key, v) in fields {
        value.clear();
        let _ = write!(value, "{v}");
        line.push(' ');
        line.push_str(key);
        line.push('=');
        push_value(&mut line, &value);
    }
    line.push('\n');
    line
}

fn push_value(out: &mut String, v: &str) {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '=');
    if plain {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 3339 UTC with milliseconds, from the days-since-epoch civil calendar
/// conversion (proleptic Gregorian).
fn push_timestamp(out: &mut String, now: SystemTime) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    );
}

/// `log!(Info, "message", key = value, …)`: one structured line on stderr.
#[macro_export]
macro_rules! log {
    ($level:ident, $msg:expr $(, $key:ident = $value:expr)* $(,)?) => {
        if $crate::log::enabled($crate::log::Level::$level) {
            $crate::log::emit(
                $crate::log::Level::$level,
                &$msg,
                &[$((stringify!($key), &$value as &dyn ::std::fmt::Display)),*],
            );
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lines_are_logfmt_with_quoted_values() {
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_200_123); // 2024-03-01
        let line = format_line(
            t,
            Level::Warn,
            "shard stopped",
            &[("shard", &3), ("why", &"a \"b\"=c"), ("empty", &"")],
        );
        assert_eq!(
            line,
            "ts=2024-03-01T00:00:00.123Z level=warn msg=\"shard stopped\" shard=3 why=\"a \\\"b\\\"=c\" empty=\"\"\n"
        );
        assert!(format_line(UNIX_EPOCH, Level::Info, "x", &[])
            .starts_with("ts=1970-01-01T00:00:00.000Z"));
    }

    #[test]
    fn levels_parse() {
        assert_eq!("DEBUG".parse::<Level>(), Ok(Level::Debug));
        assert!("loud".parse::<Level>().is_err());
    }
}
