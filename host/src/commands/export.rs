//! `export-components DIR`: the embedded `.wasm` files, for other hosts.

use super::Context;
use crate::same_file::NamedFile;
use crate::sandbox::Kind;
use anyhow::{Context as _, Result, bail};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Folder to write the components into (created if missing).
    dir: PathBuf,
}

/// The component files `run` writes into DIR.
pub fn files(args: &ExportArgs) -> super::Files {
    let outputs = Kind::ALL.iter().map(|kind| NamedFile::new("DIR", args.dir.join(kind.file_name())));
    super::Files { inputs: Vec::new(), outputs: outputs.collect() }
}

pub fn run(context: &Context, args: &ExportArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    // Every path is checked before any is written. The user named a folder, not these
    // files: a link planted in a shared folder must not get a component written through it
    // over whatever it points at, and a FIFO or device there would block or swallow it.
    for kind in Kind::ALL {
        let path = args.dir.join(kind.file_name());
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => bail!(
                "{} is a symbolic link: refusing to write through it (remove it, or export elsewhere)",
                path.display()
            ),
            Ok(meta) if !meta.is_file() => {
                bail!(
                    "{} is not a regular file (a folder, FIFO or device): remove it, or export elsewhere",
                    path.display()
                )
            }
            _ => {}
        }
    }
    for kind in Kind::ALL {
        let path = args.dir.join(kind.file_name());
        crate::output::write_file(&path, kind.wasm())?;
        context.say(format!("{}  {}  ({} bytes)", kind.sha256(), path.display(), kind.wasm().len()));
    }
    Ok(())
}
