//! The gateway's own tables: tenants, API keys (hashes only) and idempotency records. Small
//! named functions taking an executor, so callers choose the transaction.

use hcp_events::Tier;
use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;
use uuid::Uuid;

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Id (also in every workload it owns).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Tier: priority boost and rate limit.
    pub tier: Tier,
    /// When it was created.
    pub created_at: OffsetDateTime,
}

type TenantRow = (String, String, String, OffsetDateTime);

fn tenant_of(row: TenantRow) -> Result<Tenant, sqlx::Error> {
    let (id, name, tier, created_at) = row;
    let tier = Tier::parse(&tier).ok_or_else(|| {
        sqlx::Error::Decode(format!("tenant {id} has an unknown tier `{tier}`").into())
    })?;
    Ok(Tenant {
        id,
        name,
        tier,
        created_at,
    })
}

/// The tenant owning a (non-revoked) key, by the key's SHA-256.
#[tracing::instrument(skip_all, err)]
pub async fn tenant_by_key_hash<'e>(
    db: impl PgExecutor<'e>,
    key_hash: &[u8; 32],
) -> Result<Option<Tenant>, sqlx::Error> {
    let row: Option<TenantRow> = sqlx::query_as(
        "SELECT t.tenant_id, t.name, t.tier, t.created_at FROM api_keys k \
         JOIN tenants t ON t.tenant_id = k.tenant_id \
         WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
    )
    .bind(&key_hash[..])
    .fetch_optional(db)
    .await?;
    row.map(tenant_of).transpose()
}

/// A tenant by id.
#[tracing::instrument(skip_all, fields(tenant_id), err)]
pub async fn tenant<'e>(
    db: impl PgExecutor<'e>,
    tenant_id: &str,
) -> Result<Option<Tenant>, sqlx::Error> {
    let row: Option<TenantRow> = sqlx::query_as(
        "SELECT tenant_id, name, tier, created_at FROM tenants WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_optional(db)
    .await?;
    row.map(tenant_of).transpose()
}

/// Creates a tenant; `None` when the id is taken.
#[tracing::instrument(skip_all, fields(tenant_id), err)]
pub async fn create_tenant<'e>(
    db: impl PgExecutor<'e>,
    tenant_id: &str,
    name: &str,
    tier: Tier,
) -> Result<Option<Tenant>, sqlx::Error> {
    let row: Option<TenantRow> = sqlx::query_as(
        "INSERT INTO tenants (tenant_id, name, tier) VALUES ($1, $2, $3) \
         ON CONFLICT (tenant_id) DO NOTHING RETURNING tenant_id, name, tier, created_at",
    )
    .bind(tenant_id)
    .bind(name)
    .bind(tier.as_str())
    .fetch_optional(db)
    .await?;
    row.map(tenant_of).transpose()
}

/// Stores a new key's hash for a tenant; returns when it was created.
#[tracing::instrument(skip_all, fields(tenant_id), err)]
pub async fn insert_key<'e>(
    db: impl PgExecutor<'e>,
    key_hash: &[u8; 32],
    key_prefix: &str,
    tenant_id: &str,
) -> Result<OffsetDateTime, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO api_keys (key_hash, key_prefix, tenant_id) VALUES ($1, $2, $3) \
         RETURNING created_at",
    )
    .bind(&key_hash[..])
    .bind(key_prefix)
    .bind(tenant_id)
    .fetch_one(db)
    .await
}

/// The outcome of claiming an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key is new: it now maps to the proposed workload id.
    New,
    /// The key was used before, for this workload and this request hash.
    Existing {
        /// The workload created the first time.
        workload_id: Uuid,
        /// Hash of the first request.
        request_hash: Vec<u8>,
    },
}

/// Records `(tenant, key) → workload` unless the key exists. A concurrent claim of the same key
/// waits on the unique index until the first transaction ends, then sees its row.
#[tracing::instrument(skip_all, fields(tenant_id), err)]
pub async fn claim_idempotency_key(
    tx: &mut PgConnection,
    tenant_id: &str,
    key: &str,
    workload_id: Uuid,
    request_hash: &[u8; 32],
    source: &str,
) -> Result<KeyClaim, sqlx::Error> {
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO gateway_idempotency (tenant_id, idempotency_key, workload_id, \
             request_hash, source) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, idempotency_key) DO NOTHING \
         RETURNING workload_id",
    )
    .bind(tenant_id)
    .bind(key)
    .bind(workload_id)
    .bind(&request_hash[..])
    .bind(source)
    .fetch_optional(&mut *tx)
    .await?;
    if inserted.is_some() {
        return Ok(KeyClaim::New);
    }
    let (workload_id, request_hash): (Uuid, Vec<u8>) = sqlx::query_as(
        "SELECT workload_id, request_hash FROM gateway_idempotency \
         WHERE tenant_id = $1 AND idempotency_key = $2",
    )
    .bind(tenant_id)
    .bind(key)
    .fetch_one(&mut *tx)
    .await?;
    Ok(KeyClaim::Existing {
        workload_id,
        request_hash,
    })
}
