//! A file tier: one file per entry under a root directory.
//!
//! An entry lives at `<root>/<h[0..2]>/<h>`, where `h` is the hex of the
//! first 128 bits of the SHA-256 of its key. Names never come from the key
//! itself, so `../`, absolute paths, NUL, very long and non-ASCII keys all
//! map to plain names under the root. The key is stored in the file and
//! checked on every read: two keys that collide on the hash read as absent,
//! never as each other's entry.
//!
//! # File format (version 2)
//!
//! All integers little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `DJWEFILE` |
//! | 8 | 2 | format version (2; version 1 lacked `stale-if-error`) |
//! | 10 | 2 | flags (0) |
//! | 12 | 4 | key length |
//! | 16 | 4 | metadata length |
//! | 20 | 8 | body length |
//! | 28 | 4 | CRC-32 of bytes 0..28, the key and the metadata |
//! | 32 | | key, metadata, body |
//!
//! A file whose magic, version, checksum or metadata do not check out, or
//! whose length is not exactly header plus body, reads as absent and is
//! removed. Only the header is checksummed: checking the body would cost a
//! pass over every byte served.
//!
//! # Reads
//!
//! A body is streamed off the file in 64 KiB chunks; the first read also
//! takes the header. On Linux a read first runs on the calling thread
//! without ever waiting for the disk: the path is resolved only from the
//! dentry cache (`openat2` with `RESOLVE_CACHED`) and data is taken only
//! from the page cache (`preadv2` with `RWF_NOWAIT`). Whatever would wait
//! (and every read elsewhere) runs on tokio's blocking pool. A hot entry
//! thus costs no thread hand-off.
//!
//! # Writes
//!
//! A write streams into `<root>/<h[0..2]>/.tmp.<h>.<pid>.<n>` and is renamed
//! over the entry on commit, which is atomic: readers that opened the old
//! file keep reading it whole, later readers see the new one. Small bodies
//! are buffered and written with a single call at commit. Leftover
//! temporary files (a crash mid-write) are removed when the store is opened.
//!
//! [`WriteMode::Copy`] is for filesystems without an atomic rename: the
//! entry's file is removed and the temporary file copied into a new one.
//! That is **not** atomic: until the copy ends, readers find the entry
//! absent, and a crash in between loses the entry or leaves a short file,
//! which reads as absent. Readers that opened the old entry keep reading
//! it whole (where removed open files stay readable, as on POSIX), and no
//! reader ever gets a mix of two versions.
//!
//! Without [`FileStoreBuilder::sync`], a commit is durable against a crash
//! of the process but not against a power loss.
//!
//! One store owns its directory: opening takes an exclusive lock on
//! `<root>/.lock`, so a second store on the same directory fails to open.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use daramjwee_component::Decoder;
use daramjwee_component::policy::{Policy, PolicyKind};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use sha2::{Digest, Sha256};

use crate::tier::{ByteStream, StoreStats, Tier, TierEntry, TierSink};
use crate::{Error, Metadata, Result};

const MAGIC: [u8; 8] = *b"DJWEFILE";
const VERSION: u16 = 2;
const FIXED: usize = 32;
/// Bytes read per step when streaming a body.
const READ_CHUNK: usize = 64 * 1024;
/// Buffered body bytes at which a sink starts writing its temporary file.
const FLUSH_AT: usize = 256 * 1024;
const STRIPES: usize = 64;
const TEMP_PREFIX: &str = ".tmp.";
const LOCK_FILE: &str = ".lock";

/// How a commit puts the finished file in place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// Rename the temporary file over the entry: atomic.
    #[default]
    Rename,
    /// Remove the entry, then copy the temporary file into its place, for
    /// filesystems without an atomic rename. Not atomic: see the module
    /// docs.
    Copy,
}

/// Options of a [`FileStore`]; [`FileStoreBuilder::open`] opens it.
#[derive(Clone, Debug)]
pub struct FileStoreBuilder {
    root: PathBuf,
    capacity: u64,
    policy: PolicyKind,
    mode: WriteMode,
    sync: bool,
}

impl FileStoreBuilder {
    /// Bound the store to `bytes` (whole files: header, key, metadata and
    /// body), evicting with `policy`. Default: 0, unbounded. An entry the
    /// policy does not admit (larger than the capacity; for S3-FIFO, not
    /// smaller than a tenth of it) is not kept.
    pub fn capacity(mut self, bytes: u64, policy: PolicyKind) -> Self {
        self.capacity = bytes;
        self.policy = policy;
        self
    }

    /// How commits put files in place. Default: [`WriteMode::Rename`].
    pub fn write_mode(mut self, mode: WriteMode) -> Self {
        self.mode = mode;
        self
    }

    /// Flush each entry's file, and its directory, to the disk before a
    /// commit returns. Default: off.
    pub fn sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    /// Open (creating it if needed) the store's directory as tier `name`:
    /// scans it to rebuild sizes and policy state, removes leftover
    /// temporary files and damaged short files, and evicts down to the
    /// capacity. Blocks while it scans.
    pub fn open(self, name: impl Into<String>) -> Result<FileStore> {
        FileStore::open_with(name.into(), self)
    }
}

/// A tier keeping one file per entry under a root directory. See the
/// [module docs](self) for the format and guarantees.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    root: PathBuf,
    mode: WriteMode,
    sync: bool,
    stripes: Box<[Mutex<()>]>,
    index: Mutex<Index>,
    /// Which fan-out directories are known to exist, one bit each.
    dirs: [AtomicU64; 4],
    evictions: AtomicU64,
    temp_counter: AtomicU64,
    /// Held for the lock on `.lock`; released when the store is dropped.
    _lock: File,
}

/// What is on disk, as far as sizes and eviction go.
struct Index {
    sizes: HashMap<u128, u64>,
    bytes: u64,
    policy: Option<Box<dyn Policy<u128>>>,
}

impl Index {
    /// Record `hash` as resident with `size` bytes; returns the victims,
    /// already forgotten, whose files the caller must remove.
    fn publish(&mut self, hash: u128, size: u64) -> Vec<u128> {
        if let Some(old) = self.sizes.insert(hash, size) {
            self.bytes -= old;
        }
        self.bytes += size;
        let mut evicted = Vec::new();
        if let Some(policy) = &mut self.policy {
            policy.insert(hash, size, &mut evicted);
        }
        for victim in &evicted {
            if let Some(size) = self.sizes.remove(victim) {
                self.bytes -= size;
            }
        }
        evicted
    }

    fn forget(&mut self, hash: u128) {
        if let Some(size) = self.sizes.remove(&hash) {
            self.bytes -= size;
        }
        if let Some(policy) = &mut self.policy {
            policy.remove(&hash);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves no broken invariant
    // worth refusing service over.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The first 128 bits of the key's SHA-256.
fn key_hash(key: &str) -> u128 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

fn parse_hash(name: &str) -> Option<u128> {
    if name.len() != 32 || !name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(name, 16).ok()
}

fn fan_out(hash: u128) -> usize {
    (hash >> 120) as usize
}

impl FileStore {
    /// Options for a store rooted at `root`; see [`FileStoreBuilder`].
    pub fn builder(root: impl Into<PathBuf>) -> FileStoreBuilder {
        FileStoreBuilder {
            root: root.into(),
            capacity: 0,
            policy: crate::spec::DEFAULT_POLICY,
            mode: WriteMode::Rename,
            sync: false,
        }
    }

    /// Open an unbounded store rooted at `root` with default options.
    pub fn open(name: impl Into<String>, root: impl Into<PathBuf>) -> Result<FileStore> {
        FileStore::builder(root).open(name)
    }

    fn open_with(name: String, options: FileStoreBuilder) -> Result<FileStore> {
        let root = options.root;
        let fail = |what: &str, e: io::Error| store_error(&root, &format!("{what}: {e}"));
        fs::create_dir_all(&root).map_err(|e| fail("cannot create the directory", e))?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(LOCK_FILE))
            .map_err(|e| fail("cannot open the lock file", e))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(store_error(&root, "in use by another store"));
            }
            // Some filesystems cannot lock; the store then relies on being
            // the only user of the directory.
            Err(fs::TryLockError::Error(e)) if e.kind() == io::ErrorKind::Unsupported => {}
            Err(fs::TryLockError::Error(e)) => return Err(fail("cannot lock", e)),
        }
        let policy = (options.capacity > 0).then(|| options.policy.build::<u128>(options.capacity));
        let inner = Inner {
            name,
            root,
            mode: options.mode,
            sync: options.sync,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            index: Mutex::new(Index {
                sizes: HashMap::new(),
                bytes: 0,
                policy,
            }),
            dirs: Default::default(),
            evictions: AtomicU64::new(0),
            temp_counter: AtomicU64::new(0),
            _lock: lock_file,
        };
        inner.scan()?;
        Ok(FileStore {
            inner: Arc::new(inner),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where the entry of `key` lives (whether or not it exists).
    pub fn entry_path(&self, key: &str) -> PathBuf {
        self.inner.path(key_hash(key))
    }

    /// Entries, bytes on disk and evictions so far.
    pub fn stats(&self) -> StoreStats {
        let index = lock(&self.inner.index);
        StoreStats {
            entries: index.sizes.len() as u64,
            bytes: index.bytes,
            evictions: self.inner.evictions.load(Ordering::Relaxed),
        }
    }
}

fn store_error(root: &Path, what: &str) -> Error {
    Error::Store(format!("file store {}: {what}", root.display()))
}

impl Inner {
    fn error(&self, what: &str, e: &io::Error) -> Error {
        store_error(&self.root, &format!("{what}: {e}"))
    }

    fn dir(&self, hash: u128) -> PathBuf {
        self.root.join(format!("{:02x}", fan_out(hash)))
    }

    /// `ROOT/ff/<32 hex digits>`, built in one allocation: every lookup
    /// makes one.
    fn path(&self, hash: u128) -> PathBuf {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut name = [0u8; 35];
        name[0] = HEX[fan_out(hash) >> 4];
        name[1] = HEX[fan_out(hash) & 15];
        name[2] = b'/';
        for (i, digit) in name[3..].iter_mut().enumerate() {
            *digit = HEX[(hash >> (124 - 4 * i)) as usize & 15];
        }
        let name = std::str::from_utf8(&name).expect("hex digits are ASCII");
        let root = self.root.as_os_str();
        let mut path = std::ffi::OsString::with_capacity(root.len() + 1 + name.len());
        path.push(root);
        let mut path = PathBuf::from(path);
        path.push(name);
        path
    }

    fn stripe(&self, hash: u128) -> MutexGuard<'_, ()> {
        lock(&self.stripes[hash as usize % STRIPES])
    }

    fn ensure_dir(&self, hash: u128) -> io::Result<()> {
        let n = fan_out(hash);
        let (word, bit) = (&self.dirs[n / 64], 1u64 << (n % 64));
        if word.load(Ordering::Relaxed) & bit != 0 {
            return Ok(());
        }
        fs::create_dir_all(self.dir(hash))?;
        if self.sync {
            sync_dir(&self.root)?;
        }
        word.fetch_or(bit, Ordering::Relaxed);
        Ok(())
    }

    fn scan(&self) -> Result<()> {
        let mut found = Vec::new();
        let entries = fs::read_dir(&self.root).map_err(|e| self.error("cannot list", &e))?;
        for dir in entries {
            let dir = dir.map_err(|e| self.error("cannot list", &e))?;
            let name = dir.file_name();
            let Some(n) = name
                .to_str()
                .filter(|n| {
                    n.len() == 2 && n.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                })
                .and_then(|n| u8::from_str_radix(n, 16).ok())
            else {
                continue;
            };
            if !dir.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            self.dirs[n as usize / 64].fetch_or(1 << (n % 64), Ordering::Relaxed);
            let files = fs::read_dir(dir.path()).map_err(|e| self.error("cannot list", &e))?;
            for file in files {
                let file = file.map_err(|e| self.error("cannot list", &e))?;
                let file_name = file.file_name();
                let Some(file_name) = file_name.to_str() else {
                    continue;
                };
                if file_name.starts_with(TEMP_PREFIX) {
                    remove_if_present(&file.path())
                        .map_err(|e| self.error("cannot remove a temporary file", &e))?;
                    continue;
                }
                let Some(hash) = parse_hash(file_name).filter(|h| fan_out(*h) == n as usize) else {
                    continue;
                };
                let meta = file.metadata().map_err(|e| self.error("cannot stat", &e))?;
                if !meta.is_file() {
                    continue;
                }
                if meta.len() < FIXED as u64 {
                    remove_if_present(&file.path())
                        .map_err(|e| self.error("cannot remove a damaged file", &e))?;
                    continue;
                }
                let modified = meta.modified().unwrap_or(UNIX_EPOCH);
                found.push((modified, hash, meta.len()));
            }
        }
        // Oldest first, so the policy sees the newest files as the most
        // recently used.
        found.sort_unstable();
        let mut victims = Vec::new();
        {
            let mut index = lock(&self.index);
            for (_, hash, size) in found {
                victims.extend(index.publish(hash, size));
            }
        }
        self.remove_victims(victims)
    }

    /// Remove the files of evicted keys, unless a commit brought the key
    /// back since it was evicted.
    fn remove_victims(&self, victims: Vec<u128>) -> Result<()> {
        let mut first_error = None;
        for victim in victims {
            self.evictions.fetch_add(1, Ordering::Relaxed);
            let _stripe = self.stripe(victim);
            if lock(&self.index).sizes.contains_key(&victim) {
                continue;
            }
            if let Err(e) = remove_if_present(&self.path(victim)) {
                first_error.get_or_insert(self.error("cannot remove an evicted entry", &e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A name for a new temporary file of `hash`, unique within the
    /// process (and the directory is this process's alone).
    fn temp_path(&self, hash: u128) -> PathBuf {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        self.dir(hash).join(format!(
            "{TEMP_PREFIX}{hash:032x}.{}.{n}",
            std::process::id()
        ))
    }

    /// Create the temporary file at `path`.
    fn create_temp(&self, hash: u128, path: PathBuf) -> Result<TempFile> {
        self.ensure_dir(hash)
            .map_err(|e| self.error("cannot create a directory", &e))?;
        // Truncating, not exclusive: the only file that can have this name
        // is a leftover of a dead process with the same pid.
        let create = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
        };
        let file = match create() {
            // The directory was removed behind the store's back.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(self.dir(hash)).and_then(|()| create())
            }
            other => other,
        }
        .map_err(|e| self.error("cannot create a temporary file", &e))?;
        Ok(TempFile { file, path })
    }

    /// Put the finished temporary file in place and account for it.
    fn publish(&self, hash: u128, temp: TempFile, size: u64) -> Result<()> {
        let TempFile { file, path } = temp;
        match self.place(hash, file, &path, size) {
            Ok(victims) => self.remove_victims(victims),
            Err(e) => {
                let _ = remove_if_present(&path);
                Err(self.error("cannot commit", &e))
            }
        }
    }

    /// Move or copy `temp` over the entry; returns the keys it evicted.
    fn place(&self, hash: u128, mut file: File, temp: &Path, size: u64) -> io::Result<Vec<u128>> {
        if self.sync {
            file.sync_all()?;
        }
        let target = self.path(hash);
        // Held across the copy too, so a reader that finds the entry
        // half-copied waits before judging it damaged.
        let _stripe = self.stripe(hash);
        match self.mode {
            WriteMode::Rename => {
                drop(file);
                fs::rename(temp, &target)?;
            }
            WriteMode::Copy => {
                // Removed first, so readers that opened the old entry keep
                // reading it whole from its own (unlinked) file.
                remove_if_present(&target)?;
                file.seek(SeekFrom::Start(0))?;
                let mut out = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&target)?;
                io::copy(&mut (&mut file).take(size), &mut out)?;
                if self.sync {
                    out.sync_all()?;
                }
                drop(file);
                fs::remove_file(temp)?;
            }
        }
        if self.sync {
            sync_dir(&self.dir(hash))?;
        }
        Ok(lock(&self.index).publish(hash, size))
    }

    fn delete(&self, hash: u128) -> Result<()> {
        let _stripe = self.stripe(hash);
        remove_if_present(&self.path(hash)).map_err(|e| self.error("cannot delete", &e))?;
        lock(&self.index).forget(hash);
        Ok(())
    }

    /// Open and check the entry; `body` asks for the first body chunk too.
    /// With [`Wait::Never`], anything short of a sound answer from memory
    /// (including a damaged file, whose removal may wait) is `WouldBlock`.
    fn open_entry(&self, hash: u128, key: &str, body: bool, wait: Wait) -> Result<Lookup> {
        let path = self.path(hash);
        match read_entry(&path, key, body, wait) {
            Ok(Found::Entry(opened)) => Ok(Lookup::Found(opened)),
            Ok(Found::Absent | Found::OtherKey) => Ok(Lookup::Absent),
            Ok(Found::WouldBlock) => Ok(Lookup::WouldBlock),
            Ok(Found::Damaged) if wait == Wait::Never => Ok(Lookup::WouldBlock),
            Ok(Found::Damaged) => {
                self.remove_damaged(hash, key)?;
                Ok(Lookup::Absent)
            }
            Err(e) => Err(self.error("cannot read", &e)),
        }
    }

    /// Remove a damaged file, unless it was replaced since it was read.
    fn remove_damaged(&self, hash: u128, key: &str) -> Result<()> {
        let _stripe = self.stripe(hash);
        let path = self.path(hash);
        if let Ok(Found::Damaged) = read_entry(&path, key, false, Wait::Block) {
            tracing::warn!(path = %path.display(), "removing a damaged cache file");
            remove_if_present(&path).map_err(|e| self.error("cannot remove a damaged file", &e))?;
            lock(&self.index).forget(hash);
        }
        Ok(())
    }

    /// Look `key` up: from memory on the calling thread when the page cache
    /// holds it, else on the blocking pool.
    async fn lookup(self: &Arc<Self>, key: &str, body: bool) -> Result<Option<Opened>> {
        let hash = key_hash(key);
        let opened = match self.open_entry(hash, key, body, Wait::Never)? {
            Lookup::Found(opened) => Some(opened),
            Lookup::Absent => None,
            Lookup::WouldBlock => {
                let owned = key.to_owned();
                blocking(self, move |store| {
                    match store.open_entry(hash, &owned, body, Wait::Block)? {
                        Lookup::Found(opened) => Ok(Some(opened)),
                        _ => Ok(None),
                    }
                })
                .await?
            }
        };
        if body && opened.is_some() {
            self.touch(hash);
        }
        Ok(opened)
    }

    fn touch(&self, hash: u128) {
        let mut index = lock(&self.index);
        if let Some(policy) = &mut index.policy {
            policy.touch(&hash);
        }
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

struct TempFile {
    file: File,
    path: PathBuf,
}

/// An entry opened for reading: checked header, the first body bytes, and
/// the file positioned after them.
struct Opened {
    meta: Metadata,
    size: u64,
    first: Bytes,
    file: File,
}

enum Found {
    Entry(Opened),
    Absent,
    /// A sound entry of another key with the same hash.
    OtherKey,
    Damaged,
    /// Only with [`Wait::Never`]: the answer needs the disk.
    WouldBlock,
}

struct Header {
    key_len: usize,
    meta_len: usize,
    body_len: u64,
    crc: u32,
}

fn fixed_header(key_len: u32, meta_len: u32, body_len: u64, crc: u32) -> [u8; FIXED] {
    let mut h = [0u8; FIXED];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&key_len.to_le_bytes());
    h[16..20].copy_from_slice(&meta_len.to_le_bytes());
    h[20..28].copy_from_slice(&body_len.to_le_bytes());
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

fn header_crc(fixed: &[u8], key_meta: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&fixed[..28]);
    crc.update(key_meta);
    crc.finalize()
}

fn parse_fixed(h: &[u8]) -> Option<Header> {
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let flags = u16::from_le_bytes([h[10], h[11]]);
    if h[0..8] != MAGIC || u16::from_le_bytes([h[8], h[9]]) != VERSION || flags != 0 {
        return None;
    }
    Some(Header {
        key_len: u32_at(12) as usize,
        meta_len: u32_at(16) as usize,
        body_len: u64::from_le_bytes(h[20..28].try_into().expect("8 bytes")),
        crc: u32_at(28),
    })
}

/// Whether a read may wait for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Block,
    /// Only what the kernel holds in memory; give up otherwise.
    Never,
}

enum Lookup {
    Found(Opened),
    Absent,
    WouldBlock,
}

/// Reads that never wait for the disk: path lookups served from the
/// dentry cache (`RESOLVE_CACHED`) and reads from the page cache
/// (`RWF_NOWAIT`). Anything else answers "would block".
#[cfg(target_os = "linux")]
mod nowait {
    use std::fs::File;
    use std::io::{self, IoSliceMut};
    use std::path::Path;

    use rustix::fs::{CWD, Mode, OFlags, ResolveFlags, openat2};
    use rustix::io::{Errno, ReadWriteFlags, preadv2};

    /// `Ok(None)`: would block, or the kernel cannot say without blocking.
    pub(super) fn open(path: &Path) -> io::Result<Option<File>> {
        let flags = OFlags::RDONLY | OFlags::CLOEXEC;
        match openat2(CWD, path, flags, Mode::empty(), ResolveFlags::CACHED) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(Errno::NOENT) => Err(io::ErrorKind::NotFound.into()),
            Err(_) => Ok(None),
        }
    }

    /// Read at the file position; `Ok(None)` when the data is not in
    /// memory (or the filesystem cannot tell).
    pub(super) fn read(file: &File, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            let mut bufs = [IoSliceMut::new(buf)];
            // Offset `u64::MAX`: read at, and advance, the file position.
            match preadv2(file, &mut bufs, u64::MAX, ReadWriteFlags::NOWAIT) {
                Ok(n) => return Ok(Some(n)),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN | Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod nowait {
    use std::fs::File;
    use std::io;
    use std::path::Path;

    pub(super) fn open(_: &Path) -> io::Result<Option<File>> {
        Ok(None)
    }

    pub(super) fn read(_: &File, _: &mut [u8]) -> io::Result<Option<usize>> {
        Ok(None)
    }
}

fn open_file(path: &Path, wait: Wait) -> io::Result<Option<File>> {
    match wait {
        Wait::Block => File::open(path).map(Some),
        Wait::Never => nowait::open(path),
    }
}

/// Read into `buf` until it is full or the file ends, from the file
/// position. Returns the bytes read and whether it stopped early because,
/// with [`Wait::Never`], the rest is not in memory.
fn fill(file: &mut File, buf: &mut [u8], wait: Wait) -> io::Result<(usize, bool)> {
    let mut got = 0;
    while got < buf.len() {
        let n = match wait {
            Wait::Never => match nowait::read(file, &mut buf[got..])? {
                Some(n) => n,
                None => return Ok((got, true)),
            },
            Wait::Block => match file.read(&mut buf[got..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            },
        };
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok((got, false))
}

/// Fill `buf` exactly; `Ok(None)` if it would block, `Ok(Some(false))` if
/// the file is shorter.
fn fill_exact(file: &mut File, buf: &mut [u8], wait: Wait) -> io::Result<Option<bool>> {
    let (got, blocked) = fill(file, buf, wait)?;
    Ok((!blocked).then_some(got == buf.len()))
}

fn read_entry(path: &Path, key: &str, with_body: bool, wait: Wait) -> io::Result<Found> {
    let mut file = match open_file(path, wait) {
        Ok(Some(file)) => file,
        Ok(None) => return Ok(Found::WouldBlock),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Absent),
        Err(e) => return Err(e),
    };
    let file_len = file.metadata()?.len();
    if file_len < FIXED as u64 {
        return Ok(Found::Damaged);
    }
    // Usually the header and the first body chunk (often the whole body)
    // come in one read; the header is read whole before it is believed.
    let first = (FIXED + key.len() + 256).max(if with_body { READ_CHUNK } else { 0 });
    let mut buf = vec![0u8; file_len.min(first as u64) as usize];
    match fill_exact(&mut file, &mut buf, wait)? {
        None => return Ok(Found::WouldBlock),
        Some(false) => return Ok(Found::Damaged),
        Some(true) => {}
    }
    let Some(header) = parse_fixed(&buf[..FIXED]) else {
        return Ok(Found::Damaged);
    };
    let head_len = (FIXED + header.key_len + header.meta_len) as u64;
    if head_len.checked_add(header.body_len) != Some(file_len) {
        return Ok(Found::Damaged);
    }
    if (buf.len() as u64) < head_len {
        let have = buf.len();
        let want = if with_body {
            file_len.min(head_len + READ_CHUNK as u64)
        } else {
            head_len
        };
        buf.resize(want as usize, 0);
        match fill_exact(&mut file, &mut buf[have..], wait)? {
            None => return Ok(Found::WouldBlock),
            Some(false) => return Ok(Found::Damaged),
            Some(true) => {}
        }
    }
    let head_len = head_len as usize;
    if header_crc(&buf[..FIXED], &buf[FIXED..head_len]) != header.crc {
        return Ok(Found::Damaged);
    }
    let key_end = FIXED + header.key_len;
    if &buf[FIXED..key_end] != key.as_bytes() {
        return Ok(Found::OtherKey);
    }
    let Some(meta) = decode_meta(&buf[key_end..head_len]) else {
        return Ok(Found::Damaged);
    };
    let first = if with_body {
        Bytes::from(buf).slice(head_len..)
    } else {
        Bytes::new()
    };
    Ok(Found::Entry(Opened {
        meta,
        size: header.body_len,
        first,
        file,
    }))
}

/// Read the next `want` bytes of a body: inline from the page cache when
/// it holds them, the rest on the blocking pool.
async fn read_chunk(store: &Arc<Inner>, mut file: File, want: usize) -> Result<(File, Bytes)> {
    let mut buf = vec![0u8; want];
    let (got, blocked) =
        fill(&mut file, &mut buf, Wait::Never).map_err(|e| store.error("cannot read", &e))?;
    let (file, buf, got) = if blocked {
        blocking(store, move |store| {
            let (more, _) = fill(&mut file, &mut buf[got..], Wait::Block)
                .map_err(|e| store.error("cannot read", &e))?;
            Ok((file, buf, got + more))
        })
        .await?
    } else {
        (file, buf, got)
    };
    if got < want {
        return Err(store_error(
            &store.root,
            "an entry was cut short while read",
        ));
    }
    Ok((file, Bytes::from(buf)))
}

/// The rest of a body after its first chunk, read off the file in steps.
fn body_stream(store: Arc<Inner>, first: Bytes, file: File, size: u64) -> ByteStream {
    let remaining = size - first.len() as u64;
    let first = (!first.is_empty()).then_some(Ok(first));
    let rest = futures::stream::unfold((Some(file), remaining), move |(file, remaining)| {
        let store = Arc::clone(&store);
        async move {
            let file = file?;
            if remaining == 0 {
                return None;
            }
            let want = remaining.min(READ_CHUNK as u64) as usize;
            match read_chunk(&store, file, want).await {
                Ok((file, chunk)) => Some((Ok(chunk), (Some(file), remaining - want as u64))),
                Err(e) => Some((Err(e), (None, 0))),
            }
        }
    });
    futures::stream::iter(first).chain(rest).boxed()
}

/// Run blocking file work off the async threads.
/// Outside a tokio runtime there is no pool to run on: the work then runs
/// in place.
async fn blocking<T: Send + 'static>(
    store: &Arc<Inner>,
    work: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
) -> Result<T> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return work(store);
    };
    let store = Arc::clone(store);
    let root = store.root.clone();
    runtime
        .spawn_blocking(move || work(&store))
        .await
        .unwrap_or_else(|e| Err(store_error(&root, &format!("file work failed: {e}"))))
}

impl Tier for FileStore {
    fn name(&self) -> String {
        self.inner.name.clone()
    }

    fn admits(&self, key: &str, meta: &Metadata, size: u64) -> bool {
        // Charged the whole file, as the commit charges it.
        let mut encoded = BytesMut::new();
        encode_meta(meta, &mut encoded);
        let charged = size.saturating_add((FIXED + key.len() + encoded.len()) as u64);
        let hash = key_hash(key);
        let index = lock(&self.inner.index);
        index
            .policy
            .as_ref()
            .is_none_or(|policy| policy.admits(&hash, charged))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<TierEntry>>> {
        async move {
            let opened = self.inner.lookup(key, true).await?;
            Ok(opened.map(|opened| TierEntry {
                meta: opened.meta,
                size: opened.size,
                body: body_stream(
                    Arc::clone(&self.inner),
                    opened.first,
                    opened.file,
                    opened.size,
                ),
            }))
        }
        .boxed()
    }

    fn stat<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Metadata>>> {
        async move {
            let opened = self.inner.lookup(key, false).await?;
            Ok(opened.map(|opened| opened.meta))
        }
        .boxed()
    }

    fn begin_write<'a>(
        &'a self,
        key: &'a str,
        meta: Metadata,
    ) -> BoxFuture<'a, Result<Box<dyn TierSink>>> {
        async move {
            let key_len = u32::try_from(key.len())
                .map_err(|_| Error::InvalidKey("longer than 4 GiB".into()))?;
            let mut key_meta = BytesMut::with_capacity(key.len() + 64);
            key_meta.extend_from_slice(key.as_bytes());
            encode_meta(&meta, &mut key_meta);
            let meta_len = u32::try_from(key_meta.len() - key.len())
                .map_err(|_| store_error(&self.inner.root, "metadata larger than 4 GiB"))?;
            Ok(Box::new(FileSink {
                store: Arc::clone(&self.inner),
                hash: key_hash(key),
                key_len,
                meta_len,
                key_meta: key_meta.freeze(),
                pending: Vec::new(),
                pending_len: 0,
                body_len: 0,
                temp: None,
                temp_path: None,
                broken: false,
            }) as Box<dyn TierSink>)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        let hash = key_hash(key);
        async move { blocking(&self.inner, move |store| store.delete(hash)).await }.boxed()
    }
}

/// A write into a temporary file; small bodies stay in memory until commit.
struct FileSink {
    store: Arc<Inner>,
    hash: u128,
    key_len: u32,
    meta_len: u32,
    key_meta: Bytes,
    pending: Vec<Bytes>,
    pending_len: usize,
    body_len: u64,
    /// Created once the body outgrows the buffer.
    temp: Option<TempFile>,
    /// Named before the file is created, so a drop can always remove it.
    temp_path: Option<PathBuf>,
    /// A write failed or was cancelled: the file no longer matches what
    /// was written, so the entry cannot be committed.
    broken: bool,
}

/// Write all of `bufs` with as few calls as the OS allows.
fn write_all_bufs(file: &mut File, bufs: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| IoSlice::new(b))
        .collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl FileSink {
    fn broken_error(&self) -> Error {
        store_error(
            &self.store.root,
            "an earlier write of this entry failed; it cannot be committed",
        )
    }

    /// Write the buffered bytes to the temporary file, creating it (with a
    /// placeholder header) on first use.
    async fn flush(&mut self) -> Result<()> {
        self.broken = true;
        let temp = self.temp.take();
        let create = match (&temp, &self.temp_path) {
            (None, None) => {
                let path = self.store.temp_path(self.hash);
                self.temp_path = Some(path.clone());
                Some(path)
            }
            (None, Some(_)) => return Err(self.broken_error()),
            (Some(_), _) => None,
        };
        let pending = std::mem::take(&mut self.pending);
        self.pending_len = 0;
        let (hash, key_meta) = (self.hash, self.key_meta.clone());
        let (key_len, meta_len) = (self.key_len, self.meta_len);
        let temp = blocking(&self.store, move |store| {
            let (mut temp, placeholder) = match (temp, create) {
                (Some(temp), _) => (temp, None),
                (None, path) => (
                    store.create_temp(hash, path.unwrap_or_else(|| store.temp_path(hash)))?,
                    Some(fixed_header(key_len, meta_len, u64::MAX, 0)),
                ),
            };
            let mut bufs: Vec<&[u8]> = Vec::with_capacity(pending.len() + 2);
            if let Some(placeholder) = &placeholder {
                bufs.push(placeholder);
                bufs.push(&key_meta);
            }
            bufs.extend(pending.iter().map(|b| &b[..]));
            write_all_bufs(&mut temp.file, &bufs).map_err(|e| store.error("cannot write", &e))?;
            Ok(temp)
        })
        .await?;
        self.temp = Some(temp);
        self.broken = false;
        Ok(())
    }
}

impl TierSink for FileSink {
    fn write(&mut self, data: Bytes) -> BoxFuture<'_, Result<()>> {
        async move {
            if self.broken {
                return Err(self.broken_error());
            }
            if data.is_empty() {
                return Ok(());
            }
            self.body_len += data.len() as u64;
            self.pending_len += data.len();
            self.pending.push(data);
            if self.pending_len >= FLUSH_AT {
                self.flush().await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        async move {
            if self.broken {
                return Err(self.broken_error());
            }
            let temp = self.temp.take();
            // From here the blocking work owns the temporary file and
            // removes it if the commit fails, even if this future is dropped.
            let temp_path = self.temp_path.take();
            let pending = std::mem::take(&mut self.pending);
            let (hash, key_meta) = (self.hash, self.key_meta.clone());
            let mut fixed = fixed_header(self.key_len, self.meta_len, self.body_len, 0);
            let crc = header_crc(&fixed, &key_meta);
            fixed[28..32].copy_from_slice(&crc.to_le_bytes());
            let size = (FIXED + key_meta.len()) as u64 + self.body_len;
            blocking(&self.store, move |store| {
                let fresh = temp.is_none();
                let mut temp = match temp {
                    Some(temp) => temp,
                    None => store.create_temp(hash, store.temp_path(hash))?,
                };
                debug_assert!(fresh || temp_path.as_ref() == Some(&temp.path));
                let mut bufs: Vec<&[u8]> = Vec::with_capacity(pending.len() + 2);
                if fresh {
                    bufs.push(&fixed);
                    bufs.push(&key_meta);
                }
                bufs.extend(pending.iter().map(|b| &b[..]));
                let written = write_all_bufs(&mut temp.file, &bufs).and_then(|()| {
                    if fresh {
                        return Ok(());
                    }
                    temp.file.seek(SeekFrom::Start(0))?;
                    temp.file.write_all(&fixed)
                });
                if let Err(e) = written {
                    let _ = remove_if_present(&temp.path);
                    return Err(store.error("cannot write", &e));
                }
                store.publish(hash, temp, size)
            })
            .await
        }
        .boxed()
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        // Not committed: remove the temporary file, even one whose
        // creating write was cancelled mid-way.
        let Some(path) = self.temp_path.take() else {
            return;
        };
        let file = self.temp.take();
        let remove = move || {
            drop(file);
            let _ = remove_if_present(&path);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

// Metadata encoding, version 2 (the file format version covers it).

fn put_str(out: &mut BytesMut, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_duration(out: &mut BytesMut, d: Duration) {
    out.extend_from_slice(&d.as_secs().to_le_bytes());
    out.extend_from_slice(&d.subsec_nanos().to_le_bytes());
}

fn put_opt_duration(out: &mut BytesMut, d: Option<Duration>) {
    match d {
        None => out.extend_from_slice(&[0]),
        Some(d) => {
            out.extend_from_slice(&[1]);
            put_duration(out, d);
        }
    }
}

fn encode_meta(meta: &Metadata, out: &mut BytesMut) {
    put_str(out, &meta.tag);
    out.extend_from_slice(&[u8::from(meta.negative)]);
    match meta.cached_at.map(|t| t.duration_since(UNIX_EPOCH)) {
        None => out.extend_from_slice(&[0]),
        Some(Ok(after)) => {
            out.extend_from_slice(&[1]);
            put_duration(out, after);
        }
        Some(Err(before)) => {
            out.extend_from_slice(&[2]);
            put_duration(out, before.duration());
        }
    }
    put_opt_duration(out, meta.fresh_for);
    put_opt_duration(out, meta.stale_for);
    put_opt_duration(out, meta.stale_if_error);
    out.extend_from_slice(&(meta.attributes.len() as u32).to_le_bytes());
    for (name, value) in &meta.attributes {
        put_str(out, name);
        put_str(out, value);
    }
}

/// The field reader of the engine's codec, with the durations of this
/// format (seconds and nanoseconds).
trait Durations {
    fn duration(&mut self) -> Option<Duration>;
    fn opt_duration(&mut self) -> Option<Option<Duration>>;
}

impl Durations for Decoder<'_> {
    fn duration(&mut self) -> Option<Duration> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        (nanos < 1_000_000_000).then(|| Duration::new(secs, nanos))
    }

    fn opt_duration(&mut self) -> Option<Option<Duration>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.duration()?)),
            _ => None,
        }
    }
}

fn decode_meta(bytes: &[u8]) -> Option<Metadata> {
    let mut d = Decoder(bytes);
    let tag = d.string()?;
    let negative = d.flag()?;
    let cached_at = match d.u8()? {
        0 => None,
        1 => Some(UNIX_EPOCH.checked_add(d.duration()?)?),
        2 => Some(UNIX_EPOCH.checked_sub(d.duration()?)?),
        _ => return None,
    };
    let fresh_for = d.opt_duration()?;
    let stale_for = d.opt_duration()?;
    let stale_if_error = d.opt_duration()?;
    let attributes = d.pairs()?;
    d.0.is_empty().then_some(Metadata {
        tag,
        cached_at,
        negative,
        fresh_for,
        stale_for,
        stale_if_error,
        attributes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metadata {
        Metadata {
            tag: "\"v1\"".into(),
            cached_at: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789)),
            negative: true,
            fresh_for: Some(Duration::from_millis(1500)),
            stale_for: None,
            stale_if_error: Some(Duration::ZERO),
            attributes: vec![
                ("content-type".into(), "text/plain".into()),
                ("é".into(), String::new()),
            ],
        }
    }

    #[test]
    fn entry_paths_are_root_fan_out_and_hash() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FileStore::builder(dir.path()).open("file").expect("open");
        for key in ["a", "/../x", "\u{0}", "é"] {
            let hash = key_hash(key);
            let want = dir
                .path()
                .join(format!("{:02x}", fan_out(hash)))
                .join(format!("{hash:032x}"));
            assert_eq!(store.entry_path(key), want);
            assert!(store.entry_path(key).starts_with(dir.path()));
        }
    }

    #[test]
    fn metadata_round_trips() {
        for meta in [sample(), Metadata::default()] {
            let mut out = BytesMut::new();
            encode_meta(&meta, &mut out);
            assert_eq!(decode_meta(&out), Some(meta));
        }
    }

    #[test]
    fn time_before_the_epoch_round_trips() {
        let meta = Metadata {
            cached_at: Some(UNIX_EPOCH - Duration::from_secs(10)),
            ..Metadata::default()
        };
        let mut out = BytesMut::new();
        encode_meta(&meta, &mut out);
        assert_eq!(decode_meta(&out), Some(meta));
    }

    #[test]
    fn truncated_or_padded_metadata_is_rejected() {
        let mut out = BytesMut::new();
        encode_meta(&sample(), &mut out);
        for cut in 0..out.len() {
            assert_eq!(decode_meta(&out[..cut]), None, "cut at {cut}");
        }
        out.extend_from_slice(&[0]);
        assert_eq!(decode_meta(&out), None);
    }

    #[test]
    fn huge_attribute_count_does_not_allocate_it() {
        let mut out = BytesMut::new();
        encode_meta(&Metadata::default(), &mut out);
        let at = out.len() - 4;
        out[at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_meta(&out), None);
    }

    #[test]
    fn file_names_are_hex_of_the_hash() {
        let hash = key_hash("../../etc/passwd");
        let name = format!("{hash:032x}");
        assert_eq!(parse_hash(&name), Some(hash));
        assert_eq!(parse_hash("../x"), None);
        assert_eq!(parse_hash(&name.to_uppercase()), None);
    }

    #[test]
    fn header_round_trips() {
        let h = fixed_header(3, 4, 5, 6);
        let parsed = parse_fixed(&h).expect("valid");
        assert_eq!(
            (parsed.key_len, parsed.meta_len, parsed.body_len, parsed.crc),
            (3, 4, 5, 6)
        );
        // An entry of the previous format (1, without `stale-if-error`)
        // or of a later one reads as absent, never as garbage.
        for version in [1u8, 3] {
            let mut other = h;
            other[8] = version;
            assert!(parse_fixed(&other).is_none(), "version {version}");
        }
    }
}
