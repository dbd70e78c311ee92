//! Kubernetes resource quantities (`100m`, `1.5Gi`, `2e3`, `64Mi`): exact
//! parsing, arithmetic and the canonical string form, as
//! `k8s.io/apimachinery/pkg/api/resource` does them.
//!
//! A quantity is held as a whole number of nano-units in an `i128` (values
//! below a nano-unit round up, as Kubernetes rounds them), plus the format
//! it was written in, which decides how it prints: `BinarySI` (`Ki`, `Mi`,
//! …), `DecimalSI` (`m`, `k`, `M`, …) or `DecimalExponent` (`e3`).

use std::cmp::Ordering;
use std::fmt;

/// Nano-units per unit.
const NANO: i128 = 1_000_000_000;

/// How a quantity prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Powers of 1024: `Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`.
    BinarySi,
    /// Powers of 1000: `n`, `u`, `m`, ``, `k`, `M`, `G`, `T`, `P`, `E`.
    DecimalSi,
    /// `1e3`, `5E-3`.
    DecimalExponent,
}

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not of the form `<signed number><suffix>`.
    #[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")]
    Format,
    /// Too large to be held exactly.
    #[error("quantity is too large")]
    Overflow,
}

/// A resource quantity.
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    /// The value in nano-units.
    nanos: i128,
    /// How it prints.
    format: Format,
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

/// Decimal SI suffixes by power of ten.
const DECIMAL: &[(&str, i32)] = &[
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("", 0),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];

/// Binary SI suffixes by power of 1024.
const BINARY: &[(&str, u32)] = &[
    ("Ki", 1),
    ("Mi", 2),
    ("Gi", 3),
    ("Ti", 4),
    ("Pi", 5),
    ("Ei", 6),
];

fn pow10(e: u32) -> Result<i128, QuantityError> {
    10i128.checked_pow(e).ok_or(QuantityError::Overflow)
}

/// `n / d`, rounded up (towards +infinity), for `d > 0`.
fn div_ceil(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d != 0 && n > 0 {
        q + 1
    } else {
        q
    }
}

impl Quantity {
    /// Zero, in decimal form.
    pub const ZERO: Quantity = Quantity {
        nanos: 0,
        format: Format::DecimalSi,
    };

    /// A whole number of units (object counts).
    pub fn from_units(n: i64) -> Quantity {
        Quantity {
            nanos: i128::from(n) * NANO,
            format: Format::DecimalSi,
        }
    }

    /// Parses a quantity string.
    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        let s = s.trim();
        let (negative, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(num_end);
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) => (i, f),
            None => (number, ""),
        };
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return Err(QuantityError::Format);
        }
        // The mantissa as an integer, and how many of its digits are fractional.
        let mut mantissa: i128 = 0;
        for c in int_part.bytes().chain(frac_part.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i128::from(c - b'0')))
                .ok_or(QuantityError::Overflow)?;
        }
        let frac = i32::try_from(frac_part.len()).map_err(|_| QuantityError::Overflow)?;
        let (nanos, format) = if let Some(&(_, k)) = BINARY.iter().find(|(s, _)| *s == suffix) {
            let mult = 1024i128.checked_pow(k).ok_or(QuantityError::Overflow)?;
            let n = mantissa
                .checked_mul(mult)
                .and_then(|n| n.checked_mul(NANO))
                .ok_or(QuantityError::Overflow)?;
            (div_ceil(n, pow10(frac.unsigned_abs())?), Format::BinarySi)
        } else {
            let (exp, format) = if let Some(&(_, e)) = DECIMAL.iter().find(|(s, _)| *s == suffix) {
                (e, Format::DecimalSi)
            } else if let Some(e) = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))
            {
                let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(QuantityError::Format);
                }
                let e: i32 = e.parse().map_err(|_| QuantityError::Overflow)?;
                (e, Format::DecimalExponent)
            } else {
                return Err(QuantityError::Format);
            };
            let shift = exp
                .checked_add(9)
                .and_then(|x| x.checked_sub(frac))
                .ok_or(QuantityError::Overflow)?;
            let n = if shift >= 0 {
                mantissa
                    .checked_mul(pow10(shift.unsigned_abs())?)
                    .ok_or(QuantityError::Overflow)?
            } else if mantissa == 0 {
                0
            } else {
                match pow10(shift.unsigned_abs()) {
                    Ok(d) => div_ceil(mantissa, d),
                    // Smaller than a nano-unit: rounds up to one.
                    Err(_) => 1,
                }
            };
            (n, format)
        };
        Ok(Quantity {
            nanos: if negative { -nanos } else { nanos },
            format,
        })
    }

    /// The format it prints in.
    pub fn format(&self) -> Format {
        self.format
    }

    /// `self + other`, in `self`'s format (`other`'s if `self` is zero, as
    /// Kubernetes does, so sums started from zero print like their parts).
    pub fn checked_add(self, other: Quantity) -> Result<Quantity, QuantityError> {
        Ok(Quantity {
            nanos: self
                .nanos
                .checked_add(other.nanos)
                .ok_or(QuantityError::Overflow)?,
            format: if self.nanos == 0 {
                other.format
            } else {
                self.format
            },
        })
    }

    /// `self - other` (in `self`'s format).
    pub fn checked_sub(self, other: Quantity) -> Result<Quantity, QuantityError> {
        Ok(Quantity {
            nanos: self
                .nanos
                .checked_sub(other.nanos)
                .ok_or(QuantityError::Overflow)?,
            format: self.format,
        })
    }

    /// True for zero.
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// The value in thousandths of a unit, rounded up (`MilliValue`).
    pub fn milli_value(&self) -> i128 {
        div_ceil(self.nanos, 1_000_000)
    }

    /// The value in units, rounded up (`Value`).
    pub fn value(&self) -> i128 {
        div_ceil(self.nanos, NANO)
    }

    /// The value as a float (ratios).
    pub fn as_f64(&self) -> f64 {
        self.nanos as f64 / NANO as f64
    }

    /// The largest power of ten, a multiple of three from -9 to 18, that
    /// divides the value: (mantissa, exponent).
    fn decimal_parts(&self) -> (i128, i32) {
        let mut exp = 18;
        while exp > -9 {
            let d = 10i128.pow((exp + 9) as u32);
            if self.nanos % d == 0 {
                return (self.nanos / d, exp);
            }
            exp -= 3;
        }
        (self.nanos, -9)
    }
}

impl fmt::Display for Quantity {
    /// The canonical form Kubernetes prints (`Quantity.String()`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        if self.format == Format::BinarySi && self.nanos % NANO == 0 {
            let units = self.nanos / NANO;
            if units.abs() >= 1024 {
                let mut k = 0;
                let mut m = units;
                while k < BINARY.len() && m % 1024 == 0 {
                    m /= 1024;
                    k += 1;
                }
                if k > 0 {
                    return write!(f, "{m}{}", BINARY[k - 1].0);
                }
            }
        }
        let (mantissa, exp) = self.decimal_parts();
        if self.format == Format::DecimalExponent {
            return if exp == 0 {
                write!(f, "{mantissa}")
            } else {
                write!(f, "{mantissa}e{exp}")
            };
        }
        let suffix = DECIMAL
            .iter()
            .find(|(_, e)| *e == exp)
            .map(|(s, _)| *s)
            .unwrap_or("");
        write!(f, "{mantissa}{suffix}")
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

/// Parses a JSON quantity (a string, or a number as some clients send).
pub fn from_json(v: &serde_json::Value) -> Result<Quantity, QuantityError> {
    match v {
        serde_json::Value::String(s) => Quantity::parse(s),
        serde_json::Value::Number(n) => Quantity::parse(&n.to_string()),
        _ => Err(QuantityError::Format),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_suffix() {
        // (input, value in nano-units)
        let cases: &[(&str, i128)] = &[
            ("0", 0),
            ("1", NANO),
            ("100m", 100_000_000),
            ("0.1", 100_000_000),
            (".5", 500_000_000),
            ("5.", 5 * NANO),
            ("1k", 1000 * NANO),
            ("1M", 1_000_000 * NANO),
            ("2G", 2_000_000_000 * NANO),
            ("1Ki", 1024 * NANO),
            ("64Mi", 64 * 1024 * 1024 * NANO),
            ("1.5Gi", 1536 * 1024 * 1024 * NANO),
            ("1Ei", 1_152_921_504_606_846_976 * NANO),
            ("3n", 3),
            ("7u", 7000),
            ("1e3", 1000 * NANO),
            ("1E-3", 1_000_000),
            ("12e+2", 1200 * NANO),
            ("-2", -2 * NANO),
            ("+2", 2 * NANO),
            ("0.1n", 1),
            ("1e-12", 1),
        ];
        for (s, n) in cases {
            assert_eq!(q(s).nanos, *n, "{s}");
        }
    }

    #[test]
    fn rejects_bad_strings() {
        for s in [
            "", "m", "1.2.3", "1x", "1Kb", "1e", "1e+", "--1", "1 Mi", ".",
        ] {
            assert!(Quantity::parse(s).is_err(), "{s:?} parsed");
        }
        assert_eq!(Quantity::parse("1e40"), Err(QuantityError::Overflow));
    }

    #[test]
    fn prints_canonically() {
        let cases: &[(&str, &str)] = &[
            ("100m", "100m"),
            ("1000m", "1"),
            ("1500m", "1500m"),
            ("1.5", "1500m"),
            ("1000", "1k"),
            ("1500", "1500"),
            ("64Mi", "64Mi"),
            ("2048Mi", "2Gi"),
            ("1536Mi", "1536Mi"),
            ("1.5Gi", "1536Mi"),
            ("512Ki", "512Ki"),
            ("0.5Ki", "512"),
            ("1e3", "1e3"),
            ("0", "0"),
            ("-100m", "-100m"),
        ];
        for (s, want) in cases {
            assert_eq!(q(s).to_string(), *want, "{s}");
        }
    }

    #[test]
    fn arithmetic_keeps_the_first_format() {
        let sum = q("64Mi").checked_add(q("64Mi")).expect("add");
        assert_eq!(sum.to_string(), "128Mi");
        let sum = q("250m").checked_add(q("750m")).expect("add");
        assert_eq!(sum.to_string(), "1");
        assert_eq!(
            q("1").checked_sub(q("250m")).expect("sub").to_string(),
            "750m"
        );
        assert!(q("1Gi") > q("1G"));
        assert_eq!(q("1000m"), q("1"));
        assert_eq!(q("1.5").milli_value(), 1500);
        assert_eq!(q("1m").value(), 1);
        assert_eq!(Quantity::from_units(3).to_string(), "3");
        let from_zero = Quantity::ZERO.checked_add(q("256Mi")).expect("add");
        assert_eq!(
            from_zero.checked_add(q("256Mi")).expect("add").to_string(),
            "512Mi"
        );
    }
}
