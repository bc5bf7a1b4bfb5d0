//! Exact integer arithmetic on decimal mantissas.
//!
//! Alignment to a tick or lot step is a division with remainder on the
//! mantissas of two decimals brought to one scale. Doing it on `u128` instead
//! of `Decimal` division keeps it exact (no 28-digit quotient to re-round),
//! allocation-free, and about as cheap as a single `round_dp_with_strategy`.

use rust_decimal::Decimal;

use crate::Rounding;

/// The most decimal places a `Decimal` carries.
pub(crate) const MAX_SCALE: u32 = 28;

/// `10^n` for `n` in `0..=38`, the powers that fit in a `u128`.
const POW10: [u128; 39] = {
    let mut table = [1u128; 39];
    let mut i = 1;
    while i < 39 {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

#[inline]
pub(crate) fn pow10(n: u32) -> Option<u128> {
    POW10.get(n as usize).copied()
}

/// Magnitude of the mantissa and the scale of a decimal.
#[inline]
pub(crate) fn parts(d: Decimal) -> (u128, u32) {
    (d.mantissa().unsigned_abs(), d.scale())
}

/// Brings two (mantissa, scale) pairs to their common (larger) scale.
/// `None` when a mantissa would not fit in a `u128`.
#[inline]
pub(crate) fn to_common_scale(a: (u128, u32), b: (u128, u32)) -> Option<(u128, u128, u32)> {
    let scale = a.1.max(b.1);
    let a_m = a.0.checked_mul(pow10(scale - a.1)?)?;
    let b_m = b.0.checked_mul(pow10(scale - b.1)?)?;
    Some((a_m, b_m, scale))
}

/// Builds a decimal from a magnitude, a sign and a scale; `None` if the
/// magnitude does not fit the 96-bit mantissa.
#[inline]
pub(crate) fn decimal(magnitude: u128, negative: bool, scale: u32) -> Option<Decimal> {
    let signed = i128::try_from(magnitude).ok()?;
    let signed = if negative { -signed } else { signed };
    Decimal::try_from_i128_with_scale(signed, scale).ok()
}

/// `(n / d, n % d)`, on `u64` when both fit: a `u128` division is a library
/// call several times slower than the hardware's 64-bit divide, and prices
/// and quantities nearly always fit.
#[inline]
pub(crate) fn div_rem(n: u128, d: u128) -> (u128, u128) {
    match (u64::try_from(n), u64::try_from(d)) {
        (Ok(n), Ok(d)) => (u128::from(n / d), u128::from(n % d)),
        _ => (n / d, n % d),
    }
}

/// Divides `n` by `d` (both magnitudes; `negative` is the sign of the true
/// quotient) and rounds the quotient's magnitude with `mode`.
///
/// Returns the rounded magnitude and whether the division was exact.
pub(crate) fn div_round(n: u128, d: u128, negative: bool, mode: Rounding) -> (u128, bool) {
    debug_assert!(d > 0);
    let (q, r) = div_rem(n, d);
    if r == 0 {
        return (q, true);
    }
    // `r` against `d - r` instead of `2 * r` against `d`: no overflow for any d.
    let half = r.cmp(&(d - r));
    let away = match mode {
        Rounding::Down => false,
        Rounding::Up => true,
        Rounding::Floor => negative,
        Rounding::Ceiling => !negative,
        Rounding::HalfUp => half.is_ge(),
        Rounding::HalfDown => half.is_gt(),
        Rounding::HalfEven => half.is_gt() || (half.is_eq() && q % 2 == 1),
    };
    (if away { q + 1 } else { q }, false)
}

/// Rounds an exact value `mantissa * 10^-scale` (any scale, even above 28) to
/// `dp` decimal places. `None` on overflow. A zero result is never negative.
#[inline]
pub(crate) fn round_parts(magnitude: u128, negative: bool, scale: u32, dp: u32, mode: Rounding) -> Option<Decimal> {
    if scale <= dp {
        let m = magnitude.checked_mul(pow10(dp - scale)?)?;
        return decimal(m, negative && m != 0, dp);
    }
    let q = match pow10(scale - dp) {
        Some(divisor) => div_round(magnitude, divisor, negative, mode).0,
        // The divisor exceeds every u128, so the quotient is 0 and the
        // remainder, the whole magnitude, is less than half of the divisor:
        // only the directed modes move away from zero.
        None => {
            let away = match mode {
                Rounding::Up => true,
                Rounding::Floor => negative,
                Rounding::Ceiling => !negative,
                _ => false,
            };
            u128::from(magnitude != 0 && away)
        }
    };
    decimal(q, negative && q != 0, dp)
}

/// The exact product of two decimals rounded to `dp` places with `mode`: one
/// rounding only, however many digits the exact product has. `None` if the
/// product's mantissa exceeds a `u128` or the result exceeds a `Decimal`.
pub(crate) fn mul_round(a: Decimal, b: Decimal, dp: u32, mode: Rounding) -> Option<Decimal> {
    let (am, asc) = parts(a);
    let (bm, bsc) = parts(b);
    let negative = a.is_sign_negative() != b.is_sign_negative();
    round_parts(am.checked_mul(bm)?, negative, asc + bsc, dp, mode)
}

/// The exact product of two decimals, or `None` if it cannot be represented
/// exactly (more than 28 places or a mantissa above 96 bits).
pub(crate) fn mul_exact(a: Decimal, b: Decimal) -> Option<Decimal> {
    let (am, asc) = parts(a);
    let (bm, bsc) = parts(b);
    let scale = asc + bsc;
    if scale > MAX_SCALE {
        // Trailing zeros may still make it representable.
        let exact = mul_round(a, b, MAX_SCALE, Rounding::Down)?;
        return (mul_round(a, b, MAX_SCALE, Rounding::Up)? == exact).then_some(exact);
    }
    let negative = a.is_sign_negative() != b.is_sign_negative();
    decimal(am.checked_mul(bm)?, negative, scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn div_round_modes_on_ties_and_non_ties() {
        // 25 / 10 = 2.5
        assert_eq!(div_round(25, 10, false, Rounding::HalfEven).0, 2);
        assert_eq!(div_round(35, 10, false, Rounding::HalfEven).0, 4);
        assert_eq!(div_round(25, 10, false, Rounding::HalfUp).0, 3);
        assert_eq!(div_round(25, 10, false, Rounding::HalfDown).0, 2);
        assert_eq!(div_round(26, 10, false, Rounding::HalfDown).0, 3);
        assert_eq!(div_round(21, 10, true, Rounding::Floor).0, 3);
        assert_eq!(div_round(21, 10, true, Rounding::Ceiling).0, 2);
        assert_eq!(div_round(21, 10, false, Rounding::Up).0, 3);
        assert_eq!(div_round(29, 10, false, Rounding::Down).0, 2);
        assert_eq!(div_round(20, 10, false, Rounding::Up), (2, true));
        assert_eq!(div_round(u128::MAX, u128::MAX - 1, false, Rounding::HalfEven).0, 1);
    }

    #[test]
    fn mul_round_is_one_rounding() {
        // 1.005 * 1 at 2 dp is a true tie: half-even keeps 1.00.
        let a = Decimal::new(1005, 3);
        assert_eq!(mul_round(a, Decimal::ONE, 2, Rounding::HalfEven), Some(Decimal::new(100, 2)));
        // A product with 30 places is rounded once, from the exact digits.
        let f = Decimal::from_i128_with_scale(5_000_000_000_000_000_000_000_000_001, 28);
        assert_eq!(mul_round(Decimal::new(1, 2), f, 2, Rounding::HalfEven), Some(Decimal::new(1, 2)));
    }

    #[test]
    fn round_parts_beyond_u128_divisor() {
        let d = round_parts(7, false, 60, 2, Rounding::Up).unwrap();
        assert_eq!(d, Decimal::new(1, 2));
        let d = round_parts(7, false, 60, 2, Rounding::HalfEven).unwrap();
        assert!(d.is_zero());
    }
}
