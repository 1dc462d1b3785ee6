//! Observed market values into the `market_prices` time-series table.

use hcp_db::{ApplyError, Projection};
use hcp_events::{Envelope, Event};
use sqlx::PgConnection;

/// Observed market values into the `market_prices` time-series table.
#[derive(Debug, Clone)]
pub struct MarketPrices {
    name: String,
}

impl MarketPrices {
    /// Standard consumer name.
    pub fn new() -> Self {
        Self {
            name: "market-prices".into(),
        }
    }
}

impl Default for MarketPrices {
    fn default() -> Self {
        Self::new()
    }
}

impl Projection for MarketPrices {
    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(&self, tx: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        let Event::MarketPriceObserved(p) = &e.payload else {
            return Ok(());
        };
        if !p.value.is_finite() {
            return Err(ApplyError::Poison(format!(
                "non-finite value for {}",
                p.series
            )));
        }
        sqlx::query(
            "INSERT INTO market_prices (series, interval_start, value, unit) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (series, interval_start) DO UPDATE SET value = EXCLUDED.value, \
                 unit = EXCLUDED.unit, recorded_at = clock_timestamp()",
        )
        .bind(&p.series)
        .bind(p.interval_start)
        .bind(p.value)
        .bind(&p.unit)
        .execute(tx)
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM market_prices")
            .execute(tx)
            .await
            .map(|_| ())
    }
}
