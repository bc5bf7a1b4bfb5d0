//! The trading UI's client of the order service: the HTTP contract's
//! consumer. It reads only what the UI shows or decides on, so the pact
//! asks for exactly that and nothing more.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use serde::{Deserialize, Serialize};
use spark_money::{Decimal, Money, Price, Quantity, Side};
use uuid::Uuid;

/// The prefix of every problem `type` the service answers with.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:spark:problem:";

/// A new order, as the UI sends it (decimals as strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewOrder {
    /// The account to trade on.
    pub account_id: String,
    /// The instrument.
    pub symbol: String,
    /// Buy or sell.
    pub side: Side,
    /// How many.
    pub quantity: Quantity,
    /// At what price.
    pub price: Price,
}

/// An order, as the service answers it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Order {
    /// Its id.
    pub order_id: Uuid,
    /// `accepted`.
    pub status: String,
    /// The account.
    pub account_id: String,
    /// The instrument.
    pub symbol: String,
    /// Buy or sell.
    pub side: Side,
    /// The price, exactly as sent.
    pub price: Price,
    /// The quantity, exactly as sent.
    pub quantity: Quantity,
    /// When it was accepted (RFC 3339, UTC).
    pub created_at: String,
}

/// The answer to placing an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The order.
    pub order: Order,
    /// Whether this answer is a replay of the first one (`Idempotent-Replayed`):
    /// the UI then shows the order as already placed.
    pub replayed: bool,
    /// Where the order can be read (`Location`).
    pub location: String,
}

/// An open position, as the UI lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Position {
    /// The instrument.
    pub instrument: String,
    /// `open`.
    pub status: String,
    /// Signed: long is positive.
    #[serde(with = "spark_money::decimal_str")]
    pub quantity: Decimal,
    /// The average price of the open quantity.
    pub average_price: Option<Price>,
    /// Realized profit and loss, with its currency.
    pub realized_pnl: Money,
}

#[derive(Deserialize)]
struct Positions {
    positions: Vec<Position>,
}

/// One exchange rule an order broke, with the nearest valid prices when
/// the rule is the tick.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Violation {
    /// `price_off_tick`, `quantity_off_step`, …
    pub rule: String,
    /// The nearest valid price below, for a price off the tick.
    #[serde(default)]
    pub below: Option<Price>,
    /// The nearest valid price above, for a price off the tick.
    #[serde(default)]
    pub above: Option<Price>,
}

/// A problem+json answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Problem {
    /// `urn:spark:problem:<kind>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short title.
    pub title: String,
    /// The HTTP status, again.
    pub status: u16,
    /// What was wrong, for a person.
    pub detail: String,
    /// The exchange rules broken, for `order-rules`.
    #[serde(default)]
    pub violations: Vec<Violation>,
}

impl Problem {
    /// The kind the UI switches on: the `type` without its prefix.
    #[must_use]
    pub fn kind(&self) -> &str {
        self.problem_type.strip_prefix(PROBLEM_TYPE_PREFIX).unwrap_or(&self.problem_type)
    }
}

/// Why a call did not give the UI what it asked for.
#[derive(Debug)]
pub enum UiError {
    /// The service refused with a problem.
    Refused {
        /// The problem (boxed: it keeps every `Result` of the client small).
        problem: Box<Problem>,
        /// `WWW-Authenticate`, on a 401: the UI then asks for a new token.
        www_authenticate: Option<String>,
    },
    /// The answer was not what the contract says (status, headers, body).
    Unexpected(String),
    /// No answer.
    Transport(reqwest::Error),
}

impl std::fmt::Display for UiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UiError::Refused { problem, .. } => {
                write!(f, "refused with {} ({}): {}", problem.status, problem.kind(), problem.detail)
            }
            UiError::Unexpected(what) => write!(f, "unexpected answer: {what}"),
            UiError::Transport(_) => f.write_str("the order service did not answer"),
        }
    }
}

impl std::error::Error for UiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UiError::Transport(e) => Some(e),
            _ => None,
        }
    }
}

impl From<reqwest::Error> for UiError {
    fn from(e: reqwest::Error) -> UiError {
        UiError::Transport(e)
    }
}

/// The UI's client.
#[derive(Debug, Clone)]
pub struct TradingUi {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl TradingUi {
    /// A client of the service at `base` (`http://host:port`), sending
    /// `token` as a bearer token when there is one.
    ///
    /// # Errors
    ///
    /// When the HTTP client cannot be built.
    pub fn new(base: impl Into<String>, token: Option<&str>) -> Result<TradingUi, UiError> {
        // reqwest is built without a crypto provider; use ring, as the
        // workspace does. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        Ok(TradingUi { http, base: base.into().trim_end_matches('/').to_owned(), token: token.map(str::to_owned) })
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            None => request,
        }
    }

    /// Places `order` under the idempotency `key` (the UI makes one per
    /// order ticket and resends it on every retry).
    ///
    /// # Errors
    ///
    /// [`UiError::Refused`] with the service's problem.
    pub async fn place(&self, key: &str, order: &NewOrder) -> Result<Placed, UiError> {
        let body = serde_json::to_vec(order).map_err(|e| UiError::Unexpected(format!("unencodable order: {e}")))?;
        let request = self
            .http
            .post(format!("{}/v1/orders", self.base))
            .header("idempotency-key", key)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        let response = self.authorized(request).send().await?;
        let response = expect(response, 201).await?;
        let replayed = response.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| UiError::Unexpected("a 201 without Location".into()))?
            .to_owned();
        let order: Order = json(response).await?;
        if location != format!("/v1/orders/{}", order.order_id) {
            return Err(UiError::Unexpected(format!("Location {location} is not order {}", order.order_id)));
        }
        Ok(Placed { order, replayed, location })
    }

    /// Reads an order back.
    ///
    /// # Errors
    ///
    /// [`UiError::Refused`] with the service's problem (404 for an order
    /// that is not the caller's).
    pub async fn order(&self, id: &str) -> Result<Order, UiError> {
        let response = self.authorized(self.http.get(format!("{}/v1/orders/{id}", self.base))).send().await?;
        json(expect(response, 200).await?).await
    }

    /// The account's open positions.
    ///
    /// # Errors
    ///
    /// [`UiError::Refused`] with the service's problem.
    pub async fn positions(&self, account: &str) -> Result<Vec<Position>, UiError> {
        let mut url = reqwest::Url::parse(&format!("{}/v1/positions", self.base))
            .map_err(|e| UiError::Unexpected(format!("base URL {:?}: {e}", self.base)))?;
        url.query_pairs_mut().append_pair("account_id", account);
        let request = self.http.get(url);
        let response = self.authorized(request).send().await?;
        Ok(json::<Positions>(expect(response, 200).await?).await?.positions)
    }
}

/// The response when its status is `status`; a problem+json answer as
/// [`UiError::Refused`]; anything else as [`UiError::Unexpected`].
async fn expect(response: reqwest::Response, status: u16) -> Result<reqwest::Response, UiError> {
    if response.status() == status {
        return Ok(response);
    }
    let is_problem =
        response.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !is_problem {
        return Err(UiError::Unexpected(format!("{} instead of {status}, not problem+json", response.status())));
    }
    let www_authenticate = response.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let answered = response.status().as_u16();
    let problem: Problem = json(response).await?;
    if problem.status != answered || !problem.problem_type.starts_with(PROBLEM_TYPE_PREFIX) {
        return Err(UiError::Unexpected(format!("a {answered} whose problem says {problem:?}")));
    }
    Err(UiError::Refused { problem: Box::new(problem), www_authenticate })
}

async fn json<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, UiError> {
    let body = response.bytes().await?;
    serde_json::from_slice(&body)
        .map_err(|e| UiError::Unexpected(format!("{e} in {}", String::from_utf8_lossy(&body[..body.len().min(512)]))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{ACCOUNT, Backend, Provider, TOKEN};

    fn order(price: &str) -> NewOrder {
        NewOrder {
            account_id: ACCOUNT.into(),
            symbol: "THYAO".into(),
            side: Side::Buy,
            quantity: "100".parse().unwrap(),
            price: price.parse().unwrap(),
        }
    }

    /// The client against the real service, without Pact: what the
    /// contract's consumer test does against the mock, here against the
    /// provider itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_ui_client_works_against_the_real_service() {
        let p = Provider::start(Backend::Sqlite, |app| app).await.unwrap().unwrap();
        let ui = TradingUi::new(p.url(), Some(TOKEN)).unwrap();
        let first = ui.place("ui-1", &order("101.30")).await.unwrap();
        assert!(!first.replayed);
        assert_eq!((first.order.price.to_string(), first.order.status.as_str()), ("101.30".into(), "accepted"));
        let again = ui.place("ui-1", &order("101.30")).await.unwrap();
        assert!(again.replayed);
        assert_eq!(again.order, first.order);
        assert_eq!(ui.order(&first.order.order_id.to_string()).await.unwrap(), first.order);
        let positions = ui.positions(ACCOUNT).await.unwrap();
        assert_eq!(positions.len(), 1);
        assert_eq!(
            (positions[0].quantity.to_string(), positions[0].average_price.unwrap().to_string()),
            ("100".into(), "101.30".into())
        );

        let Err(UiError::Refused { problem, .. }) = ui.place("ui-2", &order("101.37")).await else { panic!() };
        assert_eq!((problem.kind(), problem.violations[0].rule.as_str()), ("order-rules", "price_off_tick"));
        assert_eq!(problem.violations[0].below.unwrap().to_string(), "101.30");
        let Err(UiError::Refused { problem, .. }) = ui.place("not a key", &order("101.30")).await else { panic!() };
        assert_eq!(problem.kind(), "idempotency-key-invalid");
        let anonymous = TradingUi::new(p.url(), None).unwrap();
        let Err(UiError::Refused { problem, www_authenticate }) = anonymous.place("ui-3", &order("101.30")).await
        else {
            panic!()
        };
        assert_eq!((problem.kind(), www_authenticate.as_deref()), ("unauthenticated", Some("Bearer")));
    }
}
