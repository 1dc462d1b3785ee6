//! Layered configuration: compiled-in defaults, then an optional TOML file (`HCP_CONFIG`), then
//! environment variables `HCP_<SECTION>__<KEY>` (double underscore between levels). The result is
//! one typed struct passed by value; there is no global configuration.

pub use figment::providers::{Env, Format, Toml};
pub use figment::Figment;
use serde::de::DeserializeOwned;

/// Configuration could not be loaded. The message names the offending key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// Loads settings of type `T`: `defaults` (TOML text compiled into the binary), then the file
/// named by `HCP_CONFIG` if set, then `HCP_*` environment variables.
pub fn load<T: DeserializeOwned>(defaults: &str) -> Result<T, ConfigError> {
    load_layered(&[defaults])
}

/// Like [`load`], with several compiled-in default layers merged in order (the common
/// defaults, then a service's own).
pub fn load_layered<T: DeserializeOwned>(defaults: &[&str]) -> Result<T, ConfigError> {
    let mut figment = Figment::new();
    for layer in defaults {
        figment = figment.merge(Toml::string(layer));
    }
    if let Ok(path) = std::env::var("HCP_CONFIG") {
        if !std::path::Path::new(&path).exists() {
            return Err(ConfigError(format!(
                "HCP_CONFIG points at {path}, which does not exist"
            )));
        }
        figment = figment.merge(Toml::file(path));
    }
    from_figment(figment.merge(Env::prefixed("HCP_").split("__")))
}

/// Extracts settings from an explicit figment (used by tests to layer without touching the
/// process environment).
pub fn from_figment<T: DeserializeOwned>(figment: Figment) -> Result<T, ConfigError> {
    figment.extract().map_err(|e| ConfigError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Serialized;
    use secrecy::{ExposeSecret, SecretString};
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Db {
        url: SecretString,
        max_connections: u32,
    }

    #[derive(Debug, Deserialize)]
    struct Settings {
        db: Db,
        name: String,
    }

    const DEFAULTS: &str = r#"
        name = "svc"
        [db]
        url = "postgres://default"
        max_connections = 5
    "#;

    #[test]
    fn later_layers_override_earlier_ones_key_by_key() {
        let f = Figment::new()
            .merge(Toml::string(DEFAULTS))
            .merge(Serialized::default("db.max_connections", 42));
        let s: Settings = from_figment(f).unwrap();
        assert_eq!(s.db.max_connections, 42);
        assert_eq!(s.db.url.expose_secret(), "postgres://default");
        assert_eq!(s.name, "svc");
    }

    #[test]
    fn secrets_never_print() {
        let s: Settings = from_figment(Figment::new().merge(Toml::string(DEFAULTS))).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("postgres://default"), "{shown}");
    }

    #[test]
    fn a_wrongly_typed_value_names_its_key() {
        let f = Figment::new()
            .merge(Toml::string(DEFAULTS))
            .merge(Serialized::default("db.max_connections", "many"));
        let err = from_figment::<Settings>(f).unwrap_err().to_string();
        assert!(err.contains("max_connections"), "{err}");
    }
}
