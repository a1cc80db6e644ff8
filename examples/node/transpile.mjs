// Transpiles steerlm's WASI components into ES modules with jco:
//
//   node transpile.mjs WASM_DIR        (or: npm run transpile -- WASM_DIR)
//
// WASM_DIR holds the components either as `steerlm export-components DIR` writes them
// (steerlm-regression.wasm, ...) or as cargo builds them
// (target/components/wasm32-wasip2/wasm/steerlm_regression_component.wasm, ...).
// Output: generated/{regression,formatting,labels}/<name>.js plus its core .wasm.
// The components' WASI imports (wasi:io, wasi:cli) are rewritten to
// @bytecodealliance/preview2-shim, which convert.mjs restricts (see there).
import { execFileSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const COMPONENTS = ['regression', 'formatting', 'labels'];

const wasmDir = process.argv[2];
if (!wasmDir) {
  console.error('usage: node transpile.mjs WASM_DIR');
  process.exit(2);
}

// The local jco from devDependencies (never a global one), run with this node.
const jco = join(here, 'node_modules', '.bin', 'jco');
if (!existsSync(jco)) {
  console.error(`${jco} is missing: run \`npm ci\` in ${here} first`);
  process.exit(1);
}

for (const name of COMPONENTS) {
  const candidates = [`steerlm-${name}.wasm`, `steerlm_${name}_component.wasm`].map((f) => resolve(wasmDir, f));
  const wasm = candidates.find(existsSync);
  if (!wasm) {
    console.error(`no ${name} component in ${wasmDir} (looked for ${candidates.join(', ')})`);
    process.exit(1);
  }
  const out = join(here, 'generated', name);
  rmSync(out, { recursive: true, force: true });
  // --name fixes the output file names (generated/<name>/<name>.js) whatever the input is called.
  execFileSync(process.execPath, [jco, 'transpile', wasm, '--name', name, '--out-dir', out, '--quiet'], {
    stdio: 'inherit',
  });
  console.log(`${wasm} -> ${join('generated', name, name + '.js')}`);
}
