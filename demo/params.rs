//! Query parameters of the workloads: parsed strictly, every problem answered with a
//! `400` whose JSON body names the parameter and its allowed range.

use std::ops::RangeInclusive;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// A parameter that cannot be used; becomes a `400`.
#[derive(Debug, Clone, PartialEq)]
pub struct BadParam {
    pub parameter: String,
    pub problem: &'static str,
    pub allowed: String,
    pub got: Option<String>,
}

impl IntoResponse for BadParam {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": format!("{}: {}", self.parameter, self.problem),
            "parameter": self.parameter,
            "allowed": self.allowed,
            "got": self.got,
        });
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    }
}

/// The query of one request, checked against the names its endpoint accepts.
#[derive(Debug)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Parses `raw`; a name not in `accepted`, a repeated name or bad encoding is an error.
    pub fn parse(raw: Option<&str>, accepted: &[&str]) -> Result<Self, BadParam> {
        let raw = raw.unwrap_or("");
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(raw).map_err(|_| BadParam {
                parameter: "query".into(),
                problem: "is not a valid query string",
                allowed: accepted.join(", "),
                got: Some(raw.chars().take(100).collect()),
            })?;
        for (i, (name, _)) in pairs.iter().enumerate() {
            if name.is_empty() {
                return Err(BadParam {
                    parameter: "query".into(),
                    problem: "has a value with no parameter name",
                    allowed: accepted.join(", "),
                    got: Some(raw.chars().take(100).collect()),
                });
            }
            if !accepted.contains(&name.as_str()) {
                return Err(BadParam {
                    parameter: name.chars().take(50).collect(),
                    problem: "is not a parameter of this endpoint",
                    allowed: if accepted.is_empty() {
                        "no parameters".into()
                    } else {
                        format!("parameters: {}", accepted.join(", "))
                    },
                    got: None,
                });
            }
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(BadParam {
                    parameter: name.clone(),
                    problem: "is given more than once",
                    allowed: "once".into(),
                    got: None,
                });
            }
        }
        Ok(Self { pairs })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A required whole number within `range`, written in ASCII digits only: no
    /// sign, no spaces (`+` in a query is a space), no decimal point.
    pub fn int(&self, name: &str, range: RangeInclusive<u64>) -> Result<u64, BadParam> {
        let allowed = format!("integer {}..={}", range.start(), range.end());
        let Some(raw) = self.get(name) else {
            return Err(BadParam {
                parameter: name.into(),
                problem: "is required",
                allowed,
                got: None,
            });
        };
        let problem = if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
            match raw.parse::<u64>() {
                Ok(v) if range.contains(&v) => return Ok(v),
                // Too many digits for a u64 is out of range too.
                _ => "is out of range",
            }
        } else {
            not_digits(raw)
        };
        Err(BadParam {
            parameter: name.into(),
            problem,
            allowed,
            got: Some(raw.chars().take(50).collect()),
        })
    }

    /// An optional choice among `options`; `default` when absent.
    pub fn choice(
        &self,
        name: &str,
        options: &[&'static str],
        default: &'static str,
    ) -> Result<&'static str, BadParam> {
        let Some(raw) = self.get(name) else {
            return Ok(default);
        };
        options
            .iter()
            .find(|o| **o == raw)
            .copied()
            .ok_or_else(|| BadParam {
                parameter: name.into(),
                problem: "is not one of the choices",
                allowed: options.join(" | "),
                got: Some(raw.chars().take(50).collect()),
            })
    }
}

/// Why `raw`, which is not all digits, is not a whole number.
fn not_digits(raw: &str) -> &'static str {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        "is not a number"
    } else if trimmed.len() != raw.len() || raw.starts_with('+') {
        "must be digits only: no sign, no spaces"
    } else if raw.starts_with('-') {
        "must not be negative"
    } else if raw.parse::<f64>().is_ok_and(f64::is_finite) {
        "must be a whole number in range"
    } else {
        "is not a number"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(q: &str) -> Result<u64, BadParam> {
        Params::parse(Some(q), &["mb"])?.int("mb", 1..=64)
    }

    #[test]
    fn accepts_in_range_and_names_the_parameter_otherwise() {
        assert_eq!(int("mb=20"), Ok(20));
        assert_eq!(int("mb=064"), Ok(64));
        assert_eq!(int("mb=1"), Ok(1));
        for (q, problem) in [
            ("", "is required"),
            ("mb=", "is not a number"),
            ("mb=abc", "is not a number"),
            ("mb=-3", "must not be negative"),
            ("mb=0", "is out of range"),
            ("mb=65", "is out of range"),
            ("mb=99999999999999999999999", "is out of range"),
            ("mb=2.5", "must be a whole number in range"),
            ("mb=1e3", "must be a whole number in range"),
            ("mb=NaN", "is not a number"),
            ("mb=inf", "is not a number"),
            // `+` decodes to a space.
            ("mb=+5", "must be digits only: no sign, no spaces"),
            ("mb=%2B5", "must be digits only: no sign, no spaces"),
            ("mb=%205%20", "must be digits only: no sign, no spaces"),
            ("mb=%095", "must be digits only: no sign, no spaces"),
            ("mb=5%09", "must be digits only: no sign, no spaces"),
            ("mb=5%0A", "must be digits only: no sign, no spaces"),
            ("mb=%C2%A05", "must be digits only: no sign, no spaces"),
            ("mb=%20-3", "must be digits only: no sign, no spaces"),
            ("mb=%EF%BC%95", "is not a number"),
            ("mb=0x10", "is not a number"),
            ("mb=5_0", "is not a number"),
        ] {
            let e = int(q).unwrap_err();
            assert_eq!(e.parameter, "mb", "{q}");
            assert_eq!(e.problem, problem, "{q}");
            assert_eq!(e.allowed, "integer 1..=64");
        }
    }

    #[test]
    fn unknown_repeated_and_malformed_are_errors() {
        assert_eq!(int("size=3").unwrap_err().parameter, "size");
        assert_eq!(int("=3").unwrap_err().parameter, "query");
        assert_eq!(int("mb=3&=").unwrap_err().parameter, "query");
        assert_eq!(
            int("mb=1&mb=2").unwrap_err().problem,
            "is given more than once"
        );
        assert_eq!(int("mb=%ZZ").unwrap_err().parameter, "mb");
        assert_eq!(int("mb=%FF").unwrap_err().problem, "is not a number");
        let p = Params::parse(Some("on=gpu"), &["on"]).unwrap();
        assert_eq!(
            p.choice("on", &["loop", "pool"], "pool")
                .unwrap_err()
                .allowed,
            "loop | pool"
        );
        let p = Params::parse(None, &["on"]).unwrap();
        assert_eq!(p.choice("on", &["loop", "pool"], "pool"), Ok("pool"));
    }
}

#[cfg(test)]
mod properties {
    use http_body_util::BodyExt;
    use proptest::prelude::*;

    use super::*;

    /// Query strings made of the pieces that matter, and of anything at all.
    fn query() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("mb".to_string()),
            Just("on".to_string()),
            Just("=".to_string()),
            Just("&".to_string()),
            Just("+".to_string()),
            Just("-".to_string()),
            Just(".".to_string()),
            Just("%".to_string()),
            Just("%20".to_string()),
            Just("%2B".to_string()),
            Just("%09".to_string()),
            Just("%FF".to_string()),
            Just("loop".to_string()),
            "[0-9]{1,3}",
            any::<char>().prop_map(String::from),
        ];
        prop_oneof![
            proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat()),
            any::<String>(),
        ]
    }

    /// What the endpoint of `/hash` does with a query: `mb` in 1..=64, `on` a choice.
    fn check(q: &str) -> Result<u64, BadParam> {
        let params = Params::parse(Some(q), &["mb", "on"])?;
        params.choice("on", &["loop", "pool"], "pool")?;
        params.int("mb", 1..=64)
    }

    fn body_of(e: BadParam) -> (StatusCode, serde_json::Value) {
        let response = e.into_response();
        let status = response.status();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt
            .block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    proptest! {
        // Failures are not saved to a file (they would land beside this module, in
        // `demo/`): a shrunk failing input becomes a case of the tests above.
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn any_query_is_a_value_in_range_or_a_400_naming_a_parameter(q in query()) {
            match check(&q) {
                Ok(v) => {
                    prop_assert!((1..=64).contains(&v));
                    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&q).unwrap();
                    let raw = &pairs.iter().find(|(n, _)| n == "mb").unwrap().1;
                    prop_assert!(raw.bytes().all(|b| b.is_ascii_digit()), "{raw:?}");
                }
                Err(e) => {
                    prop_assert!(!e.parameter.is_empty());
                    let parameter = e.parameter.clone();
                    let (status, body) = body_of(e);
                    prop_assert_eq!(status, StatusCode::BAD_REQUEST);
                    prop_assert_eq!(body["parameter"].as_str(), Some(parameter.as_str()));
                    prop_assert!(body["error"].as_str().is_some_and(|s| s.starts_with(&parameter)));
                    prop_assert!(body["allowed"].as_str().is_some_and(|s| !s.is_empty()));
                }
            }
        }

        #[test]
        fn digits_in_range_round_trip(
            lo in 0u64..1_000_000,
            span in 0u64..1_000_000,
            at in any::<u64>(),
            zeros in 0usize..3,
            other_first in any::<bool>(),
        ) {
            let v = lo + at % (span + 1);
            let n = format!("n={}{v}", "0".repeat(zeros));
            let q = if other_first { format!("on=loop&{n}") } else { format!("{n}&on=pool") };
            let params = Params::parse(Some(&q), &["n", "on"]).unwrap();
            prop_assert_eq!(params.int("n", lo..=lo + span), Ok(v));
        }

        #[test]
        fn any_other_value_is_a_400_naming_it(value in any::<String>(), lo in 1u64..100, span in 0u64..1000) {
            let range = lo..=lo + span;
            let q = serde_urlencoded::to_string([("n", value.as_str())]).unwrap();
            let got = Params::parse(Some(&q), &["n"]).unwrap().int("n", range.clone());
            let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
            match value.parse::<u64>() {
                Ok(v) if digits && range.contains(&v) => prop_assert_eq!(got, Ok(v)),
                _ => prop_assert_eq!(got.unwrap_err().parameter, "n"),
            }
        }

        #[test]
        fn digits_with_a_sign_space_or_point_are_refused(
            digits in "[0-9]{1,4}",
            junk in prop_oneof![
                Just(" "), Just("\t"), Just("\n"), Just("+"), Just("-"), Just("."), Just("\u{a0}")
            ],
            at in 0usize..5,
        ) {
            let at = at.min(digits.len());
            let value = format!("{}{junk}{}", &digits[..at], &digits[at..]);
            let q = serde_urlencoded::to_string([("n", value.as_str())]).unwrap();
            let e = Params::parse(Some(&q), &["n"]).unwrap().int("n", 0..=u64::MAX).unwrap_err();
            prop_assert_eq!(e.parameter, "n");
        }
    }
}
