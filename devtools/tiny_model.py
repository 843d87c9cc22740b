"""Builds a DistilBERT question-answering model offline, with random weights.

The machine this project is developed and tested on cannot reach the Hugging Face Hub,
so tests and demos build a model of the same architecture locally (a WordPiece tokenizer
trained with ``tokenizers``, ``save_pretrained`` weights) and load it through the same
code path as a real model. Its answers are meaningless; its shapes and speed are real.

Usage: ``python -m devtools.tiny_model DIR [--size tiny|base]``
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

SIZES = {
    # Small enough to load in a second and answer hundreds of rows/s on 2 CPU cores.
    "tiny": dict(dim=64, n_layers=2, n_heads=2, hidden_dim=128, vocab_size=4000),
    # The shape of distilbert-base-cased-distilled-squad: speed does not depend on weights.
    "base": dict(dim=768, n_layers=6, n_heads=12, hidden_dim=3072, vocab_size=28996),
}

_FALLBACK_CORPUS = [
    "Apache Beam is a unified model for defining batch and streaming data-parallel pipelines.",
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
    "Normans were the people who in the 10th and 11th centuries gave their name to Normandy.",
]


def _corpus() -> list[str]:
    from devtools.squad import squad_contexts, squad_rows
    try:
        return squad_contexts() + [r["question"] for r in squad_rows()]
    except FileNotFoundError:
        _LOGGER.warning("SQuAD sample not found; training the tokenizer on a tiny built-in corpus")
        return _FALLBACK_CORPUS * 50


def build_tokenizer(vocab_size: int):
    """Trains a cased BERT WordPiece tokenizer and wraps it as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=1)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=512, padding_side="right",
        model_input_names=["input_ids", "attention_mask"])


def build_model(target: str | os.PathLike, size: str = "tiny", seed: int = 0) -> Path:
    """Writes a random-weight DistilBertForQuestionAnswering and its tokenizer to ``target``.

    Args:
        target: directory to create (reused if it already holds a complete model).
        size: ``tiny`` for tests and demos, ``base`` for benchmarks.
        seed: torch seed, so the same command builds the same weights.

    Returns:
        The model directory.
    """
    import torch
    from transformers import DistilBertConfig, DistilBertForQuestionAnswering

    target = Path(target)
    marker = target / ".beam_qa_model"
    if marker.is_file() and marker.read_text() == size:
        return target
    dims = SIZES[size]
    tokenizer = build_tokenizer(dims["vocab_size"])
    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=len(tokenizer), dim=dims["dim"], n_layers=dims["n_layers"], n_heads=dims["n_heads"],
        hidden_dim=dims["hidden_dim"], max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    model = DistilBertForQuestionAnswering(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    marker.write_text(size)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="directory to write the model to")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    path = build_model(args.target, args.size)
    print(f"Built a {args.size} DistilBERT QA model with RANDOM weights in {path}: "
          "its answers are meaningless (for wiring, tests and speed only).")


if __name__ == "__main__":
    main()
