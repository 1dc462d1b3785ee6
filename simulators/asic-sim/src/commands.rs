//! Which `asic.command_issued` commands the simulator obeys: only those for its sites, each
//! command id once, and only valid ones (a valid envelope whose command can never apply, such
//! as a fraction outside (0, 1] or a scope that matches no device, is dead-lettered).

use std::collections::{HashSet, VecDeque};

use hcp_events::payload::{AsicAction, AsicCommandIssued, AsicScope};
use uuid::Uuid;

use crate::fleet::Target;
use crate::layout::Layout;

/// What to do with a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Obey it on these devices.
    Obey(Target),
    /// Not for a site this simulator runs.
    OtherSite,
    /// Obeyed (or rejected) before.
    Duplicate,
    /// It can never apply: dead-letter it with this reason.
    Invalid(String),
}

impl Verdict {
    /// Metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Obey(_) => "obeyed",
            Verdict::OtherSite => "other_site",
            Verdict::Duplicate => "duplicate",
            Verdict::Invalid(_) => "invalid",
        }
    }
}

/// Site filtering, command-id dedup (the last `capacity` ids) and scope resolution.
#[derive(Debug)]
pub struct CommandFilter {
    seen: HashSet<Uuid>,
    order: VecDeque<Uuid>,
    capacity: usize,
}

impl CommandFilter {
    /// A filter remembering `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Decides; records the id of every command for one of the sites.
    pub fn check(&mut self, layout: &Layout, cmd: &AsicCommandIssued) -> Verdict {
        let Some(site) = layout.site_index(&cmd.site) else {
            return Verdict::OtherSite;
        };
        if !self.seen.insert(cmd.command_id) {
            return Verdict::Duplicate;
        }
        self.order.push_back(cmd.command_id);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if let AsicAction::PowerTarget { fraction } = cmd.action {
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Verdict::Invalid(format!(
                    "power target fraction {fraction} is not in (0, 1]"
                ));
            }
        }
        resolve(layout, site, &cmd.site, &cmd.target)
    }
}

fn resolve(layout: &Layout, site: u16, site_name: &str, scope: &AsicScope) -> Verdict {
    match scope {
        AsicScope::Site => Verdict::Obey(Target::Site(site)),
        AsicScope::Model { model } => match layout.model_index(model) {
            Some(m) if layout.racks.iter().any(|r| r.site == site && r.model == m) => {
                Verdict::Obey(Target::Model(site, m))
            }
            _ => Verdict::Invalid(format!("site {site_name} has no ASIC of model `{model}`")),
        },
        AsicScope::Racks { racks } => {
            let mut found = Vec::with_capacity(racks.len());
            for r in racks {
                match layout.rack_index(r) {
                    Some(i) if layout.racks.get(i as usize).is_some_and(|x| x.site == site) => {
                        found.push(i)
                    }
                    _ => return Verdict::Invalid(format!("site {site_name} has no rack `{r}`")),
                }
            }
            if found.is_empty() {
                return Verdict::Invalid("the rack list is empty".into());
            }
            Verdict::Obey(Target::Racks(found))
        }
        AsicScope::Devices { asic_ids } => {
            let mut found = Vec::with_capacity(asic_ids.len());
            for d in asic_ids {
                match layout.device_index(d) {
                    Some(i) if layout.site_of.get(i as usize) == Some(&site) => found.push(i),
                    _ => return Verdict::Invalid(format!("site {site_name} has no ASIC `{d}`")),
                }
            }
            if found.is_empty() {
                return Verdict::Invalid("the device list is empty".into());
            }
            Verdict::Obey(Target::Devices(found))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::layout::sites_from_counts;

    fn cmd(site: &str, id: u128, target: AsicScope, action: AsicAction) -> AsicCommandIssued {
        AsicCommandIssued {
            command_id: Uuid::from_u128(id),
            site: site.into(),
            target,
            action,
            decision_id: None,
        }
    }

    #[test]
    fn a_command_is_obeyed_once_and_other_sites_are_ignored_without_being_remembered() {
        let l = Layout::build(&sites_from_counts(2, 600), 100).unwrap();
        let mut f = CommandFilter::new(100);
        let c = cmd("site-1", 1, AsicScope::Site, AsicAction::Curtail);
        assert_eq!(f.check(&l, &c), Verdict::Obey(Target::Site(0)));
        assert_eq!(f.check(&l, &c), Verdict::Duplicate);
        let other = cmd("site-9", 2, AsicScope::Site, AsicAction::Curtail);
        assert_eq!(f.check(&l, &other), Verdict::OtherSite);
        let c2 = cmd("site-2", 2, AsicScope::Site, AsicAction::Resume);
        assert_eq!(f.check(&l, &c2), Verdict::Obey(Target::Site(1)));
    }

    #[test]
    fn scopes_resolve_against_the_site_and_bad_ones_are_invalid_with_a_reason() {
        let l = Layout::build(&sites_from_counts(2, 600), 100).unwrap();
        let mut f = CommandFilter::new(100);
        let rack = l.racks.iter().find(|r| r.site == 1).unwrap().id.clone();
        let dev = l.ids[l.site_of.iter().position(|&s| s == 1).unwrap()].clone();
        let cases = [
            (
                AsicScope::Model {
                    model: "s21 pro".into(),
                },
                true,
            ),
            (
                AsicScope::Model {
                    model: "S19".into(),
                },
                false,
            ),
            (
                AsicScope::Racks {
                    racks: vec![rack.clone()],
                },
                true,
            ),
            (
                AsicScope::Racks {
                    racks: vec![l.racks[0].id.clone()],
                },
                false,
            ),
            (
                AsicScope::Devices {
                    asic_ids: vec![dev.clone()],
                },
                true,
            ),
            (
                AsicScope::Devices {
                    asic_ids: vec![l.ids[0].clone()],
                },
                false,
            ),
            (AsicScope::Devices { asic_ids: vec![] }, false),
        ];
        for (n, (scope, ok)) in cases.into_iter().enumerate() {
            let v = f.check(
                &l,
                &cmd("site-2", 10 + n as u128, scope.clone(), AsicAction::Curtail),
            );
            assert_eq!(matches!(v, Verdict::Obey(_)), ok, "{scope:?}: {v:?}");
        }
        let v = f.check(
            &l,
            &cmd(
                "site-2",
                99,
                AsicScope::Site,
                AsicAction::PowerTarget { fraction: 1.5 },
            ),
        );
        assert!(
            matches!(v, Verdict::Invalid(ref r) if r.contains("1.5")),
            "{v:?}"
        );
        let v = f.check(
            &l,
            &cmd(
                "site-2",
                98,
                AsicScope::Site,
                AsicAction::PowerTarget { fraction: f64::NAN },
            ),
        );
        assert!(matches!(v, Verdict::Invalid(_)), "{v:?}");
    }
}
