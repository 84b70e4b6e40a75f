//! W3C Trace Context (`traceparent`) for requests a waypoint carries: a request that
//! arrives with a valid `traceparent` continues its trace (same trace id, a new span id
//! whose parent is the caller's), one without (or with a malformed one) starts a new trace.
//! `tracestate` and `baggage` are left untouched, so they travel with the request.

use http::{HeaderMap, HeaderValue};
use rand::RngCore;

/// The header's name.
pub const TRACEPARENT: &str = "traceparent";

/// One hop's place in a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// This hop's span, 8 bytes, never all zero.
    pub span_id: [u8; 8],
    /// The caller's span, when the trace was continued.
    pub parent_span_id: Option<[u8; 8]>,
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

// === impl TraceContext ===

impl TraceContext {
    /// Continues the trace in `headers` or starts one, and writes this hop's `traceparent`
    /// back into `headers` for the upstream.
    pub fn propagate(headers: &mut HeaderMap) -> TraceContext {
        let parent = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse);
        let context = match parent {
            Some((trace_id, parent_span, flags)) => TraceContext {
                trace_id,
                span_id: random_nonzero(),
                parent_span_id: Some(parent_span),
                flags,
            },
            None => TraceContext {
                trace_id: random_nonzero(),
                span_id: random_nonzero(),
                parent_span_id: None,
                flags: 0x01,
            },
        };
        if let Ok(value) = HeaderValue::from_str(&context.header()) {
            headers.insert(TRACEPARENT, value);
        }
        context
    }

    /// The `traceparent` value for this hop.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// `version-traceid-parentid-flags`; version 00 exactly, or a later version whose first
/// four fields parse (the spec's forward compatibility). All-zero ids are invalid.
fn parse(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let value = value.trim();
    let mut fields = value.split('-');
    let version = fields.next()?;
    let trace = fields.next()?;
    let span = fields.next()?;
    let flags = fields.next()?;
    let rest = fields.next();
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    if flags.len() != 2 || (version == "00" && rest.is_some()) {
        return None;
    }
    u8::from_str_radix(version, 16).ok()?;
    let trace_id: [u8; 16] = unhex(trace)?.try_into().ok()?;
    let span_id: [u8; 8] = unhex(span)?.try_into().ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id, flags))
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    while bytes == [0u8; N] {
        rand::thread_rng().fill_bytes(&mut bytes);
    }
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_trace_with_a_new_span() {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let context = TraceContext::propagate(&mut headers);
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            context.parent_span_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        let sent = headers[TRACEPARENT].to_str().unwrap().to_owned();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(!sent.contains("00f067aa0ba902b7"), "a new span id: {sent}");
        assert!(sent.ends_with("-01"));
    }

    #[test]
    fn starts_a_trace_when_absent_or_malformed() {
        for bad in [
            None,
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
            Some("garbage"),
        ] {
            let mut headers = HeaderMap::new();
            if let Some(bad) = bad {
                headers.insert(TRACEPARENT, HeaderValue::from_static(bad));
            }
            let context = TraceContext::propagate(&mut headers);
            assert_eq!(context.parent_span_id, None, "{bad:?}");
            let sent = headers[TRACEPARENT].to_str().unwrap();
            assert_eq!(parse(sent).map(|p| p.0), Some(context.trace_id), "{sent}");
        }
    }
}
