# The compact encoding of an `asic.telemetry_batch` envelope, format version 1
# (hcp_events::compact). One Kafka message on `telemetry` per rack and sample time; a message
# starting with "HCPB" is compact, anything else is a JSON envelope
# (envelope.v1.schema.json + events/asic.telemetry_batch.v1.schema.json). The two carry the
# same fields; consumers accept both. Example: asic-telemetry-batch.v1.example.bin, which
# decodes to asic-telemetry-batch.v1.example.json.
meta:
  id: hcp_asic_telemetry_batch_v1
  title: HCP compact ASIC telemetry batch, version 1
  endian: le
  encoding: UTF-8
seq:
  - id: magic
    contents: "HCPB"
  - id: format
    type: u1
    doc: Layout version, 1.
  - id: kind
    type: u1
    doc: 1 = asic.telemetry_batch.
  - id: schema
    type: u2
    doc: Payload schema version of asic.telemetry_batch (1).
  - id: event_id
    size: 16
    doc: UUID, big-endian bytes as written.
  - id: correlation_id
    size: 16
  - id: has_causation
    type: u1
  - id: causation_id
    size: 16
    if: has_causation == 1
  - id: occurred_at
    type: s8
    doc: Unix time, nanoseconds.
  - id: sequence
    type: s8
  - id: stream_id
    type: str16
  - id: producer
    type: str16
  - id: site
    type: str16
  - id: rack
    type: str16
  - id: sampled_at
    type: s8
    doc: Unix time, nanoseconds.
  - id: n
    type: u4
    doc: Number of samples; every column below has n entries.
  - id: model_count
    type: u2
  - id: models
    type: str16
    repeat: expr
    repeat-expr: model_count
  - id: asic_id
    type: str16
    repeat: expr
    repeat-expr: n
  - id: model
    type: u2
    repeat: expr
    repeat-expr: n
    doc: Index into models.
  - id: state
    type: u1
    enum: asic_state
    repeat: expr
    repeat-expr: n
  - id: hashrate_ths
    type: f8
    repeat: expr
    repeat-expr: n
  - id: power_w
    type: f8
    repeat: expr
    repeat-expr: n
  - id: power_target_w
    type: f8
    repeat: expr
    repeat-expr: n
  - id: temperature_c
    type: f8
    repeat: expr
    repeat-expr: n
  - id: hw_errors
    type: u4
    repeat: expr
    repeat-expr: n
  - id: accepted_shares
    type: u4
    repeat: expr
    repeat-expr: n
types:
  str16:
    seq:
      - id: len
        type: u2
      - id: value
        type: str
        size: len
enums:
  asic_state:
    0: hashing
    1: ramping
    2: curtailed
    3: fault
    4: offline
