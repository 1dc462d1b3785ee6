//! The gateway's own tables: tenants, API keys (hashes only) and idempotency records. Small
//! named functions taking an executor, so callers choose the transaction.

use std::collections::HashMap;

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

/// One idempotency key to claim: `(tenant, key) → workload`, with the request's hash.
#[derive(Debug, Clone, Copy)]
pub struct KeyRequest<'a> {
    /// The tenant.
    pub tenant_id: &'a str,
    /// The key within the tenant.
    pub key: &'a str,
    /// The workload the key maps to if it is new.
    pub workload_id: Uuid,
    /// Fingerprint of the request.
    pub request_hash: &'a [u8; 32],
    /// `rest` or `kafka`.
    pub source: &'a str,
}

/// Records `(tenant, key) → workload` for every request whose key does not exist yet, in one
/// statement, and reads the first claim of every other one in a second; the answers are in
/// input order. Keys are inserted in `(tenant, key)` order, so two concurrent groups wait on
/// each other's keys in one order (no deadlock). A concurrent claim of the same key waits on
/// the unique index until the first transaction ends, then sees its row. A key given twice in
/// one call maps to its first request's workload; the second sees it as `Existing`.
#[tracing::instrument(skip_all, fields(keys = requests.len()), err)]
pub async fn claim_idempotency_keys(
    tx: &mut PgConnection,
    requests: &[KeyRequest<'_>],
) -> Result<Vec<KeyClaim>, sqlx::Error> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by(|&a, &b| {
        (requests[a].tenant_id, requests[a].key).cmp(&(requests[b].tenant_id, requests[b].key))
    });
    let tenants: Vec<&str> = order.iter().map(|&i| requests[i].tenant_id).collect();
    let keys: Vec<&str> = order.iter().map(|&i| requests[i].key).collect();
    let workloads: Vec<Uuid> = order.iter().map(|&i| requests[i].workload_id).collect();
    let hashes: Vec<&[u8]> = order
        .iter()
        .map(|&i| &requests[i].request_hash[..])
        .collect();
    let sources: Vec<&str> = order.iter().map(|&i| requests[i].source).collect();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO gateway_idempotency (tenant_id, idempotency_key, workload_id, \
             request_hash, source) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[], $4::bytea[], $5::text[]) \
         ON CONFLICT (tenant_id, idempotency_key) DO NOTHING \
         RETURNING workload_id",
    )
    .bind(&tenants)
    .bind(&keys)
    .bind(&workloads)
    .bind(&hashes)
    .bind(&sources)
    .fetch_all(&mut *tx)
    .await?;
    let inserted: std::collections::HashSet<Uuid> = inserted.into_iter().collect();
    let rest: Vec<usize> = (0..requests.len())
        .filter(|&i| !inserted.contains(&requests[i].workload_id))
        .collect();
    let mut existing: HashMap<(String, String), (Uuid, Vec<u8>)> = HashMap::new();
    if !rest.is_empty() {
        let tenants: Vec<&str> = rest.iter().map(|&i| requests[i].tenant_id).collect();
        let keys: Vec<&str> = rest.iter().map(|&i| requests[i].key).collect();
        let rows: Vec<(String, String, Uuid, Vec<u8>)> = sqlx::query_as(
            "SELECT g.tenant_id, g.idempotency_key, g.workload_id, g.request_hash \
             FROM gateway_idempotency g \
             JOIN UNNEST($1::text[], $2::text[]) AS u(tenant_id, idempotency_key) \
               ON g.tenant_id = u.tenant_id AND g.idempotency_key = u.idempotency_key",
        )
        .bind(&tenants)
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?;
        for (tenant, key, workload_id, hash) in rows {
            existing.insert((tenant, key), (workload_id, hash));
        }
    }
    requests
        .iter()
        .map(|r| {
            if inserted.contains(&r.workload_id) {
                return Ok(KeyClaim::New);
            }
            existing
                .get(&(r.tenant_id.to_owned(), r.key.to_owned()))
                .map(|(workload_id, request_hash)| KeyClaim::Existing {
                    workload_id: *workload_id,
                    request_hash: request_hash.clone(),
                })
                .ok_or(sqlx::Error::RowNotFound)
        })
        .collect()
}
