//! The `Prefer` request header (RFC 7240), as far as Warren honours it: `wait=N` and
//! `respond-async`. Unknown or malformed preferences are ignored, as the RFC asks.

use axum::http::{HeaderMap, header::HeaderName};

/// The response header that says which preference was applied.
pub const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// What the client prefers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prefer {
    /// `wait=N`: wait up to N seconds for the outcome before answering.
    pub wait_secs: Option<u64>,
    /// `respond-async`: answer `202` without waiting (unless `wait` is also given).
    pub respond_async: bool,
}

impl Prefer {
    /// Reads every `Prefer` header of a request.
    #[must_use]
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut prefer = Self::default();
        let values = headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok());
        for preference in values.flat_map(|v| v.split(',')) {
            // Parameters after ';' do not matter for these two preferences.
            let token = preference.split(';').next().unwrap_or_default().trim();
            let (name, value) = token.split_once('=').unwrap_or((token, ""));
            match name.trim().to_ascii_lowercase().as_str() {
                "respond-async" => prefer.respond_async = true,
                "wait" => {
                    if let Ok(secs) = value.trim().trim_matches('"').parse() {
                        prefer.wait_secs = Some(secs);
                    }
                }
                _ => {}
            }
        }
        prefer
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn parse(values: &[&str]) -> Prefer {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("prefer", HeaderValue::from_str(value).unwrap());
        }
        Prefer::from_headers(&headers)
    }

    #[test]
    fn reads_wait_and_respond_async_in_any_combination() {
        assert_eq!(parse(&[]), Prefer::default());
        assert_eq!(parse(&["wait=5"]).wait_secs, Some(5));
        assert_eq!(
            parse(&["respond-async, wait=10"]),
            Prefer {
                wait_secs: Some(10),
                respond_async: true
            }
        );
        assert_eq!(
            parse(&["handling=lenient", "Wait = \"3\""]).wait_secs,
            Some(3)
        );
        assert!(parse(&["respond-async; foo=bar"]).respond_async);
    }

    #[test]
    fn ignores_malformed_waits() {
        assert_eq!(parse(&["wait=soon"]).wait_secs, None);
        assert_eq!(parse(&["wait=-1"]).wait_secs, None);
        assert_eq!(parse(&["wait"]).wait_secs, None);
    }
}
