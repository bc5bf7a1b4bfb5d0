//! Property tests: invariants that must hold for every input.

use proptest::prelude::*;
use spark_money::{
    Currency, Decimal, InstrumentRules, LotRounding, LotSize, Money, Price, Quantity, Rounding, Side, TickRounding,
    TickTable, parse_decimal, round,
};

fn any_decimal() -> impl Strategy<Value = Decimal> {
    (any::<i64>(), 0u32..=12).prop_map(|(m, s)| Decimal::new(m, s))
}

fn any_price() -> impl Strategy<Value = Price> {
    (1i64..=1_000_000_000, 0u32..=6).prop_map(|(m, s)| Price::new(Decimal::new(m, s)).unwrap())
}

fn any_mode() -> impl Strategy<Value = Rounding> {
    proptest::sample::select(Rounding::ALL.to_vec())
}

fn any_table() -> impl Strategy<Value = TickTable> {
    prop_oneof![
        Just(TickTable::bist_equity()),
        (1i64..=500, 0u32..=4).prop_map(|(m, s)| TickTable::fixed(Decimal::new(m, s)).unwrap()),
    ]
}

/// `d` with `k` trailing zeros appended (as many as fit): the same number,
/// written longer.
fn padded(d: Decimal, k: u32) -> Decimal {
    let mut p = d;
    p.rescale((d.scale() + k).min(28));
    assert_eq!(p, d, "padding must not change the value");
    p
}

fn pad_price(p: Price, k: u32) -> Price {
    Price::new(padded(p.get(), k)).unwrap()
}

fn pad_qty(q: Quantity, k: u32) -> Quantity {
    Quantity::new(padded(q.get(), k)).unwrap()
}

fn any_qty() -> impl Strategy<Value = Quantity> {
    (0i64..=10_000_000, 0u32..=4).prop_map(|(m, s)| Quantity::new(Decimal::new(m, s)).unwrap())
}

fn unit(dp: u32) -> Decimal {
    Decimal::new(1, dp)
}

proptest! {
    #[test]
    fn rounding_is_idempotent_and_exact_in_places(x in any_decimal(), dp in 0u32..=8, mode in any_mode()) {
        let once = round(x, dp, mode).unwrap();
        prop_assert_eq!(once.scale(), dp);
        prop_assert_eq!(round(once, dp, mode).unwrap(), once);
    }

    #[test]
    fn rounding_agrees_with_rust_decimal(x in any_decimal(), dp in 0u32..=14, mode in any_mode()) {
        let theirs = x.round_dp_with_strategy(dp, mode.strategy());
        match round(x, dp, mode) {
            Ok(ours) => prop_assert_eq!(ours, theirs),
            // Only when padding to `dp` places cannot fit the mantissa, which
            // rust_decimal's unpadded result hides.
            Err(_) => {
                let mut padded = theirs;
                padded.rescale(dp);
                prop_assert!(padded.scale() < dp);
            }
        }
    }

    #[test]
    fn mul_div_matches_a_single_rounding_of_the_exact_quotient(
        a in -1_000_000_000i64..1_000_000_000, sa in 0u32..=4,
        b in 1i64..1_000_000, sb in 0u32..=3,
        c in 1i64..1_000_000, sc in 0u32..=3,
        dp in 0u32..=6, mode in any_mode(),
    ) {
        let (a, b, c) = (Decimal::new(a, sa), Decimal::new(b, sb), Decimal::new(c, sc));
        let r = spark_money::mul_div(a, b, c, dp, mode).unwrap();
        prop_assert_eq!(r.scale(), dp);
        // The exact quotient lies within one unit of the result, on the side
        // the mode says: check via exact products (no division).
        let unit = Decimal::new(1, dp);
        let exact_num = a * b; // exact: small operands
        let lo = (r - unit) * c;
        let hi = (r + unit) * c;
        prop_assert!(lo < exact_num && exact_num < hi, "{} * {} / {} -> {}", a, b, c, r);
        if matches!(mode, Rounding::Floor) { prop_assert!(r * c <= exact_num); }
        if matches!(mode, Rounding::Ceiling) { prop_assert!(r * c >= exact_num); }
    }

    #[test]
    fn half_modes_move_at_most_half_a_unit(x in any_decimal(), dp in 0u32..=8) {
        let half = unit(dp) / Decimal::TWO;
        for mode in [Rounding::HalfEven, Rounding::HalfUp, Rounding::HalfDown] {
            let r = round(x, dp, mode).unwrap();
            prop_assert!((r - x).abs() <= half, "{} {} -> {}", mode, x, r);
        }
        for mode in Rounding::ALL {
            prop_assert!((round(x, dp, mode).unwrap() - x).abs() < unit(dp));
        }
    }

    #[test]
    fn floor_le_x_le_ceiling_and_directed_modes(x in any_decimal(), dp in 0u32..=8) {
        let floor = round(x, dp, Rounding::Floor).unwrap();
        let ceiling = round(x, dp, Rounding::Ceiling).unwrap();
        prop_assert!(floor <= x && x <= ceiling);
        let down = round(x, dp, Rounding::Down).unwrap();
        let up = round(x, dp, Rounding::Up).unwrap();
        prop_assert!(down.abs() <= x.abs() && x.abs() <= up.abs());
    }

    #[test]
    fn parse_round_trips_display(x in any_decimal()) {
        let back = parse_decimal(&x.to_string()).unwrap();
        prop_assert_eq!(back, x);
        prop_assert_eq!(back.scale(), x.scale());
    }

    #[test]
    fn every_aligned_price_is_aligned(table in any_table(), price in any_price()) {
        for mode in [TickRounding::Nearest, TickRounding::Down, TickRounding::Up, TickRounding::Passive(Side::Buy), TickRounding::Passive(Side::Sell)] {
            if let Ok(aligned) = table.align(price, mode) {
                prop_assert!(table.is_aligned(aligned), "{:?} {} -> {}", mode, price, aligned);
                prop_assert_eq!(table.align(aligned, TickRounding::Reject).unwrap(), aligned);
            }
        }
    }

    #[test]
    fn passive_never_crosses(table in any_table(), price in any_price()) {
        let buy = table.align(price, TickRounding::Passive(Side::Buy));
        let sell = table.align(price, TickRounding::Passive(Side::Sell)).unwrap();
        if let Ok(buy) = buy {
            prop_assert!(buy <= price);
        }
        prop_assert!(price <= sell);
        let nearest = table.align(price, TickRounding::Nearest).unwrap();
        // Nearest is one of the two neighbours and no farther than the other.
        let (below, above) = table.neighbours(price).unwrap();
        prop_assert!(Some(nearest) == below || Some(nearest) == above);
        if let (Some(b), Some(a)) = (below, above) {
            let (db, da) = (price.get() - b.get(), a.get() - price.get());
            let closer = if nearest == b { db <= da } else { da <= db };
            prop_assert!(closer, "{} -> {}", price, nearest);
        }
    }

    #[test]
    fn allocate_sums_exactly(minor in -10_000_000i64..10_000_000, weights in prop::collection::vec(0u32..1000, 1..8)) {
        prop_assume!(weights.iter().any(|w| *w > 0));
        let total = Money::from_minor(minor, Currency::TRY);
        let parts = total.allocate(&weights).unwrap();
        prop_assert_eq!(parts.len(), weights.len());
        let sum = parts.iter().try_fold(Money::zero(Currency::TRY), |acc, p| acc.add(p)).unwrap();
        prop_assert_eq!(sum, total);
        // Each part is within one minor unit of its exact share.
        let weight_sum: u32 = weights.iter().sum();
        for (part, w) in parts.iter().zip(&weights) {
            let exact = Decimal::from(minor) * Decimal::from(*w) / Decimal::from(weight_sum);
            let got = Decimal::from(part.to_minor_units().unwrap() as i64);
            prop_assert!((got - exact).abs() < Decimal::ONE);
        }
    }

    #[test]
    fn serde_round_trips(price in any_price(), x in any_decimal()) {
        let json = serde_json::to_string(&price).unwrap();
        prop_assert_eq!(serde_json::from_str::<Price>(&json).unwrap(), price);
        let qty = Quantity::new(x.abs()).unwrap();
        let back: Quantity = serde_json::from_str(&serde_json::to_string(&qty).unwrap()).unwrap();
        prop_assert_eq!(back.to_string(), qty.to_string());
        let money = Money::new(x, Currency::USD);
        let back: Money = serde_json::from_str(&serde_json::to_string(&money).unwrap()).unwrap();
        prop_assert_eq!(back, money);
    }

    #[test]
    fn lot_alignment_lands_on_a_valid_quantity(q in 0i64..10_000_000, qs in 0u32..=4, step in 1i64..100, ss in 0u32..=3) {
        let step = Quantity::new(Decimal::new(step, ss)).unwrap();
        let lot = LotSize::new(step, step, None).unwrap();
        let qty = Quantity::new(Decimal::new(q, qs)).unwrap();
        for mode in [LotRounding::Down, LotRounding::Up, LotRounding::Nearest] {
            if let Ok(aligned) = lot.align(qty, mode) {
                prop_assert!(lot.is_valid(aligned));
                prop_assert!((aligned.get() - qty.get()).abs() < step.get());
            }
        }
    }

    #[test]
    fn validate_agrees_with_the_rules_one_by_one(price in any_price(), q in 0i64..100_000, side in prop_oneof![Just(Side::Buy), Just(Side::Sell)]) {
        let rules = InstrumentRules::from_toml(
            "currency = \"TRY\"\ntick_table = { preset = \"bist\" }\nmin_notional = \"500\"\n[lot]\nstep = \"10\"\nmin = \"10\"\nmax = \"50000\"\n",
        ).unwrap();
        let qty = Quantity::new(Decimal::from(q)).unwrap();
        let ok = rules.tick_table().is_aligned(price)
            && rules.lot().is_valid(qty)
            && price.get() * qty.get() >= Decimal::from(500);
        prop_assert_eq!(rules.validate(side, price, qty).is_ok(), ok);
    }

    /// Appending trailing zeros to any input never changes any result: the
    /// same number written longer is the same number.
    #[test]
    fn trailing_zeros_change_no_result(
        x in any_decimal(), y in any_decimal(), z in any_decimal(),
        price in any_price(), qty in any_qty(),
        kx in 0u32..=28, ky in 0u32..=28, kz in 0u32..=28,
        dp in 0u32..=8, mode in any_mode(), table in any_table(),
        side in prop_oneof![Just(Side::Buy), Just(Side::Sell)],
        min in 0i64..100_000_000, step in 1i64..100, ss in 0u32..=3,
    ) {
        let (xp, yp, zp) = (padded(x, kx), padded(y, ky), padded(z, kz));
        // Ok values as text, so that a changed scale shows; errors compare
        // numerically (they name the input as given).
        let show = |r: Result<Decimal, spark_money::MoneyError>| r.map(|d| d.to_string());

        prop_assert_eq!(show(round(xp, dp, mode)), show(round(x, dp, mode)));
        if !z.is_zero() {
            prop_assert_eq!(
                show(spark_money::mul_div(xp, yp, zp, dp, mode)),
                show(spark_money::mul_div(x, y, z, dp, mode))
            );
        }

        let (pp, qp) = (pad_price(price, kx), pad_qty(qty, ky));
        prop_assert_eq!(spark_money::notional(pp, qp), spark_money::notional(price, qty));
        prop_assert!(spark_money::notional(pp, qp).is_some());
        let min_notional = spark_money::MinNotional::new(Decimal::new(min, 2)).unwrap();
        let met = min_notional.is_met(price, qty);
        prop_assert_eq!(met, price.get() * qty.get() >= min_notional.get());
        prop_assert_eq!(min_notional.is_met(pp, qp), met);
        prop_assert_eq!(spark_money::MinNotional::new(padded(min_notional.get(), kz)).unwrap().is_met(pp, qp), met);

        for tick_mode in [TickRounding::Nearest, TickRounding::Down, TickRounding::Up, TickRounding::Reject, TickRounding::Passive(side)] {
            prop_assert_eq!(
                table.align(pp, tick_mode).map(|p| p.to_string()),
                table.align(price, tick_mode).map(|p| p.to_string())
            );
        }
        let step = Quantity::new(Decimal::new(step, ss)).unwrap();
        let lot = LotSize::new(step, step, None).unwrap();
        let lot_padded = LotSize::new(pad_qty(step, kz), pad_qty(step, kz), None).unwrap();
        for lot_mode in [LotRounding::Down, LotRounding::Up, LotRounding::Nearest, LotRounding::Reject] {
            let plain = lot.align(qty, lot_mode).map(|q| q.to_string());
            prop_assert_eq!(lot.align(qp, lot_mode).map(|q| q.to_string()), plain);
            prop_assert_eq!(
                lot_padded.align(qp, lot_mode).map(|q| q.get()).ok(),
                lot.align(qty, lot_mode).map(|q| q.get()).ok()
            );
        }

        let rules = InstrumentRules::new(table.clone(), lot, Some(min_notional), Currency::TRY);
        prop_assert_eq!(rules.validate(side, pp, qp), rules.validate(side, price, qty));

        let (mx, mxp) = (Money::new(x, Currency::TRY), Money::new(xp, Currency::TRY));
        let (my, myp) = (Money::new(y, Currency::TRY), Money::new(yp, Currency::TRY));
        prop_assert_eq!(mxp.add(&myp).map(|m| m.amount()).ok(), mx.add(&my).map(|m| m.amount()).ok());
        prop_assert_eq!(mxp.sub(&myp).map(|m| m.amount()).ok(), mx.sub(&my).map(|m| m.amount()).ok());
        prop_assert_eq!(mxp.mul(yp, mode).map(|m| m.to_string()).ok(), mx.mul(y, mode).map(|m| m.to_string()).ok());
        prop_assert_eq!(mxp.round_to_minor(mode).map(|m| m.to_string()).ok(), mx.round_to_minor(mode).map(|m| m.to_string()).ok());
        prop_assert_eq!(mxp.to_minor_units().ok(), mx.to_minor_units().ok());
    }
}
