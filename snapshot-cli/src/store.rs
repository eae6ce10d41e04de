//! Opening the store every command works on, and `cowsnap init`.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use crate::cli::{DurabilityArg, InitArgs};
use crate::config::{self, ObjectStoreSettings, StoreSettings};
use crate::failure;
use crate::output::Output;

/// Opens the store found from the flag, the environment or the config file.
pub fn open(flag: Option<&Path>) -> Result<cowstore::Store> {
    let dir = config::find_store(flag)?;
    if !dir.join("format").exists() {
        return Err(failure::not_found(format!(
            "{} is not a cowstore store (create one with `cowsnap init {}`)",
            dir.display(),
            dir.display()
        )));
    }
    let settings = config::load_settings(&dir)?;
    let store_config = config::store_config(&settings)?;
    match cowstore::Store::open(&dir, store_config) {
        Ok(store) => Ok(store),
        Err(e) if failure::is_lock_error(&e) => Err(failure::conflict(format!(
            "store {} is in use by another process (a cowstored serving it?): \
             stop it, or take group snapshots through its control socket",
            dir.display()
        ))),
        Err(e) => Err(e).with_context(|| format!("opening store {}", dir.display())),
    }
}

/// Closes the store cleanly (final checkpoints), so the next open is fast.
pub fn close(store: cowstore::Store) -> Result<()> {
    store.close().context("closing the store")
}

pub fn init(flag: Option<&Path>, args: InitArgs, out: Output) -> Result<()> {
    let dir = match (&args.path, flag) {
        (Some(p), _) => p.clone(),
        (None, f) => config::find_store(f)?,
    };
    let settings = StoreSettings {
        object_store: args.object_store.as_ref().map(|url| ObjectStoreSettings {
            url: url.clone(),
            durability: match args.durability {
                DurabilityArg::Local => "local".into(),
                DurabilityArg::Remote => "remote".into(),
            },
            cache_bytes: args.cache_size,
        }),
    };
    let store_config = config::store_config(&settings)?;
    let store = cowstore::Store::create(&dir, store_config)
        .with_context(|| format!("creating store {}", dir.display()))?;
    config::save_settings(&dir, &settings)?;
    close(store)?;
    let config_file = if args.make_default {
        let abs = std::fs::canonicalize(&dir).unwrap_or(dir.clone());
        Some(config::save_config_file(&config::ConfigFile {
            store: Some(abs),
        })?)
    } else {
        None
    };
    out.emit(
        &json!({
            "store": dir,
            "object_store": args.object_store,
            "config_file": config_file,
        }),
        || {
            let mut s = format!("created store {}", dir.display());
            if let Some(url) = &args.object_store {
                s += &format!(" (sealed segments in {url})");
            }
            if let Some(p) = &config_file {
                s += &format!("\nset as the default store in {}", p.display());
            }
            s
        },
    );
    Ok(())
}
