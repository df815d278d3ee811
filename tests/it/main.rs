//! chitd's integration tests: one binary, one module per area.
//!
//! Tests drive the real `chitd` binary through its command line and spool
//! directories only, against an in-process fault-injecting HTTP server
//! (`server`), with shared fixtures in `util`.
//!
//! - `basic`: miss → download → deliver, mirrors, cache hits, start-up scan.
//! - `cache`: verified hits and quarantine.
//! - `cache_cmd`: `chitd cache import` and `chitd cache verify`.
//! - `cache_gc`: `chitd cache ls`, `chitd cache gc` and the daemon's own
//!   collection.
//! - `dedup`: one upstream download per digest.
//! - `failures`: permanent and transient failures, retries, resumption.
//! - `chits`: bad and unusual chits.
//! - `sources`: chit URLs, mirrors, `file://` mirrors, HTTP framings.
//! - `cli`: `request` and usage errors.
//! - `manifest`: `request --manifest` in both distinfo forms; `request`
//!   refusing a missing spool.
//! - `metrics`: the Prometheus endpoint's series after a miss, a hit and a
//!   failure; 404 elsewhere.
//! - `ops`: `retry`, `check`, JSON logs, checked environment variables.
//! - `progress`: the progress line of `request --wait`, on a terminal only.
//! - `reload`: SIGHUP: consumers added and taken out, mirrors, a broken
//!   file, a different cache, no file at all.
//! - `examples`: the shell and Python consumer examples in `scripts/examples/`.
//! - `status`: `status --json`.
//! - `systemd`: readiness, status, stopping and watchdog notifications.
//! - `config`: configuration files.
//! - `restart`: SIGTERM, SIGINT, SIGKILL and the next start.
//! - `crash`: the crash torture test (random SIGKILLs under a mixed load).
//! - `resume`: resuming after breaks and crashes; progress records; start-up
//!   recovery of delivery temporaries and re-used chit names.
//! - `confinement`: symlinks and hard links never lead writes outside.
//! - `hostile`: one test per attack by a consumer or a server (issue 4).
//! - `remote`: the fleet tier against a real S3 server (`s3`: `s3s-fs`,
//!   which must be on PATH).
//! - `hosts`: per-host limits, `Retry-After` and backoff shared by downloads.
//! - `tls`: certificates chitd does not trust, `ca_file`, and proxies.

mod basic;
mod cache;
mod cache_cmd;
mod cache_gc;
mod chits;
mod cli;
mod config;
mod confinement;
mod crash;
mod dedup;
mod examples;
mod failures;
mod hostile;
mod hosts;
mod manifest;
mod metrics;
mod ops;
mod progress;
mod reload;
mod remote;
mod restart;
mod resume;
mod sources;
mod status;
mod systemd;
mod tls;

// Fixtures offer more than every test uses.
#[allow(dead_code)]
mod s3;
#[allow(dead_code)]
mod server;
#[allow(dead_code)]
mod util;
