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

/// One point in a trace, kept as its `traceparent` value: the 55 ASCII bytes
/// `00-<trace id>-<span id>-<flags>`, so reading one, passing a child on and writing it out
/// allocate nothing until a `String` is asked for.
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext([u8; LEN]);

/// The length of a version-00 `traceparent`.
const LEN: usize = 55;
/// Where its parts are.
const TRACE_ID: std::ops::Range<usize> = 3..35;
const SPAN_ID: std::ops::Range<usize> = 36..52;
const FLAGS: std::ops::Range<usize> = 53..55;
/// A sampled context with all-zero ids, for the ids to be written over.
const SAMPLED: [u8; LEN] = *b"00-00000000000000000000000000000000-0000000000000000-01";

/// 64 random bits (the random tail of a UUIDv7), never zero.
fn random_span_id() -> u64 {
    let tail = Uuid::now_v7().as_u128() & u128::from(u64::MAX);
    u64::try_from(tail).unwrap_or(u64::MAX)
}

/// Writes `value` into `out` as lowercase hex, as many low digits as `out` is long.
fn write_hex(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for digit in out.iter_mut().rev() {
        *digit = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
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
        Self::from_ids(Uuid::now_v7().as_u128(), random_span_id(), true)
    }

    /// Reads a `traceparent` value; `None` if it is not a valid version-00 one.
    #[must_use]
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let mut parts = header.split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let valid = version == "00"
            && parts.next().is_none()
            && is_hex(trace_id, 32)
            && is_hex(span_id, 16)
            && is_hex(flags, 2)
            && trace_id.bytes().any(|b| b != b'0')
            && span_id.bytes().any(|b| b != b'0');
        // Four parts of these lengths and three dashes are exactly `LEN` bytes.
        let bytes: [u8; LEN] = header.as_bytes().try_into().ok()?;
        valid.then_some(Self(bytes))
    }

    /// A context from its ids (as OpenTelemetry holds them).
    #[must_use]
    pub fn from_ids(trace_id: u128, span_id: u64, sampled: bool) -> Self {
        let mut header = SAMPLED;
        write_hex(&mut header[TRACE_ID], trace_id);
        write_hex(&mut header[SPAN_ID], u128::from(span_id));
        if !sampled {
            header[LEN - 1] = b'0';
        }
        Self(header)
    }

    /// One part of the header as text (it only ever holds ASCII).
    fn part(&self, range: std::ops::Range<usize>) -> &str {
        std::str::from_utf8(&self.0[range]).unwrap_or_default()
    }

    /// The trace id, the field logs carry as `trace_id`.
    #[must_use]
    pub fn trace_id(&self) -> &str {
        self.part(TRACE_ID)
    }

    /// The span id of this point (the parent of what the next hop records).
    #[must_use]
    pub fn span_id(&self) -> &str {
        self.part(SPAN_ID)
    }

    /// Whether the trace is recorded (the `sampled` flag).
    #[must_use]
    pub fn sampled(&self) -> bool {
        u8::from_str_radix(self.part(FLAGS), 16).is_ok_and(|flags| flags & 1 == 1)
    }

    /// The context to hand to the next hop: same trace, new span.
    #[must_use]
    pub fn child(&self) -> Self {
        let mut header = self.0;
        write_hex(&mut header[SPAN_ID], u128::from(random_span_id()));
        Self(header)
    }

    /// The `traceparent` value.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.part(0..LEN)
    }

    /// The `traceparent` value, owned.
    #[must_use]
    pub fn header(&self) -> String {
        self.as_str().to_owned()
    }
}

impl std::fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TraceContext").field(&self.as_str()).finish()
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
        assert!(context.sampled());
    }

    #[test]
    fn writes_ids_as_opentelemetry_prints_them() {
        let context = TraceContext::from_ids(
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            0x00f0_67aa_0ba9_02b7,
            false,
        );
        assert_eq!(
            context.header(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
        assert_eq!(context.span_id(), "00f067aa0ba902b7");
        assert!(!context.sampled());
        assert_eq!(TraceContext::parse(context.as_str()), Some(context));
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
