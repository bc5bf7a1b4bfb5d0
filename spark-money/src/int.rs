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
    (if rounds_away(mode, negative, half, q % 2 == 1) { q + 1 } else { q }, false)
}

/// Whether an inexact quotient `q` moves away from zero under `mode`, given
/// how the dropped remainder compares with half of the divisor.
fn rounds_away(mode: Rounding, negative: bool, half: std::cmp::Ordering, q_odd: bool) -> bool {
    match mode {
        Rounding::Down => false,
        Rounding::Up => true,
        Rounding::Floor => negative,
        Rounding::Ceiling => !negative,
        Rounding::HalfUp => half.is_ge(),
        Rounding::HalfDown => half.is_gt(),
        Rounding::HalfEven => half.is_gt() || (half.is_eq() && q_odd),
    }
}

/// [`round_parts`] for an exact magnitude wider than a `u128` (a product of
/// two 96-bit mantissas): the digits below `dp` are divided off 19 at a
/// time, remembering whether any was non-zero, and the last one decides the
/// rounding. `None` if the result exceeds a `Decimal`.
fn round_wide(w: Wide, negative: bool, scale: u32, dp: u32, mode: Rounding) -> Option<Decimal> {
    if scale <= dp {
        let m = w.mul_pow10(dp - scale)?.to_u128()?;
        return decimal(m, negative && m != 0, dp);
    }
    let mut q = w;
    let mut sticky = false;
    let mut n = scale - dp - 1;
    while n > 0 {
        let k = n.min(19);
        let (next, r) = q.div_rem_u64(u64::try_from(pow10(k)?).ok()?);
        sticky |= r != 0;
        q = next;
        n -= k;
    }
    let (q, digit) = q.div_rem_u64(10);
    let q = q.to_u128()?;
    if digit == 0 && !sticky {
        return decimal(q, negative && q != 0, dp);
    }
    let half = digit.cmp(&5).then(if sticky { std::cmp::Ordering::Greater } else { std::cmp::Ordering::Equal });
    let q = if rounds_away(mode, negative, half, q % 2 == 1) { q.checked_add(1)? } else { q };
    decimal(q, negative && q != 0, dp)
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
/// rounding only, however many digits the exact product has. `None` only if
/// the result exceeds a `Decimal`.
pub(crate) fn mul_round(a: Decimal, b: Decimal, dp: u32, mode: Rounding) -> Option<Decimal> {
    let negative = a.is_sign_negative() != b.is_sign_negative();
    let ((am, asc), (bm, bsc)) = (parts(a), parts(b));
    // The everyday product fits a u128. One that does not (two long
    // mantissas, e.g. 20 digits of money times a 28-place factor) is still
    // exact in 384 bits and rounds from there: refusing it would refuse a
    // result that fits, and `100.000…0` must round like `100`.
    match am.checked_mul(bm) {
        Some(p) => round_parts(p, negative, asc + bsc, dp, mode),
        None => round_wide(Wide::from_u128(am).mul_u128(bm)?, negative, asc + bsc, dp, mode),
    }
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
    // so the 64-bit limbs of `Wide` always hold them.
    let lhs = Wide::from_u128(am).mul_u128(bm).and_then(|w| w.mul_pow10(c - s));
    let rhs = Wide::from_u128(nm).mul_pow10(c - ns);
    match (lhs, rhs) {
        (Some(lhs), Some(rhs)) => lhs >= rhs,
        // Unreachable for `Decimal` inputs (see above).
        _ => false,
    }
}

/// An unsigned integer of 384 bits, little-endian 64-bit limbs: wide enough
/// for the exact product of two decimal mantissas times a power of ten up
/// to `10^56` (below `2^379`, the largest numerator of [`mul_div_wide`]). Only the few operations exact comparison and stripping need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wide([u64; LIMBS]);

/// The limbs of a [`Wide`].
const LIMBS: usize = 6;

impl Wide {
    #[allow(clippy::cast_possible_truncation, reason = "each half is masked or shifted to 64 bits first")]
    fn from_u128(v: u128) -> Wide {
        let mut limbs = [0; LIMBS];
        limbs[0] = v as u64;
        limbs[1] = (v >> 64) as u64;
        Wide(limbs)
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
        let mut out = [0u64; LIMBS];
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
        if high.0[LIMBS - 1] != 0 {
            return None;
        }
        // low + (high << 64)
        let mut shifted = [0u64; LIMBS];
        shifted[1..].copy_from_slice(&high.0[..LIMBS - 1]);
        let mut out = [0u64; LIMBS];
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
        let mut out = [0u64; LIMBS];
        let mut rem = 0u128;
        for (o, l) in out.iter_mut().zip(self.0).rev() {
            let cur = (rem << 64) | u128::from(l);
            *o = (cur / u128::from(k)) as u64;
            rem = cur % u128::from(k);
        }
        (Wide(out), rem as u64)
    }
}

impl Wide {
    /// `self - other` modulo `2^384` (exact for `self >= other`).
    fn sub(self, other: Wide) -> Wide {
        let mut out = [0u64; LIMBS];
        let mut borrow = false;
        for ((o, a), b) in out.iter_mut().zip(self.0).zip(other.0) {
            let (d1, b1) = a.overflowing_sub(b);
            let (d2, b2) = d1.overflowing_sub(u64::from(borrow));
            *o = d2;
            borrow = b1 || b2;
        }
        // Wrapping: `div_rem` may subtract from a value whose top bit was
        // shifted out, where the true difference still fits.
        Wide(out)
    }

    /// `(self / d, self % d)` for `d > 0`, by binary long division: slow
    /// (a few hundred shifts and subtractions) but only the rare operands
    /// whose terms exceed a `u128` come here.
    fn div_rem(self, d: Wide) -> (Wide, Wide) {
        let mut q = [0u64; LIMBS];
        let mut r = Wide([0; LIMBS]);
        for i in (0..LIMBS * 64).rev() {
            // r = r << 1 | bit i of self; r < d <= 2^384 - 1 keeps it in range
            // only while d's top bit is clear, so a carry out means r >= d.
            let top = r.0[LIMBS - 1] >> 63;
            for k in (1..LIMBS).rev() {
                r.0[k] = (r.0[k] << 1) | (r.0[k - 1] >> 63);
            }
            r.0[0] = (r.0[0] << 1) | ((self.0[i / 64] >> (i % 64)) & 1);
            if top == 1 || r >= d {
                r = r.sub(d);
                q[i / 64] |= 1 << (i % 64);
            }
        }
        (Wide(q), r)
    }
}

/// `a * b / c` rounded to `dp` places, for terms that overflow a `u128`:
/// the numerator `am * bm * 10^up` and denominator `cm * 10^down` (with the
/// common power of ten cancelled, so `up, down <= 56`) are exact in a
/// [`Wide`]. `None` if the result exceeds a `Decimal`.
pub(crate) fn mul_div_wide(
    a: (u128, u32),
    b: (u128, u32),
    c: (u128, u32),
    dp: u32,
    negative: bool,
    mode: Rounding,
) -> Option<Decimal> {
    let (up, down) = (c.1 + dp, a.1 + b.1);
    let common = up.min(down);
    let n = Wide::from_u128(a.0).mul_u128(b.0)?.mul_pow10(up - common)?;
    let d = Wide::from_u128(c.0).mul_pow10(down - common)?;
    let (q, r) = n.div_rem(d);
    let q = q.to_u128()?;
    if r.is_zero() {
        return decimal(q, negative && q != 0, dp);
    }
    let half = r.cmp(&d.sub(r));
    let q = if rounds_away(mode, negative, half, q % 2 == 1) { q.checked_add(1)? } else { q };
    decimal(q, negative && q != 0, dp)
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
    use proptest::prelude::*;

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
        assert!(Wide::from_u128(1).mul_pow10(115).is_some());
        assert!(Wide::from_u128(1).mul_pow10(116).is_none());
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

    /// An independent oracle: unsigned integers as little-endian base-10
    /// digit vectors, schoolbook arithmetic. Nothing shared with `Wide`
    /// (other base, other algorithm), slow and obviously right.
    mod oracle {
        use std::cmp::Ordering;

        pub(super) type Big = Vec<u8>;

        pub(super) fn trim(mut a: Big) -> Big {
            while a.len() > 1 && a.last() == Some(&0) {
                a.pop();
            }
            if a.is_empty() {
                a.push(0);
            }
            a
        }

        pub(super) fn from_u128(v: u128) -> Big {
            trim(v.to_string().bytes().rev().map(|b| b - b'0').collect())
        }

        pub(super) fn to_string(a: &Big) -> String {
            trim(a.clone()).iter().rev().map(|d| char::from(b'0' + d)).collect()
        }

        pub(super) fn mul(a: &Big, b: &Big) -> Big {
            let mut out = vec![0u32; a.len() + b.len() + 1];
            for (i, x) in a.iter().enumerate() {
                for (j, y) in b.iter().enumerate() {
                    out[i + j] += u32::from(*x) * u32::from(*y);
                }
            }
            let mut carry = 0u32;
            let digits = out
                .into_iter()
                .map(|d| {
                    let t = d + carry;
                    carry = t / 10;
                    u8::try_from(t % 10).unwrap()
                })
                .collect();
            assert_eq!(carry, 0);
            trim(digits)
        }

        pub(super) fn add(a: &Big, b: &Big) -> Big {
            let n = a.len().max(b.len()) + 1;
            let mut carry = 0u8;
            let digits = (0..n)
                .map(|i| {
                    let t = a.get(i).copied().unwrap_or(0) + b.get(i).copied().unwrap_or(0) + carry;
                    carry = t / 10;
                    t % 10
                })
                .collect();
            trim(digits)
        }

        /// `a - b` for `a >= b`.
        pub(super) fn sub(a: &Big, b: &Big) -> Big {
            let mut borrow = 0i8;
            let digits = a
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    let mut t =
                        i8::try_from(*x).unwrap() - i8::try_from(b.get(i).copied().unwrap_or(0)).unwrap() - borrow;
                    borrow = i8::from(t < 0);
                    if t < 0 {
                        t += 10;
                    }
                    u8::try_from(t).unwrap()
                })
                .collect();
            assert_eq!(borrow, 0);
            trim(digits)
        }

        /// `(a / d, a % d)`, schoolbook long division one decimal digit at a
        /// time.
        pub(super) fn div_rem(a: &Big, d: &Big) -> (Big, Big) {
            let mut q = vec![0u8; a.len()];
            let mut r: Big = vec![0];
            for i in (0..a.len()).rev() {
                r = trim(std::iter::once(a[i]).chain(r.iter().copied()).collect());
                while cmp(&r, d).is_ge() {
                    r = sub(&r, d);
                    q[i] += 1;
                }
            }
            (trim(q), r)
        }

        pub(super) fn add_one(a: &Big) -> Big {
            let mut out = a.clone();
            for d in &mut out {
                if *d == 9 {
                    *d = 0;
                } else {
                    *d += 1;
                    return out;
                }
            }
            out.push(1);
            out
        }

        /// `a * 10^n`.
        pub(super) fn shift(a: &Big, n: u32) -> Big {
            let mut out = vec![0; usize::try_from(n).unwrap()];
            out.extend_from_slice(a);
            trim(out)
        }

        pub(super) fn cmp(a: &Big, b: &Big) -> Ordering {
            let (a, b) = (trim(a.clone()), trim(b.clone()));
            a.len().cmp(&b.len()).then_with(|| a.iter().rev().cmp(b.iter().rev()))
        }
    }

    fn wide_digits(w: Wide) -> oracle::Big {
        let base = oracle::from_u128(1u128 << 64);
        w.0.iter().rev().fold(oracle::from_u128(0), |acc, limb| {
            oracle::add(&oracle::mul(&acc, &base), &oracle::from_u128(u128::from(*limb)))
        })
    }

    /// The largest `Decimal` mantissa, `2^96 - 1`.
    const MAX_MANTISSA: u128 = (1u128 << 96) - 1;

    /// The oracle's `a * b` rounded to `dp` places, as `Decimal`'s text, or
    /// `None` when it does not fit.
    fn oracle_mul_round(a: Decimal, b: Decimal, dp: u32, mode: Rounding) -> Option<String> {
        let negative = a.is_sign_negative() != b.is_sign_negative();
        let p = oracle::mul(&oracle::from_u128(parts(a).0), &oracle::from_u128(parts(b).0));
        let scale = a.scale() + b.scale();
        let q = if scale <= dp {
            oracle::shift(&p, dp - scale)
        } else {
            let cut = usize::try_from(scale - dp).unwrap();
            let padded: Vec<u8> = p.iter().copied().chain(std::iter::repeat(0)).take(p.len().max(cut) + 1).collect();
            let (dropped, kept) = padded.split_at(cut);
            let kept = oracle::trim(kept.to_vec());
            let top = dropped[cut - 1];
            let rest_nonzero = dropped[..cut - 1].iter().any(|d| *d != 0);
            if top == 0 && !rest_nonzero {
                kept
            } else {
                let half = top.cmp(&5).then(if rest_nonzero {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                });
                let odd = kept[0] % 2 == 1;
                if rounds_away(mode, negative, half, odd) { oracle::add_one(&kept) } else { kept }
            }
        };
        if oracle::cmp(&q, &oracle::from_u128(MAX_MANTISSA)).is_gt() {
            return None;
        }
        let m: u128 = oracle::to_string(&q).parse().unwrap();
        let m = i128::try_from(m).unwrap();
        Some(Decimal::from_i128_with_scale(if negative { -m } else { m }, dp).to_string())
    }

    /// Mantissas that exercise limb and carry boundaries, and any other.
    fn mantissa() -> impl Strategy<Value = u128> {
        prop_oneof![
            0..=MAX_MANTISSA,
            (0u32..=28).prop_map(|k| 10u128.pow(k)),
            (1u32..=28).prop_map(|k| 10u128.pow(k) - 1),
            (0u32..96).prop_map(|k| 1u128 << k),
            (1u32..=96).prop_map(|k| (1u128 << k) - 1),
            Just(MAX_MANTISSA),
            0u128..1000,
        ]
    }

    fn decimal_any() -> impl Strategy<Value = Decimal> {
        (mantissa(), 0u32..=28, any::<bool>()).prop_map(|(m, s, neg)| {
            let m = i128::try_from(m).unwrap();
            Decimal::from_i128_with_scale(if neg { -m } else { m }, s)
        })
    }

    fn mode() -> impl Strategy<Value = Rounding> {
        prop_oneof![
            Just(Rounding::Down),
            Just(Rounding::Up),
            Just(Rounding::Floor),
            Just(Rounding::Ceiling),
            Just(Rounding::HalfUp),
            Just(Rounding::HalfDown),
            Just(Rounding::HalfEven),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn wide_mul_and_div_match_the_oracle(a in mantissa(), b in mantissa(), p in 0u32..=56, k in 1u64..) {
            let w = Wide::from_u128(a).mul_u128(b).unwrap();
            let want = oracle::mul(&oracle::from_u128(a), &oracle::from_u128(b));
            prop_assert_eq!(oracle::to_string(&wide_digits(w)), oracle::to_string(&want));
            // 2^384, the first value `Wide` cannot hold.
            let limit = (0..LIMBS).fold(oracle::from_u128(1), |acc, _| oracle::mul(&acc, &oracle::from_u128(1u128 << 64)));
            let Some(scaled) = w.mul_pow10(p) else {
                prop_assert!(oracle::cmp(&oracle::shift(&want, p), &limit).is_ge(), "{}*{} * 10^{} refused", a, b, p);
                return Ok(());
            };
            prop_assert_eq!(oracle::to_string(&wide_digits(scaled)), oracle::to_string(&oracle::shift(&want, p)));
            // q * k + r == w and r < k, checked in the oracle.
            let (q, r) = scaled.div_rem_u64(k);
            prop_assert!(r < k);
            let qk = oracle::mul(&wide_digits(q), &oracle::from_u128(u128::from(k)));
            let recombined = oracle::add(&qk, &oracle::from_u128(u128::from(r)));
            prop_assert_eq!(oracle::to_string(&recombined), oracle::to_string(&wide_digits(scaled)));
            prop_assert_eq!(q.to_u128().is_some(), oracle::cmp(&wide_digits(q), &oracle::from_u128(u128::MAX)).is_le());
        }

        #[test]
        fn wide_long_division_matches_the_oracle(a in mantissa(), b in mantissa(), p in 0u32..=56, c in mantissa(), e in mantissa(), k in 0u32..=56) {
            prop_assume!(c != 0 && e != 0);
            let n = Wide::from_u128(a).mul_u128(b).unwrap().mul_pow10(p).unwrap();
            let d = Wide::from_u128(c).mul_u128(e).unwrap();
            let d = d.mul_pow10(k).unwrap_or(d);
            let (q, r) = n.div_rem(d);
            prop_assert!(r < d);
            let (want_q, want_r) = oracle::div_rem(&wide_digits(n), &wide_digits(d));
            prop_assert_eq!(oracle::to_string(&wide_digits(q)), oracle::to_string(&want_q));
            prop_assert_eq!(oracle::to_string(&wide_digits(r)), oracle::to_string(&want_r));
        }

        #[test]
        fn mul_round_matches_the_oracle(a in decimal_any(), b in decimal_any(), dp in 0u32..=28, mode in mode()) {
            let got = mul_round(a, b, dp, mode).map(|d| d.to_string());
            prop_assert_eq!(got, oracle_mul_round(a, b, dp, mode), "{} * {} at {} {:?}", a, b, dp, mode);
        }

        #[test]
        fn mul_div_matches_the_oracle(
            a in decimal_any(),
            b in decimal_any(),
            c in decimal_any(),
            dp in 0u32..=28,
            mode in mode(),
        ) {
            prop_assume!(!c.is_zero());
            let negative = (a.is_sign_negative() != b.is_sign_negative()) != c.is_sign_negative();
            let n = oracle::shift(&oracle::mul(&oracle::from_u128(parts(a).0), &oracle::from_u128(parts(b).0)), c.scale() + dp);
            let d = oracle::shift(&oracle::from_u128(parts(c).0), a.scale() + b.scale());
            let (q, r) = oracle::div_rem(&n, &d);
            let want = if oracle::to_string(&r) == "0" {
                Some(q)
            } else {
                let half = oracle::cmp(&r, &oracle::sub(&d, &r));
                let odd = q[0] % 2 == 1;
                Some(if rounds_away(mode, negative, half, odd) { oracle::add_one(&q) } else { q })
            }
            .filter(|q| oracle::cmp(q, &oracle::from_u128(MAX_MANTISSA)).is_le())
            .map(|q| {
                let m = i128::try_from(oracle::to_string(&q).parse::<u128>().unwrap()).unwrap();
                Decimal::from_i128_with_scale(if negative { -m } else { m }, dp).to_string()
            });
            let got = crate::mul_div(a, b, c, dp, mode).ok().map(|d| d.to_string());
            prop_assert_eq!(got, want, "{} * {} / {} at {} {:?}", a, b, c, dp, mode);
        }

        #[test]
        fn mul_exact_matches_the_oracle(a in decimal_any(), b in decimal_any()) {
            // The exact product is representable when, without its trailing
            // zeros, it has at most 28 places and a 96-bit mantissa.
            let p = oracle::mul(&oracle::from_u128(parts(a).0), &oracle::from_u128(parts(b).0));
            let mut scale = a.scale() + b.scale();
            let mut digits = p;
            while scale > 0 && digits.len() > 1 && digits[0] == 0 {
                digits.remove(0);
                scale -= 1;
            }
            let zero = oracle::to_string(&digits) == "0";
            let want = if zero {
                Some(Decimal::ZERO)
            } else if scale > MAX_SCALE || oracle::cmp(&digits, &oracle::from_u128(MAX_MANTISSA)).is_gt() {
                None
            } else {
                let m = i128::try_from(oracle::to_string(&digits).parse::<u128>().unwrap()).unwrap();
                let negative = a.is_sign_negative() != b.is_sign_negative();
                Some(Decimal::from_i128_with_scale(if negative { -m } else { m }, scale))
            };
            let got = mul_exact(a, b);
            // Equal values (the scale may keep the operands' trailing zeros).
            prop_assert_eq!(got, want, "{} * {}", a, b);
            if let Some(g) = got {
                prop_assert!(!(g.is_zero() && g.is_sign_negative()), "negative zero from {} * {}", a, b);
            }
        }

        #[test]
        fn product_at_least_matches_the_oracle(a in decimal_any(), b in decimal_any(), min in decimal_any()) {
            let (a, b, min) = (a.abs(), b.abs(), min.abs());
            let p = oracle::mul(&oracle::from_u128(parts(a).0), &oracle::from_u128(parts(b).0));
            let (ps, ms) = (a.scale() + b.scale(), min.scale());
            let c = ps.max(ms);
            let lhs = oracle::shift(&p, c - ps);
            let rhs = oracle::shift(&oracle::from_u128(parts(min).0), c - ms);
            prop_assert_eq!(product_at_least(a, b, min), oracle::cmp(&lhs, &rhs).is_ge(), "{} * {} >= {}", a, b, min);
        }
    }
}
