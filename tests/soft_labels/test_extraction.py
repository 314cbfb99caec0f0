"""Soft-label extraction against a dense teacher-forced reference; metadata helpers."""

import numpy as np
import pytest
import torch

from ssb_trl.soft_labels.schema import SoftLabelMetadata, tokenizer_fingerprint
from ssb_trl.soft_labels.teacher import extract_topk_soft_labels
from tests.helpers import make_tiny_model


def test_extraction_matches_dense_logits(tokenizer):
    model = make_tiny_model(seed=3)
    g = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, 49152, (n,), generator=g).tolist() for n in (12, 30, 7, 21, 16)]
    starts = [5, 10, 3, 20, 1]
    results = extract_topk_soft_labels(
        model, sequences, starts, top_k=8, temperature=2.0, batch_size=2, logprob_dtype="float32", show_progress=False
    )
    model.eval()
    for seq, start, (ids, logprobs) in zip(sequences, starts, results):
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0]
        reference = torch.log_softmax(logits[start - 1 : len(seq) - 1] / 2.0, -1)
        values, ref_ids = reference.topk(8, -1)
        assert ids.shape == (len(seq) - start, 8) and ids.dtype == np.int32
        np.testing.assert_array_equal(ids, ref_ids.numpy())
        np.testing.assert_allclose(logprobs, values.numpy(), rtol=1e-5, atol=1e-5)


def test_float16_storage_and_bad_arguments():
    model = make_tiny_model(seed=3)
    ((ids, logprobs),) = extract_topk_soft_labels(
        model, [[1, 2, 3, 4]], [2], top_k=4, logprob_dtype="float16", show_progress=False
    )
    assert logprobs.dtype == np.float16 and np.exp(logprobs.astype(np.float64)).sum(-1).max() <= 1.001
    with pytest.raises(ValueError, match="answer start"):
        extract_topk_soft_labels(model, [[1, 2, 3]], [0], show_progress=False)
    with pytest.raises(ValueError, match="top_k must be in"):
        extract_topk_soft_labels(model, [[1, 2, 3]], [1], top_k=10**6, show_progress=False)
    with pytest.raises(ValueError, match="logprob_dtype"):
        extract_topk_soft_labels(model, [[1, 2, 3]], [1], logprob_dtype="int8", show_progress=False)


def test_fingerprint_and_metadata_description(tokenizer):
    fp = tokenizer_fingerprint(tokenizer)
    assert fp["vocab_size"] == 49152 and len(fp["sha256"]) == 16
    meta = SoftLabelMetadata("m", fp, 64, 2.0, "v1", {"name": "x"})
    assert SoftLabelMetadata.from_description(meta.to_description()) == meta
    assert SoftLabelMetadata.from_description("a plain description") is None
    assert SoftLabelMetadata.from_description(None) is None
