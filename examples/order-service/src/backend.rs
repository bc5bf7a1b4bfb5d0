//! The service's one backend seam: what differs between PostgreSQL and
//! SQLite for the order service's own table, written once per backend as
//! plain statements. The order transaction itself is written once,
//! generically, in `orders.rs`, over this trait and the Spark crates' own
//! seams (`SqlStore<DB>`, `Positions<B>`, `spark_outbox::enqueue`).

use std::future::Future;

use sqlx::{PgConnection, PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool};

/// An order as its row stores it.
pub(crate) struct OrderRow<'a> {
    pub(crate) order_id: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) account_id: &'a str,
    pub(crate) symbol: &'a str,
    pub(crate) side: &'a str,
    pub(crate) quantity: &'a str,
    pub(crate) price: &'a str,
    pub(crate) created_at_ms: i64,
}

/// `order_id, status, account_id, symbol, side, price, quantity,
/// created_at_ms`, as `GET /v1/orders/{id}` reads them.
pub(crate) type FoundOrder = (String, String, String, String, String, String, String, i64);

/// A database the order service runs on: `sqlx::Postgres` or
/// `sqlx::Sqlite`. Sealed: only this module implements it.
///
/// Its supertraits are the seams of the Spark crates, so a function generic
/// over `DB: OrderBackend` can use the idempotency store, the position book
/// and the outbox without naming a backend.
pub(crate) trait OrderBackend:
    private::Sealed + spark_idempotency::SqlBackend + sqlx::Database<Connection: spark_outbox::OutboxConnection>
{
    /// The position book's backend on this database.
    type Book: spark_positions::BookBackend<Db = Self>;

    /// The statement that opens an order transaction, when it is not a
    /// plain `BEGIN`.
    const BEGIN: Option<&'static str>;

    /// Inserts an accepted order; one statement. Returns the quantity and
    /// the price as the row now holds them, as text, so the caller can see
    /// that the column kept them exactly.
    fn insert_order(
        conn: &mut Self::Connection,
        order: &OrderRow<'_>,
    ) -> impl Future<Output = Result<(String, String), sqlx::Error>> + Send;

    /// The order `order_id` of `client_id`, if there is one.
    fn find_order(
        pool: &sqlx::Pool<Self>,
        order_id: &str,
        client_id: &str,
    ) -> impl Future<Output = Result<Option<FoundOrder>, sqlx::Error>> + Send;

    /// Whether the database answers a trivial query.
    fn answers(pool: &sqlx::Pool<Self>) -> impl Future<Output = bool> + Send;
}

mod private {
    pub(crate) trait Sealed {}
}

impl private::Sealed for Postgres {}

const PG_INSERT_ORDER: &str = "INSERT INTO order_service_orders
        (order_id, client_id, account_id, symbol, side, quantity, price, status, created_at_ms)
     VALUES ($1, $2, $3, $4, $5, $6::numeric, $7::numeric, 'accepted', $8)
     RETURNING quantity::text, price::text";

const PG_FIND_ORDER: &str =
    "SELECT order_id, status, account_id, symbol, side, price::text, quantity::text, created_at_ms
     FROM order_service_orders WHERE order_id = $1 AND client_id = $2";

impl OrderBackend for Postgres {
    type Book = spark_positions::postgres::PgBackend;

    const BEGIN: Option<&'static str> = None;

    async fn insert_order(conn: &mut PgConnection, o: &OrderRow<'_>) -> Result<(String, String), sqlx::Error> {
        sqlx::query_as(PG_INSERT_ORDER)
            .bind(o.order_id)
            .bind(o.client_id)
            .bind(o.account_id)
            .bind(o.symbol)
            .bind(o.side)
            .bind(o.quantity)
            .bind(o.price)
            .bind(o.created_at_ms)
            .fetch_one(conn)
            .await
    }

    async fn find_order(pool: &PgPool, order_id: &str, client_id: &str) -> Result<Option<FoundOrder>, sqlx::Error> {
        sqlx::query_as(PG_FIND_ORDER).bind(order_id).bind(client_id).fetch_optional(pool).await
    }

    async fn answers(pool: &PgPool) -> bool {
        sqlx::query("SELECT 1").execute(pool).await.is_ok()
    }
}

impl private::Sealed for Sqlite {}

const SQLITE_INSERT_ORDER: &str = "INSERT INTO order_service_orders
        (order_id, client_id, account_id, symbol, side, quantity, price, status, created_at_ms)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'accepted', ?8)
     RETURNING CAST(quantity AS TEXT), CAST(price AS TEXT)";

/// Price and quantity as text even when a value in the row is not (SQLite
/// keeps any type in any column), so the caller sees what is there.
const SQLITE_FIND_ORDER: &str = "SELECT order_id, status, account_id, symbol, side,
        CAST(price AS TEXT), CAST(quantity AS TEXT), created_at_ms
     FROM order_service_orders WHERE order_id = ?1 AND client_id = ?2";

impl OrderBackend for Sqlite {
    type Book = spark_positions::sqlite::SqliteBackend;

    /// Takes the write lock up front, so concurrent orders queue instead of
    /// failing to upgrade a read lock (the claim reads before it writes).
    const BEGIN: Option<&'static str> = Some("BEGIN IMMEDIATE");

    async fn insert_order(conn: &mut SqliteConnection, o: &OrderRow<'_>) -> Result<(String, String), sqlx::Error> {
        sqlx::query_as(SQLITE_INSERT_ORDER)
            .bind(o.order_id)
            .bind(o.client_id)
            .bind(o.account_id)
            .bind(o.symbol)
            .bind(o.side)
            .bind(o.quantity)
            .bind(o.price)
            .bind(o.created_at_ms)
            .fetch_one(conn)
            .await
    }

    async fn find_order(pool: &SqlitePool, order_id: &str, client_id: &str) -> Result<Option<FoundOrder>, sqlx::Error> {
        sqlx::query_as(SQLITE_FIND_ORDER).bind(order_id).bind(client_id).fetch_optional(pool).await
    }

    async fn answers(pool: &SqlitePool) -> bool {
        sqlx::query("SELECT 1").execute(pool).await.is_ok()
    }
}
