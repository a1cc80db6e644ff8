//! The `preprocess` interface as a WASI component, over `steerlm_core::{preprocess,
//! oasst, shuffle}`.

wit_bindgen::generate!({ world: "preprocess-component", path: "../../wit" });

use exports::steerlm::pipeline::preprocess::{Guest, PreprocessOptions, Source, Split, TreeOutput};
use steerlm::pipeline::types::{LineError, SplitOutput};
use steerlm_core::{chunk, oasst, preprocess, shuffle};

struct Component;

fn line_errors(errors: Vec<chunk::LineError>) -> Vec<LineError> {
    errors.into_iter().map(|e| LineError { line: e.line, message: e.message }).collect()
}

impl Guest for Component {
    fn convert_rows(
        source: Source,
        split: Split,
        o: PreprocessOptions,
        chunk: Vec<u8>,
        first_line: u64,
    ) -> SplitOutput {
        let source = match source {
            Source::Helpsteer => preprocess::Source::HelpSteer,
            Source::Helpsteer2 => preprocess::Source::HelpSteer2,
            Source::Helpsteer2Preference => preprocess::Source::HelpSteer2Preference,
        };
        let split = match split {
            Split::Train => chunk::Split::Train,
            Split::Val => chunk::Split::Val,
        };
        let options = preprocess::PreprocessOptions { only_helpfulness: o.only_helpfulness };
        let out = preprocess::convert(source, split, options, &chunk, first_line);
        SplitOutput {
            train: out.train,
            val: out.val,
            errors: line_errors(out.errors),
            records_in: out.records_in,
            train_lines: out.train_lines,
            val_lines: out.val_lines,
        }
    }

    fn convert_trees(chunk: Vec<u8>, first_line: u64) -> TreeOutput {
        let out = oasst::convert_trees(&chunk, first_line);
        TreeOutput { output: out.output, tree_ends: out.tree_ends, errors: line_errors(out.errors) }
    }

    fn shuffle_order(count: u32, seed: u64) -> Vec<u32> {
        shuffle::python_shuffle_order(count, seed)
    }

    fn train_count(count: u64, fraction: f64) -> u64 {
        shuffle::train_count(count, fraction)
    }
}

#[cfg(target_family = "wasm")]
export!(Component);
