//! W3C Trace Context (`traceparent`) carried from an HTTP request through the job message to
//! the worker and its events, so one trace id links every log line about a job.
//!
//! `traceparent: 00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`. The gateway
//! continues a client's trace or starts one; each hop passes a child (same trace id, new span
//! id). With OTLP export on ([`crate::otel`]), each hop passes its own span's context instead,
//! so the collector links the spans across processes.

use uuid::Uuid;

/// The header and AMQP property name.
pub const TRACEPARENT: &str = "traceparent";

/// One point in a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: String,
    span_id: String,
    flags: String,
}

/// 16 random hex digits (the random tail of a UUIDv7).
fn random_span_id() -> String {
    let bits = Uuid::now_v7().as_u128() & u128::from(u64::MAX);
    format!("{bits:016x}")
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl TraceContext {
    /// A new trace (for a request that did not bring one).
    #[must_use]
    pub fn new_root() -> Self {
        Self {
            trace_id: Uuid::now_v7().simple().to_string(),
            span_id: random_span_id(),
            flags: "01".to_owned(),
        }
    }

    /// Reads a `traceparent` value; `None` if it is not a valid version-00 one.
    #[must_use]
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let valid = version == "00"
            && parts.next().is_none()
            && is_hex(trace_id, 32)
            && is_hex(span_id, 16)
            && is_hex(flags, 2)
            && trace_id.bytes().any(|b| b != b'0')
            && span_id.bytes().any(|b| b != b'0');
        valid.then(|| Self {
            trace_id: trace_id.to_owned(),
            span_id: span_id.to_owned(),
            flags: flags.to_owned(),
        })
    }

    /// The trace id, the field logs carry as `trace_id`.
    #[must_use]
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// A context from its parts (ids in lowercase hex, as OpenTelemetry writes them).
    #[must_use]
    pub fn from_parts(trace_id: &str, span_id: &str, sampled: bool) -> Self {
        Self {
            trace_id: trace_id.to_owned(),
            span_id: span_id.to_owned(),
            flags: if sampled { "01" } else { "00" }.to_owned(),
        }
    }

    /// The span id of this point (the parent of what the next hop records).
    #[must_use]
    pub fn span_id(&self) -> &str {
        &self.span_id
    }

    /// Whether the trace is recorded (the `sampled` flag).
    #[must_use]
    pub fn sampled(&self) -> bool {
        u8::from_str_radix(&self.flags, 16).is_ok_and(|flags| flags & 1 == 1)
    }

    /// The context to hand to the next hop: same trace, new span.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            span_id: random_span_id(),
            ..self.clone()
        }
    }

    /// The `traceparent` value.
    #[must_use]
    pub fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_writes_the_w3c_format() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(header).unwrap();
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.header(), header);
        let child = context.child();
        assert_eq!(child.trace_id(), context.trace_id());
        assert_ne!(child.header(), header);
        assert!(TraceContext::parse(&child.header()).is_some());
        assert!(TraceContext::parse(&TraceContext::new_root().header()).is_some());
    }

    #[test]
    fn refuses_malformed_headers() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
    }
}
