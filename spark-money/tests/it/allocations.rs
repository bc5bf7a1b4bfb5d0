//! round, align and validate must not touch the heap, on success or failure.
//!
//! `allocation_counter` counts allocations made by the calling thread only,
//! so tests running in parallel cannot disturb the count.

use spark_money::{InstrumentRules, Price, Quantity, Rounding, Side, TickRounding, TickTable, parse_decimal, round};

#[test]
fn hot_paths_do_not_allocate() {
    let bist = TickTable::bist_equity();
    let rules = InstrumentRules::from_toml(
        "currency = \"TRY\"\ntick_table = { preset = \"bist\" }\nmin_notional = \"1000\"\n[lot]\nstep = \"1\"\nmax = \"10\"\n",
    )
    .unwrap();
    let value = parse_decimal("101.3749").unwrap();
    let good: Price = "101.30".parse().unwrap();
    let bad: Price = "101.37".parse().unwrap();
    let qty: Quantity = "10".parse().unwrap();
    let bad_qty: Quantity = "0.5".parse().unwrap();
    let padded_qty: Quantity = "10.00000000000000000000000000".parse().unwrap();
    let long_price: Price = "101.3000000000000000000000001".parse().unwrap();

    let info = allocation_counter::measure(|| {
        for mode in Rounding::ALL {
            std::hint::black_box(round(value, 2, mode).unwrap());
        }
        std::hint::black_box(parse_decimal("2499.995").unwrap());
        for mode in [TickRounding::Nearest, TickRounding::Down, TickRounding::Up, TickRounding::Passive(Side::Sell)] {
            std::hint::black_box(bist.align(bad, mode).unwrap());
        }
        std::hint::black_box(bist.is_aligned(bad));
        assert!(rules.validate(Side::Buy, good, qty).is_ok());
        let violations = rules.validate(Side::Buy, bad, bad_qty).unwrap_err();
        assert_eq!(violations.len(), 4);
        // Trailing zeros take the stripping and wide-integer paths, which
        // must not allocate either.
        assert!(rules.validate(Side::Buy, good, padded_qty).is_ok());
        assert!(rules.validate(Side::Buy, long_price, padded_qty).is_err());
    });
    assert_eq!(info.count_total, 0, "heap allocations on the hot path: {info:?}");

    // The counter works: an allocation in the same window is seen.
    let info = allocation_counter::measure(|| {
        std::hint::black_box(bist.align(bad, TickRounding::Reject).unwrap_err().to_string());
    });
    assert!(info.count_total > 0);
}
