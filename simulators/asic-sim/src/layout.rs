//! The fleet's fixed shape: sites, models, racks and device ids, built once from a fleet
//! description (`hcp_economics::fleet::FleetConfig`) or from counts, and shared read-only by
//! the simulation and the command consumer.

use std::collections::HashMap;

use hcp_economics::fleet::{asic_model, FleetConfig};

/// An ASIC model.
#[derive(Debug, Clone, PartialEq)]
pub struct AsicModel {
    /// Display name, e.g. `S21 XP`.
    pub name: String,
    /// Hashrate at full power, TH/s.
    pub ths: f64,
    /// Efficiency at full power, J/TH.
    pub j_per_th: f64,
}

impl AsicModel {
    /// A known model by name (`S21`, `S21 Pro`, `S21 XP`).
    pub fn known(name: &str) -> Option<Self> {
        asic_model(name).map(|(ths, j_per_th)| Self {
            name: name.to_owned(),
            ths,
            j_per_th,
        })
    }

    /// Wall power at full power target, W.
    pub fn nameplate_w(&self) -> f64 {
        self.ths * self.j_per_th
    }
}

/// Model names compared loosely (`S21 XP` = `s21xp` = `Antminer S21 XP`).
pub fn model_key(name: &str) -> String {
    let k: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    k.strip_prefix("antminer").map(str::to_owned).unwrap_or(k)
}

/// One rack: consecutive devices of one model at one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rack {
    /// Fleet-unique id, `<site>-r<nnnn>`.
    pub id: String,
    /// Site index.
    pub site: u16,
    /// Model index.
    pub model: u8,
    /// First device index.
    pub start: u32,
    /// Devices.
    pub len: u32,
}

/// One group of identical machines at a site.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    /// Model.
    pub model: AsicModel,
    /// Machines.
    pub count: u32,
}

/// A site's machines.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteSpec {
    /// Site name (the `site` of commands and telemetry).
    pub name: String,
    /// Its groups.
    pub groups: Vec<GroupSpec>,
}

/// Why a fleet cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The description is unusable.
    #[error("invalid fleet: {0}")]
    Invalid(String),
    /// The fleet file could not be read or parsed.
    #[error(transparent)]
    Fleet(#[from] hcp_economics::EconError),
}

/// Sites from a fleet description, every count multiplied by `scale` (rounded).
pub fn sites_from_config(cfg: &FleetConfig, scale: f64) -> Result<Vec<SiteSpec>, LayoutError> {
    if !(scale.is_finite() && scale > 0.0) {
        return Err(LayoutError::Invalid(format!(
            "scale {scale} must be positive"
        )));
    }
    cfg.site
        .iter()
        .map(|s| {
            let groups = s
                .asic
                .iter()
                .map(|a| {
                    let known = asic_model(&a.model);
                    let (ths, j) = match (a.ths, a.j_per_th, known) {
                        (Some(t), Some(j), _) => (t, j),
                        (t, j, Some((mt, mj))) => (t.unwrap_or(mt), j.unwrap_or(mj)),
                        _ => {
                            return Err(LayoutError::Invalid(format!(
                                "site {}: unknown ASIC model `{}`",
                                s.name, a.model
                            )))
                        }
                    };
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let count = (f64::from(a.count) * scale).round() as u32;
                    Ok(GroupSpec {
                        model: AsicModel {
                            name: a.model.clone(),
                            ths,
                            j_per_th: j,
                        },
                        count,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(SiteSpec {
                name: s.name.clone(),
                groups,
            })
        })
        .collect()
}

/// `sites` sites named `site-<n>` sharing `asics` machines, the three S21 models in equal parts.
pub fn sites_from_counts(sites: u32, asics: u32) -> Vec<SiteSpec> {
    let models: Vec<AsicModel> = ["S21", "S21 Pro", "S21 XP"]
        .iter()
        .filter_map(|m| AsicModel::known(m))
        .collect();
    let sites = sites.max(1);
    (0..sites)
        .map(|s| {
            let site_total = asics / sites + u32::from(s < asics % sites);
            #[allow(clippy::cast_possible_truncation)]
            let n = models.len() as u32;
            SiteSpec {
                name: format!("site-{}", s + 1),
                groups: models
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        #[allow(clippy::cast_possible_truncation)]
                        let i = i as u32;
                        GroupSpec {
                            model: m.clone(),
                            count: site_total / n + u32::from(i < site_total % n),
                        }
                    })
                    .filter(|g| g.count > 0)
                    .collect(),
            }
        })
        .collect()
}

/// The fleet's fixed shape, device-indexed (struct of arrays).
#[derive(Debug, Clone)]
pub struct Layout {
    /// Site names.
    pub sites: Vec<String>,
    /// Models.
    pub models: Vec<AsicModel>,
    /// Racks in device order.
    pub racks: Vec<Rack>,
    /// Device ids, `<rack>-<nnn>`.
    pub ids: Vec<String>,
    /// Site of each device.
    pub site_of: Vec<u16>,
    /// Model of each device.
    pub model_of: Vec<u8>,
    /// Rack of each device.
    pub rack_of: Vec<u32>,
    rack_index: HashMap<String, u32>,
}

impl Layout {
    /// Builds the layout, `rack_size` devices per rack (each rack holds one model).
    pub fn build(sites: &[SiteSpec], rack_size: u32) -> Result<Self, LayoutError> {
        if !(1..=1000).contains(&rack_size) {
            return Err(LayoutError::Invalid(format!(
                "rack size {rack_size} must be 1-1000"
            )));
        }
        if sites.len() > usize::from(u16::MAX) {
            return Err(LayoutError::Invalid("too many sites".into()));
        }
        let mut l = Self {
            sites: Vec::new(),
            models: Vec::new(),
            racks: Vec::new(),
            ids: Vec::new(),
            site_of: Vec::new(),
            model_of: Vec::new(),
            rack_of: Vec::new(),
            rack_index: HashMap::new(),
        };
        for (si, s) in sites.iter().enumerate() {
            if s.name.is_empty() || l.sites.contains(&s.name) {
                return Err(LayoutError::Invalid(format!(
                    "site names must be unique and non-empty: `{}`",
                    s.name
                )));
            }
            l.sites.push(s.name.clone());
            #[allow(clippy::cast_possible_truncation)]
            let si = si as u16;
            let mut rack_no = 0u32;
            for g in &s.groups {
                let mi = match l
                    .models
                    .iter()
                    .position(|m| model_key(&m.name) == model_key(&g.model.name))
                {
                    Some(i) => i,
                    None => {
                        l.models.push(g.model.clone());
                        l.models.len() - 1
                    }
                };
                let mi =
                    u8::try_from(mi).map_err(|_| LayoutError::Invalid("too many models".into()))?;
                let mut left = g.count;
                while left > 0 {
                    rack_no += 1;
                    let len = left.min(rack_size);
                    left -= len;
                    let id = format!("{}-r{rack_no:04}", s.name);
                    let start = u32::try_from(l.ids.len())
                        .map_err(|_| LayoutError::Invalid("too many devices".into()))?;
                    let ri = u32::try_from(l.racks.len())
                        .map_err(|_| LayoutError::Invalid("too many racks".into()))?;
                    for slot in 0..len {
                        l.ids.push(format!("{id}-{slot:03}"));
                        l.site_of.push(si);
                        l.model_of.push(mi);
                        l.rack_of.push(ri);
                    }
                    l.rack_index.insert(id.clone(), ri);
                    l.racks.push(Rack {
                        id,
                        site: si,
                        model: mi,
                        start,
                        len,
                    });
                }
            }
        }
        if l.ids.is_empty() {
            return Err(LayoutError::Invalid("the fleet has no ASICs".into()));
        }
        Ok(l)
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no devices (never, once built).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// A site's index.
    pub fn site_index(&self, site: &str) -> Option<u16> {
        self.sites
            .iter()
            .position(|s| s == site)
            .and_then(|i| u16::try_from(i).ok())
    }

    /// A rack's index.
    pub fn rack_index(&self, rack: &str) -> Option<u32> {
        self.rack_index.get(rack).copied()
    }

    /// A device's index, from its id `<rack>-<slot>`.
    pub fn device_index(&self, id: &str) -> Option<u32> {
        let (rack, slot) = id.rsplit_once('-')?;
        let r = self
            .racks
            .get(usize::try_from(self.rack_index(rack)?).ok()?)?;
        let slot: u32 = slot.parse().ok()?;
        (slot < r.len
            && self
                .ids
                .get(usize::try_from(r.start + slot).ok()?)
                .is_some_and(|d| d == id))
        .then_some(r.start + slot)
    }

    /// A model's index by (loose) name.
    pub fn model_index(&self, name: &str) -> Option<u8> {
        let k = model_key(name);
        self.models
            .iter()
            .position(|m| model_key(&m.name) == k)
            .and_then(|i| u8::try_from(i).ok())
    }

    /// Nameplate power of each site, W.
    pub fn site_nameplate_w(&self) -> Vec<f64> {
        let mut w = vec![0.0; self.sites.len()];
        for r in &self.racks {
            if let (Some(x), Some(m)) = (
                w.get_mut(usize::from(r.site)),
                self.models.get(usize::from(r.model)),
            ) {
                *x += f64::from(r.len) * m.nameplate_w();
            }
        }
        w
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_example_fleet_scales_to_a_quarter_million_asics_in_racks_of_one_model() {
        let cfg = FleetConfig::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/fleet.example.toml"
        )))
        .unwrap();
        let base: u32 = cfg.site.iter().flat_map(|s| &s.asic).map(|a| a.count).sum();
        let scale = 250_000.0 / f64::from(base);
        let l = Layout::build(&sites_from_config(&cfg, scale).unwrap(), 100).unwrap();
        assert!((l.len() as i64 - 250_000).abs() <= 3, "{}", l.len());
        assert_eq!(l.sites, vec!["west-1", "west-2"]);
        assert!(l.racks.iter().all(|r| r.len <= 100));
        for r in &l.racks {
            let s = r.start as usize;
            assert!(l.model_of[s..s + r.len as usize]
                .iter()
                .all(|&m| m == r.model));
        }
        let id = &l.ids[12_345];
        assert_eq!(l.device_index(id), Some(12_345));
        assert_eq!(l.device_index("west-1-r9999-000"), None);
        assert_eq!(l.model_index("antminer s21 xp"), l.model_index("S21 XP"));
    }

    #[test]
    fn counts_split_evenly_over_sites_and_models() {
        let l = Layout::build(&sites_from_counts(2, 1001), 100).unwrap();
        assert_eq!(l.len(), 1001);
        assert_eq!(l.models.len(), 3);
        assert_eq!(l.site_of.iter().filter(|&&s| s == 0).count(), 501);
    }
}
