//! The workload mix: what a GPU cloud's customers send, roughly. Pure, so it is unit-tested.
//!
//! | class | share | GPUs | run time | notes |
//! |---|---|---|---|---|
//! | real-time inference | 25% | 1 | 10-60 s | latency target 20-200 ms, class left for the router to infer |
//! | batch inference | 45% | 1-2 | 1-10 min | latency target 5-60 s half the time |
//! | training | 30% | 2, 4 or 8 | 10-60 min | interruptible, `-finetune`/`-lora` model names |

use rand::Rng;
use serde::Serialize;

/// The REST body of one submission (the tenant comes from the API key).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Submission {
    /// Model name.
    pub model: String,
    /// Explicit class, sometimes (`None`: the router infers it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// GPUs (gang).
    pub gpu_count: u32,
    /// GPU model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_type: Option<String>,
    /// Run time, seconds.
    pub duration_s: u32,
    /// Latency target, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_target_ms: Option<u32>,
    /// May be checkpointed and paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interruptible: Option<bool>,
}

const INFERENCE_MODELS: &[&str] = &[
    "all-MiniLM-L6-v2",
    "llama-3.1-8b-instruct",
    "mistral-7b-instruct",
    "whisper-large-v3",
    "bge-large-en",
];
const TRAINING_MODELS: &[&str] = &[
    "llama-3.1-8b-lora",
    "mistral-7b-finetune",
    "vit-b16-pretrain",
];

/// Draws one submission; `duration_scale` shrinks run times (demos and tests).
pub fn sample<R: Rng>(rng: &mut R, gpu_type: Option<&str>, duration_scale: f64) -> Submission {
    let scale = |s: u32| ((f64::from(s) * duration_scale).round() as u32).max(1);
    let pick = |rng: &mut R, xs: &[&str]| xs[rng.random_range(0..xs.len())].to_owned();
    let roll: f64 = rng.random();
    let mut s = if roll < 0.25 {
        Submission {
            model: pick(rng, INFERENCE_MODELS),
            kind: None,
            gpu_count: 1,
            gpu_type: None,
            duration_s: scale(rng.random_range(10..=60)),
            latency_target_ms: Some(rng.random_range(20..=200)),
            interruptible: None,
        }
    } else if roll < 0.70 {
        Submission {
            model: pick(rng, INFERENCE_MODELS),
            kind: rng.random_bool(0.5).then_some("batch_inference"),
            gpu_count: rng.random_range(1..=2),
            gpu_type: None,
            duration_s: scale(rng.random_range(60..=600)),
            latency_target_ms: rng
                .random_bool(0.5)
                .then(|| rng.random_range(5_000..=60_000)),
            interruptible: None,
        }
    } else {
        Submission {
            model: pick(rng, TRAINING_MODELS),
            kind: rng.random_bool(0.7).then_some("training"),
            gpu_count: [2, 4, 8][rng.random_range(0..3)],
            gpu_type: None,
            duration_s: scale(rng.random_range(600..=3600)),
            latency_target_ms: None,
            interruptible: Some(true),
        }
    };
    s.gpu_type = gpu_type.map(str::to_owned);
    s
}

/// The benchmark's job: one GPU, batch inference, a fixed run time.
pub fn small(duration_s: u32, gpu_type: Option<&str>) -> Submission {
    Submission {
        model: "all-MiniLM-L6-v2".into(),
        kind: Some("batch_inference"),
        gpu_count: 1,
        gpu_type: gpu_type.map(str::to_owned),
        duration_s: duration_s.max(1),
        latency_target_ms: None,
        interruptible: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_mix_has_every_class_in_roughly_its_share() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let n = 10_000;
        let subs: Vec<_> = (0..n).map(|_| sample(&mut rng, None, 1.0)).collect();
        let realtime = subs
            .iter()
            .filter(|s| s.latency_target_ms.is_some_and(|l| l <= 200))
            .count();
        let training = subs
            .iter()
            .filter(|s| s.interruptible == Some(true))
            .count();
        assert!((2_200..2_800).contains(&realtime), "realtime {realtime}");
        assert!((2_700..3_300).contains(&training), "training {training}");
        assert!(subs
            .iter()
            .all(|s| (1..=8).contains(&s.gpu_count) && s.duration_s >= 1));
    }

    #[test]
    fn durations_scale_down_but_never_to_zero() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..1_000 {
            let s = sample(&mut rng, Some("H100"), 0.001);
            assert!(s.duration_s >= 1);
            assert_eq!(s.gpu_type.as_deref(), Some("H100"));
        }
    }

    #[test]
    fn the_body_carries_no_tenant_and_omits_unset_fields() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let json = serde_json::to_value(sample(&mut rng, None, 1.0)).unwrap();
        assert!(json.get("tenant_id").is_none());
        assert!(json.get("model").is_some());
        assert!(json.as_object().unwrap().values().all(|v| !v.is_null()));
    }
}
