//! Cache → `<deliver>/<path>`: missing parent directories are created
//! (never through a symlink), the bytes are copied to a dot-named temporary
//! beside the target, fsync'd, renamed over the target, and the directory
//! is fsync'd. A consumer never sees a partial file under the final name, and
//! the file is durably in place before its chit moves to `downloaded/`.
//!
//! The copy uses the kernel's fastest safe path: a reflink (`FICLONE`) where
//! the filesystem shares extents copy-on-write, else `copy_file_range`.
//! Cache files are never hard-linked into a consumer's directory: the
//! consumer could then corrupt the shared cache through its link.

use std::fs::File;
use std::io;
use std::path::Path;

use crate::chit::DeliveryPath;
use crate::dir::Dir;
use crate::durable::with_path;

/// Deliver the cached `object` to `path` beneath `root`.
pub fn deliver(root: &Dir, path: &DeliveryPath, object: &Path) -> io::Result<()> {
    let parent = root.create_dirs(path.parent_components())?;
    let name = path.file_name();
    let source = File::open(object).map_err(|e| with_path(e, "opening", object))?;
    let (temp, mut target) = parent.create_temp(name)?;
    let result = copy(&source, &mut target)
        .map_err(|e| with_path(e, "copying into", &parent.path().join(&temp)))
        .and_then(|()| {
            target
                .sync_all()
                .map_err(|e| with_path(e, "syncing", &parent.path().join(&temp)))
        })
        .and_then(|()| parent.rename(&temp, &parent, name));
    if let Err(e) = result {
        let _ = parent.remove_file(&temp);
        return Err(e);
    }
    parent.sync()
}

/// Reflink, else `copy_file_range`, else read/write.
fn copy(source: &File, target: &mut File) -> io::Result<()> {
    if rustix::fs::ioctl_ficlone(&*target, source).is_ok() {
        return Ok(());
    }
    let length = source.metadata()?.len();
    let mut done = 0u64;
    while done < length {
        let want = usize::try_from(length - done)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(
            source,
            Some(&mut done.clone()),
            &*target,
            Some(&mut done.clone()),
            want,
        ) {
            Ok(0) => break,
            Ok(n) => done += n as u64,
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::INVAL
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP,
            ) => {
                return copy_plain(source, target, done);
            }
            Err(e) => return Err(e.into()),
        }
    }
    if done != length {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("copied {done} of {length} bytes"),
        ));
    }
    Ok(())
}

fn copy_plain(source: &File, target: &mut File, from: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut source = source;
    source.seek(SeekFrom::Start(from))?;
    target.seek(SeekFrom::Start(from))?;
    io::copy(&mut source, target)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn delivers_into_new_subdirectories_and_replaces_existing() {
        let cache = tempfile::tempdir().unwrap();
        let object = cache.path().join("object");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        fs::write(&object, &bytes).unwrap();
        let target = tempfile::tempdir().unwrap();
        let root = Dir::open_root(target.path()).unwrap();
        let path = DeliveryPath::parse("gnu/make/make-4.4.tar.gz").unwrap();
        fs::create_dir_all(target.path().join("gnu/make")).unwrap();
        fs::write(target.path().join("gnu/make/make-4.4.tar.gz"), "old").unwrap();
        deliver(&root, &path, &object).unwrap();
        assert_eq!(
            fs::read(target.path().join("gnu/make/make-4.4.tar.gz")).unwrap(),
            bytes
        );
        assert_eq!(
            fs::read_dir(target.path().join("gnu/make"))
                .unwrap()
                .count(),
            1,
            "temporary left"
        );
    }

    #[test]
    fn refuses_a_symlinked_parent() {
        let cache = tempfile::tempdir().unwrap();
        let object = cache.path().join("object");
        fs::write(&object, "x").unwrap();
        let target = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), target.path().join("gnu")).unwrap();
        let root = Dir::open_root(target.path()).unwrap();
        let err = deliver(&root, &DeliveryPath::parse("gnu/x").unwrap(), &object).unwrap_err();
        assert!(err.to_string().contains("gnu"), "{err}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
