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
use crate::dir::Dir;
use crate::spool::Spool;
use crate::watch::Watch;

/// One consumer: its delivery directory and status file, fixed for the
/// run, and its spool's state directories, opened anew when the consumer
/// makes them anew.
#[derive(Debug)]
pub struct Consumer {
    pub name: String,
    pub deliver: Dir,
    /// The delivery directory's device and inode: consumers that share one
    /// share its delivery targets (see `work::Target`).
    pub deliver_root: (u64, u64),
    pub status: StatusFile,
    /// The state directories, and how many times they were opened anew: a
    /// chit claimed from older ones went with them.
    spool: RwLock<(u64, Arc<Spool>)>,
}

impl Consumer {
    /// Open a consumer's directories at start, making the missing ones, and
    /// remove the temporaries a crash left in them.
    pub fn open(consumer: &config::Consumer) -> Result<Consumer, DaemonError> {
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
        spool.remove_temporaries().map_err(spool_error)?;
        let deliver = Dir::open_root(&consumer.deliver).map_err(deliver_error)?;
        let deliver_root = deliver.id().map_err(deliver_error)?;
        if let Err(e) = crate::deliver::remove_temporaries(&deliver) {
            tracing::warn!(consumer = %consumer.name, "cannot look for leftover delivery temporaries: {e}");
        }
        let status = StatusFile::new(&consumer.spool);
        status.remove_temporaries();
        Ok(Consumer {
            name: consumer.name.clone(),
            deliver,
            deliver_root,
            status,
            spool: RwLock::new((0, Arc::new(spool))),
        })
    }

    /// The state directories as opened now.
    pub fn spool(&self) -> Arc<Spool> {
        Arc::clone(&self.opened().1)
    }

    /// How many times the state directories were opened anew: a chit
    /// claimed at another generation is not in these.
    pub fn generation(&self) -> u64 {
        self.opened().0
    }

    /// [`Consumer::spool`] and [`Consumer::generation`], read together.
    pub fn spool_at(&self) -> (u64, Arc<Spool>) {
        let opened = self.opened();
        (opened.0, Arc::clone(&opened.1))
    }

    fn opened(&self) -> std::sync::RwLockReadGuard<'_, (u64, Arc<Spool>)> {
        self.spool.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Open the state directories anew if the consumer made one of them
    /// anew, and watch the new `request/` (with `watch`). Returns whether
    /// they were opened anew.
    pub fn refresh(&self, watch: &Mutex<Watch>) -> std::io::Result<bool> {
        let (generation, current) = self.spool_at();
        if !current.remade() {
            return Ok(false);
        }
        let fresh = Arc::new(current.reopen()?);
        {
            let mut opened = self.spool.write().unwrap_or_else(PoisonError::into_inner);
            if opened.0 != generation {
                return Ok(true); // opened anew meanwhile
            }
            *opened = (generation + 1, Arc::clone(&fresh));
        }
        tracing::warn!(
            consumer = %self.name,
            "state directories made anew while chitd runs: serving the new ones"
        );
        // `current` holds the old directories open until the new watch is
        // in place (see `Watch::rewatch`).
        let request = fresh.request.path();
        if let Err(e) = watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rewatch(request)
        {
            // The rescans still find its chits, a little later.
            tracing::error!(consumer = %self.name, "cannot watch {} again: {e}", request.display());
        }
        drop(current);
        Ok(true)
    }
}
