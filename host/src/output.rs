//! Writing outputs so that nothing half-written is ever left behind: each file is
//! written to a hidden temporary file beside it and renamed into place only when the
//! whole conversion succeeded. A failure, an error return, or Ctrl-C removes the
//! temporary file. `-` writes to stdout (streamed, so not atomic).

use anyhow::{Context, Result};
use flate2::write::GzEncoder;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tempfile::NamedTempFile;

/// Temporary files to delete if the process is interrupted.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes pending temporary files on Ctrl-C / SIGTERM, then exits with 130.
pub fn install_interrupt_cleanup() {
    let _ = ctrlc::set_handler(|| {
        if let Ok(pending) = PENDING.lock() {
            for path in pending.iter() {
                let _ = std::fs::remove_file(path);
            }
        }
        eprintln!("\ninterrupted: no output was written");
        std::process::exit(130);
    });
}

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

fn forget_pending(path: &Path) {
    if let Ok(mut pending) = PENDING.lock() {
        pending.retain(|p| p != path);
    }
}

enum Sink {
    Plain(BufWriter<File>),
    Gzip(GzEncoder<BufWriter<File>>),
    Stdout(BufWriter<io::Stdout>),
}

/// An output file that appears only on [`Output::commit`].
pub struct Output {
    dest: Option<PathBuf>,
    temp: Option<tempfile::TempPath>,
    sink: Sink,
}

impl Output {
    /// Starts writing `path` (`-` for stdout); `.gz` paths are gzip-compressed.
    pub fn create(path: &Path) -> Result<Output> {
        if path.as_os_str() == "-" {
            return Ok(Output {
                dest: None,
                temp: None,
                sink: Sink::Stdout(BufWriter::with_capacity(1 << 20, io::stdout())),
            });
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().with_context(|| format!("{} is not a file name", path.display()))?;
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".tmp")
            .permissions(default_permissions())
            .tempfile_in(&dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        let (file, temp_path) = NamedTempFile::into_parts(temp);
        if let Ok(mut pending) = PENDING.lock() {
            pending.push(temp_path.to_path_buf());
        }
        let writer = BufWriter::with_capacity(1 << 20, file);
        let gzip = path.extension().is_some_and(|e| e == "gz");
        let sink =
            if gzip { Sink::Gzip(GzEncoder::new(writer, flate2::Compression::default())) } else { Sink::Plain(writer) };
        Ok(Output { dest: Some(path.to_path_buf()), temp: Some(temp_path), sink })
    }

    pub fn name(&self) -> String {
        self.dest.as_ref().map_or_else(|| "<stdout>".to_owned(), |p| p.display().to_string())
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let result = match &mut self.sink {
            Sink::Plain(w) => w.write_all(bytes),
            Sink::Gzip(w) => w.write_all(bytes),
            Sink::Stdout(w) => w.write_all(bytes),
        };
        result.with_context(|| format!("cannot write {}", self.name()))
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> Result<()> {
        let name = self.name();
        let file = match std::mem::replace(&mut self.sink, Sink::Stdout(BufWriter::new(io::stdout()))) {
            Sink::Plain(w) => Some(w.into_inner().map_err(|e| e.into_error())),
            Sink::Gzip(w) => Some(w.finish().and_then(|w| w.into_inner().map_err(|e| e.into_error()))),
            Sink::Stdout(mut w) => {
                w.flush().with_context(|| format!("cannot write {name}"))?;
                None
            }
        };
        if let Some(file) = file {
            let file = file.with_context(|| format!("cannot write {name}"))?;
            file.sync_all().with_context(|| format!("cannot sync {name}"))?;
            let temp = self.temp.take().expect("file outputs have a temporary path");
            let temp_path = temp.to_path_buf();
            let dest = self.dest.as_ref().expect("file outputs have a destination");
            temp.persist(dest).with_context(|| format!("cannot move the output into place at {name}"))?;
            forget_pending(&temp_path);
        }
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // An uncommitted temporary file is deleted by TempPath's own Drop.
        if let Some(temp) = &self.temp {
            forget_pending(temp);
        }
    }
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
/// first rename) none.
pub fn commit_all(outputs: Vec<Output>) -> Result<()> {
    for output in outputs {
        output.commit()?;
    }
    Ok(())
}
