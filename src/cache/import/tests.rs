//! Unit tests of `cache::import`.
use super::*;

#[test]
fn a_file_that_fails_to_read_leaves_nothing_in_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheDir::open_or_create(&dir.path().join("cache")).unwrap();
    // Reading a directory fails (EISDIR) after the temporary is made.
    let source = dir.path().join("src");
    fs::create_dir(&source).unwrap();
    let file = File::open(&source).unwrap();
    let mut buffer = vec![0; BUFFER];
    let bar = ProgressBar::hidden();
    let error = copy_in(cache.objects(), file, source.clone(), &mut buffer, &bar)
        .err()
        .expect("reading a directory fails");
    assert!(error.to_string().contains("reading"), "{error}");
    assert!(
        error.to_string().contains(&*source.to_string_lossy()),
        "{error}"
    );
    let left: Vec<_> = fs::read_dir(cache.objects()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn the_summary_says_what_was_skipped_and_why() {
    let mut report = Report {
        added: 1,
        bytes_added: 2048,
        already_cached: 2,
        ..Report::default()
    };
    report.skipped.insert(Skipped::Symlink, 3);
    report.skipped.insert(Skipped::Fifo, 1);
    assert_eq!(
        report.render(),
        "added:          1 file (2048 bytes, 2.00 KiB)\n\
         already cached: 2 files\n\
         skipped:        4 (3 symlinks, 1 FIFO)\n"
    );
    report.failed = 1;
    assert!(
        report
            .render()
            .ends_with("failed:         1 file (named above)\n")
    );
}
