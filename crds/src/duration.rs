//! Human durations in manifests (`100ms`, `30s`, `5m`, `1h`, `7d`), kept as written so that
//! validation can report every malformed one at once instead of failing on the first.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A duration as written in a manifest; parsed by [`Duration::millis`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(String);

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(ms|s|m|h|d)$",
            "description": "A duration: a whole number followed by ms, s, m, h or d (e.g. 30s, 5m)."
        })
    }
}

impl Duration {
    /// A duration from whole milliseconds, written in the largest exact unit.
    pub fn from_millis(ms: u64) -> Self {
        const UNITS: [(u64, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s")];
        for (size, unit) in UNITS {
            if ms != 0 && ms.is_multiple_of(size) {
                return Duration(format!("{}{unit}", ms / size));
            }
        }
        Duration(format!("{ms}ms"))
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The duration in milliseconds, or a message saying what is wrong with the text.
    pub fn millis(&self) -> Result<u64, String> {
        parse_millis(&self.0)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Duration {
    fn from(s: &str) -> Self {
        Duration(s.to_string())
    }
}

fn parse_millis(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err(format!("duration `{text}` is negative; durations must be zero or more"));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!("`{text}` is not a duration; write a whole number and a unit (ms, s, m, h, d), e.g. 30s"));
    }
    let n: u64 = digits.parse().map_err(|_| format!("duration `{text}` is too large"))?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => return Err(format!("duration `{text}` has no unit; add one of ms, s, m, h, d")),
        other => return Err(format!("duration `{text}` has unknown unit `{other}`; use ms, s, m, h or d")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("duration `{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(Duration::from("100ms").millis(), Ok(100));
        assert_eq!(Duration::from("30s").millis(), Ok(30_000));
        assert_eq!(Duration::from("5m").millis(), Ok(300_000));
        assert_eq!(Duration::from("1h").millis(), Ok(3_600_000));
        assert_eq!(Duration::from("7d").millis(), Ok(604_800_000));
        assert_eq!(Duration::from("0s").millis(), Ok(0));
    }

    #[test]
    fn rejects_bad_text_with_reason() {
        assert!(Duration::from("-5s").millis().unwrap_err().contains("negative"));
        assert!(Duration::from("5").millis().unwrap_err().contains("no unit"));
        assert!(Duration::from("5w").millis().unwrap_err().contains("unknown unit `w`"));
        assert!(Duration::from("soon").millis().unwrap_err().contains("not a duration"));
        assert!(Duration::from("99999999999999999999s").millis().unwrap_err().contains("too large"));
    }

    #[test]
    fn from_millis_round_trips() {
        for ms in [1, 100, 1_000, 90_000, 300_000, 3_600_000, 86_400_000, 1_500] {
            assert_eq!(Duration::from_millis(ms).millis(), Ok(ms));
        }
        assert_eq!(Duration::from_millis(300_000).as_str(), "5m");
    }
}
