//! JSON Schema export for every external-facing message. `make schemas` writes these files to
//! `schemas/`, and a test fails when the committed files drift from the code.

use crate::envelope::RawEnvelope;
use crate::payload::EventType;
use crate::request::{WorkloadRequest, WORKLOAD_REQUEST_VERSION};

/// One schema document: a relative file name and its pretty JSON text (newline-terminated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaFile {
    /// Path relative to the schemas directory.
    pub path: String,
    /// The JSON text.
    pub json: String,
}

fn render(path: String, schema: &schemars::Schema) -> SchemaFile {
    // A Schema is a JSON value; rendering it cannot fail.
    let mut json = serde_json::to_string_pretty(schema.as_value()).unwrap_or_default();
    json.push('\n');
    SchemaFile { path, json }
}

/// All schemas, in a stable order.
pub fn all() -> Vec<SchemaFile> {
    let mut files = vec![
        render(
            "envelope.v1.schema.json".into(),
            &schemars::schema_for!(RawEnvelope),
        ),
        render(
            format!("workload-request.v{WORKLOAD_REQUEST_VERSION}.schema.json"),
            &schemars::schema_for!(WorkloadRequest),
        ),
        render(
            "packed-message.v1.schema.json".into(),
            &schemars::schema_for!(Vec<crate::pack::PackedItem<'static>>),
        ),
    ];
    for &ty in EventType::ALL {
        files.push(render(
            format!(
                "events/{}.v{}.schema.json",
                ty.as_str(),
                ty.current_version()
            ),
            &ty.payload_schema(),
        ));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_has_a_schema_and_names_are_unique() {
        let files = all();
        assert_eq!(files.len(), EventType::ALL.len() + 3);
        let names: std::collections::HashSet<_> = files.iter().map(|f| &f.path).collect();
        assert_eq!(names.len(), files.len());
        let submitted = files
            .iter()
            .find(|f| f.path == "events/workload.submitted.v2.schema.json")
            .unwrap();
        assert!(submitted.json.contains("\"gpu_count\""));
    }

    #[test]
    fn the_committed_schemas_match_the_code() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        for f in all() {
            let committed = std::fs::read_to_string(dir.join(&f.path)).unwrap_or_else(|e| {
                panic!("schemas/{} is missing ({e}); run `make schemas`", f.path)
            });
            assert_eq!(
                committed, f.json,
                "schemas/{} is stale; run `make schemas`",
                f.path
            );
        }
    }
}
