//! The router's 10-level priority queue.
//!
//! - **Across levels**: stride scheduling. Each non-empty level has a *pass* value; the level
//!   with the smallest pass is served and its pass grows by `STRIDE / weight`. Weights grow
//!   with the level (default `level²`: 1, 4, ..., 100), so level 10 is served 100 times as
//!   often as level 1 when both are busy, and level 1 is still served at least once every
//!   `1 + w₁₀/w₁` pops: no starvation. A level that was empty joins at the current virtual
//!   time, so idling never banks credit.
//! - **Inside a level**: round-robin over tenants (one entry per tenant per turn), FIFO within
//!   a tenant, so one tenant's burst cannot push another tenant's work back.
//!
//! Every operation is O(log n) (hash maps and B-trees; no linear scans), which keeps a queue of
//! a million entries cheap. [`FairQueue::drain_order`] walks the exact order repeated
//! [`FairQueue::pop`]s would take, without popping: a placement pass uses it and then removes
//! what it placed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::iter::Peekable;

use crate::classify::{MAX_PRIORITY, MIN_PRIORITY};

/// Number of priority levels.
pub const LEVELS: usize = MAX_PRIORITY as usize;

/// Pass increment for weight 1; large enough that integer strides stay exact for weights up to
/// a few thousand.
const STRIDE: u64 = 1 << 32;

/// Default weight of each level (index = priority - 1): `priority²`.
pub const DEFAULT_WEIGHTS: [u64; LEVELS] = [1, 4, 9, 16, 25, 36, 49, 64, 81, 100];

/// Why an entry was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The priority is outside 1-10.
    #[error("priority {0} is outside 1-10")]
    BadPriority(u8),
    /// The id is already queued.
    #[error("already queued")]
    Duplicate,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    level: u8,
    tenant: u32,
    seq: u64,
}

#[derive(Debug)]
struct Level<K> {
    /// Stride pass value (smallest non-empty level is served next).
    pass: u64,
    len: usize,
    /// Each tenant's entries, FIFO by enqueue sequence.
    per_tenant: HashMap<u32, BTreeMap<u64, K>>,
    /// Tenants with entries, in turn order (smallest turn is next).
    rotation: BTreeMap<u64, u32>,
    /// Each active tenant's current turn key in `rotation`.
    turn_of: HashMap<u32, u64>,
    next_turn: u64,
}

impl<K> Default for Level<K> {
    fn default() -> Self {
        Self {
            pass: 0,
            len: 0,
            per_tenant: HashMap::new(),
            rotation: BTreeMap::new(),
            turn_of: HashMap::new(),
            next_turn: 0,
        }
    }
}

impl<K: Copy> Level<K> {
    fn enter(&mut self, tenant: u32) {
        let turn = self.next_turn;
        self.next_turn += 1;
        self.rotation.insert(turn, tenant);
        self.turn_of.insert(tenant, turn);
    }

    fn leave(&mut self, tenant: u32) {
        if let Some(turn) = self.turn_of.remove(&tenant) {
            self.rotation.remove(&turn);
        }
    }

    /// Pops the next entry in round-robin order.
    fn pop(&mut self) -> Option<(K, u32, u64)> {
        let (_, tenant) = self.rotation.pop_first()?;
        self.turn_of.remove(&tenant);
        let entries = self.per_tenant.get_mut(&tenant)?;
        let (seq, key) = entries.pop_first()?;
        if entries.is_empty() {
            self.per_tenant.remove(&tenant);
        } else {
            self.enter(tenant);
        }
        self.len -= 1;
        Some((key, tenant, seq))
    }

    /// This level's entries in pop order.
    fn order(&self) -> RoundRobin<'_, K> {
        RoundRobin {
            turns: self
                .rotation
                .values()
                .filter_map(|t| self.per_tenant.get(t))
                .map(|m| m.values().peekable())
                .collect(),
        }
    }
}

/// Round-robin over tenants' FIFO lists (the order a level pops in).
#[derive(Debug)]
pub struct RoundRobin<'a, K> {
    turns: VecDeque<Peekable<std::collections::btree_map::Values<'a, u64, K>>>,
}

impl<'a, K> Iterator for RoundRobin<'a, K> {
    type Item = &'a K;

    fn next(&mut self) -> Option<&'a K> {
        let mut it = self.turns.pop_front()?;
        let item = it.next();
        if it.peek().is_some() {
            self.turns.push_back(it);
        }
        item
    }
}

/// The 10-level weighted-fair queue of ids `K` (see the module docs).
#[derive(Debug)]
pub struct FairQueue<K> {
    levels: [Level<K>; LEVELS],
    weights: [u64; LEVELS],
    slots: HashMap<K, Slot>,
    tenant_ids: HashMap<String, u32>,
    next_seq: u64,
    /// Virtual time: the pass of the last served level.
    vtime: u64,
}

impl<K: Copy + Eq + Hash> Default for FairQueue<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Eq + Hash> FairQueue<K> {
    /// An empty queue with [`DEFAULT_WEIGHTS`].
    pub fn new() -> Self {
        Self::with_weights(DEFAULT_WEIGHTS)
    }

    /// An empty queue with custom level weights (index = priority - 1; zero counts as one).
    pub fn with_weights(weights: [u64; LEVELS]) -> Self {
        Self {
            levels: Default::default(),
            weights: weights.map(|w| w.max(1)),
            slots: HashMap::new(),
            tenant_ids: HashMap::new(),
            next_seq: 0,
            vtime: 0,
        }
    }

    /// Entries in the queue.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Entries at one priority (0 for a priority outside 1-10).
    pub fn len_at(&self, priority: u8) -> usize {
        level_index(priority).map_or(0, |i| self.levels[i].len)
    }

    /// Whether `id` is queued.
    pub fn contains(&self, id: &K) -> bool {
        self.slots.contains_key(id)
    }

    /// The priority `id` is queued at.
    pub fn priority_of(&self, id: &K) -> Option<u8> {
        self.slots.get(id).map(|s| s.level + 1)
    }

    fn tenant_id(&mut self, tenant: &str) -> u32 {
        if let Some(id) = self.tenant_ids.get(tenant) {
            return *id;
        }
        let id = u32::try_from(self.tenant_ids.len()).unwrap_or(u32::MAX);
        self.tenant_ids.insert(tenant.to_owned(), id);
        id
    }

    /// Queues `id` at `priority` (1-10) for `tenant`, behind the tenant's earlier entries.
    pub fn push(&mut self, id: K, priority: u8, tenant: &str) -> Result<(), PushError> {
        let li = level_index(priority).ok_or(PushError::BadPriority(priority))?;
        if self.slots.contains_key(&id) {
            return Err(PushError::Duplicate);
        }
        let tenant = self.tenant_id(tenant);
        let seq = self.next_seq;
        self.next_seq += 1;
        let vtime = self.vtime;
        let level = &mut self.levels[li];
        if level.len == 0 {
            // Joining (or re-joining) at the current virtual time: an idle level banks no credit.
            level.pass = level.pass.max(vtime);
        }
        let entries = level.per_tenant.entry(tenant).or_default();
        let was_idle = entries.is_empty();
        entries.insert(seq, id);
        if was_idle {
            level.enter(tenant);
        }
        level.len += 1;
        self.slots.insert(
            id,
            Slot {
                level: li as u8,
                tenant,
                seq,
            },
        );
        Ok(())
    }

    /// Removes `id` (cancelled, placed out of turn, ...) without charging its level. Returns
    /// whether it was queued.
    pub fn remove(&mut self, id: &K) -> bool {
        let Some(slot) = self.slots.remove(id) else {
            return false;
        };
        let level = &mut self.levels[usize::from(slot.level)];
        let now_empty = match level.per_tenant.get_mut(&slot.tenant) {
            Some(entries) => {
                entries.remove(&slot.seq);
                entries.is_empty()
            }
            None => false,
        };
        if now_empty {
            level.per_tenant.remove(&slot.tenant);
            level.leave(slot.tenant);
        }
        level.len -= 1;
        true
    }

    /// Removes `id` and charges its level one turn, as if it had been popped: used when a pass
    /// served it out of strict order, so that the long-run shares stay weighted.
    pub fn take(&mut self, id: &K) -> bool {
        let Some(slot) = self.slots.get(id).copied() else {
            return false;
        };
        self.remove(id);
        let li = usize::from(slot.level);
        self.vtime = self.vtime.max(self.levels[li].pass);
        self.levels[li].pass += STRIDE / self.weights[li];
        true
    }

    fn next_level(passes: &[u64; LEVELS], active: impl Fn(usize) -> bool) -> Option<usize> {
        // Smallest pass wins; on a tie the higher level goes first.
        (0..LEVELS)
            .rev()
            .filter(|i| active(*i))
            .min_by_key(|i| passes[*i])
    }

    /// Pops the next entry: `(id, priority)`.
    pub fn pop(&mut self) -> Option<(K, u8)> {
        let passes = self.levels.each_ref().map(|l| l.pass);
        let li = Self::next_level(&passes, |i| self.levels[i].len > 0)?;
        let level = &mut self.levels[li];
        self.vtime = level.pass;
        level.pass += STRIDE / self.weights[li];
        let (key, _, _) = level.pop()?;
        self.slots.remove(&key);
        Some((key, li as u8 + 1))
    }

    /// Every entry in the order repeated [`pop`](Self::pop)s would return it, without
    /// changing the queue. O(n) in total, O(log n) per step at worst.
    pub fn drain_order(&self) -> DrainOrder<'_, K> {
        DrainOrder {
            passes: self.levels.each_ref().map(|l| l.pass),
            strides: std::array::from_fn(|i| STRIDE / self.weights[i]),
            levels: self.levels.each_ref().map(|l| l.order().peekable()),
        }
    }

    /// One level's entries in the order it pops them (round-robin over tenants).
    pub fn iter_level(&self, priority: u8) -> impl Iterator<Item = &K> + '_ {
        level_index(priority)
            .map(|i| self.levels[i].order())
            .into_iter()
            .flatten()
    }
}

fn level_index(priority: u8) -> Option<usize> {
    (MIN_PRIORITY..=MAX_PRIORITY)
        .contains(&priority)
        .then(|| usize::from(priority - 1))
}

/// The queue's pop order as an iterator of `(id, priority)`; see [`FairQueue::drain_order`].
#[derive(Debug)]
pub struct DrainOrder<'a, K> {
    passes: [u64; LEVELS],
    strides: [u64; LEVELS],
    levels: [Peekable<RoundRobin<'a, K>>; LEVELS],
}

impl<'a, K: Copy + Eq + Hash> Iterator for DrainOrder<'a, K> {
    type Item = (K, u8);

    fn next(&mut self) -> Option<(K, u8)> {
        let nonempty: [bool; LEVELS] = std::array::from_fn(|i| self.levels[i].peek().is_some());
        let li = FairQueue::<K>::next_level(&self.passes, |i| nonempty[i])?;
        self.passes[li] += self.strides[li];
        self.levels[li].next().map(|k| (*k, li as u8 + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pops(q: &mut FairQueue<u64>) -> Vec<(u64, u8)> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn higher_priority_goes_first_when_both_are_waiting() {
        let mut q = FairQueue::new();
        q.push(1, 1, "a").unwrap();
        q.push(2, 10, "a").unwrap();
        assert_eq!(q.pop(), Some((2, 10)));
        assert_eq!(q.pop(), Some((1, 1)));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn the_lowest_level_is_served_within_a_bounded_number_of_pops_while_the_top_is_full() {
        let mut q = FairQueue::new();
        for i in 0..10_000 {
            q.push(i, 10, "busy").unwrap();
        }
        q.push(u64::MAX, 1, "patient").unwrap();
        // Bound: 1 + w10 / w1 pops.
        let bound = 1 + (DEFAULT_WEIGHTS[9] / DEFAULT_WEIGHTS[0]) as usize;
        let served_at = (1..=bound)
            .find(|_| q.pop().map(|(id, _)| id) == Some(u64::MAX))
            .expect("level 1 starved");
        assert!(served_at > 1, "level 1 must not jump the queue");
        // And the top level kept its share: it was served every other time.
        assert_eq!(q.len(), 10_000 - (served_at - 1));
    }

    #[test]
    fn busy_levels_share_in_proportion_to_their_weights() {
        let mut q = FairQueue::new();
        for i in 0..100_000u64 {
            q.push(i, (i % 10 + 1) as u8, "t").unwrap();
        }
        let mut served = [0usize; LEVELS];
        for _ in 0..38_500 {
            let (_, p) = q.pop().unwrap();
            served[usize::from(p - 1)] += 1;
        }
        // 38,500 = 100 rounds of 385 (the sum of the weights): every level still has work, so
        // each got exactly its weight's share.
        for (i, w) in DEFAULT_WEIGHTS.iter().enumerate() {
            let want = *w as usize * 100;
            assert!(
                served[i].abs_diff(want) <= 1,
                "level {}: {}",
                i + 1,
                served[i]
            );
        }
    }

    #[test]
    fn an_idle_level_banks_no_credit() {
        let mut q = FairQueue::new();
        for i in 0..1000 {
            q.push(i, 5, "t").unwrap();
        }
        for _ in 0..500 {
            q.pop();
        }
        // Level 6 joins late; it must not now get 500 pops in a row.
        for i in 1000..1100 {
            q.push(i, 6, "t").unwrap();
        }
        let first_ten: Vec<u8> = (0..10).map(|_| q.pop().unwrap().1).collect();
        assert!(first_ten.contains(&5), "{first_ten:?}");
    }

    #[test]
    fn tenants_take_turns_inside_a_level() {
        let mut q = FairQueue::new();
        for i in 0..6 {
            q.push(i, 4, "hog").unwrap();
        }
        q.push(100, 4, "small").unwrap();
        q.push(101, 4, "small").unwrap();
        q.push(200, 4, "third").unwrap();
        let order: Vec<u64> = pops(&mut q).into_iter().map(|(id, _)| id).collect();
        assert_eq!(order, vec![0, 100, 200, 1, 101, 2, 3, 4, 5]);
    }

    #[test]
    fn removal_takes_an_entry_out_wherever_it_is() {
        let mut q = FairQueue::new();
        for i in 0..5 {
            q.push(i, 3, if i % 2 == 0 { "a" } else { "b" }).unwrap();
        }
        q.push(9, 7, "a").unwrap();
        assert!(q.remove(&2));
        assert!(q.remove(&9));
        assert!(!q.remove(&9));
        assert_eq!(q.len(), 4);
        assert_eq!(q.len_at(3), 4);
        assert_eq!(q.len_at(7), 0);
        assert!(!q.contains(&2));
        // Removing a tenant's only entry takes the tenant out of the rotation.
        assert!(q.remove(&1) && q.remove(&3));
        let order: Vec<u64> = pops(&mut q).into_iter().map(|(id, _)| id).collect();
        assert_eq!(order, vec![0, 4]);
    }

    #[test]
    fn drain_order_is_exactly_the_pop_order_and_changes_nothing() {
        let mut q = FairQueue::new();
        let mut x = 7u64;
        for i in 0..5000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let tenant = format!("t{}", (x >> 33) % 7);
            q.push(i, ((x >> 40) % 10 + 1) as u8, &tenant).unwrap();
        }
        // Serve some first so passes are uneven.
        for _ in 0..777 {
            q.pop();
        }
        let view: Vec<(u64, u8)> = q.drain_order().collect();
        assert_eq!(view.len(), q.len());
        assert_eq!(view, pops(&mut q));
    }

    #[test]
    fn duplicates_and_bad_priorities_are_refused() {
        let mut q = FairQueue::new();
        q.push(1, 5, "a").unwrap();
        assert_eq!(q.push(1, 6, "a"), Err(PushError::Duplicate));
        assert_eq!(q.push(2, 0, "a"), Err(PushError::BadPriority(0)));
        assert_eq!(q.push(2, 11, "a"), Err(PushError::BadPriority(11)));
        assert_eq!(q.priority_of(&1), Some(5));
    }

    #[test]
    fn take_charges_the_level_like_a_pop_and_remove_does_not() {
        let mut charged = FairQueue::new();
        let mut free = FairQueue::new();
        for q in [&mut charged, &mut free] {
            for i in 0..200 {
                q.push(i, 10, "t").unwrap();
            }
            for i in 1000..1010 {
                q.push(i, 1, "t").unwrap();
            }
        }
        // A pass served 100 level-10 entries out of order: one full stride of level 1.
        for i in 0..100 {
            assert!(charged.take(&i));
            assert!(free.remove(&i));
        }
        assert_eq!(charged.pop().map(|x| x.1), Some(1));
        assert_eq!(free.pop().map(|x| x.1), Some(10));
    }

    #[test]
    fn under_sustained_load_the_gap_between_level_one_turns_is_bounded() {
        let mut q = FairQueue::new();
        for i in 0..20_000 {
            q.push(i, 10, "busy").unwrap();
        }
        for i in 0..100 {
            q.push(100_000 + i, 1, "patient").unwrap();
        }
        let bound = 1 + (DEFAULT_WEIGHTS[9] / DEFAULT_WEIGHTS[0]) as usize;
        let mut since_last = 0;
        let mut served = 0;
        while served < 100 {
            let (_, p) = q.pop().unwrap();
            since_last += 1;
            if p == 1 {
                assert!(since_last <= bound, "level 1 waited {since_last} pops");
                since_last = 0;
                served += 1;
            }
        }
    }

    #[test]
    fn iter_level_lists_one_level_in_turn_order() {
        let mut q = FairQueue::new();
        q.push(1, 9, "a").unwrap();
        q.push(2, 9, "a").unwrap();
        q.push(3, 9, "b").unwrap();
        q.push(4, 2, "a").unwrap();
        assert_eq!(q.iter_level(9).copied().collect::<Vec<_>>(), vec![1, 3, 2]);
        assert_eq!(q.iter_level(11).count(), 0);
    }
}
