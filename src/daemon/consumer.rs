//! A consumer's directories, and opening them anew when the consumer
//! replaces them.
//!
//! chitd works through directory handles opened at start (never through
//! paths a consumer could swap). A consumer may still remove its spool or
//! delivery directory and make it again (a CI job wiping its workspace):
//! the handles then point at removed directories, where no chit arrives
//! and no delivery can be made. [`Consumers::refresh`] notices that and
//! opens the directories anew, as at start, once the consumer's `request/`
//! exists again; the watch on `request/` follows.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::{DaemonError, StatusFile};
use crate::config;
use crate::dir::Dir;
use crate::spool::Spool;
use crate::watch::Watch;

/// One consumer's directories, as opened.
#[derive(Debug)]
pub struct Consumer {
    pub spool: Spool,
    pub deliver: Dir,
    /// The delivery directory's device and inode: consumers that share one
    /// share its delivery targets (see `work::Target`).
    pub deliver_root: (u64, u64),
    pub status: StatusFile,
}

impl Consumer {
    /// Open a consumer's directories, making the missing ones.
    pub fn open(consumer: &config::Consumer) -> Result<Consumer, DaemonError> {
        let name = || consumer.name.clone();
        let spool =
            Spool::open(&consumer.name, &consumer.spool).map_err(|error| DaemonError::Spool {
                name: name(),
                error,
            })?;
        let deliver = Dir::open_root(&consumer.deliver).map_err(|error| DaemonError::Deliver {
            name: name(),
            error,
        })?;
        let deliver_root = deliver.id().map_err(|error| DaemonError::Deliver {
            name: name(),
            error,
        })?;
        Ok(Consumer {
            spool,
            deliver,
            deliver_root,
            status: StatusFile::new(&consumer.spool),
        })
    }

    /// Open a consumer's directories at start, and remove the temporaries
    /// a crash left in them.
    pub fn open_at_start(consumer: &config::Consumer) -> Result<Consumer, DaemonError> {
        let opened = Consumer::open(consumer)?;
        opened
            .spool
            .remove_temporaries()
            .map_err(|error| DaemonError::Spool {
                name: consumer.name.clone(),
                error,
            })?;
        if let Err(e) = crate::deliver::remove_temporaries(&opened.deliver) {
            tracing::warn!(consumer = %consumer.name, "cannot look for leftover delivery temporaries: {e}");
        }
        opened.status.remove_temporaries();
        Ok(opened)
    }

    /// The directories removed (or replaced) since they were opened.
    pub fn removed(&self) -> Vec<&Path> {
        let mut removed: Vec<&Path> = self
            .spool
            .removed_states()
            .into_iter()
            .map(Dir::path)
            .collect();
        if self.deliver.is_removed() {
            removed.push(self.deliver.path());
        }
        removed
    }
}

/// Every consumer served, by number: its configuration and its directories
/// as opened now.
pub struct Consumers {
    slots: Vec<(config::Consumer, RwLock<Arc<Consumer>>)>,
    /// The watch on each `request/`, renewed with the directory.
    watch: Mutex<Watch>,
}

impl std::fmt::Debug for Consumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.slots.iter().map(|(config, _)| &config.name))
            .finish()
    }
}

impl Consumers {
    /// `opened[n]` was opened from `configs[n]`; `watch` watches each
    /// one's `request/`.
    pub fn new(opened: Vec<(config::Consumer, Consumer)>, watch: Watch) -> Consumers {
        let slots = opened
            .into_iter()
            .map(|(config, consumer)| (config, RwLock::new(Arc::new(consumer))))
            .collect();
        Consumers {
            slots,
            watch: Mutex::new(watch),
        }
    }

    pub fn count(&self) -> usize {
        self.slots.len()
    }

    /// Consumer `index`'s directories as opened now.
    pub fn get(&self, index: usize) -> Arc<Consumer> {
        let (_, opened) = &self.slots[index];
        Arc::clone(&opened.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Every consumer's directories as opened now, by number.
    pub fn all(&self) -> Vec<Arc<Consumer>> {
        (0..self.count()).map(|index| self.get(index)).collect()
    }

    /// Consumer `index`'s directories for a delivery: opened anew first if
    /// its delivery directory was removed and can be (see
    /// [`Consumers::refresh`]).
    pub fn for_delivery(&self, index: usize) -> Arc<Consumer> {
        let current = self.get(index);
        if !current.deliver.is_removed() {
            return current;
        }
        match self.refresh(index) {
            Ok(Some(fresh)) => fresh,
            Ok(None) => current,
            Err(e) => {
                tracing::error!(consumer = %self.name(index), "cannot open the directories again: {e}");
                current
            }
        }
    }

    /// Consumer `index`'s name (for messages).
    pub fn name(&self, index: usize) -> &str {
        &self.slots[index].0.name
    }

    /// Open consumer `index`'s directories anew if one of them was removed
    /// and its `request/` exists again (making the other missing ones, as
    /// at start), and watch the new `request/`. `Ok(Some(..))` when they
    /// were opened anew (by this call or a concurrent one), `Ok(None)` when
    /// nothing was removed, or `request/` is not back yet.
    pub fn refresh(&self, index: usize) -> Result<Option<Arc<Consumer>>, DaemonError> {
        let (config, opened) = &self.slots[index];
        let current = self.get(index);
        let removed = current.removed();
        if removed.is_empty() || !config.spool.join("request").is_dir() {
            return Ok(None);
        }
        let mut slot = opened.write().unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&slot, &current) {
            return Ok(Some(Arc::clone(&slot))); // opened anew meanwhile
        }
        let fresh = Arc::new(Consumer::open(config)?);
        *slot = Arc::clone(&fresh);
        drop(slot);
        let removed: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
        tracing::warn!(
            consumer = %config.name,
            "{} removed and made again while chitd runs: serving the new directories",
            removed.join(", ")
        );
        // `current` holds the old directories open until the new watch is
        // in place (see `Watch::rewatch`).
        let request = fresh.spool.request.path();
        if let Err(e) = self
            .watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rewatch(request)
        {
            // The rescans still find its chits, a little later.
            tracing::error!(consumer = %config.name, "cannot watch {} again: {e}", request.display());
        }
        drop(current);
        Ok(Some(fresh))
    }
}
