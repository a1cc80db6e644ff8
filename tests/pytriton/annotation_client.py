"""NeMo-Aligner's annotation client pattern against `steerlm serve`.

Does exactly what examples/nlp/data/steerlm/attribute_annotate.py does: one PyTriton
FuturesModelClient, one infer_batch(sentences=...) per text with a [1, 1] bytes array,
then reads `rewards` and `exceeded`. Checks the rewards against transformers' goldens.

    python annotation_client.py HOST:PORT path/to/goldens.json
"""
import json
import sys

import numpy as np
from pytriton.client import FuturesModelClient


def _str_list2numpy(str_list):
    str_ndarray = np.array(str_list)[..., np.newaxis]
    return np.char.encode(str_ndarray, "utf-8")


def main(url, goldens_path):
    cases = json.load(open(goldens_path))["cases"]
    sentences = _str_list2numpy([case["text"] for case in cases])
    futures = []
    with FuturesModelClient(url, "reward_model") as client:
        for sentence in np.split(sentences, sentences.shape[0]):
            futures.append(client.infer_batch(sentences=sentence))
    results = [future.result() for future in futures]

    passed = failed = 0
    for case, result in zip(cases, results):
        rewards = result["rewards"].flatten().tolist()
        exceeded = result["exceeded"].tolist()
        ok = exceeded == [[0]] and len(rewards) == len(case["scores"]) and all(
            abs(ours - golden) <= 1e-4 + 1e-4 * abs(golden) for ours, golden in zip(rewards, case["scores"])
        )
        if ok:
            passed += 1
        else:
            failed += 1
            print(f"FAIL {case['name']}: rewards {rewards} exceeded {exceeded}, golden {case['scores']}")
    print(f"pytriton client: {passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
