// The Node host against the goldens: `node --test test.mjs` (after `node transpile.mjs WASM_DIR`).
//
// Expected values come from tests/fixtures/conversions/ (made by NeMo-Aligner's own
// scripts) or, where there is no reference golden, from the `steerlm` binary run on the
// same input (fixtures/annotate_prefixes.jsonl, and the messages and values below).
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { format, labeledPrefixes, labels, systemPrompt, toRegression } from './convert.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const goldens = join(here, '..', '..', 'tests', 'fixtures', 'conversions');
const golden = (path) => readFileSync(join(goldens, path));
const lines = (bytes) => bytes.toString('utf8').split('\n').filter((l) => l !== '');

// What `steerlm to-regression` prints after `FILE:2: ` for each reference error file.
const ERROR_FILES = {
  label_not_string: 'turn 1: label must be a string, got an object',
  no_colon: `turn 1: label "helpfulness": "helpfulness" has no ':' between attribute and value`,
  not_a_number: 'turn 1: label "helpfulness:high": value "high" of helpfulness is not a number',
  trailing_comma: `turn 1: label "helpfulness:3," has an empty attribute (a stray ',')`,
};

test('regression output equals the reference golden byte for byte', () => {
  const result = toRegression(golden('regression/input.jsonl'));
  assert.deepEqual(result.errors, []);
  assert.ok(result.output.equals(golden('regression/expected.jsonl')));
  assert.equal(result.recordsIn, 208);
  assert.equal(result.linesOut, 251);
});

test('regression in small chunks gives the same bytes (first-line carried across chunks)', () => {
  const result = toRegression(golden('regression/input.jsonl'), { chunkBytes: 5000 });
  assert.ok(result.output.equals(golden('regression/expected.jsonl')));
});

test('reference error files report line 2 with the message steerlm gives', () => {
  const firstExpected = lines(golden('regression/expected.jsonl'))[0];
  for (const [name, message] of Object.entries(ERROR_FILES)) {
    // chunkBytes 1: every line is its own chunk, so line 2 must come from first-line.
    for (const chunkBytes of [undefined, 1]) {
      const result = toRegression(golden(`regression/errors/${name}.jsonl`), { chunkBytes });
      assert.deepEqual(result.errors, [{ line: 2, message }], name);
      // Line 1 is the reference input's first record; the bad line leaves nothing behind.
      assert.equal(result.output.toString(), `${firstExpected}\n`, name);
    }
  }
});

test('use-record-system takes the record\'s own system prompt (as steerlm --use-record-system)', () => {
  const record = '{"system": "Be brief.", "mask": "User", "conversations": [{"value": "q", "from": "User"}, {"value": "a", "from": "Assistant", "label": "humor:1"}]}';
  const result = toRegression(Buffer.from(record), { useRecordSystem: true });
  assert.equal(
    result.output.toString(),
    '{"text": "<extra_id_0>System\\nBe brief.\\n<extra_id_1>User\\nq\\n<extra_id_1>Assistant\\na\\n<extra_id_2>", "label": [-100.0, -100.0, 1.0, -100.0, -100.0, -100.0, -100.0, -100.0, -100.0]}\n',
  );
});

test('format output equals `steerlm format` on the same input, and the reference\'s scored texts', () => {
  const result = format(golden('annotate/input.jsonl'));
  assert.deepEqual(result.errors, []);
  // Made with: steerlm format --input-file tests/fixtures/conversions/annotate/input.jsonl \
  //              --output-file examples/node/fixtures/annotate_prefixes.jsonl
  assert.ok(result.output.equals(readFileSync(join(here, 'fixtures', 'annotate_prefixes.jsonl'))));
  // annotate/scores.jsonl holds the texts the reference annotation script sent to the
  // reward model (in its own order): exactly the set format yields.
  const texts = (bytes) => lines(bytes).map((l) => JSON.parse(l).text).sort();
  assert.deepEqual(texts(result.output), texts(golden('annotate/scores.jsonl')));
});

test('labeled prefixes: a null label is skipped, an empty one is not', () => {
  const record = JSON.stringify({
    system: 'Be brief.',
    mask: 'User',
    conversations: [
      { value: 'q', from: 'User' },
      { value: 'a', from: 'Assistant', label: 'humor:1' },
      { value: 'q2', from: 'User' },
      { value: 'a2', from: 'Assistant', label: null },
      { value: 'q3', from: 'User' },
      { value: 'a3', from: 'Assistant', label: '' },
    ],
  });
  const fixed = `<extra_id_0>System\n${systemPrompt()}\n`;
  const turns = '<extra_id_1>User\nq\n<extra_id_1>Assistant\na\n';
  const more = '<extra_id_1>User\nq2\n<extra_id_1>Assistant\na2\n<extra_id_1>User\nq3\n<extra_id_1>Assistant\na3\n';
  assert.deepEqual(labeledPrefixes(record), [`${fixed}${turns}<extra_id_2>`, `${fixed}${turns}${more}<extra_id_2>`]);
  const own = '<extra_id_0>System\nBe brief.\n';
  assert.deepEqual(labeledPrefixes(record, { useRecordSystem: true }), [
    `${own}${turns}<extra_id_2>`,
    `${own}${turns}${more}<extra_id_2>`,
  ]);
  assert.throws(() => labeledPrefixes('{"conversations": 3'), Error);
});

// Values below are what `steerlm label parse` / `steerlm label encode` print.
const NAMES = ['quality', 'toxicity', 'humor', 'creativity', 'helpfulness', 'correctness', 'coherence', 'complexity', 'verbosity'];
const M = -100;

test('labels: parse and to-vector', () => {
  assert.deepEqual(labels.attributeNames(), NAMES);
  // Keys are not trimmed: " correctness" is not an attribute.
  assert.deepEqual(labels.parse('helpfulness:3, correctness:4,verbosity:2'), [
    { key: 'helpfulness', value: '3' },
    { key: ' correctness', value: '4' },
    { key: 'verbosity', value: '2' },
  ]);
  assert.deepEqual(labels.toVector('helpfulness:3, correctness:4,verbosity:2'), [M, M, M, M, 3, M, M, M, 2]);
  assert.deepEqual(
    labels.toVector('quality:4,toxicity:0,humor:1,creativity:2,helpfulness:3,correctness:4,coherence:4,complexity:2,verbosity:1'),
    [4, 0, 1, 2, 3, 4, 4, 2, 1],
  );
  // Later duplicates win; only the first two `:` pieces count.
  assert.deepEqual(labels.parse('helpfulness:1,helpfulness:3'), [{ key: 'helpfulness', value: '3' }]);
  assert.deepEqual(labels.parse('a:b:c'), [{ key: 'a', value: 'b' }]);
  // Values parse as Python's float(): spaces, exponents, underscores, -0.
  const vector = labels.toVector('helpfulness: 3.5e0 ,humor:1_0,verbosity:-0');
  assert.deepEqual(vector, [M, M, 10, M, 3.5, M, M, M, -0]);
  assert.ok(Object.is(vector[8], -0));
});

test('labels: errors carry steerlm\'s messages', () => {
  const cases = {
    helpfulness: `label "helpfulness": "helpfulness" has no ':' between attribute and value`,
    'helpfulness:high': 'label "helpfulness:high": value "high" of helpfulness is not a number',
    'helpfulness:inf': 'label "helpfulness:inf": value "inf" of helpfulness is not finite',
    'humor:1e999': 'label "humor:1e999": value "1e999" of humor is not finite',
    'helpfulness:3,': `label "helpfulness:3," has an empty attribute (a stray ',')`,
    '': `label "" has an empty attribute (a stray ',')`,
  };
  for (const [label, message] of Object.entries(cases)) {
    assert.throws(() => labels.toVector(label), { message }, label);
  }
  // parse() splits only; the value is checked by to-vector.
  assert.deepEqual(labels.parse('helpfulness:high'), [{ key: 'helpfulness', value: 'high' }]);
  assert.throws(() => labels.parse('helpfulness'), { message: cases.helpfulness });
});

test('labels: encode-scores clamps to [0, 4] and rounds half to even', () => {
  assert.equal(
    labels.encodeScores([2.5, 3.5, -1, 9, 0.49, 1.5, 0.5, 3.49, 4]),
    'quality:2,toxicity:4,humor:0,creativity:4,helpfulness:0,correctness:2,coherence:0,complexity:3,verbosity:4',
  );
  assert.equal(
    labels.encodeScores([0.5, 1.5, 2.5, 3.5, 4.5, -0.5, 2.4999, 2.5001, 1e9]),
    'quality:0,toxicity:2,humor:2,creativity:4,helpfulness:4,correctness:0,coherence:2,complexity:3,verbosity:4',
  );
  const five = ['helpfulness', 'correctness', 'coherence', 'complexity', 'verbosity'];
  assert.equal(labels.encodeScores([3.7, 2.2, 3.5, 1.5, 0.5], five), 'helpfulness:4,correctness:2,coherence:4,complexity:2,verbosity:0');
  assert.throws(() => labels.encodeScores([1, 2, 3]), { message: '3 scores for 9 attributes' });
  assert.throws(() => labels.encodeScores([1], ['a', 'b']), { message: '1 scores for 2 attributes' });
  assert.throws(() => labels.encodeScores([1, 2, 3, 4, 5, 6, 7, 8, NaN]), { message: 'score NaN for verbosity is not finite' });
  assert.throws(() => labels.encodeScores([1, 2, 3, 4, 5, 6, 7, 8, Infinity]), { message: 'score inf for verbosity is not finite' });
});

test('CLI: regression writes the golden; a bad file names FILE:2 and writes nothing', () => {
  const dir = mkdtempSync(join(tmpdir(), 'steerlm-node-'));
  try {
    const cli = join(here, 'convert.mjs');
    const out = join(dir, 'out.jsonl');
    execFileSync(process.execPath, [cli, 'regression', join(goldens, 'regression/input.jsonl'), out], { stdio: 'pipe' });
    assert.ok(readFileSync(out).equals(golden('regression/expected.jsonl')));

    const bad = join(goldens, 'regression/errors/no_colon.jsonl');
    const failed = spawnSync(process.execPath, [cli, 'regression', bad, join(dir, 'bad.jsonl')], { encoding: 'utf8' });
    assert.equal(failed.status, 1);
    assert.equal(failed.stderr, `error: ${bad}:2: ${ERROR_FILES.no_colon}\n`);
    assert.equal(existsSync(join(dir, 'bad.jsonl')), false);

    const encoded = execFileSync(process.execPath, [cli, 'labels-encode', '--', '2.5', '3.5', '-1', '9', '0.49', '1.5', '0.5', '3.49', '4'], {
      encoding: 'utf8',
    });
    assert.equal(encoded, 'quality:2,toxicity:4,humor:0,creativity:4,helpfulness:0,correctness:2,coherence:0,complexity:3,verbosity:4\n');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
