//! The scheduler's side of a reload (the policy is in `daemon::reload`):
//! load the file off the scheduler's thread, check it, make what may fail
//! (the fetcher, the metrics listener), then apply it all at once: a new
//! [`Shared`] snapshot, consumers added and retired, and each part told.

use std::sync::Arc;

use super::Scheduler;
use crate::config::Config;
use crate::daemon::consumer::Consumer;
use crate::daemon::notify::Notifier;
use crate::daemon::reload::{self, Changes, Reloads};
use crate::daemon::{Shared, metrics_layout};
use crate::fetch::{Fetcher, with_causes};
use crate::metrics::server::Served;

/// The configuration the daemon runs, and what was started from it.
#[derive(Debug)]
pub struct Running {
    pub config: Config,
    /// The `/metrics` endpoint, when `metrics` is set.
    pub metrics: Option<Served>,
}

impl Scheduler {
    /// SIGHUP: reload the configuration, between `RELOADING=1` and
    /// `READY=1`.
    pub(super) async fn reload(&mut self, reloads: &Reloads, notifier: &Notifier) {
        notifier.reloading();
        match reloads.load() {
            None => tracing::info!(
                "SIGHUP: chitd runs without --config (its layout comes from flags or the \
                 embedded default), so there is no configuration file to re-read; nothing changed"
            ),
            Some(load) => match self.reload_from(load).await {
                Ok(changes) => tracing::info!("reloaded the configuration: {changes}"),
                Err(why) => {
                    tracing::error!("reload failed: {why}; the running configuration is kept")
                }
            },
        }
        notifier.ready();
    }

    /// Load the configuration anew and apply it; returns what changed, or
    /// why nothing was.
    async fn reload_from(&mut self, load: reload::Load) -> Result<String, String> {
        let loaded = tokio::task::spawn_blocking(move || load()).await;
        let new = match loaded {
            Ok(new) => new.map_err(|e| with_causes(&e))?,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let Some(running) = &mut self.running else {
            return Err("no running configuration to compare with".to_owned());
        };
        let refused = reload::refused(&running.config, &new);
        if !refused.is_empty() {
            return Err(format!("refused: {}", refused.join("; ")));
        }
        let changes = reload::changes(&running.config, &new);
        if changes.is_empty() {
            return Ok(changes.describe());
        }
        // What may fail first: nothing is applied unless all of it works.
        let fetcher = match changes.fetcher() {
            true => self.shared.fetcher.reconfigured(&new, changes.network),
            false => Ok(self.shared.fetcher.clone()),
        };
        let fetcher = fetcher.map_err(|e| with_causes(&e))?;
        if changes.metrics {
            // Bound before the old one stops: if it cannot be, metrics
            // stay as they are.
            let served = match new.metrics {
                Some(address) => {
                    let served = crate::metrics::server::start(address, metrics_layout(&new));
                    let served = served.await;
                    Some(served.map_err(|e| format!("cannot serve metrics on {address}: {e}"))?)
                }
                None => None,
            };
            if let Some(old) = std::mem::replace(&mut running.metrics, served) {
                old.stop().await;
            }
        }
        self.apply(new, &changes, fetcher);
        Ok(changes.describe())
    }

    /// Apply a checked configuration: the new snapshot, the consumers, the
    /// limits of the parts that own them.
    fn apply(&mut self, mut new: Config, changes: &Changes, fetcher: Fetcher) {
        let (consumers, retired) = self.reload_consumers(changes);
        let added: Vec<usize> = (0..consumers.len())
            .filter(|&c| !retired[c] && !self.shared.is_serving(c))
            .collect();
        let old = &self.shared;
        self.shared = Arc::new(Shared {
            consumers,
            retired,
            watch: Arc::clone(&old.watch),
            store: Arc::clone(&old.store),
            fetcher,
            mirrors: new.mirrors.clone(),
            targets: Arc::clone(&old.targets),
            durable_dirs: Arc::clone(&old.durable_dirs),
            uses: Arc::clone(&old.uses),
        });
        // A consumer that could not be opened is not running: the next
        // reload tries it again.
        new.consumers = served(&new, &self.shared);
        if changes.network {
            self.shared.fetcher.set_per_host(new.per_host);
        }
        self.downloads.set_jobs(new.jobs.max(1));
        if changes.cache_limits || !changes.added.is_empty() || !changes.removed.is_empty() {
            self.collector.reconfigure(&new);
        }
        if let Some(running) = &mut self.running {
            if let Some(metrics) = &running.metrics {
                metrics.set_layout(metrics_layout(&new));
            }
            running.config = new;
        }
        for consumer in added {
            self.scan_consumer(consumer, true);
        }
    }

    /// The consumers after a reload, and which are retired: those taken
    /// out retire (unwatched, their chits not started forgotten, their
    /// status file removed); those added are opened and appended (or, if
    /// retired with the same directories, served again), and watched.
    fn reload_consumers(&mut self, changes: &Changes) -> (Vec<Arc<Consumer>>, Vec<bool>) {
        let mut consumers = self.shared.consumers.clone();
        let mut retired = self.shared.retired.clone();
        for name in &changes.removed {
            let serving = self.shared.serving().find(|&c| consumers[c].name == *name);
            let Some(index) = serving else {
                continue; // never served (it could not be opened)
            };
            retired[index] = true;
            let consumer = &consumers[index];
            lock(&self.shared).remove(&consumer.spool().request);
            self.queues.retire(index);
            consumer.status.remove();
            tracing::info!(consumer = %name, "consumer taken out: no longer watched; its chits claimed already finish, the others stay where they are");
        }
        for added in &changes.added {
            // Brought back as it was: its chits still under way are known
            // by its number, so none is started twice.
            let back = (0..consumers.len()).find(|&c| retired[c] && consumers[c].config == *added);
            let index = match back {
                Some(index) => index,
                None => match Consumer::open_added(added) {
                    Ok(consumer) => {
                        consumers.push(Arc::new(consumer));
                        retired.push(false);
                        self.queues.add_consumer();
                        self.stuck.add_consumer();
                        consumers.len() - 1
                    }
                    Err(e) => {
                        tracing::error!(consumer = %added.name, "not serving this consumer: {e}");
                        continue;
                    }
                },
            };
            retired[index] = false;
            if let Err(e) = lock(&self.shared).add(index, &consumers[index].spool().request) {
                // The rescans still find its chits, a little later.
                tracing::error!(consumer = %added.name, "cannot watch its request/: {e}");
            }
            tracing::info!(consumer = %added.name, spool = %added.spool.display(), deliver = %added.deliver.display(), "consumer added");
        }
        (consumers, retired)
    }
}

/// The consumers of `config` that `shared` serves.
pub fn served(config: &Config, shared: &Shared) -> Vec<crate::config::Consumer> {
    let serving = |c: &&crate::config::Consumer| {
        shared
            .serving()
            .any(|index| shared.consumers[index].config == **c)
    };
    config.consumers.iter().filter(serving).cloned().collect()
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, crate::watch::Watch> {
    shared
        .watch
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
