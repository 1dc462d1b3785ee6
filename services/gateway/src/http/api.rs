//! The route table: every REST operation once, with what the OpenAPI document says about it
//! and the handler that serves it. [`super::router`] mounts the handlers; [`openapi`]
//! generates OpenAPI 3.0 from the same entries, with the bodies' JSON Schemas derived by
//! schemars from the Rust types.

use axum::routing::{get, post, MethodRouter};
use hcp_domain::WorkloadState;
use schemars::generate::SchemaSettings;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::views::*;
use super::{admin, economics, inference, resources, workloads, AppState};
use crate::error::ErrorBody;

/// Produces a schema (a `$ref` into `components/schemas` for named types).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The schema of `T`.
fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// HTTP method of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
        }
    }
}

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key needed.
    Public,
    /// A tenant's key or the admin key.
    Any,
    /// A tenant's key.
    Tenant,
    /// The admin key.
    Admin,
}

/// Where a parameter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    /// In the path.
    Path,
    /// In the query string.
    Query,
    /// A header.
    Header,
}

/// A parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// Name.
    pub name: &'static str,
    /// Location.
    pub location: In,
    /// Whether it must be present.
    pub required: bool,
    /// What it means.
    pub description: &'static str,
    /// Its schema.
    pub schema: SchemaFn,
}

/// A documented response.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// What it means.
    pub description: &'static str,
    /// Its body.
    pub body: SchemaFn,
}

/// One REST operation.
#[derive(Debug)]
pub struct Operation {
    /// Method.
    pub method: Method,
    /// Path template (axum and OpenAPI share the `{name}` syntax).
    pub path: &'static str,
    /// OpenAPI operation id.
    pub operation_id: &'static str,
    /// Tag (groups operations in viewers).
    pub tag: &'static str,
    /// One line.
    pub summary: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Parameters.
    pub params: Vec<Param>,
    /// JSON request body.
    pub body: Option<SchemaFn>,
    /// Responses (errors included).
    pub replies: Vec<Reply>,
    /// The handler, as a method router for `path`.
    pub handler: fn() -> MethodRouter<AppState>,
}

fn workload_id_param() -> Param {
    Param {
        name: "workload_id",
        location: In::Path,
        required: true,
        description: "The workload's id (UUID).",
        schema: schema::<uuid::Uuid>,
    }
}

fn state_schema(_: &mut SchemaGenerator) -> Schema {
    let names: Vec<&str> = WorkloadState::ALL.iter().map(|s| s.as_str()).collect();
    json_schema!({ "type": "string", "enum": names })
}

fn kind_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "enum": ["realtime_inference", "batch_inference", "training", "unclassified"]
    })
}

fn reply(status: u16, description: &'static str, body: SchemaFn) -> Reply {
    Reply {
        status,
        description,
        body,
    }
}

fn error(status: u16, description: &'static str) -> Reply {
    reply(status, description, schema::<ErrorBody>)
}

/// Errors every authenticated operation may return.
fn auth_errors(access: Access) -> Vec<Reply> {
    let mut v = vec![
        error(401, "Missing or invalid API key."),
        error(429, "Over the tenant's rate limit; see `Retry-After`."),
    ];
    if matches!(access, Access::Admin | Access::Tenant) {
        v.push(error(403, "The key may not call this operation."));
    }
    v
}

/// Every operation of the API.
pub fn operations() -> Vec<Operation> {
    let workload_command =
        |id: &'static str, path: &'static str, summary: &'static str, h| Operation {
            method: Method::Post,
            path,
            operation_id: id,
            tag: "workloads",
            summary,
            access: Access::Any,
            params: vec![workload_id_param()],
            body: None,
            replies: vec![
                reply(202, "Accepted: the event is recorded.", schema::<Accepted>),
                error(400, "The workload id is not a UUID."),
                error(404, "No such workload (or another tenant's)."),
                error(409, "Not allowed in the workload's state."),
            ],
            handler: h,
        };
    vec![
        Operation {
            method: Method::Get,
            path: "/api/v1/openapi.json",
            operation_id: "openapi",
            tag: "meta",
            summary: "This document.",
            access: Access::Public,
            params: vec![],
            body: None,
            replies: vec![reply(200, "The OpenAPI document.", schema::<Value>)],
            handler: || get(super::openapi_document),
        },
        Operation {
            method: Method::Post,
            path: "/api/v1/workloads",
            operation_id: "submitWorkload",
            tag: "workloads",
            summary: "Submit a workload (idempotent with `Idempotency-Key` or `request_id`).",
            access: Access::Tenant,
            params: vec![Param {
                name: "Idempotency-Key",
                location: In::Header,
                required: false,
                description: "1-255 visible ASCII characters. The same key within a tenant \
                    returns the first workload and records nothing new; reused with a \
                    different body it is refused (422).",
                schema: schema::<String>,
            }],
            body: Some(schema::<SubmitWorkload>),
            replies: vec![
                reply(
                    202,
                    "Accepted (or replayed: `Idempotent-Replayed: true`).",
                    schema::<Accepted>,
                ),
                error(400, "Invalid body; `fields` names what is wrong."),
                error(422, "Idempotency key reused with a different request."),
            ],
            handler: || post(workloads::submit),
        },
        Operation {
            method: Method::Get,
            path: "/api/v1/workloads",
            operation_id: "listWorkloads",
            tag: "workloads",
            summary: "List workloads, newest first (the admin sees every tenant's).",
            access: Access::Any,
            params: vec![
                Param {
                    name: "state",
                    location: In::Query,
                    required: false,
                    description: "Only workloads in this state.",
                    schema: state_schema,
                },
                Param {
                    name: "kind",
                    location: In::Query,
                    required: false,
                    description: "Only workloads of this class.",
                    schema: kind_schema,
                },
                Param {
                    name: "limit",
                    location: In::Query,
                    required: false,
                    description: "Page size, 1-200 (default 50).",
                    schema: schema::<u32>,
                },
                Param {
                    name: "cursor",
                    location: In::Query,
                    required: false,
                    description: "`next_cursor` of the previous page.",
                    schema: schema::<String>,
                },
            ],
            body: None,
            replies: vec![
                reply(200, "A page of workloads.", schema::<WorkloadPage>),
                error(400, "A parameter is invalid; `fields` names it."),
            ],
            // Merged by axum with `submitWorkload`'s POST on the same path.
            handler: || get(workloads::list),
        },
        Operation {
            method: Method::Get,
            path: "/api/v1/workloads/{workload_id}",
            operation_id: "getWorkload",
            tag: "workloads",
            summary: "One workload (read-your-writes: folded from its events when the board lags).",
            access: Access::Any,
            params: vec![workload_id_param()],
            body: None,
            replies: vec![
                reply(200, "The workload.", schema::<WorkloadView>),
                error(400, "The workload id is not a UUID."),
                error(404, "No such workload (or another tenant's)."),
            ],
            handler: || get(workloads::get_one),
        },
        Operation {
            method: Method::Get,
            path: "/api/v1/workloads/{workload_id}/status",
            operation_id: "getWorkloadStatus",
            tag: "workloads",
            summary: "State, queue position, ETA and progress.",
            access: Access::Any,
            params: vec![workload_id_param()],
            body: None,
            replies: vec![
                reply(200, "The status.", schema::<StatusView>),
                error(400, "The workload id is not a UUID."),
                error(404, "No such workload (or another tenant's)."),
            ],
            handler: || get(workloads::status),
        },
        Operation {
            method: Method::Get,
            path: "/api/v1/workloads/{workload_id}/result",
            operation_id: "getWorkloadResult",
            tag: "inference",
            summary: "What a completed workload produced (embeddings of its texts).",
            access: Access::Any,
            params: vec![workload_id_param()],
            body: None,
            replies: vec![
                reply(200, "The embeddings.", schema::<EmbeddingsView>),
                error(400, "The workload id is not a UUID."),
                error(
                    404,
                    "No such workload (or another tenant's), or it produced no output.",
                ),
                error(
                    409,
                    "Not completed yet (`not_ready`), or failed or cancelled (the reason).",
                ),
            ],
            handler: || get(inference::result),
        },
        Operation {
            method: Method::Post,
            path: "/api/v1/embeddings",
            operation_id: "embed",
            tag: "inference",
            summary: "Embed texts now: a real-time inference workload, answered when done.",
            access: Access::Tenant,
            params: vec![Param {
                name: "Idempotency-Key",
                location: In::Header,
                required: false,
                description: "As for `submitWorkload`: a retry with the same key waits for \
                    the same workload instead of running another.",
                schema: schema::<String>,
            }],
            body: Some(schema::<EmbedRequest>),
            replies: vec![
                reply(
                    200,
                    "The embeddings, in input order.",
                    schema::<EmbeddingsView>,
                ),
                reply(
                    202,
                    "Not done within `wait_ms`: poll `Location` (the workload's result).",
                    schema::<Accepted>,
                ),
                error(
                    400,
                    "Invalid body (`fields` names what is wrong), or a model other than \
                     all-MiniLM-L6-v2.",
                ),
                error(
                    409,
                    "The workload failed or was cancelled; the reason is given.",
                ),
                error(422, "Idempotency key reused with a different request."),
            ],
            handler: || post(inference::embed),
        },
        workload_command(
            "cancelWorkload",
            "/api/v1/workloads/{workload_id}/cancel",
            "Cancel a workload that has not finished.",
            || post(workloads::cancel),
        ),
        workload_command(
            "pauseWorkload",
            "/api/v1/workloads/{workload_id}/pause",
            "Pause a running interruptible workload (its GPUs stay allocated).",
            || post(workloads::pause),
        ),
        workload_command(
            "resumeWorkload",
            "/api/v1/workloads/{workload_id}/resume",
            "Resume a paused workload.",
            || post(workloads::resume),
        ),
        Operation {
            method: Method::Get,
            path: "/api/v1/queue",
            operation_id: "getQueue",
            tag: "workloads",
            summary: "Queued workloads per priority (the caller's; the admin's: all).",
            access: Access::Any,
            params: vec![],
            body: None,
            replies: vec![reply(200, "Queue depth.", schema::<QueueView>)],
            handler: || get(workloads::queue),
        },
        Operation {
            method: Method::Get,
            path: "/api/v1/resources",
            operation_id: "listResources",
            tag: "resources",
            summary: "Workers and their GPUs with their state.",
            access: Access::Any,
            params: vec![],
            body: None,
            replies: vec![reply(200, "The fleet.", schema::<ResourceList>)],
            handler: || get(resources::list),
        },
        Operation {
            method: Method::Get,
            path: "/api/v1/resources/summary",
            operation_id: "getResourceSummary",
            tag: "resources",
            summary: "GPUs total / allocated / available / unavailable, utilisation, by model.",
            access: Access::Any,
            params: vec![],
            body: None,
            replies: vec![reply(200, "The summary.", schema::<ResourceSummary>)],
            handler: || get(resources::summary),
        },
        Operation {
            method: Method::Get,
            path: "/api/v1/resources/{worker_id}",
            operation_id: "getWorker",
            tag: "resources",
            summary: "One worker and its GPUs.",
            access: Access::Any,
            params: vec![Param {
                name: "worker_id",
                location: In::Path,
                required: true,
                description: "The worker's id.",
                schema: schema::<String>,
            }],
            body: None,
            replies: vec![
                reply(200, "The worker.", schema::<WorkerView>),
                error(404, "No such worker."),
            ],
            handler: || get(resources::one),
        },
        Operation {
            method: Method::Post,
            path: "/api/v1/admin/tenants",
            operation_id: "createTenant",
            tag: "admin",
            summary: "Create a tenant.",
            access: Access::Admin,
            params: vec![],
            body: Some(schema::<CreateTenant>),
            replies: vec![
                reply(201, "Created.", schema::<TenantView>),
                error(400, "Invalid body; `fields` names what is wrong."),
                error(409, "The id is taken."),
            ],
            handler: || post(admin::create_tenant),
        },
        Operation {
            method: Method::Post,
            path: "/api/v1/admin/tenants/{tenant_id}/keys",
            operation_id: "createApiKey",
            tag: "admin",
            summary: "Create an API key for a tenant; the key is returned once.",
            access: Access::Admin,
            params: vec![Param {
                name: "tenant_id",
                location: In::Path,
                required: true,
                description: "The tenant.",
                schema: schema::<String>,
            }],
            body: None,
            replies: vec![
                reply(201, "Created: store the key now.", schema::<CreatedKey>),
                error(404, "No such tenant."),
            ],
            handler: || post(admin::create_key),
        },
        Operation {
            method: Method::Get,
            path: "/api/v1/market/prices",
            operation_id: "listMarketPrices",
            tag: "economics",
            summary: "The latest value of every market series (energy, hashprice, GPU rates).",
            access: Access::Any,
            params: vec![],
            body: None,
            replies: vec![reply(
                200,
                "One value per series.",
                schema::<economics::MarketPriceList>,
            )],
            handler: || get(economics::prices),
        },
        Operation {
            method: Method::Get,
            path: "/api/v1/market/prices/{series}",
            operation_id: "getMarketSeries",
            tag: "economics",
            summary: "A market series' values, oldest first.",
            access: Access::Any,
            params: vec![
                Param {
                    name: "series",
                    location: In::Path,
                    required: true,
                    description: "Series name, e.g. `ercot.dam.LZ_WEST` or `btc.hashprice`.",
                    schema: schema::<String>,
                },
                Param {
                    name: "from",
                    location: In::Query,
                    required: false,
                    description: "RFC 3339: values from this interval start on (default: \
                        the newest `limit`).",
                    schema: schema::<String>,
                },
                Param {
                    name: "to",
                    location: In::Query,
                    required: false,
                    description: "RFC 3339: values before this interval start.",
                    schema: schema::<String>,
                },
                Param {
                    name: "limit",
                    location: In::Query,
                    required: false,
                    description: "Most values, 1-10000 (default 500).",
                    schema: schema::<u32>,
                },
            ],
            body: None,
            replies: vec![
                reply(200, "The values.", schema::<economics::MarketHistory>),
                error(400, "A parameter is invalid; `fields` names it."),
                error(404, "No such series."),
            ],
            handler: || get(economics::history),
        },
        Operation {
            method: Method::Get,
            path: "/api/v1/profitability",
            operation_id: "getProfitability",
            tag: "economics",
            summary: "Margin per site and resource at the latest prices, with a recommendation.",
            access: Access::Any,
            params: vec![],
            body: None,
            replies: vec![reply(
                200,
                "Per site and resource; `missing` says what prices are not known yet.",
                schema::<economics::Profitability>,
            )],
            handler: || get(economics::profitability),
        },
        Operation {
            method: Method::Get,
            path: "/api/v1/decisions",
            operation_id: "listDecisions",
            tag: "economics",
            summary: "The optimizer's decisions, newest first, with their confirmations.",
            access: Access::Any,
            params: vec![
                Param {
                    name: "site",
                    location: In::Query,
                    required: false,
                    description: "Only this site's.",
                    schema: schema::<String>,
                },
                Param {
                    name: "limit",
                    location: In::Query,
                    required: false,
                    description: "Most decisions, 1-500 (default 50).",
                    schema: schema::<u32>,
                },
            ],
            body: None,
            replies: vec![
                reply(200, "Decisions.", schema::<economics::DecisionList>),
                error(400, "A parameter is invalid; `fields` names it."),
            ],
            handler: || get(economics::decisions),
        },
    ]
}

fn location(l: In) -> &'static str {
    match l {
        In::Path => "path",
        In::Query => "query",
        In::Header => "header",
    }
}

/// Generates the OpenAPI 3.0 document from [`operations`].
pub fn openapi() -> Value {
    let mut g = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    for op in operations() {
        let mut o = Map::new();
        o.insert("operationId".into(), json!(op.operation_id));
        o.insert("summary".into(), json!(op.summary));
        o.insert("tags".into(), json!([op.tag]));
        if op.access == Access::Public {
            o.insert("security".into(), json!([]));
        }
        let params: Vec<Value> = op
            .params
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "in": location(p.location),
                    "required": p.required,
                    "description": p.description,
                    "schema": (p.schema)(&mut g),
                })
            })
            .collect();
        if !params.is_empty() {
            o.insert("parameters".into(), Value::Array(params));
        }
        if let Some(body) = op.body {
            o.insert(
                "requestBody".into(),
                json!({
                    "required": true,
                    "content": { "application/json": { "schema": body(&mut g) } },
                }),
            );
        }
        let mut replies = op.replies.clone();
        if op.access != Access::Public {
            replies.extend(auth_errors(op.access));
        }
        let mut responses = Map::new();
        for r in replies {
            responses.insert(
                r.status.to_string(),
                json!({
                    "description": r.description,
                    "content": { "application/json": { "schema": (r.body)(&mut g) } },
                }),
            );
        }
        o.insert("responses".into(), Value::Object(responses));
        let entry = paths
            .entry(op.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(methods) = entry {
            methods.insert(op.method.as_str().to_owned(), Value::Object(o));
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "HCP gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Submit AI workloads, follow them through the queue, and see the \
                GPU fleet. Authenticate with `Authorization: Bearer <key>`. Errors are \
                `{\"error\": {\"code\", \"message\", \"fields\": [{\"field\", \"message\"}]}}`.",
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "schemas": g.take_definitions(true),
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_in_the_document_with_resolvable_schemas() {
        let doc = openapi();
        let text = doc.to_string();
        for op in operations() {
            assert!(
                doc["paths"][op.path][op.method.as_str()].is_object(),
                "{} {} missing",
                op.method.as_str(),
                op.path
            );
        }
        // Every $ref points at a component that exists.
        let components = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(components.contains_key(name), "dangling $ref {name}");
        }
        assert!(components.contains_key("SubmitWorkload"));
        assert!(components.contains_key("ErrorBody"));
    }

    #[test]
    fn operation_ids_and_method_paths_are_unique() {
        let ops = operations();
        let ids: std::collections::HashSet<_> = ops.iter().map(|o| o.operation_id).collect();
        assert_eq!(ids.len(), ops.len());
        let routes: std::collections::HashSet<_> = ops.iter().map(|o| (o.method, o.path)).collect();
        assert_eq!(routes.len(), ops.len());
    }
}
