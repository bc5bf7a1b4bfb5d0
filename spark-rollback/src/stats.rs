//! The statistics the enhanced triggers use: a one-sided Mann-Whitney U test
//! (is the canary higher than the baseline?) and the Theil–Sen slope (a
//! trend that a few outliers cannot bend).
//!
//! Both are written here rather than taken from a statistics crate: each is a
//! few lines, the candidates (statrs) pull in a linear-algebra stack, and the
//! engine needs them allocation-light because replay evaluates every
//! trigger thousands of times.

/// The p-value of a one-sided Mann-Whitney U test with the alternative "`x`
/// tends to be larger than `y`", by the normal approximation with tie
/// correction and continuity correction (accurate for the 20+ samples per
/// side a 10-minute window holds at a 15 s step). `None` when either side is
/// empty or every value is tied (no evidence either way).
#[must_use]
pub fn mann_whitney_greater(x: &[f64], y: &[f64]) -> Option<f64> {
    let (n1, n2) = (x.len(), y.len());
    if n1 == 0 || n2 == 0 {
        return None;
    }
    // Rank the pooled sample; ties share their average rank.
    let mut pooled: Vec<(f64, bool)> = x.iter().map(|&v| (v, true)).chain(y.iter().map(|&v| (v, false))).collect();
    pooled.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = pooled.len();
    let mut rank_sum_x = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && pooled[j].0.total_cmp(&pooled[i].0).is_eq() {
            j += 1;
        }
        let count = (j - i) as f64;
        // Ranks i+1 ..= j, averaged.
        let rank = (i + 1 + j) as f64 / 2.0;
        rank_sum_x += rank * pooled[i..j].iter().filter(|p| p.1).count() as f64;
        tie_term += count * count * count - count;
        i = j;
    }
    let (n1, n2, n) = (n1 as f64, n2 as f64, n as f64);
    let u = rank_sum_x - n1 * (n1 + 1.0) / 2.0;
    let mean = n1 * n2 / 2.0;
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if variance <= 0.0 {
        return None;
    }
    let z = (u - mean - 0.5) / variance.sqrt();
    Some(normal_sf(z))
}

/// P(Z > z) for a standard normal Z.
#[must_use]
pub fn normal_sf(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

/// How many points a trend is computed over at most: longer windows are
/// reduced to this many medians of equal time buckets first, which keeps
/// the slope robust and its cost fixed (20 points are 190 pairs; replay
/// computes thousands of slopes).
pub(crate) const TREND_POINTS: usize = 20;

/// The Theil–Sen slope of `v` over `t` (milliseconds), in units per second:
/// the median of the slopes between every pair of points. Windows of more
/// than 20 samples are first reduced to the medians of that
/// many equal time buckets. `None` with fewer than two distinct times.
#[must_use]
pub fn theil_sen(t: &[i64], v: &[f64]) -> Option<f64> {
    let (t, v) = reduce(t, v);
    let mut slopes = Vec::with_capacity(t.len() * t.len().saturating_sub(1) / 2);
    for i in 0..t.len() {
        for j in i + 1..t.len() {
            let dt = (t[j] - t[i]) as f64 / 1000.0;
            if dt > 0.0 {
                slopes.push((v[j] - v[i]) / dt);
            }
        }
    }
    median(&mut slopes)
}

/// The median (the mean of the middle two for an even count).
pub(crate) fn median(values: &mut [f64]) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mid = n / 2;
    let (_, &mut upper, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    if n % 2 == 1 {
        return Some(upper);
    }
    let lower = values[..mid].iter().copied().max_by(f64::total_cmp).expect("n >= 2");
    Some((lower + upper) / 2.0)
}

/// At most [`TREND_POINTS`] points: each the median time and median value
/// of one of equal-width time buckets (empty buckets are skipped).
fn reduce(t: &[i64], v: &[f64]) -> (Vec<i64>, Vec<f64>) {
    if t.len() <= TREND_POINTS {
        return (t.to_vec(), v.to_vec());
    }
    let (first, last) = (t[0], t[t.len() - 1]);
    let width = (last - first) as f64 / TREND_POINTS as f64;
    let mut out_t = Vec::with_capacity(TREND_POINTS);
    let mut out_v = Vec::with_capacity(TREND_POINTS);
    let mut scratch = Vec::new();
    let mut start = 0;
    for bucket in 1..=TREND_POINTS {
        let end = if bucket == TREND_POINTS {
            t.len()
        } else {
            #[allow(clippy::cast_possible_truncation, reason = "a time between first and last")]
            let edge = first + (width * bucket as f64) as i64;
            t.partition_point(|&x| x < edge)
        };
        if end > start {
            // Times ascend: the middle one (or the mean of the middle two)
            // is their median.
            let mid = start + (end - start) / 2;
            out_t.push(if (end - start) % 2 == 1 { t[mid] } else { (t[mid - 1] + t[mid]) / 2 });
            scratch.clear();
            scratch.extend_from_slice(&v[start..end]);
            out_v.push(median(&mut scratch).expect("non-empty"));
            start = end;
        }
    }
    (out_t, out_v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mann_whitney_matches_known_values() {
        // Two clearly separated samples of 10: U = 100, z ≈ 3.74.
        let x: Vec<f64> = (11..=20).map(f64::from).collect();
        let y: Vec<f64> = (1..=10).map(f64::from).collect();
        let p = mann_whitney_greater(&x, &y).unwrap();
        assert!(p < 0.001, "{p}");
        // Reversed, the one-sided test finds nothing.
        assert!(mann_whitney_greater(&y, &x).unwrap() > 0.99);
        // Identical samples: p ≈ 0.5 or above.
        assert!(mann_whitney_greater(&x, &x).unwrap() >= 0.5);
        // All tied: no evidence.
        assert_eq!(mann_whitney_greater(&[1.0, 1.0], &[1.0, 1.0]), None);
        assert_eq!(mann_whitney_greater(&[], &[1.0]), None);
    }

    #[test]
    fn mann_whitney_matches_a_hand_computed_value() {
        // Pooled ranks: y 0.5→1, 1.0→2, 1.5→4, 2.0→5; x 1.1→3, 2.2→6, 3.3→7, 4.4→8, 5.5→9.
        // R_x = 33, U = 33 − 15 = 18, mean 10, variance 20/12·10, z = 7.5/4.0825 = 1.8371,
        // P(Z > 1.8371) = 0.03310.
        let p = mann_whitney_greater(&[1.1, 2.2, 3.3, 4.4, 5.5], &[0.5, 1.0, 1.5, 2.0]).unwrap();
        assert!((p - 0.03310).abs() < 0.0001, "{p}");
    }

    #[test]
    fn theil_sen_ignores_an_outlier() {
        let t: Vec<i64> = (0..20).map(|i| i * 15_000).collect();
        let mut v: Vec<f64> = (0..20).map(|i| 100.0 + 2.0 * f64::from(i)).collect();
        v[7] = 10_000.0;
        let slope = theil_sen(&t, &v).unwrap();
        assert!((slope - 2.0 / 15.0).abs() < 1e-9, "{slope}");
        assert_eq!(theil_sen(&[0], &[1.0]), None);
    }

    #[test]
    fn long_windows_are_reduced_without_bending_the_slope() {
        let t: Vec<i64> = (0..480).map(|i| i * 15_000).collect();
        let v: Vec<f64> = (0..480).map(|i| 5.0 + 0.5 * f64::from(i)).collect();
        let slope = theil_sen(&t, &v).unwrap();
        assert!((slope - 0.5 / 15.0).abs() < 1e-6, "{slope}");
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}
