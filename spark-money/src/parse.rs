//! Strict decimal parsing.

use rust_decimal::Decimal;

use crate::int::MAX_SCALE;
use crate::{MoneyError, ParseErrorKind};

/// Parses a plain decimal string: an optional `-`, digits, and optionally a
/// `.` followed by digits. Nothing else.
///
/// `rust_decimal`'s own `FromStr` accepts `1_000`, rounds away excess
/// fraction digits and (through `from_scientific`) exponents; a price that
/// arrives as `"1e3"` or `"101.3700000000000000000000000001"` must be refused,
/// not reinterpreted, so this parser is written by hand. It also does not
/// allocate and is faster than `Decimal::from_str`.
///
/// Trailing zeros are kept: `"1.20"` parses to a decimal with scale 2.
///
/// # Errors
///
/// [`MoneyError::Parse`] naming the input and a [`ParseErrorKind`].
///
/// # Examples
///
/// ```
/// use spark_money::parse_decimal;
///
/// assert_eq!(parse_decimal("101.30")?.to_string(), "101.30");
/// assert_eq!(parse_decimal("-0.5")?.to_string(), "-0.5");
/// for bad in ["", " 1", "1e5", "1_000", "1,5", "NaN", "inf", "+1", ".5", "5."] {
///     assert!(parse_decimal(bad).is_err(), "{bad:?}");
/// }
/// # Ok::<(), spark_money::MoneyError>(())
/// ```
pub fn parse_decimal(input: &str) -> Result<Decimal, MoneyError> {
    parse_inner(input.as_bytes()).map_err(|kind| MoneyError::Parse { input: input.chars().take(64).collect(), kind })
}

fn parse_inner(bytes: &[u8]) -> Result<Decimal, ParseErrorKind> {
    let (&first, _) = bytes.split_first().ok_or(ParseErrorKind::Empty)?;
    let last = bytes[bytes.len() - 1];
    if first.is_ascii_whitespace() || last.is_ascii_whitespace() {
        return Err(ParseErrorKind::Whitespace);
    }
    let (negative, digits) = match first {
        b'-' => (true, &bytes[1..]),
        b'+' => return Err(ParseErrorKind::PlusSign),
        _ => (false, bytes),
    };

    // Accumulate in a u64 while at most 19 digits have been seen (cannot
    // overflow), then in a u128; most inputs never leave the fast u64 path.
    let mut small: u64 = 0;
    let mut big: Option<u128> = None;
    let mut int_digits = 0usize;
    let mut frac_digits = 0u32;
    let mut seen_point = false;
    // Once the mantissa no longer fits, keep scanning so that a stray
    // character is still reported as such rather than as "out of range".
    let mut overflow = false;
    for &b in digits {
        match b {
            b'0'..=b'9' => {
                if seen_point {
                    frac_digits += 1;
                } else {
                    int_digits += 1;
                }
                let digit = b - b'0';
                match &mut big {
                    None if int_digits + (frac_digits as usize) <= 19 => small = small * 10 + u64::from(digit),
                    None => {
                        big = u128::from(small).checked_mul(10).and_then(|m| m.checked_add(u128::from(digit)));
                        overflow |= big.is_none();
                    }
                    Some(m) => match m.checked_mul(10).and_then(|m| m.checked_add(u128::from(digit))) {
                        Some(next) => *m = next,
                        None => overflow = true,
                    },
                }
            }
            b'.' if !seen_point => seen_point = true,
            _ => return Err(classify(b, digits)),
        }
    }
    let mantissa = big.unwrap_or(u128::from(small));
    if int_digits == 0 || (seen_point && frac_digits == 0) {
        return Err(ParseErrorKind::MissingDigits);
    }
    if frac_digits > MAX_SCALE {
        return Err(ParseErrorKind::TooManyFractionDigits);
    }
    if overflow {
        return Err(ParseErrorKind::OutOfRange);
    }
    let signed = i128::try_from(mantissa).map_err(|_| ParseErrorKind::OutOfRange)?;
    // "-0" is zero: never hand out a negative zero.
    let signed = if negative { -signed } else { signed };
    Decimal::try_from_i128_with_scale(signed, frac_digits).map_err(|_| ParseErrorKind::OutOfRange)
}

/// Explains an unexpected byte in terms of the mistake it most likely is.
fn classify(b: u8, digits: &[u8]) -> ParseErrorKind {
    let word = |w: &str| digits.eq_ignore_ascii_case(w.as_bytes());
    if word("nan") || word("inf") || word("infinity") {
        return ParseErrorKind::NotANumber;
    }
    match b {
        b'e' | b'E' => ParseErrorKind::Exponent,
        b'_' => ParseErrorKind::Underscore,
        b',' => ParseErrorKind::Comma,
        b'+' => ParseErrorKind::PlusSign,
        b'.' => ParseErrorKind::InvalidCharacter('.'),
        _ if b.is_ascii_whitespace() => ParseErrorKind::Whitespace,
        _ if b.is_ascii() => ParseErrorKind::InvalidCharacter(char::from(b)),
        // A non-ASCII byte: report the replacement character rather than
        // decoding a possibly partial UTF-8 sequence.
        _ => ParseErrorKind::InvalidCharacter(char::REPLACEMENT_CHARACTER),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(s: &str) -> ParseErrorKind {
        match parse_decimal(s) {
            Err(MoneyError::Parse { kind, .. }) => kind,
            other => panic!("{s:?} gave {other:?}"),
        }
    }

    #[test]
    fn accepts_plain_decimals_and_keeps_scale() {
        for (s, want) in [
            ("0", "0"),
            ("1.20", "1.20"),
            ("-2.5", "-2.5"),
            ("007.10", "7.10"),
            ("-0", "0"),
            ("79228162514264337593543950335", "79228162514264337593543950335"),
            ("0.0000000000000000000000000001", "0.0000000000000000000000000001"),
        ] {
            assert_eq!(parse_decimal(s).unwrap().to_string(), want, "{s}");
        }
        assert!(parse_decimal("-0").unwrap().is_sign_positive());
    }

    #[test]
    fn rejects_with_the_right_reason() {
        use ParseErrorKind::*;
        for (s, want) in [
            ("", Empty),
            (" 1", Whitespace),
            ("1 ", Whitespace),
            ("1\n", Whitespace),
            ("1 000", Whitespace),
            ("1e5", Exponent),
            ("1E-2", Exponent),
            ("1_000", Underscore),
            ("1,5", Comma),
            ("1,000.00", Comma),
            ("NaN", NotANumber),
            ("nan", NotANumber),
            ("-inf", NotANumber),
            ("Infinity", NotANumber),
            ("+1", PlusSign),
            ("1+", PlusSign),
            (".5", MissingDigits),
            ("5.", MissingDigits),
            ("-", MissingDigits),
            ("1.2.3", InvalidCharacter('.')),
            ("0x10", InvalidCharacter('x')),
            ("12$", InvalidCharacter('$')),
            ("١٢", InvalidCharacter(char::REPLACEMENT_CHARACTER)),
            ("0.00000000000000000000000000001", TooManyFractionDigits),
            ("79228162514264337593543950336", OutOfRange),
            ("999999999999999999999999999999999999999999", OutOfRange),
        ] {
            assert_eq!(kind(s), want, "{s:?}");
        }
    }

    #[test]
    fn error_message_names_input_and_reason() {
        let err = parse_decimal("1e5").unwrap_err();
        assert_eq!(err.to_string(), "invalid decimal \"1e5\": exponent notation is not allowed; write the digits out");
    }
}
