//! The position arithmetic against an independent model: a plain fold over
//! fills that keeps the same average-cost books its own way.

use proptest::prelude::*;
use spark_money::{Decimal, Price, Rounding, mul_div};
use spark_positions::Step;
use spark_positions::model::{Book, step};

/// The independent model: an explicit list of per-unit lots is avoided on
/// purpose (average cost, not FIFO); it tracks quantity, cost and realized
/// PnL directly and closes through zero in two legs.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Model {
    pub(crate) qty: Decimal,
    pub(crate) cost: Decimal,
    pub(crate) realized: Decimal,
    pub(crate) cash: Decimal,
    /// The instrument's price scale, the fewest places a reduction's
    /// share of the cost is rounded to.
    pub(crate) price_scale: u32,
}

impl Model {
    pub(crate) fn with_price_scale(price_scale: u32) -> Model {
        Model { price_scale, ..Model::default() }
    }

    pub(crate) fn apply(&mut self, q: Decimal, p: Decimal) {
        self.cash -= q * p;
        let mut q = q;
        // Closing leg, if the fill goes against the position.
        if !self.qty.is_zero() && (self.qty > Decimal::ZERO) != (q > Decimal::ZERO) {
            let closing = if q.abs() < self.qty.abs() { q } else { -self.qty };
            // The share is rounded to the places the exact cost needs, but
            // never fewer than the price scale: a value rule, blind to how
            // many trailing zeros the fills were written with.
            let dp = self.cost.normalize().scale().max(self.price_scale);
            let share = if closing.abs() == self.qty.abs() {
                self.cost
            } else {
                mul_div(self.cost, closing.abs(), self.qty.abs(), dp, Rounding::HalfEven).unwrap()
            };
            self.realized += -closing * p - share;
            self.cost -= share;
            self.qty += closing;
            q -= closing;
        }
        if !q.is_zero() {
            self.qty += q;
            self.cost += q * p;
        }
    }
}

/// The price scale of the generated fills (prices have 0 to 3 places).
const PRICE_SCALE: u32 = 3;

fn book_after(s: &Step) -> Book {
    match *s {
        Step::Open(b) | Step::Increase(b) | Step::Reduce(b) | Step::Close(b) => b,
        Step::Flip { opened, .. } => opened,
    }
}

fn fills() -> impl Strategy<Value = Vec<(Decimal, Price)>> {
    prop::collection::vec(
        (-500i64..=500, 1i64..=100_000, 0u32..=2, 0u32..=3).prop_filter_map("non-zero", |(q, p, qs, ps)| {
            (q != 0).then(|| (Decimal::new(q, qs), Price::new(Decimal::new(p, ps)).unwrap()))
        }),
        1..60,
    )
}

proptest! {
    #[test]
    fn step_matches_the_model_for_any_fills(fills in fills()) {
        let mut model = Model::with_price_scale(PRICE_SCALE);
        let mut current: Option<Book> = None;
        // Realized PnL of positions closed so far (flips start new books).
        let mut banked = Decimal::ZERO;
        for (q, p) in fills {
            model.apply(q, p.get());
            let s = step(current, q, p, PRICE_SCALE).unwrap();
            if let Step::Flip { closed, .. } = s {
                banked += closed.realized;
            }
            if let Step::Close(b) = s {
                banked += b.realized;
            }
            let b = book_after(&s);
            current = (!b.quantity.is_zero()).then_some(b);
            let open_realized = current.map_or(Decimal::ZERO, |b| b.realized);
            prop_assert_eq!(b.quantity, model.qty);
            prop_assert_eq!(b.cost_basis, model.cost);
            prop_assert_eq!(banked + open_realized, model.realized);
            // The exact invariant, whatever the rounding.
            prop_assert_eq!(model.realized, model.cost + model.cash);
        }
        if model.qty.is_zero() {
            prop_assert_eq!(model.realized, model.cash, "flat: realized is the cash flow");
        }
    }
}

/// `v` written with `extra` more trailing zeros (as many as a Decimal holds).
fn padded(v: Decimal, extra: u32) -> Decimal {
    let mut v = v;
    v.rescale((v.scale() + extra).min(28));
    v
}

proptest! {
    /// `10.1` and `10.10`, `1` and `1.0000000000000000000000000000` are the
    /// same number: the same fills written with other trailing zeros give
    /// the same quantities, costs and realized PnL at every step.
    #[test]
    fn trailing_zeros_change_no_step(fills in fills(), pads in prop::collection::vec((0u32..=28, 0u32..=28), 60)) {
        let (mut plain, mut padded_book): (Option<Book>, Option<Book>) = (None, None);
        for ((q, p), (qp, pp)) in fills.into_iter().zip(pads) {
            let a = step(plain, q, p, PRICE_SCALE).unwrap();
            let b = step(padded_book, padded(q, qp), Price::new(padded(p.get(), pp)).unwrap(), PRICE_SCALE).unwrap();
            let (x, y) = (book_after(&a), book_after(&b));
            prop_assert_eq!(std::mem::discriminant(&a), std::mem::discriminant(&b));
            prop_assert_eq!((x.quantity, x.cost_basis, x.realized), (y.quantity, y.cost_basis, y.realized));
            plain = (!x.quantity.is_zero()).then_some(x);
            padded_book = (!y.quantity.is_zero()).then_some(y);
        }
    }
}

/// Buy 1 at 10.1 and 2 at 10.0, sell 1 at 10: the cost taken out,
/// 30.1 / 3 = 10.0333…, is rounded to the price scale (10.03) however the
/// prices were written; it used to be rounded to the places of the cost as
/// written (10.0 from `10.1`, 10.03 from `10.10`).
#[test]
fn reduction_rounds_to_the_price_scale_not_to_the_written_places() {
    let d = |s: &str| spark_money::parse_decimal(s).unwrap();
    let p = |s: &str| Price::new(d(s)).unwrap();
    for (a, b) in [("10.1", "10.0"), ("10.10", "10.00"), ("10.100000", "10")] {
        let Step::Open(x) = step(None, d("1"), p(a), 2).unwrap() else { panic!() };
        let Step::Increase(x) = step(Some(x), d("2"), p(b), 2).unwrap() else { panic!() };
        let Step::Reduce(x) = step(Some(x), d("-1"), p("10"), 2).unwrap() else { panic!() };
        assert_eq!((x.cost_basis, x.realized), (d("20.07"), d("-0.03")), "{a} {b}");
    }
}
