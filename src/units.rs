//! Figures as people read them, bounded whatever a server sent.

/// `duration` as a short figure: `412 ms`, `1.3 s`.
pub fn short_ms(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        return "– ms".to_string();
    }
    if ms >= 86_400_000.0 {
        ">1 day".to_string()
    } else if ms >= 10_000.0 {
        format!("{:.0} s", ms / 1000.0)
    } else if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_short_and_stay_bounded() {
        assert_eq!(short_ms(412.3), "412 ms");
        assert_eq!(short_ms(1340.0), "1.3 s");
        assert_eq!(short_ms(0.44), "0.4 ms");
        assert_eq!(short_ms(42_000.0), "42 s");
        assert_eq!(short_ms(1e300), ">1 day");
        assert_eq!(short_ms(f64::NAN), "– ms");
        assert_eq!(short_ms(-1.0), "– ms");
    }
}
