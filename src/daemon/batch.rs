//! A batch: the local work of several chits in one blocking task.
//!
//! A batch begins every item's work (a chit claimed, parsed and looked
//! up; a small download's object written to the cache; a copy written
//! for a delivery) before it finishes any (each file fsync'd, then named).
//! Every file's writeback is started as it is written, so the first flush
//! of the batch commits the journal for all of them and the others find
//! little left to do ([`crate::durable::Unnamed::link`]): one thread
//! flushes a batch about as fast as a thread per file would, at half the
//! CPU, and without a hand-off per chit. Every file is still flushed before
//! its name appears: the order of `spool-layout.md` holds for each.

use std::ffi::OsString;

use super::Shared;
use super::downloads::Delivery;
use super::not_utf8;
use super::work::{self, Begun, Object, Origin, Step, Waiter};
use crate::fetch::{Cause, Failure};
use crate::inflight::Key;
use crate::partial::Partial;

/// Most chits in one batch: enough to share a flush, few enough that a
/// batch's first chit does not wait long for its last, and that
/// [`super::local::LOCAL_TASKS`] batches fill the local slots (128).
pub const BATCH_MOST: usize = 4;

/// One chit's local work, or a small download's publish.
#[derive(Debug)]
pub enum Item {
    /// A chit in `request/` or `fetch/` (see [`work::begin_start`]).
    Start(usize, OsString, Origin),
    /// A chit whose download ended (see [`work::finish`]).
    Deliver(Delivery),
    /// A chit whose file is in the cache at this path (see [`Step::Hit`]).
    Hit(Waiter, std::path::PathBuf),
    /// A verified download (not delivered early), to publish into the
    /// cache and deliver to its lone waiter, if it has one.
    Publish(Box<ToPublish>),
}

/// A verified download (held in memory, or its `.part`), and its lone
/// waiter.
#[derive(Debug)]
pub struct ToPublish {
    pub partial: Partial,
    pub key: Key,
    pub lone: Option<Waiter>,
}

/// Work on `items`: every one begun, then every one finished, in order.
pub fn run(shared: &Shared, items: Vec<Item>) -> Step {
    let begun: Vec<Started> = items.into_iter().map(|item| begin(shared, item)).collect();
    Step::Batch(begun.into_iter().map(|b| b.finish(shared)).collect())
}

/// An item begun.
enum Started {
    Chit(Begun),
    Publish(BegunPublish),
}

impl Started {
    fn finish(self, shared: &Shared) -> Step {
        match self {
            Started::Chit(begun) => begun.finish(shared),
            Started::Publish(publishing) => publishing.finish(shared),
        }
    }
}

fn begin(shared: &Shared, item: Item) -> Started {
    match item {
        Item::Start(consumer, name, origin) => Started::Chit(match name.into_string() {
            Ok(name) => work::begin_start(shared, consumer, name, origin),
            Err(name) => Begun::Over(not_utf8::refuse(shared, consumer, name, origin)),
        }),
        Item::Deliver((waiter, outcome)) => {
            let outcome = outcome.as_ref().as_ref().map(|object| Object {
                path: object,
                bytes: None,
            });
            Started::Chit(work::begin_finish(shared, waiter, outcome))
        }
        Item::Hit(waiter, object) => Started::Chit(work::begin_hit(shared, waiter, &object)),
        Item::Publish(publish) => Started::Publish(begin_publish(shared, *publish)),
    }
}

/// A download on its way into the cache, and its lone waiter's delivery
/// begun (from its bytes, when held in memory).
struct BegunPublish {
    key: Key,
    /// The source of the bytes, redacted.
    source: Option<String>,
    from_remote: bool,
    object: Result<crate::store::Publishing, Failure>,
    lone: Option<Begun>,
}

fn begin_publish(shared: &Shared, ToPublish { partial, key, lone }: ToPublish) -> BegunPublish {
    let (source, from_remote) = work::source_of(&partial);
    let object = shared
        .store
        .start_publish(partial, &key.digest)
        .map_err(|e| Failure::from(Cause::Publish(e)));
    let lone = lone.map(|waiter| {
        let outcome = object.as_ref().map(|object| Object {
            path: object.path(),
            bytes: object.bytes(),
        });
        work::begin_finish(shared, waiter, outcome)
    });
    BegunPublish {
        key,
        source,
        from_remote,
        object,
        lone,
    }
}

impl BegunPublish {
    /// The object flushed and named, then the lone waiter's copy; if the
    /// object could not be published, that copy is dropped and the chit
    /// failed.
    fn finish(self, shared: &Shared) -> Step {
        let BegunPublish {
            key,
            source,
            from_remote,
            object,
            lone,
        } = self;
        let published = object.and_then(|object| {
            object
                .finish(&shared.store)
                .map_err(|e| Failure::from(Cause::Publish(e)))
        });
        work::upload_later(shared, key, &published, from_remote);
        let delivered = lone.map(|begun| {
            Box::new(match (&published, begun) {
                (Err(failure), Begun::Placing(placing)) => {
                    let waiter = placing.abandon(shared);
                    work::finish(shared, waiter, Err(failure))
                }
                (_, begun) => begun.finish(shared),
            })
        });
        Step::Published {
            key,
            source,
            published: published.map(|object| object.path),
            delivered,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use sha2::Digest as _;

    use super::*;
    use crate::chit::{Chit, Digest};
    use crate::config::Config;
    use crate::daemon::{Options, open};

    struct Fixture {
        dir: tempfile::TempDir,
        shared: Arc<Shared>,
    }

    impl Fixture {
        /// The default layout in a temporary directory: one consumer.
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let config = Config::default_layout(dir.path());
            fs::create_dir_all(dir.path().join("spool/request")).unwrap();
            let (shared, _hints) = open(&config, &Options::default()).unwrap();
            Fixture { dir, shared }
        }

        fn spool(&self, state: &str) -> PathBuf {
            self.dir.path().join("spool").join(state)
        }

        fn delivered(&self, path: &str) -> PathBuf {
            self.dir.path().join("distfiles").join(path)
        }

        /// A verified download of `content`, held in memory, for a chit
        /// `name` claimed into `fetch/` that wants it at `path`.
        fn downloaded(&self, name: &str, content: &[u8], path: &str) -> ToPublish {
            let hex = hex::encode(sha2::Sha256::digest(content));
            let text = format!("{hex}\n{}\n{path}\n", content.len());
            fs::write(self.spool("fetch").join(name), &text).unwrap();
            let chit = Chit::parse(text.as_bytes()).unwrap();
            let key = Key {
                digest: chit.digest,
                size: chit.size,
            };
            let mut partial = self.shared.store.partial(key.digest, key.size).unwrap();
            partial.append(content.to_vec().into()).unwrap();
            let lone = Waiter {
                consumer: 0,
                name: name.to_owned(),
                chit,
                claimed_in: self.shared.consumers[0].spool().fetch_id(),
                cache_was_corrupt: false,
            };
            ToPublish {
                partial,
                key,
                lone: Some(lone),
            }
        }

        fn object(&self, digest: &Digest) -> PathBuf {
            self.shared.store.object_path(digest)
        }
    }

    /// Each published download's step, and its lone waiter's.
    fn published(step: Step) -> Vec<(Result<PathBuf, Failure>, Step)> {
        let Step::Batch(steps) = step else {
            panic!("not a batch: {step:?}");
        };
        steps
            .into_iter()
            .map(|step| match step {
                Step::Published {
                    published,
                    delivered: Some(delivered),
                    ..
                } => (published, *delivered),
                step => panic!("not a publish and delivery: {step:?}"),
            })
            .collect()
    }

    /// Put a file where the directory of `object` would be, so that
    /// nothing can be made or named in it.
    fn block_dir_of(object: &Path) {
        let dir = object.parent().unwrap();
        if dir.exists() {
            fs::rename(dir, dir.with_extension("away")).unwrap();
        }
        fs::write(dir, "in the way").unwrap();
    }

    #[tokio::test]
    async fn a_batch_publishes_each_download_and_delivers_it_to_its_waiter() {
        let fixture = Fixture::new();
        let contents: Vec<Vec<u8>> = (0..3)
            .map(|i| vec![b'a' + i; 1000 + usize::from(i)])
            .collect();
        let items = contents
            .iter()
            .enumerate()
            .map(|(i, content)| {
                Item::Publish(Box::new(fixture.downloaded(
                    &format!("c{i}"),
                    content,
                    &format!("f{i}"),
                )))
            })
            .collect();
        let ended = published(run(&fixture.shared, items));
        assert_eq!(ended.len(), 3);
        for (i, (object, delivered)) in ended.into_iter().enumerate() {
            let object = object.unwrap();
            assert_eq!(fs::read(&object).unwrap(), contents[i]);
            let Step::Commit(commit) = delivered else {
                panic!("not delivered: {delivered:?}");
            };
            assert_eq!(commit.name, format!("c{i}"));
            assert_eq!(
                fs::read(fixture.delivered(&format!("f{i}"))).unwrap(),
                contents[i]
            );
            fixture.shared.targets.release(&commit.target);
        }
    }

    /// The object cannot be written: its waiter is failed with the reason,
    /// and nothing is delivered.
    #[tokio::test]
    async fn a_publish_that_cannot_begin_fails_its_waiter() {
        let fixture = Fixture::new();
        let item = fixture.downloaded("c", b"content", "f");
        block_dir_of(&fixture.object(&item.key.digest));
        let ended = published(run(&fixture.shared, vec![Item::Publish(Box::new(item))]));
        let [(Err(failure), Step::Done(_))] = &ended[..] else {
            panic!("not failed: {ended:?}");
        };
        assert!(failure.to_string().contains("cannot publish"), "{failure}");
        let failed = fs::read_to_string(fixture.spool("fail").join("c")).unwrap();
        assert!(
            failed.contains("# error: cannot publish into the cache"),
            "{failed}"
        );
        assert!(!fixture.delivered("f").exists());
    }

    /// The object's name cannot be made once every copy of the batch was
    /// written: the waiter's copy, written already, is dropped (nothing
    /// appears under its path, its target is free) and the chit failed.
    #[tokio::test]
    async fn a_publish_that_cannot_finish_drops_its_waiters_copy_and_fails_it() {
        let fixture = Fixture::new();
        let item = fixture.downloaded("c", b"content", "f");
        let object = fixture.object(&item.key.digest);
        let begun = begin(&fixture.shared, Item::Publish(Box::new(item)));
        let Started::Publish(publishing) = &begun else {
            panic!("not a publish");
        };
        assert!(
            matches!(publishing.lone, Some(Begun::Placing(_))),
            "a copy written"
        );
        block_dir_of(&object);
        let ended = published(Step::Batch(vec![begun.finish(&fixture.shared)]));
        let [(Err(_), Step::Done(_))] = &ended[..] else {
            panic!("not failed: {ended:?}");
        };
        let failed = fs::read_to_string(fixture.spool("fail").join("c")).unwrap();
        assert!(
            failed.contains("# error: cannot publish into the cache"),
            "{failed}"
        );
        let names: Vec<_> = fs::read_dir(fixture.dir.path().join("distfiles"))
            .unwrap()
            .collect();
        assert!(names.is_empty(), "{names:?}");
        let chit = Chit::parse(
            b"0000000000000000000000000000000000000000000000000000000000000000\n1\nf\n",
        )
        .unwrap();
        let target = work::target(&fixture.shared, 0, &chit);
        assert!(!fixture.shared.targets.is_taken(&target));
    }
}
