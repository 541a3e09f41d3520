"""A SmolVLM2-architecture VLM with random weights, written offline: config, tokenizer and processor.

lerobot's SmolVLA builds its VLM from `policy.vlm_model_name` with `AutoConfig.from_pretrained`,
`AutoProcessor.from_pretrained` (and the preprocessor's `AutoTokenizer.from_pretrained`). Pointing that name at
the directory written here runs the very same code path as `HuggingFaceTB/SmolVLM2-500M-Video-Instruct`, with no
network: tests, the CPU demo and benchmarks use it. The weights are never written: lerobot builds the VLM with
random weights from the config whenever `load_vlm_weights` is false.

The tokenizer is a byte-level BPE (as SmolVLM2's is) trained in a few milliseconds on a small built-in corpus,
so any instruction tokenizes without unknown tokens, plus the special tokens SmolVLM's processor and lerobot
read: `<image>`, `<fake_token_around_image>`, `<global-img>`, `<end_of_utterance>`, `<row_i_col_j>`, ...

    python -m insertion_vla.tiny_vlm data/tiny_vlm          # then --policy.vlm_model_name=data/tiny_vlm
"""

import argparse
import os
import shutil
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    PreTrainedTokenizerFast,
    SmolVLMConfig,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
    SmolVLMVisionConfig,
)

# The special tokens of SmolVLM2's tokenizer that its processor and lerobot's SmolVLA look up by name.
NAMED_SPECIAL_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}
BOS, PAD, UNK = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
ROW_COL_TOKENS = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]  # image-splitting grid, as SmolVLM2
SPECIAL_TOKENS = [UNK, BOS, PAD, *NAMED_SPECIAL_TOKENS.values(), "<video>", *ROW_COL_TOKENS]

# Text the BPE merges are learned from: the words our instructions use, so a task costs a few tokens, not one
# per byte (it must fit tokenizer_max_length). Any other text still tokenizes, byte by byte.
_BPE_CORPUS = [
    "Insert needle into eye trocar in simulation",
    "Insert the needle into the eye trocar",
    "insert needle into the trocar of the eye, then stop",
    "pick up the needle and move it to the trocar",
    "the robot arm holds a needle above the eye model",
    "move left right up down forward backward slowly",
    "A robot inserts a needle. The needle enters the trocar.",
]

# Architecture presets. "smolvlm2-500m" copies the dimensions of HuggingFaceTB/SmolVLM2-500M-Video-Instruct
# (weights random) for realistic speed/memory benchmarks; "tiny" is for tests and the CPU demo; "tiny-vision" is
# "tiny" with a finer, wider vision encoder (8-pixel patches: 16 image tokens per camera at 64x64 instead of 4), for
# learning on CPU where the policy must see where things are (train it: policy.freeze_vision_encoder=false).
PRESETS = {
    "tiny": dict(
        vocab_size=512, text_hidden=64, text_intermediate=128, text_layers=4, text_heads=4, text_kv_heads=2,
        head_dim=16, vision_hidden=32, vision_intermediate=64, vision_layers=2, vision_heads=2,
        image_size=512, patch_size=16, scale_factor=2,
    ),
    "tiny-vision": dict(
        vocab_size=512, text_hidden=64, text_intermediate=128, text_layers=4, text_heads=4, text_kv_heads=2,
        head_dim=16, vision_hidden=64, vision_intermediate=128, vision_layers=2, vision_heads=4,
        image_size=512, patch_size=8, scale_factor=2,
    ),
    "smolvlm2-500m": dict(
        vocab_size=49280, text_hidden=960, text_intermediate=2560, text_layers=32, text_heads=15,
        text_kv_heads=5, head_dim=64, vision_hidden=768, vision_intermediate=3072, vision_layers=12,
        vision_heads=12, image_size=512, patch_size=16, scale_factor=4,
    ),
}


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE fast tokenizer with SmolVLM2's special tokens, built in code (no Hub)."""
    bpe = Tokenizer(models.BPE(unk_token=UNK))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 1024),  # more merges than the tiny corpus offers would not change anything
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_BPE_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=NAMED_SPECIAL_TOKENS["end_of_utterance_token"],
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (UNK, BOS, PAD)],
        extra_special_tokens=NAMED_SPECIAL_TOKENS,  # gives tokenizer.fake_image_token_id etc., read by lerobot
        model_max_length=8192,
    )


def build_vlm_config(tokenizer: PreTrainedTokenizerFast, preset: str = "tiny") -> SmolVLMConfig:
    p = PRESETS[preset]
    vocab_size = max(p["vocab_size"], len(tokenizer))
    text_config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=p["text_hidden"],
        intermediate_size=p["text_intermediate"],
        num_hidden_layers=p["text_layers"],
        num_attention_heads=p["text_heads"],
        num_key_value_heads=p["text_kv_heads"],
        head_dim=p["head_dim"],
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    vision_config = SmolVLMVisionConfig(
        hidden_size=p["vision_hidden"],
        intermediate_size=p["vision_intermediate"],
        num_hidden_layers=p["vision_layers"],
        num_attention_heads=p["vision_heads"],
        image_size=p["image_size"],
        patch_size=p["patch_size"],
    )
    return SmolVLMConfig(
        text_config=text_config,
        vision_config=vision_config,
        scale_factor=p["scale_factor"],
        image_token_id=tokenizer.convert_tokens_to_ids(NAMED_SPECIAL_TOKENS["image_token"]),
        pad_token_id=tokenizer.pad_token_id,
        architectures=["SmolVLMForConditionalGeneration"],
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, config: SmolVLMConfig) -> SmolVLMProcessor:
    vision = config.vision_config
    image_seq_len = (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2
    size = {"longest_edge": vision.image_size}
    return SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(size=size, max_image_size=size, do_image_splitting=False),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(size=size, max_image_size=size),
        image_seq_len=image_seq_len,
    )


def build_tiny_vlm(out_dir: str | os.PathLike, preset: str = "tiny") -> Path:
    """Write config.json, tokenizer and processor files of a random SmolVLM2-architecture VLM to `out_dir`.

    The directory is usable as `policy.vlm_model_name` (with `load_vlm_weights: false`). It is written
    atomically: built next to `out_dir` and renamed, replacing an existing one.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    out_dir = Path(out_dir)
    tmp_dir = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tokenizer = build_tokenizer(PRESETS[preset]["vocab_size"])
    config = build_vlm_config(tokenizer, preset)
    config.save_pretrained(tmp_dir)
    build_processor(tokenizer, config).save_pretrained(tmp_dir)  # also writes the tokenizer files
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp_dir, out_dir)
    return out_dir


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m insertion_vla.tiny_vlm",
        description="Write a random SmolVLM2-architecture VLM (config, tokenizer, processor; no weights, no "
        "network) usable as policy.vlm_model_name with load_vlm_weights false.",
    )
    parser.add_argument("out_dir", help="directory to write (replaced if it exists)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="tiny",
        help="'tiny' (default): a few thousand parameters, for tests and the CPU demo; 'tiny-vision': tiny with "
        "8-pixel patches and a wider vision encoder, for CPU learning that needs vision; 'smolvlm2-500m': the "
        "dimensions of HuggingFaceTB/SmolVLM2-500M-Video-Instruct with random weights, for benchmarks",
    )
    args = parser.parse_args(argv)
    out_dir = build_tiny_vlm(args.out_dir, args.preset)
    print(f"wrote {args.preset} VLM to {out_dir} (use it as policy.vlm_model_name={out_dir})")


if __name__ == "__main__":
    main()
