//! chitd: a download daemon for sandboxed package builders.
//!
//! Consumers drop small text *chits* (sha256, size, path, optional URLs) into
//! their spool's `request/` directory; the daemon fetches each file once into a
//! content-addressed cache shared by every consumer, verifies it while
//! streaming, delivers it atomically into the consumer's delivery directory, and
//! moves the chit `request/ → fetch/ → downloaded/ | fail/` by `rename(2)`.
//! The on-disk states are written down in `spool-layout.md`.
//!
//! # Layout
//!
//! - [`chit`]: `Chit::parse(bytes)`; the `Digest` and `DeliveryPath` newtypes;
//!   the `# error:` line. Pure.
//! - [`config`]: TOML text → [`config::Config`]; merging `run` flags. Pure,
//!   plus a thin `load`.
//! - [`cli`]: clap types for the subcommands. No I/O.
//! - [`env`]: the environment variables (`RUST_LOG`, `CHITD_*`), checked.
//!   Pure, plus a thin `read`.
//! - [`durable`]: the few fsync / atomic-write primitives everyone uses.
//! - [`dir`]: confined access beneath a consumer's directories (openat2
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): nothing a consumer plants can
//!   redirect a write.
//! - [`spool`]: the four state directories of one consumer and their
//!   transitions (`claim`, `complete`, `fail`), each one `rename(2)`.
//! - [`store`]: the content-addressed cache (`sha256-v1/ab/<hex>`).
//! - [`uses`]: the last-use record: objects' mtimes, and the paths they
//!   were delivered as (`uses-v1.sqlite`), written in batches.
//! - [`partial`]: partial downloads (`partial-v1/<hex>.part`) and their
//!   durable progress records, with the sha256 midstate for instant resume;
//!   `partial/hasher.rs` hashes big downloads on a thread of their own.
//! - [`fetch`]: one download of one digest from its ordered sources: Range /
//!   If-Range resume, validators, retry and failover, hashing while
//!   streaming (`run.rs`: the rounds over the sources, one state per
//!   source; `attempt.rs`: one request; `error.rs`: each answer and the one
//!   decision of what it means, `FetchError::next`; `failure.rs`: a failure
//!   as a value, rendered per chit naming only its own sources; `pace.rs`:
//!   the minimum-progress rule against slow drips).
//! - [`inflight`]: at most one download per file (sha256 and size); waiting
//!   chits share the outcome.
//! - [`deliver`]: cache → `<deliver>/<path>`: temp name, copy, fsync, rename;
//!   the directory fsync comes with the group commit.
//! - [`chase`]: early delivery: a big download's `.part` copied beside its
//!   first waiter's target while it downloads, renamed once verified.
//! - [`watch`]: inotify events → "look at this chit" / "rescan this spool" hints.
//! - [`daemon`]: `run(config, options, reloads, shutdown)`: recover, watch,
//!   schedule, reload on SIGHUP, exit when idle (`queue.rs`: per-consumer
//!   round-robin; `work.rs`: a chit's blocking steps and the group commit;
//!   `status_file.rs`: progress published for `chitd status`; `collect.rs`:
//!   the cache's own collection; `notify.rs`: systemd notifications;
//!   `reload.rs`: what a reload applies and refuses).
//! - [`metrics`]: Prometheus counters and the `/metrics` endpoint.
//! - [`request`], [`status`], [`retry`]: the other subcommands;
//!   [`manifest`]: distinfo text → chits for `request --manifest` (pure).
//! - [`remote`]: the fleet tier, an S3-compatible store shared by many
//!   hosts: read before the chit's sources (`read.rs`), uploads in the
//!   background with durable multipart state (`upload.rs`), leases for one
//!   upstream download per fleet (`lease.rs`), `[remote]` (`config.rs`).
//! - [`cache`]: the `chitd cache` commands, beside or without a running
//!   daemon (`import.rs`: files into the cache; `verify.rs`: re-hash every
//!   object, quarantine the corrupt ones; `ls.rs`: the objects with their
//!   last use and names; `gc.rs`: collection, least recently used first,
//!   sparing the objects of chits in `request/` and `fetch/`, also run by
//!   the daemon).

pub mod cache;
pub mod chase;
pub mod chit;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod deliver;
pub mod dir;
pub mod durable;
pub mod env;
pub mod fetch;
pub mod inflight;
pub mod manifest;
pub mod metrics;
pub mod partial;
pub mod remote;
pub mod request;
pub mod retry;
pub mod spool;
pub mod status;
pub mod store;
pub mod uses;
pub mod watch;
