//! Helpers shared by proto's integration tests.

/// Parses a test-vector file of `name hex` lines (`#` comments, blank lines ignored), as produced by
/// `src/yjs/testdata/gen-*.mjs` from the JavaScript reference implementation.
pub fn parse_vectors(text: &str) -> Vec<(String, Vec<u8>)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (name, hex) = line.split_once(' ').expect("name hex");
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            (name.to_string(), bytes)
        })
        .collect()
}
