// steerlm's conversions in Node: the WASI components of wit/pipeline.wit, transpiled
// by jco (`node transpile.mjs WASM_DIR` writes generated/). The same .wasm files give
// the same bytes as the `steerlm` binary.
//
// As a module:
//
//   import { readFileSync } from 'node:fs';
//   import { toRegression, format, labels } from './convert.mjs';
//   const { output, errors } = toRegression(readFileSync('train.jsonl'));
//   // output: Buffer of {"text", "label"} lines; errors: [{ line, message }] (1-based)
//   labels.toVector('helpfulness:3,correctness:4');   // [-100, ..., 3, 4, ...]
//
// As a CLI (exit code 1 and `FILE:LINE: reason` on stderr for bad input, nothing written):
//
//   node convert.mjs regression IN OUT [--use-record-system]   # steerlm to-regression
//   node convert.mjs format IN OUT [--use-record-system]       # steerlm format
//   node convert.mjs labels-parse LABEL                        # pairs and 9-float vector as JSON
//   node convert.mjs labels-encode [--names a,b,..] -- SCORE.. # steerlm label encode
//
// IN may be `-` for stdin and OUT `-` for stdout.
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { _setArgs, _setEnv } from '@bytecodealliance/preview2-shim/cli';

// The components import only wasi:io and wasi:cli (streams, environment, exit): no
// files, network, clocks or randomness. The shim would hand them this process's
// environment and arguments; the steerlm host grants neither, so neither do we.
// (This is the shim's process-wide state: it applies to every component it serves.)
_setEnv({});
_setArgs([]);

const here = dirname(fileURLToPath(import.meta.url));

async function load(name) {
  const file = join(here, 'generated', name, `${name}.js`);
  if (!existsSync(file)) {
    throw new Error(`${file} is missing: run \`node transpile.mjs WASM_DIR\` in ${here} first`);
  }
  return import(pathToFileURL(file).href);
}

// Each import compiles and instantiates one component (about 0.1 s for all three).
const [{ regression }, { formatting }, { labels: labelsComponent }] = await Promise.all(
  ['regression', 'formatting', 'labels'].map(load),
);

/** Input handed to one component call, like `steerlm --chunk-mb 4`. */
export const CHUNK_BYTES = 4 << 20;

/**
 * Splits `bytes` into chunks of whole lines (about `size` bytes; a longer line makes a
 * longer chunk), yielding each with the 1-based number of its first line, which is
 * what the components put in their errors.
 */
function* wholeLineChunks(bytes, size) {
  let start = 0;
  let line = 1;
  while (start < bytes.length) {
    let end = Math.min(start + size, bytes.length);
    if (end < bytes.length) {
      const newline = bytes.indexOf(0x0a, end - 1);
      end = newline === -1 ? bytes.length : newline + 1;
    }
    const chunk = bytes.subarray(start, end);
    yield [chunk, line];
    for (let i = chunk.indexOf(0x0a); i !== -1; i = chunk.indexOf(0x0a, i + 1)) line++;
    start = end;
  }
}

/** Runs a chunk conversion of the contract over all of `input`, chunk after chunk. */
function convertAll(convertChunk, input, { useRecordSystem = false, chunkBytes = CHUNK_BYTES } = {}) {
  const outputs = [];
  const errors = [];
  let recordsIn = 0;
  let linesOut = 0;
  for (const [chunk, firstLine] of wholeLineChunks(input, chunkBytes)) {
    const result = convertChunk(chunk, BigInt(firstLine), { useRecordSystem });
    outputs.push(result.output);
    // u64 arrives as BigInt; line numbers and counts fit a Number.
    for (const { line, message } of result.errors) errors.push({ line: Number(line), message });
    recordsIn += Number(result.recordsIn);
    linesOut += Number(result.linesOut);
  }
  return { output: Buffer.concat(outputs), errors, recordsIn, linesOut };
}

/**
 * SFT JSONL (Buffer) to regression training lines `{"text", "label": [9 floats]}`, as
 * `steerlm to-regression` / `process_to_regression_format.py` write them. Bad lines are
 * left out of `output` and reported in `errors`.
 * Options: `useRecordSystem` (each record's own `system` prompt), `chunkBytes`.
 * @returns {{output: Buffer, errors: {line: number, message: string}[], recordsIn: number, linesOut: number}}
 */
export function toRegression(input, options) {
  return convertAll(regression.convertChunk, input, options);
}

/** SFT JSONL (Buffer) to one `{"text": prefix}` line per labeled prefix, as `steerlm format`. */
export function format(input, options) {
  return convertAll(formatting.formatChunk, input, options);
}

/** Every labeled prefix of one SFT record (a JSON string); throws on a bad record. */
export function labeledPrefixes(record, { useRecordSystem = false } = {}) {
  return unwrap(() => formatting.labeledPrefixes(record, { useRecordSystem }));
}

/** The fixed SteerLM system prompt. */
export const systemPrompt = () => formatting.systemPrompt();

/** Label strings such as `helpfulness:3,correctness:4`. Errors throw an Error with the component's message. */
export const labels = {
  /** The nine SteerLM attributes, in vector order. */
  attributeNames: () => labelsComponent.attributeNames(),
  /** `[{key, value}]` as written (keys not trimmed, later duplicates win). */
  parse: (label) => unwrap(() => labelsComponent.parse(label)),
  /** The 9 floats in attribute order, -100 where an attribute is missing. */
  toVector: (label) => Array.from(unwrap(() => labelsComponent.toVector(label))),
  /** Raw scores to a label string: clamped to [0, 4], rounded half to even; `names` defaults to the nine. */
  encodeScores: (scores, names) => unwrap(() => labelsComponent.encodeScores(Float64Array.from(scores), names)),
};

// jco throws a WIT `result`'s error as a ComponentError whose `payload` is our string;
// rethrow it as a plain Error with that message.
function unwrap(call) {
  try {
    return call();
  } catch (err) {
    if (typeof err?.payload === 'string') throw new Error(err.payload);
    throw err;
  }
}

// ---- CLI ----

// Stdin is read as a stream: a synchronous read of fd 0 can fail with EAGAIN once the
// shim has set up its own stdio.
async function readInput(path) {
  if (path !== '-') return readFileSync(path);
  const parts = [];
  for await (const part of process.stdin) parts.push(part);
  return Buffer.concat(parts);
}

// Writes beside the destination and renames, so a failed run leaves no partial file.
function writeOutput(path, bytes) {
  if (path === '-') return void process.stdout.write(bytes);
  const temp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  try {
    writeFileSync(temp, bytes);
    renameSync(temp, path);
  } finally {
    rmSync(temp, { force: true });
  }
}

function fail(message) {
  console.error(`error: ${message}`);
  process.exit(1);
}

async function main(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { 'use-record-system': { type: 'boolean' }, names: { type: 'string' } },
  });
  const [command, ...rest] = positionals;
  const useRecordSystem = Boolean(values['use-record-system']);
  switch (command) {
    case 'regression':
    case 'format': {
      if (rest.length !== 2) fail(`usage: node convert.mjs ${command} IN OUT [--use-record-system]`);
      const [input, output] = rest;
      const convert = command === 'regression' ? toRegression : format;
      const result = convert(await readInput(input), { useRecordSystem });
      if (result.errors.length > 0) {
        const { line, message } = result.errors[0];
        fail(`${input === '-' ? '<stdin>' : input}:${line}: ${message}`);
      }
      writeOutput(output, result.output);
      console.error(`${result.recordsIn} records -> ${result.linesOut} lines in ${output === '-' ? '<stdout>' : output}`);
      break;
    }
    case 'labels-parse': {
      if (rest.length !== 1) fail('usage: node convert.mjs labels-parse LABEL');
      const pairs = labels.parse(rest[0]).map(({ key, value }) => [key, value]);
      console.log(JSON.stringify({ pairs, attributes: labels.attributeNames(), vector: labels.toVector(rest[0]) }));
      break;
    }
    case 'labels-encode': {
      const names = values.names === undefined ? undefined : values.names.split(',');
      const scores = rest.map((s) => {
        const n = Number(s);
        if (s.trim() === '' || (Number.isNaN(n) && s.trim().toLowerCase() !== 'nan')) fail(`"${s}" is not a number`);
        return n;
      });
      console.log(labels.encodeScores(scores, names));
      break;
    }
    default:
      fail('usage: node convert.mjs regression|format IN OUT [--use-record-system] | labels-parse LABEL | labels-encode [--names a,b] -- SCORE...');
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  await main(process.argv.slice(2)).catch((err) => fail(err.message));
}
