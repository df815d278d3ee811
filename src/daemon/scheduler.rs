//! The scheduler: one task that routes events between the daemon's parts.
//!
//! It owns the local pool (blocking steps: claim, parse, lookup, delivery,
//! publish, commit) and hands each event to the part that owns its data:
//! new chits and deliveries to the [`Queues`], downloads to
//! [`Downloads`], delivered chits to the [`GroupCommit`], chits waiting for
//! a target to [`Parked`], stuck chits to [`Stuck`], the rest to
//! [`Housekeeping`] and [`Scans`].

use std::future::Future;
use std::sync::Arc;

use tokio::time::Instant;

use super::batch::{self, BATCH_MOST, Item};
use super::chit_id::{ChitId, display_name};
use super::collect::Collector;
use super::commit::{self, GroupCommit};
use super::downloads::{Delivery, Downloads};
use super::housekeeping::{self, Housekeeping};
use super::idle::{IdleExit, idle_exit};
use super::limits::LocalLimits;
use super::local::{LOCAL_TASKS, LocalPool};
use super::notify::{self, Notifier};
use super::queue::{Next, Queues};
use super::reload::Reloads;
use super::scan::{self, Scans};
use super::stuck::Stuck;
use super::work::{self, Step, Waiter};
use super::{DaemonError, Options, SHUTDOWN_GRACE, STATUS_INTERVAL, Shared};
use crate::chase::Chase;
use crate::fetch::Failure;
use crate::watch::Hint;

pub struct Scheduler {
    shared: Arc<Shared>,
    limits: LocalLimits,
    /// Chits to start and chits whose download ended, per consumer.
    queues: Queues<Delivery>,
    /// The local pool's tasks.
    local: LocalPool,
    /// Chits of big files, each to be worked on in a batch of its own
    /// ([`work::SOLO_MIN`]).
    solo: std::collections::VecDeque<Item>,
    commits: GroupCommit,
    downloads: Downloads,
    parked: Parked,
    stuck: Stuck,
    housekeeping: Housekeeping,
    scans: Scans,
    /// The cache's own collection (`cache_max_size`, `cache_max_age`).
    collector: Collector,
    /// The configuration a reload compares with (none: nothing to
    /// reload).
    running: Option<Running>,
}

mod reload;

pub use self::reload::{Running, served};

use super::parked::Parked;

impl Scheduler {
    /// A scheduler for `shared`'s consumers, with `jobs` downloads at once;
    /// `hold_stuck`: scans leave stuck chits alone until their retry is due.
    pub fn new(
        shared: Arc<Shared>,
        limits: LocalLimits,
        jobs: usize,
        hold_stuck: bool,
    ) -> Scheduler {
        let consumers = shared.consumers.len();
        Scheduler {
            limits,
            queues: Queues::new(consumers),
            local: LocalPool::default(),
            solo: Default::default(),
            commits: GroupCommit::new(limits.commit_backlog),
            downloads: Downloads::new(jobs),
            parked: Parked::default(),
            stuck: Stuck::new(consumers, hold_stuck),
            housekeeping: Housekeeping::new(Instant::now()),
            scans: Scans::default(),
            collector: Collector::new(Default::default(), Default::default(), Vec::new()),
            running: None,
            shared,
        }
    }

    /// Collect the cache with `collector` (without one: never).
    pub fn with_collector(mut self, collector: Collector) -> Scheduler {
        self.collector = collector;
        self
    }

    /// Reload from `running` on SIGHUP.
    pub fn with_running(mut self, running: Running) -> Scheduler {
        self.running = Some(running);
        self
    }

    /// The first look: every `request/` and `fetch/`; and the collection
    /// at start (an exit when idle waits for it).
    pub fn start(&mut self) {
        self.collector.start_if_due(&self.shared);
        self.scan(true);
    }

    /// Serve until `shutdown` resolves (or, with `exit_when_idle`, until
    /// [`idle_exit`] says so).
    pub async fn serve(
        &mut self,
        options: &Options,
        mut hints: super::Hints,
        mut notifier: Notifier,
        mut reloads: Reloads,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DaemonError> {
        tokio::pin!(shutdown);
        let exit_when_idle = options.exit_when_idle;
        let mut rescan = tokio::time::interval(options.rescan_interval);
        rescan.tick().await;
        let mut status = tokio::time::interval(STATUS_INTERVAL);
        loop {
            self.admit();
            if exit_when_idle && self.is_idle() {
                match self.last_look() {
                    IdleExit::Work => continue,
                    IdleExit::Exit => return self.exit(None, &notifier).await,
                    IdleExit::Stuck(chits) => return self.exit(Some(chits), &notifier).await,
                }
            }
            let linger = self.commits.deadline(self.deliveries_under_way());
            tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("shutting down; downloads keep their progress for the next start");
                    notifier.stopping();
                    break;
                }
                Some(hint) = hints.recv() => {
                    // A burst of events (a flood of chits, a storm of names
                    // chitd cannot take) is handled as one: each chit once,
                    // each rescan once.
                    let mut burst = vec![hint];
                    while let Ok(hint) = hints.try_recv() {
                        burst.push(hint);
                    }
                    self.hints(burst);
                }
                Some(step) = self.local.join_next() => {
                    self.step_done(step);
                    self.unpark_freed();
                }
                Some(outcome) = self.downloads.join_next() => {
                    self.downloads.done(&self.shared, outcome, &mut self.local, &mut self.queues);
                }
                _ = rescan.tick() => self.rescan(exit_when_idle).await,
                _ = reloads.requested() => self.reload(&reloads, &notifier).await,
                _ = status.tick() => self.status_tick(&mut notifier),
                _ = notifier.watchdog_due() => notifier.watchdog(),
                _ = sleep_until(linger) => {}
                _ = sleep_until(self.collector.due()) => self.collector.start(&self.shared),
                summary = self.collector.ended() => self.collector.done(summary),
            }
        }
        self.stop().await;
        Ok(())
    }

    /// The safety-net rescan; when idle, of `fetch/` too (anything there
    /// then is nobody's work), and the orphan sweep when due.
    async fn rescan(&mut self, exit_when_idle: bool) {
        self.downloads.stop_unwanted(&self.shared, &mut self.queues);
        let idle = self.is_idle();
        self.scan(idle);
        if !exit_when_idle {
            self.sweep_orphans_when_due().await;
        }
    }

    async fn sweep_orphans_when_due(&mut self) {
        // Checked after the scan, so a chit it just found counts as work.
        if self
            .housekeeping
            .orphan_sweep_due(Instant::now(), self.is_idle())
        {
            self.sweep_orphans().await;
        }
    }

    /// Once a second: a download of another size of a digest waits for the
    /// one under way no longer than an inactivity window; and the status
    /// files are written, and the service manager's status line.
    fn status_tick(&mut self, notifier: &mut Notifier) {
        let limit = self.shared.fetcher.settings().inactivity_timeout;
        self.downloads.release_overdue(limit);
        let speeds = self.downloads.speeds();
        housekeeping::write_status(&self.shared, &self.downloads, &speeds);
        let downloads = self.downloads.inflight().running().count();
        notifier.status(notify::summary(downloads, self.queues.known().count()));
    }

    /// The last look of an idle daemon that exits when idle (see
    /// [`super::idle`]).
    fn last_look(&mut self) -> IdleExit {
        self.scan(true);
        idle_exit(&self.queues, &self.stuck, &self.shared.consumers)
    }

    /// Exit, idle: with nothing left, after sweeping orphaned partials;
    /// with only `stuck` chits left, with an error naming them.
    async fn exit(
        &mut self,
        stuck: Option<String>,
        notifier: &Notifier,
    ) -> Result<(), DaemonError> {
        notifier.stopping();
        let result = match stuck {
            Some(chits) => Err(DaemonError::Stuck(chits)),
            None => {
                self.sweep_orphans().await;
                // A collection a publish made due runs before the exit.
                self.collector.start_if_due(&self.shared);
                tracing::info!("idle: no chit in any request/ or fetch/; exiting");
                Ok(())
            }
        };
        self.stop().await;
        result
    }

    /// Start what the slots allow: a group commit of the delivered chits,
    /// a round of cache directory fsyncs, deliveries and new chits (round
    /// robin across consumers), then downloads.
    fn admit(&mut self) {
        let now = Instant::now();
        if let Some(batch) = self.commits.take_due(now, self.deliveries_under_way()) {
            let shared = Arc::clone(&self.shared);
            self.local.spawn(0, move || commit::commit(&shared, batch));
        }
        if let Some(dirs) = self.housekeeping.cache_sync_due(now, self.is_quiet()) {
            self.local.spawn(0, move || work::sync_cache_dirs(dirs));
        }
        self.start_local();
        // A finished download is published on the local pool, beside the
        // slots: room for one per download at most, so publishes waiting
        // for the disk hold up new downloads, not their own descriptors.
        let local_limit = self.limits.slots + self.downloads.jobs();
        self.downloads
            .start(&self.shared, &mut self.local, local_limit);
    }

    /// Start batches of local work while slots are free, fewer than
    /// [`LOCAL_TASKS`] tasks run and the commit backlog allows.
    fn start_local(&mut self) {
        while self.local.tasks() < LOCAL_TASKS && self.commits.len() < self.limits.commit_backlog {
            let room = self.limits.slots.saturating_sub(self.local.chits());
            let items = self.next_batch(room.min(BATCH_MOST));
            if items.is_empty() {
                break;
            }
            let shared = Arc::clone(&self.shared);
            self.local
                .spawn(items.len(), move || batch::run(&shared, items));
        }
    }

    /// The next batch, of at most `most` items: a big file's chit alone;
    /// else verified downloads to publish first, then deliveries and new
    /// chits (round robin across consumers), a big file's publish or
    /// delivery set aside for a batch of its own.
    fn next_batch(&mut self, most: usize) -> Vec<Item> {
        if most == 0 {
            return Vec::new();
        }
        if let Some(item) = self.solo.pop_front() {
            return vec![item];
        }
        let mut items = Vec::new();
        while items.len() < most
            && let Some(publish) = self.downloads.next_to_publish()
        {
            let big = publish.key.size >= work::SOLO_MIN;
            let publish = Item::Publish(Box::new(publish));
            if big {
                self.solo.push_back(publish);
            } else {
                items.push(publish);
            }
        }
        while items.len() < most
            && let Some(next) = self.queues.next()
        {
            match next {
                Next::Deliver(delivery) if delivery.0.chit.size >= work::SOLO_MIN => {
                    self.solo.push_back(Item::Deliver(delivery));
                }
                Next::Deliver(delivery) => items.push(Item::Deliver(delivery)),
                Next::Start(consumer, name, origin) => {
                    items.push(Item::Start(consumer, name, origin));
                }
            }
        }
        if items.is_empty()
            && let Some(item) = self.solo.pop_front()
        {
            items.push(item);
        }
        items
    }

    fn step_done(&mut self, step: Step) {
        match step {
            Step::Batch(steps) => steps.into_iter().for_each(|step| self.step_done(step)),
            Step::Done(id) => self.chit_done(&id),
            Step::Short(id) => {
                self.queues.finished(id.consumer, &id.name);
                if self.stuck.short(&id) {
                    self.chit_stuck(id);
                }
            }
            Step::Stuck(id) => self.chit_stuck(id),
            Step::Commit(commit) => self.commits.add(commit, Instant::now()),
            Step::Committed { done, left } => {
                // The targets it held are free: `unpark_freed` follows.
                self.commits.ended();
                done.iter().for_each(|id| self.chit_done(id));
                left.into_iter().for_each(|step| self.step_done(step));
            }
            Step::CacheDirsSynced => self.housekeeping.cache_synced(),
            Step::ChaseAborted { key, failed } => {
                if let Some((tried, reason)) = failed {
                    let (shared, queues) = (&self.shared, &mut self.queues);
                    self.downloads
                        .settle(shared, key, Some(tried), Err(reason), queues);
                }
            }
            Step::Published {
                key,
                source,
                published,
                delivered,
            } => {
                if let Some(step) = delivered {
                    self.step_done(*step);
                }
                let took = self.downloads.took(&key);
                if let Ok(object) = &published {
                    let duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
                    let rate = bytes_per_second(key.size, took);
                    crate::metrics::METRICS.download_finished(key.size, took);
                    tracing::info!(digest = %key.digest, source = %source.unwrap_or_default(), size = key.size, duration_ms, rate, "download finished, verified and cached");
                    self.housekeeping.published(object);
                    self.collector.published(key.size);
                }
                let (shared, queues) = (&self.shared, &mut self.queues);
                self.downloads.settle(shared, key, None, published, queues);
            }
            Step::Parked {
                waiter,
                object,
                target,
            } => {
                let targets = &self.shared.targets;
                if let Some((waiter, object)) = self.parked.park(targets, target, waiter, object) {
                    self.deliver(waiter, Arc::new(Ok(object)));
                }
            }
            Step::Wait(waiter) => self.downloads.wait(&self.shared, waiter, &mut self.queues),
            Step::Hit { waiter, object } => self.solo.push_back(Item::Hit(waiter, object)),
        }
    }

    /// The chit's work is over.
    fn chit_done(&mut self, id: &ChitId) {
        self.queues.finished(id.consumer, &id.name);
        self.stuck.done(id);
    }

    /// The chit is stuck: scans leave it alone for a while.
    fn chit_stuck(&mut self, id: ChitId) {
        self.queues.finished(id.consumer, &id.name);
        let consumer = &self.shared.consumers[id.consumer].name;
        let name = display_name(&id.name).into_owned();
        let delay = self.stuck.stuck(id, Instant::now());
        if self.stuck.holds() {
            tracing::warn!(
                consumer = %consumer, chit = %name,
                "stuck (see the error above); trying again in {}",
                humantime::format_duration(delay)
            );
        }
    }

    /// Queue the delivery (or failure) of a chit whose download ended.
    fn deliver(&mut self, waiter: Waiter, outcome: Arc<Result<std::path::PathBuf, Failure>>) {
        self.queues
            .push_delivery(waiter.consumer, (waiter, outcome));
    }

    /// Deliver the first chit parked on each target that is free again.
    fn unpark_freed(&mut self) {
        for (waiter, object) in self.parked.unpark_freed(&self.shared.targets) {
            self.deliver(waiter, Arc::new(Ok(object)));
        }
    }

    fn hints(&mut self, burst: Vec<Hint>) {
        let mut rescan = std::collections::BTreeSet::new();
        for hint in burst {
            match hint {
                // A consumer a reload took out is not served any more.
                Hint::Chit(consumer, name) if self.shared.is_serving(consumer) => {
                    self.queues.push(consumer, name, work::Origin::Request);
                }
                Hint::Rescan(consumer) if self.shared.is_serving(consumer) => {
                    rescan.insert(consumer);
                }
                Hint::Chit(..) | Hint::Rescan(_) => {}
                Hint::RescanAll => rescan.extend(self.shared.serving()),
            }
        }
        for consumer in rescan {
            self.scan_consumer(consumer, false);
        }
    }

    /// Scan every consumer served (see [`super::scan`]).
    fn scan(&mut self, with_fetch: bool) {
        let serving: Vec<usize> = self.shared.serving().collect();
        for consumer in serving {
            self.scan_consumer(consumer, with_fetch);
        }
    }

    fn scan_consumer(&mut self, consumer: usize, mut with_fetch: bool) {
        if self.scans.refresh(&self.shared, consumer) {
            // New state directories: what their fetch/ holds is nobody's
            // work, and what waited in the old ones is gone (a chit of its
            // name in the new ones is another).
            with_fetch = true;
            self.stuck.forget_consumer(consumer);
            self.drop_gone_waiters(consumer);
        }
        let spool = self.shared.consumers[consumer].spool();
        self.scans.report_lost(&self.shared, consumer, &spool);
        scan::queue_chits(
            &spool,
            consumer,
            with_fetch,
            &mut self.queues,
            &mut self.stuck,
        );
    }

    /// Forget the chits of `consumer` waiting for a download or a target
    /// that went with the `fetch/` they were claimed into
    /// ([`work::went_with_its_fetch`]): their names are free for new chits
    /// at once, and a download that has not started for anybody else never
    /// does.
    fn drop_gone_waiters(&mut self, consumer: usize) {
        let shared = Arc::clone(&self.shared);
        let spool = shared.consumers[consumer].spool();
        let gone = |w: &Waiter| {
            w.consumer == consumer
                && work::went_with_its_fetch(&shared, &spool, consumer, &w.name, w.claimed_in)
        };
        let mut dropped = self.downloads.drop_waiters(gone);
        dropped.extend(self.parked.drop_waiters(gone));
        for waiter in dropped {
            self.queues.finished(consumer, &waiter.name);
        }
    }

    async fn sweep_orphans(&mut self) {
        // Downloads under way or waiting for a slot keep their partials
        // (none when idle).
        let spared = self.downloads.inflight().keys().copied().collect();
        self.housekeeping.sweep_orphans(&self.shared, spared).await;
    }

    /// Blocking steps running that work on chits: all but a round of cache
    /// directory fsyncs.
    fn chit_steps_running(&self) -> usize {
        let syncing = usize::from(self.housekeeping.is_syncing());
        self.local.tasks().saturating_sub(syncing)
    }

    /// Deliveries that a group commit may wait for.
    fn deliveries_under_way(&self) -> bool {
        self.chit_steps_running() > 0
            || self.queues.deliveries_waiting() > 0
            || self.downloads.publishes_waiting()
            || !self.solo.is_empty()
    }

    /// No chit is being worked on (cache directory fsyncs aside).
    fn is_quiet(&self) -> bool {
        self.chit_steps_running() == 0
            && self.solo.is_empty()
            && self.downloads.is_empty()
            && self.commits.is_empty()
            && self.parked.is_empty()
            && self.queues.is_empty()
    }

    fn is_idle(&self) -> bool {
        self.is_quiet() && !self.housekeeping.has_unsynced()
    }

    /// Stop: cancel downloads (each checkpoints), let local steps finish,
    /// sync the cache directories, remove early deliveries' temporaries.
    async fn stop(&mut self) {
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            let chases = self.downloads.stop().await;
            while let Some(step) = self.local.join_next().await {
                // An object published meanwhile: its directory is synced
                // below with the others.
                let steps = match step {
                    Step::Batch(steps) => steps,
                    step => vec![step],
                };
                for step in steps {
                    if let Step::Published {
                        published: Ok(object),
                        ..
                    } = &step
                    {
                        self.housekeeping.published(object);
                    }
                }
            }
            let dirs = self.housekeeping.take_unsynced();
            if !dirs.is_empty() {
                let _ = tokio::task::spawn_blocking(move || work::sync_cache_dirs(dirs)).await;
            }
            // Downloads that stopped leave their early deliveries behind.
            if !chases.is_empty() {
                let _ =
                    tokio::task::spawn_blocking(move || chases.into_iter().for_each(Chase::abort))
                        .await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "some work did not stop within {SHUTDOWN_GRACE:?}; its chits stay in fetch/"
            );
        }
        // The last uses written, off this thread; a collection finished.
        let shared = Arc::clone(&self.shared);
        let _ = tokio::task::spawn_blocking(move || shared.uses.flush()).await;
        self.collector.stop().await;
        for consumer in &self.shared.consumers {
            consumer.status.remove();
        }
    }
}

/// Sleep until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// `bytes` over `took`, in bytes per second (as if it took at least 1 ms).
fn bytes_per_second(bytes: u64, took: std::time::Duration) -> u64 {
    (bytes as f64 / took.as_secs_f64().max(0.001)) as u64
}

#[cfg(test)]
mod tests;
