//! Go-style durations (`1h30m`, `10s`, `500ms`), as etcd's and Kubernetes'
//! duration flags take them.

use std::time::Duration;

/// Parses a sequence of decimal numbers, each with a unit (`h`, `m`, `s`,
/// `ms`), or a bare `0`; `None` for anything else.
pub fn parse(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[u..];
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(parse("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("2.5s"), Some(Duration::from_millis(2500)));
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        for bad in ["", "5", "1d", "h", "1h-", "-1s"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
