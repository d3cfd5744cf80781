//! A JSON well-formedness check for the JSON texts embedded in Yjs payloads
//! (ContentJSON / Embed / Format values, awareness states).
//!
//! yjs clients `JSON.parse` these strings while applying an update, so one
//! malformed or absurdly nested text makes every JS peer fail on the
//! document. Only syntax and depth are checked; nothing is built.

/// Why a JSON text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonError {
    /// Not one well-formed JSON text.
    Invalid,
    /// Array/object nesting deeper than allowed.
    TooDeep,
}

type JResult<T> = Result<T, JsonError>;

/// Checks that `s` is one well-formed JSON text (RFC 8259) whose array/object
/// nesting is at most `max_depth`.
///
/// Iterative, with a heap stack capped at `max_depth`, so hostile nesting
/// costs neither call stack nor more than `max_depth` bytes of heap. Full
/// syntax is checked (not just brackets) because yjs clients `JSON.parse`
/// these strings while applying the update: a malformed one makes every
/// JS peer fail on the document.
pub(crate) fn validate_json(s: &str, max_depth: usize) -> JResult<()> {
    let b = s.as_bytes();
    let mut i = 0usize;
    // true = object, false = array.
    let mut stack: Vec<bool> = Vec::new();
    'value: loop {
        skip_ws(b, &mut i);
        match b.get(i).copied() {
            Some(open @ (b'{' | b'[')) => {
                if stack.len() >= max_depth {
                    return Err(JsonError::TooDeep);
                }
                i += 1;
                skip_ws(b, &mut i);
                let close = if open == b'{' { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    i += 1; // empty container: a complete value
                } else {
                    stack.push(open == b'{');
                    if open == b'{' {
                        json_key(b, &mut i)?;
                    }
                    continue 'value;
                }
            }
            Some(b'"') => json_string(b, &mut i)?,
            Some(b't') => json_literal(b, &mut i, b"true")?,
            Some(b'f') => json_literal(b, &mut i, b"false")?,
            Some(b'n') => json_literal(b, &mut i, b"null")?,
            Some(b'-' | b'0'..=b'9') => json_number(b, &mut i)?,
            _ => return Err(JsonError::Invalid),
        }
        // After a complete value: separator, closer, or end of text.
        loop {
            skip_ws(b, &mut i);
            let Some(&is_object) = stack.last() else {
                return if i == b.len() {
                    Ok(())
                } else {
                    Err(JsonError::Invalid)
                };
            };
            match b.get(i).copied() {
                Some(b',') => {
                    i += 1;
                    if is_object {
                        json_key(b, &mut i)?;
                    }
                    continue 'value;
                }
                Some(b'}') if is_object => {
                    i += 1;
                    stack.pop();
                }
                Some(b']') if !is_object => {
                    i += 1;
                    stack.pop();
                }
                _ => return Err(JsonError::Invalid),
            }
        }
    }
}

fn skip_ws(b: &[u8], i: &mut usize) {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(*i) {
        *i += 1;
    }
}

/// Object member prefix: whitespace, string key, whitespace, colon.
fn json_key(b: &[u8], i: &mut usize) -> JResult<()> {
    skip_ws(b, i);
    if b.get(*i) != Some(&b'"') {
        return Err(JsonError::Invalid);
    }
    json_string(b, i)?;
    skip_ws(b, i);
    if b.get(*i) != Some(&b':') {
        return Err(JsonError::Invalid);
    }
    *i += 1;
    Ok(())
}

/// A string literal starting at the opening quote. The input is already
/// known to be UTF-8, so only escapes and control characters need checking.
fn json_string(b: &[u8], i: &mut usize) -> JResult<()> {
    *i += 1; // opening quote
    loop {
        let c = *b.get(*i).ok_or(JsonError::Invalid)?;
        *i += 1;
        match c {
            b'"' => return Ok(()),
            b'\\' => {
                let e = *b.get(*i).ok_or(JsonError::Invalid)?;
                *i += 1;
                match e {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        let hex = b.get(*i..*i + 4).ok_or(JsonError::Invalid)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return Err(JsonError::Invalid);
                        }
                        *i += 4;
                    }
                    _ => return Err(JsonError::Invalid),
                }
            }
            0x00..=0x1F => return Err(JsonError::Invalid),
            _ => {}
        }
    }
}

fn json_literal(b: &[u8], i: &mut usize, lit: &[u8]) -> JResult<()> {
    if b.get(*i..*i + lit.len()) != Some(lit) {
        return Err(JsonError::Invalid);
    }
    *i += lit.len();
    Ok(())
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
fn json_number(b: &[u8], i: &mut usize) -> JResult<()> {
    fn digits(b: &[u8], i: &mut usize) -> usize {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    }
    if b.get(*i) == Some(&b'-') {
        *i += 1;
    }
    match b.get(*i) {
        Some(b'0') => *i += 1,
        Some(b'1'..=b'9') => {
            digits(b, i);
        }
        _ => return Err(JsonError::Invalid),
    }
    if b.get(*i) == Some(&b'.') {
        *i += 1;
        if digits(b, i) == 0 {
            return Err(JsonError::Invalid);
        }
    }
    if let Some(b'e' | b'E') = b.get(*i) {
        *i += 1;
        if let Some(b'+' | b'-') = b.get(*i) {
            *i += 1;
        }
        if digits(b, i) == 0 {
            return Err(JsonError::Invalid);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_validator() {
        let ok = [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "1.5e+10",
            "-12.25E-3",
            "\"\"",
            "\"a\\\"]}\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\uD83C\\uDF0D\"",
            "\"ünï 🌍\"",
            "[]",
            "{}",
            " [ 1 , { \"a\" : [ ] , \"b\" : { } } , \"]\" ] ",
            "{\"x\":\"[[[[[[\"}",
            "\t\n\r{\"k\":null}\n",
        ];
        for s in ok {
            assert_eq!(validate_json(s, 32), Ok(()), "{s}");
        }
        let bad = [
            "",
            " ",
            "nul",
            "nulls",
            "undefined",
            "01",
            "1.",
            ".5",
            "1e",
            "+1",
            "-",
            "\"abc",
            "\"\\x\"",
            "\"\\u12g4\"",
            "\"\\u12\"",
            "\"tab\there\"",
            "[",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{a:1}",
            "{\"a\":1]",
            "[1}",
            "]",
            "1 2",
            "[]]",
            "NaN",
        ];
        for s in bad {
            assert_eq!(validate_json(s, 32), Err(JsonError::Invalid), "{s:?}");
        }
        // Brackets inside strings do not count toward depth.
        let quoted = format!("[\"{}\"]", "[".repeat(1000));
        assert_eq!(validate_json(&quoted, 2), Ok(()));
        assert_eq!(validate_json("[[1]]", 2), Ok(()));
        assert_eq!(validate_json("[[[1]]]", 2), Err(JsonError::TooDeep));
        assert_eq!(
            validate_json("{\"a\":{\"b\":{}}}", 2),
            Err(JsonError::TooDeep)
        );
    }
}
