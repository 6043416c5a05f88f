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

    /// A required whole number within `range`.
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
        let got = Some(raw.chars().take(50).collect());
        match raw.trim().parse::<u64>() {
            Ok(v) if range.contains(&v) => Ok(v),
            Ok(_) => Err(BadParam {
                parameter: name.into(),
                problem: "is out of range",
                allowed,
                got,
            }),
            Err(_) => Err(BadParam {
                parameter: name.into(),
                problem: if raw.trim_start().starts_with('-') {
                    "must not be negative"
                } else if raw.trim().parse::<f64>().is_ok_and(|f| f.is_finite()) {
                    "must be a whole number in range"
                } else {
                    "is not a number"
                },
                allowed,
                got,
            }),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn int(q: &str) -> Result<u64, BadParam> {
        Params::parse(Some(q), &["mb"])?.int("mb", 1..=64)
    }

    #[test]
    fn accepts_in_range_and_names_the_parameter_otherwise() {
        assert_eq!(int("mb=20"), Ok(20));
        for (q, problem) in [
            ("", "is required"),
            ("mb=", "is not a number"),
            ("mb=abc", "is not a number"),
            ("mb=-3", "must not be negative"),
            ("mb=0", "is out of range"),
            ("mb=65", "is out of range"),
            (
                "mb=99999999999999999999999",
                "must be a whole number in range",
            ),
            ("mb=2.5", "must be a whole number in range"),
            ("mb=NaN", "is not a number"),
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
