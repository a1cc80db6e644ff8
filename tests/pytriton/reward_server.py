"""A real Triton reward server bound exactly as NeMo-Aligner's reward server binds its model.

nemo_aligner/algorithms/reward_server.py (RewardModelServer.run_server) binds, with PyTriton:
- inputs `sentences` (bytes, shape (-1,)), `tokens` and `sequence_lengths` (int64, shape
  (-1,)), all optional;
- one output, `rewards` (float32, declared shape (1,)): no `exceeded`;
- ModelConfig(batching=True, max_batch_size=9999999) with a DynamicBatcher
  (max_queue_delay_microseconds=2000, preferred batch sizes);
- TritonConfig(allow_http=True, allow_grpc=False, allow_metrics=False).

Instead of a model, `infer` looks each sentence up in a scores file (JSONL of
{"text", "scores"}, the reward model's raw outputs for each exact text), so the
annotation client's output can be compared with the reference's bytes.

    python reward_server.py SCORES.jsonl PORT [MODEL_NAME]

Prints "ready" on stdout once the server answers. Stops on SIGTERM or SIGINT.
"""
import json
import signal
import sys

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.model_config.common import DynamicBatcher
from pytriton.triton import Triton, TritonConfig


def main(scores_path, port, model_name="reward_model"):
    scores = {}
    with open(scores_path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            scores[row["text"]] = row["scores"]

    @batch
    def infer(**inputs):
        sentences = inputs["sentences"]
        rows = []
        for sentence in sentences.reshape(-1):
            text = sentence.decode("utf-8")
            if text not in scores:
                raise ValueError(f"no score for {text!r}")
            rows.append(scores[text])
        return {"rewards": np.array(rows, dtype=np.float32)}

    config = TritonConfig(
        allow_http=True, allow_grpc=False, allow_metrics=False, http_address="127.0.0.1", http_port=int(port)
    )
    batcher = DynamicBatcher(max_queue_delay_microseconds=2000, preferred_batch_size=[4])
    with Triton(config=config) as triton:
        triton.bind(
            model_name=model_name,
            infer_func=infer,
            inputs=(
                Tensor(name="sentences", shape=(-1,), dtype=bytes, optional=True),
                Tensor(name="tokens", shape=(-1,), dtype=np.int64, optional=True),
                Tensor(name="sequence_lengths", shape=(-1,), dtype=np.int64, optional=True),
            ),
            outputs=(Tensor(name="rewards", shape=(1,), dtype=np.float32),),
            config=ModelConfig(batching=True, max_batch_size=9999999, batcher=batcher),
        )
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print("ready", flush=True)
        triton.serve()


if __name__ == "__main__":
    main(*sys.argv[1:])
