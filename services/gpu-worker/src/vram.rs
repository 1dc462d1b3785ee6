//! VRAM model slots: the models resident on one GPU, within a byte budget.
//!
//! Pure bookkeeping (no CUDA), so every boundary is unit-tested without a GPU. A slot owns a
//! payload `T` (for the CUDA backend, the device buffers holding the weights); evicting,
//! releasing or clearing a slot hands the payload back to the caller, who drops it, which frees
//! the memory: nothing is freed behind the caller's back and nothing leaks.
//!
//! Rules:
//! - pressure is Low below 50% of the budget, Medium from 50%, High from 80%, Critical from 95%;
//! - an admission that would bring use into Critical first evicts least-recently-used models
//!   that no run holds (pinned ones stay), until it would not or nothing is left to evict;
//! - it is then admitted when use stays within the budget, else refused;
//! - a model that can never fit (larger than the budget minus the pinned models) is refused
//!   before anything is evicted, with the requested and available bytes, the budget, the
//!   resident models and a remedy.

use std::fmt;

/// How full the budget is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    /// Below 50%.
    Low,
    /// 50% to below 80%.
    Medium,
    /// 80% to below 95%.
    High,
    /// 95% and above.
    Critical,
}

impl Pressure {
    /// The pressure at `used` bytes of `budget` (a zero budget is always Critical).
    pub fn of(used: u64, budget: u64) -> Self {
        // Integer comparisons: `used * 100 >= budget * 95` is exact at the boundaries.
        let (u, b) = (u128::from(used) * 100, u128::from(budget));
        if budget == 0 || u >= b * 95 {
            Self::Critical
        } else if u >= b * 80 {
            Self::High
        } else if u >= b * 50 {
            Self::Medium
        } else {
            Self::Low
        }
    }

    /// `low`, `medium`, `high`, `critical` (metric labels, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

/// Why a model was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VramError {
    /// The model cannot fit even with every unpinned model evicted.
    #[error(
        "model {model} needs {requested} bytes but only {available} bytes can be made available \
         (budget {budget} bytes, {free} free now; resident: {resident}); {remedy}"
    )]
    WontFit {
        /// The model asked for.
        model: String,
        /// Bytes asked for.
        requested: u64,
        /// Bytes that eviction could make free (budget minus pinned models).
        available: u64,
        /// Bytes free right now.
        free: u64,
        /// The budget.
        budget: u64,
        /// Resident models with their sizes, most recently used first.
        resident: String,
        /// What an operator can do.
        remedy: String,
    },
    /// The model is already resident (touch it instead).
    #[error("model {0} is already resident")]
    AlreadyResident(String),
    /// The model is not resident.
    #[error("model {0} is not resident")]
    NotResident(String),
}

/// One resident model.
#[derive(Debug)]
struct Slot<T> {
    model: String,
    bytes: u64,
    /// Held by a run: never evicted.
    pinned: bool,
    /// Logical clock of the last use (higher: more recent).
    last_used: u64,
    payload: T,
}

/// A model taken out of VRAM; drop `payload` to free its memory.
#[derive(Debug)]
pub struct Evicted<T> {
    /// The model.
    pub model: String,
    /// Its size.
    pub bytes: u64,
    /// What held its memory.
    pub payload: T,
}

/// The resident models of one GPU.
pub struct VramSlots<T> {
    budget: u64,
    used: u64,
    clock: u64,
    slots: Vec<Slot<T>>,
}

impl<T> fmt::Debug for VramSlots<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VramSlots")
            .field("budget", &self.budget)
            .field("used", &self.used)
            .field("resident", &self.resident())
            .finish()
    }
}

/// The default budget: this fraction of a GPU's total memory (the rest is left to activations,
/// the CUDA context and cuBLAS workspaces).
pub const DEFAULT_BUDGET_FRACTION: f64 = 0.9;

/// `fraction` of `total` bytes, clamped to `[0, total]`.
pub fn budget_from_fraction(total: u64, fraction: f64) -> u64 {
    let f = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        DEFAULT_BUDGET_FRACTION
    };
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let b = (total as f64 * f) as u64;
    b.min(total)
}

impl<T> VramSlots<T> {
    /// No models resident, `budget` bytes to hold them.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            used: 0,
            clock: 0,
            slots: Vec::new(),
        }
    }

    /// The budget, bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes held by resident models.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Budget minus use.
    pub fn free(&self) -> u64 {
        self.budget.saturating_sub(self.used)
    }

    /// The current pressure.
    pub fn pressure(&self) -> Pressure {
        Pressure::of(self.used, self.budget)
    }

    /// Whether `model` is resident.
    pub fn contains(&self, model: &str) -> bool {
        self.slots.iter().any(|s| s.model == model)
    }

    /// Resident models, most recently used first.
    pub fn resident(&self) -> Vec<String> {
        let mut v: Vec<&Slot<T>> = self.slots.iter().collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.last_used));
        v.into_iter().map(|s| s.model.clone()).collect()
    }

    /// The payload of a resident model, marking it used now.
    pub fn touch(&mut self, model: &str) -> Option<&mut T> {
        self.clock += 1;
        let now = self.clock;
        let slot = self.slots.iter_mut().find(|s| s.model == model)?;
        slot.last_used = now;
        Some(&mut slot.payload)
    }

    /// Pins (a run holds it: never evicted) or unpins a resident model.
    pub fn set_pinned(&mut self, model: &str, pinned: bool) -> Result<(), VramError> {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.model == model)
            .ok_or_else(|| VramError::NotResident(model.to_owned()))?;
        slot.pinned = pinned;
        Ok(())
    }

    fn pinned_bytes(&self) -> u64 {
        self.slots
            .iter()
            .filter(|s| s.pinned)
            .map(|s| s.bytes)
            .sum()
    }

    /// Would bring use into Critical (or over the budget)?
    fn too_full(&self, extra: u64) -> bool {
        let after = self.used.saturating_add(extra);
        after > self.budget || Pressure::of(after, self.budget) == Pressure::Critical
    }

    /// Makes room for `bytes` more: refuses a model that can never fit (evicting nothing), else
    /// evicts least-recently-used unpinned models while the admission would bring use into
    /// Critical, and returns them (drop their payloads to free the memory). After `Ok`, an
    /// [`VramSlots::insert`] of `bytes` succeeds.
    pub fn make_room(&mut self, model: &str, bytes: u64) -> Result<Vec<Evicted<T>>, VramError> {
        if self.contains(model) {
            return Err(VramError::AlreadyResident(model.to_owned()));
        }
        let available = self.budget.saturating_sub(self.pinned_bytes());
        if bytes > available {
            return Err(self.wont_fit(model, bytes, available));
        }
        let mut evicted = Vec::new();
        while self.too_full(bytes) {
            let lru = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.pinned)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(i, _)| i);
            let Some(i) = lru else { break };
            let s = self.slots.swap_remove(i);
            self.used -= s.bytes;
            evicted.push(Evicted {
                model: s.model,
                bytes: s.bytes,
                payload: s.payload,
            });
        }
        Ok(evicted)
    }

    /// Records `model` as resident with `bytes` held by `payload` (most recently used). Call
    /// after [`VramSlots::make_room`]; refused when it would exceed the budget.
    pub fn insert(&mut self, model: &str, bytes: u64, payload: T) -> Result<(), VramError> {
        if self.contains(model) {
            return Err(VramError::AlreadyResident(model.to_owned()));
        }
        if self.used.saturating_add(bytes) > self.budget {
            let available = self.budget.saturating_sub(self.pinned_bytes());
            return Err(self.wont_fit(model, bytes, available));
        }
        self.clock += 1;
        self.used += bytes;
        self.slots.push(Slot {
            model: model.to_owned(),
            bytes,
            pinned: false,
            last_used: self.clock,
            payload,
        });
        Ok(())
    }

    /// Takes one model out (its run ended and it is not wanted); returns it to be dropped.
    pub fn release(&mut self, model: &str) -> Result<Evicted<T>, VramError> {
        let i = self
            .slots
            .iter()
            .position(|s| s.model == model)
            .ok_or_else(|| VramError::NotResident(model.to_owned()))?;
        let s = self.slots.swap_remove(i);
        self.used -= s.bytes;
        Ok(Evicted {
            model: s.model,
            bytes: s.bytes,
            payload: s.payload,
        })
    }

    /// Takes every model out (stop, shutdown); returns them to be dropped.
    pub fn clear(&mut self) -> Vec<Evicted<T>> {
        self.used = 0;
        self.slots
            .drain(..)
            .map(|s| Evicted {
                model: s.model,
                bytes: s.bytes,
                payload: s.payload,
            })
            .collect()
    }

    fn wont_fit(&self, model: &str, requested: u64, available: u64) -> VramError {
        let mut v: Vec<&Slot<T>> = self.slots.iter().collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.last_used));
        let resident = if v.is_empty() {
            "none".to_owned()
        } else {
            v.iter()
                .map(|s| {
                    format!(
                        "{} ({} bytes{})",
                        s.model,
                        s.bytes,
                        if s.pinned { ", in use" } else { "" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let remedy = if requested > self.budget {
            "raise the VRAM budget (vram_budget_fraction), shard the model across GPUs, or \
             place it on a GPU with more memory"
                .to_owned()
        } else {
            "stop the runs holding the in-use models, or place the model on another GPU".to_owned()
        };
        VramError::WontFit {
            model: model.to_owned(),
            requested,
            available,
            free: self.free(),
            budget: self.budget,
            resident,
            remedy,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A payload that counts live allocations, to prove every slot is freed.
    #[derive(Debug)]
    struct Buf(Rc<RefCell<i64>>);
    impl Buf {
        fn new(live: &Rc<RefCell<i64>>) -> Self {
            *live.borrow_mut() += 1;
            Self(live.clone())
        }
    }
    impl Drop for Buf {
        fn drop(&mut self) {
            *self.0.borrow_mut() -= 1;
        }
    }

    fn admit(v: &mut VramSlots<()>, m: &str, b: u64) -> Result<Vec<String>, VramError> {
        let ev = v.make_room(m, b)?;
        v.insert(m, b, ())?;
        Ok(ev.into_iter().map(|e| e.model).collect())
    }

    #[test]
    fn pressure_changes_exactly_at_50_80_and_95_percent() {
        assert_eq!(Pressure::of(0, 1000), Pressure::Low);
        assert_eq!(Pressure::of(499, 1000), Pressure::Low);
        assert_eq!(Pressure::of(500, 1000), Pressure::Medium);
        assert_eq!(Pressure::of(799, 1000), Pressure::Medium);
        assert_eq!(Pressure::of(800, 1000), Pressure::High);
        assert_eq!(Pressure::of(949, 1000), Pressure::High);
        assert_eq!(Pressure::of(950, 1000), Pressure::Critical);
        assert_eq!(Pressure::of(1000, 1000), Pressure::Critical);
        assert_eq!(Pressure::of(0, 0), Pressure::Critical);
    }

    #[test]
    fn a_model_exactly_the_size_of_the_budget_is_admitted_into_critical() {
        let mut v = VramSlots::new(1000);
        assert_eq!(admit(&mut v, "a", 1000).unwrap(), Vec::<String>::new());
        assert_eq!(v.used(), 1000);
        assert_eq!(v.free(), 0);
        assert_eq!(v.pressure(), Pressure::Critical);
    }

    #[test]
    fn a_model_one_byte_over_the_budget_is_refused_with_everything_an_operator_needs() {
        let mut v = VramSlots::new(1000);
        admit(&mut v, "small", 100).unwrap();
        let err = v.make_room("huge", 1001).unwrap_err();
        assert_eq!(
            err,
            VramError::WontFit {
                model: "huge".into(),
                requested: 1001,
                available: 1000,
                free: 900,
                budget: 1000,
                resident: "small (100 bytes)".into(),
                remedy: "raise the VRAM budget (vram_budget_fraction), shard the model across \
                         GPUs, or place it on a GPU with more memory"
                    .into(),
            }
        );
        let msg = err.to_string();
        for part in [
            "1001 bytes",
            "1000 bytes can be made available",
            "budget 1000",
            "small",
        ] {
            assert!(msg.contains(part), "{msg} lacks {part}");
        }
        // Nothing was evicted for a model that could never fit.
        assert_eq!(v.resident(), vec!["small"]);
    }

    #[test]
    fn pinned_models_count_against_what_can_be_made_available() {
        let mut v = VramSlots::new(1000);
        admit(&mut v, "serving", 600).unwrap();
        v.set_pinned("serving", true).unwrap();
        match v.make_room("next", 401).unwrap_err() {
            VramError::WontFit {
                available, remedy, ..
            } => {
                assert_eq!(available, 400);
                assert!(remedy.starts_with("stop the runs"));
            }
            other => panic!("unexpected {other:?}"),
        }
        // 400 fits exactly at the budget: nothing unpinned to evict, admitted.
        assert_eq!(admit(&mut v, "next", 400).unwrap(), Vec::<String>::new());
        assert_eq!(v.used(), 1000);
    }

    #[test]
    fn admissions_that_would_reach_critical_evict_least_recently_used_first() {
        let mut v = VramSlots::new(1000);
        admit(&mut v, "a", 300).unwrap();
        admit(&mut v, "b", 300).unwrap();
        admit(&mut v, "c", 300).unwrap();
        assert_eq!(v.pressure(), Pressure::High);
        // 900 + 49 = 949 stays High: no eviction.
        assert_eq!(admit(&mut v, "d", 49).unwrap(), Vec::<String>::new());
        // 949 + 1 = 950 reaches Critical: the oldest goes.
        assert_eq!(admit(&mut v, "e", 1).unwrap(), vec!["a"]);
        assert_eq!(v.used(), 650);
        assert_eq!(v.resident(), vec!["e", "d", "c", "b"]);
    }

    #[test]
    fn touching_a_model_moves_it_to_the_back_of_the_eviction_queue() {
        let mut v = VramSlots::new(1000);
        admit(&mut v, "a", 300).unwrap();
        admit(&mut v, "b", 300).unwrap();
        admit(&mut v, "c", 300).unwrap();
        assert!(v.touch("a").is_some());
        assert_eq!(v.resident(), vec!["a", "c", "b"]);
        // Needs 500: 900 + 500 -> evict b (LRU) -> 1100 still over -> evict c -> 800 High.
        assert_eq!(admit(&mut v, "big", 500).unwrap(), vec!["b", "c"]);
        assert_eq!(v.resident(), vec!["big", "a"]);
        assert_eq!(v.used(), 800);
        assert!(v.touch("missing").is_none());
    }

    #[test]
    fn pinned_models_are_never_evicted() {
        let mut v = VramSlots::new(1000);
        admit(&mut v, "a", 400).unwrap();
        admit(&mut v, "b", 400).unwrap();
        v.set_pinned("a", true).unwrap();
        assert_eq!(admit(&mut v, "c", 500).unwrap(), vec!["b"]);
        assert_eq!(v.resident(), vec!["c", "a"]);
        assert_eq!(
            v.set_pinned("zzz", true),
            Err(VramError::NotResident("zzz".into()))
        );
    }

    #[test]
    fn a_resident_model_is_not_admitted_twice() {
        let mut v = VramSlots::new(1000);
        admit(&mut v, "a", 10).unwrap();
        assert_eq!(
            v.make_room("a", 10).unwrap_err(),
            VramError::AlreadyResident("a".into())
        );
        assert_eq!(
            v.insert("a", 10, ()).unwrap_err(),
            VramError::AlreadyResident("a".into())
        );
    }

    #[test]
    fn every_payload_is_dropped_on_eviction_release_and_clear() {
        let live = Rc::new(RefCell::new(0_i64));
        let mut v: VramSlots<Buf> = VramSlots::new(1000);
        for (m, b) in [("a", 400), ("b", 400)] {
            v.make_room(m, b).unwrap();
            v.insert(m, b, Buf::new(&live)).unwrap();
        }
        assert_eq!(*live.borrow(), 2);
        let ev = v.make_room("c", 400).unwrap();
        assert_eq!(ev.len(), 1);
        drop(ev);
        assert_eq!(*live.borrow(), 1);
        v.insert("c", 400, Buf::new(&live)).unwrap();
        drop(v.release("b").unwrap());
        assert_eq!(*live.borrow(), 1);
        drop(v.clear());
        assert_eq!(*live.borrow(), 0);
        assert_eq!(v.used(), 0);
        assert!(v.resident().is_empty());
    }

    #[test]
    fn the_default_budget_is_a_fraction_of_total_memory() {
        assert_eq!(budget_from_fraction(1000, 0.9), 900);
        assert_eq!(budget_from_fraction(1000, 2.0), 1000);
        assert_eq!(budget_from_fraction(1000, -1.0), 0);
        assert_eq!(budget_from_fraction(1000, f64::NAN), 900);
    }
}
