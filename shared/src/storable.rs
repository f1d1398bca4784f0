//! What a payload or a result must be to be kept faithfully by every store and read by every
//! worker and gateway: JSON
//! nested at most [`MAX_DEPTH`] deep, with no string holding a NUL character (`\u0000`) or half
//! of a UTF-16 surrogate pair (`"\ud800"` alone), and no number beyond what PostgreSQL's
//! `numeric` holds (131,072 digits before the point, 16,383 after). The memory store could keep
//! any of these as text; PostgreSQL's `jsonb` refuses them, and a worker's JSON parser stops at
//! 128 levels. So the gateway refuses such payloads up front, naming what is wrong, whatever
//! its store; and a worker fails an attempt whose handler returned such a result (kind
//! `invalid_result`), instead of sending an event no gateway could read or store.

/// How deep arrays and objects may nest (a JSON parser here stops at 128).
pub const MAX_DEPTH: usize = 100;

/// Digits a number may have before its decimal point (PostgreSQL's `numeric`).
const MAX_INTEGER_DIGITS: i64 = 131_072;
/// Digits a number may have after its decimal point (PostgreSQL's `numeric`).
const MAX_FRACTION_DIGITS: i64 = 16_383;

/// Checks `json`, text already known to be valid JSON; says what is wrong if it cannot be
/// stored faithfully.
pub fn check(json: &str) -> Result<(), String> {
    let bytes = json.as_bytes();
    let mut depth = 0_usize;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!(
                        "nests arrays and objects more than {MAX_DEPTH} deep, the most Warren \
                         accepts; flatten it"
                    ));
                }
                at += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                at += 1;
            }
            b'"' => at = check_string(bytes, at + 1)?,
            b'-' | b'0'..=b'9' => at = check_number(bytes, at)?,
            _ => at += 1,
        }
    }
    Ok(())
}

/// Checks the string starting after its opening quote at `at`; returns where it ends.
fn check_string(bytes: &[u8], mut at: usize) -> Result<usize, String> {
    let mut pending_high = false;
    while at < bytes.len() {
        match bytes[at] {
            b'"' if !pending_high => return Ok(at + 1),
            b'\\' if bytes.get(at + 1) == Some(&b'u') => {
                let unit = bytes
                    .get(at + 2..at + 6)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                    .unwrap_or(0xFFFD);
                match unit {
                    0 => {
                        return Err(
                            "holds a NUL character (\\u0000) in a string, which PostgreSQL cannot \
                             store; remove it or encode the data (e.g. base64)"
                                .into(),
                        );
                    }
                    0xD800..=0xDBFF if !pending_high => pending_high = true,
                    0xDC00..=0xDFFF if pending_high => pending_high = false,
                    0xD800..=0xDFFF => return Err(lone_surrogate()),
                    _ if pending_high => return Err(lone_surrogate()),
                    _ => {}
                }
                at += 6;
            }
            _ if pending_high => return Err(lone_surrogate()),
            b'\\' => at += 2,
            _ => at += 1,
        }
    }
    Ok(at)
}

fn lone_surrogate() -> String {
    "holds half of a UTF-16 surrogate pair (e.g. \"\\ud800\" alone) in a string, which is not \
     Unicode text; send the whole pair or the character itself"
        .into()
}

/// Checks the number starting at `at`; returns where it ends.
fn check_number(bytes: &[u8], start: usize) -> Result<usize, String> {
    let mut at = start;
    let digits = |at: &mut usize| {
        let from = *at;
        while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
            *at += 1;
        }
        i64::try_from(*at - from).unwrap_or(i64::MAX)
    };
    if bytes[at] == b'-' {
        at += 1;
    }
    let integer = digits(&mut at);
    let mut fraction = 0;
    if bytes.get(at) == Some(&b'.') {
        at += 1;
        fraction = digits(&mut at);
    }
    let mut exponent: i64 = 0;
    if matches!(bytes.get(at), Some(b'e' | b'E')) {
        at += 1;
        let negative = bytes.get(at) == Some(&b'-');
        if matches!(bytes.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        let from = at;
        digits(&mut at);
        let text = std::str::from_utf8(&bytes[from..at]).unwrap_or("0");
        let magnitude = text.parse::<i64>().unwrap_or(i64::MAX);
        exponent = if negative { -magnitude } else { magnitude };
    }
    let integer_digits = integer.saturating_add(exponent);
    let fraction_digits = fraction.saturating_sub(exponent);
    if integer_digits > MAX_INTEGER_DIGITS || fraction_digits > MAX_FRACTION_DIGITS {
        let text = String::from_utf8_lossy(&bytes[start..at.min(start + 40)]).into_owned();
        return Err(format!(
            "holds the number {text}, beyond what PostgreSQL stores (131072 digits before the \
             point, 16383 after); send it as a string"
        ));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn nesting_up_to_the_limit_passes_and_beyond_it_is_refused() {
        assert!(check(&nested(64)).is_ok());
        assert!(check(&nested(MAX_DEPTH)).is_ok());
        assert!(check(&nested(MAX_DEPTH + 1)).unwrap_err().contains("deep"));
        assert!(check(&nested(100_000)).is_err());
        // Brackets inside strings are text, not nesting.
        assert!(check(&format!("[\"{}\"]", "[".repeat(500))).is_ok());
    }

    #[test]
    fn nul_and_lone_surrogates_are_refused_and_pairs_pass() {
        assert!(check(r#"{"a": "x\u0000y"}"#).unwrap_err().contains("NUL"));
        assert!(check(r#""\ud800""#).unwrap_err().contains("surrogate"));
        assert!(check(r#""\udc00""#).unwrap_err().contains("surrogate"));
        assert!(check(r#""\ud800x""#).unwrap_err().contains("surrogate"));
        assert!(
            check(r#""\ud800\u0041""#)
                .unwrap_err()
                .contains("surrogate")
        );
        assert!(check(r#""\ud83d\ude00 and \u00e9 and \\u0000 \"""#).is_ok());
    }

    #[test]
    fn numbers_beyond_numeric_are_refused_and_large_ones_pass() {
        assert!(check("1e999999").unwrap_err().contains("number"));
        assert!(check("-1e-999999").is_err());
        assert!(check("[1e400, -2.5E-300, 0, 12345678901234567890]").is_ok());
    }
}
