//! A tier of one file per entry under a directory the host gives the
//! component (`wasi:filesystem`, a preopened directory): it outlives the
//! instance, so entries survive from one request to the next.
//!
//! Names are the SHA-256 of the key, so nothing is ever written outside
//! the directory; a write goes to a temporary file that is renamed over
//! the entry when it commits, so readers see the old entry or the new one
//! and never a part; a short or damaged file reads as a miss.

use std::cell::Cell;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use daramjwee_component::{Entry, Error, Metadata, Result, Sink, Tier};

use crate::body::EdgeBody;
use crate::entry::{Header, body_len_offset, encode_header, storage_name};

/// Entry files end in this; temporary files start with `.tmp-`.
const SUFFIX: &str = ".entry";

/// A directory of entries.
pub struct FileTier {
    root: PathBuf,
    name: String,
    /// Makes temporary names unique within the instance.
    counter: Cell<u64>,
}

impl FileTier {
    /// Use `root`, which must be an existing directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<FileTier> {
        let root = root.into();
        match fs::metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(invalid(&root, "is not a directory")),
            Err(e) => return Err(invalid(&root, &e.to_string())),
        }
        Ok(FileTier {
            name: format!("file:{}", root.display()),
            root,
            counter: Cell::new(0),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(format!("{}{SUFFIX}", storage_name(key)))
    }

    /// Open `key`'s file and read its header; `None` when it is missing,
    /// damaged, short, or another key's.
    fn open_entry(&self, key: &str) -> Result<Option<(File, Header)>> {
        let mut file = match File::open(self.path(key)) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(store_error("opening", key, &e)),
        };
        let mut prefix = [0; Header::PREFIX];
        if file.read_exact(&mut prefix).is_err() {
            return Ok(None);
        }
        let Some(len) = Header::header_len(&prefix) else {
            return Ok(None);
        };
        let file_len = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return Err(store_error("reading", key, &e)),
        };
        if len as u64 > file_len {
            return Ok(None);
        }
        let mut bytes = prefix.to_vec();
        bytes.resize(len, 0);
        if file.read_exact(&mut bytes[Header::PREFIX..]).is_err() {
            return Ok(None);
        }
        Ok(Header::decode(&bytes)
            .filter(|h| h.key == key && h.len as u64 + h.body_len == file_len)
            .map(|h| (file, h)))
    }

    fn temp_path(&self, key: &str) -> PathBuf {
        let n = self.counter.get();
        self.counter.set(n + 1);
        self.root.join(format!(
            ".tmp-{}-{:016x}-{n}",
            &storage_name(key)[..16],
            unique()
        ))
    }
}

impl Tier for FileTier {
    type Body = EdgeBody;
    type Sink = FileSink;
    /// Nothing is held in memory: every read streams.
    type Whole = std::convert::Infallible;

    fn name(&self) -> String {
        self.name.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<Entry<EdgeBody>>> {
        Ok(self.open_entry(key)?.map(|(file, header)| Entry {
            meta: header.meta,
            size: header.body_len,
            body: EdgeBody::File {
                file,
                left: header.body_len,
            },
        }))
    }

    async fn stat(&self, key: &str) -> Result<Option<Metadata>> {
        Ok(self.open_entry(key)?.map(|(_, header)| header.meta))
    }

    async fn begin_write(&self, key: &str, meta: &Metadata) -> Result<FileSink> {
        let temp = self.temp_path(key);
        let header = encode_header(key, meta, 0);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| store_error("creating a temporary file for", key, &e))?;
        let mut sink = FileSink {
            file: None,
            temp: temp.clone(),
            path: self.path(key),
            len_at: body_len_offset(header.len()) as u64,
            written: 0,
        };
        file.write_all(&header)
            .map_err(|e| store_error("writing", key, &e))?;
        sink.file = Some(file);
        Ok(sink)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match fs::remove_file(self.path(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(store_error("deleting", key, &e)),
        }
    }
}

/// A write in progress: a temporary file, renamed over the entry on
/// commit and removed when dropped uncommitted.
pub struct FileSink {
    file: Option<File>,
    temp: PathBuf,
    path: PathBuf,
    len_at: u64,
    written: u64,
}

impl Sink for FileSink {
    async fn write(&mut self, data: Vec<u8>) -> Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| Error::Store("the write already ended".into()))?;
        file.write_all(&data)
            .map_err(|e| Error::Store(format!("writing {}: {e}", self.temp.display())))?;
        self.written += data.len() as u64;
        Ok(())
    }

    async fn commit(mut self) -> Result<()> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| Error::Store("the write already ended".into()))?;
        let fail =
            |e: std::io::Error| Error::Store(format!("committing {}: {e}", self.temp.display()));
        file.seek(SeekFrom::Start(self.len_at)).map_err(fail)?;
        file.write_all(&self.written.to_le_bytes()).map_err(fail)?;
        file.flush().map_err(fail)?;
        drop(file);
        fs::rename(&self.temp, &self.path).map_err(fail)?;
        // Renamed: nothing left for `drop` to remove.
        self.temp = PathBuf::new();
        Ok(())
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        self.file = None;
        if !self.temp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

fn invalid(root: &Path, why: &str) -> Error {
    Error::InvalidConfig(format!("cache-dir: {}: {why}", root.display()))
}

fn store_error(doing: &str, key: &str, e: &std::io::Error) -> Error {
    Error::Store(format!("{doing} the entry of {key:?}: {e}"))
}

/// A number no other instance sharing the directory is likely to pick.
fn unique() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        wasip3::random::random::get_random_u64()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::time::{SystemTime, UNIX_EPOCH};
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32)
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;

    use super::*;

    fn meta(tag: &str) -> Metadata {
        Metadata {
            tag: tag.into(),
            cached_at: Some(1),
            ..Metadata::default()
        }
    }

    async fn read(tier: &FileTier, key: &str) -> Option<(Metadata, Vec<u8>)> {
        let entry = tier.get(key).await.expect("get")?;
        let mut body = entry.body;
        let mut bytes = Vec::new();
        while let Some(chunk) = daramjwee_component::Body::next(&mut body).await {
            bytes.extend(chunk.expect("a whole body"));
        }
        assert_eq!(bytes.len() as u64, entry.size);
        Some((entry.meta, bytes))
    }

    async fn put(tier: &FileTier, key: &str, tag: &str, body: &[u8]) {
        let mut sink = tier.begin_write(key, &meta(tag)).await.expect("begin");
        for chunk in body.chunks(3) {
            sink.write(chunk.to_vec()).await.expect("write");
        }
        sink.commit().await.expect("commit");
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn commit_publishes_and_overwrite_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let tier = FileTier::open(dir.path()).unwrap();
        block_on(async {
            assert!(read(&tier, "/k").await.is_none());
            put(&tier, "/k", "v1", b"first body").await;
            assert_eq!(
                read(&tier, "/k").await,
                Some((meta("v1"), b"first body".to_vec()))
            );
            put(&tier, "/k", "v2", b"second").await;
            assert_eq!(
                read(&tier, "/k").await,
                Some((meta("v2"), b"second".to_vec()))
            );
            assert_eq!(tier.stat("/k").await.unwrap(), Some(meta("v2")));
            tier.delete("/k").await.unwrap();
            tier.delete("/k").await.unwrap();
            assert!(read(&tier, "/k").await.is_none());
        });
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn a_dropped_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let tier = FileTier::open(dir.path()).unwrap();
        block_on(async {
            put(&tier, "/k", "v1", b"kept").await;
            let mut sink = tier.begin_write("/k", &meta("v2")).await.unwrap();
            sink.write(b"half".to_vec()).await.unwrap();
            drop(sink);
            assert_eq!(
                read(&tier, "/k").await,
                Some((meta("v1"), b"kept".to_vec()))
            );
        });
        assert_eq!(files(dir.path()).len(), 1, "no temporary file is left");
    }

    #[test]
    fn damaged_short_or_foreign_files_read_as_misses() {
        let dir = tempfile::tempdir().unwrap();
        let tier = FileTier::open(dir.path()).unwrap();
        block_on(async {
            put(&tier, "/a", "v1", b"0123456789").await;
            put(&tier, "/b", "v1", b"other").await;
            let path = tier.path("/a");
            let full = fs::read(&path).unwrap();
            fs::write(&path, &full[..full.len() - 1]).unwrap();
            assert!(read(&tier, "/a").await.is_none(), "short body");
            fs::write(&path, &full[..5]).unwrap();
            assert!(read(&tier, "/a").await.is_none(), "short header");
            fs::write(&path, b"garbage that is not an entry at all").unwrap();
            assert!(read(&tier, "/a").await.is_none(), "damaged header");
            // Another key's file under this key's name (a hash collision).
            fs::copy(tier.path("/b"), &path).unwrap();
            assert!(read(&tier, "/a").await.is_none(), "another key's entry");
            assert!(read(&tier, "/b").await.is_some());
        });
    }

    #[test]
    fn hostile_keys_stay_inside_the_root() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("root");
        fs::create_dir(&root).unwrap();
        let tier = FileTier::open(&root).unwrap();
        let long = "x".repeat(65_536);
        let keys = ["../escape", "/etc/passwd", "a\0b", "é/ü?q=1", long.as_str()];
        block_on(async {
            for key in keys {
                put(&tier, key, "t", key.as_bytes()).await;
                assert_eq!(read(&tier, key).await.unwrap().1, key.as_bytes());
            }
        });
        assert_eq!(files(parent.path()), vec!["root".to_owned()]);
        assert_eq!(files(&root).len(), keys.len());
    }

    #[test]
    fn a_root_that_is_not_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        fs::write(&file, b"").unwrap();
        for root in [file, dir.path().join("missing")] {
            match FileTier::open(&root) {
                Err(Error::InvalidConfig(why)) => assert!(why.starts_with("cache-dir:"), "{why}"),
                other => panic!("expected a config error, got {:?}", other.err()),
            }
        }
    }
}
