//! The on-disk cache of compiled components, and why its files can be trusted.
//!
//! Compiling the embedded components takes seconds, so their compiled form is kept in
//! `$STEERLM_CACHE_DIR` (default `$XDG_CACHE_HOME/steerlm/components`, else
//! `~/.cache/steerlm/components`; `STEERLM_NO_CACHE=1` turns the cache off). A cache
//! file is native code that runs outside the sandbox's compiler, so it is used only when:
//!
//! - no other user can write the folder: it and every folder above it belong to us (or
//!   root) and are not group- or world-writable (a sticky folder such as `/tmp` may be,
//!   above it). Otherwise the cache is not used at all (one warning; components are
//!   compiled in memory, which is slower but safe);
//! - the file is a regular file (not a symlink) that we own and others cannot write;
//! - its header names the entry it was written for: the sha256 of the component's wasm
//!   and of the compiling engine (wasmtime's version, target, flags and settings, from
//!   `Engine::precompile_compatibility_hash`), so a renamed or swapped file is refused;
//! - the sha256 of the compiled bytes matches the header, so a truncated or corrupted
//!   file is refused.
//!
//! A refused or missing entry is compiled again and rewritten atomically (temporary
//! file, then rename; mode 0600). The checksums catch accidents, not a hostile writer
//! (who could recompute them): the permission checks are what keep others out.

use crate::sandbox::hex;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs::{DirBuilder, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of every cache file; bump the version when the layout changes.
const MAGIC: &[u8; 16] = b"steerlm-cwasm-1\n";
const HEADER_LEN: usize = MAGIC.len() + 32 + 32;
/// Write permission for group or others.
const OTHERS_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// A cache folder that passed the permission checks.
#[derive(Debug)]
pub struct ComponentCache {
    dir: PathBuf,
}

/// Feeds `Hash` output into a sha256, so the engine's compatibility hash becomes a
/// stable, collision-resistant part of the key.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only the digest is read")
    }
}

/// What a cache entry is for: the component's wasm and the engine that compiles it.
fn entry_key(engine: &Engine, wasm: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256Hasher(Sha256::new());
    hasher.write(MAGIC);
    hasher.write(&Sha256::digest(wasm));
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.0.finalize().into()
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

impl ComponentCache {
    /// The cache the environment names, checked once per process. `None` when caching
    /// is off or the folder is unsafe (then a warning says why, once).
    pub fn from_env() -> Option<&'static ComponentCache> {
        static CACHE: OnceLock<Option<ComponentCache>> = OnceLock::new();
        CACHE
            .get_or_init(|| {
                let dir = cache_dir()?;
                match ComponentCache::open(&dir) {
                    Ok(cache) => Some(cache),
                    Err(why) => {
                        eprintln!(
                            "steerlm: warning: not using the component cache {}: {why}; compiling in memory instead \
                             (fix the permissions, or set STEERLM_CACHE_DIR to a private folder)",
                            dir.display()
                        );
                        None
                    }
                }
            })
            .as_ref()
    }

    /// `dir` as a cache, created (mode 0700) if missing. Fails, saying why, when
    /// another user could write it.
    pub fn open(dir: &Path) -> Result<ComponentCache, String> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| format!("cannot create it ({e})"))?;
        let dir = dir.canonicalize().map_err(|e| format!("cannot resolve it ({e})"))?;
        let me = euid();
        let meta = std::fs::metadata(&dir).map_err(|e| format!("cannot read it ({e})"))?;
        if meta.uid() != me {
            return Err(format!("it belongs to user {}, not to the current user {me}", meta.uid()));
        }
        if meta.mode() & OTHERS_WRITE != 0 {
            return Err(format!("other users can write it (mode {:o})", meta.mode() & 0o7777));
        }
        for ancestor in dir.ancestors().skip(1) {
            let meta = std::fs::metadata(ancestor).map_err(|e| format!("cannot read {} ({e})", ancestor.display()))?;
            if meta.uid() != me && meta.uid() != 0 {
                return Err(format!("{} above it belongs to another user ({})", ancestor.display(), meta.uid()));
            }
            if meta.mode() & OTHERS_WRITE != 0 && meta.mode() & STICKY == 0 {
                return Err(format!(
                    "other users can write {} above it (mode {:o}) and so replace it",
                    ancestor.display(),
                    meta.mode() & 0o7777
                ));
            }
        }
        Ok(ComponentCache { dir })
    }

    fn path(&self, key: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}.cwasm", hex(key)))
    }

    /// The cached compiled form of `wasm`, if there is a trustworthy one.
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> Option<Component> {
        let key = entry_key(engine, wasm);
        let path = self.path(&key);
        let bytes = match read_private_file(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(why) => {
                eprintln!("steerlm: warning: ignoring the cached component {}: {why}; recompiling", path.display());
                return None;
            }
        };
        let compiled = match verified_payload(&bytes, &key) {
            Ok(compiled) => compiled,
            Err(why) => {
                eprintln!("steerlm: warning: ignoring the cached component {}: {why}; recompiling", path.display());
                return None;
            }
        };
        // SAFETY: these bytes were written by `store` below (from `Component::serialize`)
        // for this very wasm and engine, as the verified header says, into a folder and
        // file no other user can write; they are deserialized from memory, so the file
        // cannot change after the check. wasmtime checks its own header again.
        unsafe { Component::deserialize(engine, compiled) }.ok()
    }

    /// Writes the compiled form of `wasm` atomically.
    pub fn store(&self, engine: &Engine, wasm: &[u8], component: &Component) -> Result<()> {
        let key = entry_key(engine, wasm);
        let compiled = component.serialize().map_err(anyhow::Error::from)?;
        let mut temp = tempfile::Builder::new()
            .prefix(".cwasm-")
            .tempfile_in(&self.dir)
            .with_context(|| format!("cannot write in {}", self.dir.display()))?;
        temp.write_all(MAGIC)?;
        temp.write_all(&key)?;
        temp.write_all(&Sha256::digest(&compiled))?;
        temp.write_all(&compiled)?;
        // tempfile creates files with mode 0600.
        temp.persist(self.path(&key))?;
        Ok(())
    }
}

/// The file's bytes; `None` if it does not exist; an error if it is not a regular
/// file of ours that only we can write.
fn read_private_file(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open it ({e}; a symbolic link is not followed)")),
    };
    // Checked on the open file, so what is checked is what is read.
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    if meta.uid() != euid() {
        return Err(format!("it belongs to user {}", meta.uid()));
    }
    if meta.mode() & OTHERS_WRITE != 0 {
        return Err(format!("other users can write it (mode {:o})", meta.mode() & 0o7777));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    let mut file: File = file;
    file.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    Ok(Some(bytes))
}

/// The compiled bytes of a cache file, if its header is for `key` and matches them.
fn verified_payload<'a>(bytes: &'a [u8], key: &[u8; 32]) -> Result<&'a [u8], String> {
    if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return Err("it is not a steerlm cache file (or it is truncated)".into());
    }
    let (stored_key, rest) = bytes[MAGIC.len()..].split_at(32);
    let (digest, compiled) = rest.split_at(32);
    if stored_key != key {
        return Err("it was written for another component or engine".into());
    }
    if Sha256::digest(compiled).as_slice() != digest {
        return Err("its checksum does not match (truncated or corrupted)".into());
    }
    Ok(compiled)
}

/// The folder the environment names for the cache, unless caching is off.
fn cache_dir() -> Option<PathBuf> {
    if std::env::var_os("STEERLM_NO_CACHE").is_some() {
        return None;
    }
    if let Some(dir) = std::env::var_os("STEERLM_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("steerlm").join("components"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const WASM_A: &[u8] = b"\0asm\x0d\0\x01\0"; // the empty component
    fn engine() -> Engine {
        Engine::default()
    }

    fn private_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    fn cached(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect()
    }

    #[test]
    fn entries_round_trip_and_damaged_ones_are_refused() {
        let (engine, dir) = (engine(), private_dir());
        let cache = ComponentCache::open(dir.path()).unwrap();
        let component = Component::new(&engine, WASM_A).unwrap();
        assert!(cache.load(&engine, WASM_A).is_none());
        cache.store(&engine, WASM_A, &component).unwrap();
        let files = cached(dir.path());
        assert_eq!(files.len(), 1, "one entry, no temporary file left: {files:?}");
        let path = &files[0];
        assert_eq!(std::fs::metadata(path).unwrap().mode() & 0o777, 0o600);
        assert!(cache.load(&engine, WASM_A).is_some());

        let good = std::fs::read(path).unwrap();
        // Truncated, one bit flipped in the code, or written for another entry.
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut other_key = good.clone();
        other_key[MAGIC.len()] ^= 1;
        for bad in [good[..good.len() / 2].to_vec(), good[..10].to_vec(), flipped, other_key] {
            std::fs::write(path, &bad).unwrap();
            assert!(cache.load(&engine, WASM_A).is_none());
        }
        std::fs::write(path, &good).unwrap();
        assert!(cache.load(&engine, WASM_A).is_some());
        // A file others can write is not trusted, whatever it holds.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(cache.load(&engine, WASM_A).is_none());
    }

    #[test]
    fn a_symlink_in_the_cache_is_not_followed() {
        let (engine, dir) = (engine(), private_dir());
        let cache = ComponentCache::open(dir.path()).unwrap();
        let component = Component::new(&engine, WASM_A).unwrap();
        cache.store(&engine, WASM_A, &component).unwrap();
        let path = cached(dir.path()).remove(0);
        let elsewhere = dir.path().join("elsewhere");
        std::fs::rename(&path, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert!(cache.load(&engine, WASM_A).is_none());
    }

    #[test]
    fn folders_others_can_write_are_refused() {
        let dir = private_dir();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ComponentCache::open(dir.path()).unwrap_err();
        assert!(err.contains("other users can write it (mode 777)"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(ComponentCache::open(dir.path()).is_err());

        // A private folder under one that others can write (and that is not sticky).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ComponentCache::open(&dir.path().join("inner")).unwrap_err();
        assert!(err.contains("above it"), "{err}");

        // Created private when missing.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let fresh = dir.path().join("a/b");
        ComponentCache::open(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
    }
}
