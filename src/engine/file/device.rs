//! A plain file as a [`StorageBackend`]: the device under the write-ahead log of a store
//! opened by path.
//!
//! Why: the log goes through the same device trait as the database, so the crash tests can cut
//! power under both with one simulated disk; in production that device is this file. The
//! invariant it keeps: `sync_data` is `fdatasync` on the file, and a file this type created is
//! made durable in its directory before `create` returns, so a log that the database refers to
//! cannot vanish in a power loss. A path is opened only if it is a regular file, without
//! blocking: a FIFO where a store or its log should be would otherwise hang the open.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use crate::storage::StorageBackend;

#[derive(Debug)]
pub(crate) struct FileDevice(File);

impl FileDevice {
    /// Opens `path` for reading and writing, creating it (and syncing its directory) when it
    /// does not exist; a path that is not a regular file is refused ([`open_regular`]).
    pub(crate) fn open(path: &Path) -> io::Result<FileDevice> {
        let existed = path.exists();
        let file = open_regular(
            path,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
        )?;
        if !existed {
            sync_parent(path)?;
        }
        Ok(FileDevice(file))
    }
}

/// Opens `path` with `options`, without blocking, and only if it is a regular file: a FIFO, a
/// device, a socket or a directory is refused with [`io::ErrorKind::InvalidInput`], naming it.
/// The check is made on the opened descriptor, so it holds for what was opened.
pub(crate) fn open_regular(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Opening a FIFO for reading waits for a writer, unless non-blocking. On a regular
        // file the flag changes nothing: reads of a regular file do not block on it.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(irregular(path, &meta));
    }
    Ok(file)
}

/// The error for `path`, which is not a regular file.
fn irregular(path: &Path, meta: &std::fs::Metadata) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is {}, not a regular file",
            path.display(),
            file_kind(&meta.file_type())
        ),
    )
}

/// What a file that is not a regular file is, in words.
pub(crate) fn file_kind(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Refuses a `path` that exists and is not a regular file, as [`open_regular`] does, without
/// opening it.
pub(crate) fn refuse_irregular(path: &Path) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Err(irregular(path, &meta)),
        _ => Ok(()),
    }
}

#[cfg(unix)]
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

#[cfg(not(unix))]
fn sync_parent(_path: &Path) -> io::Result<()> {
    // Directories cannot be opened for syncing here; the file system orders the creation.
    Ok(())
}

impl StorageBackend for FileDevice {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        read_exact_at(&self.0, offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        write_all_at(&self.0, offset, data)
    }
}

#[cfg(unix)]
pub(crate) fn read_exact_at(f: &File, offset: u64, out: &mut [u8]) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, out, offset)
}

#[cfg(unix)]
fn write_all_at(f: &File, offset: u64, data: &[u8]) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, data, offset)
}

#[cfg(windows)]
pub(crate) fn read_exact_at(f: &File, mut offset: u64, mut out: &mut [u8]) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !out.is_empty() {
        match f.seek_read(out, offset)? {
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            n => {
                out = &mut out[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(windows)]
fn write_all_at(f: &File, mut offset: u64, mut data: &[u8]) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !data.is_empty() {
        match f.seek_write(data, offset)? {
            0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            n => {
                data = &data[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}
