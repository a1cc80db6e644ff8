//! The `formatting` interface as a WASI component, over `steerlm_core::template`.

wit_bindgen::generate!({ world: "formatting-component", path: "../../wit" });

use exports::steerlm::pipeline::formatting::Guest;
use steerlm::pipeline::types::{ChunkOutput, LineError, TemplateOptions};
use steerlm_core::chunk::convert_chunk;
use steerlm_core::record::SftRecord;
use steerlm_core::template;

struct Component;

fn options(o: TemplateOptions) -> template::TemplateOptions {
    template::TemplateOptions { use_record_system: o.use_record_system }
}

impl Guest for Component {
    fn system_prompt() -> String {
        steerlm_core::SYSTEM_PROMPT.to_owned()
    }

    fn labeled_prefixes(sft_record: String, o: TemplateOptions) -> Result<Vec<String>, String> {
        template::labeled_prefixes(&SftRecord::parse(&sft_record)?, options(o))
    }

    fn format_chunk(chunk: Vec<u8>, first_line: u64, o: TemplateOptions) -> ChunkOutput {
        let out = convert_chunk(&chunk, first_line, |line, buf| template::format_line(line, options(o), buf));
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
