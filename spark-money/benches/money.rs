//! Hot-path costs of spark-money.
//!
//! The target from the issue: `align` on the BIST table costs at most twice a
//! bare `round_dp_with_strategy` on the same value. Both are measured here on
//! values that need rounding (more places than the tick), which is the work
//! `align` has to do.

use std::fmt::Write;
use std::hint::black_box;
use std::str::FromStr;

use criterion::{Criterion, criterion_group, criterion_main};
use rust_decimal::{Decimal, RoundingStrategy};
use spark_money::{InstrumentRules, Price, Quantity, Rounding, Side, TickRounding, TickTable, parse_decimal, round};

const VALUES: [&str; 8] = ["19.995", "49.99", "101.3749", "249.95", "499.875", "999.75", "2499.5", "2503.7512"];

fn values() -> Vec<Decimal> {
    VALUES.iter().map(|s| parse_decimal(s).unwrap()).collect()
}

fn bench_round(c: &mut Criterion) {
    let values = values();
    let mut g = c.benchmark_group("round");
    g.bench_function("bare_round_dp_with_strategy", |b| {
        b.iter(|| {
            for v in &values {
                black_box(black_box(*v).round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven));
            }
        })
    });
    g.bench_function("spark_round_half_even", |b| {
        b.iter(|| {
            for v in &values {
                black_box(round(black_box(*v), 2, Rounding::HalfEven).unwrap());
            }
        })
    });
    g.finish();
}

fn bench_align(c: &mut Criterion) {
    let bist = TickTable::bist_equity();
    let prices: Vec<Price> = values().into_iter().map(|v| Price::new(v).unwrap()).collect();
    let mut g = c.benchmark_group("align");
    g.bench_function("bist_nearest", |b| {
        b.iter(|| {
            for p in &prices {
                black_box(bist.align(black_box(*p), TickRounding::Nearest).unwrap());
            }
        })
    });
    g.bench_function("bist_passive_buy", |b| {
        b.iter(|| {
            for p in &prices {
                black_box(bist.align(black_box(*p), TickRounding::Passive(Side::Buy)).unwrap());
            }
        })
    });
    g.finish();
}

fn bench_parse_format(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.bench_function("spark_parse_decimal", |b| {
        b.iter(|| {
            for s in VALUES {
                black_box(parse_decimal(black_box(s)).unwrap());
            }
        })
    });
    g.bench_function("rust_decimal_from_str", |b| {
        b.iter(|| {
            for s in VALUES {
                black_box(Decimal::from_str(black_box(s)).unwrap());
            }
        })
    });
    g.finish();

    let prices: Vec<Price> = values().into_iter().map(|v| Price::new(v).unwrap()).collect();
    let mut buf = String::with_capacity(64);
    c.bench_function("format/price_display", |b| {
        b.iter(|| {
            for p in &prices {
                buf.clear();
                write!(buf, "{}", black_box(p)).unwrap();
                black_box(&buf);
            }
        })
    });
}

fn bench_validate(c: &mut Criterion) {
    let rules = InstrumentRules::from_toml(
        "currency = \"TRY\"\ntick_table = { preset = \"bist\" }\nmin_notional = \"1000\"\n[lot]\nstep = \"1\"\nmax = \"1000000\"\n",
    )
    .unwrap();
    let good: Price = "101.30".parse().unwrap();
    let bad: Price = "101.37".parse().unwrap();
    let qty: Quantity = "100".parse().unwrap();
    let bad_qty: Quantity = "0.5".parse().unwrap();
    let mut g = c.benchmark_group("validate");
    g.bench_function("ok", |b| {
        b.iter(|| {
            black_box(rules.validate(Side::Buy, black_box(good), black_box(qty)).is_ok());
        })
    });
    g.bench_function("four_violations", |b| {
        b.iter(|| {
            black_box(rules.validate(Side::Buy, black_box(bad), black_box(bad_qty)).is_err());
        })
    });
    g.finish();
}

criterion_group!(benches, bench_round, bench_align, bench_parse_format, bench_validate);
criterion_main!(benches);
