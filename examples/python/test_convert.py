"""The Python host against the goldens:

    STEERLM_WASM_DIR=DIR python -m unittest -v test_convert

Expected values come from tests/fixtures/conversions/ (made by NeMo-Aligner's own
scripts) or, where there is none, from the ``steerlm`` binary on the same input (the
messages and values below, and ../node/fixtures/annotate_prefixes.jsonl).
"""

import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from convert import Steerlm, SteerlmError

HERE = Path(__file__).resolve().parent
GOLDENS = HERE.parent.parent / "tests" / "fixtures" / "conversions"
WASM_DIR = os.environ.get("STEERLM_WASM_DIR")

# What `steerlm to-regression` prints after `FILE:2: ` for each reference error file.
ERROR_FILES = {
    "label_not_string": "turn 1: label must be a string, got an object",
    "no_colon": "turn 1: label \"helpfulness\": \"helpfulness\" has no ':' between attribute and value",
    "not_a_number": 'turn 1: label "helpfulness:high": value "high" of helpfulness is not a number',
    "trailing_comma": "turn 1: label \"helpfulness:3,\" has an empty attribute (a stray ',')",
}
M = -100.0


def golden(path):
    return (GOLDENS / path).read_bytes()


@unittest.skipUnless(WASM_DIR, "set STEERLM_WASM_DIR to a folder of steerlm's .wasm components")
class ConvertTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.steerlm = Steerlm(WASM_DIR)

    def test_regression_equals_the_reference_golden(self):
        result = self.steerlm.to_regression(golden("regression/input.jsonl"))
        self.assertEqual(result.errors, [])
        self.assertTrue(result.output == golden("regression/expected.jsonl"), "output differs from expected.jsonl")
        self.assertEqual((result.records_in, result.lines_out), (208, 251))

    def test_reference_error_files_report_line_2(self):
        first_expected = golden("regression/expected.jsonl").split(b"\n")[0] + b"\n"
        for name, message in ERROR_FILES.items():
            # chunk_bytes=1: every line is its own chunk, so line 2 must come from first-line.
            for chunk_bytes in (4 << 20, 1):
                with self.subTest(name=name, chunk_bytes=chunk_bytes):
                    result = self.steerlm.to_regression(golden(f"regression/errors/{name}.jsonl"), chunk_bytes=chunk_bytes)
                    self.assertEqual(result.errors, [(2, message)])
                    # Line 1 is the reference input's first record; the bad line leaves nothing.
                    self.assertEqual(result.output, first_expected)

    def test_format_equals_steerlm_format(self):
        result = self.steerlm.format(golden("annotate/input.jsonl"))
        self.assertEqual(result.errors, [])
        self.assertTrue(result.output == (HERE.parent / "node" / "fixtures" / "annotate_prefixes.jsonl").read_bytes())

    def test_labels_parse_and_to_vector(self):
        self.assertEqual(
            self.steerlm.attribute_names(),
            ["quality", "toxicity", "humor", "creativity", "helpfulness", "correctness", "coherence", "complexity", "verbosity"],
        )
        # Keys are not trimmed: " correctness" is not an attribute.
        label = "helpfulness:3, correctness:4,verbosity:2"
        self.assertEqual(self.steerlm.labels_parse(label), [("helpfulness", "3"), (" correctness", "4"), ("verbosity", "2")])
        self.assertEqual(self.steerlm.labels_to_vector(label), [M, M, M, M, 3.0, M, M, M, 2.0])
        self.assertEqual(self.steerlm.labels_parse("helpfulness:1,helpfulness:3"), [("helpfulness", "3")])
        # Values parse as Python's float().
        self.assertEqual(self.steerlm.labels_to_vector("helpfulness: 3.5e0 ,humor:1_0"), [M, M, 10.0, M, 3.5, M, M, M, M])

    def test_labels_errors_carry_steerlms_messages(self):
        cases = {
            "helpfulness": "label \"helpfulness\": \"helpfulness\" has no ':' between attribute and value",
            "helpfulness:high": 'label "helpfulness:high": value "high" of helpfulness is not a number',
            "helpfulness:inf": 'label "helpfulness:inf": value "inf" of helpfulness is not finite',
            "helpfulness:3,": "label \"helpfulness:3,\" has an empty attribute (a stray ',')",
        }
        for label, message in cases.items():
            with self.subTest(label=label):
                with self.assertRaises(SteerlmError) as raised:
                    self.steerlm.labels_to_vector(label)
                self.assertEqual(str(raised.exception), message)

    def test_encode_scores(self):
        self.assertEqual(
            self.steerlm.encode_scores([2.5, 3.5, -1, 9, 0.49, 1.5, 0.5, 3.49, 4]),
            "quality:2,toxicity:4,humor:0,creativity:4,helpfulness:0,correctness:2,coherence:0,complexity:3,verbosity:4",
        )
        self.assertEqual(self.steerlm.encode_scores([3.7, 2.2], ["helpfulness", "verbosity"]), "helpfulness:4,verbosity:2")
        with self.assertRaisesRegex(SteerlmError, "^3 scores for 9 attributes$"):
            self.steerlm.encode_scores([1, 2, 3])

    def cli(self, *args):
        return subprocess.run(
            [sys.executable, str(HERE / "convert.py"), "--wasm-dir", WASM_DIR, *args], capture_output=True, text=True
        )

    def test_cli(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.jsonl"
            self.assertEqual(self.cli("regression", str(GOLDENS / "regression/input.jsonl"), str(out)).returncode, 0)
            self.assertTrue(out.read_bytes() == golden("regression/expected.jsonl"))

            bad = GOLDENS / "regression/errors/no_colon.jsonl"
            failed = self.cli("regression", str(bad), str(Path(tmp) / "bad.jsonl"))
            self.assertEqual(failed.returncode, 1)
            self.assertEqual(failed.stderr, f"error: {bad}:2: {ERROR_FILES['no_colon']}\n")
            self.assertFalse((Path(tmp) / "bad.jsonl").exists())

        # Byte for byte what `steerlm label parse` prints.
        parsed = self.cli("labels-parse", "helpfulness:3, correctness:4,verbosity:2")
        self.assertEqual(
            parsed.stdout,
            '{"pairs":[["helpfulness","3"],[" correctness","4"],["verbosity","2"]],'
            '"attributes":["quality","toxicity","humor","creativity","helpfulness","correctness","coherence","complexity","verbosity"],'
            '"vector":[-100.0,-100.0,-100.0,-100.0,3.0,-100.0,-100.0,-100.0,2.0]}\n',
        )


if __name__ == "__main__":
    unittest.main()
