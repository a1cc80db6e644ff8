//! The `regression` interface as a WASI component, over `steerlm_core::regression`.

wit_bindgen::generate!({ world: "regression-component", path: "../../wit" });

use exports::steerlm::pipeline::regression::Guest;
use steerlm::pipeline::types::{ChunkOutput, LineError, TemplateOptions};
use steerlm_core::{regression, template};

struct Component;

impl Guest for Component {
    fn convert_chunk(chunk: Vec<u8>, first_line: u64, o: TemplateOptions) -> ChunkOutput {
        let options = template::TemplateOptions { use_record_system: o.use_record_system };
        let out = regression::convert(&chunk, first_line, options);
        ChunkOutput {
            output: out.output,
            errors: out.errors.into_iter().map(|e| LineError { line: e.line, message: e.message }).collect(),
            records_in: out.records_in,
            lines_out: out.lines_out,
        }
    }
}

#[cfg(target_family = "wasm")]
export!(Component);
