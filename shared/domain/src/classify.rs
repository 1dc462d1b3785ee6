//! Classification: what kind of work a submission is, whether it may be interrupted, and its
//! priority (1-10). Stated values win; missing ones are inferred, and the reason says which.
//!
//! Rules (ADR 0004): kind = stated, else `latency_target_ms <= 1000` → real-time inference, else
//! a model name that suggests training → training, else batch inference. Interruptible = stated,
//! else training and batch yes, real-time no; real-time work is never interruptible, even when
//! the customer says it may be. Priority = base by kind (real-time 8, batch 4, training 1) plus
//! tier (enterprise +2, pro +1, free +0), clamped to 1-10.

use hcp_events::payload::WorkloadSubmitted;
use hcp_events::{Tier, WorkloadKind};

/// Latency targets at or below this are real-time inference.
pub const REALTIME_LATENCY_MS: u32 = 1000;

/// Lowest priority.
pub const MIN_PRIORITY: u8 = 1;
/// Highest priority.
pub const MAX_PRIORITY: u8 = 10;

/// Model-name fragments that mark training work (matched case-insensitively).
const TRAINING_HINTS: [&str; 5] = ["pretrain", "finetune", "fine-tune", "lora", "train"];

/// The router's verdict on a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// Stated or inferred class.
    pub kind: WorkloadKind,
    /// Priority 1 (lowest) - 10 (highest).
    pub priority: u8,
    /// Whether it may be checkpointed and preempted.
    pub interruptible: bool,
    /// How kind and interruptibility were decided, for the customer and the operator.
    pub reason: String,
}

/// Base priority of a kind, before the tier bonus.
pub const fn base_priority(kind: WorkloadKind) -> u8 {
    match kind {
        WorkloadKind::RealtimeInference => 8,
        WorkloadKind::BatchInference => 4,
        WorkloadKind::Training => 1,
    }
}

/// Priority bonus of a tier.
pub const fn tier_bonus(tier: Tier) -> u8 {
    match tier {
        Tier::Enterprise => 2,
        Tier::Pro => 1,
        Tier::Free => 0,
    }
}

/// Priority of a kind for a tier, clamped to 1-10.
pub fn priority(kind: WorkloadKind, tier: Tier) -> u8 {
    (base_priority(kind) + tier_bonus(tier)).clamp(MIN_PRIORITY, MAX_PRIORITY)
}

/// The first training hint the model name contains, if any.
fn training_hint(model: &str) -> Option<&'static str> {
    let lower = model.to_ascii_lowercase();
    TRAINING_HINTS.into_iter().find(|h| lower.contains(h))
}

/// Wire name of a kind, for reasons.
const fn kind_name(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::RealtimeInference => "realtime_inference",
        WorkloadKind::BatchInference => "batch_inference",
        WorkloadKind::Training => "training",
    }
}

/// Classifies a submission.
pub fn classify(s: &WorkloadSubmitted) -> Classification {
    let (kind, kind_reason) = match (s.kind, s.latency_target_ms) {
        (Some(kind), _) => (kind, format!("{} as stated", kind_name(kind))),
        (None, Some(ms)) if ms <= REALTIME_LATENCY_MS => (
            WorkloadKind::RealtimeInference,
            format!("realtime_inference inferred from latency_target_ms={ms}"),
        ),
        (None, latency) => match (training_hint(&s.model), latency) {
            (Some(hint), _) => (
                WorkloadKind::Training,
                format!("training inferred from model name `{}` ({hint})", s.model),
            ),
            (None, Some(ms)) => (
                WorkloadKind::BatchInference,
                format!("batch_inference inferred from latency_target_ms={ms}"),
            ),
            (None, None) => (
                WorkloadKind::BatchInference,
                "batch_inference by default (no latency target, no training model name)".into(),
            ),
        },
    };
    let realtime = kind == WorkloadKind::RealtimeInference;
    let (interruptible, int_reason) = match (s.interruptible, realtime) {
        (Some(true), true) => (
            false,
            "not interruptible: real-time work is never interruptible (request said it was)",
        ),
        (Some(stated), false) => (
            stated,
            if stated {
                "interruptible as stated"
            } else {
                "not interruptible as stated"
            },
        ),
        (Some(false), true) | (None, true) => (
            false,
            "not interruptible: real-time work is never interruptible",
        ),
        (None, false) => (true, "interruptible by default for its kind"),
    };
    let priority = priority(kind, s.tier);
    Classification {
        kind,
        priority,
        interruptible,
        reason: format!(
            "{kind_reason}; {int_reason}; priority {priority} = {} ({}) + {} ({} tier)",
            base_priority(kind),
            kind_name(kind),
            tier_bonus(s.tier),
            s.tier.as_str()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn submission(model: &str) -> WorkloadSubmitted {
        let mut s =
            WorkloadSubmitted::simple(Uuid::nil(), "t", WorkloadKind::Training, model, 1, 60);
        s.kind = None;
        s
    }

    #[test]
    fn a_tight_latency_target_makes_realtime_inference_with_a_reason() {
        let mut s = submission("all-MiniLM-L6-v2");
        s.latency_target_ms = Some(50);
        s.tier = Tier::Enterprise;
        let c = classify(&s);
        assert_eq!(c.kind, WorkloadKind::RealtimeInference);
        assert_eq!(c.priority, 10);
        assert!(!c.interruptible);
        assert!(
            c.reason.contains("inferred from latency_target_ms=50"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn exactly_one_second_is_still_realtime_and_just_above_is_batch() {
        let mut s = submission("m");
        s.latency_target_ms = Some(1000);
        assert_eq!(classify(&s).kind, WorkloadKind::RealtimeInference);
        s.latency_target_ms = Some(1001);
        let c = classify(&s);
        assert_eq!(c.kind, WorkloadKind::BatchInference);
        assert!(c.reason.contains("latency_target_ms=1001"), "{}", c.reason);
    }

    #[test]
    fn training_model_names_are_recognised_case_insensitively() {
        for model in [
            "llama-3-8b-LoRA",
            "bert-finetune",
            "Mistral-Fine-Tune",
            "gpt-pretrain",
            "resnet-train-v2",
        ] {
            let c = classify(&submission(model));
            assert_eq!(c.kind, WorkloadKind::Training, "{model}");
            assert!(c.interruptible, "{model}");
            assert!(c.reason.contains(model), "{}", c.reason);
        }
    }

    #[test]
    fn a_tight_latency_target_wins_over_a_training_name() {
        let mut s = submission("lora-serving");
        s.latency_target_ms = Some(20);
        assert_eq!(classify(&s).kind, WorkloadKind::RealtimeInference);
    }

    #[test]
    fn with_nothing_to_go_on_it_is_interruptible_batch() {
        let c = classify(&submission("whisper-large"));
        assert_eq!(c.kind, WorkloadKind::BatchInference);
        assert!(c.interruptible);
        assert!(c.reason.contains("by default"), "{}", c.reason);
    }

    #[test]
    fn a_stated_kind_and_interruptibility_win() {
        let mut s = submission("lora-thing");
        s.kind = Some(WorkloadKind::BatchInference);
        s.interruptible = Some(false);
        let c = classify(&s);
        assert_eq!(c.kind, WorkloadKind::BatchInference);
        assert!(!c.interruptible);
        assert!(c.reason.contains("as stated"), "{}", c.reason);
    }

    #[test]
    fn realtime_work_is_never_interruptible_and_the_reason_says_so() {
        let mut s = submission("m");
        s.kind = Some(WorkloadKind::RealtimeInference);
        s.interruptible = Some(true);
        let c = classify(&s);
        assert!(!c.interruptible);
        assert!(
            c.reason.contains("real-time work is never interruptible"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn priority_is_base_by_kind_plus_tier() {
        use WorkloadKind::*;
        let cases = [
            (RealtimeInference, Tier::Enterprise, 10),
            (RealtimeInference, Tier::Pro, 9),
            (RealtimeInference, Tier::Free, 8),
            (BatchInference, Tier::Enterprise, 6),
            (BatchInference, Tier::Pro, 5),
            (BatchInference, Tier::Free, 4),
            (Training, Tier::Enterprise, 3),
            (Training, Tier::Pro, 2),
            (Training, Tier::Free, 1),
        ];
        for (kind, tier, want) in cases {
            assert_eq!(priority(kind, tier), want, "{kind:?} {tier:?}");
            let mut s = submission("m");
            s.kind = Some(kind);
            s.tier = tier;
            assert_eq!(classify(&s).priority, want);
        }
    }
}
