//! Durations as users write them in flags: `250ms`, `3s`, `2m`, `1h` (a bare number is seconds,
//! as in Envoy and Istio YAML).
use std::time::Duration;

pub fn parse(text: &str) -> Result<Duration, String> {
    let bad = || format!("'{text}' is not a duration: expected e.g. 500ms, 3s, 2m, 1h");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let millis = match unit {
        "ms" => Some(number),
        "" | "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => return Err(bad()),
    };
    millis.map(Duration::from_millis).ok_or_else(bad)
}

/// Prints a duration the way `parse` reads it.
pub fn display(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(display(Duration::from_millis(1500)), "1500ms");
        assert_eq!(display(Duration::from_secs(3)), "3s");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "s", "3x", "-1s", "1.5s", "99999999999999999999h"] {
            assert!(
                parse(bad).unwrap_err().contains(&format!("'{bad}'")),
                "{bad}"
            );
        }
    }
}
