//! `verify-manifest FILE`: re-runs the conversion a manifest records, into a scratch
//! directory, and checks every output's bytes against the recorded sha256.

use super::{Cli, Command, Context, run_command};
use crate::manifest::{self, short};
use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// A manifest written by a converting command's --manifest.
    manifest: PathBuf,
    /// Directory the manifest's relative paths start from (default: the one it records).
    #[arg(long, value_name = "DIR")]
    base_dir: Option<PathBuf>,
}

pub fn run(context: &Context, args: &VerifyArgs) -> Result<()> {
    let manifest = manifest::read(&args.manifest)?;
    if manifest.outputs.is_empty() {
        bail!("{} records no outputs: there is nothing to verify", args.manifest.display());
    }
    let base = args.base_dir.clone().unwrap_or_else(|| manifest.cwd.clone());
    let mut problems = Vec::new();

    for input in &manifest.inputs {
        let now = manifest::describe(&base.join(&input.path), None)
            .with_context(|| format!("input {} of the manifest", input.path.display()))?;
        if now.sha256 != input.sha256 {
            problems.push(format!(
                "input {} changed since the manifest was written (sha256 {} then, {} now)",
                input.path.display(),
                short(&input.sha256),
                short(&now.sha256)
            ));
        }
    }
    for difference in manifest::component_differences(&manifest) {
        context.say(format!("note: {difference}"));
    }
    if manifest.steerlm_version != env!("CARGO_PKG_VERSION") {
        context.say(format!(
            "note: written by steerlm {}, checked by steerlm {}",
            manifest.steerlm_version,
            env!("CARGO_PKG_VERSION")
        ));
    }

    // A manifest is data: it may only re-run a conversion, never another command.
    let recorded = Cli::try_parse_from(std::iter::once("steerlm").chain(manifest.argv.iter().map(String::as_str)));
    if !recorded
        .is_ok_and(|cli| matches!(cli.command, Command::ToRegression(_) | Command::Format(_) | Command::Preprocess(_)))
    {
        bail!(
            "{} records `{}`, which is not a conversion steerlm verifies",
            args.manifest.display(),
            manifest.argv.join(" ")
        );
    }

    let scratch = tempfile::tempdir().context("cannot make a scratch directory")?;
    let (argv, rerun_paths) = manifest::redirect_outputs(&manifest, scratch.path())?;
    let cli = Cli::try_parse_from(std::iter::once("steerlm".to_owned()).chain(argv))
        .map_err(|e| anyhow::anyhow!("the manifest's command line does not parse: {e}"))?;
    // What the command line reads must be what the manifest lists (and hashed above, as
    // regular files): a manifest is data, and its command line could name any file.
    for read in cli.command.files()?.inputs {
        let listed = manifest.inputs.iter().any(|input| base.join(&input.path) == base.join(&read.path));
        if !listed {
            bail!(
                "{}: its command line reads {} {}, which its inputs do not list: the manifest does not describe its own command",
                args.manifest.display(),
                read.flag,
                read.path.display()
            );
        }
    }
    let rerun_context = cli.context(true);
    let previous = std::env::current_dir()?;
    std::env::set_current_dir(&base).with_context(|| format!("cannot enter {}", base.display()))?;
    let result = run_command(&rerun_context, cli.command);
    std::env::set_current_dir(previous)?;
    result.context("re-running the manifest's command")?;

    let mut matched = 0;
    for (recorded, rerun) in manifest.outputs.iter().zip(&rerun_paths) {
        // The recorded file itself, if it is still there, must not have been edited.
        let on_disk = base.join(&recorded.path);
        if on_disk.exists() && manifest::describe(&on_disk, None)?.sha256 != recorded.sha256 {
            problems.push(format!("output {} was modified after the manifest was written", recorded.path.display()));
        }
        let now = manifest::describe(rerun, None)?;
        if now.sha256 == recorded.sha256 {
            matched += 1;
            crate::output::print(&format!(
                "match    {}  sha256 {}  {} lines\n",
                recorded.path.display(),
                short(&now.sha256),
                now.lines
            ))?;
        } else {
            crate::output::print(&format!(
                "DIFFERS  {}  sha256 {} recorded, {} now ({} vs {} lines)\n",
                recorded.path.display(),
                short(&recorded.sha256),
                short(&now.sha256),
                recorded.lines,
                now.lines
            ))?;
            problems.push(format!("output {} differs", recorded.path.display()));
        }
    }
    if !problems.is_empty() {
        bail!("{} does not verify: {}", args.manifest.display(), problems.join("; "));
    }
    context.say(format!("{}: all {matched} outputs reproduced byte for byte", args.manifest.display()));
    Ok(())
}
