//! Resource quantities (`10Gi`, `500m`, `1e3`) as numbers, for the checks that compare them (a
//! claim may grow, never shrink) or need them well-formed. Read as f64: exact enough to order
//! sizes, and never printed back (objects keep the string the client sent).

/// apimachinery's message for a string that is not a quantity.
pub const QUANTITY_MSG: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

const SUFFIXES: &[(&str, f64)] = &[
    ("", 1.0),
    ("Ki", 1024.0),
    ("Mi", 1048576.0),
    ("Gi", 1073741824.0),
    ("Ti", 1099511627776.0),
    ("Pi", 1125899906842624.0),
    ("Ei", 1152921504606846976.0),
    ("n", 1e-9),
    ("u", 1e-6),
    ("m", 1e-3),
    ("k", 1e3),
    ("M", 1e6),
    ("G", 1e9),
    ("T", 1e12),
    ("P", 1e15),
    ("E", 1e18),
];

/// The value of a quantity string, or None when it is not one.
pub fn parse(s: &str) -> Option<f64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if !number.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    if let Some((_, scale)) = SUFFIXES.iter().find(|(name, _)| *name == suffix) {
        return Some(value * scale);
    }
    // Decimal exponent: `1e3`, `5E-2` (a bare `E` is the exa suffix above).
    let exponent: i32 = suffix
        .strip_prefix(['e', 'E'])
        .filter(|e| !e.is_empty())?
        .parse()
        .ok()?;
    Some(value * 10f64.powi(exponent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_by_suffix() {
        assert_eq!(parse("10Gi"), Some(10.0 * 1073741824.0));
        assert_eq!(parse("500m"), Some(0.5));
        assert_eq!(parse("1e3"), Some(1000.0));
        assert_eq!(parse("2E"), Some(2e18));
        assert_eq!(parse("1.5k"), Some(1500.0));
        assert!(parse("5Gi") < parse("10Gi"));
        assert_eq!(parse("Gi"), None);
        assert_eq!(parse("ten"), None);
        assert_eq!(parse("1Zi"), None);
    }
}
