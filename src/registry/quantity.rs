//! Resource quantities (`10Gi`, `500m`, `1e3`) as numbers, for the checks that compare them (a
//! claim may grow, never shrink) or need them well-formed. Read as f64: exact enough to order
//! sizes. Sums that are printed back (ResourceQuota usage, admission messages) are kept in
//! integer thousandths (`millis`) and printed in kube's canonical form (`format_millis`).

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

/// Binary suffixes, largest first, for canonical printing.
const BINARY: &[(&str, i128)] = &[
    ("Ei", 1 << 60),
    ("Pi", 1 << 50),
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
];
/// Decimal suffixes, largest first.
const DECIMAL: &[(&str, i128)] = &[
    ("E", 1_000_000_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("T", 1_000_000_000_000),
    ("G", 1_000_000_000),
    ("M", 1_000_000),
    ("k", 1_000),
];

/// A quantity in thousandths of its unit (`500m` = 500, `1Ki` = 1,024,000), or None when it is
/// not a quantity. Exact for everything below about 9 TB (f64's 53-bit mantissa).
pub fn millis(s: &str) -> Option<i128> {
    parse(s).map(|v| (v * 1000.0).round() as i128)
}

/// Whether a quantity string is written with a binary suffix (`Mi`, `Gi`...): sums of it are
/// printed the same way, as apimachinery keeps the format of the first operand.
pub fn is_binary(s: &str) -> bool {
    BINARY.iter().any(|(suffix, _)| s.ends_with(suffix))
}

/// kube's canonical string for an amount in thousandths: milli units when fractional
/// (`1500m`), else the largest suffix that divides it exactly (`1536Mi`, `2k`, `3`).
pub fn format_millis(millis: i128, binary: bool) -> String {
    if millis % 1000 != 0 {
        return format!("{millis}m");
    }
    let whole = millis / 1000;
    if whole == 0 {
        return "0".into();
    }
    let suffixes = if binary { BINARY } else { DECIMAL };
    for (suffix, scale) in suffixes {
        if whole % scale == 0 {
            return format!("{}{suffix}", whole / scale);
        }
    }
    whole.to_string()
}

/// The canonical form of a quantity string (`0.5` -> `500m`, `1024Mi` -> `1Gi`); unparsable
/// input comes back as it was.
pub fn canonical(s: &str) -> String {
    match millis(s) {
        Some(m) => format_millis(m, is_binary(s)),
        None => s.to_string(),
    }
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

    #[test]
    fn canonical_forms_match_apimachinery() {
        assert_eq!(canonical("0.5"), "500m");
        assert_eq!(canonical("1500m"), "1500m");
        assert_eq!(canonical("1000m"), "1");
        assert_eq!(canonical("1024Mi"), "1Gi");
        assert_eq!(canonical("1536Mi"), "1536Mi");
        assert_eq!(canonical("2000"), "2k");
        assert_eq!(canonical("1500"), "1500");
        assert_eq!(canonical("0"), "0");
        assert_eq!(format_millis(3000, false), "3");
        assert_eq!(format_millis(512 * 1024 * 1000, true), "512Ki");
    }
}
