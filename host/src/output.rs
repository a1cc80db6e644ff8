//! Writing outputs so that nothing half-written is ever left behind, and nothing but
//! the output itself is ever replaced.
//!
//! - A regular file (or a name that does not exist yet) is written to a hidden
//!   temporary file beside it and renamed into place only when the whole command
//!   succeeded. A symbolic link is followed first: its final target gets the bytes and
//!   the link stays a link.
//! - Anything else (a FIFO, `/dev/null`, a terminal, `/dev/stdout`) is written through,
//!   in place: renaming over it would replace the device or pipe itself.
//! - `-` writes to stdout.
//!
//! The last two stream, so they are not atomic. An error return, a failed rename,
//! Ctrl-C, SIGTERM and SIGHUP all remove the temporary file.

use anyhow::{Context, Result, bail};
use flate2::write::GzEncoder;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use tempfile::{NamedTempFile, TempPath};

/// Temporary files to delete if the process is interrupted. Creating, renaming and
/// deleting a temporary file happen under this lock, so a signal never sees a file
/// that is half-registered.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn pending() -> MutexGuard<'static, Vec<PathBuf>> {
    // A panic elsewhere cannot leave the list inconsistent: keep using it.
    PENDING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// On Ctrl-C, SIGTERM (timeouts, `docker stop`, Kubernetes) or SIGHUP: removes pending
/// temporary files, then exits with 130. A signal the parent set to be ignored (`nohup`
/// ignores SIGHUP) stays ignored.
pub fn install_interrupt_cleanup() {
    let ignored = ignored_signals();
    let installed = ctrlc::set_handler(|| {
        // A server stops accepting and answers what it has (once: a second signal exits).
        let stop = STOP_SERVING.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(stop) = stop {
            stop();
            return;
        }
        let pending = pending();
        for path in pending.iter() {
            // Pending folders are `OutputDir`s being written.
            let _ = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
        }
        if pending.is_empty() {
            eprintln!("\ninterrupted");
        } else {
            eprintln!("\ninterrupted: the unfinished output was removed");
        }
        // Exiting with the lock held: no other thread can rename an output into place.
        std::process::exit(130);
    });
    if installed.is_ok() {
        restore_ignored(&ignored);
    }
}

/// What the first interrupt does instead of exiting, while a server runs.
type Stop = Box<dyn FnOnce() + Send>;
static STOP_SERVING: Mutex<Option<Stop>> = Mutex::new(None);

/// Makes the next Ctrl-C, SIGTERM or SIGHUP call `stop` instead of exiting; the one
/// after exits as usual.
pub fn on_interrupt_stop(stop: impl FnOnce() + Send + 'static) {
    *STOP_SERVING.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Box::new(stop));
}

#[cfg(unix)]
const HANDLED_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The handled signals whose disposition is "ignore" now.
#[cfg(unix)]
fn ignored_signals() -> Vec<libc::c_int> {
    HANDLED_SIGNALS
        .into_iter()
        .filter(|&signal| {
            // SAFETY: a null new action only reads the current disposition into `old`.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN }
        })
        .collect()
}

#[cfg(unix)]
fn restore_ignored(signals: &[libc::c_int]) {
    for &signal in signals {
        // SAFETY: setting a standard signal back to SIG_IGN.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
}

#[cfg(not(unix))]
fn ignored_signals() -> Vec<i32> {
    Vec::new()
}

#[cfg(not(unix))]
fn restore_ignored(_: &[i32]) {}

/// Files are created as `open(path, "w")` would create them: 0666 less the umask
/// (tempfile's own default, 0600, would surprise users).
#[cfg(unix)]
fn default_permissions() -> std::fs::Permissions {
    std::os::unix::fs::PermissionsExt::from_mode(0o666)
}

#[cfg(not(unix))]
fn default_permissions() -> std::fs::Permissions {
    std::fs::metadata(".").map(|m| m.permissions()).expect("the current directory has metadata")
}

/// A replaced file keeps its permission bits (not set-id bits), still less the umask.
#[cfg(unix)]
fn kept_permissions(meta: &std::fs::Metadata) -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(meta.permissions().mode() & 0o777)
}

#[cfg(not(unix))]
fn kept_permissions(meta: &std::fs::Metadata) -> std::fs::Permissions {
    meta.permissions()
}

/// Most symbolic links followed in a row, as Linux's own limit.
const MAX_LINKS: usize = 40;

/// Where a path leads once its symbolic links are followed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// The first path in the chain that is not a symbolic link (it may not exist).
    Path(PathBuf),
    /// A link into `/proc` (`/dev/stdout` is `/proc/self/fd/1`): an open descriptor of
    /// this process, which only the kernel can follow.
    Descriptor,
}

/// Follows `path`'s symbolic links one by one (a dangling link resolves to the file it
/// would create).
pub(crate) fn resolve_links(path: &Path) -> Result<Resolved> {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        let is_link = std::fs::symlink_metadata(&current).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            return Ok(Resolved::Path(current));
        }
        let dir = current.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if dir.canonicalize().is_ok_and(|d| d.starts_with("/proc")) {
            return Ok(Resolved::Descriptor);
        }
        let link =
            std::fs::read_link(&current).with_context(|| format!("cannot read the link {}", current.display()))?;
        current = dir.join(link);
    }
    bail!("{}: too many levels of symbolic links", path.display())
}

/// Where an output's bytes go.
enum Destination {
    Stdout,
    /// Written to `temp`, renamed over `target` on commit.
    Replace {
        target: PathBuf,
        temp: TempPath,
    },
    /// Written in place (a FIFO, a device, an open descriptor).
    Through,
}

enum Sink {
    Plain(BufWriter<File>),
    Gzip(GzEncoder<BufWriter<File>>),
    Stdout(BufWriter<io::Stdout>),
}

/// An output file that appears only on [`Output::commit`] (or, for a FIFO or device,
/// is written through as it goes).
pub struct Output {
    /// The path as the user named it, for messages.
    name: String,
    /// The path as the user named it, to find a staged output by (see [`Staging`]).
    requested: PathBuf,
    destination: Destination,
    sink: Sink,
}

/// Writes `text` to stdout and flushes it: a closed pipe or a full disk is an error
/// (`"cannot write <stdout>: ..."`), as for `--output-file -`, not a panic.
pub fn print(text: &str) -> Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).context("cannot write <stdout>")
}

/// [`print()`] for a server's banner: a server whose stdout is closed keeps serving.
pub fn print_banner(text: &str) {
    let _ = print(text);
}

impl Output {
    /// Starts writing `path` (`-` for stdout); `.gz` paths are gzip-compressed.
    pub fn create(path: &Path) -> Result<Output> {
        if path.as_os_str() == "-" {
            return Ok(Output {
                name: "<stdout>".to_owned(),
                requested: path.to_path_buf(),
                destination: Destination::Stdout,
                sink: Sink::Stdout(BufWriter::with_capacity(1 << 20, io::stdout())),
            });
        }
        let name = path.display().to_string();
        let (file, destination) = match resolve_links(path)? {
            Resolved::Descriptor => (open_in_place(path)?, Destination::Through),
            Resolved::Path(target) => match std::fs::metadata(&target) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => replace(&target, default_permissions())?,
                Err(e) => return Err(e).with_context(|| format!("cannot write {name}")),
                Ok(meta) if meta.is_file() => replace(&target, kept_permissions(&meta))?,
                Ok(meta) if meta.is_dir() => bail!("cannot write {name}: it is a directory"),
                Ok(_) => (open_in_place(&target)?, Destination::Through),
            },
        };
        let writer = BufWriter::with_capacity(1 << 20, file);
        let gzip = path.extension().is_some_and(|e| e == "gz");
        let sink =
            if gzip { Sink::Gzip(GzEncoder::new(writer, flate2::Compression::default())) } else { Sink::Plain(writer) };
        Ok(Output { name, requested: path.to_path_buf(), destination, sink })
    }

    pub fn name(&self) -> String {
        self.name.clone()
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let result = match &mut self.sink {
            Sink::Plain(w) => w.write_all(bytes),
            Sink::Gzip(w) => w.write_all(bytes),
            Sink::Stdout(w) => w.write_all(bytes),
        };
        result.with_context(|| format!("cannot write {}", self.name))
    }

    /// Flushes everything; a regular file is synced and renamed into place, or, while a
    /// [`Staging`] is open, when it places every output together.
    pub fn commit(mut self) -> Result<()> {
        let name = self.name.clone();
        let file = match std::mem::replace(&mut self.sink, Sink::Stdout(BufWriter::new(io::stdout()))) {
            Sink::Plain(w) => w.into_inner().map_err(|e| e.into_error()),
            Sink::Gzip(w) => w.finish().and_then(|w| w.into_inner().map_err(|e| e.into_error())),
            Sink::Stdout(mut w) => return w.flush().with_context(|| format!("cannot write {name}")),
        };
        let file = file.with_context(|| format!("cannot write {name}"))?;
        match std::mem::replace(&mut self.destination, Destination::Through) {
            Destination::Replace { target, temp } => {
                let finished = Finished { name, requested: self.requested.clone(), target, temp: Some(temp) };
                file.sync_all().with_context(|| format!("cannot sync {}", finished.name))?;
                let mut staged = staged();
                match staged.as_mut() {
                    Some(list) => {
                        list.push(finished);
                        Ok(())
                    }
                    None => {
                        drop(staged);
                        finished.place()
                    }
                }
            }
            Destination::Through | Destination::Stdout => Ok(()),
        }
    }
}

/// A written and synced temporary file, waiting to be renamed over its target. Dropped
/// unplaced, the temporary file is deleted.
struct Finished {
    name: String,
    requested: PathBuf,
    target: PathBuf,
    temp: Option<TempPath>,
}

impl Finished {
    fn place(mut self) -> Result<()> {
        let temp = self.temp.take().expect("placed once");
        let temp_path = temp.to_path_buf();
        let mut pending = pending();
        // On failure the error hands the temporary path back; dropping it deletes the file.
        let renamed = temp.persist(&self.target).map_err(|e| e.error);
        pending.retain(|p| p != &temp_path);
        renamed.with_context(|| format!("cannot move the output into place at {}", self.name))
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            discard(temp);
        }
    }
}

/// Outputs committed while a [`Staging`] is open, in the order committed; `None` when
/// none is open (a commit then places its output at once).
static STAGED: Mutex<Option<Vec<Finished>>> = Mutex::new(None);

fn staged() -> MutexGuard<'static, Option<Vec<Finished>>> {
    STAGED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Makes a command's outputs appear together. While it is open, a commit only finishes
/// its output (written, synced, still under its temporary name); [`Staging::place_all`]
/// renames them all once the command, its error report and its manifest have succeeded,
/// and dropping it (any error) deletes them, so a failure late in a command (a full disk
/// under its second output, a manifest that cannot be written) leaves every old output as
/// it was. Only a rename failing midway can leave some placed and others not; the
/// manifest, placed last, is then not placed.
pub struct Staging(());

impl Staging {
    pub fn begin() -> Staging {
        *staged() = Some(Vec::new());
        Staging(())
    }

    /// Renames every staged output into place.
    pub fn place_all(self) -> Result<()> {
        let list = staged().take().unwrap_or_default();
        list.into_iter().try_for_each(Finished::place)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // After `place_all` the list is already gone.
        drop(staged().take());
    }
}

/// Where an output committed under the open [`Staging`] is now: its temporary file (for
/// a manifest, which hashes outputs before they are placed).
pub fn staged_path(requested: &Path) -> Option<PathBuf> {
    let staged = staged();
    let finished = staged.as_ref()?.iter().find(|f| f.requested == requested)?;
    Some(finished.temp.as_ref()?.to_path_buf())
}

impl Drop for Output {
    fn drop(&mut self) {
        // An uncommitted gzip stream must not be finished: its trailer would make a
        // truncated stream written through a FIFO or device look complete. (The
        // encoder's buffers are leaked, once, on this error path.)
        if let Sink::Gzip(_) = &self.sink
            && let Sink::Gzip(encoder) = std::mem::replace(&mut self.sink, Sink::Stdout(BufWriter::new(io::stdout())))
        {
            std::mem::forget(encoder);
        }
        if let Destination::Replace { temp, .. } = std::mem::replace(&mut self.destination, Destination::Through) {
            discard(temp);
        }
    }
}

/// Deletes an uncommitted temporary file, and forgets it under the same lock.
fn discard(temp: TempPath) {
    let mut pending = pending();
    let path = temp.to_path_buf();
    drop(temp);
    pending.retain(|p| p != &path);
}

/// A hidden temporary file beside `target`, registered for deletion on a signal.
fn replace(target: &Path, permissions: std::fs::Permissions) -> Result<(File, Destination)> {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target.file_name().with_context(|| format!("{} is not a file name", target.display()))?;
    let prefix = format!(".{}.steerlm-", name.to_string_lossy());
    warn_of_leftovers(&dir, &prefix, &target.display().to_string());
    let mut pending = pending();
    let temp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(permissions)
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let (file, temp) = NamedTempFile::into_parts(temp);
    pending.push(temp.to_path_buf());
    Ok((file, Destination::Replace { target: target.to_path_buf(), temp }))
}

/// A run killed with SIGKILL (or a power cut) cannot remove its temporary file or folder
/// (`prefix` + random characters, in `dir`), which for a folder may hold most of a model.
/// Say so rather than delete it: another steerlm may be writing it right now, from this
/// machine or another sharing the disk.
fn warn_of_leftovers(dir: &Path, prefix: &str, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            eprintln!(
                "warning: {} is left from an unfinished run writing {name} (killed?): remove it once no other steerlm is writing there",
                entry.path().display()
            );
        }
    }
}

/// Opens a FIFO, device or descriptor for writing without replacing or truncating it
/// (appending, so `--output-file /dev/stdout >> log` appends as the shell asked).
fn open_in_place(path: &Path) -> Result<File> {
    OpenOptions::new().append(true).open(path).with_context(|| format!("cannot open {} for writing", path.display()))
}

/// Writes a whole output at once: `bytes` appear at `path` complete or not at all.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut output = Output::create(path)?;
    output.write_all(bytes)?;
    output.commit()
}

/// Writes an [`Output`] on its own thread, so disk writes overlap conversion.
pub struct BackgroundWriter {
    sender: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<Result<Output>>>,
}

impl BackgroundWriter {
    pub fn spawn(mut output: Output) -> Result<Self> {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
        let thread = std::thread::Builder::new().name("steerlm-writer".into()).spawn(move || {
            for bytes in receiver {
                output.write_all(&bytes)?;
            }
            Ok(output)
        })?;
        Ok(BackgroundWriter { sender: Some(sender), thread: Some(thread) })
    }

    pub fn write(&mut self, bytes: Vec<u8>) -> Result<()> {
        let sent = self.sender.as_ref().is_some_and(|s| s.send(bytes).is_ok());
        if !sent {
            // The writer stopped: its error says why.
            self.finish_thread()?;
            anyhow::bail!("the output writer stopped");
        }
        Ok(())
    }

    /// Waits for every write and hands the output back for [`Output::commit`].
    pub fn finish(mut self) -> Result<Output> {
        self.finish_thread()
    }

    fn finish_thread(&mut self) -> Result<Output> {
        self.sender.take();
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| anyhow::anyhow!("the output writer panicked"))?,
            None => anyhow::bail!("the output writer already stopped"),
        }
    }
}

impl Drop for BackgroundWriter {
    fn drop(&mut self) {
        // Join so an abandoned output's temporary file is deleted before we exit.
        let _ = self.finish_thread();
    }
}

/// Commits several outputs together: all of them appear, or (on an error before the
/// first rename) none. Under an open [`Staging`] they wait for it.
pub fn commit_all(outputs: Vec<Output>) -> Result<()> {
    let outer = staged().is_some();
    let staging = (!outer).then(Staging::begin);
    for output in outputs {
        output.commit()?;
    }
    staging.map_or(Ok(()), Staging::place_all)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn fifo(path: &Path) {
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_fifo_is_written_through_and_stays_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipe");
        fifo(&path);
        let reader_path = path.clone();
        let reader = std::thread::spawn(move || std::fs::read(reader_path).unwrap());
        let mut output = Output::create(&path).unwrap();
        output.write_all(b"through the pipe\n").unwrap();
        output.commit().unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe\n");
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_fifo());
        assert_eq!(names(dir.path()), ["pipe"]);
    }

    #[test]
    fn dev_null_stays_a_char_device() {
        // The write-through path is proven on a FIFO of our own first, and /dev/null is
        // only written once create has chosen that path for it (dropping an output that
        // is not committed never renames anything).
        a_fifo_is_written_through_and_stays_a_fifo();
        let mut output = Output::create(Path::new("/dev/null")).unwrap();
        assert!(matches!(output.destination, Destination::Through), "/dev/null must be written through");
        output.write_all(b"discarded").unwrap();
        output.commit().unwrap();
        assert!(std::fs::symlink_metadata("/dev/null").unwrap().file_type().is_char_device());
    }

    #[test]
    fn a_symlink_stays_a_link_and_its_target_gets_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("data").join("real.jsonl");
        std::fs::create_dir(target.parent().unwrap()).unwrap();
        std::fs::write(&target, b"old\n").unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink("data/real.jsonl", &link).unwrap();
        let mut output = Output::create(&link).unwrap();
        output.write_all(b"new\n").unwrap();
        output.commit().unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("data/real.jsonl"));
        assert_eq!(std::fs::read(&target).unwrap(), b"new\n");
        assert_eq!(names(dir.path()), ["data", "link.jsonl"]);
        assert_eq!(names(target.parent().unwrap()), ["real.jsonl"]);
    }

    #[test]
    fn a_dangling_symlink_creates_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink("new.jsonl", &link).unwrap();
        let mut output = Output::create(&link).unwrap();
        output.write_all(b"created\n").unwrap();
        output.commit().unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(dir.path().join("new.jsonl")).unwrap(), b"created\n");
    }

    #[test]
    fn dev_stdout_is_an_open_descriptor() {
        assert_eq!(resolve_links(Path::new("/dev/stdout")).unwrap(), Resolved::Descriptor);
        assert_eq!(resolve_links(Path::new("/dev/fd/1")).unwrap(), Resolved::Descriptor);
    }

    #[test]
    fn a_regular_file_is_replaced_keeping_its_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, b"old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_file(&path, b"new\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(names(dir.path()), ["out.jsonl"]);
    }

    #[test]
    fn a_failed_rename_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut output = Output::create(&path).unwrap();
        output.write_all(b"bytes\n").unwrap();
        // The destination turns into a non-empty directory before the rename.
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), b"").unwrap();
        let error = output.commit().unwrap_err();
        assert!(format!("{error:#}").contains("cannot move the output into place"), "{error:#}");
        assert_eq!(names(dir.path()), ["out.jsonl"]);
        let pending = pending();
        assert!(!pending.iter().any(|p| p.starts_with(dir.path())), "{pending:?}");
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let error = Output::create(dir.path()).err().expect("a directory is not an output");
        assert!(format!("{error:#}").contains("is a directory"), "{error:#}");
    }
}

/// A folder output (`import-nemo --output-dir`): written whole in a hidden temporary
/// folder beside it, then renamed into place. The destination must not exist or be an
/// empty folder (a rename never replaces anything else); an error, a drop before
/// [`OutputDir::commit`], Ctrl-C, SIGTERM and SIGHUP remove the temporary folder.
pub struct OutputDir {
    temp: Option<PathBuf>,
    destination: PathBuf,
}

impl OutputDir {
    pub fn create(destination: &Path) -> Result<Self> {
        let name = destination.display();
        match std::fs::symlink_metadata(destination) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot use {name} as the output folder")),
            Ok(meta) if meta.file_type().is_symlink() => {
                bail!("the output folder {name} is a symbolic link: name the real folder")
            }
            Ok(meta) if !meta.is_dir() => bail!("the output folder {name} exists and is not a folder"),
            Ok(_) => {
                let mut entries = std::fs::read_dir(destination).with_context(|| format!("cannot list {name}"))?;
                if entries.next().is_some() {
                    bail!("the output folder {name} is not empty: name a new or empty folder");
                }
            }
        }
        let parent = match destination.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
        let file_name = destination.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let prefix = format!(".{file_name}.steerlm-");
        warn_of_leftovers(&parent, &prefix, &name.to_string());
        let mut pending = pending();
        let temp = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(&parent)
            .with_context(|| format!("cannot create a folder in {}", parent.display()))?
            .keep();
        pending.push(temp.clone());
        Ok(OutputDir { temp: Some(temp), destination: destination.to_owned() })
    }

    /// The temporary folder to write into.
    pub fn path(&self) -> &Path {
        self.temp.as_deref().expect("not committed yet")
    }

    /// Syncs the folder and renames it into place.
    pub fn commit(mut self) -> Result<()> {
        let temp = self.temp.take().expect("committed once");
        let mut pending = pending();
        let synced = File::open(&temp).and_then(|dir| dir.sync_all());
        let renamed = synced.and_then(|()| std::fs::rename(&temp, &self.destination));
        pending.retain(|p| p != &temp);
        if let Err(e) = renamed {
            let _ = std::fs::remove_dir_all(&temp);
            return Err(e)
                .with_context(|| format!("cannot move the output into place at {}", self.destination.display()));
        }
        Ok(())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let mut pending = pending();
            let _ = std::fs::remove_dir_all(&temp);
            pending.retain(|p| p != &temp);
        }
    }
}
