//! The trading UI's contract: its client ([`TradingUi`]) against
//! `pact_consumer`'s mock server, which records the interactions as the
//! pact `trading-ui-order-service.json`.

use order_service_contracts::provider::{ACCOUNT, ORDER_ACCEPTED, TOKEN};
use order_service_contracts::ui::{NewOrder, TradingUi, UiError};
use pact_consumer::builders::{PactBuilder, RequestBuilder};
use pact_consumer::prelude::*;

use crate::examples::*;

fn new_order(price: &str) -> NewOrder {
    NewOrder {
        account_id: ACCOUNT.into(),
        symbol: "THYAO".into(),
        side: spark_money::Side::Buy,
        quantity: "100".parse().unwrap(),
        price: price.parse().unwrap(),
    }
}

/// `POST /v1/orders` under `key`, with the UI's token, of `body`.
fn post_order(request: &mut RequestBuilder, key: &str, body: serde_json::Value) {
    request
        .post()
        .path("/v1/orders")
        .header("Authorization", term!(BEARER, format!("Bearer {TOKEN}")))
        .header("Idempotency-Key", key)
        .header("Content-Type", "application/json")
        .json_body(body);
}

/// The accepted order as the UI reads it: its id, and every field of the
/// order exactly as sent (the service must not rescale `101.30`).
fn accepted_order() -> JsonPattern {
    json_pattern!({
        "order_id": term!(UUID, ORDER_ID),
        "status": "accepted",
        "account_id": "acc-1",
        "symbol": "THYAO",
        "side": "buy",
        "price": "101.30",
        "quantity": "100",
        "created_at": term!(RFC3339_MS, CREATED_AT),
    })
}

/// A problem+json body of `kind` with `status`.
fn problem(kind: &str, status: u16) -> JsonPattern {
    json_pattern!({
        "type": format!("urn:spark:problem:{kind}"),
        "title": like!("Title"),
        "status": status,
        "detail": like!("what was wrong"),
    })
}

fn pact() -> PactBuilder {
    let mut pact = PactBuilder::new_v4(UI, PROVIDER);
    pact.interaction(PLACE, "", |mut i| {
        i.with_key("place");
        post_order(&mut i.request, "ui-place-1", order());
        i.response
            .created()
            .header("Content-Type", "application/json")
            .header("Location", term!("^/v1/orders/[0-9a-f-]{36}$", format!("/v1/orders/{ORDER_ID}")))
            .json_body(accepted_order());
        i
    });
    pact.interaction(REPLAY, "", |mut i| {
        i.with_key("replay");
        i.given_with_params(ORDER_ACCEPTED, &accepted("ui-replay-1"));
        post_order(&mut i.request, "ui-replay-1", order());
        i.response
            .created()
            .header("Content-Type", "application/json")
            .header("Idempotent-Replayed", "true")
            .header("Location", term!("^/v1/orders/[0-9a-f-]{36}$", format!("/v1/orders/{ORDER_ID}")))
            .json_body(accepted_order());
        i
    });
    pact.interaction(READ_BACK, "", |mut i| {
        i.with_key("read-back");
        // The provider state yields the order's id, which the verifier puts
        // into the path; the mock server answers the example path.
        i.given_with_params(ORDER_ACCEPTED, &accepted("ui-read-1"));
        i.request
            .get()
            .path_from_provider_state("/v1/orders/${order_id}", format!("/v1/orders/{ORDER_ID}"))
            .header("Authorization", term!(BEARER, format!("Bearer {TOKEN}")));
        i.response.ok().header("Content-Type", "application/json").json_body(accepted_order());
        i
    });
    pact.interaction(POSITIONS, "", |mut i| {
        i.with_key("positions");
        i.given_with_params(ORDER_ACCEPTED, &accepted("ui-positions-1"));
        i.request
            .get()
            .path("/v1/positions")
            .query_param("account_id", ACCOUNT)
            .header("Authorization", term!(BEARER, format!("Bearer {TOKEN}")));
        i.response.ok().header("Content-Type", "application/json").json_body(json_pattern!({
            "account_id": "acc-1",
            "positions": each_like!({
                "instrument": "THYAO",
                "status": term!("^open$", "open"),
                "quantity": decimal("100"),
                "average_price": decimal("101.30"),
                "realized_pnl": { "amount": decimal("0"), "currency": term!("^[A-Z]{3}$", "TRY") },
            }),
        }));
        i
    });
    pact.interaction(OFF_TICK, "", |mut i| {
        i.with_key("off-tick");
        let mut off_tick = order();
        off_tick["price"] = "101.37".into();
        post_order(&mut i.request, "ui-off-tick-1", off_tick);
        let mut body = problem("order-rules", 422);
        if let JsonPattern::Object(fields) = &mut body {
            fields.insert(
                "violations".into(),
                each_like!({
                    "rule": term!("^price_off_tick$", "price_off_tick"),
                    "below": decimal("101.30"),
                    "above": decimal("101.40"),
                })
                .into(),
            );
        }
        i.response.status(422).header("Content-Type", "application/problem+json").json_body(body);
        i
    });
    pact.interaction(BAD_KEY, "", |mut i| {
        i.with_key("bad-key");
        post_order(&mut i.request, "not a key", order());
        i.response
            .status(400)
            .header("Content-Type", "application/problem+json")
            .json_body(problem("idempotency-key-invalid", 400));
        i
    });
    pact.interaction(NO_TOKEN, "", |mut i| {
        i.with_key("no-token");
        i.request
            .post()
            .path("/v1/orders")
            .header("Idempotency-Key", "ui-anonymous-1")
            .header("Content-Type", "application/json")
            .json_body(order());
        i.response
            .status(401)
            .header("Content-Type", "application/problem+json")
            .header("WWW-Authenticate", "Bearer")
            .json_body(problem("unauthenticated", 401));
        i
    });
    pact
}

fn refused(result: Result<impl std::fmt::Debug, UiError>) -> (order_service_contracts::ui::Problem, Option<String>) {
    match result {
        Err(UiError::Refused { problem, www_authenticate }) => (*problem, www_authenticate),
        other => panic!("expected a problem, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trading_ui_contract() {
    let dir = tempfile::tempdir().unwrap();
    let mut pact = pact();
    pact.with_output_dir(dir.path());
    {
        // The mock server runs on a runtime of its own, on another thread.
        let server = pact.start_mock_server(None, None);
        let base = server.url().to_string();
        let ui = TradingUi::new(&base, Some(TOKEN)).unwrap();

        let placed = ui.place("ui-place-1", &new_order("101.30")).await.unwrap();
        assert!(!placed.replayed);
        assert_eq!(
            (placed.order.price.to_string(), placed.order.quantity.to_string()),
            ("101.30".into(), "100".into())
        );
        assert_eq!(placed.location, format!("/v1/orders/{}", placed.order.order_id));

        let again = ui.place("ui-replay-1", &new_order("101.30")).await.unwrap();
        assert!(again.replayed, "the UI must see that the order was already placed");

        let read = ui.order(ORDER_ID).await.unwrap();
        assert_eq!((read.order_id.to_string().as_str(), read.status.as_str()), (ORDER_ID, "accepted"));

        let positions = ui.positions(ACCOUNT).await.unwrap();
        assert_eq!(positions.len(), 1);
        assert_eq!(positions[0].average_price.map(|p| p.to_string()).as_deref(), Some("101.30"));
        assert_eq!(positions[0].realized_pnl.currency().to_string(), "TRY");

        let (problem, _) = refused(ui.place("ui-off-tick-1", &new_order("101.37")).await);
        assert_eq!((problem.kind(), problem.status), ("order-rules", 422));
        let nearest: Vec<String> =
            problem.violations.iter().flat_map(|v| [v.below, v.above]).flatten().map(|p| p.to_string()).collect();
        assert_eq!(nearest, ["101.30", "101.40"], "the UI offers the nearest valid prices");

        let (problem, _) = refused(ui.place("not a key", &new_order("101.30")).await);
        assert_eq!(problem.kind(), "idempotency-key-invalid");

        let anonymous = TradingUi::new(&base, None).unwrap();
        let (problem, challenge) = refused(anonymous.place("ui-anonymous-1", &new_order("101.30")).await);
        assert_eq!((problem.kind(), challenge.as_deref()), ("unauthenticated", Some("Bearer")));
        // Dropping the mock server checks that every interaction was
        // exercised and writes the pact.
    }
    crate::pact_file::check(&dir.path().join(UI_PACT), UI_PACT);
}
