//! Exact expected outputs for hand-checked inputs.

use spark_money::{
    Currency, Decimal, InstrumentRules, LotRounding, LotSize, Money, MoneyError, Price, Quantity, Rounding, Side,
    TickRounding, TickTable, Violation, parse_decimal, round,
};

fn d(s: &str) -> Decimal {
    parse_decimal(s).unwrap()
}

fn p(s: &str) -> Price {
    s.parse().unwrap()
}

#[test]
fn half_even_ties() {
    for (value, dp, want) in [
        ("2.5", 0, "2"),
        ("3.5", 0, "4"),
        ("-2.5", 0, "-2"),
        ("-3.5", 0, "-4"),
        ("0.125", 2, "0.12"),
        ("0.135", 2, "0.14"),
        ("1.005", 2, "1.00"),
        ("1.015", 2, "1.02"),
        ("12.355", 2, "12.36"),
        ("0.5", 0, "0"),
        ("-0.5", 0, "0"),
        ("1.2", 2, "1.20"),
        ("7", 3, "7.000"),
        ("2.4999999999999999999999999999", 0, "2"),
    ] {
        assert_eq!(round(d(value), dp, Rounding::HalfEven).unwrap().to_string(), want, "{value} at {dp}");
    }
}

#[test]
fn every_mode_on_the_reference_table() {
    // Rows: value; columns: HalfEven, HalfUp, HalfDown, Down, Up, Floor, Ceiling.
    let table = [
        ("2.5", ["2", "3", "2", "2", "3", "2", "3"]),
        ("-2.5", ["-2", "-3", "-2", "-2", "-3", "-3", "-2"]),
        ("2.4", ["2", "2", "2", "2", "3", "2", "3"]),
        ("-2.6", ["-3", "-3", "-3", "-2", "-3", "-3", "-2"]),
        ("1.5", ["2", "2", "1", "1", "2", "1", "2"]),
        ("-1.5", ["-2", "-2", "-1", "-1", "-2", "-2", "-1"]),
        ("0.1", ["0", "0", "0", "0", "1", "0", "1"]),
        ("-0.1", ["0", "0", "0", "0", "-1", "-1", "0"]),
        ("3", ["3", "3", "3", "3", "3", "3", "3"]),
    ];
    for (value, wants) in table {
        for (mode, want) in Rounding::ALL.into_iter().zip(wants) {
            assert_eq!(round(d(value), 0, mode).unwrap().to_string(), want, "{value} {mode}");
        }
    }
}

#[test]
fn round_refuses_impossible_scales() {
    assert_eq!(round(d("1"), 29, Rounding::HalfEven), Err(MoneyError::ScaleTooLarge { dp: 29 }));
    assert!(matches!(round(Decimal::MAX, 1, Rounding::HalfEven), Err(MoneyError::Overflow { .. })));
    assert_eq!(round(d("1.5"), 28, Rounding::HalfEven).unwrap().scale(), 28);
}

/// (price, nearest, down, up) on BIST; passive buy is `down`, passive sell is
/// `up`, and an aligned price maps to itself in every mode.
const BIST_EDGES: &[(&str, &str, &str, &str)] = &[
    ("0.005", "0.01", "", "0.01"),
    ("0.01", "0.01", "0.01", "0.01"),
    ("19.99", "19.99", "19.99", "19.99"),
    ("19.995", "20.00", "19.99", "20.00"),
    ("20", "20.00", "20.00", "20.00"),
    ("20.00", "20.00", "20.00", "20.00"),
    ("20.01", "20.00", "20.00", "20.02"),
    ("20.03", "20.04", "20.02", "20.04"),
    ("49.99", "50.00", "49.98", "50.00"),
    ("50.00", "50.00", "50.00", "50.00"),
    ("50.01", "50.00", "50.00", "50.05"),
    ("99.97", "99.95", "99.95", "100.00"),
    ("99.975", "100.00", "99.95", "100.00"),
    ("100.05", "100.00", "100.00", "100.10"),
    ("101.37", "101.40", "101.30", "101.40"),
    ("249.95", "250.00", "249.90", "250.00"),
    ("250.10", "250.00", "250.00", "250.25"),
    ("250.125", "250.00", "250.00", "250.25"),
    ("499.80", "499.75", "499.75", "500.00"),
    ("499.875", "500.00", "499.75", "500.00"),
    ("999.75", "1000.00", "999.50", "1000.00"),
    ("1000.25", "1000.00", "1000.00", "1001.00"),
    ("1000.50", "1000.00", "1000.00", "1001.00"),
    ("1001.50", "1002.00", "1001.00", "1002.00"),
    ("2499.50", "2500.00", "2499.00", "2500.00"),
    ("2500.00", "2500.00", "2500.00", "2500.00"),
    ("2501.00", "2500.00", "2500.00", "2502.50"),
    ("2503.75", "2505.00", "2502.50", "2505.00"),
    ("2501.25", "2500.00", "2500.00", "2502.50"),
];

#[test]
fn bist_band_edges_in_every_mode() {
    let bist = TickTable::bist_equity();
    for &(price, nearest, down, up) in BIST_EDGES {
        let price = p(price);
        let show = |r: Result<Price, MoneyError>| r.map(|p| p.to_string()).unwrap_or_default();
        assert_eq!(show(bist.align(price, TickRounding::Nearest)), nearest, "nearest {price}");
        assert_eq!(show(bist.align(price, TickRounding::Down)), down, "down {price}");
        assert_eq!(show(bist.align(price, TickRounding::Passive(Side::Buy))), down, "passive buy {price}");
        assert_eq!(show(bist.align(price, TickRounding::Up)), up, "up {price}");
        assert_eq!(show(bist.align(price, TickRounding::Passive(Side::Sell))), up, "passive sell {price}");
        let aligned = down == up;
        assert_eq!(bist.is_aligned(price), aligned, "is_aligned {price}");
        match bist.align(price, TickRounding::Reject) {
            Ok(got) => assert!(aligned && got.to_string() == nearest, "reject {price}"),
            Err(MoneyError::PriceNotAligned { below, above, .. }) => {
                assert!(!aligned);
                assert_eq!(below.map(|b| b.to_string()).unwrap_or_default(), down);
                assert_eq!(above.map(|a| a.to_string()).unwrap_or_default(), up);
            }
            Err(e) => panic!("reject {price}: {e}"),
        }
    }
}

#[test]
fn bist_ticks_per_band() {
    let bist = TickTable::bist_equity();
    for (price, tick) in [
        ("0.01", "0.01"),
        ("19.99", "0.01"),
        ("20", "0.02"),
        ("49.98", "0.02"),
        ("50", "0.05"),
        ("99.95", "0.05"),
        ("100", "0.10"),
        ("250", "0.25"),
        ("500", "0.50"),
        ("1000", "1.00"),
        ("2499", "1.00"),
        ("2500", "2.50"),
        ("100000", "2.50"),
    ] {
        assert_eq!(bist.tick_at(p(price)).unwrap().to_string(), tick, "{price}");
    }
}

#[test]
fn reject_names_nearest_prices() {
    let table = TickTable::fixed(d("0.05")).unwrap();
    let err = table.align(p("101.37"), TickRounding::Reject).unwrap_err();
    assert_eq!(err.to_string(), "price 101.37 is not a multiple of tick 0.05 (nearest valid: 101.35, 101.40)");
    let err = table.align(p("0.01"), TickRounding::Down).unwrap_err();
    assert_eq!(err.to_string(), "no valid price at or below 0.01 (tick 0.05)");
}

#[test]
fn tick_tables_from_toml_and_bad_tables() {
    let t = TickTable::from_toml("[[bands]]\nfrom = \"0\"\ntick = \"0.5\"\n[[bands]]\nfrom = \"10\"\ntick = \"1\"\n")
        .unwrap();
    assert_eq!(t.align(p("10.4"), TickRounding::Nearest).unwrap().to_string(), "10");
    assert_eq!(TickTable::from_toml(&TickTable::bist_equity().to_toml()).unwrap(), TickTable::bist_equity());
    assert_eq!(TickTable::from_toml("preset = \"bist-equity\"").unwrap(), TickTable::bist_equity());
    assert_eq!(TickTable::from_toml("fixed = \"0.25\"").unwrap(), TickTable::fixed(d("0.25")).unwrap());
    for (bad, want) in [
        ("fixed = 0.25", "send decimals as JSON strings"),
        ("fixed = \"0\"", "tick must be greater than zero"),
        ("preset = \"nyse\"", "unknown preset"),
        ("preset = \"bist\"\nfixed = \"1\"", "exactly one of"),
        ("[[bands]]\nfrom = \"0\"\ntick = \"1\"\n[[bands]]\nfrom = \"0\"\ntick = \"2\"", "must increase"),
        ("[[bands]]\nfrom = \"0\"\ntick = \"0.02\"\n[[bands]]\nfrom = \"1.01\"\ntick = \"0.01\"", "tick below it"),
        ("[[bands]]\nfrom = \"0\"\ntick = \"0.01\"\n[[bands]]\nfrom = \"1.01\"\ntick = \"0.02\"", "its tick 0.02"),
        ("bands = []", "no bands"),
        ("fixed = \"1e2\"", "exponent"),
    ] {
        let err = TickTable::from_toml(bad).unwrap_err().to_string();
        assert!(err.contains(want), "{bad:?}: {err}");
    }
}

#[test]
fn table_not_starting_at_zero() {
    let t = TickTable::new([(d("1"), d("0.5"))]).unwrap();
    assert!(matches!(t.tick_at(p("0.5")), Err(MoneyError::PriceBelowTable { .. })));
    assert!(!t.is_aligned(p("0.5")));
}

#[test]
fn lot_alignment() {
    let lot = LotSize::new("5".parse().unwrap(), "10".parse().unwrap(), Some("1000".parse().unwrap())).unwrap();
    let q = |s: &str| s.parse::<Quantity>().unwrap();
    let show = |r: Result<Quantity, MoneyError>| r.map(|q| q.to_string()).map_err(|e| e.to_string());
    assert_eq!(show(lot.align(q("12.5"), LotRounding::Nearest)), Ok("10".into()), "tie to even multiple");
    assert_eq!(show(lot.align(q("17.5"), LotRounding::Nearest)), Ok("20".into()));
    assert_eq!(show(lot.align(q("13"), LotRounding::Down)), Ok("10".into()));
    assert_eq!(show(lot.align(q("11"), LotRounding::Up)), Ok("15".into()));
    assert_eq!(
        show(lot.align(q("7"), LotRounding::Down)),
        Err("quantity 5 is outside the lot limits 10..=1000".into())
    );
    assert_eq!(
        show(lot.align(q("12"), LotRounding::Reject)),
        Err("quantity 12 is not a multiple of lot step 5 (nearest valid: 10, 15)".into())
    );
    assert_eq!(
        show(lot.align(q("1001"), LotRounding::Up)),
        Err("quantity 1005 is outside the lot limits 10..=1000".into())
    );
    assert!(lot.is_valid(q("1000")) && !lot.is_valid(q("1005")) && !lot.is_valid(q("5")));
    assert!(LotSize::new(q("0"), q("0"), None).is_err());
    assert!(LotSize::new(q("1"), q("10"), Some(q("5"))).is_err());
}

const RULES: &str = r#"
currency = "TRY"
tick_table = { preset = "bist-equity" }
min_notional = "1000"

[lot]
step = "1"
min = "1"
max = "100000"
"#;

#[test]
fn validate_reports_every_violation_with_nearest_values() {
    let rules = InstrumentRules::from_toml(RULES).unwrap();
    assert_eq!(rules.currency(), Currency::TRY);
    assert!(rules.validate(Side::Buy, p("101.30"), "10".parse().unwrap()).is_ok());

    let v = rules.validate(Side::Sell, p("101.37"), "0.5".parse().unwrap()).unwrap_err();
    let got: Vec<&Violation> = v.iter().collect();
    assert_eq!(got.len(), 4, "{v}");
    assert!(matches!(got[0], Violation::PriceOffTick { suggested: Some(s), .. } if s.to_string() == "101.40"));
    assert!(matches!(got[1], Violation::QuantityOffStep { below: None, above: Some(a), .. } if a.to_string() == "1"));
    assert!(matches!(got[2], Violation::QuantityBelowMin { .. }));
    // At the suggested 101.40, 10 lots (1014.00) is the smallest notional >= 1000.
    assert!(matches!(got[3], Violation::NotionalBelowMin { min_quantity: Some(q), .. } if q.to_string() == "10"));
    assert_eq!(
        v.to_string(),
        "price 101.37 is not a multiple of tick 0.10 (nearest valid: 101.30, 101.40; passive: 101.40); \
         quantity 0.5 is not a multiple of lot step 1 (nearest valid: 1); \
         quantity 0.5 is below the minimum 1; \
         notional 50.685 is below the minimum 1000 (smallest valid quantity: 10)"
    );
    let json = serde_json::to_value(v).unwrap();
    assert_eq!(json[0]["rule"], "price_off_tick");
    assert_eq!(json[0]["below"], "101.30");
    assert_eq!(json[3]["min_quantity"], "10");

    let v = rules.validate(Side::Buy, p("10"), "200000".parse().unwrap()).unwrap_err();
    assert_eq!(v.to_string(), "quantity 200000 is above the maximum 100000");
}

#[test]
fn rules_toml_errors_say_where() {
    let err = InstrumentRules::from_toml("currency = \"TRY\"\ntick_table = { preset = \"bist\" }\n[lot]\nstep = 1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 4") && err.contains("JSON strings"), "{err}");
    let err =
        InstrumentRules::from_toml("currency = \"XYZ\"\ntick_table = { preset = \"bist\" }\n[lot]\nstep = \"1\"\n")
            .unwrap_err()
            .to_string();
    assert!(err.contains("unknown currency code \"XYZ\""), "{err}");
}

#[test]
fn strict_parse_rejects_through_every_type() {
    for bad in ["", " 1", "1 ", "1e5", "1E5", "1_000", "NaN", "inf", "-Infinity", "1,5", "+1", ".5", "1.", "0x1"] {
        assert!(bad.parse::<Price>().is_err(), "price {bad:?}");
        assert!(bad.parse::<Quantity>().is_err(), "quantity {bad:?}");
        assert!(format!("{bad} TRY").parse::<Money>().is_err(), "money {bad:?}");
    }
    assert!("0.00000000000000000000000000001".parse::<Price>().is_err());
    assert!("-1".parse::<Price>().is_err() && "0".parse::<Price>().is_err());
    assert!("-0.01".parse::<Quantity>().is_err());
    assert_eq!("0".parse::<Quantity>().unwrap(), Quantity::ZERO);
}

#[test]
fn serde_refuses_json_numbers_with_an_explanation() {
    let err = serde_json::from_str::<Price>("101.3").unwrap_err().to_string();
    assert!(err.contains("floating point") && err.contains("send decimals as JSON strings"), "{err}");
    let err = serde_json::from_str::<Quantity>("100").unwrap_err().to_string();
    assert!(err.contains("integer") && err.contains("JSON strings"), "{err}");
    let err = serde_json::from_str::<Price>("\"0\"").unwrap_err().to_string();
    assert!(err.contains("price must be greater than zero"), "{err}");
    let err = serde_json::from_str::<Price>("\"1e3\"").unwrap_err().to_string();
    assert!(err.contains("exponent"), "{err}");
    assert_eq!(serde_json::from_str::<Side>("\"sell\"").unwrap(), Side::Sell);
    assert_eq!(serde_json::to_string(&Currency::JPY).unwrap(), "\"JPY\"");
}

#[test]
fn money_mul_rounds_once_from_the_exact_product() {
    let m = Money::new(d("0.01"), Currency::TRY);
    // 0.01 * 0.5000000000000000000000000001 = 0.005000000000000000000000000001:
    // just above the tie. rust_decimal's own product rounds it to 0.0050 first,
    // which would then round to 0.00.
    let factor = d("0.5000000000000000000000000001");
    assert_eq!(m.mul(factor, Rounding::HalfEven).unwrap().to_string(), "0.01 TRY");
    assert_eq!(m.mul(d("0.5"), Rounding::HalfEven).unwrap().to_string(), "0.00 TRY");
    assert_eq!(m.mul(d("0.5"), Rounding::HalfUp).unwrap().to_string(), "0.01 TRY");
    let yen = Money::new(d("1005"), Currency::JPY);
    assert_eq!(yen.mul(d("0.001"), Rounding::HalfEven).unwrap().to_string(), "1 JPY");
    assert_eq!(yen.mul(d("-0.0015"), Rounding::Floor).unwrap().to_string(), "-2 JPY");
}

fn q(s: &str) -> Quantity {
    s.parse().unwrap()
}

/// 28 fractional digits are legal input; the trailing zeros must not make an
/// exact product overflow.
#[test]
fn trailing_zeros_do_not_overflow_exact_products() {
    let qty = q("100.00000000000000000000000");
    assert_eq!(spark_money::notional(p("101.30"), qty), Some(d("10130")));
    // 101.30 * 100 with 26 zeros: the raw product has 28 places and a
    // 33-digit mantissa.
    assert_eq!(spark_money::notional(p("101.30"), q("100.00000000000000000000000000")), Some(d("10130")));
    // The everyday case keeps its natural scale.
    assert_eq!(spark_money::notional(p("101.30"), q("100")).unwrap().to_string(), "10130.00");

    let rules = InstrumentRules::from_toml(
        "currency = \"TRY\"\ntick_table = { preset = \"bist\" }\nmin_notional = \"10130\"\n[lot]\nstep = \"1\"\n",
    )
    .unwrap();
    assert!(rules.validate(Side::Buy, p("101.30"), qty).is_ok());
    let stricter = InstrumentRules::from_toml(
        "currency = \"TRY\"\ntick_table = { preset = \"bist\" }\nmin_notional = \"10131\"\n[lot]\nstep = \"1\"\n",
    )
    .unwrap();
    let violations = stricter.validate(Side::Buy, p("101.30"), qty).unwrap_err();
    assert!(
        matches!(violations.iter().next(), Some(Violation::NotionalBelowMin { notional: Some(n), .. }) if *n == d("10130")),
        "{violations:?}"
    );

    // mul_div: the raw intermediate a * b * 10^k overflows 128 bits.
    let avg = spark_money::mul_div(
        d("10130.000000000000000000000"),
        d("1.0000000000000000000000000000"),
        d("100.00000000000000000000000000"),
        2,
        Rounding::HalfEven,
    )
    .unwrap();
    assert_eq!(avg.to_string(), "101.30");

    // Money: the sum fits once the zeros are gone.
    let one = Money::new(d("1.0000000000000000000000000000"), Currency::TRY);
    assert_eq!(one.add(&Money::new(d("10"), Currency::TRY)).unwrap().amount(), d("11"));
    assert_eq!(one.mul(d("100.00000000000000000000000000"), Rounding::HalfEven).unwrap().to_string(), "100.00 TRY");

    // Lot alignment: the common scale of 10^11 and a 28-place step overflows.
    let lot = LotSize::step(q("1.0000000000000000000000000000")).unwrap();
    assert!(lot.is_valid(q("100000000000")));
    assert_eq!(lot.align(q("100000000000.5"), LotRounding::Down).unwrap(), q("100000000000"));
}

/// `is_met` compares the exact product, never a rounded one.
#[test]
fn min_notional_is_exact() {
    let one = spark_money::MinNotional::new(d("1")).unwrap();
    // (1 + 1e-28) * (1 - 1e-28) = 1 - 1e-56: a hair below 1. rust_decimal's
    // product rounds it to 1, which used to pass.
    assert!(!one.is_met(p("1.0000000000000000000000000001"), q("0.9999999999999999999999999999")));
    assert!(one.is_met(p("1.0000000000000000000000000001"), q("1")));
    assert!(one.is_met(p("0.5000000000000000000000000000"), q("2.0000000000000000000000000000")));
    assert!(!one.is_met(p("0.4999999999999999999999999999"), q("2.0000000000000000000000000000")));
    // A product far above Decimal::MAX meets any minimum.
    let max = spark_money::MinNotional::new(Decimal::MAX).unwrap();
    assert!(max.is_met(p("79228162514264337593543950335"), q("2")));
    assert!(!max.is_met(p("79228162514264337593543950335"), q("0.9999999999999999999999999999")));
    // Zero quantity meets only a zero minimum.
    assert!(!one.is_met(p("101.30"), q("0")));
    assert!(spark_money::MinNotional::new(d("0")).unwrap().is_met(p("101.30"), q("0")));
}

/// Two long mantissas (20 digits of money times a 28-place factor) have an
/// exact product wider than 128 bits whose rounded result still fits: it is
/// rounded from the exact digits, not refused as an overflow.
#[test]
fn money_mul_of_long_mantissas_rounds_instead_of_refusing() {
    let amount = Money::new(d("12345678901234567890.12"), Currency::TRY);
    let factor = d("1.2345678901234567890123456789");
    // Exact: 15241578753238836750.491083921833866813431672002468.
    assert_eq!(amount.mul(factor, Rounding::HalfEven).unwrap().to_string(), "15241578753238836750.49 TRY");
    assert_eq!(amount.mul(factor, Rounding::Up).unwrap().to_string(), "15241578753238836750.50 TRY");
    assert_eq!(amount.mul(-factor, Rounding::Floor).unwrap().to_string(), "-15241578753238836750.50 TRY");
    // A result beyond Decimal::MAX is still an overflow, never a wrap.
    let huge = Money::new(d("79228162514264337593543950335"), Currency::TRY);
    assert!(huge.mul(d("1.0000000000000000000000000001"), Rounding::Down).is_err());
}
