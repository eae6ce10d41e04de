//! Finding the store, and the settings `init` keeps inside it.
//!
//! Order: `--store`, then `$COWSNAP_STORE` (both handled by clap), then
//! `store = "..."` in the config file. The store's own settings (its object
//! storage tier) live in `<store>/cowsnap.toml`, written by `cowsnap init`, so
//! every later command opens the store the same way.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::failure;

pub const STORE_ENV: &str = "COWSNAP_STORE";
pub const CONFIG_ENV: &str = "COWSNAP_CONFIG";
const SETTINGS_FILE: &str = "cowsnap.toml";
/// Config and settings files are a few lines; anything bigger is not ours.
const MAX_CONFIG_BYTES: u64 = 64 << 10;

/// The user's config file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The default store directory.
    pub store: Option<PathBuf>,
}

/// The settings a store was created with (kept in the store directory).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub object_store: Option<ObjectStoreSettings>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreSettings {
    pub url: String,
    /// "local" or "remote".
    pub durability: String,
    pub cache_bytes: Option<u64>,
}

/// Where the config file is: `$COWSNAP_CONFIG`, else
/// `$XDG_CONFIG_HOME/cowsnap/config.toml`, else `~/.config/cowsnap/config.toml`.
pub fn config_file_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(CONFIG_ENV) {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("cowsnap").join("config.toml"))
}

fn read_small(path: &Path) -> Result<Option<String>> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        Ok(m) if m.len() > MAX_CONFIG_BYTES => {
            return Err(failure::usage(format!(
                "{}: {} bytes is too large for a config file",
                path.display(),
                m.len()
            )))
        }
        Ok(_) => {}
    }
    Ok(Some(
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    ))
}

pub fn load_config_file() -> Result<(Option<PathBuf>, ConfigFile)> {
    let Some(path) = config_file_path() else {
        return Ok((None, ConfigFile::default()));
    };
    let Some(text) = read_small(&path)? else {
        return Ok((Some(path), ConfigFile::default()));
    };
    let config = toml::from_str(&text)
        .map_err(|e| failure::usage(format!("config file {}: {e}", path.display())))?;
    Ok((Some(path), config))
}

/// The store directory: the flag (or env, via clap), else the config file.
pub fn find_store(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    let (path, config) = load_config_file()?;
    config.store.ok_or_else(|| {
        let where_ = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.config/cowsnap/config.toml".into());
        failure::usage(format!(
            "no store given: use --store DIR, set {STORE_ENV}, or put `store = \"DIR\"` in {where_}"
        ))
    })
}

pub fn load_settings(store_dir: &Path) -> Result<StoreSettings> {
    let path = store_dir.join(SETTINGS_FILE);
    match read_small(&path)? {
        None => Ok(StoreSettings::default()),
        Some(text) => toml::from_str(&text)
            .map_err(|e| failure::usage(format!("store settings {}: {e}", path.display()))),
    }
}

pub fn save_settings(store_dir: &Path, settings: &StoreSettings) -> Result<()> {
    let path = store_dir.join(SETTINGS_FILE);
    let text = toml::to_string(settings).context("encoding store settings")?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn save_config_file(config: &ConfigFile) -> Result<PathBuf> {
    let path = config_file_path()
        .ok_or_else(|| failure::usage("cannot place the config file: HOME is not set"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = toml::to_string(config).context("encoding the config file")?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The engine configuration for a store, from its settings file.
pub fn store_config(settings: &StoreSettings) -> Result<cowstore::StoreConfig> {
    let mut config = cowstore::StoreConfig::default();
    if let Some(os) = &settings.object_store {
        let mut tier = cowstore::TierConfig::new(os.url.clone());
        tier.durability = match os.durability.as_str() {
            "local" => cowstore::Durability::Local,
            "remote" => cowstore::Durability::Remote,
            other => {
                return Err(failure::usage(format!(
                    "store settings: durability {other:?} is neither \"local\" nor \"remote\""
                )))
            }
        };
        if let Some(bytes) = os.cache_bytes {
            tier.cache_bytes = bytes;
        }
        config.tier = Some(tier);
    }
    Ok(config)
}
