//! A consumer's directories, and its state directories opened anew when
//! the consumer makes them anew.
//!
//! chitd works through directory handles opened at start, never through
//! paths a consumer could swap. A consumer may still clear its spool
//! (`rm -rf spool/*`, a CI job wiping its workspace) and make `request/`
//! again: the handles then point at removed directories, where no chit
//! arrives. [`Consumer::refresh`] notices a state directory made anew and
//! opens the state directories again, beneath the spool directory opened
//! at start (so nothing planted in place of a root can redirect them), and
//! the watch on `request/` follows. The roots themselves are never opened
//! again: one removed while chitd runs is served again after a restart.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::{DaemonError, StatusFile};
use crate::config;
use crate::dir::{Dir, FileId};
use crate::spool::Spool;
use crate::watch::Watch;

/// One consumer: its delivery directory and status file, fixed for the
/// run, and its spool's state directories, opened anew when the consumer
/// makes them anew.
#[derive(Debug)]
pub struct Consumer {
    pub name: String,
    /// As configured (a reload compares with it).
    pub config: config::Consumer,
    pub deliver: Dir,
    /// The delivery directory's identity: consumers that share one
    /// share its delivery targets (see `work::Target`).
    pub deliver_root: FileId,
    pub status: StatusFile,
    /// The state directories, as opened now.
    spool: RwLock<Arc<Spool>>,
}

impl Consumer {
    /// Open a consumer's directories at start, making the missing ones, and
    /// remove the temporaries a crash left in them.
    pub fn open(consumer: &config::Consumer) -> Result<Consumer, DaemonError> {
        let opened = Consumer::open_added(consumer)?;
        opened.remove_temporaries()?;
        Ok(opened)
    }

    /// Open the directories of a consumer a reload added, making the
    /// missing ones. Its temporaries are left for the next start: work
    /// under way may own them (another consumer delivering to a shared
    /// directory).
    pub fn open_added(consumer: &config::Consumer) -> Result<Consumer, DaemonError> {
        let name = || consumer.name.clone();
        let spool_error = |error| DaemonError::Spool {
            name: name(),
            error,
        };
        let deliver_error = |error| DaemonError::Deliver {
            name: name(),
            error,
        };
        let spool = Spool::open(&consumer.name, &consumer.spool).map_err(spool_error)?;
        let deliver = Dir::open_root(&consumer.deliver).map_err(deliver_error)?;
        let deliver_root = deliver.id().map_err(deliver_error)?;
        let status = StatusFile::new(&consumer.spool);
        Ok(Consumer {
            name: consumer.name.clone(),
            config: consumer.clone(),
            deliver,
            deliver_root,
            status,
            spool: RwLock::new(Arc::new(spool)),
        })
    }

    /// Remove the temporaries a crash left in the consumer's directories.
    fn remove_temporaries(&self) -> Result<(), DaemonError> {
        let spool = self.spool();
        if let Err(error) = spool.remove_temporaries() {
            let name = self.name.clone();
            return Err(DaemonError::Spool { name, error });
        }
        if let Err(e) = crate::deliver::remove_temporaries(&self.deliver) {
            tracing::warn!(consumer = %self.name, "cannot look for leftover delivery temporaries: {e}");
        }
        self.status.remove_temporaries();
        Ok(())
    }

    /// The state directories as opened now.
    pub fn spool(&self) -> Arc<Spool> {
        Arc::clone(&self.spool.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Open the state directories anew if the consumer made one of them
    /// anew, and watch the new `request/` (with `watch`). Returns whether
    /// they were opened anew.
    pub fn refresh(&self, watch: &Mutex<Watch>) -> std::io::Result<bool> {
        let current = self.spool();
        if !current.remade() {
            return Ok(false);
        }
        let fresh = Arc::new(current.reopen()?);
        {
            let mut opened = self.spool.write().unwrap_or_else(PoisonError::into_inner);
            if !Arc::ptr_eq(&opened, &current) {
                return Ok(true); // opened anew meanwhile
            }
            *opened = Arc::clone(&fresh);
        }
        tracing::warn!(
            consumer = %self.name,
            "state directories made anew while chitd runs: serving the new ones"
        );
        // `current` holds the old directories open until the new watch is
        // in place (see `Watch::rewatch`).
        let renewed = watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rewatch(&current.request, &fresh.request);
        if let Err(e) = renewed {
            // The rescans still find its chits, a little later.
            tracing::error!(consumer = %self.name, "cannot watch {} again: {e}", fresh.request.path().display());
        }
        drop(current);
        Ok(true)
    }
}
