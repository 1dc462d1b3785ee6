//! Which device commands a worker process obeys: only those for its own worker ids, and each
//! command id once (the topic is shared by every worker and redelivers after restarts).

use std::collections::{HashSet, VecDeque};

use hcp_events::payload::DeviceCommand;
use uuid::Uuid;

/// What to do with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Obey it (now recorded as obeyed).
    Obey,
    /// It is for a worker this process does not run.
    OtherWorker,
    /// Its id was obeyed before.
    AlreadyObeyed,
}

impl Verdict {
    /// Metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Obey => "obeyed",
            Self::OtherWorker => "other_worker",
            Self::AlreadyObeyed => "duplicate",
        }
    }
}

/// Per-worker filtering and command-id dedup, remembering the last `capacity` ids.
#[derive(Debug)]
pub struct CommandFilter {
    workers: HashSet<String>,
    obeyed: HashSet<Uuid>,
    order: VecDeque<Uuid>,
    capacity: usize,
}

impl CommandFilter {
    /// A filter for `workers`.
    pub fn new(workers: impl IntoIterator<Item = String>, capacity: usize) -> Self {
        Self {
            workers: workers.into_iter().collect(),
            obeyed: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Decides, and records the id when the answer is [`Verdict::Obey`].
    pub fn check(&mut self, cmd: &DeviceCommand) -> Verdict {
        if !self.workers.contains(&cmd.worker_id) {
            return Verdict::OtherWorker;
        }
        if !self.obeyed.insert(cmd.command_id) {
            return Verdict::AlreadyObeyed;
        }
        self.order.push_back(cmd.command_id);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.obeyed.remove(&old);
            }
        }
        Verdict::Obey
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hcp_events::payload::CommandAction;

    fn cmd(worker: &str, id: u128) -> DeviceCommand {
        DeviceCommand {
            command_id: Uuid::from_u128(id),
            worker_id: worker.into(),
            workload_id: Uuid::nil(),
            action: CommandAction::Pause,
        }
    }

    #[test]
    fn a_command_is_obeyed_once() {
        let mut f = CommandFilter::new(["w-0".to_owned()], 100);
        assert_eq!(f.check(&cmd("w-0", 1)), Verdict::Obey);
        assert_eq!(f.check(&cmd("w-0", 1)), Verdict::AlreadyObeyed);
        assert_eq!(f.check(&cmd("w-0", 2)), Verdict::Obey);
    }

    #[test]
    fn commands_for_other_workers_are_ignored_and_not_remembered() {
        let mut f = CommandFilter::new(["w-0".to_owned(), "w-1".to_owned()], 100);
        assert_eq!(f.check(&cmd("w-2", 1)), Verdict::OtherWorker);
        assert_eq!(f.check(&cmd("w-1", 1)), Verdict::Obey);
        assert_eq!(f.check(&cmd("w-10", 3)), Verdict::OtherWorker);
    }

    #[test]
    fn memory_is_bounded_and_forgets_the_oldest_first() {
        let mut f = CommandFilter::new(["w".to_owned()], 2);
        for id in 1..=3 {
            assert_eq!(f.check(&cmd("w", id)), Verdict::Obey);
        }
        assert_eq!(f.check(&cmd("w", 3)), Verdict::AlreadyObeyed);
        assert_eq!(f.check(&cmd("w", 1)), Verdict::Obey, "forgotten");
    }
}
