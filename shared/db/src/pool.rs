//! Connection pool and migrations.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// The embedded migrations (the `migrations/` folder at the workspace root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// The `[database]` configuration section.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// `postgres://user:password@host:port/db`. Never printed.
    pub url: SecretString,
    /// Pool size.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long to wait for a connection before failing, in milliseconds.
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
}

fn default_max_connections() -> u32 {
    10
}
fn default_acquire_timeout_ms() -> u64 {
    5_000
}

impl DatabaseSettings {
    /// Settings for a URL with default pool sizing.
    pub fn from_url(url: &str) -> Self {
        Self {
            url: SecretString::from(url.to_owned()),
            max_connections: default_max_connections(),
            acquire_timeout_ms: default_acquire_timeout_ms(),
        }
    }
}

/// Opens a pool and checks that the database answers.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = settings.url.expose_secret().parse()?;
    let options = options.application_name("hcp");
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        .connect_with(options)
        .await
}

/// Applies pending migrations (forward-only).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
