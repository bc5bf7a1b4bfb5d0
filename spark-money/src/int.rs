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

/// `(mantissa, scale)` with the trailing zeros of the mantissa stripped:
/// `100.00` becomes `(100, 0)`. The value is unchanged; only the arithmetic
/// that follows has smaller numbers to overflow on. Zero is `(0, 0)`.
#[inline]
pub(crate) fn strip(mut m: u128, mut s: u32) -> (u128, u32) {
    if m == 0 {
        return (0, 0);
    }
    while s > 0 {
        let (q, r) = div_rem(m, 10);
        if r != 0 {
            break;
        }
        m = q;
        s -= 1;
    }
    (m, s)
}

/// [`parts`] without trailing zeros.
#[inline]
pub(crate) fn stripped_parts(d: Decimal) -> (u128, u32) {
    let (m, s) = parts(d);
    strip(m, s)
}

/// The exact product of two decimals rounded to `dp` places with `mode`: one
/// rounding only, however many digits the exact product has. `None` if the
/// product's mantissa exceeds a `u128` even without trailing zeros, or the
/// result exceeds a `Decimal`.
pub(crate) fn mul_round(a: Decimal, b: Decimal, dp: u32, mode: Rounding) -> Option<Decimal> {
    let negative = a.is_sign_negative() != b.is_sign_negative();
    let ((am, asc), (bm, bsc)) = (parts(a), parts(b));
    // Trailing zeros only matter when the product of the raw mantissas
    // overflows, so they are stripped only then: the everyday case pays
    // nothing, and `100.000…0` (any number of zeros) gives the same result
    // as `100`.
    let (product, scale) = match am.checked_mul(bm) {
        Some(p) => (p, asc + bsc),
        None => {
            let ((am, asc), (bm, bsc)) = (strip(am, asc), strip(bm, bsc));
            (am.checked_mul(bm)?, asc + bsc)
        }
    };
    round_parts(product, negative, scale, dp, mode)
}

/// The exact product of two decimals, or `None` if it cannot be represented
/// exactly (more than 28 places or a mantissa above 96 bits once its
/// trailing zeros are gone).
pub(crate) fn mul_exact(a: Decimal, b: Decimal) -> Option<Decimal> {
    let negative = a.is_sign_negative() != b.is_sign_negative();
    let ((am, asc), (bm, bsc)) = (parts(a), parts(b));
    // The everyday case keeps the natural scale (`101.30 * 10` is
    // `1013.00`).
    if asc + bsc <= MAX_SCALE
        && let Some(d) = am.checked_mul(bm).and_then(|p| decimal(p, negative && p != 0, asc + bsc))
    {
        return Some(d);
    }
    // Otherwise the product may still be representable once its trailing
    // zeros are gone: compute it in full width and strip them.
    let mut product = Wide::from_u128(am).mul_u128(bm)?;
    let mut scale = asc + bsc;
    while scale > 0 {
        let (q, r) = product.div_rem_u64(10);
        if r != 0 {
            break;
        }
        product = q;
        scale -= 1;
    }
    if product.is_zero() {
        return Some(Decimal::ZERO);
    }
    if scale > MAX_SCALE {
        return None;
    }
    decimal(product.to_u128()?, negative, scale)
}

/// Whether `a * b >= min` for non-negative decimals, compared exactly: no
/// product is rounded, whatever its number of digits.
pub(crate) fn product_at_least(a: Decimal, b: Decimal, min: Decimal) -> bool {
    let ((am, asc), (bm, bsc), (nm, ns)) = (parts(a), parts(b), parts(min));
    // a * b >= min  <=>  am * bm * 10^(c - s) >= nm * 10^(c - ns), with s the
    // product's scale and c the larger of the two scales.
    let s = asc + bsc;
    let c = s.max(ns);
    let narrow = || -> Option<bool> {
        let lhs = am.checked_mul(bm)?.checked_mul(pow10(c - s)?)?;
        let rhs = nm.checked_mul(pow10(c - ns)?)?;
        Some(lhs >= rhs)
    };
    if let Some(met) = narrow() {
        return met;
    }
    // Mantissas below 2^96 and scales up to 28 keep both sides below 2^286,
    // so five 64-bit limbs always hold them.
    let lhs = Wide::from_u128(am).mul_u128(bm).and_then(|w| w.mul_pow10(c - s));
    let rhs = Wide::from_u128(nm).mul_pow10(c - ns);
    match (lhs, rhs) {
        (Some(lhs), Some(rhs)) => lhs >= rhs,
        // Unreachable for `Decimal` inputs (see above).
        _ => false,
    }
}

/// An unsigned integer of 320 bits, little-endian 64-bit limbs: wide enough
/// for the exact product of two decimal mantissas times a power of ten up
/// to `10^28`. Only the few operations exact comparison and stripping need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wide([u64; 5]);

impl Wide {
    #[allow(clippy::cast_possible_truncation, reason = "each half is masked or shifted to 64 bits first")]
    fn from_u128(v: u128) -> Wide {
        Wide([v as u64, (v >> 64) as u64, 0, 0, 0])
    }

    fn is_zero(&self) -> bool {
        self.0.iter().all(|l| *l == 0)
    }

    fn to_u128(self) -> Option<u128> {
        if self.0[2..].iter().any(|l| *l != 0) {
            return None;
        }
        Some(u128::from(self.0[0]) | (u128::from(self.0[1]) << 64))
    }

    /// `self * k`, `None` on overflow.
    #[allow(clippy::cast_possible_truncation, reason = "the low 64 bits of each partial product are the limb")]
    fn mul_u64(self, k: u64) -> Option<Wide> {
        let mut out = [0u64; 5];
        let mut carry = 0u128;
        for (o, l) in out.iter_mut().zip(self.0) {
            let t = u128::from(l) * u128::from(k) + carry;
            *o = t as u64;
            carry = t >> 64;
        }
        (carry == 0).then_some(Wide(out))
    }

    /// `self * k`, `None` on overflow.
    #[allow(clippy::cast_possible_truncation, reason = "each half is masked or shifted to 64 bits first")]
    fn mul_u128(self, k: u128) -> Option<Wide> {
        let low = self.mul_u64(k as u64)?;
        let high = self.mul_u64((k >> 64) as u64)?;
        if high.0[4] != 0 {
            return None;
        }
        // low + (high << 64)
        let shifted = [0, high.0[0], high.0[1], high.0[2], high.0[3]];
        let mut out = [0u64; 5];
        let mut carry = false;
        for ((o, a), b) in out.iter_mut().zip(low.0).zip(shifted) {
            let (s1, c1) = a.overflowing_add(b);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            *o = s2;
            carry = c1 || c2;
        }
        (!carry).then_some(Wide(out))
    }

    /// `self * 10^n`, `None` on overflow.
    fn mul_pow10(mut self, mut n: u32) -> Option<Wide> {
        const STEP: u32 = 19; // 10^19 is the largest power of ten in a u64
        while n > 0 {
            let k = n.min(STEP);
            self = self.mul_u64(u64::try_from(pow10(k)?).ok()?)?;
            n -= k;
        }
        Some(self)
    }

    /// `(self / k, self % k)` for `k > 0`.
    #[allow(clippy::cast_possible_truncation, reason = "a quotient digit and a remainder below k fit 64 bits")]
    fn div_rem_u64(self, k: u64) -> (Wide, u64) {
        let mut out = [0u64; 5];
        let mut rem = 0u128;
        for (o, l) in out.iter_mut().zip(self.0).rev() {
            let cur = (rem << 64) | u128::from(l);
            *o = (cur / u128::from(k)) as u64;
            rem = cur % u128::from(k);
        }
        (Wide(out), rem as u64)
    }
}

impl PartialOrd for Wide {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Wide {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Most significant limb first.
        self.0.iter().rev().cmp(other.0.iter().rev())
    }
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
    fn wide_arithmetic_matches_u128_where_both_fit() {
        let w = Wide::from_u128(123_456_789_012_345_678_901_234_567).mul_u128(1_000).unwrap();
        assert_eq!(w.to_u128(), Some(123_456_789_012_345_678_901_234_567_000));
        let (q, r) = w.div_rem_u64(7);
        assert_eq!((q.to_u128(), r), (Some(123_456_789_012_345_678_901_234_567_000 / 7), 6));
        let big = Wide::from_u128(u128::MAX).mul_u128(u128::MAX).unwrap();
        assert!(big > Wide::from_u128(u128::MAX));
        assert_eq!(big.to_u128(), None);
        assert_eq!(Wide::from_u128(1).mul_pow10(38).unwrap().to_u128(), pow10(38));
        assert!(Wide::from_u128(1).mul_pow10(97).is_none());
    }

    #[test]
    fn strip_removes_trailing_zeros_only() {
        assert_eq!(strip(10_000, 2), (100, 0));
        assert_eq!(strip(10_130, 2), (1_013, 1));
        assert_eq!(strip(0, 9), (0, 0));
        assert_eq!(strip(500, 0), (500, 0));
    }

    #[test]
    fn round_parts_beyond_u128_divisor() {
        let d = round_parts(7, false, 60, 2, Rounding::Up).unwrap();
        assert_eq!(d, Decimal::new(1, 2));
        let d = round_parts(7, false, 60, 2, Rounding::HalfEven).unwrap();
        assert!(d.is_zero());
    }
}
