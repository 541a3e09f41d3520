"""insertion_vla.tiny_vlm: an offline SmolVLM2-architecture VLM that transformers and lerobot load by path."""

import subprocess
import sys
from pathlib import Path

from fixtures_policy import TASK, tiny_vlm_dir  # noqa: F401
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, SmolVLMConfig, SmolVLMProcessor

from insertion_vla.tiny_vlm import PRESETS, build_tokenizer, build_vlm_config, main


def test_transformers_auto_classes_load_it_offline(tiny_vlm_dir):
    config = AutoConfig.from_pretrained(tiny_vlm_dir)
    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_vlm_dir)
    assert isinstance(config, SmolVLMConfig) and isinstance(processor, SmolVLMProcessor)
    # The ids lerobot's SmolVLA and SmolVLM's processor look up by name.
    assert tokenizer.convert_ids_to_tokens(tokenizer.fake_image_token_id) == "<fake_token_around_image>"
    assert tokenizer.convert_ids_to_tokens(tokenizer.global_image_token_id) == "<global-img>"
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<image>") == processor.image_token_id
    assert "<row_1_col_1>" in tokenizer.get_vocab()
    assert len(tokenizer) <= config.text_config.vocab_size


def test_tokenizer_is_byte_level_bpe_that_covers_any_text():
    tokenizer = build_tokenizer()
    ids = tokenizer(TASK + "\n").input_ids
    assert len(ids) < 12  # learned merges: about a token per word, well within tokenizer_max_length 48
    text = "Nadel einführen → 3 mm, then stop!"
    encoded = tokenizer(text).input_ids
    assert tokenizer.unk_token_id not in encoded
    assert tokenizer.decode(encoded) == text


def test_real_size_preset_has_smolvlm2_500m_dimensions():
    config = build_vlm_config(build_tokenizer(PRESETS["smolvlm2-500m"]["vocab_size"]), "smolvlm2-500m")
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (960, 32)
    assert (config.vision_config.image_size, config.vision_config.patch_size, config.scale_factor) == (512, 16, 4)


def test_cli_writes_and_replaces_the_directory(tmp_path, capsys):
    out_dir = tmp_path / "vlm"
    out_dir.mkdir()
    (out_dir / "stale.json").write_text("{}")
    main([str(out_dir)])
    assert (out_dir / "config.json").exists() and (out_dir / "tokenizer.json").exists()
    assert not (out_dir / "stale.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vlm"]
    assert "policy.vlm_model_name=" in capsys.readouterr().out


def test_cli_help_explains_the_flags():
    result = subprocess.run(
        [sys.executable, "-m", "insertion_vla.tiny_vlm", "--help"],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
    )
    assert result.returncode == 0
    assert "--preset" in result.stdout and "out_dir" in result.stdout
