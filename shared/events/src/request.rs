//! The external workload request: what a customer sends over REST or produces to the
//! workload-requests topic. It is untrusted input, so it validates itself field by field.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::payload::{InferenceInput, WorkloadKind};

/// Current version of the request schema.
pub const WORKLOAD_REQUEST_VERSION: u16 = 1;

/// A request to run an AI workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRequest {
    /// Client-chosen id; resubmitting the same id is idempotent.
    pub request_id: Uuid,
    /// The tenant the workload belongs to.
    pub tenant_id: String,
    /// Workload class; inferred from the model and latency target when absent.
    #[serde(default)]
    pub kind: Option<WorkloadKind>,
    /// Model name.
    pub model: String,
    /// GPUs required (1-64), placed all-or-nothing.
    pub gpu_count: u32,
    /// Minimum GPU memory per device, in GiB.
    #[serde(default)]
    pub gpu_memory_gib: Option<u32>,
    /// Required GPU model, e.g. `H100`.
    #[serde(default)]
    pub gpu_type: Option<String>,
    /// Expected run time in seconds (1 s - 30 days).
    pub duration_s: u32,
    /// Latency target for inference, in milliseconds.
    #[serde(default)]
    pub latency_target_ms: Option<u32>,
    /// Whether the workload may be checkpointed and paused.
    #[serde(default)]
    pub interruptible: Option<bool>,
    /// Fail the request if it has not started by then (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub deadline: Option<OffsetDateTime>,
    /// Texts for an inference request to embed; the results come back with the completed
    /// workload (`GET /api/v1/workloads/{id}/result`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InferenceInput>,
}

/// Most texts in one inference request.
pub const MAX_INPUT_TEXTS: usize = 64;
/// Longest text in an inference request, bytes (the model reads at most 256 tokens).
pub const MAX_INPUT_TEXT_BYTES: usize = 4096;
/// Most text bytes in one inference request, all texts together: keeps every event that
/// carries them (and its JSON escaping) far below the broker's 1 MB message limit and within
/// the gateway's body limit.
pub const MAX_INPUT_TOTAL_BYTES: usize = 65_536;

/// One rejected field and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The JSON field name.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl WorkloadRequest {
    /// Checks every field, returning all problems at once.
    pub fn validate(&self, now: OffsetDateTime) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut reject =
            |field: &'static str, message: String| errors.push(FieldError { field, message });
        if self.tenant_id.trim().is_empty() || self.tenant_id.len() > 64 {
            reject("tenant_id", "must be 1-64 characters".into());
        }
        if self.model.trim().is_empty() || self.model.len() > 128 {
            reject("model", "must be 1-128 characters".into());
        }
        // Control characters (NUL above all) cannot be stored in PostgreSQL text or jsonb and
        // have no business in identifiers: refuse them here, as a field error.
        for (field, value) in [
            ("tenant_id", Some(self.tenant_id.as_str())),
            ("model", Some(self.model.as_str())),
            ("gpu_type", self.gpu_type.as_deref()),
        ] {
            if value.is_some_and(|v| v.chars().any(char::is_control)) {
                reject(field, "must not contain control characters".into());
            }
        }
        if !(1..=64).contains(&self.gpu_count) {
            reject("gpu_count", format!("must be 1-64, got {}", self.gpu_count));
        }
        if !(1..=30 * 24 * 3600).contains(&self.duration_s) {
            reject(
                "duration_s",
                format!("must be 1-2592000 seconds, got {}", self.duration_s),
            );
        }
        if let Some(mem) = self.gpu_memory_gib {
            if !(1..=1024).contains(&mem) {
                reject("gpu_memory_gib", format!("must be 1-1024, got {mem}"));
            }
        }
        if let Some(deadline) = self.deadline {
            if deadline <= now {
                reject("deadline", "must be in the future".into());
            }
        }
        if let Some(input) = &self.input {
            if self.kind == Some(WorkloadKind::Training) {
                reject("input", "only inference requests carry texts".into());
            }
            if !(1..=MAX_INPUT_TEXTS).contains(&input.texts.len()) {
                reject(
                    "input.texts",
                    format!(
                        "must hold 1-{MAX_INPUT_TEXTS} texts, got {}",
                        input.texts.len()
                    ),
                );
            }
            let blank = |t: &str| t.chars().all(|c| c.is_whitespace() || c.is_control());
            if let Some((i, t)) = input
                .texts
                .iter()
                .enumerate()
                .find(|(_, t)| blank(t) || t.len() > MAX_INPUT_TEXT_BYTES || t.contains('\0'))
            {
                reject(
                    "input.texts",
                    format!(
                        "text {i} must be 1-{MAX_INPUT_TEXT_BYTES} bytes of visible text without \
                         NUL, got {} bytes",
                        t.len()
                    ),
                );
            } else {
                let total: usize = input.texts.iter().map(String::len).sum();
                if total > MAX_INPUT_TOTAL_BYTES {
                    reject(
                        "input.texts",
                        format!(
                            "must hold at most {MAX_INPUT_TOTAL_BYTES} bytes in all, got {total}"
                        ),
                    );
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> WorkloadRequest {
        WorkloadRequest {
            request_id: Uuid::nil(),
            tenant_id: "acme".into(),
            kind: None,
            model: "all-MiniLM-L6-v2".into(),
            gpu_count: 1,
            gpu_memory_gib: Some(16),
            gpu_type: None,
            duration_s: 60,
            latency_target_ms: Some(50),
            interruptible: None,
            deadline: None,
            input: None,
        }
    }

    #[test]
    fn a_valid_request_passes() {
        assert_eq!(valid().validate(OffsetDateTime::now_utc()), Ok(()));
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut r = valid();
        r.gpu_count = 0;
        r.model = String::new();
        r.deadline = Some(OffsetDateTime::UNIX_EPOCH);
        let errs = r.validate(OffsetDateTime::now_utc()).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field).collect();
        assert_eq!(fields, vec!["model", "gpu_count", "deadline"]);
    }

    #[test]
    fn control_characters_are_refused_by_field() {
        let mut r = valid();
        r.tenant_id = "ac\u{0}me".into();
        r.gpu_type = Some("H1\n00".into());
        let errs = r.validate(OffsetDateTime::now_utc()).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field).collect();
        assert_eq!(fields, vec!["tenant_id", "gpu_type"]);
    }

    #[test]
    fn inference_inputs_are_bounded_and_refused_on_training() {
        let mut r = valid();
        r.input = Some(InferenceInput {
            texts: vec!["a".repeat(MAX_INPUT_TEXT_BYTES)],
        });
        assert_eq!(r.validate(OffsetDateTime::now_utc()), Ok(()));
        r.input = Some(InferenceInput {
            texts: vec!["a".repeat(MAX_INPUT_TEXT_BYTES + 1)],
        });
        let errs = r.validate(OffsetDateTime::now_utc()).unwrap_err();
        assert_eq!(errs[0].field, "input.texts");
        assert!(errs[0].message.contains("text 0"), "{}", errs[0].message);
        r.input = Some(InferenceInput { texts: vec![] });
        assert_eq!(
            r.validate(OffsetDateTime::now_utc()).unwrap_err()[0].message,
            "must hold 1-64 texts, got 0"
        );
        r.input = Some(InferenceInput {
            texts: vec!["ok".into(); MAX_INPUT_TEXTS + 1],
        });
        assert!(r.validate(OffsetDateTime::now_utc()).is_err());
        r.input = Some(InferenceInput {
            texts: vec!["a".repeat(MAX_INPUT_TEXT_BYTES); 16],
        });
        assert_eq!(r.validate(OffsetDateTime::now_utc()), Ok(()));
        r.input = Some(InferenceInput {
            texts: vec!["a".repeat(MAX_INPUT_TEXT_BYTES); 17],
        });
        assert_eq!(
            r.validate(OffsetDateTime::now_utc()).unwrap_err()[0].message,
            "must hold at most 65536 bytes in all, got 69632"
        );
        r.input = Some(InferenceInput {
            texts: vec!["fine".into(), " \u{7}\t".into()],
        });
        assert!(r.validate(OffsetDateTime::now_utc()).unwrap_err()[0]
            .message
            .starts_with("text 1 "));
        r.input = Some(InferenceInput {
            texts: vec!["fine".into()],
        });
        r.kind = Some(WorkloadKind::Training);
        let fields: Vec<_> = r
            .validate(OffsetDateTime::now_utc())
            .unwrap_err()
            .iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, vec!["input"]);
    }

    #[test]
    fn unknown_fields_are_refused_at_parse_time() {
        let json = r#"{"request_id":"00000000-0000-0000-0000-000000000000","tenant_id":"a",
            "model":"m","gpu_count":1,"duration_s":1,"gpus":4}"#;
        let err = serde_json::from_str::<WorkloadRequest>(json).unwrap_err();
        assert!(err.to_string().contains("unknown field `gpus`"), "{err}");
    }
}
